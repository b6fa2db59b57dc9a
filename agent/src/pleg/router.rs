//! Routes attributed kernel events to whoever acts on them: pod workers (a per-pod relist),
//! the OOM fact store, node events (SystemOOM), a full relist when events were lost, and
//! eviction (pressure).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::facts::{KernelFacts, OomRecord};
use super::{KernelEnd, PodPoke, Trigger};
use crate::cgroups::{Attributor, naming};
use crate::events::{Detail, Event, ExitStatus, OomScope};
use crate::record::{EventType, Recorder, node_reference};

pub struct KernelRouter {
    pub attributor: Attributor,
    pub facts: KernelFacts,
    /// Where node events go.
    pub recorder: Recorder,
    pub node_name: String,
    /// Asks the PLEG for a full relist (after lost events).
    pub relist_all: Arc<Notify>,
    /// Memory pressure or an OOM kill in the pod tree: evaluate eviction now.
    pub pressure: Option<mpsc::Sender<crate::eviction::Trigger>>,
}

impl KernelRouter {
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        pokes: mpsc::Sender<PodPoke>,
        cancel: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                () = cancel.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            if let Some(poke) = self.route(ev) {
                let _ = pokes.send(poke).await;
            }
        }
    }

    /// Handles one event; returns the poke for a pod worker, if any.
    fn route(&mut self, mut ev: Event) -> Option<PodPoke> {
        if let Detail::EventsLost { kernel, userspace } = ev.detail {
            warn!(
                kernel,
                userspace, "kernel events were lost: relisting every pod"
            );
            self.relist_all.notify_one();
            return None;
        }
        self.attributor.attribute(&mut ev);
        let at = Instant::now();
        if let Detail::OomKill(oom) = &ev.detail {
            if oom.scope == OomScope::Node {
                let message = format!(
                    "System OOM encountered, victim process: {}, pid: {}",
                    ev.comm, ev.pid
                );
                self.recorder.record(
                    &node_reference(&self.node_name),
                    EventType::Warning,
                    "SystemOOM",
                    &message,
                );
            }
            if let Some(container) = ev.pod.as_ref().and_then(|p| p.container_id.as_deref()) {
                self.facts.record_oom(
                    container,
                    OomRecord {
                        at: jiff::Timestamp::try_from(ev.time)
                            .unwrap_or_else(|_| jiff::Timestamp::now()),
                        pid: ev.pid,
                        comm: ev.comm.clone(),
                        scope: oom.scope,
                        limit_cgroup: oom.limit_cgroup.clone(),
                        limit_bytes: oom.limit_bytes,
                        usage_bytes: oom.usage_bytes,
                        anon_rss_bytes: oom.anon_rss_bytes,
                        oom_score_adj: oom.oom_score_adj,
                    },
                );
            }
        }
        if matches!(ev.detail, Detail::MemoryPressure(_) | Detail::OomKill(_))
            && let Some(tx) = &self.pressure
        {
            // A full channel means an evaluation is already queued: triggers merge.
            let _ = tx.try_send(crate::eviction::Trigger::now());
        }
        let pod = ev.pod.as_ref()?;
        let end = |exit_code| {
            Some(Trigger::Kernel(KernelEnd {
                container: pod.container_id.clone()?,
                exit_code,
                at: jiff::Timestamp::try_from(ev.time).unwrap_or_else(|_| jiff::Timestamp::now()),
            }))
        };
        let trigger = match &ev.detail {
            // The worker publishes the kill at once; if it was the init process, the
            // container's exit follows as its own event.
            Detail::OomKill(_) => Trigger::Relist,
            Detail::CgroupRemoved { .. } => end(None)?,
            // A container with its own pid namespace ends when its init (pid 1 there) dies:
            // the kernel flags that exit, and then kills the rest of the namespace. A
            // container in the pod's or the host's pid namespace ends when its main process
            // dies (the runtime then kills what it left behind): its worker recorded that
            // pid from the runtime, and the exit of that pid in that container's cgroup is
            // its end, with the code. Without a recorded pid (the worker has not asked yet,
            // or the runtime did not say), such a container ends when its cgroup empties;
            // the exit tracepoint fires before the task leaves its cgroup, so the last exit
            // may still find itself listed: then the cgroup's removal (runc deletes it once
            // the container is gone) is what pokes.
            Detail::Exit {
                status,
                pidns_init: true,
            } => end(runtime_exit_code(*status))?,
            Detail::Exit { status, .. }
                if pod
                    .container_id
                    .as_deref()
                    .and_then(|c| self.facts.main_pid(c))
                    == Some(ev.pid) =>
            {
                end(runtime_exit_code(*status))?
            }
            Detail::Exit { .. }
                if naming::container_cgroup(&ev.cgroup).is_some_and(|c| {
                    super::cgroup_empty(&self.attributor.hierarchy().path_of(c))
                }) =>
            {
                // Not necessarily the container's main process: no exit code.
                end(None)?
            }
            _ => return None,
        };
        Some(PodPoke {
            uid: pod.pod_uid.clone(),
            trigger,
            at,
        })
    }
}

/// The exit code a runtime reports for a process that ended with `status`.
fn runtime_exit_code(status: ExitStatus) -> Option<i32> {
    match status {
        ExitStatus::Code(code) => Some(code),
        ExitStatus::Signal { signal, .. } => Some(128 + signal),
        ExitStatus::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    use super::*;
    use crate::cgroups::Hierarchy;
    use crate::events::Source;

    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const APP: &str = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const SIDE: &str = "9a8b7c6d5e4f30211f2e3d4c5b6a79889a8b7c6d5e4f30211f2e3d4c5b6a7988";
    const MAIN_PID: u32 = 4242;

    fn cgroup_of(container: &str) -> String {
        format!("/kubepods/besteffort/pod{UID}/{container}")
    }

    /// A router over a cgroup tree in `root` where both containers have processes left,
    /// and `APP`'s main pid is recorded.
    fn router(root: &Path) -> KernelRouter {
        for c in [APP, SIDE] {
            set_procs(root, c, "7\n");
        }
        let facts = KernelFacts::default();
        facts.record_main_pid(APP, MAIN_PID);
        KernelRouter {
            attributor: Attributor::new(Hierarchy::v2(root)),
            facts,
            recorder: Recorder::new("node1"),
            node_name: "node1".into(),
            relist_all: Arc::new(Notify::new()),
            pressure: None,
        }
    }

    fn set_procs(root: &Path, container: &str, procs: &str) {
        let dir = root.join(cgroup_of(container).trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
    }

    /// A process `pid` of `container` exited with code `code`, not a namespace init.
    fn exit(container: &str, pid: u32, code: i32) -> Event {
        Event {
            time: SystemTime::now(),
            kernel_ns: Some(1),
            source: Source::Bpf,
            pid,
            comm: "sh".into(),
            cgroup_id: None,
            cgroup: cgroup_of(container),
            pod: None,
            detail: Detail::Exit {
                status: ExitStatus::Code(code),
                pidns_init: false,
            },
        }
    }

    fn ended(poke: Option<PodPoke>) -> Option<(String, Option<i32>)> {
        let poke = poke?;
        assert_eq!(poke.uid, UID);
        match poke.trigger {
            Trigger::Kernel(end) => Some((end.container, end.exit_code)),
            Trigger::Relist => panic!("a relist, not an end"),
        }
    }

    #[test]
    fn the_recorded_main_pid_ends_its_container_with_the_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        assert_eq!(
            ended(r.route(exit(APP, MAIN_PID, 3))),
            Some((APP.to_owned(), Some(3))),
            "a background child keeps the cgroup populated: the pid alone says it ended"
        );
    }

    #[test]
    fn another_process_ends_the_container_only_when_the_cgroup_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        assert_eq!(ended(r.route(exit(APP, MAIN_PID + 1, 0))), None);
        set_procs(dir.path(), APP, "");
        assert_eq!(
            ended(r.route(exit(APP, MAIN_PID + 1, 0))),
            Some((APP.to_owned(), None)),
            "the last process: an end, without the main process's code"
        );
    }

    #[test]
    fn the_main_pid_counts_only_in_its_own_container() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        assert_eq!(
            ended(r.route(exit(SIDE, MAIN_PID, 3))),
            None,
            "attributed to another container (a reused pid): not APP's end, nor SIDE's"
        );
    }

    #[test]
    fn exit_codes_as_runtimes_report_them() {
        assert_eq!(runtime_exit_code(ExitStatus::Code(3)), Some(3));
        assert_eq!(
            runtime_exit_code(ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }),
            Some(137)
        );
        assert_eq!(runtime_exit_code(ExitStatus::Unknown), None);
    }
}
