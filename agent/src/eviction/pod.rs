//! What the eviction manager knows about a pod: the facts from its spec and status
//! ([`PodInfo`], given by the agent) joined with what the kernel says it uses ([`PodUsage`],
//! measured by [`super::Observer`]).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::model::qos::{self, QosClass};
use crate::model::quantity::{QuantityValue, parse_quantity};
use crate::model::termination_grace;
use crate::pods::cri_config::pod_log_dir;
use crate::status::manager::PodList;

use super::local_storage::LimitedPod;

/// Priority at or above which a pod is system-critical and never evicted
/// (`system-cluster-critical` is 2000000000, `system-node-critical` 2000001000).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The priority classes that make a pod critical even without a resolved priority (static
/// pods have no API server to resolve their class).
const CRITICAL_PRIORITY_CLASSES: [&str; 2] = ["system-node-critical", "system-cluster-critical"];

/// One app container of a pod, as eviction needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// The runtime's id of the container's current instance (its cgroup below the pod's),
    /// `None` while it has none.
    pub id: Option<String>,
    /// `resources.requests.memory` as written (`None`: no request).
    pub memory_request: Option<String>,
}

/// A pod that may be evicted: its spec and status facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    /// `<namespace>/<name>`, for logs.
    pub name: String,
    pub qos: QosClass,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// System-critical pods are never evicted.
    pub critical: bool,
    /// `terminationGracePeriodSeconds` (default 30 s).
    pub grace_period: Duration,
    /// Effective memory request of the pod (sidecars, init containers and overhead counted).
    pub memory_request: u64,
    /// Effective `ephemeral-storage` request of the pod.
    pub storage_request: u64,
    pub containers: Vec<ContainerInfo>,
    /// Directories whose disk use the pod is charged for (emptyDir volumes, logs). Only walked
    /// under disk pressure.
    pub local_storage: Vec<PathBuf>,
}

impl PodInfo {
    /// The facts of a pod that runs: `None` for a pod without a UID or in a terminal phase
    /// (`Succeeded`, `Failed`), which eviction leaves alone. Container ids come from
    /// `status.containerStatuses[].containerID`. [`Self::local_storage`] is left empty: the
    /// agent knows where the pod's volumes and logs are.
    #[must_use]
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty())?;
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let spec = pod.spec.as_ref();
        let statuses = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or(&[]);
        let containers = spec
            .map_or(&[][..], |s| s.containers.as_slice())
            .iter()
            .map(|c| ContainerInfo {
                name: c.name.clone(),
                id: statuses
                    .iter()
                    .find(|s| s.name == c.name)
                    .and_then(|s| s.container_id.as_deref())
                    .map(|id| id.split_once("://").map_or(id, |(_, id)| id).to_owned())
                    .filter(|id| !id.is_empty()),
                memory_request: request(c, "memory").map(str::to_owned),
            })
            .collect();
        Some(Self {
            uid,
            name: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            qos: qos::qos_class(pod),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            critical: is_critical(pod),
            grace_period: termination_grace(pod),
            memory_request: qos::pod_requests(pod).memory_bytes,
            storage_request: storage_request(pod),
            containers,
            local_storage: Vec::new(),
        })
    }

    /// Charges the pod for the disk use of these directories.
    #[must_use]
    pub fn with_local_storage(mut self, dirs: Vec<PathBuf>) -> Self {
        self.local_storage = dirs;
        self
    }
}

/// A system-critical pod: priority at least [`SYSTEM_CRITICAL_PRIORITY`] or a
/// `system-node-critical` / `system-cluster-critical` priority class. Never evicted, always
/// admitted. (Upstream also counts static pods as critical; in bpflet every pod is static.)
#[must_use]
pub fn is_critical(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.priority)
        .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
        || spec
            .and_then(|s| s.priority_class_name.as_deref())
            .is_some_and(|c| CRITICAL_PRIORITY_CLASSES.contains(&c))
}

fn request<'a>(c: &'a Container, resource: &str) -> Option<&'a str> {
    let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
    Some(q.0.as_str())
}

/// Upstream's pod request for `ephemeral-storage`: the larger of the app containers' sum and
/// the largest init container request.
fn storage_request(pod: &Pod) -> u64 {
    let bytes = |c: &Container| {
        request(c, "ephemeral-storage")
            .and_then(|q| parse_quantity(q).ok())
            .map_or(0, QuantityValue::bytes)
    };
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let app = spec
        .containers
        .iter()
        .map(bytes)
        .fold(0u64, u64::saturating_add);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(bytes)
        .max()
        .unwrap_or(0);
    app.max(init)
}

/// A container's measured memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    /// As written in the spec (`None`: no request, shown as `0`).
    pub memory_request: Option<String>,
    /// `None` when the container has no cgroup (not running) or it could not be read.
    pub memory_working_set: Option<u64>,
}

/// A pod with what it uses. `None` means "not measured": upstream evicts pods without stats
/// first, and so does [`super::rank`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub uid: String,
    pub name: String,
    pub qos: QosClass,
    pub priority: i32,
    pub critical: bool,
    pub grace_period: Duration,
    pub memory_request: u64,
    /// Working set of the pod cgroup.
    pub memory_working_set: Option<u64>,
    pub storage_request: u64,
    /// Bytes used in the pod's local storage.
    pub disk_bytes: Option<u64>,
    /// Inodes used in the pod's local storage.
    pub inodes: Option<u64>,
    /// Tasks in the pod cgroup (`pids.current`).
    pub processes: Option<u64>,
    pub containers: Vec<ContainerUsage>,
}

impl PodUsage {
    /// The pod with nothing measured yet.
    #[must_use]
    pub fn unmeasured(info: &PodInfo) -> Self {
        Self {
            uid: info.uid.clone(),
            name: info.name.clone(),
            qos: info.qos,
            priority: info.priority,
            critical: info.critical,
            grace_period: info.grace_period,
            memory_request: info.memory_request,
            memory_working_set: None,
            storage_request: info.storage_request,
            disk_bytes: None,
            inodes: None,
            processes: None,
            containers: info
                .containers
                .iter()
                .map(|c| ContainerUsage {
                    name: c.name.clone(),
                    memory_request: c.memory_request.clone(),
                    memory_working_set: None,
                })
                .collect(),
        }
    }
}

/// The image references a pod's containers (init containers included) run.
#[must_use]
pub fn pod_images(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter_map(|c| c.image.clone())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Where the eviction manager gets its pods from, at every evaluation.
pub trait PodProvider: Send + Sync + 'static {
    /// The pods eviction may pick from: those that have not terminated.
    fn active_pods(&self) -> Vec<PodInfo>;

    /// The images the node's pods still need, terminated ones included (an evicted static
    /// pod comes back when the pressure is over). Disk reclaim never removes them.
    fn wanted_images(&self) -> Vec<String>;

    /// The running pods with a local storage limit ([`LimitedPod::from_pod`]), measured at
    /// every periodic evaluation. None by default.
    fn storage_limited_pods(&self) -> Vec<LimitedPod> {
        Vec::new()
    }
}

/// The pods the agent publishes (the status manager's [`PodList`]), charged for their volumes
/// (`<pods_dir>/<uid>/volumes`) and logs (`<logs_dir>/<namespace>_<name>_<uid>`).
#[derive(Clone)]
pub struct StorePods {
    pub pods: PodList,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
}

impl PodProvider for StorePods {
    fn active_pods(&self) -> Vec<PodInfo> {
        self.pods
            .list()
            .iter()
            .filter_map(|pod| {
                let info = PodInfo::from_pod(pod)?;
                let storage = vec![
                    self.pods_dir.join(&info.uid).join("volumes"),
                    pod_log_dir(&self.logs_dir, pod),
                ];
                Some(info.with_local_storage(storage))
            })
            .collect()
    }

    fn wanted_images(&self) -> Vec<String> {
        self.pods
            .list()
            .iter()
            .flat_map(|pod| pod_images(pod))
            .collect()
    }

    fn storage_limited_pods(&self) -> Vec<LimitedPod> {
        // Looks at every pod in place: no copy of a pod without limits.
        self.pods
            .filter_map(|pod| LimitedPod::from_pod(pod, &self.pods_dir, &self.logs_dir))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |pairs: &[(&str, &str)]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        Container {
            name: name.to_owned(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                termination_grace_period_seconds: Some(45),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn facts_from_spec_and_status() {
        let mut p = pod(
            vec![
                container(
                    "app",
                    &[("memory", "100Mi"), ("ephemeral-storage", "1Gi")],
                    &[],
                ),
                container("side", &[("cpu", "100m")], &[]),
            ],
            vec![container("init", &[("ephemeral-storage", "2Gi")], &[])],
        );
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                container_id: Some("containerd://abc123".into()),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let info = PodInfo::from_pod(&p).expect("running pod");
        assert_eq!(info.uid, "u1");
        assert_eq!(info.name, "default/web");
        assert_eq!(info.qos, QosClass::Burstable);
        assert_eq!(info.priority, 0);
        assert!(!info.critical);
        assert_eq!(info.grace_period, Duration::from_secs(45));
        assert_eq!(info.memory_request, 100 << 20);
        assert_eq!(
            info.storage_request,
            2 << 30,
            "the init container's is larger"
        );
        assert_eq!(
            info.containers,
            [
                ContainerInfo {
                    name: "app".into(),
                    id: Some("abc123".into()),
                    memory_request: Some("100Mi".into()),
                },
                ContainerInfo {
                    name: "side".into(),
                    id: None,
                    memory_request: None,
                },
            ]
        );
    }

    #[test]
    fn terminal_and_critical_pods() {
        let mut p = pod(vec![container("app", &[], &[])], vec![]);
        for (phase, active) in [
            (None, true),
            (Some("Pending"), true),
            (Some("Running"), true),
            (Some("Succeeded"), false),
            (Some("Failed"), false),
        ] {
            p.status = phase.map(|ph| PodStatus {
                phase: Some(ph.into()),
                ..PodStatus::default()
            });
            assert_eq!(PodInfo::from_pod(&p).is_some(), active, "{phase:?}");
        }
        p.status = None;
        assert_eq!(
            PodInfo::from_pod(&p).expect("pod").qos,
            QosClass::BestEffort
        );

        let spec = p.spec.as_mut().expect("spec");
        spec.priority = Some(SYSTEM_CRITICAL_PRIORITY);
        assert!(PodInfo::from_pod(&p).expect("pod").critical);
        let spec = p.spec.as_mut().expect("spec");
        spec.priority = None;
        spec.priority_class_name = Some("system-node-critical".into());
        assert!(PodInfo::from_pod(&p).expect("pod").critical);
        let spec = p.spec.as_mut().expect("spec");
        spec.priority_class_name = Some("high".into());
        spec.priority = Some(1000);
        let info = PodInfo::from_pod(&p).expect("pod");
        assert!(!info.critical);
        assert_eq!(info.priority, 1000);

        p.metadata.uid = None;
        assert!(PodInfo::from_pod(&p).is_none());
    }
    #[test]
    fn store_pods_lists_active_pods_and_every_wanted_image() {
        let (sink, pods) = crate::status::manager::pod_list();
        let statuses = crate::status::manager::StatusManager::new(vec![sink]);
        let mut running = pod(vec![container("app", &[], &[])], vec![]);
        running.spec.as_mut().expect("spec").containers[0].image = Some("app:v1".into());
        let mut evicted = running.clone();
        evicted.metadata.uid = Some("u2".into());
        evicted.metadata.name = Some("batch".into());
        let spec = evicted.spec.as_mut().expect("spec");
        spec.containers[0].image = Some("batch:v1".into());
        spec.init_containers = Some(vec![Container {
            name: "init".into(),
            image: Some("init:v1".into()),
            ..Container::default()
        }]);
        evicted.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..PodStatus::default()
        });
        statuses.publish("u1", running);
        statuses.publish("u2", evicted);
        let pods = store_pods(pods);
        let active = pods.active_pods();
        assert_eq!(active.len(), 1);
        assert_eq!(
            active[0].local_storage,
            [
                PathBuf::from("/var/lib/bpflet/pods/u1/volumes"),
                PathBuf::from("/var/log/pods/default_web_u1"),
            ]
        );
        let mut images = pods.wanted_images();
        images.sort();
        assert_eq!(images, ["app:v1", "batch:v1", "init:v1"]);
    }

    /// The eviction manager's view of `pods`, with upstream's directories.
    fn store_pods(pods: crate::status::manager::PodList) -> StorePods {
        StorePods {
            pods,
            pods_dir: PathBuf::from("/var/lib/bpflet/pods"),
            logs_dir: PathBuf::from("/var/log/pods"),
        }
    }

    #[test]
    fn store_pods_lists_only_running_pods_with_storage_limits() {
        let (sink, pods) = crate::status::manager::pod_list();
        let statuses = crate::status::manager::StatusManager::new(vec![sink]);
        let plain = pod(vec![container("app", &[], &[])], vec![]);
        let mut limited = pod(
            vec![container("app", &[], &[("ephemeral-storage", "10Mi")])],
            vec![],
        );
        limited.metadata.uid = Some("u2".into());
        let mut done = limited.clone();
        done.metadata.uid = Some("u3".into());
        done.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..PodStatus::default()
        });
        statuses.publish("u1", plain);
        statuses.publish("u2", limited);
        statuses.publish("u3", done);
        let pods = store_pods(pods);
        let got = pods.storage_limited_pods();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].uid, "u2");
        assert_eq!(
            got[0].containers[0].log_dir,
            PathBuf::from("/var/log/pods/default_web_u2/app")
        );
    }
}
