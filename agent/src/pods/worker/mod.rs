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
//!
//! The parts, by concern:
//! - [`context`]: what every worker shares ([`PodContext`], in groups);
//! - `events`: the container and sandbox events, in upstream's words;
//! - `run`: the loop, its wakeups and the periodic resync grid;
//! - `sync`: one pass (observe, plan, apply), a failed sync and its retry, dead attempts;
//! - `kernel`: the kernel-first end (shown before the runtime agrees, acted on after) and
//!   the main pids the kernel needs to report it;
//! - `start`: starting containers, their failures and back-off;
//! - `publish`: the pod's status, OOM events and annotations;
//! - `stop`: stopping containers (preStop, grace), eviction, rejection, termination.

mod context;
mod error;
mod events;
mod kernel;
mod publish;
mod run;
mod start;
mod stop;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::backoff::Backoff;
use super::observe::ObserveCache;
use super::plan::ObservedPod;
use crate::eviction::Eviction;
use crate::pleg::{KernelEnd, Trigger};
use crate::runtime::ContainerRuntime;

#[cfg(test)]
pub use self::context::Clock;
pub use self::context::{
    AdmissionPolicy, NodeInfo, Outputs, PodContext, PodHost, Signals, SyncTiming,
};
pub use self::error::{StartError, SyncError};

/// Messages to a worker. The spec travels on a watch channel (latest wins); pokes coalesce
/// in a `Notify`; termination is a token.
pub struct WorkerHandle {
    pub spec: watch::Sender<Arc<Pod>>,
    /// The pod passed admission (see [`super::admission`]): it counts against `maxPods`.
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

/// Starts a worker for `pod`. `cancel` is the agent's shutdown: the worker then stops
/// without touching the pod (pods outlive the agent).
pub fn spawn<R: ContainerRuntime + 'static>(
    ctx: Arc<PodContext<R>>,
    pod: Arc<Pod>,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    admission: Admission,
) -> WorkerHandle {
    let admitted = admission.is_admitted();
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

/// One pod's worker: its channels and what it remembers between syncs.
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
    /// Syncs that failed in a row (see [`sync::sync_retry_delay`]).
    sync_failures: u32,
    /// The last sync error logged at warn; the same error again is logged at debug.
    last_sync_error: Option<String>,
}
