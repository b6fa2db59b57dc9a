//! The Kubernetes model: what the agent knows about the API objects it is given (Pod,
//! containers, resources, node conditions), as pure functions and types with no I/O.
//!
//! Everything else (pod sources, the CRI layer, cgroups, eviction, status) may depend on
//! this module, and it depends on none of them (`agent/tests/module_graph.rs` checks): it is
//! where a question about the API object itself is answered (its QoS class, its totals, its
//! grace period, whether a field is valid), whichever component asks.

pub mod container;
pub mod defaults;
pub mod downward;
pub mod node;
pub mod qos;
pub mod quantity;
pub mod validation;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// Which source defined a static pod (`file`, `http`); also what upstream reads to tell a
/// static pod from an API pod.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// A static pod's UID, as its source derived it.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// When the source first saw this version of a static pod.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";

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

/// A pod the API server bound to the node (`kubernetes.io/config.source: api`): its phase
/// in the API server is the record, and a terminal one is final.
#[must_use]
pub fn is_api_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s == "api")
}

/// The pod's UID (empty if unset).
#[must_use]
pub fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// The API server's `metadata.deletionGracePeriodSeconds` of a pod being deleted, else
/// `terminationGracePeriodSeconds`, default 30s (a negative value counts as 0).
#[must_use]
pub fn termination_grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    #[test]
    fn termination_grace_defaults_to_30s_and_floors_at_zero() {
        let pod = |grace| Pod {
            spec: Some(PodSpec {
                termination_grace_period_seconds: grace,
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(termination_grace(&pod(None)), Duration::from_secs(30));
        assert_eq!(termination_grace(&Pod::default()), Duration::from_secs(30));
        assert_eq!(termination_grace(&pod(Some(5))), Duration::from_secs(5));
        assert_eq!(termination_grace(&pod(Some(0))), Duration::ZERO);
        assert_eq!(termination_grace(&pod(Some(-1))), Duration::ZERO);
        let mut deleting = pod(Some(30));
        deleting.metadata.deletion_grace_period_seconds = Some(4);
        assert_eq!(
            termination_grace(&deleting),
            Duration::from_secs(4),
            "the deletion's grace (kubectl delete --grace-period) wins"
        );
    }
}
