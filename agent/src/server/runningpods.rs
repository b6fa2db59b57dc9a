//! `GET /runningpods/`: the pods the container runtime runs, not the pods the agent wants,
//! as upstream's kubelet lists them (its runtime cache's `GetPods(all=false)` through
//! `Pod.ToAPIPod`): a `v1.PodList` whose items carry only `metadata.name`, `namespace` and
//! `uid`, and `spec.containers[].name` and `image`.
//!
//! A pod is listed when it has a ready sandbox or a running container. Its name, namespace
//! and uid come from the sandbox's metadata; a running container whose sandbox is not
//! ready is placed by its own pod labels. Containers are the running ones, by their CRI
//! name and image.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;

use crate::pods::labels::{POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL};
use crate::runtime::{
    Container, ContainerRuntime, ContainerState, PodSandbox, RuntimeError, SandboxState,
};

/// What the runtime lists: its sandboxes and its containers.
pub type RuntimeListing = (Vec<PodSandbox>, Vec<Container>);

/// The runtime, as `/runningpods/` sees it (object safe, so the server holds any runtime).
pub trait RuntimePods: Send + Sync {
    /// Every sandbox and container the runtime has.
    fn sandboxes_and_containers(&self) -> BoxFuture<'_, Result<RuntimeListing, RuntimeError>>;
}

impl<R: ContainerRuntime> RuntimePods for R {
    fn sandboxes_and_containers(&self) -> BoxFuture<'_, Result<RuntimeListing, RuntimeError>> {
        Box::pin(async move {
            let sandboxes = self.list_pod_sandboxes(None).await?;
            let containers = self.list_containers(None).await?;
            Ok((sandboxes, containers))
        })
    }
}

/// The route, served when the API has a runtime (404 without, as every unknown path).
pub fn routes(runtime: Option<Arc<dyn RuntimePods>>) -> Router {
    match runtime {
        Some(runtime) => Router::new()
            .route("/runningpods/", get(running_pods))
            .with_state(runtime),
        None => Router::new(),
    }
}

async fn running_pods(State(runtime): State<Arc<dyn RuntimePods>>) -> Response {
    match runtime.sandboxes_and_containers().await {
        Ok((sandboxes, containers)) => (
            [(header::CONTENT_TYPE, "application/json")],
            pod_list(&sandboxes, &containers).to_string(),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the runtime's pods for /runningpods/");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: cannot list the runtime's pods: {e}\n"),
            )
                .into_response()
        }
    }
}

#[derive(Default)]
struct RunningPod<'a> {
    name: &'a str,
    namespace: &'a str,
    containers: Vec<&'a Container>,
}

/// The `v1.PodList` for what the runtime listed, pods ordered by namespace, name and uid,
/// containers by name.
#[must_use]
pub fn pod_list(sandboxes: &[PodSandbox], containers: &[Container]) -> serde_json::Value {
    let mut pods: BTreeMap<&str, RunningPod<'_>> = BTreeMap::new();
    for s in sandboxes.iter().filter(|s| s.state == SandboxState::Ready) {
        pods.entry(s.metadata.uid.as_str())
            .or_insert_with(|| RunningPod {
                name: &s.metadata.name,
                namespace: &s.metadata.namespace,
                containers: Vec::new(),
            });
    }
    for c in containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
    {
        let label = |key: &str| c.labels.get(key).map_or("", String::as_str);
        pods.entry(label(POD_UID_LABEL))
            .or_insert_with(|| RunningPod {
                name: label(POD_NAME_LABEL),
                namespace: label(POD_NAMESPACE_LABEL),
                containers: Vec::new(),
            })
            .containers
            .push(c);
    }
    let mut pods: Vec<(&str, RunningPod<'_>)> = pods.into_iter().collect();
    pods.sort_by(|(a_uid, a), (b_uid, b)| {
        (a.namespace, a.name, a_uid).cmp(&(b.namespace, b.name, b_uid))
    });
    let items: Vec<serde_json::Value> = pods
        .into_iter()
        .map(|(uid, mut pod)| {
            pod.containers
                .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            // Go's encoding of a v1.Pod with only these fields set (zero-valued structs,
            // a null time and, for a pod without running containers, a null list, as
            // upstream's JSON has them).
            let containers = if pod.containers.is_empty() {
                serde_json::Value::Null
            } else {
                pod.containers
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "name": c.metadata.name,
                            "image": c.image,
                            "resources": {},
                        })
                    })
                    .collect()
            };
            serde_json::json!({
                "metadata": {
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "uid": uid,
                    "creationTimestamp": null,
                },
                "spec": { "containers": containers },
                "status": {},
            })
        })
        .collect();
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::runtime::{ContainerMetadata, SandboxMetadata};

    fn sandbox(uid: &str, name: &str, state: SandboxState) -> PodSandbox {
        PodSandbox {
            id: format!("sb-{uid}"),
            metadata: SandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: "default".to_owned(),
                attempt: 0,
            },
            state,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            labels: HashMap::new(),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
        }
    }

    fn container(uid: &str, pod: &str, name: &str, state: ContainerState) -> Container {
        Container {
            id: format!("c-{uid}-{name}"),
            pod_sandbox_id: format!("sb-{uid}"),
            metadata: ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            },
            image: format!("docker.io/library/{name}:1"),
            image_ref: "sha256:0".to_owned(),
            state,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            labels: [
                (POD_UID_LABEL, uid),
                (POD_NAME_LABEL, pod),
                (POD_NAMESPACE_LABEL, "default"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn lists_ready_sandboxes_with_their_running_containers_as_upstream_shapes_them() {
        let sandboxes = [
            sandbox("u-web", "web", SandboxState::Ready),
            sandbox("u-gone", "gone", SandboxState::NotReady),
            sandbox("u-idle", "idle", SandboxState::Ready),
        ];
        let containers = [
            container("u-web", "web", "sidecar", ContainerState::Running),
            container("u-web", "web", "app", ContainerState::Running),
            container("u-web", "web", "init", ContainerState::Exited),
            container("u-gone", "gone", "old", ContainerState::Exited),
            // Its sandbox is not listed as ready: placed by its labels.
            container("u-orphan", "orphan", "lone", ContainerState::Running),
        ];
        let list = pod_list(&sandboxes, &containers);
        let expected = serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                {
                    "metadata": {"name": "idle", "namespace": "default", "uid": "u-idle", "creationTimestamp": null},
                    "spec": {"containers": null},
                    "status": {},
                },
                {
                    "metadata": {"name": "orphan", "namespace": "default", "uid": "u-orphan", "creationTimestamp": null},
                    "spec": {"containers": [
                        {"name": "lone", "image": "docker.io/library/lone:1", "resources": {}},
                    ]},
                    "status": {},
                },
                {
                    "metadata": {"name": "web", "namespace": "default", "uid": "u-web", "creationTimestamp": null},
                    "spec": {"containers": [
                        {"name": "app", "image": "docker.io/library/app:1", "resources": {}},
                        {"name": "sidecar", "image": "docker.io/library/sidecar:1", "resources": {}},
                    ]},
                    "status": {},
                },
            ],
        });
        assert_eq!(list, expected);
    }
}
