//! The labels and annotations the agent puts on CRI sandboxes and containers, and the
//! inverse functions that read them back.
//!
//! After a restart the agent knows nothing but what the runtime reports, so everything it
//! needs to rebuild its view travels on the runtime objects, under upstream's keys:
//! - labels (the runtime can filter on them): pod name, namespace, UID; container name;
//! - annotations (opaque to the runtime): the container's spec hash, restart count,
//!   termination message path and policy, the pod's termination and deletion grace
//!   periods, the preStop handler and the ports (JSON), so a container whose pod spec is
//!   gone can still be stopped properly.
//!
//! A sandbox carries the pod's own labels too (under the agent's keys, which win on a
//! clash); a container carries only the agent's.
//!
//! Every sandbox and container the agent creates also carries its mark ([`AgentMark`],
//! label [`AGENT_LABEL`]: the agent's root directory). A containerd may be shared with an
//! upstream kubelet, crictl or another bpflet with another root directory: their objects
//! carry the same `io.kubernetes.*` labels, so the pod UID label alone does not say whose a
//! sandbox is. Adoption, the orphan clean-up, the container GC, log rotation and disk
//! reclaim select by the mark and touch nothing else.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, ContainerPort, LifecycleHandler, Pod};

use super::plan::container_hash;

pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

pub const CONTAINER_HASH_ANNOTATION: &str = "io.kubernetes.container.hash";
pub const CONTAINER_RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";
pub const CONTAINER_TERMINATION_MESSAGE_PATH_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePath";
pub const CONTAINER_TERMINATION_MESSAGE_POLICY_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePolicy";
pub const CONTAINER_PRE_STOP_HANDLER_ANNOTATION: &str = "io.kubernetes.container.preStopHandler";
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";
pub const POD_TERMINATION_GRACE_PERIOD_ANNOTATION: &str =
    "io.kubernetes.pod.terminationGracePeriod";
pub const POD_DELETION_GRACE_PERIOD_ANNOTATION: &str = "io.kubernetes.pod.deletionGracePeriod";

type Map = HashMap<String, String>;

/// The label that marks the sandboxes and containers an agent created; its value is the
/// agent's [`AgentMark`].
pub const AGENT_LABEL: &str = "io.bpflet.root-dir";

/// Whose sandboxes and containers these are: the agent's root directory (`--root-dir`), as
/// the configuration gives it, without trailing slashes. Two agents on one runtime need two
/// root directories (their pods' volumes live there), so the root directory tells them
/// apart, and an agent restarted on the same root directory adopts what it made. The node
/// name does not: nodes of a test bed (and a renamed host) share or change it.
///
/// Sandboxes made by a bpflet older than the mark carry none: this agent neither adopts
/// nor removes them (see the README's upgrade note).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentMark(String);

impl AgentMark {
    /// The mark of the agent whose root directory is `root_dir`.
    #[must_use]
    pub fn for_root_dir(root_dir: &Path) -> Self {
        let text = root_dir.to_string_lossy();
        let trimmed = text.trim_end_matches('/');
        Self(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        })
    }

    /// The label's value.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.0
    }

    /// Whether `labels` (of a sandbox or container) carry this mark.
    #[must_use]
    pub fn is_on(&self, labels: &Map) -> bool {
        labels.get(AGENT_LABEL).is_some_and(|v| *v == self.0)
    }

    /// Puts the mark on `labels` (a config about to be created).
    pub fn apply(&self, labels: &mut Map) {
        labels.insert(AGENT_LABEL.to_owned(), self.0.clone());
    }

    /// The mark unit tests put on what they create in the fake runtime.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn for_tests() -> Self {
        Self::for_root_dir(Path::new("/var/lib/bpflet-test"))
    }

    /// A CRI label selector for this agent's objects, of pod `uid` when given.
    #[must_use]
    pub fn selector(&self, uid: Option<&str>) -> Map {
        let mut selector = Map::from([(AGENT_LABEL.to_owned(), self.0.clone())]);
        if let Some(uid) = uid {
            selector.insert(POD_UID_LABEL.to_owned(), uid.to_owned());
        }
        selector
    }
}

/// An annotation the agent wrote that does not parse back.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("annotation {key}={value:?}: expected {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("annotation {key}: invalid JSON")]
    Json {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The labels of a pod's sandbox: the pod's own labels plus name, namespace and UID.
#[must_use]
pub fn sandbox_labels(pod: &Pod) -> Map {
    let mut labels: Map = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(pod_identity_labels(pod));
    labels
}

/// The annotations of a pod's sandbox: the pod's own.
#[must_use]
pub fn sandbox_annotations(pod: &Pod) -> Map {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn pod_identity_labels(pod: &Pod) -> [(String, String); 3] {
    let meta = &pod.metadata;
    let get = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        (POD_NAME_LABEL.to_owned(), get(&meta.name)),
        (POD_NAMESPACE_LABEL.to_owned(), get(&meta.namespace)),
        (POD_UID_LABEL.to_owned(), get(&meta.uid)),
    ]
}

/// The labels of a container: its name and its pod's name, namespace and UID.
#[must_use]
pub fn container_labels(pod: &Pod, container: &Container) -> Map {
    let mut labels: Map = pod_identity_labels(pod).into_iter().collect();
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());
    labels
}

/// The annotations of a container created as attempt `restart_count`.
///
/// # Errors
/// Only if the preStop handler or the ports cannot be encoded as JSON, which does not
/// happen for decoded pods.
pub fn container_annotations(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
) -> Result<Map, LabelError> {
    let mut a = Map::new();
    a.insert(
        CONTAINER_HASH_ANNOTATION.to_owned(),
        container_hash(container),
    );
    a.insert(
        CONTAINER_RESTART_COUNT_ANNOTATION.to_owned(),
        restart_count.to_string(),
    );
    if let Some(path) = &container.termination_message_path {
        a.insert(
            CONTAINER_TERMINATION_MESSAGE_PATH_ANNOTATION.to_owned(),
            path.clone(),
        );
    }
    if let Some(policy) = &container.termination_message_policy {
        a.insert(
            CONTAINER_TERMINATION_MESSAGE_POLICY_ANNOTATION.to_owned(),
            policy.clone(),
        );
    }
    if let Some(grace) = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
    {
        a.insert(
            POD_TERMINATION_GRACE_PERIOD_ANNOTATION.to_owned(),
            grace.to_string(),
        );
    }
    if let Some(grace) = pod.metadata.deletion_grace_period_seconds {
        a.insert(
            POD_DELETION_GRACE_PERIOD_ANNOTATION.to_owned(),
            grace.to_string(),
        );
    }
    if let Some(pre_stop) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        let json = serde_json::to_string(pre_stop).map_err(|source| LabelError::Json {
            key: CONTAINER_PRE_STOP_HANDLER_ANNOTATION,
            source,
        })?;
        a.insert(CONTAINER_PRE_STOP_HANDLER_ANNOTATION.to_owned(), json);
    }
    if let Some(ports) = container.ports.as_ref().filter(|p| !p.is_empty()) {
        let json = serde_json::to_string(ports).map_err(|source| LabelError::Json {
            key: CONTAINER_PORTS_ANNOTATION,
            source,
        })?;
        a.insert(CONTAINER_PORTS_ANNOTATION.to_owned(), json);
    }
    Ok(a)
}

fn non_empty<'a>(map: &'a Map, key: &str) -> Option<&'a str> {
    map.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// The pod UID a sandbox or container was labelled with.
#[must_use]
pub fn pod_uid_from_labels(labels: &Map) -> Option<&str> {
    non_empty(labels, POD_UID_LABEL)
}

/// The pod name a sandbox or container was labelled with.
#[must_use]
pub fn pod_name_from_labels(labels: &Map) -> Option<&str> {
    non_empty(labels, POD_NAME_LABEL)
}

/// The pod namespace a sandbox or container was labelled with.
#[must_use]
pub fn pod_namespace_from_labels(labels: &Map) -> Option<&str> {
    non_empty(labels, POD_NAMESPACE_LABEL)
}

/// The container name a container was labelled with.
#[must_use]
pub fn container_name_from_labels(labels: &Map) -> Option<&str> {
    non_empty(labels, CONTAINER_NAME_LABEL)
}

/// The spec hash ([`container_hash`]) a container was created from.
#[must_use]
pub fn container_hash_from_annotations(annotations: &Map) -> Option<&str> {
    non_empty(annotations, CONTAINER_HASH_ANNOTATION)
}

/// The restart count (attempt) a container was created as; `Ok(None)` when absent.
///
/// # Errors
/// [`LabelError::Invalid`] when the annotation is not a non-negative integer.
pub fn restart_count_from_annotations(annotations: &Map) -> Result<Option<u32>, LabelError> {
    parse_number(
        annotations,
        CONTAINER_RESTART_COUNT_ANNOTATION,
        "a non-negative integer",
    )
}

/// The pod's `terminationGracePeriodSeconds` when the container was created; `Ok(None)`
/// when absent.
///
/// # Errors
/// [`LabelError::Invalid`] when the annotation is not an integer.
pub fn termination_grace_from_annotations(annotations: &Map) -> Result<Option<i64>, LabelError> {
    parse_number(
        annotations,
        POD_TERMINATION_GRACE_PERIOD_ANNOTATION,
        "an integer",
    )
}

fn parse_number<T: std::str::FromStr>(
    map: &Map,
    key: &'static str,
    expected: &'static str,
) -> Result<Option<T>, LabelError> {
    let Some(value) = map.get(key) else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| LabelError::Invalid {
        key,
        value: value.clone(),
        expected,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    map: &Map,
    key: &'static str,
) -> Result<Option<T>, LabelError> {
    map.get(key)
        .map(|v| serde_json::from_str(v))
        .transpose()
        .map_err(|source| LabelError::Json { key, source })
}

/// Which pod and container a runtime object belongs to, from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIdentity {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub container_name: String,
}

impl ContainerIdentity {
    /// `None` unless every label is present and non-empty: such a container was not made
    /// by this agent (or by a kubelet).
    #[must_use]
    pub fn from_labels(labels: &Map) -> Option<Self> {
        Some(Self {
            pod_name: pod_name_from_labels(labels)?.to_owned(),
            pod_namespace: pod_namespace_from_labels(labels)?.to_owned(),
            pod_uid: pod_uid_from_labels(labels)?.to_owned(),
            container_name: container_name_from_labels(labels)?.to_owned(),
        })
    }
}

/// Everything [`container_annotations`] recorded, read back. Absent annotations are `None`
/// (a restart count of 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerAnnotations {
    pub hash: Option<String>,
    pub restart_count: u32,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
    pub pod_termination_grace_seconds: Option<i64>,
    pub pod_deletion_grace_seconds: Option<i64>,
    pub pre_stop: Option<LifecycleHandler>,
    pub ports: Vec<ContainerPort>,
}

impl ContainerAnnotations {
    /// Parses a container's annotations.
    ///
    /// # Errors
    /// [`LabelError`] naming the first annotation that is present but malformed.
    pub fn parse(annotations: &Map) -> Result<Self, LabelError> {
        Ok(Self {
            hash: container_hash_from_annotations(annotations).map(str::to_owned),
            restart_count: restart_count_from_annotations(annotations)?.unwrap_or(0),
            termination_message_path: non_empty(
                annotations,
                CONTAINER_TERMINATION_MESSAGE_PATH_ANNOTATION,
            )
            .map(str::to_owned),
            termination_message_policy: non_empty(
                annotations,
                CONTAINER_TERMINATION_MESSAGE_POLICY_ANNOTATION,
            )
            .map(str::to_owned),
            pod_termination_grace_seconds: termination_grace_from_annotations(annotations)?,
            pod_deletion_grace_seconds: parse_number(
                annotations,
                POD_DELETION_GRACE_PERIOD_ANNOTATION,
                "an integer",
            )?,
            pre_stop: parse_json(annotations, CONTAINER_PRE_STOP_HANDLER_ANNOTATION)?,
            ports: parse_json(annotations, CONTAINER_PORTS_ANNOTATION)?.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests;
