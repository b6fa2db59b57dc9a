//! Container status vocabulary: the reasons a waiting container shows
//! (`v1.ContainerStateWaiting.reason`), as upstream spells them.

use std::fmt;

/// Why a container is waiting (not running and not terminated for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitingReason {
    ContainerCreating,
    PodInitializing,
    CrashLoopBackOff,
    /// The container's config could not be built (a volume, an env source, ...).
    CreateContainerConfigError,
    /// The runtime refused to create the container.
    CreateContainerError,
    /// The runtime created the container but could not start it.
    RunContainerError,
    /// The image is missing and `imagePullPolicy` is `Never`.
    ErrImageNeverPull,
    /// The image is missing and could not be pulled.
    ErrImagePull,
    /// Backing off after [`Self::ErrImagePull`].
    ImagePullBackOff,
    /// The runtime could not say whether it has the image.
    ImageInspectError,
}

impl WaitingReason {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ContainerCreating => "ContainerCreating",
            Self::PodInitializing => "PodInitializing",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::CreateContainerConfigError => "CreateContainerConfigError",
            Self::CreateContainerError => "CreateContainerError",
            Self::RunContainerError => "RunContainerError",
            Self::ErrImageNeverPull => "ErrImageNeverPull",
            Self::ErrImagePull => "ErrImagePull",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::ImageInspectError => "ImageInspectError",
        }
    }

    /// The reason a container shows while it backs off after a start that failed this way.
    #[must_use]
    pub const fn while_backing_off(self) -> Self {
        match self {
            Self::CreateContainerError | Self::RunContainerError => Self::CrashLoopBackOff,
            Self::ErrImagePull => Self::ImagePullBackOff,
            other => other,
        }
    }
}

impl fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
