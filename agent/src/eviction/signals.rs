//! Observing the eviction signals and per-pod usage. Every path is below an injected root
//! (`/proc`, the cgroup mount, kubelet's root dir), so tests run on fixture directories.
//! All calls block on the file system: the async shell runs them on a blocking thread.
//!
//! | signal | available | capacity |
//! |---|---|---|
//! | `memory.available` | capacity − root working set | `MemTotal` |
//! | `allocatableMemory.available` | kubepods limit − kubepods working set | kubepods limit |
//! | `nodefs.available`, `nodefs.inodesFree` | statvfs `f_bavail`·`f_frsize`, `f_ffree` | `f_blocks`·`f_frsize`, `f_files` |
//! | `imagefs.*`, `containerfs.*` | the same, on the runtime's image filesystem | |
//! | `pid.available` | capacity − tasks (`/proc/loadavg`) | min(`pid_max`, `threads-max`) |
//!
//! The working set is usage − `inactive_file`. The root's usage: on cgroup v1
//! `memory.usage_in_bytes` and `total_inactive_file` of the root memory cgroup; on v2, where
//! the root has no `memory.current`, `anon + file` of the root's `memory.stat` (what runc
//! reports), or `MemTotal − MemFree` and `Inactive(file)` from `meminfo` on kernels whose root
//! has no `memory.stat`. Without a kubepods memory limit there is no
//! `allocatableMemory.available` observation (as upstream: the limit is the capacity).
//! A filesystem that reports no inode count (`f_files == 0`) gives no inode observation.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroups::driver::CgroupManager as _;
use crate::cgroups::hierarchy::join;
use crate::cgroups::{CgroupVersion, QosTree};
use crate::config::eviction::Signal;
use crate::model::qos::QosClass;

use super::EvictionError;
use super::pod::{PodInfo, PodUsage};

/// One signal's value: how much is available of how much there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: u64,
    pub capacity: u64,
}

/// What is left of an evicted pod: the eviction manager waits for it before the next
/// eviction, as upstream waits for the pod's cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remnant {
    /// The pod cgroup is gone.
    Gone,
    /// The pod cgroup is there with this many tasks (`None`: unknown).
    Present { processes: Option<u64> },
}

impl Remnant {
    /// Nothing of the pod runs any more.
    #[must_use]
    pub fn is_cleaned_up(self) -> bool {
        matches!(self, Self::Gone | Self::Present { processes: Some(0) })
    }
}

/// The signals observed at one time, and the state of evicted pods' cgroups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    signals: BTreeMap<Signal, Observation>,
    /// Evicted pods being waited for, by UID.
    pub remnants: BTreeMap<String, Remnant>,
}

impl Observations {
    #[must_use]
    pub fn get(&self, signal: Signal) -> Option<Observation> {
        self.signals.get(&signal).copied()
    }

    pub fn insert(&mut self, signal: Signal, observation: Observation) {
        self.signals.insert(signal, observation);
    }

    /// Adds an observation (builder style, for tests and benchmarks).
    #[must_use]
    pub fn with(mut self, signal: Signal, available: u64, capacity: u64) -> Self {
        self.insert(
            signal,
            Observation {
                available,
                capacity,
            },
        );
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (Signal, Observation)> + '_ {
        self.signals.iter().map(|(&s, &o)| (s, o))
    }
}

/// Where the signals are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRoots {
    /// `/proc`: `meminfo`, `loadavg`, `sys/kernel/pid_max`, `sys/kernel/threads-max`.
    pub proc_root: PathBuf,
    /// A path on the node filesystem (`nodefs`): kubelet's root dir.
    pub nodefs: PathBuf,
}

/// Which per-pod statistics to gather: none while no threshold is met (ranking is the only
/// use of them; reading every pod's `memory.stat` and `pids.current` was most of an idle
/// agent's periodic work).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodStatsNeed {
    /// Pod memory and processes, for ranking.
    pub usage: bool,
    /// Per-container memory, for the eviction message.
    pub containers: bool,
    /// Walk the pods' local storage.
    pub disk: bool,
}

/// Reads signals and pod usage from the node.
#[derive(Debug, Clone)]
pub struct Observer {
    roots: SignalRoots,
    tree: QosTree,
}

impl Observer {
    #[must_use]
    pub fn new(roots: SignalRoots, tree: QosTree) -> Self {
        Self { roots, tree }
    }

    #[must_use]
    pub fn roots(&self) -> &SignalRoots {
        &self.roots
    }

    /// The pod cgroup tree observed.
    #[must_use]
    pub fn tree(&self) -> &QosTree {
        &self.tree
    }

    /// The node signals. A signal that cannot be read is left out and its error returned;
    /// the others are still observed. `imagefs` is a path on the runtime's image
    /// filesystem; without one (or when it cannot be read) `imagefs` is `nodefs`.
    #[must_use]
    pub fn observe_node(&self, imagefs: Option<&Path>) -> (Observations, Vec<EvictionError>) {
        let mut obs = Observations::default();
        let mut errors = Vec::new();
        match self.node_memory() {
            Ok(o) => obs.insert(Signal::MemoryAvailable, o),
            Err(e) => errors.push(e),
        }
        match self.allocatable_memory() {
            Ok(Some(o)) => obs.insert(Signal::AllocatableMemoryAvailable, o),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        let nodefs = match statvfs(&self.roots.nodefs) {
            Ok(fs) => Some(fs),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let imagefs = match imagefs.map(statvfs) {
            Some(Ok(fs)) => Some(fs),
            Some(Err(e)) => {
                errors.push(e);
                nodefs
            }
            None => nodefs,
        };
        let fs_signals = [
            (nodefs, Signal::NodeFsAvailable, Signal::NodeFsInodesFree),
            (imagefs, Signal::ImageFsAvailable, Signal::ImageFsInodesFree),
            (
                imagefs,
                Signal::ContainerFsAvailable,
                Signal::ContainerFsInodesFree,
            ),
        ];
        for (fs, bytes, inodes) in fs_signals {
            let Some(fs) = fs else { continue };
            obs.insert(bytes, fs.bytes);
            if let Some(i) = fs.inodes {
                obs.insert(inodes, i);
            }
        }
        match self.pids() {
            Ok(o) => obs.insert(Signal::PidAvailable, o),
            Err(e) => errors.push(e),
        }
        (obs, errors)
    }

    /// `memory.available`.
    fn node_memory(&self) -> Result<Observation, EvictionError> {
        let meminfo = Meminfo::read(&self.roots.proc_root)?;
        let capacity = meminfo.get("MemTotal")?;
        let driver = self.tree.driver();
        let working_set = match driver.version() {
            CgroupVersion::V1 => {
                driver
                    .memory_usage("/")
                    .map_err(|source| EvictionError::Cgroup {
                        what: "memory usage",
                        cgroup: "/".to_owned(),
                        source,
                    })?
                    .working_set_bytes
            }
            CgroupVersion::V2 => v2_root_working_set(driver.root(), &meminfo)?,
        };
        Ok(Observation {
            available: capacity.saturating_sub(working_set),
            capacity,
        })
    }

    /// `allocatableMemory.available`; `None` when kubepods has no memory limit.
    fn allocatable_memory(&self) -> Result<Option<Observation>, EvictionError> {
        let kubepods = self.tree.kubepods();
        let cgroup_error = |what| {
            let cgroup = kubepods.clone();
            move |source| EvictionError::Cgroup {
                what,
                cgroup,
                source,
            }
        };
        let Some(limit) = self
            .tree
            .kubepods_memory_limit()
            .map_err(cgroup_error("memory limit"))?
        else {
            return Ok(None);
        };
        let usage = self
            .tree
            .kubepods_usage()
            .map_err(cgroup_error("memory usage"))?;
        Ok(Some(Observation {
            available: limit.saturating_sub(usage.working_set_bytes),
            capacity: limit,
        }))
    }

    /// `pid.available`.
    fn pids(&self) -> Result<Observation, EvictionError> {
        let kernel = self.roots.proc_root.join("sys/kernel");
        let pid_max = read_number(&kernel.join("pid_max"), "pid_max")?;
        // threads-max also caps the tasks; a kernel without the file leaves pid_max alone.
        let capacity = match read_number(&kernel.join("threads-max"), "threads-max") {
            Ok(threads) => pid_max.min(threads),
            Err(EvictionError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                pid_max
            }
            Err(e) => return Err(e),
        };
        // `/proc/loadavg`'s fourth field is `running/total` tasks (sysinfo(2) truncates at 65535).
        let path = self.roots.proc_root.join("loadavg");
        let text = read_file(&path)?;
        let tasks = text
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse::<u64>().ok())
            .ok_or(EvictionError::Malformed {
                path,
                field: "task count",
            })?;
        Ok(Observation {
            available: capacity.saturating_sub(tasks),
            capacity,
        })
    }

    /// Every pod's usage: pod memory and processes, per-container memory and local storage
    /// as `need` says. What cannot be read stays `None` (a pod whose cgroup is
    /// gone is no error); other failures are returned.
    #[must_use]
    pub fn observe_pods(
        &self,
        pods: &[PodInfo],
        need: PodStatsNeed,
    ) -> (Vec<PodUsage>, Vec<EvictionError>) {
        let mut errors = Vec::new();
        let usages = pods
            .iter()
            .map(|info| self.observe_pod(info, need, &mut errors))
            .collect();
        (usages, errors)
    }

    fn observe_pod(
        &self,
        info: &PodInfo,
        need: PodStatsNeed,
        errors: &mut Vec<EvictionError>,
    ) -> PodUsage {
        let mut usage = PodUsage::unmeasured(info);
        let cgroup = match self.tree.pod_cgroup_of(&info.uid, info.qos) {
            Ok(cgroup) => cgroup,
            Err(source) => {
                errors.push(EvictionError::Cgroup {
                    what: "name",
                    cgroup: info.uid.clone(),
                    source,
                });
                return usage;
            }
        };
        if need.usage {
            usage.memory_working_set = self.working_set(&cgroup, errors);
            usage.processes = match pids_current(&self.tree, &cgroup) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(e);
                    None
                }
            };
        }
        if need.containers {
            for (c, info) in usage.containers.iter_mut().zip(&info.containers) {
                if let Some(id) = &info.id {
                    c.memory_working_set = self.working_set(&join(&cgroup, id), errors);
                }
            }
        }
        if need.disk {
            match disk_usage(&info.local_storage) {
                Ok(d) => {
                    usage.disk_bytes = Some(d.bytes);
                    usage.inodes = Some(d.inodes);
                }
                Err(e) => errors.push(e),
            }
        }
        usage
    }

    fn working_set(&self, cgroup: &str, errors: &mut Vec<EvictionError>) -> Option<u64> {
        match self.tree.driver().memory_usage(cgroup) {
            Ok(u) => Some(u.working_set_bytes),
            Err(e) if e.is_not_found() => None,
            Err(source) => {
                errors.push(EvictionError::Cgroup {
                    what: "memory usage",
                    cgroup: cgroup.to_owned(),
                    source,
                });
                None
            }
        }
    }

    /// What is left of the pod `uid` of class `qos`.
    #[must_use]
    pub fn remnant(&self, uid: &str, qos: QosClass) -> Remnant {
        let Ok(cgroup) = self.tree.pod_cgroup_of(uid, qos) else {
            return Remnant::Gone;
        };
        if !self.tree.driver().exists(&cgroup) {
            return Remnant::Gone;
        }
        Remnant::Present {
            processes: pids_current(&self.tree, &cgroup).ok().flatten(),
        }
    }
}

/// The tasks in a cgroup and its children (`pids.current`); `None` when the file is missing.
fn pids_current(tree: &QosTree, cgroup: &str) -> Result<Option<u64>, EvictionError> {
    let driver = tree.driver();
    let rel = cgroup.trim_start_matches('/');
    let path = match driver.version() {
        CgroupVersion::V1 => driver.root().join("pids").join(rel),
        CgroupVersion::V2 => driver.root().join(rel),
    }
    .join("pids.current");
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| EvictionError::Malformed {
                path,
                field: "pids.current",
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EvictionError::Read { path, source }),
    }
}

/// The fields of `/proc/meminfo`, in bytes.
struct Meminfo {
    path: PathBuf,
    fields: BTreeMap<String, u64>,
}

impl Meminfo {
    fn read(proc_root: &Path) -> Result<Self, EvictionError> {
        let path = proc_root.join("meminfo");
        let text = read_file(&path)?;
        let fields = text
            .lines()
            .filter_map(|line| {
                let (key, rest) = line.split_once(':')?;
                let mut parts = rest.split_whitespace();
                let value: u64 = parts.next()?.parse().ok()?;
                let bytes = match parts.next() {
                    Some("kB") => value.checked_mul(1024)?,
                    None => value,
                    Some(_) => return None,
                };
                Some((key.to_owned(), bytes))
            })
            .collect();
        Ok(Self { path, fields })
    }

    fn get(&self, field: &'static str) -> Result<u64, EvictionError> {
        self.fields
            .get(field)
            .copied()
            .ok_or_else(|| EvictionError::Malformed {
                path: self.path.clone(),
                field,
            })
    }
}

/// The root working set on cgroup v2 (see the module docs).
fn v2_root_working_set(mount: &Path, meminfo: &Meminfo) -> Result<u64, EvictionError> {
    let path = mount.join("memory.stat");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let field = |key: &'static str| {
                text.lines()
                    .find_map(|line| {
                        let (k, v) = line.split_once(' ')?;
                        (k == key).then(|| v.trim().parse::<u64>().ok())?
                    })
                    .ok_or_else(|| EvictionError::Malformed {
                        path: path.clone(),
                        field: key,
                    })
            };
            let usage = field("anon")?.saturating_add(field("file")?);
            Ok(usage.saturating_sub(field("inactive_file")?))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let usage = meminfo
                .get("MemTotal")?
                .saturating_sub(meminfo.get("MemFree")?);
            Ok(usage.saturating_sub(meminfo.get("Inactive(file)")?))
        }
        Err(source) => Err(EvictionError::Read { path, source }),
    }
}

#[derive(Debug, Clone, Copy)]
struct FsStats {
    bytes: Observation,
    inodes: Option<Observation>,
}

fn statvfs(path: &Path) -> Result<FsStats, EvictionError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| EvictionError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    let frsize = st.fragment_size();
    let files = st.files();
    Ok(FsStats {
        bytes: Observation {
            available: st.blocks_available().saturating_mul(frsize),
            capacity: st.blocks().saturating_mul(frsize),
        },
        inodes: (files > 0).then(|| Observation {
            available: st.files_free(),
            capacity: files,
        }),
    })
}

/// Disk use of a set of directory trees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Allocated bytes (`st_blocks` · 512, as `du`).
    pub bytes: u64,
    /// Directory entries, the roots included.
    pub inodes: u64,
}

/// Walks `dirs` as [`super::local_storage::walk`] does (symlinks not followed, other file
/// systems not entered, so a tmpfs `emptyDir` is memory, not disk; each inode once), at
/// most [`super::local_storage::MAX_WALK_ENTRIES`] entries per directory. A root that does
/// not exist counts nothing; entries that vanish during the walk are skipped.
///
/// # Errors
/// [`EvictionError::Read`] when a root exists but cannot be read.
pub fn disk_usage(dirs: &[PathBuf]) -> Result<DiskUsage, EvictionError> {
    let mut total = DiskUsage::default();
    for root in dirs {
        let tree = super::local_storage::walk(root, super::local_storage::MAX_WALK_ENTRIES)?;
        total.bytes = total.bytes.saturating_add(tree.bytes);
        total.inodes = total.inodes.saturating_add(tree.inodes);
    }
    Ok(total)
}

fn read_file(path: &Path) -> Result<String, EvictionError> {
    fs::read_to_string(path).map_err(|source| EvictionError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_number(path: &Path, field: &'static str) -> Result<u64, EvictionError> {
    read_file(path)?
        .trim()
        .parse()
        .map_err(|_| EvictionError::Malformed {
            path: path.to_path_buf(),
            field,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cgroups::CgroupDriver;
    use crate::eviction::pod::ContainerInfo;

    const MI: u64 = 1 << 20;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// `/proc` with 8 GiB of memory, pid_max 32768, threads-max 20000, 1234 tasks.
    fn proc_fixture(dir: &Path) -> PathBuf {
        let proc_root = dir.join("proc");
        write(
            &proc_root.join("meminfo"),
            "MemTotal:        8388608 kB\nMemFree:         1048576 kB\nInactive(file):   524288 kB\n",
        );
        write(&proc_root.join("sys/kernel/pid_max"), "32768\n");
        write(&proc_root.join("sys/kernel/threads-max"), "20000\n");
        write(&proc_root.join("loadavg"), "0.52 0.58 0.59 3/1234 98765\n");
        proc_root
    }

    fn pod_info(uid: &str, qos: QosClass, containers: &[(&str, Option<&str>)]) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            name: format!("default/{uid}"),
            qos,
            priority: 0,
            critical: false,
            grace_period: Duration::from_secs(30),
            memory_request: 0,
            storage_request: 0,
            containers: containers
                .iter()
                .map(|&(name, id)| ContainerInfo {
                    name: name.into(),
                    id: id.map(str::to_owned),
                    memory_request: None,
                })
                .collect(),
            local_storage: Vec::new(),
        }
    }

    #[test]
    fn v1_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = proc_fixture(dir.path());
        let cg = dir.path().join("cgroup");
        let mem = cg.join("memory");
        // Root: 6 GiB used, 2 GiB of it inactive file cache: 4 GiB working set.
        write(
            &mem.join("memory.usage_in_bytes"),
            &(6u64 << 30).to_string(),
        );
        write(
            &mem.join("memory.stat"),
            &format!("cache 1\ntotal_inactive_file {}\n", 2u64 << 30),
        );
        // kubepods: limit 300Mi, 250Mi used, 20Mi inactive.
        write(
            &mem.join("kubepods/memory.limit_in_bytes"),
            &(300 * MI).to_string(),
        );
        write(
            &mem.join("kubepods/memory.usage_in_bytes"),
            &(250 * MI).to_string(),
        );
        write(
            &mem.join("kubepods/memory.stat"),
            &format!("total_inactive_file {}\n", 20 * MI),
        );
        // A BestEffort pod with one running container, 100 tasks.
        let pod = mem.join("kubepods/besteffort/podu1");
        write(&pod.join("memory.usage_in_bytes"), &(200 * MI).to_string());
        write(&pod.join("memory.stat"), "total_inactive_file 0\n");
        write(
            &pod.join("c1/memory.usage_in_bytes"),
            &(150 * MI).to_string(),
        );
        write(
            &pod.join("c1/memory.stat"),
            &format!("total_inactive_file {MI}\n"),
        );
        write(
            &cg.join("pids/kubepods/besteffort/podu1/pids.current"),
            "100\n",
        );

        let nodefs = dir.path().join("var-lib-bpflet");
        fs::create_dir_all(&nodefs).expect("nodefs");
        let tree = QosTree::new(CgroupDriver::v1(&cg), "/");
        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: nodefs.clone(),
            },
            tree,
        );
        let (obs, errors) = observer.observe_node(None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            obs.get(Signal::MemoryAvailable),
            Some(Observation {
                available: 4 << 30,
                capacity: 8 << 30
            })
        );
        assert_eq!(
            obs.get(Signal::AllocatableMemoryAvailable),
            Some(Observation {
                available: 70 * MI,
                capacity: 300 * MI
            })
        );
        assert_eq!(
            obs.get(Signal::PidAvailable),
            Some(Observation {
                available: 20_000 - 1234,
                capacity: 20_000
            })
        );
        // The filesystem signals come from the real statvfs of the temp dir.
        let nodefs_obs = obs.get(Signal::NodeFsAvailable).expect("nodefs");
        assert!(nodefs_obs.capacity > 0 && nodefs_obs.available <= nodefs_obs.capacity);
        assert_eq!(
            obs.get(Signal::ImageFsAvailable).map(|o| o.capacity),
            Some(nodefs_obs.capacity)
        );
        assert_eq!(
            obs.get(Signal::ContainerFsAvailable).map(|o| o.capacity),
            Some(nodefs_obs.capacity)
        );

        let pods = [
            pod_info(
                "u1",
                QosClass::BestEffort,
                &[("app", Some("c1")), ("gone", Some("c9")), ("waiting", None)],
            ),
            pod_info("u2", QosClass::Burstable, &[("app", None)]),
        ];
        let (usages, errors) = observer.observe_pods(
            &pods,
            PodStatsNeed {
                usage: true,
                containers: true,
                disk: false,
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(usages[0].memory_working_set, Some(200 * MI));
        assert_eq!(usages[0].processes, Some(100));
        let containers: Vec<_> = usages[0]
            .containers
            .iter()
            .map(|c| c.memory_working_set)
            .collect();
        assert_eq!(containers, [Some(149 * MI), None, None]);
        assert_eq!(
            usages[1].memory_working_set, None,
            "no cgroup, no statistics"
        );
        assert_eq!(usages[1].processes, None);

        // Without asking for containers, they are not read.
        let (usages, _) = observer.observe_pods(&pods, PodStatsNeed::default());
        assert_eq!(usages[0].containers[0].memory_working_set, None);

        assert_eq!(
            observer.remnant("u1", QosClass::BestEffort),
            Remnant::Present {
                processes: Some(100)
            }
        );
        assert_eq!(observer.remnant("u2", QosClass::Burstable), Remnant::Gone);
        write(
            &cg.join("pids/kubepods/besteffort/podu1/pids.current"),
            "0\n",
        );
        assert!(observer.remnant("u1", QosClass::BestEffort).is_cleaned_up());
    }

    #[test]
    fn v1_without_kubepods_limit_has_no_allocatable_signal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = proc_fixture(dir.path());
        let mem = dir.path().join("cgroup/memory");
        write(&mem.join("memory.usage_in_bytes"), "0\n");
        write(&mem.join("memory.stat"), "total_inactive_file 0\n");
        // cgroup v1 says "unlimited" with PAGE_COUNTER_MAX.
        write(
            &mem.join("kubepods/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().to_path_buf(),
            },
            QosTree::new(CgroupDriver::v1(dir.path().join("cgroup")), "/"),
        );
        let (obs, errors) = observer.observe_node(None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(obs.get(Signal::AllocatableMemoryAvailable), None);
        assert_eq!(
            obs.get(Signal::MemoryAvailable),
            Some(Observation {
                available: 8 << 30,
                capacity: 8 << 30
            })
        );
    }

    #[test]
    fn v2_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = proc_fixture(dir.path());
        let cg = dir.path().join("cgroup2");
        // Root: anon 3 GiB + file 2 GiB, 1 GiB inactive: 4 GiB working set.
        write(
            &cg.join("memory.stat"),
            &format!(
                "anon {}\nfile {}\nkernel 12345\ninactive_file {}\n",
                3u64 << 30,
                2u64 << 30,
                1u64 << 30
            ),
        );
        let kubepods = cg.join("r/kubepods");
        write(&kubepods.join("memory.max"), &(512 * MI).to_string());
        write(&kubepods.join("memory.current"), &(500 * MI).to_string());
        write(
            &kubepods.join("memory.stat"),
            &format!("anon 1\ninactive_file {}\n", 100 * MI),
        );
        let pod = kubepods.join("burstable/podu1");
        write(&pod.join("memory.current"), &(64 * MI).to_string());
        write(
            &pod.join("memory.stat"),
            &format!("inactive_file {}\n", 4 * MI),
        );
        write(&pod.join("pids.current"), "7\n");
        write(&pod.join("c1/memory.current"), &(60 * MI).to_string());
        write(&pod.join("c1/memory.stat"), "inactive_file 0\n");

        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().to_path_buf(),
            },
            QosTree::new(CgroupDriver::v2(&cg), "/r"),
        );
        let image_dir = dir.path().join("images");
        fs::create_dir_all(&image_dir).expect("images");
        let (obs, errors) = observer.observe_node(Some(&image_dir));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            obs.get(Signal::MemoryAvailable),
            Some(Observation {
                available: 4 << 30,
                capacity: 8 << 30
            })
        );
        assert_eq!(
            obs.get(Signal::AllocatableMemoryAvailable),
            Some(Observation {
                available: 112 * MI,
                capacity: 512 * MI
            })
        );
        assert!(obs.get(Signal::ImageFsAvailable).is_some());

        let (usages, errors) = observer.observe_pods(
            &[pod_info("u1", QosClass::Burstable, &[("app", Some("c1"))])],
            PodStatsNeed {
                usage: true,
                containers: true,
                disk: false,
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(usages[0].memory_working_set, Some(60 * MI));
        assert_eq!(usages[0].processes, Some(7));
        assert_eq!(usages[0].containers[0].memory_working_set, Some(60 * MI));

        // A kernel whose root cgroup has no memory.stat: meminfo.
        fs::remove_file(cg.join("memory.stat")).expect("rm");
        let (obs, _) = observer.observe_node(None);
        assert_eq!(
            obs.get(Signal::MemoryAvailable),
            Some(Observation {
                // 8 GiB - (8 GiB - 1 GiB free - 512 MiB inactive file)
                available: (1 << 30) + 512 * MI,
                capacity: 8 << 30
            })
        );
    }

    #[test]
    fn unreadable_signals_are_reported_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path().join("proc");
        write(&proc_root.join("meminfo"), "MemFree: 1 kB\n");
        write(&proc_root.join("sys/kernel/pid_max"), "lots\n");
        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().join("missing"),
            },
            QosTree::new(CgroupDriver::v2(dir.path().join("cgroup2")), "/"),
        );
        let imagefs = dir.path().join("images-missing");
        let (obs, errors) = observer.observe_node(Some(&imagefs));
        assert_eq!(obs.iter().count(), 0, "{obs:?}");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.ends_with("meminfo: no valid MemTotal")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("reading memory limit of cgroup /kubepods")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("statvfs ") && m.ends_with("/missing")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.ends_with("/images-missing")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.ends_with("pid_max: no valid pid_max")),
            "{messages:?}"
        );
    }

    #[test]
    fn pid_capacity_without_threads_max() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = proc_fixture(dir.path());
        fs::remove_file(proc_root.join("sys/kernel/threads-max")).expect("rm");
        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().to_path_buf(),
            },
            QosTree::new(CgroupDriver::v2(dir.path()), "/"),
        );
        assert_eq!(
            observer.pids().expect("pids"),
            Observation {
                available: 32_768 - 1234,
                capacity: 32_768
            }
        );
    }

    /// The host's own files parse: memory, nodefs and pids are observed (kubepods may not
    /// exist here, so allocatable is not asserted).
    #[test]
    fn this_host() {
        let driver = CgroupDriver::detect(Path::new("/proc")).expect("a cgroup hierarchy");
        let observer = Observer::new(
            SignalRoots {
                proc_root: PathBuf::from("/proc"),
                nodefs: PathBuf::from("/"),
            },
            QosTree::new(driver, "/bpflet-eviction-test-absent"),
        );
        let (obs, errors) = observer.observe_node(None);
        for signal in [
            Signal::MemoryAvailable,
            Signal::NodeFsAvailable,
            Signal::ImageFsAvailable,
            Signal::PidAvailable,
        ] {
            let o = obs
                .get(signal)
                .unwrap_or_else(|| panic!("{signal} not observed: {errors:?}"));
            assert!(
                o.capacity > 0 && o.available <= o.capacity,
                "{signal}: {o:?}"
            );
        }
    }

    #[test]
    fn disk_usage_walks_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("volumes/kubernetes.io~empty-dir/cache");
        write(&vol.join("a"), &"x".repeat(10_000));
        write(&vol.join("sub/b"), "y");
        std::os::unix::fs::symlink("/etc", vol.join("link")).expect("symlink");
        let logs = dir.path().join("logs");
        write(&logs.join("app/0.log"), "hello\n");

        let usage = disk_usage(&[dir.path().join("volumes"), logs, dir.path().join("absent")])
            .expect("usage");
        // volumes, empty-dir, cache, a, sub, b, link; logs, app, 0.log.
        assert_eq!(usage.inodes, 10);
        assert!(usage.bytes >= 10_000, "{usage:?}");
        assert_eq!(disk_usage(&[]).expect("nothing"), DiskUsage::default());
    }

    #[test]
    fn pod_disk_usage_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = proc_fixture(dir.path());
        let vol = dir.path().join("pods/u1/volumes");
        write(&vol.join("f"), "data");
        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().to_path_buf(),
            },
            QosTree::new(CgroupDriver::v2(dir.path().join("cgroup2")), "/"),
        );
        let mut info = pod_info("u1", QosClass::BestEffort, &[]);
        info.local_storage = vec![vol];
        let (usages, _) =
            observer.observe_pods(std::slice::from_ref(&info), PodStatsNeed::default());
        assert_eq!((usages[0].disk_bytes, usages[0].inodes), (None, None));
        assert_eq!(
            (usages[0].memory_working_set, usages[0].processes),
            (None, None),
            "nothing is read while no threshold is met"
        );
        let (usages, errors) = observer.observe_pods(
            &[info],
            PodStatsNeed {
                usage: true,
                containers: false,
                disk: true,
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(usages[0].inodes, Some(2));
        assert!(usages[0].disk_bytes.is_some());
    }
}
