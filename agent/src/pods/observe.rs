//! What the runtime knows about a pod, in the planner's terms ([`ObservedPod`]).
//!
//! Everything is rebuilt from CRI state (labels and annotations bpflet put on sandboxes and
//! containers), so an agent that restarts adopts running pods without restarting them and
//! keeps their restart counts.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_cri::v1 as api;

use super::labels;
use super::plan::{ContainerState as PlanState, ObservedContainer, ObservedPod, ObservedSandbox};
use crate::runtime::{self, ContainerRuntime, ContainerState, SandboxState};
use crate::status::ContainerImage;

/// Images of the pod's containers by container id, for status.
pub type Images = HashMap<String, ContainerImage>;

/// Lists the pod's sandboxes and containers and reads each container's status.
pub async fn observe_pod<R: ContainerRuntime>(
    rt: &R,
    uid: &str,
) -> runtime::Result<(ObservedPod, Images)> {
    let selector: HashMap<String, String> = [(labels::POD_UID_LABEL.to_owned(), uid.to_owned())]
        .into_iter()
        .collect();
    let sandboxes = rt
        .list_pod_sandboxes(Some(api::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        }))
        .await?;
    let mut observed = ObservedPod::default();
    let mut images = Images::new();
    for sb in sandboxes {
        let (ip, host_network) = if sb.state == SandboxState::Ready {
            match rt.pod_sandbox_status(&sb.id).await {
                Ok(st) => (st.ip.clone(), st.ip.is_none()),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            (None, false)
        };
        observed.sandboxes.push(ObservedSandbox {
            id: sb.id,
            ready: sb.state == SandboxState::Ready,
            created: sb.created_at,
            attempt: sb.metadata.attempt,
            host_network,
            ip,
        });
    }
    let containers = rt
        .list_containers(Some(api::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        }))
        .await?;
    for c in containers {
        let status = match rt.container_status(&c.id).await {
            Ok(st) => st,
            Err(e) if e.is_not_found() => continue, // removed since the list
            Err(e) => return Err(e),
        };
        images.insert(
            c.id.clone(),
            ContainerImage {
                image: status.image.clone(),
                image_ref: status.image_ref.clone(),
            },
        );
        observed.containers.push(ObservedContainer {
            id: c.id.clone(),
            name: status.metadata.name.clone(),
            state: plan_state(status.state),
            created: status.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            exit_code: status.finished_at.map(|_| status.exit_code),
            reason: (!status.reason.is_empty()).then(|| status.reason.clone()),
            restart_count: labels::restart_count_from_annotations(&status.annotations)
                .ok()
                .flatten()
                .unwrap_or(status.metadata.attempt),
            spec_hash: labels::container_hash_from_annotations(&status.annotations)
                .map(str::to_owned),
            liveness: Default::default(),
            startup: Default::default(),
        });
    }
    Ok((observed, images))
}

fn plan_state(s: ContainerState) -> PlanState {
    match s {
        ContainerState::Created => PlanState::Created,
        ContainerState::Running => PlanState::Running,
        ContainerState::Exited => PlanState::Exited,
        ContainerState::Unknown => PlanState::Unknown,
    }
}

/// Pod uids that have any sandbox in the runtime (for adoption and orphan cleanup).
pub async fn runtime_pod_uids<R: ContainerRuntime>(rt: &R) -> runtime::Result<Vec<String>> {
    let mut uids: Vec<String> = rt
        .list_pod_sandboxes(None)
        .await?
        .into_iter()
        .filter_map(|sb| labels::pod_uid_from_labels(&sb.labels).map(str::to_owned))
        .collect();
    uids.sort();
    uids.dedup();
    Ok(uids)
}

/// When a container last changed state, for status timestamps.
pub fn last_change(c: &ObservedContainer) -> Timestamp {
    c.finished_at.or(c.started_at).unwrap_or(c.created)
}
