//! Pod admission, as upstream's kubelet admits a pod before its first sync: each check
//! either lets the pod in or rejects it with upstream's reason and message. A rejected pod
//! is never started; it shows phase `Failed` with that reason until its source drops it.
//!
//! Checks, in upstream's order (the first that refuses gives the reason):
//! 1. what bpflet can run ([`crate::model::validation`], `FailedValidation`: static pods
//!    were checked when their manifest was read, so this refuses API pods only);
//! 2. sysctls ([`super::sysctls`], `SysctlForbidden`);
//! 3. upstream's predicate admit handler: the pod's `kubernetes.io/os` label
//!    (`PodOSSelectorNodeLabelDoesNotMatch`) and `spec.os.name` (`PodOSNotSupported`) must
//!    say `linux`; then the general filter, which collects every failure and reports the
//!    first: resource fit against the node's allocatable beside the pods admitted before
//!    ([`fit`]: `OutOfpods`, `OutOfcpu`, `OutOfmemory`, `OutOfephemeral-storage`), the
//!    `nodeSelector` and required node affinity against the node's labels and name
//!    ([`affinity`]: `NodeAffinity`), `spec.nodeName` (`NodeName`), host ports in use
//!    (`NodePorts`), and, for pods that are not static, a `NoExecute` taint of the node
//!    that the pod does not tolerate (`TaintToleration`).
//!
//! The node's labels and taints are, in cluster mode, those of the Node object as the API
//! server holds them now ([`LiveNode`], published by the heartbeat's watch on the Node), so
//! `kubectl label node` and `kubectl taint node` apply to the pods admitted afterwards, as
//! upstream's admission reads its Node from the informer; running pods are not admitted
//! again. Before the Node is first seen (and after it is deleted), and in standalone mode,
//! they are the ones bpflet registers: `--node-labels` and the well-known labels, and
//! `registerWithTaints` (none in standalone mode). Where upstream lets a critical pod that
//! does not fit evict other pods to make room, bpflet rejects it like any other.
//!
//! Before admission, [`first_sight`] sets apart an API pod whose phase is terminal already
//! (it completed, or was rejected or evicted, before the agent restarted): as upstream's pod
//! workers do, it is taken as terminated and never started again.

pub mod affinity;
pub mod fit;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Taint};

pub use self::fit::Allocatable;
use super::sysctls::{REASON_FORBIDDEN, SysctlPolicy};

/// Upstream's reason for a pod over `maxPods`.
pub const REASON_OUT_OF_PODS: &str = "OutOfpods";
/// Upstream's reasons for a pod whose requests do not fit the node's allocatable.
pub const REASON_OUT_OF_CPU: &str = "OutOfcpu";
pub const REASON_OUT_OF_MEMORY: &str = "OutOfmemory";
pub const REASON_OUT_OF_EPHEMERAL_STORAGE: &str = "OutOfephemeral-storage";
/// Upstream's reasons for the scheduler predicates the kubelet runs again (the plugins'
/// names).
pub const REASON_NODE_AFFINITY: &str = "NodeAffinity";
pub const REASON_NODE_NAME: &str = "NodeName";
pub const REASON_NODE_PORTS: &str = "NodePorts";
pub const REASON_TAINT_TOLERATION: &str = "TaintToleration";
/// Upstream's reasons for a pod meant for another operating system.
pub const REASON_OS_SELECTOR: &str = "PodOSSelectorNodeLabelDoesNotMatch";
pub const REASON_OS_NOT_SUPPORTED: &str = "PodOSNotSupported";

/// The reason for a pod that fails bpflet's checks ([`crate::model::validation`]): the event
/// reason upstream's kubelet gives a pod from a source that it refuses to run (its config
/// sources' `FailedValidation`). Upstream trusts the API server's validation and has no
/// admission reason for this; bpflet refuses some fields the API server takes (named in the
/// message), so the pod must show why it will never run.
pub const REASON_FAILED_VALIDATION: &str = "FailedValidation";

/// Why a pod was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status reason and the event reason (`SysctlForbidden`, `OutOfpods`).
    pub reason: &'static str,
    /// What the event says; the status message is `Pod was rejected: <message>`.
    pub message: String,
}

impl Rejection {
    /// A scheduler predicate's failure, worded as upstream's `PredicateFailureError`.
    fn predicate(name: &'static str, description: &str) -> Self {
        Self {
            reason: name,
            message: format!("Predicate {name} failed: {description}"),
        }
    }
}

/// The node as admission matches pods against it. Built once by the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdmissionNode {
    /// `metadata.name`: `spec.nodeName` and `matchFields` on `metadata.name` compare to it.
    pub name: String,
    /// The labels the node registers with (see the module docs).
    pub labels: BTreeMap<String, String>,
    /// `registerWithTaints`.
    pub taints: Vec<Taint>,
    pub allocatable: Allocatable,
}

/// The labels and taints of the Node object as the API server holds them now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveNode {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl LiveNode {
    /// The labels and taints of `node`.
    #[must_use]
    pub fn of(node: &k8s_openapi::api::core::v1::Node) -> Self {
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        }
    }
}

impl AdmissionNode {
    /// This node with the Node object's current labels and taints in place of the
    /// registered ones.
    #[must_use]
    pub fn with_live(&self, live: &LiveNode) -> Self {
        Self {
            name: self.name.clone(),
            labels: live.labels.clone(),
            taints: live.taints.clone(),
            allocatable: self.allocatable,
        }
    }
}

/// What admission needs to know about the node.
#[derive(Debug, Clone, Copy)]
pub struct NodeState<'a> {
    pub sysctls: &'a SysctlPolicy,
    pub node: &'a AdmissionNode,
    /// Pods admitted before this one that have not been removed: their requests and host
    /// ports are taken, each counts against `maxPods`.
    pub admitted: &'a [Arc<Pod>],
}

/// How a pod seen for the first time is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Admitted,
    /// Never start it: it shows phase `Failed` with the rejection's reason.
    Rejected(Rejection),
    /// Its phase in the API server is `Succeeded` or `Failed` already: never start it
    /// again, stop whatever of it still runs, and keep the status it has.
    Terminal,
}

impl Admission {
    /// Whether the pod counts against the node's capacity (`maxPods`).
    #[must_use]
    pub const fn is_admitted(&self) -> bool {
        matches!(self, Self::Admitted)
    }
}

/// How to handle `pod`, seen for the first time on a node in `node`'s state: an API pod
/// whose phase is terminal is [`Admission::Terminal`] (upstream's pod workers mark such a
/// pod terminated at first sight and its admission skips it); any other pod goes through
/// [`admit`]. Static pods carry no status of record, so only API pods can be terminal.
#[must_use]
pub fn first_sight(pod: &Pod, node: &NodeState<'_>) -> Admission {
    if is_terminal_in_api(pod) {
        return Admission::Terminal;
    }
    match admit(pod, node) {
        Ok(()) => Admission::Admitted,
        Err(rejection) => Admission::Rejected(rejection),
    }
}

/// An API pod whose phase is `Succeeded` or `Failed`.
#[must_use]
pub fn is_terminal_in_api(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    crate::model::is_api_pod(pod) && matches!(phase, Some("Succeeded" | "Failed"))
}

/// Admits `pod` onto a node in `node`'s state.
///
/// # Errors
/// The first check that refuses it (see the module docs for the order).
pub fn admit(pod: &Pod, node: &NodeState<'_>) -> Result<(), Rejection> {
    crate::model::validation::validate_pod(pod).map_err(|(field, reason)| Rejection {
        reason: REASON_FAILED_VALIDATION,
        message: format!("{field}: {reason}"),
    })?;
    node.sysctls.admit(pod).map_err(|message| Rejection {
        reason: REASON_FORBIDDEN,
        message,
    })?;
    admit_os(pod)?;
    match general_filter(pod, node).into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// The kubelet's checks that the pod is meant for this operating system: its
/// `kubernetes.io/os` label (not its `nodeSelector`) and `spec.os.name`.
fn admit_os(pod: &Pod) -> Result<(), Rejection> {
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"));
    if label.is_some_and(|os| os != "linux") {
        return Err(Rejection {
            reason: REASON_OS_SELECTOR,
            message: "Failed to admit pod as the `kubernetes.io/os` label doesn't match node \
                      label"
                .to_owned(),
        });
    }
    let os = pod.spec.as_ref().and_then(|s| s.os.as_ref());
    if os.is_some_and(|os| os.name != "linux") {
        return Err(Rejection {
            reason: REASON_OS_NOT_SUPPORTED,
            message: "Failed to admit pod as the OS field doesn't match node OS".to_owned(),
        });
    }
    Ok(())
}

/// Upstream's `generalFilter`: every failure, in its order (resources, node affinity, node
/// name, host ports, then taints for pods that are not static).
fn general_filter(pod: &Pod, node: &NodeState<'_>) -> Vec<Rejection> {
    let mut failures: Vec<Rejection> =
        fit::insufficient(pod, node.admitted, &node.node.allocatable)
            .into_iter()
            .map(|short| Rejection {
                reason: short.reason(),
                message: short.message(),
            })
            .collect();
    if !affinity::matches_node(pod, &node.node.labels, &node.node.name) {
        failures.push(Rejection::predicate(
            REASON_NODE_AFFINITY,
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node_name.is_some_and(|n| !n.is_empty() && n != node.node.name) {
        failures.push(Rejection::predicate(
            REASON_NODE_NAME,
            "node(s) didn't match the requested node name",
        ));
    }
    if !fit::ports_fit(pod, node.admitted) {
        failures.push(Rejection::predicate(
            REASON_NODE_PORTS,
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    if !is_static(pod) && affinity::untolerated_taint(pod, &node.node.taints).is_some() {
        failures.push(Rejection::predicate(
            REASON_TAINT_TOLERATION,
            "node(s) had taints that the pod didn't tolerate",
        ));
    }
    failures
}

/// Upstream's `IsStaticPod`: a source annotation that is not `api`.
fn is_static(pod: &Pod) -> bool {
    let source = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::CONFIG_SOURCE_ANNOTATION));
    source.is_some_and(|s| s != "api")
}

#[cfg(test)]
mod tests;
