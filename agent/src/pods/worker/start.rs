//! Starting the containers a plan asks for: each in turn, in back-off or not; a start
//! that fails shows its reason, records a warning event and backs off like a crash. A
//! start records `Pulled` (a present image, as upstream reports it), `Created` and
//! `Started`; a restart held back records `BackOff`.

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as api;
use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::{debug, info, warn};

use super::Worker;
use super::error::StartError;
use super::events;
use crate::images::{self, Decision, Keyring, PullPolicy, credentials};
use crate::model::container::WaitingReason;
use crate::model::termination_grace;
use crate::model::{format_pod, pod_uid};
use crate::pods::backoff::{BackoffKey, StartFailure};
use crate::pods::cri_config::{self, ContainerContext};
use crate::pods::objects::EnvObjects;
use crate::pods::plan::{BackoffWait, PodActions, Waiting};
use crate::pods::volumes::PodVolumes;
use crate::record::EventType;
use crate::runtime::ContainerRuntime;

/// What applying a plan did besides changing the runtime.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Come back this early (a back-off ends).
    pub(super) requeue: Option<Duration>,
    /// Containers whose start failed, with why (for status).
    pub(super) failed: Vec<Waiting>,
}

impl Applied {
    fn come_back_within(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

impl<R: ContainerRuntime + 'static> Worker<R> {
    /// Starts the containers `actions` asks for in `sandbox`: those in back-off wait (the
    /// worker comes back when the first window ends); a failed start backs off.
    pub(super) async fn start_containers(
        &mut self,
        pod: &Pod,
        actions: &PodActions,
        sandbox: &SandboxRef<'_>,
        volumes: &PodVolumes,
    ) -> Applied {
        let name = format_pod(pod);
        let mut applied = Applied::default();
        let spec = pod.spec.as_ref();
        let inits = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default();
        let apps = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let starts = actions
            .init_containers_to_start
            .iter()
            .map(|s| (s, inits.get(s.index)))
            .chain(
                actions
                    .containers_to_start
                    .iter()
                    .map(|s| (s, apps.get(s.index))),
            );
        for (start, container) in starts {
            let Some(container) = container else { continue };
            if let Some(wait) = &start.backoff {
                debug!(pod = %name, container = %start.name, remaining = ?wait.remaining, "in back-off");
                self.record_back_off(pod, container, wait);
                applied.come_back_within(wait.remaining);
                continue;
            }
            // Upstream arms the next window when it lets a restart go ahead, so a start that
            // fails backs off like one that crashes.
            let key = BackoffKey::new(pod_uid(pod), &start.name);
            // Upstream keys a pull back-off by pod and image: a container that now names
            // another image than the one that failed (the planner let it go) starts afresh.
            if self
                .backoff
                .failure(&key)
                .is_some_and(|f| !f.applies_to(container.image.as_deref()))
            {
                self.backoff.reset(&key);
            }
            if let Some(since) = start.backoff_since {
                let now = self.ctx.now();
                self.backoff.record_restart(&key, since, now);
            }
            match self
                .start_container(pod, container, start.attempt, sandbox, volumes)
                .await
            {
                Ok(()) => self.backoff.clear_failure(&key),
                Err(e) => {
                    let window = self.start_failed(pod, &key, &e);
                    applied.failed.push(Waiting {
                        container: start.name.clone(),
                        reason: e.reason(),
                        message: Some(e.status_message()),
                    });
                    if let Some(window) = window {
                        applied.come_back_within(window);
                    }
                }
            }
        }
        applied
    }

    /// A restart held back, as upstream records it at each sync that finds it held: a
    /// crash loop is a `BackOff` warning, an image that could not be had a `BackOff` for the
    /// image; a start that failed otherwise was recorded when it failed. The syncs that get
    /// here are those something woke (a container's end, a poke, a spec change) and, in a
    /// window longer than `syncFrequency`, one every `syncFrequency`; the window's end
    /// starts the container. Repeats count on one event (upstream retries every 10 s or
    /// so, recording each time).
    fn record_back_off(&self, pod: &Pod, container: &Container, wait: &BackoffWait) {
        match wait.reason {
            WaitingReason::CrashLoopBackOff => self.record_container(
                pod,
                &container.name,
                EventType::Warning,
                "BackOff",
                &events::back_off_restart(&container.name, pod),
            ),
            WaitingReason::ImagePullBackOff => {
                self.record_container(
                    pod,
                    &container.name,
                    EventType::Normal,
                    "BackOff",
                    &events::back_off_pull(container.image.as_deref().unwrap_or_default()),
                );
                self.record_container(
                    pod,
                    &container.name,
                    EventType::Warning,
                    "Failed",
                    "Error: ImagePullBackOff",
                );
            }
            _ => {}
        }
    }

    /// A start that failed: logged, a warning event (the status message, `Error: `
    /// before it unless the image is missing), and a back-off as for a crash. Returns the
    /// back-off window.
    fn start_failed(&mut self, pod: &Pod, key: &BackoffKey, e: &StartError) -> Option<Duration> {
        let failure = StartFailure {
            at: self.ctx.now(),
            reason: e.reason(),
            message: e.status_message(),
            image: match e {
                StartError::Pull { image, .. } | StartError::ImageNeverPull { image, .. } => {
                    Some(image.clone())
                }
                _ => None,
            },
        };
        warn!(pod = %format_pod(pod), container = %key.container, reason = %failure.reason, error = %e, cause = %crate::error::error_chain(e), "container start failed; backing off");
        let event = match e {
            StartError::ImageNeverPull { .. } | StartError::Pull { .. } => failure.message.clone(),
            _ => format!("Error: {}", failure.message),
        };
        self.record_container(
            pod,
            &key.container,
            EventType::Warning,
            e.event_reason(),
            &event,
        );
        if let StartError::Pull { .. } = e {
            // Upstream's second event: the start failed with the image's reason.
            self.record_container(
                pod,
                &key.container,
                EventType::Warning,
                "Failed",
                &format!("Error: {}", failure.reason),
            );
        }
        self.backoff.record_failure(key, failure);
        self.backoff.delay(key)
    }

    /// Gets `image` onto the node for `container` as its pull policy says (upstream's
    /// `EnsureImageExists`): a present image is used (`Pulled`, "already present") unless
    /// the policy is `Always`; a missing one is pulled (`Pulling`, then `Pulled` with size
    /// and durations) with the matching credentials, or is `ErrImageNeverPull` under
    /// `Never`.
    async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        image: &str,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<(), StartError> {
        let ctx = Arc::clone(&self.ctx);
        let runtime = &*ctx.host.runtime;
        // Events name the image as the pod spec does, as upstream's do.
        let shown = container.image.as_deref().unwrap_or(image);
        // `model::validation` refused any other value.
        let policy = PullPolicy::parse(container.image_pull_policy.as_deref())
            .unwrap_or(PullPolicy::IfNotPresent);
        let present = runtime
            .image_status(image)
            .await
            .map_err(|source| StartError::ImageInspect {
                container: container.name.clone(),
                image: image.to_owned(),
                source,
            })?
            .is_some();
        match images::decide(policy, present) {
            Decision::UsePresent => {
                self.record_container(
                    pod,
                    &container.name,
                    EventType::Normal,
                    "Pulled",
                    &events::image_present(shown),
                );
                Ok(())
            }
            Decision::NeverPull => Err(StartError::ImageNeverPull {
                container: container.name.clone(),
                image: shown.to_owned(),
            }),
            Decision::Pull => {
                let pod_keyring = self.pull_secrets(pod).await;
                self.record_container(
                    pod,
                    &container.name,
                    EventType::Normal,
                    "Pulling",
                    &events::pulling(shown),
                );
                // The pod's secrets first, then the node's credentials (upstream's order).
                let credentials = pod_keyring.lookup_with(&ctx.host.images.node_keyring(), image);
                debug!(pod = %format_pod(pod), container = %container.name, image, credentials = credentials.len(), "pulling");
                let pulled = ctx
                    .host
                    .images
                    .pull(runtime, image, &credentials, Some(sandbox))
                    .await
                    .map_err(|source| StartError::Pull {
                        container: container.name.clone(),
                        image: shown.to_owned(),
                        source,
                    })?;
                self.record_container(
                    pod,
                    &container.name,
                    EventType::Normal,
                    "Pulled",
                    &events::pulled(shown, &pulled),
                );
                Ok(())
            }
        }
    }

    /// The credentials of the pod's `imagePullSecrets`, read from the API server (cluster
    /// mode): each `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` secret
    /// ([`credentials::from_secret`]); a secret of another type adds nothing. A secret that
    /// cannot be had (missing, unreadable, or not a docker config) is left out with
    /// upstream's `FailedToRetrieveImagePullSecret` warning on the pod, and the pull goes on
    /// without it. A static pod (standalone mode) cannot name secrets: each is reported so.
    async fn pull_secrets(&self, pod: &Pod) -> Keyring {
        let names: Vec<&str> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|r| r.name.as_str())
            // Upstream passes over empty names (the API once allowed them).
            .filter(|n| !n.is_empty())
            .collect();
        let mut keyring = Keyring::default();
        if names.is_empty() {
            return keyring;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut failed = Vec::new();
        for &name in &names {
            let Some(objects) = &self.ctx.host.objects else {
                failed.push(name);
                continue;
            };
            let what = format!("secret {namespace}/{name}");
            let problem = match objects.secret(namespace, name).await {
                Ok(Some(secret)) => match credentials::from_secret(&secret, &what) {
                    Ok(Some(config)) => {
                        keyring.add(&config);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => crate::error::full_text(&e),
                },
                Ok(None) => "not found".to_owned(),
                Err(e) => crate::error::full_text(&e),
            };
            info!(pod = %format_pod(pod), secret = %what, problem = %problem, "unable to retrieve pull secret; the image pull may not succeed");
            failed.push(name);
        }
        if !failed.is_empty() {
            self.record_pod(
                pod,
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                &events::unreadable_pull_secrets(&failed),
            );
        }
        keyring
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sandbox: &SandboxRef<'_>,
        volumes: &PodVolumes,
    ) -> Result<(), StartError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let cname = || container.name.clone();
        // The configMaps and secrets the environment names, read now (cluster mode): the
        // config is built from what they hold at this start, as upstream's.
        let env_objects = match &ctx.host.objects {
            Some(objects) => Some(
                EnvObjects::fetch(
                    &**objects,
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    container,
                )
                .await
                .map_err(|source| StartError::Objects {
                    container: cname(),
                    source,
                })?,
            ),
            None => None,
        };
        // Pinned now, just before the runtime mounts them: see `pods::subpath`.
        let sub_paths = volumes
            .pin_sub_paths(container)
            .map_err(|source| StartError::SubPath {
                container: cname(),
                source,
            })?;
        let cctx = ContainerContext {
            volumes: Some(volumes),
            sub_paths: Some(&sub_paths),
            node_name: ctx.node.name.clone(),
            pod_ips: sandbox.pod_ips.clone(),
            host_ips: ctx.node.ips.iter().map(ToString::to_string).collect(),
            memory_capacity_bytes: ctx.node.memory_capacity,
            allocatable: ctx.node.allocatable,
            env_objects: env_objects.as_ref(),
        };
        let mut config =
            cri_config::container_config(pod, container, attempt, &cctx).map_err(|source| {
                StartError::Config {
                    container: cname(),
                    source,
                }
            })?;
        ctx.host.mark.apply(&mut config.labels);
        for skipped in env_objects
            .iter()
            .flat_map(|env| cri_config::skipped_env_keys(pod, container, env))
        {
            self.record_pod(
                pod,
                EventType::Warning,
                "InvalidEnvironmentVariableNames",
                &skipped.message(),
            );
        }
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        self.ensure_image(pod, container, &image, sandbox.config)
            .await?;
        info!(pod = %name, container = %container.name, attempt, "starting container");
        let id = ctx
            .host
            .runtime
            .create_container(sandbox.id, &config, sandbox.config)
            .await
            .map_err(|source| StartError::Create {
                container: cname(),
                source,
            })?;
        self.record_container(
            pod,
            &container.name,
            EventType::Normal,
            "Created",
            &events::created(&container.name),
        );
        ctx.host
            .runtime
            .start_container(&id)
            .await
            .map_err(|source| StartError::Start {
                container: cname(),
                source,
            })?;
        self.record_container(
            pod,
            &container.name,
            EventType::Normal,
            "Started",
            &events::started(&container.name),
        );
        self.learn_main_pid(pod, &container.name, &id).await;
        let pod_ip = if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            Some(
                ctx.node
                    .ips
                    .first()
                    .copied()
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            )
        } else {
            sandbox.pod_ips.first().and_then(|ip| ip.parse().ok())
        };
        if let Err(e) =
            crate::probes::run_post_start(&*ctx.host.runtime, pod, container, &id, pod_ip, None)
                .await
        {
            warn!(pod = %name, container = %container.name, error = %e, cause = %crate::error::error_chain(&e), "FailedPostStartHook");
            self.record_container(
                pod,
                &container.name,
                EventType::Warning,
                "FailedPostStartHook",
                events::POST_START_FAILED,
            );
            self.record_container(
                pod,
                &container.name,
                EventType::Normal,
                "Killing",
                events::KILLED_FOR_POST_START,
            );
            if let Err(e) = ctx
                .host
                .runtime
                .stop_container(&id, termination_grace(pod))
                .await
            {
                warn!(pod = %name, container = %container.name, error = %e, "stopping the container after its failed postStart hook failed");
            }
        }
        Ok(())
    }
}

/// The sandbox a container is started in.
pub(super) struct SandboxRef<'a> {
    pub(super) id: &'a str,
    pub(super) config: &'a api::PodSandboxConfig,
    pub(super) pod_ips: Vec<String>,
}
