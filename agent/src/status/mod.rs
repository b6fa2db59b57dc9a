//! Pod status: (pod, observed runtime state, the planner's waiting reasons, kernel and probe
//! facts, the previous status) -> `v1.PodStatus`. Pure; the pod worker calls it after each
//! sync and publishes the result through the [`manager::StatusManager`].
//!
//! What follows upstream (`generateAPIPodStatus`, `convertToAPIContainerStatuses`, the
//! status manager's transition-time rule):
//! - container statuses: app containers sorted by name, init containers in spec order; a
//!   container the runtime never created is waiting (`ContainerCreating`, or
//!   `PodInitializing` for app containers of a pod with init containers); the latest
//!   container gives `state`, the one before it `lastState`; a container held in backoff is
//!   waiting `CrashLoopBackOff` with the planner's message and its exit in `lastState`; a
//!   container that is not running and whose start failed is waiting with the failure's
//!   reason and message (`CreateContainerConfigError`, `RunContainerError`,
//!   `ErrImageNeverPull`, ...), as upstream's reason cache shows them;
//! - a container that was running in the previous status and is gone from the runtime gets
//!   `lastState.terminated` `ContainerStatusUnknown`/137 (and one more restart unless the pod
//!   is being deleted); a terminated container the runtime garbage-collected keeps its
//!   previous status;
//! - `started`: running and (no startup probe or it succeeded); `ready`: started and (no
//!   readiness probe or its verdict is success); a regular init container is ready once it
//!   exited 0;
//! - phase from [`pod_phase`]; a terminal phase (Succeeded, Failed) never changes back, and
//!   keeps its reason and message (an eviction stays an eviction);
//! - conditions `PodReadyToStartContainers`, `Initialized`, `Ready`, `ContainersReady`,
//!   `PodScheduled`, in that order, then every other condition of the previous status
//!   (`DisruptionTarget`, readiness-gate conditions) unchanged. A condition keeps its
//!   `lastTransitionTime` while its status stays the same. Readiness gates are honoured
//!   against the previous status's conditions;
//! - `podIP(s)` from the latest ready sandbox (the node IPs for host-network pods; a terminal
//!   pod whose sandbox is gone keeps its last IPs); `hostIP(s)` the node IPs; `startTime`
//!   the first time a status was computed; `qosClass`.
//!
//! Where bpflet reports more than upstream, from the kernel ([`ContainerFacts`]):
//! - a container whose init process the kernel OOM-killed is `OOMKilled` with exit code 137
//!   even when the runtime said `Error` (its message says what the runtime reported), and
//!   stays so in later statuses;
//! - OOM kills of other processes in an exited container are counted in its message.
//!
//! Deliberate differences: a container created but not started is waiting
//! `ContainerCreating` (upstream leaves the reason empty); the facts are keyed by container
//! id, not name, so a verdict about one attempt never lands on the next one.

mod conditions;
mod containers;
pub mod manager;
pub mod node;

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::model::qos::qos_class;
use crate::pods::plan::{ObservedPod, ObservedSandbox, Phase, Waiting, pod_phase};

/// `status.reason` of an evicted pod.
pub const REASON_EVICTED: &str = "Evicted";
/// The condition the kubelet sets on a pod it is about to kill (eviction, shutdown).
pub const CONDITION_DISRUPTION_TARGET: &str = "DisruptionTarget";
/// `DisruptionTarget` reason when the kubelet itself terminates the pod.
pub const REASON_TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
/// The runtime name in `containerID` (`containerd://<id>`) unless the context says otherwise.
pub const DEFAULT_RUNTIME_TYPE: &str = "containerd";

/// What the kernel and the probe manager know about one container (by container id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// The kernel OOM-killed the container's init process: report `OOMKilled` / 137 even
    /// where the runtime said `Error`.
    pub oom_killed_by_kernel: bool,
    /// Other processes of the container the kernel OOM-killed.
    pub process_oom_kills: u32,
    /// The readiness probe's verdict; `None` while it has not concluded. Only read for
    /// containers that declare a readiness probe.
    pub ready_by_probe: Option<bool>,
}

/// The image a container runs, as the runtime reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerImage {
    /// The image as the container was created from (`status.image`).
    pub image: String,
    /// The digested reference or id the runtime resolved (`status.imageID`).
    pub image_ref: String,
}

/// Inputs to [`pod_status`] besides the pod and what the runtime reports.
#[derive(Debug, Clone, Default)]
pub struct StatusContext {
    /// The node's IPs, primary first: `hostIP(s)`, and `podIP(s)` of host-network pods.
    pub node_ips: Vec<IpAddr>,
    /// The status computed last time for this pod (same UID), if any.
    pub previous: Option<PodStatus>,
    pub now: Timestamp,
    /// Kernel and probe facts by container id.
    pub facts: HashMap<String, ContainerFacts>,
    /// Images by container id.
    pub images: HashMap<String, ContainerImage>,
    /// The runtime name for `containerID`; empty means [`DEFAULT_RUNTIME_TYPE`].
    pub runtime_type: String,
}

impl StatusContext {
    fn runtime_type(&self) -> &str {
        if self.runtime_type.is_empty() {
            DEFAULT_RUNTIME_TYPE
        } else {
            &self.runtime_type
        }
    }

    fn facts(&self, container_id: &str) -> ContainerFacts {
        self.facts.get(container_id).copied().unwrap_or_default()
    }
}

/// The pod's status as the kubelet would publish it.
#[must_use]
pub fn pod_status(
    pod: &Pod,
    observed: &ObservedPod,
    waiting: &[Waiting],
    ctx: &StatusContext,
) -> PodStatus {
    let previous = ctx.previous.as_ref();
    let init_statuses = containers::init_statuses(pod, observed, waiting, ctx);
    let app_statuses = containers::app_statuses(pod, observed, waiting, ctx);

    let mut status = PodStatus {
        qos_class: Some(qos_class(pod).as_str().to_owned()),
        start_time: Some(
            previous
                .and_then(|p| p.start_time.clone())
                .unwrap_or(Time(ctx.now)),
        ),
        ..PodStatus::default()
    };

    let computed = pod_phase(pod, observed).as_str();
    match previous {
        Some(prev) if is_terminal(prev.phase.as_deref()) => {
            status.phase.clone_from(&prev.phase);
            status.reason.clone_from(&prev.reason);
            status.message.clone_from(&prev.message);
        }
        _ => status.phase = Some(computed.to_owned()),
    }
    let phase = status.phase.clone().unwrap_or_default();

    // Addresses.
    let node_ips: Vec<String> = ctx.node_ips.iter().map(ToString::to_string).collect();
    if let Some(first) = node_ips.first() {
        status.host_ip = Some(first.clone());
        status.host_ips = Some(
            node_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        );
    }
    let pod_ips = if host_network(pod) {
        node_ips.clone()
    } else {
        latest_sandbox(observed)
            .filter(|s| s.ready)
            .and_then(|s| s.ip.clone())
            .filter(|ip| !ip.is_empty())
            .into_iter()
            .collect()
    };
    if let Some(first) = pod_ips.first() {
        status.pod_ip = Some(first.clone());
        status.pod_ips = Some(pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect());
    } else if is_terminal(Some(&phase))
        && let Some(prev) = previous
    {
        status.pod_ip.clone_from(&prev.pod_ip);
        status.pod_ips.clone_from(&prev.pod_ips);
    }

    // Conditions.
    let mut conditions = conditions::kubelet_conditions(
        pod,
        observed,
        &init_statuses,
        &app_statuses,
        &phase,
        previous,
    );
    for c in &mut conditions {
        set_transition_time(c, previous, ctx.now);
    }
    if let Some(prev) = previous {
        let others = prev.conditions.iter().flatten();
        conditions.extend(
            others
                .filter(|c| !conditions::is_kubelet_owned(&c.type_))
                .cloned(),
        );
    }
    status.conditions = Some(conditions);

    status.init_container_statuses = (!init_statuses.is_empty()).then_some(init_statuses);
    status.container_statuses = Some(app_statuses);
    status
}

/// Marks the pod evicted: phase `Failed`, reason `Evicted`, `message`, and condition
/// `DisruptionTarget` True (`TerminationByKubelet`). [`pod_status`] keeps all of it from
/// then on.
pub fn mark_evicted(status: &mut PodStatus, message: &str, now: Timestamp) {
    status.phase = Some(Phase::Failed.as_str().to_owned());
    status.reason = Some(REASON_EVICTED.to_owned());
    status.message = Some(message.to_owned());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let existing = conditions
        .iter()
        .position(|c| c.type_ == CONDITION_DISRUPTION_TARGET);
    let transition = existing
        .map(|i| &conditions[i])
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = PodCondition {
        type_: CONDITION_DISRUPTION_TARGET.to_owned(),
        status: "True".to_owned(),
        reason: Some(REASON_TERMINATION_BY_KUBELET.to_owned()),
        message: Some(message.to_owned()),
        last_transition_time: Some(transition),
        ..PodCondition::default()
    };
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn latest_sandbox(observed: &ObservedPod) -> Option<&ObservedSandbox> {
    observed
        .sandboxes
        .iter()
        .max_by_key(|s| (s.created, s.attempt))
}

/// Keeps the previous `lastTransitionTime` while the condition's status is unchanged.
fn set_transition_time(c: &mut PodCondition, previous: Option<&PodStatus>, now: Timestamp) {
    let old = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|o| o.type_ == c.type_));
    c.last_transition_time = match old {
        Some(o) if o.status == c.status && o.last_transition_time.is_some() => {
            o.last_transition_time.clone()
        }
        _ => Some(Time(now)),
    };
}

#[cfg(test)]
mod tests;
