//! Cluster mode (`--kubeconfig`): bpflet as a node of a Kubernetes API server, through `kube`.
//!
//! The core does not know the API server: it publishes pod status to a [`StatusSink`]
//! (crate::status::manager), events to an [`EventSink`](crate::record::EventSink), and takes
//! pods as source snapshots (`PodUpdate`). This folder adds the API server behind each seam:
//! - [`heartbeat`]: Node registration, node status, the node lease;
//! - [`pods`]: the pods bound to the node, as the `api` pod source;
//! - [`status`]: pod status (and mirror pods of static pods) written to the API server;
//! - [`events`]: events posted to the API server;
//! - [`node`]: the Node object and its status (pure);
//! - [`objects`]: the configMaps and secrets pods read (env, pull secrets, volumes), watched
//!   while pods refer to them;
//! - [`ratelimit`]: the client's rate limit (`kubeAPIQPS`, `kubeAPIBurst`);
//! - [`reviews`]: TokenReview and SubjectAccessReview for the HTTPS API's authentication
//!   and authorization;
//! - [`tokens`]: service-account tokens for projected volumes (TokenRequest), cached and
//!   refreshed before they expire;
//! - [`csr`]: the HTTPS API's serving certificate through a CertificateSigningRequest, and
//!   its rotation (`serverTLSBootstrap`).
//!
//! The API server being away stops nothing: pods keep running, status and the latest events
//! wait and catch up, the lease resumes.
//!
//! [`StatusSink`]: crate::status::manager::StatusSink

pub mod csr;
pub mod events;
pub mod heartbeat;
pub mod node;
pub mod objects;
pub mod pods;
pub mod ratelimit;
pub mod reviews;
pub mod status;
pub mod tokens;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::pods::manifest::{ManifestError, ManifestOrigin, StaticPod};
use crate::pods::source::{PodUpdate, SourceKind};

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build an API client from the kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// A client for the API server the kubeconfig names (its current context), every request
/// of which takes a token from a bucket of `kubeAPIBurst` refilled at `kubeAPIQPS` a second
/// ([`ratelimit`]), as upstream's kubelet limits its client.
///
/// # Errors
/// [`ClusterError`] naming the kubeconfig.
pub async fn connect(cluster: &ClusterConfig) -> Result<kube::Client, ClusterError> {
    let kubeconfig = &cluster.kubeconfig;
    let path = kubeconfig.clone();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|source| {
        ClusterError::Kubeconfig {
            path: path.clone(),
            source,
        }
    })?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|source| ClusterError::Client { path, source })?;
    let limit = ratelimit::RateLimitLayer::new(cluster.kube_api_qps, cluster.kube_api_burst);
    Ok(builder.with_layer(&limit).build())
}

/// Runs the `api` pod source: the node's pods as snapshots for the pod manager, until
/// `cancel`. A pod whose UID cannot name its directories is sent as an error naming it; a
/// pod bpflet cannot run otherwise goes to the manager, whose admission rejects it (phase
/// `Failed`, reason `FailedValidation`, a Warning event), as upstream's kubelet rejects a
/// pod it cannot run. Each snapshot is also shown to `statuses`, which checks the API
/// server's pod statuses against what it wrote.
pub async fn run_pod_source(
    client: kube::Client,
    node_name: String,
    updates: mpsc::Sender<PodUpdate>,
    statuses: status::ApiStatusSink,
    cancel: CancellationToken,
) {
    let (watch, mut snapshots) = pods::watch_bound_pods(client, &node_name, cancel.clone());
    let watch = tokio::spawn(watch);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
        let Some(pods) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        statuses.observe(&pods);
        let (pods, errors) = to_source_pods(pods);
        let update = PodUpdate::Snapshot {
            source: SourceKind::Api,
            pods,
            errors,
        };
        if updates.send(update).await.is_err() {
            break;
        }
    }
    watch.abort();
}

/// The API server's pods as the pod manager takes them, mirror pods left out. The API server
/// makes every UID, but
/// a UID names the pod's directories and cgroup, so one that is not a harmless path
/// component is an error naming the pod (it gets no worker). Every other check is
/// admission's ([`crate::pods::admission`]), which shows the pod `Failed` naming the field.
fn to_source_pods(pods: Vec<Pod>) -> (Vec<StaticPod>, Vec<ManifestError>) {
    let mut out = Vec::with_capacity(pods.len());
    let mut errors = Vec::new();
    // Mirror pods are bpflet's reflections of its static pods, not pods to run.
    for pod in pods.into_iter().filter(|p| !pods::is_mirror(p)) {
        let id = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let origin = ManifestOrigin::Api(id);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Err(reason) = crate::model::validation::validate_uid(&uid) {
            errors.push(ManifestError::Invalid {
                origin,
                field: "metadata.uid".to_owned(),
                reason,
            });
            continue;
        }
        out.push(StaticPod { pod, uid, origin });
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, host_users: Option<bool>) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }))
        .expect("pod");
        pod.spec.as_mut().expect("spec").host_users = host_users;
        pod
    }

    #[test]
    fn pods_bpflet_cannot_run_go_to_admission_and_a_bad_uid_is_an_error() {
        let (pods, errors) = to_source_pods(vec![
            pod("3f8a0c2e-1b7d-4c1e-9a53-2d1f0e6b7c44", None),
            pod("7c1d2e3f-0000-4c1e-9a53-2d1f0e6b7c44", Some(false)),
            pod("../etc", None),
        ]);
        let uids: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(
            uids,
            [
                "3f8a0c2e-1b7d-4c1e-9a53-2d1f0e6b7c44",
                "7c1d2e3f-0000-4c1e-9a53-2d1f0e6b7c44"
            ],
            "the pod with hostUsers: false is admission's to reject"
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].full_text();
        assert!(
            text.contains("default/p") && text.contains("metadata.uid"),
            "{text}"
        );
    }

    #[test]
    fn mirror_pods_are_not_pods_to_run() {
        let mut mirror = pod("0f8fad5b-d9cb-469f-a165-70867728950e", None);
        mirror.metadata.annotations =
            Some([(status::MIRROR_ANNOTATION.to_owned(), "hash".to_owned())].into());
        let (pods, errors) = to_source_pods(vec![
            mirror,
            pod("3f8a0c2e-1b7d-4c1e-9a53-2d1f0e6b7c44", None),
        ]);
        let uids: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["3f8a0c2e-1b7d-4c1e-9a53-2d1f0e6b7c44"]);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
