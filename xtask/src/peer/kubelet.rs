//! The upstream kubelet in standalone mode: static pods from a directory, the read-only API
//! on 127.0.0.1, no API server, on a private containerd 2 (`PrivateContainerd` with
//! `Binaries::Containerd2`). With [`KubeletSpec::cluster`] set it joins a control plane
//! instead, as a node: `--kubeconfig`, and its own API authenticated and authorized by the
//! API server.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use xtask::containerd::{Binaries, Options, PrivateContainerd};
//! use xtask::peer::{Kubelet, KubeletSpec};
//! let options = Options { binaries: Binaries::containerd2(), ..Options::default() };
//! let ctd = PrivateContainerd::start_with(std::path::Path::new("/tmp/p/ctd"), &options)?;
//! let kubelet = Kubelet::start(KubeletSpec::new("/tmp/p/kubelet".into(), &ctd, "/tmp/p/manifests".into(), 10255))?;
//! // ... static pods in /tmp/p/manifests, `kubelet.pods()` reads `/pods` ...
//! kubelet.stop()?; // pods keep running, as upstream's kubelet leaves them
//! ctd.stop()?; // removes them
//! # Ok(())
//! # }
//! ```
//!
//! What the kubelet would change on the machine, and how this keeps it away:
//! - **Kernel settings.** At start the kubelet wants `vm.overcommit_memory=1`,
//!   `vm.panic_on_oom=0`, `kernel.panic=10`, `kernel.panic_on_oops=1` and the two
//!   `kernel.keys.root_max*` values, and writes them when they differ (these machines have
//!   `overcommit_memory=0`, `panic=1`, `panic_on_oops=0`). They are not namespaced, and a
//!   shared machine that panics on any oops is not ours to make. So the kubelet runs in a
//!   mount namespace of its own (`unshare --mount`) where each of these files under
//!   `/proc/sys` is covered by a file holding the value it wants, and with
//!   `protectKernelDefaults: true`, so a cover that failed makes it refuse to start rather
//!   than write the real one.
//! - **Fixed paths.** It serves device plugins on `/var/lib/kubelet/device-plugins/kubelet.sock`
//!   and links container logs from `/var/log/containers`, whatever its `--root-dir`. In its
//!   namespace both directories are covered by directories of the work directory; teardown
//!   removes the mount points if this created them.
//! - **Its root directory** is made a shared mount (the kubelet would do it itself), so
//!   volumes it mounts there are seen by containerd; teardown unmounts it.
//! - **iptables**: `makeIPTablesUtilChains: false` (it would add KUBE-FIREWALL rules).
//! - **Its own `oom_score_adj`** (-999) cannot be set here; the kubelet logs that and goes on.
//!
//! Everything else lives in the work directory: the config, `--root-dir`, `--cert-dir`
//! (a self-signed serving certificate), `podLogsDir`, `volumePluginDir`, the log.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::containerd::PrivateContainerd;

/// The kernel settings the kubelet checks at start (`setupKernelTunables` in
/// `pkg/kubelet/cm/container_manager_linux.go`), as (path under `/proc/sys`, wanted value).
pub const KERNEL_TUNABLES: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Paths the kubelet uses whatever its flags say, as (machine path, directory of the work
/// directory that covers it in the kubelet's mount namespace).
const FIXED_DIRS: [(&str, &str); 2] = [
    ("/var/lib/kubelet/device-plugins", "device-plugins"),
    ("/var/log/containers", "container-logs"),
];
/// Directories that creating [`FIXED_DIRS`] may create, children first: teardown removes
/// the ones that did not exist before, when empty.
const CREATED_DIRS: [&str; 3] = [
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
];

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// How to run the kubelet.
#[derive(Clone, Debug)]
pub struct KubeletSpec {
    /// The kubelet binary.
    pub bin: PathBuf,
    /// The config, `--root-dir`, certificates, pod logs and the log live here.
    pub work_dir: PathBuf,
    /// The CRI socket.
    pub runtime_socket: PathBuf,
    /// `cgroupRoot`, an absolute cgroupfs path the caller owns; created in every hierarchy
    /// if missing (the kubelet refuses a root that does not exist).
    pub cgroup_root: String,
    /// `staticPodPath`.
    pub manifests: PathBuf,
    /// `readOnlyPort`, on 127.0.0.1.
    pub read_only_port: u16,
    /// `--hostname-override`: static pods are named `<name>-<node>`.
    pub node_name: String,
    /// Further `KubeletConfiguration` lines, each ending in a newline. They must not repeat
    /// a field [`Self::config_yaml`] sets: the kubelet refuses duplicate fields.
    pub extra_config: String,
    /// Further command-line arguments.
    pub args: Vec<String>,
    /// `None`: standalone (anonymous requests to its API get everything). `Some`: a node of
    /// that control plane.
    pub cluster: Option<ClusterAccess>,
}

/// How the kubelet joins a control plane, as a kubeadm node does: `--kubeconfig` with the
/// node's credentials (e.g. a client certificate `system:node:<name>` in `system:nodes`,
/// which the Node authorizer and NodeRestriction take for that node), and requests to its
/// own API authenticated by client certificate (`x509.clientCAFile`) or by the API server
/// (`authentication.webhook`: TokenReview) and authorized by the API server
/// (`authorization.mode: Webhook`: SubjectAccessReview); no anonymous requests.
#[derive(Clone, Debug)]
pub struct ClusterAccess {
    /// `--kubeconfig`.
    pub kubeconfig: PathBuf,
    /// `authentication.x509.clientCAFile`: the cluster CA.
    pub client_ca_file: PathBuf,
}

impl KubeletSpec {
    /// The kubelet of [`super::bin_dir`] on `ctd`: its socket, and pods under its cgroup
    /// parent; node `testnode`, `--v=2`.
    pub fn new(
        work_dir: PathBuf,
        ctd: &PrivateContainerd,
        manifests: PathBuf,
        read_only_port: u16,
    ) -> Self {
        KubeletSpec {
            bin: super::bin_dir().join("kubelet"),
            work_dir,
            runtime_socket: ctd.socket.clone(),
            cgroup_root: ctd.cgroup_parent.clone(),
            manifests,
            read_only_port,
            node_name: "testnode".to_owned(),
            extra_config: String::new(),
            args: vec!["--v=2".to_owned()],
            cluster: None,
        }
    }

    fn root_dir(&self) -> PathBuf {
        self.work_dir.join("root")
    }

    fn pod_logs_dir(&self) -> PathBuf {
        self.work_dir.join("pod-logs")
    }

    fn shadow_dir(&self) -> PathBuf {
        self.work_dir.join("sysctl")
    }

    /// The `authentication` and `authorization` of the `KubeletConfiguration`.
    fn auth_yaml(&self) -> String {
        match &self.cluster {
            None => "# Standalone: no API server to ask, so anonymous requests get everything.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
"
            .to_owned(),
            Some(cluster) => format!(
                "# A node of a cluster: the API server authenticates and authorizes requests.
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
",
                ca = cluster.client_ca_file.display()
            ),
        }
    }

    /// The `KubeletConfiguration`; `port` is the authenticated API's (on 127.0.0.1 too).
    pub fn config_yaml(&self, port: u16) -> String {
        let w = &self.work_dir;
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
containerRuntimeEndpoint: unix://{socket}
address: 127.0.0.1
port: {port}
readOnlyPort: {read_only_port}
healthzPort: 0
{auth}# PID 1 is not systemd; the hierarchy is hybrid (cgroup v1 controllers), which v1.34
# accepts with failCgroupV1 false.
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# The kernel settings it wants are shown to it in its own mount namespace (see
# xtask/src/peer/kubelet.rs); it must never write the machine's.
protectKernelDefaults: true
makeIPTablesUtilChains: false
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
# As bpflet's test node: the shared disk's free share varies, so no disk thresholds.
evictionHard:
  memory.available: 100Mi
# Image GC would start at 85 % disk use (the shared disk is near that) and delete the
# offline images, which cannot be pulled again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
{extra}",
            manifests = self.manifests.display(),
            socket = self.runtime_socket.display(),
            read_only_port = self.read_only_port,
            cgroup_root = self.cgroup_root,
            pod_logs = self.pod_logs_dir().display(),
            volume_plugins = w.join("volume-plugins").display(),
            extra = self.extra_config,
            auth = self.auth_yaml(),
        )
    }

    /// The shell script that runs in the kubelet's new mount namespace before it execs the
    /// kubelet (its arguments).
    fn namespace_script(&self) -> String {
        let mut script = String::from("set -eu\nmount --make-rprivate /proc\n");
        for (path, _) in KERNEL_TUNABLES {
            script.push_str(&format!(
                "mount --bind {} {}\n",
                shell_quote(&self.shadow_dir().join(shadow_name(path))),
                shell_quote(&Path::new("/proc/sys").join(path)),
            ));
        }
        for (fixed, own) in FIXED_DIRS {
            script.push_str(&format!(
                "mount --bind {} {}\n",
                shell_quote(&self.work_dir.join(own)),
                shell_quote(Path::new(fixed)),
            ));
        }
        script.push_str("exec \"$@\"\n");
        script
    }

    /// The whole command line: `unshare` running the script, then the kubelet.
    fn command(&self) -> Command {
        let mut cmd = Command::new("unshare");
        // `unchanged`: the shared mount of the root directory stays shared with the
        // machine's namespace; everything else here is private already.
        cmd.args([
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(self.namespace_script())
        .arg("kubelet-namespace")
        .arg(&self.bin)
        .arg("--config")
        .arg(self.work_dir.join("config.yaml"))
        .arg("--root-dir")
        .arg(self.root_dir())
        .arg("--cert-dir")
        .arg(self.work_dir.join("pki"))
        .arg("--hostname-override")
        .arg(&self.node_name);
        if let Some(cluster) = &self.cluster {
            cmd.arg("--kubeconfig").arg(&cluster.kubeconfig);
        }
        cmd.args(&self.args);
        cmd
    }
}

/// `vm/overcommit_memory` -> `vm.overcommit_memory`.
fn shadow_name(path: &str) -> String {
    path.replace('/', ".")
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A running kubelet. Stopped by [`Self::stop`] or on drop; its pods stay (upstream's
/// kubelet leaves them running), the private containerd's teardown removes them.
#[derive(Debug)]
pub struct Kubelet {
    spec: KubeletSpec,
    child: Option<Child>,
    log: PathBuf,
    /// Which of [`CREATED_DIRS`] did not exist before.
    created: Vec<PathBuf>,
    root_mounted: bool,
    torn_down: bool,
}

impl Kubelet {
    /// Prepares the work directory and the cgroup root, starts the kubelet and waits until
    /// its read-only API answers `/pods`.
    ///
    /// # Errors
    /// A step of the preparation fails, the kubelet exits, or it does not serve `/pods`
    /// within two minutes (each with the tail of its log).
    pub fn start(spec: KubeletSpec) -> Result<Self> {
        if !spec.bin.is_file() {
            bail!(
                "{} is missing; build it with `cargo xtask build-peer`",
                spec.bin.display()
            );
        }
        let w = &spec.work_dir;
        for dir in [
            w.clone(),
            spec.root_dir(),
            w.join("pki"),
            spec.pod_logs_dir(),
            w.join("volume-plugins"),
            spec.shadow_dir(),
            spec.manifests.clone(),
        ]
        .into_iter()
        .chain(FIXED_DIRS.iter().map(|(_, own)| w.join(own)))
        {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for (path, value) in KERNEL_TUNABLES {
            let file = spec.shadow_dir().join(shadow_name(path));
            fs::write(&file, format!("{value}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        let port = crate::agent::free_port()?;
        let config = w.join("config.yaml");
        fs::write(&config, spec.config_yaml(port))
            .with_context(|| format!("writing {}", config.display()))?;
        ensure_cgroup_root(&spec.cgroup_root)?;

        let log = w.join("kubelet.log");
        let mut kubelet = Kubelet {
            created: CREATED_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|d| !d.exists())
                .collect(),
            spec,
            child: None,
            log,
            root_mounted: false,
            torn_down: false,
        };
        for (fixed, _) in FIXED_DIRS {
            fs::create_dir_all(fixed).with_context(|| format!("creating {fixed}"))?;
        }
        kubelet.share_root_dir()?;
        kubelet.spawn()?;
        kubelet.wait_ready()?;
        Ok(kubelet)
    }

    /// Its pid (that of `unshare`, which execs the kubelet), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The read-only port.
    pub fn read_only_port(&self) -> u16 {
        self.spec.read_only_port
    }

    /// `GET /pods` on the read-only port: the `PodList`.
    ///
    /// # Errors
    /// Nothing answers, the status is not 200, or the body is not JSON.
    pub fn pods(&self) -> Result<serde_json::Value> {
        let port = self.spec.read_only_port;
        let (code, body) = crate::agent::http_get(port, "/pods")
            .ok_or_else(|| anyhow!("the kubelet's read-only port {port} does not answer"))?;
        if code != 200 {
            bail!("GET /pods on 127.0.0.1:{port}: status {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET /pods on 127.0.0.1:{port}"))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::agent::tail(&fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops it (SIGTERM, SIGKILL after 10 s) and undoes what [`Self::start`] did outside
    /// the work directory. Returns every problem met; teardown goes on past each one.
    ///
    /// # Errors
    /// A mount could not be removed, or a directory it created could not be.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    /// Binds the root directory onto itself and makes it shared.
    fn share_root_dir(&mut self) -> Result<()> {
        let root = self.spec.root_dir();
        mount(
            Some(&root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {} onto itself", root.display()))?;
        self.root_mounted = true;
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("making {} a shared mount", root.display()))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = self.spec.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            // Out of the terminal's process group: a Ctrl-C reaches the harness only.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and makes one
        // async-signal-safe system call (prctl), touching no memory of the parent. The
        // signal survives both execs (unshare, then sh, then the kubelet: one pid).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
            });
        }
        let line = crate::describe(&cmd);
        self.child = Some(cmd.spawn().with_context(|| format!("starting `{line}`"))?);
        Ok(())
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("checking on the kubelet"),
            None => Ok(None),
        }
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited()? {
                self.child = None;
                bail!(
                    "the kubelet exited ({status}) before serving /pods; last lines of {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            if crate::agent::serves_pods(self.spec.read_only_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the kubelet did not serve /pods on 127.0.0.1:{} within {READY_TIMEOUT:?}; \
                     last lines of {}:\n{}",
                    self.spec.read_only_port,
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(POLL);
        }
    }

    fn stop_process(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child
            .try_wait()
            .context("checking on the kubelet")?
            .is_some()
        {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .context("waiting for the kubelet")?
                .is_some()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("kubelet {pid} ignored SIGTERM for {STOP_GRACE:?}; killing it");
        let _ = child.kill();
        child
            .wait()
            .context("waiting for the kubelet after SIGKILL")?;
        Ok(())
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = vec![];
        if let Err(e) = self.stop_process() {
            problems.push(format!("stopping the kubelet: {e:#}"));
        }
        if self.root_mounted {
            // Its own bind mount and whatever the kubelet mounted below it (volumes).
            let root = self.spec.root_dir();
            if let Err(e) = crate::containerd::unmount_under(&root) {
                problems.push(format!("unmounting below {}: {e:#}", root.display()));
            }
            if let Err(e) = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH) {
                problems.push(format!("unmounting {}: {e}", root.display()));
            }
        }
        for dir in &self.created {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Another kubelet on the machine uses it now (this one covers it in its own
                // mount namespace, so the entries are not ours): leave it to that one.
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                Err(e) => problems.push(format!("removing {}: {e}", dir.display())),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down the kubelet under {} left problems:\n  {}",
                self.spec.work_dir.display(),
                problems.join("\n  ")
            ))
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// Creates the cgroup `path` in every mounted hierarchy where it is missing; on cgroup v1's
/// cpuset, gives it its parent's CPUs and memory nodes (a new cpuset cgroup has none).
fn ensure_cgroup_root(path: &str) -> Result<()> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        bail!("cgroup root {path:?} must be below the root");
    }
    let text = fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for m in crate::mountinfo::parse(&text)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
    {
        let mut dir = m.mount_point.clone();
        for part in Path::new(relative).components() {
            let parent = dir.clone();
            dir.push(part);
            if dir.is_dir() {
                continue;
            }
            fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = dir.join(file);
                if m.fstype == "cgroup" && own.exists() {
                    let value = fs::read_to_string(parent.join(file))
                        .with_context(|| format!("reading {}", parent.join(file).display()))?;
                    fs::write(&own, value.trim())
                        .with_context(|| format!("writing {}", own.display()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KubeletSpec {
        KubeletSpec {
            bin: "/b/kubelet".into(),
            work_dir: "/w".into(),
            runtime_socket: "/c/containerd.sock".into(),
            cgroup_root: "/bpflet-ctd-x".to_owned(),
            manifests: "/m".into(),
            read_only_port: 10255,
            node_name: "testnode".to_owned(),
            extra_config: "fileCheckFrequency: 2s\n".to_owned(),
            args: vec!["--v=2".to_owned()],
            cluster: None,
        }
    }

    fn cluster_spec() -> KubeletSpec {
        KubeletSpec {
            cluster: Some(ClusterAccess {
                kubeconfig: "/cp/node.kubeconfig".into(),
                client_ca_file: "/cp/pki/ca.crt".into(),
            }),
            ..spec()
        }
    }

    #[test]
    fn a_cluster_node_lets_the_api_server_authenticate_and_authorize() {
        let text = cluster_spec().config_yaml(4321);
        let auth = "authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /cp/pki/ca.crt
authorization:
  mode: Webhook
";
        assert!(text.contains(auth), "{text}");
        assert_eq!(text.matches("authentication:").count(), 1, "{text}");
        assert!(!text.contains("AlwaysAllow"), "{text}");
        // The rest is the standalone config.
        assert!(text.lines().any(|l| l == "readOnlyPort: 10255"), "{text}");
        assert!(
            text.lines().any(|l| l == "fileCheckFrequency: 2s"),
            "{text}"
        );
    }

    #[test]
    fn a_cluster_node_gets_its_kubeconfig_before_the_extra_args() {
        let cmd = cluster_spec().command();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--kubeconfig").unwrap();
        assert_eq!(args[at..], ["--kubeconfig", "/cp/node.kubeconfig", "--v=2"]);
    }

    #[test]
    fn config_is_standalone_on_127_0_0_1_and_keeps_off_the_machine() {
        let text = spec().config_yaml(4321);
        for line in [
            "staticPodPath: /m",
            "containerRuntimeEndpoint: unix:///c/containerd.sock",
            "address: 127.0.0.1",
            "port: 4321",
            "readOnlyPort: 10255",
            "cgroupDriver: cgroupfs",
            "cgroupRoot: /bpflet-ctd-x",
            "failSwapOn: false",
            "failCgroupV1: false",
            "protectKernelDefaults: true",
            "makeIPTablesUtilChains: false",
            "podLogsDir: /w/pod-logs",
            "volumePluginDir: /w/volume-plugins",
            "  mode: AlwaysAllow",
            "    enabled: true",
            "fileCheckFrequency: 2s",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("kubeconfig"));
    }

    #[test]
    fn namespace_script_covers_every_tunable_and_fixed_dir_then_execs() {
        let script = spec().namespace_script();
        assert!(script.starts_with("set -eu\nmount --make-rprivate /proc\n"));
        assert!(script.contains(
            "mount --bind '/w/sysctl/kernel.panic_on_oops' '/proc/sys/kernel/panic_on_oops'\n"
        ));
        assert!(
            script.contains("mount --bind '/w/device-plugins' '/var/lib/kubelet/device-plugins'\n")
        );
        assert!(script.contains("mount --bind '/w/container-logs' '/var/log/containers'\n"));
        assert_eq!(script.matches("mount --bind").count(), 8);
        assert!(script.ends_with("exec \"$@\"\n"));
    }

    #[test]
    fn command_runs_the_kubelet_through_unshare_with_its_directories() {
        let cmd = spec().command();
        assert_eq!(cmd.get_program(), "unshare");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let kubelet = args.iter().position(|a| a == "/b/kubelet").unwrap();
        assert_eq!(
            &args[kubelet..],
            [
                "/b/kubelet",
                "--config",
                "/w/config.yaml",
                "--root-dir",
                "/w/root",
                "--cert-dir",
                "/w/pki",
                "--hostname-override",
                "testnode",
                "--v=2"
            ]
        );
        assert_eq!(args[..4], ["--mount", "--propagation", "unchanged", "--"]);
    }

    #[test]
    fn teardown_removes_the_fixed_dirs_it_created_unless_another_kubelet_fills_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (empty, used) = (tmp.path().join("empty"), tmp.path().join("used"));
        fs::create_dir(&empty).unwrap();
        fs::create_dir(&used).unwrap();
        fs::write(used.join("other-kubelets.log"), "").unwrap();
        let mut kubelet = Kubelet {
            spec: spec(),
            child: None,
            log: tmp.path().join("kubelet.log"),
            created: vec![empty.clone(), used.clone()],
            root_mounted: false,
            torn_down: false,
        };
        kubelet.teardown().unwrap();
        assert!(!empty.exists());
        assert!(used.join("other-kubelets.log").exists());
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
