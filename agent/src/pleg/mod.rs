//! The pod lifecycle event generator: tells pod workers when their pod changed in the
//! runtime.
//!
//! - `generic` mode (upstream's behaviour, and the fallback without BPF): list every sandbox
//!   and container each second and poke the pods whose state changed.
//! - `event` mode: a kernel event about a container (its last process exited, an OOM kill in
//!   its cgroup, its cgroup removed) pokes exactly that pod at once; the worker then relists
//!   that one pod, retrying briefly until the runtime agrees (containerd reports an exit
//!   tens of milliseconds after the kernel). A slow full relist remains as a safety net,
//!   and lost kernel events force a full relist immediately.
//!
//! The relists here are the single writer of "what changed"; pod workers remain the single
//! writer of each pod's status.

pub mod facts;
pub mod router;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use tokio::sync::Notify;

use crate::config::PlegMode;
use crate::pods::labels;
use crate::runtime::{ContainerRuntime, ContainerState, SandboxState};

/// Why a pod worker is asked to look at its pod again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A relist saw the pod's runtime state change.
    Relist,
    /// The kernel saw a container (or sandbox) of the pod end: the runtime may not know
    /// yet, so the worker relists until the runtime no longer reports it running.
    Kernel(KernelEnd),
}

/// A container's end as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEnd {
    /// Container (or sandbox) id.
    pub container: String,
    /// The exit code as runtimes report it (`128 + signal` for a kill), when the kernel
    /// said how its main process ended; `None` for a cgroup removal.
    pub exit_code: Option<i32>,
    pub at: jiff::Timestamp,
}

/// A request for one pod's worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPoke {
    pub uid: String,
    pub trigger: Trigger,
    /// When the trigger happened (for latency metrics).
    pub at: Instant,
}

/// Relist bookkeeping shared with health checks.
#[derive(Debug)]
pub struct PlegHealth {
    pub mode: PlegMode,
    last_relist: Mutex<Option<Instant>>,
    started: Instant,
    threshold: Duration,
}

impl PlegHealth {
    pub fn new(mode: PlegMode, threshold: Duration) -> Self {
        Self {
            mode,
            last_relist: Mutex::new(None),
            started: Instant::now(),
            threshold,
        }
    }

    fn relisted(&self) {
        *self
            .last_relist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Time since the last completed relist (since start when none completed yet).
    pub fn since_last_relist(&self) -> Duration {
        let last = *self
            .last_relist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.unwrap_or(self.started).elapsed()
    }

    /// Upstream's rule: unhealthy when no relist completed within the threshold (3m).
    pub fn check(&self) -> Result<(), String> {
        let since = self.since_last_relist();
        if since > self.threshold {
            Err(format!(
                "pleg ({:?} mode) was last seen active {:.0?} ago; threshold is {:?}",
                self.mode, since, self.threshold
            ))
        } else {
            Ok(())
        }
    }
}

/// Per-pod runtime state as a relist sees it: sandbox and container states by id.
type PodSnapshot = BTreeMap<String, u8>;

pub struct Pleg<R> {
    runtime: Arc<R>,
    /// Generic: the relist period (1s). Event: the safety relist period.
    relist_period: Duration,
    health: Arc<PlegHealth>,
    /// Notified when kernel events were lost: relist everything now.
    relist_all: Arc<Notify>,
    metrics: Option<crate::metrics::Metrics>,
}

/// Upstream's generic relist period.
pub const GENERIC_RELIST_PERIOD: Duration = Duration::from_secs(1);

impl<R: ContainerRuntime + 'static> Pleg<R> {
    /// In event mode the kernel router pokes pods directly and notifies `relist_all` when
    /// kernel events were lost.
    pub fn new(
        runtime: Arc<R>,
        mode: PlegMode,
        safety_relist_period: Duration,
        health: Arc<PlegHealth>,
        relist_all: Arc<Notify>,
    ) -> Self {
        let relist_period = match mode {
            PlegMode::Generic => GENERIC_RELIST_PERIOD,
            PlegMode::Event => safety_relist_period,
        };
        Self {
            runtime,
            relist_period,
            health,
            relist_all,
            metrics: None,
        }
    }

    /// Records relist durations and intervals under the kubelet's metric names.
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Relists every period, and at once when asked to.
    pub async fn run(self, pokes: mpsc::Sender<PodPoke>, cancel: CancellationToken) {
        let mut last: HashMap<String, PodSnapshot> = HashMap::new();
        let mut previous_start: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.relist_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                () = self.relist_all.notified() => {}
            }
            let start = Instant::now();
            if let (Some(m), Some(prev)) = (&self.metrics, previous_start) {
                m.pleg_relist_interval
                    .observe(start.duration_since(prev).as_secs_f64());
            }
            previous_start = Some(start);
            self.relist(&mut last, &pokes).await;
            if let Some(m) = &self.metrics {
                m.pleg_relist_duration
                    .observe(start.elapsed().as_secs_f64());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                m.pleg_last_seen.set(now.as_secs_f64());
            }
        }
    }

    async fn relist(&self, last: &mut HashMap<String, PodSnapshot>, pokes: &mpsc::Sender<PodPoke>) {
        let started = Instant::now();
        let current = match snapshot(&*self.runtime).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "relist failed");
                return;
            }
        };
        let mut changed: Vec<&String> = current
            .iter()
            .filter(|(uid, snap)| last.get(*uid) != Some(*snap))
            .map(|(uid, _)| uid)
            .collect();
        changed.extend(last.keys().filter(|uid| !current.contains_key(*uid)));
        for uid in changed {
            let _ = pokes
                .send(PodPoke {
                    uid: uid.clone(),
                    trigger: Trigger::Relist,
                    at: started,
                })
                .await;
        }
        *last = current;
        self.health.relisted();
        debug!(elapsed = ?started.elapsed(), pods = last.len(), "relisted");
    }
}

/// Whether a cgroup has no process left (a missing cgroup counts as empty).
pub(crate) fn cgroup_empty(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.procs")).map_or(true, |procs| procs.trim().is_empty())
}

fn state_code(s: ContainerState) -> u8 {
    match s {
        ContainerState::Created => 0,
        ContainerState::Running => 1,
        ContainerState::Exited => 2,
        ContainerState::Unknown => 3,
    }
}

/// One ListPodSandbox and one ListContainers call: every pod's sandbox and container states.
async fn snapshot<R: ContainerRuntime>(
    rt: &R,
) -> crate::runtime::Result<HashMap<String, PodSnapshot>> {
    let mut pods: HashMap<String, PodSnapshot> = HashMap::new();
    for sb in rt.list_pod_sandboxes(None).await? {
        if let Some(uid) = labels::pod_uid_from_labels(&sb.labels) {
            let ready = u8::from(sb.state == SandboxState::Ready);
            pods.entry(uid.to_owned())
                .or_default()
                .insert(format!("sandbox/{}", sb.id), 10 + ready);
        }
    }
    for c in rt.list_containers(None).await? {
        if let Some(uid) = labels::pod_uid_from_labels(&c.labels) {
            pods.entry(uid.to_owned())
                .or_default()
                .insert(c.id, state_code(c.state));
        }
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_threshold() {
        let h = PlegHealth::new(PlegMode::Event, Duration::from_secs(180));
        assert!(h.check().is_ok(), "fresh PLEG is healthy");
        let stale = PlegHealth {
            mode: PlegMode::Generic,
            last_relist: Mutex::new(Some(
                Instant::now()
                    .checked_sub(Duration::from_secs(200))
                    .unwrap(),
            )),
            started: Instant::now(),
            threshold: Duration::from_secs(180),
        };
        let err = stale.check().unwrap_err();
        assert!(err.contains("threshold"), "{err}");
        stale.relisted();
        assert!(stale.check().is_ok());
    }

    #[test]
    fn empty_cgroup_detection() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            cgroup_empty(&dir.path().join("gone")),
            "a removed cgroup is empty"
        );
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        assert!(cgroup_empty(dir.path()));
        std::fs::write(dir.path().join("cgroup.procs"), "42\n").unwrap();
        assert!(!cgroup_empty(dir.path()));
    }
}
