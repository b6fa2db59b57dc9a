//! `cargo xtask bench pods`: how fast static pods start, and what idle pods cost, with the
//! release agent on a real private containerd.
//!
//! One private containerd (`.work/bench-pods/containerd`) serves the whole run. For each PLEG
//! mode (`event`, then `generic`) the agent starts afresh with `cargo xtask up`'s config
//! (its own cgroup root, `kubepods` limited to 512 MiB, the read-only API on a free port of
//! 127.0.0.1), and:
//! 1. manifest-to-running latency: a manifest is renamed into the static pod directory and
//!    `/pods` is polled every [`POLL`] until the pod is `Running` with every container
//!    running; one pod at a time ([`Plan::single_reps`] times), then [`Plan::batch_size`]
//!    manifests written at once ([`Plan::batch_reps`] times). Each pod is removed again and
//!    waited for until `/pods` no longer lists it.
//! 2. idle cost: [`Plan::idle_counts`] pods running `sleep`, all `Running`, then the CPU time
//!    and RSS of bpflet and of containerd over the same [`Plan::window`], nothing polling.
//!
//! Every pod is a host-network busybox `sleep 3600` with tiny requests (Burstable).
//! Whatever happens (a failed step, Ctrl-C), the agent is stopped and `up`'s teardown removes
//! every pod, containerd, the cgroup tree and the mounts, and checks that nothing is left.
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
use xtask::containerd::{self, PrivateContainerd};
use xtask::images::BUSYBOX_IMAGE;

use super::Ctx;
use super::agent_log::{self, LogRecord};
use super::util::{ProcSnapshot, ProcUsage, Summary, Table};
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

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    single_reps: usize,
    batch_size: usize,
    batch_reps: usize,
    idle_counts: Vec<usize>,
    window: Duration,
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
                quick: true,
            }
        } else {
            Self {
                single_reps: 10,
                batch_size: 20,
                batch_reps: 3,
                idle_counts: vec![50, 110],
                window: Duration::from_secs(60),
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
    let plan = Plan::from_env();
    let machine = Machine::read()?;
    on_bench_node(ctx, "pods", BRIDGE, SUBNET, |node, ctd| {
        let report = measure(&plan, &machine, node, ctd)?;
        println!("{report}");
        let path = ctx.save("pods", &report)?;
        eprintln!("saved {}", path.display());
        Ok(())
    })
}

/// Every measurement, as the Markdown report.
fn measure(
    plan: &Plan,
    machine: &Machine,
    node: &mut Node,
    ctd: &PrivateContainerd,
) -> Result<String> {
    let ctd_pid = ctd.pid().context("containerd is not running")?;
    let mut latency = Table::new([
        "PLEG",
        "scenario",
        "pods measured",
        "p50 (ms)",
        "p99 (ms)",
        "max (ms)",
        "agent's `new pod` log p50 / max (ms)",
        "GET /pods p50 (ms)",
        "GET /pods max (ms)",
    ]);
    let mut idle = Table::new([
        "pods",
        "PLEG",
        "bpflet CPU %",
        "containerd CPU %",
        "bpflet + containerd CPU %",
        "bpflet RSS max (MiB)",
        "containerd RSS max (MiB)",
        "all Running after (s)",
    ]);
    let mut idle_rows: Vec<Vec<IdleRow>> = vec![];
    // GET /pods while waiting for pods to run or go (the agent's responsiveness).
    let mut all_gets: Vec<f64> = vec![];
    for mode in [PlegMode::Event, PlegMode::Generic] {
        node.start_agent(mode, ctd)?;

        let gets_before = node.get_ms.len();
        let mut single = vec![];
        for i in 0..plan.single_reps {
            eprintln!(
                "bench pods: {} PLEG, 1 pod, run {}/{}",
                mode.as_str(),
                i + 1,
                plan.single_reps
            );
            let names = vec![format!("lat1-{}-{i}", mode.as_str())];
            single.extend(node.start_and_remove(&names)?);
        }
        let single_gets = node.get_ms.split_off(gets_before);
        let mut batch = vec![];
        for r in 0..plan.batch_reps {
            eprintln!(
                "bench pods: {} PLEG, {} pods at once, run {}/{}",
                mode.as_str(),
                plan.batch_size,
                r + 1,
                plan.batch_reps
            );
            let names: Vec<String> = (0..plan.batch_size)
                .map(|j| format!("lat{}-{}-r{r}-{j:02}", plan.batch_size, mode.as_str()))
                .collect();
            batch.extend(node.start_and_remove(&names)?);
        }
        let batch_gets = node.get_ms.split_off(gets_before);
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
            let s = Summary::of(&running).context("no latency samples")?;
            let g = Summary::of(gets).context("no GET /pods was timed")?;
            latency.row([
                mode.as_str().to_owned(),
                scenario,
                s.n.to_string(),
                format!("{:.0}", s.p50),
                format!("{:.0}", s.p99),
                format!("{:.0}", s.max),
                Summary::of(&seen).map_or_else(
                    || "n/a".to_owned(),
                    |v| format!("{:.0} / {:.0}", v.p50, v.max),
                ),
                format!("{:.1}", g.p50),
                format!("{:.1}", g.max),
            ]);
            all_gets.extend_from_slice(gets);
        }

        idle_rows.push(node.idle(mode, &plan.idle_counts, plan.window, ctd_pid)?);
        node.stop_agent();
    }

    // Side by side: each pod count's event row, generic row, and their ratio.
    let [event, generic] = idle_rows.as_slice() else {
        unreachable!("two PLEG modes were measured");
    };
    for (e, g) in event.iter().zip(generic) {
        for (mode, r) in [(PlegMode::Event, e), (PlegMode::Generic, g)] {
            idle.row([
                r.pods.to_string(),
                mode.as_str().to_owned(),
                format!("{:.2}", r.agent.cpu_percent),
                format!("{:.2}", r.containerd.cpu_percent),
                format!("{:.2}", r.agent.cpu_percent + r.containerd.cpu_percent),
                format!("{:.1}", mib(r.agent.rss_max_bytes)),
                format!("{:.1}", mib(r.containerd.rss_max_bytes)),
                format!("{:.1}", r.startup.as_secs_f64()),
            ]);
        }
        let ratio = |g: f64, e: f64| {
            if e > 0.0 {
                format!("{:.1}x", g / e)
            } else {
                "n/a".to_owned()
            }
        };
        idle.row([
            e.pods.to_string(),
            "generic / event".to_owned(),
            ratio(g.agent.cpu_percent, e.agent.cpu_percent),
            ratio(g.containerd.cpu_percent, e.containerd.cpu_percent),
            ratio(
                g.agent.cpu_percent + g.containerd.cpu_percent,
                e.agent.cpu_percent + e.containerd.cpu_percent,
            ),
            ratio(mib(g.agent.rss_max_bytes), mib(e.agent.rss_max_bytes)),
            ratio(
                mib(g.containerd.rss_max_bytes),
                mib(e.containerd.rss_max_bytes),
            ),
        ]);
        if let Some(alone) = &e.containerd_alone {
            idle.row([
                e.pods.to_string(),
                "none (bpflet stopped)".to_owned(),
                "0".to_owned(),
                format!("{:.2}", alone.cpu_percent),
                format!("{:.2}", alone.cpu_percent),
                String::new(),
                format!("{:.1}", mib(alone.rss_max_bytes)),
                String::new(),
            ]);
        }
    }

    let gets = Summary::of(&all_gets).context("no GET /pods was timed")?;
    let mut report = String::new();
    if plan.quick {
        let _ = writeln!(
            report,
            "**{QUICK_ENV} was set: shortened run, not for comparison.**\n"
        );
    }
    let _ = writeln!(report, "{machine}\n");
    let _ = writeln!(
        report,
        "### Manifest to Running\n\nResolution: `/pods` polled every {} ms; one GET took p50 \
         {:.1} ms, max {:.1} ms (n = {}, every GET while pods started or went; per scenario in \
         the last two columns). A latency is the time from the manifest's rename into the \
         static pod directory to the first answer showing the pod `Running` with every \
         container running. The `new pod` column is the part of it before the agent logged \
         the pod as new (inotify, the file source's rescan, the pod manager), from the \
         timestamps of its log.\n\n{latency}",
        POLL.as_millis(),
        gets.p50,
        gets.max,
        gets.n,
    );
    let _ = writeln!(
        report,
        "### Idle pods ({} s window, CPU % of one core)\n\n{idle}",
        plan.window.as_secs()
    );
    let _ = writeln!(
        report,
        "How measured: one private containerd ({}) with runc serves the whole run; for each \
         PLEG mode the release agent starts afresh with `cargo xtask up`'s config (its own \
         cgroup root, kubepods limited to 512 MiB, no other pods). Pods are host-network \
         busybox `sleep 3600` with requests of 1m CPU and 4Mi memory; the sandbox is busybox \
         `sleep` too. Latency: manifests are written to a staging directory and renamed into \
         the static pod directory, then `/pods` on 127.0.0.1 is polled every {} ms; after each \
         run the manifests are removed and the pods waited for until `/pods` no longer lists \
         them. Idle: {} pods are started, all reach `Running`, then after {} s the CPU time \
         (the process's CPU clock, `clock_getcpuclockid`: every thread, in ns) and the largest \
         RSS (`VmRSS`, read every {} s) of bpflet and of containerd are taken over the same {} s window, with nothing polling \
         the agent; then {} more pods are added and the window repeated. In the event run, \
         a last window measures containerd alone with the same pods while bpflet is stopped \
         (SIGSTOP): the runtime's own idle floor. The kernel time of \
         the event PLEG's BPF programs runs in other processes' context and is not in bpflet's \
         CPU % (see the trace bench for its cost per event).",
        machine.containerd,
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
    );
    Ok(report)
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
    pub(crate) fn read() -> Result<Self> {
        let loadavg = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?;
        let containerd = output(Command::new("containerd").arg("--version"))?;
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
    let _interrupts = Interrupts::install()?;
    let work_dir = workspace_root()
        .join(".work")
        .join(format!("bench-{bench}"));
    let (mut node, ctd) = bench_node(ctx, bench, &work_dir, bridge, subnet)?;
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
            ..containerd::Options::default()
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

    /// SIGTERM to the agent (pods keep running), SIGKILL after a grace period.
    pub(crate) fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop(Signal::SIGTERM, AGENT_STOP_GRACE);
        }
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        agent::tail(
            &fs::read_to_string(&self.agent_log).unwrap_or_default(),
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
                    self.agent_log.display(),
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
    /// until they are gone. Returns each pod's latencies.
    fn start_and_remove(&mut self, names: &[String]) -> Result<Vec<Latency>> {
        let written = names
            .iter()
            .map(|n| self.write_pod(n))
            .collect::<Result<Vec<_>>>()?;
        let up_at = self.wait_up(names, RUNNING_TIMEOUT)?;
        for name in names {
            self.remove_pod(name)?;
        }
        self.wait_gone(names)?;
        let log = agent_log::read(&self.agent_log)?;
        Ok(names
            .iter()
            .zip(&written)
            .zip(&up_at)
            .map(|((name, (w, w_wall)), u)| Latency {
                running_ms: u.saturating_duration_since(*w).as_secs_f64() * 1e3,
                seen_ms: new_pod_logged(&log, name)
                    .and_then(|at| at.duration_since(*w_wall).ok())
                    .map(|d| d.as_secs_f64() * 1e3),
            })
            .collect())
    }

    /// Starts `counts[0]` pods, measures an idle window, grows to `counts[1]`, measures
    /// again, ...; then removes every pod.
    fn idle(
        &mut self,
        mode: PlegMode,
        counts: &[usize],
        window: Duration,
        ctd_pid: u32,
    ) -> Result<Vec<IdleRow>> {
        let agent_pid = self
            .agent
            .as_ref()
            .map(Agent::id)
            .context("bpflet is not running")?;
        let mut names: Vec<String> = vec![];
        let mut rows = vec![];
        for &count in counts {
            let new: Vec<String> = (names.len()..count)
                .map(|i| format!("idle-{}-{i:03}", mode.as_str()))
                .collect();
            eprintln!(
                "bench pods: {} PLEG, starting {} more pods ({count} in all)",
                mode.as_str(),
                new.len()
            );
            let started = Instant::now();
            for name in &new {
                self.write_pod(name)?;
            }
            names.extend(new);
            self.wait_up(&names, RUNNING_TIMEOUT)?;
            let startup = started.elapsed();
            eprintln!(
                "bench pods: {count} pods Running after {:.1}s; idle window of {window:?}",
                startup.as_secs_f64()
            );
            sleep_checked(SETTLE)?;
            let [agent, containerd] = sample_pair([agent_pid, ctd_pid], window, SAMPLE_EVERY)?;
            let pods = self.pods()?;
            let down = not_up(&pods, &names);
            ensure!(
                names.iter().all(|n| find(&pods, n).is_some_and(is_up)),
                "pods stopped running during the idle window: {down}"
            );
            // The runtime's own floor, at the largest count of the event run: bpflet
            // stopped, so nothing calls containerd.
            let containerd_alone = if mode == PlegMode::Event && Some(&count) == counts.last() {
                eprintln!("bench pods: bpflet stopped (SIGSTOP); containerd alone for {window:?}");
                let pid = nix::unistd::Pid::from_raw(
                    i32::try_from(agent_pid).context("pid out of range")?,
                );
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
                    .context("stopping bpflet")?;
                let sampled = sample_pair([agent_pid, ctd_pid], window, SAMPLE_EVERY);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)
                    .context("continuing bpflet")?;
                Some(sampled?[1])
            } else {
                None
            };
            rows.push(IdleRow {
                pods: count,
                startup,
                agent,
                containerd,
                containerd_alone,
            });
        }
        eprintln!(
            "bench pods: {} PLEG, removing {} pods",
            mode.as_str(),
            names.len()
        );
        for name in &names {
            self.remove_pod(name)?;
        }
        self.wait_gone(&names)?;
        Ok(rows)
    }
}

/// A host-network busybox pod sleeping for an hour, with tiny requests.
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
        memory: 4Mi
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
        ] {
            assert!(m.contains(want), "{want:?} missing from\n{m}");
        }
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
