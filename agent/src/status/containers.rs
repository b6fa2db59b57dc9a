//! `containerStatuses` and `initContainerStatuses`.

use std::cmp::Reverse;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::StatusContext;
use crate::model::container::WaitingReason;
use crate::model::qos::is_restartable_init_container;
use crate::pods::plan::{
    ContainerState as Observed, ObservedContainer, ObservedPod, ProbeVerdict, Waiting,
};
use crate::runtime::{REASON_COMPLETED, REASON_ERROR, REASON_OOM_KILLED};

/// `terminated.reason` of a container that was running and is gone from the runtime.
const REASON_STATUS_UNKNOWN: &str = "ContainerStatusUnknown";
/// The exit code reported for an OOM kill (SIGKILL) and for a container that vanished.
const EXIT_CODE_SIGKILL: i32 = 137;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Runs to completion before the next one starts.
    Init,
    /// A restartable init container (`restartPolicy: Always`).
    Sidecar,
    App {
        pod_has_init: bool,
    },
}

pub(super) fn init_statuses(
    pod: &Pod,
    observed: &ObservedPod,
    waiting: &[Waiting],
    ctx: &StatusContext,
) -> Vec<ContainerStatus> {
    let previous = ctx
        .previous
        .as_ref()
        .and_then(|p| p.init_container_statuses.as_deref())
        .unwrap_or_default();
    init_containers(pod)
        .iter()
        .map(|c| {
            let kind = if is_restartable_init_container(c) {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            container_status(pod, c, kind, observed, waiting, ctx, previous)
        })
        .collect()
}

/// App container statuses, sorted by name as upstream publishes them.
pub(super) fn app_statuses(
    pod: &Pod,
    observed: &ObservedPod,
    waiting: &[Waiting],
    ctx: &StatusContext,
) -> Vec<ContainerStatus> {
    let previous = ctx
        .previous
        .as_ref()
        .and_then(|p| p.container_statuses.as_deref())
        .unwrap_or_default();
    let kind = Kind::App {
        pod_has_init: !init_containers(pod).is_empty(),
    };
    let mut statuses: Vec<ContainerStatus> = app_containers(pod)
        .iter()
        .map(|c| container_status(pod, c, kind, observed, waiting, ctx, previous))
        .collect();
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    statuses
}

pub(super) fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

pub(super) fn app_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn container_status(
    pod: &Pod,
    c: &Container,
    kind: Kind,
    observed: &ObservedPod,
    waiting: &[Waiting],
    ctx: &StatusContext,
    previous: &[ContainerStatus],
) -> ContainerStatus {
    let prev = previous.iter().find(|s| s.name == c.name);
    // Newest first, as `ObservedPod::latest` orders them.
    let mut history: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|o| o.name == c.name)
        .collect();
    history.sort_by_key(|o| Reverse((o.created, o.restart_count)));
    let latest = history.first().copied();

    let mut status = match latest {
        Some(latest) => from_runtime(c, latest, history.get(1).copied(), prev, ctx),
        None => not_in_runtime(pod, c, kind, prev),
    };
    if let Some(w) = waiting.iter().find(|w| w.container == c.name) {
        apply_waiting(&mut status, w, latest.is_none());
    }
    set_readiness(&mut status, c, kind, latest, ctx);
    status
}

/// The latest container gives the state, the one before it (or the previous status) the
/// last state.
fn from_runtime(
    c: &Container,
    latest: &ObservedContainer,
    before: Option<&ObservedContainer>,
    prev: Option<&ContainerStatus>,
    ctx: &StatusContext,
) -> ContainerStatus {
    let image = ctx.images.get(&latest.id);
    let state = match latest.state {
        Observed::Running => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: latest.started_at.map(Time),
            }),
            ..ContainerState::default()
        },
        Observed::Created => waiting_state(WaitingReason::ContainerCreating.as_str(), None),
        Observed::Exited => ContainerState {
            terminated: Some(terminated(latest, prev, ctx)),
            ..ContainerState::default()
        },
        Observed::Unknown => ContainerState {
            waiting: Some(ContainerStateWaiting::default()),
            ..ContainerState::default()
        },
    };
    let last = match before {
        Some(b) if b.state == Observed::Exited => Some(terminated(b, prev, ctx)),
        _ if latest.restart_count > 0 => previous_attempt(prev, &container_id(ctx, &latest.id)),
        _ => None,
    };
    ContainerStatus {
        name: c.name.clone(),
        container_id: Some(container_id(ctx, &latest.id)),
        image: image
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .or_else(|| c.image.clone())
            .unwrap_or_default(),
        image_id: image.map(|i| i.image_ref.clone()).unwrap_or_default(),
        restart_count: i32::try_from(latest.restart_count).unwrap_or(i32::MAX),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

/// A container the runtime does not know (not created yet, or removed).
fn not_in_runtime(
    pod: &Pod,
    c: &Container,
    kind: Kind,
    prev: Option<&ContainerStatus>,
) -> ContainerStatus {
    let default_reason = match kind {
        Kind::App { pod_has_init: true } => WaitingReason::PodInitializing,
        _ => WaitingReason::ContainerCreating,
    };
    let mut status = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        state: Some(waiting_state(default_reason.as_str(), None)),
        last_state: Some(ContainerState::default()),
        ..ContainerStatus::default()
    };
    let Some(prev) = prev else {
        return status;
    };
    let prev_state = prev.state.as_ref();
    if prev_state.is_some_and(|s| s.terminated.is_some()) {
        // Garbage-collected after it finished: its last status still holds.
        return prev.clone();
    }
    status.restart_count = prev.restart_count;
    if let Some(last) = &prev.last_state {
        status.last_state = Some(last.clone());
    }
    let had_last = status
        .last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some());
    if prev_state.is_some_and(|s| s.running.is_some()) && !had_last {
        // It was running and is gone: say so rather than look like it never started.
        status.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: EXIT_CODE_SIGKILL,
                reason: Some(REASON_STATUS_UNKNOWN.to_owned()),
                message: Some(
                    "The container could not be located in the runtime. It used to be running"
                        .to_owned(),
                ),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        if pod.metadata.deletion_timestamp.is_none() {
            status.restart_count = status.restart_count.saturating_add(1);
        }
    }
    status
}

/// The planner's (or the worker's) verdict: `CrashLoopBackOff` and the failure reasons
/// (`RunContainerError`, `ErrImageNeverPull`, ...) replace a state that is not running (a
/// terminated one becomes the last state); `ContainerCreating` / `PodInitializing` only name
/// why a container the runtime does not have yet is waiting.
fn apply_waiting(status: &mut ContainerStatus, w: &Waiting, not_created: bool) {
    let state = status.state.get_or_insert_with(ContainerState::default);
    match w.reason {
        WaitingReason::ContainerCreating | WaitingReason::PodInitializing => {
            if not_created && state.waiting.is_some() {
                *state = waiting_state(w.reason.as_str(), w.message.clone());
            }
        }
        _ if state.running.is_some() => {}
        _ => {
            if state.terminated.is_some() {
                status.last_state = Some(state.clone());
            }
            *state = waiting_state(w.reason.as_str(), w.message.clone());
        }
    }
}

fn set_readiness(
    status: &mut ContainerStatus,
    c: &Container,
    kind: Kind,
    latest: Option<&ObservedContainer>,
    ctx: &StatusContext,
) {
    let state = status.state.as_ref();
    let running = state.is_some_and(|s| s.running.is_some());
    if kind == Kind::Init {
        status.started = Some(running);
        status.ready = state
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        return;
    }
    let started = running
        && (c.startup_probe.is_none()
            || latest.is_some_and(|l| l.startup == ProbeVerdict::Success));
    let ready = started
        && (c.readiness_probe.is_none()
            || latest.is_some_and(|l| ctx.facts(&l.id).ready_by_probe == Some(true)));
    status.started = Some(started);
    status.ready = ready;
}

fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

fn container_id(ctx: &StatusContext, id: &str) -> String {
    format!("{}://{id}", ctx.runtime_type())
}

/// An exited container's terminated state, with what the kernel saw, and with a kernel OOM
/// verdict an earlier status recorded for the same container.
fn terminated(
    o: &ObservedContainer,
    prev: Option<&ContainerStatus>,
    ctx: &StatusContext,
) -> ContainerStateTerminated {
    let id = container_id(ctx, &o.id);
    let facts = ctx.facts(&o.id);
    // Exited containers always carry an exit code from containerd; without one the planner
    // and the phase treat the exit as a failure, and so does the status.
    let mut exit_code = o.exit_code.unwrap_or(-1);
    let mut reason = o
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            if exit_code == 0 {
                REASON_COMPLETED
            } else {
                REASON_ERROR
            }
            .to_owned()
        });
    let mut messages = Vec::new();
    if facts.oom_killed_by_kernel {
        if reason != REASON_OOM_KILLED {
            messages.push(format!(
                "The kernel OOM-killed the container's init process; the runtime reported {reason} \
                 with exit code {exit_code}."
            ));
        }
        reason = REASON_OOM_KILLED.to_owned();
        exit_code = EXIT_CODE_SIGKILL;
    }
    if facts.process_oom_kills > 0 {
        let n = facts.process_oom_kills;
        let noun = if n == 1 { "process" } else { "processes" };
        messages.push(format!(
            "The kernel OOM-killed {n} other {noun} of the container."
        ));
    }
    let mut message = (!messages.is_empty()).then(|| messages.join(" "));

    let earlier = prev
        .into_iter()
        .flat_map(|p| [p.state.as_ref(), p.last_state.as_ref()])
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .find(|t| t.container_id.as_deref() == Some(id.as_str()));
    if let Some(earlier) = earlier {
        if earlier.reason.as_deref() == Some(REASON_OOM_KILLED) && reason != REASON_OOM_KILLED {
            reason = REASON_OOM_KILLED.to_owned();
            exit_code = earlier.exit_code;
        }
        if message.is_none() {
            message.clone_from(&earlier.message);
        }
    }

    ContainerStateTerminated {
        container_id: Some(id),
        exit_code,
        reason: Some(reason),
        message,
        started_at: o.started_at.map(Time),
        finished_at: o.finished_at.map(Time),
        ..ContainerStateTerminated::default()
    }
}

/// The previous status's record of an earlier attempt than `current` (its own container
/// is gone from the runtime): the most recent terminated state of another container.
fn previous_attempt(
    prev: Option<&ContainerStatus>,
    current: &str,
) -> Option<ContainerStateTerminated> {
    prev.into_iter()
        .flat_map(|p| [p.state.as_ref(), p.last_state.as_ref()])
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .filter(|t| t.container_id.as_deref() != Some(current))
        .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))
        .cloned()
}
