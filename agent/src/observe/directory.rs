//! Who the runtime's pods are, for the observer: namespace, name and labels of each pod UID
//! and the name of each container id, from one listing of the runtime's sandboxes and
//! containers (any client's: the kubelet labels both with `io.kubernetes.*`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use crate::pods::labels;
use crate::runtime::{Container, PodSandbox};
use crate::stream::{PodDirectory, PodIdentity};

/// The name the pod's sandbox (pause) container goes by, as upstream's cAdvisor labels it.
pub const SANDBOX_CONTAINER: &str = "POD";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Creation time of the sandbox this came from (the newest one wins).
    created: i128,
}

/// One listing of the runtime, as pod identities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pods: HashMap<String, PodEntry>,
    /// Container (and sandbox) id -> (pod UID, container name).
    containers: HashMap<String, (String, String)>,
}

impl Snapshot {
    /// The pods of `sandboxes` and the names of `containers`. Objects without a pod UID
    /// label (not a pod's) are left out. Pure.
    #[must_use]
    pub fn from_listing(sandboxes: &[PodSandbox], containers: &[Container]) -> Self {
        let mut snapshot = Self::default();
        for sb in sandboxes {
            let Some(uid) = labels::pod_uid_from_labels(&sb.labels) else {
                continue;
            };
            let created = sb.created_at.as_nanosecond();
            if snapshot
                .pods
                .get(uid)
                .is_some_and(|known| known.created > created)
            {
                continue;
            }
            let pick = |meta: &str, label: Option<&str>| {
                if meta.is_empty() {
                    label.unwrap_or_default().to_owned()
                } else {
                    meta.to_owned()
                }
            };
            let entry = PodEntry {
                namespace: pick(
                    &sb.metadata.namespace,
                    labels::pod_namespace_from_labels(&sb.labels),
                ),
                name: pick(&sb.metadata.name, labels::pod_name_from_labels(&sb.labels)),
                // The pod's own labels: the kubelet (and bpflet) copy them onto the
                // sandbox beside their own keys.
                labels: sb
                    .labels
                    .iter()
                    .filter(|(k, _)| {
                        !k.starts_with("io.kubernetes.") && k.as_str() != labels::AGENT_LABEL
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                created,
            };
            snapshot.pods.insert(uid.to_owned(), entry);
            snapshot.containers.insert(
                sb.id.clone(),
                (uid.to_owned(), SANDBOX_CONTAINER.to_owned()),
            );
        }
        for c in containers {
            let Some(uid) = labels::pod_uid_from_labels(&c.labels) else {
                continue;
            };
            let name = labels::container_name_from_labels(&c.labels).unwrap_or(&c.metadata.name);
            snapshot
                .containers
                .insert(c.id.clone(), (uid.to_owned(), name.to_owned()));
        }
        snapshot
    }

    /// Pod UIDs in this snapshot.
    #[must_use]
    pub fn uids(&self) -> HashSet<&str> {
        self.pods.keys().map(String::as_str).collect()
    }
}

/// The last [`Snapshot`], shared by the observer's loop (which replaces it) and the event
/// stream (which names events' pods from it). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RuntimeDirectory {
    inner: Arc<RwLock<Snapshot>>,
}

impl RuntimeDirectory {
    /// Replaces the snapshot; returns the UIDs of the pods that are no longer listed.
    pub fn replace(&self, snapshot: Snapshot) -> Vec<String> {
        let mut current = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let gone = current
            .pods
            .keys()
            .filter(|uid| !snapshot.pods.contains_key(*uid))
            .cloned()
            .collect();
        *current = snapshot;
        gone
    }

    /// Whether the pod `uid` is known, and the container too when one is named.
    #[must_use]
    pub fn knows(&self, uid: &str, container_id: Option<&str>) -> bool {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        s.pods.contains_key(uid) && container_id.is_none_or(|c| s.containers.contains_key(c))
    }
}

impl PodDirectory for RuntimeDirectory {
    fn lookup(&self, uid: &str, container_id: Option<&str>) -> Option<PodIdentity> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let pod = s.pods.get(uid)?;
        let container_name = container_id
            .and_then(|id| s.containers.get(id))
            .filter(|(owner, _)| owner == uid)
            .map(|(_, name)| name.clone());
        Some(PodIdentity {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: uid.to_owned(),
            container_name,
            labels: pod.labels.clone(),
        })
    }

    fn exists(&self, uid: &str) -> bool {
        self.knows(uid, None)
    }

    fn find(&self, namespace: &str, name: &str) -> Option<String> {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        s.pods
            .iter()
            .find(|(_, p)| p.namespace == namespace && p.name == name)
            .map(|(uid, _)| uid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        ContainerMetadata, ContainerState, SandboxMetadata, SandboxState, Timestamp,
    };

    fn sandbox(id: &str, uid: &str, name: &str, created: i64) -> PodSandbox {
        PodSandbox {
            id: id.to_owned(),
            metadata: SandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: "team".to_owned(),
                attempt: 0,
            },
            state: SandboxState::Ready,
            created_at: Timestamp::from_second(created).unwrap(),
            labels: HashMap::from([
                (labels::POD_UID_LABEL.to_owned(), uid.to_owned()),
                (labels::POD_NAME_LABEL.to_owned(), name.to_owned()),
                (labels::POD_NAMESPACE_LABEL.to_owned(), "team".to_owned()),
                ("app".to_owned(), "web".to_owned()),
            ]),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
        }
    }

    fn container(id: &str, uid: &str, name: &str) -> Container {
        Container {
            id: id.to_owned(),
            pod_sandbox_id: "sb".to_owned(),
            metadata: ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            },
            image: String::new(),
            image_ref: String::new(),
            state: ContainerState::Running,
            created_at: Timestamp::from_second(1).unwrap(),
            labels: HashMap::from([
                (labels::POD_UID_LABEL.to_owned(), uid.to_owned()),
                (labels::CONTAINER_NAME_LABEL.to_owned(), name.to_owned()),
            ]),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn pods_and_containers_are_named_from_the_kubelets_labels() {
        let mut unlabelled = container("c9", "x", "x");
        unlabelled.labels.clear();
        let snapshot = Snapshot::from_listing(
            &[
                sandbox("sb-old", "u1", "web-old", 1),
                sandbox("sb-new", "u1", "web", 2),
            ],
            &[container("c1", "u1", "app"), unlabelled],
        );
        let dir = RuntimeDirectory::default();
        assert!(dir.replace(snapshot).is_empty());
        let who = dir.lookup("u1", Some("c1")).expect("known");
        assert_eq!(
            (
                who.namespace.as_str(),
                who.name.as_str(),
                who.container_name.as_deref()
            ),
            ("team", "web", Some("app")),
            "the newest sandbox names the pod"
        );
        assert_eq!(
            who.labels,
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
        assert_eq!(
            dir.lookup("u1", Some("sb-new"))
                .and_then(|w| w.container_name),
            Some(SANDBOX_CONTAINER.to_owned())
        );
        assert_eq!(
            dir.lookup("u1", Some("c9")).and_then(|w| w.container_name),
            None
        );
        assert!(dir.knows("u1", Some("c1")) && !dir.knows("u1", Some("c2")));
        assert_eq!(dir.find("team", "web").as_deref(), Some("u1"));

        let gone = dir.replace(Snapshot::from_listing(
            &[sandbox("sb2", "u2", "db", 3)],
            &[],
        ));
        assert_eq!(gone, ["u1"], "a pod no longer listed is reported gone");
        assert!(!dir.exists("u1") && dir.exists("u2"));
    }
}
