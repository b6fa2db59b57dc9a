//! Stopping: one container (its preStop hook, then SIGTERM with what is left of the grace
//! period), every container of the pod, and the three ways a pod goes down: eviction
//! (with the eviction's grace, marked `Evicted`), rejection at admission, and termination
//! when its source no longer wants it (sandboxes, cgroup, volumes and logs removed).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use tracing::{info, warn};

use super::Worker;
use super::events;
use crate::eviction::Eviction;
use crate::model::{format_pod, pod_uid, termination_grace};
use crate::pods::cri_config;
use crate::pods::labels::AgentMark;
use crate::pods::observe::{Images, observe_pod};
use crate::pods::plan::{self, ObservedPod, PodActions};
use crate::pods::volumes::PodVolumes;
use crate::record::{EventType, pod_reference};
use crate::runtime::{ContainerRuntime, RuntimeError};

impl<R: ContainerRuntime + 'static> Worker<R> {
    /// Stops every running container of the pod, all at once: each runs its preStop hook,
    /// then gets SIGTERM and whatever remains of the grace period before SIGKILL. Each is a
    /// `Killing` event, `Stopping container <name>`, as upstream's.
    pub(super) async fn kill_containers(&self, pod: &Pod, observed: &ObservedPod, grace: Duration) {
        let running = observed
            .containers
            .iter()
            .filter(|c| c.state == plan::ContainerState::Running);
        let stops = running.map(|c| async move {
            let message = events::stopping(&c.name);
            if let Err(e) = self
                .stop_container(pod, observed, c, grace, &message)
                .await
            {
                warn!(pod = %format_pod(pod), container = %c.name, error = %e, "stopping container failed");
            }
        });
        futures::future::join_all(stops).await;
    }

    /// Stops one container: a `Killing` event saying `message`, its preStop hook, then
    /// SIGTERM with what remains of `grace` before SIGKILL. A failed hook is logged and a
    /// `FailedPreStopHook` warning (without the hook's output, as upstream); the container
    /// is stopped all the same.
    pub(super) async fn stop_container(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        c: &plan::ObservedContainer,
        grace: Duration,
        message: &str,
    ) -> Result<(), RuntimeError> {
        let rt = &self.ctx.host.runtime;
        let pod_name = format_pod(pod);
        let container = &c.name;
        let deadline = tokio::time::Instant::now() + grace;
        self.record_killing(pod, container, message);
        let hook_ok = match pre_stop(pod, container) {
            Some(PreStop::Exec(cmd)) => {
                match tokio::time::timeout(grace, rt.exec_sync(&c.id, &cmd, grace)).await {
                    Ok(Ok(out)) if out.exit_code == 0 => true,
                    Ok(Ok(out)) => {
                        warn!(pod = %pod_name, %container, exit_code = out.exit_code, "preStop hook failed");
                        false
                    }
                    Ok(Err(e)) => {
                        warn!(pod = %pod_name, %container, error = %e, "preStop hook failed");
                        false
                    }
                    // Upstream's hook goes on past the grace period and fails when the
                    // container is killed under it.
                    Err(_) => {
                        warn!(pod = %pod_name, %container, "preStop hook did not finish within the grace period");
                        false
                    }
                }
            }
            Some(PreStop::Sleep(d)) => {
                tokio::time::sleep(d.min(grace)).await;
                true
            }
            Some(PreStop::Http(action, spec)) => {
                let pod_ip = crate::probes::pod_ip(pod, observed, &self.ctx.node.ips);
                match crate::probes::run_http_hook(&action, pod, &spec, pod_ip, grace).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(pod = %pod_name, %container, error = %e, cause = %crate::error::error_chain(&e), "preStop hook failed");
                        false
                    }
                }
            }
            None => true,
        };
        if !hook_ok {
            self.record_container(
                pod,
                container,
                EventType::Warning,
                "FailedPreStopHook",
                events::PRE_STOP_FAILED,
            );
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        rt.stop_container(&c.id, remaining).await
    }

    /// The `Killing` event of a container about to be stopped.
    pub(super) fn record_killing(&self, pod: &Pod, container: &str, message: &str) {
        self.record_container(pod, container, EventType::Normal, "Killing", message);
    }

    /// Carries out an eviction: an `Evicted` event, every container stopped with the
    /// eviction's grace period, the sandbox stopped, and the status marked `Evicted`.
    pub(super) async fn evict(&mut self, pod: &Pod, e: Eviction) {
        let name = format_pod(pod);
        self.ctx.outputs.recorder.record(
            &pod_reference(pod),
            EventType::Warning,
            e.reason,
            &e.message,
        );
        info!(pod = %name, signal = %e.signal.as_str(), grace = ?e.grace_period, latency = ?e.latency, "evicting pod");
        self.ctx
            .outputs
            .metrics
            .evictions
            .with_label_values(&[e.signal.as_str()])
            .inc();
        let observed = match observe_pod(&*self.ctx.host.runtime, &self.ctx.host.mark, pod_uid(pod))
            .await
        {
            Ok((o, _)) => o,
            Err(err) => {
                warn!(pod = %name, error = %err, "cannot list the pod's containers to evict it");
                self.last_observed.clone().unwrap_or_default()
            }
        };
        self.kill_containers(pod, &observed, e.grace_period).await;
        for sb in observed.sandboxes.iter().filter(|s| s.ready) {
            if let Err(err) = self.ctx.host.runtime.stop_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %err, "stopping the evicted pod's sandbox failed");
            }
        }
        // Evicted for good (a local storage limit): free its volumes, as upstream tears down
        // a terminated pod's.
        if e.is_terminal()
            && let Err(err) = PodVolumes::teardown(pod_uid(pod), &self.ctx.host.pods_dir)
        {
            warn!(pod = %name, error = %err, "removing the evicted pod's volumes failed");
        }
        let mut status = self.status.clone().unwrap_or_default();
        crate::status::mark_evicted(&mut status, &e.message, self.ctx.now());
        self.status = Some(status);
        let observed = observe_pod(&*self.ctx.host.runtime, &self.ctx.host.mark, pod_uid(pod))
            .await
            .map(|(o, _)| o)
            .unwrap_or(observed);
        self.publish(pod, &observed, Images::new(), &PodActions::default());
        self.evicted = Some(e);
    }

    /// Rejects the pod at admission, as upstream's `rejectPod`: a warning event with
    /// `reason` and `message`, and status phase `Failed` with `reason` and `Pod was
    /// rejected: <message>`. A pod that an agent with another configuration admitted may
    /// be running: it is stopped.
    pub(super) async fn reject(&mut self, pod: &Pod, reason: &str, message: &str) {
        let name = format_pod(pod);
        warn!(pod = %name, reason, message, "pod rejected at admission");
        self.ctx
            .outputs
            .recorder
            .record(&pod_reference(pod), EventType::Warning, reason, message);
        let message = format!("Pod was rejected: {message}");
        self.stop_in_place(pod).await;
        let status = PodStatus {
            phase: Some("Failed".to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            qos_class: Some(crate::model::qos::qos_class(pod).as_str().to_owned()),
            ..PodStatus::default()
        };
        let mut published = pod.clone();
        published.status = Some(status.clone());
        self.ctx.outputs.statuses.publish(pod_uid(pod), published);
        self.status = Some(status);
    }

    /// Stops whatever of a pod that must not run still runs (an agent with another
    /// configuration, or before the pod became terminal, started it): its containers with
    /// the pod's grace period, then its ready sandboxes. Nothing is removed.
    pub(super) async fn stop_in_place(&self, pod: &Pod) {
        let name = format_pod(pod);
        match observe_pod(&*self.ctx.host.runtime, &self.ctx.host.mark, pod_uid(pod)).await {
            Ok((observed, _)) => {
                self.kill_containers(pod, &observed, termination_grace(pod))
                    .await;
                for sb in observed.sandboxes.iter().filter(|s| s.ready) {
                    if let Err(err) = self.ctx.host.runtime.stop_pod_sandbox(&sb.id).await {
                        warn!(pod = %name, sandbox = %sb.id, error = %err, "stopping the sandbox of a pod that must not run failed");
                    }
                }
            }
            Err(err) => {
                warn!(pod = %name, error = %err, "cannot list the containers of a pod that must not run");
            }
        }
    }

    /// The pod is gone from its source: stop it with its grace period, then remove its
    /// sandboxes, cgroup and volumes.
    pub(super) async fn terminate_pod(&mut self, pod: &Pod) {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let uid = pod_uid(pod).to_owned();
        info!(pod = %name, "terminating pod");
        let grace = termination_grace(pod);
        let observed = match observe_pod(&*ctx.host.runtime, &ctx.host.mark, &uid).await {
            Ok((o, _)) => o,
            Err(e) => {
                warn!(pod = %name, error = %e, "cannot list the pod's containers; removing its sandboxes anyway");
                ObservedPod::default()
            }
        };
        self.kill_containers(pod, &observed, grace).await;
        for sb in &observed.sandboxes {
            if let Err(e) = ctx.host.runtime.stop_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %e, "stopping sandbox failed");
            }
            if let Err(e) = ctx.host.runtime.remove_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %e, "removing sandbox failed");
            }
        }
        // A sandbox or container create the termination interrupted may have completed in
        // the runtime after the listing above, or still be starting there (containerd
        // refuses to remove a container "in starting state"): remove what is left until
        // nothing is, retrying while the runtime finishes what it was doing.
        remove_strays(&*ctx.host.runtime, &ctx.host.mark, &name, &uid).await;
        // Removal waits (briefly) for the kernel to release the cgroups: off the runtime.
        let tree = Arc::clone(&ctx.host.tree);
        let removal_uid = uid.clone();
        match tokio::task::spawn_blocking(move || tree.remove_pod(&removal_uid)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(pod = %name, error = %e, "removing the pod cgroup failed"),
            Err(e) => warn!(pod = %name, error = %e, "removing the pod cgroup panicked"),
        }
        if let Err(e) = PodVolumes::teardown(&uid, &ctx.host.pods_dir) {
            warn!(pod = %name, error = %e, "removing the pod's volumes failed");
        }
        if let Some(tokens) = &ctx.host.tokens {
            tokens.forget_pod(&uid);
        }
        if let Err(e) = cri_config::remove_pod_log_dir(&ctx.host.logs_dir, pod) {
            warn!(pod = %name, error = %e, "removing the pod's logs failed");
        }
        ctx.outputs.statuses.remove(&uid);
        ctx.signals.probes.remove_pod(&uid);
        ctx.signals
            .facts
            .forget(observed.containers.iter().map(|c| c.id.as_str()));
        info!(pod = %name, "pod terminated");
    }
}

/// How long [`remove_strays`] keeps trying, and its first and longest pause.
const STRAY_DEADLINE: Duration = Duration::from_secs(30);
const STRAY_FIRST_PAUSE: Duration = Duration::from_millis(100);
const STRAY_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Stops and removes whatever the runtime still holds of pod `uid`, again and again (100 ms
/// doubling to 2 s) until nothing is left or [`STRAY_DEADLINE`] passed; what could not be
/// removed by then is logged (the start-up clean-up and the relist meet it again).
pub(super) async fn remove_strays<R: ContainerRuntime>(
    runtime: &R,
    mark: &AgentMark,
    name: &str,
    uid: &str,
) {
    let deadline = tokio::time::Instant::now() + STRAY_DEADLINE;
    let mut pause = STRAY_FIRST_PAUSE;
    loop {
        let mut failures = Vec::new();
        match observe_pod(runtime, mark, uid).await {
            Ok((stray, _)) if stray.containers.is_empty() && stray.sandboxes.is_empty() => return,
            Ok((stray, _)) => {
                for c in &stray.containers {
                    let removed = match runtime.stop_container(&c.id, Duration::ZERO).await {
                        Ok(()) => runtime.remove_container(&c.id).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = removed {
                        failures.push(format!("container {}: {e}", c.id));
                    }
                }
                for sb in &stray.sandboxes {
                    let removed = match runtime.stop_pod_sandbox(&sb.id).await {
                        Ok(()) => runtime.remove_pod_sandbox(&sb.id).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = removed {
                        failures.push(format!("sandbox {}: {e}", sb.id));
                    }
                }
            }
            Err(e) => failures.push(format!("listing: {e}")),
        }
        if tokio::time::Instant::now() + pause > deadline {
            warn!(pod = %name, failures = ?failures, "the runtime still holds part of a terminated pod");
            return;
        }
        tracing::debug!(pod = %name, failures = ?failures, "removing what is left of a pod; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(STRAY_MAX_PAUSE);
    }
}

enum PreStop {
    Exec(Vec<String>),
    Http(
        Box<k8s_openapi::api::core::v1::HTTPGetAction>,
        Box<Container>,
    ),
    Sleep(Duration),
}

/// The container's preStop hook, when it has one bpflet can run here (exec, sleep).
fn pre_stop(pod: &Pod, container: &str) -> Option<PreStop> {
    let spec = pod.spec.as_ref()?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)?;
    let handler = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
    if let Some(exec) = &handler.exec {
        return Some(PreStop::Exec(exec.command.clone().unwrap_or_default()));
    }
    if let Some(http) = &handler.http_get {
        return Some(PreStop::Http(Box::new(http.clone()), Box::new(c.clone())));
    }
    if let Some(sleep) = &handler.sleep {
        return Some(PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
    use crate::runtime::{FakeRuntime, Fault, Method};
    use tonic::Code;

    /// A pod `uid` in the fake runtime: one sandbox, one running container.
    async fn pod_in(rt: &FakeRuntime, uid: &str) {
        rt.add_image(IMAGE);
        let sb_config = sandbox_config(uid);
        let sb = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        let c = rt
            .create_container(&sb, &container_config(uid), &sb_config)
            .await
            .unwrap();
        rt.start_container(&c).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn strays_are_removed_once_the_runtime_lets_them_go() {
        let rt = FakeRuntime::new();
        pod_in(&rt, "u1").await;
        // As containerd answers for a container still starting: the first attempts fail.
        rt.inject_once(Method::RemoveContainer, Fault::Error(Code::Unknown));
        rt.inject_once(Method::RemovePodSandbox, Fault::Error(Code::Unknown));
        remove_strays(&rt, &AgentMark::for_tests(), "web", "u1").await;
        let (left, _) = observe_pod(&rt, &AgentMark::for_tests(), "u1")
            .await
            .unwrap();
        assert!(
            left.containers.is_empty() && left.sandboxes.is_empty(),
            "left behind: {left:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn strays_the_runtime_never_lets_go_are_given_up_after_the_deadline() {
        let rt = FakeRuntime::new();
        pod_in(&rt, "u1").await;
        rt.inject(Method::RemoveContainer, Fault::Error(Code::Unknown));
        rt.inject(Method::RemovePodSandbox, Fault::Error(Code::Unknown));
        let started = tokio::time::Instant::now();
        remove_strays(&rt, &AgentMark::for_tests(), "web", "u1").await;
        assert!(
            started.elapsed() <= STRAY_DEADLINE,
            "{:?}",
            started.elapsed()
        );
        assert!(
            rt.call_count(Method::RemoveContainer) > 3,
            "retried: {}",
            rt.call_count(Method::RemoveContainer)
        );
    }
}
