//! The cgroupfs driver: create, configure, read and remove cgroups by their path in the
//! hierarchy, on cgroup v1 or v2.
//!
//! [`CgroupManager`] is the set of operations; [`V1Cgroupfs`] and [`V2Cgroupfs`] implement it
//! for one layout each, and [`CgroupDriver`] dispatches to whichever the host has (the shape
//! of youki's `CgroupManager` / `AnyCgroupManager`). Every implementation takes the directory
//! the hierarchies are mounted under (`/sys/fs/cgroup` in production), so unit tests run on
//! fixture trees in a temporary directory.
//!
//! Cgroups are named by their path below the hierarchy root (`"/kubepods/burstable"`), as
//! `/proc/<pid>/cgroup` shows them.
//!
//! - v1: one directory per managed controller ([`V1_CONTROLLERS`]), each under
//!   `<root>/<controller>`. A new cpuset cgroup gets its parent's `cpuset.cpus` and
//!   `cpuset.mems`, without which no task could join it. Listing, process checks and removal
//!   cover every hierarchy mounted under `<root>`: the runtime creates container cgroups, and
//!   with them the pod's, in controllers bpflet does not manage (devices, freezer, blkio...).
//! - v2: one directory under `<root>`; [`V2_CONTROLLERS`] are enabled in the
//!   `cgroup.subtree_control` of every ancestor, from the root down (as runc does).
//!
//! All calls block on the file system (`remove` may sleep up to [`REMOVE_TIMEOUT`]); async
//! callers run them on a blocking thread.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::hierarchy::{join, normalize};
use super::{CgroupError, CgroupVersion, Hierarchy};

/// The v1 controllers bpflet creates every cgroup in.
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "cpuset", "pids"];
/// The v2 controllers bpflet enables for the cgroups it creates.
pub const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// How long [`CgroupManager::remove`] retries an `rmdir` that fails with `EBUSY` (a cgroup
/// stays busy for a moment after its last process exits).
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);
const REMOVE_RETRY: Duration = Duration::from_millis(10);

/// cgroup v1 reports "no limit" as `PAGE_COUNTER_MAX` pages in bytes (9223372036854771712
/// with 4 KiB pages); any value at or above 2^62 is treated as unlimited.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Memory use of a cgroup, children included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage_bytes: u64,
    /// v1 `total_inactive_file`, v2 `inactive_file` from `memory.stat`.
    pub inactive_file_bytes: u64,
    /// `usage - inactive_file` (0 when inactive exceeds usage): what kubelet's eviction
    /// manager calls the working set.
    pub working_set_bytes: u64,
}

impl MemoryUsage {
    #[must_use]
    pub const fn new(usage_bytes: u64, inactive_file_bytes: u64) -> Self {
        Self {
            usage_bytes,
            inactive_file_bytes,
            working_set_bytes: usage_bytes.saturating_sub(inactive_file_bytes),
        }
    }
}

/// What the agent does to cgroups. `rel` is a path below the hierarchy root; `"/"` is the
/// root itself, which is never created or removed.
pub trait CgroupManager {
    fn version(&self) -> CgroupVersion;

    /// Creates the cgroup and any missing ancestor. Existing directories are fine.
    ///
    /// # Errors
    /// [`CgroupError::Create`] or [`CgroupError::Write`] naming the path, or
    /// [`CgroupError::MissingController`].
    fn create(&self, rel: &str) -> Result<(), CgroupError>;

    /// Whether the cgroup exists (v1: in any hierarchy).
    fn exists(&self, rel: &str) -> bool;

    /// Sets (`Some`) or lifts (`None`) the memory limit.
    ///
    /// # Errors
    /// [`CgroupError::Write`].
    fn set_memory_limit(&self, rel: &str, bytes: Option<u64>) -> Result<(), CgroupError>;

    /// The memory limit, `None` when unlimited.
    ///
    /// # Errors
    /// [`CgroupError::Read`] or [`CgroupError::Malformed`].
    fn memory_limit(&self, rel: &str) -> Result<Option<u64>, CgroupError>;

    /// Sets the cpu weight from cgroup v1 shares (clamped to `[2, 262144]`; v2 converts).
    ///
    /// # Errors
    /// [`CgroupError::Write`].
    fn set_cpu_shares(&self, rel: &str, shares: u64) -> Result<(), CgroupError>;

    /// Sets the CFS bandwidth: `quota_us` per `period_us`, `None` for no quota.
    ///
    /// # Errors
    /// [`CgroupError::Write`].
    fn set_cpu_quota(
        &self,
        rel: &str,
        quota_us: Option<i64>,
        period_us: u64,
    ) -> Result<(), CgroupError>;

    /// Sets (`Some`) or lifts (`None`) the limit on the number of tasks.
    ///
    /// # Errors
    /// [`CgroupError::Write`].
    fn set_pids_limit(&self, rel: &str, limit: Option<u64>) -> Result<(), CgroupError>;

    /// Memory usage and working set.
    ///
    /// # Errors
    /// [`CgroupError::Read`] or [`CgroupError::Malformed`].
    fn memory_usage(&self, rel: &str) -> Result<MemoryUsage, CgroupError>;

    /// The processes in the cgroup itself (not its children), sorted, without duplicates
    /// (v1: in any hierarchy). A cgroup that does not exist has none.
    ///
    /// # Errors
    /// [`CgroupError::Read`] or [`CgroupError::Malformed`].
    fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError>;

    /// Names of the child cgroups, sorted (v1: the union over every hierarchy).
    /// A cgroup that does not exist has no children.
    ///
    /// # Errors
    /// [`CgroupError::Walk`].
    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError>;

    /// Removes the cgroup and everything below it, children first. Kills nothing: when a
    /// process is still in the subtree, fails with [`CgroupError::Populated`] naming the
    /// cgroup that holds it, before removing anything. A cgroup that does not exist is fine.
    ///
    /// # Errors
    /// [`CgroupError::Populated`], [`CgroupError::Remove`] or [`CgroupError::Walk`].
    fn remove(&self, rel: &str) -> Result<(), CgroupError>;
}

/// The cgroupfs driver for whichever cgroup version the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDriver {
    V1(V1Cgroupfs),
    V2(V2Cgroupfs),
}

impl CgroupDriver {
    /// v1 controllers mounted under `root` (`/sys/fs/cgroup/<controller>`).
    pub fn v1(root: impl Into<PathBuf>) -> Self {
        Self::V1(V1Cgroupfs::new(root))
    }

    /// A cgroup2 hierarchy mounted at `root`.
    pub fn v2(root: impl Into<PathBuf>) -> Self {
        Self::V2(V2Cgroupfs::new(root))
    }

    /// The driver for the hierarchy that accounts memory: on v1 (and hybrid hosts) the
    /// controllers are the memory mount's siblings; on v2 the cgroup2 mount itself.
    #[must_use]
    pub fn for_hierarchy(hierarchy: &Hierarchy) -> Self {
        match hierarchy.version {
            CgroupVersion::V1 => {
                let root = hierarchy
                    .mount
                    .parent()
                    .map_or_else(|| hierarchy.mount.clone(), Path::to_path_buf);
                Self::v1(root)
            }
            CgroupVersion::V2 => Self::v2(hierarchy.mount.clone()),
        }
    }

    /// Detects the host's layout from `<proc_root>/self/mountinfo` ([`Hierarchy::detect`]).
    ///
    /// # Errors
    /// As [`Hierarchy::detect`].
    pub fn detect(proc_root: &Path) -> Result<Self, CgroupError> {
        Hierarchy::detect(proc_root).map(|h| Self::for_hierarchy(&h))
    }

    /// The directory the hierarchies are mounted under (v1) or the cgroup2 mount (v2).
    #[must_use]
    pub fn root(&self) -> &Path {
        match self {
            Self::V1(d) => &d.root,
            Self::V2(d) => &d.root,
        }
    }

    fn inner(&self) -> &dyn CgroupManager {
        match self {
            Self::V1(d) => d,
            Self::V2(d) => d,
        }
    }
}

impl CgroupManager for CgroupDriver {
    fn version(&self) -> CgroupVersion {
        self.inner().version()
    }
    fn create(&self, rel: &str) -> Result<(), CgroupError> {
        self.inner().create(rel)
    }
    fn exists(&self, rel: &str) -> bool {
        self.inner().exists(rel)
    }
    fn set_memory_limit(&self, rel: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
        self.inner().set_memory_limit(rel, bytes)
    }
    fn memory_limit(&self, rel: &str) -> Result<Option<u64>, CgroupError> {
        self.inner().memory_limit(rel)
    }
    fn set_cpu_shares(&self, rel: &str, shares: u64) -> Result<(), CgroupError> {
        self.inner().set_cpu_shares(rel, shares)
    }
    fn set_cpu_quota(
        &self,
        rel: &str,
        quota_us: Option<i64>,
        period_us: u64,
    ) -> Result<(), CgroupError> {
        self.inner().set_cpu_quota(rel, quota_us, period_us)
    }
    fn set_pids_limit(&self, rel: &str, limit: Option<u64>) -> Result<(), CgroupError> {
        self.inner().set_pids_limit(rel, limit)
    }
    fn memory_usage(&self, rel: &str) -> Result<MemoryUsage, CgroupError> {
        self.inner().memory_usage(rel)
    }
    fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        self.inner().procs(rel)
    }
    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        self.inner().children(rel)
    }
    fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        self.inner().remove(rel)
    }
}

/// cgroup v1: one hierarchy per controller, mounted at `<root>/<controller>`.
///
/// Co-mounted controllers (`cpu,cpuacct` with `cpu` and `cpuacct` symlinks to it) work: the
/// second `mkdir` finds the directory there already, the second `rmdir` finds it gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Cgroupfs {
    root: PathBuf,
}

impl V1Cgroupfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn mount(&self, controller: &str) -> PathBuf {
        self.root.join(controller)
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        under(&self.mount(controller), rel)
    }

    /// The managed controllers' mounts, then every other hierarchy mounted under the root.
    fn hierarchies(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let mut mounts: Vec<PathBuf> = V1_CONTROLLERS.iter().map(|c| self.mount(c)).collect();
        let mut others = child_dirs(&self.root)?;
        others.sort_unstable();
        for name in others {
            let mount = self.root.join(name);
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
        Ok(mounts)
    }

    /// Gives a cpuset cgroup its parent's cpus and mems when it has none (a fresh v1 cpuset
    /// cgroup starts empty unless `cgroup.clone_children` is set).
    fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = read_optional(&dir.join(file))?;
            if own.as_deref().is_some_and(|v| !v.trim().is_empty()) {
                continue;
            }
            let value = read(&parent.join(file))?;
            write(&dir.join(file), value.trim())?;
        }
        Ok(())
    }
}

impl CgroupManager for V1Cgroupfs {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn create(&self, rel: &str) -> Result<(), CgroupError> {
        let rel = normalize(rel);
        for controller in V1_CONTROLLERS {
            let mount = self.mount(controller);
            if !mount.is_dir() {
                return Err(CgroupError::MissingController {
                    path: mount,
                    controller,
                });
            }
            for ancestor in lineage(&rel) {
                let dir = under(&mount, &ancestor);
                mkdir(&dir)?;
                if controller == "cpuset" {
                    Self::inherit_cpuset(&dir)?;
                }
            }
        }
        Ok(())
    }

    fn exists(&self, rel: &str) -> bool {
        let rel = normalize(rel);
        // Should the root be unreadable, the managed controllers still answer.
        let mounts = self
            .hierarchies()
            .unwrap_or_else(|_| V1_CONTROLLERS.iter().map(|c| self.mount(c)).collect());
        mounts.iter().any(|m| under(m, &rel).is_dir())
    }

    fn set_memory_limit(&self, rel: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
        let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
        write(
            &self.dir("memory", rel).join("memory.limit_in_bytes"),
            &value,
        )
    }

    fn memory_limit(&self, rel: &str) -> Result<Option<u64>, CgroupError> {
        let path = self.dir("memory", rel).join("memory.limit_in_bytes");
        let value = parse_u64(&path, "memory limit", read(&path)?.trim())?;
        Ok((value < V1_UNLIMITED_FLOOR).then_some(value))
    }

    fn set_cpu_shares(&self, rel: &str, shares: u64) -> Result<(), CgroupError> {
        write(
            &self.dir("cpu", rel).join("cpu.shares"),
            &clamp_shares(shares).to_string(),
        )
    }

    fn set_cpu_quota(
        &self,
        rel: &str,
        quota_us: Option<i64>,
        period_us: u64,
    ) -> Result<(), CgroupError> {
        let dir = self.dir("cpu", rel);
        // Period first: the kernel checks the quota against it.
        write(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
        write(
            &dir.join("cpu.cfs_quota_us"),
            &quota_us.unwrap_or(-1).to_string(),
        )
    }

    fn set_pids_limit(&self, rel: &str, limit: Option<u64>) -> Result<(), CgroupError> {
        write(&self.dir("pids", rel).join("pids.max"), &pids_value(limit))
    }

    fn memory_usage(&self, rel: &str) -> Result<MemoryUsage, CgroupError> {
        let dir = self.dir("memory", rel);
        let usage_path = dir.join("memory.usage_in_bytes");
        let usage = parse_u64(&usage_path, "memory usage", read(&usage_path)?.trim())?;
        let inactive = stat_field(&dir.join("memory.stat"), "total_inactive_file")?;
        Ok(MemoryUsage::new(usage, inactive))
    }

    fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for mount in self.hierarchies()? {
            // A cgroup that is not in this hierarchy (or just went away) holds nothing.
            match read_procs(&under(&mount, rel)) {
                Ok(found) => pids.extend(found),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for mount in self.hierarchies()? {
            names.extend(child_dirs(&under(&mount, rel))?);
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        remove_trees(&self.hierarchies()?, rel)
    }
}

/// cgroup v2: one unified hierarchy mounted at `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Cgroupfs {
    root: PathBuf,
}

impl V2Cgroupfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        under(&self.root, rel)
    }

    /// Enables [`V2_CONTROLLERS`] in `dir`'s `cgroup.subtree_control` where missing.
    fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
        let path = dir.join("cgroup.subtree_control");
        // The kernel gives every cgroup this file; a missing one (a fixture) enables nothing.
        let enabled = read_optional(&path)?.unwrap_or_default();
        let missing: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        write(&path, &missing.join(" "))
    }
}

impl CgroupManager for V2Cgroupfs {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn create(&self, rel: &str) -> Result<(), CgroupError> {
        let rel = normalize(rel);
        let available_path = self.root.join("cgroup.controllers");
        let available = read(&available_path)?;
        if let Some(controller) = V2_CONTROLLERS
            .into_iter()
            .find(|c| !available.split_whitespace().any(|a| a == *c))
        {
            return Err(CgroupError::MissingController {
                path: available_path,
                controller,
            });
        }
        let mut parent = self.root.clone();
        for ancestor in lineage(&rel) {
            Self::enable_controllers(&parent)?;
            let dir = self.dir(&ancestor);
            mkdir(&dir)?;
            parent = dir;
        }
        Ok(())
    }

    fn exists(&self, rel: &str) -> bool {
        self.dir(rel).is_dir()
    }

    fn set_memory_limit(&self, rel: &str, bytes: Option<u64>) -> Result<(), CgroupError> {
        let value = bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
        write(&self.dir(rel).join("memory.max"), &value)
    }

    fn memory_limit(&self, rel: &str) -> Result<Option<u64>, CgroupError> {
        let path = self.dir(rel).join("memory.max");
        let text = read(&path)?;
        match text.trim() {
            "max" => Ok(None),
            value => parse_u64(&path, "memory limit", value).map(Some),
        }
    }

    fn set_cpu_shares(&self, rel: &str, shares: u64) -> Result<(), CgroupError> {
        write(
            &self.dir(rel).join("cpu.weight"),
            &shares_to_weight(shares).to_string(),
        )
    }

    fn set_cpu_quota(
        &self,
        rel: &str,
        quota_us: Option<i64>,
        period_us: u64,
    ) -> Result<(), CgroupError> {
        let quota = quota_us.map_or_else(|| "max".to_owned(), |q| q.to_string());
        write(
            &self.dir(rel).join("cpu.max"),
            &format!("{quota} {period_us}"),
        )
    }

    fn set_pids_limit(&self, rel: &str, limit: Option<u64>) -> Result<(), CgroupError> {
        write(&self.dir(rel).join("pids.max"), &pids_value(limit))
    }

    fn memory_usage(&self, rel: &str) -> Result<MemoryUsage, CgroupError> {
        let dir = self.dir(rel);
        let current_path = dir.join("memory.current");
        let usage = parse_u64(&current_path, "memory usage", read(&current_path)?.trim())?;
        let inactive = stat_field(&dir.join("memory.stat"), "inactive_file")?;
        Ok(MemoryUsage::new(usage, inactive))
    }

    fn procs(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let mut pids = match read_procs(&self.dir(rel)) {
            Ok(pids) => pids,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        let mut names = child_dirs(&self.dir(rel))?;
        names.sort_unstable();
        Ok(names)
    }

    fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        remove_trees(std::slice::from_ref(&self.root), rel)
    }
}

/// Upstream's shares -> `cpu.weight` conversion (`CpuSharesToCpuWeight`), which maps
/// `[2, 262144]` onto `[1, 10000]`.
#[must_use]
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((clamp_shares(shares) - 2) * 9999) / 262_142
}

fn clamp_shares(shares: u64) -> u64 {
    shares.clamp(
        crate::model::qos::MIN_CPU_SHARES,
        crate::model::qos::MAX_CPU_SHARES,
    )
}

fn pids_value(limit: Option<u64>) -> String {
    limit.map_or_else(|| "max".to_owned(), |n| n.to_string())
}

/// `rel`'s directory below a hierarchy mount.
fn under(mount: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// `"/a/b"` -> `["/a", "/a/b"]`: the cgroups to create, top down (the root is not one).
fn lineage(rel: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let next = join(out.last().map_or("/", String::as_str), part);
        out.push(next);
    }
    out
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes `rel` below every mount in `mounts`, after checking that no process is left in
/// any of them.
fn remove_trees(mounts: &[PathBuf], rel: &str) -> Result<(), CgroupError> {
    let rel = normalize(rel);
    if rel == "/" {
        return Err(CgroupError::Remove {
            path: mounts.first().cloned().unwrap_or_default(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to remove a hierarchy's root",
            ),
        });
    }
    let mut trees = Vec::with_capacity(mounts.len());
    for mount in mounts {
        // The walk only lists directories; the version and id do not matter to it.
        let walker = Hierarchy::v1(mount, 0);
        match walker.walk(&rel) {
            Ok(cgroups) => trees.push((walker, cgroups)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    // Refuse before removing anything, deepest cgroup first so the error names the leaf.
    for (walker, cgroups) in &trees {
        for (cgroup, _) in cgroups.iter().rev() {
            let dir = walker.path_of(cgroup);
            match read_procs(&dir) {
                Ok(pids) if !pids.is_empty() => {
                    return Err(CgroupError::Populated { path: dir, pids });
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (walker, cgroups) in &trees {
        for (cgroup, _) in cgroups.iter().rev() {
            rmdir(&walker.path_of(cgroup))?;
        }
    }
    Ok(())
}

/// `rmdir`, retrying `EBUSY` for up to [`REMOVE_TIMEOUT`]; a process that joined meanwhile
/// turns the error into [`CgroupError::Populated`].
fn rmdir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline => {
                thread::sleep(REMOVE_RETRY);
            }
            Err(source) => {
                if let Ok(pids) = read_procs(dir)
                    && !pids.is_empty()
                {
                    return Err(CgroupError::Populated {
                        path: dir.to_path_buf(),
                        pids,
                    });
                }
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Names of the directories in `dir`; none when `dir` does not exist.
fn child_dirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let walk_err = |path: &Path, source| CgroupError::Walk {
        path: path.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(walk_err(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| walk_err(dir, e))?;
        match entry.file_type() {
            Ok(t) if t.is_dir() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(walk_err(&entry.path(), e)),
        }
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => {
                tracing::debug!(dir = %dir.display(), ?name, "skipping cgroup with a non-UTF-8 name");
            }
        }
    }
    Ok(names)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The file's content, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

fn parse_u64(path: &Path, field: &'static str, value: &str) -> Result<u64, CgroupError> {
    value.parse().map_err(|_| CgroupError::Malformed {
        path: path.to_path_buf(),
        field,
    })
}

/// One `<key> <value>` line of a `memory.stat` file.
fn stat_field(path: &Path, key: &'static str) -> Result<u64, CgroupError> {
    read(path)?
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| CgroupError::Malformed {
            path: path.to_path_buf(),
            field: key,
        })
}

fn read_procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = read(&path)?;
    text.split_whitespace()
        .map(|pid| parse_u64(&path, "pid", pid).and_then(|p| to_pid(&path, p)))
        .collect()
}

fn to_pid(path: &Path, pid: u64) -> Result<u32, CgroupError> {
    u32::try_from(pid).map_err(|_| CgroupError::Malformed {
        path: path.to_path_buf(),
        field: "pid",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 fixture: `<root>/<controller>` for every managed controller, with the root files
    /// the driver reads (`cpuset.cpus` / `cpuset.mems`).
    fn v1_fixture() -> (tempfile::TempDir, V1Cgroupfs) {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in V1_CONTROLLERS {
            fs::create_dir(dir.path().join(c)).expect("mkdir controller");
            fs::write(dir.path().join(c).join("cgroup.procs"), "1\n2\n").expect("procs");
        }
        fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").expect("cpus");
        fs::write(dir.path().join("cpuset/cpuset.mems"), "0\n").expect("mems");
        let driver = V1Cgroupfs::new(dir.path());
        (dir, driver)
    }

    /// A v2 fixture: the root with every controller available and none enabled.
    fn v2_fixture() -> (tempfile::TempDir, V2Cgroupfs) {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .expect("controllers");
        fs::write(dir.path().join("cgroup.subtree_control"), "").expect("subtree_control");
        fs::write(dir.path().join("cgroup.procs"), "1\n").expect("procs");
        let driver = V2Cgroupfs::new(dir.path());
        (dir, driver)
    }

    fn file(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// What the kernel would put in a new v2 cgroup.
    fn v2_kernel_files(dir: &Path) {
        for (name, value) in [
            ("cgroup.procs", ""),
            ("cgroup.subtree_control", ""),
            ("memory.max", "max"),
        ] {
            fs::write(dir.join(name), value).expect("kernel file");
        }
    }

    #[test]
    fn weight_conversion_matches_upstream() {
        for (shares, weight) in [
            (0, 1),
            (2, 1),
            (1024, 39),
            (2048, 79),
            (262_144, 10_000),
            (1 << 40, 10_000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "shares {shares}");
        }
    }

    #[test]
    fn lineage_lists_every_level() {
        assert_eq!(lineage("/a/b/c"), ["/a", "/a/b", "/a/b/c"]);
        assert_eq!(lineage("/"), Vec::<String>::new());
    }

    #[test]
    fn v1_create_makes_every_controller_and_copies_cpuset() {
        let (dir, d) = v1_fixture();
        d.create("/r/kubepods/burstable").expect("create");
        for c in V1_CONTROLLERS {
            for rel in ["r", "r/kubepods", "r/kubepods/burstable"] {
                assert!(dir.path().join(c).join(rel).is_dir(), "{c}/{rel}");
            }
        }
        let leaf = dir.path().join("cpuset/r/kubepods/burstable");
        assert_eq!(file(&leaf.join("cpuset.cpus")), "0-1");
        assert_eq!(file(&leaf.join("cpuset.mems")), "0");
        assert!(d.exists("/r/kubepods/burstable"));
        assert!(!d.exists("/r/nope"));

        // Idempotent, and an explicit cpuset a cgroup already has is kept.
        fs::write(leaf.join("cpuset.cpus"), "1\n").expect("narrow");
        d.create("/r/kubepods/burstable/").expect("create again");
        assert_eq!(file(&leaf.join("cpuset.cpus")), "1");
    }

    #[test]
    fn v1_create_without_a_controller_fails_naming_it() {
        let (dir, d) = v1_fixture();
        fs::remove_dir_all(dir.path().join("pids")).expect("rm pids");
        let err = d.create("/x").expect_err("no pids");
        assert!(
            matches!(&err, CgroupError::MissingController { controller: "pids", path } if path.ends_with("pids")),
            "{err:?}"
        );
    }

    #[test]
    fn v1_limits_are_written_to_the_right_files() {
        let (dir, d) = v1_fixture();
        d.create("/pod").expect("create");
        let at = |c: &str, f: &str| file(&dir.path().join(c).join("pod").join(f));

        d.set_memory_limit("/pod", Some(128 << 20)).expect("memory");
        assert_eq!(at("memory", "memory.limit_in_bytes"), "134217728");
        assert_eq!(d.memory_limit("/pod").expect("read"), Some(128 << 20));
        d.set_memory_limit("/pod", None).expect("unlimit");
        assert_eq!(at("memory", "memory.limit_in_bytes"), "-1");
        // What the kernel shows for "unlimited".
        fs::write(
            dir.path().join("memory/pod/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("kernel value");
        assert_eq!(d.memory_limit("/pod").expect("read"), None);

        d.set_cpu_shares("/pod", 512).expect("shares");
        assert_eq!(at("cpu", "cpu.shares"), "512");
        d.set_cpu_shares("/pod", 0).expect("shares");
        assert_eq!(at("cpu", "cpu.shares"), "2");

        d.set_cpu_quota("/pod", Some(50_000), 100_000)
            .expect("quota");
        assert_eq!(at("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
        d.set_cpu_quota("/pod", None, 100_000).expect("no quota");
        assert_eq!(at("cpu", "cpu.cfs_quota_us"), "-1");

        d.set_pids_limit("/pod", Some(64)).expect("pids");
        assert_eq!(at("pids", "pids.max"), "64");
        d.set_pids_limit("/pod", None).expect("pids");
        assert_eq!(at("pids", "pids.max"), "max");
    }

    #[test]
    fn v1_memory_usage_subtracts_total_inactive_file() {
        let (dir, d) = v1_fixture();
        d.create("/k").expect("create");
        let mem = dir.path().join("memory/k");
        fs::write(mem.join("memory.usage_in_bytes"), "1000000\n").expect("usage");
        fs::write(
            mem.join("memory.stat"),
            "cache 5\ninactive_file 1\ntotal_cache 5\ntotal_inactive_file 300000\n",
        )
        .expect("stat");
        assert_eq!(
            d.memory_usage("/k").expect("usage"),
            MemoryUsage {
                usage_bytes: 1_000_000,
                inactive_file_bytes: 300_000,
                working_set_bytes: 700_000
            }
        );
        fs::write(mem.join("memory.stat"), "cache 5\n").expect("stat");
        let err = d.memory_usage("/k").expect_err("no total_inactive_file");
        assert!(
            matches!(
                err,
                CgroupError::Malformed {
                    field: "total_inactive_file",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(MemoryUsage::new(10, 20).working_set_bytes, 0);
    }

    #[test]
    fn v1_children_are_the_union_over_controllers() {
        let (dir, d) = v1_fixture();
        d.create("/k/a").expect("create");
        fs::create_dir(dir.path().join("cpu/k/only-cpu")).expect("mkdir");
        fs::create_dir_all(dir.path().join("freezer/k/only-freezer")).expect("mkdir");
        fs::write(dir.path().join("memory/k/memory.stat"), "").expect("a file");
        assert!(d.exists("/k/only-freezer"));
        assert_eq!(
            d.children("/k").expect("children"),
            ["a", "only-cpu", "only-freezer"]
        );
        assert_eq!(
            d.children("/missing").expect("children"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn v1_remove_refuses_while_a_process_remains_then_removes_all() {
        let (dir, d) = v1_fixture();
        d.create("/k/burstable/pod1").expect("create");
        d.create("/k/pod2").expect("create");
        // What runc adds in a hierarchy bpflet does not manage.
        fs::create_dir_all(dir.path().join("devices/k/burstable/pod1/ctr")).expect("runc dir");
        for c in V1_CONTROLLERS {
            for rel in ["k", "k/burstable", "k/burstable/pod1", "k/pod2"] {
                fs::write(dir.path().join(c).join(rel).join("cgroup.procs"), "").expect("procs");
            }
        }
        let pids = dir.path().join("pids/k/burstable/pod1/cgroup.procs");
        fs::write(&pids, "4242\n").expect("a process");
        let err = d.remove("/k").expect_err("populated");
        match &err {
            CgroupError::Populated { path, pids } => {
                assert_eq!(path, &dir.path().join("pids/k/burstable/pod1"));
                assert_eq!(pids, &[4242]);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("pids/k/burstable/pod1"), "{err}");
        assert_eq!(d.procs("/k/burstable/pod1").expect("procs"), [4242]);
        // Nothing was removed.
        assert!(dir.path().join("memory/k/pod2").is_dir());

        // The process left; cgroupfs would drop the control files with each directory, a
        // fixture has to delete them for rmdir to work.
        for c in V1_CONTROLLERS {
            remove_files_below(&dir.path().join(c).join("k"));
        }
        d.remove("/k").expect("remove");
        assert!(!d.exists("/k"));
        for c in V1_CONTROLLERS.iter().chain(&["devices"]) {
            assert!(!dir.path().join(c).join("k").exists(), "{c}");
            assert!(dir.path().join(c).is_dir(), "{c} mount must stay");
        }
        d.remove("/k").expect("removing what is gone is fine");
        assert!(matches!(
            d.remove("/").expect_err("root"),
            CgroupError::Remove { .. }
        ));
    }

    /// cgroupfs drops a cgroup's control files with its directory; a fixture must delete them.
    fn remove_files_below(dir: &Path) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                remove_files_below(&entry.path());
            } else {
                fs::remove_file(entry.path()).expect("rm file");
            }
        }
    }

    #[test]
    fn v2_create_enables_controllers_top_down() {
        let (dir, d) = v2_fixture();
        d.create("/r").expect("create r");
        v2_kernel_files(&dir.path().join("r"));
        d.create("/r/kubepods/burstable").expect("create");
        assert_eq!(
            file(&dir.path().join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            file(&dir.path().join("r/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert!(dir.path().join("r/kubepods/burstable").is_dir());
        // The leaf enables nothing for children it does not have.
        assert!(
            !dir.path()
                .join("r/kubepods/burstable/cgroup.subtree_control")
                .exists()
        );

        // Already enabled (as the kernel lists them): left alone.
        fs::write(
            dir.path().join("r/cgroup.subtree_control"),
            "cpu memory pids\n",
        )
        .expect("enabled");
        d.create("/r/other").expect("create");
        assert_eq!(
            file(&dir.path().join("r/cgroup.subtree_control")),
            "cpu memory pids"
        );
    }

    #[test]
    fn v2_create_without_memory_controller_fails() {
        let (dir, d) = v2_fixture();
        fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").expect("controllers");
        let err = d.create("/x").expect_err("no memory");
        assert!(
            matches!(
                err,
                CgroupError::MissingController {
                    controller: "memory",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn v2_limits_are_written_to_the_right_files() {
        let (dir, d) = v2_fixture();
        d.create("/pod").expect("create");
        v2_kernel_files(&dir.path().join("pod"));
        let at = |f: &str| file(&dir.path().join("pod").join(f));

        assert_eq!(d.memory_limit("/pod").expect("read"), None);
        d.set_memory_limit("/pod", Some(64 << 20)).expect("memory");
        assert_eq!(at("memory.max"), "67108864");
        assert_eq!(d.memory_limit("/pod").expect("read"), Some(64 << 20));
        d.set_memory_limit("/pod", None).expect("unlimit");
        assert_eq!(at("memory.max"), "max");

        d.set_cpu_shares("/pod", 1024).expect("weight");
        assert_eq!(at("cpu.weight"), "39");
        d.set_cpu_shares("/pod", 2).expect("weight");
        assert_eq!(at("cpu.weight"), "1");

        d.set_cpu_quota("/pod", Some(25_000), 100_000)
            .expect("quota");
        assert_eq!(at("cpu.max"), "25000 100000");
        d.set_cpu_quota("/pod", None, 100_000).expect("no quota");
        assert_eq!(at("cpu.max"), "max 100000");

        d.set_pids_limit("/pod", Some(10)).expect("pids");
        assert_eq!(at("pids.max"), "10");
    }

    #[test]
    fn v2_memory_usage_subtracts_inactive_file() {
        let (dir, d) = v2_fixture();
        d.create("/k").expect("create");
        fs::write(dir.path().join("k/memory.current"), "4096\n").expect("current");
        fs::write(
            dir.path().join("k/memory.stat"),
            "anon 1\nfile 2\nactive_file 3\ninactive_file 1024\n",
        )
        .expect("stat");
        assert_eq!(
            d.memory_usage("/k").expect("usage"),
            MemoryUsage::new(4096, 1024)
        );
        fs::write(dir.path().join("k/memory.current"), "lots\n").expect("current");
        assert!(matches!(
            d.memory_usage("/k").expect_err("garbage"),
            CgroupError::Malformed {
                field: "memory usage",
                ..
            }
        ));
        assert!(d.memory_usage("/gone").expect_err("missing").is_not_found());
    }

    #[test]
    fn v2_remove_refuses_while_populated() {
        let (dir, d) = v2_fixture();
        d.create("/k/pod").expect("create");
        fs::write(dir.path().join("k/cgroup.procs"), "").expect("procs");
        fs::write(dir.path().join("k/pod/cgroup.procs"), "77\n").expect("procs");
        let err = d.remove("/k").expect_err("populated");
        assert!(
            matches!(&err, CgroupError::Populated { path, pids } if path.ends_with("k/pod") && pids == &[77]),
            "{err:?}"
        );
        assert_eq!(d.children("/k").expect("children"), ["pod"]);
        assert_eq!(d.procs("/k/pod").expect("procs"), [77]);
        assert_eq!(d.procs("/k/none").expect("procs"), Vec::<u32>::new());

        remove_files_below(&dir.path().join("k"));
        d.remove("/k").expect("remove");
        assert!(!dir.path().join("k").exists());
        assert!(dir.path().join("cgroup.procs").is_file());
    }

    #[test]
    fn driver_dispatches_and_derives_roots_from_the_hierarchy() {
        let v1 = CgroupDriver::for_hierarchy(&Hierarchy::v1("/sys/fs/cgroup/memory", 4));
        assert_eq!(v1, CgroupDriver::v1("/sys/fs/cgroup"));
        assert_eq!(v1.root(), Path::new("/sys/fs/cgroup"));
        assert_eq!(v1.version(), CgroupVersion::V1);
        let v2 = CgroupDriver::for_hierarchy(&Hierarchy::v2("/sys/fs/cgroup"));
        assert_eq!(v2, CgroupDriver::v2("/sys/fs/cgroup"));
        assert_eq!(v2.version(), CgroupVersion::V2);

        let (dir, _) = v2_fixture();
        let d = CgroupDriver::v2(dir.path());
        d.create("/a").expect("create");
        d.set_cpu_shares("/a", 262_144).expect("weight");
        assert_eq!(file(&dir.path().join("a/cpu.weight")), "10000");
    }

    #[test]
    fn detect_on_this_host() {
        let d = CgroupDriver::detect(Path::new("/proc")).expect("detect");
        assert!(d.root().is_dir(), "{d:?}");
    }
}
