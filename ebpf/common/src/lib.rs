//! The ABI between bpflet's BPF programs and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and only fixed-width
//! integers, and its size is checked at compile time: the BPF object and the agent are
//! built by different compilers for different targets and must agree byte for byte.
#![no_std]

/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of a cgroup path carried by mkdir/rmdir events (longer paths are truncated and flagged).
pub const PATH_LEN: usize = 256;
/// Memory-cgroup levels carried by an OOM event, innermost first.
pub const OOM_CHAIN_LEN: usize = 8;
/// Watched cgroup roots the kernel filter can hold.
pub const MAX_WATCH_ROOTS: u32 = 16;
/// Ring buffer size in bytes (power of two, multiple of the page size): about 1.4 s of exit
/// records at 10,000 exits/s.
pub const RING_BYTES: u32 = 1 << 20;

/// Event kinds, the first field of every record in the ring buffer.
pub mod kind {
    pub const EXIT: u32 = 1;
    pub const OOM_KILL: u32 = 2;
    pub const MEMORY_PRESSURE: u32 = 3;
    pub const CGROUP_CREATED: u32 = 4;
    pub const CGROUP_REMOVED: u32 = 5;
}

/// Indices of the per-CPU drop counter array (`DROPS`): records that could not be reserved
/// in the ring buffer because it was full, counted per event kind.
pub const DROP_SLOTS: u32 = 8;

/// Common header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the kernel produced the record.
    pub ts_ns: u64,
}

/// `exit_code` could be read from `task_struct` (offset from BTF).
pub const EXIT_CODE_KNOWN: u32 = 1;
/// The process was pid 1 of a pid namespace below the host's: a container's main process
/// when the container has a pid namespace of its own. Its exit ends the container (the
/// kernel then kills the rest of the namespace).
pub const EXIT_PIDNS_INIT: u32 = 2;

/// A thread group ended (its last thread passed `sched_process_exit` with `group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: Header,
    /// Thread that exited last.
    pub pid: u32,
    /// Thread-group id: the process id users see.
    pub tgid: u32,
    /// `task_struct::exit_code`, a wait(2) status: `code << 8` or the terminating signal.
    pub exit_status: u32,
    /// [`EXIT_CODE_KNOWN`] when `exit_status` is valid; [`EXIT_PIDNS_INIT`].
    pub flags: u32,
    /// Memory cgroup inode (v1) or cgroup id (v2) of the process.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// One memory-cgroup level as the kernel saw it at OOM time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgLevel {
    /// Memory cgroup inode (v1) or cgroup id (v2).
    pub cgroup_id: u64,
    /// `page_counter.usage`, pages.
    pub usage_pages: u64,
    /// `page_counter.max`, pages (`PAGE_COUNTER_MAX` when unlimited).
    pub max_pages: u64,
    /// `page_counter.failcnt` (maintained on cgroup v1 only).
    pub failcnt: u64,
}

/// The OOM killer chose a victim (`oom/mark_victim`).
///
/// Both memcg chains are innermost first. The invoker is the task whose allocation failed:
/// the limit that was hit is the innermost level of *its* chain that is at its max.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKillEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    pub invoker_pid: u32,
    pub oom_score_adj: i32,
    /// `mm->total_vm`, pages.
    pub total_vm_pages: u64,
    /// `MM_ANONPAGES`, `MM_FILEPAGES`, `MM_SHMEMPAGES`, pages.
    pub anon_rss_pages: u64,
    pub file_rss_pages: u64,
    pub shmem_rss_pages: u64,
    pub comm: [u8; COMM_LEN],
    pub victim_levels: u32,
    pub invoker_levels: u32,
    pub victim_chain: [MemcgLevel; OOM_CHAIN_LEN],
    pub invoker_chain: [MemcgLevel; OOM_CHAIN_LEN],
}

/// Reclaim activity of one memory cgroup, aggregated in the kernel over one window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureEvent {
    pub header: Header,
    pub cgroup_id: u64,
    /// Start of the aggregation window (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Pages scanned / reclaimed by direct and kswapd reclaim in this cgroup.
    pub pages_scanned: u64,
    pub pages_reclaimed: u64,
    /// Tasks of this cgroup that entered memcg reclaim (a charge hit a limit).
    pub memcg_reclaims: u64,
    /// Tasks of this cgroup that entered global direct reclaim (the node is short).
    pub direct_reclaims: u64,
    /// Tasks of this cgroup throttled by reclaim (`mm_vmscan_throttled`).
    pub throttled: u64,
}

/// The mkdir/rmdir path did not fit in [`PATH_LEN`] bytes.
pub const PATH_TRUNCATED: u32 = 1;

/// A cgroup was created or removed in the watched hierarchy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub header: Header,
    pub cgroup_id: u64,
    pub hierarchy_id: u32,
    pub level: u32,
    pub flags: u32,
    pub _pad: u32,
    /// NUL-terminated path inside the hierarchy, e.g. `/kubepods/burstable/pod<uid>`.
    pub path: [u8; PATH_LEN],
}

/// A subtree the kernel reports on: every cgroup whose ancestor at `level` has id `cgroup_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchRoot {
    pub cgroup_id: u64,
    pub level: u32,
    /// Non-zero when the slot is in use.
    pub active: u32,
}

/// Aggregation state of one memory cgroup under reclaim (value of the `PRESSURE` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureAcc {
    pub window_start_ns: u64,
    pub pages_scanned: u64,
    pub pages_reclaimed: u64,
    pub memcg_reclaims: u64,
    pub direct_reclaims: u64,
    pub throttled: u64,
}

/// Kernel layout facts the programs need, resolved by the agent from BTF at load time
/// (Rust BPF has no CO-RE relocations) and written into the `CONFIG` global.
///
/// Offsets are bytes from the start of the named struct; `0` is a valid offset, so
/// optional facts are announced through [`Config::features`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`feature`] bits.
    pub features: u32,
    /// Cgroup hierarchy reported by mkdir/rmdir: the v1 memory hierarchy or 0 for v2.
    pub hierarchy_id: u32,
    /// Minimum time between two pressure records of one cgroup.
    pub pressure_window_ns: u64,
    /// Exit records wake the reader at most once per this interval (0: on every record the
    /// reader has not caught up with). A wakeup is an IPI, which costs microseconds on
    /// virtual machines; the reader collects records left without a wakeup within one
    /// interval on its own.
    pub wakeup_interval_ns: u64,

    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    pub signal_oom_score_adj: u32,

    pub mm_total_vm: u32,
    pub mm_rss_stat: u32,
    pub percpu_counter_size: u32,
    pub percpu_counter_count: u32,
    pub rss_file_idx: u32,
    pub rss_anon_idx: u32,
    pub rss_shmem_idx: u32,

    pub css_set_subsys: u32,
    pub css_set_dfl_cgrp: u32,
    pub memory_cgrp_id: u32,
    pub css_cgroup: u32,

    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_root: u32,
    pub root_hierarchy_id: u32,
    pub kn_id: u32,

    pub memcg_css: u32,
    pub memcg_memory: u32,
    pub counter_usage: u32,
    pub counter_max: u32,
    pub counter_failcnt: u32,
    pub counter_parent: u32,

    /// `enum vm_event_item` values (they depend on the kernel's config).
    pub vm_pgscan_kswapd: u32,
    pub vm_pgscan_direct: u32,
    pub vm_pgsteal_kswapd: u32,
    pub vm_pgsteal_direct: u32,

    /// `task_struct.thread_pid`, `pid.level`, `pid.numbers`, `sizeof(struct upid)` and
    /// `upid.nr`: a task's pid number in its own pid namespace.
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
}

/// Bits of [`Config::features`].
pub mod feature {
    /// The programs may run (set once the agent filled every offset).
    pub const READY: u32 = 1 << 0;
    /// Cgroup v2: a task's cgroup is `css_set.dfl_cgrp`; otherwise the v1 memory css's cgroup.
    pub const CGROUP_V2: u32 = 1 << 1;
    /// `task_struct.exit_code` was found in BTF.
    pub const EXIT_CODE: u32 = 1 << 2;
    /// `mm_struct.rss_stat` is an array of `percpu_counter` (kernels >= 6.2).
    pub const RSS_PERCPU: u32 = 1 << 3;
    /// Report every cgroup, ignoring `WATCH_ROOTS` (tracing the whole machine).
    pub const WATCH_ALL: u32 = 1 << 4;
    /// The pid-namespace offsets were found: exits carry `EXIT_PIDNS_INIT`.
    pub const PIDNS: u32 = 1 << 5;
}

// Sizes are part of the ABI: a change here must be deliberate.
const _: () = assert!(size_of::<Header>() == 16);
const _: () = assert!(size_of::<ExitEvent>() == 56);
const _: () = assert!(size_of::<MemcgLevel>() == 32);
const _: () = assert!(size_of::<OomKillEvent>() == 80 + 8 + 2 * 32 * OOM_CHAIN_LEN);
const _: () = assert!(size_of::<PressureEvent>() == 72);
const _: () = assert!(size_of::<CgroupEvent>() == 40 + PATH_LEN);
const _: () = assert!(size_of::<WatchRoot>() == 16);
const _: () = assert!(size_of::<PressureAcc>() == 48);
const _: () = assert!(size_of::<Config>() == 24 + 40 * 4);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all types are repr(C), Copy, made of integers with explicit padding, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::WatchRoot {}
    unsafe impl aya::Pod for super::PressureAcc {}
    unsafe impl aya::Pod for super::Config {}
}
