//! Polling fallback source: the same event kinds as the BPF programs, from files, when BPF
//! cannot load. Every event is [`Source::Poll`]: late (up to one interval) and without what
//! only the kernel knows at the moment (exit codes, short-lived processes, reclaim details).
//!
//! - OOM kills: the kernel log (`/dev/kmsg`), read as records arrive. Without it, the memory
//!   cgroups' `oom_kill` counters, which give the cgroup and a count but no process. Kills at
//!   a cgroup limit are reported for victims in the watched subtrees; node-wide kills for
//!   every victim (as the BPF source does).
//! - Exits: `cgroup.procs` of every watched cgroup, per interval; a pid that left every
//!   watched cgroup and is gone (or a zombie) exited. Status unknown, except for processes
//!   the OOM killer was seen killing (SIGKILL).
//! - Cgroup created/removed: the difference between two walks of the watched subtrees.
//! - Memory pressure: node PSI, v2 `memory.pressure`, and limit hits (v1 `memory.failcnt`,
//!   v2 `memory.events` `max` + `high`).

mod files;
mod kmsg;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use self::files::Counters;
use self::kmsg::{KillContext, Kmsg, OomKilled, OomLine, OomSummary};
use super::{Detail, Event, ExitStatus, MemoryPressure, OomKill, OomScope, Source};
use crate::cgroups::hierarchy::{is_under, normalize, parent_of};
use crate::cgroups::{Hierarchy, naming};

/// What the polling source watches and how often.
#[derive(Clone, Debug)]
pub struct PollConfig {
    pub hierarchy: Hierarchy,
    /// Watched subtrees (paths under the hierarchy's mount); `"/"` is everything.
    pub roots: Vec<String>,
    pub interval: Duration,
    pub proc_root: PathBuf,
    /// The kernel log; `None` to take OOM kills from cgroup counters only.
    pub kmsg: Option<PathBuf>,
}

impl PollConfig {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// Defaults: every second, `/proc`, `/dev/kmsg`.
    pub fn new(hierarchy: Hierarchy, roots: Vec<String>) -> Self {
        PollConfig {
            hierarchy,
            roots,
            interval: Self::DEFAULT_INTERVAL,
            proc_root: PathBuf::from("/proc"),
            kmsg: Some(PathBuf::from("/dev/kmsg")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("the poll interval must be greater than zero")]
    ZeroInterval,
    #[error("no cgroup subtree to watch")]
    NoRoots,
    #[error("the polling worker panicked")]
    Worker(#[source] tokio::task::JoinError),
}

/// The polling event source.
#[derive(Debug)]
pub struct PollSource {
    cfg: PollConfig,
}

impl PollSource {
    pub fn new(cfg: PollConfig) -> Self {
        PollSource { cfg }
    }

    /// Polls until `cancel` fires or the receiver goes away. The first poll only records
    /// the current state: nothing that happened before the start is reported.
    pub async fn run(
        self,
        tx: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<(), PollError> {
        let PollConfig {
            hierarchy,
            roots,
            interval,
            proc_root,
            kmsg,
        } = self.cfg;
        if interval.is_zero() {
            return Err(PollError::ZeroInterval);
        }
        if roots.is_empty() {
            return Err(PollError::NoRoots);
        }
        let mut kmsg = kmsg.and_then(|path| match Kmsg::open(&path) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the kernel log: OOM kills will come from cgroup counters, without process details");
                None
            }
        });
        let mut poller = Poller::new(hierarchy, roots, proc_root, interval, kmsg.is_none());
        tracing::info!(roots = ?poller.roots, ?interval, kmsg = ?kmsg.as_ref().map(Kmsg::path),
            kmsg_polled = kmsg.as_ref().is_some_and(Kmsg::is_polled),
            "polling fallback started: events are late and less detailed than with BPF");

        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Ticks first: a chatty kernel log must not starve the polls.
            let events = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    let lines = kmsg.as_mut().map(Kmsg::drain).unwrap_or_default();
                    let mut events = poller.on_kmsg_lines(&lines, Instant::now());
                    let (p, tick_events) = tokio::task::spawn_blocking(move || {
                        let mut p = poller;
                        let events = p.tick(Instant::now(), SystemTime::now());
                        (p, events)
                    })
                    .await
                    .map_err(PollError::Worker)?;
                    poller = p;
                    events.extend(tick_events);
                    events
                }
                ready = readable(kmsg.as_ref()) => {
                    match ready {
                        Ok(()) => {
                            let lines = kmsg.as_mut().map(Kmsg::drain).unwrap_or_default();
                            poller.on_kmsg_lines(&lines, Instant::now())
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting on the kernel log failed: OOM kills will come from cgroup counters");
                            kmsg = None;
                            poller.oom_from_counters = true;
                            Vec::new()
                        }
                    }
                }
            };
            for ev in events {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Ok(()),
                    sent = tx.send(ev) => if sent.is_err() {
                        tracing::debug!("event receiver closed, polling stops");
                        return Ok(());
                    },
                }
            }
        }
    }
}

async fn readable(kmsg: Option<&Kmsg>) -> std::io::Result<()> {
    match kmsg {
        Some(k) => k.readable().await,
        None => std::future::pending().await,
    }
}

/// How long an `oom-kill:` summary waits for its `Killed process` line.
const PENDING_SUMMARY_TTL: Duration = Duration::from_secs(5);
/// How long a summary's limit cgroup is assumed for later kills in the same cgroup whose
/// summary the kernel rate-limited away (it prints 10 reports per 5s).
const RECENT_LIMIT_TTL: Duration = Duration::from_secs(10);
/// How long an OOM victim's pid is remembered to report its exit as SIGKILL.
const KILLED_TTL: Duration = Duration::from_secs(60);
/// Cap on OOM kill events derived from one cgroup's counter in one interval.
const MAX_COUNTER_KILLS: u64 = 64;

/// The synchronous state machine behind [`PollSource`]; one [`Poller::tick`] per interval.
struct Poller {
    hierarchy: Hierarchy,
    roots: Vec<String>,
    proc_root: PathBuf,
    interval: Duration,
    /// No kernel log: report OOM kills from the `oom_kill` counters.
    oom_from_counters: bool,
    baseline_done: bool,
    last_tick: Option<Instant>,
    cgroups: BTreeMap<String, CgroupState>,
    /// Counters of the roots' ancestors, to find a limit hit above the watched subtrees.
    ancestors: BTreeMap<String, Counters>,
    pids: HashMap<u32, Tracked>,
    missing_roots: HashSet<String>,
    /// Cgroups whose limit-OOM counter rose in the last interval and the one before.
    limit_rises: HashSet<String>,
    prev_limit_rises: HashSet<String>,
    oom: OomState,
    /// Pids the OOM killer killed, so their exit is reported as SIGKILL.
    killed: HashMap<u32, Instant>,
}

#[derive(Clone, Debug)]
struct CgroupState {
    id: u64,
    counters: Counters,
}

#[derive(Clone, Debug)]
struct Tracked {
    cgroup: String,
    comm: String,
    start_time: Option<u64>,
}

#[derive(Debug, Default)]
struct OomState {
    report: Report,
    pending: HashMap<u32, Pending>,
    recent_limits: HashMap<String, (OomSummary, Instant)>,
    held: Vec<Held>,
    /// Kills reported per victim cgroup since the last tick, to tell which `oom_kill`
    /// counter increases the kernel log did not explain.
    reported: HashMap<String, u64>,
}

/// What the current OOM report printed before its summary line.
#[derive(Clone, Copy, Debug, Default)]
struct Report {
    open: bool,
    invoker_pid: u32,
    usage_kb: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Pending {
    summary: OomSummary,
    report: Report,
    seen: Instant,
}

/// A kill whose report the kernel rate-limited away, left to the next tick's counters.
#[derive(Debug)]
struct Held {
    killed: OomKilled,
    /// `None`: the process is gone and was never seen; the `oom_kill` counters tell.
    victim: Option<String>,
    /// `None`: a memcg kill whose limit the `oom`/failcnt counters tell.
    limit: Option<Limit>,
    time: SystemTime,
}

/// Which limit an OOM kill answered, as far as the source knows.
#[derive(Clone, Debug, PartialEq)]
enum Limit {
    /// No cgroup limit (or a cpuset / memory policy constraint).
    Node,
    /// A memory cgroup's limit; `None` when which one is unknown.
    Memcg(Option<String>),
}

impl Poller {
    fn new(
        hierarchy: Hierarchy,
        roots: Vec<String>,
        proc_root: PathBuf,
        interval: Duration,
        oom_from_counters: bool,
    ) -> Self {
        let mut roots: Vec<String> = roots.into_iter().map(|r| normalize(&r)).collect();
        roots.sort();
        roots.dedup();
        Poller {
            hierarchy,
            roots,
            proc_root,
            interval,
            oom_from_counters,
            baseline_done: false,
            last_tick: None,
            cgroups: BTreeMap::new(),
            ancestors: BTreeMap::new(),
            pids: HashMap::new(),
            missing_roots: HashSet::new(),
            limit_rises: HashSet::new(),
            prev_limit_rises: HashSet::new(),
            oom: OomState::default(),
            killed: HashMap::new(),
        }
    }

    fn watched(&self, cgroup: &str) -> bool {
        self.roots.iter().any(|r| is_under(cgroup, r))
    }

    fn event(
        &self,
        time: SystemTime,
        pid: u32,
        comm: String,
        cgroup: String,
        detail: Detail,
    ) -> Event {
        // From the last poll; callers that know better set it.
        let cgroup_id = self.cgroups.get(&cgroup).map(|s| s.id);
        Event {
            time,
            kernel_ns: None,
            source: Source::Poll,
            pid,
            comm,
            cgroup_id,
            cgroup,
            pod: None,
            detail,
        }
    }

    // ---- kernel log ----

    fn on_kmsg_lines(&mut self, lines: &[String], now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for line in lines {
            let Some(record) = kmsg::parse_record(line) else {
                continue;
            };
            let Some(oom_line) = kmsg::classify(&record.message) else {
                continue;
            };
            match oom_line {
                OomLine::Invoked => {
                    self.oom.report = Report {
                        open: true,
                        ..Report::default()
                    };
                }
                OomLine::InvokerPid(pid) => {
                    if self.oom.report.open && self.oom.report.invoker_pid == 0 {
                        self.oom.report.invoker_pid = pid;
                    }
                }
                OomLine::MemcgUsage { usage_kb, limit_kb } => {
                    if self.oom.report.open {
                        self.oom.report.usage_kb = Some((usage_kb, limit_kb));
                    }
                }
                OomLine::Summary(summary) => {
                    let report = std::mem::take(&mut self.oom.report);
                    if let Some(victim) = &summary.task_memcg {
                        self.oom
                            .recent_limits
                            .insert(victim.clone(), (summary.clone(), now));
                    }
                    self.oom.pending.insert(
                        summary.pid,
                        Pending {
                            summary,
                            report,
                            seen: now,
                        },
                    );
                }
                OomLine::Killed(killed) => {
                    let time = kmsg_time(record.ts_usec);
                    if let Some(ev) = self.on_killed(killed, time, now) {
                        out.push(ev);
                    }
                }
            }
        }
        out
    }

    fn on_killed(&mut self, killed: OomKilled, time: SystemTime, now: Instant) -> Option<Event> {
        self.killed.insert(killed.pid, now);
        if let Some(p) = self.oom.pending.remove(&killed.pid) {
            let victim = p
                .summary
                .task_memcg
                .clone()
                .or_else(|| self.victim_cgroup(killed.pid));
            let limit = if p.summary.is_memcg() {
                Limit::Memcg(p.summary.oom_memcg.clone())
            } else {
                Limit::Node
            };
            return self.kill_event(&killed, victim, &limit, p.report, time);
        }
        // The kernel rate-limited this kill's report: only the `Killed process` line is there.
        let victim = self.victim_cgroup(killed.pid);
        if killed.context != KillContext::Global
            && victim.as_ref().is_some_and(|v| !self.watched(v))
        {
            return None;
        }
        let limit = match killed.context {
            KillContext::Global => Some(Limit::Node),
            KillContext::Memcg => victim
                .as_ref()
                .and_then(|v| self.oom.recent_limits.get(v))
                .filter(|(s, at)| {
                    s.is_memcg() && now.saturating_duration_since(*at) < RECENT_LIMIT_TTL
                })
                .map(|(s, _)| Limit::Memcg(s.oom_memcg.clone())),
        };
        match (victim, limit) {
            (Some(victim), Some(limit)) => {
                self.kill_event(&killed, Some(victim), &limit, Report::default(), time)
            }
            (victim, limit) => {
                self.oom.held.push(Held {
                    killed,
                    victim,
                    limit,
                    time,
                });
                None
            }
        }
    }

    /// The victim's cgroup from /proc while it is still there, else where we last saw it.
    ///
    /// Once a process has exited, cgroup v1 shows it in the root memory cgroup, so `/` from
    /// /proc is not trusted.
    fn victim_cgroup(&self, pid: u32) -> Option<String> {
        self.hierarchy
            .cgroup_of_pid(&self.proc_root, pid)
            .ok()
            .filter(|cg| cg != "/")
            .or_else(|| self.pids.get(&pid).map(|t| t.cgroup.clone()))
    }

    fn kill_event(
        &mut self,
        killed: &OomKilled,
        victim: Option<String>,
        limit: &Limit,
        report: Report,
        time: SystemTime,
    ) -> Option<Event> {
        // Node-wide kills are reported wherever the victim ran, as the BPF source reports
        // them: they are rare and must be seen (`SystemOOM`).
        let node_wide = *limit == Limit::Node;
        let victim = match victim {
            Some(v) if node_wide || self.watched(&v) => v,
            Some(_) => return None,
            // Unknown cgroup: only interesting to someone watching the whole node.
            None if node_wide || self.roots.iter().any(|r| r == "/") => String::new(),
            None => {
                tracing::debug!(pid = killed.pid, "OOM kill in an unknown cgroup");
                return None;
            }
        };
        let (scope, limit_cgroup) = match limit {
            Limit::Node => (OomScope::Node, None),
            Limit::Memcg(Some(l)) => (naming::oom_scope(&victim, Some(l)), Some(l.clone())),
            Limit::Memcg(None) => (OomScope::Cgroup, None),
        };
        let memcg = matches!(limit, Limit::Memcg(_));
        let kb = |v: Option<u64>| v.map(|kb| kb.saturating_mul(1024));
        let detail = Detail::OomKill(OomKill {
            scope,
            limit_cgroup_id: limit_cgroup.as_deref().and_then(|l| {
                self.cgroups
                    .get(l)
                    .map(|s| s.id)
                    .or_else(|| self.hierarchy.id_of(l).ok())
            }),
            limit_cgroup,
            limit_bytes: report
                .usage_kb
                .filter(|_| memcg)
                .map(|(_, l)| l.saturating_mul(1024)),
            usage_bytes: report
                .usage_kb
                .filter(|_| memcg)
                .map(|(u, _)| u.saturating_mul(1024)),
            anon_rss_bytes: kb(killed.anon_rss_kb),
            file_rss_bytes: kb(killed.file_rss_kb),
            shmem_rss_bytes: kb(killed.shmem_rss_kb),
            total_vm_bytes: kb(killed.total_vm_kb),
            oom_score_adj: killed.oom_score_adj,
            invoker_pid: report.invoker_pid,
        });
        *self.oom.reported.entry(victim.clone()).or_default() += 1;
        let mut ev = self.event(time, killed.pid, killed.comm.clone(), victim, detail);
        if ev.cgroup_id.is_none() && !ev.cgroup.is_empty() {
            // Created since the last poll, or outside what we walk.
            ev.cgroup_id = self.hierarchy.id_of(&ev.cgroup).ok();
        }
        Some(ev)
    }

    /// The innermost cgroup at or above `victim` whose limit-OOM counter rose lately.
    fn infer_limit(&self, victim: &str) -> Option<String> {
        let mut at = Some(victim);
        while let Some(cg) = at {
            if self.limit_rises.contains(cg) || self.prev_limit_rises.contains(cg) {
                return Some(cg.to_owned());
            }
            at = parent_of(cg);
        }
        None
    }

    // ---- per interval ----

    fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Event> {
        let window = self
            .last_tick
            .map_or(self.interval, |t| now.saturating_duration_since(t));
        self.last_tick = Some(now);
        let mut out = Vec::new();

        let seen = self.scan_tree();
        let mut removed = Vec::new();
        for (rel, &id) in &seen {
            let level = Hierarchy::level_of(rel);
            match self.cgroups.get(rel) {
                Some(old) if old.id == id => continue,
                // Removed and created again between two polls.
                Some(old) => out.push(
                    self.event(
                        wall,
                        0,
                        String::new(),
                        rel.clone(),
                        Detail::CgroupRemoved { level },
                    )
                    .with_id(old.id),
                ),
                None => {}
            }
            if self.baseline_done {
                out.push(
                    self.event(
                        wall,
                        0,
                        String::new(),
                        rel.clone(),
                        Detail::CgroupCreated { level },
                    )
                    .with_id(id),
                );
            }
        }
        for (rel, old) in &self.cgroups {
            if !seen.contains_key(rel) {
                removed.push((rel.clone(), old.id));
            }
        }

        out.extend(self.poll_processes(&seen, wall, now));

        let states: BTreeMap<String, CgroupState> = seen
            .iter()
            .map(|(rel, &id)| {
                let counters = files::read_counters(&self.hierarchy, rel);
                (rel.clone(), CgroupState { id, counters })
            })
            .collect();
        let ancestors: BTreeMap<String, Counters> = self
            .roots
            .iter()
            .flat_map(|r| std::iter::successors(parent_of(r), |p| parent_of(p)))
            .filter(|a| *a != "/" && !seen.contains_key(*a))
            .map(|a| (a.to_owned(), files::read_counters(&self.hierarchy, a)))
            .collect();
        self.note_limit_rises(&states, &ancestors);

        let own_kills = self.own_kill_deltas(&states);
        if self.oom_from_counters {
            out.extend(self.counter_kills(&own_kills, &states, wall));
        }
        out.extend(self.resolve_held(&own_kills));

        out.extend(self.pressure(&states, window, wall));

        for (rel, id) in removed {
            let level = Hierarchy::level_of(&rel);
            out.push(
                self.event(wall, 0, String::new(), rel, Detail::CgroupRemoved { level })
                    .with_id(id),
            );
        }

        self.cgroups = states;
        self.ancestors = ancestors;
        self.baseline_done = true;
        self.expire(now);
        out
    }

    /// Every cgroup under the watched roots, with its id.
    fn scan_tree(&mut self) -> BTreeMap<String, u64> {
        let mut seen = BTreeMap::new();
        for root in &self.roots {
            match self.hierarchy.walk(root) {
                Ok(found) => {
                    if self.missing_roots.remove(root) {
                        tracing::info!(root, "watched cgroup appeared");
                    }
                    seen.extend(found);
                }
                Err(e) => {
                    if self.missing_roots.insert(root.clone()) {
                        tracing::warn!(root, error = %e, "cannot read watched cgroup");
                    }
                }
            }
        }
        seen
    }

    fn poll_processes(
        &mut self,
        seen: &BTreeMap<String, u64>,
        wall: SystemTime,
        now: Instant,
    ) -> Vec<Event> {
        let mut alive: HashMap<u32, Tracked> = HashMap::with_capacity(self.pids.len());
        for rel in seen.keys() {
            let path = self.hierarchy.path_of(rel).join("cgroup.procs");
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::debug!(path = %path.display(), error = %e, "cannot list cgroup processes");
                    }
                    continue;
                }
            };
            for pid in files::parse_pids(&text) {
                let tracked = match self.pids.remove(&pid) {
                    Some(mut t) => {
                        t.cgroup.clone_from(rel);
                        t
                    }
                    None => match alive.remove(&pid) {
                        // Listed twice: it moved while we read.
                        Some(mut t) => {
                            t.cgroup.clone_from(rel);
                            t
                        }
                        None => track(&self.proc_root, pid, rel),
                    },
                };
                alive.insert(pid, tracked);
            }
        }
        let gone = std::mem::replace(&mut self.pids, alive);
        let mut out = Vec::new();
        for (pid, t) in gone {
            if still_running(&self.proc_root, pid, &t) {
                // Moved out of the watched cgroups.
                continue;
            }
            let status = match self.killed.remove(&pid) {
                Some(at) if now.saturating_duration_since(at) < KILLED_TTL => ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                },
                _ => ExitStatus::Unknown,
            };
            out.push(self.event(
                wall,
                pid,
                t.comm,
                t.cgroup,
                Detail::Exit {
                    status,
                    pidns_init: false,
                },
            ));
        }
        out.sort_by_key(|ev| ev.pid);
        out
    }

    fn note_limit_rises(
        &mut self,
        states: &BTreeMap<String, CgroupState>,
        ancestors: &BTreeMap<String, Counters>,
    ) {
        let mut rises = HashSet::new();
        for (rel, st) in states {
            if let Some(old) = self.cgroups.get(rel).filter(|o| o.id == st.id)
                && rose(old.counters.limit_oom, st.counters.limit_oom) > 0
            {
                rises.insert(rel.clone());
            }
        }
        for (rel, c) in ancestors {
            let old = self
                .ancestors
                .get(rel)
                .copied()
                .or_else(|| self.cgroups.get(rel).map(|s| s.counters));
            if let Some(old) = old
                && rose(old.limit_oom, c.limit_oom) > 0
            {
                rises.insert(rel.clone());
            }
        }
        self.prev_limit_rises = std::mem::replace(&mut self.limit_rises, rises);
    }

    /// Processes OOM-killed in each cgroup itself (not its descendants) since the last tick.
    fn own_kill_deltas(&self, states: &BTreeMap<String, CgroupState>) -> BTreeMap<String, u64> {
        let deltas: BTreeMap<&str, (u64, bool)> = states
            .iter()
            .filter_map(|(rel, st)| {
                let old = self.cgroups.get(rel).filter(|o| o.id == st.id)?;
                let d = rose(old.counters.oom_kill, st.counters.oom_kill);
                (d > 0).then_some((rel.as_str(), (d, st.counters.local)))
            })
            .collect();
        // Hierarchical counters (v2 without memory.events.local) also count the descendants'.
        let mut from_children: HashMap<&str, u64> = HashMap::new();
        for (rel, (d, _)) in &deltas {
            if let Some(parent) = parent_of(rel) {
                *from_children.entry(parent).or_default() += d;
            }
        }
        deltas
            .into_iter()
            .filter_map(|(rel, (d, local))| {
                let own = if local {
                    d
                } else {
                    d.saturating_sub(from_children.get(rel).copied().unwrap_or(0))
                };
                (own > 0).then(|| (rel.to_owned(), own))
            })
            .collect()
    }

    /// OOM kills from `oom_kill` counters (no kernel log): one per kill, in the innermost
    /// cgroup whose counter rose, with no process.
    fn counter_kills(
        &self,
        own_kills: &BTreeMap<String, u64>,
        states: &BTreeMap<String, CgroupState>,
        wall: SystemTime,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (rel, &own) in own_kills {
            if own > MAX_COUNTER_KILLS {
                tracing::warn!(
                    cgroup = rel,
                    kills = own,
                    "too many OOM kills in one interval, reporting {MAX_COUNTER_KILLS}"
                );
            }
            let limit = self.infer_limit(rel);
            let scope = naming::oom_scope(rel, limit.as_deref());
            let limit_cgroup_id = limit.as_deref().and_then(|l| {
                states
                    .get(l)
                    .map(|s| s.id)
                    .or_else(|| self.hierarchy.id_of(l).ok())
            });
            for _ in 0..own.min(MAX_COUNTER_KILLS) {
                let detail = Detail::OomKill(OomKill {
                    scope,
                    limit_cgroup_id,
                    limit_cgroup: limit.clone(),
                    limit_bytes: None,
                    usage_bytes: None,
                    anon_rss_bytes: None,
                    file_rss_bytes: None,
                    shmem_rss_bytes: None,
                    total_vm_bytes: None,
                    oom_score_adj: None,
                    invoker_pid: 0,
                });
                out.push(
                    self.event(wall, 0, String::new(), rel.clone(), detail)
                        .with_id(states[rel].id),
                );
            }
        }
        out
    }

    /// Reports the kills held since the last tick. A victim that was gone before we could see
    /// its cgroup is placed in a cgroup whose `oom_kill` counter rose more than the kernel log
    /// explained; a missing limit is the innermost cgroup at or above the victim whose limit
    /// counter rose.
    fn resolve_held(&mut self, own_kills: &BTreeMap<String, u64>) -> Vec<Event> {
        let (known, unknown): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.oom.held)
            .into_iter()
            .partition(|h| h.victim.is_some());
        let mut out = Vec::new();
        for held in known {
            out.extend(self.emit_held(held));
        }
        let mut unexplained: Vec<(String, u64)> = own_kills
            .iter()
            .filter_map(|(cg, &n)| {
                let explained = self.oom.reported.get(cg).copied().unwrap_or(0);
                (n > explained).then(|| (cg.clone(), n - explained))
            })
            .collect();
        for mut held in unknown {
            if let Some((cg, n)) = unexplained.iter_mut().find(|(_, n)| *n > 0) {
                *n -= 1;
                held.victim = Some(cg.clone());
            }
            out.extend(self.emit_held(held));
        }
        self.oom.reported.clear();
        out
    }

    fn emit_held(&mut self, held: Held) -> Option<Event> {
        let limit = held.limit.unwrap_or_else(|| {
            Limit::Memcg(held.victim.as_deref().and_then(|v| self.infer_limit(v)))
        });
        self.kill_event(
            &held.killed,
            held.victim,
            &limit,
            Report::default(),
            held.time,
        )
    }

    /// At most one pressure event per cgroup per interval, plus the node's.
    fn pressure(
        &self,
        states: &BTreeMap<String, CgroupState>,
        window: Duration,
        wall: SystemTime,
    ) -> Vec<Event> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let node_psi = fs::read_to_string(self.proc_root.join("pressure/memory"))
            .ok()
            .and_then(|t| files::parse_psi_some_avg10(&t))
            .filter(|avg| *avg > 0.0);
        if let Some(avg) = node_psi {
            let detail = Detail::MemoryPressure(MemoryPressure {
                window_ms,
                psi_some_avg10: Some(avg),
                ..MemoryPressure::default()
            });
            out.push(self.event(wall, 0, String::new(), "/".to_owned(), detail));
        }
        for (rel, st) in states {
            // The root is the node, reported above.
            if rel == "/" {
                continue;
            }
            let reclaims = self
                .cgroups
                .get(rel)
                .filter(|o| o.id == st.id)
                .map_or(0, |old| {
                    rose(old.counters.limit_hits, st.counters.limit_hits)
                });
            let psi = st.counters.psi_some_avg10.filter(|avg| *avg > 0.0);
            if reclaims == 0 && psi.is_none() {
                continue;
            }
            let detail = Detail::MemoryPressure(MemoryPressure {
                window_ms,
                memcg_reclaims: reclaims,
                psi_some_avg10: psi,
                ..MemoryPressure::default()
            });
            out.push(
                self.event(wall, 0, String::new(), rel.clone(), detail)
                    .with_id(st.id),
            );
        }
        out
    }

    fn expire(&mut self, now: Instant) {
        let fresh = |at: Instant, ttl: Duration| now.saturating_duration_since(at) < ttl;
        self.oom
            .pending
            .retain(|_, p| fresh(p.seen, PENDING_SUMMARY_TTL));
        self.oom
            .recent_limits
            .retain(|_, (_, at)| fresh(*at, RECENT_LIMIT_TTL));
        self.killed.retain(|_, at| fresh(*at, KILLED_TTL));
    }
}

trait WithId {
    fn with_id(self, id: u64) -> Self;
}

impl WithId for Event {
    fn with_id(mut self, id: u64) -> Self {
        self.cgroup_id = Some(id);
        self
    }
}

/// How much a counter rose; 0 when unknown or reset.
fn rose(old: Option<u64>, new: Option<u64>) -> u64 {
    match (old, new) {
        (Some(old), Some(new)) => new.saturating_sub(old),
        _ => 0,
    }
}

/// A newly seen process: its comm (reported at exit) and start time (tells pid reuse).
fn track(proc_root: &Path, pid: u32, cgroup: &str) -> Tracked {
    let dir = proc_root.join(pid.to_string());
    let comm = fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim_end_matches('\n').to_owned())
        .unwrap_or_default();
    let start_time = fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|t| files::parse_stat(&t))
        .map(|s| s.start_time);
    Tracked {
        cgroup: cgroup.to_owned(),
        comm,
        start_time,
    }
}

/// Whether the process we tracked still runs (it left the watched cgroups) rather than
/// exited: present, not a zombie, and not a new process that reused the pid.
fn still_running(proc_root: &Path, pid: u32, t: &Tracked) -> bool {
    let Some(stat) = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))
        .ok()
        .and_then(|text| files::parse_stat(&text))
    else {
        return false;
    };
    !stat.has_exited() && t.start_time.is_none_or(|s| s == stat.start_time)
}

/// Wall-clock time of a kernel log record stamped `ts_usec` after boot.
fn kmsg_time(ts_usec: u64) -> SystemTime {
    let now = SystemTime::now();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_usec = u64::try_from(mono.tv_sec())
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(mono.tv_nsec()).unwrap_or(0) / 1000);
    match mono_usec.checked_sub(ts_usec) {
        Some(age) if age < 3_600_000_000 => {
            now.checked_sub(Duration::from_micros(age)).unwrap_or(now)
        }
        _ => now,
    }
}

#[cfg(test)]
mod tests;
