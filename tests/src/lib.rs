//! Harness for the root integration tests in `tests/tests/*.rs`.
//!
//! These tests run against the real kernel, containerd and runc, so they need root. They never
//! skip: [`require_root`] panics when the process is not root. Every cgroup a test needs comes
//! from [`TestCgroup`], which creates a uniquely named cgroup on the memory hierarchy and removes
//! it (killing whatever still runs inside) when dropped. Nothing here touches a cgroup the test
//! did not create.
//!
//! Like the tests themselves, the harness panics with context instead of returning errors.

pub mod cluster;
pub mod node;
pub mod registry;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

/// Where cgroup file systems are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// How long [`TestCgroup`]'s drop waits for killed processes to leave and for `rmdir`.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics unless this process runs as root: the integration tests must fail, never skip.
#[track_caller]
pub fn require_root() {
    assert!(
        geteuid().is_root(),
        "this integration test needs root (real cgroups, BPF, containerd) and must not be \
         skipped: run it as root, e.g. through `cargo xtask test`"
    );
}

/// Which cgroup version carries memory accounting, and where its hierarchy is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHierarchy {
    pub version: CgroupVersion,
    /// The mount point of the hierarchy: `/sys/fs/cgroup/memory` (v1) or `/sys/fs/cgroup` (v2).
    pub root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl MemoryHierarchy {
    /// The live machine's memory hierarchy.
    pub fn detect() -> Self {
        Self::detect_at(Path::new(CGROUP_MOUNT))
    }

    /// v1 when `<mount>/memory/memory.limit_in_bytes` exists, else v2 at `<mount>`.
    pub fn detect_at(mount: &Path) -> Self {
        let v1 = mount.join("memory");
        if v1.join("memory.limit_in_bytes").is_file() {
            Self {
                version: CgroupVersion::V1,
                root: v1,
            }
        } else {
            Self {
                version: CgroupVersion::V2,
                root: mount.to_path_buf(),
            }
        }
    }
}

/// `bpflet-test-<pid>-<counter>-<name>`: unique across processes and within this one.
pub fn unique_cgroup_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    check_name(name);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("bpflet-test-{}-{n}-{name}", std::process::id())
}

fn check_name(name: &str) {
    assert!(
        !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\0', '\n'])
            && !name.starts_with("cgroup.")
            && !name.starts_with("memory."),
        "{name:?} cannot name a cgroup directory"
    );
}

/// A cgroup on the memory hierarchy that this test created and that is removed on drop.
///
/// Drop SIGKILLs every process still inside it (and inside any cgroup below it, which can only
/// have been made by the test or the code under test), waits until they are gone, and removes
/// the directories bottom-up.
#[derive(Debug)]
pub struct TestCgroup {
    hierarchy: MemoryHierarchy,
    /// Path below the hierarchy's mount, starting with '/'.
    rel: String,
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `bpflet-test-<pid>-<counter>-<name>` at the top of the memory hierarchy.
    pub fn new(name: &str) -> Self {
        let hierarchy = MemoryHierarchy::detect();
        let rel = format!("/{}", unique_cgroup_name(name));
        Self::create(hierarchy, rel)
    }

    fn create(hierarchy: MemoryHierarchy, rel: String) -> Self {
        let path = hierarchy.root.join(rel.trim_start_matches('/'));
        // create_dir, not create_dir_all: a name that exists already is not ours to take.
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self {
            hierarchy,
            rel,
            path,
        }
    }

    /// A cgroup nested in this one, removed on its own drop or with this one's.
    ///
    /// On v2 this enables the memory controller for this cgroup's children first, which the
    /// kernel refuses once processes run here ("no internal processes"): make children before
    /// spawning into the parent.
    pub fn child(&self, name: &str) -> Self {
        check_name(name);
        if self.hierarchy.version == CgroupVersion::V2 {
            let controllers = self.read("cgroup.subtree_control");
            if !controllers.split_whitespace().any(|c| c == "memory") {
                self.write("cgroup.subtree_control", "+memory");
            }
        }
        Self::create(self.hierarchy.clone(), format!("{}/{name}", self.rel))
    }

    /// Limits memory so the kernel reclaims and OOM-kills inside this cgroup: swap is ruled
    /// out as well, so a process that exceeds the limit is killed rather than swapped.
    #[must_use]
    pub fn with_memory_limit(self, bytes: u64) -> Self {
        let bytes = bytes.to_string();
        match self.hierarchy.version {
            CgroupVersion::V1 => {
                self.write("memory.limit_in_bytes", &bytes);
                // memsw (memory + swap) must stay >= limit_in_bytes: set it second.
                if self.has("memory.memsw.limit_in_bytes") {
                    self.write("memory.memsw.limit_in_bytes", &bytes);
                }
                if self.has("memory.swappiness") {
                    self.write("memory.swappiness", "0");
                }
            }
            CgroupVersion::V2 => {
                self.write("memory.max", &bytes);
                if self.has("memory.swap.max") {
                    self.write("memory.swap.max", "0");
                }
            }
        }
        self
    }

    /// The cgroup directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path below the hierarchy's mount, starting with '/', as `/proc/<pid>/cgroup` and
    /// the kernel's cgroup tracepoints show it.
    pub fn rel_path(&self) -> &str {
        &self.rel
    }

    pub fn version(&self) -> CgroupVersion {
        self.hierarchy.version
    }

    /// The directory's inode number: the id that the memcg tracepoints report (v1) and that
    /// `bpf_get_current_cgroup_id` returns (v2).
    pub fn inode(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// Spawns `cmd` with the child already in this cgroup: it moves itself in between fork
    /// and exec, so everything it runs is accounted here from its first instruction.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let procs = self.path.join("cgroup.procs");
        let procs_c = CString::new(procs.as_os_str().as_bytes())
            .unwrap_or_else(|_| panic!("{} holds a NUL byte", procs.display()));
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe calls open, write and close on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || join_cgroup(&procs_c));
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in cgroup {}: {e}", self.path.display()))
    }

    /// The pids in `cgroup.procs`.
    pub fn procs(&self) -> Vec<i32> {
        read_procs(&self.path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads one of the cgroup's files.
    pub fn read(&self, file: &str) -> String {
        let path = self.path.join(file);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Writes one of the cgroup's files.
    pub fn write(&self, file: &str, value: &str) {
        let path = self.path.join(file);
        fs::write(&path, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
    }

    fn has(&self, file: &str) -> bool {
        self.path.join(file).exists()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path, Instant::now() + TEARDOWN_TIMEOUT) {
            let msg = format!("removing test cgroup {}: {e}", self.path.display());
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Writes "0" (the writer itself) to `cgroup.procs`. Runs between fork and exec.
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated path; the fd is closed on every path.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let result = if written == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}

fn read_procs(dir: &Path) -> Result<Vec<i32>, String> {
    let path = dir.join("cgroup.procs");
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_procs(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn parse_procs(text: &str) -> Result<Vec<i32>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|e| format!("{l:?} is not a pid: {e}"))
        })
        .collect()
}

/// Kills everything in `dir` and below, then removes the directories bottom-up. A directory
/// that is already gone (say, a child cgroup removed with its parent) is fine.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| format!("stat {}: {e}", entry.path().display()))?
            .is_dir();
        if is_dir {
            remove_tree(&entry.path(), deadline)?;
        }
    }
    kill_all(dir, deadline)?;
    // The cgroup can stay busy for a moment after its last process is gone.
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("rmdir {}: {e}", dir.display()));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// SIGKILLs every process in `dir` (again and again, to catch forks) until it is empty.
fn kill_all(dir: &Path, deadline: Instant) -> Result<(), String> {
    loop {
        let pids = read_procs(dir)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("processes {pids:?} are still in it after SIGKILL"));
        }
        for pid in pids {
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(format!("SIGKILL to pid {pid}: {e}")),
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The debug `bpflet` binary, for tests to spawn.
///
/// The first call runs `cargo build -p bpflet` (once per test binary, whether or not the
/// binary exists, so a test never runs a stale agent); a failed build fails every caller.
/// `BPFLET_TEST_BIN=<path>` runs that binary instead, without building.
pub fn bpflet_bin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_bpflet)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// Builds the agent, unless `BPFLET_TEST_BIN` names a binary to test instead (an older
/// build, to show a new test fails without a fix).
fn build_bpflet() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BPFLET_TEST_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("BPFLET_TEST_BIN={} is not a file", bin.display()))
        };
    }
    let root = workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug/bpflet");
    // The cargo that built these tests, so the agent is built by the same toolchain.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "bpflet", "--bin", "bpflet"])
        .current_dir(&root);
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}"));
    }
    if !bin.is_file() {
        return Err(format!(
            "{cmd:?} succeeded but {} does not exist",
            bin.display()
        ));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_pid_and_name() {
        let a = unique_cgroup_name("oom");
        let b = unique_cgroup_name("oom");
        assert_ne!(a, b);
        let prefix = format!("bpflet-test-{}-", std::process::id());
        assert!(a.starts_with(&prefix) && a.ends_with("-oom"), "{a}");
        let counter = &a[prefix.len()..a.len() - "-oom".len()];
        assert!(counter.parse::<u64>().is_ok(), "{a}");
    }

    #[test]
    fn names_that_are_not_one_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "cgroup.procs", "memory.max", "x\0y"] {
            let result = std::panic::catch_unwind(|| unique_cgroup_name(bad));
            assert!(result.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn hierarchy_detection_prefers_v1_memory() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = MemoryHierarchy::detect_at(dir.path());
        assert_eq!(
            v2,
            MemoryHierarchy {
                version: CgroupVersion::V2,
                root: dir.path().into()
            }
        );

        fs::create_dir(dir.path().join("memory")).unwrap();
        fs::write(
            dir.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let v1 = MemoryHierarchy::detect_at(dir.path());
        assert_eq!(
            v1,
            MemoryHierarchy {
                version: CgroupVersion::V1,
                root: dir.path().join("memory")
            }
        );
    }

    #[test]
    fn procs_parse_and_reject_garbage() {
        assert_eq!(parse_procs("12\n345\n\n").unwrap(), [12, 345]);
        assert_eq!(parse_procs("").unwrap(), Vec::<i32>::new());
        assert!(parse_procs("12\nabc\n").is_err());
    }
}
