//! `cargo xtask bench probes`: what hundreds of probes cost the agent. 500 probes with a
//! 1 s period against the same pods without probes, with the release agent on a real private
//! containerd, in one run.
//!
//! One private containerd serves the whole run. For each variant the release agent starts
//! afresh with `cargo xtask up`'s config (event PLEG) and runs the same [`Plan::pods`]
//! host-network pods of [`CONTAINERS_PER_POD`] busybox `sleep` containers:
//! - `no probes`;
//! - `N probes`: every container has a liveness and a readiness probe with a period of
//!   [`PERIOD_SECONDS`], one httpGet and one tcpSocket (container `c0`: liveness httpGet,
//!   readiness tcpSocket; `c1` the other way round). Startup probes are left out: they stop
//!   once they pass, and a container has one probe of each kind, so two is what a container
//!   runs for good. Exec probes are left out too: their cost is containerd's and runc's (one
//!   exec each), not the scheduler's.
//!
//! The probes' target is [`Target`], a server on 127.0.0.1 in the bench's own process (it
//! runs in both variants): one long-lived process that answers every connection, as an
//! application serving its own health endpoint does. busybox `httpd` in a pod would fork a
//! child per connection, and every child's exit in a pod is a kernel event the event PLEG
//! handles: that would add 500 exits/s to what is measured.
//!
//! Per variant: every pod `Running` with every container ready (with probes: the readiness
//! probes passed), [`SETTLE`], then bpflet's and containerd's CPU time and RSS every
//! [`SAMPLE_EVERY`] over [`Plan::window`], nothing polling the agent.
//! `prober_probe_total` on `/metrics` is read just before and just after the window: the
//! probes/s measured. The bench fails when those fall below [`MIN_RATE`] of the configured
//! rate, when a container restarted or is not ready after the window, or when the agent
//! lost kernel events during the window (each loss makes it relist every pod).
//!
//! Whatever happens, the agent is stopped and `up`'s teardown removes every pod, containerd,
//! the cgroup tree and the mounts. `BPFLET_BENCH_QUICK=1` shortens every step: for trying
//! the bench, not for numbers.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use xtask::agent::Agent;
use xtask::containerd::PrivateContainerd;
use xtask::images::BUSYBOX_IMAGE;

use super::Ctx;
use super::agent_log::{self, LogRecord};
use super::pods::{
    Machine, Node, QUICK_ENV, RUNNING_TIMEOUT, SAMPLE_EVERY, SETTLE, check_interrupted, find,
    is_up, mib, not_up, on_bench_node, quick_mode, sample_pair, sleep_checked,
};
use super::util::{ProcUsage, Summary, Table, ratio};
use crate::is_root;
use crate::up::{self, PlegMode, PodView};

/// This bench's CNI bridge and subnet: apart from `up`'s, the other benches' and the
/// tests'. Host-network pods never create the bridge.
const BRIDGE: &str = "bpflet-bprb0";
const SUBNET: &str = "10.92.0.0/16";
/// Every probe's `periodSeconds`.
const PERIOD_SECONDS: u32 = 1;
/// `sleep` containers per pod, and probes per container when the variant has probes.
const CONTAINERS_PER_POD: usize = 2;
const PROBES_PER_CONTAINER: usize = 2;
/// The bench fails when fewer probes than this share of the configured rate ran.
const MIN_RATE: f64 = 0.8;
/// How often `/pods` is read while waiting for every container to be ready.
const READY_POLL: Duration = Duration::from_millis(500);
/// How long [`Target`] waits for a request on a connection: a probe's default timeout.
const TARGET_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The path [`Target`] answers with 200 and the httpGet probes ask for.
const HEALTH_PATH: &str = "/healthz";
/// The agent's log record for lost kernel events (each makes the PLEG relist every pod).
const EVENTS_LOST_MESSAGE: &str = "kernel events were lost: relisting every pod";

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    pods: usize,
    window: Duration,
    quick: bool,
}

impl Plan {
    fn from_env() -> Self {
        if quick_mode() {
            Self {
                pods: 10,
                window: Duration::from_secs(10),
                quick: true,
            }
        } else {
            Self {
                // 125 pods x 2 containers x 2 probes = 500 probes.
                pods: 125,
                window: Duration::from_secs(60),
                quick: false,
            }
        }
    }

    /// Probes in the variant with probes.
    fn probes(&self) -> usize {
        self.pods * CONTAINERS_PER_POD * PROBES_PER_CONTAINER
    }

    /// Probe runs per second in the variant with probes.
    fn probes_per_second(&self) -> f64 {
        self.probes() as f64 / f64::from(PERIOD_SECONDS)
    }
}

/// One agent run over the same pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoProbes,
    Probes,
}

impl Variant {
    const ALL: [Variant; 2] = [Variant::NoProbes, Variant::Probes];

    fn name(self, plan: &Plan) -> String {
        match self {
            Variant::NoProbes => "no probes".to_owned(),
            Variant::Probes => format!("{} probes", plan.probes()),
        }
    }

    /// Short, for pod names and log files.
    fn tag(self) -> &'static str {
        match self {
            Variant::NoProbes => "none",
            Variant::Probes => "probes",
        }
    }

    fn probes(self) -> bool {
        self == Variant::Probes
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask bench probes` needs root (BPF, cgroups, containerd)"
    );
    let plan = Plan::from_env();
    let machine = Machine::read()?;
    on_bench_node(ctx, "probes", BRIDGE, SUBNET, |node, ctd| {
        let target = Target::start()?;
        let started = Instant::now();
        let rows = measure(&plan, node, ctd, &target)?;
        let report = render(&plan, &machine, &rows, started.elapsed())?;
        println!("{report}");
        let path = ctx.save("probes", &report)?;
        eprintln!("saved {}", path.display());
        Ok(())
    })
}

/// What one variant measured.
struct Measured {
    variant: Variant,
    pods: usize,
    containers: usize,
    probes: usize,
    /// Probe runs per second over the window, from `prober_probe_total`.
    probes_per_s: f64,
    /// Probe runs over the window by result.
    runs: ProbeRuns,
    /// Connections to [`Target`] per second over the window, and of them HTTP requests.
    connections_per_s: f64,
    requests_per_s: f64,
    /// From writing the manifests to every container running and ready.
    ready_after: Duration,
    /// How busy the whole machine was over the window, in percent of all its CPUs (others'
    /// work shows here, and so does the probes' target).
    machine_busy: f64,
    /// One sample per [`SAMPLE_EVERY`] over the window.
    agent: Vec<ProcUsage>,
    containerd: Vec<ProcUsage>,
}

/// Every variant, one agent each.
fn measure(
    plan: &Plan,
    node: &mut Node,
    ctd: &PrivateContainerd,
    target: &Target,
) -> Result<Vec<Measured>> {
    let ctd_pid = ctd.pid().context("containerd is not running")?;
    let mut rows = vec![];
    for variant in Variant::ALL {
        node.start_agent(PlegMode::Event, ctd)?;
        let result = measure_variant(plan, node, ctd_pid, target, variant);
        node.stop_agent();
        // Keep each variant's log (they share a PLEG mode, hence a log name).
        let kept = node.work_dir.join(format!("agent-{}.log", variant.tag()));
        let _ = fs::rename(&node.agent_log, &kept);
        node.agent_log = kept;
        rows.push(result.with_context(|| format!("variant `{}`", variant.name(plan)))?);
    }
    Ok(rows)
}

fn measure_variant(
    plan: &Plan,
    node: &mut Node,
    ctd_pid: u32,
    target: &Target,
    variant: Variant,
) -> Result<Measured> {
    let agent_pid = node
        .agent
        .as_ref()
        .map(Agent::id)
        .context("bpflet is not running")?;
    let names: Vec<String> = (0..plan.pods)
        .map(|i| format!("prb-{}-{i:03}", variant.tag()))
        .collect();
    let name = variant.name(plan);

    eprintln!("bench probes: {name}: starting {} pods", names.len());
    let started = Instant::now();
    let probe_port = variant.probes().then_some(target.port);
    for pod in &names {
        node.write_manifest(pod, &sleep_manifest(pod, probe_port))?;
    }
    node.wait_up(&names, RUNNING_TIMEOUT)?;
    wait_ready(node, &names)?;
    let ready_after = started.elapsed();
    eprintln!(
        "bench probes: {name}: every container ready after {:.1}s",
        ready_after.as_secs_f64()
    );

    sleep_checked(SETTLE)?;
    eprintln!("bench probes: {name}: window of {:?}", plan.window);
    let log_before = fs::metadata(&node.agent_log).map_or(0, |m| m.len());
    let cpu_before = CpuTimes::read()?;
    let before = Scrape::take(node)?;
    let target_before = target.counts();
    let mut agent = vec![];
    let mut containerd = vec![];
    for _ in 0..plan.window.as_secs() {
        let [a, c] = sample_pair([agent_pid, ctd_pid], SAMPLE_EVERY, SAMPLE_EVERY)?;
        agent.push(a);
        containerd.push(c);
    }
    let after = Scrape::take(node)?;
    let target_after = target.counts();
    let machine_busy = CpuTimes::read()?.busy_percent_since(&cpu_before);

    let elapsed = after.at.saturating_duration_since(before.at).as_secs_f64();
    let runs = after.runs.since(&before.runs);
    let probes_per_s = runs.total() as f64 / elapsed;
    let connections_per_s = (target_after.0 - target_before.0) as f64 / elapsed;
    let requests_per_s = (target_after.1 - target_before.1) as f64 / elapsed;
    let probes = if variant.probes() { plan.probes() } else { 0 };
    if variant.probes() {
        let want = plan.probes_per_second();
        ensure!(
            probes_per_s >= MIN_RATE * want,
            "only {probes_per_s:.1} probe runs/s over the window, want {want:.0} (at least \
             {:.0}); {} successful, {} failed, {} unknown; last lines of {}:\n{}",
            MIN_RATE * want,
            runs.successful,
            runs.failed,
            runs.unknown,
            node.agent_log.display(),
            node.log_tail(20)
        );
    } else {
        ensure!(
            runs.total() == 0,
            "{} probe runs counted in a variant without probes",
            runs.total()
        );
    }
    let log = fs::read(&node.agent_log)
        .with_context(|| format!("reading {}", node.agent_log.display()))?;
    let window_log = agent_log::parse(&String::from_utf8_lossy(
        log.get(usize::try_from(log_before).unwrap_or(usize::MAX)..)
            .unwrap_or_default(),
    ));
    let lost = events_lost(&window_log);
    ensure!(
        lost.is_empty(),
        "the agent lost kernel events {} time(s) during the window, relisting every pod each \
         time, so its CPU time is not the probes' alone; the first: {}",
        lost.len(),
        lost[0]
    );

    let pods = node.pods()?;
    let trouble = not_ready(&pods, &names);
    ensure!(
        trouble.is_empty(),
        "after the window: {}",
        trouble.join("; ")
    );
    eprintln!(
        "bench probes: {name}: {probes_per_s:.1} probes/s, {connections_per_s:.1} connections/s \
         to the target; removing the pods"
    );
    for pod in &names {
        node.remove_pod(pod)?;
    }
    node.wait_gone(&names)?;

    Ok(Measured {
        variant,
        pods: names.len(),
        containers: names.len() * CONTAINERS_PER_POD,
        probes,
        probes_per_s,
        runs,
        connections_per_s,
        requests_per_s,
        ready_after,
        machine_busy,
        agent,
        containerd,
    })
}

/// The agent's records of lost kernel events, each as `<time>: <kernel> lost in the kernel,
/// <userspace> in the agent`.
fn events_lost(log: &[LogRecord]) -> Vec<String> {
    log.iter()
        .filter(|r| r.message == EVENTS_LOST_MESSAGE)
        .map(|r| {
            let count = |k: &str| r.u64(k).map_or_else(|| "?".to_owned(), |n| n.to_string());
            format!(
                "{}: {} lost in the kernel, {} in the agent",
                jiff::Timestamp::try_from(r.at).map_or_else(|_| "?".to_owned(), |t| t.to_string()),
                count("kernel"),
                count("userspace")
            )
        })
        .collect()
}

/// The machine's CPU time so far, every CPU together, in clock ticks (`/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Result<Self> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text).context("parsing /proc/stat")
    }

    /// From the `cpu` line: user nice system idle iowait irq softirq steal (guest time is
    /// in user already).
    fn parse(stat: &str) -> Result<Self> {
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no `cpu` line")?;
        let fields = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("not numbers: {line:?}"))?;
        ensure!(fields.len() == 8, "fewer than 8 fields: {line:?}");
        let total: u64 = fields.iter().sum();
        Ok(Self {
            busy: total - fields[3] - fields[4],
            total,
        })
    }

    fn busy_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            0.0
        } else {
            100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
        }
    }
}

/// Polls `/pods` until every container of `names` is running and ready; fails at once when
/// one restarted (a failed liveness probe).
fn wait_ready(node: &mut Node, names: &[String]) -> Result<()> {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    loop {
        check_interrupted()?;
        let pods = node.pods().context("polling /pods for readiness")?;
        let trouble = not_ready(&pods, names);
        if trouble.is_empty() {
            return Ok(());
        }
        let restarted: Vec<&String> = trouble.iter().filter(|t| t.contains("restarts")).collect();
        let timed_out = Instant::now() >= deadline;
        if timed_out || !restarted.is_empty() {
            bail!(
                "{} waiting for every container to be ready: {} pod(s) not ({}); last lines \
                 of {}:\n{}",
                if timed_out {
                    format!("timed out after {RUNNING_TIMEOUT:?}")
                } else {
                    "a container restarted".to_owned()
                },
                trouble.len(),
                restarted
                    .into_iter()
                    .chain(&trouble)
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                node.agent_log.display(),
                node.log_tail(20)
            );
        }
        thread::sleep(READY_POLL);
    }
}

/// The pods of `names` that are not up with every app container ready and never restarted,
/// with what `/pods` says of them.
fn not_ready(pods: &[PodView], names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| match find(pods, n) {
            None => Some(not_up(pods, std::slice::from_ref(n))),
            Some(p) if !is_ready(p) => Some(format!("{n}: {}", p.summary())),
            Some(_) => None,
        })
        .collect()
}

/// Up, every app container `running, ready`, and none restarted (a failed liveness probe
/// would restart it).
fn is_ready(pod: &PodView) -> bool {
    is_up(pod)
        && pod
            .containers
            .iter()
            .filter(|c| !c.init)
            .all(|c| c.state == "running, ready" && c.restarts == 0)
}

// ---------------------------------------------------------------------------------------------
// The probes' target

/// A thread of the bench that accepts connections on 127.0.0.1 one after the other and
/// answers `GET` [`HEALTH_PATH`] with 200; a bare connect (tcpSocket) gets nothing. One
/// long-lived process, no fork per connection. Stopped on drop.
struct Target {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Connections accepted, and of them requests answered with 200.
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Target {
    fn start() -> Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        let port = listener
            .local_addr()
            .context("the target's address")?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let thread = thread::Builder::new()
            .name("probe-target".to_owned())
            .spawn({
                let (stop, connections, requests) = (
                    Arc::clone(&stop),
                    Arc::clone(&connections),
                    Arc::clone(&requests),
                );
                move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        connections.fetch_add(1, Ordering::Relaxed);
                        if answer(stream) {
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .context("starting the probe target's thread")?;
        eprintln!("bench probes: probe target on 127.0.0.1:{port}");
        Ok(Self {
            port,
            stop,
            connections,
            requests,
            thread: Some(thread),
        })
    }

    /// Connections so far, and requests answered with 200.
    fn counts(&self) -> (u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept, which then sees `stop`.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request from `stream` and answers it; `true` when it was `GET` [`HEALTH_PATH`]
/// and got 200. A connection closed without a request (a tcpSocket probe) gets nothing.
fn answer(mut stream: TcpStream) -> bool {
    if stream.set_read_timeout(Some(TARGET_READ_TIMEOUT)).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
        if len == buf.len() {
            return false;
        }
    }
    let healthy = buf[..len].starts_with(format!("GET {HEALTH_PATH} ").as_bytes());
    let response: &[u8] = if healthy {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nok\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    stream.write_all(response).is_ok() && healthy
}

// ---------------------------------------------------------------------------------------------
// prober_probe_total

/// Probe runs by `result`, summed over every probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProbeRuns {
    successful: u64,
    failed: u64,
    unknown: u64,
}

impl ProbeRuns {
    /// Sums the `prober_probe_total` series of a Prometheus text exposition.
    fn parse(text: &str) -> Result<Self> {
        let mut runs = Self::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("prober_probe_total{") else {
                continue;
            };
            let (labels, value) = rest
                .rsplit_once('}')
                .with_context(|| format!("no closing brace in {line:?}"))?;
            let value: f64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no value in {line:?}"))?;
            ensure!(
                value >= 0.0 && value.fract() == 0.0,
                "not a count in {line:?}"
            );
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a non-negative whole number of runs"
            )]
            let value = value as u64;
            let slot = if labels.contains("result=\"successful\"") {
                &mut runs.successful
            } else if labels.contains("result=\"failed\"") {
                &mut runs.failed
            } else if labels.contains("result=\"unknown\"") {
                &mut runs.unknown
            } else {
                bail!("no known result label in {line:?}");
            };
            *slot += value;
        }
        Ok(runs)
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            successful: self.successful.saturating_sub(earlier.successful),
            failed: self.failed.saturating_sub(earlier.failed),
            unknown: self.unknown.saturating_sub(earlier.unknown),
        }
    }

    fn total(&self) -> u64 {
        self.successful + self.failed + self.unknown
    }
}

/// `prober_probe_total` at one instant (when the GET was sent).
struct Scrape {
    at: Instant,
    runs: ProbeRuns,
}

impl Scrape {
    fn take(node: &Node) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, node.port));
        let at = Instant::now();
        let (code, body) = node.rt.block_on(up::http_get(addr, "/metrics"))?;
        ensure!(code == 200, "GET http://{addr}/metrics: HTTP {code}");
        let text = String::from_utf8(body).context("/metrics is not UTF-8")?;
        Ok(Self {
            at,
            runs: ProbeRuns::parse(&text).context("reading /metrics")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// A host-network pod of [`CONTAINERS_PER_POD`] busybox `sleep` containers with tiny
/// requests; with `probe_port`, each container has a liveness and a readiness probe against
/// 127.0.0.1:`probe_port`, one httpGet and one tcpSocket.
fn sleep_manifest(name: &str, probe_port: Option<u16>) -> String {
    let mut text = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
"
    );
    for i in 0..CONTAINERS_PER_POD {
        let _ = write!(
            text,
            "  - name: c{i}
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, \"3600\"]
    resources:
      requests:
        cpu: 1m
        memory: 4Mi
"
        );
        if let Some(port) = probe_port {
            let http = format!("httpGet: {{host: 127.0.0.1, port: {port}, path: {HEALTH_PATH}}}");
            let tcp = format!("tcpSocket: {{host: 127.0.0.1, port: {port}}}");
            let (liveness, readiness) = if i.is_multiple_of(2) {
                (&http, &tcp)
            } else {
                (&tcp, &http)
            };
            let _ = write!(
                text,
                "    livenessProbe:
      {liveness}
      periodSeconds: {PERIOD_SECONDS}
    readinessProbe:
      {readiness}
      periodSeconds: {PERIOD_SECONDS}
"
            );
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(plan: &Plan, machine: &Machine, rows: &[Measured], took: Duration) -> Result<String> {
    let mut table = Table::new([
        "variant",
        "pods (containers)",
        "probes",
        "probe runs/s measured",
        "target connections/s (of them GETs)",
        "bpflet CPU % mean",
        "bpflet CPU % p50 / p99 (per s)",
        "bpflet RSS p50 / max (MiB)",
        "containerd CPU % mean",
        "all ready after (s)",
        "machine CPU busy % (all CPUs)",
    ]);
    let stats = rows
        .iter()
        .map(Stats::of)
        .collect::<Option<Vec<_>>>()
        .context("a window without samples")?;
    for (r, s) in rows.iter().zip(&stats) {
        table.row([
            r.variant.name(plan),
            format!("{} ({})", r.pods, r.containers),
            r.probes.to_string(),
            format!("{:.1}", r.probes_per_s),
            format!("{:.1} ({:.1})", r.connections_per_s, r.requests_per_s),
            format!("{:.2}", s.agent_cpu),
            format!(
                "{:.2} / {:.2}",
                s.agent_cpu_per_s.p50, s.agent_cpu_per_s.p99
            ),
            format!("{:.1} / {:.1}", s.rss_p50_mib, s.rss_max_mib),
            format!("{:.2}", s.containerd_cpu),
            format!("{:.1}", r.ready_after.as_secs_f64()),
            format!("{:.1}", r.machine_busy),
        ]);
    }
    let by = |v: Variant| rows.iter().position(|r| r.variant == v);
    let (Some(none), Some(probes)) = (by(Variant::NoProbes), by(Variant::Probes)) else {
        bail!("a variant is missing from the results");
    };
    let name = |i: usize| rows[i].variant.name(plan);
    let (p, b) = (&stats[probes], &stats[none]);
    table.row([
        format!("{} / {}", name(probes), name(none)),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        ratio(p.agent_cpu, b.agent_cpu),
        format!(
            "{} / {}",
            ratio(p.agent_cpu_per_s.p50, b.agent_cpu_per_s.p50),
            ratio(p.agent_cpu_per_s.p99, b.agent_cpu_per_s.p99)
        ),
        format!(
            "{} / {}",
            ratio(p.rss_p50_mib, b.rss_p50_mib),
            ratio(p.rss_max_mib, b.rss_max_mib)
        ),
        ratio(p.containerd_cpu, b.containerd_cpu),
    ]);

    let mut report = String::new();
    if plan.quick {
        let _ = writeln!(
            report,
            "**{QUICK_ENV} was set: shortened run, not for comparison.**\n"
        );
    }
    let _ = writeln!(
        report,
        "{machine} The whole bench took {:.1} min.\n",
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        report,
        "### {} probes, period {PERIOD_SECONDS} s ({} s window, CPU % of one core)\n\n{table}",
        plan.probes(),
        plan.window.as_secs()
    );
    let with = &rows[probes];
    let rss_delta = p.rss_p50_mib - b.rss_p50_mib;
    let _ = writeln!(
        report,
        "- bpflet CPU per 1000 probe runs/s: {:.2} % of a core ({:.2} - {:.2} % over \
         {:.1} runs/s).",
        (p.agent_cpu - b.agent_cpu) / with.probes_per_s * 1000.0,
        p.agent_cpu,
        b.agent_cpu,
        with.probes_per_s,
    );
    let _ = writeln!(
        report,
        "- bpflet RSS (p50) with {} probes: {rss_delta:+.1} MiB ({:+.1} KiB per probe).",
        with.probes,
        rss_delta * 1024.0 / with.probes.max(1) as f64,
    );
    let _ = writeln!(
        report,
        "- Probe runs in the window: {} successful, {} failed, {} unknown.\n",
        with.runs.successful, with.runs.failed, with.runs.unknown,
    );
    let _ = writeln!(
        report,
        "How measured: one private containerd ({}) with runc serves the whole run; for each \
         variant the release agent starts afresh with `cargo xtask up`'s config (event PLEG, \
         its own cgroup root, kubepods limited to 512 MiB, no other pods) and runs the same \
         {} host-network pods of {CONTAINERS_PER_POD} busybox `sleep 3600` containers \
         (requests 1m CPU, 4Mi memory each). `{}`: each container has a liveness and a \
         readiness probe with `periodSeconds: {PERIOD_SECONDS}`, one httpGet \
         (`{HEALTH_PATH}`) and one tcpSocket, against 127.0.0.1 ({} probes, half of each; no \
         startup probes, which stop once passed, and no exec probes, which cost containerd \
         and runc). The target is a server thread of the bench on 127.0.0.1, running in both \
         variants: one long-lived process, as an application serving its own health \
         endpoint (busybox `httpd` forks per connection, and each child's exit in a pod is a \
         kernel event for the agent). Once every container is running and ready, after {} \
         s, bpflet's and containerd's CPU time (their CPU clocks, `clock_getcpuclockid`: ns, \
         every thread) and RSS (`VmRSS`) are read every {} s over a {} s window with nothing \
         polling the agent; p50/p99 are of those per-second samples (nearest rank: with {} \
         samples, p99 is the largest). Machine CPU busy: `/proc/stat` over the window, \
         every CPU (the target's thread, and whatever else ran). Probe runs/s: \
         `prober_probe_total` on `/metrics`, read just before and just after the window. The \
         bench fails if fewer than {:.0} % \
         of the configured rate ran, if a container restarted or was not ready after the \
         window, or if the agent lost kernel events during the window.",
        machine.containerd,
        plan.pods,
        name(probes),
        plan.probes(),
        SETTLE.as_secs(),
        SAMPLE_EVERY.as_secs(),
        plan.window.as_secs(),
        with.agent.len(),
        MIN_RATE * 100.0,
    );
    Ok(report)
}

/// A variant's window, summarised.
struct Stats {
    agent_cpu: f64,
    agent_cpu_per_s: Summary,
    rss_p50_mib: f64,
    rss_max_mib: f64,
    containerd_cpu: f64,
}

impl Stats {
    fn of(r: &Measured) -> Option<Self> {
        let per_s: Vec<f64> = r.agent.iter().map(|u| u.cpu_percent).collect();
        let rss: Vec<f64> = r.agent.iter().map(|u| mib(u.rss_last_bytes)).collect();
        Some(Self {
            agent_cpu: mean_cpu(&r.agent)?,
            agent_cpu_per_s: Summary::of(&per_s)?,
            rss_p50_mib: Summary::of(&rss)?.p50,
            rss_max_mib: mib(r.agent.iter().map(|u| u.rss_max_bytes).max()?),
            containerd_cpu: mean_cpu(&r.containerd)?,
        })
    }
}

/// CPU time over wall time of consecutive samples, in percent of one core.
fn mean_cpu(samples: &[ProcUsage]) -> Option<f64> {
    let wall: f64 = samples.iter().map(|u| u.wall.as_secs_f64()).sum();
    let cpu: f64 = samples.iter().map(|u| u.cpu_seconds).sum();
    (wall > 0.0).then(|| 100.0 * cpu / wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_kernel_events_are_read_from_json_records() {
        let log = agent_log::parse(
            r#"{"timestamp":"2026-11-23T20:01:02.5Z","level":"WARN","fields":{"message":"kernel events were lost: relisting every pod","kernel":3,"userspace":0},"target":"bpflet::pleg::router"}
{"timestamp":"2026-11-23T20:01:03Z","level":"INFO","fields":{"message":"new pod","pod":"prb-p-000-benchnode_default(1)"},"target":"bpflet::pods::manager"}
"#,
        );
        assert_eq!(
            events_lost(&log),
            ["2026-11-23T20:01:02.5Z: 3 lost in the kernel, 0 in the agent"]
        );
        assert!(events_lost(&log[1..]).is_empty());
    }

    #[test]
    fn probe_runs_sum_every_series_by_result() {
        let text = "\
# HELP prober_probe_total Cumulative number of a liveness, readiness or startup probe.
# TYPE prober_probe_total counter
prober_probe_total{container=\"c0\",namespace=\"default\",pod=\"a-n\",pod_uid=\"1\",probe_type=\"Liveness\",result=\"successful\"} 12
prober_probe_total{container=\"c0\",namespace=\"default\",pod=\"a-n\",pod_uid=\"1\",probe_type=\"Readiness\",result=\"successful\"} 3
prober_probe_total{container=\"c1\",namespace=\"default\",pod=\"a-n\",pod_uid=\"1\",probe_type=\"Liveness\",result=\"failed\"} 2
prober_probe_total{container=\"c1\",namespace=\"default\",pod=\"a-n\",pod_uid=\"1\",probe_type=\"Liveness\",result=\"unknown\"} 1
prober_probe_total_created 5
kubelet_running_pods 1
";
        let runs = ProbeRuns::parse(text).unwrap();
        assert_eq!(
            runs,
            ProbeRuns {
                successful: 15,
                failed: 2,
                unknown: 1
            }
        );
        assert_eq!(runs.total(), 18);
        let later = ProbeRuns {
            successful: 20,
            ..runs
        };
        assert_eq!(later.since(&runs).total(), 5);
        assert_eq!(
            ProbeRuns::parse("kubelet_running_pods 3\n")
                .unwrap()
                .total(),
            0
        );
        assert!(ProbeRuns::parse("prober_probe_total{result=\"weird\"} 1\n").is_err());
    }

    #[test]
    fn probed_pods_have_two_probes_per_container_of_both_handlers() {
        let m = sleep_manifest("prb-probes-007", Some(4242));
        assert_eq!(m.matches("livenessProbe:").count(), CONTAINERS_PER_POD);
        assert_eq!(m.matches("readinessProbe:").count(), CONTAINERS_PER_POD);
        assert_eq!(
            m.matches("httpGet: {host: 127.0.0.1, port: 4242, path: /healthz}")
                .count(),
            CONTAINERS_PER_POD
        );
        assert_eq!(
            m.matches("tcpSocket: {host: 127.0.0.1, port: 4242}")
                .count(),
            CONTAINERS_PER_POD
        );
        assert_eq!(m.matches("periodSeconds: 1\n").count(), 4);
        for want in [
            "  name: prb-probes-007\n",
            "hostNetwork: true",
            "- name: c1\n",
        ] {
            assert!(m.contains(want), "{want:?} missing from\n{m}");
        }
        let plain = sleep_manifest("prb-none-007", None);
        assert!(!plain.contains("Probe"), "{plain}");
        assert_eq!(plain.matches("command: [sleep").count(), CONTAINERS_PER_POD);
    }

    #[test]
    fn target_answers_health_gets_and_counts_bare_connects() {
        let target = Target::start().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port));
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        };
        assert!(get(HEALTH_PATH).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/other").starts_with("HTTP/1.1 404 "));
        drop(TcpStream::connect(addr).unwrap());
        // The bare connect is counted once the target has seen it close.
        let deadline = Instant::now() + Duration::from_secs(5);
        while target.counts() != (3, 1) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(target.counts(), (3, 1));
    }

    #[test]
    fn machine_cpu_busy_leaves_out_idle_and_iowait() {
        let earlier = CpuTimes::parse(
            "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1\n",
        )
        .unwrap();
        assert_eq!(
            earlier,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let later = CpuTimes::parse("cpu  130 0 60 950 50 5 5 0 30 0\n").unwrap();
        assert!((later.busy_percent_since(&earlier) - 25.0).abs() < 1e-9);
        assert!(CpuTimes::parse("cpu0 1 2 3\n").is_err());
    }

    #[test]
    fn the_full_plan_has_500_probes() {
        let full = Plan {
            pods: 125,
            window: Duration::from_secs(60),
            quick: false,
        };
        assert_eq!(full.probes(), 500);
        assert!((full.probes_per_second() - 500.0).abs() < 1e-9);
    }

    #[test]
    fn readiness_needs_every_app_container_ready_and_no_restart() {
        use crate::up::ContainerView;
        let pod = |states: &[(&str, i64)]| PodView {
            name: "p-benchnode".to_owned(),
            static_name: Some("p".to_owned()),
            uid: None,
            phase: "Running".to_owned(),
            containers: states
                .iter()
                .map(|&(state, restarts)| ContainerView {
                    name: "c".to_owned(),
                    init: false,
                    state: state.to_owned(),
                    restarts,
                    last: None,
                    oom_killed: false,
                })
                .collect(),
        };
        assert!(is_ready(&pod(&[
            ("running, ready", 0),
            ("running, ready", 0)
        ])));
        assert!(!is_ready(&pod(&[
            ("running, ready", 0),
            ("running, not ready", 0)
        ])));
        assert!(!is_ready(&pod(&[("running, ready", 1)])));
        let names = ["p", "q"].map(String::from);
        let trouble = not_ready(&[pod(&[("running, not ready", 0)])], &names);
        assert_eq!(trouble.len(), 2, "{trouble:?}");
    }
}
