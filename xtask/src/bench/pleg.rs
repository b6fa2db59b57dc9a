//! `cargo xtask bench pleg`: how fast the agent sees container exits and OOM kills, and
//! whether eviction beats the kernel OOM killer, with kernel-driven PLEG and eviction triggers
//! against the upstream loops (1 s relist, 10 s eviction check) and against the upstream
//! kubelet itself, in one run.
//!
//! One private containerd 2 (`cargo xtask build-peer`'s v2.2.10 with its runc) serves the
//! whole run. The release agent starts afresh for each bpflet variant with `cargo xtask up`'s
//! config (kubepods limited to 512 MiB, `evictionHard: memory.available: 100Mi`, so eviction
//! starts when the pods use 412 MiB); the upstream kubelet v1.34.4 starts afresh for each
//! kubelet variant, standalone, on the same static pod directory, read-only port and node
//! name, with its cgroup root below the bench's and the same kubepods limit and threshold
//! (`enforceNodeAllocatable: [pods]`, `systemReserved` memory = MemTotal - 512 MiB, the same
//! `evictionHard`; see [`super::peer`]). Beside either, `bpflet trace --json` watches
//! the kubepods tree in use: the kernel's timestamps of exits, OOM kills and memory pressure
//! come from there, for both agents.
//!
//! Variants: `event` (kernel-triggered PLEG; eviction triggered by kernel pressure and OOM
//! events and by the v1 usage-threshold notifier, 10 s floor), `generic` (1 s relist; the
//! notifier and the 10 s floor), `event, no notifier` (kernel events and the floor) and
//! `periodic only` (generic with `BPFLET_DISABLE_MEMCG_NOTIFIER=1`: upstream's 10 s loop);
//! `kubelet` (upstream's defaults: generic PLEG, 1 s relist; eviction every 10 s,
//! `kernelMemcgNotification: false`), `kubelet-evented` (the same with `featureGates:
//! {EventedPLEG: true}`: CRI container events from containerd 2; left out, with the reason,
//! when the kubelet does not start with it or its `/metrics` show it fell back to relisting)
//! and `kubelet-memcg` (`kernelMemcgNotification: true`, ramps only).
//!
//! How the kubelet v1.34.4 observes memory (pkg/kubelet/eviction): every 10 s
//! (`evictionMonitoringPeriod`) `synchronize` asks the summary provider for fresh cAdvisor
//! stats of the kubepods cgroup (`updateStats`), and `allocatableMemory.available` is that
//! cgroup's limit minus its working set (usage minus `total_inactive_file`). With
//! `kernelMemcgNotification: true` it also arms a cgroup v1 usage-threshold eventfd on
//! kubepods' `memory.usage_in_bytes` at `capacity - 100Mi + inactive_file` (re-armed at most
//! every 10 s, from the same stats), and a crossing runs `synchronize` at once. Default:
//! `false`. The kubelet never evicts a static pod: `evictPod` refuses every pod
//! `kubelettypes.IsCriticalPod` calls critical, which includes every static pod, and logs
//! `Eviction manager: cannot evict a critical pod`. Standalone, every pod is static, so its
//! eviction decisions are refusals; the bench takes that record as the decision's moment
//! ([`peer::eviction`]).
//!
//! 1. Exit to status: host-network busybox pods (`restartPolicy: Never`) run
//!    `sleep <random 2-4 s>; exit <code>`, a batch of [`Plan::batch_size`] at a time;
//!    `/pods` is polled every [`EXIT_POLL`] until each shows its container terminated with
//!    its code. Latency: the kernel's timestamp of the container's exit (trace) to that
//!    answer. `event`, `generic`, `kubelet` and `kubelet-evented`.
//! 2. OOM kill to `OOMKilled`: the same, with a 32Mi container limit and a process that
//!    allocates until the kernel kills it; from the trace's `oom_kill` to the first answer
//!    showing `terminated OOMKilled(137)`.
//! 3. Ramps: with a Guaranteed and a Burstable pod running, a BestEffort pod fills memory
//!    fast up to [`RAMP_HEADROOM`] below the eviction threshold, then grows by [`RAMP_STEP`]
//!    every [`RAMP_PAUSE`] s (~40 MiB/s) until it is evicted or OOM-killed. Pressure onset is the
//!    moment kubepods' usage crosses the threshold: the bench arms its own eventfd on
//!    kubepods' `memory.usage_in_bytes` (the kernel check the agent's notifier uses, so
//!    both fire together). The decision is bpflet's `evicting pod` log record, or the
//!    kubelet's eviction manager record about the pod (`cannot evict a critical pod`: the
//!    kubelet never evicts a static pod, so standalone its decisions are refusals; `pod is
//!    evicted successfully` otherwise); kernel OOM kills are the trace's `oom_kill` events
//!    during the ramp, for every variant.
//!
//! Whatever happens, the agent, the kubelet and the trace are stopped and `up`'s teardown
//! removes every pod, containerd, the cgroup tree and the mounts. `BPFLET_BENCH_QUICK=1`
//! shortens every step: for trying the bench, not for numbers.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use xtask::containerd::{Binaries, PrivateContainerd};
use xtask::images::BUSYBOX_IMAGE;

use super::Ctx;
use super::agent_log::{self, LogRecord};
use super::peer::{self, BenchKubelet, BenchKubeletSpec};
use super::pods::{
    Machine, NODE, Node, QUICK_ENV, check_interrupted, find, is_up, on_bench_node_with, quick_mode,
    sleep_checked,
};
use super::util::{Summary, Table, fmt_opt, ms_between, ratio};
use crate::is_root;
use crate::up::{self, PlegMode, PodView};

/// How often `/pods` is polled for exits and OOM kills: their resolution.
const EXIT_POLL: Duration = Duration::from_millis(5);
/// How often `/pods` is polled during a ramp (only to see it end).
const RAMP_POLL: Duration = Duration::from_millis(20);
/// How often the usage watcher samples kubepods' usage besides waiting for the threshold.
const USAGE_SAMPLE: Duration = Duration::from_millis(50);
/// This bench's CNI bridge and subnet: apart from `up`'s, the pods bench's and the tests'.
/// Host-network pods never create the bridge.
const BRIDGE: &str = "bpflet-pleg0";
const SUBNET: &str = "10.91.0.0/16";
/// The agent's hidden switch that leaves out the v1 usage-threshold notifier.
const NOTIFIER_ENV: &str = "BPFLET_DISABLE_MEMCG_NOTIFIER";
/// The v1 memory hierarchy (this fleet's hosts are hybrid; the notifier is v1 only).
const MEMORY_V1: &str = "/sys/fs/cgroup/memory";
/// `evictionHard: memory.available` in `up`'s config, which also applies to kubepods.
const EVICTION_AVAILABLE: u64 = 100 << 20;
/// A ramp grows by [`RAMP_STEP`] every [`RAMP_PAUSE`] once the fast fill is done: with the
/// allocation and the fork of `sleep`, ~40 MiB/s.
const RAMP_STEP: u64 = 4 << 20;
const RAMP_PAUSE: &str = "0.08";
/// Before each ramp, a random pause of up to this (ms): the eviction loop's period.
const RAMP_PHASE_MS: u64 = 10_000;
/// Where the fast fill stops below the eviction threshold.
const RAMP_HEADROOM: u64 = 60 << 20;
/// A ramp starts only once kubepods uses less than the threshold minus this.
const RAMP_START_BELOW: u64 = 96 << 20;
/// The container limit of the OOM pods.
const OOM_LIMIT: &str = "32Mi";
/// Upper bounds for waits; never timing claims.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
const RAMP_TIMEOUT: Duration = Duration::from_secs(60);
const USAGE_DROP_TIMEOUT: Duration = Duration::from_secs(30);
const TRACE_START_TIMEOUT: Duration = Duration::from_secs(30);
const TRACE_STOP_GRACE: Duration = Duration::from_secs(5);
const NOTIFIER_LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// After a ramp ends, before its pod is removed: late events still count for it.
const RAMP_LINGER: Duration = Duration::from_millis(500);
/// OOM-kill reasons on `/events`.
const OOM_REASONS: [&str; 3] = ["OOMKilled", "ProcessOOMKilled", "SystemOOM"];

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    batch_size: usize,
    exit_batches: usize,
    oom_batches: usize,
    ramps: usize,
    quick: bool,
}

impl Plan {
    fn from_env() -> Self {
        if quick_mode() {
            Self {
                batch_size: 3,
                exit_batches: 1,
                oom_batches: 1,
                ramps: 2,
                quick: true,
            }
        } else {
            Self {
                batch_size: 5,
                exit_batches: 4,
                oom_batches: 2,
                ramps: 10,
                quick: false,
            }
        }
    }
}

/// One agent configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Event,
    Generic,
    EventNoNotifier,
    PeriodicOnly,
    Kubelet,
    KubeletEvented,
    KubeletMemcg,
}

impl Variant {
    /// In the order they run: the two PLEG modes with exits, OOM kills and ramps, then the
    /// two ramp-only variants; then the kubelet's, the same way.
    const ALL: [Variant; 7] = [
        Variant::Event,
        Variant::Generic,
        Variant::EventNoNotifier,
        Variant::PeriodicOnly,
        Variant::Kubelet,
        Variant::KubeletEvented,
        Variant::KubeletMemcg,
    ];

    /// bpflet's PLEG mode; `None` for the kubelet.
    fn mode(self) -> Option<PlegMode> {
        match self {
            Variant::Event | Variant::EventNoNotifier => Some(PlegMode::Event),
            Variant::Generic | Variant::PeriodicOnly => Some(PlegMode::Generic),
            Variant::Kubelet | Variant::KubeletEvented | Variant::KubeletMemcg => None,
        }
    }

    /// How the kubelet runs; `None` for bpflet.
    fn kubelet(self) -> Option<peer::Switches> {
        let setup = |evented_pleg, kernel_memcg_notification| peer::Switches {
            evented_pleg,
            kernel_memcg_notification,
        };
        match self {
            Variant::Kubelet => Some(setup(false, false)),
            Variant::KubeletEvented => Some(setup(true, false)),
            Variant::KubeletMemcg => Some(setup(false, true)),
            _ => None,
        }
    }

    /// Whether a usage-threshold notifier runs (bpflet's, or the kubelet's
    /// `kernelMemcgNotification`).
    fn notifier(self) -> bool {
        matches!(
            self,
            Variant::Event | Variant::Generic | Variant::KubeletMemcg
        )
    }

    /// Whether the exit and OOM measurements run in this variant.
    fn measures_pods(self) -> bool {
        matches!(
            self,
            Variant::Event | Variant::Generic | Variant::Kubelet | Variant::KubeletEvented
        )
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Event => "event",
            Variant::Generic => "generic",
            Variant::EventNoNotifier => "event, no notifier",
            Variant::PeriodicOnly => "periodic only",
            Variant::Kubelet => "kubelet",
            Variant::KubeletEvented => "kubelet-evented",
            Variant::KubeletMemcg => "kubelet-memcg",
        }
    }

    /// What starts an eviction evaluation.
    fn triggers(self) -> &'static str {
        match self {
            Variant::Event => "kernel pressure/OOM + usage notifier + 10 s",
            Variant::Generic => "usage notifier + 10 s",
            Variant::EventNoNotifier => "kernel pressure/OOM + 10 s",
            Variant::PeriodicOnly | Variant::Kubelet | Variant::KubeletEvented => "10 s",
            Variant::KubeletMemcg => "memcg notifier + 10 s",
        }
    }

    /// Short, for pod names and log files.
    fn tag(self) -> &'static str {
        match self {
            Variant::Event => "ev",
            Variant::Generic => "gen",
            Variant::EventNoNotifier => "evk",
            Variant::PeriodicOnly => "per",
            Variant::Kubelet => "kl",
            Variant::KubeletEvented => "kle",
            Variant::KubeletMemcg => "klm",
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask bench pleg` needs root (BPF, cgroups, containerd)"
    );
    ensure!(
        Path::new(MEMORY_V1).join("memory.usage_in_bytes").is_file(),
        "`cargo xtask bench pleg` needs the cgroup v1 memory controller at {MEMORY_V1} (the \
         usage-threshold eventfd that marks pressure onset is v1 only)"
    );
    peer::require_built()?;
    let plan = Plan::from_env();
    let machine = Machine::read_with(&xtask::peer::bin_dir().join("containerd"))?;
    let peer_versions = peer::versions()?;
    on_bench_node_with(
        ctx,
        "pleg",
        BRIDGE,
        SUBNET,
        Binaries::containerd2(),
        |node, ctd| {
            let started = Instant::now();
            let (sessions, left_out) = measure(ctx, &plan, node, ctd)?;
            let report = render(
                &plan,
                &machine,
                &peer_versions,
                &sessions,
                &left_out,
                started.elapsed(),
            );
            println!("{report}");
            let path = ctx.save("pleg", &report)?;
            eprintln!("saved {}", path.display());
            Ok(())
        },
    )
}

/// A variant left out, and why.
type LeftOut = (Variant, String);

/// Every variant, one agent each; and the variants left out.
fn measure(
    ctx: &Ctx,
    plan: &Plan,
    node: &mut Node,
    ctd: &PrivateContainerd,
) -> Result<(Vec<Session>, Vec<LeftOut>)> {
    let mut rng = fastrand::Rng::new();
    let mut sessions = vec![];
    let mut left_out = vec![];
    for variant in Variant::ALL {
        if let Some(setup) = variant.kubelet() {
            match kubelet_session(ctx, plan, node, ctd, variant, setup, &mut rng)? {
                Ok(session) => sessions.push(session),
                Err(why) => {
                    eprintln!("bench pleg: `{}` left out: {why}", variant.name());
                    left_out.push((variant, why));
                }
            }
            continue;
        }
        let mode = variant.mode().expect("a bpflet variant has a PLEG mode");
        node.agent_env = if variant.notifier() {
            vec![]
        } else {
            vec![(NOTIFIER_ENV.to_owned(), "1".to_owned())]
        };
        node.start_agent(mode, ctd)?;
        let result = session(ctx, plan, node, variant, Subject::Bpflet, &mut rng);
        node.stop_agent();
        // Keep each variant's log (two variants share a PLEG mode, hence a log name).
        let kept = node.work_dir.join(format!("agent-{}.log", variant.tag()));
        let _ = fs::rename(&node.agent_log, &kept);
        node.agent_log = kept;
        sessions.push(result.with_context(|| format!("variant `{}`", variant.name()))?);
    }
    Ok((sessions, left_out))
}

/// One kubelet variant: the kubelet started on the node, the session, the kubelet stopped.
/// The inner `Err` leaves `kubelet-evented` out: the kubelet did not start with Evented PLEG,
/// or it fell back to relisting.
fn kubelet_session(
    ctx: &Ctx,
    plan: &Plan,
    node: &mut Node,
    ctd: &PrivateContainerd,
    variant: Variant,
    setup: peer::Switches,
    rng: &mut fastrand::Rng,
) -> Result<std::result::Result<Session, String>> {
    let spec = BenchKubeletSpec::on_node(node, variant.name(), setup);
    let kubelet = match BenchKubelet::start(&spec, ctd) {
        Ok(k) => k,
        Err(e) if setup.evented_pleg => {
            return Ok(Err(format!(
                "the kubelet did not start with featureGates EventedPLEG: {e:#}"
            )));
        }
        Err(e) => return Err(e.context(format!("variant `{}`", variant.name()))),
    };
    // The node's errors show the log of the agent in use.
    node.agent_log = kubelet.log_path().to_owned();
    let result = session(ctx, plan, node, variant, Subject::Kubelet(&kubelet), rng);
    let evented = setup.evented_pleg.then(|| kubelet.check_evented());
    let stopped = kubelet.stop();
    let session = result.with_context(|| format!("variant `{}`", variant.name()))?;
    stopped.with_context(|| format!("stopping the kubelet of `{}`", variant.name()))?;
    Ok(match evented {
        Some(Err(why)) => Err(why),
        _ => Ok(session),
    })
}

/// The agent a session measures.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Bpflet,
    Kubelet(&'a BenchKubelet),
}

/// The log of the agent a session measured, as records.
enum AgentLog {
    Bpflet(Vec<LogRecord>),
    Kubelet(Vec<peer::Record>),
}

impl AgentLog {
    /// When the agent's PLEG handed the exit of manifest `name`'s container on.
    fn pleg_event(&self, name: &str) -> Option<SystemTime> {
        match self {
            AgentLog::Bpflet(log) => pleg_event_logged(log, name),
            AgentLog::Kubelet(log) => peer::pleg_died(log, name),
        }
    }

    /// The eviction decision about manifest `name`'s pod. For the kubelet, the trigger is
    /// `Notifier` when its memcg notifier fired between `onset` and the decision, else
    /// `Periodic`.
    fn decision(&self, name: &str, onset: Option<SystemTime>) -> Option<Decision> {
        match self {
            AgentLog::Bpflet(log) => eviction_logged(log, name),
            AgentLog::Kubelet(log) => {
                let e = peer::eviction(log, name)?;
                let notified = onset.is_some_and(|o| {
                    peer::notifier_fired(log)
                        .iter()
                        .any(|&t| t >= o && t <= e.at)
                });
                Some(Decision {
                    at: e.at,
                    trigger: if notified { "Notifier" } else { "Periodic" }.to_owned(),
                    latency_ms: None,
                    refused: e.refused,
                })
            }
        }
    }
}

/// What one variant measured.
struct Session {
    variant: Variant,
    exits: Vec<Sample>,
    ooms: Vec<Sample>,
    ramps: Vec<Ramp>,
    /// GET /pods times (ms) while polling exits and OOM kills every [`EXIT_POLL`].
    gets: Vec<f64>,
    /// `events_lost` records of the trace.
    lost: u64,
    /// The Guaranteed and Burstable pods after the ramps: `None` when both kept running.
    companions_hurt: Option<String>,
    /// OOM-kill events on bpflet's `/events` about the ramps' pods (or the node); `None` for
    /// the standalone kubelet, which has no API server to record events in.
    api_ooms: Option<usize>,
}

/// One exit or OOM kill.
struct Sample {
    /// From the kernel's timestamp to the first `/pods` answer showing it; `None` when
    /// either is missing (see `note`).
    latency_ms: Option<f64>,
    /// From the kernel's timestamp to the agent's PLEG event record: bpflet's worker has
    /// seen the exit through the runtime, or the kubelet's sync loop took the PLEG's
    /// `ContainerDied`.
    pleg_ms: Option<f64>,
    note: Option<String>,
}

/// One ramp, evaluated.
struct Ramp {
    onset: Option<SystemTime>,
    /// The eviction decision: log time, trigger, the agent's own latency (ms).
    decision: Option<Decision>,
    /// Kernel OOM kills in the pod tree during the ramp (any pod).
    oom_kills: usize,
    /// The first of them.
    first_oom: Option<SystemTime>,
    /// Of those, kills of other pods than the ramp's.
    other_oom_kills: usize,
    /// The ramp's process killed (SIGKILL exit in the trace), from onset, ms.
    killed_ms: Option<f64>,
    /// The first kernel `memory_pressure` event in the pod tree, from onset, ms.
    pressure_ms: Option<f64>,
    /// kubepods' growth in the second before onset, MiB/s.
    growth_mib_s: Option<f64>,
    /// How the ramp's pod ended on `/pods`.
    end: String,
}

impl Ramp {
    /// The eviction decision, if it came before any kernel OOM kill (a refused one too).
    fn won(&self) -> Option<&Decision> {
        self.decision
            .as_ref()
            .filter(|d| self.first_oom.is_none_or(|o| d.at < o))
    }

    /// The pod evicted (not refused) before any kernel OOM kill.
    fn evicted(&self) -> bool {
        self.won().is_some_and(|d| !d.refused)
    }

    fn onset_to_decision_ms(&self) -> Option<f64> {
        Some(ms_between(self.onset?, self.won()?.at))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Decision {
    at: SystemTime,
    trigger: String,
    latency_ms: Option<f64>,
    /// The agent decided on this pod but refused to evict it (the kubelet and a static pod).
    refused: bool,
}

fn session(
    ctx: &Ctx,
    plan: &Plan,
    node: &mut Node,
    variant: Variant,
    subject: Subject<'_>,
    rng: &mut fastrand::Rng,
) -> Result<Session> {
    let kubepods = match subject {
        Subject::Bpflet => {
            check_notifier(node, variant)?;
            format!("{}/kubepods", node.cgroup_root)
        }
        Subject::Kubelet(kubelet) => kubelet.kubepods_cgroup(),
    };
    let trace = Trace::start(ctx, &node.work_dir, variant.tag(), &kubepods)?;
    let gets_before = node.get_ms.len();

    let mut exits = vec![];
    let mut ooms = vec![];
    if variant.measures_pods() {
        for b in 0..plan.exit_batches {
            eprintln!(
                "bench pleg: {}: exits, batch {}/{}",
                variant.name(),
                b + 1,
                plan.exit_batches
            );
            exits.extend(exit_batch(node, variant, b, plan.batch_size, rng)?);
        }
        for b in 0..plan.oom_batches {
            eprintln!(
                "bench pleg: {}: OOM kills, batch {}/{}",
                variant.name(),
                b + 1,
                plan.oom_batches
            );
            ooms.extend(oom_batch(node, variant, b, plan.batch_size, rng)?);
        }
    }
    let gets = node.get_ms.split_off(gets_before);
    let (runs, companions_hurt) = ramps(node, &kubepods, variant, plan.ramps, rng)?;
    let (api_ooms, log) = match subject {
        Subject::Bpflet => (
            Some(api_oom_events(node)?),
            AgentLog::Bpflet(agent_log::read(&node.agent_log)?),
        ),
        Subject::Kubelet(kubelet) => {
            let log = kubelet.log()?;
            check_kubelet_notifier(&log, kubelet, variant)?;
            (None, AgentLog::Kubelet(log))
        }
    };
    let events = trace.stop()?;

    let exits = exits
        .iter()
        .map(|p| {
            p.sample(&events, &log, |e| {
                e.kind == "exit" && e.exit_code == Some(p.code)
            })
        })
        .collect();
    let ooms = ooms
        .iter()
        .map(|p| p.sample(&events, &log, |e| e.kind == "oom_kill"))
        .collect();
    let ramps = runs.iter().map(|r| r.evaluate(&events, &log)).collect();
    Ok(Session {
        variant,
        exits,
        ooms,
        ramps,
        gets,
        lost: events
            .iter()
            .filter(|e| e.kind == "events_lost")
            .map(|e| e.lost)
            .sum(),
        companions_hurt,
        api_ooms,
    })
}

/// The kubelet's log says it created the memcg threshold notifiers when the variant wants
/// them (`kernelMemcgNotification: true`), and only then.
fn check_kubelet_notifier(
    log: &[peer::Record],
    kubelet: &BenchKubelet,
    variant: Variant,
) -> Result<()> {
    let (created, failed) = peer::notifier_logged(log);
    ensure!(
        created == variant.notifier() && !failed,
        "variant `{}` wants the kubelet's memcg notifier {}, but its log says created {created}, \
         failed {failed}; last lines of {}:\n{}",
        variant.name(),
        if variant.notifier() { "on" } else { "off" },
        kubelet.log_path().display(),
        kubelet.log_tail(20)
    );
    Ok(())
}

/// Whether the agent's log says it armed the usage-threshold notifier, and whether it says
/// [`NOTIFIER_ENV`] left it out.
fn notifier_logged(log: &[LogRecord]) -> (bool, bool) {
    let disabled_by_env = format!("{NOTIFIER_ENV}=1:");
    (
        log.iter()
            .any(|r| r.message == "memory threshold notifier armed"),
        log.iter().any(|r| r.message.starts_with(&disabled_by_env)),
    )
}

/// The agent's log says whether the usage-threshold notifier runs; it must match the variant.
fn check_notifier(node: &Node, variant: Variant) -> Result<()> {
    let deadline = Instant::now() + NOTIFIER_LOG_TIMEOUT;
    loop {
        let log = agent_log::read(&node.agent_log).unwrap_or_default();
        let (armed, disabled) = notifier_logged(&log);
        if armed || disabled {
            ensure!(
                armed == variant.notifier(),
                "variant `{}` wants the notifier {}, but the agent says otherwise; last lines \
                 of {}:\n{}",
                variant.name(),
                if variant.notifier() { "on" } else { "off" },
                node.agent_log.display(),
                node.log_tail(20)
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the agent logged neither `memory threshold notifier armed` nor `{NOTIFIER_ENV}=1` \
             within {NOTIFIER_LOG_TIMEOUT:?} (is it the build with the switch?); last lines \
             of {}:\n{}",
            node.agent_log.display(),
            node.log_tail(20)
        );
        sleep_checked(Duration::from_millis(50))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Exits and OOM kills

/// A pod of a batch, after the batch: when `/pods` first showed what was waited for.
struct Watched {
    name: String,
    /// The exit code the container ends with (exits only).
    code: i32,
    uid: Option<String>,
    seen: Option<SystemTime>,
    last: String,
}

impl Watched {
    /// Matches the kernel's event for this pod (`is_it`, and the pod's uid, the first one)
    /// and the agent's log.
    fn sample(
        &self,
        events: &[TraceEvent],
        log: &AgentLog,
        is_it: impl Fn(&TraceEvent) -> bool,
    ) -> Sample {
        let Some(uid) = &self.uid else {
            return Sample {
                latency_ms: None,
                pleg_ms: None,
                note: Some(format!("{}: never on /pods", self.name)),
            };
        };
        let Some(kernel) = events
            .iter()
            .find(|e| e.pod_uid.as_deref() == Some(uid) && is_it(e))
        else {
            return Sample {
                latency_ms: None,
                pleg_ms: None,
                note: Some(format!("{}: no kernel event in the trace", self.name)),
            };
        };
        Sample {
            latency_ms: self.seen.map(|seen| ms_between(kernel.ts, seen)),
            pleg_ms: log
                .pleg_event(&self.name)
                .map(|at| ms_between(kernel.ts, at)),
            note: self
                .seen
                .is_none()
                .then(|| format!("{}: /pods never showed it ({})", self.name, self.last)),
        }
    }
}

fn exit_batch(
    node: &mut Node,
    variant: Variant,
    batch: usize,
    size: usize,
    rng: &mut fastrand::Rng,
) -> Result<Vec<Watched>> {
    let pods: Vec<(String, i32, String)> = (0..size)
        .map(|j| {
            let n = batch * size + j;
            // Distinct, non-zero, below the shell's 126+ and the signal codes.
            let code = i32::try_from(1 + n % 120).unwrap_or(1);
            let sleep = 2.0 + f64::from(rng.u32(0..200)) / 100.0;
            let command = format!("sleep {sleep:.2}; exit {code}");
            (format!("exit-{}-{n:02}", variant.tag()), code, command)
        })
        .collect();
    let manifests: Vec<(String, String)> = pods
        .iter()
        .map(|(name, _, cmd)| (name.clone(), manifest(name, "Never", cmd, "")))
        .collect();
    let codes: Vec<i32> = pods.iter().map(|p| p.1).collect();
    let mut watched = watch_batch(node, &manifests, |i, pod| {
        let want = format!("({})", codes[i]);
        app(pod).is_some_and(|c| c.state.starts_with("terminated ") && c.state.ends_with(&want))
    })?;
    for (w, code) in watched.iter_mut().zip(codes) {
        w.code = code;
    }
    Ok(watched)
}

fn oom_batch(
    node: &mut Node,
    variant: Variant,
    batch: usize,
    size: usize,
    rng: &mut fastrand::Rng,
) -> Result<Vec<Watched>> {
    let manifests: Vec<(String, String)> = (0..size)
        .map(|j| {
            let name = format!("oom-{}-{:02}", variant.tag(), batch * size + j);
            let sleep = 2.0 + f64::from(rng.u32(0..200)) / 100.0;
            // awk becomes the container's init; it allocates 1 MiB strings until killed.
            let command = format!(
                "sleep {sleep:.2}; exec awk 'BEGIN {{ while (1) a[i++] = sprintf(\"%1048576s\", \"\") }}'"
            );
            let resources = format!("    resources:\n      limits:\n        memory: {OOM_LIMIT}\n");
            let text = manifest(&name, "Never", &command, &resources);
            (name, text)
        })
        .collect();
    watch_batch(node, &manifests, |_, pod| {
        app(pod).is_some_and(|c| c.state.starts_with("terminated OOMKilled("))
    })
}

/// Writes the manifests at once, polls `/pods` every [`EXIT_POLL`] until `done` held for
/// each pod (or [`BATCH_TIMEOUT`]), then removes them and waits until they are gone.
fn watch_batch(
    node: &mut Node,
    manifests: &[(String, String)],
    done: impl Fn(usize, &PodView) -> bool,
) -> Result<Vec<Watched>> {
    for (name, text) in manifests {
        write_manifest(node, name, text)?;
    }
    let mut watched: Vec<Watched> = manifests
        .iter()
        .map(|(name, _)| Watched {
            name: name.clone(),
            code: 0,
            uid: None,
            seen: None,
            last: "not on /pods".to_owned(),
        })
        .collect();
    let deadline = Instant::now() + BATCH_TIMEOUT;
    loop {
        check_interrupted()?;
        let sent = Instant::now();
        let pods = node.pods()?;
        let at = SystemTime::now();
        for (i, w) in watched.iter_mut().enumerate() {
            let Some(pod) = find(&pods, &w.name) else {
                continue;
            };
            w.uid.clone_from(&pod.uid);
            w.last = pod.summary();
            if w.seen.is_none() && done(i, pod) {
                w.seen = Some(at);
            }
        }
        if watched.iter().all(|w| w.seen.is_some()) || Instant::now() >= deadline {
            break;
        }
        thread::sleep((sent + EXIT_POLL).saturating_duration_since(Instant::now()));
    }
    let names: Vec<String> = manifests.iter().map(|(n, _)| n.clone()).collect();
    for name in &names {
        node.remove_pod(name)?;
    }
    node.wait_gone(&names)?;
    Ok(watched)
}

// ---------------------------------------------------------------------------------------------
// Ramps

/// One ramp as it ran; [`RampRun::evaluate`] matches it with the trace and the agent's log.
struct RampRun {
    name: String,
    uid: Option<String>,
    /// The manifest was written.
    start: SystemTime,
    /// The pod was removed.
    end: SystemTime,
    end_state: String,
    crossings: Vec<SystemTime>,
    usage: Vec<(SystemTime, u64)>,
}

fn ramps(
    node: &mut Node,
    kubepods: &str,
    variant: Variant,
    count: usize,
    rng: &mut fastrand::Rng,
) -> Result<(Vec<RampRun>, Option<String>)> {
    let kubepods = Path::new(MEMORY_V1).join(kubepods.trim_start_matches('/'));
    let limit = read_u64(&kubepods.join("memory.limit_in_bytes"))?;
    // The ramps fill the pods' cgroup: it must be limited as both agents' configs say.
    ensure!(
        limit == up::KUBEPODS_MEMORY,
        "{} is limited to {limit} bytes, not {} (the ramps stay inside a cgroup the bench \
         limited)",
        kubepods.display(),
        up::KUBEPODS_MEMORY
    );
    let threshold = limit.saturating_sub(EVICTION_AVAILABLE);
    let watch = UsageWatch::start(&kubepods, threshold)?;

    let companions = [
        (
            format!("guaranteed-{}", variant.tag()),
            "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n      requests: {cpu: 100m, memory: 64Mi}\n",
        ),
        (
            format!("burstable-{}", variant.tag()),
            "    resources:\n      requests: {memory: 32Mi}\n",
        ),
    ];
    let companion_names: Vec<String> = companions.iter().map(|(n, _)| n.clone()).collect();
    for (name, resources) in &companions {
        write_manifest(
            node,
            name,
            &manifest(name, "Always", "exec sleep 3600", resources),
        )?;
    }
    node.wait_up(&companion_names, BATCH_TIMEOUT)?;

    let mut runs = vec![];
    for i in 0..count {
        eprintln!(
            "bench pleg: {}: ramp {}/{count} (kubepods limit {} MiB, eviction at {} MiB)",
            variant.name(),
            i + 1,
            limit >> 20,
            threshold >> 20
        );
        let below = threshold.saturating_sub(RAMP_START_BELOW);
        let usage = wait_usage_below(&kubepods, below)?;
        let fill = threshold
            .saturating_sub(RAMP_HEADROOM)
            .saturating_sub(usage)
            / RAMP_STEP;
        let name = format!("ramp-{}-{i:02}", variant.tag());
        let command = format!(
            "exec awk 'BEGIN {{ for (i = 0; i < {fill}; i++) a[i] = sprintf(\"%{RAMP_STEP}s\", \"\"); \
             while (1) {{ a[i++] = sprintf(\"%{RAMP_STEP}s\", \"\"); system(\"sleep {RAMP_PAUSE}\") }} }}'",
        );
        // A random pause, so that ramps meet the agent's 10 s loop at random phases (a
        // ramp takes about as long as the loop's period).
        sleep_checked(Duration::from_millis(rng.u64(0..RAMP_PHASE_MS)))?;
        let start = SystemTime::now();
        write_manifest(node, &name, &manifest(&name, "Never", &command, ""))?;
        let (uid, end_state) = wait_ramp_end(node, &name)?;
        sleep_checked(RAMP_LINGER)?;
        node.remove_pod(&name)?;
        node.wait_gone(std::slice::from_ref(&name))?;
        let end = SystemTime::now();
        let (crossings, usage) = watch.between(start, end);
        runs.push(RampRun {
            name,
            uid,
            start,
            end,
            end_state,
            crossings,
            usage,
        });
    }
    watch.stop()?;

    let pods = node.pods()?;
    let hurt: Vec<String> = companion_names
        .iter()
        .filter_map(|n| match find(&pods, n) {
            Some(p) if is_up(p) && p.containers.iter().all(|c| c.restarts == 0) => None,
            Some(p) => Some(format!("{n}: {}", p.summary())),
            None => Some(format!("{n}: not on /pods")),
        })
        .collect();
    for name in &companion_names {
        node.remove_pod(name)?;
    }
    node.wait_gone(&companion_names)?;
    Ok((runs, (!hurt.is_empty()).then(|| hurt.join("; "))))
}

/// Polls `/pods` until the ramp's pod has ended (evicted or OOM-killed: `Failed`, or its
/// container terminated). Returns its uid and how it ended.
fn wait_ramp_end(node: &mut Node, name: &str) -> Result<(Option<String>, String)> {
    let deadline = Instant::now() + RAMP_TIMEOUT;
    let mut uid = None;
    loop {
        check_interrupted()?;
        let sent = Instant::now();
        let pods = node.pods()?;
        if let Some(pod) = find(&pods, name) {
            uid.clone_from(&pod.uid);
            let ended = pod.phase == "Failed"
                || pod.phase == "Succeeded"
                || app(pod).is_some_and(|c| c.state.starts_with("terminated"));
            if ended {
                return Ok((uid, pod.summary()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "ramp {name} neither evicted nor killed within {RAMP_TIMEOUT:?}: {}",
                    pod.summary()
                );
            }
        } else if Instant::now() >= deadline {
            bail!("ramp {name} never showed on /pods within {RAMP_TIMEOUT:?}");
        }
        thread::sleep((sent + RAMP_POLL).saturating_duration_since(Instant::now()));
    }
}

fn wait_usage_below(kubepods: &Path, bytes: u64) -> Result<u64> {
    let deadline = Instant::now() + USAGE_DROP_TIMEOUT;
    loop {
        let usage = read_u64(&kubepods.join("memory.usage_in_bytes"))?;
        if usage < bytes {
            return Ok(usage);
        }
        ensure!(
            Instant::now() < deadline,
            "kubepods still uses {} MiB after {USAGE_DROP_TIMEOUT:?} (want < {} MiB before a ramp)",
            usage >> 20,
            bytes >> 20
        );
        sleep_checked(Duration::from_millis(50))?;
    }
}

impl RampRun {
    fn evaluate(&self, events: &[TraceEvent], log: &AgentLog) -> Ramp {
        let during = |e: &&TraceEvent| e.ts >= self.start && e.ts <= self.end;
        let onset = self.crossings.first().copied();
        let ooms: Vec<&TraceEvent> = events
            .iter()
            .filter(during)
            .filter(|e| e.kind == "oom_kill")
            .collect();
        let mine = |e: &TraceEvent| self.uid.is_some() && e.pod_uid == self.uid;
        let from_onset = |t: SystemTime| onset.map(|o| ms_between(o, t));
        let killed = events
            .iter()
            .filter(during)
            .find(|e| e.kind == "exit" && mine(e) && e.signal == Some(9))
            .and_then(|e| from_onset(e.ts));
        let pressure = events
            .iter()
            .filter(during)
            .find(|e| e.kind == "memory_pressure")
            .and_then(|e| from_onset(e.ts));
        Ramp {
            onset,
            decision: log.decision(&self.name, onset),
            oom_kills: ooms.len(),
            first_oom: ooms.first().map(|e| e.ts),
            other_oom_kills: ooms.iter().filter(|e| !mine(e)).count(),
            killed_ms: killed,
            pressure_ms: pressure,
            growth_mib_s: onset.and_then(|o| growth(&self.usage, o)),
            end: self.end_state.clone(),
        }
    }
}

/// kubepods' growth over the second before `onset`, in MiB/s.
fn growth(usage: &[(SystemTime, u64)], onset: SystemTime) -> Option<f64> {
    let from = onset.checked_sub(Duration::from_secs(1))?;
    let window: Vec<&(SystemTime, u64)> = usage
        .iter()
        .filter(|(t, _)| *t >= from && *t <= onset)
        .collect();
    let (first, last) = (window.first()?, window.last()?);
    let secs = last.0.duration_since(first.0).ok()?.as_secs_f64();
    (secs >= 0.2).then(|| (last.1 as f64 - first.1 as f64) / f64::from(1 << 20) / secs)
}

/// The PLEG event for manifest `name`: the worker's `PLEG: container state changed` record
/// with `state` `Exited`, written when it sees the exit through the runtime.
fn pleg_event_logged(log: &[LogRecord], name: &str) -> Option<SystemTime> {
    let pod = format!("{name}-{NODE}");
    log.iter()
        .find(|r| {
            r.message == "PLEG: container state changed"
                && r.str("state") == Some("Exited")
                && r.is_about_pod(&pod)
        })
        .map(|r| r.at)
}

/// The eviction manager's `evicting pod` record for manifest `name`: when, what triggered
/// the evaluation, and the agent's own trigger-to-decision latency (`latency_us`).
fn eviction_logged(log: &[LogRecord], name: &str) -> Option<Decision> {
    let pod = format!("default/{name}-{NODE}");
    let r = log.iter().find(|r| {
        r.target == "bpflet::eviction::manager"
            && r.message == "evicting pod"
            && r.str("pod") == Some(pod.as_str())
    })?;
    Some(Decision {
        at: r.at,
        trigger: r.str("trigger").unwrap_or_default().to_owned(),
        latency_ms: r.u64("latency_us").map(|us| us as f64 / 1e3),
        refused: false,
    })
}

/// OOM-kill events on the agent's `/events` about ramp pods or the node.
fn api_oom_events(node: &mut Node) -> Result<usize> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, node.port));
    let (code, body) = node.rt.block_on(up::http_get(addr, "/events"))?;
    ensure!(code == 200, "GET http://{addr}/events: HTTP {code}");
    let value: Value = serde_json::from_slice(&body).context("/events is not JSON")?;
    Ok(value["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            let reason = e["reason"].as_str().unwrap_or_default();
            let object = e["involvedObject"]["name"].as_str().unwrap_or_default();
            OOM_REASONS.contains(&reason) && (reason == "SystemOOM" || object.starts_with("ramp-"))
        })
        .count())
}

// ---------------------------------------------------------------------------------------------
// Pods

/// A host-network busybox pod with one container `c` running `sh -c <command>`.
fn manifest(name: &str, restart_policy: &str, command: &str, resources: &str) -> String {
    let command = serde_json::to_string(command).expect("a string serializes");
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: {restart_policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, {command}]
{resources}"
    )
}

/// Written to the staging directory, then renamed into the static pod directory.
fn write_manifest(node: &Node, name: &str, text: &str) -> Result<()> {
    let file = format!("{name}.yaml");
    let staged = node.staging.join(&file);
    fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
    let target = node.manifests.join(&file);
    fs::rename(&staged, &target)
        .with_context(|| format!("renaming {} to {}", staged.display(), target.display()))
}

/// The pod's app container.
fn app(pod: &PodView) -> Option<&up::ContainerView> {
    pod.containers.iter().find(|c| !c.init)
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a number: {text:?}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kernel timestamps: `bpflet trace --json`

/// The fields of a trace line this bench uses.
#[derive(Debug, Clone, PartialEq)]
struct TraceEvent {
    ts: SystemTime,
    kind: String,
    pod_uid: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    lost: u64,
}

impl TraceEvent {
    fn parse(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let int = |k: &str| v[k].as_i64().and_then(|n| i32::try_from(n).ok());
        Some(Self {
            ts: agent_log::parse_time(v["ts"].as_str()?)?,
            kind: v["kind"].as_str()?.to_owned(),
            pod_uid: v["pod_uid"].as_str().map(str::to_owned),
            exit_code: int("exit_code"),
            signal: int("signal"),
            lost: v["lost_kernel"].as_u64().unwrap_or(0)
                + v["lost_userspace"].as_u64().unwrap_or(0),
        })
    }
}

/// `bpflet trace --json` on the kubepods tree, its lines in a file.
struct Trace {
    child: Option<Child>,
    out: PathBuf,
}

impl Trace {
    fn start(ctx: &Ctx, work_dir: &Path, tag: &str, kubepods: &str) -> Result<Self> {
        let out = work_dir.join(format!("trace-{tag}.jsonl"));
        let err = work_dir.join(format!("trace-{tag}.log"));
        let mut cmd = Command::new(&ctx.bpflet);
        cmd.args(["trace", "--json", "--cgroup", kubepods])
            .args(["--kind", "exit", "--kind", "oom_kill"])
            .args(["--kind", "memory_pressure", "--kind", "events_lost"])
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?)
            .process_group(0);
        // SAFETY: one async-signal-safe system call in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
            });
        }
        let line = crate::describe(&cmd);
        eprintln!("bench pleg: {line}");
        let mut trace = Self {
            child: Some(cmd.spawn().with_context(|| format!("starting `{line}`"))?),
            out,
        };
        let deadline = Instant::now() + TRACE_START_TIMEOUT;
        loop {
            check_interrupted()?;
            let text = fs::read_to_string(&err).unwrap_or_default();
            if let Some(source) = agent_log::tracing_source(&agent_log::parse(&text)) {
                ensure!(
                    source == "Bpf",
                    "bpflet trace is not using BPF (source {source:?}): {}",
                    text.trim()
                );
                return Ok(trace);
            }
            if let Some(status) = trace
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                trace.child = None;
                bail!("`{line}` exited ({status}): {}", text.trim());
            }
            ensure!(
                Instant::now() < deadline,
                "`{line}` did not start tracing within {TRACE_START_TIMEOUT:?}: {}",
                text.trim()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, then its events.
    fn stop(mut self) -> Result<Vec<TraceEvent>> {
        self.halt();
        let file =
            File::open(&self.out).with_context(|| format!("opening {}", self.out.display()))?;
        Ok(BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| TraceEvent::parse(&l))
            .collect())
    }

    fn halt(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + TRACE_STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------------
// Pressure onset: the kernel's usage-threshold eventfd on kubepods (cgroup v1)

#[derive(Default)]
struct UsageLog {
    crossings: Vec<SystemTime>,
    samples: Vec<(SystemTime, u64)>,
}

/// A thread that waits on an eventfd armed at `threshold` on kubepods'
/// `memory.usage_in_bytes` (each crossing, either way, is recorded) and samples the usage
/// every [`USAGE_SAMPLE`].
struct UsageWatch {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<UsageLog>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl UsageWatch {
    fn start(cgroup: &Path, threshold: u64) -> Result<Self> {
        let usage_path = cgroup.join("memory.usage_in_bytes");
        let usage =
            File::open(&usage_path).with_context(|| format!("opening {}", usage_path.display()))?;
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        ensure!(raw >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let control = cgroup.join("cgroup.event_control");
        fs::write(
            &control,
            format!("{} {} {threshold}", efd.as_raw_fd(), usage.as_raw_fd()),
        )
        .with_context(|| format!("arming a usage threshold through {}", control.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(UsageLog::default()));
        let thread = {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            thread::spawn(move || watch_usage(&efd, &usage_path, &stop, &log))
        };
        // The registration lives as long as the eventfd; `usage` may close now.
        drop(usage);
        Ok(Self {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// Crossings and samples from `from` to `to`.
    fn between(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> (Vec<SystemTime>, Vec<(SystemTime, u64)>) {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let within = |t: &SystemTime| *t >= from && *t <= to;
        (
            log.crossings.iter().copied().filter(within).collect(),
            log.samples
                .iter()
                .copied()
                .filter(|(t, _)| within(t))
                .collect(),
        )
    }

    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the usage watcher panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for UsageWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_usage(
    efd: &OwnedFd,
    usage_path: &Path,
    stop: &AtomicBool,
    log: &Mutex<UsageLog>,
) -> Result<()> {
    // Wake at once when the threshold is crossed, ahead of every normal task on this
    // 2-CPU machine (the agent's notifier wakes on the same kernel check).
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 is the calling thread; `param` lives for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } != 0 {
        eprintln!(
            "bench pleg: the usage watcher runs without SCHED_FIFO ({}); onsets may be late",
            io::Error::last_os_error()
        );
    }
    let timeout = i32::try_from(USAGE_SAMPLE.as_millis()).unwrap_or(50);
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, timeout) };
        let now = SystemTime::now();
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("polling the usage-threshold eventfd");
        }
        let crossed = n > 0 && {
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
            let r = unsafe { libc::read(efd.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
            r == 8
        };
        let usage = fs::read_to_string(usage_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        if crossed {
            log.crossings.push(now);
        }
        if let Some(u) = usage {
            log.samples.push((SystemTime::now(), u));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(
    plan: &Plan,
    machine: &Machine,
    peer_versions: &str,
    sessions: &[Session],
    left_out: &[LeftOut],
    took: Duration,
) -> String {
    let mut report = String::new();
    if plan.quick {
        let _ = writeln!(
            report,
            "**{QUICK_ENV} was set: shortened run, not for comparison.**\n"
        );
    }
    let _ = writeln!(
        report,
        "{machine} Upstream peer on the same containerd: {peer_versions}. The whole run took \
         {:.1} min.\n",
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        report,
        "The kubelet runs standalone (static pods, read-only port on 127.0.0.1, cgroupfs, its \
         cgroup root below the bench's) with `enforceNodeAllocatable: [pods]` and a \
         `systemReserved` memory of MemTotal - {} MiB, so its kubepods cgroup has bpflet's \
         {} MiB limit (checked after it starts), and bpflet's `evictionHard: memory.available: \
         100Mi`, which also applies to kubepods as `allocatableMemory.available`. `kubelet` \
         and `kubelet-evented` keep upstream's eviction defaults (a 10 s loop reading fresh \
         cAdvisor stats, `kernelMemcgNotification: false`); `kubelet-memcg` sets \
         `kernelMemcgNotification: true` (a v1 usage-threshold eventfd on kubepods).\n",
        up::KUBEPODS_MEMORY >> 20,
        up::KUBEPODS_MEMORY >> 20,
    );
    for (variant, why) in left_out {
        let _ = writeln!(report, "**`{}` left out: {why}**\n", variant.name());
    }

    let pod_sessions: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.variant.measures_pods())
        .collect();
    let gets: Vec<f64> = pod_sessions
        .iter()
        .flat_map(|s| s.gets.iter().copied())
        .collect();
    let gets = Summary::of(&gets);
    let _ = writeln!(
        report,
        "### Container exit and OOM kill to status on `/pods`\n\nFrom the kernel's timestamp \
         (the trace's `exit` of the container's init, or its `oom_kill`) to the first `/pods` \
         answer showing the container terminated with its exit code (`OOMKilled(137)` for OOM \
         kills). Resolution: `/pods` polled every {} ms; one GET took p50 {}, max {} ms. The \
         PLEG event column: bpflet's `PLEG: container state changed` record, the kubelet's \
         `SyncLoop (PLEG): event for pod` record with `ContainerDied`.\n",
        EXIT_POLL.as_millis(),
        gets.map_or_else(|| "n/a".to_owned(), |g| format!("{:.1}", g.p50)),
        gets.map_or_else(|| "n/a".to_owned(), |g| format!("{:.1}", g.max)),
    );
    let mut pods = Table::new([
        "what",
        "PLEG",
        "events",
        "measured",
        "p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "min (ms)",
        "over 1 s",
        "-> PLEG event (log) p50 / p99 (ms)",
    ]);
    let mut notes = vec![];
    for (what, ooms) in [
        ("exit -> terminated(code)", false),
        ("OOM kill -> OOMKilled", true),
    ] {
        let mut summaries = vec![];
        for s in &pod_sessions {
            let samples = if ooms { &s.ooms } else { &s.exits };
            let lat: Vec<f64> = samples.iter().filter_map(|x| x.latency_ms).collect();
            let worker: Vec<f64> = samples.iter().filter_map(|x| x.pleg_ms).collect();
            notes.extend(samples.iter().filter_map(|x| x.note.clone()));
            let sum = Summary::of(&lat);
            pods.row([
                what.to_owned(),
                s.variant.name().to_owned(),
                samples.len().to_string(),
                lat.len().to_string(),
                fmt_opt(sum.map(|x| x.p50), 0),
                fmt_opt(sum.map(|x| x.p99), 0),
                fmt_opt(sum.map(|x| x.max), 0),
                fmt_opt(lat.iter().copied().reduce(f64::min), 0),
                lat.iter().filter(|&&v| v > 1000.0).count().to_string(),
                Summary::of(&worker).map_or_else(
                    || "n/a".to_owned(),
                    |w| format!("{:.0} / {:.0}", w.p50, w.p99),
                ),
            ]);
            summaries.push((s.variant, sum));
        }
        for (v, e, o) in ratios_to_event(&summaries) {
            let mut row = vec![
                what.to_owned(),
                format!("{} / event", v.name()),
                String::new(),
                String::new(),
                ratio(o.p50, e.p50),
                ratio(o.p99, e.p99),
                ratio(o.max, e.max),
            ];
            row.resize(10, String::new());
            pods.row(row);
        }
    }
    let _ = writeln!(report, "{pods}");
    if !notes.is_empty() {
        let _ = writeln!(report, "Not measured: {}.\n", notes.join("; "));
    }

    let _ = writeln!(
        report,
        "### Memory ramps: pressure onset to eviction decision, kernel OOM kills\n\n\
         {} ramps per variant. Onset: kubepods' usage crossing the eviction threshold (limit \
         minus 100 MiB), seen by the bench's own usage-threshold eventfd. Decision: bpflet's \
         `evicting pod` log record (its timestamp; `agent latency` is the agent's own \
         trigger-to-decision time, from that record); for the kubelet, its eviction manager's \
         record about the ramp's pod in its JSON log: `cannot evict a critical pod` (the \
         kubelet refuses to evict static pods, and standalone every pod is static, so its \
         decisions are refusals and its ramps end in the kernel OOM killer) or `pod is \
         evicted successfully`. A kubelet decision counts as `notifier` when its memcg \
         notifier fired between onset and decision, else `tick`. OOM kills: the trace's \
         `oom_kill` events in the pod tree during the ramp (the kernel's count, for every \
         agent); `/events` counts bpflet's OOM records of ramp pods (the standalone kubelet \
         records events nowhere).\n",
        plan.ramps
    );
    let mut ramps = Table::new([
        "variant",
        "eviction triggers",
        "ramps",
        "evicted before any kernel OOM kill",
        "decided but refused before it (static pod)",
        "ramps with a kernel OOM kill",
        "decisions after the OOM kill",
        "kernel OOM kills (other pods)",
        "OOM records on /events",
        "onset -> decision p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "agent latency p50 / max (ms)",
        "decisions by trigger (event: bpflet's kernel or notifier; notifier: the kubelet's memcg notifier; tick: 10 s)",
        "onset -> ramp killed p50 / max (ms)",
        "onset -> first kernel pressure event p50 (ms)",
        "growth p50 (MiB/s)",
    ]);
    let mut decision_summaries = vec![];
    let mut ends = vec![];
    for s in sessions {
        let r = &s.ramps;
        let decided: Vec<f64> = r.iter().filter_map(Ramp::onset_to_decision_ms).collect();
        let agent: Vec<f64> = r
            .iter()
            .filter_map(|x| x.won().and_then(|d| d.latency_ms))
            .collect();
        let killed: Vec<f64> = r
            .iter()
            .filter(|x| x.evicted())
            .filter_map(|x| x.killed_ms)
            .collect();
        let pressure: Vec<f64> = r.iter().filter_map(|x| x.pressure_ms).collect();
        let growth: Vec<f64> = r.iter().filter_map(|x| x.growth_mib_s).collect();
        let mut triggers: Vec<(String, usize)> = vec![];
        for d in r.iter().filter_map(Ramp::won) {
            // bpflet's `Kernel` is any trigger through its channel: a kernel event or the
            // usage notifier.
            let t = match d.trigger.as_str() {
                "Kernel" => "event",
                "Watch" => "event (watch)",
                "Notifier" => "notifier",
                "Periodic" => "tick",
                other => other,
            };
            match triggers.iter_mut().find(|(k, _)| k == t) {
                Some((_, n)) => *n += 1,
                None => triggers.push((t.to_owned(), 1)),
            }
        }
        let sum = Summary::of(&decided);
        let agent = Summary::of(&agent);
        let killed = Summary::of(&killed);
        ramps.row([
            s.variant.name().to_owned(),
            s.variant.triggers().to_owned(),
            r.len().to_string(),
            r.iter().filter(|x| x.evicted()).count().to_string(),
            r.iter()
                .filter(|x| x.won().is_some_and(|d| d.refused))
                .count()
                .to_string(),
            r.iter().filter(|x| x.oom_kills > 0).count().to_string(),
            r.iter()
                .filter(|x| x.decision.is_some() && x.won().is_none())
                .count()
                .to_string(),
            format!(
                "{} ({})",
                r.iter().map(|x| x.oom_kills).sum::<usize>(),
                r.iter().map(|x| x.other_oom_kills).sum::<usize>()
            ),
            s.api_ooms
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
            fmt_opt(sum.map(|x| x.p50), 0),
            fmt_opt(sum.map(|x| x.p99), 0),
            fmt_opt(sum.map(|x| x.max), 0),
            agent.map_or_else(
                || "n/a".to_owned(),
                |a| format!("{:.1} / {:.1}", a.p50, a.max),
            ),
            if triggers.is_empty() {
                "none".to_owned()
            } else {
                triggers
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            killed.map_or_else(
                || "n/a".to_owned(),
                |k| format!("{:.0} / {:.0}", k.p50, k.max),
            ),
            fmt_opt(Summary::of(&pressure).map(|x| x.p50), 0),
            fmt_opt(Summary::of(&growth).map(|x| x.p50), 0),
        ]);
        decision_summaries.push((s.variant, sum));
        let missing_onset = r.iter().filter(|x| x.onset.is_none()).count();
        if missing_onset > 0 {
            notes.push(format!(
                "{}: {missing_onset} ramp(s) without a threshold crossing",
                s.variant.name()
            ));
        }
        ends.push(format!(
            "{}: {}",
            s.variant.name(),
            r.iter()
                .map(|x| x.end.clone())
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    for (v, e, o) in ratios_to_event(&decision_summaries) {
        let mut row = vec![format!("{} / event", v.name())];
        row.resize(9, String::new());
        row.extend([
            ratio(o.p50, e.p50),
            ratio(o.p99, e.p99),
            ratio(o.max, e.max),
        ]);
        row.resize(17, String::new());
        ramps.row(row);
    }
    let _ = writeln!(report, "{ramps}");
    for s in sessions {
        if let Some(hurt) = &s.companions_hurt {
            let _ = writeln!(
                report,
                "**{}: the Guaranteed or Burstable pod did not stay up: {hurt}**\n",
                s.variant.name()
            );
        }
        if s.lost > 0 {
            let _ = writeln!(
                report,
                "**{}: the trace lost {} events.**\n",
                s.variant.name(),
                s.lost
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(report, "Notes: {}.\n", notes.join("; "));
    }
    let _ = writeln!(
        report,
        "<details><summary>How each ramp's pod ended</summary>\n\n{}\n\n</details>\n",
        ends.join("\n\n")
    );
    report
}

/// For each variant but `event` with a summary: it, `event`'s summary and its own.
fn ratios_to_event(summaries: &[(Variant, Option<Summary>)]) -> Vec<(Variant, Summary, Summary)> {
    let Some(event) = summaries
        .iter()
        .find(|(v, _)| *v == Variant::Event)
        .and_then(|(_, s)| *s)
    else {
        return vec![];
    };
    summaries
        .iter()
        .filter(|(v, _)| *v != Variant::Event)
        .filter_map(|(v, s)| Some((*v, event, (*s)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// The records the bench reads, as the agent writes them with `--log-format json`.
    const LOG: &str = r#"{"timestamp":"2026-11-23T20:01:00.000001Z","level":"INFO","fields":{"message":"memory threshold notifier armed","cgroup":"/sys/fs/cgroup/memory/x/kubepods","usage_threshold":429916160},"target":"bpflet::agent"}
{"timestamp":"2026-11-23T20:01:02.100000Z","level":"INFO","fields":{"message":"PLEG: container state changed","pod":"exit-ev-01-benchnode_default(u1)","container":"c","id":"abc","state":"Running","trigger":"kernel","waited":"1.2ms"},"target":"bpflet::pods::worker"}
{"timestamp":"2026-11-23T20:01:02.200000Z","level":"INFO","fields":{"message":"PLEG: container state changed","pod":"exit-ev-01-benchnode_default(u1)","container":"c","id":"abc","state":"Exited","exit_code":"Some(7)","trigger":"kernel","waited":"1.2ms"},"target":"bpflet::pods::worker"}
{"timestamp":"2026-11-23T20:01:02.500000Z","level":"INFO","fields":{"message":"evicting pod","pod":"ramp-ev-01-benchnode_default(1)","signal":"x","grace":"0ns","latency":"Some(3ms)"},"target":"bpflet::pods::worker"}
{"timestamp":"2026-11-23T20:01:02.400000Z","level":"INFO","fields":{"message":"evicting pod","pod":"default/ramp-ev-01-benchnode","pod_uid":"abc","signal":"allocatableMemory.available","grace":"0ns","trigger":"Kernel","latency":"Some(2.5ms)","latency_us":2500,"eviction_message":"The node was low"},"target":"bpflet::eviction::manager"}
{"timestamp":"2026-11-23T20:01:03Z","level":"INFO","fields":{"message":"evicting pod","pod":"default/ramp-ev-02-benchnode","pod_uid":"abd","signal":"allocatableMemory.available","grace":"0ns","eviction_message":"The node was low"},"target":"bpflet::eviction::manager"}
"#;

    #[test]
    fn eviction_records_parse() {
        let log = agent_log::parse(LOG);
        let d = eviction_logged(&log, "ramp-ev-01").unwrap();
        assert_eq!(d.trigger, "Kernel");
        assert!((d.latency_ms.unwrap() - 2.5).abs() < 1e-9, "{d:?}");
        assert_eq!(d.at, UNIX_EPOCH + Duration::new(1_795_464_062, 400_000_000));
        // A decision without a trigger or a latency still counts, without them.
        let d = eviction_logged(&log, "ramp-ev-02").unwrap();
        assert_eq!((d.trigger.as_str(), d.latency_ms), ("", None));
        assert_eq!(eviction_logged(&log, "ramp-ev-0"), None);
        assert_eq!(eviction_logged(&log, "ramp-ev-1"), None);
    }

    #[test]
    fn pleg_exit_records_parse() {
        let log = agent_log::parse(LOG);
        assert_eq!(
            pleg_event_logged(&log, "exit-ev-01"),
            Some(UNIX_EPOCH + Duration::new(1_795_464_062, 200_000_000))
        );
        assert_eq!(pleg_event_logged(&log, "exit-ev-0"), None);
        assert_eq!(pleg_event_logged(&log, "ramp-ev-01"), None);
    }

    #[test]
    fn notifier_records_parse() {
        assert_eq!(notifier_logged(&agent_log::parse(LOG)), (true, false));
        let disabled = agent_log::parse(
            r#"{"timestamp":"2026-11-23T20:01:00Z","level":"WARN","fields":{"message":"BPFLET_DISABLE_MEMCG_NOTIFIER=1: no memory threshold notifier; eviction relies on pressure events and the periodic check"},"target":"bpflet::agent"}"#,
        );
        assert_eq!(notifier_logged(&disabled), (false, true));
        assert_eq!(notifier_logged(&[]), (false, false));
    }

    #[test]
    fn the_trace_source_is_read_from_its_start_record() {
        let log = agent_log::parse(
            r#"{"timestamp":"2026-11-23T20:01:00Z","level":"INFO","fields":{"message":"tracing","source":"Bpf"},"target":"bpflet::trace"}"#,
        );
        assert_eq!(agent_log::tracing_source(&log), Some("Bpf"));
        assert_eq!(agent_log::tracing_source(&[]), None);
    }

    #[test]
    fn trace_lines_parse() {
        let e = TraceEvent::parse(
            r#"{"ts":"2026-11-23T20:01:02.123456789Z","kind":"exit","source":"bpf","pid":7,"comm":"sh","cgroup":"/x","pod_uid":"u1","container_id":"c","exit_code":42}"#,
        )
        .unwrap();
        assert_eq!(e.kind, "exit");
        assert_eq!(e.exit_code, Some(42));
        assert_eq!(e.signal, None);
        assert_eq!(e.pod_uid.as_deref(), Some("u1"));
        assert_eq!(e.ts, UNIX_EPOCH + Duration::new(1_795_464_062, 123_456_789));
        let lost = TraceEvent::parse(
            r#"{"ts":"2026-11-23T20:01:02Z","kind":"events_lost","pid":0,"comm":"","cgroup":"","lost_kernel":3,"lost_userspace":4}"#,
        )
        .unwrap();
        assert_eq!(lost.lost, 7);
        assert_eq!(TraceEvent::parse("not json"), None);
    }

    #[test]
    fn growth_is_over_the_second_before_onset() {
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let usage: Vec<(SystemTime, u64)> = (0..40)
            .map(|i| (t0 + Duration::from_millis(50 * i), (40 << 20) * i / 20))
            .collect();
        let g = growth(&usage, t0 + Duration::from_secs(2)).unwrap();
        assert!((g - 40.0).abs() < 0.5, "{g}");
        assert_eq!(growth(&usage[..1], t0), None);
    }

    #[test]
    fn manifests_quote_the_command() {
        let m = manifest("exit-ev-00", "Never", "sleep 2.50; exit 7", "");
        assert!(
            m.contains("command: [sh, -c, \"sleep 2.50; exit 7\"]"),
            "{m}"
        );
        assert!(
            m.contains("restartPolicy: Never") && m.contains("hostNetwork: true"),
            "{m}"
        );
        let m = manifest(
            "r",
            "Never",
            r#"awk 'BEGIN { a = sprintf("%4s", "") }'"#,
            "",
        );
        assert!(
            m.contains(r#""awk 'BEGIN { a = sprintf(\"%4s\", \"\") }'""#),
            "{m}"
        );
    }

    #[test]
    fn ms_between_is_signed() {
        let t = UNIX_EPOCH + Duration::from_secs(10);
        assert!((ms_between(t, t + Duration::from_millis(5)) - 5.0).abs() < 1e-9);
        assert!((ms_between(t + Duration::from_millis(5), t) + 5.0).abs() < 1e-9);
    }
}
