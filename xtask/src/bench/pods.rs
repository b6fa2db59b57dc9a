//! `cargo xtask bench pods`: how fast static pods start, and what idle pods cost, with the
//! release agent and with the upstream kubelet, on one real private containerd 2.
//!
//! One private containerd 2 (`.work/bench-pods/containerd`, the peer's v2.2 and runc from
//! `cargo xtask build-peer`) serves every column of the run, in [`COLUMNS`]' order: bpflet
//! with the `event` PLEG, bpflet `generic`, the upstream `kubelet` (generic PLEG), and
//! `kubelet-evented` (feature gate `EventedPLEG`; left out, with the reason in the report,
//! when the kubelet does not get a CRI event stream from containerd). Each agent starts
//! afresh on the same static pod directory, node name and read-only port: bpflet with
//! `cargo xtask up`'s config, the kubelet standalone as `bench::peer` sets it up. Each gets
//! a cgroup root of its own and the same limits: `kubepods` limited to 512 MiB through
//! `enforceNodeAllocatable: [pods]` and `systemReserved.memory = MemTotal - 512 MiB` in both
//! configs, `evictionHard: memory.available: 100Mi` in both (the report shows each
//! column's kubepods limit as read from the cgroup). Then:
//! 1. manifest-to-running latency: a manifest is renamed into the static pod directory and
//!    `/pods` is polled every [`POLL`] until the pod is `Running` with every container
//!    running; one pod at a time ([`Plan::single_reps`] times), then [`Plan::batch_size`]
//!    manifests written at once ([`Plan::batch_reps`] times). Each pod is removed again and
//!    waited for until `/pods` no longer lists it and containerd has no ready sandbox.
//! 2. idle cost: [`Plan::idle_counts`] pods running `sleep`, all `Running`, then the CPU time
//!    and RSS of the agent and of containerd over the same [`Plan::window`] in every
//!    column, nothing polling but the resource-metrics scrape ([`Plan::resource_scrape_every`],
//!    on in a column whose agent answers `/metrics/resource` with 200).
//! 3. stats endpoints (issue 14), right after each idle window at the same pod count: where
//!    the scrape is on, a second window of the same length with nothing polling at all, so
//!    the scrape's own CPU cost shows (agent CPU with it minus without it); then
//!    [`Plan::stats_fetches`] rounds, one every [`STATS_FETCH_EVERY`], each a `GET` of
//!    [`STATS_ENDPOINTS`] (`/stats/summary`, `/metrics/resource`) on the read-only port, timed
//!    from connect to the last byte (HTTP/1.0, the body read whole): latency p50/p99/max, the
//!    body's size and the failures (no answer or not 200), in every column.
//!
//! Besides the Markdown report (`target/bench/pods.md`) the numbers are written as JSON
//! (`target/bench/pods.json`, [`to_json`]) for whatever reads them next.
//!
//! Every pod is a host-network busybox `sleep 3600` with tiny requests (Burstable).
//! Whatever happens (a failed step, Ctrl-C), the agent is stopped and `up`'s teardown removes
//! every pod, containerd, the cgroup tree (the kubelets' roots are below the node's) and the
//! mounts, and checks that nothing is left.
//!
//! `BPFLET_BENCH_QUICK=1` shortens every step: for trying the bench, not for numbers.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::time::ClockId;
use nix::unistd::Pid;
use xtask::agent::{self, Agent, AgentSpec};
use xtask::containerd::{self, Binaries, PrivateContainerd};
use xtask::images::BUSYBOX_IMAGE;

use super::Ctx;
use super::agent_log::{self, LogRecord};
use super::peer::{self, BenchKubelet, BenchKubeletSpec, Switches};
use super::util::{ProcSnapshot, ProcUsage, Summary, Table, fmt_opt, ratio, repeat};
use crate::up::{self, ConfigParams, PlegMode, PodView};
use crate::{is_root, output, workspace_root};

/// How often `/pods` is polled while waiting: the resolution of every latency.
const POLL: Duration = Duration::from_millis(20);
/// How often CPU time and RSS are read during an idle window.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Pause between "all Running" and an idle window, so start-up work has finished.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// Upper bounds for waits; never timing claims.
pub(crate) const RUNNING_TIMEOUT: Duration = Duration::from_secs(300);
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);
/// The node name the agent gets (pods are named `<manifest name>-<node>`).
pub(crate) const NODE: &str = "benchnode";
/// This bench's CNI bridge and subnet: apart from `up`'s and the tests'. Host-network pods
/// never create the bridge.
const BRIDGE: &str = "bpflet-bench0";
const SUBNET: &str = "10.90.0.0/16";
pub(crate) const QUICK_ENV: &str = "BPFLET_BENCH_QUICK";
/// metrics-server's default `--metric-resolution`.
const RESOURCE_SCRAPE_EVERY: Duration = Duration::from_secs(15);
const RESOURCE_METRICS: &str = "/metrics/resource";
/// What the stats phase fetches after each idle window, in this order each round.
const STATS_ENDPOINTS: [&str; 2] = ["/stats/summary", RESOURCE_METRICS];
/// One round of [`STATS_ENDPOINTS`] every this long.
const STATS_FETCH_EVERY: Duration = Duration::from_secs(1);

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    single_reps: usize,
    batch_size: usize,
    batch_reps: usize,
    idle_counts: Vec<usize>,
    window: Duration,
    /// During each idle window, `/metrics/resource` is fetched this often (metrics-server's
    /// default resolution), in every column whose agent answers it with 200.
    resource_scrape_every: Option<Duration>,
    /// Rounds of [`STATS_ENDPOINTS`] fetched after each idle window.
    stats_fetches: usize,
    quick: bool,
}

impl Plan {
    fn from_env() -> Self {
        if quick_mode() {
            Self {
                single_reps: 3,
                batch_size: 5,
                batch_reps: 1,
                idle_counts: vec![5, 10],
                window: Duration::from_secs(10),
                resource_scrape_every: Some(RESOURCE_SCRAPE_EVERY),
                stats_fetches: 10,
                quick: true,
            }
        } else {
            Self {
                single_reps: 10,
                batch_size: 20,
                batch_reps: 3,
                idle_counts: vec![50, 110],
                window: Duration::from_secs(60),
                resource_scrape_every: Some(RESOURCE_SCRAPE_EVERY),
                stats_fetches: 100,
                quick: false,
            }
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask bench pods` needs root (BPF, cgroups, containerd)"
    );
    peer::require_built()?;
    let plan = Plan::from_env();
    let binaries = Binaries::containerd2();
    let machine = Machine::read_with(&binaries.tool("containerd")?)?;
    let versions = peer::versions()?;
    on_bench_node_with(ctx, "pods", BRIDGE, SUBNET, binaries, |node, ctd| {
        let (report, json, stop_problems) = measure(&plan, &machine, &versions, node, ctd)?;
        println!("{report}");
        let path = ctx.save("pods", &report)?;
        eprintln!("saved {}", path.display());
        let path = ctx.save_json("pods", &json)?;
        eprintln!("saved {}", path.display());
        // The numbers stand; what a kubelet left on the machine still fails the bench.
        ensure!(
            stop_problems.is_empty(),
            "stopping the kubelet(s) left problems:\n{}",
            stop_problems.join("\n")
        );
        Ok(())
    })
}

/// Which PLEG a kubelet column runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KubeletPleg {
    /// Upstream's default: relist every second.
    Generic,
    /// Feature gate `EventedPLEG` (alpha): CRI container events, relist every 300 s.
    Evented,
}

impl KubeletPleg {
    /// The column's name in bench reports.
    fn column(self) -> &'static str {
        match self {
            KubeletPleg::Generic => "kubelet",
            KubeletPleg::Evented => "kubelet-evented",
        }
    }

    fn switches(self) -> Switches {
        match self {
            KubeletPleg::Generic => Switches::GENERIC,
            KubeletPleg::Evented => Switches::EVENTED,
        }
    }
}

/// Who manages the pods in a column of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Bpflet(PlegMode),
    Kubelet(KubeletPleg),
}

/// Every column, in the order they run.
const COLUMNS: [Column; 4] = [
    Column::Bpflet(PlegMode::Event),
    Column::Bpflet(PlegMode::Generic),
    Column::Kubelet(KubeletPleg::Generic),
    Column::Kubelet(KubeletPleg::Evented),
];

/// The column every ratio divides by.
const BASE: Column = Column::Bpflet(PlegMode::Event);

impl Node {
    /// The cgroup root `column`'s agent runs under.
    fn column_cgroup_root(&self, column: Column) -> String {
        match column {
            Column::Bpflet(_) => self.cgroup_root.clone(),
            Column::Kubelet(pleg) => peer::cgroup_root_for(&self.cgroup_root, pleg.column()),
        }
    }
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Bpflet(mode) => mode.as_str(),
            Column::Kubelet(pleg) => pleg.column(),
        }
    }
}

/// One column's latencies: per scenario, the summary of its samples.
struct LatencyRow {
    scenario: String,
    running: Summary,
    seen: Option<Summary>,
    gets: Summary,
}

/// Everything one column measured.
struct ColumnResult {
    column: Column,
    latency: Vec<LatencyRow>,
    idle: Vec<IdleRow>,
    kubepods_limit: Option<u64>,
    scrape: Scrape,
}

/// Every measurement, as the Markdown report and as JSON, and the problems met stopping a
/// kubelet after its column was measured (its teardown: mounts, directories it made).
fn measure(
    plan: &Plan,
    machine: &Machine,
    versions: &str,
    node: &mut Node,
    ctd: &PrivateContainerd,
) -> Result<(String, serde_json::Value, Vec<String>)> {
    let ctd_pid = ctd.pid().context("containerd is not running")?;
    let mut results: Vec<ColumnResult> = vec![];
    let mut left_out: Vec<(Column, String)> = vec![];
    let mut stop_problems = vec![];
    // GET /pods while waiting for pods to run or go (each agent's responsiveness).
    for column in COLUMNS {
        let started = match column {
            Column::Bpflet(mode) => node.start_agent(mode, ctd),
            Column::Kubelet(pleg) => node.start_kubelet(pleg, ctd),
        };
        if let Err(e) = started {
            node.stop_agent();
            if column == Column::Kubelet(KubeletPleg::Evented) {
                eprintln!("bench pods: leaving the kubelet-evented column out: {e:#}");
                left_out.push((column, format!("{e:#}")));
                continue;
            }
            return Err(e);
        }
        let result = measure_column(plan, node, column, ctd, ctd_pid);
        // An evented kubelet that fell back to relisting measured the generic PLEG.
        let fell_back = match (&result, &node.kubelet, column) {
            (Ok(_), Some(k), Column::Kubelet(KubeletPleg::Evented)) => k.check_evented().err(),
            _ => None,
        };
        let stopped = node.stop_kubelet();
        node.stop_agent();
        let result = result?;
        if let Err(e) = stopped {
            eprintln!("bench pods: {e:#}");
            stop_problems.push(format!("{} column: {e:#}", column.name()));
        }
        if let Some(e) = fell_back {
            eprintln!("bench pods: leaving the kubelet-evented column out: {e}");
            left_out.push((column, e));
            continue;
        }
        results.push(result);
    }
    Ok((
        render(plan, machine, versions, &results, &left_out),
        to_json(plan, machine, versions, &results, &left_out),
        stop_problems,
    ))
}

/// The latency and idle phases of one column, whose agent runs.
fn measure_column(
    plan: &Plan,
    node: &mut Node,
    column: Column,
    ctd: &PrivateContainerd,
    ctd_pid: u32,
) -> Result<ColumnResult> {
    let name = column.name();
    let gets_before = node.get_ms.len();
    let single = repeat(
        &format!("bench pods: {name}, 1 pod, run"),
        plan.single_reps,
        |i| node.start_and_remove(&[format!("lat1-{name}-{i}")], ctd),
    )?;
    let single_gets = node.get_ms.split_off(gets_before);
    // The agent made its kubepods cgroup before the first pod ran.
    let kubepods_limit = peer::kubepods_memory_limit(&node.column_cgroup_root(column))?;
    let batch = repeat(
        &format!("bench pods: {name}, {} pods at once, run", plan.batch_size),
        plan.batch_reps,
        |r| {
            let names: Vec<String> = (0..plan.batch_size)
                .map(|j| format!("lat{}-{name}-r{r}-{j:02}", plan.batch_size))
                .collect();
            node.start_and_remove(&names, ctd)
        },
    )?;
    let batch_gets = node.get_ms.split_off(gets_before);
    let mut latency = vec![];
    for (scenario, samples, gets) in [
        (
            format!("1 pod, {} runs", plan.single_reps),
            &single,
            &single_gets,
        ),
        (
            format!(
                "{} pods written at once, {} runs",
                plan.batch_size, plan.batch_reps
            ),
            &batch,
            &batch_gets,
        ),
    ] {
        let running: Vec<f64> = samples.iter().map(|l| l.running_ms).collect();
        let seen: Vec<f64> = samples.iter().filter_map(|l| l.seen_ms).collect();
        latency.push(LatencyRow {
            scenario,
            running: Summary::of(&running).context("no latency samples")?,
            seen: Summary::of(&seen),
            gets: Summary::of(gets).context("no GET /pods was timed")?,
        });
    }

    let scrape = match plan.resource_scrape_every {
        Some(every) => Scrape::probe(node.port, every),
        None => Scrape::Off("not asked for".to_owned()),
    };
    let idle = node.idle(column, plan, &scrape, ctd, ctd_pid)?;
    Ok(ColumnResult {
        column,
        latency,
        idle,
        kubepods_limit,
        scrape,
    })
}

/// The Markdown report.
fn render(
    plan: &Plan,
    machine: &Machine,
    versions: &str,
    results: &[ColumnResult],
    left_out: &[(Column, String)],
) -> String {
    let mut latency = Table::new([
        "column",
        "scenario",
        "pods measured",
        "p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "manifest seen (log) p50 / max (ms)",
        "GET /pods p50 (ms)",
        "GET /pods max (ms)",
    ]);
    let base = results.iter().find(|r| r.column == BASE);
    let mut all_gets = vec![];
    for r in results {
        for l in &r.latency {
            latency.row([
                r.column.name().to_owned(),
                l.scenario.clone(),
                l.running.n.to_string(),
                format!("{:.0}", l.running.p50),
                format!("{:.0}", l.running.p99),
                format!("{:.0}", l.running.max),
                l.seen.map_or_else(
                    || "-".to_owned(),
                    |v| format!("{:.0} / {:.0}", v.p50, v.max),
                ),
                format!("{:.1}", l.gets.p50),
                format!("{:.1}", l.gets.max),
            ]);
            all_gets.push(l.gets);
        }
    }
    for r in results.iter().filter(|r| r.column != BASE) {
        let Some(base) = base else { break };
        for (l, b) in r.latency.iter().zip(&base.latency) {
            latency.row([
                format!("{} / {}", r.column.name(), BASE.name()),
                l.scenario.clone(),
                String::new(),
                ratio(l.running.p50, b.running.p50),
                ratio(l.running.p99, b.running.p99),
                ratio(l.running.max, b.running.max),
            ]);
        }
    }

    let mut idle = Table::new([
        "pods",
        "column",
        "agent CPU %",
        "containerd CPU %",
        "agent + containerd CPU %",
        "agent RSS max (MiB)",
        "containerd RSS max (MiB)",
        "all Running after (s)",
        "/metrics/resource scrapes (failed)",
    ]);
    let counts: Vec<usize> = plan.idle_counts.clone();
    for (i, count) in counts.iter().enumerate() {
        for r in results {
            let Some(row) = r.idle.get(i) else { continue };
            idle.row([
                row.pods.to_string(),
                r.column.name().to_owned(),
                format!("{:.2}", row.agent.cpu_percent),
                format!("{:.2}", row.containerd.cpu_percent),
                format!("{:.2}", row.total_cpu()),
                format!("{:.1}", mib(row.agent.rss_max_bytes)),
                format!("{:.1}", mib(row.containerd.rss_max_bytes)),
                format!("{:.1}", row.startup.as_secs_f64()),
                match &r.scrape {
                    Scrape::On(_) => format!("{} ({})", row.scrapes.ok, row.scrapes.failed),
                    Scrape::Off(_) => "off".to_owned(),
                },
            ]);
        }
        let base_row = base.and_then(|b| b.idle.get(i));
        for r in results.iter().filter(|r| r.column != BASE) {
            let (Some(b), Some(row)) = (base_row, r.idle.get(i)) else {
                continue;
            };
            idle.row([
                count.to_string(),
                format!("{} / {}", r.column.name(), BASE.name()),
                ratio(row.agent.cpu_percent, b.agent.cpu_percent),
                ratio(row.containerd.cpu_percent, b.containerd.cpu_percent),
                ratio(row.total_cpu(), b.total_cpu()),
                ratio(mib(row.agent.rss_max_bytes), mib(b.agent.rss_max_bytes)),
                ratio(
                    mib(row.containerd.rss_max_bytes),
                    mib(b.containerd.rss_max_bytes),
                ),
            ]);
        }
        if let Some(alone) = base_row.and_then(|b| b.containerd_alone.as_ref()) {
            idle.row([
                count.to_string(),
                "none (bpflet stopped)".to_owned(),
                "0".to_owned(),
                format!("{:.2}", alone.cpu_percent),
                format!("{:.2}", alone.cpu_percent),
                String::new(),
                format!("{:.1}", mib(alone.rss_max_bytes)),
            ]);
        }
    }

    let stats = stats_table(&counts, results);

    let mut report = String::new();
    if plan.quick {
        let _ = writeln!(
            report,
            "**{QUICK_ENV} was set: shortened run, not for comparison.**\n"
        );
    }
    let _ = writeln!(report, "{machine}\n");
    let _ = writeln!(report, "Peer: {versions}.\n");
    let columns: Vec<&str> = results.iter().map(|r| r.column.name()).collect();
    let _ = writeln!(report, "Columns measured: {}.", columns.join(", "));
    for (column, why) in left_out {
        let _ = writeln!(report, "Column `{}` left out: {why}", column.name());
    }
    let limits: Vec<(String, Option<u64>)> = results
        .iter()
        .map(|r| (r.column.name().to_owned(), r.kubepods_limit))
        .collect();
    let _ = writeln!(
        report,
        "\nkubepods memory limit as read from the cgroup: {}.",
        peer::describe_limits(&limits)
    );
    let _ = writeln!(
        report,
        "{}\n",
        Scrape::describe(
            plan.resource_scrape_every,
            &results
                .iter()
                .map(|r| (r.column.name(), &r.scrape))
                .collect::<Vec<_>>()
        )
    );
    let gets: Vec<f64> = all_gets.iter().map(|s| s.p50).collect();
    let _ = writeln!(
        report,
        "### Manifest to Running\n\nResolution: `/pods` polled every {} ms; one GET took p50 \
         {} ms across the scenarios (per scenario in the last two columns). A latency is the \
         time from the manifest's rename into the static pod directory to the first answer \
         showing the pod `Running` with every container running. The `manifest seen` column \
         is the part of it before the agent logged the pod: bpflet's `new pod` record, the \
         kubelet's `SyncLoop ADD` record (its file source handing the pod to the sync loop), \
         from the timestamps of their JSON logs.\n\n{latency}",
        POLL.as_millis(),
        fmt_opt(Summary::of(&gets).map(|s| s.p50), 1),
    );
    let _ = writeln!(report, "### Idle cost\n\n{idle}");
    let _ = writeln!(
        report,
        "### Stats endpoints\n\nAfter each idle window: agent CPU % over the window with the \
         resource-metrics scrape (as above) and over a second window of the same length with \
         nothing polling (`-` where the scrape is off: the first window had none); then {} \
         rounds, one every {} s, each a GET of {} on the read-only port, timed from connect to \
         the body's last byte; latencies of the answers with status 200, the largest body, \
         and the fetches that got no answer or another status.\n\n{stats}",
        plan.stats_fetches,
        STATS_FETCH_EVERY.as_secs(),
        STATS_ENDPOINTS
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" then "),
    );
    let _ = writeln!(report, "{}", targets(results, &counts));
    let _ = writeln!(
        report,
        "How measured: one private containerd 2 ({}) with runc serves every column in one \
         run, in the order {}. Each agent starts afresh on the same static pod directory, \
         node name `{NODE}` (pods are `<manifest>-{NODE}`) and read-only port on 127.0.0.1: \
         bpflet with `cargo xtask up`'s config, the kubelet standalone (`xtask::peer::Kubelet`, \
         see `xtask/src/bench/peer.rs`). Each has its own cgroup root (`kubepods` below it) \
         with `enforceNodeAllocatable: [pods]` and `systemReserved.memory = MemTotal - 512 \
         MiB`, so kubepods is limited to 512 MiB for each, and `evictionHard: \
         memory.available: 100Mi`; `fileCheckFrequency` is 20 s for both (the upstream \
         default; both also watch the directory with inotify). Pods are host-network busybox \
         `sleep 3600` with requests of 1m CPU and 2Mi memory. Latency: manifests are written \
         to a staging directory and renamed into the static pod directory, then `/pods` is \
         polled every {} ms; after each run the manifests are removed, and the next run \
         starts once `/pods` no longer lists the pods and containerd has no ready sandbox \
         left (the kubelet drops a removed static pod from `/pods` before its containers are \
         stopped). Idle: {} pods are started, all reach `Running`, then after {} s the CPU \
         time (the process's CPU clock, `clock_getcpuclockid`: every thread, in ns) and the \
         largest RSS (`VmRSS`, read every {} s) of the agent and of containerd are taken over \
         the same {} s window in every column, with nothing polling the agent but the \
         resource-metrics scrape where it is on; then {} more pods are added and the window \
         repeated. In the {} run, a last window measures containerd alone with the same pods \
         while bpflet is stopped (SIGSTOP): the runtime's own idle floor. The kernel time of \
         the event PLEG's BPF programs runs in other processes' context and is not in \
         bpflet's CPU % (see the trace bench for its cost per event).",
        machine.containerd,
        columns.join(", "),
        POLL.as_millis(),
        plan.idle_counts.first().copied().unwrap_or_default(),
        SETTLE.as_secs(),
        SAMPLE_EVERY.as_secs(),
        plan.window.as_secs(),
        plan.idle_counts
            .windows(2)
            .map(|w| (w[1] - w[0]).to_string())
            .collect::<Vec<_>>()
            .join(", then "),
        BASE.name(),
    );
    report
}

/// The stats-endpoint table: per pod count, each column's CPU with and without the scrape
/// and each endpoint's latency, size and failures; then each column's ratio to [`BASE`].
fn stats_table(counts: &[usize], results: &[ColumnResult]) -> Table {
    let mut headers = vec![
        "pods".to_owned(),
        "column".to_owned(),
        "agent CPU % (scrape)".to_owned(),
        "agent CPU % (no scrape)".to_owned(),
        "scrape's cost (CPU %)".to_owned(),
    ];
    for path in STATS_ENDPOINTS {
        headers.extend([
            format!("`{path}` p50 / p99 (ms)"),
            format!("`{path}` KiB"),
            format!("`{path}` failed"),
        ]);
    }
    let mut table = Table::new(headers);
    let base = results.iter().find(|r| r.column == BASE);
    for (i, count) in counts.iter().enumerate() {
        for r in results {
            let Some(row) = r.idle.get(i) else { continue };
            let mut cells = vec![
                count.to_string(),
                r.column.name().to_owned(),
                format!("{:.2}", row.agent.cpu_percent),
                row.unscraped
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |u| format!("{:.2}", u.cpu_percent)),
                row.unscraped.as_ref().map_or_else(
                    || "-".to_owned(),
                    |u| format!("{:+.2}", row.agent.cpu_percent - u.cpu_percent),
                ),
            ];
            for path in STATS_ENDPOINTS {
                let e = row.endpoint(path);
                let latency = e.and_then(|e| e.latency_ms);
                cells.extend([
                    latency.map_or_else(
                        || "-".to_owned(),
                        |l| format!("{:.1} / {:.1}", l.p50, l.p99),
                    ),
                    fmt_opt(e.and_then(|e| e.body_bytes).map(|b| b as f64 / 1024.0), 1),
                    e.map_or_else(|| "-".to_owned(), |e| e.failed.to_string()),
                ]);
            }
            table.row(cells);
        }
        let Some(b) = base.and_then(|b| b.idle.get(i)) else {
            continue;
        };
        for r in results.iter().filter(|r| r.column != BASE) {
            let Some(row) = r.idle.get(i) else { continue };
            let mut cells = vec![
                count.to_string(),
                format!("{} / {}", r.column.name(), BASE.name()),
                ratio(row.agent.cpu_percent, b.agent.cpu_percent),
                ratio(row.agent_cpu_unscraped(), b.agent_cpu_unscraped()),
                String::new(),
            ];
            for path in STATS_ENDPOINTS {
                let l = row.endpoint(path).and_then(|e| e.latency_ms);
                let bl = b.endpoint(path).and_then(|e| e.latency_ms);
                let bytes = |row: &IdleRow| {
                    row.endpoint(path)
                        .and_then(|e| e.body_bytes)
                        .map(|b| b as f64)
                };
                cells.extend([
                    match (l, bl) {
                        (Some(l), Some(bl)) => {
                            format!("{} / {}", ratio(l.p50, bl.p50), ratio(l.p99, bl.p99))
                        }
                        _ => "-".to_owned(),
                    },
                    match (bytes(row), bytes(b)) {
                        (Some(x), Some(y)) => ratio(x, y),
                        _ => "-".to_owned(),
                    },
                    String::new(),
                ]);
            }
            table.row(cells);
        }
    }
    table
}

/// The numbers of the report as JSON: `{"quick", "machine", "peer", "columns": [{"column",
/// "kubepods_limit_bytes", "scrape", "latency": [...], "idle": [{"pods", "agent", "containerd",
/// "containerd_alone", "agent_unscraped", "scrapes", "endpoints": [...]}]}], "left_out"}`;
/// CPU in percent of one core, durations in ms, sizes in bytes.
fn to_json(
    plan: &Plan,
    machine: &Machine,
    versions: &str,
    results: &[ColumnResult],
    left_out: &[(Column, String)],
) -> serde_json::Value {
    use serde_json::json;
    let summary = |s: &Summary| json!({"n": s.n, "mean": s.mean, "p50": s.p50, "p90": s.p90, "p99": s.p99, "max": s.max});
    let usage = |u: &ProcUsage| {
        json!({
            "wall_ms": u.wall.as_secs_f64() * 1e3,
            "cpu_seconds": u.cpu_seconds,
            "cpu_percent": u.cpu_percent,
            "rss_max_bytes": u.rss_max_bytes,
        })
    };
    let columns: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            json!({
                "column": r.column.name(),
                "kubepods_limit_bytes": r.kubepods_limit,
                "scrape": match &r.scrape {
                    Scrape::On(every) => json!({"on": true, "every_s": every.as_secs()}),
                    Scrape::Off(why) => json!({"on": false, "why": why}),
                },
                "latency": r.latency.iter().map(|l| json!({
                    "scenario": l.scenario,
                    "running_ms": summary(&l.running),
                    "seen_ms": l.seen.as_ref().map(summary),
                    "get_pods_ms": summary(&l.gets),
                })).collect::<Vec<_>>(),
                "idle": r.idle.iter().map(|row| json!({
                    "pods": row.pods,
                    "all_running_after_s": row.startup.as_secs_f64(),
                    "agent": usage(&row.agent),
                    "containerd": usage(&row.containerd),
                    "containerd_alone": row.containerd_alone.as_ref().map(usage),
                    "agent_unscraped": row.unscraped.as_ref().map(usage),
                    "scrapes": {"ok": row.scrapes.ok, "failed": row.scrapes.failed},
                    "endpoints": row.endpoints.iter().map(|e| json!({
                        "path": e.path,
                        "latency_ms": e.latency_ms.as_ref().map(summary),
                        "body_bytes": e.body_bytes,
                        "failed": e.failed,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "quick": plan.quick,
        "machine": machine.to_string(),
        "peer": versions,
        "window_s": plan.window.as_secs(),
        "stats_fetches": plan.stats_fetches,
        "columns": columns,
        "left_out": left_out
            .iter()
            .map(|(c, why)| json!({"column": c.name(), "why": why}))
            .collect::<Vec<_>>(),
    })
}

/// The issue's targets at the largest pod count, each a ratio of this run.
fn targets(results: &[ColumnResult], counts: &[usize]) -> String {
    let Some(last) = counts.len().checked_sub(1) else {
        return String::new();
    };
    let row = |c: Column| {
        results
            .iter()
            .find(|r| r.column == c)
            .and_then(|r| r.idle.get(last))
    };
    let Some(base) = row(BASE) else {
        return String::new();
    };
    let mut text = format!("Targets at {} idle pods:\n", counts[last]);
    for pleg in [KubeletPleg::Generic, KubeletPleg::Evented] {
        let Some(k) = row(Column::Kubelet(pleg)) else {
            continue;
        };
        let verdict = |ratio: f64, at_least: f64| {
            if ratio >= at_least { "met" } else { "missed" }
        };
        let cpu = k.total_cpu() / base.total_cpu();
        let rss = k.agent.rss_max_bytes as f64 / base.agent.rss_max_bytes as f64;
        let _ = writeln!(
            text,
            "- idle CPU of agent + containerd, {} / {}: {} (target at least 10x: {}); agent \
             RSS, {} / {}: {} (target at least 4x: {})",
            pleg.column(),
            BASE.name(),
            ratio(k.total_cpu(), base.total_cpu()),
            verdict(cpu, 10.0),
            pleg.column(),
            BASE.name(),
            ratio(mib(k.agent.rss_max_bytes), mib(base.agent.rss_max_bytes)),
            verdict(rss, 4.0),
        );
    }
    text
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// One pod's way from manifest to `Running`.
struct Latency {
    /// From the rename to the first `/pods` answer showing the pod up.
    running_ms: f64,
    /// From the rename to the agent's `new pod` log line (its file source and pod manager's
    /// share); `None` when the line is missing.
    seen_ms: Option<f64>,
}

/// When the agent logged manifest `name` as a new pod (its pod manager's `new pod` record).
fn new_pod_logged(log: &[LogRecord], name: &str) -> Option<SystemTime> {
    let pod = format!("{name}-{NODE}");
    log.iter()
        .find(|r| r.message == "new pod" && r.is_about_pod(&pod))
        .map(|r| r.at)
}

/// The PLEG mode the agent said it runs (its `PLEG` record's `mode`: `Event` or `Generic`).
fn pleg_mode_logged(log: &[LogRecord]) -> Option<&str> {
    log.iter()
        .find(|r| r.message == "PLEG")
        .and_then(|r| r.str("mode"))
}

/// One idle window.
struct IdleRow {
    pods: usize,
    startup: Duration,
    agent: ProcUsage,
    containerd: ProcUsage,
    /// containerd over a second window with bpflet stopped (SIGSTOP): what the runtime
    /// costs with these pods and no agent calling it.
    containerd_alone: Option<ProcUsage>,
    /// The resource-metrics scrapes during the window.
    scrapes: ScrapeCount,
    /// The agent over a second window of the same length without the scrape; `None` when
    /// the scrape is off (the first window is then already unscraped).
    unscraped: Option<ProcUsage>,
    /// The stats endpoints fetched after the windows, in [`STATS_ENDPOINTS`]' order.
    endpoints: Vec<EndpointRow>,
}

impl IdleRow {
    /// CPU % of the agent and containerd together.
    fn total_cpu(&self) -> f64 {
        self.agent.cpu_percent + self.containerd.cpu_percent
    }

    /// Agent CPU % without any scrape: the second window, or the first when it had none.
    fn agent_cpu_unscraped(&self) -> f64 {
        self.unscraped
            .as_ref()
            .map_or(self.agent.cpu_percent, |u| u.cpu_percent)
    }

    fn endpoint(&self, path: &str) -> Option<&EndpointRow> {
        self.endpoints.iter().find(|e| e.path == path)
    }
}

/// One endpoint's fetches after an idle window.
#[derive(Clone, Debug, PartialEq)]
struct EndpointRow {
    path: &'static str,
    /// Of the fetches answered 200, from connect to the body's last byte.
    latency_ms: Option<Summary>,
    /// The largest body answered with 200.
    body_bytes: Option<usize>,
    /// Fetches with no answer or another status.
    failed: usize,
}

/// `rounds` rounds, one every `every` from now, each a `GET` of every path in `paths` on
/// 127.0.0.1:`port`, timed from connect to the last byte of the body.
fn fetch_series(
    port: u16,
    paths: &[&'static str],
    rounds: usize,
    every: Duration,
) -> Result<Vec<EndpointRow>> {
    let mut samples: Vec<(Vec<f64>, Option<usize>, usize)> = vec![(vec![], None, 0); paths.len()];
    let start = Instant::now();
    for round in 0..rounds {
        let due = start + every * u32::try_from(round).context("too many rounds")?;
        sleep_checked(due.saturating_duration_since(Instant::now()))?;
        for (path, (ms, bytes, failed)) in paths.iter().zip(&mut samples) {
            let t = Instant::now();
            match agent::http_get(port, path) {
                Some((200, body)) => {
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                    *bytes = Some(bytes.unwrap_or(0).max(body.len()));
                }
                _ => *failed += 1,
            }
        }
    }
    Ok(paths
        .iter()
        .zip(samples)
        .map(|(path, (ms, body_bytes, failed))| EndpointRow {
            path,
            latency_ms: Summary::of(&ms),
            body_bytes,
            failed,
        })
        .collect())
}

/// Whether a column's idle windows scrape `/metrics/resource`, as metrics-server would.
#[derive(Clone, Debug, PartialEq)]
enum Scrape {
    /// Every this long, from the window's start.
    On(Duration),
    /// Off, and why (the status the agent answered, or no answer).
    Off(String),
}

/// How the scrapes of one window went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ScrapeCount {
    ok: usize,
    failed: usize,
}

impl Scrape {
    /// On when the agent on `port` answers `/metrics/resource` with 200.
    fn probe(port: u16, every: Duration) -> Self {
        match agent::http_get(port, RESOURCE_METRICS) {
            Some((200, _)) => Scrape::On(every),
            Some((code, _)) => Scrape::Off(code.to_string()),
            None => Scrape::Off("no answer".to_owned()),
        }
    }

    /// `resource-metrics scrape every 15 s: on for kubelet; off for event (404)`.
    fn describe(every: Option<Duration>, columns: &[(&str, &Scrape)]) -> String {
        let Some(every) = every else {
            return "resource-metrics scrape: off (not asked for).".to_owned();
        };
        let on: Vec<&str> = columns
            .iter()
            .filter(|(_, s)| matches!(s, Scrape::On(_)))
            .map(|(c, _)| *c)
            .collect();
        let off: Vec<String> = columns
            .iter()
            .filter_map(|(c, s)| match s {
                Scrape::Off(why) => Some(format!("{c} ({why})")),
                Scrape::On(_) => None,
            })
            .collect();
        let mut parts = vec![];
        if !on.is_empty() {
            parts.push(format!("on for {}", on.join(", ")));
        }
        if !off.is_empty() {
            parts.push(format!("off for {}", off.join(", ")));
        }
        format!(
            "resource-metrics scrape (`GET {RESOURCE_METRICS}`) every {} s during idle \
             windows: {}.",
            every.as_secs(),
            parts.join("; ")
        )
    }

    /// Runs `f` while scraping `port` when on; returns `f`'s result and the scrapes.
    fn during<T>(&self, port: u16, f: impl FnOnce() -> Result<T>) -> Result<(T, ScrapeCount)> {
        let Scrape::On(every) = *self else {
            return Ok((f()?, ScrapeCount::default()));
        };
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            let scraper = s.spawn(|| {
                let mut count = ScrapeCount::default();
                let mut next = Instant::now();
                // The first scrape at the window's start, however short the window.
                loop {
                    if Instant::now() >= next {
                        match agent::http_get(port, RESOURCE_METRICS) {
                            Some((200, _)) => count.ok += 1,
                            _ => count.failed += 1,
                        }
                        next += every;
                    }
                    if done.load(Ordering::Relaxed) {
                        return count;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
            let result = f();
            done.store(true, Ordering::Relaxed);
            let count = scraper
                .join()
                .map_err(|_| anyhow!("the resource-metrics scraper panicked"))?;
            Ok((result?, count))
        })
    }
}

/// The machine, the build, and how busy the machine was when the bench started.
pub(crate) struct Machine {
    cpus: usize,
    mem_total: u64,
    kernel: String,
    load_average: String,
    pub(crate) containerd: String,
    /// The commit the agent was built from, and whether its sources had local changes.
    source: String,
}

impl Machine {
    /// The machine, with the `containerd` on `PATH`.
    pub(crate) fn read() -> Result<Self> {
        Self::read_with(Path::new("containerd"))
    }

    /// The machine, with the version of the `containerd` binary the bench runs.
    pub(crate) fn read_with(containerd: &Path) -> Result<Self> {
        let loadavg = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?;
        let containerd = output(Command::new(containerd).arg("--version"))?;
        let git = |args: &[&str]| {
            output(
                Command::new("git")
                    .arg("-C")
                    .arg(workspace_root())
                    .args(args),
            )
        };
        let commit = git(&["rev-parse", "--short", "HEAD"])?;
        let dirty = git(&[
            "status",
            "--porcelain",
            "--",
            "agent",
            "ebpf",
            "proto",
            "Cargo.toml",
            "Cargo.lock",
        ])?;
        Ok(Self {
            cpus: thread::available_parallelism().map_or(0, usize::from),
            mem_total: up::mem_total()?,
            kernel: kernel.trim().to_owned(),
            load_average: loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            containerd: containerd.split_whitespace().nth(2).map_or_else(
                || containerd.trim().to_owned(),
                |v| format!("containerd {v}"),
            ),
            source: if dirty.trim().is_empty() {
                format!("commit {}", commit.trim())
            } else {
                format!(
                    "commit {} plus uncommitted changes to the agent's sources",
                    commit.trim()
                )
            },
        })
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Machine: {} CPUs, MemTotal {:.1} GiB, Linux {}; load average at start {}; agent: \
             release build (`target/release/bpflet`) of {}; {}.",
            self.cpus,
            self.mem_total as f64 / f64::from(1 << 30),
            self.kernel,
            self.load_average,
            self.source,
            self.containerd,
        )
    }
}

/// Whether `BPFLET_BENCH_QUICK` asks for a shortened run.
pub(crate) fn quick_mode() -> bool {
    std::env::var_os(QUICK_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs `bench` on a node of its own: a work directory `.work/bench-<bench>`, its own cgroup
/// root, and a private containerd on `bridge` and `subnet`. Afterwards the agent is stopped
/// and everything torn down, whatever `measure` returned; both errors are reported.
pub(crate) fn on_bench_node(
    ctx: &Ctx,
    bench: &str,
    bridge: &str,
    subnet: &str,
    measure: impl FnOnce(&mut Node, &PrivateContainerd) -> Result<()>,
) -> Result<()> {
    on_bench_node_with(ctx, bench, bridge, subnet, Binaries::Debian, measure)
}

/// [`on_bench_node`] with the containerd of `binaries` (`Binaries::containerd2()` for a
/// bench with kubelet columns).
pub(crate) fn on_bench_node_with(
    ctx: &Ctx,
    bench: &str,
    bridge: &str,
    subnet: &str,
    binaries: Binaries,
    measure: impl FnOnce(&mut Node, &PrivateContainerd) -> Result<()>,
) -> Result<()> {
    let _interrupts = Interrupts::install()?;
    let work_dir = workspace_root()
        .join(".work")
        .join(format!("bench-{bench}"));
    let (mut node, ctd) = bench_node(ctx, bench, &work_dir, bridge, subnet, binaries)?;
    let outcome = measure(&mut node, &ctd);
    node.stop_agent();
    eprintln!("bench {bench}: tearing down");
    let teardown = up::teardown(ctd, &node.work_dir, &node.cgroup_root, bridge);
    match (outcome, teardown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(t)) => Err(t),
        (Err(e), Err(t)) => Err(anyhow!("{e:#}\nand the teardown failed too: {t:#}")),
    }
}

/// A bench's node: its work directory (created), its own cgroup root, the agent's files,
/// and a private containerd on its own bridge and subnet.
fn bench_node(
    ctx: &Ctx,
    bench: &str,
    work_dir: &Path,
    bridge: &str,
    subnet: &str,
    binaries: Binaries,
) -> Result<(Node, PrivateContainerd)> {
    fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let work_dir = work_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", work_dir.display()))?;
    let cgroup_root = up::cgroup_root_for(&work_dir);
    let node = Node::prepare(ctx, &work_dir, &cgroup_root)?;
    eprintln!(
        "bench {bench}: private containerd in {}",
        work_dir.join("containerd").display()
    );
    match PrivateContainerd::start_with(
        &work_dir.join("containerd"),
        &containerd::Options {
            bridge: bridge.to_owned(),
            subnet: subnet.to_owned(),
            cgroup_parent: Some(cgroup_root.clone()),
            binaries,
            root_tmpfs_bytes: None,
        },
    ) {
        Ok(ctd) => Ok((node, ctd)),
        Err(e) => {
            // Its drop cleaned up what it started; the cgroup root may hold a crashed run's.
            let _ = up::remove_cgroup_tree(&cgroup_root);
            Err(e.context("starting the private containerd"))
        }
    }
}

/// The agent and its directories; `/pods` through a small tokio runtime.
pub(crate) struct Node {
    bpflet: PathBuf,
    pub(crate) work_dir: PathBuf,
    pub(crate) manifests: PathBuf,
    /// Manifests are written here, then renamed into `manifests`.
    pub(crate) staging: PathBuf,
    agent_root: PathBuf,
    pub(crate) cgroup_root: String,
    pub(crate) port: u16,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) agent: Option<Agent>,
    pub(crate) agent_log: PathBuf,
    /// The upstream kubelet, when a kubelet column runs instead of bpflet (on [`Self::port`]).
    pub(crate) kubelet: Option<BenchKubelet>,
    /// Extra environment of the agent.
    pub(crate) agent_env: Vec<(String, String)>,
    /// Extra arguments of the agent (after `--log-format json`).
    pub(crate) agent_args: Vec<String>,
    /// How long each GET /pods took, in ms.
    pub(crate) get_ms: Vec<f64>,
}

impl Node {
    /// Gives the agent a clean slate: no manifests, state or cgroups of an earlier run
    /// (containerd's start removes that run's pods).
    pub(crate) fn prepare(ctx: &Ctx, work_dir: &Path, cgroup_root: &str) -> Result<Self> {
        let node = Self {
            bpflet: ctx.bpflet.clone(),
            work_dir: work_dir.to_owned(),
            manifests: work_dir.join("manifests"),
            staging: work_dir.join("staging"),
            agent_root: work_dir.join("root"),
            cgroup_root: cgroup_root.to_owned(),
            port: agent::free_port()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?,
            agent: None,
            agent_log: work_dir.join("agent.log"),
            kubelet: None,
            agent_env: vec![],
            agent_args: vec![],
            get_ms: vec![],
        };
        up::remove_cgroup_tree(cgroup_root)?;
        if node.agent_root.exists() {
            up::unmount_under(&node.agent_root)?;
            fs::remove_dir_all(&node.agent_root)
                .with_context(|| format!("removing {}", node.agent_root.display()))?;
        }
        for dir in [&node.manifests, &node.staging] {
            if dir.exists() {
                fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(node)
    }

    /// Writes the config for `mode`, starts the agent, and waits until it serves `/pods`
    /// in that mode (an event PLEG that fell back to generic is an error).
    pub(crate) fn start_agent(&mut self, mode: PlegMode, ctd: &PrivateContainerd) -> Result<()> {
        let config = up::render_config(&ConfigParams {
            static_pod_path: &self.manifests,
            cgroup_root: &self.cgroup_root,
            runtime_socket: &ctd.socket,
            system_reserved_memory: up::mem_total()?.saturating_sub(up::KUBEPODS_MEMORY),
            pleg_mode: mode,
            read_only_port: self.port,
            port: agent::free_port()?,
        });
        let config_path = self.work_dir.join(format!("bpflet-{}.yaml", mode.as_str()));
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        self.agent_log = self.work_dir.join(format!("agent-{}.log", mode.as_str()));
        // The log is appended to: a new run starts a new one.
        match fs::remove_file(&self.agent_log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", self.agent_log.display()));
            }
            _ => {}
        }
        let spec = AgentSpec {
            bin: self.bpflet.clone(),
            config: config_path,
            root_dir: self.agent_root.clone(),
            node_name: NODE.to_owned(),
            log: self.agent_log.clone(),
            args: ["--log-format", "json"]
                .into_iter()
                .map(Into::into)
                .chain(self.agent_args.iter().map(Into::into))
                .collect(),
            env: self
                .agent_env
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            wrapper: vec![],
        };
        let line = crate::describe(&spec.command());
        eprintln!("bench pods: {line}");
        let agent = self
            .agent
            .insert(Agent::spawn(&spec).with_context(|| format!("starting `{line}`"))?);

        // The API is bound before the PLEG starts: wait for both, then check the mode (an
        // event PLEG without BPF falls back to generic).
        let mut mode_logged = None;
        let (log_path, port) = (&self.agent_log, self.port);
        // On failure the agent is left to `stop_agent`, as always.
        agent.wait_ready(
            "serve /pods and start its PLEG",
            AGENT_START_TIMEOUT,
            || {
                check_interrupted()?;
                let log = agent_log::read(log_path).unwrap_or_default();
                mode_logged = pleg_mode_logged(&log).map(str::to_owned);
                Ok(mode_logged.is_some() && agent::serves_pods(port))
            },
        )?;
        let want = match mode {
            PlegMode::Event => "Event",
            PlegMode::Generic => "Generic",
        };
        ensure!(
            mode_logged.as_deref() == Some(want),
            "bpflet did not start the {} PLEG: its log says mode {mode_logged:?}; last lines \
             of {}:\n{}",
            mode.as_str(),
            self.agent_log.display(),
            self.log_tail(20)
        );
        Ok(())
    }

    /// SIGTERM to the agent (pods keep running), SIGKILL after a grace period; a kubelet
    /// is stopped too (a failure to undo its mounts is printed).
    pub(crate) fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop(Signal::SIGTERM, AGENT_STOP_GRACE);
        }
        if let Err(e) = self.stop_kubelet() {
            eprintln!("{e:#}");
        }
    }

    /// Starts the upstream kubelet of `pleg` on `ctd` in bpflet's place: the same static
    /// pod directory, node name and read-only port, its own cgroup root below the node's
    /// and the same kubepods limit (see `bench::peer`).
    fn start_kubelet(&mut self, pleg: KubeletPleg, ctd: &PrivateContainerd) -> Result<()> {
        ensure!(
            self.agent.is_none() && self.kubelet.is_none(),
            "an agent already runs on this node"
        );
        let spec = BenchKubeletSpec::on_node(self, pleg.column(), pleg.switches());
        let kubelet = BenchKubelet::start(&spec, ctd)?;
        if pleg == KubeletPleg::Evented {
            // A kubelet whose CRI event stream failed relists: not this column.
            if let Err(why) = kubelet.check_evented() {
                let tail = kubelet.log_tail(20);
                let stopped = kubelet.stop();
                bail!(
                    "the EventedPLEG kubelet is not using CRI events: {why}{}; last lines of \
                     its log:\n{tail}",
                    stopped
                        .err()
                        .map(|e| format!(" (stopping it: {e:#})"))
                        .unwrap_or_default()
                );
            }
        }
        self.kubelet = Some(kubelet);
        Ok(())
    }

    /// Stops the kubelet, if one runs; its pods run on.
    pub(crate) fn stop_kubelet(&mut self) -> Result<()> {
        match self.kubelet.take() {
            Some(kubelet) => kubelet.stop(),
            None => Ok(()),
        }
    }

    /// The pid of the agent that runs: bpflet or the kubelet.
    pub(crate) fn agent_pid(&self) -> Result<u32> {
        match (&self.agent, &self.kubelet) {
            (Some(agent), _) => Ok(agent.id()),
            (None, Some(kubelet)) => kubelet.pid(),
            (None, None) => bail!("no agent is running"),
        }
    }

    /// The log of the agent that runs (bpflet's when none does).
    pub(crate) fn log_path(&self) -> &Path {
        self.kubelet
            .as_ref()
            .map_or(self.agent_log.as_path(), BenchKubelet::log_path)
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        agent::tail(
            &fs::read_to_string(self.log_path()).unwrap_or_default(),
            lines,
        )
    }

    /// One GET /pods, timed.
    pub(crate) fn pods(&mut self) -> Result<Vec<PodView>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let sent = Instant::now();
        let (code, body) = self.rt.block_on(up::http_get(addr, "/pods"))?;
        self.get_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        ensure!(code == 200, "GET http://{addr}/pods: HTTP {code}");
        up::parse_pods(&body)
    }

    /// Writes `<name>.yaml` to the staging directory and renames it into the static pod
    /// directory; returns when the rename is done.
    fn write_pod(&self, name: &str) -> Result<(Instant, SystemTime)> {
        self.write_manifest(name, &pod_manifest(name))
    }

    /// Writes `text` as `<name>.yaml` to the staging directory and renames it into the
    /// static pod directory; returns when the rename is done.
    pub(crate) fn write_manifest(&self, name: &str, text: &str) -> Result<(Instant, SystemTime)> {
        let file = format!("{name}.yaml");
        let staged = self.staging.join(&file);
        fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        let target = self.manifests.join(&file);
        fs::rename(&staged, &target)
            .with_context(|| format!("renaming {} to {}", staged.display(), target.display()))?;
        Ok((Instant::now(), SystemTime::now()))
    }

    pub(crate) fn remove_pod(&self, name: &str) -> Result<()> {
        let path = self.manifests.join(format!("{name}.yaml"));
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// Polls `/pods` every [`POLL`] until `done` holds for an answer; `done` gets each
    /// answer and when it arrived. On timeout, fails with `describe`'s view of the last one.
    fn poll_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[PodView], Instant) -> bool,
        describe: impl Fn(&[PodView]) -> String,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            let sent = Instant::now();
            let pods = self
                .pods()
                .with_context(|| format!("polling /pods for {what}"))?;
            let at = Instant::now();
            if done(&pods, at) {
                return Ok(());
            }
            if at >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}: {}; last lines of {}:\n{}",
                    describe(&pods),
                    self.log_path().display(),
                    self.log_tail(20)
                );
            }
            thread::sleep((sent + POLL).saturating_duration_since(Instant::now()));
        }
    }

    /// Waits until every pod in `names` is up; returns, per pod, the first answer showing it
    /// up (in `names`' order).
    pub(crate) fn wait_up(&mut self, names: &[String], timeout: Duration) -> Result<Vec<Instant>> {
        let mut seen: Vec<Option<Instant>> = vec![None; names.len()];
        self.poll_until(
            &format!("{} pod(s) to run", names.len()),
            timeout,
            |pods, at| {
                for (name, seen) in names.iter().zip(seen.iter_mut()) {
                    if seen.is_none() && find(pods, name).is_some_and(is_up) {
                        *seen = Some(at);
                    }
                }
                seen.iter().all(Option::is_some)
            },
            |pods| not_up(pods, names),
        )?;
        Ok(seen.into_iter().flatten().collect())
    }

    /// Waits until `/pods` lists none of `names`.
    pub(crate) fn wait_gone(&mut self, names: &[String]) -> Result<()> {
        self.poll_until(
            &format!("{} pod(s) to go", names.len()),
            GONE_TIMEOUT,
            |pods, _| names.iter().all(|n| find(pods, n).is_none()),
            |pods| {
                let left: Vec<&str> = names
                    .iter()
                    .filter(|n| find(pods, n).is_some())
                    .map(String::as_str)
                    .collect();
                format!("{} still listed: {}", left.len(), left.join(", "))
            },
        )
    }

    /// Writes the pods' manifests at once, waits until each is up, removes them and waits
    /// until they are gone (see [`Self::remove_and_wait`]). Returns each pod's latencies.
    fn start_and_remove(
        &mut self,
        names: &[String],
        ctd: &PrivateContainerd,
    ) -> Result<Vec<Latency>> {
        let written = names
            .iter()
            .map(|n| self.write_pod(n))
            .collect::<Result<Vec<_>>>()?;
        let up_at = self.wait_up(names, RUNNING_TIMEOUT)?;
        self.remove_and_wait(names, ctd)?;
        let seen = self.seen_at(names)?;
        Ok(written
            .iter()
            .zip(&up_at)
            .zip(seen)
            .map(|(((w, w_wall), u), seen)| Latency {
                running_ms: u.saturating_duration_since(*w).as_secs_f64() * 1e3,
                seen_ms: seen
                    .and_then(|at| at.duration_since(*w_wall).ok())
                    .map(|d| d.as_secs_f64() * 1e3),
            })
            .collect())
    }

    /// Removes the pods' manifests and waits until `/pods` lists none of them and containerd
    /// has no ready sandbox left: the kubelet drops a removed static pod from `/pods` at
    /// once and stops its containers afterwards, and the next measurement must not share
    /// the machine with that.
    fn remove_and_wait(&mut self, names: &[String], ctd: &PrivateContainerd) -> Result<()> {
        for name in names {
            self.remove_pod(name)?;
        }
        self.wait_gone(names)?;
        let deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            check_interrupted()?;
            let ready = peer::ready_sandboxes(ctd)?;
            if ready == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {GONE_TIMEOUT:?} waiting for containerd to stop the \
                     sandboxes of {} removed pod(s): {ready} still ready; last lines of {}:\n{}",
                    names.len(),
                    self.log_path().display(),
                    self.log_tail(20)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// When the running agent logged each pod of `names` as seen: bpflet's `new pod`
    /// record, the kubelet's `SyncLoop ADD`.
    fn seen_at(&self, names: &[String]) -> Result<Vec<Option<SystemTime>>> {
        if let Some(kubelet) = &self.kubelet {
            let log = kubelet.log()?;
            return Ok(names
                .iter()
                .map(|n| peer::first_logged(&log, "SyncLoop ADD", Some(&peer::pod_key(n))))
                .collect());
        }
        let log = agent_log::read(&self.agent_log)?;
        Ok(names.iter().map(|n| new_pod_logged(&log, n)).collect())
    }

    /// Starts `counts[0]` pods, measures an idle window, grows to `counts[1]`, measures
    /// again, ...; then removes every pod. `scrape` runs during each window.
    fn idle(
        &mut self,
        column: Column,
        plan: &Plan,
        scrape: &Scrape,
        ctd: &PrivateContainerd,
        ctd_pid: u32,
    ) -> Result<Vec<IdleRow>> {
        let (counts, window) = (plan.idle_counts.as_slice(), plan.window);
        let agent_pid = self.agent_pid()?;
        let name = column.name();
        let mut names: Vec<String> = vec![];
        let mut rows = vec![];
        for &count in counts {
            let new: Vec<String> = (names.len()..count)
                .map(|i| format!("idle-{name}-{i:03}"))
                .collect();
            eprintln!(
                "bench pods: {name}, starting {} more pods ({count} in all)",
                new.len()
            );
            let started = Instant::now();
            for pod in &new {
                self.write_pod(pod)?;
            }
            names.extend(new);
            self.wait_up(&names, RUNNING_TIMEOUT)?;
            let startup = started.elapsed();
            eprintln!(
                "bench pods: {count} pods Running after {:.1}s; idle window of {window:?}",
                startup.as_secs_f64()
            );
            sleep_checked(SETTLE)?;
            let ([agent, containerd], scrapes) = scrape.during(self.port, || {
                sample_pair([agent_pid, ctd_pid], window, SAMPLE_EVERY)
            })?;
            let pods = self.pods()?;
            let down = not_up(&pods, &names);
            ensure!(
                names.iter().all(|n| find(&pods, n).is_some_and(is_up)),
                "pods stopped running during the idle window: {down}"
            );
            // The runtime's own floor, at the largest count of the base column: the agent
            // stopped, so nothing calls containerd.
            let containerd_alone = if column == BASE && Some(&count) == counts.last() {
                eprintln!("bench pods: {name} stopped (SIGSTOP); containerd alone for {window:?}");
                let pid = Pid::from_raw(i32::try_from(agent_pid).context("pid out of range")?);
                nix::sys::signal::kill(pid, Signal::SIGSTOP).context("stopping the agent")?;
                let sampled = sample_pair([agent_pid, ctd_pid], window, SAMPLE_EVERY);
                nix::sys::signal::kill(pid, Signal::SIGCONT).context("continuing the agent")?;
                Some(sampled?[1])
            } else {
                None
            };
            // The same window with nothing polling: what the scrape itself costs.
            let unscraped = if matches!(scrape, Scrape::On(_)) {
                eprintln!("bench pods: {name}, idle window of {window:?} without the scrape");
                Some(sample_pair([agent_pid, ctd_pid], window, SAMPLE_EVERY)?[0])
            } else {
                None
            };
            eprintln!(
                "bench pods: {name}, {} fetches of {}",
                plan.stats_fetches,
                STATS_ENDPOINTS.join(" and ")
            );
            let endpoints = fetch_series(
                self.port,
                &STATS_ENDPOINTS,
                plan.stats_fetches,
                STATS_FETCH_EVERY,
            )?;
            rows.push(IdleRow {
                pods: count,
                startup,
                agent,
                containerd,
                containerd_alone,
                scrapes,
                unscraped,
                endpoints,
            });
        }
        eprintln!("bench pods: {name}, removing {} pods", names.len());
        self.remove_and_wait(&names, ctd)?;
        Ok(rows)
    }
}

/// A host-network busybox pod sleeping for an hour, with tiny requests: 110 of them (2 MiB
/// each) must fit the node's allocatable memory (the 512 MiB kubepods limit less the 100 MiB
/// hard eviction threshold), which both agents' admission enforces (`OutOfmemory`).
fn pod_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, \"3600\"]
    resources:
      requests:
        cpu: 1m
        memory: 2Mi
"
    )
}

/// The pod of manifest `name` on `/pods`.
pub(crate) fn find<'a>(pods: &'a [PodView], name: &str) -> Option<&'a PodView> {
    pods.iter().find(|p| p.static_name.as_deref() == Some(name))
}

/// `Running`, and every app container running.
pub(crate) fn is_up(pod: &PodView) -> bool {
    let mut apps = pod.containers.iter().filter(|c| !c.init).peekable();
    pod.phase == "Running" && apps.peek().is_some() && apps.all(|c| c.state.starts_with("running"))
}

/// The pods of `names` that are not up, with what `/pods` says of them (the first few).
pub(crate) fn not_up(pods: &[PodView], names: &[String]) -> String {
    let down: Vec<String> = names
        .iter()
        .filter_map(|n| match find(pods, n) {
            None => Some(format!("{n}: not on /pods")),
            Some(p) if !is_up(p) => Some(format!("{n}: {}", p.summary())),
            Some(_) => None,
        })
        .collect();
    let shown = down.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    format!("{} not running ({shown})", down.len())
}

/// CPU time and largest RSS of two processes over the same window. CPU time comes from the
/// processes' CPU clocks (nanoseconds, every thread including exited ones), not from
/// `/proc/<pid>/stat`, whose 10 ms ticks are too coarse for an idle agent.
pub(crate) fn sample_pair(
    pids: [u32; 2],
    window: Duration,
    every: Duration,
) -> Result<[ProcUsage; 2]> {
    let clock = |pid: u32| -> Result<ClockId> {
        let raw = i32::try_from(pid).context("pid out of range")?;
        ClockId::pid_cpu_clock_id(Pid::from_raw(raw))
            .with_context(|| format!("the CPU clock of pid {pid}"))
    };
    let clocks = [clock(pids[0])?, clock(pids[1])?];
    let take = |i: usize| -> Result<(ProcSnapshot, Duration)> {
        let cpu = clocks[i]
            .now()
            .with_context(|| format!("reading the CPU clock of pid {}", pids[i]))?;
        let snapshot =
            ProcSnapshot::take(pids[i]).with_context(|| format!("sampling pid {}", pids[i]))?;
        Ok((snapshot, Duration::from(cpu)))
    };
    let start = [take(0)?, take(1)?];
    let mut last = start;
    let mut rss_max = start.map(|(s, _)| s.rss_bytes);
    let deadline = start[0].0.at + window;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sleep_checked(every.min(deadline - now))?;
        last = [take(0)?, take(1)?];
        for (max, (s, _)) in rss_max.iter_mut().zip(&last) {
            *max = (*max).max(s.rss_bytes);
        }
    }
    Ok([0, 1].map(|i| {
        let wall = last[i].0.at.saturating_duration_since(start[i].0.at);
        let cpu_seconds = last[i].1.saturating_sub(start[i].1).as_secs_f64();
        ProcUsage {
            rss_max_bytes: rss_max[i],
            cpu_seconds,
            cpu_percent: if wall.is_zero() {
                0.0
            } else {
                100.0 * cpu_seconds / wall.as_secs_f64()
            },
            ..ProcUsage::between(&start[i].0, &last[i].0)
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C: every wait checks for it, so the bench tears down instead of dying mid-way.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in short steps, failing as soon as a signal came.
pub(crate) fn sleep_checked(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

/// SIGINT, SIGTERM and SIGHUP set [`INTERRUPTED`] while this lives; then the previous
/// handlers come back.
pub(crate) struct Interrupts {
    previous: Vec<(Signal, SigAction)>,
}

impl Interrupts {
    pub(crate) fn install() -> Result<Self> {
        INTERRUPTED.store(false, Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut previous = vec![];
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            let old = unsafe { sigaction(signal, &action) }
                .with_context(|| format!("installing a {signal} handler"))?;
            previous.push((signal, old));
        }
        Ok(Self { previous })
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: putting back the handler that was there before.
            let _ = unsafe { sigaction(*signal, old) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::up::ContainerView;

    fn pod(name: &str, phase: &str, states: &[(&str, bool)]) -> PodView {
        PodView {
            name: format!("{name}-{NODE}"),
            static_name: Some(name.to_owned()),
            uid: None,
            phase: phase.to_owned(),
            containers: states
                .iter()
                .map(|&(state, init)| ContainerView {
                    name: "c".to_owned(),
                    init,
                    state: state.to_owned(),
                    restarts: 0,
                    last: None,
                    oom_killed: false,
                })
                .collect(),
        }
    }

    #[test]
    fn up_means_running_with_every_app_container_running() {
        assert!(is_up(&pod("a", "Running", &[("running", false)])));
        assert!(is_up(&pod(
            "a",
            "Running",
            &[("terminated Completed(0)", true), ("running, ready", false)]
        )));
        assert!(!is_up(&pod("a", "Pending", &[("running", false)])));
        assert!(!is_up(&pod(
            "a",
            "Running",
            &[("running", false), ("waiting(ContainerCreating)", false)]
        )));
        assert!(!is_up(&pod("a", "Running", &[("running", true)])));
        assert!(!is_up(&pod("a", "Running", &[])));
    }

    #[test]
    fn not_up_names_missing_and_pending_pods() {
        let pods = [
            pod("a", "Running", &[("running", false)]),
            pod("b", "Pending", &[("waiting(ContainerCreating)", false)]),
        ];
        let names = ["a", "b", "c"].map(String::from);
        let text = not_up(&pods, &names);
        assert!(text.starts_with("2 not running"), "{text}");
        assert!(
            text.contains("b: Pending; c: waiting(ContainerCreating)"),
            "{text}"
        );
        assert!(text.contains("c: not on /pods"), "{text}");
    }

    #[test]
    fn new_pods_and_the_pleg_mode_are_read_from_json_records() {
        let log = agent_log::parse(
            r#"{"timestamp":"2026-11-23T19:08:58.5Z","level":"INFO","fields":{"message":"PLEG","mode":"Event"},"target":"bpflet::agent"}
{"timestamp":"2026-11-23T19:08:59.391182Z","level":"INFO","fields":{"message":"new pod","pod":"lat1-event-3-benchnode_default(4be5)"},"target":"bpflet::pods::manager"}
{"timestamp":"2026-11-23T19:09:00Z","level":"INFO","fields":{"message":"new pod","pod":"lat1-event-30-benchnode_default(9)"},"target":"bpflet::pods::manager"}
"#,
        );
        assert_eq!(log.len(), 3);
        assert_eq!(
            new_pod_logged(&log, "lat1-event-3"),
            Some(UNIX_EPOCH + Duration::new(1_795_460_939, 391_182_000))
        );
        assert_eq!(
            new_pod_logged(&log, "lat1-event-30"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_460_940))
        );
        assert_eq!(new_pod_logged(&log, "lat1-event"), None);
        assert_eq!(pleg_mode_logged(&log), Some("Event"));
        assert_eq!(pleg_mode_logged(&log[1..]), None);
    }

    #[test]
    fn manifests_are_host_network_busybox_with_small_requests() {
        let m = pod_manifest("idle-event-007");
        for want in [
            "  name: idle-event-007\n",
            "hostNetwork: true",
            BUSYBOX_IMAGE,
            "imagePullPolicy: IfNotPresent",
            "command: [sleep, \"3600\"]",
            "cpu: 1m",
            "memory: 2Mi",
        ] {
            assert!(m.contains(want), "{want:?} missing from\n{m}");
        }
    }

    /// A server on 127.0.0.1 answering every request with `status`; returns its port and
    /// the paths it was asked for.
    fn http_server(status: u16) -> (u16, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let _ = write!(stream, "HTTP/1.0 {status} X\r\n\r\nbody");
                if tx.send(path).is_err() {
                    return;
                }
            }
        });
        (port, rx)
    }

    #[test]
    fn scrape_is_on_only_where_resource_metrics_answer_200() {
        let (ok_port, _ok) = http_server(200);
        let (missing_port, _missing) = http_server(404);
        let every = Duration::from_secs(15);
        assert_eq!(Scrape::probe(ok_port, every), Scrape::On(every));
        assert_eq!(
            Scrape::probe(missing_port, every),
            Scrape::Off("404".to_owned())
        );
        let closed = agent::free_port().unwrap();
        assert_eq!(
            Scrape::probe(closed, every),
            Scrape::Off("no answer".to_owned())
        );
    }

    #[test]
    fn scrapes_run_from_the_window_start_and_count_failures() {
        let hour = Duration::from_secs(3600);
        let (port, paths) = http_server(200);
        let (value, count) = Scrape::On(hour).during(port, || Ok(7)).unwrap();
        assert_eq!(value, 7);
        assert_eq!(count, ScrapeCount { ok: 1, failed: 0 });
        assert_eq!(paths.try_recv().unwrap(), RESOURCE_METRICS);

        let (port, _) = http_server(404);
        let (_, count) = Scrape::On(hour).during(port, || Ok(())).unwrap();
        assert_eq!(count, ScrapeCount { ok: 0, failed: 1 });

        let (port, paths) = http_server(200);
        let (_, count) = Scrape::Off("404".to_owned())
            .during(port, || Ok(()))
            .unwrap();
        assert_eq!(count, ScrapeCount::default());
        assert!(paths.try_recv().is_err(), "an off scrape asked nothing");

        let failed = Scrape::On(hour).during(port, || -> Result<()> { bail!("window failed") });
        assert!(failed.is_err());
    }

    #[test]
    fn scrape_line_names_each_column_on_or_off_with_the_reason() {
        let on = Scrape::On(RESOURCE_SCRAPE_EVERY);
        let off = Scrape::Off("404".to_owned());
        let line = Scrape::describe(
            Some(RESOURCE_SCRAPE_EVERY),
            &[
                ("event", &off),
                ("generic", &off),
                ("kubelet", &on),
                ("kubelet-evented", &on),
            ],
        );
        assert_eq!(
            line,
            "resource-metrics scrape (`GET /metrics/resource`) every 15 s during idle windows: \
             on for kubelet, kubelet-evented; off for event (404), generic (404)."
        );
        assert_eq!(
            Scrape::describe(None, &[("event", &on)]),
            "resource-metrics scrape: off (not asked for)."
        );
    }

    fn idle_row(pods: usize, agent_cpu: f64, ctd_cpu: f64, agent_rss_mib: u64) -> IdleRow {
        let usage = |cpu_percent: f64, rss: u64| ProcUsage {
            wall: Duration::from_secs(60),
            cpu_seconds: cpu_percent * 0.6,
            cpu_percent,
            rss_max_bytes: rss << 20,
            rss_last_bytes: rss << 20,
        };
        IdleRow {
            pods,
            startup: Duration::from_secs(1),
            agent: usage(agent_cpu, agent_rss_mib),
            containerd: usage(ctd_cpu, 40),
            containerd_alone: None,
            scrapes: ScrapeCount::default(),
            unscraped: None,
            endpoints: vec![],
        }
    }

    fn column(column: Column, idle: Vec<IdleRow>) -> ColumnResult {
        ColumnResult {
            column,
            latency: vec![],
            idle,
            kubepods_limit: Some(512 << 20),
            scrape: Scrape::Off("404".to_owned()),
        }
    }

    #[test]
    fn targets_compare_each_kubelet_column_with_bpflet_event_at_the_largest_count() {
        let results = [
            column(
                BASE,
                vec![idle_row(50, 9.0, 9.0, 1), idle_row(110, 0.25, 0.25, 20)],
            ),
            column(
                Column::Kubelet(KubeletPleg::Generic),
                vec![idle_row(50, 0.1, 0.1, 1), idle_row(110, 4.0, 1.0, 100)],
            ),
            column(
                Column::Kubelet(KubeletPleg::Evented),
                vec![idle_row(50, 0.1, 0.1, 1), idle_row(110, 2.0, 0.5, 60)],
            ),
        ];
        let text = targets(&results, &[50, 110]);
        assert!(text.starts_with("Targets at 110 idle pods:\n"), "{text}");
        assert!(
            text.contains(
                "kubelet / event: 10.0x (target at least 10x: met); agent RSS, kubelet / \
                 event: 5.0x (target at least 4x: met)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kubelet-evented / event: 5.0x (target at least 10x: missed); agent RSS, \
                 kubelet-evented / event: 3.0x (target at least 4x: missed)"
            ),
            "{text}"
        );
        // Without the base column there is nothing to compare with.
        assert_eq!(targets(&results[1..], &[50, 110]), "");
    }

    #[test]
    fn report_shows_every_column_its_ratio_to_event_and_why_a_column_is_missing() {
        let summary = |v: f64| Summary::of(&[v]).unwrap();
        let latency = |p50: f64| {
            vec![LatencyRow {
                scenario: "1 pod, 1 runs".to_owned(),
                running: summary(p50),
                seen: None,
                gets: summary(1.0),
            }]
        };
        let mut event = column(BASE, vec![idle_row(5, 0.1, 0.1, 20)]);
        event.latency = latency(200.0);
        let mut kubelet = column(
            Column::Kubelet(KubeletPleg::Generic),
            vec![idle_row(5, 1.0, 0.2, 80)],
        );
        kubelet.latency = latency(800.0);
        kubelet.scrape = Scrape::On(RESOURCE_SCRAPE_EVERY);
        let plan = Plan {
            single_reps: 1,
            batch_size: 2,
            batch_reps: 1,
            idle_counts: vec![5],
            window: Duration::from_secs(10),
            resource_scrape_every: Some(RESOURCE_SCRAPE_EVERY),
            stats_fetches: 1,
            quick: true,
        };
        let machine = Machine {
            cpus: 2,
            mem_total: 1 << 30,
            kernel: "6.18".to_owned(),
            load_average: "0 0 0".to_owned(),
            containerd: "containerd v2.2.10".to_owned(),
            source: "commit x".to_owned(),
        };
        let report = render(
            &plan,
            &machine,
            "Kubernetes v1.34.4",
            &[event, kubelet],
            &[(
                Column::Kubelet(KubeletPleg::Evented),
                "no event stream".to_owned(),
            )],
        );
        for want in [
            "Peer: Kubernetes v1.34.4.",
            "Columns measured: event, kubelet.",
            "Column `kubelet-evented` left out: no event stream",
            "kubepods memory limit as read from the cgroup: event 512 MiB, kubelet 512 MiB.",
            "on for kubelet; off for event (404).",
            "| kubelet / event | 1 pod, 1 runs |",
            "| 4.0x",
            "| 5    | kubelet / event | 10.0x",
        ] {
            assert!(report.contains(want), "{want:?} missing from\n{report}");
        }
    }

    #[test]
    fn fetch_series_times_every_endpoint_each_round_and_counts_failures() {
        let (ok, paths) = http_server(200);
        let rows = fetch_series(ok, &STATS_ENDPOINTS, 3, Duration::from_millis(1)).unwrap();
        let asked: Vec<String> = paths.try_iter().collect();
        assert_eq!(
            asked,
            [STATS_ENDPOINTS; 3].concat(),
            "each round asks every endpoint, in order"
        );
        for (row, path) in rows.iter().zip(STATS_ENDPOINTS) {
            assert_eq!(row.path, path);
            assert_eq!(row.latency_ms.map(|l| l.n), Some(3));
            assert_eq!((row.body_bytes, row.failed), (Some("body".len()), 0));
        }
        // A 404 is a failure, not a latency.
        let (missing, _paths) = http_server(404);
        let rows = fetch_series(missing, &["/stats/summary"], 2, Duration::from_millis(1)).unwrap();
        assert_eq!(
            rows,
            [EndpointRow {
                path: "/stats/summary",
                latency_ms: None,
                body_bytes: None,
                failed: 2
            }]
        );
    }

    fn with_stats(mut row: IdleRow, unscraped: f64, summary_ms: f64, bytes: usize) -> IdleRow {
        row.unscraped = Some(ProcUsage {
            cpu_percent: unscraped,
            ..row.agent
        });
        row.endpoints = STATS_ENDPOINTS
            .iter()
            .map(|path| EndpointRow {
                path,
                latency_ms: Summary::of(&[summary_ms, summary_ms * 2.0]),
                body_bytes: Some(bytes),
                failed: 0,
            })
            .collect();
        row
    }

    #[test]
    fn stats_show_cpu_with_and_without_the_scrape_and_endpoint_ratios_in_report_and_json() {
        let results = [
            column(
                BASE,
                vec![with_stats(idle_row(5, 0.5, 0.1, 20), 0.25, 2.0, 10 * 1024)],
            ),
            column(
                Column::Kubelet(KubeletPleg::Generic),
                vec![with_stats(idle_row(5, 3.0, 0.1, 80), 2.0, 10.0, 40 * 1024)],
            ),
        ];
        let table = stats_table(&[5], &results).to_string();
        for want in [
            "| 5    | event           | 0.50",
            "| 0.25",
            "| +0.25",
            "| 2.0 / 4.0",
            "| 10.0",
            "| 5    | kubelet / event | 6.0x",
            "| 8.0x",
            "| 5.0x / 5.0x",
            "| 4.0x",
        ] {
            assert!(table.contains(want), "{want:?} missing from\n{table}");
        }
        let plan = Plan {
            single_reps: 1,
            batch_size: 2,
            batch_reps: 1,
            idle_counts: vec![5],
            window: Duration::from_secs(10),
            resource_scrape_every: Some(RESOURCE_SCRAPE_EVERY),
            stats_fetches: 2,
            quick: true,
        };
        let machine = Machine {
            cpus: 2,
            mem_total: 1 << 30,
            kernel: "6.18".to_owned(),
            load_average: "0 0 0".to_owned(),
            containerd: "containerd v2.2.10".to_owned(),
            source: "commit x".to_owned(),
        };
        let json = to_json(&plan, &machine, "kubelet v1.34.4", &results, &[]);
        let kubelet = &json["columns"][1];
        assert_eq!(kubelet["column"], "kubelet");
        let idle = &kubelet["idle"][0];
        assert_eq!(idle["agent"]["cpu_percent"], 3.0);
        assert_eq!(idle["agent_unscraped"]["cpu_percent"], 2.0);
        assert_eq!(idle["endpoints"][0]["path"], "/stats/summary");
        assert_eq!(idle["endpoints"][0]["latency_ms"]["p50"], 10.0);
        assert_eq!(idle["endpoints"][1]["path"], RESOURCE_METRICS);
        assert_eq!(idle["endpoints"][1]["body_bytes"], 40 * 1024);
        assert_eq!(json["stats_fetches"], 2);
        let report = render(&plan, &machine, "kubelet v1.34.4", &results, &[]);
        assert!(report.contains("### Stats endpoints"), "{report}");
        assert!(report.contains(&table), "{report}");
    }

    #[test]
    fn columns_are_named_as_the_reports_and_pod_names_use_them() {
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["event", "generic", "kubelet", "kubelet-evented"]);
        assert_eq!(BASE, COLUMNS[0]);
    }

    #[test]
    fn sampling_two_processes_covers_the_window() {
        // Another process's CPU clock must be readable, not only our own.
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let got = sample_pair(
            [std::process::id(), child.id()],
            Duration::from_millis(50),
            Duration::from_millis(20),
        );
        let _ = child.kill();
        let _ = child.wait();
        let [me, other] = got.unwrap();
        assert!(me.wall >= Duration::from_millis(50) && other.wall >= Duration::from_millis(50));
        assert!(me.rss_max_bytes > 0 && other.rss_max_bytes > 0);
        assert!(me.cpu_seconds > 0.0, "this test's own thread ran: {me:?}");
    }
}
