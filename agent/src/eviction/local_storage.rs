//! Local storage limits (upstream's `localStorageEviction`): a pod is evicted, whatever the
//! node's pressure, when
//!
//! 1. a disk `emptyDir` holds more than its `sizeLimit`
//!    (`Usage of EmptyDir volume "data" exceeds the limit "10Mi". `);
//! 2. else, the pod's local storage (its containers' writable layers and logs, and its disk
//!    `emptyDir` volumes) exceeds the pod's `ephemeral-storage` limit: the sum of its
//!    containers' limits, sidecars and init containers as upstream's `PodLimits`, present
//!    when any container declares one
//!    (`Pod ephemeral local storage usage exceeds the total limit of containers 20Mi. `);
//! 3. else, a container's writable layer plus its logs exceed its `ephemeral-storage` limit
//!    (`Container app exceeded its local ephemeral storage limit "10Mi". `).
//!
//! `emptyDir` volumes with `medium: Memory` are tmpfs mounts, already bounded by their
//! size: they are neither checked nor counted.
//!
//! Only pods with a limit are measured ([`LimitedPod::from_pod`] is `None` for the others),
//! and the measuring is done here, on the file system, not through CRI statistics
//! (containerd 1.6 refreshes writable-layer sizes every `stats_collect_period`, minutes
//! on this fleet):
//! - an `emptyDir`: `<pods_dir>/<uid>/volumes/kubernetes.io~empty-dir/<name>`, walked by
//!   [`walk`];
//! - a container's writable layer: the `upperdir` of the overlay mounted as `/` for a
//!   process of the container (its cgroup's `cgroup.procs`, then `/proc/<pid>/mountinfo`),
//!   remembered per container id ([`StorageMeter`]);
//! - a container's logs: `<logs_dir>/<namespace>_<name>_<uid>/<container>/`.
//!
//! [`check`] is pure: which limit a measured pod exceeds, with upstream's message.
//!
//! Every walk goes through a [`UsageCache`] ([`cache`]) that the stats sampler shares, so a
//! tree one of them walked recently is not walked again by the other.

pub mod cache;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstat, fstatat};

use crate::cgroups::QosTree;
use crate::cgroups::driver::CgroupManager as _;
use crate::cgroups::hierarchy::join;
use crate::model::qos::{self, QosClass};
use crate::model::quantity::parse_quantity;
use crate::pods::cri_config::pod_log_dir;
use crate::pods::volumes::EMPTY_DIR_PLUGIN_DIR;

use super::EvictionError;
use super::message::{format_quantity, quantity_format};
use super::pod::is_critical;
pub use cache::{Measured, Tree, UsageCache};

/// The grace period of a local storage eviction (upstream's
/// `immediateEvictionGracePeriodSeconds`).
pub const LIMIT_EVICTION_GRACE: Duration = Duration::from_secs(1);

/// At most this many directory entries are looked at per pod and pass (all its trees
/// together); beyond, what was seen counts (a lower bound, which still proves a limit
/// exceeded) and the usage is marked truncated.
pub const MAX_WALK_ENTRIES: u64 = 250_000;

const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// Which local storage limit was exceeded; `as_str` is upstream's `eviction_signal` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitSignal {
    /// An `emptyDir`'s `sizeLimit`.
    EmptyDirFs,
    /// The pod's total `ephemeral-storage` limit.
    EphemeralPodFs,
    /// A container's `ephemeral-storage` limit.
    EphemeralContainerFs,
}

impl LimitSignal {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EmptyDirFs => "emptydirfs.limit",
            Self::EphemeralPodFs => "ephemeralpodfs.limit",
            Self::EphemeralContainerFs => "ephemeralcontainerfs.limit",
        }
    }
}

/// A limit: bytes, and how upstream prints it (`Quantity.String()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub text: String,
}

impl Limit {
    fn parse(quantity: &str) -> Option<Self> {
        let bytes = parse_quantity(quantity).ok()?.bytes();
        Some(Self {
            bytes,
            text: format_quantity(bytes, quantity_format(quantity)),
        })
    }
}

/// A container whose local storage is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedContainer {
    pub name: String,
    /// The runtime's id of its current instance (`None`: not started yet).
    pub id: Option<String>,
    /// `<pod log dir>/<name>`: every attempt's log.
    pub log_dir: PathBuf,
    /// Its `ephemeral-storage` limit, when set and not zero.
    pub limit: Option<Limit>,
}

/// A running pod with some local storage limit, and where its storage is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedPod {
    pub uid: String,
    /// `<namespace>/<name>`.
    pub name: String,
    pub qos: QosClass,
    pub critical: bool,
    /// `<pods_dir>/<uid>/volumes/kubernetes.io~empty-dir`.
    pub empty_dir_root: PathBuf,
    /// Disk `emptyDir` volumes with a positive `sizeLimit`, in spec order.
    pub empty_dir_limits: Vec<(String, Limit)>,
    /// Volumes with `medium: Memory`: tmpfs, never counted.
    pub memory_volumes: Vec<String>,
    /// App containers, then sidecars (restartable init containers).
    pub containers: Vec<LimitedContainer>,
    /// The pod's total limit (upstream's `PodLimits`), when any container has one.
    pub pod_limit: Option<Limit>,
}

impl LimitedPod {
    /// The limits of `pod`: `None` for a pod without a UID, in a terminal phase, or without
    /// any `emptyDir` `sizeLimit` or `ephemeral-storage` limit (nothing to measure).
    #[must_use]
    pub fn from_pod(pod: &Pod, pods_dir: &Path, logs_dir: &Path) -> Option<Self> {
        let uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let mut empty_dir_limits = Vec::new();
        let mut memory_volumes = Vec::new();
        for v in spec.volumes.iter().flatten() {
            let Some(e) = &v.empty_dir else { continue };
            if e.medium.as_deref() == Some("Memory") {
                memory_volumes.push(v.name.clone());
                continue;
            }
            if let Some(limit) = e.size_limit.as_ref().and_then(|q| Limit::parse(&q.0))
                && limit.bytes > 0
            {
                empty_dir_limits.push((v.name.clone(), limit));
            }
        }
        let pod_limit = pod_limit(pod);
        if empty_dir_limits.is_empty() && pod_limit.is_none() {
            return None;
        }
        let log_root = pod_log_dir(logs_dir, pod);
        let id_of = |name: &str, init: bool| {
            let statuses = if init {
                status.and_then(|s| s.init_container_statuses.as_deref())
            } else {
                status.and_then(|s| s.container_statuses.as_deref())
            };
            statuses
                .unwrap_or(&[])
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.container_id.as_deref())
                .map(|id| id.split_once("://").map_or(id, |(_, id)| id).to_owned())
                .filter(|id| !id.is_empty())
        };
        let containers = spec
            .containers
            .iter()
            .map(|c| (c, false))
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| is_sidecar(c))
                    .map(|c| (c, true)),
            )
            .map(|(c, init)| LimitedContainer {
                name: c.name.clone(),
                id: id_of(&c.name, init),
                log_dir: log_root.join(&c.name),
                limit: limit_of(c).filter(|l| l.bytes > 0),
            })
            .collect();
        Some(Self {
            uid: uid.to_owned(),
            name: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            qos: qos::qos_class(pod),
            critical: is_critical(pod),
            empty_dir_root: pods_dir
                .join(uid)
                .join("volumes")
                .join(EMPTY_DIR_PLUGIN_DIR),
            empty_dir_limits,
            memory_volumes,
            containers,
            pod_limit,
        })
    }
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn limit_text(c: &Container) -> Option<&str> {
    let q = c
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get(EPHEMERAL_STORAGE)?;
    Some(q.0.as_str())
}

fn limit_of(c: &Container) -> Option<Limit> {
    Limit::parse(limit_text(c)?)
}

/// Upstream's `PodLimits` for `ephemeral-storage`: app containers and sidecars summed; each
/// init container with the sidecars started before it; the larger of the two; plus the
/// pod's overhead when not zero. `None` when no container declares the limit. Printed in
/// the format of the first limit found.
fn pod_limit(pod: &Pod) -> Option<Limit> {
    let spec = pod.spec.as_ref()?;
    let inits = spec.init_containers.as_deref().unwrap_or(&[]);
    let first = spec.containers.iter().chain(inits).find_map(limit_text)?;
    let bytes = |c: &Container| limit_of(c).map_or(0, |l| l.bytes);
    let mut total = spec
        .containers
        .iter()
        .map(bytes)
        .fold(0u64, u64::saturating_add);
    let mut sidecars = 0u64;
    let mut init_max = 0u64;
    for c in inits {
        if is_sidecar(c) {
            total = total.saturating_add(bytes(c));
            sidecars = sidecars.saturating_add(bytes(c));
            init_max = init_max.max(sidecars);
        } else {
            init_max = init_max.max(bytes(c).saturating_add(sidecars));
        }
    }
    let mut total = total.max(init_max);
    if total > 0
        && let Some(overhead) = spec
            .overhead
            .as_ref()
            .and_then(|o| o.get(EPHEMERAL_STORAGE))
            .and_then(|q| parse_quantity(&q.0).ok())
    {
        total = total.saturating_add(overhead.bytes());
    }
    Some(Limit {
        bytes: total,
        text: format_quantity(total, quantity_format(first)),
    })
}

/// What a container uses: its writable layer (`None`: not found, e.g. not running) and its
/// logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStorage {
    pub rootfs: Option<u64>,
    pub logs: u64,
}

impl ContainerStorage {
    #[must_use]
    pub fn total(self) -> u64 {
        self.rootfs.unwrap_or(0).saturating_add(self.logs)
    }
}

/// What a limited pod uses, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageUsage {
    /// Disk `emptyDir` volumes by name.
    pub empty_dirs: BTreeMap<String, u64>,
    /// By container name.
    pub containers: BTreeMap<String, ContainerStorage>,
    /// Inodes seen in every tree walked.
    pub inodes: u64,
    /// Some tree had more than [`MAX_WALK_ENTRIES`] entries: the sums are lower bounds.
    pub truncated: bool,
}

impl StorageUsage {
    /// The pod's local storage: containers and disk `emptyDir` volumes.
    #[must_use]
    pub fn total(&self) -> u64 {
        let volumes = self
            .empty_dirs
            .values()
            .fold(0u64, |a, b| a.saturating_add(*b));
        self.containers
            .values()
            .map(|c| c.total())
            .fold(volumes, u64::saturating_add)
    }
}

/// A limit a pod exceeds, with upstream's eviction message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub signal: LimitSignal,
    pub message: String,
}

/// The first limit `pod` exceeds with `usage`, in upstream's order: `emptyDir` size limits
/// (spec order), the pod's total, then each container's (spec order). A quantity that was
/// not measured exceeds nothing.
#[must_use]
pub fn check(pod: &LimitedPod, usage: &StorageUsage) -> Option<Violation> {
    for (name, limit) in &pod.empty_dir_limits {
        if usage.empty_dirs.get(name).is_some_and(|&u| u > limit.bytes) {
            return Some(Violation {
                signal: LimitSignal::EmptyDirFs,
                message: format!(
                    "Usage of EmptyDir volume {name:?} exceeds the limit {:?}. ",
                    limit.text
                ),
            });
        }
    }
    if let Some(limit) = &pod.pod_limit
        && usage.total() > limit.bytes
    {
        return Some(Violation {
            signal: LimitSignal::EphemeralPodFs,
            message: format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                limit.text
            ),
        });
    }
    for c in &pod.containers {
        let (Some(limit), Some(used)) = (&c.limit, usage.containers.get(&c.name)) else {
            continue;
        };
        if used.total() > limit.bytes {
            return Some(Violation {
                signal: LimitSignal::EphemeralContainerFs,
                message: format!(
                    "Container {} exceeded its local ephemeral storage limit {:?}. ",
                    c.name, limit.text
                ),
            });
        }
    }
    None
}

/// Disk use of one tree, as `du`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Allocated bytes (`st_blocks` · 512); a file with several links counts once.
    pub bytes: u64,
    /// Inodes (the root included), each once.
    pub inodes: u64,
    /// Directory entries looked at.
    pub entries: u64,
    /// More than the entry budget: what was seen.
    pub truncated: bool,
}

/// Walks the tree at `root` without following symbolic links or entering other file
/// systems (mount points below `root`), counting every inode once, for at most `budget`
/// entries. A missing root counts nothing; entries that vanish or cannot be read during the
/// walk are skipped.
///
/// The walk goes from directory descriptor to directory descriptor (`openat`, `fstatat`,
/// `..` checked against the parent it left), never through a path: a tree deeper than
/// `PATH_MAX` is counted whole, with two descriptors open at a time. A parent that changed
/// under the walk (a directory renamed meanwhile) ends it, marked truncated.
///
/// # Errors
/// [`EvictionError::Read`] when `root` exists but cannot be examined.
pub fn walk(root: &Path, budget: u64) -> Result<TreeUsage, EvictionError> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TreeUsage::default()),
        Err(source) => {
            return Err(EvictionError::Read {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    let device = meta.dev();
    let mut usage = TreeUsage {
        bytes: meta.blocks().saturating_mul(512),
        inodes: 1,
        ..TreeUsage::default()
    };
    if !meta.is_dir() {
        return Ok(usage);
    }
    let Ok(mut dir) = Dir::open(root, DIR_FLAGS, Mode::empty()) else {
        return Ok(usage);
    };
    if !same_inode(&dir, device, meta.ino()) {
        return Ok(usage);
    }
    let mut linked: HashSet<u64> = HashSet::new();
    // The directories from the root down to `dir`: their identity and the names still to
    // look at in each.
    let mut stack = vec![Frame {
        ino: meta.ino(),
        names: read_names(&mut dir, budget, &mut usage),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.pop() else {
            stack.pop();
            let Some(parent) = stack.last() else {
                break;
            };
            match Dir::openat(&dir, c"..", DIR_FLAGS, Mode::empty()) {
                Ok(up) if same_inode(&up, device, parent.ino) => dir = up,
                _ => {
                    usage.truncated = true;
                    break;
                }
            }
            continue;
        };
        let Ok(st) = fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_dev != device {
            continue;
        }
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // Several names of one inode (hard links) count once; directories cannot have any.
        if st.st_nlink > 1 && !is_dir && !linked.insert(st.st_ino) {
            continue;
        }
        usage.bytes = usage
            .bytes
            .saturating_add(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512));
        usage.inodes += 1;
        if !is_dir {
            continue;
        }
        let Ok(mut child) = Dir::openat(&dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) else {
            continue;
        };
        if !same_inode(&child, device, st.st_ino) {
            continue;
        }
        let names = read_names(&mut child, budget, &mut usage);
        stack.push(Frame {
            ino: st.st_ino,
            names,
        });
        dir = child;
    }
    Ok(usage)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A directory being walked.
struct Frame {
    ino: u64,
    names: Vec<CString>,
}

/// Whether `dir` is the inode `ino` on `device` (what was stat'ed is what was opened).
fn same_inode(dir: &Dir, device: u64, ino: u64) -> bool {
    fstat(dir).is_ok_and(|st| st.st_dev == device && st.st_ino == ino)
}

/// The names in `dir` (not `.` and `..`), counted in `usage.entries` up to `budget`.
fn read_names(dir: &mut Dir, budget: u64, usage: &mut TreeUsage) -> Vec<CString> {
    let mut names = Vec::new();
    for entry in dir.iter().flatten() {
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if usage.entries >= budget {
            usage.truncated = true;
            break;
        }
        usage.entries += 1;
        names.push(name.to_owned());
    }
    names
}

/// Measures limited pods; remembers each container's writable layer by container id (found
/// once, while the container is young, so a process that later mounts an overlay of its
/// own on `/` in a new mount namespace cannot redirect the measure).
#[derive(Debug, Clone)]
pub struct StorageMeter {
    proc_root: PathBuf,
    tree: QosTree,
    budget: u64,
    /// Writable layers are accepted only below this directory (the runtime's image
    /// filesystem, where its snapshots live), when known.
    layer_root: Option<PathBuf>,
    /// Container id → the `upperdir` of its root file system.
    layers: HashMap<String, PathBuf>,
    /// Walks, shared with the stats sampler when given one.
    cache: UsageCache,
    /// A cached walk younger than this is used instead of walking again.
    max_age: Duration,
}

/// Cached walks nobody refreshed for this long are dropped (twice the sampler's period).
pub const FORGET_WALKS_AFTER: Duration = Duration::from_secs(120);

impl StorageMeter {
    #[must_use]
    pub fn new(proc_root: PathBuf, tree: QosTree) -> Self {
        Self {
            proc_root,
            tree,
            budget: MAX_WALK_ENTRIES,
            layer_root: None,
            layers: HashMap::new(),
            cache: UsageCache::new(),
            max_age: Duration::ZERO,
        }
    }

    /// Walks through `cache` (shared with the stats sampler), taking a tree walked less than
    /// `max_age` ago (by either) instead of walking it again. Without this, every pass
    /// walks every tree.
    #[must_use]
    pub fn with_cache(mut self, cache: UsageCache, max_age: Duration) -> Self {
        self.cache = cache;
        self.max_age = max_age;
        self
    }

    /// Writable layers must be below `root` (the runtime's image filesystem); `None`: any
    /// absolute path.
    pub fn set_layer_root(&mut self, root: Option<PathBuf>) {
        self.layer_root = root;
    }

    /// At most `budget` entries per pod and pass (default [`MAX_WALK_ENTRIES`]).
    #[must_use]
    pub fn with_budget(mut self, budget: u64) -> Self {
        self.budget = budget;
        self
    }

    /// Measures every pod in `pods`; forgets the layers of containers no longer listed.
    /// What cannot be measured is left out of the usage and its error returned.
    pub fn measure(&mut self, pods: &[LimitedPod]) -> (Vec<StorageUsage>, Vec<EvictionError>) {
        let mut errors = Vec::new();
        let live: HashSet<&str> = pods
            .iter()
            .flat_map(|p| p.containers.iter().filter_map(|c| c.id.as_deref()))
            .collect();
        self.layers.retain(|id, _| live.contains(id.as_str()));
        self.cache
            .forget_older_than(FORGET_WALKS_AFTER, std::time::Instant::now());
        let usages = pods
            .iter()
            .map(|p| self.measure_pod(p, &mut errors))
            .collect();
        (usages, errors)
    }

    fn measure_pod(&mut self, pod: &LimitedPod, errors: &mut Vec<EvictionError>) -> StorageUsage {
        let mut usage = StorageUsage::default();
        let mut budget = self.budget;
        match fs::read_dir(&pod.empty_dir_root) {
            Ok(entries) => {
                let root_dev = fs::metadata(&pod.empty_dir_root).map(|m| m.dev()).ok();
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if pod.memory_volumes.contains(&name) {
                        continue;
                    }
                    // A volume that is a mount point of its own is not the node's disk.
                    let path = entry.path();
                    if fs::symlink_metadata(&path).map(|m| m.dev()).ok() != root_dev {
                        continue;
                    }
                    match self.walk(pod, Tree::EmptyDir(name.clone()), &path, budget) {
                        Ok(t) => {
                            let bytes = add(&mut usage, &mut budget, t);
                            usage.empty_dirs.insert(name, bytes);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => errors.push(EvictionError::Read {
                path: pod.empty_dir_root.clone(),
                source,
            }),
        }
        for c in &pod.containers {
            let logs = match self.walk(pod, Tree::Logs(c.name.clone()), &c.log_dir, budget) {
                Ok(t) => add(&mut usage, &mut budget, t),
                Err(e) => {
                    errors.push(e);
                    0
                }
            };
            let rootfs = match c.id.as_deref().map(|id| (id, self.layer(pod, id))) {
                Some((id, Ok(Some(upper)))) => {
                    match self.walk(pod, Tree::WritableLayer(id.to_owned()), &upper, budget) {
                        Ok(t) => Some(add(&mut usage, &mut budget, t)),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    }
                }
                Some((_, Err(e))) => {
                    errors.push(e);
                    None
                }
                Some((_, Ok(None))) | None => None,
            };
            usage
                .containers
                .insert(c.name.clone(), ContainerStorage { rootfs, logs });
        }
        usage
    }

    /// `tree` of `pod` at `path`: the cached walk when younger than `max_age`, else walked
    /// with at most `budget` entries.
    fn walk(
        &self,
        pod: &LimitedPod,
        tree: Tree,
        path: &Path,
        budget: u64,
    ) -> Result<TreeUsage, EvictionError> {
        self.cache
            .measure(&pod.uid, tree, self.max_age, || walk(path, budget))
            .map(|m| m.usage)
    }

    /// The writable layer of container `id` of `pod`: remembered, or found through a
    /// process in its cgroup. `None` while it has no process or no overlay root.
    fn layer(&mut self, pod: &LimitedPod, id: &str) -> Result<Option<PathBuf>, EvictionError> {
        if let Some(upper) = self.layers.get(id) {
            return Ok(Some(upper.clone()));
        }
        let Ok(pod_cgroup) = self.tree.pod_cgroup_of(&pod.uid, pod.qos) else {
            return Ok(None);
        };
        let cgroup = join(&pod_cgroup, id);
        let pids = match self.tree.driver().procs(&cgroup) {
            Ok(pids) => pids,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(source) => {
                return Err(EvictionError::Cgroup {
                    what: "processes",
                    cgroup,
                    source,
                });
            }
        };
        for pid in pids {
            let path = self.proc_root.join(pid.to_string()).join("mountinfo");
            let text = match fs::read(&path) {
                Ok(t) => t,
                // The process just exited: try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(EvictionError::Read { path, source }),
            };
            let upper = root_upperdir(&text).filter(|u| {
                self.layer_root
                    .as_deref()
                    .is_none_or(|root| u.starts_with(root))
            });
            if let Some(upper) = &upper {
                self.layers.insert(id.to_owned(), upper.clone());
            }
            return Ok(upper);
        }
        Ok(None)
    }
}

/// Adds a tree's inodes and truncation to `usage` and takes its entries from `budget`;
/// returns its bytes.
fn add(usage: &mut StorageUsage, budget: &mut u64, tree: TreeUsage) -> u64 {
    *budget = budget.saturating_sub(tree.entries);
    usage.inodes = usage.inodes.saturating_add(tree.inodes);
    usage.truncated |= tree.truncated;
    tree.bytes
}

/// The `upperdir` of the overlay mounted last on `/` in a process's mountinfo.
#[must_use]
pub fn root_upperdir(mountinfo: &[u8]) -> Option<PathBuf> {
    let root = crate::mountinfo::parse(mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == Path::new("/"))?;
    if root.fstype != "overlay" {
        return None;
    }
    let upper = root
        .super_options
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))?;
    let upper = PathBuf::from(OsStr::from_bytes(&crate::mountinfo::unescape_octal(
        upper.as_bytes(),
    )));
    upper.is_absolute().then_some(upper)
}

#[cfg(test)]
mod tests;
