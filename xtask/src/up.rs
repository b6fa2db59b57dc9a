//! `cargo xtask up`: bpflet on this machine, running the demo static pods in `examples/`.
//!
//! 1. setup, the BPF object, `cargo build -p bpflet`;
//! 2. a private containerd under `<work>/containerd` (offline busybox and pause images) and
//!    an image registry on 127.0.0.1:15000 (`xtask::registry`, files in `<work>/registry`)
//!    holding the same images, trusted by that containerd, its credentials in the agent's
//!    `<root>/config.json`: `examples/pulled.yaml` pulls from it;
//! 3. `<work>/bpflet.yaml`: a KubeletConfiguration (static pods from `examples/`, a cgroup
//!    root of our own, `kubepods` limited to 512 MiB, the read-only API on 127.0.0.1:10255)
//!    and a BpfletConfiguration (`--pleg-mode`);
//! 4. `bpflet --config <work>/bpflet.yaml --root-dir <work>/root` in the foreground and, once
//!    the agent has made its `kubepods` cgroup, `bpflet trace --cgroup <root>/kubepods`
//!    beside it; their lines go to the terminal prefixed `[agent]` / `[trace]` and to
//!    `<work>/agent.log` / `<work>/trace.log`. Pod phase changes are printed as `[up]` lines.
//!
//! Ctrl-C, SIGTERM or SIGHUP (or the end of `--duration` / `--check`) tears everything down,
//! in order: SIGTERM to bpflet (which leaves pods running by design) and to the trace,
//! the registry, then the private containerd's teardown (every sandbox removed through the CRI, containerd
//! stopped, its cgroup tree and mounts removed), then whatever is left of our cgroup root in
//! every hierarchy and of the mounts under the work directory. Finally it verifies that no
//! process, mount, cgroup or bridge of this run remains, and fails naming any that does.
//!
//! The agent and the trace run in their own process groups (a Ctrl-C at the terminal reaches
//! only this process, which stops them in order) and get SIGTERM if this process dies.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use xtask::containerd::{self, PrivateContainerd};
use xtask::mountinfo::MountEntry;
use xtask::registry::{PASSWORD, Registry, USER};

use crate::{cargo, ebpf, is_root, run as run_cmd, setup, target_dir, workspace_root};

/// Our cgroup root is `/bpflet-up-<hash of the work directory>`: unique per work directory,
/// and the same on every run there, so a run finds what a crashed one left.
const CGROUP_ROOT_PREFIX: &str = "/bpflet-up-";
/// The CNI bridge and pod subnet of this containerd: apart from the root tests' defaults,
/// which may run at the same time.
const BRIDGE: &str = "bpflet-up0";
const SUBNET: &str = "10.89.0.0/16";
/// The agent's read-only API (`/pods`, `/healthz`).
pub(crate) const READ_ONLY_PORT: u16 = 10255;
/// The authenticated HTTPS API (upstream's default port).
pub(crate) const PORT: u16 = 10250;
/// Where `examples/web.yaml` serves, and a string of the page its init container writes.
const WEB_PORT: u16 = 18080;
const WEB_MARKER: &str = "hello from bpflet";
/// The example pod whose container is OOM-killed, and the example that serves HTTP.
const OOM_POD: &str = "oom";
const WEB_POD: &str = "web";
/// The image registry `up` runs (`xtask::registry`), with the offline images pushed as
/// `<REGISTRY_HOST>/busybox:offline` and `<REGISTRY_HOST>/pause:latest`: a fixed port, so
/// manifests can name it, below the ephemeral range the root tests' registries use.
const REGISTRY_PORT: u16 = 15000;
const REGISTRY_HOST: &str = "127.0.0.1:15000";
/// What the pods together may use: `systemReserved` is the rest of `MemTotal`.
pub(crate) const KUBEPODS_MEMORY: u64 = 512 << 20;

const KUBEPODS_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);
const TRACE_STOP_GRACE: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const RMDIR_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, clap::Args)]
pub struct Options {
    /// Where containerd, the agent's root directory, the config and the logs live
    /// [default: <repo>/.work/up].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// How the agent notices pod changes: kernel events, or relisting every second.
    #[arg(long, value_enum, default_value_t = PlegMode::Event)]
    pub pleg_mode: PlegMode,
    /// Tear down by itself after running this many seconds (counted from when the agent
    /// and the trace are both up).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Wait until the demo works (every example pod Running on /pods, the web page served,
    /// the oom pod OOM-killed and seen by the trace), tear down, and exit 0; or exit
    /// non-zero naming what is missing.
    #[arg(long)]
    pub check: bool,
    /// How long `--check` waits.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub check_timeout: u64,
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,
    /// Use the BPF object and agent binary already built instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Build and run the release agent.
    #[arg(long)]
    pub release: bool,
    /// Bring up the real Kubernetes control plane on 127.0.0.1 too (etcd, API server,
    /// controller manager, scheduler; in `target/cluster/`), and the node joins it
    /// (`--kubeconfig`): `kubectl get nodes` shows it Ready, the example static pods show
    /// as mirror pods. `--check` also runs the control plane's smoke check and waits for
    /// the Node to be Ready.
    #[arg(long)]
    pub cluster: bool,
    /// With `--cluster`: the node `node.kubeconfig`'s credential is for [default: the host
    /// name].
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub node_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlegMode {
    Event,
    Generic,
}

impl PlegMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PlegMode::Event => "event",
            PlegMode::Generic => "generic",
        }
    }
}

/// Everything a run needs to know, fixed before containerd starts.
struct Ctx {
    started: Instant,
    work_dir: PathBuf,
    bpflet: PathBuf,
    config_path: PathBuf,
    agent_root: PathBuf,
    cgroup_root: String,
    /// `metadata.name` of every manifest in `examples/`.
    examples: Vec<String>,
    pleg_mode: PlegMode,
    duration: Option<Duration>,
    check_timeout: Option<Duration>,
    /// Extra agent arguments (cluster mode: the kubeconfig and the node's name and IP).
    agent_args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.cluster {
        return crate::cluster_up::run(opts);
    }
    run_node(opts, Vec::new())
}

/// The node: a private containerd, the agent (with `agent_args`) and `bpflet trace`, until
/// a signal, `--duration` or `--check`'s verdict; then the teardown.
pub(crate) fn run_node(opts: &Options, agent_args: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask up` needs root (BPF, cgroups, containerd): run it as root");
    }
    let started = Instant::now();
    let work_dir = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| workspace_root().join(".work").join("up"));
    fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let work_dir = work_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", work_dir.display()))?;
    // Held until we return: a second `up` on this directory would take over our containerd.
    let _lock = lock_work_dir(&work_dir)?;

    if !opts.no_setup {
        say("cargo xtask setup");
        setup::run().context("setup")?;
    }
    let bpflet = agent_binary(opts)?;
    let examples_dir = workspace_root().join("examples");
    let examples = example_pods(&examples_dir)?;

    let ctx = Ctx {
        started,
        config_path: work_dir.join("bpflet.yaml"),
        agent_root: work_dir.join("root"),
        cgroup_root: cgroup_root_for(&work_dir),
        work_dir,
        bpflet,
        examples,
        pleg_mode: opts.pleg_mode,
        duration: opts.duration.map(Duration::from_secs),
        check_timeout: opts
            .check
            .then_some(Duration::from_secs(opts.check_timeout)),
        agent_args,
    };
    let config = render_config(&ConfigParams {
        static_pod_path: &examples_dir,
        cgroup_root: &ctx.cgroup_root,
        runtime_socket: &ctx.work_dir.join("containerd").join("containerd.sock"),
        system_reserved_memory: mem_total()?.saturating_sub(KUBEPODS_MEMORY),
        pleg_mode: ctx.pleg_mode,
        read_only_port: READ_ONLY_PORT,
        port: PORT,
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    // From here on a signal must lead to teardown: catch them before anything is started.
    let mut signals = rt.block_on(async { Signals::install() })?;

    say(&format!(
        "starting a private containerd in {}",
        ctx.work_dir.join("containerd").display()
    ));
    let ctd = PrivateContainerd::start_with(
        &ctx.work_dir.join("containerd"),
        &containerd::Options {
            bridge: BRIDGE.to_owned(),
            subnet: SUBNET.to_owned(),
            cgroup_parent: Some(ctx.cgroup_root.clone()),
            ..containerd::Options::default()
        },
    )
    .context("starting the private containerd")?;
    say(&format!(
        "containerd ready (pid {}), {:.1}s after `up` started",
        ctd.pid().unwrap_or_default(),
        ctx.started.elapsed().as_secs_f64()
    ));

    let mut procs = Procs::default();
    let mut registry = None;
    let stop = rt.block_on(async {
        let ready = prepare(&ctx, &config).and_then(|()| start_registry(&ctx, &ctd));
        let stop = match ready {
            Ok(r) => {
                registry = Some(r);
                supervise(&ctx, &ctd, &mut signals, &mut procs)
                    .await
                    .unwrap_or_else(Stop::Failed)
            }
            Err(e) => Stop::Failed(e),
        };
        say(&format!("{stop}: tearing down"));
        procs.stop().await;
        stop
    });
    if let Some(registry) = registry {
        say("stopping the image registry");
        registry.stop();
    }
    let agent_tail = log_tail(&ctx.work_dir.join("agent.log"), 5);
    let outcome = match stop {
        Stop::Signal(_) | Stop::Duration => Ok(()),
        Stop::Checked(report) => report.into_result(),
        Stop::AgentExited(status) => Err(anyhow!(
            "bpflet exited on its own ({status}); last lines of {}:\n{agent_tail}",
            ctx.work_dir.join("agent.log").display()
        )),
        Stop::Failed(e) => Err(e),
    };

    let teardown_started = Instant::now();
    let teardown = teardown(ctd, &ctx.work_dir, &ctx.cgroup_root, BRIDGE);
    match &teardown {
        Ok(()) => say(&format!(
            "teardown done in {:.1}s: no process, mount, cgroup or bridge of this run is left",
            teardown_started.elapsed().as_secs_f64()
        )),
        Err(_) => say("teardown left problems: see the error below"),
    }
    match (outcome, teardown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(t)) => Err(t),
        (Err(e), Err(t)) => Err(anyhow!("{e:#}\nand the teardown failed too: {t:#}")),
    }
}

fn say(line: &str) {
    println!("[up] {line}");
}

/// An exclusive lock on `<work>/up.lock` (released when the file is closed, also by a crash).
fn lock_work_dir(work_dir: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    xtask::lock::exclusive(&work_dir.join("up.lock"), |pid| {
        format!(
            "another `cargo xtask up` (pid {pid}) is running on {}; stop it or pass another --work-dir",
            work_dir.display()
        )
    })
}

/// Builds (unless `--no-build`) the BPF object and the agent; returns the agent's path.
fn agent_binary(opts: &Options) -> Result<PathBuf> {
    let profile = if opts.release { "release" } else { "debug" };
    let bin = target_dir().join(profile).join("bpflet");
    if opts.no_build {
        ensure!(
            bin.is_file(),
            "--no-build: {} does not exist; run without --no-build",
            bin.display()
        );
        return Ok(bin);
    }
    say("cargo xtask build-ebpf");
    ebpf::run(&ebpf::Options { debug: false }).context("building the BPF object")?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "bpflet", "--bin", "bpflet"]);
    if opts.release {
        cmd.arg("--release");
    }
    say(&crate::describe(&cmd));
    run_cmd(&mut cmd).context("building the agent")?;
    ensure!(
        bin.is_file(),
        "the build succeeded but {} does not exist",
        bin.display()
    );
    Ok(bin)
}

/// `/bpflet-up-<12 hex digits of sha256(work dir)>`.
pub(crate) fn cgroup_root_for(work_dir: &Path) -> String {
    let digest = sha2::Sha256::digest(work_dir.as_os_str().as_encoded_bytes());
    format!("{CGROUP_ROOT_PREFIX}{}", &hex::encode(digest)[..12])
}

/// The `metadata.name` of every manifest (`*.yaml`, `*.yml`) in `dir`, sorted by file name.
fn example_pods(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut names = vec![];
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let name = manifest_name(&text).with_context(|| {
            format!(
                "{}: no `metadata:` with an indented `name:` (the examples are written \
                 that way so this check needs no YAML parser)",
                file.display()
            )
        })?;
        names.push(name);
    }
    ensure!(!names.is_empty(), "no pod manifests in {}", dir.display());
    Ok(names)
}

/// The pod name of a manifest written in block style: the `name:` key directly under the
/// top-level `metadata:` (at the indentation of metadata's first key).
fn manifest_name(text: &str) -> Option<String> {
    let mut in_metadata = false;
    let mut child_indent = None;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent == 0 {
            in_metadata = line.trim_end() == "metadata:";
            child_indent = None;
            continue;
        }
        if !in_metadata || *child_indent.get_or_insert(indent) != indent {
            continue;
        }
        if let Some(value) = line[indent..].strip_prefix("name:") {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            return (!value.is_empty()).then(|| value.to_owned());
        }
    }
    None
}

/// `MemTotal` from `/proc/meminfo`, in bytes (the agent reads its capacity the same way).
pub(crate) fn mem_total() -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| {
            let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .context("no MemTotal in /proc/meminfo")
}

pub(crate) struct ConfigParams<'a> {
    pub(crate) static_pod_path: &'a Path,
    pub(crate) cgroup_root: &'a str,
    pub(crate) runtime_socket: &'a Path,
    pub(crate) system_reserved_memory: u64,
    pub(crate) pleg_mode: PlegMode,
    pub(crate) read_only_port: u16,
    /// The authenticated HTTPS API's `port`.
    pub(crate) port: u16,
}

/// The agent's config file: a KubeletConfiguration and a BpfletConfiguration document.
/// Strings are written as JSON strings, which YAML reads as double-quoted scalars.
pub(crate) fn render_config(p: &ConfigParams<'_>) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let endpoint = format!("unix://{}", p.runtime_socket.display());
    format!(
        "# Written by `cargo xtask up` (xtask/src/up.rs) on every run.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {static_pod_path}
fileCheckFrequency: 20s
containerRuntimeEndpoint: {endpoint}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
# kubepods gets MemTotal - systemReserved = {kubepods_mib} MiB.
enforceNodeAllocatable: [pods]
systemReserved:
  memory: {reserved}
evictionHard:
  memory.available: 100Mi
address: 127.0.0.1
readOnlyPort: {read_only_port}
# The authenticated HTTPS API. Standalone, only clients with a certificate from a
# clientCAFile would get in (none is set); with --cluster the API server's reviews decide.
port: {port}
# /healthz is served on the read-only port too.
healthzPort: 0
---
apiVersion: bpflet.io/v1alpha1
kind: BpfletConfiguration
plegMode: {pleg_mode}
",
        static_pod_path = q(&p.static_pod_path.to_string_lossy()),
        endpoint = q(&endpoint),
        cgroup_root = q(p.cgroup_root),
        kubepods_mib = KUBEPODS_MEMORY >> 20,
        reserved = q(&format!("{}Ki", p.system_reserved_memory / 1024)),
        pleg_mode = p.pleg_mode.as_str(),
        read_only_port = p.read_only_port,
        port = p.port,
    )
}

/// Writes the config and gives the agent a clean slate: no state or cgroups of an earlier
/// run on this work directory (containerd's start removed that run's pods).
fn prepare(ctx: &Ctx, config: &str) -> Result<()> {
    fs::write(&ctx.config_path, config)
        .with_context(|| format!("writing {}", ctx.config_path.display()))?;
    remove_cgroup_tree(&ctx.cgroup_root)?;
    if ctx.agent_root.exists() {
        unmount_under(&ctx.agent_root)?;
        fs::remove_dir_all(&ctx.agent_root)
            .with_context(|| format!("removing {}", ctx.agent_root.display()))?;
    }
    for log in ["agent.log", "trace.log"] {
        let _ = fs::remove_file(ctx.work_dir.join(log));
    }
    Ok(())
}

/// The image registry on [`REGISTRY_HOST`] (files in `<work>/registry`, images kept across
/// runs): the offline images pushed to it, the private containerd trusting its CA, its
/// credentials in the agent's `<root>/config.json` (where upstream's kubelet looks for
/// them), so a pod can name `127.0.0.1:15000/busybox:offline` and have it really pulled.
fn start_registry(ctx: &Ctx, ctd: &PrivateContainerd) -> Result<Registry> {
    let registry = Registry::start(&ctx.work_dir.join("registry"), REGISTRY_PORT)
        .with_context(|| format!("starting the image registry on {REGISTRY_HOST}"))?;
    registry.trust(&ctd.registry_config_dir)?;
    for image in &ctd.images.images {
        let repo_tag = image
            .name
            .strip_prefix("bpflet.local/")
            .unwrap_or(&image.name);
        registry.push(&ctd.images.path, &image.name, repo_tag)?;
    }
    fs::create_dir_all(&ctx.agent_root)
        .with_context(|| format!("creating {}", ctx.agent_root.display()))?;
    let credentials = ctx.agent_root.join("config.json");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&credentials)
            .with_context(|| format!("creating {}", credentials.display()))?;
        file.write_all(registry.docker_config(PASSWORD).as_bytes())
            .with_context(|| format!("writing {}", credentials.display()))?;
    }
    say(&format!(
        "image registry on {REGISTRY_HOST} (user {USER}, credentials in {}): {REGISTRY_HOST}/busybox:offline, {REGISTRY_HOST}/pause:latest",
        credentials.display()
    ));
    Ok(registry)
}

/// Why the run ended.
enum Stop {
    Signal(&'static str),
    Duration,
    Checked(CheckReport),
    AgentExited(ExitStatus),
    Failed(anyhow::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Signal(name) => write!(f, "{name}"),
            Stop::Duration => f.write_str("--duration is over"),
            Stop::Checked(report) if report.passed => f.write_str("--check passed"),
            Stop::Checked(_) => f.write_str("--check failed"),
            Stop::AgentExited(status) => write!(f, "bpflet exited ({status})"),
            Stop::Failed(e) => write!(f, "error: {e:#}"),
        }
    }
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime. Signals that arrive before the first `recv` are kept.
    fn install() -> Result<Self> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing a {name} handler"))
        };
        Ok(Signals {
            int: on(SignalKind::interrupt(), "SIGINT")?,
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Runs the agent and the trace until a signal, `--duration`, the end of `--check`, or the
/// agent's exit.
async fn supervise(
    ctx: &Ctx,
    ctd: &PrivateContainerd,
    signals: &mut Signals,
    procs: &mut Procs,
) -> Result<Stop> {
    // A signal that came while containerd was starting: 10 ms lets the runtime see it.
    if let Ok(name) = tokio::time::timeout(Duration::from_millis(10), signals.recv()).await {
        return Ok(Stop::Signal(name));
    }
    let mut agent_cmd = Command::new(&ctx.bpflet);
    agent_cmd
        .arg("--config")
        .arg(&ctx.config_path)
        .arg("--root-dir")
        .arg(&ctx.agent_root)
        .args(&ctx.agent_args);
    let agent_started = Instant::now();
    let agent = procs.agent.insert(Proc::spawn(
        "agent",
        agent_cmd,
        &ctx.work_dir.join("agent.log"),
        None,
    )?);
    say(&format!(
        "started bpflet (pid {}): {} --config {} --root-dir {}",
        agent.pid,
        ctx.bpflet.display(),
        ctx.config_path.display(),
        ctx.agent_root.display()
    ));

    // The trace filters on a cgroup path that must exist: wait for the agent's QoS tree.
    let memory_mount = memory_hierarchy(&mounts()?).context("no memory cgroup hierarchy")?;
    let kubepods = format!("{}/kubepods", ctx.cgroup_root);
    let kubepods_dir = memory_mount.join(kubepods.trim_start_matches('/'));
    tokio::select! {
        biased;
        name = signals.recv() => return Ok(Stop::Signal(name)),
        status = agent.child.wait() => {
            agent.drain().await;
            return Ok(Stop::AgentExited(status?));
        }
        made = wait_for_dir(&kubepods_dir, KUBEPODS_TIMEOUT) => made?,
    }
    let (oom_tx, oom_rx) = watch::channel(None);
    let mut trace_cmd = Command::new(&ctx.bpflet);
    trace_cmd.args(["trace", "--cgroup", &kubepods]);
    let trace = procs.trace.insert(Proc::spawn(
        "trace",
        trace_cmd,
        &ctx.work_dir.join("trace.log"),
        Some(oom_tx),
    )?);
    print_banner(ctx, ctd, agent.pid, trace.pid, &kubepods, &kubepods_dir);

    let (pods_tx, pods_rx) = watch::channel(Snapshot::default());
    let observer = observe_pods(&ctx.examples, pods_tx, agent_started);
    let check = async {
        match ctx.check_timeout {
            Some(timeout) => check(&ctx.examples, pods_rx, oom_rx, agent_started, timeout).await,
            None => std::future::pending().await,
        }
    };
    let until = async {
        match ctx.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(observer, check, until);
    let mut trace_running = true;
    loop {
        tokio::select! {
            biased;
            name = signals.recv() => return Ok(Stop::Signal(name)),
            status = agent.child.wait() => {
                agent.drain().await;
                return Ok(Stop::AgentExited(status?));
            }
            status = trace.child.wait(), if trace_running => {
                trace.drain().await;
                trace_running = false;
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                say(&format!(
                    "bpflet trace exited ({status}); the agent keeps running, see {}",
                    ctx.work_dir.join("trace.log").display()
                ));
            }
            () = &mut until => return Ok(Stop::Duration),
            report = &mut check => return Ok(Stop::Checked(report)),
            () = &mut observer => unreachable!("the pod observer never returns"),
        }
    }
}

fn print_banner(
    ctx: &Ctx,
    ctd: &PrivateContainerd,
    agent_pid: i32,
    trace_pid: i32,
    kubepods: &str,
    kubepods_dir: &Path,
) {
    let bpflet = ctx.bpflet.display();
    let w = ctx.work_dir.display();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "bpflet is up ({:.1}s after `up` started): agent pid {agent_pid}, trace pid {trace_pid}, \
         containerd pid {}",
        ctx.started.elapsed().as_secs_f64(),
        ctd.pid().unwrap_or_default()
    );
    let _ = writeln!(
        text,
        "  pods:       curl -s 127.0.0.1:{READ_ONLY_PORT}/pods | jq -r '.items[] | \
         [.metadata.name, .status.phase] | @tsv'"
    );
    let _ = writeln!(
        text,
        "  health:     curl -s 127.0.0.1:{READ_ONLY_PORT}/healthz"
    );
    let _ = writeln!(text, "  web pod:    curl -s 127.0.0.1:{WEB_PORT}/");
    let _ = writeln!(
        text,
        "  trace:      {bpflet} trace --cgroup {kubepods} [--kind oom_kill] [--json]"
    );
    let _ = writeln!(
        text,
        "  containers: ctr --address {} -n k8s.io tasks ls",
        ctd.socket.display()
    );
    let _ = writeln!(
        text,
        "  logs:       {w}/root/logs (containers), {w}/agent.log, {w}/trace.log, {}",
        ctd.log_path.display()
    );
    let _ = writeln!(
        text,
        "  cgroups:    {} (memory); config: {}",
        kubepods_dir.display(),
        ctx.config_path.display()
    );
    let _ = write!(
        text,
        "Ctrl-C (or SIGTERM) stops bpflet and removes every pod, cgroup and mount of this run."
    );
    for line in text.lines() {
        say(line);
    }
}

async fn wait_for_dir(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !dir.is_dir() {
        if Instant::now() >= deadline {
            bail!(
                "the agent did not create {} within {timeout:?}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A child process whose output is copied, line by line and prefixed, to the terminal and
/// to a log file.
struct Proc {
    name: &'static str,
    pid: i32,
    child: Child,
    pumps: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Procs {
    agent: Option<Proc>,
    trace: Option<Proc>,
}

impl Procs {
    /// The agent first (it leaves the pods running), then the trace.
    async fn stop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop(AGENT_STOP_GRACE).await;
        }
        if let Some(trace) = self.trace.take() {
            trace.stop(TRACE_STOP_GRACE).await;
        }
    }
}

impl Proc {
    /// `oom_kills`: set to every output line that reports an `oom_kill`.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        oom_kills: Option<watch::Sender<Option<String>>>,
    ) -> Result<Self> {
        let line = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C at the terminal reaches only us: we stop the children in order.
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call (prctl), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // If `cargo xtask up` dies without tearing down, the child still stops.
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {line}"))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .context("a child without a pid")?;
        let mut pumps = vec![];
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        pumps.push(tokio::spawn(pump(name, stdout, log.to_owned(), oom_kills)));
        pumps.push(tokio::spawn(pump(name, stderr, log.to_owned(), None)));
        Ok(Proc {
            name,
            pid,
            child,
            pumps,
        })
    }

    /// Waits (briefly) until everything the process wrote has been copied.
    async fn drain(&mut self) {
        for pump in self.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the output to drain.
    async fn stop(mut self, grace: Duration) {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
                if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
                    status.ok()
                } else {
                    say(&format!(
                        "{} (pid {}) ignored SIGTERM for {grace:?}; killing it",
                        self.name, self.pid
                    ));
                    let _ = self.child.kill().await;
                    self.child.try_wait().ok().flatten()
                }
            }
        };
        self.drain().await;
        let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
        say(&format!(
            "{} (pid {}) stopped: {status}",
            self.name, self.pid
        ));
    }
}

/// Copies lines from `from` to stdout as `[name] line` and appends them to `log`.
async fn pump(
    name: &'static str,
    from: impl AsyncRead + Unpin,
    log: PathBuf,
    oom_kills: Option<watch::Sender<Option<String>>>,
) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| say(&format!("cannot write {}: {e}", log.display())))
        .ok();
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        println!("[{name}] {line}");
        if let Some(file) = file.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        if let Some(tx) = &oom_kills
            && line.contains("oom_kill")
        {
            tx.send_replace(Some(line.to_owned()));
        }
    }
}

/// What `/pods` said last.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    pods: Vec<PodView>,
    /// Why the last poll failed, if it did.
    error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodView {
    /// As on /pods: `<manifest name>-<node name>`.
    pub(crate) name: String,
    /// The manifest's name, when the pod's name is that plus `-<spec.nodeName>`.
    pub(crate) static_name: Option<String>,
    pub(crate) uid: Option<String>,
    pub(crate) phase: String,
    pub(crate) containers: Vec<ContainerView>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ContainerView {
    pub(crate) name: String,
    pub(crate) init: bool,
    /// `running[, ready|, not ready]`, `waiting(<reason>)`, `terminated <reason>(<code>)`.
    pub(crate) state: String,
    pub(crate) restarts: i64,
    /// `lastState.terminated` as `<reason>(<code>)`.
    pub(crate) last: Option<String>,
    pub(crate) oom_killed: bool,
}

impl PodView {
    fn from_json(pod: &Value) -> Option<Self> {
        let name = pod.pointer("/metadata/name")?.as_str()?.to_owned();
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        let static_name = node.and_then(|node| {
            name.strip_suffix(node)
                .and_then(|n| n.strip_suffix('-'))
                .map(str::to_owned)
        });
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Unknown")
            .to_owned();
        let mut containers = vec![];
        for (key, init) in [
            ("initContainerStatuses", true),
            ("containerStatuses", false),
        ] {
            let statuses = pod
                .pointer(&format!("/status/{key}"))
                .and_then(Value::as_array);
            for s in statuses.into_iter().flatten() {
                containers.push(ContainerView::from_json(s, init));
            }
        }
        Some(PodView {
            name,
            static_name,
            uid,
            phase,
            containers,
        })
    }

    /// One line for the terminal: phase and, per container, state, restarts, last end.
    pub(crate) fn summary(&self) -> String {
        let mut s = self.phase.clone();
        for c in &self.containers {
            let _ = write!(
                s,
                "; {}{}: {}",
                if c.init { "init " } else { "" },
                c.name,
                c.state
            );
            if c.restarts > 0 {
                let _ = write!(s, ", restarts {}", c.restarts);
            }
            if let Some(last) = &c.last {
                let _ = write!(s, ", last {last}");
            }
        }
        s
    }
}

impl ContainerView {
    fn from_json(s: &Value, init: bool) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let terminated = |t: &Value| {
            let reason = text(t.get("reason"));
            let code = t
                .get("exitCode")
                .and_then(Value::as_i64)
                .unwrap_or_default();
            (format!("{reason}({code})"), reason == "OOMKilled")
        };
        let state = s.get("state");
        let (state_text, state_oom) = if let Some(t) = state.and_then(|s| s.get("terminated")) {
            let (t, oom) = terminated(t);
            (format!("terminated {t}"), oom)
        } else if let Some(w) = state.and_then(|s| s.get("waiting")) {
            (format!("waiting({})", text(w.get("reason"))), false)
        } else if state.and_then(|s| s.get("running")).is_some() {
            // Readiness means something for app containers only.
            match s.get("ready").and_then(Value::as_bool).filter(|_| !init) {
                Some(true) => ("running, ready".to_owned(), false),
                Some(false) => ("running, not ready".to_owned(), false),
                None => ("running".to_owned(), false),
            }
        } else {
            ("unknown".to_owned(), false)
        };
        let last = s.pointer("/lastState/terminated").map(terminated);
        ContainerView {
            name: text(s.get("name")),
            init,
            state: state_text,
            restarts: s
                .get("restartCount")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            oom_killed: state_oom || last.as_ref().is_some_and(|(_, oom)| *oom),
            last: last.map(|(t, _)| t),
        }
    }
}

/// The pods of a `/pods` answer: a PodList (`items`) or a bare array. The upstream
/// kubelet with no pods answers `"items": null` (a nil Go slice).
pub(crate) fn parse_pods(body: &[u8]) -> Result<Vec<PodView>> {
    let value: Value = serde_json::from_slice(body).context("/pods is not JSON")?;
    if value.get("kind").and_then(Value::as_str) == Some("PodList")
        && value.get("items").is_some_and(Value::is_null)
    {
        return Ok(vec![]);
    }
    let items = value
        .get("items")
        .unwrap_or(&value)
        .as_array()
        .context("/pods is neither a PodList nor an array")?;
    Ok(items.iter().filter_map(PodView::from_json).collect())
}

/// Polls `/pods` forever; prints each pod's changes and when the example pods first run.
async fn observe_pods(examples: &[String], tx: watch::Sender<Snapshot>, since: Instant) {
    let url_path = "/pods";
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READ_ONLY_PORT));
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    let mut first_running = false;
    let mut all_running = false;
    let mut last_error = None;
    loop {
        let snapshot = match http_get(addr, url_path).await {
            Ok((200, body)) => match parse_pods(&body) {
                Ok(pods) => Snapshot { pods, error: None },
                Err(e) => Snapshot {
                    pods: vec![],
                    error: Some(format!("{e:#}")),
                },
            },
            Ok((code, _)) => Snapshot {
                pods: vec![],
                error: Some(format!("GET {url_path}: HTTP {code}")),
            },
            Err(e) => Snapshot {
                pods: vec![],
                error: Some(format!("GET {url_path}: {e:#}")),
            },
        };
        let secs = since.elapsed().as_secs_f64();
        if let Some(e) = &snapshot.error
            && snapshot.error != last_error
            && !e.contains("Connection refused")
        {
            say(e);
        }
        last_error.clone_from(&snapshot.error);
        for pod in &snapshot.pods {
            let summary = pod.summary();
            if last.get(&pod.name) != Some(&summary) {
                say(&format!("[{secs:6.1}s] pod {}: {summary}", pod.name));
                last.insert(pod.name.clone(), summary);
            }
        }
        let running = |name: &String| {
            snapshot
                .pods
                .iter()
                .any(|p| p.static_name.as_ref() == Some(name) && p.phase == "Running")
        };
        if !first_running && examples.iter().any(running) {
            first_running = true;
            say(&format!(
                "first example pod Running {secs:.1}s after bpflet started"
            ));
        }
        if !all_running && examples.iter().all(running) {
            all_running = true;
            say(&format!(
                "all {} example pods Running {secs:.1}s after bpflet started",
                examples.len()
            ));
        }
        tx.send_replace(snapshot);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// What `--check` found.
#[derive(Debug)]
struct CheckReport {
    passed: bool,
    /// One line per check: what passed, or what is missing.
    lines: Vec<String>,
}

impl CheckReport {
    fn into_result(self) -> Result<()> {
        if self.passed {
            Ok(())
        } else {
            Err(anyhow!(
                "--check: the demo did not come up; missing:\n  {}",
                self.lines.join("\n  ")
            ))
        }
    }
}

/// What the checks latch once seen.
#[derive(Debug, Default)]
struct Seen {
    web: Option<String>,
    web_error: Option<String>,
    oom: Option<String>,
    /// When the oom pod's OOMKilled status was first seen, since bpflet started.
    oom_after: Option<Duration>,
    /// A trace line reporting an OOM kill in the oom pod.
    trace_oom: Option<String>,
}

/// What is still missing: one line each, empty when the demo works.
fn missing(examples: &[String], snapshot: &Snapshot, seen: &Seen) -> Vec<String> {
    let mut out = vec![];
    if let Some(e) = &snapshot.error {
        out.push(format!("the agent's /pods: {e}"));
    }
    for name in examples {
        match snapshot
            .pods
            .iter()
            .find(|p| p.static_name.as_deref() == Some(name))
        {
            None => out.push(format!("pod {name}: not on /pods")),
            Some(p) if p.phase != "Running" => {
                out.push(format!("pod {name}: {}, not Running", p.summary()));
            }
            Some(_) => {}
        }
    }
    if examples.iter().any(|e| e == WEB_POD) && seen.web.is_none() {
        out.push(format!(
            "web: http://127.0.0.1:{WEB_PORT}/ did not serve the init container's page ({})",
            seen.web_error
                .as_deref()
                .unwrap_or("not tried: the pod is not Running")
        ));
    }
    if examples.iter().any(|e| e == OOM_POD) {
        if seen.oom.is_none() {
            out.push("oom: no container status with reason OOMKilled on /pods".to_owned());
        }
        if seen.trace_oom.is_none() {
            out.push(
                "trace: no oom_kill event in the oom pod printed by `bpflet trace`".to_owned(),
            );
        }
    }
    out
}

async fn check(
    examples: &[String],
    mut pods: watch::Receiver<Snapshot>,
    trace_oom: watch::Receiver<Option<String>>,
    since: Instant,
    timeout: Duration,
) -> CheckReport {
    let deadline = Instant::now() + timeout;
    let mut seen = Seen::default();
    loop {
        let snapshot = pods.borrow_and_update().clone();
        let pod = |name: &str| {
            snapshot
                .pods
                .iter()
                .find(|p| p.static_name.as_deref() == Some(name))
        };
        if seen.web.is_none() && pod(WEB_POD).is_some_and(|p| p.phase == "Running") {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, WEB_PORT));
            match http_get(addr, "/").await {
                Ok((200, body)) if String::from_utf8_lossy(&body).contains(WEB_MARKER) => {
                    let body = String::from_utf8_lossy(&body);
                    seen.web = Some(format!("GET http://{addr}/: 200 {:?}", body.trim()));
                }
                Ok((code, body)) => {
                    seen.web_error = Some(format!(
                        "HTTP {code}: {:?}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                }
                Err(e) => seen.web_error = Some(format!("{e:#}")),
            }
        }
        if seen.oom.is_none()
            && let Some(p) = pod(OOM_POD)
            && let Some(c) = p.containers.iter().find(|c| c.oom_killed)
        {
            seen.oom = Some(format!(
                "container {} of {}: {}",
                c.name,
                p.name,
                p.summary()
            ));
            seen.oom_after = Some(since.elapsed());
        }
        // The trace names the pod by uid once it knows the cgroup; until /pods lists the
        // pod, any oom_kill in kubepods counts.
        if seen.trace_oom.is_none()
            && let Some(line) = trace_oom.borrow().as_deref()
            && pod(OOM_POD)
                .and_then(|p| p.uid.as_deref())
                .is_none_or(|uid| line.contains(uid))
        {
            seen.trace_oom = Some(line.trim().to_owned());
        }
        let missing = missing(examples, &snapshot, &seen);
        if missing.is_empty() {
            let mut lines = vec![format!(
                "every example pod Running on /pods: {}",
                examples.join(", ")
            )];
            lines.extend(seen.web.clone());
            if let Some(oom) = &seen.oom {
                let after = seen.oom_after.unwrap_or_default().as_secs_f64();
                lines.push(format!(
                    "OOMKilled on /pods {after:.1}s after bpflet started: {oom}"
                ));
            }
            lines.extend(seen.trace_oom.as_ref().map(|l| format!("trace: {l}")));
            say(&format!(
                "--check passed {:.1}s after bpflet started:",
                since.elapsed().as_secs_f64()
            ));
            for line in &lines {
                say(&format!("  ok: {line}"));
            }
            return CheckReport {
                passed: true,
                lines,
            };
        }
        if Instant::now() >= deadline {
            say(&format!("--check: still missing after {timeout:?}:"));
            for line in &missing {
                say(&format!("  missing: {line}"));
            }
            return CheckReport {
                passed: false,
                lines: missing,
            };
        }
        let _ = tokio::time::timeout(POLL_INTERVAL, pods.changed()).await;
    }
}

/// A tiny HTTP/1.0 GET; returns the status code and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = vec![];
        stream.read_to_end(&mut raw).await?;
        Ok::<_, io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {HTTP_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    parse_http_response(&raw).with_context(|| format!("GET http://{addr}{path}"))
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the response has no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| status.starts_with("HTTP/"))
        .with_context(|| format!("bad status line {status:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![];
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_line = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Removes the pods, containerd, our cgroups and mounts, then checks nothing is left (no
/// process naming `work_dir`, mount under it, cgroup under `cgroup_root`, or `bridge`).
pub(crate) fn teardown(
    ctd: PrivateContainerd,
    work_dir: &Path,
    cgroup_root: &str,
    bridge: &str,
) -> Result<()> {
    let mut problems = vec![];
    say("removing every pod sandbox and stopping containerd");
    if let Err(e) = ctd.stop() {
        problems.push(format!("{e:#}"));
    }
    say(&format!("removing the cgroup tree {cgroup_root}"));
    if let Err(e) = remove_cgroup_tree(cgroup_root) {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = unmount_under(work_dir) {
        problems.push(format!("{e:#}"));
    }
    match leftovers(work_dir, cgroup_root, bridge) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => problems.push(format!("left behind: {}", left.join("; "))),
        Err(e) => problems.push(format!("checking for leftovers: {e:#}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// What of this run still exists: processes of ours that name the work directory, mounts
/// under it, our cgroups in any hierarchy, our CNI bridge.
fn leftovers(work_dir: &Path, cgroup_root: &str, bridge: &str) -> Result<Vec<String>> {
    let mut left = vec![];
    let all_mounts = mounts()?;
    for m in &all_mounts {
        if m.mount_point.starts_with(work_dir) {
            left.push(format!("mount {}", m.mount_point.display()));
        }
    }
    for dir in cgroup_paths(&all_mounts, cgroup_root) {
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    let work = work_dir.to_string_lossy();
    let ours = [
        "bpflet",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
    ];
    let me = std::process::id();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if ours.contains(&program.as_str()) && args.iter().any(|a| a.contains(&*work)) {
            left.push(format!("process {pid}: {}", args.join(" ")));
        }
    }
    if Path::new("/sys/class/net").join(bridge).exists() {
        left.push(format!("network bridge {bridge}"));
    }
    Ok(left)
}

pub(crate) fn mounts() -> Result<Vec<MountEntry>> {
    let text = fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(xtask::mountinfo::parse(&text))
}

/// The memory controller's mount: a v1 hierarchy with `memory`, else the v2 mount.
pub(crate) fn memory_hierarchy(mounts: &[MountEntry]) -> Option<PathBuf> {
    let v1 = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"));
    v1.or_else(|| mounts.iter().find(|m| m.fstype == "cgroup2"))
        .map(|m| m.mount_point.clone())
}

/// `cgroup_root` in every cgroup hierarchy (v1 controllers, named ones, v2).
fn cgroup_paths(mounts: &[MountEntry], cgroup_root: &str) -> Vec<PathBuf> {
    let relative = cgroup_root.trim_start_matches('/');
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point.join(relative))
        .collect()
}

/// Removes `cgroup_root` and everything below it in every hierarchy, deepest first. Only
/// ever our own root; a process still inside one of its cgroups is one of our pods' and
/// is killed.
pub(crate) fn remove_cgroup_tree(cgroup_root: &str) -> Result<()> {
    let rest = cgroup_root
        .strip_prefix(CGROUP_ROOT_PREFIX)
        .unwrap_or_default();
    ensure!(
        !rest.is_empty() && !rest.contains('/') && rest != "." && rest != "..",
        "refusing to remove {cgroup_root:?}: not a cgroup root of `cargo xtask up`"
    );
    for base in cgroup_paths(&mounts()?, cgroup_root) {
        if !base.is_dir() {
            continue;
        }
        let mut dirs = vec![];
        collect_dirs(&base, &mut dirs)?;
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            rmdir_cgroup(&dir)?;
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_owned());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn rmdir_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            say(&format!("killing {pid}, left in {}", dir.display()));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Unmounts everything strictly below `dir`, deepest first; lazily when busy.
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for _pass in 0..5 {
        let mut below: Vec<PathBuf> = mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(dir) && p != dir)
            .collect();
        if below.is_empty() {
            return Ok(());
        }
        below.reverse();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in below {
            say(&format!("unmounting {}", point.display()));
            match umount2(&point, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(Errno::EBUSY) => umount2(&point, MntFlags::MNT_DETACH)
                    .with_context(|| format!("lazily unmounting {}", point.display()))?,
                Err(e) => return Err(e).with_context(|| format!("unmounting {}", point.display())),
            }
        }
    }
    bail!("mounts left under {} after 5 passes", dir.display())
}

/// The last `lines` lines of a file, or a note that it cannot be read.
fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_name_is_the_name_directly_under_metadata() {
        let text = "# a comment\napiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    name: nope\n  \
                    name: \"web\"\nspec:\n  containers:\n    - name: httpd\n";
        assert_eq!(manifest_name(text).as_deref(), Some("web"));
        assert_eq!(
            manifest_name("metadata:\n    name: 'db'\n").as_deref(),
            Some("db")
        );
        assert_eq!(manifest_name("kind: Pod\nspec:\n  name: x\n"), None);
        assert_eq!(manifest_name("metadata:\n  labels:\n    name: x\n"), None);
        assert_eq!(manifest_name("metadata:\n  name: ''\n"), None);
    }

    #[test]
    fn examples_are_found_and_only_pulled_yaml_pulls_from_ups_registry() {
        let dir = workspace_root().join("examples");
        let names = example_pods(&dir).unwrap();
        assert_eq!(names, ["besteffort", "guaranteed", "oom", "pulled", "web"]);
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = fs::read_to_string(&path).unwrap();
                if path.file_name().is_some_and(|n| n == "pulled.yaml") {
                    assert!(
                        text.contains(&format!("image: {REGISTRY_HOST}/busybox:offline"))
                            && text.contains("imagePullPolicy: Always"),
                        "pulled.yaml pulls from up's registry at every start"
                    );
                    continue;
                }
                assert!(
                    text.contains("imagePullPolicy: IfNotPresent"),
                    "{}: the image exists only locally and must never be pulled",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn config_names_every_setting() {
        let config = render_config(&ConfigParams {
            static_pod_path: Path::new("/repo/examples"),
            cgroup_root: "/bpflet-up-0123456789ab",
            runtime_socket: Path::new("/repo/.work/up/containerd/containerd.sock"),
            system_reserved_memory: (24 << 30) - (512 << 20),
            pleg_mode: PlegMode::Generic,
            read_only_port: 10255,
            port: 10250,
        });
        for want in [
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
            "staticPodPath: \"/repo/examples\"\n",
            "fileCheckFrequency: 20s\n",
            "containerRuntimeEndpoint: \"unix:///repo/.work/up/containerd/containerd.sock\"\n",
            "cgroupRoot: \"/bpflet-up-0123456789ab\"\n",
            "enforceNodeAllocatable: [pods]\n",
            "systemReserved:\n  memory: \"24641536Ki\"\n",
            "evictionHard:\n  memory.available: 100Mi\n",
            "address: 127.0.0.1\nreadOnlyPort: 10255\n",
            "port: 10250\n",
            "---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nplegMode: generic\n",
        ] {
            assert!(config.contains(want), "{want:?} missing from\n{config}");
        }
        assert_eq!(config.matches("\n---\n").count(), 1, "{config}");
    }

    #[test]
    fn cgroup_root_is_ours_and_stable() {
        let a = cgroup_root_for(Path::new("/repo/.work/up"));
        assert_eq!(a, cgroup_root_for(Path::new("/repo/.work/up")));
        assert_ne!(a, cgroup_root_for(Path::new("/repo/.work/other")));
        assert!(a.starts_with(CGROUP_ROOT_PREFIX) && a.len() == CGROUP_ROOT_PREFIX.len() + 12);
        for bad in [
            "/",
            "/bpflet-ctd-abc",
            "/bpflet-up-",
            "/bpflet-up-a/b",
            "/bpflet-up-..",
        ] {
            let err = remove_cgroup_tree(bad).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{bad}: {err}");
        }
    }

    #[test]
    fn http_responses_parse_plain_and_chunked() {
        let (code, body) =
            parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((code, body.as_slice()), (200, &b"hi"[..]));
        let (code, body) = parse_http_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((code, body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_http_response(b"HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_http_response(b"SSH-2.0 nope\r\n\r\n").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }

    fn pods_json() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [
                {
                    "metadata": {"name": "oom-vm", "uid": "u1"},
                    "spec": {"nodeName": "vm"},
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [{
                            "name": "hog",
                            "restartCount": 1,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
                        }]
                    }
                },
                {
                    "metadata": {"name": "web-vm"},
                    "spec": {"nodeName": "vm"},
                    "status": {
                        "phase": "Pending",
                        "initContainerStatuses": [{
                            "name": "write-index",
                            "restartCount": 0,
                            "state": {"terminated": {"reason": "Completed", "exitCode": 0}}
                        }],
                        "containerStatuses": [{
                            "name": "httpd",
                            "restartCount": 0,
                            "ready": false,
                            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
                        }]
                    }
                },
                {"metadata": {"name": "other"}, "spec": {}, "status": {}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn pods_parse_into_views() {
        let pods = parse_pods(&pods_json()).unwrap();
        assert_eq!(pods.len(), 3);
        assert_eq!(pods[0].static_name.as_deref(), Some("oom"));
        assert_eq!(pods[0].uid.as_deref(), Some("u1"));
        assert!(pods[0].containers[0].oom_killed);
        assert_eq!(
            pods[0].summary(),
            "Running; hog: waiting(CrashLoopBackOff), restarts 1, last OOMKilled(137)"
        );
        assert_eq!(
            pods[1].summary(),
            "Pending; init write-index: terminated Completed(0); httpd: running, not ready"
        );
        assert!(!pods[1].containers.iter().any(|c| c.oom_killed));
        assert_eq!(pods[2].static_name, None);
        assert_eq!(pods[2].phase, "Unknown");
        // A bare array is accepted too; anything else is not.
        assert_eq!(parse_pods(b"[]").unwrap(), vec![]);
        assert!(parse_pods(b"{\"kind\": \"Status\"}").is_err());
        // The kubelet's empty PodList.
        let empty = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#;
        assert_eq!(parse_pods(empty).unwrap(), vec![]);
        assert!(parse_pods(br#"{"kind":"Status","items":null}"#).is_err());
        assert!(parse_pods(br#"{"kind":"PodList","items":7}"#).is_err());
    }

    #[test]
    fn missing_names_every_gap_and_nothing_when_done() {
        let examples: Vec<String> = ["besteffort", "oom", "web"].map(String::from).to_vec();
        let snapshot = Snapshot {
            pods: parse_pods(&pods_json()).unwrap(),
            error: None,
        };
        let mut seen = Seen::default();
        let gaps = missing(&examples, &snapshot, &seen);
        let text = gaps.join("\n");
        assert_eq!(gaps.len(), 5, "{text}");
        assert!(text.contains("pod besteffort: not on /pods"), "{text}");
        assert!(text.contains("pod web: Pending"), "{text}");
        assert!(text.contains("web: http://127.0.0.1:18080/"), "{text}");
        assert!(
            text.contains("oom: no container status with reason OOMKilled"),
            "{text}"
        );
        assert!(text.contains("trace: no oom_kill"), "{text}");

        let mut done = snapshot.clone();
        done.pods[1].phase = "Running".into();
        done.pods.push(PodView {
            name: "besteffort-vm".into(),
            static_name: Some("besteffort".into()),
            uid: None,
            phase: "Running".into(),
            containers: vec![],
        });
        seen.web = Some("ok".into());
        seen.oom = Some("ok".into());
        seen.trace_oom = Some("oom_kill ...".into());
        assert_eq!(missing(&examples, &done, &seen), Vec::<String>::new());

        let down = Snapshot {
            pods: vec![],
            error: Some("GET /pods: connection refused".into()),
        };
        assert!(missing(&examples, &down, &seen)[0].contains("connection refused"));
    }

    #[test]
    fn memory_hierarchy_and_cgroup_paths_from_mounts() {
        let parsed = xtask::mountinfo::parse(
            b"40 1 0:30 / /w/a\\040b rw - tmpfs tmpfs rw
31 1 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
30 1 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
",
        );
        let [tmpfs, v2, m] = <[MountEntry; 3]>::try_from(parsed).expect("three mounts");
        assert_eq!(tmpfs.mount_point, Path::new("/w/a b"));
        let all = vec![tmpfs, v2, m];
        assert_eq!(
            memory_hierarchy(&all).as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            memory_hierarchy(&all[..2]).as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup_paths(&all, "/bpflet-up-x"),
            [
                PathBuf::from("/sys/fs/cgroup/unified/bpflet-up-x"),
                PathBuf::from("/sys/fs/cgroup/memory/bpflet-up-x")
            ]
        );
    }
}
