//! `cargo xtask bench cluster`: bpflet as a node of the real control plane (`tests/k8s`,
//! [`xtask::cluster`]), event PLEG against generic PLEG and against the upstream kubelet,
//! judged through the API server.
//!
//! One control plane (its API server writing an audit log: every request, `Metadata` level)
//! and one private containerd 2 (v2.2.10 with runc v1.4.4, built by `cargo xtask
//! build-peer`) serve the whole run, for four columns in turn, each joining as the same node
//! [`NODE`]:
//! - `event` and `generic`: the release agent with `--kubeconfig node.kubeconfig --node-ip
//!   127.0.0.1` and `cargo xtask up`'s config in that PLEG mode;
//! - `kubelet`: the upstream kubelet v1.34.4 ([`xtask::peer::Kubelet`]) with the same
//!   `node.kubeconfig` (client certificate `system:node:benchnode` in `system:nodes`, signed
//!   by the cluster CA: the Node authorizer and NodeRestriction take it for the node),
//!   its own API authenticated and authorized by the API server (webhook, the cluster CA
//!   for client certificates) as a kubeadm node's, JSON logs; no `--node-ip` (it refuses
//!   127.0.0.1 and picks its host's address, which the bench never uses);
//! - `kubelet-evented`: the same with `featureGates: {EventedPLEG: true}`. Whether its
//!   evented PLEG ran is read from the kubelet's `/metrics` (CRI event streams opened and
//!   failed); one that fell back to relisting is reported as such.
//!
//! Same pods for all (bare busybox pods bound to the node, host network), same cgroup root
//! scheme and limits: bpflet runs under the bench's cgroup root `R` and limits `R/kubepods`
//! to 512 MiB (`enforceNodeAllocatable: [pods]`, `systemReserved` memory = MemTotal - 512
//! MiB, `evictionHard memory.available: 100Mi`); the kubelet of a column runs under
//! `R/<column>`, a root of its own in the same tree, with the same three settings, which
//! give its `R/<column>/kubepods` the same 512 MiB (the kubelet limits kubepods to capacity
//! minus the reservations; its capacity is MemTotal; `bench::peer` checks the limit it
//! wrote) and the same eviction threshold. The kubelet is set up as in every bench with
//! kubelet columns (`bench::peer`), plus `KubeletSpec::cluster`.
//!
//! One control plane rather than one per column: the columns differ only in the agent, and
//! between them the node is made clean (no pods, its Node and Lease deleted) before every
//! join, so each starts from what a new node sees. For each column:
//!
//! 1. Node join: the Node and its Lease are deleted, two watches (Node, Lease) are open on
//!    the API server, and the agent is spawned; from the spawn to the first watch event
//!    showing the Node `Ready=True`, and to the first Lease event; the agent's own record of
//!    the registration (bpflet's heartbeat record, the kubelet's `Successfully registered
//!    node`) besides. [`Plan::joins`] times; the last agent stays up for the rest.
//! 2. Container exit to the API: bare pods bound to the node (`restartPolicy: Never`,
//!    `sleep`), a batch at a time; a watch on their pods streams from the API server
//!    (`kubectl get --raw '...?watch=1'`, each line stamped as it arrives). Each container's
//!    process (found through the private containerd's task list and checked to be in the
//!    bench's cgroup tree) gets SIGKILL at a random moment; the latency runs from just
//!    before the kill to the first watch event showing the container terminated with 137.
//! 3. Idle at [`Plan::idle_pods`] pods: that many sleeping pods, all Running, a pause of
//!    [`SETTLE`], then a window of [`Plan::window`] with nothing else happening: the audit
//!    events of `system:node:<node>` in the window (stage `RequestReceived`: each request
//!    once, watches included) by verb and resource, against upstream's budget; CPU time and
//!    RSS of the agent and CPU time of kube-apiserver over the same window.
//!
//! Waits poll with generous bounds and fail naming what did not come up; they are never
//! timing claims. `BPFLET_BENCH_QUICK=1` shortens every step: for trying the bench, not for
//! numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use xtask::cluster::{self, ControlPlane, KUBERNETES_VERSION};
use xtask::containerd::{Binaries, PrivateContainerd};
use xtask::images::BUSYBOX_IMAGE;
use xtask::peer::ClusterAccess;

use super::Ctx;
use super::agent_log;
use super::peer::{self, BenchKubelet, BenchKubeletSpec, EventedStreams, Switches};
use super::pods::{
    Machine, NODE, Node, check_interrupted, mib, quick_mode, sample_pair, sleep_checked,
};
use super::util::{ProcUsage, Summary, Table, fmt_opt, ms_between, ratio, repeat};
use crate::is_root;
use crate::up::PlegMode;

/// This bench's CNI bridge and subnet (host-network pods never create the bridge).
const BRIDGE: &str = "bpflet-clus0";
const SUBNET: &str = "10.92.0.0/16";
/// The namespace of every pod of the bench.
const NAMESPACE: &str = "default";
/// The label every pod of the bench carries; its value names the set.
const SET_LABEL: &str = "bpflet-bench";
/// The exit code of a container whose init got SIGKILL.
const KILLED_EXIT_CODE: i64 = 137;
/// After the pods are Running, before the idle window: their statuses settle.
const SETTLE: Duration = Duration::from_secs(20);
/// How often CPU time and RSS are read during the idle window.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Before each kill, a random pause of up to this (ms): the generic relist's period, so
/// kills meet it at random phases.
const KILL_PHASE_MS: u64 = 1_000;
/// Upper bounds for waits; never timing claims.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const RUNNING_TIMEOUT: Duration = Duration::from_secs(300);
const GONE_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(500);

/// How much of everything.
#[derive(Debug, Clone)]
struct Plan {
    joins: usize,
    exit_batches: usize,
    batch_size: usize,
    idle_pods: usize,
    window: Duration,
    quick: bool,
}

impl Plan {
    fn from_env() -> Self {
        if quick_mode() {
            Self {
                joins: 1,
                exit_batches: 1,
                batch_size: 4,
                idle_pods: 10,
                window: Duration::from_secs(30),
                quick: true,
            }
        } else {
            Self {
                joins: 3,
                exit_batches: 3,
                batch_size: 10,
                idle_pods: 110,
                window: Duration::from_secs(120),
                quick: false,
            }
        }
    }
}

/// The agent on the node in one column of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    /// bpflet with this PLEG.
    Bpflet(PlegMode),
    /// The upstream kubelet, generic PLEG (its default).
    Kubelet,
    /// The upstream kubelet with `featureGates: {EventedPLEG: true}`.
    KubeletEvented,
}

/// Every column, in the order they run and show; ratios are against the first.
const COLUMNS: [Column; 4] = [
    Column::Bpflet(PlegMode::Event),
    Column::Bpflet(PlegMode::Generic),
    Column::Kubelet,
    Column::KubeletEvented,
];

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Bpflet(mode) => mode.as_str(),
            Column::Kubelet => "kubelet",
            Column::KubeletEvented => "kubelet-evented",
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask bench cluster` needs root (BPF, cgroups, containerd)"
    );
    peer::require_built()?;
    let plan = Plan::from_env();
    let machine = Machine::read_with(&xtask::peer::bin_dir().join("containerd"))?;
    let versions = peer::versions()?;
    cluster::build().context("building the Kubernetes test bed (tests/k8s)")?;
    super::pods::on_bench_node_with(
        ctx,
        "cluster",
        BRIDGE,
        SUBNET,
        Binaries::containerd2(),
        |node, ctd| {
            let started = Instant::now();
            let mut config = cluster::Config::new(node.work_dir.join("control-plane"));
            config.node_name = NODE.to_owned();
            config.audit = true;
            let cp = ControlPlane::start(&config, &|| check_interrupted().is_err())
                .context("starting the control plane")?;
            node.agent_args = vec![
                "--kubeconfig".to_owned(),
                cp.layout.node_kubeconfig.display().to_string(),
                "--node-ip".to_owned(),
                "127.0.0.1".to_owned(),
            ];
            let mut agents = Agents {
                node,
                ctd,
                cp: &cp,
                kubelet: None,
            };
            let measured = measure(&plan, &mut agents);
            // The agent goes before the control plane it talks to.
            let agent_stopped = agents.stop();
            let stopped = cp.stop();
            let sessions = measured?;
            agent_stopped?;
            stopped?;
            let report = render(&plan, &machine, &versions, &sessions, started.elapsed());
            println!("{report}");
            let path = ctx.save("cluster", &report)?;
            eprintln!("saved {}", path.display());
            Ok(())
        },
    )
}

/// What one column measured.
struct Session {
    column: Column,
    joins: Vec<Join>,
    /// Kill to the watch event showing the exit, ms.
    exits: Vec<f64>,
    idle: Idle,
    /// `kubelet-evented`: the CRI event streams its evented PLEG opened and failed to open,
    /// from its `/metrics` at the end.
    evented_streams: Option<EventedStreams>,
}

/// One join: from the agent's spawn, ms.
struct Join {
    /// The agent's own record of the Node registered.
    registered_ms: Option<f64>,
    ready_ms: f64,
    lease_ms: f64,
}

/// The idle window.
struct Idle {
    /// From creating the pods to all of them Running in the API server.
    startup: Duration,
    window: Duration,
    requests: RequestCounts,
    agent: ProcUsage,
    apiserver: ProcUsage,
}

fn measure(plan: &Plan, agents: &mut Agents) -> Result<Vec<Session>> {
    let api = Api::new(agents.cp);
    api.wait_default_service_account()?;
    let mut rng = fastrand::Rng::new();
    let mut sessions = vec![];
    for column in COLUMNS {
        let session = measure_column(plan, &api, agents, column, &mut rng)
            .with_context(|| format!("column {}", column.name()));
        // Whatever happened, the next column starts on an empty node; after a failure the
        // agent may be gone, so the API server is told not to wait for it.
        let cleaned = api.delete_set_pods("", session.is_err());
        let stopped = agents.stop();
        sessions.push(session?);
        cleaned?;
        stopped?;
    }
    Ok(sessions)
}

fn measure_column(
    plan: &Plan,
    api: &Api,
    agents: &mut Agents,
    column: Column,
    rng: &mut fastrand::Rng,
) -> Result<Session> {
    let tag = column.name();
    let mut joins = vec![];
    for i in 0..plan.joins {
        eprintln!("bench cluster: {tag}: join {}/{}", i + 1, plan.joins);
        agents.stop()?;
        joins.push(join(api, agents, column)?);
    }

    let exits = repeat(
        &format!("bench cluster: {tag}: exits, batch"),
        plan.exit_batches,
        |b| exit_batch(api, agents, column, b, plan.batch_size, rng),
    )?;

    eprintln!(
        "bench cluster: {tag}: {} idle pods, then a {:?} window",
        plan.idle_pods, plan.window
    );
    let idle = idle(api, agents, column, plan)?;
    let evented_streams = if column == Column::KubeletEvented {
        Some(agents.evented_streams()?)
    } else {
        None
    };
    Ok(Session {
        column,
        joins,
        exits,
        idle,
        evented_streams,
    })
}

// ---------------------------------------------------------------------------------------------
// The agents

/// The agent of each column on the one node, containerd and control plane: bpflet through
/// the bench's [`Node`], the kubelet through [`BenchKubelet`].
struct Agents<'a> {
    node: &'a mut Node,
    ctd: &'a PrivateContainerd,
    cp: &'a ControlPlane,
    kubelet: Option<BenchKubelet>,
}

impl Agents<'_> {
    /// Starts the agent of `column`; returns once it serves `/pods` (and for bpflet, runs
    /// the PLEG of its mode).
    fn start(&mut self, column: Column) -> Result<()> {
        match column {
            Column::Bpflet(mode) => self.node.start_agent(mode, self.ctd),
            Column::Kubelet | Column::KubeletEvented => {
                self.kubelet = Some(BenchKubelet::start(&self.kubelet_spec(column)?, self.ctd)?);
                Ok(())
            }
        }
    }

    /// The kubelet of `column` as a node of the control plane, set up as every bench's
    /// kubelet column (`bench::peer`), with its own static pod directory and read-only port.
    fn kubelet_spec(&self, column: Column) -> Result<BenchKubeletSpec> {
        let switches = if column == Column::KubeletEvented {
            Switches::EVENTED
        } else {
            Switches::GENERIC
        };
        let mut spec = BenchKubeletSpec::on_node(self.node, column.name(), switches);
        spec.manifests = spec.work_dir.join("manifests");
        spec.read_only_port = xtask::agent::free_port()?;
        // No `--node-ip 127.0.0.1` as bpflet has: the kubelet refuses a loopback node IP
        // (`validateNodeIP`) and would fail its node-address setter on every status update,
        // so it picks its address as upstream does by default (the bench never uses it).
        spec.cluster = Some(ClusterAccess {
            kubeconfig: self.cp.layout.node_kubeconfig.clone(),
            client_ca_file: self.cp.layout.pki.join("ca.crt"),
        });
        Ok(spec)
    }

    /// Stops whichever agent runs (pods keep running).
    fn stop(&mut self) -> Result<()> {
        self.node.stop_agent();
        match self.kubelet.take() {
            Some(kubelet) => kubelet.stop(),
            None => Ok(()),
        }
    }

    /// The running agent's pid.
    fn pid(&self) -> Result<u32> {
        match &self.kubelet {
            Some(kubelet) => kubelet.pid(),
            None => self
                .node
                .agent
                .as_ref()
                .map(xtask::agent::Agent::id)
                .context("bpflet is not running"),
        }
    }

    /// When the running agent logged its Node registered.
    fn registered(&self) -> Result<Option<SystemTime>> {
        match &self.kubelet {
            Some(kubelet) => Ok(peer::first_logged(
                &kubelet.log()?,
                "Successfully registered node",
                None,
            )),
            None => Ok(registered_logged(&agent_log::read(&self.node.agent_log)?)),
        }
    }

    /// The running agent's log file and its last lines.
    fn log_tail(&self, lines: usize) -> String {
        match &self.kubelet {
            Some(kubelet) => format!(
                "last lines of {}:\n{}",
                kubelet.log_path().display(),
                kubelet.log_tail(lines)
            ),
            None => format!(
                "last lines of {}:\n{}",
                self.node.agent_log.display(),
                self.node.log_tail(lines)
            ),
        }
    }

    /// The running kubelet's evented PLEG streams, from its `/metrics`.
    fn evented_streams(&self) -> Result<EventedStreams> {
        self.kubelet
            .as_ref()
            .context("the kubelet is not running")?
            .evented_streams()
    }
}

// ---------------------------------------------------------------------------------------------
// Join

/// Deletes the Node and its Lease, opens watches on both, spawns the agent and waits until
/// the Node is Ready and the Lease exists. The agent stays up.
fn join(api: &Api, agents: &mut Agents, column: Column) -> Result<Join> {
    api.delete_node_and_lease()?;
    let mut nodes = api.watch(
        "node",
        &format!("/api/v1/nodes?fieldSelector=metadata.name%3D{NODE}"),
    )?;
    let mut leases = api.watch(
        "lease",
        &format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases?fieldSelector=metadata.name%3D{NODE}"
        ),
    )?;
    let spawned = SystemTime::now();
    agents.start(column)?;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        check_interrupted()?;
        nodes.check()?;
        leases.check()?;
        let ready = nodes.first(|e| node_ready(&e.object));
        let lease = leases.first(|_| true);
        if let (Some(ready), Some(lease)) = (ready, lease) {
            return Ok(Join {
                registered_ms: agents.registered()?.map(|at| ms_between(spawned, at)),
                ready_ms: ms_between(spawned, ready),
                lease_ms: ms_between(spawned, lease),
            });
        }
        if Instant::now() >= deadline {
            bail!(
                "after {JOIN_TIMEOUT:?} the watches show {} (Ready=True: {}) and {} Lease \
                 event(s); {}",
                nodes.describe_last(|o| format!("Node conditions {}", o["status"]["conditions"])),
                ready.is_some(),
                leases.len(),
                agents.log_tail(20)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// When the agent logged its Node registered (the heartbeat's record).
fn registered_logged(log: &[agent_log::LogRecord]) -> Option<SystemTime> {
    log.iter()
        .find(|r| {
            r.target == "bpflet::cluster::heartbeat"
                && r.message == "node registered with the API server"
        })
        .map(|r| r.at)
}

/// Whether a Node's `Ready` condition is `True`.
fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

// ---------------------------------------------------------------------------------------------
// Exits

/// Starts a batch of `size` pods, kills each one's container at a random moment and times
/// until the watch shows it terminated with 137; then deletes the batch.
fn exit_batch(
    api: &Api,
    agents: &Agents,
    column: Column,
    batch: usize,
    size: usize,
    rng: &mut fastrand::Rng,
) -> Result<Vec<f64>> {
    let tag = column.name();
    let set = format!("exit-{tag}-{batch}");
    let names: Vec<String> = (0..size)
        .map(|i| format!("exit-{tag}-{:02}", batch * size + i))
        .collect();
    let mut watch = api.watch(
        "exit pods",
        &format!("/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={SET_LABEL}%3D{set}"),
    )?;
    api.create_pods(&set, &names, "Never", &agents.node.work_dir)?;

    // Running, with a container id, on the watch.
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    let ids = loop {
        check_interrupted()?;
        watch.check()?;
        let ids: Vec<Option<String>> = names
            .iter()
            .map(|n| watch.latest(n).as_ref().and_then(running_container_id))
            .collect();
        if ids.iter().all(Option::is_some) {
            break ids.into_iter().flatten().collect::<Vec<_>>();
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} exit pods not running after {RUNNING_TIMEOUT:?}: {}",
            ids.iter().filter(|i| i.is_none()).count(),
            names.len(),
            names
                .iter()
                .zip(&ids)
                .filter(|(_, id)| id.is_none())
                .map(|(n, _)| format!("{n}: {}", watch.describe(n)))
                .take(3)
                .collect::<Vec<_>>()
                .join("; ")
        );
        thread::sleep(POLL);
    };

    let pids = task_pids(agents.ctd)?;
    let mut latencies = vec![];
    for (name, id) in names.iter().zip(&ids) {
        let pid = *pids
            .get(id)
            .with_context(|| format!("{name}: container {id} has no task in containerd"))?;
        check_ours(pid, &agents.node.cgroup_root).with_context(|| format!("{name}: pid {pid}"))?;
        sleep_checked(Duration::from_millis(rng.u64(0..KILL_PHASE_MS)))?;
        let killed = SystemTime::now();
        kill(
            Pid::from_raw(i32::try_from(pid).context("pid out of range")?),
            Signal::SIGKILL,
        )
        .with_context(|| format!("killing {name}'s container (pid {pid})"))?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let seen = loop {
            check_interrupted()?;
            watch.check()?;
            if let Some(at) =
                watch.first_for(name, killed, |o| terminated_with(o, KILLED_EXIT_CODE))
            {
                break at;
            }
            ensure!(
                Instant::now() < deadline,
                "{name}: its container was killed {EXIT_TIMEOUT:?} ago and the watch still \
                 shows {}",
                watch.describe(name)
            );
            thread::sleep(Duration::from_millis(2));
        };
        latencies.push(ms_between(killed, seen));
    }
    drop(watch);
    api.delete_set_pods(&set, false)?;
    Ok(latencies)
}

/// The id of the pod's first container when it is running (`containerd://<id>` without the
/// scheme).
fn running_container_id(pod: &Value) -> Option<String> {
    let cs = &pod["status"]["containerStatuses"][0];
    if !cs["state"]["running"].is_object() {
        return None;
    }
    cs["containerID"]
        .as_str()?
        .split_once("://")
        .map(|(_, id)| id.to_owned())
}

/// Whether the pod's first container is terminated (or restarted from a termination) with
/// `code`.
fn terminated_with(pod: &Value, code: i64) -> bool {
    let cs = &pod["status"]["containerStatuses"][0];
    cs["state"]["terminated"]["exitCode"].as_i64() == Some(code)
        || (cs["restartCount"].as_u64().unwrap_or(0) > 0
            && cs["lastState"]["terminated"]["exitCode"].as_i64() == Some(code))
}

/// Container id to pid of every task of the private containerd's CRI namespace (through
/// its own `ctr`).
fn task_pids(ctd: &PrivateContainerd) -> Result<BTreeMap<String, u32>> {
    let text = crate::output(
        Command::new(ctd.binaries.tool("ctr")?)
            .arg("--address")
            .arg(&ctd.socket)
            .args(["-n", "k8s.io", "tasks", "ls"]),
    )?;
    parse_task_pids(&text)
}

/// `ctr tasks ls`: a `TASK PID STATUS` header, then one task a line.
fn parse_task_pids(text: &str) -> Result<BTreeMap<String, u32>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.split_whitespace().take(2).eq(["TASK", "PID"]),
        "`ctr tasks ls` printed an unexpected header: {header:?}"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let (Some(id), Some(pid)) = (f.next(), f.next()) else {
                bail!("`ctr tasks ls`: no pid in {l:?}");
            };
            let pid = pid
                .parse()
                .with_context(|| format!("`ctr tasks ls`: bad pid in {l:?}"))?;
            Ok((id.to_owned(), pid))
        })
        .collect()
}

/// Refuses a pid outside the bench's cgroup tree: the bench signals only what it created.
fn check_ours(pid: u32, cgroup_root: &str) -> Result<()> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let root = format!(":{}/", cgroup_root.trim_end_matches('/'));
    ensure!(
        text.lines().any(|l| l.contains(&root)),
        "not in the bench's cgroup tree {cgroup_root}: {}",
        text.trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle

fn idle(api: &Api, agents: &Agents, column: Column, plan: &Plan) -> Result<Idle> {
    let tag = column.name();
    let set = format!("idle-{tag}");
    let names: Vec<String> = (0..plan.idle_pods)
        .map(|i| format!("idle-{tag}-{i:03}"))
        .collect();
    let started = Instant::now();
    api.create_pods(&set, &names, "Always", &agents.node.work_dir)?;
    api.wait_running(&set, names.len())?;
    let startup = started.elapsed();
    eprintln!(
        "bench cluster: {} pods Running (API) after {:.1}s; settling {SETTLE:?}",
        names.len(),
        startup.as_secs_f64()
    );
    sleep_checked(SETTLE)?;

    let agent_pid = agents.pid()?;
    let apiserver_pid = api.apiserver_pid()?;
    let from = SystemTime::now();
    let [agent, apiserver] = sample_pair([agent_pid, apiserver_pid], plan.window, SAMPLE_EVERY)?;
    let to = SystemTime::now();
    api.wait_running(&set, names.len())
        .context("pods stopped running during the idle window")?;

    let user = format!("system:node:{NODE}");
    let requests = RequestCounts::from_logs(&api.audit_logs()?, &user, from, to)?;
    ensure!(
        requests.total() > 0,
        "the audit log has no request of {user} in the idle window: is auditing on ({})?",
        api.audit_log.display()
    );
    api.delete_set_pods(&set, false)?;
    Ok(Idle {
        startup,
        window: to.duration_since(from).unwrap_or(plan.window),
        requests,
        agent,
        apiserver,
    })
}

// ---------------------------------------------------------------------------------------------
// Audit log

/// The fields of an audit event (`audit.k8s.io/v1` `Event`) this bench reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    stage: String,
    verb: String,
    user: AuditUser,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    request_received_timestamp: String,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
}

#[derive(Debug, Deserialize)]
struct AuditUser {
    #[serde(default)]
    username: String,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

#[derive(Debug, Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

impl AuditEvent {
    /// `<verb> <resource>[/<subresource>]`, or the verb and path of a non-resource request.
    fn class(&self) -> String {
        match &self.object_ref {
            Some(o) if !o.resource.is_empty() => {
                if o.subresource.is_empty() {
                    format!("{} {}", self.verb, o.resource)
                } else {
                    format!("{} {}/{}", self.verb, o.resource, o.subresource)
                }
            }
            _ => format!(
                "{} {}",
                self.verb,
                self.request_uri.split('?').next().unwrap_or_default()
            ),
        }
    }
}

/// One user's requests in a window, by class: each request counted once, at its
/// `RequestReceived` event (a watch's request too, though it completes much later).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RequestCounts {
    by_class: BTreeMap<String, u64>,
    /// Requests in the window that completed with a status of 400 or more.
    failed: u64,
}

impl RequestCounts {
    fn from_logs(paths: &[PathBuf], user: &str, from: SystemTime, to: SystemTime) -> Result<Self> {
        let mut lines = vec![];
        for path in paths {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            for line in BufReader::new(file).lines() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                // Most lines are other users': skip them before parsing.
                if line.contains(user) {
                    lines.push(line);
                }
            }
        }
        Ok(Self::count(
            lines.iter().map(String::as_str),
            user,
            from,
            to,
        ))
    }

    /// Counts the requests of `user` received in `[from, to)`; lines that are not audit
    /// events are left out.
    fn count<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        user: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Self {
        let mut counts = Self::default();
        for line in lines {
            let Ok(event) = serde_json::from_str::<AuditEvent>(line) else {
                continue;
            };
            let received = agent_log::parse_time(&event.request_received_timestamp);
            if event.user.username != user || !received.is_some_and(|t| t >= from && t < to) {
                continue;
            }
            match event.stage.as_str() {
                "RequestReceived" => *counts.by_class.entry(event.class()).or_default() += 1,
                "ResponseComplete" | "Panic"
                    if event
                        .response_status
                        .as_ref()
                        .is_some_and(|s| s.code >= 400) =>
                {
                    counts.failed += 1;
                }
                _ => {}
            }
        }
        counts
    }

    fn total(&self) -> u64 {
        self.by_class.values().sum()
    }

    fn get(&self, class: &str) -> u64 {
        self.by_class.get(class).copied().unwrap_or(0)
    }
}

/// Upstream's budget for an idle node, per request class: how many requests a kubelet makes
/// in `window` (a lease renewal and a Node read every 10 s; the node status only when it
/// changes, or every 5 min; no pod status; its pod and Node watches re-opened every 5-10 min).
fn budget(class: &str, window: Duration) -> u64 {
    let every = |period: u64| window.as_secs().div_ceil(period);
    match class {
        // Either end of the window may catch one more tick.
        "update leases" | "get nodes" => every(10) + 1,
        "patch nodes/status" | "watch pods" | "list pods" | "watch nodes" => every(300),
        _ => 0,
    }
}

/// The classes over [`budget`], as `class: seen > budget`.
fn over_budget(counts: &RequestCounts, window: Duration) -> Vec<String> {
    counts
        .by_class
        .iter()
        .filter(|(class, n)| **n > budget(class, window))
        .map(|(class, n)| format!("{class}: {n} > {}", budget(class, window)))
        .collect()
}

/// The budget classes upstream's kubelet has at idle, shown even when nothing was seen.
const BUDGET_CLASSES: [&str; 4] = [
    "update leases",
    "get nodes",
    "patch nodes/status",
    "patch pods/status",
];

// ---------------------------------------------------------------------------------------------
// The API server, through kubectl

/// kubectl as the admin, and what the bench needs of the control plane.
struct Api<'a> {
    cp: &'a ControlPlane,
    audit_log: PathBuf,
}

impl<'a> Api<'a> {
    fn new(cp: &'a ControlPlane) -> Self {
        Self {
            cp,
            audit_log: cp.layout.audit_log.clone(),
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.cp.kubectl_admin(args)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.kubectl(&full)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// Polls `probe` every [`POLL`] until it returns `Ok(Some)`, failing after `timeout`
    /// with `what` and the last `Err` or `None` seen.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing yet");
        loop {
            check_interrupted()?;
            match probe() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = e,
            }
            ensure!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            );
            thread::sleep(POLL);
        }
    }

    fn wait_default_service_account(&self) -> Result<()> {
        self.wait("the default ServiceAccount", RUNNING_TIMEOUT, || {
            self.kubectl(&["-n", NAMESPACE, "get", "serviceaccount", "default"])
                .map(|_| Some(()))
                .map_err(|e| format!("{e:#}"))
        })
    }

    /// Deletes the Node and its Lease (the agent is stopped) and waits until both are gone.
    fn delete_node_and_lease(&self) -> Result<()> {
        self.kubectl(&["delete", "node", NODE, "--ignore-not-found", "--wait=false"])?;
        self.kubectl(&[
            "-n",
            "kube-node-lease",
            "delete",
            "lease",
            NODE,
            "--ignore-not-found",
            "--wait=false",
        ])?;
        self.wait("the Node and its Lease to be gone", GONE_TIMEOUT, || {
            let left = [
                self.kubectl(&["get", "node", NODE, "--ignore-not-found", "-o", "name"]),
                self.kubectl(&[
                    "-n",
                    "kube-node-lease",
                    "get",
                    "lease",
                    NODE,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ]),
            ]
            .into_iter()
            .collect::<Result<Vec<_>>>()
            .map_err(|e| format!("{e:#}"))?
            .concat();
            if left.trim().is_empty() {
                Ok(Some(()))
            } else {
                Err(format!("still there: {}", left.trim()))
            }
        })
    }

    /// Creates bare pods bound to the node, labelled with `set`.
    fn create_pods(
        &self,
        set: &str,
        names: &[String],
        restart_policy: &str,
        dir: &Path,
    ) -> Result<()> {
        let list = pod_list(set, names, restart_policy);
        let path = dir.join(format!("{set}.json"));
        fs::write(&path, list).with_context(|| format!("writing {}", path.display()))?;
        self.kubectl(&["create", "-f", &path.display().to_string()])?;
        Ok(())
    }

    /// Waits until `count` pods of `set` are Running with their container running.
    fn wait_running(&self, set: &str, count: usize) -> Result<()> {
        let selector = format!("{SET_LABEL}={set}");
        self.wait(
            &format!("{count} pods of {set} Running"),
            RUNNING_TIMEOUT,
            || {
                let pods = self
                    .json(&["-n", NAMESPACE, "get", "pods", "-l", &selector])
                    .map_err(|e| format!("{e:#}"))?;
                let items = pods["items"].as_array().cloned().unwrap_or_default();
                let running = items
                    .iter()
                    .filter(|p| {
                        p["status"]["phase"] == "Running" && running_container_id(p).is_some()
                    })
                    .count();
                if running == count && items.len() == count {
                    Ok(Some(()))
                } else {
                    Err(format!("{running} of {} Running", items.len()))
                }
            },
        )
    }

    /// Deletes the pods of `set` (every set of the bench when empty) and waits until the
    /// API server has none left: the agent confirms each deletion, unless `force`.
    fn delete_set_pods(&self, set: &str, force: bool) -> Result<()> {
        let selector = if set.is_empty() {
            SET_LABEL.to_owned()
        } else {
            format!("{SET_LABEL}={set}")
        };
        let mut args = vec![
            "-n",
            NAMESPACE,
            "delete",
            "pods",
            "-l",
            &selector,
            "--wait=false",
        ];
        if force {
            args.extend(["--grace-period=0", "--force"]);
        }
        self.kubectl(&args)?;
        self.wait(
            &format!("the pods of {selector} to be gone"),
            GONE_TIMEOUT,
            || {
                let out = self
                    .kubectl(&[
                        "-n", NAMESPACE, "get", "pods", "-l", &selector, "-o", "name",
                    ])
                    .map_err(|e| format!("{e:#}"))?;
                let left = out.lines().count();
                if left == 0 {
                    Ok(Some(()))
                } else {
                    Err(format!("{left} left"))
                }
            },
        )
    }

    fn apiserver_pid(&self) -> Result<u32> {
        self.cp
            .pids()
            .into_iter()
            .find_map(|(name, pid)| (name == "kube-apiserver").then_some(pid))
            .context("the control plane runs no kube-apiserver")
    }

    /// The audit log and its rotated siblings (`audit-<time>.log`).
    fn audit_logs(&self) -> Result<Vec<PathBuf>> {
        let dir = self
            .audit_log
            .parent()
            .context("the audit log has no directory")?;
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
            })
            .collect();
        paths.sort();
        ensure!(
            paths.contains(&self.audit_log),
            "the API server wrote no audit log at {}",
            self.audit_log.display()
        );
        Ok(paths)
    }

    /// A watch on `path` (with `?watch=1`), open once the API server answered.
    /// A watch on the list `path` (with a query) from now on: it starts at the
    /// resourceVersion of a list read now, so the API server's watch cache cannot replay an
    /// older state (a Node deleted a moment ago) as news.
    fn watch(&self, what: &str, path: &str) -> Result<Watch> {
        let list: Value = serde_json::from_str(&self.kubectl(&["get", "--raw", path])?)
            .with_context(|| format!("GET {path}: not JSON"))?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .with_context(|| format!("GET {path}: no resourceVersion"))?;
        Watch::open(self.cp, what, &watch_path(path, rv))
    }
}

/// The watch of the list `path` from resourceVersion `rv`.
fn watch_path(path: &str, rv: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}watch=1&resourceVersion={rv}")
}

/// A v1 `List` of busybox pods bound to [`NODE`], host network, sleeping.
fn pod_list(set: &str, names: &[String], restart_policy: &str) -> String {
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SET_LABEL: set}},
                "spec": {
                    "nodeName": NODE,
                    "hostNetwork": true,
                    "restartPolicy": restart_policy,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "c",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "36000"],
                    }],
                },
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

// ---------------------------------------------------------------------------------------------
// Watches: `kubectl get --raw <path>?watch=1`, each line stamped as it arrives

/// One watch event as it arrived.
#[derive(Debug, Clone)]
struct WatchEvent {
    at: SystemTime,
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    kind: String,
    object: Value,
}

impl WatchEvent {
    /// An object's state (not a bookmark or an error).
    fn is_state(&self) -> bool {
        matches!(self.kind.as_str(), "ADDED" | "MODIFIED" | "DELETED")
    }
}

/// A streaming watch on the API server: kubectl as a child, a thread reading its lines.
struct Watch {
    what: String,
    child: Child,
    events: Arc<Mutex<Vec<WatchEvent>>>,
    reader: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts `kubectl get --raw <path>` (no client timeout; `-v=6` logs the response
    /// line) and returns once the API server answered 200, so that no event is missed.
    fn open(cp: &ControlPlane, what: &str, path: &str) -> Result<Self> {
        let err_path = cp.layout.logs.join(format!(
            "watch-{}.log",
            what.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ));
        let err =
            File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
        let mut cmd = cp.kubectl(&cp.layout.admin_kubeconfig);
        // Later flags win: no client-side timeout for a stream.
        cmd.args(["--request-timeout=0", "-v=6", "get", "--raw", path])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let line = crate::describe(&cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
        let stdout = child.stdout.take().context("kubectl's stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let events = Arc::clone(&events);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let at = SystemTime::now();
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<Value>(&line) {
                        events
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(WatchEvent {
                                at,
                                kind: event["type"].as_str().unwrap_or_default().to_owned(),
                                object: event["object"].clone(),
                            });
                    }
                }
            })
        };
        let mut watch = Self {
            what: what.to_owned(),
            child,
            events,
            reader: Some(reader),
        };
        let deadline = Instant::now() + WATCH_OPEN_TIMEOUT;
        loop {
            check_interrupted()?;
            let log = fs::read_to_string(&err_path).unwrap_or_default();
            if answered_ok(&log) {
                return Ok(watch);
            }
            if let Some(status) = watch.child.try_wait()? {
                bail!("`{line}` exited ({status}): {}", log.trim());
            }
            ensure!(
                Instant::now() < deadline,
                "`{line}` got no answer within {WATCH_OPEN_TIMEOUT:?}: {}",
                log.trim()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WatchEvent>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails when the API server ended the watch with an error or kubectl exited: what
    /// the watch has not seen would look like a latency.
    fn check(&mut self) -> Result<()> {
        if let Some(e) = self.lock().iter().find(|e| e.kind == "ERROR") {
            bail!("the {} watch failed: {}", self.what, e.object);
        }
        if let Some(status) = self.child.try_wait()? {
            bail!("the {} watch ended: kubectl exited ({status})", self.what);
        }
        Ok(())
    }

    /// How many object states arrived.
    fn len(&self) -> usize {
        self.lock().iter().filter(|e| e.is_state()).count()
    }

    /// When the first object state matching `is_it` arrived.
    fn first(&self, is_it: impl Fn(&WatchEvent) -> bool) -> Option<SystemTime> {
        self.lock()
            .iter()
            .find(|e| e.is_state() && is_it(e))
            .map(|e| e.at)
    }

    /// When the first event about the object `name` that arrived after `after` and matches
    /// `is_it` arrived.
    fn first_for(
        &self,
        name: &str,
        after: SystemTime,
        is_it: impl Fn(&Value) -> bool,
    ) -> Option<SystemTime> {
        self.lock()
            .iter()
            .find(|e| {
                e.is_state()
                    && e.at >= after
                    && e.object["metadata"]["name"] == name
                    && is_it(&e.object)
            })
            .map(|e| e.at)
    }

    /// The latest state of the object `name`.
    fn latest(&self, name: &str) -> Option<Value> {
        self.lock()
            .iter()
            .rev()
            .find(|e| e.is_state() && e.object["metadata"]["name"] == name)
            .map(|e| e.object.clone())
    }

    /// The latest state of pod `name`, briefly.
    fn describe(&self, name: &str) -> String {
        self.latest(name).map_or_else(
            || format!("no {} event", self.what),
            |p| {
                format!(
                    "phase {}, container {}",
                    p["status"]["phase"], p["status"]["containerStatuses"][0]["state"]
                )
            },
        )
    }

    /// The last event's object, through `show`.
    fn describe_last(&self, show: impl Fn(&Value) -> String) -> String {
        self.lock()
            .iter()
            .rfind(|e| e.is_state())
            .map_or_else(|| format!("no {} event", self.what), |e| show(&e.object))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Whether kubectl's `-v=6` log shows the API server's 200 answer to its request.
fn answered_ok(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("200 OK") && (l.contains("GET ") || l.contains("verb=\"GET\"")))
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(
    plan: &Plan,
    machine: &Machine,
    versions: &str,
    sessions: &[Session],
    took: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Cluster (`cargo xtask bench cluster`)\n\n{machine} Control plane: Kubernetes \
         {KUBERNETES_VERSION} built from tests/k8s, on 127.0.0.1, API server auditing every \
         request. Upstream peer on the same containerd (`cargo xtask build-peer`): \
         {versions}. Columns: bpflet `event` and `generic` PLEG, the upstream kubelet \
         {KUBERNETES_VERSION} (`kubelet`, generic PLEG) and with `EventedPLEG` \
         (`kubelet-evented`), each joining as `{NODE}` on the same containerd, with the same \
         pods and a 512 MiB kubepods. Run took {:.1} min{}.\n",
        took.as_secs_f64() / 60.0,
        if plan.quick {
            " (BPFLET_BENCH_QUICK: not for numbers)"
        } else {
            ""
        }
    );
    for s in sessions {
        if let Some(streams) = s.evented_streams {
            let _ = writeln!(out, "{}\n", evented_note(s.column, streams));
        }
    }

    let _ = writeln!(
        out,
        "### Container exit to the API server (ms)\n\nSIGKILL to a container's process, to the \
         first event of a watch on the API server showing it terminated (137).\n"
    );
    let exits: Vec<(&str, Option<Summary>)> = sessions
        .iter()
        .map(|s| (s.column.name(), Summary::of(&s.exits)))
        .collect();
    let _ = write!(out, "{}", summary_table(&exits, 0));

    let _ = writeln!(
        out,
        "\n### Node join (ms)\n\nAgent spawned (no Node, no Lease) to the first watch event \
         showing the Node Ready=True, and to the first Lease event; \"registered\" is the \
         agent's own log record of it (bpflet's heartbeat, the kubelet's `Successfully \
         registered node`).\n"
    );
    let mut t = Table::new([
        "agent",
        "n",
        "to registered p50 (agent log)",
        "to Ready p50",
        "to Ready max",
        "to Lease p50",
        "to Lease max",
    ]);
    for s in sessions {
        let registered = Summary::of(
            &s.joins
                .iter()
                .filter_map(|j| j.registered_ms)
                .collect::<Vec<_>>(),
        );
        let ready = Summary::of(&s.joins.iter().map(|j| j.ready_ms).collect::<Vec<_>>());
        let lease = Summary::of(&s.joins.iter().map(|j| j.lease_ms).collect::<Vec<_>>());
        t.row([
            s.column.name().to_owned(),
            s.joins.len().to_string(),
            fmt_opt(registered.map(|r| r.p50), 0),
            fmt_opt(ready.map(|r| r.p50), 0),
            fmt_opt(ready.map(|r| r.max), 0),
            fmt_opt(lease.map(|r| r.p50), 0),
            fmt_opt(lease.map(|r| r.max), 0),
        ]);
    }
    let _ = write!(out, "{t}");

    let _ = writeln!(
        out,
        "\n### API requests per minute, idle node at {} pods\n\nAudit events of \
         `system:node:{NODE}` (stage RequestReceived: each request once) over the idle window, \
         per minute; upstream's budget: a lease renewal and a Node read every 10 s, the node \
         status only on change (or every 5 min), no pod status when nothing changes. The \
         kubelet v1.34 reads its Node for the status check from its informer's cache (a GET \
         only to retry a conflict), so its `get nodes` is below that budget.\n",
        plan.idle_pods
    );
    let _ = writeln!(out, "{}", requests_table(sessions));
    for s in sessions {
        let over = over_budget(&s.idle.requests, s.idle.window);
        let _ = writeln!(
            out,
            "- {}: {} requests in {:.0} s, {} failed; {}",
            s.column.name(),
            s.idle.requests.total(),
            s.idle.window.as_secs_f64(),
            s.idle.requests.failed,
            if over.is_empty() {
                "within upstream's budget".to_owned()
            } else {
                format!("OVER upstream's budget: {}", over.join(", "))
            }
        );
    }

    let _ = writeln!(out, "\n### Idle cost over the same window\n");
    let mut t = Table::new([
        "agent",
        "all Running after (s)",
        "agent CPU %",
        "agent RSS max (MiB)",
        "kube-apiserver CPU %",
    ]);
    for s in sessions {
        t.row([
            s.column.name().to_owned(),
            format!("{:.1}", s.idle.startup.as_secs_f64()),
            format!("{:.2}", s.idle.agent.cpu_percent),
            format!("{:.1}", mib(s.idle.agent.rss_max_bytes)),
            format!("{:.2}", s.idle.apiserver.cpu_percent),
        ]);
    }
    if let Some((first, rest)) = sessions.split_first() {
        for s in rest {
            t.row([
                format!("{} / {}", s.column.name(), first.column.name()),
                String::new(),
                ratio(s.idle.agent.cpu_percent, first.idle.agent.cpu_percent),
                ratio(
                    mib(s.idle.agent.rss_max_bytes),
                    mib(first.idle.agent.rss_max_bytes),
                ),
                ratio(
                    s.idle.apiserver.cpu_percent,
                    first.idle.apiserver.cpu_percent,
                ),
            ]);
        }
    }
    let _ = write!(out, "{t}");
    out
}

/// What the kubelet's `/metrics` says of its evented PLEG.
fn evented_note(column: Column, s: EventedStreams) -> String {
    let verdict = match s.check() {
        Ok(()) => "its evented PLEG ran on containerd's CRI events".to_owned(),
        Err(why) => {
            format!("{why}; the kubelet fell back to relisting: its numbers are the generic PLEG's")
        }
    };
    format!(
        "`{}`: CRI event streams opened {:.0}, failed {:.0} \
         (`kubelet_evented_pleg_connection_{{success,error}}_count`): {verdict}.",
        column.name(),
        s.opened,
        s.failed
    )
}

/// p50/p90/p99/max/mean of each column, then each column over the first.
fn summary_table(columns: &[(&str, Option<Summary>)], decimals: usize) -> Table {
    let mut t = Table::new(["agent", "n", "p50", "p90", "p99", "max", "mean"]);
    let cells =
        |s: Summary| [s.p50, s.p90, s.p99, s.max, s.mean].map(|v| format!("{v:.decimals$}"));
    for (name, s) in columns {
        let mut row = vec![(*name).to_owned(), s.map_or(0, |s| s.n).to_string()];
        row.extend(s.map(cells).into_iter().flatten());
        t.row(row);
    }
    if let Some(((base_name, Some(b)), rest)) = columns.split_first() {
        for (name, s) in rest {
            let Some(s) = s else { continue };
            let mut row = vec![format!("{name} / {base_name}"), String::new()];
            row.extend(
                [
                    (s.p50, b.p50),
                    (s.p90, b.p90),
                    (s.p99, b.p99),
                    (s.max, b.max),
                    (s.mean, b.mean),
                ]
                .map(|(a, b)| ratio(a, b)),
            );
            t.row(row);
        }
    }
    t
}

/// Requests per minute by class, every column, beside upstream's budget.
fn requests_table(sessions: &[Session]) -> Table {
    let mut classes: Vec<String> = BUDGET_CLASSES.iter().map(|c| (*c).to_owned()).collect();
    for s in sessions {
        for class in s.idle.requests.by_class.keys() {
            if !classes.contains(class) {
                classes.push(class.clone());
            }
        }
    }
    let per_minute = |s: &Session, n: u64| {
        format!(
            "{:.1}",
            n as f64 * 60.0 / s.idle.window.as_secs_f64().max(1.0)
        )
    };
    let mut t = Table::new(
        ["request".to_owned(), "upstream budget /min".to_owned()]
            .into_iter()
            .chain(sessions.iter().map(|s| format!("{} /min", s.column.name()))),
    );
    for class in &classes {
        t.row(
            [class.clone(), upstream_per_minute(class).to_owned()]
                .into_iter()
                .chain(
                    sessions
                        .iter()
                        .map(|s| per_minute(s, s.idle.requests.get(class))),
                ),
        );
    }
    t.row(
        ["total".to_owned(), "~12".to_owned()].into_iter().chain(
            sessions
                .iter()
                .map(|s| per_minute(s, s.idle.requests.total())),
        ),
    );
    t
}

/// Upstream's idle rate of a request class, as the report shows it.
fn upstream_per_minute(class: &str) -> &'static str {
    match class {
        "update leases" | "get nodes" => "6",
        "patch nodes/status" => "0 (0.2: every 5 min)",
        "watch pods" | "list pods" => "~0.1-0.2",
        _ => "0",
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn audit(
        stage: &str,
        verb: &str,
        user: &str,
        resource: &str,
        sub: &str,
        ts: &str,
        code: u16,
    ) -> String {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"{stage}","requestURI":"/api/v1/x?watch=true","verb":"{verb}","user":{{"username":"{user}","groups":["system:nodes"]}},"objectRef":{{"resource":"{resource}","subresource":"{sub}","namespace":"default","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":{code}}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
        )
    }

    #[test]
    fn requests_are_counted_once_by_class_inside_the_window() {
        let node = "system:node:benchnode";
        // 1_000_000 s after the epoch is 1970-01-12T13:46:40Z.
        let inside = "1970-01-12T13:46:50.5Z";
        let lines = [
            audit("RequestReceived", "update", node, "leases", "", inside, 0),
            audit(
                "ResponseComplete",
                "update",
                node,
                "leases",
                "",
                inside,
                200,
            ),
            audit("RequestReceived", "update", node, "leases", "", inside, 0),
            audit("RequestReceived", "get", node, "nodes", "", inside, 0),
            audit(
                "RequestReceived",
                "patch",
                node,
                "pods",
                "status",
                inside,
                0,
            ),
            audit(
                "ResponseComplete",
                "patch",
                node,
                "pods",
                "status",
                inside,
                409,
            ),
            // A watch: received in the window, its other stages never count again.
            audit("RequestReceived", "watch", node, "pods", "", inside, 0),
            audit("ResponseStarted", "watch", node, "pods", "", inside, 200),
            // Another user, and requests outside the window.
            audit(
                "RequestReceived",
                "update",
                "system:node:other",
                "leases",
                "",
                inside,
                0,
            ),
            audit(
                "RequestReceived",
                "get",
                node,
                "nodes",
                "",
                "1970-01-12T13:46:39.9Z",
                0,
            ),
            audit(
                "RequestReceived",
                "get",
                node,
                "nodes",
                "",
                "1970-01-12T13:47:40Z",
                0,
            ),
            "not json".to_owned(),
        ];
        let counts = RequestCounts::count(
            lines.iter().map(String::as_str),
            node,
            at(1_000_000),
            at(1_000_060),
        );
        assert_eq!(
            counts.by_class,
            BTreeMap::from([
                ("update leases".to_owned(), 2),
                ("get nodes".to_owned(), 1),
                ("patch pods/status".to_owned(), 1),
                ("watch pods".to_owned(), 1),
            ])
        );
        assert_eq!((counts.total(), counts.failed), (5, 1));
        assert_eq!(counts.get("patch nodes/status"), 0);
    }

    #[test]
    fn non_resource_requests_are_classed_by_path() {
        let line = r#"{"stage":"RequestReceived","verb":"get","user":{"username":"u"},"requestURI":"/version?timeout=32s","requestReceivedTimestamp":"1970-01-12T13:46:41Z"}"#;
        let counts = RequestCounts::count([line], "u", at(1_000_000), at(1_000_060));
        assert_eq!(counts.get("get /version"), 1);
    }

    #[test]
    fn budget_allows_upstreams_cadence_and_flags_the_rest() {
        let window = Duration::from_secs(120);
        let counts = |pairs: &[(&str, u64)]| RequestCounts {
            by_class: pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
            failed: 0,
        };
        let upstream = counts(&[
            ("update leases", 13),
            ("get nodes", 12),
            ("patch nodes/status", 1),
            ("watch pods", 1),
            ("watch nodes", 1),
        ]);
        assert!(over_budget(&upstream, window).is_empty());
        let chatty = counts(&[
            ("update leases", 14),
            ("get nodes", 12),
            ("patch pods/status", 3),
            ("patch nodes/status", 2),
        ]);
        assert_eq!(
            over_budget(&chatty, window),
            [
                "patch nodes/status: 2 > 1",
                "patch pods/status: 3 > 0",
                "update leases: 14 > 13"
            ]
        );
    }

    #[test]
    fn task_pids_are_read_from_ctr() {
        let text = "TASK      PID      STATUS    \nabc123    4242     RUNNING\ndef456    77       STOPPED\n";
        assert_eq!(
            parse_task_pids(text).unwrap(),
            BTreeMap::from([("abc123".to_owned(), 4242), ("def456".to_owned(), 77)])
        );
        assert!(parse_task_pids("ID PID\n").is_err());
        assert!(parse_task_pids("TASK PID STATUS\nabc x RUNNING\n").is_err());
        assert!(parse_task_pids("TASK PID STATUS\n").unwrap().is_empty());
    }

    #[test]
    fn exits_are_read_from_pod_status() {
        let pod = |cs: Value| serde_json::json!({"status": {"containerStatuses": [cs]}});
        let running = pod(serde_json::json!({
            "state": {"running": {}}, "containerID": "containerd://abc", "restartCount": 0
        }));
        assert_eq!(running_container_id(&running).as_deref(), Some("abc"));
        assert!(!terminated_with(&running, 137));
        let killed = pod(serde_json::json!({
            "state": {"terminated": {"exitCode": 137}}, "containerID": "containerd://abc"
        }));
        assert!(terminated_with(&killed, 137));
        assert!(!terminated_with(&killed, 1));
        assert_eq!(running_container_id(&killed), None);
        let restarted = pod(serde_json::json!({
            "state": {"running": {}}, "restartCount": 1,
            "lastState": {"terminated": {"exitCode": 137}}
        }));
        assert!(terminated_with(&restarted, 137));
        let waiting = pod(serde_json::json!({"state": {"waiting": {}}}));
        assert_eq!(running_container_id(&waiting), None);
    }

    #[test]
    fn node_ready_reads_the_ready_condition() {
        let node = |status: &str| {
            serde_json::json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": status}
            ]}})
        };
        assert!(node_ready(&node("True")));
        assert!(!node_ready(&node("False")));
        assert!(!node_ready(&serde_json::json!({})));
    }

    #[test]
    fn kubectl_answer_is_found_in_either_log_format() {
        assert!(answered_ok(
            "I1207 08:00:00.1 1 round_trippers.go:560] GET https://127.0.0.1:1/api/v1/nodes?watch=1 200 OK in 5 milliseconds"
        ));
        assert!(answered_ok(
            r#"I1207 08:00:00.1 1 round_trippers.go:632] "Response" verb="GET" url="https://127.0.0.1:1/x" status="200 OK" milliseconds=5"#
        ));
        assert!(!answered_ok(
            r#"I1207 round_trippers.go:632] "Response" verb="GET" url="https://x" status="403 Forbidden""#
        ));
    }

    #[test]
    fn registration_is_read_from_the_heartbeats_record() {
        let log = agent_log::parse(
            "{\"timestamp\":\"1970-01-12T13:46:40Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"node registered with the API server\"},\"target\":\"bpflet::agent\"}\n\
             {\"timestamp\":\"1970-01-12T13:46:41Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"node registered with the API server\",\"node\":\"n\"},\"target\":\"bpflet::cluster::heartbeat\"}\n",
        );
        assert_eq!(registered_logged(&log), Some(at(1_000_001)));
        assert_eq!(registered_logged(&log[..1]), None);
    }

    #[test]
    fn watches_start_at_the_lists_resource_version() {
        assert_eq!(
            watch_path("/api/v1/nodes?fieldSelector=metadata.name%3Dn", "42"),
            "/api/v1/nodes?fieldSelector=metadata.name%3Dn&watch=1&resourceVersion=42"
        );
        assert_eq!(
            watch_path("/api/v1/nodes", "7"),
            "/api/v1/nodes?watch=1&resourceVersion=7"
        );
    }

    #[test]
    fn pods_are_bound_bare_and_without_a_token() {
        let list: Value =
            serde_json::from_str(&pod_list("s", &["a".to_owned(), "b".to_owned()], "Never"))
                .unwrap();
        assert_eq!(list["kind"], "List");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        let spec = &items[1]["spec"];
        assert_eq!(items[1]["metadata"]["name"], "b");
        assert_eq!(items[1]["metadata"]["labels"][SET_LABEL], "s");
        assert_eq!(spec["nodeName"], NODE);
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn summary_table_shows_every_column_and_its_ratio_to_the_first() {
        let e = Summary::of(&[10.0, 20.0]);
        let g = Summary::of(&[500.0, 1000.0]);
        let k = Summary::of(&[100.0, 200.0]);
        let text = summary_table(&[("event", e), ("generic", g), ("kubelet", k)], 0).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(
            lines[2].starts_with("| event ") && lines[2].contains("| 2 "),
            "{text}"
        );
        assert!(
            lines[5].starts_with("| generic / event ") && lines[5].contains("50.0x"),
            "{text}"
        );
        assert!(
            lines[6].starts_with("| kubelet / event ") && lines[6].contains("10.0x"),
            "{text}"
        );
        // A column without samples has no ratio row; without the first, there are none.
        let missing = summary_table(&[("event", e), ("generic", None)], 0).to_string();
        assert_eq!(missing.lines().count(), 4, "{missing}");
        let no_base = summary_table(&[("event", None), ("generic", g)], 0).to_string();
        assert_eq!(no_base.lines().count(), 4, "{no_base}");
        assert_eq!(ratio(1.0, 0.0), "-");
    }

    #[test]
    fn an_evented_pleg_without_a_stream_is_called_a_fallback() {
        let note = |opened, failed| {
            evented_note(Column::KubeletEvented, EventedStreams { opened, failed })
        };
        let ran = note(1.0, 0.0);
        assert!(ran.contains("ran on containerd's CRI events"), "{ran}");
        let fell = note(0.0, 5.0);
        assert!(fell.contains("fell back to relisting"), "{fell}");
        assert!(fell.starts_with("`kubelet-evented`: CRI event streams opened 0, failed 5"));
        // Upstream gives up on the stream after 5 failures, even after one opened.
        let gave_up = note(2.0, 5.0);
        assert!(gave_up.contains("fell back to relisting"), "{gave_up}");
    }

    #[test]
    fn columns_are_named_as_the_report_shows_them() {
        assert_eq!(
            COLUMNS.map(Column::name),
            ["event", "generic", "kubelet", "kubelet-evented"]
        );
    }
}
