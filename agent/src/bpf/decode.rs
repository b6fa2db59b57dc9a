//! Ring-buffer records (the `bpflet_common` ABI) to typed [`Event`]s. Pure, so the layout
//! handling is unit-tested without a kernel.

use std::time::{Duration, SystemTime};

use bpflet_common::{
    CgroupEvent, EXIT_CODE_KNOWN, EXIT_PIDNS_INIT, ExitEvent, Header, MemcgLevel, OomKillEvent,
    PressureEvent, kind,
};

use crate::events::{Detail, Event, ExitStatus, MemoryPressure, OomKill, OomScope, Source};

/// Page size used to turn page counts into bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Maps kernel CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds, sampled at creation.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let real = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            offset_ns: i128::try_from(real).unwrap_or(i128::MAX) - i128::from(mono),
        }
    }

    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall(&self, kernel_ns: u64) -> SystemTime {
        let ns = (i128::from(kernel_ns) + self.offset_ns).max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// A record too short for its kind, or of an unknown kind (a newer program, a bug).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("ring-buffer record of kind {kind} has {len} bytes, expected {expected}")]
    Size {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("ring-buffer record of unknown kind {kind}")]
    UnknownKind { kind: u32 },
}

fn read_record<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: `T` is a repr(C) ABI record of integers (any bit pattern is valid) and the
    // slice holds at least size_of::<T>() bytes; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// NUL-terminated bytes to a String (lossy).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8], clock: &Clock, page: u64) -> Result<Event, DecodeError> {
    let header: Header =
        read_record(bytes, 0).map_err(|_| DecodeError::Short { len: bytes.len() })?;
    let base = |pid: u32, comm: String, cgroup_id: Option<u64>, detail: Detail| Event {
        time: clock.wall(header.ts_ns),
        kernel_ns: Some(header.ts_ns),
        source: Source::Bpf,
        pid,
        comm,
        cgroup_id,
        cgroup: String::new(),
        pod: None,
        detail,
    };
    match header.kind {
        kind::EXIT => {
            let e: ExitEvent = read_record(bytes, header.kind)?;
            let status = if e.flags & EXIT_CODE_KNOWN != 0 {
                ExitStatus::from_wait_status(e.exit_status)
            } else {
                ExitStatus::Unknown
            };
            Ok(base(
                e.tgid,
                cstr(&e.comm),
                Some(e.cgroup_id),
                Detail::Exit {
                    status,
                    pidns_init: e.flags & EXIT_PIDNS_INIT != 0,
                },
            ))
        }
        kind::OOM_KILL => {
            let e: OomKillEvent = read_record(bytes, header.kind)?;
            let oom = oom_detail(&e, page);
            let victim_cgroup = chain(&e.victim_chain, e.victim_levels)
                .first()
                .map(|l| l.cgroup_id);
            Ok(base(
                e.tgid,
                cstr(&e.comm),
                victim_cgroup,
                Detail::OomKill(oom),
            ))
        }
        kind::MEMORY_PRESSURE => {
            let e: PressureEvent = read_record(bytes, header.kind)?;
            // A cgroup's first burst is reported at once, before any window: start 0.
            let window_ms = match e.window_start_ns {
                0 => 0,
                start => e.header.ts_ns.saturating_sub(start) / 1_000_000,
            };
            Ok(base(
                0,
                String::new(),
                Some(e.cgroup_id),
                Detail::MemoryPressure(MemoryPressure {
                    window_ms,
                    pages_scanned: e.pages_scanned,
                    pages_reclaimed: e.pages_reclaimed,
                    memcg_reclaims: e.memcg_reclaims,
                    direct_reclaims: e.direct_reclaims,
                    throttled: e.throttled,
                    psi_some_avg10: None,
                }),
            ))
        }
        kind::CGROUP_CREATED | kind::CGROUP_REMOVED => {
            let e: CgroupEvent = read_record(bytes, header.kind)?;
            let detail = if header.kind == kind::CGROUP_CREATED {
                Detail::CgroupCreated { level: e.level }
            } else {
                Detail::CgroupRemoved { level: e.level }
            };
            let mut ev = base(0, String::new(), Some(e.cgroup_id), detail);
            ev.cgroup = cstr(&e.path);
            Ok(ev)
        }
        other => Err(DecodeError::UnknownKind { kind: other }),
    }
}

fn chain(levels: &[MemcgLevel], n: u32) -> &[MemcgLevel] {
    &levels[..levels.len().min(n as usize)]
}

/// Pages the failing charge may still lack when a memcg is declared at its limit: the
/// kernel charges in batches of up to 64 pages, and a THP fault asks for 512.
const LIMIT_SLACK_PAGES: u64 = 512;
/// `PAGE_COUNTER_MAX` is `LONG_MAX / PAGE_SIZE`; anything this large means "no limit".
const UNLIMITED_PAGES: u64 = 1 << 50;

/// The memcg level whose limit the failing allocation hit: the innermost level of the
/// invoker's chain that has a limit and is (nearly) at it. `None` means no cgroup limit was
/// hit: a node-wide OOM.
pub fn limit_level(invoker: &[MemcgLevel]) -> Option<&MemcgLevel> {
    invoker
        .iter()
        .find(|l| l.max_pages < UNLIMITED_PAGES && l.usage_pages + LIMIT_SLACK_PAGES >= l.max_pages)
}

fn oom_detail(e: &OomKillEvent, page: u64) -> OomKill {
    let invoker = chain(&e.invoker_chain, e.invoker_levels);
    let limit = limit_level(invoker);
    OomKill {
        // Refined to container/pod by attribution once paths are known.
        scope: if limit.is_some() {
            OomScope::Cgroup
        } else {
            OomScope::Node
        },
        limit_cgroup_id: limit.map(|l| l.cgroup_id),
        limit_cgroup: None,
        limit_bytes: limit.map(|l| l.max_pages * page),
        usage_bytes: limit.map(|l| l.usage_pages * page),
        anon_rss_bytes: Some(e.anon_rss_pages * page),
        file_rss_bytes: Some(e.file_rss_pages * page),
        shmem_rss_bytes: Some(e.shmem_rss_pages * page),
        total_vm_bytes: Some(e.total_vm_pages * page),
        oom_score_adj: Some(e.oom_score_adj),
        invoker_pid: e.invoker_pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpflet_common::{COMM_LEN, OOM_CHAIN_LEN, PATH_LEN};

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) POD record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn hdr(kind: u32, ts_ns: u64) -> Header {
        Header {
            kind,
            cpu: 1,
            ts_ns,
        }
    }

    #[test]
    fn exit_codes_and_signals() {
        let clock = Clock::fixed(1_000_000_000);
        let mut e = ExitEvent {
            header: hdr(kind::EXIT, 5),
            pid: 11,
            tgid: 10,
            exit_status: 3 << 8,
            flags: EXIT_CODE_KNOWN,
            cgroup_id: 77,
            comm: comm("sh"),
        };
        let ev = decode(&bytes_of(&e), &clock, 4096).unwrap();
        assert_eq!(ev.pid, 10, "the process id is the tgid");
        assert_eq!(ev.comm, "sh");
        assert_eq!(ev.cgroup_id, Some(77));
        assert_eq!(
            ev.detail,
            Detail::Exit {
                status: ExitStatus::Code(3),
                pidns_init: false,
            }
        );
        assert_eq!(
            ev.time,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_000_000_005)
        );

        e.exit_status = 9;
        let ev = decode(&bytes_of(&e), &clock, 4096).unwrap();
        assert_eq!(
            ev.detail,
            Detail::Exit {
                status: ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false
                },
                pidns_init: false,
            }
        );
        e.exit_status = 0x80 | 11;
        let ev = decode(&bytes_of(&e), &clock, 4096).unwrap();
        assert_eq!(
            ev.detail,
            Detail::Exit {
                status: ExitStatus::Signal {
                    signal: 11,
                    core_dumped: true
                },
                pidns_init: false,
            }
        );
        e.flags = 0;
        let ev = decode(&bytes_of(&e), &clock, 4096).unwrap();
        assert_eq!(
            ev.detail,
            Detail::Exit {
                status: ExitStatus::Unknown,
                pidns_init: false,
            }
        );
        e.flags = EXIT_CODE_KNOWN | EXIT_PIDNS_INIT;
        e.exit_status = 9;
        let ev = decode(&bytes_of(&e), &clock, 4096).unwrap();
        assert_eq!(
            ev.detail,
            Detail::Exit {
                status: ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false
                },
                pidns_init: true,
            }
        );
    }

    fn level(id: u64, usage: u64, max: u64) -> MemcgLevel {
        MemcgLevel {
            cgroup_id: id,
            usage_pages: usage,
            max_pages: max,
            failcnt: 0,
        }
    }

    fn oom_event(invoker: &[MemcgLevel]) -> OomKillEvent {
        let mut e = OomKillEvent {
            header: hdr(kind::OOM_KILL, 9),
            pid: 42,
            tgid: 42,
            invoker_pid: 43,
            oom_score_adj: 1000,
            total_vm_pages: 10,
            anon_rss_pages: 100,
            file_rss_pages: 2,
            shmem_rss_pages: 1,
            comm: comm("stress-ng-vm"),
            victim_levels: 2,
            invoker_levels: invoker.len() as u32,
            victim_chain: [MemcgLevel::default(); OOM_CHAIN_LEN],
            invoker_chain: [MemcgLevel::default(); OOM_CHAIN_LEN],
        };
        e.victim_chain[0] = level(500, 0, 0);
        e.victim_chain[1] = level(400, 0, 0);
        e.invoker_chain[..invoker.len()].copy_from_slice(invoker);
        e
    }

    #[test]
    fn oom_limit_is_innermost_level_at_its_max() {
        let unlimited = 1 << 52;
        // container (no limit) -> pod (limit hit) -> kubepods (limited, with room) -> root
        let e = oom_event(&[
            level(500, 25_000, unlimited),
            level(400, 25_590, 25_600),
            level(300, 25_590, 100_000),
            level(1, 900_000, unlimited),
        ]);
        let ev = decode(&bytes_of(&e), &Clock::fixed(0), 4096).unwrap();
        let Detail::OomKill(oom) = ev.detail else {
            panic!("{ev:?}")
        };
        assert_eq!(ev.pid, 42);
        assert_eq!(ev.comm, "stress-ng-vm");
        assert_eq!(ev.cgroup_id, Some(500), "victim's own memcg");
        assert_eq!(oom.limit_cgroup_id, Some(400));
        assert_eq!(oom.scope, OomScope::Cgroup);
        assert_eq!(oom.limit_bytes, Some(25_600 * 4096));
        assert_eq!(oom.usage_bytes, Some(25_590 * 4096));
        assert_eq!(oom.anon_rss_bytes, Some(100 * 4096));
        assert_eq!(oom.oom_score_adj, Some(1000));
        assert_eq!(oom.invoker_pid, 43);
    }

    #[test]
    fn oom_without_a_limit_at_max_is_node_scope() {
        let unlimited = 1 << 52;
        let e = oom_event(&[level(500, 25_000, unlimited), level(300, 25_000, 100_000)]);
        let ev = decode(&bytes_of(&e), &Clock::fixed(0), 4096).unwrap();
        let Detail::OomKill(oom) = ev.detail else {
            panic!("{ev:?}")
        };
        assert_eq!(oom.scope, OomScope::Node);
        assert_eq!(oom.limit_cgroup_id, None);
        assert_eq!(oom.limit_bytes, None);
    }

    #[test]
    fn pressure_and_cgroup_records() {
        let p = PressureEvent {
            header: hdr(kind::MEMORY_PRESSURE, 300_000_000),
            cgroup_id: 9,
            window_start_ns: 100_000_000,
            pages_scanned: 64,
            pages_reclaimed: 32,
            memcg_reclaims: 3,
            direct_reclaims: 0,
            throttled: 1,
        };
        let ev = decode(&bytes_of(&p), &Clock::fixed(0), 4096).unwrap();
        let Detail::MemoryPressure(mp) = &ev.detail else {
            panic!("{ev:?}")
        };
        assert_eq!(mp.window_ms, 200);
        assert_eq!(
            (
                mp.pages_scanned,
                mp.pages_reclaimed,
                mp.memcg_reclaims,
                mp.throttled
            ),
            (64, 32, 3, 1)
        );

        let mut c = CgroupEvent {
            header: hdr(kind::CGROUP_CREATED, 1),
            cgroup_id: 1234,
            hierarchy_id: 5,
            level: 2,
            flags: 0,
            _pad: 0,
            path: [0; PATH_LEN],
        };
        c.path[..13].copy_from_slice(b"/kubepods/pod");
        let ev = decode(&bytes_of(&c), &Clock::fixed(0), 4096).unwrap();
        assert_eq!(ev.cgroup, "/kubepods/pod");
        assert_eq!(ev.detail, Detail::CgroupCreated { level: 2 });
        c.header.kind = kind::CGROUP_REMOVED;
        let ev = decode(&bytes_of(&c), &Clock::fixed(0), 4096).unwrap();
        assert_eq!(ev.detail, Detail::CgroupRemoved { level: 2 });
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(
            decode(&[1, 2, 3], &Clock::fixed(0), 4096),
            Err(DecodeError::Short { len: 3 })
        );
        let h = hdr(kind::EXIT, 0);
        assert!(matches!(
            decode(&bytes_of(&h), &Clock::fixed(0), 4096),
            Err(DecodeError::Size {
                kind: kind::EXIT,
                len: 16,
                ..
            })
        ));
        let h = hdr(99, 0);
        assert_eq!(
            decode(&bytes_of(&h), &Clock::fixed(0), 4096),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
    }
}
