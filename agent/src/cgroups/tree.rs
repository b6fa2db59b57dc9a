//! The QoS and pod cgroup tree (kubelet's QOS container manager and pod container manager,
//! cgroupfs naming):
//!
//! ```text
//! <cgroupRoot>/kubepods                  cpu shares = capacity (allocatable when enforced);
//!                                        memory and pids limits = allocatable when enforced
//! <cgroupRoot>/kubepods/pod<uid>         Guaranteed pods
//! <cgroupRoot>/kubepods/burstable        cpu shares = sum of Burstable pods' cpu requests
//! <cgroupRoot>/kubepods/burstable/pod<uid>
//! <cgroupRoot>/kubepods/besteffort       cpu shares = 2
//! <cgroupRoot>/kubepods/besteffort/pod<uid>
//! ```
//!
//! The pod numbers come from [`crate::model::qos::pod_resource_config`]; this module only
//! places and writes them. Containers go below their pod's cgroup: the runtime creates them
//! from the cgroup parent handed over in the sandbox config ([`QosTree::cri_cgroup_parent`]).
//!
//! With `enforceNodeAllocatable: [pods]` (the default), `kubepods` gets what upstream's node
//! allocatable enforcement writes: cpu shares for capacity minus `systemReserved` and
//! `kubeReserved` cpu, a memory limit of capacity minus the reserved memory, and a pids limit
//! of `kernel.pid_max` minus the reserved pids. Without it, cpu shares for the whole capacity
//! and no limits. Not done: memory reservations for the QoS cgroups (`qosReserved`, refused by
//! the config); `cgroupsPerQOS: false` is refused by the config.

use k8s_openapi::api::core::v1::Pod;

use super::CgroupError;
use super::driver::{CgroupDriver, CgroupManager, MemoryUsage};
use super::hierarchy::{join, normalize};
use crate::config::{Config, NodeFacts, Reservation};
use crate::model::qos::{self, QosClass};

pub const KUBEPODS: &str = "kubepods";
pub const BURSTABLE: &str = "burstable";
pub const BEST_EFFORT: &str = "besteffort";
/// A pod's cgroup is `pod<uid>`.
pub const POD_PREFIX: &str = "pod";

/// The cgroups of the QoS classes and pods below one cgroup root.
#[derive(Debug, Clone)]
pub struct QosTree {
    driver: CgroupDriver,
    /// Normalized: `/` or `/a/b`.
    root: String,
    kubepods_memory_limit: Option<u64>,
    kubepods_cpu_shares: Option<u64>,
    kubepods_pids_limit: Option<u64>,
    pod_pids_limit: Option<u64>,
}

impl QosTree {
    /// The tree below `cgroup_root` (`"/"`, `"/bpflet-test-123"`), without limits on
    /// `kubepods` or pod pids.
    pub fn new(driver: CgroupDriver, cgroup_root: &str) -> Self {
        Self {
            driver,
            root: normalize(cgroup_root),
            kubepods_memory_limit: None,
            kubepods_cpu_shares: None,
            kubepods_pids_limit: None,
            pod_pids_limit: None,
        }
    }

    /// The tree as the config asks for it: `cgroupRoot`, `podPidsLimit`, and `kubepods`'s
    /// cpu shares, memory and pids limits from `capacity` and (with
    /// `enforceNodeAllocatable: [pods]`) the reservations (see the module docs).
    ///
    /// # Errors
    /// [`CgroupError::ReservationExceedsCapacity`].
    pub fn from_config(
        driver: CgroupDriver,
        config: &Config,
        capacity: &NodeCapacity,
    ) -> Result<Self, CgroupError> {
        let k = kubepods_settings(
            config.cgroups.enforce_pods_allocatable,
            &config.system_reserved,
            &config.kube_reserved,
            capacity,
        )?;
        Ok(Self::new(driver, &config.cgroups.root.to_string_lossy())
            .with_kubepods_memory_limit(k.memory_limit)
            .with_kubepods_cpu_shares(Some(k.cpu_shares))
            .with_kubepods_pids_limit(k.pids_limit)
            .with_pod_pids_limit(config.pod_pids_limit))
    }

    /// Gives all pods together this cpu weight (`None`: leave it).
    #[must_use]
    pub fn with_kubepods_cpu_shares(mut self, shares: Option<u64>) -> Self {
        self.kubepods_cpu_shares = shares;
        self
    }

    /// Limits the tasks of all pods together (`None`: no limit).
    #[must_use]
    pub fn with_kubepods_pids_limit(mut self, limit: Option<u64>) -> Self {
        self.kubepods_pids_limit = limit;
        self
    }

    /// Limits the memory of all pods together (`None`: no limit).
    #[must_use]
    pub fn with_kubepods_memory_limit(mut self, bytes: Option<u64>) -> Self {
        self.kubepods_memory_limit = bytes;
        self
    }

    /// Limits the tasks of each pod (`podPidsLimit`; `None`: no limit).
    #[must_use]
    pub fn with_pod_pids_limit(mut self, limit: Option<u64>) -> Self {
        self.pod_pids_limit = limit;
        self
    }

    #[must_use]
    pub fn driver(&self) -> &CgroupDriver {
        &self.driver
    }

    /// `<root>/kubepods`.
    #[must_use]
    pub fn kubepods(&self) -> String {
        join(&self.root, KUBEPODS)
    }

    /// The cgroup that holds the pods of a QoS class (`kubepods` for Guaranteed).
    #[must_use]
    pub fn qos_cgroup(&self, qos: QosClass) -> String {
        let kubepods = self.kubepods();
        match qos {
            QosClass::Guaranteed => kubepods,
            QosClass::Burstable => join(&kubepods, BURSTABLE),
            QosClass::BestEffort => join(&kubepods, BEST_EFFORT),
        }
    }

    /// Creates `kubepods` (with its memory limit, if any) and the Burstable and BestEffort
    /// cgroups, BestEffort with cpu shares 2. Burstable's shares are left to
    /// [`Self::update_qos_shares`]. Idempotent.
    ///
    /// # Errors
    /// What the driver reports, naming the cgroup file.
    pub fn ensure(&self) -> Result<(), CgroupError> {
        let kubepods = self.kubepods();
        self.driver.create(&kubepods)?;
        if let Some(limit) = self.kubepods_memory_limit {
            self.driver.set_memory_limit(&kubepods, Some(limit))?;
        }
        if let Some(shares) = self.kubepods_cpu_shares {
            self.driver.set_cpu_shares(&kubepods, shares)?;
        }
        if let Some(limit) = self.kubepods_pids_limit {
            self.driver.set_pids_limit(&kubepods, Some(limit))?;
        }
        self.driver.create(&self.qos_cgroup(QosClass::Burstable))?;
        let best_effort = self.qos_cgroup(QosClass::BestEffort);
        self.driver.create(&best_effort)?;
        self.driver
            .set_cpu_shares(&best_effort, qos::MIN_CPU_SHARES)?;
        Ok(())
    }

    /// Sets the Burstable cgroup's cpu shares to the sum of the Burstable pods' cpu requests
    /// (and BestEffort's back to 2) from the pods that run on the node. Returns Burstable's
    /// shares.
    ///
    /// # Errors
    /// What the driver reports.
    pub fn update_qos_shares<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Result<u64, CgroupError> {
        let millis = pods
            .into_iter()
            .filter(|p| qos::qos_class(p) == QosClass::Burstable)
            .map(|p| qos::pod_requests(p).cpu_millis)
            .fold(0u64, u64::saturating_add);
        let shares = qos::cpu_shares(millis);
        self.driver
            .set_cpu_shares(&self.qos_cgroup(QosClass::Burstable), shares)?;
        self.driver
            .set_cpu_shares(&self.qos_cgroup(QosClass::BestEffort), qos::MIN_CPU_SHARES)?;
        Ok(shares)
    }

    /// The pod's cgroup: `<root>/kubepods[/burstable|/besteffort]/pod<uid>`.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPodUid`] when the UID is missing or could leave the tree.
    pub fn pod_cgroup(&self, pod: &Pod) -> Result<String, CgroupError> {
        let uid = crate::model::pod_uid(pod);
        self.pod_cgroup_of(uid, qos::qos_class(pod))
    }

    /// The cgroup of the pod with `uid` in QoS class `qos`.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPodUid`].
    pub fn pod_cgroup_of(&self, uid: &str, qos: QosClass) -> Result<String, CgroupError> {
        check_uid(uid)?;
        Ok(join(&self.qos_cgroup(qos), &format!("{POD_PREFIX}{uid}")))
    }

    /// The cgroup parent to put in the pod sandbox config for the cgroupfs driver: the pod's
    /// cgroup path in the hierarchy.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPodUid`].
    pub fn cri_cgroup_parent(&self, pod: &Pod) -> Result<String, CgroupError> {
        self.pod_cgroup(pod)
    }

    /// Creates the pod's cgroup and applies its limits: cpu shares from the requests, CFS
    /// quota from the cpu limits (when every container has one), memory limit (when every
    /// container has one, lifted otherwise) and the configured pids limit. Returns the cgroup.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPodUid`] or what the driver reports.
    pub fn ensure_pod(&self, pod: &Pod) -> Result<String, CgroupError> {
        let cgroup = self.pod_cgroup(pod)?;
        let config = qos::pod_resource_config(pod);
        self.driver.create(&cgroup)?;
        self.driver.set_cpu_shares(&cgroup, config.cpu_shares)?;
        self.driver
            .set_cpu_quota(&cgroup, config.cpu_quota_us, config.cpu_period_us)?;
        self.driver
            .set_memory_limit(&cgroup, config.memory_limit_bytes)?;
        if let Some(limit) = self.pod_pids_limit {
            self.driver.set_pids_limit(&cgroup, Some(limit))?;
        }
        Ok(cgroup)
    }

    /// Whether the pod's cgroup exists (in every controller the driver manages).
    #[must_use]
    pub fn pod_cgroup_exists(&self, pod: &Pod) -> bool {
        self.pod_cgroup(pod)
            .is_ok_and(|cgroup| self.driver.exists(&cgroup))
    }

    /// Removes the cgroup of the pod with `uid`, whichever QoS class it sits under, with its
    /// container cgroups. Kills nothing: fails with [`CgroupError::Populated`] while a
    /// process is left. Returns whether there was anything to remove.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPodUid`], [`CgroupError::Populated`] or [`CgroupError::Remove`].
    pub fn remove_pod(&self, uid: &str) -> Result<bool, CgroupError> {
        let mut removed = false;
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            let cgroup = self.pod_cgroup_of(uid, qos)?;
            if self.driver.exists(&cgroup) {
                self.driver.remove(&cgroup)?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Every pod cgroup in the tree as `(uid, cgroup)`, sorted by cgroup: what an agent that
    /// restarted compares with its pods to find orphans.
    ///
    /// # Errors
    /// [`CgroupError::Walk`].
    pub fn list_pods(&self) -> Result<Vec<(String, String)>, CgroupError> {
        let mut pods = Vec::new();
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            let parent = self.qos_cgroup(qos);
            for name in self.driver.children(&parent)? {
                if let Some(uid) = name.strip_prefix(POD_PREFIX)
                    && check_uid(uid).is_ok()
                {
                    pods.push((uid.to_owned(), join(&parent, &name)));
                }
            }
        }
        pods.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(pods)
    }

    /// Memory usage and working set of all pods together (the `kubepods` cgroup), for the
    /// `allocatableMemory.available` eviction signal.
    ///
    /// # Errors
    /// [`CgroupError::Read`] or [`CgroupError::Malformed`].
    pub fn kubepods_usage(&self) -> Result<MemoryUsage, CgroupError> {
        self.driver.memory_usage(&self.kubepods())
    }

    /// The `kubepods` memory limit as the kernel has it (`None`: unlimited).
    ///
    /// # Errors
    /// [`CgroupError::Read`] or [`CgroupError::Malformed`].
    pub fn kubepods_memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        self.driver.memory_limit(&self.kubepods())
    }
}

/// A pod UID names one directory: letters, digits, `-` and `_` only (API UIDs are UUIDs,
/// static pod UIDs hex), so it can never walk out of the tree.
fn check_uid(uid: &str) -> Result<(), CgroupError> {
    let ok = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidPodUid {
            uid: uid.to_owned(),
        })
    }
}

/// What the node has, for `kubepods`'s settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCapacity {
    /// `MemTotal`.
    pub memory_bytes: u64,
    /// Online CPUs, in millicores.
    pub cpu_millis: u64,
    /// `kernel.pid_max`, when readable.
    pub pid_max: Option<u64>,
}

impl NodeCapacity {
    /// The capacity from what the configuration was checked against (read once, at load):
    /// one CPU when the count is unknown. `None` when the memory is unknown: no limit can be
    /// sized without it.
    #[must_use]
    pub fn from_facts(node: &NodeFacts) -> Option<Self> {
        Some(Self {
            memory_bytes: node.memory_bytes?,
            cpu_millis: node.cpu_millis.unwrap_or(1000),
            pid_max: node.pid_max,
        })
    }
}

/// What `kubepods` gets: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubepodsSettings {
    pub memory_limit: Option<u64>,
    pub cpu_shares: u64,
    pub pids_limit: Option<u64>,
}

/// `kubepods`'s settings from the node's capacity and, when `enforce` (`enforceNodeAllocatable`
/// has `pods`), the reservations subtracted, as upstream's node allocatable enforcement.
///
/// # Errors
/// [`CgroupError::ReservationExceedsCapacity`] for memory.
pub fn kubepods_settings(
    enforce: bool,
    system_reserved: &Reservation,
    kube_reserved: &Reservation,
    capacity: &NodeCapacity,
) -> Result<KubepodsSettings, CgroupError> {
    if !enforce {
        return Ok(KubepodsSettings {
            memory_limit: None,
            cpu_shares: qos::cpu_shares(capacity.cpu_millis),
            pids_limit: None,
        });
    }
    let reserved = |f: fn(&Reservation) -> Option<u64>| {
        f(system_reserved)
            .unwrap_or(0)
            .saturating_add(f(kube_reserved).unwrap_or(0))
    };
    Ok(KubepodsSettings {
        memory_limit: Some(allocatable_memory(
            capacity.memory_bytes,
            system_reserved,
            kube_reserved,
        )?),
        cpu_shares: qos::cpu_shares(
            capacity
                .cpu_millis
                .saturating_sub(reserved(|r| r.cpu_millis)),
        ),
        pids_limit: capacity
            .pid_max
            .map(|max| max.saturating_sub(reserved(|r| r.pids))),
    })
}

/// Node allocatable memory: `capacity - systemReserved - kubeReserved` (the hard eviction
/// threshold is not subtracted: it is what `kubepods` may use before the kernel steps in).
///
/// # Errors
/// [`CgroupError::ReservationExceedsCapacity`], as kubelet refuses to start then.
pub fn allocatable_memory(
    capacity: u64,
    system_reserved: &Reservation,
    kube_reserved: &Reservation,
) -> Result<u64, CgroupError> {
    let reserved = system_reserved
        .memory_bytes
        .unwrap_or(0)
        .saturating_add(kube_reserved.memory_bytes.unwrap_or(0));
    capacity
        .checked_sub(reserved)
        .ok_or(CgroupError::ReservationExceedsCapacity { capacity, reserved })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::cgroups::driver::V1_CONTROLLERS;

    const MI: u64 = 1 << 20;

    /// A pod with one container per `(requests, limits)`, written as `cpu=100m,memory=64Mi`.
    fn pod(uid: &str, containers: &[(&str, &str)]) -> Pod {
        let map = |s: &str| {
            let m: BTreeMap<String, Quantity> = s
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let (k, v) = e.split_once('=').expect("name=value");
                    (k.to_owned(), Quantity(v.to_owned()))
                })
                .collect();
            (!m.is_empty()).then_some(m)
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("default".to_owned()),
                uid: Some(uid.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .enumerate()
                    .map(|(i, (requests, limits))| Container {
                        name: format!("c{i}"),
                        resources: Some(ResourceRequirements {
                            requests: map(requests),
                            limits: map(limits),
                            ..ResourceRequirements::default()
                        }),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn guaranteed(uid: &str) -> Pod {
        let r = "cpu=500m,memory=64Mi";
        pod(uid, &[(r, r)])
    }

    fn burstable(uid: &str) -> Pod {
        pod(uid, &[("cpu=250m,memory=32Mi", "memory=128Mi")])
    }

    fn best_effort(uid: &str) -> Pod {
        pod(uid, &[("", "")])
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    struct V1 {
        dir: tempfile::TempDir,
        tree: QosTree,
    }

    impl V1 {
        fn new(root: &str) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            for c in V1_CONTROLLERS {
                fs::create_dir(dir.path().join(c)).expect("mkdir controller");
            }
            fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1").expect("cpus");
            fs::write(dir.path().join("cpuset/cpuset.mems"), "0").expect("mems");
            let tree = QosTree::new(CgroupDriver::v1(dir.path()), root);
            Self { dir, tree }
        }

        fn at(&self, controller: &str, rel: &str, file: &str) -> String {
            read(
                &self
                    .dir
                    .path()
                    .join(controller)
                    .join(rel.trim_start_matches('/'))
                    .join(file),
            )
        }
    }

    #[test]
    fn paths_follow_kubelets_cgroupfs_naming() {
        let t = QosTree::new(CgroupDriver::v1("/sys/fs/cgroup"), "/");
        assert_eq!(t.kubepods(), "/kubepods");
        assert_eq!(
            t.pod_cgroup(&guaranteed("g1")).expect("g"),
            "/kubepods/podg1"
        );
        assert_eq!(
            t.pod_cgroup(&burstable("b1")).expect("b"),
            "/kubepods/burstable/podb1"
        );
        assert_eq!(
            t.pod_cgroup(&best_effort("e1")).expect("e"),
            "/kubepods/besteffort/pode1"
        );

        let t = QosTree::new(CgroupDriver::v2("/sys/fs/cgroup"), "/bpflet-test-123/");
        let uid = "0b6c4d2e-8f0a-4c53-9a7e-2f1d3c4b5a69";
        assert_eq!(
            t.cri_cgroup_parent(&burstable(uid)).expect("parent"),
            format!("/bpflet-test-123/kubepods/burstable/pod{uid}")
        );
        assert_eq!(
            t.qos_cgroup(QosClass::Guaranteed),
            "/bpflet-test-123/kubepods"
        );
    }

    #[test]
    fn kubepods_gets_capacity_minus_reservations_when_pods_are_enforced() {
        let capacity = NodeCapacity {
            memory_bytes: 4096 * MI,
            cpu_millis: 2000,
            pid_max: Some(4_194_304),
        };
        let system = Reservation {
            cpu_millis: Some(500),
            memory_bytes: Some(1024 * MI),
            pids: Some(1000),
            ..Reservation::default()
        };
        let kube = Reservation {
            cpu_millis: Some(250),
            pids: Some(24),
            ..Reservation::default()
        };
        assert_eq!(
            kubepods_settings(true, &system, &kube, &capacity).expect("fits"),
            KubepodsSettings {
                memory_limit: Some(3072 * MI),
                cpu_shares: 1280, // 1250m
                pids_limit: Some(4_194_304 - 1024),
            }
        );
        // Not enforced: the whole capacity's weight, no limits (as upstream).
        assert_eq!(
            kubepods_settings(false, &system, &kube, &capacity).expect("fits"),
            KubepodsSettings {
                memory_limit: None,
                cpu_shares: 2048,
                pids_limit: None,
            }
        );
        // Unknown pid_max: no pids limit.
        let capacity = NodeCapacity {
            pid_max: None,
            ..capacity
        };
        assert_eq!(
            kubepods_settings(true, &system, &kube, &capacity)
                .expect("fits")
                .pids_limit,
            None
        );
    }

    #[test]
    fn v1_ensure_writes_kubepods_cpu_shares_and_pids_limit() {
        let f = V1::new("/");
        let tree = f
            .tree
            .clone()
            .with_kubepods_cpu_shares(Some(1280))
            .with_kubepods_pids_limit(Some(4096));
        tree.ensure().expect("ensure");
        assert_eq!(f.at("cpu", "/kubepods", "cpu.shares"), "1280");
        assert_eq!(f.at("pids", "/kubepods", "pids.max"), "4096");
    }

    #[test]
    fn uids_that_could_leave_the_tree_are_refused() {
        let t = QosTree::new(CgroupDriver::v1("/nonexistent"), "/");
        for bad in ["", "..", "../x", "a/b", "a b", "x\n"] {
            let err = t.pod_cgroup(&guaranteed(bad)).expect_err(bad);
            assert!(matches!(err, CgroupError::InvalidPodUid { .. }), "{bad:?}");
            assert!(t.remove_pod(bad).is_err(), "{bad:?}");
        }
        let mut no_uid = guaranteed("x");
        no_uid.metadata.uid = None;
        assert!(t.pod_cgroup(&no_uid).is_err());
    }

    #[test]
    fn v1_ensure_builds_the_qos_tree_with_the_allocatable_limit() {
        let f = V1::new("/r");
        let tree = f.tree.clone().with_kubepods_memory_limit(Some(256 * MI));
        tree.ensure().expect("ensure");
        for c in V1_CONTROLLERS {
            for rel in [
                "r/kubepods",
                "r/kubepods/burstable",
                "r/kubepods/besteffort",
            ] {
                assert!(f.dir.path().join(c).join(rel).is_dir(), "{c}/{rel}");
            }
        }
        assert_eq!(
            f.at("memory", "/r/kubepods", "memory.limit_in_bytes"),
            (256 * MI).to_string()
        );
        assert_eq!(f.at("cpu", "/r/kubepods/besteffort", "cpu.shares"), "2");
        assert_eq!(
            f.at("cpuset", "/r/kubepods/besteffort", "cpuset.cpus"),
            "0-1"
        );
        assert_eq!(tree.kubepods_memory_limit().expect("limit"), Some(256 * MI));
        tree.ensure().expect("ensure is idempotent");

        // Without enforcement kubepods is left unlimited.
        let f = V1::new("/");
        f.tree.ensure().expect("ensure");
        assert!(
            !f.dir
                .path()
                .join("memory/kubepods/memory.limit_in_bytes")
                .exists()
        );
    }

    #[test]
    fn v1_ensure_pod_applies_pod_resource_config() {
        let f = V1::new("/r");
        let tree = f.tree.clone().with_pod_pids_limit(Some(128));
        tree.ensure().expect("ensure");

        let g = tree.ensure_pod(&guaranteed("g1")).expect("guaranteed");
        assert_eq!(g, "/r/kubepods/podg1");
        assert_eq!(
            f.at("memory", &g, "memory.limit_in_bytes"),
            (64 * MI).to_string()
        );
        assert_eq!(f.at("cpu", &g, "cpu.shares"), "512");
        assert_eq!(f.at("cpu", &g, "cpu.cfs_quota_us"), "50000");
        assert_eq!(f.at("cpu", &g, "cpu.cfs_period_us"), "100000");
        assert_eq!(f.at("pids", &g, "pids.max"), "128");
        assert_eq!(f.at("cpuset", &g, "cpuset.mems"), "0");

        let b = tree.ensure_pod(&burstable("b1")).expect("burstable");
        assert_eq!(b, "/r/kubepods/burstable/podb1");
        assert_eq!(
            f.at("memory", &b, "memory.limit_in_bytes"),
            (128 * MI).to_string()
        );
        assert_eq!(f.at("cpu", &b, "cpu.shares"), "256");
        assert_eq!(f.at("cpu", &b, "cpu.cfs_quota_us"), "-1");

        // A container without a memory limit leaves the pod unlimited.
        let open = pod("b2", &[("cpu=100m", "memory=64Mi"), ("memory=1Mi", "")]);
        let b2 = tree.ensure_pod(&open).expect("burstable 2");
        assert_eq!(f.at("memory", &b2, "memory.limit_in_bytes"), "-1");

        let e = tree.ensure_pod(&best_effort("e1")).expect("besteffort");
        assert_eq!(e, "/r/kubepods/besteffort/pode1");
        assert_eq!(f.at("cpu", &e, "cpu.shares"), "2");

        let shares = tree
            .update_qos_shares([
                &guaranteed("g1"),
                &burstable("b1"),
                &open,
                &best_effort("e1"),
            ])
            .expect("qos shares");
        // 250m + 100m of Burstable requests.
        assert_eq!(shares, 358);
        assert_eq!(f.at("cpu", "/r/kubepods/burstable", "cpu.shares"), "358");
        assert_eq!(
            tree.update_qos_shares(std::iter::empty::<&Pod>())
                .expect("no pods"),
            2
        );

        assert_eq!(
            tree.list_pods().expect("list"),
            [
                ("e1".to_owned(), "/r/kubepods/besteffort/pode1".to_owned()),
                ("b1".to_owned(), "/r/kubepods/burstable/podb1".to_owned()),
                ("b2".to_owned(), "/r/kubepods/burstable/podb2".to_owned()),
                ("g1".to_owned(), "/r/kubepods/podg1".to_owned()),
            ]
        );
    }

    #[test]
    fn v1_remove_pod_finds_the_pod_in_any_class() {
        let f = V1::new("/");
        f.tree.ensure().expect("ensure");
        let b = f.tree.ensure_pod(&burstable("b1")).expect("pod");
        // The fixture's own files stand in for the kernel's: the kernel drops them on rmdir.
        for c in V1_CONTROLLERS {
            let dir = f.dir.path().join(c).join(b.trim_start_matches('/'));
            for entry in fs::read_dir(&dir).expect("read_dir") {
                fs::remove_file(entry.expect("entry").path()).expect("rm");
            }
        }
        fs::write(
            f.dir
                .path()
                .join("memory")
                .join(b.trim_start_matches('/'))
                .join("cgroup.procs"),
            "99\n",
        )
        .expect("procs");
        let err = f.tree.remove_pod("b1").expect_err("populated");
        assert!(matches!(err, CgroupError::Populated { .. }), "{err:?}");
        fs::remove_file(
            f.dir
                .path()
                .join("memory")
                .join(b.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
        .expect("rm procs");

        assert!(f.tree.remove_pod("b1").expect("remove"));
        assert!(!f.tree.driver().exists(&b));
        assert!(!f.tree.remove_pod("b1").expect("gone already"));
        assert_eq!(f.tree.list_pods().expect("list"), Vec::new());
    }

    #[test]
    fn v2_tree_writes_weights_and_cpu_max() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .expect("ctl");
        fs::write(dir.path().join("cgroup.subtree_control"), "").expect("subtree");
        let tree = QosTree::new(CgroupDriver::v2(dir.path()), "/")
            .with_kubepods_memory_limit(Some(300 * MI));
        tree.ensure().expect("ensure");
        let at = |rel: &str, file: &str| read(&dir.path().join(rel).join(file));
        assert_eq!(at("", "cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(
            at("kubepods", "cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        assert_eq!(at("kubepods", "memory.max"), (300 * MI).to_string());
        assert_eq!(at("kubepods/besteffort", "cpu.weight"), "1");

        let g = tree.ensure_pod(&guaranteed("g1")).expect("guaranteed");
        assert_eq!(at(g.trim_start_matches('/'), "cpu.max"), "50000 100000");
        assert_eq!(at(g.trim_start_matches('/'), "cpu.weight"), "20");
        assert_eq!(
            at(g.trim_start_matches('/'), "memory.max"),
            (64 * MI).to_string()
        );
        let b = tree.ensure_pod(&burstable("b1")).expect("burstable");
        assert_eq!(at(b.trim_start_matches('/'), "cpu.max"), "max 100000");
        assert_eq!(
            at("kubepods/burstable", "cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        assert!(
            !dir.path()
                .join(b.trim_start_matches('/'))
                .join("pids.max")
                .exists()
        );

        fs::write(dir.path().join("kubepods/memory.current"), "2048\n").expect("current");
        fs::write(
            dir.path().join("kubepods/memory.stat"),
            "inactive_file 1024\n",
        )
        .expect("stat");
        assert_eq!(
            tree.kubepods_usage().expect("usage"),
            MemoryUsage::new(2048, 1024)
        );
    }

    #[test]
    fn allocatable_is_capacity_minus_reservations() {
        let r = |memory| Reservation {
            memory_bytes: memory,
            ..Reservation::default()
        };
        assert_eq!(
            allocatable_memory(1024 * MI, &r(Some(512 * MI)), &r(Some(256 * MI))).expect("ok"),
            256 * MI
        );
        assert_eq!(
            allocatable_memory(1024 * MI, &r(None), &r(None)).expect("ok"),
            1024 * MI
        );
        let err = allocatable_memory(MI, &r(Some(MI)), &r(Some(1))).expect_err("too much");
        assert!(
            matches!(err, CgroupError::ReservationExceedsCapacity { capacity, reserved } if capacity == MI && reserved == MI + 1),
            "{err:?}"
        );
    }
}
