//! Pods: static pod sources and manifests, CrashLoopBackOff, the pure lifecycle planner that
//! turns (desired spec, observed runtime state) into actions, and the workers that apply them.
//! What is about the API object itself (QoS, validation, defaults) lives in [`crate::model`].

pub mod admission;
pub mod backoff;
pub mod cri_config;
pub mod labels;
pub mod manager;
pub mod manifest;
pub mod objects;
pub mod observe;
pub mod plan;
pub mod source;
pub mod sysctls;
pub mod volumes;
pub mod worker;

pub use self::manifest::{ManifestError, ManifestOrigin, StaticPod};
pub use self::source::{PodUpdate, SourceKind};
/// `subPath` mounts are part of volumes; kept at this path for the root tests.
pub use self::volumes::subpath;
