//! Why a sync or a container start failed, and how each failure shows: the waiting reason,
//! the status message (the failing layer's own words) and the warning event.

use crate::model::container::WaitingReason;
use crate::pods::cri_config;
use crate::pods::objects::ObjectError;
use crate::pods::volumes::VolumeError;
use crate::runtime::RuntimeError;
/// Why a sync could not finish; the worker logs it and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime call for pod {pod}")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("pod cgroup for pod {pod}")]
    Cgroup {
        pod: String,
        #[source]
        source: crate::cgroups::CgroupError,
    },
    #[error("volumes of pod {pod}")]
    Volume {
        pod: String,
        #[source]
        source: VolumeError,
    },
    #[error("CRI config for pod {pod}")]
    Config {
        pod: String,
        #[source]
        source: cri_config::ConfigBuildError,
    },
    #[error("creating the sandbox of pod {pod}")]
    CreateSandbox {
        pod: String,
        #[source]
        source: RuntimeError,
    },
}

impl SyncError {
    /// The warning event upstream records for this failure, if any (a failed runtime
    /// listing or stop is the runtime's trouble, not the pod's).
    pub(super) fn event_reason(&self) -> Option<&'static str> {
        match self {
            SyncError::Volume { .. } => Some("FailedMount"),
            SyncError::Cgroup { .. } => Some("FailedCreatePodContainer"),
            SyncError::Config { .. } | SyncError::CreateSandbox { .. } => {
                Some("FailedCreatePodSandBox")
            }
            SyncError::Runtime { .. } => None,
        }
    }

    /// The event's message: the status message, after upstream's `Failed to create pod
    /// sandbox: ` for a sandbox that could not be made.
    pub(super) fn event_message(&self) -> String {
        match self {
            SyncError::Config { .. } | SyncError::CreateSandbox { .. } => {
                format!("Failed to create pod sandbox: {}", self.status_message())
            }
            _ => self.status_message(),
        }
    }

    /// The message the waiting containers and the event show: the runtime's own words for a
    /// runtime failure, the cause's otherwise.
    pub(super) fn status_message(&self) -> String {
        match self {
            SyncError::Runtime { source, .. } | SyncError::CreateSandbox { source, .. } => {
                runtime_message(source)
            }
            other => crate::error::error_chain(other),
        }
    }

    /// What the pod's containers that wait to be created show. Upstream shows
    /// `ContainerCreating` without a message for every pod-level failure; bpflet does for a
    /// mount that waits for the API server, names any other volume, cgroup or config failure
    /// `CreateContainerConfigError` (the containers' config cannot be prepared), and gives
    /// every one its cause as the message.
    pub(super) fn waiting_reason(&self) -> Option<WaitingReason> {
        match self {
            // A mount that waits for the API server (an object, a token): upstream's pod
            // stays `ContainerCreating` until it can mount.
            SyncError::Volume { source, .. } if source.is_set_up() => {
                Some(WaitingReason::ContainerCreating)
            }
            SyncError::Volume { .. } | SyncError::Cgroup { .. } | SyncError::Config { .. } => {
                Some(WaitingReason::CreateContainerConfigError)
            }
            SyncError::CreateSandbox { .. } => Some(WaitingReason::ContainerCreating),
            SyncError::Runtime { .. } => None,
        }
    }
}

/// Why one container could not be started. The worker shows it in the container's status,
/// records a warning event, and backs the container off; the pod's other containers go on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("container {container:?}: building its CRI config")]
    Config {
        container: String,
        #[source]
        source: cri_config::ConfigBuildError,
    },
    #[error("container {container:?}: reading what its environment names")]
    Objects {
        container: String,
        #[source]
        source: ObjectError,
    },
    #[error("container {container:?}: pinning a subPath")]
    SubPath {
        container: String,
        #[source]
        source: VolumeError,
    },
    #[error("container {container:?}: image {image:?} is not present with pull policy of Never")]
    ImageNeverPull { container: String, image: String },
    #[error("container {container:?}: pulling image {image:?}")]
    Pull {
        container: String,
        image: String,
        #[source]
        source: crate::images::PullError,
    },
    #[error("container {container:?}: asking the runtime for image {image:?}")]
    ImageInspect {
        container: String,
        image: String,
        #[source]
        source: RuntimeError,
    },
    #[error("container {container:?}: creating it")]
    Create {
        container: String,
        #[source]
        source: RuntimeError,
    },
    #[error("container {container:?}: starting it")]
    Start {
        container: String,
        #[source]
        source: RuntimeError,
    },
}

impl StartError {
    /// The container's waiting reason, as upstream names these failures.
    pub(super) fn reason(&self) -> WaitingReason {
        match self {
            StartError::Config { .. } | StartError::Objects { .. } | StartError::SubPath { .. } => {
                WaitingReason::CreateContainerConfigError
            }
            StartError::ImageNeverPull { .. } => WaitingReason::ErrImageNeverPull,
            StartError::Pull { .. } => WaitingReason::ErrImagePull,
            StartError::ImageInspect { .. } => WaitingReason::ImageInspectError,
            StartError::Create { .. } => WaitingReason::CreateContainerError,
            StartError::Start { .. } => WaitingReason::RunContainerError,
        }
    }

    /// The status message: what failed, in the words of the layer that failed (the
    /// runtime's own message where it gave one, as upstream shows it).
    pub(super) fn status_message(&self) -> String {
        match self {
            // A missing configMap or secret (or key): upstream's own words.
            StartError::Config {
                source: cri_config::ConfigBuildError::MissingObject { message, .. },
                ..
            } => message.clone(),
            StartError::Config { source, .. } => describe(source),
            StartError::Objects { source, .. } => describe(source),
            StartError::SubPath { source, .. } => describe(source),
            StartError::ImageNeverPull { image, .. } => {
                format!("Container image {image:?} is not present with pull policy of Never")
            }
            StartError::Pull { image, source, .. } => {
                let cause = match source.runtime_error() {
                    Some(e) => runtime_message(e),
                    None => source.to_string(),
                };
                format!("Failed to pull image {image:?}: {cause}")
            }
            StartError::ImageInspect { source, .. }
            | StartError::Create { source, .. }
            | StartError::Start { source, .. } => runtime_message(source),
        }
    }

    /// The warning event upstream records (the status message is its message).
    pub(super) fn event_reason(&self) -> &'static str {
        match self {
            StartError::ImageNeverPull { .. } => "ErrImageNeverPull",
            StartError::ImageInspect { .. } => "InspectFailed",
            _ => "Failed",
        }
    }
}

/// `e` and its causes, one sentence.
fn describe(e: &dyn std::error::Error) -> String {
    let chain = crate::error::error_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

/// The runtime's own message for a failed call (containerd's `failed to create containerd
/// task: ... exec: "/no/such/binary": ...`), or the whole error when it gave none.
fn runtime_message(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Call { source, .. } if !source.message().is_empty() => {
            source.message().to_owned()
        }
        other => describe(other),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    #[test]
    fn start_errors_name_their_reason_and_the_runtimes_message() {
        let runtime = |method| RuntimeError::Call {
            method,
            socket: PathBuf::from("/run/containerd.sock"),
            source: tonic::Status::unknown("exec: \"/no/such/binary\": no such file"),
        };
        let start = StartError::Start {
            container: "bad".to_owned(),
            source: runtime(crate::runtime::Method::StartContainer),
        };
        assert_eq!(start.reason(), WaitingReason::RunContainerError);
        assert_eq!(
            start.status_message(),
            "exec: \"/no/such/binary\": no such file"
        );
        assert_eq!(start.event_reason(), "Failed");
        let never = StartError::ImageNeverPull {
            container: "c".to_owned(),
            image: "x:1".to_owned(),
        };
        assert_eq!(never.reason(), WaitingReason::ErrImageNeverPull);
        assert_eq!(
            never.status_message(),
            "Container image \"x:1\" is not present with pull policy of Never"
        );
        assert_eq!(never.event_reason(), "ErrImageNeverPull");
        let pull = StartError::Pull {
            container: "c".to_owned(),
            image: "127.0.0.1:5000/x:1".to_owned(),
            source: crate::images::PullError::Runtime {
                image: "127.0.0.1:5000/x:1".to_owned(),
                source: std::sync::Arc::new(RuntimeError::Call {
                    method: crate::runtime::Method::PullImage,
                    socket: PathBuf::from("/s"),
                    source: tonic::Status::unknown("failed to resolve reference: 401 Unauthorized"),
                }),
            },
        };
        assert_eq!(pull.reason(), WaitingReason::ErrImagePull);
        assert_eq!(
            pull.status_message(),
            "Failed to pull image \"127.0.0.1:5000/x:1\": failed to resolve reference: 401 Unauthorized",
            "upstream's words around the runtime's own"
        );
        assert_eq!(pull.event_reason(), "Failed");
        let create = StartError::Create {
            container: "c".to_owned(),
            source: RuntimeError::Timeout {
                method: crate::runtime::Method::CreateContainer,
                socket: PathBuf::from("/s"),
                timeout: Duration::from_secs(2),
            },
        };
        let sandbox = SyncError::CreateSandbox {
            pod: "p".to_owned(),
            source: runtime(crate::runtime::Method::RunPodSandbox),
        };
        assert_eq!(
            sandbox.status_message(),
            "exec: \"/no/such/binary\": no such file"
        );
        assert_eq!(sandbox.event_reason(), Some("FailedCreatePodSandBox"));
        assert_eq!(
            sandbox.event_message(),
            "Failed to create pod sandbox: exec: \"/no/such/binary\": no such file"
        );
        assert_eq!(
            sandbox.waiting_reason(),
            Some(WaitingReason::ContainerCreating)
        );
        let volume = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::InvalidUid {
                uid: "..".to_owned(),
            },
        };
        assert_eq!(
            volume.status_message(),
            "invalid pod UID \"..\": must be one non-empty path component"
        );
        assert_eq!(volume.event_reason(), Some("FailedMount"));
        assert_eq!(
            volume.waiting_reason(),
            Some(WaitingReason::CreateContainerConfigError)
        );
        let mount = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::SetUp {
                volume: "cfg".to_owned(),
                reason: "configmap \"cfg\" not found".to_owned(),
            },
        };
        assert_eq!(
            mount.event_message(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found",
            "upstream's FailedMount message"
        );
        assert_eq!(mount.event_reason(), Some("FailedMount"));
        assert_eq!(
            mount.waiting_reason(),
            Some(WaitingReason::ContainerCreating),
            "upstream's pod waits in ContainerCreating for its volumes"
        );
        // A missing object shows upstream's words alone; a failed read names the object.
        let missing = StartError::Config {
            container: "c".to_owned(),
            source: cri_config::ConfigBuildError::MissingObject {
                pod: "p".to_owned(),
                container: "c".to_owned(),
                field: "envFrom[0].configMapRef".to_owned(),
                message: "configmap \"x\" not found".to_owned(),
            },
        };
        assert_eq!(missing.reason(), WaitingReason::CreateContainerConfigError);
        assert_eq!(missing.status_message(), "configmap \"x\" not found");
        let unreadable = StartError::Objects {
            container: "c".to_owned(),
            source: ObjectError::Timeout {
                kind: crate::pods::objects::ObjectKind::Secret,
                namespace: "ns".to_owned(),
                name: "s".to_owned(),
                after: Duration::from_secs(10),
            },
        };
        assert_eq!(
            unreadable.reason(),
            WaitingReason::CreateContainerConfigError
        );
        assert_eq!(
            unreadable.status_message(),
            "couldn't get secret ns/s: the API server did not answer within 10s"
        );
        assert_eq!(create.reason(), WaitingReason::CreateContainerError);
        assert!(
            create.status_message().contains("no answer within 2s"),
            "{}",
            create.status_message()
        );
    }
}
