//! The kernel-first end: the kernel reports a container's end (with its exit code) before
//! the runtime does. The worker shows the end at once, then relists the pod briefly until
//! the runtime agrees, and only then plans on it (a restart, stopping the sandbox). For
//! pods that share a pid namespace it asks the runtime for each container's main pid, so
//! the kernel can tell that process's exit.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::{debug, info, warn};

use super::Worker;
use super::error::SyncError;
use crate::cgroups::Hierarchy;
use crate::model::{format_pod, pod_uid};
use crate::pleg::KernelEnd;
use crate::pods::cri_config;
use crate::pods::observe::{Images, observe_pod_cached};
use crate::pods::plan::{self, ObservedPod, PodActions};
use crate::runtime::ContainerRuntime;

/// After a kernel trigger, how long the worker keeps relisting its pod until the runtime
/// reports the change the kernel saw (containerd needs ~40 ms; a loaded node more).
const KERNEL_RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Relist interval while waiting for the runtime: short, so that containerd's answer is
/// seen within a few ms of its arrival (one relist of one pod costs ~1 ms of CRI calls) ...
const KERNEL_RETRY_FAST: Duration = Duration::from_millis(5);
/// ... for this long; then the node is slow and relisting backs off.
const KERNEL_RETRY_FAST_FOR: Duration = Duration::from_millis(300);
const KERNEL_RETRY_SLOW: Duration = Duration::from_millis(50);

impl<R: ContainerRuntime + 'static> Worker<R> {
    /// The kernel saw the containers of `ends` end. Shows the ends it knows the exit code
    /// of at once (the runtime may still report the containers running), then relists the
    /// pod, for at most [`KERNEL_RETRY_BUDGET`], until the runtime no longer reports any of
    /// them running. Returns the last observation: what the sync plans on.
    pub(super) async fn await_runtime_agreement(
        &mut self,
        pod: &Pod,
        ends: &[KernelEnd],
        mut observed: ObservedPod,
        mut images: Images,
    ) -> Result<(ObservedPod, Images), SyncError> {
        let start = tokio::time::Instant::now();
        if let Some(ended) = with_kernel_ends(&observed, ends) {
            // `ended` is `observed` with some containers changed in place.
            let shown = observed.containers.iter().zip(&ended.containers);
            for (_, c) in shown.filter(|(before, after)| before.state != after.state) {
                info!(
                    pod = %format_pod(pod),
                    container = %c.name,
                    id = %c.id,
                    exit_code = c.exit_code.unwrap_or_default(),
                    "kernel: container's main process ended"
                );
            }
            self.publish(pod, &ended, images.clone(), &PodActions::default());
        }
        while !ends
            .iter()
            .all(|end| runtime_saw_end(&observed, &end.container))
            && start.elapsed() < KERNEL_RETRY_BUDGET
        {
            tokio::time::sleep(if start.elapsed() < KERNEL_RETRY_FAST_FOR {
                KERNEL_RETRY_FAST
            } else {
                KERNEL_RETRY_SLOW
            })
            .await;
            (observed, images) = observe_pod_cached(
                &*self.ctx.host.runtime,
                &self.ctx.host.mark,
                pod_uid(pod),
                &mut self.observe_cache,
            )
            .await
            .map_err(|source| SyncError::Runtime {
                pod: format_pod(pod),
                source,
            })?;
        }
        Ok((observed, images))
    }

    /// For a pod whose containers share a pid namespace (the pod's or the node's): asks
    /// the runtime, once per container, for the pid of its main process, so that the
    /// kernel router knows that process's exit as the container's end (with its code).
    /// Without it, the container's end is still seen, later and without a code, when its
    /// cgroup empties.
    ///
    /// Other pods' containers are namespace inits, which the kernel flags: nothing to ask.
    pub(super) async fn learn_main_pid(&mut self, pod: &Pod, container: &str, id: &str) {
        let shares = pod
            .spec
            .as_ref()
            .is_some_and(cri_config::shares_pid_namespace);
        if !shares || !self.pids_asked.insert(id.to_owned()) {
            return;
        }
        match self.ctx.host.runtime.container_pid(id).await {
            Ok(Some(pid))
                if pid_in_container(&self.ctx.host.hierarchy, Path::new("/proc"), pid, id) =>
            {
                debug!(pod = %format_pod(pod), %container, %id, pid, "main process of the container");
                self.ctx.signals.facts.record_main_pid(id, pid);
            }
            Ok(Some(pid)) => {
                // The kernel reports pids as the initial pid namespace sees them; a runtime
                // in a pid namespace of its own reports its own. Or the process is gone.
                if !MAIN_PID_MISMATCH_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(pod = %format_pod(pod), %container, %id, pid, "the runtime's pid for the container is not a process in its cgroup here (is the runtime in another pid namespace?): containers sharing a pid namespace end without an exit code from the kernel");
                } else {
                    debug!(pod = %format_pod(pod), %container, %id, pid, "the runtime's pid is not a process in the container's cgroup");
                }
            }
            Ok(None) => {
                debug!(pod = %format_pod(pod), %container, %id, "the runtime names no main process for the container");
            }
            Err(e) => {
                debug!(pod = %format_pod(pod), %container, %id, error = %e, "cannot learn the container's main pid");
            }
        }
    }
}

/// `observed` with the containers the kernel saw end (and whose exit code it knows) as
/// exited, where the runtime still reports them running; `None` when there are none.
fn with_kernel_ends(observed: &ObservedPod, ends: &[KernelEnd]) -> Option<ObservedPod> {
    let mut out = observed.clone();
    let mut any = false;
    for end in ends {
        let Some(code) = end.exit_code else {
            continue;
        };
        if let Some(c) = out
            .containers
            .iter_mut()
            .find(|c| c.id == end.container && c.state == plan::ContainerState::Running)
        {
            c.state = plan::ContainerState::Exited;
            c.exit_code = Some(code);
            c.finished_at = Some(end.at);
            // What containerd says for an exit it did not attribute to the OOM killer; the
            // kernel's OOM facts turn a 137 into OOMKilled at publish.
            c.reason = Some(if code == 0 { "Completed" } else { "Error" }.to_owned());
            any = true;
        }
    }
    any.then_some(out)
}

/// Whether the runtime no longer reports container (or sandbox) `id` running. An id it
/// does not know has nothing to wait for.
fn runtime_saw_end(observed: &ObservedPod, id: &str) -> bool {
    if let Some(c) = observed.containers.iter().find(|c| c.id == id) {
        return c.state != plan::ContainerState::Running;
    }
    observed
        .sandboxes
        .iter()
        .find(|s| s.id == id)
        .is_none_or(|s| !s.ready)
}

/// Warned once that the runtime's pids are not the kernel's.
static MAIN_PID_MISMATCH_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether `pid`, as `proc_root` sees it, is a process in the cgroup of container `id` (or
/// below it), by the Kubernetes cgroup naming the attributor uses.
fn pid_in_container(hierarchy: &Hierarchy, proc_root: &Path, pid: u32, id: &str) -> bool {
    hierarchy
        .cgroup_of_pid(proc_root, pid)
        .ok()
        .and_then(|cgroup| crate::cgroups::naming::parse_pod(&cgroup))
        .and_then(|pod| pod.container_id)
        .is_some_and(|container| container == id)
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::pods::plan::ContainerState as State;
    use crate::pods::worker::tests::observed_container as container;

    fn end(id: &str, exit_code: Option<i32>) -> KernelEnd {
        KernelEnd {
            container: id.to_owned(),
            exit_code,
            at: Timestamp::from_second(100).unwrap(),
        }
    }

    #[test]
    fn kernel_ends_show_before_the_runtime_reports_them() {
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![
                container("a", State::Running),
                container("b", State::Running),
                container("c", State::Exited),
            ],
        };
        let ended = with_kernel_ends(
            &observed,
            &[
                end("a", Some(137)),
                end("b", None),
                end("c", Some(0)),
                end("x", Some(1)),
            ],
        )
        .expect("a ended");
        let a = &ended.containers[0];
        assert_eq!(a.state, State::Exited);
        assert_eq!(a.exit_code, Some(137));
        assert_eq!(a.reason.as_deref(), Some("Error"));
        assert_eq!(a.finished_at, Some(Timestamp::from_second(100).unwrap()));
        assert_eq!(
            ended.containers[1..],
            observed.containers[1..],
            "no exit code, or the runtime already knows: unchanged"
        );
        assert!(
            with_kernel_ends(&observed, &[end("b", None)]).is_none(),
            "nothing to show"
        );
        let ok = with_kernel_ends(&observed, &[end("b", Some(0))]).unwrap();
        assert_eq!(ok.containers[1].reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn the_runtime_saw_an_end_once_the_container_is_not_running() {
        let mut observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![container("a", State::Running)],
        };
        assert!(!runtime_saw_end(&observed, "a"));
        observed.containers[0].state = State::Exited;
        assert!(runtime_saw_end(&observed, "a"));
        assert!(
            runtime_saw_end(&observed, "gone"),
            "unknown ids end the wait"
        );
    }

    #[test]
    fn a_pid_is_checked_against_the_container_cgroup() {
        let id = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        let other = "4f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        let pod = "/bpflet/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2";
        let proc_root = tempfile::tempdir().expect("tempdir");
        let pid_with = |pid: u32, cgroups: &str| {
            let dir = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("cgroup"), cgroups).expect("write");
            pid
        };
        let v1 = Hierarchy::v1("/sys/fs/cgroup/memory", 4);
        let v2 = Hierarchy::v2("/sys/fs/cgroup");
        let in_container = |h: &Hierarchy, pid, id| pid_in_container(h, proc_root.path(), pid, id);

        let app = pid_with(
            10,
            &format!("12:pids:{pod}/{id}\n4:memory:{pod}/{id}/child\n"),
        );
        assert!(in_container(&v1, app, id));
        assert!(!in_container(&v1, app, other));
        let systemd = pid_with(
            11,
            &format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod8dbc5577_d0e2_4706_8787_57d52c03ddf2.slice/\
                 cri-containerd-{id}.scope\n"
            ),
        );
        assert!(in_container(&v2, systemd, id));
        let pod_itself = pid_with(12, &format!("0::{pod}\n"));
        assert!(!in_container(&v2, pod_itself, id), "the pod's own cgroup");
        assert!(
            !pid_in_container(&v1, Path::new("/proc"), std::process::id(), id),
            "this test is in no container of that id"
        );
        assert!(!in_container(&v1, 13, id), "no such process");
    }
}
