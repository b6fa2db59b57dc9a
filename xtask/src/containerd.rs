//! A private containerd: its own config, root, state, socket, CNI network and offline
//! images under one work directory, beside anything else on the machine.
//!
//! Used by the root integration tests (`tests/`) and by `cargo xtask up`:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let ctd = xtask::containerd::PrivateContainerd::start(std::path::Path::new("/tmp/ctd"))?;
//! // Talk CRI to `ctd.socket`; give sandboxes a cgroup parent below `ctd.cgroup_parent`.
//! ctd.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! Teardown ([`PrivateContainerd::stop`], or drop) leaves nothing behind: it stops and
//! removes every pod sandbox through the CRI (so CNI releases addresses and interfaces),
//! kills any task left over, stops containerd (SIGTERM, then SIGKILL), kills stray shims,
//! unmounts everything under the work directory, removes the cgroup tree under
//! [`PrivateContainerd::cgroup_parent`], the CNI bridge once it has no ports, and
//! directories it made outside the work directory. Images and snapshots stay in the work
//! directory's `root/`, so the next start on the same directory is fast.
//!
//! containerd runs in its own process group: a Ctrl-C at the terminal reaches only the
//! caller, which must catch it and call [`PrivateContainerd::stop`]. If the caller dies
//! anyway, the next [`PrivateContainerd::start`] on the same work directory finds the old
//! containerd through its pid file, stops it and removes the pods it left.
//!
//! This module must build on a fresh machine before `protoc` is installed, so it speaks
//! the few CRI calls it needs through hand-written prost messages rather than the
//! generated `k8s-cri` crate the agent uses.

use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::Digest as _;

use crate::images::{self, ImageArchive, PAUSE_IMAGE};

/// Where Debian's containernetworking-plugins live.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pod network (see `shared/ENVIRONMENT.md`).
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// The Linux bridge the CNI bridge plugin creates for pods.
pub const DEFAULT_BRIDGE: &str = "bpflet0";
/// The CRI namespace in containerd.
const K8S_NAMESPACE: &str = "k8s.io";
/// containerd 1.6 puts shim sockets here whatever its state directory is.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Directories outside the work directory that containerd, its shims or CNI may create.
/// Teardown removes the ones that did not exist before, when they are empty.
const GLOBAL_DIRS: [&str; 4] = [
    "/run/containerd/s",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
];

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const CRI_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Tunables; [`Options::default`] suits tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// The CNI bridge's name (at most 15 bytes).
    pub bridge: String,
    /// The pod subnet handed out by host-local IPAM.
    pub subnet: String,
    /// Absolute cgroup path (cgroupfs driver) under which callers put pod sandboxes;
    /// removed on teardown. Default: `/bpflet-ctd-<hash of the work directory>`, so a
    /// later start on the same directory finds what a crashed run left there.
    pub cgroup_parent: Option<String>,
    /// Which containerd runs (default: Debian's 1.6).
    pub binaries: Binaries,
    /// Puts containerd's root (images, snapshots) on a tmpfs of this many bytes, a small
    /// image filesystem of the caller's own; unmounted, and so emptied, on teardown.
    /// `None` (default): the root is a directory of the work directory, kept across runs.
    pub root_tmpfs_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bridge: DEFAULT_BRIDGE.to_owned(),
            subnet: DEFAULT_SUBNET.to_owned(),
            cgroup_parent: None,
            binaries: Binaries::Debian,
            root_tmpfs_bytes: None,
        }
    }
}

/// Which containerd, shim, `ctr` and runc run, and so which config format they read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Binaries {
    /// Debian's containerd 1.6 and runc 1.1, found on `PATH` (config version 2).
    #[default]
    Debian,
    /// containerd 2.x with its shim and `ctr`, and runc, all in one directory: what
    /// `xtask::peer::build` puts in `xtask::peer::bin_dir()` (config version 3).
    Containerd2(PathBuf),
}

impl Binaries {
    /// containerd 2 from [`crate::peer::bin_dir`].
    pub fn containerd2() -> Self {
        Binaries::Containerd2(crate::peer::bin_dir())
    }

    /// The path of one of the tools (`containerd`, `ctr`, `runc`, `containerd-shim-runc-v2`).
    pub fn tool(&self, name: &str) -> Result<PathBuf> {
        match self {
            Binaries::Debian => find_in_path(name)
                .with_context(|| format!("`{name}` is not installed; run `cargo xtask setup`")),
            Binaries::Containerd2(dir) => {
                let path = dir.join(name);
                if path.is_file() {
                    Ok(path)
                } else {
                    bail!(
                        "{} is missing; build containerd 2 with `cargo xtask build-peer`",
                        path.display()
                    )
                }
            }
        }
    }

    /// `PATH` for containerd: containerd finds its shim on `PATH`, so the built directory
    /// comes first (Debian's shim would otherwise serve containerd 2).
    fn search_path(&self) -> std::ffi::OsString {
        let inherited =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        match self {
            Binaries::Debian => inherited,
            Binaries::Containerd2(dir) => {
                let dirs = std::iter::once(dir.clone()).chain(std::env::split_paths(&inherited));
                std::env::join_paths(dirs).unwrap_or(inherited)
            }
        }
    }
}

/// A running private containerd. Stopped and cleaned up by [`Self::stop`] or on drop.
#[derive(Debug)]
pub struct PrivateContainerd {
    /// The CRI (and containerd API) socket.
    pub socket: PathBuf,
    /// containerd's `root` (images, snapshots, metadata); kept across runs.
    pub root_dir: PathBuf,
    /// containerd's `state` (sockets, shim bundles, mounts); emptied on teardown.
    pub state_dir: PathBuf,
    /// Everything lives under here.
    pub work_dir: PathBuf,
    pub config_path: PathBuf,
    /// containerd's own log (stdout and stderr, appended across restarts).
    pub log_path: PathBuf,
    /// A directory for pod sandboxes' `log_directory`.
    pub pod_log_dir: PathBuf,
    /// containerd's registry `config_path`: a test trusts a registry by writing
    /// `<dir>/<host:port>/hosts.toml` (read at each pull, no restart needed).
    pub registry_config_dir: PathBuf,
    /// Absolute cgroup path to put pod sandboxes under (`cgroup_parent` of
    /// `LinuxPodSandboxConfig`, e.g. `<cgroup_parent>/pod<uid>`).
    pub cgroup_parent: String,
    /// The offline images, imported into the `k8s.io` namespace.
    pub images: ImageArchive,
    /// The containerd that runs.
    pub binaries: Binaries,
    bridge: String,
    child: Option<Child>,
    /// What teardown must remove beyond the work directory, also for earlier runs on
    /// the same work directory that never tore down.
    cleanup: Cleanup,
    torn_down: bool,
}

impl PrivateContainerd {
    /// Starts containerd under `work_dir` (created if missing) with default [`Options`].
    pub fn start(work_dir: &Path) -> Result<Self> {
        Self::start_with(work_dir, &Options::default())
    }

    /// Starts containerd under `work_dir`, waits until its CRI answers with runtime and
    /// network ready, and imports the offline images unless they are there already.
    pub fn start_with(work_dir: &Path, options: &Options) -> Result<Self> {
        check_tools(&options.binaries)?;
        fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
        let work_dir = work_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", work_dir.display()))?;
        let cgroup_parent = options.cgroup_parent.clone().unwrap_or_else(|| {
            let digest = sha2::Sha256::digest(work_dir.to_string_lossy().as_bytes());
            format!("/bpflet-ctd-{}", &hex::encode(digest)[..12])
        });
        if !cgroup_parent.starts_with('/') || cgroup_parent.len() < 2 {
            bail!("cgroup parent {cgroup_parent:?} must be an absolute path below the root");
        }

        let socket = work_dir.join("containerd.sock.ttrpc");
        // sun_path holds 108 bytes including the NUL; the ttrpc socket is the longest.
        if socket.as_os_str().len() >= 108 {
            bail!(
                "the work directory {} is too deep for a unix socket path ({} bytes)",
                work_dir.display(),
                socket.as_os_str().len()
            );
        }

        let mut ctd = PrivateContainerd {
            socket: work_dir.join("containerd.sock"),
            root_dir: work_dir.join("root"),
            state_dir: work_dir.join("state"),
            config_path: work_dir.join("config.toml"),
            log_path: work_dir.join("containerd.log"),
            pod_log_dir: work_dir.join("pods"),
            registry_config_dir: work_dir.join("certs.d"),
            cgroup_parent,
            images: images::build(&work_dir.join("images"))?,
            binaries: options.binaries.clone(),
            bridge: options.bridge.clone(),
            child: None,
            cleanup: Cleanup::default(),
            torn_down: false,
            work_dir,
        };
        ctd.stop_stale_daemon()?;
        ctd.record_cleanup()?;
        for dir in [
            &ctd.root_dir,
            &ctd.state_dir,
            &ctd.pod_log_dir,
            &ctd.registry_config_dir,
        ] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Some(bytes) = options.root_tmpfs_bytes {
            ctd.mount_root_tmpfs(bytes)?;
        }
        ctd.write_config(options)?;
        // From here on, drop cleans up whatever got started.
        ctd.start_daemon()?;
        ctd.import_images()?;
        let left = block_on(|| remove_all_pods(&ctd.socket))?;
        if left > 0 {
            eprintln!("private containerd: removed {left} pod sandbox(es) left by an earlier run");
        }
        Ok(ctd)
    }

    /// Mounts a tmpfs of `bytes` on the root directory, unless one is there already (an
    /// earlier run that never tore down).
    fn mount_root_tmpfs(&self, bytes: u64) -> Result<()> {
        if mountinfo()?.iter().any(|m| m.mount_point == self.root_dir) {
            return Ok(());
        }
        nix::mount::mount(
            Some("tmpfs"),
            &self.root_dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={bytes},mode=0711").as_str()),
        )
        .with_context(|| {
            format!(
                "mounting a tmpfs of {bytes} bytes on {}",
                self.root_dir.display()
            )
        })
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Stops the containerd process only (SIGTERM, then SIGKILL after 10 s). Pods keep
    /// running in their shims; [`Self::start_daemon`] brings containerd back to them.
    pub fn stop_daemon(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        match kill(pid, Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("sending SIGTERM to containerd {pid}"));
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child
                .try_wait()
                .context("waiting for containerd")?
                .is_some()
            {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "private containerd: {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
                );
                let _ = child.kill();
                child
                    .wait()
                    .context("waiting for containerd after SIGKILL")?;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    /// Starts containerd with the written config and waits until its CRI is ready.
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("containerd is already running (pid {:?})", self.pid());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut cmd = Command::new(self.binaries.tool("containerd")?);
        cmd.env("PATH", self.binaries.search_path())
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            // Out of the terminal's process group: Ctrl-C must reach only our caller,
            // who then tears down in order.
            .process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting `containerd --config {}`",
                self.config_path.display()
            )
        })?;
        fs::write(self.pid_file(), child.id().to_string())
            .with_context(|| format!("writing {}", self.pid_file().display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops and starts the containerd process; pods survive.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon()?;
        self.start_daemon()
    }

    /// Tears everything down (see the module docs). Returns every problem met; teardown
    /// goes on past each one.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn pid_file(&self) -> PathBuf {
        self.work_dir.join("containerd.pid")
    }

    fn ttrpc_socket(&self) -> PathBuf {
        self.work_dir.join("containerd.sock.ttrpc")
    }

    fn cleanup_file(&self) -> PathBuf {
        self.work_dir.join("cleanup.json")
    }

    /// Notes, before anything is created, what teardown will have to remove outside the
    /// work directory, merged with what an earlier run that never tore down noted.
    fn record_cleanup(&mut self) -> Result<()> {
        let path = self.cleanup_file();
        if let Ok(text) = fs::read_to_string(&path) {
            self.cleanup = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
        }
        self.cleanup
            .cgroup_parents
            .insert(self.cgroup_parent.clone());
        self.cleanup.created_dirs.extend(
            GLOBAL_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|d| !d.exists()),
        );
        fs::write(&path, serde_json::to_vec_pretty(&self.cleanup)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Waits until the CRI answers `Status` with runtime and network ready.
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut last_problem = String::from("no answer yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking on containerd")?
            {
                self.child = None;
                bail!(
                    "containerd exited during startup ({status}); last lines of {}:\n{}",
                    self.log_path.display(),
                    self.log_tail(30)
                );
            }
            if self.socket.exists() {
                match block_on(|| cri_conditions(&self.socket)) {
                    Ok(conditions) => {
                        let not_ready: Vec<_> = conditions.iter().filter(|c| !c.status).collect();
                        let ready =
                            |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
                        if ready("RuntimeReady") && ready("NetworkReady") {
                            return Ok(());
                        }
                        last_problem = format!("conditions not ready: {not_ready:?}");
                    }
                    Err(e) => last_problem = format!("{e:#}"),
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "containerd's CRI at {} was not ready within {READY_TIMEOUT:?} ({last_problem}); \
                     last lines of {}:\n{}",
                    self.socket.display(),
                    self.log_path.display(),
                    self.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Imports the offline images unless the CRI already has them with the same ids, then
    /// waits for the CRI to see them.
    fn import_images(&self) -> Result<()> {
        let want: Vec<(String, String)> = self
            .images
            .images
            .iter()
            .map(|i| (i.name.clone(), i.id.clone()))
            .collect();
        let have = |socket: &Path| -> Result<bool> {
            let ids =
                block_on(|| cri_image_ids(socket, want.iter().map(|(n, _)| n.clone()).collect()))?;
            Ok(ids
                .iter()
                .zip(&want)
                .all(|(id, (_, want_id))| id.as_deref() == Some(want_id)))
        };
        if have(&self.socket)? {
            return Ok(());
        }
        self.ctr(&[
            "-n",
            K8S_NAMESPACE,
            "images",
            "import",
            "--all-platforms",
            &self.images.path.to_string_lossy(),
        ])?;
        // The CRI learns about imported images from containerd's events.
        let started = Instant::now();
        while !have(&self.socket)? {
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the CRI does not list the imported images {want:?} after {READY_TIMEOUT:?}; \
                     last lines of {}:\n{}",
                    self.log_path.display(),
                    self.log_tail(20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Runs `ctr --address <socket> <args>`; returns its stdout.
    fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(self.binaries.tool("ctr")?);
        cmd.arg("--address").arg(&self.socket).args(args);
        crate::command_output(&mut cmd)
    }

    fn write_config(&self, options: &Options) -> Result<()> {
        let cni_conf_dir = self.work_dir.join("cni").join("net.d");
        fs::create_dir_all(&cni_conf_dir)
            .with_context(|| format!("creating {}", cni_conf_dir.display()))?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bpflet",
            "plugins": [{
                "type": "bridge",
                "bridge": options.bridge,
                // No gateway, no masquerading: pods get an address and nothing on the host
                // changes beyond the bridge (no ip_forward, no iptables rules). Tests send
                // no traffic to pod addresses.
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": options.subnet }]],
                    "dataDir": self.work_dir.join("cni").join("ipam"),
                },
            }],
        });
        let conflist_path = cni_conf_dir.join("10-bpflet.conflist");
        fs::write(&conflist_path, serde_json::to_vec_pretty(&conflist)?)
            .with_context(|| format!("writing {}", conflist_path.display()))?;

        let runc_root = self.state_dir.join("runc");
        let opt = self.work_dir.join("opt");
        let ttrpc = self.ttrpc_socket();
        let runc = self.binaries.tool("runc")?;
        let inputs = ConfigInputs {
            root: &self.root_dir,
            state: &self.state_dir,
            socket: &self.socket,
            ttrpc: &ttrpc,
            opt: &opt,
            runc: &runc,
            runc_root: &runc_root,
            cni_conf: &cni_conf_dir,
            certs_d: &self.registry_config_dir,
        };
        let config = match self.binaries {
            Binaries::Debian => config_v2(&inputs),
            Binaries::Containerd2(_) => config_v3(&inputs),
        };
        fs::write(&self.config_path, config)
            .with_context(|| format!("writing {}", self.config_path.display()))
    }

    /// Stops a containerd an earlier run left on this work directory (pid file, and the
    /// process's command line names our config), so the new one can take over its state.
    fn stop_stale_daemon(&self) -> Result<()> {
        let Ok(text) = fs::read_to_string(self.pid_file()) else {
            return Ok(());
        };
        let Ok(raw) = text.trim().parse::<i32>() else {
            return Ok(());
        };
        let cmdline = fs::read(format!("/proc/{raw}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.config_path.to_string_lossy());
        if ours {
            eprintln!("private containerd: stopping containerd {raw} left by an earlier run");
            let pid = Pid::from_raw(raw);
            let _ = kill(pid, Signal::SIGTERM);
            if !wait_gone(raw, STOP_TIMEOUT) {
                let _ = kill(pid, Signal::SIGKILL);
                wait_gone(raw, STOP_TIMEOUT);
            }
        }
        let _ = fs::remove_file(self.pid_file());
        Ok(())
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems: Vec<String> = vec![];
        let mut note = |what: &str, r: Result<()>| {
            if let Err(e) = r {
                problems.push(format!("{what}: {e:#}"));
            }
        };

        if self.child.is_none() && self.our_shims().is_ok_and(|s| !s.is_empty()) {
            // Pods outlived a stopped containerd: bring it back so the CRI removes them
            // properly (CNI releases their addresses) instead of only killing them.
            note(
                "restarting containerd to remove its pods",
                self.start_daemon(),
            );
        }
        if self.child.is_some() {
            note(
                "removing pod sandboxes through the CRI",
                block_on(|| remove_all_pods(&self.socket)).map(drop),
            );
            note("removing leftover tasks", self.remove_leftover_tasks());
        }
        note("stopping containerd", self.stop_daemon());
        for socket in [self.socket.clone(), self.ttrpc_socket()] {
            let _ = fs::remove_file(socket);
        }
        note("killing stray shims", self.kill_stray_shims());
        for parent in &self.cleanup.cgroup_parents {
            note(
                &format!("removing the cgroup tree {parent}"),
                remove_cgroup_tree(parent),
            );
        }
        note("unmounting", unmount_under(&self.work_dir));
        note("removing the CNI bridge", remove_idle_bridge(&self.bridge));
        if mounts_under(&self.work_dir).is_ok_and(|m| m.is_empty()) && self.state_dir.exists() {
            note(
                "removing the state directory",
                fs::remove_dir_all(&self.state_dir)
                    .with_context(|| format!("removing {}", self.state_dir.display())),
            );
        }
        // In GLOBAL_DIRS order, children first. Only succeeds when empty, which is the point.
        for dir in GLOBAL_DIRS.iter().map(Path::new) {
            if self.cleanup.created_dirs.contains(dir) {
                let _ = fs::remove_dir(dir);
            }
        }

        if problems.is_empty() {
            let _ = fs::remove_file(self.cleanup_file());
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down the private containerd under {} left problems:\n  {}",
                self.work_dir.display(),
                problems.join("\n  ")
            ))
        }
    }

    /// Kills and deletes any task the CRI did not clean up (in every namespace).
    fn remove_leftover_tasks(&self) -> Result<()> {
        let namespaces = self.ctr(&["namespaces", "ls", "-q"])?;
        for ns in namespaces.lines().map(str::trim).filter(|s| !s.is_empty()) {
            let tasks = self.ctr(&["-n", ns, "tasks", "ls", "-q"])?;
            for task in tasks.lines().map(str::trim).filter(|s| !s.is_empty()) {
                eprintln!("private containerd: killing leftover task {ns}/{task}");
                match self.ctr(&["-n", ns, "tasks", "delete", "--force", task]) {
                    // It ended between the listing and the delete: nothing left to do.
                    Err(e) if format!("{e:#}").contains("not found") => {}
                    other => {
                        other?;
                    }
                }
            }
            let containers = self.ctr(&["-n", ns, "containers", "ls", "-q"])?;
            for container in containers.lines().map(str::trim).filter(|s| !s.is_empty()) {
                self.ctr(&["-n", ns, "containers", "delete", container])?;
            }
        }
        Ok(())
    }

    /// Shim processes serving this containerd (their command line names our socket).
    fn our_shims(&self) -> Result<Vec<(i32, Vec<String>)>> {
        let socket = self.socket.to_string_lossy();
        Ok(processes()?
            .into_iter()
            .filter(|(_, args)| {
                args.first().is_some_and(|a| a.contains("containerd-shim"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == socket)
            })
            .collect())
    }

    /// Kills shims still serving this containerd (their command line names our socket)
    /// and removes their sockets from [`SHIM_SOCKET_DIR`].
    fn kill_stray_shims(&self) -> Result<()> {
        let socket = self.socket.to_string_lossy().into_owned();
        for (pid, args) in self.our_shims()? {
            eprintln!(
                "private containerd: killing stray shim {pid}: {}",
                args.join(" ")
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, STOP_TIMEOUT);
            let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
            if let (Some(ns), Some(id)) = (flag("-namespace"), flag("-id")) {
                // containerd 1.6 and 2.x: sha256(<address>/<namespace>/<id>) names the socket.
                let key = Path::new(&socket).join(ns).join(id);
                let digest = sha2::Sha256::digest(key.to_string_lossy().as_bytes());
                let _ = fs::remove_file(Path::new(SHIM_SOCKET_DIR).join(hex::encode(digest)));
            }
        }
        Ok(())
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// What teardown removes outside the work directory; kept in `<work_dir>/cleanup.json`
/// until a teardown succeeds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Cleanup {
    /// Cgroup parents pods were put under.
    cgroup_parents: BTreeSet<String>,
    /// Which of [`GLOBAL_DIRS`] did not exist before the first run.
    created_dirs: BTreeSet<PathBuf>,
}

/// What a containerd config names: paths under the work directory, and runc.
struct ConfigInputs<'a> {
    root: &'a Path,
    state: &'a Path,
    socket: &'a Path,
    ttrpc: &'a Path,
    opt: &'a Path,
    runc: &'a Path,
    runc_root: &'a Path,
    cni_conf: &'a Path,
    certs_d: &'a Path,
}

fn q(p: &Path) -> String {
    toml_string(&p.to_string_lossy())
}

/// containerd 1.6's config (version 2).
fn config_v2(i: &ConfigInputs<'_>) -> String {
    format!(
        r#"# Written by bpflet's xtask (containerd.rs); rewritten on every start.
version = 2
root = {root}
state = {state}
# The restart monitor restarts containers labelled for it (`ctr run --label
# containerd.io/restart.status=running`); CRI containers are restarted by the kubelet, here
# bpflet. It lists every container every 10 s: half of containerd's idle CPU at 110 pods
# once the stats walk below was slowed (perf, docs/BENCHMARKS.md).
disabled_plugins = ["io.containerd.internal.v1.restart"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  # Required on these machines: without it every sandbox fails (oom_score_adj EPERM).
  restrict_oom_score_adj = true
  # Keep network namespaces under our state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The CRI plugin walks every container's writable layer this often to keep disk usage
  # for ContainerStats/ImageFsInfo (default 10 s). bpflet reads no CRI stats: eviction
  # reads cgroups and walks its own pod directories. At 110 idle pods the walk was 64 % of
  # containerd's CPU (perf, docs/BENCHMARKS.md); `crictl stats` disk numbers may lag 5 min.
  stats_collect_period = 300

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1

  # Per-registry settings (CA, mirrors): `<dir>/<host[:port]>/hosts.toml`.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {certs_d}
"#,
        root = q(i.root),
        state = q(i.state),
        socket = q(i.socket),
        ttrpc = q(i.ttrpc),
        opt = q(i.opt),
        pause = toml_string(PAUSE_IMAGE),
        runc = q(i.runc),
        runc_root = q(i.runc_root),
        cni_bin = toml_string(CNI_BIN_DIR),
        cni_conf = q(i.cni_conf),
        certs_d = q(i.certs_d),
    )
}

/// containerd 2.x's config (version 3): the same daemon as [`config_v2`], in 2.x's plugin
/// layout (the CRI is split into the `images` and `runtime` plugins). Beyond that, NRI and CDI
/// are off: NRI would listen on the machine-wide `/var/run/nri/nri.sock`, CDI would watch
/// `/etc/cdi` and `/var/run/cdi`; bpflet's tests use neither.
fn config_v3(i: &ConfigInputs<'_>) -> String {
    format!(
        r#"# Written by bpflet's xtask (containerd.rs) for containerd 2.x; rewritten on every start.
version = 3
root = {root}
state = {state}
# containerd 2 would otherwise also read /etc/containerd/conf.d/*.toml.
imports = []
# As for containerd 1.6 (config_v2): CRI containers are restarted by the kubelet or bpflet.
disabled_plugins = ["io.containerd.monitor.container.v1.restart"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  # As for containerd 1.6 (config_v2): the disk-usage walk of every writable layer.
  stats_collect_period = 300

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {pause}

  # Per-registry settings (CA, mirrors): `<dir>/<host[:port]>/hosts.toml`.
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = {certs_d}

[plugins."io.containerd.cri.v1.runtime"]
  # Required on these machines: without it every sandbox fails (oom_score_adj EPERM).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  enable_cdi = false

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = "overlayfs"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{cni_bin}]
    conf_dir = {cni_conf}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        root = q(i.root),
        state = q(i.state),
        socket = q(i.socket),
        ttrpc = q(i.ttrpc),
        opt = q(i.opt),
        pause = toml_string(PAUSE_IMAGE),
        runc = q(i.runc),
        runc_root = q(i.runc_root),
        cni_bin = toml_string(CNI_BIN_DIR),
        cni_conf = q(i.cni_conf),
        certs_d = q(i.certs_d),
    )
}

/// Fails, naming what to install, unless containerd, ctr, runc and the CNI plugins exist.
fn check_tools(binaries: &Binaries) -> Result<()> {
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        binaries.tool(tool)?;
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new(CNI_BIN_DIR).join(plugin);
        if !path.exists() {
            bail!(
                "the CNI plugin {} is missing; run `cargo xtask setup`",
                path.display()
            );
        }
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Waits until `pid` no longer exists (or is a zombie); false on timeout.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let gone = state.as_deref().is_none_or(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        });
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every process's pid and argv.
fn processes() -> Result<Vec<(i32, Vec<String>)>> {
    let mut out = vec![];
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry.context("listing /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    Ok(out)
}

fn mountinfo() -> Result<Vec<crate::mountinfo::MountEntry>> {
    let text = fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(crate::mountinfo::parse(&text))
}

/// Mount points strictly below `dir`, deepest (and latest) first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mountinfo()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    // Later mounts may sit on top of earlier ones: reverse first, then a stable sort by depth.
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything below `dir`, deepest first; lazily if a mount is busy.
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for _pass in 0..5 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            match umount2(&mount, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    umount2(&mount, MntFlags::MNT_DETACH)
                        .with_context(|| format!("lazily unmounting {}", mount.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("unmounting {}", mount.display())),
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        bail!("still mounted after 5 passes: {left:?}")
    }
}

/// Removes `cgroup_parent` and everything below it in every cgroup hierarchy, killing
/// processes still inside (it is our tree: only our pods run there).
fn remove_cgroup_tree(cgroup_parent: &str) -> Result<()> {
    let relative = cgroup_parent.trim_start_matches('/');
    if relative.is_empty() {
        bail!("refusing to remove the root cgroup");
    }
    let roots: Vec<PathBuf> = mountinfo()?
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point.join(relative))
        .filter(|p| p.is_dir())
        .collect();
    for root in &roots {
        let mut dirs = vec![];
        collect_dirs(root, &mut dirs)?;
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in dirs {
            rmdir_cgroup(&dir)?;
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_owned());
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir of a cgroup: kills its processes first, retries while the kernel lets them go.
fn rmdir_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            eprintln!(
                "private containerd: killing {pid} left in {}",
                dir.display()
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Deletes the CNI bridge once no interface is attached to it.
fn remove_idle_bridge(bridge: &str) -> Result<()> {
    let sys = Path::new("/sys/class/net").join(bridge);
    if !sys.exists() {
        return Ok(());
    }
    let ports = fs::read_dir(sys.join("brif")).map_or(0, Iterator::count);
    if ports > 0 {
        return Ok(());
    }
    crate::command_output(Command::new("ip").args(["link", "delete", bridge, "type", "bridge"]))
        .map(drop)
}

/// Runs an async CRI exchange on a private single-threaded runtime in a scoped thread, so
/// callers may be sync code or code inside another tokio runtime (tests).
fn block_on<T, F, Fut>(make: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a tokio runtime")?
                    .block_on(make())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The minimal CRI `runtime.v1` client teardown and readiness checks need.
mod cri {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::{Context as _, Result, anyhow};
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::{Channel, Endpoint, Uri};

    /// Field numbers follow `runtime/v1/api.proto`; fields not needed are left out
    /// (prost skips unknown fields when decoding).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {
        #[prost(bool, tag = "1")]
        pub verbose: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<RuntimeStatus>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RuntimeStatus {
        #[prost(message, repeated, tag = "1")]
        pub conditions: Vec<RuntimeCondition>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RuntimeCondition {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(bool, tag = "2")]
        pub status: bool,
        #[prost(string, tag = "3")]
        pub reason: String,
        #[prost(string, tag = "4")]
        pub message: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
    }
    /// Both `StopPodSandboxRequest` and `RemovePodSandboxRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxIdRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub id: String,
    }

    pub const STATUS: &str = "/runtime.v1.RuntimeService/Status";
    pub const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
    pub const STOP_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/StopPodSandbox";
    pub const REMOVE_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/RemovePodSandbox";
    pub const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";

    pub struct Client {
        channel: Channel,
        socket: String,
    }

    impl Client {
        pub async fn connect(socket: &Path) -> Result<Self> {
            let path = socket.to_owned();
            let channel = Endpoint::from_static("http://cri.invalid")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            Ok(Client {
                channel,
                socket: socket.display().to_string(),
            })
        }

        pub async fn call<Req, Resp>(
            &self,
            path: &'static str,
            message: Req,
            timeout: Duration,
        ) -> Result<Resp>
        where
            Req: prost::Message + Send + Sync + 'static,
            Resp: prost::Message + Default + Send + Sync + 'static,
        {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready()
                .await
                .with_context(|| format!("CRI {path} via {}: connection not ready", self.socket))?;
            let mut request = tonic::Request::new(message);
            request.set_timeout(timeout);
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            let response = tokio::time::timeout(
                timeout,
                grpc.unary(request, PathAndQuery::from_static(path), codec),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "CRI {path} via {}: no answer within {timeout:?}",
                    self.socket
                )
            })?
            .with_context(|| format!("CRI {path} via {}", self.socket))?;
            Ok(response.into_inner())
        }
    }
}

async fn cri_conditions(socket: &Path) -> Result<Vec<cri::RuntimeCondition>> {
    let client = cri::Client::connect(socket).await?;
    let response: cri::StatusResponse = client
        .call(
            cri::STATUS,
            cri::StatusRequest { verbose: false },
            Duration::from_secs(2),
        )
        .await?;
    Ok(response.status.map(|s| s.conditions).unwrap_or_default())
}

/// The CRI image id of each name, `None` where the CRI does not have it.
async fn cri_image_ids(socket: &Path, names: Vec<String>) -> Result<Vec<Option<String>>> {
    let client = cri::Client::connect(socket).await?;
    let mut ids = vec![];
    for name in names {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: name }),
        };
        let response: cri::ImageStatusResponse = client
            .call(cri::IMAGE_STATUS, request, CRI_CALL_TIMEOUT)
            .await?;
        ids.push(response.image.map(|i| i.id).filter(|id| !id.is_empty()));
    }
    Ok(ids)
}

/// Stops and removes every pod sandbox (and so every container); returns how many.
async fn remove_all_pods(socket: &Path) -> Result<usize> {
    let client = cri::Client::connect(socket).await?;
    let list: cri::ListPodSandboxResponse = client
        .call(
            cri::LIST_POD_SANDBOX,
            cri::ListPodSandboxRequest {},
            CRI_CALL_TIMEOUT,
        )
        .await?;
    for sandbox in &list.items {
        let request = || cri::PodSandboxIdRequest {
            pod_sandbox_id: sandbox.id.clone(),
        };
        // A container an agent was starting when it stopped is briefly in containerd's
        // "starting" state, and its sandbox cannot be removed until that ends: retry.
        let deadline = Instant::now() + SANDBOX_REMOVAL_PATIENCE;
        loop {
            let removed = async {
                let _: cri::Empty = client
                    .call(cri::STOP_POD_SANDBOX, request(), CRI_CALL_TIMEOUT)
                    .await?;
                let _: cri::Empty = client
                    .call(cri::REMOVE_POD_SANDBOX, request(), CRI_CALL_TIMEOUT)
                    .await?;
                anyhow::Ok(())
            }
            .await;
            match removed {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "private containerd: removing sandbox {} failed, retrying: {e:#}",
                        sandbox.id
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(list.items.len())
}

/// How long teardown retries removing a sandbox whose container is still starting.
const SANDBOX_REMOVAL_PATIENCE: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_in<'a>(p: &'a Path) -> ConfigInputs<'a> {
        ConfigInputs {
            root: p,
            state: p,
            socket: p,
            ttrpc: p,
            opt: p,
            runc: p,
            runc_root: p,
            cni_conf: p,
            certs_d: p,
        }
    }

    #[test]
    fn config_v2_is_containerd_1_6s_layout() {
        let text = config_v2(&inputs_in(Path::new("/w")));
        for line in [
            "version = 2",
            r#"disabled_plugins = ["io.containerd.internal.v1.restart"]"#,
            r#"[plugins."io.containerd.grpc.v1.cri"]"#,
            r#"  sandbox_image = "bpflet.local/pause:latest""#,
            "  restrict_oom_score_adj = true",
            r#"    bin_dir = "/usr/lib/cni""#,
            r#"        BinaryName = "/w""#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn config_v3_is_containerd_2s_layout_without_machine_wide_paths() {
        let text = config_v3(&inputs_in(Path::new("/w")));
        for line in [
            "version = 3",
            "imports = []",
            r#"disabled_plugins = ["io.containerd.monitor.container.v1.restart"]"#,
            r#"[plugins."io.containerd.nri.v1.nri"]"#,
            "  disable = true",
            r#"  [plugins."io.containerd.cri.v1.images".pinned_images]"#,
            r#"    sandbox = "bpflet.local/pause:latest""#,
            r#"[plugins."io.containerd.cri.v1.runtime"]"#,
            "  restrict_oom_score_adj = true",
            "  enable_cdi = false",
            r#"    bin_dirs = ["/usr/lib/cni"]"#,
            r#"        BinaryName = "/w""#,
            r#"  stream_server_address = "127.0.0.1""#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("io.containerd.grpc.v1.cri\".containerd"));
    }

    #[test]
    fn containerd2_finds_its_own_tools_first() {
        let dir = tempfile::tempdir().unwrap();
        let binaries = Binaries::Containerd2(dir.path().to_owned());
        let err = binaries.tool("runc").unwrap_err();
        assert!(err.to_string().contains("cargo xtask build-peer"), "{err}");
        fs::write(dir.path().join("runc"), "").unwrap();
        assert_eq!(binaries.tool("runc").unwrap(), dir.path().join("runc"));
        let path = binaries.search_path();
        assert_eq!(
            std::env::split_paths(&path).next().as_deref(),
            Some(dir.path())
        );
        assert_eq!(
            Binaries::Debian.search_path(),
            std::env::var_os("PATH").unwrap()
        );
    }

    #[test]
    fn toml_strings_are_quoted_and_escaped() {
        assert_eq!(toml_string("/tmp/x"), "\"/tmp/x\"");
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
    }
}
