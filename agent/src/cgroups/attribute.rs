//! Cgroup id -> path index and Kubernetes attribution of events.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::hierarchy::normalize;
use super::{CgroupError, Hierarchy, naming};
use crate::events::{Detail, Event, OomScope};

/// Removed cgroups kept resolvable: events for a process can arrive just after its cgroup's
/// rmdir event.
const REMOVED_KEPT: usize = 1024;

/// On an unknown id, rescan the watched roots at most this often, so a flood of unknown ids
/// cannot make us walk the tree per event.
const RESCAN_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Resolves cgroup ids to paths and fills in the cgroup, pod and OOM scope of events.
#[derive(Debug)]
pub struct Attributor {
    hierarchy: Hierarchy,
    index: HashMap<u64, String>,
    /// Subtrees indexed so far, rescanned on a miss.
    roots: Vec<String>,
    /// Most recently removed last.
    removed: VecDeque<(u64, String)>,
    last_rescan: Option<Instant>,
    rescans: u64,
}

impl Attributor {
    pub fn new(hierarchy: Hierarchy) -> Self {
        Attributor {
            hierarchy,
            index: HashMap::new(),
            roots: Vec::new(),
            removed: VecDeque::new(),
            last_rescan: None,
            rescans: 0,
        }
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Indexes every cgroup at or below `rel` and remembers `rel` as a root to rescan on
    /// misses. Returns how many cgroups were indexed.
    pub fn index_subtree(&mut self, rel: &str) -> Result<usize, CgroupError> {
        let rel = normalize(rel);
        let found = self.hierarchy.walk(&rel)?;
        let n = found.len();
        for (path, id) in found {
            self.index.insert(id, path);
        }
        if !self.roots.contains(&rel) {
            self.roots.push(rel);
        }
        Ok(n)
    }

    /// A cgroup was created (from a `cgroup_mkdir` event).
    pub fn note_created(&mut self, id: u64, rel: &str) {
        self.removed.retain(|(rid, _)| *rid != id);
        self.index.insert(id, normalize(rel));
    }

    /// A cgroup was removed; it stays resolvable for the next [`REMOVED_KEPT`] removals.
    pub fn note_removed(&mut self, id: u64) {
        if let Some(path) = self.index.remove(&id) {
            self.remember_removed(id, path);
        }
    }

    /// The path of cgroup `id`, rescanning the watched roots on a miss (rate-limited).
    pub fn path_of_id(&mut self, id: u64) -> Option<String> {
        self.path_of_id_at(id, Instant::now())
    }

    /// How many times a miss made us rescan the roots.
    pub fn rescans(&self) -> u64 {
        self.rescans
    }

    /// Fills what the source left out: the cgroup path from its id, the pod and container, and
    /// for OOM kills the limit cgroup's path and the scope (a source's `Node` is kept).
    pub fn attribute(&mut self, ev: &mut Event) {
        // The index follows the kernel's own cgroup events, so later events resolve without
        // walking the tree.
        match (&ev.detail, ev.cgroup_id) {
            (Detail::CgroupCreated { .. }, Some(id)) if !ev.cgroup.is_empty() => {
                self.note_created(id, &ev.cgroup.clone());
            }
            (Detail::CgroupRemoved { .. }, Some(id)) if !ev.cgroup.is_empty() => {
                self.note_created(id, &ev.cgroup.clone());
                self.note_removed(id);
            }
            _ => {}
        }
        if ev.cgroup.is_empty()
            && let Some(path) = ev.cgroup_id.and_then(|id| self.path_of_id(id))
        {
            ev.cgroup = path;
        }
        if ev.pod.is_none() && !ev.cgroup.is_empty() {
            ev.pod = naming::parse_pod(&ev.cgroup);
        }
        if let Detail::OomKill(oom) = &mut ev.detail {
            if oom.limit_cgroup.is_none() {
                oom.limit_cgroup = oom.limit_cgroup_id.and_then(|id| self.path_of_id(id));
            }
            if oom.scope != OomScope::Node
                && !ev.cgroup.is_empty()
                && let Some(limit) = &oom.limit_cgroup
            {
                oom.scope = naming::oom_scope(&ev.cgroup, Some(limit));
            }
        }
    }

    fn path_of_id_at(&mut self, id: u64, now: Instant) -> Option<String> {
        if let Some(path) = self.lookup(id) {
            return Some(path);
        }
        let due = self
            .last_rescan
            .is_none_or(|last| now.saturating_duration_since(last) >= RESCAN_MIN_INTERVAL);
        if !due || self.roots.is_empty() {
            return None;
        }
        self.last_rescan = Some(now);
        self.rescan();
        self.lookup(id)
    }

    fn lookup(&self, id: u64) -> Option<String> {
        if let Some(path) = self.index.get(&id) {
            return Some(path.clone());
        }
        self.removed
            .iter()
            .rev()
            .find(|(rid, _)| *rid == id)
            .map(|(_, path)| path.clone())
    }

    /// Rebuilds the index from the roots; entries that vanished move to the removed list.
    fn rescan(&mut self) {
        self.rescans += 1;
        let mut fresh = HashMap::with_capacity(self.index.len());
        for root in &self.roots {
            match self.hierarchy.walk(root) {
                Ok(found) => fresh.extend(found.into_iter().map(|(path, id)| (id, path))),
                Err(e) => tracing::debug!(root, error = %e, "cannot rescan cgroup root"),
            }
        }
        let old = std::mem::replace(&mut self.index, fresh);
        for (id, path) in old {
            if !self.index.contains_key(&id) {
                self.remember_removed(id, path);
            }
        }
    }

    fn remember_removed(&mut self, id: u64, path: String) {
        if self.removed.len() == REMOVED_KEPT {
            self.removed.pop_front();
        }
        self.removed.push_back((id, path));
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::time::SystemTime;

    use super::*;
    use crate::events::{ExitStatus, OomKill, PodRef, Source};

    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const UID_: &str = "8dbc5577_d0e2_4706_8787_57d52c03ddf2";
    const CID: &str = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn ino(path: &Path) -> u64 {
        fs::metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino()
    }

    fn mkdirs(root: &Path, rel: &str) {
        fs::create_dir_all(root.join(rel.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
    }

    fn event(cgroup_id: Option<u64>, detail: Detail) -> Event {
        Event {
            time: SystemTime::now(),
            kernel_ns: Some(1),
            source: Source::Bpf,
            pid: 1234,
            comm: "app".into(),
            cgroup_id,
            cgroup: String::new(),
            pod: None,
            detail,
        }
    }

    fn oom(scope: OomScope, limit_cgroup_id: Option<u64>) -> Detail {
        Detail::OomKill(OomKill {
            scope,
            limit_cgroup_id,
            limit_cgroup: None,
            limit_bytes: None,
            usage_bytes: None,
            anon_rss_bytes: None,
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            total_vm_bytes: None,
            oom_score_adj: None,
            invoker_pid: 0,
        })
    }

    fn scope_of(ev: &Event) -> (OomScope, Option<String>) {
        match &ev.detail {
            Detail::OomKill(o) => (o.scope, o.limit_cgroup.clone()),
            other => panic!("not an OOM kill: {other:?}"),
        }
    }

    #[test]
    fn attributes_exit_and_oom_on_v1_cgroupfs_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = format!("/kubepods/burstable/pod{UID}");
        let ctr = format!("{pod}/{CID}");
        mkdirs(dir.path(), &ctr);
        mkdirs(dir.path(), "/system.slice");
        let h = Hierarchy::v1(dir.path(), 4);
        let mut a = Attributor::new(h.clone());
        assert_eq!(a.index_subtree("/kubepods").expect("index"), 4);

        let ctr_id = ino(&h.path_of(&ctr));
        let pod_id = ino(&h.path_of(&pod));
        let mut exit = event(
            Some(ctr_id),
            Detail::Exit {
                status: ExitStatus::Code(1),
                pidns_init: false,
            },
        );
        a.attribute(&mut exit);
        assert_eq!(exit.cgroup, ctr);
        assert_eq!(
            exit.pod,
            Some(PodRef {
                pod_uid: UID.into(),
                container_id: Some(CID.into())
            })
        );

        // Pod-level limit.
        let mut kill = event(Some(ctr_id), oom(OomScope::Cgroup, Some(pod_id)));
        a.attribute(&mut kill);
        assert_eq!(scope_of(&kill), (OomScope::Pod, Some(pod.clone())));

        // Container limit.
        let mut kill = event(Some(ctr_id), oom(OomScope::Cgroup, Some(ctr_id)));
        a.attribute(&mut kill);
        assert_eq!(scope_of(&kill), (OomScope::Container, Some(ctr.clone())));

        // QoS cgroup's limit.
        let qos_id = ino(&h.path_of("/kubepods/burstable"));
        let mut kill = event(Some(ctr_id), oom(OomScope::Container, Some(qos_id)));
        a.attribute(&mut kill);
        assert_eq!(
            scope_of(&kill),
            (OomScope::Cgroup, Some("/kubepods/burstable".into()))
        );

        // The source said Node: kept.
        let mut kill = event(Some(ctr_id), oom(OomScope::Node, None));
        a.attribute(&mut kill);
        assert_eq!(scope_of(&kill), (OomScope::Node, None));

        // A path the source already set is kept; the pod comes from it.
        let mut ev = event(
            None,
            Detail::Exit {
                status: ExitStatus::Unknown,
                pidns_init: false,
            },
        );
        ev.cgroup = pod.clone();
        a.attribute(&mut ev);
        assert_eq!(ev.cgroup, pod);
        assert_eq!(
            ev.pod.map(|p| (p.pod_uid, p.container_id)),
            Some((UID.into(), None))
        );

        // Outside the indexed roots: no path (after one rescan that does not find it).
        let outside = ino(&h.path_of("/system.slice"));
        let mut ev = event(
            Some(outside),
            Detail::Exit {
                status: ExitStatus::Unknown,
                pidns_init: false,
            },
        );
        a.attribute(&mut ev);
        assert_eq!(ev.cgroup, "");
        assert_eq!(ev.pod, None);
    }

    #[test]
    fn attributes_oom_on_v2_systemd_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let ctr = format!("{pod}/cri-containerd-{CID}.scope");
        mkdirs(dir.path(), &ctr);
        let h = Hierarchy::v2(dir.path());
        let mut a = Attributor::new(h.clone());
        a.index_subtree("/").expect("index");
        let ctr_id = ino(&h.path_of(&ctr));
        let mut kill = event(Some(ctr_id), oom(OomScope::Cgroup, Some(ctr_id)));
        a.attribute(&mut kill);
        assert_eq!(kill.cgroup, ctr);
        assert_eq!(kill.pod.as_ref().map(|p| p.pod_uid.as_str()), Some(UID));
        assert_eq!(scope_of(&kill), (OomScope::Container, Some(ctr.clone())));

        // The root as limit is a node OOM.
        let root_id = ino(dir.path());
        let mut kill = event(Some(ctr_id), oom(OomScope::Cgroup, Some(root_id)));
        a.attribute(&mut kill);
        assert_eq!(scope_of(&kill), (OomScope::Node, Some("/".into())));
    }

    #[test]
    fn unknown_ids_rescan_at_most_once_per_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        mkdirs(dir.path(), "/kubepods");
        let h = Hierarchy::v1(dir.path(), 4);
        let mut a = Attributor::new(h.clone());
        a.index_subtree("/kubepods").expect("index");
        let t0 = Instant::now();

        // A flood of unknown ids within one interval walks the tree once.
        for id in 1_000_000..1_001_000 {
            assert_eq!(
                a.path_of_id_at(id, t0 + Duration::from_millis(id % 50)),
                None
            );
        }
        assert_eq!(a.rescans(), 1);

        // A cgroup created without a mkdir event is found by the next allowed rescan only.
        mkdirs(dir.path(), "/kubepods/late");
        let late = ino(&h.path_of("/kubepods/late"));
        assert_eq!(a.path_of_id_at(late, t0 + Duration::from_millis(99)), None);
        assert_eq!(a.rescans(), 1);
        assert_eq!(
            a.path_of_id_at(late, t0 + RESCAN_MIN_INTERVAL).as_deref(),
            Some("/kubepods/late")
        );
        assert_eq!(a.rescans(), 2);
        // Now indexed: no further rescans.
        assert_eq!(
            a.path_of_id_at(late, t0 + RESCAN_MIN_INTERVAL).as_deref(),
            Some("/kubepods/late")
        );
        assert_eq!(a.rescans(), 2);
    }

    #[test]
    fn removed_cgroup_resolves_for_late_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctr = format!("/kubepods/pod{UID}/{CID}");
        mkdirs(dir.path(), &ctr);
        let h = Hierarchy::v1(dir.path(), 4);
        let mut a = Attributor::new(h.clone());
        a.index_subtree("/kubepods").expect("index");
        let id = ino(&h.path_of(&ctr));

        // rmdir event, then the directory is gone, then the process's exit arrives.
        a.note_removed(id);
        fs::remove_dir(h.path_of(&ctr)).expect("rmdir");
        let mut exit = event(
            Some(id),
            Detail::Exit {
                status: ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false,
                },
                pidns_init: false,
            },
        );
        a.attribute(&mut exit);
        assert_eq!(exit.cgroup, ctr);
        assert_eq!(exit.pod.and_then(|p| p.container_id).as_deref(), Some(CID));
        assert_eq!(a.rescans(), 0);

        // Only the last REMOVED_KEPT removals are kept.
        for fake in 0..REMOVED_KEPT as u64 {
            a.note_created(10_000_000 + fake, &format!("/kubepods/gone{fake}"));
            a.note_removed(10_000_000 + fake);
        }
        assert_eq!(a.lookup(id), None);
        assert_eq!(a.lookup(10_000_000).as_deref(), Some("/kubepods/gone0"));
    }

    #[test]
    fn rescan_moves_vanished_cgroups_to_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        mkdirs(dir.path(), "/kubepods/a");
        let h = Hierarchy::v1(dir.path(), 4);
        let mut a = Attributor::new(h.clone());
        a.index_subtree("/kubepods").expect("index");
        let gone = ino(&h.path_of("/kubepods/a"));
        // Created before the removal: test filesystems reuse inode numbers (cgroupfs does not).
        mkdirs(dir.path(), "/kubepods/b");
        fs::remove_dir(h.path_of("/kubepods/a")).expect("rmdir");
        let b = ino(&h.path_of("/kubepods/b"));
        assert_eq!(a.path_of_id(b).as_deref(), Some("/kubepods/b"));
        assert!(!a.index.contains_key(&gone));
        assert_eq!(a.path_of_id(gone).as_deref(), Some("/kubepods/a"));
    }

    #[test]
    fn note_created_indexes_without_a_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Attributor::new(Hierarchy::v2(dir.path()));
        a.note_created(77, "kubepods/x/");
        assert_eq!(a.path_of_id(77).as_deref(), Some("/kubepods/x"));
        // No roots were indexed: a miss never walks.
        assert_eq!(a.path_of_id(78), None);
        assert_eq!(a.rescans(), 0);
    }

    #[test]
    fn kernel_cgroup_events_keep_the_index_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Attributor::new(Hierarchy::v2(dir.path()));
        let mut created = event(Some(90), Detail::CgroupCreated { level: 2 });
        created.cgroup = "/kubepods/podx".into();
        a.attribute(&mut created);
        let mut exit = event(
            Some(90),
            Detail::Exit {
                status: crate::events::ExitStatus::Code(0),
                pidns_init: false,
            },
        );
        a.attribute(&mut exit);
        assert_eq!(exit.cgroup, "/kubepods/podx");

        let mut removed = event(Some(90), Detail::CgroupRemoved { level: 2 });
        removed.cgroup = "/kubepods/podx".into();
        a.attribute(&mut removed);
        // A late event for the removed cgroup still resolves, without any walk.
        let mut late = event(
            Some(90),
            Detail::Exit {
                status: crate::events::ExitStatus::Code(1),
                pidns_init: false,
            },
        );
        a.attribute(&mut late);
        assert_eq!(late.cgroup, "/kubepods/podx");
        assert_eq!(a.rescans(), 0);
    }

    #[test]
    fn index_subtree_of_missing_root_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Attributor::new(Hierarchy::v1(dir.path(), 4));
        let err = a.index_subtree("/kubepods").expect_err("missing");
        assert!(err.is_not_found(), "{err:?}");
    }
}
