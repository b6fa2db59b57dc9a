//! The pod conditions the kubelet owns.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition, PodStatus};

use super::containers::{app_containers, init_containers};
use super::{host_network, latest_sandbox};
use crate::model::qos::is_restartable_init_container;
use crate::pods::plan::ObservedPod;

const POD_SCHEDULED: &str = "PodScheduled";
const POD_READY_TO_START_CONTAINERS: &str = "PodReadyToStartContainers";
const INITIALIZED: &str = "Initialized";
const CONTAINERS_READY: &str = "ContainersReady";
const READY: &str = "Ready";

const REASON_POD_COMPLETED: &str = "PodCompleted";
const REASON_POD_FAILED: &str = "PodFailed";
const REASON_CONTAINERS_NOT_INITIALIZED: &str = "ContainersNotInitialized";
const REASON_CONTAINERS_NOT_READY: &str = "ContainersNotReady";
const REASON_READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";

/// Conditions [`kubelet_conditions`] computes; every other condition is carried over.
pub(super) fn is_kubelet_owned(condition_type: &str) -> bool {
    matches!(
        condition_type,
        POD_SCHEDULED | POD_READY_TO_START_CONTAINERS | INITIALIZED | CONTAINERS_READY | READY
    )
}

/// The kubelet's conditions in upstream's order, without transition times.
pub(super) fn kubelet_conditions(
    pod: &Pod,
    observed: &ObservedPod,
    init: &[ContainerStatus],
    app: &[ContainerStatus],
    phase: &str,
    previous: Option<&PodStatus>,
) -> Vec<PodCondition> {
    let containers_ready = containers_ready(pod, init, app, phase);
    vec![
        condition(
            POD_READY_TO_START_CONTAINERS,
            sandbox_ready(pod, observed),
            None,
            None,
        ),
        initialized(pod, init, app, phase),
        ready(pod, &containers_ready, previous),
        containers_ready,
        condition(POD_SCHEDULED, true, None, None),
    ]
}

fn condition(
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        ..PodCondition::default()
    }
}

/// Exactly one sandbox is ready, it is the latest, and its network is the one the spec
/// asks for (the planner would not create a new one).
fn sandbox_ready(pod: &Pod, observed: &ObservedPod) -> bool {
    let Some(latest) = latest_sandbox(observed) else {
        return false;
    };
    observed.sandboxes.iter().filter(|s| s.ready).count() == 1
        && latest.ready
        && latest.host_network == host_network(pod)
        && (latest.host_network || latest.ip.as_deref().is_some_and(|ip| !ip.is_empty()))
}

/// Go's `%s` of a string slice: `[a b]`.
fn name_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

fn initialized(
    pod: &Pod,
    init: &[ContainerStatus],
    app: &[ContainerStatus],
    phase: &str,
) -> PodCondition {
    let specs = init_containers(pod);
    if specs.is_empty() {
        return condition(INITIALIZED, true, None, None);
    }
    let incomplete: Vec<&str> = specs
        .iter()
        .filter(|c| {
            let Some(s) = init.iter().find(|s| s.name == c.name) else {
                return true;
            };
            if is_restartable_init_container(c) {
                s.started != Some(true)
            } else {
                !s.ready
            }
        })
        .map(|c| c.name.as_str())
        .collect();
    if phase == "Succeeded" {
        return condition(INITIALIZED, true, Some(REASON_POD_COMPLETED), None);
    }
    // An app container that ran means the pod was initialized (sidecars may be restarting).
    let app_started = app.iter().any(|s| {
        let ran = |st: Option<&k8s_openapi::api::core::v1::ContainerState>| {
            st.is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        };
        ran(s.state.as_ref()) || ran(s.last_state.as_ref())
    });
    if app_started || incomplete.is_empty() {
        return condition(INITIALIZED, true, None, None);
    }
    condition(
        INITIALIZED,
        false,
        Some(REASON_CONTAINERS_NOT_INITIALIZED),
        Some(format!(
            "containers with incomplete status: {}",
            name_list(&incomplete)
        )),
    )
}

fn containers_ready(
    pod: &Pod,
    init: &[ContainerStatus],
    app: &[ContainerStatus],
    phase: &str,
) -> PodCondition {
    match phase {
        "Succeeded" => {
            return condition(CONTAINERS_READY, false, Some(REASON_POD_COMPLETED), None);
        }
        "Failed" => return condition(CONTAINERS_READY, false, Some(REASON_POD_FAILED), None),
        _ => {}
    }
    let sidecars = init_containers(pod)
        .iter()
        .filter(|c| is_restartable_init_container(c))
        .map(|c| (c, init));
    let apps = app_containers(pod).iter().map(|c| (c, app));
    let unready: Vec<&str> = sidecars
        .chain(apps)
        .filter(|(c, statuses)| !statuses.iter().any(|s| s.name == c.name && s.ready))
        .map(|(c, _)| c.name.as_str())
        .collect();
    if unready.is_empty() {
        condition(CONTAINERS_READY, true, None, None)
    } else {
        condition(
            CONTAINERS_READY,
            false,
            Some(REASON_CONTAINERS_NOT_READY),
            Some(format!(
                "containers with unready status: {}",
                name_list(&unready)
            )),
        )
    }
}

/// `ContainersReady` and every readiness gate's condition (set by others, so read from the
/// previous status) is True.
fn ready(pod: &Pod, containers_ready: &PodCondition, previous: Option<&PodStatus>) -> PodCondition {
    if containers_ready.status != "True" {
        return PodCondition {
            type_: READY.to_owned(),
            ..containers_ready.clone()
        };
    }
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or_default();
    let known = previous
        .and_then(|p| p.conditions.as_deref())
        .unwrap_or_default();
    let unready: Vec<String> = gates
        .iter()
        .filter_map(|g| {
            let t = &g.condition_type;
            match known.iter().find(|c| &c.type_ == t) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate \"{t}\" does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate \"{t}\" is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        })
        .collect();
    if unready.is_empty() {
        condition(READY, true, None, None)
    } else {
        condition(
            READY,
            false,
            Some(REASON_READINESS_GATES_NOT_READY),
            Some(unready.join(", ")),
        )
    }
}
