//! [`FakeRuntime`]: an in-memory [`ContainerRuntime`] for unit tests.
//!
//! It follows containerd 1.6's CRI rules where a kubelet can observe them: names are
//! reserved per sandbox and attempt, containers need a ready sandbox and a present image,
//! stop and remove are idempotent, removing a sandbox removes its containers, a stopped
//! container exits 137 (killed) or 143 (terminated), exit reasons are `Completed`, `Error`
//! or `OOMKilled`. Containers never exit on their own: a test ends them with
//! [`FakeRuntime::exit_container`] or [`FakeRuntime::oom_kill_container`].
//!
//! Any method can be made to fail, time out, hang or lag with [`FakeRuntime::inject`] /
//! [`FakeRuntime::inject_once`], and every call is recorded ([`FakeRuntime::calls`], and
//! the grace period of each stop: [`FakeRuntime::stop_graces`]). Its timestamps come from
//! the system clock, or from one the test sets ([`FakeRuntime::set_clock`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tonic::{Code, Status};

use super::cri::DEFAULT_REQUEST_TIMEOUT;
use super::{
    CRI_API_VERSION, Container, ContainerMetadata, ContainerRuntime, ContainerState,
    ContainerStatus, ExecOutput, FilesystemUsage, Image, Method, PodSandbox, PodSandboxStatus,
    REASON_COMPLETED, REASON_ERROR, REASON_OOM_KILLED, Result, RuntimeCondition, RuntimeError,
    RuntimeStatus, SandboxMetadata, SandboxState, StreamOptions, Timestamp, VersionInfo, api,
};

/// What the fake stands in for in error messages, where a real runtime names its socket.
const FAKE_SOCKET: &str = "fake://runtime";

/// Where the fake claims to keep its images.
const FAKE_IMAGE_FS: &str = "/var/lib/fake-runtime/images";

/// Exit code of a process killed by SIGKILL, as runtimes report it (128 + 9).
const EXIT_KILLED: i32 = 137;
/// Exit code of a process ended by SIGTERM (128 + 15).
const EXIT_TERMINATED: i32 = 143;

/// What an injected fault makes a call do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail with this gRPC code, as if the runtime had answered so.
    Error(Code),
    /// Fail at once as a call that got no answer in time ([`RuntimeError::Timeout`]).
    Timeout,
    /// Never answer; the caller's own timeout or cancellation ends the call.
    Hang,
    /// Answer normally, after this delay.
    Delay(Duration),
}

/// Produces the result of an `ExecSync` from the container id and the command.
pub type ExecHandler = Arc<dyn Fn(&str, &[String]) -> ExecOutput + Send + Sync>;

/// The time of day, for the fake's timestamps.
pub type FakeClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The in-memory runtime. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("FakeRuntime")
            .field("sandboxes", &s.sandboxes.len())
            .field("containers", &s.containers.len())
            .field("images", &s.images.len())
            .finish_non_exhaustive()
    }
}

struct State {
    version: VersionInfo,
    conditions: Vec<RuntimeCondition>,
    sandboxes: BTreeMap<String, FakeSandbox>,
    containers: BTreeMap<String, FakeContainer>,
    images: Vec<Image>,
    faults: HashMap<Method, Faults>,
    calls: Vec<Method>,
    next_id: u64,
    next_ip: u32,
    next_pid: u32,
    exec: Option<ExecHandler>,
    /// Every `StopContainer` call's container id and grace period, in order.
    stops: Vec<(String, Duration)>,
    /// Every `PullImage` call's image and the user name of its credentials, in order.
    pulls: Vec<(String, Option<String>)>,
    clock: Option<FakeClock>,
}

impl Default for State {
    fn default() -> Self {
        let ready = |kind: &str| RuntimeCondition {
            kind: kind.to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        State {
            version: VersionInfo {
                runtime_name: "fake".to_owned(),
                runtime_version: "0.1.0".to_owned(),
                runtime_api_version: CRI_API_VERSION.to_owned(),
            },
            conditions: vec![
                ready(RuntimeStatus::RUNTIME_READY),
                ready(RuntimeStatus::NETWORK_READY),
            ],
            sandboxes: BTreeMap::new(),
            containers: BTreeMap::new(),
            images: Vec::new(),
            faults: HashMap::new(),
            calls: Vec::new(),
            next_id: 0,
            next_ip: 2,
            next_pid: 1000,
            exec: None,
            stops: Vec::new(),
            pulls: Vec::new(),
            clock: None,
        }
    }
}

#[derive(Default)]
struct Faults {
    once: VecDeque<Fault>,
    always: Option<Fault>,
}

struct FakeSandbox {
    id: String,
    config: api::PodSandboxConfig,
    state: SandboxState,
    created_at: Timestamp,
    ip: Option<String>,
    runtime_handler: String,
}

struct FakeContainer {
    id: String,
    sandbox_id: String,
    config: api::ContainerConfig,
    image_ref: String,
    state: ContainerState,
    created_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    exit_code: i32,
    reason: String,
    message: String,
    log_path: String,
    resources: Option<api::LinuxContainerResources>,
    /// The main process's pid while it runs.
    pid: Option<u32>,
}

impl FakeContainer {
    fn finish(&mut self, exit_code: i32, reason: &str, now: Timestamp) {
        self.state = ContainerState::Exited;
        self.pid = None;
        self.finished_at = Some(now);
        self.exit_code = exit_code;
        self.reason = reason.to_owned();
    }
}

fn status_error(method: Method, code: Code, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Call {
        method,
        socket: PathBuf::from(FAKE_SOCKET),
        source: Status::new(code, message),
    }
}

fn exit_reason(exit_code: i32) -> &'static str {
    if exit_code == 0 {
        REASON_COMPLETED
    } else {
        REASON_ERROR
    }
}

fn is_host_network(config: &api::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|sc| sc.namespace_options.as_ref())
        .is_some_and(|ns| ns.network == api::NamespaceMode::Node as i32)
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl State {
    fn now(&self) -> Timestamp {
        self.clock
            .as_ref()
            .map_or_else(Timestamp::now, |clock| clock())
    }

    fn take_fault(&mut self, method: Method) -> Option<Fault> {
        let faults = self.faults.get_mut(&method)?;
        faults.once.pop_front().or_else(|| faults.always.clone())
    }

    /// A 64-hex-digit id, like containerd's.
    fn new_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        hex::encode(Sha256::digest(format!("{kind}-{}", self.next_id)))
    }

    fn find_image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| {
            i.id == name
                || i.repo_tags.iter().any(|t| t == name)
                || i.repo_digests.iter().any(|d| d == name)
        })
    }

    fn sandbox_mut(&mut self, method: Method, id: &str) -> Result<&mut FakeSandbox> {
        self.sandboxes
            .get_mut(id)
            .ok_or_else(|| status_error(method, Code::NotFound, format!("sandbox {id} not found")))
    }

    fn container_mut(&mut self, method: Method, id: &str) -> Result<&mut FakeContainer> {
        self.containers.get_mut(id).ok_or_else(|| {
            status_error(method, Code::NotFound, format!("container {id} not found"))
        })
    }

    fn container_status(&self, c: &FakeContainer) -> ContainerStatus {
        ContainerStatus {
            id: c.id.clone(),
            metadata: c
                .config
                .metadata
                .clone()
                .map(ContainerMetadata::from)
                .unwrap_or_default(),
            state: c.state,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c
                .config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_ref: c.image_ref.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            log_path: c.log_path.clone(),
        }
    }
}

impl FakeRuntime {
    /// An empty runtime: ready, network ready, no images.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the state from others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the call and applies the next injected fault, if any.
    async fn enter(&self, method: Method) -> Result<()> {
        let fault = {
            let mut s = self.lock();
            s.calls.push(method);
            s.take_fault(method)
        };
        match fault {
            None => Ok(()),
            Some(Fault::Error(code)) => Err(status_error(method, code, "injected fault")),
            Some(Fault::Timeout) => Err(RuntimeError::Timeout {
                method,
                socket: PathBuf::from(FAKE_SOCKET),
                timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }

    /// Every `PullImage` call so far: the image and the user name of its credentials.
    pub fn pulls(&self) -> Vec<(String, Option<String>)> {
        self.lock().pulls.clone()
    }

    /// Makes the runtime have an image named `name`; returns its id. Idempotent.
    pub fn add_image(&self, name: &str) -> String {
        let mut s = self.lock();
        if let Some(image) = s.find_image(name) {
            return image.id.clone();
        }
        let digest = hex::encode(Sha256::digest(name));
        let id = format!("sha256:{digest}");
        let repo = name.rsplit_once(':').map_or(name, |(repo, _tag)| repo);
        s.images.push(Image {
            id: id.clone(),
            repo_tags: vec![name.to_owned()],
            repo_digests: vec![format!("{repo}@sha256:{digest}")],
            size_bytes: 1 << 20,
            uid: None,
            username: String::new(),
            pinned: false,
        });
        id
    }

    /// Gives image `name` (added if missing) a size and a pin; returns its id.
    pub fn set_image(&self, name: &str, size_bytes: u64, pinned: bool) -> String {
        let id = self.add_image(name);
        let mut s = self.lock();
        if let Some(image) = s.images.iter_mut().find(|i| i.id == id) {
            image.size_bytes = size_bytes;
            image.pinned = pinned;
        }
        id
    }

    /// Sets (or adds) a runtime condition, e.g. `NetworkReady` false.
    pub fn set_condition(&self, kind: &str, status: bool, reason: &str, message: &str) {
        let mut s = self.lock();
        let condition = RuntimeCondition {
            kind: kind.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        match s.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(existing) => *existing = condition,
            None => s.conditions.push(condition),
        }
    }

    /// Every later call of `method` suffers `fault` (after any one-shot faults), until
    /// [`Self::clear_faults`].
    pub fn inject(&self, method: Method, fault: Fault) {
        self.lock().faults.entry(method).or_default().always = Some(fault);
    }

    /// The next call of `method` suffers `fault`; queued one-shot faults apply in order.
    pub fn inject_once(&self, method: Method, fault: Fault) {
        self.lock()
            .faults
            .entry(method)
            .or_default()
            .once
            .push_back(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The methods called so far, in order (faulted calls included).
    pub fn calls(&self) -> Vec<Method> {
        self.lock().calls.clone()
    }

    /// How many times `method` was called.
    pub fn call_count(&self, method: Method) -> usize {
        self.lock().calls.iter().filter(|&&m| m == method).count()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Every `StopContainer` call so far: the container id and the grace period asked for.
    pub fn stop_graces(&self) -> Vec<(String, Duration)> {
        self.lock().stops.clone()
    }

    /// Stamps sandboxes and containers (created, started, finished) with `clock`'s time
    /// instead of the system clock's.
    pub fn set_clock(&self, clock: FakeClock) {
        self.lock().clock = Some(clock);
    }

    /// Decides what `ExecSync` returns (by default: exit 0, no output).
    pub fn set_exec_handler(&self, handler: ExecHandler) {
        self.lock().exec = Some(handler);
    }

    /// The running container's process exits with `exit_code`.
    ///
    /// # Panics
    /// If the container does not exist or is not running: that is a mistake in the test.
    pub fn exit_container(&self, container_id: &str, exit_code: i32) {
        self.end_container(container_id, exit_code, exit_reason(exit_code));
    }

    /// The running container is killed by the cgroup OOM killer: exit 137, `OOMKilled`.
    ///
    /// # Panics
    /// If the container does not exist or is not running: that is a mistake in the test.
    pub fn oom_kill_container(&self, container_id: &str) {
        self.end_container(container_id, EXIT_KILLED, REASON_OOM_KILLED);
    }

    fn end_container(&self, container_id: &str, exit_code: i32, reason: &str) {
        let mut s = self.lock();
        let now = s.now();
        let Some(c) = s.containers.get_mut(container_id) else {
            panic!("FakeRuntime: no container {container_id} to end");
        };
        assert_eq!(
            c.state,
            ContainerState::Running,
            "FakeRuntime: container {container_id} is not running"
        );
        c.finish(exit_code, reason, now);
    }

    /// The config a sandbox was run with.
    pub fn sandbox_config(&self, sandbox_id: &str) -> Option<api::PodSandboxConfig> {
        self.lock()
            .sandboxes
            .get(sandbox_id)
            .map(|sb| sb.config.clone())
    }

    /// The config a container was created with.
    pub fn container_config(&self, container_id: &str) -> Option<api::ContainerConfig> {
        self.lock()
            .containers
            .get(container_id)
            .map(|c| c.config.clone())
    }

    /// The container's current Linux resources: from its config, or the last update.
    pub fn container_resources(&self, container_id: &str) -> Option<api::LinuxContainerResources> {
        let s = self.lock();
        let c = s.containers.get(container_id)?;
        c.resources
            .clone()
            .or_else(|| c.config.linux.as_ref().and_then(|l| l.resources.clone()))
    }
}

impl FakeRuntime {
    /// `NotFound` for an unknown container, `FailedPrecondition` for one not running.
    fn running_container(&self, method: Method, container_id: &str) -> Result<()> {
        let mut s = self.lock();
        let c = s.container_mut(method, container_id)?;
        if c.state == ContainerState::Running {
            Ok(())
        } else {
            Err(status_error(
                method,
                Code::FailedPrecondition,
                format!("container {container_id} is not running"),
            ))
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn version(&self) -> Result<VersionInfo> {
        self.enter(Method::Version).await?;
        Ok(self.lock().version.clone())
    }

    async fn status(&self) -> Result<RuntimeStatus> {
        self.enter(Method::Status).await?;
        Ok(RuntimeStatus {
            conditions: self.lock().conditions.clone(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        const M: Method = Method::RunPodSandbox;
        self.enter(M).await?;
        let mut s = self.lock();
        let Some(meta) = &config.metadata else {
            return Err(status_error(
                M,
                Code::InvalidArgument,
                "sandbox config has no metadata",
            ));
        };
        let taken = s
            .sandboxes
            .values()
            .any(|sb| sb.config.metadata.as_ref() == Some(meta));
        if taken {
            return Err(status_error(
                M,
                Code::AlreadyExists,
                format!(
                    "failed to reserve sandbox name {}_{}_{}_{}",
                    meta.name, meta.namespace, meta.uid, meta.attempt
                ),
            ));
        }
        let ip = if is_host_network(config) {
            None
        } else {
            let n = s.next_ip;
            s.next_ip += 1;
            Some(format!("10.88.{}.{}", (n >> 8) & 0xff, n & 0xff))
        };
        let id = s.new_id("sandbox");
        let created_at = s.now();
        s.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                id: id.clone(),
                config: config.clone(),
                state: SandboxState::Ready,
                created_at,
                ip,
                runtime_handler: runtime_handler.to_owned(),
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        const M: Method = Method::StopPodSandbox;
        self.enter(M).await?;
        let mut s = self.lock();
        let now = s.now();
        s.sandbox_mut(M, sandbox_id)?.state = SandboxState::NotReady;
        // containerd stops the containers with no grace period.
        for c in s.containers.values_mut() {
            if c.sandbox_id == sandbox_id && c.state == ContainerState::Running {
                c.finish(EXIT_KILLED, REASON_ERROR, now);
            }
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        self.enter(Method::RemovePodSandbox).await?;
        let mut s = self.lock();
        if s.sandboxes.remove(sandbox_id).is_some() {
            s.containers.retain(|_, c| c.sandbox_id != sandbox_id);
        }
        Ok(())
    }

    async fn pod_sandbox_status(&self, sandbox_id: &str) -> Result<PodSandboxStatus> {
        const M: Method = Method::PodSandboxStatus;
        self.enter(M).await?;
        let mut s = self.lock();
        let sb = s.sandbox_mut(M, sandbox_id)?;
        Ok(PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb
                .config
                .metadata
                .clone()
                .map(SandboxMetadata::from)
                .unwrap_or_default(),
            state: sb.state,
            created_at: sb.created_at,
            ip: sb.ip.clone(),
            additional_ips: Vec::new(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        })
    }

    async fn list_pod_sandboxes(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>> {
        self.enter(Method::ListPodSandbox).await?;
        let filter = filter.unwrap_or_default();
        let s = self.lock();
        Ok(s.sandboxes
            .values()
            .filter(|sb| sb.id.starts_with(&filter.id))
            .filter(|sb| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|v| v.state == sb.state.to_cri() as i32)
            })
            .filter(|sb| labels_match(&sb.config.labels, &filter.label_selector))
            .map(|sb| PodSandbox {
                id: sb.id.clone(),
                metadata: sb
                    .config
                    .metadata
                    .clone()
                    .map(SandboxMetadata::from)
                    .unwrap_or_default(),
                state: sb.state,
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: sb.runtime_handler.clone(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &api::ContainerConfig,
        _sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String> {
        const M: Method = Method::CreateContainer;
        self.enter(M).await?;
        let mut s = self.lock();
        let sandbox = s.sandbox_mut(M, sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(status_error(
                M,
                Code::FailedPrecondition,
                format!("sandbox {sandbox_id} is not ready"),
            ));
        }
        let log_dir = sandbox.config.log_directory.clone();
        let Some(meta) = &config.metadata else {
            return Err(status_error(
                M,
                Code::InvalidArgument,
                "container config has no metadata",
            ));
        };
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.as_str())
            .unwrap_or_default();
        let Some(image_ref) = s.find_image(image).map(|i| i.id.clone()) else {
            return Err(status_error(
                M,
                Code::NotFound,
                format!("failed to get image {image:?}: not found"),
            ));
        };
        let taken = s
            .containers
            .values()
            .any(|c| c.sandbox_id == sandbox_id && c.config.metadata.as_ref() == Some(meta));
        if taken {
            return Err(status_error(
                M,
                Code::AlreadyExists,
                format!(
                    "failed to reserve container name {}_{}",
                    meta.name, meta.attempt
                ),
            ));
        }
        let log_path = if log_dir.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&log_dir)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let id = s.new_id("container");
        let created_at = s.now();
        s.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                sandbox_id: sandbox_id.to_owned(),
                config: config.clone(),
                image_ref,
                state: ContainerState::Created,
                created_at,
                started_at: None,
                finished_at: None,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                log_path,
                resources: None,
                pid: None,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        const M: Method = Method::StartContainer;
        self.enter(M).await?;
        let mut s = self.lock();
        let pid = s.next_pid;
        let now = s.now();
        let c = s.container_mut(M, container_id)?;
        if c.state != ContainerState::Created {
            return Err(status_error(
                M,
                Code::FailedPrecondition,
                format!(
                    "container {container_id} is in {:?} state, not created",
                    c.state
                ),
            ));
        }
        c.state = ContainerState::Running;
        c.started_at = Some(now);
        c.pid = Some(pid);
        s.next_pid += 1;
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, grace: Duration) -> Result<()> {
        const M: Method = Method::StopContainer;
        self.enter(M).await?;
        let mut s = self.lock();
        let now = s.now();
        s.stops.push((container_id.to_owned(), grace));
        let c = s.container_mut(M, container_id)?;
        if c.state == ContainerState::Running {
            // The fake's processes honour SIGTERM; with no grace they are killed.
            let code = if grace.is_zero() {
                EXIT_KILLED
            } else {
                EXIT_TERMINATED
            };
            c.finish(code, REASON_ERROR, now);
        }
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        self.enter(Method::RemoveContainer).await?;
        self.lock().containers.remove(container_id);
        Ok(())
    }

    async fn container_status(&self, container_id: &str) -> Result<ContainerStatus> {
        const M: Method = Method::ContainerStatus;
        self.enter(M).await?;
        let mut s = self.lock();
        s.container_mut(M, container_id)?;
        let c = &s.containers[container_id];
        Ok(s.container_status(c))
    }

    /// Counted as a `ContainerStatus` call, as the CRI client makes it.
    async fn container_pid(&self, container_id: &str) -> Result<Option<u32>> {
        const M: Method = Method::ContainerStatus;
        self.enter(M).await?;
        Ok(self.lock().container_mut(M, container_id)?.pid)
    }

    async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<Container>> {
        self.enter(Method::ListContainers).await?;
        let filter = filter.unwrap_or_default();
        let s = self.lock();
        Ok(s.containers
            .values()
            .filter(|c| c.id.starts_with(&filter.id))
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox_id == filter.pod_sandbox_id)
            .filter(|c| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|v| v.state == c.state.to_cri() as i32)
            })
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .map(|c| {
                let status = s.container_status(c);
                Container {
                    id: status.id,
                    pod_sandbox_id: c.sandbox_id.clone(),
                    metadata: status.metadata,
                    image: status.image,
                    image_ref: status.image_ref,
                    state: status.state,
                    created_at: status.created_at,
                    labels: status.labels,
                    annotations: status.annotations,
                }
            })
            .collect())
    }

    async fn update_container_resources(
        &self,
        container_id: &str,
        resources: &api::LinuxContainerResources,
    ) -> Result<()> {
        const M: Method = Method::UpdateContainerResources;
        self.enter(M).await?;
        let mut s = self.lock();
        let c = s.container_mut(M, container_id)?;
        if c.state == ContainerState::Exited {
            return Err(status_error(
                M,
                Code::FailedPrecondition,
                format!("container {container_id} has exited"),
            ));
        }
        c.resources = Some(resources.clone());
        Ok(())
    }

    async fn reopen_container_log(&self, container_id: &str) -> Result<()> {
        const M: Method = Method::ReopenContainerLog;
        self.enter(M).await?;
        let mut s = self.lock();
        let c = s.container_mut(M, container_id)?;
        if c.state != ContainerState::Running {
            return Err(status_error(
                M,
                Code::FailedPrecondition,
                format!("container {container_id} is not running"),
            ));
        }
        Ok(())
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput> {
        const M: Method = Method::ExecSync;
        self.enter(M).await?;
        let handler = {
            let mut s = self.lock();
            let c = s.container_mut(M, container_id)?;
            if c.state != ContainerState::Running {
                return Err(status_error(
                    M,
                    Code::FailedPrecondition,
                    format!("container {container_id} is not running"),
                ));
            }
            s.exec.clone()
        };
        // Called without the lock, so a handler may use the fake (e.g. to end the container).
        Ok(handler.map_or_else(ExecOutput::default, |h| h(container_id, cmd)))
    }

    /// `fake://exec/<container id>`, for a running container.
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        _streams: StreamOptions,
    ) -> Result<String> {
        const M: Method = Method::Exec;
        self.enter(M).await?;
        if cmd.is_empty() {
            return Err(status_error(M, Code::InvalidArgument, "cmd is empty"));
        }
        self.running_container(M, container_id)?;
        Ok(format!("fake://exec/{container_id}"))
    }

    /// `fake://attach/<container id>`, for a running container.
    async fn attach(&self, container_id: &str, _streams: StreamOptions) -> Result<String> {
        const M: Method = Method::Attach;
        self.enter(M).await?;
        self.running_container(M, container_id)?;
        Ok(format!("fake://attach/{container_id}"))
    }

    /// `fake://portforward/<sandbox id>`, for a known sandbox.
    async fn port_forward(&self, sandbox_id: &str, _ports: &[u16]) -> Result<String> {
        const M: Method = Method::PortForward;
        self.enter(M).await?;
        self.lock().sandbox_mut(M, sandbox_id)?;
        Ok(format!("fake://portforward/{sandbox_id}"))
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        self.enter(Method::ImageStatus).await?;
        Ok(self.lock().find_image(image).cloned())
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        _sandbox_config: Option<&api::PodSandboxConfig>,
    ) -> Result<String> {
        self.lock()
            .pulls
            .push((image.to_owned(), auth.map(|a| a.username.clone())));
        self.enter(Method::PullImage).await?;
        Ok(self.add_image(image))
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        self.enter(Method::ListImages).await?;
        Ok(self.lock().images.clone())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.enter(Method::RemoveImage).await?;
        let mut s = self.lock();
        if let Some(id) = s.find_image(image).map(|i| i.id.clone()) {
            s.images.retain(|i| i.id != id);
        }
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<Vec<FilesystemUsage>> {
        self.enter(Method::ImageFsInfo).await?;
        let s = self.lock();
        Ok(vec![FilesystemUsage {
            mountpoint: FAKE_IMAGE_FS.to_owned(),
            used_bytes: Some(s.images.iter().map(|i| i.size_bytes).sum()),
            inodes_used: Some(u64::try_from(s.images.len()).unwrap_or(u64::MAX) * 64),
            timestamp: Some(s.now()),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "bpflet.local/busybox:latest";

    fn sandbox_config(name: &str, host_network: bool) -> api::PodSandboxConfig {
        let network = if host_network {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Pod
        };
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            log_directory: format!("/var/log/pods/default_{name}"),
            labels: HashMap::from([("app".to_owned(), name.to_owned())]),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(name: &str, attempt: u32) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_owned(),
                attempt,
            }),
            image: Some(api::ImageSpec {
                image: IMAGE.to_owned(),
                ..Default::default()
            }),
            command: vec!["sleep".to_owned(), "3600".to_owned()],
            log_path: format!("{name}/{attempt}.log"),
            labels: HashMap::from([("container".to_owned(), name.to_owned())]),
            ..Default::default()
        }
    }

    /// A runtime with the test image, one pod-network sandbox and one created container.
    async fn pod(rt: &FakeRuntime) -> (String, api::PodSandboxConfig, String) {
        rt.add_image(IMAGE);
        let sb_config = sandbox_config("web", false);
        let sb = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        let c = rt
            .create_container(&sb, &container_config("app", 0), &sb_config)
            .await
            .unwrap();
        (sb, sb_config, c)
    }

    #[tokio::test]
    async fn container_goes_created_running_exited() {
        let rt = FakeRuntime::new();
        let (sb, _, c) = pod(&rt).await;

        let status = rt.pod_sandbox_status(&sb).await.unwrap();
        assert_eq!(status.state, SandboxState::Ready);
        assert_eq!(status.metadata.name, "web");
        assert_eq!(status.ip.as_deref(), Some("10.88.0.2"));

        let created = rt.container_status(&c).await.unwrap();
        assert_eq!(created.state, ContainerState::Created);
        assert_eq!(created.metadata.name, "app");
        assert_eq!(created.started_at, None);
        assert_eq!(created.log_path, "/var/log/pods/default_web/app/0.log");
        assert!(
            created.image_ref.starts_with("sha256:"),
            "{}",
            created.image_ref
        );

        rt.start_container(&c).await.unwrap();
        let running = rt.container_status(&c).await.unwrap();
        assert_eq!(running.state, ContainerState::Running);
        assert!(running.started_at.is_some());
        assert_eq!(running.finished_at, None);

        rt.exit_container(&c, 3);
        let exited = rt.container_status(&c).await.unwrap();
        assert_eq!(exited.state, ContainerState::Exited);
        assert_eq!(exited.exit_code, 3);
        assert_eq!(exited.reason, REASON_ERROR);
        assert!(exited.finished_at >= exited.started_at);
        assert!(!exited.is_oom_killed());

        let err = rt.start_container(&c).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err:?}");
    }

    #[tokio::test]
    async fn clean_exit_is_completed_and_oom_kill_is_137_oomkilled() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, c) = pod(&rt).await;
        rt.start_container(&c).await.unwrap();
        rt.exit_container(&c, 0);
        let done = rt.container_status(&c).await.unwrap();
        assert_eq!(
            (done.exit_code, done.reason.as_str()),
            (0, REASON_COMPLETED)
        );

        let hog = rt
            .create_container(&sb, &container_config("hog", 0), &sb_config)
            .await
            .unwrap();
        rt.start_container(&hog).await.unwrap();
        rt.oom_kill_container(&hog);
        let killed = rt.container_status(&hog).await.unwrap();
        assert_eq!(killed.state, ContainerState::Exited);
        assert_eq!(killed.exit_code, 137);
        assert_eq!(killed.reason, "OOMKilled");
        assert!(killed.is_oom_killed());
    }

    #[tokio::test]
    async fn running_containers_have_a_main_pid() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, c) = pod(&rt).await;
        let other = rt
            .create_container(&sb, &container_config("sidecar", 0), &sb_config)
            .await
            .unwrap();
        assert_eq!(rt.container_pid(&c).await.unwrap(), None, "created");
        rt.start_container(&c).await.unwrap();
        rt.start_container(&other).await.unwrap();
        let pid = rt.container_pid(&c).await.unwrap().expect("running: a pid");
        let other_pid = rt.container_pid(&other).await.unwrap().expect("a pid");
        assert_ne!(pid, other_pid, "each container has its own process");
        rt.exit_container(&c, 3);
        assert_eq!(rt.container_pid(&c).await.unwrap(), None, "exited");
        assert!(rt.container_pid("nope").await.unwrap_err().is_not_found());
        assert_eq!(
            rt.call_count(Method::ContainerStatus),
            5,
            "counted as ContainerStatus calls"
        );
    }

    #[tokio::test]
    async fn stop_terminates_or_kills_and_is_idempotent() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, graceful) = pod(&rt).await;
        let killed = rt
            .create_container(&sb, &container_config("sidecar", 0), &sb_config)
            .await
            .unwrap();
        rt.start_container(&graceful).await.unwrap();
        rt.start_container(&killed).await.unwrap();

        rt.stop_container(&graceful, Duration::from_secs(30))
            .await
            .unwrap();
        rt.stop_container(&killed, Duration::ZERO).await.unwrap();
        assert_eq!(rt.container_status(&graceful).await.unwrap().exit_code, 143);
        assert_eq!(rt.container_status(&killed).await.unwrap().exit_code, 137);

        let finished = rt.container_status(&graceful).await.unwrap().finished_at;
        rt.stop_container(&graceful, Duration::ZERO).await.unwrap();
        let again = rt.container_status(&graceful).await.unwrap();
        assert_eq!((again.exit_code, again.finished_at), (143, finished));
    }

    #[tokio::test]
    async fn stopping_the_sandbox_kills_its_containers_and_blocks_new_ones() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, c) = pod(&rt).await;
        rt.start_container(&c).await.unwrap();

        rt.stop_pod_sandbox(&sb).await.unwrap();
        rt.stop_pod_sandbox(&sb).await.unwrap();
        assert_eq!(
            rt.pod_sandbox_status(&sb).await.unwrap().state,
            SandboxState::NotReady
        );
        let status = rt.container_status(&c).await.unwrap();
        assert_eq!(
            (status.state, status.exit_code),
            (ContainerState::Exited, 137)
        );

        let err = rt
            .create_container(&sb, &container_config("late", 0), &sb_config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err:?}");
    }

    #[tokio::test]
    async fn removing_the_sandbox_removes_its_containers_and_is_idempotent() {
        let rt = FakeRuntime::new();
        let (sb, _, c) = pod(&rt).await;
        let other = rt
            .run_pod_sandbox(&sandbox_config("db", true), "")
            .await
            .unwrap();

        rt.remove_pod_sandbox(&sb).await.unwrap();
        rt.remove_pod_sandbox(&sb).await.unwrap();
        rt.remove_container(&c).await.unwrap();

        assert!(rt.pod_sandbox_status(&sb).await.unwrap_err().is_not_found());
        assert!(rt.container_status(&c).await.unwrap_err().is_not_found());
        assert!(rt.list_containers(None).await.unwrap().is_empty());
        let left: Vec<String> = rt
            .list_pod_sandboxes(None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left, [other]);
    }

    #[tokio::test]
    async fn names_are_reserved_per_attempt() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, _) = pod(&rt).await;

        let err = rt.run_pod_sandbox(&sb_config, "").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{err:?}");
        let err = rt
            .create_container(&sb, &container_config("app", 0), &sb_config)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{err:?}");
        rt.create_container(&sb, &container_config("app", 1), &sb_config)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn containers_need_a_present_image_and_a_known_sandbox() {
        let rt = FakeRuntime::new();
        let sb_config = sandbox_config("web", true);
        let sb = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        assert_eq!(rt.pod_sandbox_status(&sb).await.unwrap().ip, None);

        let err = rt
            .create_container(&sb, &container_config("app", 0), &sb_config)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        rt.add_image(IMAGE);
        let err = rt
            .create_container("nope", &container_config("app", 0), &sb_config)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        rt.create_container(&sb, &container_config("app", 0), &sb_config)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn list_filters_by_id_prefix_state_sandbox_and_labels() {
        let rt = FakeRuntime::new();
        let (sb, sb_config, app) = pod(&rt).await;
        let side = rt
            .create_container(&sb, &container_config("side", 0), &sb_config)
            .await
            .unwrap();
        rt.start_container(&side).await.unwrap();
        let other_config = sandbox_config("db", false);
        let other = rt.run_pod_sandbox(&other_config, "").await.unwrap();
        rt.create_container(&other, &container_config("app", 0), &other_config)
            .await
            .unwrap();

        let ids = |list: Vec<Container>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
        let running = api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        assert_eq!(
            ids(rt.list_containers(Some(running)).await.unwrap()),
            [side.as_str()]
        );
        let in_pod = api::ContainerFilter {
            pod_sandbox_id: sb.clone(),
            label_selector: HashMap::from([("container".to_owned(), "app".to_owned())]),
            ..Default::default()
        };
        assert_eq!(
            ids(rt.list_containers(Some(in_pod)).await.unwrap()),
            [app.as_str()]
        );
        let by_prefix = api::ContainerFilter {
            id: app[..12].to_owned(),
            ..Default::default()
        };
        assert_eq!(
            ids(rt.list_containers(Some(by_prefix)).await.unwrap()),
            [app]
        );

        rt.stop_pod_sandbox(&other).await.unwrap();
        let ready = api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue {
                state: api::PodSandboxState::SandboxReady as i32,
            }),
            label_selector: HashMap::from([("app".to_owned(), "web".to_owned())]),
            ..Default::default()
        };
        let listed = rt.list_pod_sandboxes(Some(ready)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, sb);
        assert_eq!(listed[0].metadata.uid, "uid-web");
    }

    #[tokio::test]
    async fn injected_faults_fail_once_or_always() {
        let rt = FakeRuntime::new();
        rt.inject_once(Method::Version, Fault::Error(Code::Unavailable));
        let err = rt.version().await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(err.method(), Method::Version);
        assert!(err.to_string().contains("Version"), "{err}");
        assert_eq!(rt.version().await.unwrap().runtime_name, "fake");

        rt.inject(Method::ListContainers, Fault::Timeout);
        for _ in 0..2 {
            assert!(rt.list_containers(None).await.unwrap_err().is_timeout());
        }
        rt.clear_faults();
        assert!(rt.list_containers(None).await.unwrap().is_empty());
        assert_eq!(rt.call_count(Method::ListContainers), 3);
        assert_eq!(rt.calls().first(), Some(&Method::Version));
    }

    #[tokio::test]
    async fn hang_and_delay_faults() {
        let rt = FakeRuntime::new();
        rt.inject_once(Method::Status, Fault::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(50), rt.status()).await;
        assert!(hung.is_err(), "a hanging call answered: {hung:?}");
        assert!(rt.status().await.unwrap().runtime_ready());

        rt.inject_once(Method::Status, Fault::Delay(Duration::from_millis(30)));
        let started = std::time::Instant::now();
        rt.status().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn exec_runs_the_handler_in_running_containers_only() {
        let rt = FakeRuntime::new();
        let (_, _, c) = pod(&rt).await;
        let cmd = vec!["cat".to_owned(), "/tmp/ready".to_owned()];
        assert!(
            rt.exec_sync(&c, &cmd, Duration::from_secs(1))
                .await
                .is_err()
        );

        rt.start_container(&c).await.unwrap();
        assert_eq!(
            rt.exec_sync(&c, &cmd, Duration::from_secs(1))
                .await
                .unwrap(),
            ExecOutput::default()
        );
        rt.set_exec_handler(Arc::new(|_id: &str, cmd: &[String]| ExecOutput {
            stdout: cmd.join(" ").into_bytes(),
            stderr: Vec::new(),
            exit_code: 1,
        }));
        let out = rt
            .exec_sync(&c, &cmd, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.exit_code),
            (&b"cat /tmp/ready"[..], 1)
        );
    }

    #[tokio::test]
    async fn resources_update_until_exit() {
        let rt = FakeRuntime::new();
        let (_, _, c) = pod(&rt).await;
        rt.start_container(&c).await.unwrap();
        let limits = api::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        rt.update_container_resources(&c, &limits).await.unwrap();
        assert_eq!(rt.container_resources(&c), Some(limits.clone()));
        rt.reopen_container_log(&c).await.unwrap();
        rt.exit_container(&c, 0);
        assert!(rt.update_container_resources(&c, &limits).await.is_err());
        assert!(rt.reopen_container_log(&c).await.is_err());
    }

    #[tokio::test]
    async fn images_pull_list_status_remove() {
        let rt = FakeRuntime::new();
        assert_eq!(rt.image_status(IMAGE).await.unwrap(), None);
        let id = rt.pull_image(IMAGE, None, None).await.unwrap();
        let image = rt.image_status(IMAGE).await.unwrap().unwrap();
        assert_eq!(image.id, id);
        assert_eq!(
            rt.image_status(&id).await.unwrap().unwrap().repo_tags,
            [IMAGE]
        );
        assert_eq!(rt.list_images().await.unwrap().len(), 1);
        let fs = rt.image_fs_info().await.unwrap();
        assert_eq!(fs[0].used_bytes, Some(image.size_bytes));
        rt.remove_image(IMAGE).await.unwrap();
        rt.remove_image(IMAGE).await.unwrap();
        assert!(rt.list_images().await.unwrap().is_empty());
        assert_eq!(rt.image_fs_info().await.unwrap()[0].used_bytes, Some(0));
    }

    #[tokio::test]
    async fn conditions_can_be_changed() {
        let rt = FakeRuntime::new();
        let status = rt.status().await.unwrap();
        assert!(status.runtime_ready() && status.network_ready());
        rt.set_condition(
            RuntimeStatus::NETWORK_READY,
            false,
            "NetworkPluginNotReady",
            "no CNI",
        );
        let status = rt.status().await.unwrap();
        assert!(status.runtime_ready() && !status.network_ready());
        let network = status.condition(RuntimeStatus::NETWORK_READY).unwrap();
        assert_eq!(network.reason, "NetworkPluginNotReady");
    }
}
