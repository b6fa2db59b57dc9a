//! Routes attributed kernel events to whoever acts on them: pod workers (a per-pod relist),
//! the OOM fact store, node events (SystemOOM), a full relist when events were lost, and
//! eviction (pressure).
//!
//! Both sources feed it. From the polling fallback ([`Source::Poll`]) it takes OOM kills
//! (the kernel log's pid, comm and cgroups: facts, SystemOOM, a relist poke) and pressure
//! that shows reclaim (a limit hit counted in the pod tree), but no container ends: a
//! poll exit is a pid missing from `cgroup.procs` up to a second late, with no code and no
//! pid-namespace-init flag, and the generic 1 s relist that runs beside that source finds
//! the same ends from the runtime.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::facts::{KernelFacts, OomRecord};
use super::{KernelEnd, PodPoke, Trigger};
use crate::cgroups::{Attributor, naming};
use crate::events::{Detail, Event, ExitStatus, MemoryPressure, OomScope, Source};
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
    /// The event stream: every event, attributed, is published there (never waits).
    pub stream: Option<crate::stream::Hub>,
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
            if let Some(hub) = &self.stream {
                hub.publish(ev.clone());
            }
            warn!(
                kernel,
                userspace, "kernel events were lost: relisting every pod"
            );
            self.relist_all.notify_one();
            return None;
        }
        self.attributor.attribute(&mut ev);
        if let Some(hub) = &self.stream {
            hub.publish(ev.clone());
        }
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
        let evaluate = match &ev.detail {
            Detail::OomKill(_) => true,
            Detail::MemoryPressure(p) => ev.source == Source::Bpf || shows_reclaim(p),
            _ => false,
        };
        if evaluate && let Some(tx) = &self.pressure {
            // A full channel means an evaluation is already queued: triggers merge.
            let _ = tx.try_send(crate::eviction::Trigger::now());
        }
        let pod = ev.pod.as_ref()?;
        if ev.source == Source::Poll && !matches!(ev.detail, Detail::OomKill(_)) {
            // Ends are the generic relist's in poll mode (see the module doc).
            return None;
        }
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

/// Whether a polling-source pressure record counts reclaim (a memory cgroup at its limit)
/// rather than only a PSI average: `some avg10` decays over tens of seconds, so it stays
/// above zero long after the pressure ended, and would have eviction evaluate every
/// second on an idle node.
fn shows_reclaim(p: &MemoryPressure) -> bool {
    p.memcg_reclaims > 0 || p.pages_scanned > 0 || p.direct_reclaims > 0 || p.throttled > 0
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
            stream: None,
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

    /// `ev` as the polling fallback reports it: no pid-namespace-init flag, no kernel time.
    fn polled(mut ev: Event) -> Event {
        ev.source = Source::Poll;
        ev.kernel_ns = None;
        ev
    }

    /// The kernel log's account of an OOM kill of `pid` in `container` at its own limit.
    fn oom_kill(container: &str, pid: u32, scope: OomScope) -> Event {
        Event {
            time: SystemTime::now(),
            kernel_ns: None,
            source: Source::Poll,
            pid,
            comm: "dd".into(),
            cgroup_id: None,
            cgroup: cgroup_of(container),
            pod: None,
            detail: Detail::OomKill(crate::events::OomKill {
                scope,
                limit_cgroup_id: None,
                limit_cgroup: (scope != OomScope::Node).then(|| cgroup_of(container)),
                limit_bytes: Some(32 << 20),
                usage_bytes: Some(32 << 20),
                anon_rss_bytes: Some(31 << 20),
                file_rss_bytes: None,
                shmem_rss_bytes: None,
                total_vm_bytes: None,
                oom_score_adj: Some(1000),
                invoker_pid: pid,
            }),
        }
    }

    #[test]
    fn polled_exits_poke_no_worker() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        let killed = |pid| {
            let mut ev = polled(exit(APP, pid, 0));
            ev.detail = Detail::Exit {
                status: ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false,
                },
                pidns_init: false,
            };
            ev
        };
        assert!(
            r.route(killed(MAIN_PID)).is_none(),
            "the recorded main pid: the generic relist finds the end"
        );
        set_procs(dir.path(), APP, "");
        assert!(
            r.route(polled(exit(APP, MAIN_PID + 1, 0))).is_none(),
            "an emptied cgroup: the generic relist finds the end"
        );
        let mut removed = polled(exit(APP, 0, 0));
        removed.detail = Detail::CgroupRemoved { level: 4 };
        assert!(r.route(removed).is_none());
        // The same exit from BPF still ends the container at once.
        assert_eq!(
            ended(r.route(exit(APP, MAIN_PID + 1, 0))),
            Some((APP.to_owned(), None))
        );
    }

    #[test]
    fn polled_oom_kills_become_facts_node_events_and_pokes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        let (tx, mut triggers) = mpsc::channel(4);
        r.pressure = Some(tx);
        let poke = r
            .route(oom_kill(APP, 77, OomScope::Container))
            .expect("a poke for the pod");
        assert_eq!(
            (poke.uid.as_str(), poke.trigger),
            (UID, Trigger::Relist),
            "the worker reads the fact and decides OOMKilled or ProcessOOMKilled"
        );
        let facts = r.facts.ooms(APP);
        assert_eq!(facts.len(), 1);
        assert_eq!(
            (facts[0].pid, facts[0].comm.as_str(), facts[0].scope),
            (77, "dd", OomScope::Container)
        );
        assert_eq!(
            facts[0].limit_cgroup.as_deref(),
            Some(cgroup_of(APP).as_str())
        );
        assert!(
            triggers.try_recv().is_ok(),
            "an OOM kill evaluates eviction"
        );
        assert!(
            r.recorder.events().list().is_empty(),
            "a container's own limit is no SystemOOM"
        );

        r.route(oom_kill(SIDE, 78, OomScope::Node));
        let events = r.recorder.events().list();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason.as_deref(), Some("SystemOOM"));
        assert_eq!(
            events[0].message.as_deref(),
            Some("System OOM encountered, victim process: dd, pid: 78")
        );
    }

    #[test]
    fn polled_pressure_evaluates_eviction_only_on_reclaim() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = router(dir.path());
        let (tx, mut triggers) = mpsc::channel(4);
        r.pressure = Some(tx);
        let pressure = |cgroup: &str, p: MemoryPressure| {
            let mut ev = polled(exit(APP, 0, 0));
            ev.cgroup = cgroup.to_owned();
            ev.detail = Detail::MemoryPressure(p);
            ev
        };
        let psi = MemoryPressure {
            window_ms: 1000,
            psi_some_avg10: Some(0.04),
            ..MemoryPressure::default()
        };
        assert!(r.route(pressure("/", psi.clone())).is_none());
        r.route(pressure(&cgroup_of(APP), psi));
        assert!(
            triggers.try_recv().is_err(),
            "a lingering PSI average alone evaluates nothing"
        );
        let limit_hits = MemoryPressure {
            window_ms: 1000,
            memcg_reclaims: 3,
            ..MemoryPressure::default()
        };
        assert!(
            r.route(pressure(&cgroup_of(APP), limit_hits)).is_none(),
            "pressure pokes no worker"
        );
        assert!(triggers.try_recv().is_ok(), "limit hits evaluate eviction");
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
