//! Node-level disk reclaim: what the eviction manager frees before it evicts a pod for disk
//! pressure (upstream's `DeleteAllUnusedContainers` + `DeleteUnusedImages`).
//!
//! - Dead containers: per pod and container name, the newest exited instance is kept (its
//!   exit code is the container's `lastState`, as upstream's `MaxPerPodContainer: 1`), older
//!   exited instances are removed. Running and created containers are never touched.
//! - Images: through the image garbage collector's [`ImageGc::delete_unused`], after the
//!   containers (so images only they used are free): every image no remaining container
//!   uses, not pinned, that no pod still names (`protected`: an offline node cannot pull
//!   them back) and that the collector first saw at least `imageMinimumGCAge` ago.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::images::gc::ImageGc;
use crate::pods::labels::{container_name_from_labels, pod_uid_from_labels};
use crate::runtime::{Container, ContainerRuntime, ContainerState, Method};

use super::EvictionError;

/// What one reclaim removed, and what went wrong on the way (reclaim goes on after a
/// failed removal).
#[derive(Debug, Default)]
pub struct ReclaimReport {
    pub containers_removed: Vec<String>,
    pub images_removed: Vec<String>,
    /// The removed images' sizes, as the runtime reported them.
    pub image_bytes_freed: u64,
    pub errors: Vec<EvictionError>,
}

/// Removes dead containers, then unused images through the image garbage collector.
#[derive(Debug)]
pub struct DiskReclaimer<R> {
    runtime: Arc<R>,
    images: Arc<ImageGc<R>>,
}

impl<R> Clone for DiskReclaimer<R> {
    fn clone(&self) -> Self {
        Self {
            runtime: Arc::clone(&self.runtime),
            images: Arc::clone(&self.images),
        }
    }
}

impl<R: ContainerRuntime + 'static> DiskReclaimer<R> {
    pub fn new(runtime: Arc<R>, images: Arc<ImageGc<R>>) -> Self {
        Self { runtime, images }
    }

    /// Removes dead containers, then unused images other than `protected` (image
    /// references as pod specs write them).
    pub async fn reclaim(&self, protected: &[String]) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        let containers = match self.runtime.list_containers(None).await {
            Ok(c) => c,
            Err(source) => {
                report.errors.push(EvictionError::Runtime {
                    method: Method::ListContainers,
                    source,
                });
                return report;
            }
        };
        for id in &dead_containers(&containers) {
            match self.runtime.remove_container(id).await {
                Ok(()) => report.containers_removed.push(id.clone()),
                Err(source) => report.errors.push(EvictionError::Runtime {
                    method: Method::RemoveContainer,
                    source,
                }),
            }
        }
        let (freed, errors) = self.images.delete_unused(protected).await;
        report.images_removed = freed.images;
        report.image_bytes_freed = freed.bytes;
        report
            .errors
            .extend(errors.into_iter().map(EvictionError::Images));
        report
    }
}

/// Exited containers that are not the newest exited instance of their pod's container.
fn dead_containers(containers: &[Container]) -> Vec<String> {
    let mut units: BTreeMap<(String, String), Vec<&Container>> = BTreeMap::new();
    for c in containers
        .iter()
        .filter(|c| c.state == ContainerState::Exited)
    {
        let pod = pod_uid_from_labels(&c.labels)
            .map_or_else(|| format!("sandbox:{}", c.pod_sandbox_id), str::to_owned);
        let name = container_name_from_labels(&c.labels)
            .unwrap_or(&c.metadata.name)
            .to_owned();
        units.entry((pod, name)).or_default().push(c);
    }
    let mut dead = Vec::new();
    for unit in units.values_mut() {
        unit.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.metadata.attempt)));
        dead.extend(unit.iter().skip(1).map(|c| c.id.clone()));
    }
    dead
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::images::gc::{GcPolicy, ImageGcError};
    use crate::pods::labels::{CONTAINER_NAME_LABEL, POD_UID_LABEL};
    use crate::runtime::{FakeRuntime, api};

    /// A reclaimer whose image collector has no minimum age (the collector's own tests
    /// cover it).
    fn reclaimer(rt: &FakeRuntime) -> DiskReclaimer<FakeRuntime> {
        let rt = Arc::new(rt.clone());
        let policy = GcPolicy {
            min_age: std::time::Duration::ZERO,
            ..GcPolicy::default()
        };
        DiskReclaimer::new(Arc::clone(&rt), Arc::new(ImageGc::new(rt, policy)))
    }

    fn sandbox_config(uid: &str) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: format!("pod-{uid}"),
                uid: uid.to_owned(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            labels: HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())]),
            ..Default::default()
        }
    }

    async fn container(
        rt: &FakeRuntime,
        sandbox: &str,
        sb_config: &api::PodSandboxConfig,
        name: &str,
        attempt: u32,
        image: &str,
    ) -> String {
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.to_owned(),
                attempt,
            }),
            image: Some(api::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            labels: HashMap::from([
                (
                    POD_UID_LABEL.to_owned(),
                    sb_config.metadata.as_ref().expect("meta").uid.clone(),
                ),
                (CONTAINER_NAME_LABEL.to_owned(), name.to_owned()),
            ]),
            ..Default::default()
        };
        let id = rt
            .create_container(sandbox, &config, sb_config)
            .await
            .expect("create");
        rt.start_container(&id).await.expect("start");
        id
    }

    #[tokio::test]
    async fn removes_old_dead_containers_and_unused_images() {
        let rt = FakeRuntime::new();
        let app = "registry.test/app:v1";
        let old = "registry.test/app:v0";
        let wanted = "registry.test/sidecar:v1";
        let stray = "registry.test/stray:v1";
        for image in [app, old, wanted, stray] {
            rt.add_image(image);
        }
        let sb1_config = sandbox_config("u1");
        let sb1 = rt.run_pod_sandbox(&sb1_config, "").await.expect("sandbox");
        // app: attempts 0 and 1 exited, 2 running; keep 1 (newest dead) and 2.
        let a0 = container(&rt, &sb1, &sb1_config, "app", 0, old).await;
        rt.exit_container(&a0, 1);
        let a1 = container(&rt, &sb1, &sb1_config, "app", 1, app).await;
        rt.exit_container(&a1, 1);
        let a2 = container(&rt, &sb1, &sb1_config, "app", 2, app).await;
        // A crash-looping container: attempts 0 and 1 dead; keep 1.
        let c0 = container(&rt, &sb1, &sb1_config, "crash", 0, app).await;
        rt.exit_container(&c0, 2);
        let c1 = container(&rt, &sb1, &sb1_config, "crash", 1, app).await;
        rt.exit_container(&c1, 2);
        // Another pod with one dead container: kept.
        let sb2_config = sandbox_config("u2");
        let sb2 = rt.run_pod_sandbox(&sb2_config, "").await.expect("sandbox");
        let b0 = container(&rt, &sb2, &sb2_config, "app", 0, app).await;
        rt.exit_container(&b0, 0);

        let reclaimer = reclaimer(&rt);
        let report = reclaimer
            .reclaim(&["registry.test/sidecar:v1".to_owned()])
            .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut removed = report.containers_removed.clone();
        removed.sort();
        let mut want = vec![a0.clone(), c0.clone()];
        want.sort();
        assert_eq!(removed, want);
        let left: BTreeSet<String> = rt
            .list_containers(None)
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(left, BTreeSet::from([a1, a2, c1, b0]));

        // v0 was only used by the removed container; the stray image by none; the sidecar
        // image is protected; app:v1 is in use.
        let tags: BTreeSet<String> = rt
            .list_images()
            .await
            .expect("images")
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        assert_eq!(tags, BTreeSet::from([app.to_owned(), wanted.to_owned()]));
        assert_eq!(report.images_removed.len(), 2);
        assert_eq!(report.image_bytes_freed, 2 << 20);

        // Nothing left to do.
        let again = reclaimer.reclaim(&[wanted.to_owned()]).await;
        assert!(again.containers_removed.is_empty() && again.images_removed.is_empty());
    }

    #[tokio::test]
    async fn protected_references_match_in_normalized_form() {
        let rt = FakeRuntime::new();
        rt.add_image("docker.io/library/busybox:latest");
        rt.add_image("docker.io/library/alpine:3.20");
        let report = reclaimer(&rt).reclaim(&["busybox".to_owned()]).await;
        assert_eq!(report.images_removed.len(), 1);
        let tags: Vec<String> = rt
            .list_images()
            .await
            .expect("images")
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        assert_eq!(tags, ["docker.io/library/busybox:latest"]);
    }

    #[tokio::test]
    async fn failures_are_reported_and_reclaim_goes_on() {
        use crate::runtime::Fault;
        use tonic::Code;

        let rt = FakeRuntime::new();
        rt.add_image("registry.test/a:v1");
        rt.add_image("registry.test/b:v1");
        rt.inject_once(Method::RemoveImage, Fault::Error(Code::FailedPrecondition));
        let report = reclaimer(&rt).reclaim(&[]).await;
        assert_eq!(report.images_removed.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert!(
            matches!(
                report.errors[0],
                EvictionError::Images(ImageGcError::Remove { .. })
            ),
            "{:?}",
            report.errors
        );

        rt.inject_once(Method::ListContainers, Fault::Error(Code::Unavailable));
        let report = reclaimer(&rt).reclaim(&[]).await;
        assert!(
            report.images_removed.is_empty(),
            "no image removal without the container list"
        );
        assert_eq!(
            report.errors[0].to_string(),
            "runtime call ListContainers for disk reclaim"
        );
    }
}
