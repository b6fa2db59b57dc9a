//! QoS classes and the cgroup / OOM numbers derived from a pod's resources. Pure arithmetic.
//!
//! What is implemented, exactly:
//! - QoS class (upstream `GetPodQOS`): only `cpu` and `memory` count, over app and init
//!   containers; a request missing for a resource that has a limit defaults to the limit.
//!   BestEffort: no non-zero request or limit anywhere. Guaranteed: every container has
//!   non-zero cpu and memory limits and the summed requests equal the summed limits.
//!   Burstable: everything else.
//! - `oom_score_adj` (upstream `GetContainerOOMScoreAdjust`): Guaranteed -997, BestEffort
//!   1000, Burstable `1000 - 1000 * memoryRequest / memoryCapacity` clamped to `[3, 999]`.
//!   The floor is 3 (`1000 + guaranteedOOMScoreAdj`) because that is what the kubelet's code
//!   does; the kubernetes.io docs (and KUBELET-NOTES) print 2. A sidecar (restartable init
//!   container) gets at most the score of the regular container with the smallest memory
//!   request, so it is never killed before the app. A `system-node-critical` pod gets -997.
//! - cpu shares: `millicores * 1024 / 1000`, clamped to `[2, 262144]`; BestEffort pods 2.
//! - CFS quota: `millicores * period / 1000` with period 100000us, at least 1000us; none
//!   when there is no cpu limit.
//! - Pod totals (upstream `PodRequests` / `PodLimits`, sidecar-aware):
//!   `max(sum(app) + sum(sidecars), max over init containers i of (init_i + sum(sidecars
//!   started before i)))`, plus `spec.overhead`. The pod memory limit and cpu quota exist
//!   only when every container (app and init) declares that limit. The same total gives
//!   the pod's `ephemeral-storage` request, which admission fits against the node.
//!
//! - Pod-level resources (`spec.resources`, KEP-2837): when the pod declares cpu or memory
//!   there, the QoS class comes from the pod-level requests and limits alone (a request
//!   missing where a limit is set defaults to it), and each pod-level limit or request
//!   replaces the container total for that resource in the pod cgroup (overhead added).
//!
//! Quantities that do not parse count as absent: manifests are validated before they get
//! here ([`crate::pods::manifest`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::CONFIG_SOURCE_ANNOTATION;
use super::quantity::parse_quantity;

pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;
/// Upstream's code: `1000 + GUARANTEED_OOM_SCORE_ADJ`.
pub const BURSTABLE_MIN_OOM_SCORE_ADJ: i32 = 1000 + GUARANTEED_OOM_SCORE_ADJ;
pub const BURSTABLE_MAX_OOM_SCORE_ADJ: i32 = BEST_EFFORT_OOM_SCORE_ADJ - 1;
/// The agent's own process.
pub const AGENT_OOM_SCORE_ADJ: i32 = -999;

pub const MIN_CPU_SHARES: u64 = 2;
pub const MAX_CPU_SHARES: u64 = 262_144;
pub const CFS_PERIOD_US: u64 = 100_000;
pub const MIN_CFS_QUOTA_US: i64 = 1_000;

/// Priority at or above which a pod is critical (`system-cluster-critical` and up).
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// Summed cpu (millicores) and memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    fn add(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
        }
    }

    fn max(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.max(o.cpu_millis),
            memory_bytes: self.memory_bytes.max(o.memory_bytes),
        }
    }
}

/// cgroup settings for a pod's `pod<uid>` cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResourceConfig {
    pub qos: QosClass,
    pub cpu_shares: u64,
    /// `None`: no CFS quota.
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: u64,
    /// `None`: no memory limit.
    pub memory_limit_bytes: Option<u64>,
}

/// Linux resources for one container (what the CRI's `LinuxContainerResources` carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerResourceConfig {
    pub cpu_shares: u64,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: u64,
    pub memory_limit_bytes: Option<u64>,
    pub oom_score_adj: i32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Res {
    Cpu,
    Memory,
    EphemeralStorage,
}

impl Res {
    const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::EphemeralStorage => "ephemeral-storage",
        }
    }
}

fn lookup(map: Option<&BTreeMap<String, Quantity>>, res: Res) -> Option<u64> {
    let q = parse_quantity(&map?.get(res.name())?.0).ok()?;
    Some(match res {
        Res::Cpu => q.millis(),
        Res::Memory | Res::EphemeralStorage => q.bytes(),
    })
}

/// A container's limit for a resource (`None` when absent or zero).
fn limit(c: &Container, res: Res) -> Option<u64> {
    lookup(c.resources.as_ref()?.limits.as_ref(), res).filter(|&v| v > 0)
}

/// A container's request for a resource, defaulting to its limit.
fn request(c: &Container, res: Res) -> Option<u64> {
    let r = c.resources.as_ref()?;
    lookup(r.requests.as_ref(), res)
        .or_else(|| lookup(r.limits.as_ref(), res))
        .filter(|&v| v > 0)
}

fn requests_of(c: &Container) -> Resources {
    Resources {
        cpu_millis: request(c, Res::Cpu).unwrap_or(0),
        memory_bytes: request(c, Res::Memory).unwrap_or(0),
    }
}

fn limits_of(c: &Container) -> Resources {
    Resources {
        cpu_millis: limit(c, Res::Cpu).unwrap_or(0),
        memory_bytes: limit(c, Res::Memory).unwrap_or(0),
    }
}

/// Whether an init container is a sidecar (`restartPolicy: Always`).
#[must_use]
pub fn is_restartable_init_container(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn app_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    app_containers(pod).iter().chain(init_containers(pod))
}

fn pod_level(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ResourceRequirements> {
    pod.spec.as_ref()?.resources.as_ref()
}

/// A pod-level limit for `res`.
fn pod_level_limit(pod: &Pod, res: Res) -> Option<u64> {
    lookup(pod_level(pod)?.limits.as_ref(), res).filter(|&v| v > 0)
}

/// A pod-level request for `res`, defaulting to the pod-level limit.
fn pod_level_request(pod: &Pod, res: Res) -> Option<u64> {
    let r = pod_level(pod)?;
    lookup(r.requests.as_ref(), res)
        .or_else(|| lookup(r.limits.as_ref(), res))
        .filter(|&v| v > 0)
}

/// Whether the pod declares cpu or memory at pod level.
fn has_pod_level_resources(pod: &Pod) -> bool {
    [Res::Cpu, Res::Memory]
        .into_iter()
        .any(|res| pod_level_request(pod, res).is_some())
}

/// The pod's QoS class.
#[must_use]
pub fn qos_class(pod: &Pod) -> QosClass {
    if has_pod_level_resources(pod) {
        let both = [Res::Cpu, Res::Memory];
        return if both.into_iter().all(|res| {
            pod_level_limit(pod, res).is_some()
                && pod_level_limit(pod, res) == pod_level_request(pod, res)
        }) {
            QosClass::Guaranteed
        } else {
            QosClass::Burstable
        };
    }
    let mut requests = Resources::default();
    let mut limits = Resources::default();
    let mut any = false;
    let mut guaranteed = true;
    let mut requested = [false; 2];
    let mut limited = [false; 2];
    for c in all_containers(pod) {
        for (i, res) in [Res::Cpu, Res::Memory].into_iter().enumerate() {
            if request(c, res).is_some() {
                requested[i] = true;
                any = true;
            }
            if limit(c, res).is_some() {
                limited[i] = true;
                any = true;
            }
        }
        requests = requests.add(requests_of(c));
        limits = limits.add(limits_of(c));
        if limit(c, Res::Cpu).is_none() || limit(c, Res::Memory).is_none() {
            guaranteed = false;
        }
    }
    if !any {
        return QosClass::BestEffort;
    }
    if guaranteed && requested == limited && requests == limits {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// `millicores * 1024 / 1000`, clamped to `[2, 262144]` (upstream `MilliCPUToShares`).
#[must_use]
pub fn cpu_shares(millicores: u64) -> u64 {
    (millicores.saturating_mul(1024) / 1000).clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)
}

/// CFS quota for a cpu limit (upstream `MilliCPUToQuota`); `None` without a limit.
#[must_use]
pub fn cfs_quota_us(limit_millicores: u64, period_us: u64) -> Option<i64> {
    if limit_millicores == 0 {
        return None;
    }
    let quota = u128::from(limit_millicores) * u128::from(period_us) / 1000;
    Some(
        i64::try_from(quota)
            .unwrap_or(i64::MAX)
            .max(MIN_CFS_QUOTA_US),
    )
}

/// An amount [`pod_total`] adds up: [`Resources`], or one resource alone.
trait Amount: Copy + Default {
    fn plus(self, o: Self) -> Self;
    fn peak(self, o: Self) -> Self;
}

impl Amount for Resources {
    fn plus(self, o: Self) -> Self {
        self.add(o)
    }
    fn peak(self, o: Self) -> Self {
        self.max(o)
    }
}

impl Amount for u64 {
    fn plus(self, o: Self) -> Self {
        self.saturating_add(o)
    }
    fn peak(self, o: Self) -> Self {
        self.max(o)
    }
}

/// Sidecar-aware pod total of a per-container amount (see the module docs).
fn pod_total<T: Amount>(pod: &Pod, per_container: impl Fn(&Container) -> T) -> T {
    let mut total = app_containers(pod)
        .iter()
        .map(&per_container)
        .fold(T::default(), T::plus);
    let mut sidecars = T::default();
    let mut init_peak = T::default();
    for c in init_containers(pod) {
        let own = per_container(c);
        let candidate = if is_restartable_init_container(c) {
            total = total.plus(own);
            sidecars = sidecars.plus(own);
            sidecars
        } else {
            sidecars.plus(own)
        };
        init_peak = init_peak.peak(candidate);
    }
    total.peak(init_peak)
}

fn overhead(pod: &Pod) -> Resources {
    let map = pod.spec.as_ref().and_then(|s| s.overhead.as_ref());
    Resources {
        cpu_millis: lookup(map, Res::Cpu).unwrap_or(0),
        memory_bytes: lookup(map, Res::Memory).unwrap_or(0),
    }
}

/// The pod's effective requests, overhead included.
#[must_use]
pub fn pod_requests(pod: &Pod) -> Resources {
    let total = pod_total(pod, requests_of);
    Resources {
        cpu_millis: pod_level_request(pod, Res::Cpu).unwrap_or(total.cpu_millis),
        memory_bytes: pod_level_request(pod, Res::Memory).unwrap_or(total.memory_bytes),
    }
    .add(overhead(pod))
}

/// The pod's `ephemeral-storage` request in bytes, as [`pod_requests`] adds cpu and memory
/// (pod-level resources do not cover it, as upstream).
#[must_use]
pub fn pod_ephemeral_storage_request(pod: &Pod) -> u64 {
    let overhead = pod.spec.as_ref().and_then(|s| s.overhead.as_ref());
    pod_total(pod, |c| request(c, Res::EphemeralStorage).unwrap_or(0))
        .saturating_add(lookup(overhead, Res::EphemeralStorage).unwrap_or(0))
}

/// The pod's effective limits, overhead included; a resource is `None` unless every
/// container (app and init) declares a limit for it.
#[must_use]
pub fn pod_limits(pod: &Pod) -> (Option<u64>, Option<u64>) {
    let over = overhead(pod);
    let total = pod_total(pod, limits_of).add(over);
    let declared = |res| all_containers(pod).all(|c| limit(c, res).is_some());
    (
        pod_level_limit(pod, Res::Cpu)
            .map(|l| l.saturating_add(over.cpu_millis))
            .or_else(|| declared(Res::Cpu).then_some(total.cpu_millis)),
        pod_level_limit(pod, Res::Memory)
            .map(|l| l.saturating_add(over.memory_bytes))
            .or_else(|| declared(Res::Memory).then_some(total.memory_bytes)),
    )
}

/// cgroup settings of the pod-level cgroup (upstream `ResourceConfigForPod`).
#[must_use]
pub fn pod_resource_config(pod: &Pod) -> PodResourceConfig {
    let qos = qos_class(pod);
    let requests = pod_requests(pod);
    let (cpu_limit, memory_limit) = pod_limits(pod);
    match qos {
        QosClass::BestEffort => PodResourceConfig {
            qos,
            cpu_shares: MIN_CPU_SHARES,
            cpu_quota_us: None,
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: None,
        },
        QosClass::Guaranteed | QosClass::Burstable => PodResourceConfig {
            qos,
            cpu_shares: cpu_shares(requests.cpu_millis),
            cpu_quota_us: cpu_limit.and_then(|l| cfs_quota_us(l, CFS_PERIOD_US)),
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: memory_limit,
        },
    }
}

/// Linux resources of one container of `pod`.
#[must_use]
pub fn container_resource_config(
    pod: &Pod,
    container: &Container,
    memory_capacity_bytes: u64,
) -> ContainerResourceConfig {
    ContainerResourceConfig {
        cpu_shares: cpu_shares(request(container, Res::Cpu).unwrap_or(0)),
        cpu_quota_us: limit(container, Res::Cpu).and_then(|l| cfs_quota_us(l, CFS_PERIOD_US)),
        cpu_period_us: CFS_PERIOD_US,
        memory_limit_bytes: limit(container, Res::Memory),
        oom_score_adj: oom_score_adj(pod, container, memory_capacity_bytes),
    }
}

fn is_node_critical(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let is_static = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s != "api");
    let critical = is_static || spec.priority.is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY);
    critical && spec.priority_class_name.as_deref() == Some("system-node-critical")
}

/// `1000 - 1000 * request / capacity`, before clamping.
fn burstable_score(memory_request: u64, memory_capacity: u64) -> i64 {
    if memory_capacity == 0 {
        return i64::from(BEST_EFFORT_OOM_SCORE_ADJ);
    }
    let used = i128::from(memory_request) * 1000 / i128::from(memory_capacity);
    i64::try_from(1000 - used).unwrap_or(i64::MIN)
}

/// The `oom_score_adj` for a container of `pod` on a node with `memory_capacity_bytes`.
#[must_use]
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity_bytes: u64) -> i32 {
    if is_node_critical(pod) {
        return GUARANTEED_OOM_SCORE_ADJ;
    }
    match qos_class(pod) {
        QosClass::Guaranteed => return GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => return BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {}
    }
    let own = request(container, Res::Memory).unwrap_or(0);
    let mut score = burstable_score(own, memory_capacity_bytes);
    let is_sidecar = init_containers(pod)
        .iter()
        .any(|c| c.name == container.name && is_restartable_init_container(c));
    if is_sidecar {
        let smallest_app_request = app_containers(pod)
            .iter()
            .map(|c| request(c, Res::Memory).unwrap_or(0))
            .min()
            .unwrap_or(0);
        score = score.min(burstable_score(smallest_app_request, memory_capacity_bytes));
    }
    let score = i32::try_from(score.clamp(
        i64::from(BURSTABLE_MIN_OOM_SCORE_ADJ),
        i64::from(BEST_EFFORT_OOM_SCORE_ADJ),
    ))
    .unwrap_or(BURSTABLE_MAX_OOM_SCORE_ADJ);
    if score == BEST_EFFORT_OOM_SCORE_ADJ {
        BURSTABLE_MAX_OOM_SCORE_ADJ
    } else {
        score
    }
}

#[cfg(test)]
mod tests;
