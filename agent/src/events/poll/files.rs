//! Parsers for the cgroup and proc files the polling source reads.

use std::fs;
use std::path::Path;

use crate::cgroups::{CgroupVersion, Hierarchy};

/// Pids listed in `cgroup.procs`, one per line.
pub(super) fn parse_pids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().filter_map(|l| l.trim().parse().ok())
}

/// The fields of `/proc/<pid>/stat` we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Clock ticks after boot; tells a reused pid from the process we saw.
    pub start_time: u64,
}

impl ProcStat {
    pub fn has_exited(self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `pid (comm) state ppid ... starttime(22) ...`; the comm may contain spaces and parentheses.
pub(super) fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3; `starttime` is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// `some avg10=1.23 avg60=... total=...` from a PSI file.
pub(super) fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// The value of `key` in a flat keyed file (`oom_kill 3`).
pub(super) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Memory counters of one cgroup; `None` where the file is absent (the memory controller is
/// not enabled there, or the cgroup went away).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Counters {
    /// Processes OOM-killed in this cgroup (v1 `memory.oom_control`, v2 `memory.events`).
    pub oom_kill: Option<u64>,
    /// OOM situations at this cgroup's limit: v2 `oom`; v1 has no such counter, so its
    /// `memory.failcnt` (charges that hit the limit) stands in.
    pub limit_oom: Option<u64>,
    /// Charges that hit the limit and had to reclaim: v1 `memory.failcnt`, v2 `max` + `high`.
    pub limit_hits: Option<u64>,
    /// v2 `memory.pressure` `some avg10`.
    pub psi_some_avg10: Option<f64>,
    /// Whether the event counters count this cgroup only (v1 and v2 `memory.events.local`) or
    /// include its descendants (v2 `memory.events` on kernels without `.local`).
    pub local: bool,
}

pub(super) fn read_counters(h: &Hierarchy, rel: &str) -> Counters {
    let dir = h.path_of(rel);
    match h.version {
        CgroupVersion::V1 => {
            let failcnt = read(&dir.join("memory.failcnt")).and_then(|t| t.trim().parse().ok());
            Counters {
                oom_kill: read(&dir.join("memory.oom_control")).and_then(|t| keyed(&t, "oom_kill")),
                limit_oom: failcnt,
                limit_hits: failcnt,
                psi_some_avg10: None,
                local: true,
            }
        }
        CgroupVersion::V2 => {
            let (events, local) = match read(&dir.join("memory.events.local")) {
                Some(text) => (Some(text), true),
                None => (read(&dir.join("memory.events")), false),
            };
            let events = events.unwrap_or_default();
            let max = keyed(&events, "max");
            let high = keyed(&events, "high");
            Counters {
                oom_kill: keyed(&events, "oom_kill"),
                limit_oom: keyed(&events, "oom"),
                limit_hits: match (max, high) {
                    (None, None) => None,
                    (max, high) => Some(max.unwrap_or(0) + high.unwrap_or(0)),
                },
                psi_some_avg10: read(&dir.join("memory.pressure"))
                    .and_then(|t| parse_psi_some_avg10(&t)),
                local,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids() {
        let pids: Vec<u32> = parse_pids("1\n42\n\nnot-a-pid\n 7 \n").collect();
        assert_eq!(pids, [1, 42, 7]);
    }

    #[test]
    fn stat() {
        let line = "8334 (stress-ng (vm) x) S 8333 8331 1 0 -1 4194624 16 0 0 0 0 0 0 0 20 0 1 0 33912 288882688 15616 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 33912
            })
        );
        let zombie = "12 (sh) Z 1 12 12 0 -1 4228108 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0";
        let z = parse_stat(zombie).expect("zombie");
        assert!(z.has_exited());
        assert_eq!(parse_stat("12 (sh) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn psi() {
        let text = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123\nfull avg10=0.70 avg60=0.00 avg300=0.00 total=50\n";
        assert_eq!(parse_psi_some_avg10(text), Some(1.5));
        assert_eq!(
            parse_psi_some_avg10("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            Some(0.0)
        );
        assert_eq!(parse_psi_some_avg10("full avg10=1.00\n"), None);
        assert_eq!(parse_psi_some_avg10(""), None);
    }

    #[test]
    fn keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 66\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(66));
        assert_eq!(keyed(oom_control, "under_oom"), Some(0));
        assert_eq!(keyed(oom_control, "oom"), None);
    }

    #[test]
    fn counters_v1_and_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("a");
        fs::create_dir(&cg).expect("mkdir");
        fs::write(
            cg.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .expect("write");
        fs::write(cg.join("memory.failcnt"), "17\n").expect("write");
        let v1 = read_counters(&Hierarchy::v1(dir.path(), 4), "/a");
        assert_eq!(
            v1,
            Counters {
                oom_kill: Some(3),
                limit_oom: Some(17),
                limit_hits: Some(17),
                psi_some_avg10: None,
                local: true
            }
        );

        fs::write(
            cg.join("memory.events"),
            "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .expect("write");
        fs::write(
            cg.join("memory.pressure"),
            "some avg10=2.00 avg60=0.00 avg300=0.00 total=9\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .expect("write");
        let v2 = Hierarchy::v2(dir.path());
        let hierarchical = read_counters(&v2, "/a");
        assert_eq!(
            hierarchical,
            Counters {
                oom_kill: Some(1),
                limit_oom: Some(1),
                limit_hits: Some(7),
                psi_some_avg10: Some(2.0),
                local: false
            }
        );
        fs::write(
            cg.join("memory.events.local"),
            "low 0\nhigh 0\nmax 1\noom 0\noom_kill 0\n",
        )
        .expect("write");
        let local = read_counters(&v2, "/a");
        assert_eq!(
            (local.oom_kill, local.limit_hits, local.local),
            (Some(0), Some(1), true)
        );

        assert_eq!(read_counters(&v2, "/gone"), Counters::default());
    }
}
