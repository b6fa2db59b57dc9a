//! What the kernel told us about containers that the runtime cannot: OOM kills, with the
//! victim and the limit that was hit. Written by the kernel event router, read by pod
//! workers when they compute status.
//!
//! Also the other way round: the main pid of containers without a pid namespace of their
//! own, which pod workers learn from the runtime and the router needs to recognise that
//! process's exit as the container's end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;

use crate::events::OomScope;
use crate::status::ContainerFacts;

/// One OOM kill of a process in a container.
#[derive(Clone, Debug, PartialEq)]
pub struct OomRecord {
    pub at: Timestamp,
    pub pid: u32,
    pub comm: String,
    pub scope: OomScope,
    /// The cgroup whose limit was hit (None for a node-wide OOM).
    pub limit_cgroup: Option<String>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub anon_rss_bytes: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

impl OomRecord {
    /// One line for events and annotations.
    pub fn describe(&self, container: &str, kubepods: &str) -> String {
        let limit = match (&self.scope, self.limit_cgroup.as_deref()) {
            (OomScope::Node, _) | (_, None) => "the node ran out of memory".to_owned(),
            (OomScope::Container, Some(_)) => "the container's memory limit".to_owned(),
            (OomScope::Pod, Some(_)) => "the pod's memory limit".to_owned(),
            (OomScope::Cgroup, Some(c)) if c == kubepods => {
                "node allocatable (the kubepods cgroup's limit)".to_owned()
            }
            (OomScope::Cgroup, Some(c)) => format!("the limit of cgroup {c}"),
        };
        let mib = |b: Option<u64>| b.map_or_else(|| "?".to_owned(), |b| format!("{}Mi", b >> 20));
        format!(
            "process {} ({}) in container {container} was OOM-killed: {limit} was hit ({} of {}); victim rss {}, oom_score_adj {}",
            self.pid,
            self.comm,
            mib(self.usage_bytes),
            mib(self.limit_bytes),
            mib(self.anon_rss_bytes),
            self.oom_score_adj
                .map_or_else(|| "?".to_owned(), |a| a.to_string()),
        )
    }
}

/// Kernel facts by container id. Cheap to clone; clones share the data.
#[derive(Clone, Debug, Default)]
pub struct KernelFacts {
    ooms: Arc<Mutex<HashMap<String, Vec<OomRecord>>>>,
    /// Host pid of the main process, for containers that share a pid namespace (the pod's
    /// or the host's): its exit is not flagged as a namespace init's.
    main_pids: Arc<Mutex<HashMap<String, u32>>>,
}

impl KernelFacts {
    pub fn record_oom(&self, container_id: &str, record: OomRecord) {
        self.ooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(container_id.to_owned())
            .or_default()
            .push(record);
    }

    pub fn ooms(&self, container_id: &str) -> Vec<OomRecord> {
        self.ooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The container's main process is `pid` (a host pid).
    pub fn record_main_pid(&self, container_id: &str, pid: u32) {
        self.main_pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(container_id.to_owned(), pid);
    }

    /// The container's main pid, if one was recorded.
    pub fn main_pid(&self, container_id: &str) -> Option<u32> {
        self.main_pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container_id)
            .copied()
    }

    /// Drops the facts of containers that are gone.
    pub fn forget<'a>(&self, container_ids: impl IntoIterator<Item = &'a str>) {
        let mut ooms = self.ooms.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pids = self
            .main_pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in container_ids {
            ooms.remove(id);
            pids.remove(id);
        }
    }
}

/// How far an exit may follow the OOM kill that caused it.
pub const KILL_TO_EXIT: Duration = Duration::from_secs(2);

/// Whether the container's exit was the kernel's OOM kill of its init process: it ended by
/// SIGKILL (137) within moments of a kill the kernel reported in its cgroup. The runtime
/// may say only `Error` (e.g. when the limit hit was the pod's, not the container's).
pub fn init_oom_killed(
    finished_at: Option<Timestamp>,
    exit_code: Option<i32>,
    kills: &[OomRecord],
) -> bool {
    let (Some(finished), Some(137)) = (finished_at, exit_code) else {
        return false;
    };
    let window = jiff::SignedDuration::try_from(KILL_TO_EXIT).unwrap_or_default();
    kills
        .iter()
        .any(|k| k.at <= finished && finished.duration_since(k.at) <= window)
}

/// Status facts of one container from its kernel records.
pub fn container_facts(
    finished_at: Option<Timestamp>,
    exit_code: Option<i32>,
    kills: &[OomRecord],
) -> ContainerFacts {
    let init = init_oom_killed(finished_at, exit_code, kills);
    ContainerFacts {
        oom_killed_by_kernel: init,
        process_oom_kills: u32::try_from(kills.len())
            .unwrap_or(u32::MAX)
            .saturating_sub(u32::from(init)),
        ready_by_probe: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(at: Timestamp) -> OomRecord {
        OomRecord {
            at,
            pid: 7,
            comm: "dd".into(),
            scope: OomScope::Pod,
            limit_cgroup: Some("/kubepods/burstable/podx".into()),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(64 << 20),
            anon_rss_bytes: Some(60 << 20),
            oom_score_adj: Some(999),
        }
    }

    #[test]
    fn init_kill_needs_sigkill_exit_right_after_a_kill() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let ms = |n: i64| t + jiff::SignedDuration::from_millis(n);
        let kills = [kill(t)];
        assert!(
            init_oom_killed(Some(ms(40)), Some(137), &kills),
            "exit 40ms after the kill"
        );
        assert!(
            !init_oom_killed(Some(ms(40)), Some(1), &kills),
            "not by SIGKILL"
        );
        assert!(
            !init_oom_killed(Some(ms(5_000)), Some(137), &kills),
            "too long after"
        );
        assert!(
            !init_oom_killed(Some(ms(-10)), Some(137), &kills),
            "exit before the kill"
        );
        assert!(!init_oom_killed(None, None, &kills), "still running");
        assert!(!init_oom_killed(Some(ms(40)), Some(137), &[]), "no kill");
    }

    #[test]
    fn facts_count_other_processes() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let later = t + jiff::SignedDuration::from_secs(30);
        let kills = [kill(t), kill(later)];
        let f = container_facts(None, None, &kills);
        assert!(!f.oom_killed_by_kernel);
        assert_eq!(
            f.process_oom_kills, 2,
            "running container: every kill was of another process"
        );
        let f = container_facts(
            Some(later + jiff::SignedDuration::from_millis(30)),
            Some(137),
            &kills,
        );
        assert!(f.oom_killed_by_kernel);
        assert_eq!(f.process_oom_kills, 1);
    }

    #[test]
    fn description_names_the_limit() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let d = kill(t).describe("app", "/kubepods");
        assert!(d.contains("process 7 (dd) in container app"), "{d}");
        assert!(d.contains("the pod's memory limit"), "{d}");
        let mut k = kill(t);
        k.scope = OomScope::Cgroup;
        k.limit_cgroup = Some("/kubepods".into());
        assert!(k.describe("app", "/kubepods").contains("node allocatable"));
        k.scope = OomScope::Node;
        assert!(
            k.describe("app", "/kubepods")
                .contains("the node ran out of memory")
        );
    }

    #[test]
    fn store_records_and_forgets() {
        let f = KernelFacts::default();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        f.record_oom("c1", kill(t));
        f.record_oom("c1", kill(t));
        assert_eq!(f.ooms("c1").len(), 2);
        assert!(f.ooms("c2").is_empty());
        f.forget(["c1"]);
        assert!(f.ooms("c1").is_empty());
    }

    #[test]
    fn store_records_and_forgets_main_pids() {
        let f = KernelFacts::default();
        assert_eq!(f.main_pid("c1"), None);
        f.record_main_pid("c1", 4242);
        f.record_main_pid("c2", 4343);
        let clone = f.clone();
        assert_eq!(clone.main_pid("c1"), Some(4242), "clones share the facts");
        f.record_main_pid("c1", 4244);
        assert_eq!(f.main_pid("c1"), Some(4244), "the last recorded pid holds");
        f.forget(["c1"]);
        assert_eq!(f.main_pid("c1"), None);
        assert_eq!(f.main_pid("c2"), Some(4343), "other containers keep theirs");
    }
}
