//! The eviction manager: [`EvictionManager::decide`] is one evaluation (pure), and
//! [`EvictionManager::run`] the shell that observes the node when the kernel reports
//! pressure and at least every [`DEFAULT_MONITORING_INTERVAL`], decides, and hands
//! evictions and node conditions to the agent.
//!
//! One evaluation, as upstream's `synchronize`:
//! - the thresholds whose grace period has passed are found ([`ThresholdTracker`]); the first
//!   (memory signals first) names the resource to reclaim;
//! - while a pod evicted earlier still has processes (and for at most
//!   [`POD_CLEANUP_TIMEOUT`]), nothing else is evicted: its memory is not free yet;
//! - for disk, dead containers and unused images are reclaimed first, and the pod is only
//!   evicted if some threshold (with its minimum reclaim) is still met afterwards;
//! - otherwise the first pod in [`rank`] order that is not system-critical is evicted, with
//!   grace 0 for a hard threshold and `min(pod grace, evictionMaxPodGracePeriod)` for a
//!   soft one, reason `Evicted` and upstream's message. One pod per evaluation.
//!
//! Before that, on the periodic pass only, local storage limits
//! ([`EvictionManager::decide_local_storage`], upstream's `localStorageEviction`): every
//! running pod with an `emptyDir` `sizeLimit` or an `ephemeral-storage` limit is measured
//! (a blocking thread walks its volumes, logs and writable layers), and each that exceeds a
//! limit is evicted, with grace [`super::local_storage::LIMIT_EVICTION_GRACE`], whatever the
//! node's pressure. A pass that evicts for local storage evicts nothing else. A node
//! without such pods reads nothing for it (the pod list is scanned in place).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::eviction::{Signal, Threshold};
use crate::config::{EvictionConfig, EvictionRanking};
use crate::model::qos::{self, QosClass};
use crate::runtime::ContainerRuntime;
use crate::status::REASON_EVICTED;

use super::local_storage::{
    LIMIT_EVICTION_GRACE, LimitSignal, LimitedPod, StorageMeter, StorageUsage, UsageCache, check,
};
use super::message::{Offender, eviction_message};
use super::pod::{PodProvider, PodUsage, is_critical};
use super::rank::{Resource, rank};
use super::reclaim::DiskReclaimer;
use super::signals::{Observations, Observer, PodStatsNeed};
use super::thresholds::{
    Evaluation, ThresholdTracker, effective_thresholds, is_hard, thresholds_met,
};
use crate::model::node::{NodeCondition, PressureCondition};

/// Upstream's eviction loop period: the floor under kernel-triggered evaluations.
pub const DEFAULT_MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// How long an evicted pod may take to release its resources before the next eviction
/// (upstream `podCleanupTimeout`).
pub const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the shell looks again while an evicted pod is being cleaned up.
const CLEANUP_POLL: Duration = Duration::from_millis(100);
/// After a kernel trigger, evaluate every `WATCH_POLL` for `WATCH_FOR`.
const WATCH_POLL: Duration = Duration::from_millis(100);
const WATCH_FOR: Duration = Duration::from_secs(3);
/// How often the runtime is asked where its images are.
const IMAGEFS_REFRESH: Duration = Duration::from_secs(60);

/// What started an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// A kernel pressure event (through the trigger channel).
    Kernel,
    /// The periodic floor.
    Periodic,
    /// Looking again while an evicted pod is cleaned up.
    Cleanup,
    /// Looking again shortly after a kernel trigger that evicted nothing: usage crossing
    /// the notifier's threshold, or reclaim starting, can come a moment before the signal
    /// (which leaves reclaimable page cache out) crosses its own threshold.
    Watch,
}

/// A request to evaluate now, sent by whoever sees pressure (kernel events on the kubepods
/// tree). `at` is when the pressure was seen: the decision's latency is measured from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub at: Instant,
}

impl Trigger {
    #[must_use]
    pub fn now() -> Self {
        Self { at: Instant::now() }
    }
}

/// A pod to evict. The agent kills it with `grace_period`, then marks it with
/// [`crate::status::mark_evicted`] (`message`) and keeps it from restarting while
/// [`admit`] refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub pod_uid: String,
    /// `<namespace>/<name>`.
    pub pod_name: String,
    pub qos: QosClass,
    pub grace_period: Duration,
    /// The signal whose threshold was crossed, or the local storage limit exceeded (the
    /// `eviction_signal` of `kubelet_evictions`).
    pub signal: EvictionSignal,
    pub resource: Resource,
    /// The threshold was a hard one.
    pub hard: bool,
    /// Always `Evicted`.
    pub reason: &'static str,
    /// Upstream's message, for the pod status and the `DisruptionTarget` condition.
    pub message: String,
    /// Containers over their request (upstream's `offending_containers` annotations).
    pub offenders: Vec<Offender>,
    /// What started the evaluation (set by [`EvictionManager::run`]).
    pub trigger: Option<TriggerKind>,
    /// From the trigger to the decision (set by [`EvictionManager::run`]).
    pub latency: Option<Duration>,
}

/// Why a pod is evicted: a node-pressure threshold, or a local storage limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionSignal {
    Threshold(Signal),
    Limit(LimitSignal),
}

impl EvictionSignal {
    /// The `eviction_signal` label: `memory.available`, ..., `emptydirfs.limit`, ...
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Threshold(s) => s.as_str(),
            Self::Limit(l) => l.as_str(),
        }
    }
}

impl From<Signal> for EvictionSignal {
    fn from(signal: Signal) -> Self {
        Self::Threshold(signal)
    }
}

impl PartialEq<Signal> for EvictionSignal {
    fn eq(&self, other: &Signal) -> bool {
        *self == Self::Threshold(*other)
    }
}

impl std::fmt::Display for EvictionSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Eviction {
    /// A local storage eviction is final for the pod: it is not started again (upstream's
    /// pod is `Failed`; a static pod comes back only as a new pod, when its manifest
    /// changes). A node-pressure eviction holds while [`admit`] refuses the pod.
    #[must_use]
    pub const fn is_terminal(&self) -> bool {
        matches!(self.signal, EvictionSignal::Limit(_))
    }

    /// Whether the evicted pod must stay down under `conditions`. A pod of the API server
    /// always does: its eviction leaves it `Failed` for good, as upstream's kubelet leaves
    /// it (a controller makes a new pod).
    #[must_use]
    pub fn keeps_down(&self, conditions: &[NodeCondition], pod: &Pod) -> bool {
        self.is_terminal() || crate::model::is_api_pod(pod) || admit(conditions, pod).is_err()
    }
}

/// What one evaluation concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No threshold is met past its grace period.
    NoPressure,
    /// A pod evicted earlier still holds resources.
    WaitingForCleanup { pod_uid: String },
    /// Under pressure, but no pod can be evicted (none, or only critical ones).
    NoVictim { signal: Signal },
    /// Evict [`Decision::eviction`] (for disk, after node-level reclaim).
    Evict,
}

/// One evaluation's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub evaluation: Evaluation,
    pub outcome: Outcome,
    pub eviction: Option<Eviction>,
    /// Disk pressure: reclaim dead containers and unused images, observe again, and evict
    /// only if [`EvictionManager::confirm_after_reclaim`] still says so.
    pub reclaim_disk_first: bool,
    /// Set by [`EvictionManager::run`].
    pub trigger: Option<TriggerKind>,
    /// From the trigger to the decision; set by [`EvictionManager::run`].
    pub latency: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    qos: QosClass,
    since: Timestamp,
}

/// The node-pressure eviction manager.
#[derive(Debug, Clone)]
pub struct EvictionManager {
    config: EvictionConfig,
    thresholds: Vec<Threshold>,
    tracker: ThresholdTracker,
    /// Evicted pods not yet cleaned up, by UID.
    pending: BTreeMap<String, Pending>,
    /// Pods evicted, by UID, never picked again while the agent still lists them (its
    /// status may lag), for at most twice the cleanup timeout.
    evicted: BTreeMap<String, Timestamp>,
    monitoring_interval: Duration,
    cleanup_timeout: Duration,
    /// The storage meter's walks, shared with the stats sampler.
    usage_cache: Option<UsageCache>,
}

/// What [`EvictionManager::run`] works with.
pub struct EvictionIo<R, P> {
    pub observer: Observer,
    /// For the image filesystem and disk reclaim.
    pub runtime: Arc<R>,
    /// Disk reclaim deletes unused images through it (upstream's `DeleteUnusedImages`).
    pub image_gc: Arc<crate::images::gc::ImageGc<R>>,
    pub pods: P,
    /// Evictions to carry out. Bounded: the manager waits for room (one eviction per
    /// evaluation, so a capacity of a few is plenty).
    pub evictions: mpsc::Sender<Eviction>,
    /// The three pressure conditions, replaced whenever one changes status.
    pub conditions: watch::Sender<Vec<NodeCondition>>,
}

/// Which per-pod statistics an evaluation of `obs` may need: per-container memory when a
/// memory threshold is met, local storage when a disk threshold is (minimum reclaim counted,
/// grace periods not: a superset of what [`EvictionManager::decide`] can act on).
#[must_use]
pub fn stats_needed(thresholds: &[Threshold], obs: &Observations) -> PodStatsNeed {
    let met = thresholds_met(thresholds, obs, true);
    PodStatsNeed {
        usage: !met.is_empty(),
        containers: met
            .iter()
            .any(|t| Resource::of(t.signal) == Resource::Memory),
        disk: met.iter().any(|t| Resource::of(t.signal).is_disk()),
    }
}

impl EvictionManager {
    /// A manager for `config`; `enforce_pods_allocatable` (`enforceNodeAllocatable: [pods]`)
    /// adds the `allocatableMemory.available` thresholds.
    #[must_use]
    pub fn new(config: EvictionConfig, enforce_pods_allocatable: bool) -> Self {
        let thresholds = effective_thresholds(&config, enforce_pods_allocatable);
        Self {
            config,
            thresholds,
            tracker: ThresholdTracker::default(),
            pending: BTreeMap::new(),
            evicted: BTreeMap::new(),
            monitoring_interval: DEFAULT_MONITORING_INTERVAL,
            cleanup_timeout: POD_CLEANUP_TIMEOUT,
            usage_cache: None,
        }
    }

    /// Local storage is walked through `cache` (the stats sampler's): a tree walked less
    /// than half a monitoring interval ago is not walked again.
    #[must_use]
    pub fn with_usage_cache(mut self, cache: UsageCache) -> Self {
        self.usage_cache = Some(cache);
        self
    }

    fn storage_meter(&self, observer: &Observer) -> StorageMeter {
        let meter = StorageMeter::new(observer.roots().proc_root.clone(), observer.tree().clone());
        match &self.usage_cache {
            Some(cache) => meter.with_cache(cache.clone(), self.monitoring_interval / 2),
            None => meter,
        }
    }

    /// The periodic floor (default [`DEFAULT_MONITORING_INTERVAL`]).
    #[must_use]
    pub fn with_monitoring_interval(mut self, interval: Duration) -> Self {
        self.monitoring_interval = interval;
        self
    }

    /// How long to wait for an evicted pod (default [`POD_CLEANUP_TIMEOUT`]).
    #[must_use]
    pub fn with_cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = timeout;
        self
    }

    /// How pods are ranked for memory evictions.
    #[must_use]
    pub fn ranking(&self) -> EvictionRanking {
        self.config.ranking
    }

    /// Every threshold evaluated.
    #[must_use]
    pub fn thresholds(&self) -> &[Threshold] {
        &self.thresholds
    }

    /// The conditions as of the last evaluation.
    #[must_use]
    pub fn conditions(&self) -> Vec<NodeCondition> {
        self.tracker.conditions()
    }

    /// Evicted pods being waited for, as `(uid, QoS class)`: the shell observes what is
    /// left of them ([`Observer::remnant`]) into [`Observations::remnants`].
    #[must_use]
    pub fn pending_evictions(&self) -> Vec<(String, QosClass)> {
        self.pending
            .iter()
            .map(|(uid, p)| (uid.clone(), p.qos))
            .collect()
    }

    /// One evaluation: `obs` of the node, `pods` that may be evicted, at `now`.
    pub fn decide(&mut self, obs: &Observations, pods: &[PodUsage], now: Timestamp) -> Decision {
        let evaluation = self.tracker.evaluate(
            &self.thresholds,
            obs,
            self.config.pressure_transition_period,
            now,
        );
        let cleanup_timeout = self.cleanup_timeout;
        self.pending.retain(|uid, p| {
            let cleaned = obs.remnants.get(uid).is_some_and(|r| r.is_cleaned_up());
            let waited = Duration::try_from(now.duration_since(p.since)).unwrap_or_default();
            if !cleaned && waited >= cleanup_timeout {
                warn!(pod_uid = %uid, waited = ?waited, "evicted pod not cleaned up in time; evicting again if needed");
            }
            !cleaned && waited < cleanup_timeout
        });
        self.evicted.retain(|uid, since| {
            let waited = Duration::try_from(now.duration_since(*since)).unwrap_or_default();
            // No pods: none were looked at (no threshold met); time alone decides.
            (pods.is_empty() || pods.iter().any(|p| &p.uid == uid)) && waited < 2 * cleanup_timeout
        });
        let decision = |outcome, eviction: Option<Eviction>, reclaim| Decision {
            evaluation: evaluation.clone(),
            outcome,
            reclaim_disk_first: reclaim,
            eviction,
            trigger: None,
            latency: None,
        };

        let Some(threshold) = evaluation.active.first().cloned() else {
            return decision(Outcome::NoPressure, None, false);
        };
        if let Some(uid) = self.pending.keys().next() {
            return decision(
                Outcome::WaitingForCleanup {
                    pod_uid: uid.clone(),
                },
                None,
                false,
            );
        }
        let resource = Resource::of(threshold.signal);
        let candidates: Vec<PodUsage> = pods
            .iter()
            .filter(|p| !p.critical && !self.evicted.contains_key(&p.uid))
            .cloned()
            .collect();
        let Some(victim) = rank(&candidates, resource, self.config.ranking)
            .first()
            .copied()
        else {
            return decision(
                Outcome::NoVictim {
                    signal: threshold.signal,
                },
                None,
                false,
            );
        };
        let hard = is_hard(&threshold);
        let grace_period = if hard {
            Duration::ZERO
        } else {
            self.config
                .max_pod_grace_period
                .map_or(victim.grace_period, |max| max.min(victim.grace_period))
        };
        let (message, offenders) = eviction_message(
            resource,
            threshold.signal,
            threshold.value,
            obs.get(threshold.signal),
            victim,
        );
        let eviction = Eviction {
            pod_uid: victim.uid.clone(),
            pod_name: victim.name.clone(),
            qos: victim.qos,
            grace_period,
            signal: threshold.signal.into(),
            resource,
            hard,
            reason: REASON_EVICTED,
            message,
            offenders,
            trigger: None,
            latency: None,
        };
        let reclaim = resource.is_disk();
        if !reclaim {
            self.record(&eviction, now);
        }
        decision(Outcome::Evict, Some(eviction), reclaim)
    }

    /// After node-level disk reclaim: the eviction still to carry out, or `None` when `obs`
    /// meets no threshold any more, minimum reclaim included (grace periods ignored, as
    /// upstream's `reclaimNodeLevelResources`).
    pub fn confirm_after_reclaim(
        &mut self,
        eviction: Eviction,
        obs: &Observations,
        now: Timestamp,
    ) -> Option<Eviction> {
        if thresholds_met(&self.thresholds, obs, true).is_empty() {
            return None;
        }
        self.record(&eviction, now);
        Some(eviction)
    }

    /// Local storage limits (upstream's `localStorageEviction`), independent of node
    /// pressure: every pod of `pods` that exceeds one of its limits ([`check`]), in the
    /// order given, with grace [`LIMIT_EVICTION_GRACE`]. Critical pods and pods already
    /// evicted are left alone (upstream refuses to evict critical pods too). Each eviction is
    /// recorded as any other, so a node-pressure eviction waits for its cleanup. Nothing
    /// with `localStorageCapacityIsolation: false`.
    pub fn decide_local_storage(
        &mut self,
        pods: &[(LimitedPod, StorageUsage)],
        now: Timestamp,
    ) -> Vec<Eviction> {
        if !self.config.local_storage_capacity_isolation {
            return Vec::new();
        }
        let mut evictions = Vec::new();
        for (pod, usage) in pods {
            if pod.critical || self.evicted.contains_key(&pod.uid) {
                continue;
            }
            let Some(violation) = check(pod, usage) else {
                continue;
            };
            let eviction = Eviction {
                pod_uid: pod.uid.clone(),
                pod_name: pod.name.clone(),
                qos: pod.qos,
                grace_period: LIMIT_EVICTION_GRACE,
                signal: EvictionSignal::Limit(violation.signal),
                resource: Resource::EphemeralStorage,
                hard: true,
                reason: REASON_EVICTED,
                message: violation.message,
                offenders: Vec::new(),
                trigger: None,
                latency: None,
            };
            self.record(&eviction, now);
            evictions.push(eviction);
        }
        evictions
    }

    /// Whether local storage limits are enforced (`localStorageCapacityIsolation`).
    #[must_use]
    pub fn enforces_local_storage(&self) -> bool {
        self.config.local_storage_capacity_isolation
    }

    fn record(&mut self, eviction: &Eviction, now: Timestamp) {
        self.evicted.insert(eviction.pod_uid.clone(), now);
        self.pending.insert(
            eviction.pod_uid.clone(),
            Pending {
                qos: eviction.qos,
                since: now,
            },
        );
    }

    /// Evaluates on every trigger and at least every monitoring interval (the first at
    /// once) until `cancel`; sends evictions and publishes conditions through `io`.
    /// Filesystem reads run on blocking threads; a closed trigger channel leaves the
    /// periodic floor. The runtime is asked for its image filesystem on periodic
    /// evaluations only, so a kernel-triggered one never waits for the CRI.
    pub async fn run<R, P>(
        mut self,
        io: EvictionIo<R, P>,
        mut triggers: mpsc::Receiver<Trigger>,
        cancel: CancellationToken,
    ) where
        R: ContainerRuntime + 'static,
        P: PodProvider,
    {
        let meter = self.storage_meter(&io.observer);
        let mut shell = Shell {
            meter: Some(meter),
            storage_reported: Vec::new(),
            truncated_reported: BTreeSet::new(),
            observer: Arc::new(io.observer),
            reclaimer: DiskReclaimer::new(Arc::clone(&io.runtime), io.image_gc),
            runtime: io.runtime,
            pods: io.pods,
            evictions: io.evictions,
            conditions: io.conditions,
            imagefs: ImageFs::default(),
            reported: Vec::new(),
        };
        let mut interval = tokio::time::interval(self.monitoring_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut triggers_open = true;
        let mut cleanup_at: Option<tokio::time::Instant> = None;
        let mut watch_until: Option<tokio::time::Instant> = None;
        info!(
            thresholds = self.thresholds.len(),
            ranking = ?self.config.ranking,
            interval = ?self.monitoring_interval,
            "eviction manager running"
        );
        loop {
            let (kind, at) = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                t = triggers.recv(), if triggers_open => match t {
                    Some(t) => {
                        let mut at = t.at;
                        while let Ok(more) = triggers.try_recv() {
                            at = at.min(more.at);
                        }
                        (TriggerKind::Kernel, at)
                    }
                    None => {
                        triggers_open = false;
                        continue;
                    }
                },
                () = crate::timer::sleep_until(cleanup_at), if cleanup_at.is_some() => {
                    (TriggerKind::Cleanup, Instant::now())
                }
                // The cleanup poll looks as often while an eviction is pending.
                () = tokio::time::sleep(WATCH_POLL), if watch_until.is_some() && cleanup_at.is_none() => {
                    (TriggerKind::Watch, Instant::now())
                }
                _ = interval.tick() => (TriggerKind::Periodic, Instant::now()),
            };
            if kind == TriggerKind::Periodic {
                shell.imagefs.refresh(&*shell.runtime).await;
            }
            let evicted = self.evaluate(&mut shell, kind, at).await;
            let now = tokio::time::Instant::now();
            cleanup_at = (!self.pending.is_empty()).then(|| now + CLEANUP_POLL);
            watch_until = match kind {
                TriggerKind::Kernel if !evicted => Some(now + WATCH_FOR),
                _ if evicted => None,
                _ => watch_until.filter(|&until| now < until),
            };
        }
        debug!("eviction manager stopped");
    }

    /// One evaluation in the shell: observe, decide, publish, evict. Returns whether it
    /// evicted a pod.
    async fn evaluate<R, P>(
        &mut self,
        shell: &mut Shell<R, P>,
        kind: TriggerKind,
        at: Instant,
    ) -> bool
    where
        R: ContainerRuntime + 'static,
        P: PodProvider,
    {
        // Local storage limits are measured on the periodic pass only: kernel triggers and
        // the short polls after them are about memory, and must not wait for a disk walk.
        let measured = if kind == TriggerKind::Periodic {
            self.measure_local_storage(shell).await
        } else {
            Vec::new()
        };
        let Some((obs, usages, errors)) = self.observe(shell).await else {
            return false;
        };
        report_errors(&mut shell.reported, &errors);
        let now = Timestamp::now();
        let storage_evictions = self.decide_local_storage(&measured, now);
        let mut decision = self.decide(&obs, &usages, now);
        decision.trigger = Some(kind);
        decision.latency = Some(at.elapsed());
        if decision.evaluation.conditions_changed {
            let pressure: Vec<&str> = decision
                .evaluation
                .conditions
                .iter()
                .filter(|c| c.status)
                .map(|c| c.kind.as_str())
                .collect();
            info!(?pressure, "node pressure conditions changed");
            shell
                .conditions
                .send_replace(decision.evaluation.conditions.clone());
        }
        debug!(trigger = ?kind, outcome = ?decision.outcome, latency = ?decision.latency, "eviction evaluation");
        if !storage_evictions.is_empty() {
            // As upstream: a pass that evicts for local storage evicts nothing else.
            for mut eviction in storage_evictions {
                eviction.trigger = Some(kind);
                eviction.latency = Some(at.elapsed());
                info!(
                    pod = %eviction.pod_name,
                    pod_uid = %eviction.pod_uid,
                    signal = %eviction.signal,
                    grace = ?eviction.grace_period,
                    eviction_message = %eviction.message,
                    "evicting pod over its local storage limit"
                );
                if shell.evictions.send(eviction).await.is_err() {
                    warn!("nobody carries out evictions any more");
                }
            }
            return true;
        }
        let Some(mut eviction) = decision.eviction.take() else {
            return false;
        };
        eviction.trigger = decision.trigger;
        eviction.latency = decision.latency;
        if decision.reclaim_disk_first {
            match self.reclaim_disk(eviction, shell).await {
                Some(e) => eviction = e,
                None => return false,
            }
        }
        info!(
            pod = %eviction.pod_name,
            pod_uid = %eviction.pod_uid,
            signal = %eviction.signal,
            grace = ?eviction.grace_period,
            trigger = eviction.trigger.map(tracing::field::debug),
            latency = ?eviction.latency,
            latency_us = eviction.latency.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            eviction_message = %eviction.message,
            "evicting pod"
        );
        if shell.evictions.send(eviction).await.is_err() {
            warn!(
                "nobody carries out evictions any more; the eviction manager only publishes conditions"
            );
        }
        true
    }

    /// Observes the node, the pods and the evicted pods' remnants on a blocking thread.
    async fn observe<R, P: PodProvider>(
        &self,
        shell: &Shell<R, P>,
    ) -> Option<(Observations, Vec<PodUsage>, Vec<super::EvictionError>)> {
        let observer = Arc::clone(&shell.observer);
        let imagefs = shell.imagefs.path.clone();
        let thresholds = self.thresholds.clone();
        let pending = self.pending_evictions();
        let observed = tokio::task::spawn_blocking(move || {
            let (mut obs, errors) = observer.observe_node(imagefs.as_deref());
            for (uid, qos) in pending {
                let remnant = observer.remnant(&uid, qos);
                obs.remnants.insert(uid, remnant);
            }
            let need = stats_needed(&thresholds, &obs);
            (obs, need, errors)
        })
        .await;
        let (obs, need, mut errors) = match observed {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "observing eviction signals failed");
                return None;
            }
        };
        // Pods are looked at only when a threshold is met: an idle node's evaluation
        // reads the node's signals and nothing per pod.
        if !need.usage {
            return Some((obs, Vec::new(), errors));
        }
        let infos = shell.pods.active_pods();
        let observer = Arc::clone(&shell.observer);
        match tokio::task::spawn_blocking(move || observer.observe_pods(&infos, need)).await {
            Ok((usages, pod_errors)) => {
                errors.extend(pod_errors);
                Some((obs, usages, errors))
            }
            Err(e) => {
                warn!(error = %e, "observing pods for eviction failed");
                None
            }
        }
    }

    /// Measures the running pods that have a local storage limit, on a blocking thread.
    /// Nothing is read (not even the pod list) with `localStorageCapacityIsolation: false`;
    /// with no limited pod, only the pod list is looked at.
    async fn measure_local_storage<R, P: PodProvider>(
        &self,
        shell: &mut Shell<R, P>,
    ) -> Vec<(LimitedPod, StorageUsage)> {
        if !self.config.local_storage_capacity_isolation {
            return Vec::new();
        }
        let pods = shell.pods.storage_limited_pods();
        if pods.is_empty() {
            return Vec::new();
        }
        let mut meter = shell
            .meter
            .take()
            .unwrap_or_else(|| self.storage_meter(&shell.observer));
        // Writable layers live in the runtime's snapshots, on its image filesystem.
        meter.set_layer_root(shell.imagefs.path.clone());
        let measured = tokio::task::spawn_blocking(move || {
            let (usages, errors) = meter.measure(&pods);
            (meter, pods, usages, errors)
        })
        .await;
        let (meter, pods, usages, errors) = match measured {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "measuring local storage failed");
                return Vec::new();
            }
        };
        shell.meter = Some(meter);
        report_errors(&mut shell.storage_reported, &errors);
        shell
            .truncated_reported
            .retain(|uid| pods.iter().any(|p| &p.uid == uid));
        for (pod, usage) in pods.iter().zip(&usages) {
            if usage.truncated && shell.truncated_reported.insert(pod.uid.clone()) {
                warn!(
                    pod = %pod.name,
                    entries = super::local_storage::MAX_WALK_ENTRIES,
                    "this pod's local storage has more entries than one pass looks at; its usage is a lower bound"
                );
            }
        }
        debug!(pods = pods.len(), "local storage measured");
        pods.into_iter().zip(usages).collect()
    }

    /// Node-level disk reclaim, then the eviction if still needed.
    async fn reclaim_disk<R: ContainerRuntime + 'static, P: PodProvider>(
        &mut self,
        eviction: Eviction,
        shell: &Shell<R, P>,
    ) -> Option<Eviction> {
        let report = shell.reclaimer.reclaim(&shell.pods.wanted_images()).await;
        info!(
            containers = report.containers_removed.len(),
            images = report.images_removed.len(),
            image_bytes = report.image_bytes_freed,
            "reclaimed disk before evicting"
        );
        for e in &report.errors {
            warn!(error = %e, cause = %crate::error::error_chain(e), "disk reclaim");
        }
        let observer = Arc::clone(&shell.observer);
        let imagefs = shell.imagefs.path.clone();
        let obs = tokio::task::spawn_blocking(move || observer.observe_node(imagefs.as_deref()).0)
            .await
            .ok()?;
        let confirmed = self.confirm_after_reclaim(eviction, &obs, Timestamp::now());
        if confirmed.is_none() {
            info!("disk pressure resolved by reclaim; no pod evicted");
        }
        confirmed
    }
}

/// What the running manager works with.
struct Shell<R, P> {
    observer: Arc<Observer>,
    runtime: Arc<R>,
    reclaimer: DiskReclaimer<R>,
    pods: P,
    evictions: mpsc::Sender<Eviction>,
    conditions: watch::Sender<Vec<NodeCondition>>,
    imagefs: ImageFs,
    /// The observation errors last logged.
    reported: Vec<String>,
    /// Measures local storage; taken while a blocking thread uses it.
    meter: Option<StorageMeter>,
    /// The local storage errors last logged.
    storage_reported: Vec<String>,
    /// Pods whose too large trees were reported.
    truncated_reported: BTreeSet<String>,
}

/// The runtime's image filesystem, asked for now and then.
#[derive(Default)]
struct ImageFs {
    path: Option<PathBuf>,
    refreshed: Option<Instant>,
}

impl ImageFs {
    fn stale(&self) -> bool {
        self.refreshed
            .is_none_or(|at| at.elapsed() >= IMAGEFS_REFRESH)
    }

    async fn refresh<R: ContainerRuntime>(&mut self, runtime: &R) {
        if !self.stale() {
            return;
        }
        self.refreshed = Some(Instant::now());
        match runtime.image_fs_info().await {
            Ok(filesystems) => {
                let path = filesystems
                    .into_iter()
                    .map(|f| PathBuf::from(f.mountpoint))
                    .find(|p| p.is_absolute());
                if path != self.path {
                    info!(imagefs = ?path, "image filesystem");
                }
                self.path = path;
            }
            Err(e) => {
                warn!(error = %e, "cannot ask the runtime for its image filesystem; imagefs is nodefs");
                self.path = None;
            }
        }
    }
}

/// Logs observation errors when they differ from the last ones (no spam at 10 Hz).
fn report_errors(reported: &mut Vec<String>, errors: &[super::EvictionError]) {
    let now: Vec<String> = errors.iter().map(|e| crate::error::full_text(e)).collect();
    if now != *reported {
        for e in &now {
            warn!(error = %e, "eviction signal unavailable");
        }
        *reported = now;
    }
}

/// Why a pod is refused while the node is under pressure (upstream's eviction admit
/// handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `Evicted`.
    pub reason: &'static str,
    /// `The node had condition: [MemoryPressure]. `
    pub message: String,
}

/// Upstream's admission under pressure: with no pressure, or for a system-critical pod,
/// admit; under memory pressure alone, admit all but BestEffort pods (and those that
/// tolerate the memory-pressure taint); under disk or pid pressure, refuse. A static pod
/// refused here must not be (re)started: that is how an evicted pod stays down while the
/// pressure lasts.
///
/// # Errors
/// [`Rejection`] with upstream's reason and message.
pub fn admit(conditions: &[NodeCondition], pod: &Pod) -> Result<(), Rejection> {
    let pressure: Vec<PressureCondition> = conditions
        .iter()
        .filter(|c| c.status)
        .map(|c| c.kind)
        .collect();
    if pressure.is_empty() {
        return Ok(());
    }
    if is_critical(pod) {
        return Ok(());
    }
    let spec = pod.spec.as_ref();
    if pressure == [PressureCondition::MemoryPressure] {
        if qos::qos_class(pod) != QosClass::BestEffort {
            return Ok(());
        }
        let tolerates = spec
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[])
            .iter()
            .any(|t| {
                let key = t.key.as_deref().unwrap_or_default();
                let exists = t.operator.as_deref() == Some("Exists");
                let key_matches = key == MEMORY_PRESSURE_TAINT || (key.is_empty() && exists);
                let effect_matches = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule");
                let value_matches = exists || t.value.as_deref().unwrap_or_default().is_empty();
                key_matches && effect_matches && value_matches
            });
        if tolerates {
            return Ok(());
        }
    }
    let names: Vec<&str> = pressure.iter().map(|c| c.as_str()).collect();
    Err(Rejection {
        reason: REASON_EVICTED,
        message: format!("The node had condition: [{}]. ", names.join(" ")),
    })
}

/// The taint upstream puts on a node under memory pressure.
const MEMORY_PRESSURE_TAINT: &str = "node.kubernetes.io/memory-pressure";

#[cfg(test)]
mod tests;
