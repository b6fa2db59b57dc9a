//! What the runtime knows about a pod, in the planner's terms ([`ObservedPod`]).
//!
//! Everything is rebuilt from CRI state (labels and annotations bpflet put on sandboxes and
//! containers), so an agent that restarts adopts running pods without restarting them and
//! keeps their restart counts. Only objects carrying this agent's [`AgentMark`] are seen: a
//! sandbox of another client of the runtime (an upstream kubelet, crictl, another bpflet)
//! is never observed, so never adopted, stopped or removed, even under the same pod UID.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_cri::v1 as api;

use super::labels::{self, AgentMark};
use super::plan::{ContainerState as PlanState, ObservedContainer, ObservedPod, ObservedSandbox};
use crate::runtime::{self, ContainerRuntime, ContainerState, SandboxState};
use crate::status::ContainerImage;

/// Images of the pod's containers by container id, for status.
pub type Images = HashMap<String, ContainerImage>;

/// Statuses read at earlier observations of one pod. A sandbox's or container's status
/// only changes with its state (a start sets `started_at`, an exit the exit code and
/// reason), so while the list reports the same id in the same state the status read then
/// still holds, and a steady pod costs two list calls instead of two plus one per sandbox
/// and container.
#[derive(Debug, Default)]
pub struct ObserveCache {
    /// By id; an entry's state is its `ready` or `state` field.
    sandboxes: HashMap<String, ObservedSandbox>,
    containers: HashMap<String, (ObservedContainer, ContainerImage)>,
}

/// Lists the pod's sandboxes and containers and reads each one's status.
pub async fn observe_pod<R: ContainerRuntime>(
    rt: &R,
    mark: &AgentMark,
    uid: &str,
) -> runtime::Result<(ObservedPod, Images)> {
    observe_pod_cached(rt, mark, uid, &mut ObserveCache::default()).await
}

/// [`observe_pod`], reading statuses only for what is new or changed state since `cache`
/// was last filled; `cache` then holds exactly what this observation saw.
pub async fn observe_pod_cached<R: ContainerRuntime>(
    rt: &R,
    mark: &AgentMark,
    uid: &str,
    cache: &mut ObserveCache,
) -> runtime::Result<(ObservedPod, Images)> {
    let selector = mark.selector(Some(uid));
    let sandboxes = rt
        .list_pod_sandboxes(Some(api::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        }))
        .await?;
    let mut observed = ObservedPod::default();
    let mut images = Images::new();
    let mut seen = ObserveCache::default();
    for sb in sandboxes {
        if let Some(known) = cache.sandboxes.remove(&sb.id)
            && known.ready == (sb.state == SandboxState::Ready)
        {
            observed.sandboxes.push(known.clone());
            seen.sandboxes.insert(sb.id, known);
            continue;
        }
        let (ip, host_network) = if sb.state == SandboxState::Ready {
            match rt.pod_sandbox_status(&sb.id).await {
                Ok(st) => (st.ip.clone(), st.ip.is_none()),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            (None, false)
        };
        let known = ObservedSandbox {
            id: sb.id.clone(),
            ready: sb.state == SandboxState::Ready,
            created: sb.created_at,
            attempt: sb.metadata.attempt,
            host_network,
            ip,
        };
        observed.sandboxes.push(known.clone());
        seen.sandboxes.insert(sb.id, known);
    }
    let containers = rt
        .list_containers(Some(api::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        }))
        .await?;
    for c in containers {
        if let Some((known, image)) = cache.containers.remove(&c.id)
            && known.state == plan_state(c.state)
        {
            observed.containers.push(known.clone());
            images.insert(c.id.clone(), image.clone());
            seen.containers.insert(c.id, (known, image));
            continue;
        }
        let status = match rt.container_status(&c.id).await {
            Ok(st) => st,
            Err(e) if e.is_not_found() => continue, // removed since the list
            Err(e) => return Err(e),
        };
        let image = ContainerImage {
            image: status.image.clone(),
            image_ref: status.image_ref.clone(),
        };
        images.insert(c.id.clone(), image.clone());
        let known = ObservedContainer {
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
        };
        observed.containers.push(known.clone());
        // Kept with the state the status reported, so that a list that raced ahead of it
        // (a container that exited in between) reads the status again next time.
        seen.containers.insert(c.id, (known, image));
    }
    *cache = seen;
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

/// Pod uids that have a sandbox carrying `mark` in the runtime (for adoption and orphan
/// cleanup); other clients' sandboxes are not listed.
pub async fn runtime_pod_uids<R: ContainerRuntime>(
    rt: &R,
    mark: &AgentMark,
) -> runtime::Result<Vec<String>> {
    let mut uids: Vec<String> = rt
        .list_pod_sandboxes(Some(api::PodSandboxFilter {
            label_selector: mark.selector(None),
            ..Default::default()
        }))
        .await?
        .into_iter()
        .filter_map(|sb| labels::pod_uid_from_labels(&sb.labels).map(str::to_owned))
        .collect();
    uids.sort();
    uids.dedup();
    Ok(uids)
}

/// Sandboxes with the kubelet's pod UID label but without `mark` whose pod is one of
/// `wanted`, as (pod uid, sandbox id): another client's, or an older bpflet's (which put no
/// mark on anything). Neither is adopted; the caller warns about them, since an older
/// bpflet's copy of a pod keeps running beside the one this agent starts.
#[must_use]
pub fn unmarked_sandboxes_of<'a>(
    sandboxes: &'a [runtime::PodSandbox],
    mark: &AgentMark,
    wanted: &std::collections::HashSet<&str>,
) -> Vec<(&'a str, &'a str)> {
    sandboxes
        .iter()
        .filter(|sb| sb.state == SandboxState::Ready && !mark.is_on(&sb.labels))
        .filter_map(|sb| {
            let uid = labels::pod_uid_from_labels(&sb.labels)?;
            wanted.contains(uid).then_some((uid, sb.id.as_str()))
        })
        .collect()
}

/// When a container last changed state, for status timestamps.
pub fn last_change(c: &ObservedContainer) -> Timestamp {
    c.finished_at.or(c.started_at).unwrap_or(c.created)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::{FakeRuntime, Method};

    pub(crate) const IMAGE: &str = "bpflet.local/busybox:latest";

    pub(crate) fn sandbox_config(uid: &str) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: "web".to_owned(),
                uid: uid.to_owned(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            labels: AgentMark::for_tests().selector(Some(uid)),
            ..Default::default()
        }
    }

    pub(crate) fn container_config(uid: &str) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "app".to_owned(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: IMAGE.to_owned(),
                ..Default::default()
            }),
            labels: AgentMark::for_tests().selector(Some(uid)),
            ..Default::default()
        }
    }

    fn status_reads(rt: &FakeRuntime) -> usize {
        rt.call_count(Method::ContainerStatus) + rt.call_count(Method::PodSandboxStatus)
    }

    #[tokio::test]
    async fn statuses_are_read_again_only_after_a_state_change() {
        let rt = FakeRuntime::new();
        rt.add_image(IMAGE);
        let sb_config = sandbox_config("u1");
        let sb = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        let c = rt
            .create_container(&sb, &container_config("u1"), &sb_config)
            .await
            .unwrap();
        rt.start_container(&c).await.unwrap();
        let mut cache = ObserveCache::default();
        let mark = AgentMark::for_tests();

        let (first, _) = observe_pod_cached(&rt, &mark, "u1", &mut cache)
            .await
            .unwrap();
        assert_eq!(status_reads(&rt), 2, "one sandbox and one container status");
        let (again, images) = observe_pod_cached(&rt, &mark, "u1", &mut cache)
            .await
            .unwrap();
        assert_eq!(again, first, "a steady pod looks the same from the cache");
        assert!(images.contains_key(&c), "images come from the cache too");
        assert_eq!(status_reads(&rt), 2, "no status read for a steady pod");

        rt.exit_container(&c, 3);
        let (exited, _) = observe_pod_cached(&rt, &mark, "u1", &mut cache)
            .await
            .unwrap();
        assert_eq!(
            status_reads(&rt),
            3,
            "the exited container's status is read"
        );
        let ctr = &exited.containers[0];
        assert_eq!(
            (ctr.state, ctr.exit_code),
            (PlanState::Exited, Some(3)),
            "{ctr:?}"
        );
        let (uncached, _) = observe_pod(&rt, &mark, "u1").await.unwrap();
        assert_eq!(
            uncached, exited,
            "the cache changes nothing in what is observed"
        );
    }

    /// Another client's sandbox and container, with the kubelet's labels only (or another
    /// agent's mark), under the same pod UID as one of ours.
    async fn foreign_pod(
        rt: &FakeRuntime,
        uid: &str,
        mark: Option<&AgentMark>,
    ) -> (String, String) {
        let mut sb_config = sandbox_config(uid);
        if let Some(meta) = sb_config.metadata.as_mut() {
            // The runtime reserves name, namespace, UID and attempt: another client's.
            meta.name = "theirs".to_owned();
        }
        let mut c_config = container_config(uid);
        for labels in [&mut sb_config.labels, &mut c_config.labels] {
            labels.remove(labels::AGENT_LABEL);
            if let Some(mark) = mark {
                mark.apply(labels);
            }
        }
        let sb = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        let c = rt
            .create_container(&sb, &c_config, &sb_config)
            .await
            .unwrap();
        rt.start_container(&c).await.unwrap();
        (sb, c)
    }

    #[tokio::test]
    async fn other_clients_pods_are_not_observed_even_under_the_same_uid() {
        let rt = FakeRuntime::new();
        rt.add_image(IMAGE);
        let mark = AgentMark::for_tests();
        let sb_config = sandbox_config("u1");
        let ours = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
        let kubelets = foreign_pod(&rt, "u1", None).await;
        let other_agent = AgentMark::for_root_dir(std::path::Path::new("/var/lib/other"));
        let neighbours = foreign_pod(&rt, "u2", Some(&other_agent)).await;
        foreign_pod(&rt, "u3", None).await;

        let (observed, _) = observe_pod(&rt, &mark, "u1").await.unwrap();
        let ids: Vec<&str> = observed.sandboxes.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [ours.as_str()],
            "the kubelet's sandbox {kubelets:?} is not ours"
        );
        assert!(observed.containers.is_empty(), "{observed:?}");
        assert_eq!(
            runtime_pod_uids(&rt, &mark).await.unwrap(),
            ["u1"],
            "only marked sandboxes are candidates for adoption and clean-up"
        );
        assert_eq!(
            runtime_pod_uids(&rt, &other_agent).await.unwrap(),
            ["u2"],
            "the other agent sees its own {neighbours:?}"
        );
    }

    #[tokio::test]
    async fn unmarked_sandboxes_of_wanted_pods_are_found_for_the_upgrade_warning() {
        let rt = FakeRuntime::new();
        rt.add_image(IMAGE);
        let mark = AgentMark::for_tests();
        rt.run_pod_sandbox(&sandbox_config("u1"), "").await.unwrap();
        let (old, _) = foreign_pod(&rt, "u1", None).await;
        foreign_pod(&rt, "u2", None).await;
        let sandboxes = rt.list_pod_sandboxes(None).await.unwrap();
        let wanted = std::collections::HashSet::from(["u1"]);
        assert_eq!(
            unmarked_sandboxes_of(&sandboxes, &mark, &wanted),
            [("u1", old.as_str())],
            "ours is marked; u2 is nobody this agent wants"
        );
    }
}
