//! One worker per pod: observe the runtime, plan, apply, publish status; repeat when poked,
//! when the spec changes, when a backoff expires, and at least every `syncFrequency`.
//!
//! Only the worker touches its pod in the runtime, so syncs of one pod never overlap; pokes
//! and spec updates arriving during a sync coalesce into one more sync. The pod's removal
//! (or the agent's shutdown) drops a sync in progress.
//!
//! Failures stay as small as they are: a container whose start fails (config, image,
//! create, start) waits with upstream's reason and the failing layer's message, gets a
//! `Failed` (or `ErrImageNeverPull`) warning event, and backs off like a crash while its
//! siblings start; at most one dead container per container name is kept. A pod-level
//! failure (volumes, pod cgroup, sandbox) fails the sync: the containers it blocks show why,
//! a warning event names it (`FailedMount`, `FailedCreatePodSandBox`, ...), and the sync is
//! retried after 2 s, doubling to 5 min, logged at warn once per distinct error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_cri::v1 as api;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::Rejection;
use super::backoff::{Backoff, BackoffKey, StartFailure};
use super::cri_config::{self, ContainerContext, DnsSettings, NodeAllocatable, SandboxContext};
use super::observe::{Images, ObserveCache, observe_pod, observe_pod_cached};
use super::plan::{self, ObservedPod, PodActions, Waiting};
use super::volumes::{PodVolumes, VolumeError};
use crate::cgroups::Hierarchy;
use crate::cgroups::tree::QosTree;
use crate::eviction::Eviction;
use crate::model::container::WaitingReason;
use crate::model::node::NodeCondition;
use crate::model::{format_pod, pod_uid, termination_grace};
use crate::pleg::facts::{self, KernelFacts};
use crate::pleg::{KernelEnd, Trigger};
use crate::record::{EventType, Recorder, pod_reference};
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::status::manager::StatusManager;
use crate::status::{self, StatusContext};

/// What every worker shares.
pub struct PodContext<R> {
    pub runtime: Arc<R>,
    /// The watched cgroup hierarchy (to read a process's cgroup).
    pub hierarchy: Hierarchy,
    pub tree: Arc<QosTree>,
    /// `<root-dir>/pods`: volumes and per-pod state.
    pub pods_dir: PathBuf,
    /// Where container logs go (`/var/log/pods` layout).
    pub logs_dir: PathBuf,
    pub node_name: String,
    pub node_ips: Vec<std::net::IpAddr>,
    pub dns: DnsSettings,
    pub allocatable: NodeAllocatable,
    pub memory_capacity: u64,
    pub sync_frequency: Duration,
    /// Where the grid of periodic resyncs starts (see [`resync_deadline`]): one instant for
    /// every worker, so their resyncs fall together.
    pub resync_epoch: tokio::time::Instant,
    /// Event PLEG: every runtime change of a pod reaches its worker as a poke (kernel
    /// events, and the safety relist's diff for what the kernel cannot see), so a sync that
    /// only the `sync_frequency` timer asked for plans against the last observation instead
    /// of asking the runtime again. Generic PLEG: every sync observes.
    pub runtime_changes_poke: bool,
    /// Where the pod's status goes.
    pub statuses: StatusManager,
    /// Where the pod's events go.
    pub recorder: Recorder,
    /// OOM kills the kernel reported, by container id.
    pub facts: KernelFacts,
    /// The kubepods cgroup (to name allocatable OOMs).
    pub kubepods: String,
    /// Node pressure conditions from the eviction manager: an evicted pod stays down while
    /// `Eviction::keeps_down` says so.
    pub conditions: watch::Receiver<Vec<NodeCondition>>,
    /// Liveness, readiness and startup probes of every pod.
    pub probes: crate::probes::ProbeManager,
    /// Which sysctls a pod may set; a pod setting another is rejected at admission.
    pub sysctls: super::sysctls::SysctlPolicy,
    /// `maxPods`: admission rejects pods past it (`OutOfpods`).
    pub max_pods: u32,
    pub metrics: crate::metrics::Metrics,
}

/// Parts of `sync_frequency` in one step of the resync grid.
const RESYNC_GRID_STEPS: u32 = 6;

/// When a periodic resync falls due: `period` after `now`, rounded up to the grid of
/// `period / 6` steps counted from `epoch`. Every worker uses the same grid, so at idle the
/// pods' resyncs wake the agent together a few times a period instead of one pod at a time
/// (110 pods at the default 1 min: 6 wakeups a minute instead of 110). A resync comes at
/// most a sixth of the period late; upstream spreads its resyncs over 1 to 1.5 periods.
fn resync_deadline(
    epoch: tokio::time::Instant,
    now: tokio::time::Instant,
    period: Duration,
) -> tokio::time::Instant {
    let due = now + period;
    let step = (period / RESYNC_GRID_STEPS).as_nanos();
    if step == 0 || due < epoch {
        return due;
    }
    let since = due.duration_since(epoch).as_nanos();
    let on_grid = since.div_ceil(step) * step;
    u64::try_from(on_grid).map_or(due, |n| epoch + Duration::from_nanos(n))
}

/// Why a sync could not finish; the worker logs it and tries again later.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime call for pod {pod}")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("pod cgroup for pod {pod}")]
    Cgroup {
        pod: String,
        #[source]
        source: crate::cgroups::CgroupError,
    },
    #[error("volumes of pod {pod}")]
    Volume {
        pod: String,
        #[source]
        source: VolumeError,
    },
    #[error("CRI config for pod {pod}")]
    Config {
        pod: String,
        #[source]
        source: cri_config::ConfigBuildError,
    },
    #[error("creating the sandbox of pod {pod}")]
    CreateSandbox {
        pod: String,
        #[source]
        source: RuntimeError,
    },
}

impl SyncError {
    /// The warning event upstream records for this failure, if any (a failed runtime
    /// listing or stop is the runtime's trouble, not the pod's).
    fn event_reason(&self) -> Option<&'static str> {
        match self {
            SyncError::Volume { .. } => Some("FailedMount"),
            SyncError::Cgroup { .. } => Some("FailedCreatePodContainer"),
            SyncError::Config { .. } | SyncError::CreateSandbox { .. } => {
                Some("FailedCreatePodSandBox")
            }
            SyncError::Runtime { .. } => None,
        }
    }

    /// The message the waiting containers and the event show: the runtime's own words for a
    /// runtime failure, the cause's otherwise.
    fn status_message(&self) -> String {
        match self {
            SyncError::Runtime { source, .. } | SyncError::CreateSandbox { source, .. } => {
                runtime_message(source)
            }
            other => crate::error::error_chain(other),
        }
    }

    /// What the pod's containers that wait to be created show. Upstream shows
    /// `ContainerCreating` without a message for every pod-level failure; bpflet names a
    /// volume, cgroup or config failure `CreateContainerConfigError` (the containers' config
    /// cannot be prepared) and gives every one its cause as the message.
    fn waiting_reason(&self) -> Option<WaitingReason> {
        match self {
            SyncError::Volume { .. } | SyncError::Cgroup { .. } | SyncError::Config { .. } => {
                Some(WaitingReason::CreateContainerConfigError)
            }
            SyncError::CreateSandbox { .. } => Some(WaitingReason::ContainerCreating),
            SyncError::Runtime { .. } => None,
        }
    }
}

/// Why one container could not be started. The worker shows it in the container's status,
/// records a warning event, and backs the container off; the pod's other containers go on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("container {container:?}: building its CRI config")]
    Config {
        container: String,
        #[source]
        source: cri_config::ConfigBuildError,
    },
    #[error("container {container:?}: pinning a subPath")]
    SubPath {
        container: String,
        #[source]
        source: VolumeError,
    },
    #[error("container {container:?}: image {image:?} is not present with pull policy of Never")]
    ImageNeverPull { container: String, image: String },
    #[error(
        "container {container:?}: image {image:?} is not present, and bpflet does not pull \
         images yet (imagePullPolicy {policy})"
    )]
    ImageMissing {
        container: String,
        image: String,
        policy: String,
    },
    #[error("container {container:?}: asking the runtime for image {image:?}")]
    ImageInspect {
        container: String,
        image: String,
        #[source]
        source: RuntimeError,
    },
    #[error("container {container:?}: creating it")]
    Create {
        container: String,
        #[source]
        source: RuntimeError,
    },
    #[error("container {container:?}: starting it")]
    Start {
        container: String,
        #[source]
        source: RuntimeError,
    },
}

impl StartError {
    /// The container's waiting reason, as upstream names these failures.
    fn reason(&self) -> WaitingReason {
        match self {
            StartError::Config { .. } | StartError::SubPath { .. } => {
                WaitingReason::CreateContainerConfigError
            }
            StartError::ImageNeverPull { .. } => WaitingReason::ErrImageNeverPull,
            StartError::ImageMissing { .. } => WaitingReason::ErrImagePull,
            StartError::ImageInspect { .. } => WaitingReason::ImageInspectError,
            StartError::Create { .. } => WaitingReason::CreateContainerError,
            StartError::Start { .. } => WaitingReason::RunContainerError,
        }
    }

    /// The status message: what failed, in the words of the layer that failed (the
    /// runtime's own message where it gave one, as upstream shows it).
    fn status_message(&self) -> String {
        match self {
            StartError::Config { source, .. } => describe(source),
            StartError::SubPath { source, .. } => describe(source),
            StartError::ImageNeverPull { image, .. } => {
                format!("Container image {image:?} is not present with pull policy of Never")
            }
            StartError::ImageMissing { image, policy, .. } => format!(
                "Container image {image:?} is not present, and pulling images is not \
                 implemented by bpflet yet (imagePullPolicy {policy})"
            ),
            StartError::ImageInspect { source, .. }
            | StartError::Create { source, .. }
            | StartError::Start { source, .. } => runtime_message(source),
        }
    }

    /// The warning event upstream records (the status message is its message).
    fn event_reason(&self) -> &'static str {
        match self {
            StartError::ImageNeverPull { .. } => "ErrImageNeverPull",
            StartError::ImageInspect { .. } => "InspectFailed",
            _ => "Failed",
        }
    }
}

/// `e` and its causes, one sentence.
fn describe(e: &dyn std::error::Error) -> String {
    let chain = crate::error::error_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

/// The runtime's own message for a failed call (containerd's `failed to create containerd
/// task: ... exec: "/no/such/binary": ...`), or the whole error when it gave none.
fn runtime_message(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Call { source, .. } if !source.message().is_empty() => {
            source.message().to_owned()
        }
        other => describe(other),
    }
}

/// First retry of a pod whose sync failed; each further failure doubles it.
const SYNC_RETRY_INITIAL: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing sync (upstream's crash-loop cap).
const SYNC_RETRY_MAX: Duration = Duration::from_secs(300);
/// Longest wait when the runtime itself failed (down, restarting): that is not the pod's
/// fault, and the pod should be back soon after the runtime (upstream's fixed retry).
const SYNC_RETRY_MAX_RUNTIME: Duration = Duration::from_secs(10);

/// When to retry after `failures` syncs in a row failed, the last with `e`: 2 s, 4 s, ...
/// 5 min; at most 10 s when the runtime call failed.
fn sync_retry_delay(e: &SyncError, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let max = match e {
        SyncError::Runtime { .. } => SYNC_RETRY_MAX_RUNTIME,
        _ => SYNC_RETRY_MAX,
    };
    SYNC_RETRY_INITIAL.saturating_mul(1 << doublings).min(max)
}

/// What applying a plan did besides changing the runtime.
#[derive(Debug, Default)]
struct Applied {
    /// Come back this early (a back-off ends).
    requeue: Option<Duration>,
    /// Containers whose start failed, with why (for status).
    failed: Vec<Waiting>,
}

impl Applied {
    fn come_back_within(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
}

/// Messages to a worker. The spec travels on a watch channel (latest wins); pokes coalesce
/// in a `Notify`; termination is a token.
pub struct WorkerHandle {
    pub spec: watch::Sender<Arc<Pod>>,
    /// The pod passed admission (see [`super::admission`]).
    pub admitted: bool,
    poke: Arc<Notify>,
    kernel_waits: Arc<std::sync::Mutex<Vec<KernelEnd>>>,
    pub terminate: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
    eviction: Arc<std::sync::Mutex<Option<Eviction>>>,
}

impl WorkerHandle {
    /// Evicts the pod: the worker kills it with the eviction's grace period, marks it
    /// `Evicted`, and keeps it down while the node is under that pressure.
    pub fn evict(&self, eviction: Eviction) {
        *self
            .eviction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(eviction);
        self.poke.notify_one();
    }

    pub fn poke(&self, trigger: Trigger) {
        if let Trigger::Kernel(end) = trigger {
            let mut waits = self
                .kernel_waits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match waits.iter_mut().find(|w| w.container == end.container) {
                // An exit with its code says more than a cgroup removal.
                Some(w) => {
                    if w.exit_code.is_none() {
                        *w = end;
                    }
                }
                None => waits.push(end),
            }
        }
        self.poke.notify_one();
    }
}

/// After a kernel trigger, how long the worker keeps relisting its pod until the runtime
/// reports the change the kernel saw (containerd needs ~40 ms; a loaded node more).
const KERNEL_RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Relist interval while waiting for the runtime: short, so that containerd's answer is
/// seen within a few ms of its arrival (one relist of one pod costs ~1 ms of CRI calls) ...
const KERNEL_RETRY_FAST: Duration = Duration::from_millis(5);
/// ... for this long; then the node is slow and relisting backs off.
const KERNEL_RETRY_FAST_FOR: Duration = Duration::from_millis(300);
const KERNEL_RETRY_SLOW: Duration = Duration::from_millis(50);

/// Starts a worker for `pod`. `cancel` is the agent's shutdown: the worker then stops
/// without touching the pod (pods outlive the agent).
pub fn spawn<R: ContainerRuntime + 'static>(
    ctx: Arc<PodContext<R>>,
    pod: Arc<Pod>,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    admission: Result<(), Rejection>,
) -> WorkerHandle {
    let admitted = admission.is_ok();
    let (spec, spec_rx) = watch::channel(pod);
    let poke = Arc::new(Notify::new());
    let kernel_waits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let terminate = CancellationToken::new();
    let eviction = Arc::new(std::sync::Mutex::new(None));
    let worker = Worker {
        eviction: Arc::clone(&eviction),
        evicted: None,
        ctx,
        spec: spec_rx,
        poke: Arc::clone(&poke),
        kernel_waits: Arc::clone(&kernel_waits),
        terminate: terminate.clone(),
        cancel,
        backoff: Backoff::default(),
        status: None,
        last_observed: None,
        last_runtime: None,
        cgroup_applied: None,
        observe_cache: ObserveCache::default(),
        oom_reported: HashMap::new(),
        pids_asked: HashSet::new(),
        recheck: None,
        sync_failures: 0,
        last_sync_error: None,
    };
    let done = tracker.spawn(worker.run(admission));
    WorkerHandle {
        spec,
        admitted,
        poke,
        kernel_waits,
        terminate,
        done,
        eviction,
    }
}

struct Worker<R> {
    ctx: Arc<PodContext<R>>,
    /// An eviction requested by the eviction manager, not yet carried out.
    eviction: Arc<std::sync::Mutex<Option<Eviction>>>,
    /// The eviction carried out; the pod stays down while it holds.
    evicted: Option<Eviction>,
    spec: watch::Receiver<Arc<Pod>>,
    poke: Arc<Notify>,
    /// Containers the kernel saw end, which the runtime may not report yet.
    kernel_waits: Arc<std::sync::Mutex<Vec<KernelEnd>>>,
    terminate: CancellationToken,
    cancel: CancellationToken,
    backoff: Backoff,
    status: Option<PodStatus>,
    last_observed: Option<ObservedPod>,
    /// The runtime's view at the last sync, before probe verdicts were added.
    last_runtime: Option<ObservedPod>,
    /// The pod cgroup settings last written.
    cgroup_applied: Option<crate::model::qos::PodResourceConfig>,
    /// Statuses from earlier observations (see [`ObserveCache`]).
    observe_cache: ObserveCache,
    /// OOM kills already turned into events, per container id.
    oom_reported: HashMap<String, usize>,
    /// Containers whose main pid was asked for (once each; see [`Worker::learn_main_pid`]).
    pids_asked: HashSet<String>,
    /// Publishing found something to look at again soon (an undecided OOM kill).
    recheck: Option<Duration>,
    /// Syncs that failed in a row (see [`sync_retry_delay`]).
    sync_failures: u32,
    /// The last sync error logged at warn; the same error again is logged at debug.
    last_sync_error: Option<String>,
}

impl<R: ContainerRuntime + 'static> Worker<R> {
    async fn run(mut self, admission: Result<(), Rejection>) {
        // Admission (decided by the manager): a rejected pod is never started; it shows as
        // Failed until it is gone.
        if let Err(rejection) = admission {
            let first = Arc::clone(&self.spec.borrow());
            self.reject(&first, rejection.reason, &rejection.message)
                .await;
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.terminate.cancelled() => {}
            }
            let pod = Arc::clone(&self.spec.borrow());
            self.terminate_pod(&pod).await;
            return;
        }
        // Whether the last wait ended by the `sync_frequency` timer alone.
        let mut timer_only = false;
        loop {
            if self.terminate.is_cancelled() {
                let pod = Arc::clone(&self.spec.borrow());
                self.terminate_pod(&pod).await;
                return;
            }
            let pod = Arc::clone(&self.spec.borrow_and_update());
            let requested = self
                .eviction
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(e) = requested {
                self.evict(&pod, e).await;
            }
            if let Some(evicted) = &self.evicted {
                if evicted.keeps_down(&self.ctx.conditions.borrow(), &pod) {
                    // Still under pressure (or evicted for good): stay down, wake on pokes or at the next sync.
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = self.terminate.cancelled() => {}
                        _ = self.spec.changed() => {}
                        () = self.poke.notified() => {}
                        () = tokio::time::sleep(self.ctx.sync_frequency) => {}
                    }
                    continue;
                }
                info!(pod = %format_pod(&pod), "node pressure is over: starting the evicted pod again");
                self.evicted = None;
                self.status = None;
            }
            let waits = std::mem::take(
                &mut *self
                    .kernel_waits
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let quiet = timer_only && waits.is_empty() && self.ctx.runtime_changes_poke;
            // The pod's removal (or the agent's shutdown) drops a sync in progress: a large
            // pod's first sync starts containers for minutes, none of which is wanted once
            // the pod is gone. Every await in a sync is a runtime call or a short sleep, and
            // `terminate_pod` observes the runtime afresh, so dropping one loses nothing.
            let (terminate, cancel) = (self.terminate.clone(), self.cancel.clone());
            let synced = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = terminate.cancelled() => {
                    info!(pod = %format_pod(&pod), "pod removed during its sync: dropping the rest of the sync");
                    continue;
                }
                synced = async {
                    if quiet {
                        self.sync_from_last_observation(&pod).await
                    } else {
                        self.sync(&pod, &waits).await
                    }
                } => synced,
            };
            let next = match synced {
                Ok(next) => {
                    self.sync_failures = 0;
                    self.last_sync_error = None;
                    next
                }
                Err(e) => Some(self.sync_failed(&pod, &e)),
            };
            let recheck = self.recheck.take();
            let periodic = next.is_none() && recheck.is_none();
            let wait = next
                .unwrap_or(self.ctx.sync_frequency)
                .min(self.ctx.sync_frequency)
                .min(recheck.unwrap_or(Duration::MAX));
            let now = tokio::time::Instant::now();
            let deadline = if periodic {
                resync_deadline(self.ctx.resync_epoch, now, self.ctx.sync_frequency)
            } else {
                now + wait
            };
            timer_only = false;
            // After a failed sync, pokes (the PLEG, probes) wait for the retry: a sandbox
            // that fails to start leaves exits of its own in the pod's cgroup, and those
            // must not bring the retry forward. An eviction, a spec change or the pod's
            // removal still wake the worker at once.
            let hold_pokes = self.sync_failures > 0;
            loop {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = self.terminate.cancelled() => {}
                    _ = self.spec.changed() => {}
                    () = self.poke.notified() => {
                        if hold_pokes && !self.eviction_pending() {
                            continue;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => timer_only = periodic,
                }
                break;
            }
        }
    }

    /// The eviction manager asked for an eviction not carried out yet.
    fn eviction_pending(&self) -> bool {
        self.eviction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// A periodic sync under the event PLEG: plan against the last observation (kept
    /// current by pokes); only when the plan has something to do does the worker observe
    /// the runtime and sync for real.
    async fn sync_from_last_observation(
        &mut self,
        pod: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        if let Some(observed) = &self.last_observed {
            let actions = plan::compute_pod_actions(pod, observed, &self.backoff, Timestamp::now());
            if actions_are_empty(&actions) {
                return Ok(None);
            }
        }
        self.sync(pod, &[]).await
    }

    /// One pass: observe, plan, apply, publish. Returns when to come back early.
    async fn sync(
        &mut self,
        pod: &Pod,
        kernel_waits: &[KernelEnd],
    ) -> Result<Option<Duration>, SyncError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let rt_err = |source| SyncError::Runtime {
            pod: name.clone(),
            source,
        };
        let uid = pod_uid(pod).to_owned();

        let (mut observed, mut images) =
            observe_pod_cached(&*ctx.runtime, &uid, &mut self.observe_cache)
                .await
                .map_err(rt_err)?;
        // The kernel saw containers end; relist (briefly) until the runtime agrees.
        let start = Instant::now();
        if !kernel_waits.is_empty() {
            // The kernel knows how the main process ended before the runtime does: show it
            // now; acting on it (a restart, stopping the sandbox) waits for the runtime.
            if let Some(ended) = with_kernel_ends(&observed, kernel_waits) {
                // `ended` is `observed` with some containers changed in place.
                let shown = observed.containers.iter().zip(&ended.containers);
                for (_, c) in shown.filter(|(before, after)| before.state != after.state) {
                    info!(
                        pod = %name,
                        container = %c.name,
                        id = %c.id,
                        exit_code = c.exit_code.unwrap_or_default(),
                        "kernel: container's main process ended"
                    );
                }
                self.publish(pod, &ended, images.clone(), &PodActions::default());
            }
            while !kernel_waits
                .iter()
                .all(|end| runtime_saw_end(&observed, &end.container))
                && start.elapsed() < KERNEL_RETRY_BUDGET
            {
                tokio::time::sleep(if start.elapsed() < KERNEL_RETRY_FAST_FOR {
                    KERNEL_RETRY_FAST
                } else {
                    KERNEL_RETRY_SLOW
                })
                .await;
                (observed, images) =
                    observe_pod_cached(&*ctx.runtime, &uid, &mut self.observe_cache)
                        .await
                        .map_err(rt_err)?;
            }
        }
        let runtime_changed = self.last_runtime.as_ref() != Some(&observed);
        if runtime_changed {
            let trigger = if kernel_waits.is_empty() {
                "relist"
            } else {
                "kernel"
            };
            log_changes(&name, self.last_runtime.as_ref(), &observed, trigger, start);
        }
        self.last_runtime = Some(observed.clone());

        // The pod cgroup is written when its settings change or it went missing, not on
        // every sync (mkdir and four writes per pod per sync were most of an idle sync).
        let cgroup_config = crate::model::qos::pod_resource_config(pod);
        if self.cgroup_applied != Some(cgroup_config) || !ctx.tree.pod_cgroup_exists(pod) {
            ctx.tree
                .ensure_pod(pod)
                .map_err(|source| SyncError::Cgroup {
                    pod: name.clone(),
                    source,
                })?;
            self.cgroup_applied = Some(cgroup_config);
        }
        let volumes =
            PodVolumes::prepare(pod, &ctx.pods_dir).map_err(|source| SyncError::Volume {
                pod: name.clone(),
                source,
            })?;

        ctx.probes.annotate(&uid, &mut observed);
        let now = Timestamp::now();
        let actions = plan::compute_pod_actions(pod, &observed, &self.backoff, now);
        let changed = !actions_are_empty(&actions);
        if changed && runtime_changed {
            // Show what the runtime reports before acting on it: applying (stopping a
            // sandbox, restarting a container) takes tens of ms or more.
            self.publish(pod, &observed, images.clone(), &actions);
        }
        let applied = self.apply(pod, &observed, &actions, &volumes).await?;
        let requeue = applied.requeue;
        let mut actions = actions;
        for failed in applied.failed {
            actions.waiting.retain(|w| w.container != failed.container);
            actions.waiting.push(failed);
        }
        if changed {
            (observed, images) = observe_pod_cached(&*ctx.runtime, &uid, &mut self.observe_cache)
                .await
                .map_err(rt_err)?;
            self.remove_dead_attempts(pod, &mut observed).await;
            self.last_runtime = Some(observed.clone());
            ctx.probes.annotate(&uid, &mut observed);
        }
        ctx.probes.add_pod(
            pod,
            &observed,
            crate::probes::pod_ip(pod, &observed, &ctx.node_ips),
        );
        self.publish(pod, &observed, images, &actions);
        // Containers started here were asked about at their start; this finds those the
        // worker adopted (started before an agent restart).
        for c in &observed.containers {
            if c.state == plan::ContainerState::Running {
                self.learn_main_pid(pod, &c.name, &c.id).await;
            }
        }
        self.pids_asked
            .retain(|id| observed.containers.iter().any(|c| &c.id == id));
        self.last_observed = Some(observed);
        Ok(requeue)
    }

    /// For a pod whose containers share a pid namespace (the pod's or the node's): asks
    /// the runtime, once per container, for the pid of its main process, so that the
    /// kernel router knows that process's exit as the container's end (with its code).
    /// Without it, the container's end is still seen, later and without a code, when its
    /// cgroup empties.
    ///
    /// Other pods' containers are namespace inits, which the kernel flags: nothing to ask.
    async fn learn_main_pid(&mut self, pod: &Pod, container: &str, id: &str) {
        let shares = pod
            .spec
            .as_ref()
            .is_some_and(cri_config::shares_pid_namespace);
        if !shares || !self.pids_asked.insert(id.to_owned()) {
            return;
        }
        match self.ctx.runtime.container_pid(id).await {
            Ok(Some(pid)) if pid_in_container(&self.ctx.hierarchy, Path::new("/proc"), pid, id) => {
                debug!(pod = %format_pod(pod), %container, %id, pid, "main process of the container");
                self.ctx.facts.record_main_pid(id, pid);
            }
            Ok(Some(pid)) => {
                // The kernel reports pids as the initial pid namespace sees them; a runtime
                // in a pid namespace of its own reports its own. Or the process is gone.
                if !MAIN_PID_MISMATCH_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(pod = %format_pod(pod), %container, %id, pid, "the runtime's pid for the container is not a process in its cgroup here (is the runtime in another pid namespace?): containers sharing a pid namespace end without an exit code from the kernel");
                } else {
                    debug!(pod = %format_pod(pod), %container, %id, pid, "the runtime's pid is not a process in the container's cgroup");
                }
            }
            Ok(None) => {
                debug!(pod = %format_pod(pod), %container, %id, "the runtime names no main process for the container");
            }
            Err(e) => {
                debug!(pod = %format_pod(pod), %container, %id, error = %e, "cannot learn the container's main pid");
            }
        }
    }

    async fn apply(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        actions: &PodActions,
        volumes: &PodVolumes,
    ) -> Result<Applied, SyncError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let rt_err = |source| SyncError::Runtime {
            pod: name.clone(),
            source,
        };
        let grace = termination_grace(pod);

        if let Some(kill) = &actions.kill_pod {
            info!(pod = %name, reason = ?kill.reason, message = %kill.message, "killing pod");
            self.kill_containers(pod, observed, grace).await;
            for sb in observed.sandboxes.iter().filter(|s| s.ready) {
                ctx.runtime.stop_pod_sandbox(&sb.id).await.map_err(rt_err)?;
            }
        }
        for kill in &actions.containers_to_kill {
            info!(pod = %name, container = %kill.name, reason = ?kill.reason, "killing container");
            // Each failed probe run was already recorded as `Unhealthy` by the prober.
            if matches!(
                kill.reason,
                plan::KillReason::LivenessProbe | plan::KillReason::StartupProbe
            ) {
                ctx.recorder.record(
                    &pod_reference(pod),
                    EventType::Normal,
                    "Killing",
                    &kill.message,
                );
            }
            // Upstream runs preStop before every kill, a probe's included.
            match observed.containers.iter().find(|c| c.id == kill.id) {
                Some(c) => self
                    .stop_container(pod, observed, c, grace)
                    .await
                    .map_err(rt_err)?,
                None => ctx
                    .runtime
                    .stop_container(&kill.id, grace)
                    .await
                    .map_err(rt_err)?,
            }
        }

        let cgroup_parent =
            ctx.tree
                .cri_cgroup_parent(pod)
                .map_err(|source| SyncError::Cgroup {
                    pod: name.clone(),
                    source,
                })?;
        let sandbox_ctx = SandboxContext {
            pod_logs_dir: ctx.logs_dir.clone(),
            cgroup_parent,
            dns: ctx.dns.clone(),
        };
        let (sandbox_id, sandbox_config) = match (&actions.create_sandbox, &actions.sandbox_id) {
            (Some(create), _) => {
                let config = cri_config::sandbox_config(pod, create.attempt, &sandbox_ctx)
                    .map_err(|source| SyncError::Config {
                        pod: name.clone(),
                        source,
                    })?;
                info!(pod = %name, attempt = create.attempt, reason = ?create.reason, "creating sandbox");
                let id = ctx
                    .runtime
                    .run_pod_sandbox(&config, "")
                    .await
                    .map_err(|source| SyncError::CreateSandbox {
                        pod: name.clone(),
                        source,
                    })?;
                (id, config)
            }
            (None, Some(id)) => {
                let attempt = observed
                    .sandboxes
                    .iter()
                    .find(|s| &s.id == id)
                    .map_or(0, |s| s.attempt);
                let config =
                    cri_config::sandbox_config(pod, attempt, &sandbox_ctx).map_err(|source| {
                        SyncError::Config {
                            pod: name.clone(),
                            source,
                        }
                    })?;
                (id.clone(), config)
            }
            (None, None) => return Ok(Applied::default()),
        };

        let mut applied = Applied::default();
        let spec = pod.spec.as_ref();
        let inits = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default();
        let apps = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let starts = actions
            .init_containers_to_start
            .iter()
            .map(|s| (s, inits.get(s.index)))
            .chain(
                actions
                    .containers_to_start
                    .iter()
                    .map(|s| (s, apps.get(s.index))),
            );
        for (start, container) in starts {
            let Some(container) = container else { continue };
            if let Some(wait) = &start.backoff {
                debug!(pod = %name, container = %start.name, remaining = ?wait.remaining, "in back-off");
                applied.come_back_within(wait.remaining);
                continue;
            }
            // Upstream arms the next window when it lets a restart go ahead, so a start that
            // fails backs off like one that crashes.
            let key = BackoffKey::new(pod_uid(pod), &start.name);
            if let Some(since) = start.backoff_since {
                self.backoff.record_restart(&key, since, Timestamp::now());
            }
            let pod_ips = observed
                .sandboxes
                .iter()
                .find(|s| s.id == sandbox_id)
                .and_then(|s| s.ip.clone())
                .into_iter()
                .collect();
            let sandbox = SandboxRef {
                id: &sandbox_id,
                config: &sandbox_config,
                pod_ips,
            };
            match self
                .start_container(pod, container, start.attempt, &sandbox, volumes)
                .await
            {
                Ok(()) => self.backoff.clear_failure(&key),
                Err(e) => {
                    let failure = StartFailure {
                        at: Timestamp::now(),
                        reason: e.reason(),
                        message: e.status_message(),
                    };
                    warn!(pod = %name, container = %start.name, reason = %failure.reason, error = %e, cause = %crate::error::error_chain(&e), "container start failed; backing off");
                    let event = match &e {
                        StartError::ImageNeverPull { .. } | StartError::ImageMissing { .. } => {
                            failure.message.clone()
                        }
                        _ => format!("Error: {}", failure.message),
                    };
                    ctx.recorder.record(
                        &pod_reference(pod),
                        EventType::Warning,
                        e.event_reason(),
                        &event,
                    );
                    applied.failed.push(Waiting {
                        container: start.name.clone(),
                        reason: failure.reason,
                        message: Some(failure.message.clone()),
                    });
                    self.backoff.record_failure(&key, failure);
                    if let Some(window) = self.backoff.delay(&key) {
                        applied.come_back_within(window);
                    }
                }
            }
        }
        Ok(applied)
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sandbox: &SandboxRef<'_>,
        volumes: &PodVolumes,
    ) -> Result<(), StartError> {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let cname = || container.name.clone();
        // Pinned now, just before the runtime mounts them: see `pods::subpath`.
        let sub_paths = volumes
            .pin_sub_paths(container)
            .map_err(|source| StartError::SubPath {
                container: cname(),
                source,
            })?;
        let cctx = ContainerContext {
            volumes: Some(volumes),
            sub_paths: Some(&sub_paths),
            node_name: ctx.node_name.clone(),
            pod_ips: sandbox.pod_ips.clone(),
            host_ips: ctx.node_ips.iter().map(ToString::to_string).collect(),
            memory_capacity_bytes: ctx.memory_capacity,
            allocatable: ctx.allocatable,
        };
        let config =
            cri_config::container_config(pod, container, attempt, &cctx).map_err(|source| {
                StartError::Config {
                    container: cname(),
                    source,
                }
            })?;
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        ensure_image(&*ctx.runtime, container, &image).await?;
        info!(pod = %name, container = %container.name, attempt, "starting container");
        let id = ctx
            .runtime
            .create_container(sandbox.id, &config, sandbox.config)
            .await
            .map_err(|source| StartError::Create {
                container: cname(),
                source,
            })?;
        ctx.runtime
            .start_container(&id)
            .await
            .map_err(|source| StartError::Start {
                container: cname(),
                source,
            })?;
        self.learn_main_pid(pod, &container.name, &id).await;
        let pod_ip = if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            Some(
                ctx.node_ips
                    .first()
                    .copied()
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            )
        } else {
            sandbox.pod_ips.first().and_then(|ip| ip.parse().ok())
        };
        if let Err(e) =
            crate::probes::run_post_start(&*ctx.runtime, pod, container, &id, pod_ip, None).await
        {
            warn!(pod = %name, container = %container.name, error = %e, cause = %crate::error::error_chain(&e), "FailedPostStartHook");
            ctx.recorder.record(
                &pod_reference(pod),
                EventType::Warning,
                "FailedPostStartHook",
                &e.to_string(),
            );
            if let Err(e) = ctx
                .runtime
                .stop_container(&id, termination_grace(pod))
                .await
            {
                warn!(pod = %name, container = %container.name, error = %e, "stopping the container after its failed postStart hook failed");
            }
        }
        Ok(())
    }

    /// Removes dead containers of the pod beyond the one per container name that status
    /// needs (see [`dead_attempts`]), and drops them from `observed`.
    async fn remove_dead_attempts(&mut self, pod: &Pod, observed: &mut ObservedPod) {
        let dead: Vec<String> = dead_attempts(observed)
            .into_iter()
            .map(|c| c.id.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for id in dead {
            match self.ctx.runtime.remove_container(&id).await {
                Ok(()) => removed.push(id),
                Err(e) => {
                    debug!(pod = %format_pod(pod), %id, error = %e, "removing a dead container failed");
                }
            }
        }
        debug!(pod = %format_pod(pod), removed = removed.len(), "removed dead containers");
        observed.containers.retain(|c| !removed.contains(&c.id));
        self.ctx.facts.forget(removed.iter().map(String::as_str));
        for id in &removed {
            self.oom_reported.remove(id);
        }
    }

    /// A sync that failed: says why (at warn once per distinct error, then at debug), shows
    /// it in the pod's status and events, and returns when to try again: 2 s, doubling up
    /// to 5 min while the pod keeps failing.
    fn sync_failed(&mut self, pod: &Pod, e: &SyncError) -> Duration {
        let name = format_pod(pod);
        let cause = crate::error::error_chain(e);
        self.sync_failures = self.sync_failures.saturating_add(1);
        let retry_in = sync_retry_delay(e, self.sync_failures);
        let text = format!("{e}: {cause}");
        if self.last_sync_error.as_deref() == Some(text.as_str()) {
            debug!(pod = %name, error = %e, %cause, ?retry_in, "sync failed again");
        } else {
            warn!(pod = %name, error = %e, %cause, ?retry_in, "sync failed; retrying");
            self.last_sync_error = Some(text);
        }
        let message = e.status_message();
        if let Some(reason) = e.event_reason() {
            self.ctx
                .recorder
                .record(&pod_reference(pod), EventType::Warning, reason, &message);
        }
        // The pod still shows (as last observed), with the containers it could not get to
        // waiting for the reason.
        let observed = self.last_observed.clone().unwrap_or_default();
        let mut actions =
            plan::compute_pod_actions(pod, &observed, &self.backoff, Timestamp::now());
        if let Some(reason) = e.waiting_reason() {
            let creating = actions
                .waiting
                .iter_mut()
                .filter(|w| w.reason == WaitingReason::ContainerCreating);
            for w in creating {
                w.reason = reason;
                w.message = Some(message.clone());
            }
        }
        self.publish(pod, &observed, Images::new(), &actions);
        retry_in
    }

    /// Stops every running container of the pod, all at once: each runs its preStop hook,
    /// then gets SIGTERM and whatever remains of the grace period before SIGKILL.
    async fn kill_containers(&self, pod: &Pod, observed: &ObservedPod, grace: Duration) {
        let running = observed
            .containers
            .iter()
            .filter(|c| c.state == plan::ContainerState::Running);
        let stops = running.map(|c| async move {
            if let Err(e) = self.stop_container(pod, observed, c, grace).await {
                warn!(pod = %format_pod(pod), container = %c.name, error = %e, "stopping container failed");
            }
        });
        futures::future::join_all(stops).await;
    }

    /// Stops one container: its preStop hook, then SIGTERM with what remains of `grace`
    /// before SIGKILL. A failed hook is logged; the container is stopped all the same.
    async fn stop_container(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        c: &plan::ObservedContainer,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let rt = &self.ctx.runtime;
        let pod_name = format_pod(pod);
        let container = &c.name;
        let deadline = Instant::now() + grace;
        match pre_stop(pod, container) {
            Some(PreStop::Exec(cmd)) => {
                match tokio::time::timeout(grace, rt.exec_sync(&c.id, &cmd, grace)).await {
                    Ok(Ok(out)) if out.exit_code == 0 => {}
                    Ok(Ok(out)) => {
                        warn!(pod = %pod_name, %container, exit_code = out.exit_code, "preStop hook failed");
                    }
                    Ok(Err(e)) => {
                        warn!(pod = %pod_name, %container, error = %e, "preStop hook failed");
                    }
                    Err(_) => {
                        warn!(pod = %pod_name, %container, "preStop hook did not finish within the grace period");
                    }
                }
            }
            Some(PreStop::Sleep(d)) => tokio::time::sleep(d.min(grace)).await,
            Some(PreStop::Http(action, spec)) => {
                let pod_ip = crate::probes::pod_ip(pod, observed, &self.ctx.node_ips);
                if let Err(e) =
                    crate::probes::run_http_hook(&action, pod, &spec, pod_ip, grace).await
                {
                    warn!(pod = %pod_name, %container, error = %e, cause = %crate::error::error_chain(&e), "preStop hook failed");
                }
            }
            None => {}
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        rt.stop_container(&c.id, remaining).await
    }

    fn publish(&mut self, pod: &Pod, observed: &ObservedPod, images: Images, actions: &PodActions) {
        let mut facts = HashMap::new();
        let mut annotations = BTreeMap::new();
        for c in &observed.containers {
            let kills = self.ctx.facts.ooms(&c.id);
            if kills.is_empty() {
                continue;
            }
            let f = facts::container_facts(c.finished_at, c.exit_code, &kills);
            if let Some(again) = self.report_ooms(pod, c, &kills) {
                self.recheck = Some(self.recheck.map_or(again, |r| r.min(again)));
            }
            annotations.insert(
                format!("bpflet.io/oom-kills.{}", c.name),
                kills.len().to_string(),
            );
            if let Some(last) = kills.last() {
                annotations.insert(
                    format!("bpflet.io/last-oom-kill.{}", c.name),
                    format!("{} {}", last.at, last.describe(&c.name, &self.ctx.kubepods)),
                );
            }
            facts.insert(c.id.clone(), f);
        }
        for c in &observed.containers {
            let r = self.ctx.probes.results(pod_uid(pod), &c.id);
            if r.readiness.is_some() {
                facts
                    .entry(c.id.clone())
                    .or_insert_with(Default::default)
                    .ready_by_probe = r.readiness;
            }
            if let Some(failure) = &r.last_failure {
                annotations.insert(
                    format!("bpflet.io/last-probe-failure.{}", c.name),
                    format!("{} {failure}", failure.at),
                );
            }
        }
        let ctx = StatusContext {
            node_ips: self.ctx.node_ips.clone(),
            previous: self.status.clone(),
            now: Timestamp::now(),
            facts,
            images,
            ..StatusContext::default()
        };
        let status = status::pod_status(pod, observed, &actions.waiting, &ctx);
        let mut published = pod.clone();
        published.status = Some(status.clone());
        if !annotations.is_empty() {
            published
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(annotations);
        }
        self.ctx.statuses.publish(pod_uid(pod), published);
        self.status = Some(status);
    }

    /// Carries out an eviction: an `Evicted` event, every container stopped with the
    /// eviction's grace period, the sandbox stopped, and the status marked `Evicted`.
    async fn evict(&mut self, pod: &Pod, e: Eviction) {
        let name = format_pod(pod);
        self.ctx.recorder.record(
            &pod_reference(pod),
            EventType::Warning,
            e.reason,
            &e.message,
        );
        info!(pod = %name, signal = %e.signal.as_str(), grace = ?e.grace_period, latency = ?e.latency, "evicting pod");
        self.ctx
            .metrics
            .evictions
            .with_label_values(&[e.signal.as_str()])
            .inc();
        let observed = match observe_pod(&*self.ctx.runtime, pod_uid(pod)).await {
            Ok((o, _)) => o,
            Err(err) => {
                warn!(pod = %name, error = %err, "cannot list the pod's containers to evict it");
                self.last_observed.clone().unwrap_or_default()
            }
        };
        self.kill_containers(pod, &observed, e.grace_period).await;
        for sb in observed.sandboxes.iter().filter(|s| s.ready) {
            if let Err(err) = self.ctx.runtime.stop_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %err, "stopping the evicted pod's sandbox failed");
            }
        }
        // Evicted for good (a local storage limit): free its volumes, as upstream tears down
        // a terminated pod's.
        if e.is_terminal()
            && let Err(err) = PodVolumes::teardown(pod_uid(pod), &self.ctx.pods_dir)
        {
            warn!(pod = %name, error = %err, "removing the evicted pod's volumes failed");
        }
        let mut status = self.status.clone().unwrap_or_default();
        crate::status::mark_evicted(&mut status, &e.message, Timestamp::now());
        self.status = Some(status);
        let observed = observe_pod(&*self.ctx.runtime, pod_uid(pod))
            .await
            .map(|(o, _)| o)
            .unwrap_or(observed);
        self.publish(pod, &observed, Images::new(), &PodActions::default());
        self.evicted = Some(e);
    }

    /// Rejects the pod at admission, as upstream's `rejectPod`: a warning event with
    /// `reason` and `message`, and status phase `Failed` with `reason` and `Pod was
    /// rejected: <message>`. A pod that an agent with another configuration admitted may
    /// be running: it is stopped.
    async fn reject(&mut self, pod: &Pod, reason: &str, message: &str) {
        let name = format_pod(pod);
        warn!(pod = %name, reason, message, "pod rejected at admission");
        self.ctx
            .recorder
            .record(&pod_reference(pod), EventType::Warning, reason, message);
        let message = format!("Pod was rejected: {message}");
        match observe_pod(&*self.ctx.runtime, pod_uid(pod)).await {
            Ok((observed, _)) => {
                self.kill_containers(pod, &observed, termination_grace(pod))
                    .await;
                for sb in observed.sandboxes.iter().filter(|s| s.ready) {
                    if let Err(err) = self.ctx.runtime.stop_pod_sandbox(&sb.id).await {
                        warn!(pod = %name, sandbox = %sb.id, error = %err, "stopping the rejected pod's sandbox failed");
                    }
                }
            }
            Err(err) => {
                warn!(pod = %name, error = %err, "cannot list the rejected pod's containers");
            }
        }
        let status = PodStatus {
            phase: Some("Failed".to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            qos_class: Some(crate::model::qos::qos_class(pod).as_str().to_owned()),
            ..PodStatus::default()
        };
        let mut published = pod.clone();
        published.status = Some(status.clone());
        self.ctx.statuses.publish(pod_uid(pod), published);
        self.status = Some(status);
    }

    /// Records one event per OOM kill, once it is clear what the kill did: `OOMKilled` when
    /// it ended the container (its init process died), `ProcessOOMKilled` when another
    /// process died and the container lives on (the kubelet says nothing then). Returns when
    /// to look again for a kill that is not decided yet.
    fn report_ooms(
        &mut self,
        pod: &Pod,
        c: &plan::ObservedContainer,
        kills: &[facts::OomRecord],
    ) -> Option<Duration> {
        let reported = self.oom_reported.entry(c.id.clone()).or_default();
        let running = c.state == plan::ContainerState::Running;
        let now = Timestamp::now();
        while let Some(kill) = kills.get(*reported) {
            let age = Duration::try_from(now.duration_since(kill.at)).unwrap_or_default();
            if running && age < facts::KILL_TO_EXIT {
                return Some(facts::KILL_TO_EXIT - age);
            }
            let ended = !running
                && facts::init_oom_killed(c.finished_at, c.exit_code, std::slice::from_ref(kill));
            let reason = if ended {
                "OOMKilled"
            } else {
                "ProcessOOMKilled"
            };
            let message = kill.describe(&c.name, &self.ctx.kubepods);
            self.ctx
                .recorder
                .record(&pod_reference(pod), EventType::Warning, reason, &message);
            *reported += 1;
        }
        None
    }

    /// The pod is gone from its source: stop it with its grace period, then remove its
    /// sandboxes, cgroup and volumes.
    async fn terminate_pod(&mut self, pod: &Pod) {
        let ctx = Arc::clone(&self.ctx);
        let name = format_pod(pod);
        let uid = pod_uid(pod).to_owned();
        info!(pod = %name, "terminating pod");
        let grace = termination_grace(pod);
        let observed = match observe_pod(&*ctx.runtime, &uid).await {
            Ok((o, _)) => o,
            Err(e) => {
                warn!(pod = %name, error = %e, "cannot list the pod's containers; removing its sandboxes anyway");
                ObservedPod::default()
            }
        };
        self.kill_containers(pod, &observed, grace).await;
        for sb in &observed.sandboxes {
            if let Err(e) = ctx.runtime.stop_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %e, "stopping sandbox failed");
            }
            if let Err(e) = ctx.runtime.remove_pod_sandbox(&sb.id).await {
                warn!(pod = %name, sandbox = %sb.id, error = %e, "removing sandbox failed");
            }
        }
        // A sandbox or container create the termination interrupted may have completed in
        // the runtime after the listing above.
        if let Ok((stray, _)) = observe_pod(&*ctx.runtime, &uid).await {
            for c in &stray.containers {
                if let Err(e) = ctx.runtime.remove_container(&c.id).await {
                    warn!(pod = %name, id = %c.id, error = %e, "removing a container failed");
                }
            }
            for sb in &stray.sandboxes {
                let removed = match ctx.runtime.stop_pod_sandbox(&sb.id).await {
                    Ok(()) => ctx.runtime.remove_pod_sandbox(&sb.id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = removed {
                    warn!(pod = %name, sandbox = %sb.id, error = %e, "removing sandbox failed");
                }
            }
        }
        // Removal waits (briefly) for the kernel to release the cgroups: off the runtime.
        let tree = Arc::clone(&ctx.tree);
        let removal_uid = uid.clone();
        match tokio::task::spawn_blocking(move || tree.remove_pod(&removal_uid)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(pod = %name, error = %e, "removing the pod cgroup failed"),
            Err(e) => warn!(pod = %name, error = %e, "removing the pod cgroup panicked"),
        }
        if let Err(e) = PodVolumes::teardown(&uid, &ctx.pods_dir) {
            warn!(pod = %name, error = %e, "removing the pod's volumes failed");
        }
        if let Err(e) = cri_config::remove_pod_log_dir(&ctx.logs_dir, pod) {
            warn!(pod = %name, error = %e, "removing the pod's logs failed");
        }
        ctx.statuses.remove(&uid);
        ctx.probes.remove_pod(&uid);
        ctx.facts
            .forget(observed.containers.iter().map(|c| c.id.as_str()));
        info!(pod = %name, "pod terminated");
    }
}

/// `observed` with the containers the kernel saw end (and whose exit code it knows) as
/// exited, where the runtime still reports them running; `None` when there are none.
fn with_kernel_ends(observed: &ObservedPod, ends: &[KernelEnd]) -> Option<ObservedPod> {
    let mut out = observed.clone();
    let mut any = false;
    for end in ends {
        let Some(code) = end.exit_code else {
            continue;
        };
        if let Some(c) = out
            .containers
            .iter_mut()
            .find(|c| c.id == end.container && c.state == plan::ContainerState::Running)
        {
            c.state = plan::ContainerState::Exited;
            c.exit_code = Some(code);
            c.finished_at = Some(end.at);
            // What containerd says for an exit it did not attribute to the OOM killer; the
            // kernel's OOM facts turn a 137 into OOMKilled at publish.
            c.reason = Some(if code == 0 { "Completed" } else { "Error" }.to_owned());
            any = true;
        }
    }
    any.then_some(out)
}

/// Whether the runtime no longer reports container (or sandbox) `id` running. An id it
/// does not know has nothing to wait for.
fn runtime_saw_end(observed: &ObservedPod, id: &str) -> bool {
    if let Some(c) = observed.containers.iter().find(|c| c.id == id) {
        return c.state != plan::ContainerState::Running;
    }
    observed
        .sandboxes
        .iter()
        .find(|s| s.id == id)
        .is_none_or(|s| !s.ready)
}

/// The PLEG event: a line per container whose runtime state changed since the last
/// observation (upstream logs `SyncLoop (PLEG)` lines at the same point).
fn log_changes(
    pod: &str,
    before: Option<&ObservedPod>,
    now: &ObservedPod,
    trigger: &str,
    since: Instant,
) {
    for c in &now.containers {
        let prev = before.and_then(|b| b.containers.iter().find(|p| p.id == c.id));
        if prev.is_some_and(|p| p.state == c.state) {
            continue;
        }
        info!(
            pod,
            container = %c.name,
            id = %c.id,
            state = ?c.state,
            exit_code = ?c.exit_code,
            trigger,
            waited = ?since.elapsed(),
            "PLEG: container state changed"
        );
    }
}

fn actions_are_empty(a: &PodActions) -> bool {
    a.kill_pod.is_none()
        && a.create_sandbox.is_none()
        && a.init_containers_to_start
            .iter()
            .all(|s| s.backoff.is_some())
        && a.containers_to_start.iter().all(|s| s.backoff.is_some())
        && a.containers_to_kill.is_empty()
}

/// Checks that the runtime has `image` for `container` before it is created (upstream's
/// `EnsureImageExists`). bpflet does not pull yet: a present image is used whatever the
/// pull policy; a missing one is `ErrImageNeverPull` under `Never` and `ErrImagePull`
/// otherwise.
async fn ensure_image<R: ContainerRuntime>(
    rt: &R,
    container: &Container,
    image: &str,
) -> Result<(), StartError> {
    match rt.image_status(image).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let policy = container.image_pull_policy.as_deref().unwrap_or_default();
            Err(if policy == "Never" {
                StartError::ImageNeverPull {
                    container: container.name.clone(),
                    image: image.to_owned(),
                }
            } else {
                StartError::ImageMissing {
                    container: container.name.clone(),
                    image: image.to_owned(),
                    policy: policy.to_owned(),
                }
            })
        }
        Err(source) => Err(StartError::ImageInspect {
            container: container.name.clone(),
            image: image.to_owned(),
            source,
        }),
    }
}

/// Dead containers of a pod beyond what status needs: for each container name, the latest
/// container stays, and so does the newest exited one (its `lastState`); every other exited
/// or never-started container goes. Upstream's container GC keeps `maxPerPodContainer` = 1
/// dead container per container the same way; without it a failing container would leave
/// one dead container per attempt in the runtime.
fn dead_attempts(observed: &ObservedPod) -> Vec<&plan::ObservedContainer> {
    let mut names: Vec<&str> = observed
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let Some(latest) = observed.latest(name) else {
            continue;
        };
        let mut dead: Vec<&plan::ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.name == name && c.id != latest.id)
            .filter(|c| {
                matches!(
                    c.state,
                    plan::ContainerState::Exited | plan::ContainerState::Created
                )
            })
            .collect();
        // Newest first.
        dead.sort_by_key(|c| std::cmp::Reverse((c.created, c.restart_count)));
        let keep = usize::from(
            latest.state != plan::ContainerState::Exited
                && dead
                    .first()
                    .is_some_and(|c| c.state == plan::ContainerState::Exited),
        );
        out.extend(dead.into_iter().skip(keep));
    }
    out
}

/// The sandbox a container is started in.
struct SandboxRef<'a> {
    id: &'a str,
    config: &'a api::PodSandboxConfig,
    pod_ips: Vec<String>,
}

enum PreStop {
    Exec(Vec<String>),
    Http(
        Box<k8s_openapi::api::core::v1::HTTPGetAction>,
        Box<Container>,
    ),
    Sleep(Duration),
}

/// The container's preStop hook, when it has one bpflet can run here (exec, sleep).
fn pre_stop(pod: &Pod, container: &str) -> Option<PreStop> {
    let spec = pod.spec.as_ref()?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)?;
    let handler = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
    if let Some(exec) = &handler.exec {
        return Some(PreStop::Exec(exec.command.clone().unwrap_or_default()));
    }
    if let Some(http) = &handler.http_get {
        return Some(PreStop::Http(Box::new(http.clone()), Box::new(c.clone())));
    }
    if let Some(sleep) = &handler.sleep {
        return Some(PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        )));
    }
    None
}

/// Warned once that the runtime's pids are not the kernel's.
static MAIN_PID_MISMATCH_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether `pid`, as `proc_root` sees it, is a process in the cgroup of container `id` (or
/// below it), by the Kubernetes cgroup naming the attributor uses.
fn pid_in_container(hierarchy: &Hierarchy, proc_root: &Path, pid: u32, id: &str) -> bool {
    hierarchy
        .cgroup_of_pid(proc_root, pid)
        .ok()
        .and_then(|cgroup| crate::cgroups::naming::parse_pod(&cgroup))
        .and_then(|pod| pod.container_id)
        .is_some_and(|container| container == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::plan::{ContainerState as State, ObservedContainer};

    fn container(id: &str, state: State) -> ObservedContainer {
        ObservedContainer {
            id: id.to_owned(),
            name: format!("c-{id}"),
            state,
            created: Timestamp::UNIX_EPOCH,
            started_at: Some(Timestamp::UNIX_EPOCH),
            finished_at: None,
            exit_code: None,
            reason: None,
            restart_count: 0,
            spec_hash: None,
            liveness: Default::default(),
            startup: Default::default(),
        }
    }

    #[test]
    fn resyncs_land_on_a_shared_grid_at_most_a_step_late() {
        let epoch = tokio::time::Instant::now();
        let period = Duration::from_secs(60);
        let step = Duration::from_secs(10);
        // Workers that went to sleep at different moments resync together.
        let a = resync_deadline(epoch, epoch + Duration::from_millis(1_300), period);
        let b = resync_deadline(epoch, epoch + Duration::from_millis(7_900), period);
        assert_eq!(a, epoch + Duration::from_secs(70));
        assert_eq!(a, b);
        // Never early, never more than one step late.
        for ms in [0, 1, 9_999, 10_000, 10_001, 123_456] {
            let now = epoch + Duration::from_millis(ms);
            let d = resync_deadline(epoch, now, period);
            assert!(
                d >= now + period && d < now + period + step,
                "{ms} ms: {d:?}"
            );
            assert_eq!(d.duration_since(epoch).as_nanos() % step.as_nanos(), 0);
        }
        // On the grid already: no added delay.
        let on = epoch + Duration::from_secs(20);
        assert_eq!(resync_deadline(epoch, on, period), on + period);
    }

    #[test]
    fn failing_syncs_retry_at_doubling_intervals_up_to_five_minutes() {
        let volume = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::InvalidUid {
                uid: "..".to_owned(),
            },
        };
        let secs: Vec<u64> = (1..=10)
            .map(|n| sync_retry_delay(&volume, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(sync_retry_delay(&volume, u32::MAX), SYNC_RETRY_MAX);
        // The runtime's trouble is not the pod's: back soon after the runtime is.
        let runtime = SyncError::Runtime {
            pod: "p".to_owned(),
            source: RuntimeError::Timeout {
                method: crate::runtime::Method::ListContainers,
                socket: PathBuf::from("/s"),
                timeout: Duration::from_secs(2),
            },
        };
        let secs: Vec<u64> = (1..=5)
            .map(|n| sync_retry_delay(&runtime, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 10, 10]);
    }

    #[test]
    fn one_dead_container_per_name_is_kept() {
        let attempt = |id: &str, name: &str, state: State, n: u32| ObservedContainer {
            name: name.to_owned(),
            created: Timestamp::from_second(i64::from(n)).unwrap(),
            restart_count: n,
            ..container(id, state)
        };
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![
                // A crash loop, now running: its newest exit stays for lastState.
                attempt("a0", "a", State::Exited, 0),
                attempt("a1", "a", State::Exited, 1),
                attempt("a2", "a", State::Running, 2),
                // Failed starts: the latest stays, a never-started one goes.
                attempt("b0", "b", State::Exited, 0),
                attempt("b1", "b", State::Created, 1),
                attempt("b2", "b", State::Exited, 2),
                // One attempt, and an unknown one, untouched.
                attempt("c0", "c", State::Exited, 0),
                attempt("d0", "d", State::Unknown, 0),
                attempt("d1", "d", State::Exited, 1),
            ],
        };
        let mut dead: Vec<&str> = dead_attempts(&observed)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        dead.sort_unstable();
        assert_eq!(dead, ["a0", "b0", "b1"]);
    }

    #[test]
    fn start_errors_name_their_reason_and_the_runtimes_message() {
        let runtime = |method| RuntimeError::Call {
            method,
            socket: PathBuf::from("/run/containerd.sock"),
            source: tonic::Status::unknown("exec: \"/no/such/binary\": no such file"),
        };
        let start = StartError::Start {
            container: "bad".to_owned(),
            source: runtime(crate::runtime::Method::StartContainer),
        };
        assert_eq!(start.reason(), WaitingReason::RunContainerError);
        assert_eq!(
            start.status_message(),
            "exec: \"/no/such/binary\": no such file"
        );
        assert_eq!(start.event_reason(), "Failed");
        let never = StartError::ImageNeverPull {
            container: "c".to_owned(),
            image: "x:1".to_owned(),
        };
        assert_eq!(never.reason(), WaitingReason::ErrImageNeverPull);
        assert_eq!(
            never.status_message(),
            "Container image \"x:1\" is not present with pull policy of Never"
        );
        assert_eq!(never.event_reason(), "ErrImageNeverPull");
        let create = StartError::Create {
            container: "c".to_owned(),
            source: RuntimeError::Timeout {
                method: crate::runtime::Method::CreateContainer,
                socket: PathBuf::from("/s"),
                timeout: Duration::from_secs(2),
            },
        };
        let sandbox = SyncError::CreateSandbox {
            pod: "p".to_owned(),
            source: runtime(crate::runtime::Method::RunPodSandbox),
        };
        assert_eq!(
            sandbox.status_message(),
            "exec: \"/no/such/binary\": no such file"
        );
        assert_eq!(sandbox.event_reason(), Some("FailedCreatePodSandBox"));
        assert_eq!(
            sandbox.waiting_reason(),
            Some(WaitingReason::ContainerCreating)
        );
        let volume = SyncError::Volume {
            pod: "p".to_owned(),
            source: crate::pods::volumes::VolumeError::InvalidUid {
                uid: "..".to_owned(),
            },
        };
        assert_eq!(
            volume.status_message(),
            "invalid pod UID \"..\": must be one non-empty path component"
        );
        assert_eq!(volume.event_reason(), Some("FailedMount"));
        assert_eq!(
            volume.waiting_reason(),
            Some(WaitingReason::CreateContainerConfigError)
        );
        assert_eq!(create.reason(), WaitingReason::CreateContainerError);
        assert!(
            create.status_message().contains("no answer within 2s"),
            "{}",
            create.status_message()
        );
    }

    #[test]
    fn tiny_periods_are_not_rounded() {
        let epoch = tokio::time::Instant::now();
        let now = epoch + Duration::from_nanos(7);
        let period = Duration::from_nanos(5);
        assert_eq!(resync_deadline(epoch, now, period), now + period);
    }

    fn end(id: &str, exit_code: Option<i32>) -> KernelEnd {
        KernelEnd {
            container: id.to_owned(),
            exit_code,
            at: Timestamp::from_second(100).unwrap(),
        }
    }

    #[test]
    fn kernel_ends_show_before_the_runtime_reports_them() {
        let observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![
                container("a", State::Running),
                container("b", State::Running),
                container("c", State::Exited),
            ],
        };
        let ended = with_kernel_ends(
            &observed,
            &[
                end("a", Some(137)),
                end("b", None),
                end("c", Some(0)),
                end("x", Some(1)),
            ],
        )
        .expect("a ended");
        let a = &ended.containers[0];
        assert_eq!(a.state, State::Exited);
        assert_eq!(a.exit_code, Some(137));
        assert_eq!(a.reason.as_deref(), Some("Error"));
        assert_eq!(a.finished_at, Some(Timestamp::from_second(100).unwrap()));
        assert_eq!(
            ended.containers[1..],
            observed.containers[1..],
            "no exit code, or the runtime already knows: unchanged"
        );
        assert!(
            with_kernel_ends(&observed, &[end("b", None)]).is_none(),
            "nothing to show"
        );
        let ok = with_kernel_ends(&observed, &[end("b", Some(0))]).unwrap();
        assert_eq!(ok.containers[1].reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn the_runtime_saw_an_end_once_the_container_is_not_running() {
        let mut observed = ObservedPod {
            sandboxes: vec![],
            containers: vec![container("a", State::Running)],
        };
        assert!(!runtime_saw_end(&observed, "a"));
        observed.containers[0].state = State::Exited;
        assert!(runtime_saw_end(&observed, "a"));
        assert!(
            runtime_saw_end(&observed, "gone"),
            "unknown ids end the wait"
        );
    }

    #[test]
    fn a_pid_is_checked_against_the_container_cgroup() {
        let id = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        let other = "4f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        let pod = "/bpflet/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2";
        let proc_root = tempfile::tempdir().expect("tempdir");
        let pid_with = |pid: u32, cgroups: &str| {
            let dir = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("cgroup"), cgroups).expect("write");
            pid
        };
        let v1 = Hierarchy::v1("/sys/fs/cgroup/memory", 4);
        let v2 = Hierarchy::v2("/sys/fs/cgroup");
        let in_container = |h: &Hierarchy, pid, id| pid_in_container(h, proc_root.path(), pid, id);

        let app = pid_with(
            10,
            &format!("12:pids:{pod}/{id}\n4:memory:{pod}/{id}/child\n"),
        );
        assert!(in_container(&v1, app, id));
        assert!(!in_container(&v1, app, other));
        let systemd = pid_with(
            11,
            &format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod8dbc5577_d0e2_4706_8787_57d52c03ddf2.slice/\
                 cri-containerd-{id}.scope\n"
            ),
        );
        assert!(in_container(&v2, systemd, id));
        let pod_itself = pid_with(12, &format!("0::{pod}\n"));
        assert!(!in_container(&v2, pod_itself, id), "the pod's own cgroup");
        assert!(
            !pid_in_container(&v1, Path::new("/proc"), std::process::id(), id),
            "this test is in no container of that id"
        );
        assert!(!in_container(&v1, 13, id), "no such process");
    }
}
