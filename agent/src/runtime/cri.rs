//! [`CriRuntime`]: the CRI `runtime.v1` client over a unix socket.
//!
//! One HTTP/2 connection is shared by every clone. It is opened on first use and dropped
//! when a call fails with a transport error (the runtime restarted, the socket vanished);
//! the next call reconnects. Failed connection attempts back off (100 ms doubling to 5 s):
//! calls made during the backoff fail at once with [`RuntimeError::Backoff`] instead of
//! queueing, like gRPC's fail-fast calls in the kubelet, so a relist loop sees a down
//! runtime within one period.
//!
//! A call whose connection broke is never re-sent: the runtime may have executed it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use tower::service_fn;

use super::api::image_service_client::ImageServiceClient;
use super::api::runtime_service_client::RuntimeServiceClient;
use super::{
    CRI_API_VERSION, Container, ContainerMetadata, ContainerRuntime, ContainerState,
    ContainerStatus, ExecOutput, FilesystemUsage, Image, Method, PodSandbox, PodSandboxStatus,
    Result, RuntimeCondition, RuntimeError, RuntimeStatus, SandboxMetadata, SandboxState,
    StreamOptions, Timestamp, VersionInfo, api, timestamp_from_nanos,
};

/// How long a call may take unless told otherwise: the kubelet's `runtimeRequestTimeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long opening the unix socket connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay after a failed connection attempt; doubles per failure up to the maximum.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How much longer than the command's own timeout an `ExecSync` call may take, for the
/// runtime to kill the command and answer. (The kubelet adds its whole request timeout,
/// 2 minutes, which lets a wedged runtime hold a probe worker that long.)
const EXEC_SYNC_GRACE: Duration = Duration::from_secs(2);
/// The kubelet's limit for CRI messages (a `ListContainers` on a busy node is large).
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The CRI client. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct CriRuntime {
    shared: Arc<Shared>,
    request_timeout: Duration,
    /// Counts every call (`kubelet_runtime_operations_*`).
    metrics: Option<crate::metrics::Metrics>,
}

#[derive(Debug)]
struct Shared {
    socket: PathBuf,
    conn: Mutex<Connection>,
}

#[derive(Debug, Default)]
struct Connection {
    channel: Option<Channel>,
    /// Bumped on every new channel, so a failure seen on an old channel cannot drop a new one.
    generation: u64,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// No attempt before this instant.
    retry_at: Option<Instant>,
}

impl CriRuntime {
    /// A client for the runtime at `socket`. Nothing is opened until the first call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        CriRuntime {
            shared: Arc::new(Shared {
                socket: socket.into(),
                conn: Mutex::new(Connection::default()),
            }),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            metrics: None,
        }
    }

    /// Counts this handle's calls (and those of handles derived from it) in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A client for the runtime at `socket`, checked with a `Version` call.
    pub async fn connect(socket: impl Into<PathBuf>) -> Result<Self> {
        let runtime = Self::new(socket);
        runtime.version().await?;
        Ok(runtime)
    }

    /// A handle on the same connection whose calls time out after `timeout`.
    #[must_use]
    pub fn with_request_timeout(&self, timeout: Duration) -> Self {
        CriRuntime {
            shared: Arc::clone(&self.shared),
            request_timeout: timeout,
            metrics: self.metrics.clone(),
        }
    }

    /// The runtime's socket.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// How long calls may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The current channel, connecting if there is none and the backoff allows it.
    async fn channel(&self, method: Method) -> Result<(u64, Channel)> {
        let mut conn = self.shared.conn.lock().await;
        if let Some(channel) = &conn.channel {
            return Ok((conn.generation, channel.clone()));
        }
        let now = Instant::now();
        if let Some(retry_at) = conn.retry_at
            && now < retry_at
        {
            return Err(RuntimeError::Backoff {
                method,
                socket: self.shared.socket.clone(),
                retry_in: retry_at - now,
            });
        }
        match open_channel(&self.shared.socket).await {
            Ok(channel) => {
                tracing::debug!(socket = %self.shared.socket.display(), "connected to the container runtime");
                conn.channel = Some(channel.clone());
                conn.generation += 1;
                conn.failures = 0;
                conn.retry_at = None;
                Ok((conn.generation, channel))
            }
            Err(source) => {
                let delay = backoff_delay(conn.failures);
                conn.failures = conn.failures.saturating_add(1);
                conn.retry_at = Some(Instant::now() + delay);
                Err(RuntimeError::Connect {
                    method,
                    socket: self.shared.socket.clone(),
                    source,
                })
            }
        }
    }

    /// Forgets the channel of `generation` after a transport failure: the next call reconnects.
    async fn disconnect(&self, generation: u64) {
        let mut conn = self.shared.conn.lock().await;
        if conn.generation == generation && conn.channel.take().is_some() {
            tracing::warn!(
                socket = %self.shared.socket.display(),
                "lost the connection to the container runtime; reconnecting on the next call"
            );
        }
    }

    /// Sends one unary call with a deadline of `timeout`.
    async fn call<Req, Resp, F, Fut>(
        &self,
        method: Method,
        timeout: Duration,
        message: Req,
        send: F,
    ) -> Result<Resp>
    where
        F: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let attempt = async {
            let (generation, channel) = self.channel(method).await?;
            let mut request = tonic::Request::new(message);
            // Tells the runtime the deadline (grpc-timeout) so it can give up too.
            request.set_timeout(timeout);
            match send(channel, request).await {
                Ok(response) => Ok(response.into_inner()),
                Err(status) if is_transport_failure(&status) => {
                    self.disconnect(generation).await;
                    Err(RuntimeError::Disconnected {
                        method,
                        socket: self.shared.socket.clone(),
                        source: status,
                    })
                }
                Err(status) => Err(RuntimeError::Call {
                    method,
                    socket: self.shared.socket.clone(),
                    source: status,
                }),
            }
        };
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(RuntimeError::Timeout {
                    method,
                    socket: self.shared.socket.clone(),
                    timeout,
                })
            });
        if let Some(m) = &self.metrics {
            m.runtime_operation(method.operation_type(), started.elapsed(), result.is_err());
        }
        result
    }

    fn malformed(&self, method: Method, field: &'static str) -> RuntimeError {
        RuntimeError::MalformedResponse {
            method,
            socket: self.shared.socket.clone(),
            field,
        }
    }

    /// The URL of a streaming call's answer; an empty one is malformed.
    fn streaming_url(&self, method: Method, url: String) -> Result<String> {
        if url.is_empty() {
            Err(self.malformed(method, "url"))
        } else {
            Ok(url)
        }
    }

    /// One `ContainerStatus` call; `verbose` adds the runtime's `info` map.
    async fn container_status_response(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<api::ContainerStatusResponse> {
        let message = api::ContainerStatusRequest {
            container_id: container_id.to_owned(),
            verbose,
        };
        self.call(
            Method::ContainerStatus,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).container_status(req).await },
        )
        .await
    }
}

fn runtime_client(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

fn image_client(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Opens an HTTP/2 connection over the unix socket. The URI is required by tonic and unused.
async fn open_channel(socket: &Path) -> std::result::Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::from_static("http://cri.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

/// 100 ms, 200 ms, 400 ms, ... capped at 5 s.
fn backoff_delay(failures: u32) -> Duration {
    BACKOFF_INITIAL
        .checked_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// The error came from the connection rather than from the runtime: the connection is
/// not worth keeping. A status the runtime sent has no source; one tonic made up from an
/// I/O or HTTP/2 error usually has, or says Unavailable.
fn is_transport_failure(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn created_at(nanos: i64) -> Timestamp {
    timestamp_from_nanos(nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn image_name(spec: Option<api::ImageSpec>) -> String {
    spec.map(|s| s.image).unwrap_or_default()
}

fn convert_sandbox(s: api::PodSandbox) -> PodSandbox {
    PodSandbox {
        id: s.id,
        metadata: s.metadata.map(SandboxMetadata::from).unwrap_or_default(),
        state: SandboxState::from_cri(s.state),
        created_at: created_at(s.created_at),
        labels: s.labels,
        annotations: s.annotations,
        runtime_handler: s.runtime_handler,
    }
}

fn convert_sandbox_status(s: api::PodSandboxStatus) -> PodSandboxStatus {
    let (ip, additional_ips) = match s.network {
        Some(network) => (
            Some(network.ip).filter(|ip| !ip.is_empty()),
            network.additional_ips.into_iter().map(|p| p.ip).collect(),
        ),
        None => (None, Vec::new()),
    };
    PodSandboxStatus {
        id: s.id,
        metadata: s.metadata.map(SandboxMetadata::from).unwrap_or_default(),
        state: SandboxState::from_cri(s.state),
        created_at: created_at(s.created_at),
        ip,
        additional_ips,
        labels: s.labels,
        annotations: s.annotations,
        runtime_handler: s.runtime_handler,
    }
}

fn convert_container(c: api::Container) -> Container {
    Container {
        id: c.id,
        pod_sandbox_id: c.pod_sandbox_id,
        metadata: c.metadata.map(ContainerMetadata::from).unwrap_or_default(),
        image: image_name(c.image),
        image_ref: c.image_ref,
        state: ContainerState::from_cri(c.state),
        created_at: created_at(c.created_at),
        labels: c.labels,
        annotations: c.annotations,
    }
}

fn convert_container_status(s: api::ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        id: s.id,
        metadata: s.metadata.map(ContainerMetadata::from).unwrap_or_default(),
        state: ContainerState::from_cri(s.state),
        created_at: created_at(s.created_at),
        started_at: timestamp_from_nanos(s.started_at),
        finished_at: timestamp_from_nanos(s.finished_at),
        exit_code: s.exit_code,
        image: image_name(s.image),
        image_ref: s.image_ref,
        reason: s.reason,
        message: s.message,
        labels: s.labels,
        annotations: s.annotations,
        log_path: s.log_path,
    }
}

/// The sandbox image named in a verbose `Status`'s `config` document.
fn sandbox_image_from_info(info: &HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    [
        config.get("sandboxImage"),
        config.pointer("/pinnedImages/sandbox"),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
}

/// The task's pid from a verbose `ContainerStatus`: containerd puts a JSON document under
/// `info["info"]` whose `pid` is the task's host pid, 0 when there is no task (created,
/// exited). Anything else (no such key, another runtime's shape) is `None`.
fn pid_from_verbose_info(info: &HashMap<String, String>) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Verbose {
        pid: Option<u32>,
    }
    let verbose: Verbose = serde_json::from_str(info.get("info")?).ok()?;
    verbose.pid.filter(|&pid| pid != 0)
}

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// Whole seconds for the CRI's `int64` second fields, rounded up so a sub-second grace
/// does not become "kill at once".
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl ContainerRuntime for CriRuntime {
    async fn version(&self) -> Result<VersionInfo> {
        let message = api::VersionRequest {
            version: CRI_API_VERSION.to_owned(),
        };
        let r = self
            .call(
                Method::Version,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).version(req).await },
            )
            .await?;
        Ok(VersionInfo {
            runtime_name: r.runtime_name,
            runtime_version: r.runtime_version,
            runtime_api_version: r.runtime_api_version,
        })
    }

    async fn status(&self) -> Result<RuntimeStatus> {
        let message = api::StatusRequest { verbose: false };
        let r = self
            .call(
                Method::Status,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).status(req).await },
            )
            .await?;
        let status = r
            .status
            .ok_or_else(|| self.malformed(Method::Status, "status"))?;
        Ok(RuntimeStatus {
            conditions: status
                .conditions
                .into_iter()
                .map(|c| RuntimeCondition {
                    kind: c.r#type,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let message = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: runtime_handler.to_owned(),
        };
        let r = self
            .call(
                Method::RunPodSandbox,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).run_pod_sandbox(req).await },
            )
            .await?;
        if r.pod_sandbox_id.is_empty() {
            return Err(self.malformed(Method::RunPodSandbox, "pod_sandbox_id"));
        }
        Ok(r.pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let message = api::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
        };
        self.call(
            Method::StopPodSandbox,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).stop_pod_sandbox(req).await },
        )
        .await?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let message = api::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
        };
        self.call(
            Method::RemovePodSandbox,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).remove_pod_sandbox(req).await },
        )
        .await?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, sandbox_id: &str) -> Result<PodSandboxStatus> {
        let message = api::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            verbose: false,
        };
        let r = self
            .call(
                Method::PodSandboxStatus,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).pod_sandbox_status(req).await },
            )
            .await?;
        let status = r
            .status
            .ok_or_else(|| self.malformed(Method::PodSandboxStatus, "status"))?;
        Ok(convert_sandbox_status(status))
    }

    async fn list_pod_sandboxes(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>> {
        let message = api::ListPodSandboxRequest { filter };
        let r = self
            .call(
                Method::ListPodSandbox,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).list_pod_sandbox(req).await },
            )
            .await?;
        Ok(r.items.into_iter().map(convert_sandbox).collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String> {
        let message = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let r = self
            .call(
                Method::CreateContainer,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).create_container(req).await },
            )
            .await?;
        if r.container_id.is_empty() {
            return Err(self.malformed(Method::CreateContainer, "container_id"));
        }
        Ok(r.container_id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let message = api::StartContainerRequest {
            container_id: container_id.to_owned(),
        };
        self.call(
            Method::StartContainer,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).start_container(req).await },
        )
        .await?;
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, grace: Duration) -> Result<()> {
        let message = api::StopContainerRequest {
            container_id: container_id.to_owned(),
            timeout: whole_seconds(grace),
        };
        // Like the kubelet: the grace period plus the usual allowance for the call.
        let deadline = self.request_timeout.saturating_add(grace);
        self.call(
            Method::StopContainer,
            deadline,
            message,
            |ch, req| async move { runtime_client(ch).stop_container(req).await },
        )
        .await?;
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let message = api::RemoveContainerRequest {
            container_id: container_id.to_owned(),
        };
        self.call(
            Method::RemoveContainer,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).remove_container(req).await },
        )
        .await?;
        Ok(())
    }

    async fn container_status(&self, container_id: &str) -> Result<ContainerStatus> {
        let status = self
            .container_status_response(container_id, false)
            .await?
            .status
            .ok_or_else(|| self.malformed(Method::ContainerStatus, "status"))?;
        Ok(convert_container_status(status))
    }

    async fn container_pid(&self, container_id: &str) -> Result<Option<u32>> {
        let r = self.container_status_response(container_id, true).await?;
        Ok(pid_from_verbose_info(&r.info))
    }

    async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<Container>> {
        let message = api::ListContainersRequest { filter };
        let r = self
            .call(
                Method::ListContainers,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).list_containers(req).await },
            )
            .await?;
        Ok(r.containers.into_iter().map(convert_container).collect())
    }

    async fn update_container_resources(
        &self,
        container_id: &str,
        resources: &api::LinuxContainerResources,
    ) -> Result<()> {
        let message = api::UpdateContainerResourcesRequest {
            container_id: container_id.to_owned(),
            linux: Some(resources.clone()),
            ..Default::default()
        };
        self.call(
            Method::UpdateContainerResources,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).update_container_resources(req).await },
        )
        .await?;
        Ok(())
    }

    async fn reopen_container_log(&self, container_id: &str) -> Result<()> {
        let message = api::ReopenContainerLogRequest {
            container_id: container_id.to_owned(),
        };
        self.call(
            Method::ReopenContainerLog,
            self.request_timeout,
            message,
            |ch, req| async move { runtime_client(ch).reopen_container_log(req).await },
        )
        .await?;
        Ok(())
    }

    /// The call's deadline is `timeout` plus 2 s for the runtime to kill the command and
    /// answer; with a zero `timeout` it is the request timeout.
    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let message = api::ExecSyncRequest {
            container_id: container_id.to_owned(),
            cmd: cmd.to_vec(),
            timeout: whole_seconds(timeout),
        };
        let deadline = if timeout.is_zero() {
            self.request_timeout
        } else {
            timeout.saturating_add(EXEC_SYNC_GRACE)
        };
        let r = self
            .call(Method::ExecSync, deadline, message, |ch, req| async move {
                runtime_client(ch).exec_sync(req).await
            })
            .await?;
        Ok(ExecOutput {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }

    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: StreamOptions,
    ) -> Result<String> {
        let message = api::ExecRequest {
            container_id: container_id.to_owned(),
            cmd: cmd.to_vec(),
            tty: streams.tty,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
        };
        let r = self
            .call(
                Method::Exec,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).exec(req).await },
            )
            .await?;
        self.streaming_url(Method::Exec, r.url)
    }

    async fn attach(&self, container_id: &str, streams: StreamOptions) -> Result<String> {
        let message = api::AttachRequest {
            container_id: container_id.to_owned(),
            stdin: streams.stdin,
            tty: streams.tty,
            stdout: streams.stdout,
            stderr: streams.stderr,
        };
        let r = self
            .call(
                Method::Attach,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).attach(req).await },
            )
            .await?;
        self.streaming_url(Method::Attach, r.url)
    }

    async fn port_forward(&self, sandbox_id: &str, ports: &[u16]) -> Result<String> {
        let message = api::PortForwardRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            port: ports.iter().map(|p| i32::from(*p)).collect(),
        };
        let r = self
            .call(
                Method::PortForward,
                self.request_timeout,
                message,
                |ch, req| async move { runtime_client(ch).port_forward(req).await },
            )
            .await?;
        self.streaming_url(Method::PortForward, r.url)
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let message = api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let r = self
            .call(
                Method::ImageStatus,
                self.request_timeout,
                message,
                |ch, req| async move { image_client(ch).image_status(req).await },
            )
            .await?;
        // The CRI answers "not present" with an empty image rather than an error.
        Ok(r.image.filter(|i| !i.id.is_empty()).map(Image::from))
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        sandbox_config: Option<&api::PodSandboxConfig>,
    ) -> Result<String> {
        let message = api::PullImageRequest {
            image: Some(image_spec(image)),
            auth: auth.cloned(),
            sandbox_config: sandbox_config.cloned(),
        };
        let r = self
            .call(
                Method::PullImage,
                self.request_timeout,
                message,
                |ch, req| async move { image_client(ch).pull_image(req).await },
            )
            .await?;
        if r.image_ref.is_empty() {
            return Err(self.malformed(Method::PullImage, "image_ref"));
        }
        Ok(r.image_ref)
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let message = api::ListImagesRequest { filter: None };
        let r = self
            .call(
                Method::ListImages,
                self.request_timeout,
                message,
                |ch, req| async move { image_client(ch).list_images(req).await },
            )
            .await?;
        Ok(r.images.into_iter().map(Image::from).collect())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let message = api::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.call(
            Method::RemoveImage,
            self.request_timeout,
            message,
            |ch, req| async move { image_client(ch).remove_image(req).await },
        )
        .await?;
        Ok(())
    }

    /// containerd's `Status` with `verbose` holds its CRI configuration as JSON under
    /// `config`: `sandboxImage` (1.6), or `pinnedImages.sandbox` where a version reports
    /// that (containerd 2 also pins the image itself).
    async fn sandbox_image(&self) -> Option<String> {
        let r = self
            .call(
                Method::Status,
                self.request_timeout,
                api::StatusRequest { verbose: true },
                |ch, req| async move { runtime_client(ch).status(req).await },
            )
            .await
            .ok()?;
        sandbox_image_from_info(&r.info)
    }

    async fn image_fs_info(&self) -> Result<Vec<FilesystemUsage>> {
        let r = self
            .call(
                Method::ImageFsInfo,
                self.request_timeout,
                api::ImageFsInfoRequest {},
                |ch, req| async move { image_client(ch).image_fs_info(req).await },
            )
            .await?;
        Ok(r.image_filesystems
            .into_iter()
            .map(|fs| FilesystemUsage {
                mountpoint: fs.fs_id.map(|id| id.mountpoint).unwrap_or_default(),
                used_bytes: fs.used_bytes.map(|v| v.value),
                inodes_used: fs.inodes_used.map(|v| v.value),
                timestamp: timestamp_from_nanos(fs.timestamp),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        let delays: Vec<u64> = (0..8)
            .map(|n| u64::try_from(backoff_delay(n).as_millis()).unwrap())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_delay(40), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn the_sandbox_image_comes_from_containerds_verbose_status() {
        let info = |json: &str| HashMap::from([("config".to_owned(), json.to_owned())]);
        assert_eq!(
            sandbox_image_from_info(&info(
                r#"{"containerd":{"snapshotter":"overlayfs"},"sandboxImage":"bpflet.local/pause:latest"}"#
            )),
            Some("bpflet.local/pause:latest".to_owned())
        );
        assert_eq!(
            sandbox_image_from_info(&info(
                r#"{"pinnedImages":{"sandbox":"registry.k8s.io/pause:3.10"}}"#
            )),
            Some("registry.k8s.io/pause:3.10".to_owned())
        );
        assert_eq!(
            sandbox_image_from_info(&info(r#"{"sandboxImage":""}"#)),
            None
        );
        assert_eq!(sandbox_image_from_info(&info("not json")), None);
        assert_eq!(sandbox_image_from_info(&HashMap::new()), None);
    }

    #[test]
    fn the_main_pid_comes_from_containerds_verbose_info() {
        let info = |json: &str| HashMap::from([("info".to_owned(), json.to_owned())]);
        assert_eq!(
            pid_from_verbose_info(&info(
                r#"{"sandboxID":"ab12","pid":4242,"removing":false,"runtimeSpec":{"ociVersion":"1.0.2"}}"#
            )),
            Some(4242)
        );
        assert_eq!(
            pid_from_verbose_info(&info(r#"{"sandboxID":"ab12","pid":0}"#)),
            None,
            "no task"
        );
        assert_eq!(
            pid_from_verbose_info(&info(r#"{"sandboxID":"ab12"}"#)),
            None
        );
        assert_eq!(pid_from_verbose_info(&info("not json")), None);
        assert_eq!(pid_from_verbose_info(&info(r#"{"pid":-1}"#)), None);
        assert_eq!(pid_from_verbose_info(&HashMap::new()), None, "not verbose");
    }

    #[test]
    fn grace_periods_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
        assert_eq!(whole_seconds(Duration::from_millis(30_500)), 31);
    }

    #[test]
    fn runtime_statuses_keep_the_connection_transport_errors_drop_it() {
        assert!(is_transport_failure(&Status::unavailable(
            "connection refused"
        )));
        assert!(!is_transport_failure(&Status::not_found(
            "no such container"
        )));
        assert!(!is_transport_failure(&Status::unknown("runtime said no")));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_transport_failure(&Status::from_error(Box::new(io))));
    }

    #[tokio::test]
    async fn a_missing_socket_fails_with_connect_then_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let runtime = CriRuntime::new(&socket);

        let first = runtime.version().await.unwrap_err();
        assert!(
            matches!(
                first,
                RuntimeError::Connect {
                    method: Method::Version,
                    ..
                }
            ),
            "{first:?}"
        );
        assert!(first.is_unavailable());
        let text = first.to_string();
        assert!(
            text.contains("Version") && text.contains("absent.sock"),
            "{text}"
        );

        let second = runtime.list_containers(None).await.unwrap_err();
        match second {
            RuntimeError::Backoff {
                method, retry_in, ..
            } => {
                assert_eq!(method, Method::ListContainers);
                assert!(retry_in <= BACKOFF_INITIAL, "{retry_in:?}");
            }
            other => panic!("expected a backoff error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_runtime_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mute.sock");
        // Accepts connections and never speaks HTTP/2: the handshake or call hangs.
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let runtime = CriRuntime::new(&socket).with_request_timeout(Duration::from_millis(200));
        let err = runtime.status().await.unwrap_err();
        assert!(err.is_timeout() || err.is_unavailable(), "{err:?}");
        hold.abort();
    }
}
