//! Reading one cgroup's CPU and memory counters, and the node's from `/proc`. Every path is
//! below an injected root (the cgroup mount directory, `/proc`), so unit tests run on
//! fixture trees.
//!
//! | value | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | CPU time (ns) | `cpuacct/<cg>/cpuacct.usage` | `<cg>/cpu.stat` `usage_usec` · 1000 |
//! | usage | `memory/<cg>/memory.usage_in_bytes` | `<cg>/memory.current` |
//! | working set | usage − `total_inactive_file` | usage − `inactive_file` |
//! | rss / cache | `total_rss` / `total_cache` | `anon` / `file` |
//! | page faults | `total_pgfault` / `total_pgmajfault` | `pgfault` / `pgmajfault` |
//! | limit | `memory.limit_in_bytes` (≥ 2^62: none) | `memory.max` (`max`: none) |
//! | OOM kills | `memory.oom_control` `oom_kill` | `memory.events` `oom_kill` |
//!
//! The working set is the kubelet's and cAdvisor's: usage less inactive file pages, at
//! least 0.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroups::CgroupVersion;

use super::StatsError;

/// cgroup v1 says "no limit" with a page-counter maximum; anything at or above 2^62 is none.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Where one cgroup version keeps each memory counter: file names in the cgroup's memory
/// directory and keys of its `memory.stat` (the table at the top of this file).
struct MemoryNames {
    usage: &'static str,
    limit: &'static str,
    /// The flat-keyed file with `oom_kill`.
    oom: &'static str,
    inactive_file: &'static str,
    rss: &'static str,
    cache: &'static str,
    pgfault: &'static str,
    pgmajfault: &'static str,
}

const V1_MEMORY: MemoryNames = MemoryNames {
    usage: "memory.usage_in_bytes",
    limit: "memory.limit_in_bytes",
    oom: "memory.oom_control",
    inactive_file: "total_inactive_file",
    rss: "total_rss",
    cache: "total_cache",
    pgfault: "total_pgfault",
    pgmajfault: "total_pgmajfault",
};

const V2_MEMORY: MemoryNames = MemoryNames {
    usage: "memory.current",
    limit: "memory.max",
    oom: "memory.events",
    inactive_file: "inactive_file",
    rss: "anon",
    cache: "file",
    pgfault: "pgfault",
    pgmajfault: "pgmajfault",
};

/// Memory counters of a cgroup, children included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub cache_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// `None`: unlimited.
    pub limit_bytes: Option<u64>,
    /// OOM kills the kernel counted in this cgroup (`None`: the kernel does not say).
    pub oom_kills: Option<u64>,
}

impl Memory {
    /// What is left below the limit (`None` without a limit), as the kubelet computes it.
    #[must_use]
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|l| l.saturating_sub(self.working_set_bytes))
    }
}

/// One reading of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupReading {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory: Option<Memory>,
}

/// Reads cgroups of one hierarchy layout below `root` (`/sys/fs/cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupReader {
    version: CgroupVersion,
    root: PathBuf,
}

impl CgroupReader {
    #[must_use]
    pub fn new(version: CgroupVersion, root: impl Into<PathBuf>) -> Self {
        Self {
            version,
            root: root.into(),
        }
    }

    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        let base = match self.version {
            CgroupVersion::V1 => self.root.join(controller),
            CgroupVersion::V2 => self.root.clone(),
        };
        if rel.is_empty() { base } else { base.join(rel) }
    }

    /// Whether the cgroup exists (its memory directory on v1).
    #[must_use]
    pub fn exists(&self, rel: &str) -> bool {
        self.dir("memory", rel).is_dir()
    }

    /// CPU time and memory of cgroup `rel`.
    ///
    /// # Errors
    /// [`StatsError::Read`] (a missing cgroup: [`StatsError::is_not_found`]) or
    /// [`StatsError::Malformed`].
    pub fn read(&self, rel: &str) -> Result<CgroupReading, StatsError> {
        Ok(CgroupReading {
            cpu_ns: Some(self.cpu_ns(rel)?),
            memory: Some(self.memory(rel)?),
        })
    }

    /// Cumulative CPU time of `rel` in nanoseconds.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn cpu_ns(&self, rel: &str) -> Result<u64, StatsError> {
        match self.version {
            CgroupVersion::V1 => read_u64(&self.dir("cpuacct", rel).join("cpuacct.usage")),
            CgroupVersion::V2 => {
                let path = self.dir("", rel).join("cpu.stat");
                let text = read(&path)?;
                let usec = keyed(&text, "usage_usec").ok_or_else(|| StatsError::Malformed {
                    path: path.clone(),
                    what: "usage_usec",
                })?;
                Ok(usec.saturating_mul(1000))
            }
        }
    }

    /// Memory counters of `rel`.
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn memory(&self, rel: &str) -> Result<Memory, StatsError> {
        let dir = self.dir("memory", rel);
        let names = match self.version {
            CgroupVersion::V1 => &V1_MEMORY,
            CgroupVersion::V2 => &V2_MEMORY,
        };
        let usage = read_u64(&dir.join(names.usage))?;
        let stat_path = dir.join("memory.stat");
        let stat = read(&stat_path)?;
        let field = |key: &'static str| {
            keyed(&stat, key).ok_or_else(|| StatsError::Malformed {
                path: stat_path.clone(),
                what: key,
            })
        };
        let limit_path = dir.join(names.limit);
        let limit = match (self.version, read(&limit_path)?.trim()) {
            (CgroupVersion::V1, v) => {
                let limit = parse_u64(&limit_path, v)?;
                (limit < V1_UNLIMITED_FLOOR).then_some(limit)
            }
            (CgroupVersion::V2, "max") => None,
            (CgroupVersion::V2, v) => Some(parse_u64(&limit_path, v)?),
        };
        let oom = read_optional(&dir.join(names.oom))?.and_then(|t| keyed(&t, "oom_kill"));
        Ok(Memory {
            usage_bytes: usage,
            working_set_bytes: usage.saturating_sub(field(names.inactive_file)?),
            rss_bytes: field(names.rss)?,
            cache_bytes: field(names.cache)?,
            page_faults: field(names.pgfault)?,
            major_page_faults: field(names.pgmajfault)?,
            limit_bytes: limit,
            oom_kills: oom,
        })
    }

    /// The processes of `rel` and every cgroup below it.
    ///
    /// # Errors
    /// [`StatsError::Read`].
    pub fn procs_below(&self, rel: &str) -> Result<Vec<u32>, StatsError> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.dir("memory", rel)];
        while let Some(dir) = dirs.pop() {
            let path = dir.join("cgroup.procs");
            match read_optional(&path)? {
                Some(text) => {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
                None => continue,
            }
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StatsError::Read { path: dir, source }),
            };
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

/// The node's memory from `/proc/meminfo`: (`MemTotal`, `SwapTotal − SwapFree`).
///
/// # Errors
/// [`StatsError::Read`] or [`StatsError::Malformed`].
pub fn meminfo(proc_root: &Path) -> Result<(u64, u64), StatsError> {
    let path = proc_root.join("meminfo");
    let text = read(&path)?;
    let kib = |key: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|v| v.saturating_mul(1024))
            .ok_or_else(|| StatsError::Malformed {
                path: path.clone(),
                what: key,
            })
    };
    let total = kib("MemTotal")?;
    let swap = kib("SwapTotal")?.saturating_sub(kib("SwapFree")?);
    Ok((total, swap))
}

/// Counters of one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of a `/proc/<pid>/net/dev` (loopback left out, as cAdvisor does).
#[must_use]
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (v.len() >= 11).then(|| Interface {
                name: name.to_owned(),
                rx_bytes: v[0],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

/// The interfaces in the network namespace of `pid` (`None` when it is gone).
///
/// # Errors
/// [`StatsError::Read`] for anything but a vanished process.
pub fn net_dev(proc_root: &Path, pid: &str) -> Result<Option<Vec<Interface>>, StatsError> {
    Ok(read_optional(&proc_root.join(pid).join("net/dev"))?.map(|t| parse_net_dev(&t)))
}

/// `pid_max` and the number of tasks (`/proc/loadavg`'s 4th field, after the `/`).
///
/// # Errors
/// [`StatsError::Read`] or [`StatsError::Malformed`].
pub fn rlimit(proc_root: &Path) -> Result<(u64, u64), StatsError> {
    let max = read_u64(&proc_root.join("sys/kernel/pid_max"))?;
    let load_path = proc_root.join("loadavg");
    let load = read(&load_path)?;
    let tasks = load
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, n)| n.parse().ok())
        .ok_or(StatsError::Malformed {
            path: load_path,
            what: "tasks",
        })?;
    Ok((max, tasks))
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read(path: &Path) -> Result<String, StatsError> {
    fs::read_to_string(path).map_err(|source| StatsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, StatsError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        // ESRCH: a /proc/<pid> whose process exited while it was read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(source) => Err(StatsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A file holding one unsigned integer.
fn read_u64(path: &Path) -> Result<u64, StatsError> {
    parse_u64(path, read(path)?.trim())
}

fn parse_u64(path: &Path, value: &str) -> Result<u64, StatsError> {
    value.parse().map_err(|_| StatsError::Malformed {
        path: path.to_path_buf(),
        what: "an unsigned integer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_reads_cpuacct_and_the_memory_controller() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "cpuacct/kubepods/pod1/cpuacct.usage", "123456789\n");
        write(r, "memory/kubepods/pod1/memory.usage_in_bytes", "10000\n");
        write(
            r,
            "memory/kubepods/pod1/memory.stat",
            "cache 1\nrss 2\ntotal_cache 3000\ntotal_rss 6000\ntotal_inactive_file 2500\n\
             total_pgfault 77\ntotal_pgmajfault 7\n",
        );
        write(
            r,
            "memory/kubepods/pod1/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            r,
            "memory/kubepods/pod1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        let reader = CgroupReader::new(CgroupVersion::V1, r);
        let got = reader.read("/kubepods/pod1").unwrap();
        assert_eq!(got.cpu_ns, Some(123_456_789));
        let m = got.memory.unwrap();
        assert_eq!(
            m,
            Memory {
                usage_bytes: 10000,
                working_set_bytes: 7500,
                rss_bytes: 6000,
                cache_bytes: 3000,
                page_faults: 77,
                major_page_faults: 7,
                limit_bytes: None,
                oom_kills: Some(2),
            }
        );
        assert_eq!(m.available_bytes(), None);
        write(r, "memory/kubepods/pod1/memory.limit_in_bytes", "20000\n");
        let m = reader.memory("/kubepods/pod1").unwrap();
        assert_eq!(m.limit_bytes, Some(20000));
        assert_eq!(m.available_bytes(), Some(12500));
    }

    // A fake v2 tree (this machine is hybrid, with memory on v1): the layout and keys are
    // the kernel's cgroup v2 interface files.
    #[test]
    fn v2_reads_the_unified_files_from_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "kubepods/pod1/cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(r, "kubepods/pod1/memory.current", "8192\n");
        write(
            r,
            "kubepods/pod1/memory.stat",
            "anon 5120\nfile 3072\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
        );
        write(r, "kubepods/pod1/memory.max", "max\n");
        write(
            r,
            "kubepods/pod1/memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        let reader = CgroupReader::new(CgroupVersion::V2, r);
        let got = reader.read("/kubepods/pod1").unwrap();
        assert_eq!(got.cpu_ns, Some(2_500_000));
        let m = got.memory.unwrap();
        assert_eq!(m.working_set_bytes, 7168);
        assert_eq!((m.rss_bytes, m.cache_bytes), (5120, 3072));
        assert_eq!((m.page_faults, m.major_page_faults), (9, 1));
        assert_eq!((m.limit_bytes, m.oom_kills), (None, Some(1)));
        write(r, "kubepods/pod1/memory.max", "65536\n");
        assert_eq!(
            reader.memory("/kubepods/pod1").unwrap().limit_bytes,
            Some(65536)
        );
    }

    #[test]
    fn inactive_file_above_usage_is_a_zero_working_set() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "a/memory.current", "100\n");
        write(
            r,
            "a/memory.stat",
            "anon 0\nfile 100\ninactive_file 300\npgfault 0\npgmajfault 0\n",
        );
        write(r, "a/memory.max", "max\n");
        let m = CgroupReader::new(CgroupVersion::V2, r)
            .memory("/a")
            .unwrap();
        assert_eq!(m.working_set_bytes, 0);
        assert_eq!(m.oom_kills, None);
    }

    #[test]
    fn a_missing_cgroup_is_not_found_and_a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let reader = CgroupReader::new(CgroupVersion::V1, dir.path());
        assert!(reader.read("/gone").unwrap_err().is_not_found());
        write(dir.path(), "cpuacct/bad/cpuacct.usage", "lots\n");
        let e = reader.cpu_ns("/bad").unwrap_err();
        assert!(e.to_string().contains("cpuacct.usage"), "{e}");
    }

    #[test]
    fn procs_below_collects_every_level() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "memory/pod/cgroup.procs", "");
        write(r, "memory/pod/a/cgroup.procs", "10\n11\n");
        write(r, "memory/pod/b/cgroup.procs", "12\n");
        let reader = CgroupReader::new(CgroupVersion::V1, r);
        assert_eq!(reader.procs_below("/pod").unwrap(), vec![10, 11, 12]);
    }

    #[test]
    fn net_dev_skips_loopback_and_reads_bytes_and_errors() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    5000      10    2    0    0     0          0         0     3000       8    1    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 3000,
                tx_errors: 1,
            }]
        );
    }

    #[test]
    fn meminfo_and_rlimit_from_a_fixture_proc() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "meminfo",
            "MemTotal:       2048 kB\nMemFree:  1 kB\nSwapTotal:     100 kB\nSwapFree:       40 kB\n",
        );
        write(r, "sys/kernel/pid_max", "4194304\n");
        write(r, "loadavg", "0.10 0.20 0.30 2/345 6789\n");
        assert_eq!(meminfo(r).unwrap(), (2048 * 1024, 60 * 1024));
        assert_eq!(rlimit(r).unwrap(), (4_194_304, 345));
    }
}
