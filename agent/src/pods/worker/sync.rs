//! One pass over the pod: observe the runtime, plan, apply the plan, publish; what a
//! failed pass shows and when it is retried; and the dead attempts it clears away.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::{debug, info, warn};

use super::Worker;
use super::error::SyncError;
use super::events;
use super::start::{Applied, SandboxRef};
use crate::model::container::WaitingReason;
use crate::model::termination_grace;
use crate::model::{format_pod, pod_uid};
use crate::pleg::KernelEnd;
use crate::pods::cri_config::{self, SandboxContext};
use crate::pods::observe::{Images, observe_pod_cached};
use crate::pods::plan::{self, ObservedPod, PodActions};
use crate::pods::volumes::{self, PodVolumes};
use crate::record::EventType;
use crate::runtime::ContainerRuntime;

/// First retry of a pod whose sync failed; each further failure doubles it.
const SYNC_RETRY_INITIAL: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing sync (upstream's crash-loop cap).
const SYNC_RETRY_MAX: Duration = Duration::from_secs(300);
/// Longest wait when the runtime itself failed (down, restarting): that is not the pod's
/// fault, and the pod should be back soon after the runtime (upstream's fixed retry).
const SYNC_RETRY_MAX_RUNTIME: Duration = Duration::from_secs(10);

/// When to retry after `failures` syncs in a row failed, the last with `e`: 2 s, 4 s, ...
/// 5 min; at most 10 s when the runtime call failed or a mount waits for the API server (an
/// object that may be created any moment).
fn sync_retry_delay(e: &SyncError, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let max = match e {
        SyncError::Runtime { .. } => SYNC_RETRY_MAX_RUNTIME,
        SyncError::Volume { source, .. } if source.is_set_up() => SYNC_RETRY_MAX_RUNTIME,
        _ => SYNC_RETRY_MAX,
    };
    SYNC_RETRY_INITIAL.saturating_mul(1 << doublings).min(max)
}

impl<R: ContainerRuntime + 'static> Worker<R> {
    /// A periodic sync under the event PLEG: plan against the last observation (kept
    /// current by pokes); only when the plan has something to do does the worker observe
    /// the runtime and sync for real.
    pub(super) async fn sync_from_last_observation(
        &mut self,
        pod: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        if let Some(observed) = &self.last_observed {
            let actions = plan::compute_pod_actions(pod, observed, &self.backoff, self.ctx.now());
            if actions_are_empty(&actions) {
                // The files of configMap, secret, downwardAPI and projected volumes follow
                // their sources at least every `syncFrequency`, as upstream's.
                if volumes::has_written_files(pod) {
                    self.prepare_volumes(pod).await?;
                }
                return Ok(None);
            }
        }
        self.sync(pod, &[]).await
    }

    /// One pass: observe, plan, apply, publish. Returns when to come back early.
    pub(super) async fn sync(
        &mut self,
        pod: &Pod,
        kernel_waits: &[KernelEnd],
    ) -> Result<Option<Duration>, SyncError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let rt_err = |source| SyncError::Runtime {
            pod: name.clone(),
            source,
        };
        let uid = pod_uid(pod).to_owned();

        let (mut observed, mut images) = observe_pod_cached(
            &*ctx.host.runtime,
            &ctx.host.mark,
            &uid,
            &mut self.observe_cache,
        )
        .await
        .map_err(rt_err)?;
        let start = tokio::time::Instant::now();
        if !kernel_waits.is_empty() {
            (observed, images) = self
                .await_runtime_agreement(pod, kernel_waits, observed, images)
                .await?;
        }
        let runtime_changed = self.last_runtime.as_ref() != Some(&observed);
        if runtime_changed {
            let trigger = if kernel_waits.is_empty() {
                "relist"
            } else {
                "kernel"
            };
            log_changes(&name, self.last_runtime.as_ref(), &observed, trigger, start);
        }
        self.last_runtime = Some(observed.clone());

        self.ensure_pod_cgroup(pod)
            .map_err(|source| SyncError::Cgroup {
                pod: name.clone(),
                source,
            })?;
        let volumes = self.prepare_volumes(pod).await?;

        ctx.signals.probes.annotate(&uid, &mut observed);
        let now = ctx.now();
        let actions = plan::compute_pod_actions(pod, &observed, &self.backoff, now);
        let changed = !actions_are_empty(&actions);
        if changed && runtime_changed {
            // Show what the runtime reports before acting on it: applying (stopping a
            // sandbox, restarting a container) takes tens of ms or more.
            self.publish(pod, &observed, images.clone(), &actions);
        }
        let applied = self.apply(pod, &observed, &actions, &volumes).await?;
        let requeue = applied.requeue;
        let mut actions = actions;
        for failed in applied.failed {
            actions.waiting.retain(|w| w.container != failed.container);
            actions.waiting.push(failed);
        }
        if changed {
            (observed, images) = observe_pod_cached(
                &*ctx.host.runtime,
                &ctx.host.mark,
                &uid,
                &mut self.observe_cache,
            )
            .await
            .map_err(rt_err)?;
            self.remove_dead_attempts(pod, &mut observed).await;
            self.last_runtime = Some(observed.clone());
            ctx.signals.probes.annotate(&uid, &mut observed);
        }
        ctx.signals.probes.add_pod(
            pod,
            &observed,
            crate::probes::pod_ip(pod, &observed, &ctx.node.ips),
        );
        self.publish(pod, &observed, images, &actions);
        // Containers started here were asked about at their start; this finds those the
        // worker adopted (started before an agent restart).
        for c in &observed.containers {
            if c.state == plan::ContainerState::Running {
                self.learn_main_pid(pod, &c.name, &c.id).await;
            }
        }
        self.pids_asked
            .retain(|id| observed.containers.iter().any(|c| &c.id == id));
        self.last_observed = Some(observed);
        Ok(requeue)
    }

    /// Sets the pod's volumes up (again): what they need from the API server is read first,
    /// and the files of configMap, secret, downwardAPI and projected volumes are rewritten
    /// when they changed.
    async fn prepare_volumes(&self, pod: &Pod) -> Result<PodVolumes, SyncError> {
        let ctx = &self.ctx;
        let err = |source| SyncError::Volume {
            pod: format_pod(pod),
            source,
        };
        let api = volumes::api::fetch(pod, &ctx.host.api_access())
            .await
            .map_err(err)?;
        let allocatable = ctx.node.allocatable.downward();
        PodVolumes::prepare_with(pod, &ctx.host.pods_dir, &api, &allocatable).map_err(err)
    }

    /// Writes the pod cgroup when its settings changed or it went missing, not on every
    /// sync (mkdir and four writes per pod per sync were most of an idle sync).
    fn ensure_pod_cgroup(&mut self, pod: &Pod) -> Result<(), crate::cgroups::CgroupError> {
        let tree = &self.ctx.host.tree;
        let cgroup_config = crate::model::qos::pod_resource_config(pod);
        if self.cgroup_applied != Some(cgroup_config) || !tree.pod_cgroup_exists(pod) {
            tree.ensure_pod(pod)?;
            self.cgroup_applied = Some(cgroup_config);
        }
        Ok(())
    }

    pub(super) async fn apply(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        actions: &PodActions,
        volumes: &PodVolumes,
    ) -> Result<Applied, SyncError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let rt_err = |source| SyncError::Runtime {
            pod: name.clone(),
            source,
        };
        let grace = termination_grace(pod);

        // A sandbox replaced (not the pod's first): said before its containers are stopped.
        if actions
            .create_sandbox
            .as_ref()
            .is_some_and(|c| c.reason != plan::SandboxReason::NoSandbox)
        {
            self.record_pod(
                pod,
                EventType::Normal,
                "SandboxChanged",
                events::SANDBOX_CHANGED,
            );
        }
        if let Some(kill) = &actions.kill_pod {
            info!(pod = %name, reason = ?kill.reason, message = %kill.message, "killing pod");
            self.kill_containers(pod, observed, grace).await;
            for sb in observed.sandboxes.iter().filter(|s| s.ready) {
                ctx.host
                    .runtime
                    .stop_pod_sandbox(&sb.id)
                    .await
                    .map_err(rt_err)?;
            }
        }
        for kill in &actions.containers_to_kill {
            info!(pod = %name, container = %kill.name, reason = ?kill.reason, "killing container");
            // Upstream runs preStop before every kill, a probe's included; the `Killing`
            // event says the planner's reason (a failed probe, a changed spec).
            match observed.containers.iter().find(|c| c.id == kill.id) {
                Some(c) => self
                    .stop_container(pod, observed, c, grace, &kill.message)
                    .await
                    .map_err(rt_err)?,
                None => {
                    self.record_killing(pod, &kill.name, &kill.message);
                    ctx.host
                        .runtime
                        .stop_container(&kill.id, grace)
                        .await
                        .map_err(rt_err)?;
                }
            }
        }

        let cgroup_parent =
            ctx.host
                .tree
                .cri_cgroup_parent(pod)
                .map_err(|source| SyncError::Cgroup {
                    pod: name.clone(),
                    source,
                })?;
        let sandbox_ctx = SandboxContext {
            pod_logs_dir: ctx.host.logs_dir.clone(),
            cgroup_parent,
            dns: ctx.node.dns.clone(),
        };
        let (sandbox_id, sandbox_config) = match (&actions.create_sandbox, &actions.sandbox_id) {
            (Some(create), _) => {
                let mut config = cri_config::sandbox_config(pod, create.attempt, &sandbox_ctx)
                    .map_err(|source| SyncError::Config {
                        pod: name.clone(),
                        source,
                    })?;
                ctx.host.mark.apply(&mut config.labels);
                info!(pod = %name, attempt = create.attempt, reason = ?create.reason, "creating sandbox");
                let id = ctx
                    .host
                    .runtime
                    .run_pod_sandbox(&config, "")
                    .await
                    .map_err(|source| SyncError::CreateSandbox {
                        pod: name.clone(),
                        source,
                    })?;
                (id, config)
            }
            (None, Some(id)) => {
                let attempt = observed
                    .sandboxes
                    .iter()
                    .find(|s| &s.id == id)
                    .map_or(0, |s| s.attempt);
                let mut config =
                    cri_config::sandbox_config(pod, attempt, &sandbox_ctx).map_err(|source| {
                        SyncError::Config {
                            pod: name.clone(),
                            source,
                        }
                    })?;
                ctx.host.mark.apply(&mut config.labels);
                (id.clone(), config)
            }
            (None, None) => return Ok(Applied::default()),
        };

        let sandbox = SandboxRef {
            id: &sandbox_id,
            config: &sandbox_config,
            pod_ips: observed
                .sandboxes
                .iter()
                .find(|s| s.id == sandbox_id)
                .and_then(|s| s.ip.clone())
                .into_iter()
                .collect(),
        };
        Ok(self.start_containers(pod, actions, &sandbox, volumes).await)
    }

    /// Removes dead containers of the pod beyond the one per container name that status
    /// needs (see [`dead_attempts`]), and drops them from `observed`.
    pub(super) async fn remove_dead_attempts(&mut self, pod: &Pod, observed: &mut ObservedPod) {
        let dead: Vec<String> = dead_attempts(observed)
            .into_iter()
            .map(|c| c.id.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for id in dead {
            match self.ctx.host.runtime.remove_container(&id).await {
                Ok(()) => removed.push(id),
                Err(e) => {
                    debug!(pod = %format_pod(pod), %id, error = %e, "removing a dead container failed");
                }
            }
        }
        debug!(pod = %format_pod(pod), removed = removed.len(), "removed dead containers");
        observed.containers.retain(|c| !removed.contains(&c.id));
        self.ctx
            .signals
            .facts
            .forget(removed.iter().map(String::as_str));
        for id in &removed {
            self.oom_reported.remove(id);
        }
    }

    /// A sync that failed: says why (at warn once per distinct error, then at debug), shows
    /// it in the pod's status and events, and returns when to try again: 2 s, doubling up
    /// to 5 min while the pod keeps failing.
    pub(super) fn sync_failed(&mut self, pod: &Pod, e: &SyncError) -> Duration {
        let name = format_pod(pod);
        let cause = crate::error::error_chain(e);
        self.sync_failures = self.sync_failures.saturating_add(1);
        let retry_in = sync_retry_delay(e, self.sync_failures);
        let text = format!("{e}: {cause}");
        if self.last_sync_error.as_deref() == Some(text.as_str()) {
            debug!(pod = %name, error = %e, %cause, ?retry_in, "sync failed again");
        } else {
            warn!(pod = %name, error = %e, %cause, ?retry_in, "sync failed; retrying");
            self.last_sync_error = Some(text);
        }
        let message = e.status_message();
        if let Some(reason) = e.event_reason() {
            self.record_pod(pod, EventType::Warning, reason, &e.event_message());
        }
        // The pod still shows (as last observed), with the containers it could not get to
        // waiting for the reason.
        let observed = self.last_observed.clone().unwrap_or_default();
        let mut actions = plan::compute_pod_actions(pod, &observed, &self.backoff, self.ctx.now());
        if let Some(reason) = e.waiting_reason() {
            let creating = actions
                .waiting
                .iter_mut()
                .filter(|w| w.reason == WaitingReason::ContainerCreating);
            for w in creating {
                w.reason = reason;
                w.message = Some(message.clone());
            }
        }
        self.publish(pod, &observed, Images::new(), &actions);
        retry_in
    }
}

/// The PLEG event: a line per container whose runtime state changed since the last
/// observation (upstream logs `SyncLoop (PLEG)` lines at the same point).
fn log_changes(
    pod: &str,
    before: Option<&ObservedPod>,
    now: &ObservedPod,
    trigger: &str,
    since: tokio::time::Instant,
) {
    for c in &now.containers {
        let prev = before.and_then(|b| b.containers.iter().find(|p| p.id == c.id));
        if prev.is_some_and(|p| p.state == c.state) {
            continue;
        }
        info!(
            pod,
            container = %c.name,
            id = %c.id,
            state = ?c.state,
            exit_code = ?c.exit_code,
            trigger,
            waited = ?since.elapsed(),
            "PLEG: container state changed"
        );
    }
}

fn actions_are_empty(a: &PodActions) -> bool {
    a.kill_pod.is_none()
        && a.create_sandbox.is_none()
        && a.init_containers_to_start
            .iter()
            .all(|s| s.backoff.is_some())
        && a.containers_to_start.iter().all(|s| s.backoff.is_some())
        && a.containers_to_kill.is_empty()
}

/// Dead containers of a pod beyond what status needs: for each container name, the latest
/// container stays, and so does the newest exited one (its `lastState`); every other exited
/// or never-started container goes. Upstream's container GC keeps `maxPerPodContainer` = 1
/// dead container per container the same way; without it a failing container would leave
/// one dead container per attempt in the runtime.
fn dead_attempts(observed: &ObservedPod) -> Vec<&plan::ObservedContainer> {
    let mut names: Vec<&str> = observed
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let Some(latest) = observed.latest(name) else {
            continue;
        };
        let mut dead: Vec<&plan::ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.name == name && c.id != latest.id)
            .filter(|c| {
                matches!(
                    c.state,
                    plan::ContainerState::Exited | plan::ContainerState::Created
                )
            })
            .collect();
        // Newest first.
        dead.sort_by_key(|c| std::cmp::Reverse((c.created, c.restart_count)));
        let keep = usize::from(
            latest.state != plan::ContainerState::Exited
                && dead
                    .first()
                    .is_some_and(|c| c.state == plan::ContainerState::Exited),
        );
        out.extend(dead.into_iter().skip(keep));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jiff::Timestamp;

    use super::*;
    use crate::pods::plan::{ContainerState as State, ObservedContainer};
    use crate::pods::worker::tests::observed_container as container;
    use crate::runtime::RuntimeError;

    #[test]
    fn failing_syncs_retry_at_doubling_intervals_up_to_five_minutes() {
        let volume = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::InvalidUid {
                uid: "..".to_owned(),
            },
        };
        let secs: Vec<u64> = (1..=10)
            .map(|n| sync_retry_delay(&volume, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(sync_retry_delay(&volume, u32::MAX), SYNC_RETRY_MAX);
        // The runtime's trouble is not the pod's: back soon after the runtime is.
        let runtime = SyncError::Runtime {
            pod: "p".to_owned(),
            source: RuntimeError::Timeout {
                method: crate::runtime::Method::ListContainers,
                socket: PathBuf::from("/s"),
                timeout: Duration::from_secs(2),
            },
        };
        let secs: Vec<u64> = (1..=5)
            .map(|n| sync_retry_delay(&runtime, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 10, 10]);
        // So is a configMap or token the API server does not give yet.
        let waiting = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::SetUp {
                volume: "cfg".to_owned(),
                reason: "configmap \"cfg\" not found".to_owned(),
            },
        };
        let secs: Vec<u64> = (1..=5)
            .map(|n| sync_retry_delay(&waiting, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 10, 10]);
    }

    #[test]
    fn one_dead_container_per_name_is_kept() {
        let attempt = |id: &str, name: &str, state: State, n: u32| ObservedContainer {
            name: name.to_owned(),
            created: Timestamp::from_second(i64::from(n)).unwrap(),
            restart_count: n,
            ..container(id, state)
        };
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![
                // A crash loop, now running: its newest exit stays for lastState.
                attempt("a0", "a", State::Exited, 0),
                attempt("a1", "a", State::Exited, 1),
                attempt("a2", "a", State::Running, 2),
                // Failed starts: the latest stays, a never-started one goes.
                attempt("b0", "b", State::Exited, 0),
                attempt("b1", "b", State::Created, 1),
                attempt("b2", "b", State::Exited, 2),
                // One attempt, and an unknown one, untouched.
                attempt("c0", "c", State::Exited, 0),
                attempt("d0", "d", State::Unknown, 0),
                attempt("d1", "d", State::Exited, 1),
            ],
        };
        let mut dead: Vec<&str> = dead_attempts(&observed)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        dead.sort_unstable();
        assert_eq!(dead, ["a0", "b0", "b1"]);
    }

    #[test]
    fn a_plan_whose_only_starts_wait_in_back_off_has_nothing_to_do() {
        let start = |backoff: Option<plan::BackoffWait>| plan::ContainerStart {
            index: 0,
            name: "app".to_owned(),
            attempt: 1,
            reason: plan::StartReason::Exited { exit_code: 1 },
            backoff,
            backoff_since: None,
        };
        let waiting = plan::BackoffWait {
            delay: Duration::from_secs(10),
            remaining: Duration::from_secs(4),
            reason: WaitingReason::CrashLoopBackOff,
            message: String::new(),
        };
        assert!(actions_are_empty(&PodActions::default()));
        let in_back_off = PodActions {
            init_containers_to_start: vec![start(Some(waiting.clone()))],
            containers_to_start: vec![start(Some(waiting))],
            sandbox_id: Some("sb".to_owned()),
            ..PodActions::default()
        };
        assert!(actions_are_empty(&in_back_off));
        let due = PodActions {
            containers_to_start: vec![start(None)],
            ..in_back_off.clone()
        };
        assert!(!actions_are_empty(&due));
        let sandbox = PodActions {
            create_sandbox: Some(plan::CreateSandbox {
                attempt: 0,
                reason: plan::SandboxReason::NoSandbox,
                message: String::new(),
            }),
            ..PodActions::default()
        };
        assert!(!actions_are_empty(&sandbox));
    }
}
