//! The pure lifecycle planner: (desired pod, observed runtime state, backoff, now) ->
//! actions, modelled on the kubelet's `computePodActions`, and the pod phase.
//!
//! The planner knows nothing about the CRI: the runtime layer fills an [`ObservedPod`]
//! (and the probe manager the probe verdicts), and applies the [`PodActions`]:
//! 1. `kill_pod`: stop every container and sandbox of the pod;
//! 2. `containers_to_kill`: stop these containers;
//! 3. `create_sandbox`: create a new sandbox (then start containers in it);
//! 4. `init_containers_to_start`, then `containers_to_start`, skipping those whose
//!    `backoff` is set (they are in CrashLoopBackOff; record each real restart with
//!    [`Backoff::record_restart`]).
//!
//! Deliberate differences from upstream: the restart backoff is decided here, not when the
//! container is started, so the planner can report `CrashLoopBackOff` itself; ephemeral
//! containers and in-place resize are not modelled.
//!
//! A start that failed before the container ran (recorded in the [`Backoff`]) backs off like
//! a crash. While it waits, the container shows: `CrashLoopBackOff` after the runtime refused
//! to create or start it, with upstream's back-off sentence followed by the runtime's
//! message; `ImagePullBackOff` after an image could not be pulled; and the failure's own
//! reason and message otherwise (`CreateContainerConfigError`, `ErrImageNeverPull`, which
//! upstream repeats at every sync).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use sha2::{Digest, Sha256};

use super::backoff::{Backoff, BackoffKey, BackoffState};
use crate::config::duration::format_duration;
use crate::model::container::WaitingReason;
use crate::model::qos::is_restartable_init_container;
use crate::model::{format_pod, pod_uid};

/// A sandbox as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub id: String,
    pub ready: bool,
    pub created: Timestamp,
    /// The attempt number it was created with.
    pub attempt: u32,
    pub host_network: bool,
    /// The pod IP; `None` or empty when the network is not set up.
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A probe's latest verdict for a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// No probe, or it has not concluded yet.
    #[default]
    Unknown,
    Success,
    Failure,
}

/// A container as the runtime reports it (any sandbox of the pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    pub created: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    /// Runtime reason for an exit (`OOMKilled`, `Error`, `Completed`).
    pub reason: Option<String>,
    /// The attempt number it was created with (= restarts before it).
    pub restart_count: u32,
    /// The [`container_hash`] it was created from (a label on the container).
    pub spec_hash: Option<String>,
    pub liveness: ProbeVerdict,
    pub startup: ProbeVerdict,
}

/// Everything the runtime knows about one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPod {
    pub sandboxes: Vec<ObservedSandbox>,
    pub containers: Vec<ObservedContainer>,
}

impl ObservedPod {
    /// The latest container with this name (by creation time, then attempt).
    #[must_use]
    pub fn latest(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| (c.created, c.restart_count))
    }

    fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.iter().max_by_key(|s| (s.created, s.attempt))
    }
}

/// Why the whole pod is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPodReason {
    /// The sandbox must be recreated: everything in the old one goes.
    SandboxChanged,
    /// No container runs or will be restarted: stop the sandbox.
    PodDone,
    /// An init container failed and the restart policy is Never.
    InitContainerFailed,
    /// The pod has a deletion timestamp.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillPod {
    pub reason: KillPodReason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxReason {
    NoSandbox,
    NotReady,
    MultipleReady,
    NetworkChanged,
    NoIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSandbox {
    pub attempt: u32,
    pub reason: SandboxReason,
    pub message: String,
}

/// Why a container is (re)started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    NotCreated,
    Exited {
        exit_code: i32,
    },
    /// Created but never started (a failed start).
    CreatedNotStarted,
    UnknownState,
    SpecChanged,
    LivenessFailed,
    StartupFailed,
    /// First container(s) of a new sandbox.
    NewSandbox,
}

/// The container is in back-off: do not start it before `remaining` has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffWait {
    pub delay: Duration,
    pub remaining: Duration,
    /// `CrashLoopBackOff`, or why the last start failed (see the module docs).
    pub reason: WaitingReason,
    /// `back-off 20s restarting failed container=app pod=web-node_default(uid)`.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStart {
    /// Index into `spec.initContainers` or `spec.containers`.
    pub index: usize,
    pub name: String,
    /// Attempt number for the new container (the previous one's + 1, or 0).
    pub attempt: u32,
    pub reason: StartReason,
    /// Set when the start must wait (CrashLoopBackOff).
    pub backoff: Option<BackoffWait>,
    /// When the previous attempt ended (its exit, or its failed start): a start that goes
    /// ahead records itself with [`Backoff::record_restart`] from this, which arms the next
    /// window. `None` for a first start.
    pub backoff_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    SpecChanged,
    LivenessProbe,
    StartupProbe,
    UnknownState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerKill {
    pub id: String,
    pub name: String,
    pub reason: KillReason,
    pub message: String,
}

/// A container that will not be running after this sync, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub container: String,
    pub reason: WaitingReason,
    pub message: Option<String>,
}

/// What to do for one pod in this sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodActions {
    pub kill_pod: Option<KillPod>,
    pub create_sandbox: Option<CreateSandbox>,
    /// The ready sandbox to start containers in (when none is created).
    pub sandbox_id: Option<String>,
    /// Init containers (regular or sidecars) to start, in spec order.
    pub init_containers_to_start: Vec<ContainerStart>,
    pub containers_to_start: Vec<ContainerStart>,
    pub containers_to_kill: Vec<ContainerKill>,
    pub waiting: Vec<Waiting>,
}

/// Hash of a container's spec; a running container whose label differs is recreated.
#[must_use]
pub fn container_hash(c: &Container) -> String {
    let json = serde_json::to_vec(c).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Always,
    OnFailure,
    Never,
}

fn policy(pod: &Pod) -> Policy {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("OnFailure") => Policy::OnFailure,
        Some("Never") => Policy::Never,
        _ => Policy::Always,
    }
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Planning state for one call.
struct Planner<'a> {
    pod: &'a Pod,
    observed: &'a ObservedPod,
    backoff: &'a Backoff,
    now: Timestamp,
    actions: PodActions,
}

impl Planner<'_> {
    fn start(&self, index: usize, c: &Container, reason: StartReason) -> ContainerStart {
        let latest = self.observed.latest(&c.name);
        let attempt = latest.map_or(0, |s| s.restart_count + 1);
        let key = BackoffKey::new(pod_uid(self.pod), c.name.clone());
        let exited = latest
            .filter(|s| s.state == ContainerState::Exited)
            .and_then(|s| s.finished_at);
        // A failed start newer than the last exit is the previous attempt; a failed pull
        // of an image the container no longer names is not (upstream keys the pull
        // back-off by pod and image).
        let failure = self
            .backoff
            .failure(&key)
            .filter(|f| exited.is_none_or(|e| f.at >= e))
            .filter(|f| f.applies_to(c.image.as_deref()));
        let since = failure.map(|f| f.at).or(exited);
        let backoff = since.and_then(|since| match self.backoff.check(&key, since, self.now) {
            BackoffState::Ready => None,
            BackoffState::Waiting { delay, remaining } => {
                let crash_loop = format!(
                    "back-off {} restarting failed container={} pod={}",
                    format_duration(delay),
                    c.name,
                    format_pod(self.pod)
                );
                let (reason, message) = match failure {
                    None => (WaitingReason::CrashLoopBackOff, crash_loop),
                    Some(f) => {
                        let shown = f.reason.while_backing_off();
                        let message = match shown {
                            WaitingReason::CrashLoopBackOff => {
                                format!("{crash_loop}: {}: {}", f.reason, f.message)
                            }
                            WaitingReason::ImagePullBackOff => format!(
                                "Back-off pulling image {:?}: {}: {}",
                                c.image.as_deref().unwrap_or_default(),
                                f.reason,
                                f.message
                            ),
                            _ => f.message.clone(),
                        };
                        (shown, message)
                    }
                };
                Some(BackoffWait {
                    delay,
                    remaining,
                    reason,
                    message,
                })
            }
        });
        ContainerStart {
            index,
            name: c.name.clone(),
            attempt,
            reason,
            backoff,
            backoff_since: since,
        }
    }

    fn kill(&mut self, status: &ObservedContainer, reason: KillReason, message: String) {
        self.actions.containers_to_kill.push(ContainerKill {
            id: status.id.clone(),
            name: status.name.clone(),
            reason,
            message,
        });
    }

    fn kill_pod(&mut self, reason: KillPodReason, message: String) {
        self.actions.kill_pod = Some(KillPod { reason, message });
    }

    /// Whether a new sandbox is needed, with its attempt number.
    fn sandbox_change(&self) -> Option<CreateSandbox> {
        let Some(latest) = self.observed.latest_sandbox() else {
            return Some(CreateSandbox {
                attempt: 0,
                reason: SandboxReason::NoSandbox,
                message: "No sandbox for pod can be found. Need to start a new one".to_owned(),
            });
        };
        let attempt = latest.attempt + 1;
        let (reason, message) = if self.observed.sandboxes.iter().filter(|s| s.ready).count() > 1 {
            (
                SandboxReason::MultipleReady,
                "Multiple sandboxes are ready for Pod. Need to reconcile them",
            )
        } else if !latest.ready {
            (
                SandboxReason::NotReady,
                "No ready sandbox for pod can be found. Need to start a new one",
            )
        } else if latest.host_network != host_network(self.pod) {
            (
                SandboxReason::NetworkChanged,
                "Sandbox for pod has changed. Need to start a new one",
            )
        } else if !latest.host_network && latest.ip.as_deref().is_none_or(str::is_empty) {
            (
                SandboxReason::NoIp,
                "Sandbox for pod has no IP address. Need to start a new one",
            )
        } else {
            return None;
        };
        Some(CreateSandbox {
            attempt,
            reason,
            message: message.to_owned(),
        })
    }

    fn succeeded(&self, name: &str) -> bool {
        self.observed
            .latest(name)
            .is_some_and(|s| s.state == ContainerState::Exited && s.exit_code == Some(0))
    }

    /// A new sandbox: kill what is left, then start the first init container or the apps.
    fn plan_new_sandbox(&mut self, create: CreateSandbox) {
        let pod = self.pod;
        let spec_containers = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
        let init = init_containers(pod);
        // The old sandbox is stopped before a new one starts (that also releases the network
        // of one that died). A finished pod gets no new sandbox, and is not stopped again at
        // every sync once nothing of it runs.
        let live = self.observed.sandboxes.iter().any(|s| s.ready)
            || self
                .observed
                .containers
                .iter()
                .any(|c| c.state != ContainerState::Exited);
        let anything = !self.observed.sandboxes.is_empty() || !self.observed.containers.is_empty();
        let done = if policy(pod) == Policy::Never
            && create.attempt != 0
            && !self.observed.containers.is_empty()
        {
            // The pod ran once and must not restart.
            true
        } else {
            let nothing_to_start = spec_containers
                .iter()
                .all(|c| policy(pod) == Policy::OnFailure && self.succeeded(&c.name));
            let init_done = init
                .iter()
                .filter(|c| !is_restartable_init_container(c))
                .all(|c| self.succeeded(&c.name));
            nothing_to_start && init_done
        };
        if live || (anything && !done) {
            self.kill_pod(KillPodReason::SandboxChanged, create.message.clone());
        }
        if done {
            return;
        }
        let to_start: Vec<(usize, &Container)> = spec_containers
            .iter()
            .enumerate()
            .filter(|(_, c)| !(policy(pod) == Policy::OnFailure && self.succeeded(&c.name)))
            .collect();
        self.actions.create_sandbox = Some(create);
        if let Some(first) = init.first() {
            let start = self.start(0, first, StartReason::NewSandbox);
            self.actions.init_containers_to_start.push(start);
            self.waiting_for_init(spec_containers);
        } else {
            for (index, c) in to_start {
                let start = self.start(index, c, StartReason::NewSandbox);
                self.actions.containers_to_start.push(start);
            }
        }
    }

    fn waiting_for_init(&mut self, containers: &[Container]) {
        for c in containers {
            self.actions.waiting.push(Waiting {
                container: c.name.clone(),
                reason: WaitingReason::PodInitializing,
                message: None,
            });
        }
    }

    /// Init containers; returns whether the app containers may be handled.
    fn plan_init(&mut self) -> bool {
        let pod = self.pod;
        let observed = self.observed;
        let restart_on_failure = policy(pod) != Policy::Never;
        let app = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
        let initialized_before = app.iter().any(|c| {
            observed.latest(&c.name).is_some_and(|s| {
                matches!(s.state, ContainerState::Created | ContainerState::Running)
            })
        });
        let init = init_containers(pod);
        let last_seen = init
            .iter()
            .rposition(|c| observed.latest(&c.name).is_some());
        for (i, c) in init.iter().enumerate() {
            let status = observed.latest(&c.name);
            if is_restartable_init_container(c) {
                let blocking = self.plan_sidecar(i, c, status);
                if blocking && !initialized_before {
                    return false;
                }
                continue;
            }
            let garbage_collected = status.is_none() && last_seen.is_some_and(|last| i < last);
            if initialized_before || garbage_collected {
                continue;
            }
            let Some(status) = status else {
                let start = self.start(i, c, StartReason::NotCreated);
                self.actions.init_containers_to_start.push(start);
                return false;
            };
            match status.state {
                ContainerState::Exited if status.exit_code == Some(0) => continue,
                ContainerState::Running => return false,
                ContainerState::Created => {
                    let start = self.start(i, c, StartReason::CreatedNotStarted);
                    self.actions.init_containers_to_start.push(start);
                    return false;
                }
                ContainerState::Exited | ContainerState::Unknown if !restart_on_failure => {
                    self.kill_pod(
                        KillPodReason::InitContainerFailed,
                        format!(
                            "Init container {} failed and the restart policy is Never",
                            c.name
                        ),
                    );
                    self.actions.init_containers_to_start.clear();
                    return false;
                }
                ContainerState::Exited => {
                    let exit_code = status.exit_code.unwrap_or(-1);
                    let start = self.start(i, c, StartReason::Exited { exit_code });
                    self.actions.init_containers_to_start.push(start);
                    return false;
                }
                ContainerState::Unknown => {
                    self.kill(
                        status,
                        KillReason::UnknownState,
                        format!(
                            "Init container {} is in unknown state, try killing it before restart",
                            c.name
                        ),
                    );
                    let start = self.start(i, c, StartReason::UnknownState);
                    self.actions.init_containers_to_start.push(start);
                    return false;
                }
            }
        }
        true
    }

    /// One sidecar; returns whether it blocks the containers after it (not started yet).
    fn plan_sidecar(
        &mut self,
        i: usize,
        c: &Container,
        status: Option<&ObservedContainer>,
    ) -> bool {
        let Some(status) = status else {
            let start = self.start(i, c, StartReason::NotCreated);
            self.actions.init_containers_to_start.push(start);
            return true;
        };
        match status.state {
            ContainerState::Created => {
                let start = self.start(i, c, StartReason::CreatedNotStarted);
                self.actions.init_containers_to_start.push(start);
                true
            }
            ContainerState::Exited => {
                let exit_code = status.exit_code.unwrap_or(-1);
                let start = self.start(i, c, StartReason::Exited { exit_code });
                self.actions.init_containers_to_start.push(start);
                true
            }
            ContainerState::Unknown => {
                self.kill(
                    status,
                    KillReason::UnknownState,
                    format!(
                        "Init container {} is in unknown state, try killing it before restart",
                        c.name
                    ),
                );
                let start = self.start(i, c, StartReason::UnknownState);
                self.actions.init_containers_to_start.push(start);
                true
            }
            ContainerState::Running => {
                if status.startup == ProbeVerdict::Failure {
                    self.kill(
                        status,
                        KillReason::StartupProbe,
                        format!("Init container {} failed startup probe", c.name),
                    );
                    let start = self.start(i, c, StartReason::StartupFailed);
                    self.actions.init_containers_to_start.push(start);
                    return true;
                }
                if c.startup_probe.is_some() && status.startup != ProbeVerdict::Success {
                    return true;
                }
                if hash_changed(c, status) {
                    self.kill(
                        status,
                        KillReason::SpecChanged,
                        format!("Init container {} definition changed", c.name),
                    );
                    let start = self.start(i, c, StartReason::SpecChanged);
                    self.actions.init_containers_to_start.push(start);
                } else if status.liveness == ProbeVerdict::Failure {
                    self.kill(
                        status,
                        KillReason::LivenessProbe,
                        format!("Init container {} failed liveness probe", c.name),
                    );
                    let start = self.start(i, c, StartReason::LivenessFailed);
                    self.actions.init_containers_to_start.push(start);
                }
                false
            }
        }
    }

    fn plan_app_containers(&mut self) {
        let pod = self.pod;
        let observed = self.observed;
        let policy = policy(pod);
        let app = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
        let mut keep = 0;
        for (i, c) in app.iter().enumerate() {
            let Some(status) = observed.latest(&c.name) else {
                let start = self.start(i, c, StartReason::NotCreated);
                self.actions.containers_to_start.push(start);
                continue;
            };
            match status.state {
                ContainerState::Created => {
                    let start = self.start(i, c, StartReason::CreatedNotStarted);
                    self.actions.containers_to_start.push(start);
                }
                ContainerState::Unknown => {
                    self.kill(
                        status,
                        KillReason::UnknownState,
                        "Container is in unknown state, try killing it before restart".to_owned(),
                    );
                    let start = self.start(i, c, StartReason::UnknownState);
                    self.actions.containers_to_start.push(start);
                }
                ContainerState::Exited => {
                    let exit_code = status.exit_code.unwrap_or(-1);
                    let restart = match policy {
                        Policy::Always => true,
                        Policy::OnFailure => exit_code != 0,
                        Policy::Never => false,
                    };
                    if restart {
                        let start = self.start(i, c, StartReason::Exited { exit_code });
                        self.actions.containers_to_start.push(start);
                    }
                }
                ContainerState::Running => {
                    let (reason, start_reason, mut message, restart) = if hash_changed(c, status) {
                        // A changed spec restarts whatever the restart policy.
                        (
                            KillReason::SpecChanged,
                            StartReason::SpecChanged,
                            format!("Container {} definition changed", c.name),
                            true,
                        )
                    } else if status.liveness == ProbeVerdict::Failure {
                        (
                            KillReason::LivenessProbe,
                            StartReason::LivenessFailed,
                            format!("Container {} failed liveness probe", c.name),
                            policy != Policy::Never,
                        )
                    } else if status.startup == ProbeVerdict::Failure {
                        (
                            KillReason::StartupProbe,
                            StartReason::StartupFailed,
                            format!("Container {} failed startup probe", c.name),
                            policy != Policy::Never,
                        )
                    } else {
                        keep += 1;
                        continue;
                    };
                    if restart {
                        message.push_str(", will be restarted");
                        let start = self.start(i, c, start_reason);
                        self.actions.containers_to_start.push(start);
                    }
                    self.kill(status, reason, message);
                }
            }
        }
        if keep == 0 && self.actions.containers_to_start.is_empty() {
            self.kill_pod(
                KillPodReason::PodDone,
                "No containers are running and none will be restarted".to_owned(),
            );
        }
    }

    /// One `Waiting` per container being started now (or held in backoff).
    fn fill_waiting(&mut self) {
        let starts = self
            .actions
            .init_containers_to_start
            .iter()
            .chain(&self.actions.containers_to_start);
        let waiting: Vec<Waiting> = starts
            .map(|s| match &s.backoff {
                Some(b) => Waiting {
                    container: s.name.clone(),
                    reason: b.reason,
                    message: Some(b.message.clone()),
                },
                None => Waiting {
                    container: s.name.clone(),
                    reason: WaitingReason::ContainerCreating,
                    message: None,
                },
            })
            .collect();
        self.actions.waiting.splice(0..0, waiting);
    }
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
}

fn hash_changed(c: &Container, status: &ObservedContainer) -> bool {
    status
        .spec_hash
        .as_deref()
        .is_some_and(|h| h != container_hash(c))
}

/// Computes what to do for `pod` given what the runtime reports.
#[must_use]
pub fn compute_pod_actions(
    pod: &Pod,
    observed: &ObservedPod,
    backoff: &Backoff,
    now: Timestamp,
) -> PodActions {
    let mut p = Planner {
        pod,
        observed,
        backoff,
        now,
        actions: PodActions::default(),
    };
    if pod.metadata.deletion_timestamp.is_some() {
        p.kill_pod(
            KillPodReason::Deleted,
            "The pod is being deleted".to_owned(),
        );
        return p.actions;
    }
    if let Some(create) = p.sandbox_change() {
        p.plan_new_sandbox(create);
    } else {
        p.actions.sandbox_id = observed.latest_sandbox().map(|s| s.id.clone());
        if p.plan_init() {
            p.plan_app_containers();
        } else if p.actions.kill_pod.is_none() {
            let app = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
            p.waiting_for_init(app);
        }
    }
    p.fill_waiting();
    p.actions
}

/// Pod phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// The pod phase from its spec and observed containers (upstream `getPhase`, without the
/// "pod is terminal" input, which upstream ignores for static pods anyway).
#[must_use]
pub fn pod_phase(pod: &Pod, observed: &ObservedPod) -> Phase {
    let policy = policy(pod);
    let app = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
    let init = init_containers(pod);
    let app_started = app.iter().any(|c| {
        observed
            .latest(&c.name)
            .is_some_and(|s| matches!(s.state, ContainerState::Running | ContainerState::Exited))
    });

    let mut pending_init = 0;
    let mut pending_sidecars = 0;
    let mut failed_init = 0;
    let (mut running, mut stopped, mut succeeded, mut unknown, mut waiting) = (0, 0, 0, 0, 0);

    for c in init {
        let status = observed.latest(&c.name);
        if is_restartable_init_container(c) {
            match status.map(|s| s.state) {
                None => unknown += 1,
                Some(ContainerState::Running) => {
                    running += 1;
                    let started = status.is_some_and(|s| {
                        c.startup_probe.is_none() || s.startup == ProbeVerdict::Success
                    });
                    if !started {
                        pending_sidecars += 1;
                    }
                }
                Some(ContainerState::Exited) => {}
                Some(ContainerState::Created) if status.is_some_and(|s| s.restart_count > 0) => {}
                Some(ContainerState::Created) => {
                    pending_sidecars += 1;
                    waiting += 1;
                }
                Some(ContainerState::Unknown) => {
                    pending_sidecars += 1;
                    unknown += 1;
                }
            }
            continue;
        }
        match status {
            None if app_started => {}
            Some(s) if s.state == ContainerState::Exited => {
                if s.exit_code != Some(0) {
                    failed_init += 1;
                }
            }
            _ => pending_init += 1,
        }
    }
    for c in app {
        match observed.latest(&c.name) {
            None => unknown += 1,
            Some(s) => match s.state {
                ContainerState::Running => running += 1,
                ContainerState::Exited => {
                    stopped += 1;
                    if s.exit_code == Some(0) {
                        succeeded += 1;
                    }
                }
                ContainerState::Created if s.restart_count > 0 => stopped += 1,
                ContainerState::Created => waiting += 1,
                ContainerState::Unknown => unknown += 1,
            },
        }
    }

    if failed_init > 0 && policy == Policy::Never {
        return Phase::Failed;
    }
    if pending_init > 0 || (pending_sidecars > 0 && !app_started) || waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 && unknown == 0 {
        return Phase::Running;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match policy {
            Policy::Always => Phase::Running,
            _ if stopped == succeeded => Phase::Succeeded,
            Policy::Never => Phase::Failed,
            Policy::OnFailure => Phase::Running,
        };
    }
    Phase::Pending
}

#[cfg(test)]
mod tests;
