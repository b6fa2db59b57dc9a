//! Cluster mode (`--kubeconfig`): bpflet as a node of a Kubernetes API server, through `kube`.
//!
//! The core does not know the API server: it publishes pod status to a [`StatusSink`]
//! (crate::status::manager), events to an [`EventSink`](crate::record::EventSink), and takes
//! pods as source snapshots (`PodUpdate`). This folder adds the API server behind each seam:
//! - [`heartbeat`]: Node registration, node status, the node lease;
//! - [`pods`]: the pods bound to the node, as the `api` pod source;
//! - [`status`]: pod status (and mirror pods of static pods) written to the API server;
//! - [`events`]: events posted to the API server;
//! - [`node`]: the Node object and its status (pure).
//!
//! The API server being away stops nothing: pods keep running, status and the latest events
//! wait and catch up, the lease resumes.
//!
//! [`StatusSink`]: crate::status::manager::StatusSink

pub mod events;
pub mod heartbeat;
pub mod node;
pub mod pods;
pub mod status;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// A client for the API server the kubeconfig names (its current context).
///
/// # Errors
/// [`ClusterError`] naming the kubeconfig.
pub async fn connect(kubeconfig: &std::path::Path) -> Result<kube::Client, ClusterError> {
    let path = kubeconfig.to_owned();
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
    kube::Client::try_from(config).map_err(|source| ClusterError::Client { path, source })
}

/// Runs the `api` pod source: the node's pods as snapshots for the pod manager, until
/// `cancel`. Pods the agent cannot run are sent as errors naming the pod and the field.
/// Each snapshot is also shown to `statuses`, which checks the API server's pod statuses
/// against what it wrote.
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

/// The API server's pods as the pod manager takes them; a pod bpflet cannot run (the checks
/// static pods get: UID, names, resources) is an error naming it and the field.
fn to_source_pods(pods: Vec<Pod>) -> (Vec<StaticPod>, Vec<ManifestError>) {
    let mut out = Vec::with_capacity(pods.len());
    let mut errors = Vec::new();
    for pod in pods {
        let id = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let origin = ManifestOrigin::Api(id);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let checked = crate::model::validation::validate_uid(&uid)
            .map_err(|reason| ("metadata.uid".to_owned(), reason))
            .and_then(|()| crate::model::validation::validate_pod(&pod));
        if let Err((field, reason)) = checked {
            errors.push(ManifestError::Invalid {
                origin,
                field,
                reason,
            });
            continue;
        }
        out.push(StaticPod { pod, uid, origin });
    }
    (out, errors)
}
