//! The kernel side, seen from the agent: load and attach the BPF programs, steer their
//! filters, and turn the ring buffer into a typed async stream of [`Event`]s.
//!
//! [`load`] returns two halves: [`KernelProbe`] keeps the programs attached (dropping it
//! detaches everything) and steers the kernel filters; [`EventReader`] owns the ring buffer
//! and the drop counters and is the single place where records become events.

pub mod btf;
pub mod decode;

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::{Array, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfError, EbpfLoader};
use bpflet_common::{Config, DROP_SLOTS, MAX_WATCH_ROOTS, WatchRoot, feature};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::events::{Detail, Event, Source};

/// The BPF object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("BPFLET_EBPF_OBJECT"));

/// Where the running kernel publishes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the kernel side could not be set up. Each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "loading BPF programs needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); bpflet runs as uid {uid}"
    )]
    NotPrivileged { uid: u32 },
    #[error("cannot read the kernel's BTF at {path} (is CONFIG_DEBUG_INFO_BTF enabled?)")]
    Btf {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("the kernel's BTF has no {what}")]
    BtfMissing { what: String },
    #[error("the kernel refused the BPF object")]
    Load(#[source] EbpfError),
    #[error("the BPF object has no program {0} (object and agent out of step?)")]
    MissingProgram(&'static str),
    #[error("the kernel refused program {program} (for raw tracepoint {tracepoint})")]
    ProgramLoad {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach program {program} to raw tracepoint {tracepoint}")]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("BPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{count} watched cgroup roots given; the kernel filter holds at most {max}")]
    TooManyRoots { count: usize, max: u32 },
    #[error("cannot poll the ring buffer")]
    Poll(#[source] io::Error),
}

/// A program and the raw tracepoint it attaches to. `required: false` programs only feed
/// pressure aggregation: without them bpflet runs with a warning instead of falling back.
struct Attachment {
    program: &'static str,
    tracepoint: &'static str,
    required: bool,
}

const ATTACHMENTS: &[Attachment] = &[
    Attachment {
        program: "bpflet_exit",
        tracepoint: "sched_process_exit",
        required: true,
    },
    Attachment {
        program: "bpflet_oom",
        tracepoint: "mark_victim",
        required: true,
    },
    Attachment {
        program: "bpflet_cgroup_mkdir",
        tracepoint: "cgroup_mkdir",
        required: true,
    },
    Attachment {
        program: "bpflet_cgroup_rmdir",
        tracepoint: "cgroup_rmdir",
        required: true,
    },
    Attachment {
        program: "bpflet_memcg_events",
        tracepoint: "count_memcg_events",
        required: false,
    },
    Attachment {
        program: "bpflet_memcg_reclaim",
        tracepoint: "mm_vmscan_memcg_reclaim_begin",
        required: false,
    },
    Attachment {
        program: "bpflet_direct_reclaim",
        tracepoint: "mm_vmscan_direct_reclaim_begin",
        required: false,
    },
    Attachment {
        program: "bpflet_throttled",
        tracepoint: "mm_vmscan_throttled",
        required: false,
    },
];

/// What the kernel should report.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// Watched subtrees as (cgroup id, level). Empty with `watch_all` false reports only
    /// registered pids and OOM kills.
    pub roots: Vec<(u64, u32)>,
    /// Report every cgroup of the hierarchy (tracing the whole machine).
    pub watch_all: bool,
    /// The hierarchy whose mkdir/rmdir are reported: the v1 memory hierarchy id, or 0 on v2.
    pub hierarchy_id: u32,
    pub cgroup_v2: bool,
    /// Minimum spacing of two pressure records for one cgroup.
    pub pressure_window: Duration,
    /// Exit records wake the reader at most this often (zero: whenever it has caught up).
    /// Records that arrive between wakeups are collected by the reader within one interval.
    pub wakeup_interval: Duration,
    pub btf_path: PathBuf,
}

impl Default for WatchSpec {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            watch_all: false,
            hierarchy_id: 0,
            cgroup_v2: false,
            pressure_window: Duration::from_millis(100),
            wakeup_interval: Duration::ZERO,
            btf_path: PathBuf::from(KERNEL_BTF),
        }
    }
}

/// Events lost on the way, for metrics and `events_lost` records.
#[derive(Debug, Default)]
pub struct LossCounters {
    /// Ring-buffer reservations that failed in the kernel (buffer full).
    pub kernel: AtomicU64,
    /// Decoded events dropped because the consumer's channel was full.
    pub userspace: AtomicU64,
    /// Records that did not decode (a bug or an object/agent mismatch).
    pub malformed: AtomicU64,
}

/// The attached programs and the filter maps. Dropping it detaches every program.
pub struct KernelProbe {
    _ebpf: Ebpf,
    roots: Array<MapData, WatchRoot>,
    /// Optional tracepoints that could not be attached, with the reason.
    pub degraded: Vec<String>,
}

/// Owns the ring buffer; [`EventReader::run`] turns it into events.
pub struct EventReader {
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    losses: Arc<LossCounters>,
    pressure_window: Duration,
    wakeup_interval: Duration,
}

/// Loads the BPF object, fills its configuration from BTF, attaches every program and
/// installs the watch filter.
pub fn load(spec: &WatchSpec) -> Result<(KernelProbe, EventReader), BpfError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(BpfError::NotPrivileged { uid });
    }
    raise_memlock_limit();

    let kernel = btf::KernelBtf::load(&spec.btf_path)?;
    let mut config: Config = btf::resolve_config(&kernel)?;
    config.hierarchy_id = spec.hierarchy_id;
    config.pressure_window_ns = u64::try_from(spec.pressure_window.as_nanos()).unwrap_or(u64::MAX);
    config.wakeup_interval_ns = u64::try_from(spec.wakeup_interval.as_nanos()).unwrap_or(u64::MAX);
    if spec.cgroup_v2 {
        config.features |= feature::CGROUP_V2;
    }
    if spec.watch_all {
        config.features |= feature::WATCH_ALL;
    }
    if config.features & feature::EXIT_CODE == 0 {
        warn!(
            "task_struct.exit_code is not in the kernel's BTF: exit codes will be reported as unknown"
        );
    }

    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .load(OBJECT)
        .map_err(BpfError::Load)?;

    let mut degraded = Vec::new();
    for a in ATTACHMENTS {
        match attach(&mut ebpf, a) {
            Ok(()) => debug!(program = a.program, tracepoint = a.tracepoint, "attached"),
            Err(e) if !a.required => {
                let reason = crate::error::full_text(&e);
                warn!("{reason}; memory pressure reporting is incomplete");
                degraded.push(reason);
            }
            Err(e) => return Err(e),
        }
    }

    let ring =
        RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| BpfError::Map {
            map: "EVENTS",
            source,
        })?;
    let drops =
        PerCpuArray::try_from(take_map(&mut ebpf, "DROPS")?).map_err(|source| BpfError::Map {
            map: "DROPS",
            source,
        })?;
    let roots =
        Array::try_from(take_map(&mut ebpf, "WATCH_ROOTS")?).map_err(|source| BpfError::Map {
            map: "WATCH_ROOTS",
            source,
        })?;

    // Parsing vmlinux BTF peaks at tens of MiB of heap that is garbage by now; hand it back
    // to the kernel instead of keeping it resident for the agent's lifetime.
    drop(kernel);
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };

    let mut probe = KernelProbe {
        _ebpf: ebpf,
        roots,
        degraded,
    };
    probe.set_roots(&spec.roots)?;
    let reader = EventReader {
        ring,
        drops,
        losses: Arc::new(LossCounters::default()),
        pressure_window: spec.pressure_window,
        wakeup_interval: spec.wakeup_interval,
    };
    Ok((probe, reader))
}

fn attach(ebpf: &mut Ebpf, a: &Attachment) -> Result<(), BpfError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(a.program)
        .ok_or(BpfError::MissingProgram(a.program))?
        .try_into()
        .map_err(|source| BpfError::ProgramLoad {
            program: a.program,
            tracepoint: a.tracepoint,
            source,
        })?;
    program.load().map_err(|source| BpfError::ProgramLoad {
        program: a.program,
        tracepoint: a.tracepoint,
        source,
    })?;
    program
        .attach(a.tracepoint)
        .map_err(|source| BpfError::Attach {
            program: a.program,
            tracepoint: a.tracepoint,
            source,
        })?;
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap(name))
}

/// BPF maps are charged to the memory cgroup on current kernels; on older ones they count
/// against RLIMIT_MEMLOCK. Raising it may be refused (no CAP_SYS_RESOURCE): that is logged,
/// never fatal.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            error = %io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; fine on kernels that charge BPF maps to the memory cgroup"
        );
    }
}

impl KernelProbe {
    /// Replaces the watched subtrees.
    pub fn set_roots(&mut self, roots: &[(u64, u32)]) -> Result<(), BpfError> {
        if roots.len() > MAX_WATCH_ROOTS as usize {
            return Err(BpfError::TooManyRoots {
                count: roots.len(),
                max: MAX_WATCH_ROOTS,
            });
        }
        let map_err = |source| BpfError::Map {
            map: "WATCH_ROOTS",
            source,
        };
        // Slots are read densely from 0: write the new ones, then clear the rest.
        for (i, &(cgroup_id, level)) in roots.iter().enumerate() {
            let root = WatchRoot {
                cgroup_id,
                level,
                active: 1,
            };
            self.roots.set(i as u32, root, 0).map_err(map_err)?;
        }
        for i in roots.len() as u32..MAX_WATCH_ROOTS {
            self.roots
                .set(i, WatchRoot::default(), 0)
                .map_err(map_err)?;
        }
        Ok(())
    }
}

/// How often the reader drains the ring without a wakeup and checks the kernel's drop
/// counters while records flow.
const LOSS_CHECK: Duration = Duration::from_millis(250);
/// After this long without a record the ring counts as quiet: nothing can be left in it
/// by a lazy wakeup (see [`Backstop`]), so the backstop slows to [`IDLE_CHECK`].
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// The backstop's period on a quiet ring: a guard against a wakeup lost all the same, kept
/// under the PLEG's safety relist.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// When the reader next drains the ring on its own (no wakeup) and checks the drop counters.
///
/// An exit record submitted without a wakeup follows, within `wakeup_interval`, a record
/// that woke the reader; the straggler timer collects it. The backstop covers what a timer
/// cannot: a record reserved before a drain and committed just after it. A record left so
/// would also hold back every later wakeup (the kernel wakes a reader only once it has
/// caught up), so while records flow the backstop runs every [`LOSS_CHECK`]. A BPF program
/// runs for microseconds between reserve and commit, so once no record has come for
/// [`QUIET_AFTER`] nothing can be pending, and the next record wakes the reader: at idle
/// the backstop only runs every [`IDLE_CHECK`], which keeps an idle agent from waking four
/// times a second for nothing.
#[derive(Debug, Clone, Copy)]
struct Backstop {
    last_records: tokio::time::Instant,
    next: tokio::time::Instant,
}

impl Backstop {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            last_records: now,
            next: now + LOSS_CHECK,
        }
    }

    /// A drain found records: back to the fast period.
    fn records(&mut self, now: tokio::time::Instant) {
        self.last_records = now;
        self.next = self.next.min(now + LOSS_CHECK);
    }

    /// The backstop ran at `now`; `busy` when a loss is still to be reported.
    fn ran(&mut self, now: tokio::time::Instant, busy: bool) {
        let quiet = now.saturating_duration_since(self.last_records) >= QUIET_AFTER;
        self.next = now
            + if quiet && !busy {
                IDLE_CHECK
            } else {
                LOSS_CHECK
            };
    }
}

impl EventReader {
    pub fn losses(&self) -> Arc<LossCounters> {
        Arc::clone(&self.losses)
    }

    /// The configured pressure aggregation window.
    pub fn pressure_window(&self) -> Duration {
        self.pressure_window
    }

    /// Reads events until `cancel` fires or the receiver goes away. Never blocks on a slow
    /// consumer: events that do not fit in `tx` are counted and reported as `events_lost`
    /// once there is room again, together with the kernel's own drops.
    pub async fn run(
        self,
        tx: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<(), BpfError> {
        let clock = decode::Clock::now();
        let page = decode::page_size();
        let mut drops_reader = DropsReader {
            drops: self.drops,
            reported: 0,
        };
        let losses = self.losses;
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, until the
        // AsyncFd (which owns the ring buffer) is dropped.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(self.ring, tokio::io::Interest::READABLE) }
                .map_err(|e| BpfError::Poll(e.into()))?;
        let mut backstop = Backstop::new(tokio::time::Instant::now());
        let mut pending_user_loss = 0u64;
        // The kernel drops a record only when the ring is full, so only after records came
        // in is there anything to read from the drop counters (8 per-CPU lookups, each a
        // syscall): an idle reader wakes for the backstop drain and reads nothing else.
        let mut records_since_check = true;
        // Records submitted without a wakeup (see WatchSpec::wakeup_interval) are collected
        // by a one-shot timer armed after every read that found records: no polling at idle.
        let mut straggler: Option<tokio::time::Instant> = None;
        debug!(fd = fd.get_ref().as_raw_fd(), "reading kernel events");
        loop {
            let drain = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                guard = fd.readable_mut() => {
                    let mut guard = guard.map_err(BpfError::Poll)?;
                    // Readiness is cleared before reading, never after: a wakeup that lands
                    // while the ring is drained must leave the fd readable, or the records
                    // it announced wait unread, and (the kernel wakes a reader only when it
                    // has caught up) so does every later one until the ring is full.
                    guard.clear_ready();
                    drain(guard.get_inner_mut(), &tx, &clock, page, &losses, &mut pending_user_loss)
                }
                () = crate::timer::sleep_until(straggler) => {
                    straggler = None;
                    drain(fd.get_mut(), &tx, &clock, page, &losses, &mut pending_user_loss)
                }
                () = tokio::time::sleep_until(backstop.next) => {
                    let drained =
                        drain(fd.get_mut(), &tx, &clock, page, &losses, &mut pending_user_loss);
                    let now = tokio::time::Instant::now();
                    match drained {
                        Drained::Closed => return Ok(()),
                        Drained::Records(0) => {}
                        Drained::Records(_) => {
                            records_since_check = true;
                            backstop.records(now);
                        }
                    }
                    if records_since_check || pending_user_loss > 0 {
                        records_since_check = false;
                        let kernel_total = drops_reader.total();
                        losses.kernel.store(kernel_total, Ordering::Relaxed);
                        let kernel_new = kernel_total - drops_reader.reported;
                        if kernel_new > 0 || pending_user_loss > 0 {
                            let ev = events_lost(kernel_new, pending_user_loss);
                            match tx.try_send(ev) {
                                Ok(()) => {
                                    drops_reader.reported = kernel_total;
                                    pending_user_loss = 0;
                                }
                                // Report at the next check.
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    records_since_check = true;
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                            }
                        }
                    }
                    backstop.ran(now, records_since_check || pending_user_loss > 0);
                    continue;
                }
            };
            match drain {
                Drained::Closed => return Ok(()),
                Drained::Records(0) => {}
                Drained::Records(_) => {
                    records_since_check = true;
                    let now = tokio::time::Instant::now();
                    backstop.records(now);
                    if !self.wakeup_interval.is_zero() {
                        straggler = Some(now + self.wakeup_interval);
                    }
                }
            }
        }
    }
}

enum Drained {
    Records(usize),
    /// The consumer went away.
    Closed,
}

/// Reads every record in the ring buffer and hands the events on without blocking.
fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Event>,
    clock: &decode::Clock,
    page: u64,
    losses: &LossCounters,
    pending_user_loss: &mut u64,
) -> Drained {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        match decode::decode(&item, clock, page) {
            Ok(ev) => match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *pending_user_loss += 1;
                    losses.userspace.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Drained::Closed,
            },
            Err(e) => {
                if losses.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(error = %e, "malformed kernel record (further ones are only counted)");
                }
            }
        }
    }
    Drained::Records(n)
}

struct DropsReader {
    drops: PerCpuArray<MapData, u64>,
    reported: u64,
}

impl DropsReader {
    fn total(&self) -> u64 {
        let total: u64 = (0..DROP_SLOTS)
            .filter_map(|slot| self.drops.get(&slot, 0).ok())
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .sum();
        total.max(self.reported)
    }
}

/// An `events_lost` record.
pub fn events_lost(kernel: u64, userspace: u64) -> Event {
    Event {
        time: std::time::SystemTime::now(),
        kernel_ns: None,
        source: Source::Bpf,
        pid: 0,
        comm: String::new(),
        cgroup_id: None,
        cgroup: String::new(),
        pod: None,
        detail: Detail::EventsLost { kernel, userspace },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn backstop_is_fast_while_records_flow() {
        let t0 = Instant::now();
        let mut b = Backstop::new(t0);
        assert_eq!(b.next, t0 + LOSS_CHECK);
        // Records a moment ago: the next drain one loss check later.
        let t1 = t0 + Duration::from_millis(300);
        b.records(t1);
        b.ran(t1, false);
        assert_eq!(b.next, t1 + LOSS_CHECK);
        // Still within QUIET_AFTER of the last records.
        let t2 = t1 + QUIET_AFTER - Duration::from_millis(1);
        b.ran(t2, false);
        assert_eq!(b.next, t2 + LOSS_CHECK);
    }

    #[test]
    fn backstop_slows_on_a_quiet_ring_and_speeds_up_with_records() {
        let t0 = Instant::now();
        let mut b = Backstop::new(t0);
        let quiet = t0 + QUIET_AFTER;
        b.ran(quiet, false);
        assert_eq!(b.next, quiet + IDLE_CHECK);
        // A wakeup brings records: the backstop is due one loss check later, not in 5 s.
        let woke = quiet + Duration::from_secs(1);
        b.records(woke);
        assert_eq!(b.next, woke + LOSS_CHECK);
        // A record never pushes a due backstop later.
        let again = woke + Duration::from_millis(100);
        b.records(again);
        assert_eq!(b.next, woke + LOSS_CHECK);
    }

    #[test]
    fn backstop_stays_fast_while_a_loss_is_unreported() {
        let t0 = Instant::now();
        let mut b = Backstop::new(t0);
        let late = t0 + QUIET_AFTER * 3;
        b.ran(late, true);
        assert_eq!(b.next, late + LOSS_CHECK);
    }
}
