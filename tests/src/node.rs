//! The one node harness of the root tests: a private containerd (Debian's 1.6 by default, or
//! containerd 2 built here: [`NodeConfig::containerd`]) with runc and the offline busybox image, plus the `bpflet` binary as a static-pod agent on it. Pod state is read from
//! the agent's read-only API on 127.0.0.1; runtime state straight from containerd with `ctr`.
//! The agent process (command line, log, readiness, stop) is `xtask::agent`'s, which the
//! benches' node uses too; the configuration and the assertions are the tests' own.
//!
//! Every wait is a wait for a condition, bounded by [`WAIT`]; on timeout the test panics with
//! the tail of the agent's log.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;
use xtask::agent::{Agent, AgentSpec};
use xtask::containerd::{self, Binaries, PrivateContainerd};

pub use xtask::agent::{http_get, tail};

use crate::{bpflet_bin, require_root};

/// Upper bound for anything the agent must achieve; never a timing claim.
pub const WAIT: Duration = Duration::from_secs(90);

/// The offline image every test pod runs.
pub const IMAGE: &str = "bpflet.local/busybox:offline";

/// The eviction thresholds of a test node unless its `kubelet_extra` sets its own: upstream's
/// memory default without its disk ones. The test machines share a disk whose free share
/// varies with what else runs (it has been seen below 15 %), and upstream's default
/// `imagefs.available<15%` would then evict every test pod for DiskPressure. Tests about
/// disk pressure set their own thresholds.
pub const DEFAULT_EVICTION_HARD: &str = "evictionHard: {memory.available: 100Mi}\n";

/// The image GC settings of a test node unless its `kubelet_extra` sets `imageGC...`: no
/// periodic image GC (high threshold 100, no maximum age). The private containerd's images
/// live on the shared disk, whose usage varies with what else runs, and upstream's 85 %
/// would have every node remove the images its tests put there. Tests about image GC set
/// their own thresholds, on an image filesystem of their own
/// ([`NodeConfig::containerd_root_bytes`]).
pub const DEFAULT_IMAGE_GC: &str = "imageGCHighThresholdPercent: 100
";

/// A container command that grows its anonymous memory by ~1 MiB every 50 ms, forever.
pub const GROW_MEMORY: &str = r#"exec awk "BEGIN { while (1) { s = s sprintf(\"%1048576s\", \"\"); system(\"sleep 0.05\") } }""#;

/// The machine's memory (`MemTotal`) in bytes.
#[must_use]
pub fn mem_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib * 1024
}

/// How a [`Node`]'s agent is configured.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `plegMode` of the `BpfletConfiguration`.
    pub pleg_mode: &'static str,
    /// Extra `KubeletConfiguration` lines (each ending in a newline). Unless they set
    /// `evictionHard`, the node gets `evictionHard: {memory.available: 100Mi}` (see
    /// [`DEFAULT_EVICTION_HARD`]).
    pub kubelet_extra: String,
    /// Extra `BpfletConfiguration` lines.
    pub bpflet_extra: String,
    /// `syncFrequency`.
    pub sync_frequency: &'static str,
    /// `healthzPort` (0: off).
    pub healthz_port: u16,
    /// Extra command-line arguments for the agent.
    pub args: Vec<String>,
    /// A command the agent runs under: the agent's command line is appended to it (e.g.
    /// `prlimit --nofile=1024:1024 --`, which execs the agent with the same pid). Default:
    /// [`default_wrapper`].
    pub wrapper: Option<Vec<String>>,
    /// Prefix of the node's temporary directory.
    pub dir_prefix: &'static str,
    /// Which containerd the node runs (default: [`default_containerd`]).
    pub containerd: Binaries,
    /// containerd's root (images, snapshots) on a tmpfs of this many bytes, a small image
    /// filesystem of the test's own (`None`: on the node's directory).
    pub containerd_root_bytes: Option<u64>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            pleg_mode: "event",
            kubelet_extra: String::new(),
            bpflet_extra: String::new(),
            sync_frequency: "10s",
            healthz_port: 0,
            args: Vec::new(),
            wrapper: default_wrapper(),
            dir_prefix: "bpflet-node-",
            containerd: default_containerd(),
            containerd_root_bytes: None,
        }
    }
}

/// The launcher every node's agent runs under unless its configuration says otherwise:
/// `BPFLET_TEST_AGENT_WRAPPER`, split at whitespace, when set (e.g.
/// `setpriv --bounding-set -all,+sys_admin --`, to run whole suites with a reduced
/// capability set); none otherwise.
#[must_use]
pub fn default_wrapper() -> Option<Vec<String>> {
    let wrapper = std::env::var("BPFLET_TEST_AGENT_WRAPPER").ok()?;
    let words: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
    (!words.is_empty()).then_some(words)
}

/// The containerd a node runs unless its configuration says otherwise: Debian's 1.6, or
/// containerd 2 (built by `cargo xtask build-peer`) when `BPFLET_TEST_CONTAINERD=2`, so the
/// whole root suite can run on either.
///
/// # Panics
/// On any other value of `BPFLET_TEST_CONTAINERD` than `1.6` or `2`.
#[must_use]
pub fn default_containerd() -> Binaries {
    match std::env::var("BPFLET_TEST_CONTAINERD").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("1.6") => Binaries::Debian,
        Ok("2") => Binaries::containerd2(),
        other => panic!("BPFLET_TEST_CONTAINERD={other:?}: expected 1.6 or 2"),
    }
}

impl NodeConfig {
    /// The default configuration with `plegMode: mode`.
    #[must_use]
    pub fn pleg(mode: &'static str) -> Self {
        Self {
            pleg_mode: mode,
            ..Self::default()
        }
    }
}

/// How [`Node::https`] calls the node's HTTPS API (with curl).
#[derive(Debug, Clone, Default)]
pub struct HttpsClient {
    /// The CA bundle the serving certificate must chain to; `None`: not checked (`-k`).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The host name asked for (resolved to 127.0.0.1), for a certificate checked by name.
    pub host: Option<String>,
}

/// A node: private containerd + bpflet. Field order matters: the agent stops first, then
/// containerd tears every pod down, then the directory goes.
pub struct Node {
    agent: Option<Agent>,
    pub ctd: PrivateContainerd,
    pub dir: TempDir,
    /// The read-only port on 127.0.0.1.
    pub port: u16,
    /// The authenticated HTTPS API's port (`port`) on 127.0.0.1.
    pub secure_port: u16,
    pub config: NodeConfig,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
#[must_use]
pub fn free_port() -> u16 {
    xtask::agent::free_port().unwrap_or_else(|e| panic!("{e:#}"))
}

impl Node {
    /// A node in `plegMode: pleg_mode` with the default configuration.
    #[must_use]
    pub fn start(pleg_mode: &'static str) -> Self {
        Self::start_with(NodeConfig::pleg(pleg_mode))
    }

    /// A node with `config`; returns once the agent serves `/pods`.
    #[must_use]
    pub fn start_with(config: NodeConfig) -> Self {
        let mut node = Self::prepare(config);
        node.start_agent();
        node
    }

    /// Containerd and the directories, without the agent (see [`Self::start_agent`]).
    #[must_use]
    pub fn prepare(config: NodeConfig) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(config.dir_prefix)
            .tempdir()
            .expect("temp dir");
        let options = containerd::Options {
            binaries: config.containerd.clone(),
            root_tmpfs_bytes: config.containerd_root_bytes,
            ..containerd::Options::default()
        };
        let ctd = PrivateContainerd::start_with(&dir.path().join("ctd"), &options)
            .unwrap_or_else(|e| panic!("starting a private containerd: {e:#}"));
        std::fs::create_dir_all(dir.path().join("manifests")).expect("create manifests dir");
        Node {
            agent: None,
            ctd,
            dir,
            port: free_port(),
            secure_port: free_port(),
            config,
        }
    }

    /// The static pod directory.
    #[must_use]
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The agent's `--root-dir`.
    #[must_use]
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The agent's configuration file.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// The agent's event stream socket (`eventStreamSocket`), in the node's directory so that
    /// nodes never share one (unless `bpflet_extra` sets its own).
    #[must_use]
    pub fn event_socket(&self) -> PathBuf {
        self.dir.path().join("events.sock")
    }

    /// The configuration file `start_agent` writes.
    #[must_use]
    pub fn config_text(&self) -> String {
        let c = &self.config;
        let eviction = if c.kubelet_extra.contains("evictionHard:") {
            ""
        } else {
            DEFAULT_EVICTION_HARD
        };
        let image_gc = if c.kubelet_extra.contains("imageGC") {
            ""
        } else {
            DEFAULT_IMAGE_GC
        };
        let event_socket = if c.bpflet_extra.contains("eventStreamSocket:") {
            String::new()
        } else {
            format!("eventStreamSocket: {}\n", self.event_socket().display())
        };
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 2s
syncFrequency: {sync}
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{socket}
readOnlyPort: {port}
port: {secure_port}
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
{eviction}{image_gc}{extra}---
apiVersion: bpflet.io/v1alpha1
kind: BpfletConfiguration
plegMode: {pleg}
{event_socket}{bpflet_extra}",
            manifests = self.manifests().display(),
            cgroup_root = self.ctd.cgroup_parent,
            socket = self.ctd.socket.display(),
            port = self.port,
            secure_port = self.secure_port,
            healthz = c.healthz_port,
            pleg = c.pleg_mode,
            extra = c.kubelet_extra,
            bpflet_extra = c.bpflet_extra,
            sync = c.sync_frequency,
        )
    }

    /// How the agent runs: `--v=2`, the node name `testnode`, the log in the node's
    /// directory.
    #[must_use]
    pub fn agent_spec(&self) -> AgentSpec {
        let mut args = vec!["--v=2".into()];
        args.extend(self.config.args.iter().map(Into::into));
        AgentSpec {
            bin: bpflet_bin(),
            config: self.config_path(),
            root_dir: self.root_dir(),
            node_name: "testnode".to_owned(),
            log: self.agent_log_path(),
            args,
            env: Vec::new(),
            wrapper: self
                .config
                .wrapper
                .iter()
                .flatten()
                .map(Into::into)
                .collect(),
        }
    }

    /// The agent's command line (without spawning it).
    #[must_use]
    pub fn agent_command(&self) -> Command {
        self.agent_spec().command()
    }

    /// Writes the configuration and starts the agent; returns once it serves `/pods`
    /// (panics with its log when it exits first).
    pub fn start_agent(&mut self) {
        self.spawn_agent();
        let port = self.port;
        self.agent
            .as_mut()
            .expect("just spawned")
            .wait_ready("serve /pods", WAIT, || Ok(xtask::agent::serves_pods(port)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Writes the configuration and starts the agent without waiting for it.
    pub fn spawn_agent(&mut self) {
        std::fs::write(self.config_path(), self.config_text()).expect("write agent config");
        let agent = Agent::spawn(&self.agent_spec()).unwrap_or_else(|e| panic!("{e:#}"));
        self.agent = Some(agent);
    }

    /// The agent process, while it runs.
    pub fn agent(&mut self) -> Option<&mut Child> {
        self.agent.as_mut().map(Agent::child)
    }

    /// True while the agent process has not exited.
    pub fn agent_alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|a| matches!(a.exited(), Ok(None)))
    }

    /// Waits (up to [`WAIT`]) for the agent to exit on its own and returns how it ended;
    /// panics with its log if it keeps running.
    pub fn wait_agent_exit(&mut self) -> std::process::ExitStatus {
        let agent = self.agent.as_mut().expect("the agent was started");
        let status = agent
            .wait_exit(WAIT)
            .unwrap_or_else(|e| panic!("the agent kept running: {e:#}"));
        self.agent = None;
        status
    }

    #[must_use]
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    #[must_use]
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// Sends `signal` to the agent and waits for it to exit (SIGKILL after [`WAIT`]).
    pub fn kill_agent(&mut self, signal: i32) {
        if let Some(agent) = self.agent.take() {
            let signal = Signal::try_from(signal).expect("a valid signal number");
            agent.stop(signal, WAIT);
        }
    }

    /// Writes a manifest atomically (a hidden temporary file renamed into place).
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests().join(file)).expect("rename manifest");
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).expect("remove manifest");
    }

    /// The items of `GET /pods`, or `None` when the agent does not answer.
    #[must_use]
    pub fn try_pods(&self) -> Option<Vec<Value>> {
        let list = self.get_json("/pods")?;
        assert_eq!(list["kind"], "PodList", "{list}");
        list["items"].as_array().cloned()
    }

    #[must_use]
    pub fn get_json(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.get_text(path)?).ok()
    }

    /// The body of `GET path` on the read-only port.
    #[must_use]
    pub fn get_text(&self, path: &str) -> Option<String> {
        http_get(self.port, path).map(|(_, body)| body)
    }

    /// `method path` on the HTTPS API (`port`) through curl: the status and the body, or
    /// status 0 and curl's error when no HTTP answer came (a refused handshake).
    #[must_use]
    pub fn https(&self, method: &str, path: &str, client: &HttpsClient) -> (u16, String) {
        let host = client.host.as_deref().unwrap_or("127.0.0.1");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        cmd.arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", self.secure_port));
        match &client.ca {
            Some(ca) => cmd.arg("--cacert").arg(ca),
            None => cmd.arg("-k"),
        };
        if let Some((cert, key)) = &client.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(token) = &client.token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        cmd.arg(format!("https://{host}:{}{path}", self.secure_port));
        let out = cmd.output().expect("run curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        match code.trim().parse::<u16>() {
            Ok(code) if code != 0 => (code, body.to_owned()),
            _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Events the agent recorded about pod `uid` (from `/events`).
    #[must_use]
    pub fn events_of(&self, uid: &str) -> Vec<Value> {
        let list = self.get_json("/events").unwrap_or(Value::Null);
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|e| e["involvedObject"]["uid"] == uid)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pod whose static name is `name-testnode` (static pods get `-<node>` appended).
    /// The events on `/events` that say the kernel's OOM killer acted (`OOMKilled`,
    /// `ProcessOOMKilled`, `SystemOOM`).
    #[must_use]
    pub fn kernel_oom_events(&self) -> Vec<Value> {
        let all = self.get_json("/events").unwrap_or(Value::Null);
        all["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                matches!(
                    e["reason"].as_str(),
                    Some("OOMKilled" | "ProcessOOMKilled" | "SystemOOM")
                )
            })
            .cloned()
            .collect()
    }

    #[must_use]
    pub fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-testnode");
        self.try_pods()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
    }

    /// Waits until `cond` holds, panicking with the agent's log after [`WAIT`].
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\n--- agent log (tail) ---\n{}",
            tail(&self.agent_log(), 60)
        );
    }

    /// Waits until `pred` holds for pod `name` and returns it.
    pub fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(p) = self.pod(name) {
                if pred(&p) {
                    return p;
                }
                last = Some(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "pod {name}: timed out waiting for {what}; last seen:\n{:#}\n--- agent log (tail) ---\n{}",
            last.unwrap_or(Value::Null),
            tail(&self.agent_log(), 60)
        );
    }

    /// Panics if `pred` stops holding for pod `name` at any check during `period`.
    pub fn holds_for(
        &self,
        name: &str,
        what: &str,
        period: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let end = Instant::now() + period;
        while Instant::now() < end {
            let p = self
                .pod(name)
                .unwrap_or_else(|| panic!("pod {name} vanished while {what} should hold"));
            assert!(
                pred(&p),
                "pod {name}: {what} stopped holding:\n{p:#}\n--- agent log (tail) ---\n{}",
                tail(&self.agent_log(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ctr -n k8s.io ARGS` against the node's containerd (with the `ctr` of its release);
    /// its standard output.
    #[must_use]
    pub fn ctr(&self, args: &[&str]) -> String {
        let ctr = self
            .ctd
            .binaries
            .tool("ctr")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let out = Command::new(ctr)
            .arg("--address")
            .arg(&self.ctd.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sandbox and container ids containerd has for pod `uid` (CRI's containers carry the
    /// pod uid label and `io.cri-containerd.kind` = `sandbox` or `container`).
    #[must_use]
    pub fn runtime_ids(&self, uid: &str) -> (Vec<String>, Vec<String>) {
        let ids = |kind: &str| -> Vec<String> {
            let filter = format!(
                "labels.\"io.kubernetes.pod.uid\"=={uid},labels.\"io.cri-containerd.kind\"=={kind}"
            );
            self.ctr(&["containers", "ls", "-q", &filter])
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        };
        (ids("sandbox"), ids("container"))
    }

    /// Ids of the containers (any state) containerd holds for container `name` of pod `uid`.
    #[must_use]
    pub fn containers_named(&self, uid: &str, name: &str) -> Vec<String> {
        let filter = format!(
            "labels.\"io.kubernetes.pod.uid\"=={uid},labels.\"io.kubernetes.container.name\"=={name}"
        );
        self.ctr(&["containers", "ls", "-q", &filter])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Every container (sandboxes included) containerd holds, in any state.
    #[must_use]
    pub fn all_runtime_containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The task status containerd reports for container `id` (`RUNNING`, `STOPPED`, ...),
    /// `None` when it has no task.
    #[must_use]
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.ctr(&["tasks", "ls"]).lines().skip(1).find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(id)).then(|| fields.nth(1).unwrap_or_default().to_owned())
        })
    }
}

impl Node {
    /// Detaches every mount the agent left below its root directory (tmpfs volumes, pinned
    /// subPaths), deepest first: a stopped agent leaves pods (and so their mounts) as they
    /// are, and the directory is deleted next. Containers keep their own copies.
    fn detach_agent_mounts(&self) {
        let Ok(root) = std::fs::canonicalize(self.root_dir()) else {
            return;
        };
        let text = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<PathBuf> = bpflet::mountinfo::parse(&text)
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(
                &p,
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent(libc::SIGTERM);
        self.detach_agent_mounts();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", tail(&self.agent_log(), 200));
        }
    }
}

/// `crictl ARGS` (the peer's, `cargo xtask build-peer`) against `ctd`'s CRI; its standard
/// output. Panics with crictl's error and the tail of containerd's log when it fails.
#[must_use]
pub fn crictl(ctd: &PrivateContainerd, args: &[&str]) -> String {
    let endpoint = format!("unix://{}", ctd.socket.display());
    let out = Command::new(xtask::peer::bin_dir().join("crictl"))
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "30s"])
        .args(args)
        .output()
        .expect("run crictl");
    assert!(
        out.status.success(),
        "crictl {args:?} failed: {}\ncontainerd's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctd.log_tail(20)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `bpflet trace --json --remote ARGS` and its JSON lines; returns once it has
/// subscribed (its `tracing (remote)` log line). Its stderr is echoed, prefixed.
#[must_use]
pub fn remote_tracer(args: &[&str]) -> (Child, std::sync::mpsc::Receiver<Value>) {
    use std::io::BufRead as _;
    let mut child = Command::new(bpflet_bin())
        .args(["trace", "--json", "--remote"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bpflet trace --remote");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[bpflet trace --remote] {line}");
            if line.contains("tracing (remote)")
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(WAIT)
        .expect("bpflet trace --remote did not subscribe");
    (child, rx)
}

/// The upstream kubelet's static pod `name` (`<name>-testnode`) on its read-only `/pods`,
/// or `None` (not there, or the kubelet does not answer).
#[must_use]
pub fn kubelet_pod(kubelet: &xtask::peer::Kubelet, name: &str) -> Option<Value> {
    let pods = kubelet.pods().ok()?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == format!("{name}-testnode"))
        .cloned()
}

/// Waits (up to [`WAIT`]) until the kubelet's pod `name` satisfies `pred` and returns it;
/// panics naming `what` with the kubelet's log.
pub fn wait_kubelet_pod(
    kubelet: &xtask::peer::Kubelet,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(p) = kubelet_pod(kubelet, name).filter(&pred) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the kubelet's {name}: timed out waiting for {what}\nkubelet log:\n{}",
            kubelet.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`crictl`] with `-o json` output, parsed.
#[must_use]
pub fn crictl_json(ctd: &PrivateContainerd, args: &[&str]) -> Value {
    let text = crictl(ctd, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {text}"))
}

#[must_use]
pub fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// The status of container `name` (app containers), or `Null`.
#[must_use]
pub fn container_status<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The runtime's id of container `name` (its `containerID` without the `<runtime>://`
/// prefix), once the status has one.
#[must_use]
pub fn container_id(p: &Value, name: &str) -> Option<String> {
    container_status(p, name)["containerID"]
        .as_str()
        .and_then(|id| id.split_once("://"))
        .map(|(_, id)| id.to_owned())
}

#[must_use]
pub fn running(p: &Value, name: &str) -> bool {
    !container_status(p, name)["state"]["running"].is_null()
}

/// The waiting reason of container `name`, if it waits.
#[must_use]
pub fn waiting_reason<'a>(p: &'a Value, name: &str) -> Option<&'a str> {
    container_status(p, name)["state"]["waiting"]["reason"].as_str()
}

#[must_use]
pub fn restarts(p: &Value, name: &str) -> u64 {
    container_status(p, name)["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

#[must_use]
pub fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap_or_default().to_owned()
}

/// A pod named `name`, `restartPolicy: Never`, whose one container `hog` reads 64 MiB into a
/// buffer under a 32Mi memory limit: the kernel OOM-kills it at once.
#[must_use]
pub fn oom_pod(name: &str) -> String {
    pod_yaml(
        name,
        "Never",
        &format!(
            "  containers:
  - name: hog
    image: {IMAGE}
    command: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]
    resources:
      limits: {{memory: 32Mi}}
"
        ),
    )
}

/// A pod whose one container `c` sleeps for an hour, `restartPolicy: Always`.
#[must_use]
pub fn sleeping_pod(name: &str) -> String {
    pod_yaml(
        name,
        "Always",
        &format!("  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sleep, '3600']\n"),
    )
}

/// A host-network pod named `name` with `restartPolicy: policy` and the spec lines `body`
/// (indented two spaces, under `spec:`).
#[must_use]
pub fn pod_yaml(name: &str, policy: &str, body: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
{body}"
    )
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `200` and the current body,
/// for `--manifest-url` tests. One thread per connection; stops accepting when dropped.
pub struct ServeBody {
    pub port: u16,
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ServeBody {
    /// Starts serving `body` on a free port.
    #[must_use]
    pub fn start(body: &[u8]) -> Self {
        Self::start_on(0, body)
    }

    /// Starts serving `body` on `port` (0: a free one), waiting (up to [`WAIT`]) for a
    /// previous server on it to let go.
    #[must_use]
    pub fn start_on(port: u16, body: &[u8]) -> Self {
        use std::sync::atomic::Ordering;
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().expect("bound address").port();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(body.to_vec()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (body, stopped) = (std::sync::Arc::clone(&shared), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let body = body.lock().expect("body lock").clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
                    // The request head, up to its blank line (bounded).
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while head.len() < 16 * 1024 && !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    // The client may hang up early (a body over its limit): ignored.
                    let _ = conn.write_all(answer.as_bytes());
                    let _ = conn.write_all(&body);
                });
            }
        });
        Self {
            port,
            body: shared,
            stop,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `body` from now on.
    pub fn set(&self, body: &[u8]) {
        *self.body.lock().expect("body lock") = body.to_vec();
    }
}

impl Drop for ServeBody {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
