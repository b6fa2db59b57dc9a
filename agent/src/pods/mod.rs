//! Pods: the static pod model and its sources, QoS arithmetic, CrashLoopBackOff, and the
//! pure lifecycle planner that turns (desired spec, observed runtime state) into actions.

pub mod admission;
pub mod backoff;
pub mod cri_config;
pub mod labels;
pub mod manager;
pub mod manifest;
pub mod observe;
pub mod plan;
pub mod qos;
pub mod source;
pub mod subpath;
pub mod sysctls;
pub mod volumes;
pub mod worker;

use k8s_openapi::api::core::v1::Pod;

pub use self::manifest::{ManifestError, ManifestOrigin, StaticPod};
pub use self::source::{PodUpdate, SourceKind};

/// `<name>_<namespace>`: the pod's full name, unique on a node (upstream `GetPodFullName`).
#[must_use]
pub fn pod_full_name(pod: &Pod) -> String {
    format!(
        "{}_{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default()
    )
}

/// `<name>_<namespace>(<uid>)`: how upstream names a pod in messages (`format.Pod`).
#[must_use]
pub fn format_pod(pod: &Pod) -> String {
    format!(
        "{}({})",
        pod_full_name(pod),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The pod's UID (empty if unset).
#[must_use]
pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}
