//! [`ProbeManager`] (the handle pod workers hold) and [`ProbeRunner`] (the one task that
//! schedules every probe of every pod).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::{ProbeLabels, ProbeMetrics};
use super::schedule::{self, Schedule};
use super::spec::{ProbeKind, ProbeSpec};
use super::threshold::{Outcome, Tracker};
use super::{ContainerProbeResults, ProbeFailure, run_action};
use crate::model::qos::is_restartable_init_container;
use crate::model::{format_pod, pod_uid};
use crate::pods::plan::{ContainerState, ObservedPod, ProbeVerdict};
use crate::record::{EventType, Recorder, container_reference};
use crate::runtime::ContainerRuntime;

/// Tuning of the prober.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Probes running at once; due probes beyond it wait (in deadline order).
    pub max_concurrent: usize,
    /// Seed of the first-run jitter; `None`: random. Tests fix it.
    pub jitter_seed: Option<u64>,
    /// Where each failed run is recorded as an `Unhealthy` Warning (repeats count on one
    /// event).
    pub recorder: Option<Recorder>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            max_concurrent: 100,
            jitter_seed: None,
            recorder: None,
        }
    }
}

type ResultsMap = HashMap<String, HashMap<String, ContainerProbeResults>>;

/// The pod workers' handle on the prober. Cheap to clone; every method returns at once.
#[derive(Debug, Clone)]
pub struct ProbeManager {
    commands: mpsc::UnboundedSender<Command>,
    results: Arc<RwLock<ResultsMap>>,
}

#[derive(Debug)]
enum Command {
    Sync {
        uid: String,
        pod: Arc<Pod>,
        running: Vec<Running>,
        ip: Option<IpAddr>,
    },
    Remove {
        uid: String,
    },
}

/// A running container of the pod that has probes.
#[derive(Debug, Clone)]
struct Running {
    id: String,
    name: String,
    started_at: Timestamp,
}

impl ProbeManager {
    /// The handle and the runner behind it. Spawn [`ProbeRunner::run`] once; `notify`
    /// receives a pod uid whenever one of its verdicts changes (the pod's worker should
    /// sync).
    pub fn new<R: ContainerRuntime + 'static>(
        runtime: Arc<R>,
        notify: mpsc::Sender<String>,
        metrics: ProbeMetrics,
        options: &ProbeOptions,
    ) -> (Self, ProbeRunner<R>) {
        // Unbounded: pod workers must never wait on the prober, and each sends at most one
        // command per sync.
        let (tx, rx) = mpsc::unbounded_channel();
        let results = Arc::new(RwLock::new(HashMap::new()));
        let rng = options
            .jitter_seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let runner = ProbeRunner {
            recorder: options.recorder.clone(),
            runtime,
            commands: rx,
            notify,
            metrics,
            max_concurrent: options.max_concurrent.max(1),
            results: Arc::clone(&results),
            pods: HashMap::new(),
            probes: HashMap::new(),
            next_id: 0,
            schedule: Schedule::default(),
            tasks: JoinSet::new(),
            task_probes: HashMap::new(),
            pokes: VecDeque::new(),
            rng,
        };
        (
            Self {
                commands: tx,
                results,
            },
            runner,
        )
    }

    /// Tells the prober which of the pod's containers run now; call it after every sync
    /// with what the runtime reported. Containers that newly run get their probes (from
    /// this spec); containers that no longer run lose theirs, and their results (the
    /// pod's metric series stay until [`Self::remove_pod`]). A pod without probes costs
    /// one small message.
    ///
    /// `pod_ip` is where probes without a `host` go (see [`super::pod_ip`]).
    pub fn add_pod(&self, pod: &Pod, observed: &ObservedPod, pod_ip: Option<IpAddr>) {
        let uid = pod_uid(pod).to_owned();
        let running: Vec<Running> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter(|c| probed_container(pod, &c.name).is_some())
            .map(|c| Running {
                id: c.id.clone(),
                name: c.name.clone(),
                started_at: c.started_at.unwrap_or(c.created),
            })
            .collect();
        let command = if running.is_empty() && !has_probes(pod) {
            Command::Remove { uid }
        } else {
            Command::Sync {
                uid,
                pod: Arc::new(pod.clone()),
                running,
                ip: pod_ip,
            }
        };
        // A closed channel means the runner stopped (agent shutdown): nothing to probe.
        let _ = self.commands.send(command);
    }

    /// Stops every probe of the pod and forgets its results and metric series.
    pub fn remove_pod(&self, uid: &str) {
        let _ = self.commands.send(Command::Remove {
            uid: uid.to_owned(),
        });
    }

    /// What the container's probes concluded so far (all unknown for a container the
    /// prober does not know, or not yet).
    #[must_use]
    pub fn results(&self, uid: &str, container_id: &str) -> ContainerProbeResults {
        self.results
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .and_then(|containers| containers.get(container_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Sets the liveness and startup verdicts of every observed container of the pod, for
    /// the planner.
    pub fn annotate(&self, uid: &str, observed: &mut ObservedPod) {
        let results = self.results.read().unwrap_or_else(PoisonError::into_inner);
        let Some(containers) = results.get(uid) else {
            return;
        };
        for c in &mut observed.containers {
            if let Some(r) = containers.get(&c.id) {
                c.liveness = r.liveness;
                c.startup = r.startup;
            }
        }
    }
}

/// Whether any app container or sidecar of the pod has a probe.
fn has_probes(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| probed_container(pod, &c.name).is_some())
    })
}

/// The app container or sidecar (restartable init container) named `name`, if it has any
/// probe. Regular init containers are never probed (as upstream).
fn probed_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| is_restartable_init_container(c)),
        )
        .find(|c| c.name == name)
        .filter(|c| {
            c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
        })
}

/// Where a probe is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Waiting for the startup probe to pass.
    Gated,
    /// Due at this deadline.
    Scheduled(Instant),
    /// Running; it was due at this deadline (the next run keeps the cadence).
    Running(Instant),
    /// Runs no more: a startup probe that passed, or a liveness/startup probe that failed
    /// (the container is about to be restarted).
    Done,
}

struct Probe {
    uid: Arc<str>,
    container_id: Arc<str>,
    spec: Arc<ProbeSpec>,
    tracker: Tracker,
    slot: Slot,
}

struct PodEntry {
    name: String,
    namespace: String,
    ip: Option<IpAddr>,
    containers: HashMap<String, ContainerEntry>,
}

struct ContainerEntry {
    name: Arc<str>,
    /// The pod's reference with the container's field path, as upstream's events name it.
    reference: ObjectReference,
    started_at: Timestamp,
    probes: Vec<u64>,
}

/// The scheduler task: owns every probe's state; see the module docs of [`super`].
pub struct ProbeRunner<R> {
    runtime: Arc<R>,
    commands: mpsc::UnboundedReceiver<Command>,
    notify: mpsc::Sender<String>,
    metrics: ProbeMetrics,
    max_concurrent: usize,
    results: Arc<RwLock<ResultsMap>>,
    pods: HashMap<String, PodEntry>,
    recorder: Option<Recorder>,
    probes: HashMap<u64, Probe>,
    next_id: u64,
    schedule: Schedule,
    tasks: JoinSet<(u64, Outcome)>,
    task_probes: HashMap<TaskId, u64>,
    /// Pods whose verdicts changed, not yet sent to `notify` (each at most once).
    pokes: VecDeque<String>,
    rng: fastrand::Rng,
}

impl<R: ContainerRuntime + 'static> ProbeRunner<R> {
    /// Runs until `cancel` (or until every [`ProbeManager`] is dropped). Probes in flight
    /// are abandoned; containers are never touched.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            self.start_due();
            let wake = if self.tasks.len() < self.max_concurrent {
                self.schedule.next_due()
            } else {
                None
            };
            let wakeup = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(c) => Wakeup::Command(c),
                    None => break,
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    Wakeup::Finished(joined)
                }
                permit = self.notify.reserve(), if !self.pokes.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(uid) = self.pokes.pop_front() {
                                permit.send(uid);
                            }
                        }
                        // Nobody listens any more (shutdown): drop what is queued.
                        Err(_) => self.pokes.clear(),
                    }
                    Wakeup::Timer
                }
                () = crate::timer::sleep_until(wake), if wake.is_some() => Wakeup::Timer,
            };
            match wakeup {
                Wakeup::Command(c) => self.apply(c),
                Wakeup::Finished(Ok((task, (id, outcome)))) => {
                    self.task_probes.remove(&task);
                    self.finished(id, &outcome);
                }
                Wakeup::Finished(Err(e)) => {
                    // A probe task panicked: count the run as unknown and go on.
                    if let Some(id) = self.task_probes.remove(&e.id()) {
                        self.finished(id, &Outcome::Error(format!("probe task failed: {e}")));
                    }
                }
                Wakeup::Timer => {}
            }
        }
        self.tasks.abort_all();
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Sync {
                uid,
                pod,
                running,
                ip,
            } => self.sync_pod(&uid, &pod, running, ip),
            Command::Remove { uid } => self.remove_pod(&uid),
        }
    }

    fn sync_pod(&mut self, uid: &str, pod: &Pod, running: Vec<Running>, ip: Option<IpAddr>) {
        let entry = self.pods.entry(uid.to_owned()).or_insert_with(|| {
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            PodEntry {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace,
                ip,
                containers: HashMap::new(),
            }
        });
        entry.ip = ip;
        let keep: HashSet<&str> = running.iter().map(|r| r.id.as_str()).collect();
        let gone: Vec<String> = entry
            .containers
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.remove_container(uid, &id);
        }
        for r in running {
            let known = self
                .pods
                .get(uid)
                .is_some_and(|p| p.containers.contains_key(&r.id));
            if !known && let Some(container) = probed_container(pod, &r.name) {
                self.add_container(uid, pod, container, r);
            }
        }
    }

    fn add_container(&mut self, uid: &str, pod: &Pod, container: &Container, r: Running) {
        let uid_arc: Arc<str> = Arc::from(uid);
        let cid: Arc<str> = Arc::from(r.id.as_str());
        let has_startup = container.startup_probe.is_some();
        let now = Instant::now();
        let running_for = running_for(r.started_at);
        let mut ids = Vec::new();
        for kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            let Some(spec) = ProbeSpec::for_container(container, kind) else {
                continue;
            };
            let slot = if has_startup && kind != ProbeKind::Startup {
                Slot::Gated
            } else {
                let due = schedule::first_due(
                    now,
                    running_for,
                    spec.initial_delay,
                    spec.period,
                    self.rng.f64(),
                );
                Slot::Scheduled(due)
            };
            let id = self.next_id;
            self.next_id += 1;
            if let Slot::Scheduled(due) = slot {
                self.schedule.push(due, id);
            }
            debug!(pod = %format_pod(pod), container = %container.name, probe = %kind, "probe added");
            self.probes.insert(
                id,
                Probe {
                    uid: Arc::clone(&uid_arc),
                    container_id: Arc::clone(&cid),
                    tracker: Tracker::new(spec.success_threshold, spec.failure_threshold),
                    spec: Arc::new(spec),
                    slot,
                },
            );
            ids.push(id);
        }
        self.write_results()
            .entry(uid.to_owned())
            .or_default()
            .insert(r.id.clone(), ContainerProbeResults::default());
        if let Some(entry) = self.pods.get_mut(uid) {
            entry.containers.insert(
                r.id,
                ContainerEntry {
                    name: Arc::from(r.name.as_str()),
                    reference: ObjectReference {
                        namespace: Some(
                            pod.metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".to_owned()),
                        ),
                        ..container_reference(pod, &r.name)
                    },
                    started_at: r.started_at,
                    probes: ids,
                },
            );
        }
    }

    fn remove_container(&mut self, uid: &str, container_id: &str) {
        let Some(entry) = self.pods.get_mut(uid) else {
            return;
        };
        if let Some(c) = entry.containers.remove(container_id) {
            for id in c.probes {
                self.probes.remove(&id);
            }
        }
        let mut results = self.write_results();
        if let Some(containers) = results.get_mut(uid) {
            containers.remove(container_id);
        }
    }

    fn remove_pod(&mut self, uid: &str) {
        let Some(entry) = self.pods.remove(uid) else {
            return;
        };
        for c in entry.containers.values() {
            for id in &c.probes {
                if let Some(p) = self.probes.remove(id) {
                    self.metrics.forget(ProbeLabels {
                        kind: p.spec.kind,
                        container: &c.name,
                        pod: &entry.name,
                        namespace: &entry.namespace,
                        pod_uid: uid,
                    });
                }
            }
        }
        self.write_results().remove(uid);
        self.pokes.retain(|u| u != uid);
    }

    /// Starts due probes while the concurrency cap allows.
    fn start_due(&mut self) {
        let now = Instant::now();
        while self.tasks.len() < self.max_concurrent {
            let Some((due, id)) = self.schedule.pop_due(now) else {
                return;
            };
            let Some(probe) = self.probes.get_mut(&id) else {
                continue; // removed since it was scheduled
            };
            if probe.slot != Slot::Scheduled(due) {
                continue; // rescheduled or stopped since
            }
            probe.slot = Slot::Running(due);
            let ip = self.pods.get(&*probe.uid).and_then(|p| p.ip);
            let runtime = Arc::clone(&self.runtime);
            let spec = Arc::clone(&probe.spec);
            let container_id = Arc::clone(&probe.container_id);
            let handle = self.tasks.spawn(async move {
                let outcome =
                    run_action(&*runtime, &spec.action, &container_id, ip, spec.timeout).await;
                (id, outcome)
            });
            self.task_probes.insert(handle.id(), id);
        }
    }

    /// A run finished: count it, apply the thresholds, publish, schedule the next run.
    fn finished(&mut self, id: u64, outcome: &Outcome) {
        let Some(probe) = self.probes.get_mut(&id) else {
            return; // its container or pod went away meanwhile
        };
        let Slot::Running(due) = probe.slot else {
            return;
        };
        let kind = probe.spec.kind;
        let uid = Arc::clone(&probe.uid);
        let cid = Arc::clone(&probe.container_id);
        let Some(pod) = self.pods.get(&*uid) else {
            return;
        };
        let Some(container) = pod.containers.get(&*cid) else {
            return;
        };
        self.metrics.observe(
            ProbeLabels {
                kind,
                container: &container.name,
                pod: &pod.name,
                namespace: &pod.namespace,
                pod_uid: &uid,
            },
            outcome,
        );
        let pod_name = format!("{}_{}({uid})", pod.name, pod.namespace);
        let container_name = Arc::clone(&container.name);
        let container_reference = container.reference.clone();
        let started_at = container.started_at;
        match outcome {
            Outcome::Success(_) => {}
            Outcome::Warning(m) => {
                debug!(pod = %pod_name, container = %container_name, probe = %kind, message = %m, "probe passed with a warning");
            }
            Outcome::Failure(m) => {
                debug!(pod = %pod_name, container = %container_name, probe = %kind, message = %m, "probe failed");
            }
            Outcome::Error(m) => {
                debug!(pod = %pod_name, container = %container_name, probe = %kind, error = %m, "probe could not run");
            }
        }

        let change = probe.tracker.record(outcome.passed());
        let stops = matches!(
            (kind, change),
            (ProbeKind::Startup, Some(_)) | (ProbeKind::Liveness, Some(false))
        );
        probe.slot = if stops {
            Slot::Done
        } else {
            let next = schedule::next_due(due, probe.spec.period, Instant::now());
            self.schedule.push(next, id);
            Slot::Scheduled(next)
        };

        let failure = match outcome {
            Outcome::Failure(message) => Some(ProbeFailure {
                kind,
                message: message.clone(),
                at: Timestamp::now(),
            }),
            _ => None,
        };
        if failure.is_none() && change.is_none() {
            return;
        }
        let unhealthy = {
            let mut results = self.write_results();
            let Some(r) = results.get_mut(&*uid).and_then(|c| c.get_mut(&*cid)) else {
                return;
            };
            let unhealthy = failure
                .as_ref()
                .filter(|_| self.recorder.is_some())
                .map(ToString::to_string);
            if let Some(f) = failure {
                r.last_failure = Some(f);
            }
            if let Some(passed) = change {
                let verdict = if passed {
                    ProbeVerdict::Success
                } else {
                    ProbeVerdict::Failure
                };
                match kind {
                    ProbeKind::Liveness => r.liveness = verdict,
                    ProbeKind::Startup => r.startup = verdict,
                    ProbeKind::Readiness => r.readiness = Some(passed),
                }
            }
            unhealthy
        };
        // Recorded after the results lock is released: readers never wait on the event sink.
        if let (Some(message), Some(recorder)) = (unhealthy, &self.recorder) {
            recorder.record(
                &container_reference,
                EventType::Warning,
                "Unhealthy",
                &message,
            );
        }
        let Some(passed) = change else {
            return;
        };
        let message = match outcome {
            Outcome::Failure(m) | Outcome::Warning(m) | Outcome::Success(m) | Outcome::Error(m) => {
                m.as_str()
            }
        };
        match (kind, passed) {
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                warn!(pod = %pod_name, container = %container_name, reason = "Unhealthy", "{kind} probe failed: {message}");
            }
            (ProbeKind::Readiness, false) => {
                info!(pod = %pod_name, container = %container_name, reason = "Unhealthy", "{kind} probe failed: {message}");
            }
            (_, true) => {
                info!(pod = %pod_name, container = %container_name, probe = %kind, "probe succeeded");
            }
        }
        if kind == ProbeKind::Startup && passed {
            self.release_gated(&uid, &cid, started_at);
        }
        if !self.pokes.iter().any(|u| **u == *uid) {
            self.pokes.push_back(uid.to_string());
        }
    }

    /// The startup probe passed: liveness and readiness start (after their initial delay,
    /// counted from the container's start; no jitter, startups are spread already).
    fn release_gated(&mut self, uid: &str, container_id: &str, started_at: Timestamp) {
        let Some(c) = self
            .pods
            .get(uid)
            .and_then(|p| p.containers.get(container_id))
        else {
            return;
        };
        let now = Instant::now();
        let running_for = running_for(started_at);
        for id in &c.probes {
            if let Some(p) = self.probes.get_mut(id)
                && p.slot == Slot::Gated
            {
                let due =
                    schedule::first_due(now, running_for, p.spec.initial_delay, p.spec.period, 0.0);
                p.slot = Slot::Scheduled(due);
                self.schedule.push(due, *id);
            }
        }
    }

    fn write_results(&self) -> std::sync::RwLockWriteGuard<'_, ResultsMap> {
        // Every write is a small map update that cannot be left half-done by a panic.
        self.results.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long ago the container started (0 if the clocks disagree).
fn running_for(started_at: Timestamp) -> Duration {
    Timestamp::now()
        .duration_since(started_at)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Why the scheduler woke up.
enum Wakeup {
    Command(Command),
    Finished(Result<(TaskId, (u64, Outcome)), tokio::task::JoinError>),
    /// A deadline passed (or a poke went out): start what is due.
    Timer,
}

#[cfg(test)]
mod tests;
