//! Errors of the container runtime layer.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;

/// The CRI call an error (or an injected fault) belongs to, named as the CRI RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Version,
    Status,
    RunPodSandbox,
    StopPodSandbox,
    RemovePodSandbox,
    PodSandboxStatus,
    ListPodSandbox,
    CreateContainer,
    StartContainer,
    StopContainer,
    RemoveContainer,
    ContainerStatus,
    ListContainers,
    UpdateContainerResources,
    ReopenContainerLog,
    ExecSync,
    Exec,
    Attach,
    PortForward,
    ImageStatus,
    PullImage,
    ListImages,
    RemoveImage,
    ImageFsInfo,
}

impl Method {
    /// The kubelet's `operation_type` label for this call (its runtime metrics).
    pub fn operation_type(self) -> &'static str {
        match self {
            Method::Version => "version",
            Method::Status => "status",
            Method::RunPodSandbox => "run_podsandbox",
            Method::StopPodSandbox => "stop_podsandbox",
            Method::RemovePodSandbox => "remove_podsandbox",
            Method::PodSandboxStatus => "podsandbox_status",
            Method::ListPodSandbox => "list_podsandbox",
            Method::CreateContainer => "create_container",
            Method::StartContainer => "start_container",
            Method::StopContainer => "stop_container",
            Method::RemoveContainer => "remove_container",
            Method::ContainerStatus => "container_status",
            Method::ListContainers => "list_containers",
            Method::UpdateContainerResources => "update_container",
            Method::ReopenContainerLog => "reopen_container_log",
            Method::ExecSync => "exec_sync",
            Method::Exec => "exec",
            Method::Attach => "attach",
            Method::PortForward => "port_forward",
            Method::ImageStatus => "image_status",
            Method::PullImage => "pull_image",
            Method::ListImages => "list_images",
            Method::RemoveImage => "remove_image",
            Method::ImageFsInfo => "image_fs_info",
        }
    }

    /// The RPC name as the CRI `.proto` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Version => "Version",
            Method::Status => "Status",
            Method::RunPodSandbox => "RunPodSandbox",
            Method::StopPodSandbox => "StopPodSandbox",
            Method::RemovePodSandbox => "RemovePodSandbox",
            Method::PodSandboxStatus => "PodSandboxStatus",
            Method::ListPodSandbox => "ListPodSandbox",
            Method::CreateContainer => "CreateContainer",
            Method::StartContainer => "StartContainer",
            Method::StopContainer => "StopContainer",
            Method::RemoveContainer => "RemoveContainer",
            Method::ContainerStatus => "ContainerStatus",
            Method::ListContainers => "ListContainers",
            Method::UpdateContainerResources => "UpdateContainerResources",
            Method::ReopenContainerLog => "ReopenContainerLog",
            Method::ExecSync => "ExecSync",
            Method::Exec => "Exec",
            Method::Attach => "Attach",
            Method::PortForward => "PortForward",
            Method::ImageStatus => "ImageStatus",
            Method::PullImage => "PullImage",
            Method::ListImages => "ListImages",
            Method::RemoveImage => "RemoveImage",
            Method::ImageFsInfo => "ImageFsInfo",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call to the container runtime. Every variant names the CRI method and the
/// runtime's socket; the runtime's own answer, when there is one, is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Opening a connection to the runtime's socket failed (not running, wrong path, ...).
    #[error("CRI {method}: cannot connect to the container runtime at {}", socket.display())]
    Connect {
        method: Method,
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    /// The last connection attempt failed recently; this call was not sent. Callers may
    /// retry after `retry_in`; the next call after that reconnects.
    #[error(
        "CRI {method}: the container runtime at {} is unreachable; next connection attempt in {retry_in:?}",
        socket.display()
    )]
    Backoff {
        method: Method,
        socket: PathBuf,
        retry_in: Duration,
    },

    /// The connection broke during the call or could not be re-established (the runtime
    /// stopped or restarted; tonic reports both as transport errors or `Unavailable`). The
    /// runtime may or may not have executed the call; the next call reconnects.
    #[error("CRI {method}: lost the connection to the container runtime at {}", socket.display())]
    Disconnected {
        method: Method,
        socket: PathBuf,
        #[source]
        source: tonic::Status,
    },

    /// The runtime answered with a gRPC error.
    #[error("CRI {method} via {} failed", socket.display())]
    Call {
        method: Method,
        socket: PathBuf,
        #[source]
        source: tonic::Status,
    },

    /// No answer within the call's deadline. The runtime may still complete the call.
    #[error("CRI {method} via {} got no answer within {timeout:?}", socket.display())]
    Timeout {
        method: Method,
        socket: PathBuf,
        timeout: Duration,
    },

    /// The runtime answered, but without a field the CRI requires.
    #[error("CRI {method} via {}: the response has no {field}", socket.display())]
    MalformedResponse {
        method: Method,
        socket: PathBuf,
        field: &'static str,
    },
}

impl RuntimeError {
    /// The CRI method that failed.
    pub fn method(&self) -> Method {
        match self {
            RuntimeError::Connect { method, .. }
            | RuntimeError::Backoff { method, .. }
            | RuntimeError::Disconnected { method, .. }
            | RuntimeError::Call { method, .. }
            | RuntimeError::Timeout { method, .. }
            | RuntimeError::MalformedResponse { method, .. } => *method,
        }
    }

    /// The gRPC status code, when the runtime or the transport produced one.
    pub fn code(&self) -> Option<Code> {
        match self {
            RuntimeError::Call { source, .. } => Some(source.code()),
            RuntimeError::Timeout { .. } => Some(Code::DeadlineExceeded),
            RuntimeError::Connect { .. }
            | RuntimeError::Backoff { .. }
            | RuntimeError::Disconnected { .. } => Some(Code::Unavailable),
            RuntimeError::MalformedResponse { .. } => None,
        }
    }

    /// The runtime does not know the sandbox, container or image the call named.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// The runtime could not be reached (down, restarting, socket missing): the call was
    /// not executed, or its connection broke. Worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        self.code() == Some(Code::Unavailable)
    }

    /// The call ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.code() == Some(Code::DeadlineExceeded)
    }
}
