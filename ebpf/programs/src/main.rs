//! bpflet's kernel side: raw tracepoint programs that report process exits, OOM kills,
//! reclaim pressure and cgroup creation/removal for the cgroups the agent watches.
//!
//! Only tracepoints load on the kernels bpflet targets (no kprobes, fentry or LSM), and Rust
//! BPF has no CO-RE, so every `task_struct`/`cgroup`/`mem_cgroup` field is read through
//! `bpf_probe_read_kernel` at an offset the agent resolved from BTF and wrote into `CONFIG`.
//!
//! Programs are thin: decide quickly whether the event concerns a watched cgroup, fill a
//! record in place in the ring buffer, and count a drop when the buffer is full.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in `core::sync::atomic` (its spec says
// `atomic-cas: false`), but the kernel's BPF ISA v3 has atomic add, xchg and cmpxchg:
// reach them through the intrinsics. This crate is only ever built with nightly.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic intrinsics, see above")]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's entry macros hand programs their context by value"
)]

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg, atomic_xadd, atomic_xchg};

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use bpflet_common::{
    COMM_LEN, CgroupEvent, Config, DROP_SLOTS, EXIT_CODE_KNOWN, EXIT_PIDNS_INIT, ExitEvent, Header,
    MAX_WATCH_ROOTS, MemcgLevel, OOM_CHAIN_LEN, OomKillEvent, PATH_LEN, PATH_TRUNCATED,
    PressureAcc, PressureEvent, RING_BYTES, WatchRoot, feature, kind,
};

/// Kernel layout and settings, written by the agent before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    features: 0,
    hierarchy_id: 0,
    pressure_window_ns: 0,
    wakeup_interval_ns: 0,
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    task_exit_code: 0,
    task_cgroups: 0,
    task_signal: 0,
    task_mm: 0,
    signal_oom_score_adj: 0,
    mm_total_vm: 0,
    mm_rss_stat: 0,
    percpu_counter_size: 0,
    percpu_counter_count: 0,
    rss_file_idx: 0,
    rss_anon_idx: 0,
    rss_shmem_idx: 0,
    css_set_subsys: 0,
    css_set_dfl_cgrp: 0,
    memory_cgrp_id: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    cgroup_root: 0,
    root_hierarchy_id: 0,
    kn_id: 0,
    memcg_css: 0,
    memcg_memory: 0,
    counter_usage: 0,
    counter_max: 0,
    counter_failcnt: 0,
    counter_parent: 0,
    vm_pgscan_kswapd: 0,
    vm_pgscan_direct: 0,
    vm_pgsteal_kswapd: 0,
    vm_pgsteal_direct: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
};

/// Reads one `CONFIG` field. The volatile read keeps the compiler from folding the zero
/// initializer: the real values are patched into `.rodata` at load time.
macro_rules! cfg {
    ($field:ident) => {
        load(&raw const CONFIG.$field)
    };
}

#[inline(always)]
fn load<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` points into the CONFIG static, valid and aligned for the program's life.
    unsafe { core::ptr::read_volatile(field) }
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records lost because `EVENTS` was full, per CPU, indexed by event kind.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

/// Watched subtrees, filled densely from index 0 by the agent.
#[map]
static WATCH_ROOTS: Array<WatchRoot> = Array::with_max_entries(MAX_WATCH_ROOTS, 0);

/// When an exit record last woke the reader (CLOCK_MONOTONIC ns). Racy by design: two
/// CPUs may both wake the reader once; that only costs one extra wakeup.
#[map]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Reclaim counters per memory cgroup, aggregated until the window ends.
#[map]
static PRESSURE: LruHashMap<u64, PressureAcc> = LruHashMap::with_max_entries(8192, 0);

type Ptr = u64;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: Ptr, off: u32) -> Result<T, u32> {
    if base == 0 {
        return Err(1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.map_err(|_| 1)
}

#[inline(always)]
fn has(feature: u32) -> bool {
    cfg!(features) & feature != 0
}

fn count_drop(kind: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// `bpf_ringbuf_submit` flags for a frequent record: the default (wake the reader if it has
/// caught up) at most once per `wakeup_interval_ns`, no wakeup in between.
fn lazy_wakeup(now: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    let interval = cfg!(wakeup_interval_ns);
    if interval == 0 {
        return 0;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; racy access is fine (see LAST_WAKEUP).
    unsafe {
        if now.wrapping_sub(*last) < interval {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now;
    }
    0
}

fn header(kind: u32) -> Header {
    Header {
        kind,
        // SAFETY: plain helper calls without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// `kernfs_node.id` of a cgroup: the inode number users see (and, on v2, the cgroup id).
#[inline(always)]
fn cgroup_id(cgrp: Ptr) -> Result<u64, u32> {
    let kn: Ptr = read(cgrp, cfg!(cgroup_kn))?;
    read(kn, cfg!(kn_id))
}

/// The task's memory cgroup css (valid on v1 and v2).
#[inline(always)]
fn task_memory_css(task: Ptr) -> Result<Ptr, u32> {
    let cset: Ptr = read(task, cfg!(task_cgroups))?;
    read(cset, cfg!(css_set_subsys) + 8 * cfg!(memory_cgrp_id))
}

/// The cgroup a task is reported under: its v2 cgroup, or its v1 memory cgroup.
#[inline(always)]
fn task_cgroup(task: Ptr) -> Result<Ptr, u32> {
    if has(feature::CGROUP_V2) {
        let cset: Ptr = read(task, cfg!(task_cgroups))?;
        read(cset, cfg!(css_set_dfl_cgrp))
    } else {
        let css = task_memory_css(task)?;
        read(css, cfg!(css_cgroup))
    }
}

/// Whether `cgrp` lies in a watched subtree: its ancestor at the root's level is the root.
#[inline(always)]
fn watched(cgrp: Ptr) -> bool {
    if has(feature::WATCH_ALL) {
        return true;
    }
    let Ok(level) = read::<i32>(cgrp, cfg!(cgroup_level)) else {
        return false;
    };
    for i in 0..MAX_WATCH_ROOTS {
        let Some(root) = WATCH_ROOTS.get(i) else {
            return false;
        };
        if root.active == 0 {
            return false;
        }
        if level < 0 || (level as u32) < root.level || root.level > 64 {
            continue;
        }
        let Ok(ancestor) = read::<Ptr>(cgrp, cfg!(cgroup_ancestors) + 8 * root.level) else {
            continue;
        };
        if cgroup_id(ancestor) == Ok(root.cgroup_id) {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// Process exit: sched_process_exit(struct task_struct *p, bool group_dead)

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn bpflet_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_exit(&ctx);
    0
}

/// Whether `task` is pid 1 of a pid namespace other than the host's. `thread_pid` stays
/// valid until the task is released, well after this tracepoint.
#[inline(always)]
fn pidns_init(task: Ptr) -> bool {
    if !has(feature::PIDNS) {
        return false;
    }
    let Ok(pid) = read::<Ptr>(task, cfg!(task_thread_pid)) else {
        return false;
    };
    let Ok(level) = read::<u32>(pid, cfg!(pid_level)) else {
        return false;
    };
    // MAX_PID_NS_LEVEL is 32; level 0 is the host, whose pid 1 is not a container.
    if level == 0 || level > 32 {
        return false;
    }
    let off = cfg!(pid_numbers) + level * cfg!(upid_size) + cfg!(upid_nr);
    read::<i32>(pid, off) == Ok(1)
}

fn try_exit(ctx: &RawTracePointContext) -> Result<(), u32> {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff == 0 {
        return Ok(()); // other threads remain: the process lives on
    }
    let task: Ptr = ctx.arg(0);
    let tgid: u32 = read(task, cfg!(task_tgid))?;
    let cgrp = task_cgroup(task)?;
    if !watched(cgrp) {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(kind::EXIT);
        return Ok(());
    };
    let (exit_status, flags) = if has(feature::EXIT_CODE) {
        match read::<u32>(task, cfg!(task_exit_code)) {
            Ok(code) => (code, EXIT_CODE_KNOWN),
            Err(_) => (0, 0),
        }
    } else {
        (0, 0)
    };
    let flags = if pidns_init(task) {
        flags | EXIT_PIDNS_INIT
    } else {
        flags
    };
    let header = header(kind::EXIT);
    let wake = lazy_wakeup(header.ts_ns);
    entry.write(ExitEvent {
        header,
        pid: read(task, cfg!(task_pid)).unwrap_or(0),
        tgid,
        exit_status,
        flags,
        cgroup_id: cgroup_id(cgrp).unwrap_or(0),
        comm: read::<[u8; COMM_LEN]>(task, cfg!(task_comm)).unwrap_or([0; COMM_LEN]),
    });
    entry.submit(wake);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// OOM kill: mark_victim(struct task_struct *task, uid_t uid)
//
// Reported whatever the watch filter says: OOM kills are rare, and the agent must see
// node-wide ones (SystemOOM) even for processes outside its pods.

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn bpflet_oom(ctx: RawTracePointContext) -> i32 {
    let _ = try_oom(&ctx);
    0
}

/// Fills `chain` with the memory cgroups from `memcg` up to the root, innermost first.
#[inline(always)]
fn fill_chain(mut memcg: Ptr, chain: *mut [MemcgLevel; OOM_CHAIN_LEN]) -> u32 {
    let mut n = 0;
    for i in 0..OOM_CHAIN_LEN {
        let counter = memcg + u64::from(cfg!(memcg_memory));
        let cgrp: Ptr = read(memcg, cfg!(memcg_css) + cfg!(css_cgroup)).unwrap_or(0);
        let level = MemcgLevel {
            cgroup_id: cgroup_id(cgrp).unwrap_or(0),
            usage_pages: read(counter, cfg!(counter_usage)).unwrap_or(0),
            max_pages: read(counter, cfg!(counter_max)).unwrap_or(0),
            failcnt: read(counter, cfg!(counter_failcnt)).unwrap_or(0),
        };
        // SAFETY: `chain` points into a reserved ring-buffer record; `i` is in bounds.
        unsafe { (*chain)[i] = level };
        n += 1;
        let parent: Ptr = read(counter, cfg!(counter_parent)).unwrap_or(0);
        if parent == 0 {
            break;
        }
        memcg = parent - u64::from(cfg!(memcg_memory));
    }
    n
}

#[inline(always)]
fn rss_pages(mm: Ptr, idx: u32) -> u64 {
    if !has(feature::RSS_PERCPU) {
        return 0;
    }
    let off = cfg!(mm_rss_stat) + idx * cfg!(percpu_counter_size) + cfg!(percpu_counter_count);
    let pages: i64 = read(mm, off).unwrap_or(0);
    pages.max(0) as u64
}

fn try_oom(ctx: &RawTracePointContext) -> Result<(), u32> {
    let victim: Ptr = ctx.arg(0);
    // SAFETY: helper without arguments.
    let invoker = unsafe { bpf_get_current_task() };
    let Some(mut entry) = EVENTS.reserve::<OomKillEvent>(0) else {
        count_drop(kind::OOM_KILL);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let mm: Ptr = read(victim, cfg!(task_mm)).unwrap_or(0);
    let signal: Ptr = read(victim, cfg!(task_signal)).unwrap_or(0);
    let victim_memcg = task_memory_css(victim).map_or(0, |css| css - u64::from(cfg!(memcg_css)));
    let invoker_memcg = task_memory_css(invoker).map_or(0, |css| css - u64::from(cfg!(memcg_css)));
    // SAFETY: `ev` points to a reserved, exclusively owned record of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).header = header(kind::OOM_KILL);
        (*ev).pid = read(victim, cfg!(task_pid)).unwrap_or(0);
        (*ev).tgid = read(victim, cfg!(task_tgid)).unwrap_or(0);
        (*ev).invoker_pid = read(invoker, cfg!(task_tgid)).unwrap_or(0);
        (*ev).oom_score_adj =
            i32::from(read::<i16>(signal, cfg!(signal_oom_score_adj)).unwrap_or(0));
        (*ev).total_vm_pages = read(mm, cfg!(mm_total_vm)).unwrap_or(0);
        (*ev).anon_rss_pages = rss_pages(mm, cfg!(rss_anon_idx));
        (*ev).file_rss_pages = rss_pages(mm, cfg!(rss_file_idx));
        (*ev).shmem_rss_pages = rss_pages(mm, cfg!(rss_shmem_idx));
        (*ev).comm = read::<[u8; COMM_LEN]>(victim, cfg!(task_comm)).unwrap_or([0; COMM_LEN]);
        (*ev).victim_chain = [MemcgLevel::default(); OOM_CHAIN_LEN];
        (*ev).invoker_chain = [MemcgLevel::default(); OOM_CHAIN_LEN];
        (*ev).victim_levels = if victim_memcg == 0 {
            0
        } else {
            fill_chain(victim_memcg, &raw mut (*ev).victim_chain)
        };
        (*ev).invoker_levels = if invoker_memcg == 0 {
            0
        } else {
            fill_chain(invoker_memcg, &raw mut (*ev).invoker_chain)
        };
    }
    entry.submit(0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory pressure, aggregated per memory cgroup and emitted at most once per window.

#[derive(Clone, Copy)]
enum Counter {
    Scanned,
    Reclaimed,
    MemcgReclaims,
    DirectReclaims,
    Throttled,
}

fn counter_ptr(acc: *mut PressureAcc, which: Counter) -> *mut u64 {
    // SAFETY: only computes field addresses inside a live map value.
    unsafe {
        match which {
            Counter::Scanned => &raw mut (*acc).pages_scanned,
            Counter::Reclaimed => &raw mut (*acc).pages_reclaimed,
            Counter::MemcgReclaims => &raw mut (*acc).memcg_reclaims,
            Counter::DirectReclaims => &raw mut (*acc).direct_reclaims,
            Counter::Throttled => &raw mut (*acc).throttled,
        }
    }
}

/// Adds `delta` to one counter of the cgroup's window and, when the window is over, emits
/// the window as one record. Only the CPU that wins the compare-and-swap on the window
/// start emits, so a reclaim storm on many CPUs still yields one record per window.
fn account(cgroup_id: u64, which: Counter, delta: u64) -> Result<(), u32> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let acc = match PRESSURE.get_ptr_mut(cgroup_id) {
        Some(acc) => acc,
        None => {
            // A cgroup seen for the first time reports its first burst at once: pressure
            // onset is what eviction wants to hear about soonest.
            let fresh = PressureAcc::default();
            let _ = PRESSURE.insert(cgroup_id, fresh, 0);
            PRESSURE.get_ptr_mut(cgroup_id).ok_or(1u32)?
        }
    };
    // SAFETY: map values are 8-byte aligned and live while the program runs; all updates
    // to them are atomic.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(counter_ptr(acc, which), delta);
        let start_cell = &raw mut (*acc).window_start_ns;
        let start = core::ptr::read_volatile(start_cell);
        if now.wrapping_sub(start) < cfg!(pressure_window_ns) {
            return Ok(());
        }
        if !atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(start_cell, start, now).1 {
            return Ok(()); // another CPU is emitting this window
        }
        let take = |w| atomic_xchg::<u64, { Relaxed }>(counter_ptr(acc, w), 0);
        let Some(mut entry) = EVENTS.reserve::<PressureEvent>(0) else {
            count_drop(kind::MEMORY_PRESSURE);
            return Ok(());
        };
        entry.write(PressureEvent {
            header: header(kind::MEMORY_PRESSURE),
            cgroup_id,
            window_start_ns: start,
            pages_scanned: take(Counter::Scanned),
            pages_reclaimed: take(Counter::Reclaimed),
            memcg_reclaims: take(Counter::MemcgReclaims),
            direct_reclaims: take(Counter::DirectReclaims),
            throttled: take(Counter::Throttled),
        });
        entry.submit(0);
    }
    Ok(())
}

/// count_memcg_events(struct mem_cgroup *memcg, enum vm_event_item item, unsigned long count)
///
/// This tracepoint also fires on every page fault, so the item is tested before anything
/// else is read.
#[raw_tracepoint(tracepoint = "count_memcg_events")]
pub fn bpflet_memcg_events(ctx: RawTracePointContext) -> i32 {
    let item = ctx.arg::<u64>(1) as u32;
    let which = if item == cfg!(vm_pgscan_direct) || item == cfg!(vm_pgscan_kswapd) {
        Counter::Scanned
    } else if item == cfg!(vm_pgsteal_direct) || item == cfg!(vm_pgsteal_kswapd) {
        Counter::Reclaimed
    } else {
        return 0;
    };
    let _ = try_memcg_events(&ctx, which);
    0
}

fn try_memcg_events(ctx: &RawTracePointContext, which: Counter) -> Result<(), u32> {
    let memcg: Ptr = ctx.arg(0);
    let count: u64 = ctx.arg(2);
    let cgrp: Ptr = read(memcg, cfg!(memcg_css) + cfg!(css_cgroup))?;
    if !watched(cgrp) {
        return Ok(());
    }
    account(cgroup_id(cgrp)?, which, count)
}

/// Accounts one event to the current task's cgroup.
fn account_current(which: Counter) -> Result<(), u32> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let cgrp = task_cgroup(task)?;
    if !watched(cgrp) {
        return Ok(());
    }
    account(cgroup_id(cgrp)?, which, 1)
}

/// mm_vmscan_memcg_reclaim_begin(int order, gfp_t gfp_flags): a charge hit a memcg limit
/// (max or high) and the charging task reclaims.
#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub fn bpflet_memcg_reclaim(_ctx: RawTracePointContext) -> i32 {
    let _ = account_current(Counter::MemcgReclaims);
    0
}

/// mm_vmscan_direct_reclaim_begin(int order, gfp_t gfp_flags): the node is short of memory.
#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub fn bpflet_direct_reclaim(_ctx: RawTracePointContext) -> i32 {
    let _ = account_current(Counter::DirectReclaims);
    0
}

/// mm_vmscan_throttled(int nid, int usec_timeout, int usec_delayed, int reason)
#[raw_tracepoint(tracepoint = "mm_vmscan_throttled")]
pub fn bpflet_throttled(_ctx: RawTracePointContext) -> i32 {
    let _ = account_current(Counter::Throttled);
    0
}

// ---------------------------------------------------------------------------------------
// cgroup_mkdir / cgroup_rmdir(struct cgroup *cgrp, const char *path)

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn bpflet_cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let _ = try_cgroup(&ctx, kind::CGROUP_CREATED);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn bpflet_cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    let _ = try_cgroup(&ctx, kind::CGROUP_REMOVED);
    0
}

fn try_cgroup(ctx: &RawTracePointContext, event_kind: u32) -> Result<(), u32> {
    let cgrp: Ptr = ctx.arg(0);
    let root: Ptr = read(cgrp, cfg!(cgroup_root))?;
    let hierarchy_id: i32 = read(root, cfg!(root_hierarchy_id))?;
    if hierarchy_id as u32 != cfg!(hierarchy_id) || !watched(cgrp) {
        return Ok(());
    }
    let id = cgroup_id(cgrp)?;
    if event_kind == kind::CGROUP_REMOVED {
        let _ = PRESSURE.remove(id);
    }
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        count_drop(event_kind);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let path: Ptr = ctx.arg(1);
    // SAFETY: `ev` points to a reserved, exclusively owned record; every field is written
    // before submit.
    unsafe {
        (*ev).header = header(event_kind);
        (*ev).cgroup_id = id;
        (*ev).hierarchy_id = hierarchy_id as u32;
        (*ev).level = read::<i32>(cgrp, cfg!(cgroup_level)).unwrap_or(0) as u32;
        (*ev)._pad = 0;
        let buf = &mut (*ev).path;
        buf[0] = 0;
        let len = bpf_probe_read_kernel_str_bytes(path as *const u8, buf).map_or(0, <[u8]>::len);
        (*ev).flags = if len + 1 >= PATH_LEN {
            PATH_TRUNCATED
        } else {
            0
        };
    }
    entry.submit(0);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
