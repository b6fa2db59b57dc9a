//! The container runtime behind one trait: [`ContainerRuntime`] covers the CRI `runtime.v1`
//! runtime and image services a kubelet needs.
//!
//! - [`CriRuntime`] talks to a real runtime (containerd, CRI-O) over its unix socket.
//! - `FakeRuntime` (unit tests only, not in the binary) keeps sandboxes, containers and
//!   images in memory, and lets a test make containers exit, get OOM-killed, or make any
//!   call fail or hang.
//!
//! Configuration goes in as the generated CRI messages ([`api::PodSandboxConfig`],
//! [`api::ContainerConfig`], ...), so nothing of the CRI is re-modelled on the way in. What
//! comes back is small owned types ([`ContainerStatus`], [`PodSandboxStatus`], ...) with
//! real enums and [`Timestamp`]s instead of CRI's `i32` enums and nanosecond counters.
//!
//! Both implementations are cheap to clone (an `Arc` inside) and share their state between
//! clones, so a pod worker can take its own handle into a spawned task.

mod cri;
mod error;
#[cfg(test)]
mod fake;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

pub use jiff::Timestamp;
/// The generated CRI `runtime.v1` messages and clients.
pub use k8s_cri::v1 as api;

pub use cri::{CriRuntime, DEFAULT_REQUEST_TIMEOUT};
pub use error::{Method, RuntimeError};
#[cfg(test)]
pub use fake::{ExecHandler, FakeRuntime, Fault};

/// The result of a runtime call.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The CRI API version this client speaks.
pub const CRI_API_VERSION: &str = "v1";

/// The CRI `reason` of a container the kernel's OOM killer terminated.
pub const REASON_OOM_KILLED: &str = "OOMKilled";
/// The CRI `reason` of a container that exited 0.
pub const REASON_COMPLETED: &str = "Completed";
/// The CRI `reason` of a container that exited non-zero.
pub const REASON_ERROR: &str = "Error";

/// Name and version of the runtime (CRI `Version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// E.g. `containerd`.
    pub runtime_name: String,
    /// E.g. `1.6.20~ds1`.
    pub runtime_version: String,
    /// The CRI version the runtime speaks, e.g. `v1`.
    pub runtime_api_version: String,
}

/// One runtime condition (CRI `Status`): `RuntimeReady`, `NetworkReady`, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeCondition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The runtime's conditions (CRI `Status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub conditions: Vec<RuntimeCondition>,
}

impl RuntimeStatus {
    /// The runtime can run containers.
    pub const RUNTIME_READY: &'static str = "RuntimeReady";
    /// The runtime's network (CNI) is set up: non-host-network pods can start.
    pub const NETWORK_READY: &'static str = "NetworkReady";

    /// The condition of the given kind, if the runtime reported it.
    pub fn condition(&self, kind: &str) -> Option<&RuntimeCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// `RuntimeReady` is reported and true.
    pub fn runtime_ready(&self) -> bool {
        self.condition(Self::RUNTIME_READY)
            .is_some_and(|c| c.status)
    }

    /// `NetworkReady` is reported and true.
    pub fn network_ready(&self) -> bool {
        self.condition(Self::NETWORK_READY)
            .is_some_and(|c| c.status)
    }
}

/// State of a pod sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SandboxState {
    Ready,
    NotReady,
}

impl SandboxState {
    pub(crate) fn from_cri(state: i32) -> Self {
        match api::PodSandboxState::try_from(state) {
            Ok(api::PodSandboxState::SandboxReady) => SandboxState::Ready,
            _ => SandboxState::NotReady,
        }
    }

    /// The CRI state (the fake filters by it).
    #[cfg(test)]
    pub(crate) fn to_cri(self) -> api::PodSandboxState {
        match self {
            SandboxState::Ready => api::PodSandboxState::SandboxReady,
            SandboxState::NotReady => api::PodSandboxState::SandboxNotready,
        }
    }
}

/// Which pod a sandbox belongs to (CRI `PodSandboxMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl From<api::PodSandboxMetadata> for SandboxMetadata {
    fn from(m: api::PodSandboxMetadata) -> Self {
        SandboxMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        }
    }
}

/// A pod sandbox as listed (CRI `PodSandbox`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: SandboxMetadata,
    pub state: SandboxState,
    pub created_at: Timestamp,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
}

/// A pod sandbox's status (CRI `PodSandboxStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: SandboxMetadata,
    pub state: SandboxState,
    pub created_at: Timestamp,
    /// The pod's primary IP; `None` for host-network pods.
    pub ip: Option<String>,
    pub additional_ips: Vec<String>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
}

/// State of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    pub(crate) fn from_cri(state: i32) -> Self {
        match api::ContainerState::try_from(state) {
            Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
            Ok(api::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Unknown,
        }
    }

    /// The CRI state (the fake filters by it).
    #[cfg(test)]
    pub(crate) fn to_cri(self) -> api::ContainerState {
        match self {
            ContainerState::Created => api::ContainerState::ContainerCreated,
            ContainerState::Running => api::ContainerState::ContainerRunning,
            ContainerState::Exited => api::ContainerState::ContainerExited,
            ContainerState::Unknown => api::ContainerState::ContainerUnknown,
        }
    }
}

/// Which container of the pod this is (CRI `ContainerMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

impl From<api::ContainerMetadata> for ContainerMetadata {
    fn from(m: api::ContainerMetadata) -> Self {
        ContainerMetadata {
            name: m.name,
            attempt: m.attempt,
        }
    }
}

/// A container as listed (CRI `Container`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    /// The image as the container's config named it.
    pub image: String,
    /// The image's digested reference or id, as the runtime resolved it.
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: Timestamp,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

/// A container's status (CRI `ContainerStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Meaningful once `finished_at` is set.
    pub exit_code: i32,
    pub image: String,
    pub image_ref: String,
    /// CamelCase: `Completed`, `Error`, `OOMKilled`, ... Empty while running.
    pub reason: String,
    pub message: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Absolute path of the container's log file; empty if it has none.
    pub log_path: String,
}

impl ContainerStatus {
    /// The cgroup OOM killer ended this container.
    pub fn is_oom_killed(&self) -> bool {
        self.reason == REASON_OOM_KILLED
    }
}

/// What a command run with [`ContainerRuntime::exec_sync`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Which of a streaming session's streams the client wants (CRI `Exec` / `Attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A terminal: stdout and stderr are one stream, and the client may resize it.
    pub tty: bool,
}

/// An image the runtime has (CRI `Image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The image id, e.g. `sha256:<config digest>` on containerd.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
    /// The user the image runs as, when the image config sets a numeric one.
    pub uid: Option<i64>,
    /// The user the image runs as, when the image config sets a name.
    pub username: String,
    pub pinned: bool,
}

impl From<api::Image> for Image {
    fn from(i: api::Image) -> Self {
        Image {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
            size_bytes: i.size,
            uid: i.uid.map(|v| v.value),
            username: i.username,
            pinned: i.pinned,
        }
    }
}

/// How much of a filesystem the runtime's images use (CRI `FilesystemUsage`), for the
/// `imagefs.*` eviction signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesystemUsage {
    /// Where the filesystem holding the images is mounted (or the image directory on it).
    pub mountpoint: String,
    /// Bytes the images use (not the filesystem's total use).
    pub used_bytes: Option<u64>,
    /// Inodes the images use.
    pub inodes_used: Option<u64>,
    /// When the runtime measured.
    pub timestamp: Option<Timestamp>,
}

/// Converts CRI nanoseconds since the epoch; 0 (the CRI's "not set") and nonsense are `None`.
pub(crate) fn timestamp_from_nanos(nanos: i64) -> Option<Timestamp> {
    if nanos <= 0 {
        return None;
    }
    Timestamp::from_nanosecond(i128::from(nanos)).ok()
}

/// What a kubelet needs from a container runtime: the CRI runtime and image services.
///
/// Ids are the runtime's (sandbox and container ids are opaque strings). Calls are
/// independent: an implementation may run them concurrently.
pub trait ContainerRuntime: Send + Sync {
    /// The runtime's name and version (CRI `Version`).
    fn version(&self) -> impl Future<Output = Result<VersionInfo>> + Send;

    /// The runtime's conditions (CRI `Status`).
    fn status(&self) -> impl Future<Output = Result<RuntimeStatus>> + Send;

    /// Creates and starts a pod sandbox; returns its id. `runtime_handler` selects the
    /// runtime class (empty: the default).
    fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Stops the sandbox and kills its containers. Stopping a stopped sandbox is not an error.
    fn stop_pod_sandbox(&self, sandbox_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Removes the sandbox and its containers. Removing an unknown sandbox is not an error.
    fn remove_pod_sandbox(&self, sandbox_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// The sandbox's status; `NotFound` if the runtime does not know it.
    fn pod_sandbox_status(
        &self,
        sandbox_id: &str,
    ) -> impl Future<Output = Result<PodSandboxStatus>> + Send;

    /// Sandboxes matching `filter` (all when `None`).
    fn list_pod_sandboxes(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> impl Future<Output = Result<Vec<PodSandbox>>> + Send;

    /// Creates a container in a ready sandbox; returns its id. `sandbox_config` is the
    /// config the sandbox was run with.
    fn create_container(
        &self,
        sandbox_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Starts a created container.
    fn start_container(&self, container_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Stops a running container: SIGTERM (or the image's stop signal), then SIGKILL after
    /// `grace`. A zero grace kills at once. Stopping a container that is not running is not
    /// an error.
    fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes a container, killing it first if it runs. Removing an unknown container is
    /// not an error.
    fn remove_container(&self, container_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// The container's status; `NotFound` if the runtime does not know it.
    fn container_status(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<ContainerStatus>> + Send;

    /// The host pid of the container's main process (the runtime's task), when the runtime
    /// says; `None` when it does not, or the container has no process (created, exited).
    /// `NotFound` if the runtime does not know the container.
    fn container_pid(&self, container_id: &str)
    -> impl Future<Output = Result<Option<u32>>> + Send;

    /// Containers matching `filter` (all when `None`).
    fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> impl Future<Output = Result<Vec<Container>>> + Send;

    /// Applies new Linux resources (CPU shares/quota, memory limit, ...) to a container.
    fn update_container_resources(
        &self,
        container_id: &str,
        resources: &api::LinuxContainerResources,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Asks the runtime to reopen the container's log file (after log rotation).
    fn reopen_container_log(&self, container_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Runs `cmd` in a running container and collects its output. The runtime kills the
    /// command after `timeout` (zero: no limit); the call itself gives up a little later
    /// (see the implementation), so a wedged runtime cannot hold a probe for long.
    fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Prepares a streaming exec of `cmd` in a running container (CRI `Exec`) and returns
    /// the one-shot URL on the runtime's streaming server that serves it. The session
    /// itself (SPDY or websocket) is between the client and that URL.
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: StreamOptions,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Prepares an attach to a running container's main process (CRI `Attach`); returns
    /// the one-shot URL on the runtime's streaming server.
    fn attach(
        &self,
        container_id: &str,
        streams: StreamOptions,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Prepares a port forward into a sandbox's network namespace (CRI `PortForward`);
    /// returns the one-shot URL on the runtime's streaming server.
    fn port_forward(
        &self,
        sandbox_id: &str,
        ports: &[u16],
    ) -> impl Future<Output = Result<String>> + Send;

    /// The image if the runtime has it (by name, digest or id); `None` if it has not.
    fn image_status(&self, image: &str) -> impl Future<Output = Result<Option<Image>>> + Send;

    /// Pulls an image; returns its reference (image id). Offline nodes only use
    /// [`Self::image_status`] and [`Self::list_images`].
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        sandbox_config: Option<&api::PodSandboxConfig>,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Every image the runtime has.
    fn list_images(&self) -> impl Future<Output = Result<Vec<Image>>> + Send;

    /// Removes an image. Removing an unknown image is not an error.
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<()>> + Send;

    /// The filesystems holding images and how much the images use of them.
    fn image_fs_info(&self) -> impl Future<Output = Result<Vec<FilesystemUsage>>> + Send;

    /// The image the runtime runs pod sandboxes from, when it says; image garbage
    /// collection keeps it. `None` by default.
    fn sandbox_image(&self) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
}
