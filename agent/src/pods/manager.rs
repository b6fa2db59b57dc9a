//! The pod manager: keeps one worker per desired pod. Source snapshots add, update and
//! remove pods; PLEG pokes reach the worker of the pod they name; runtime pods of this
//! agent (carrying its mark, see [`super::labels::AgentMark`]) that no source wants (a
//! manifest removed while the agent was down) are torn down once every configured source
//! has reported.
//!
//! A source that cannot be read sends nothing, so its pods stay as they are. Two sources
//! that define the same UID or namespace/name conflict: the pod already running keeps it,
//! the other source's manifest is refused (logged with both origins) until the first lets
//! go of it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::admission;
use super::manifest::{ManifestError, StaticPod};
use super::observe::{runtime_pod_uids, unmarked_sandboxes_of};
use super::source::{PodUpdate, SourceKind};
use super::worker::{self, PodContext, WorkerHandle};
use crate::eviction::Eviction;
use crate::model::{format_pod, pod_uid};
use crate::pleg::{PodPoke, Trigger};
use crate::runtime::ContainerRuntime;

/// How often the manager's loop turns when nothing else wakes it: it then forgets the
/// workers that have finished (upstream's housekeeping period).
pub const HOUSEKEEPING_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

pub struct PodManager<R> {
    ctx: Arc<PodContext<R>>,
    workers: HashMap<String, WorkerHandle>,
    /// Pods each source wants, by uid.
    desired: HashMap<SourceKind, HashSet<String>>,
    /// The pods each source sent last, conflicts included.
    latest: HashMap<SourceKind, Vec<StaticPod>>,
    /// The cross-source conflicts logged, to log each once.
    conflicts: HashSet<String>,
    /// Sources that must report once before orphans are cleaned up.
    expected_sources: HashSet<SourceKind>,
    orphans_checked: bool,
    /// The UIDs of the pods the sources want, published once every source reported (the
    /// container GC's "pod gone").
    wanted: Option<watch::Sender<Option<HashSet<String>>>>,
    /// Stamped at every iteration of [`Self::run`]'s loop (`/healthz/syncloop`).
    sync_loop: Option<crate::health::SyncLoopMonitor>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl<R: ContainerRuntime + 'static> PodManager<R> {
    pub fn new(
        ctx: Arc<PodContext<R>>,
        expected_sources: HashSet<SourceKind>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            ctx,
            workers: HashMap::new(),
            desired: HashMap::new(),
            latest: HashMap::new(),
            conflicts: HashSet::new(),
            expected_sources,
            orphans_checked: false,
            wanted: None,
            sync_loop: None,
            tracker: TaskTracker::new(),
            cancel,
        }
    }

    /// Publishes the wanted pods' UIDs on `tx` (`None` until every source reported once).
    #[must_use]
    pub fn with_wanted_pods(mut self, tx: watch::Sender<Option<HashSet<String>>>) -> Self {
        self.wanted = Some(tx);
        self
    }

    fn publish_wanted(&self) {
        if let (Some(tx), true) = (&self.wanted, self.orphans_checked) {
            let uids: HashSet<String> = self.desired.values().flatten().cloned().collect();
            tx.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&uids);
                if changed {
                    *current = Some(uids);
                }
                changed
            });
        }
    }

    /// Stamps `monitor` at every iteration of the loop, which turns at least every
    /// [`HOUSEKEEPING_PERIOD`] (upstream's housekeeping tick) while it is not stuck.
    #[must_use]
    pub fn with_sync_loop_monitor(mut self, monitor: crate::health::SyncLoopMonitor) -> Self {
        self.sync_loop = Some(monitor);
        self
    }

    /// Runs until `cancel`; then waits for the workers to stop (pods keep running).
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<PodUpdate>,
        mut pokes: mpsc::Receiver<PodPoke>,
        mut evictions: mpsc::Receiver<Eviction>,
    ) {
        if self.expected_sources.is_empty() {
            self.cleanup_orphans().await;
            self.publish_wanted();
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(monitor) = &self.sync_loop {
                monitor.enter();
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                _ = housekeeping.tick() => self.reap_finished(),
                update = updates.recv() => match update {
                    Some(update) => self.apply_update(update).await,
                    None => break,
                },
                Some(poke) = pokes.recv() => self.poke(&poke),
                Some(eviction) = evictions.recv() => match self.workers.get(&eviction.pod_uid) {
                    Some(w) => w.evict(eviction),
                    None => warn!(pod = %eviction.pod_name, "eviction of a pod bpflet does not run"),
                },
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn poke(&self, poke: &PodPoke) {
        if let Some(w) = self.workers.get(&poke.uid) {
            w.poke(poke.trigger.clone());
        }
    }

    async fn apply_update(&mut self, update: PodUpdate) {
        let PodUpdate::Snapshot {
            source,
            pods,
            errors,
        } = update;
        for e in &errors {
            warn!(source = ?source, error = %e.full_text(), "pod manifest rejected");
        }
        self.latest.insert(source, pods);
        let (accepted, conflicts) = self.resolve();
        let conflicts: HashSet<String> = conflicts.iter().map(ManifestError::full_text).collect();
        for text in conflicts.difference(&self.conflicts) {
            warn!(error = %text, "pod manifest rejected");
        }
        self.conflicts = conflicts;
        // A pod one source let go of may pass to another: only what no source wants goes.
        let before: HashSet<String> = self.desired.values().flatten().cloned().collect();
        self.desired = accepted
            .iter()
            .map(|(source, pods)| (*source, pods.iter().map(|p| p.uid.clone()).collect()))
            .collect();
        let after: HashSet<&String> = self.desired.values().flatten().collect();
        let gone: Vec<String> = before
            .iter()
            .filter(|uid| !after.contains(uid))
            .cloned()
            .collect();
        for uid in &gone {
            self.terminate(uid);
        }
        for sp in accepted.into_iter().flat_map(|(_, pods)| pods) {
            if sp.pod.metadata.deletion_timestamp.is_some() {
                self.delete_gracefully(&Arc::new(sp.pod));
            } else {
                self.upsert(Arc::new(sp.pod));
            }
        }
        self.update_qos_shares();
        self.expected_sources.remove(&source);
        if self.expected_sources.is_empty() && !self.orphans_checked {
            self.cleanup_orphans().await;
        }
        self.publish_wanted();
        self.reap_finished();
    }

    /// The pods of every source, with cross-source conflicts taken out: a pod whose UID or
    /// namespace/name another source's pod holds is refused. Pods some source already runs
    /// claim first, then the rest in source order.
    fn resolve(&self) -> (Vec<(SourceKind, Vec<StaticPod>)>, Vec<ManifestError>) {
        let mut sources: Vec<SourceKind> = self.latest.keys().copied().collect();
        sources.sort();
        let held = |source: SourceKind, sp: &StaticPod| {
            self.desired
                .get(&source)
                .is_some_and(|uids| uids.contains(&sp.uid))
        };
        let mut all: Vec<(SourceKind, &StaticPod)> = sources
            .iter()
            .flat_map(|s| self.latest[s].iter().map(move |sp| (*s, sp)))
            .collect();
        all.sort_by_key(|(s, sp)| !held(*s, sp));
        let mut by_uid: HashMap<&str, (SourceKind, &StaticPod)> = HashMap::new();
        let mut by_name: HashMap<(&str, &str), (SourceKind, &StaticPod)> = HashMap::new();
        let mut conflicts = Vec::new();
        let mut accepted: HashMap<SourceKind, HashSet<&str>> = HashMap::new();
        for (source, sp) in all {
            let name = (
                sp.pod.metadata.namespace.as_deref().unwrap_or_default(),
                sp.pod.metadata.name.as_deref().unwrap_or_default(),
            );
            match (by_uid.get(sp.uid.as_str()), by_name.get(&name)) {
                (Some((other, first)), _) if *other != source => {
                    conflicts.push(ManifestError::DuplicateUid {
                        origin: sp.origin.clone(),
                        uid: sp.uid.clone(),
                        other: first.origin.clone(),
                    });
                }
                (_, Some((other, first))) if *other != source => {
                    conflicts.push(ManifestError::Duplicate {
                        origin: sp.origin.clone(),
                        namespace: name.0.to_owned(),
                        name: name.1.to_owned(),
                        other: first.origin.clone(),
                    });
                }
                _ => {
                    by_uid.insert(&sp.uid, (source, sp));
                    by_name.insert(name, (source, sp));
                    accepted.entry(source).or_default().insert(&sp.uid);
                }
            }
        }
        let accepted = sources
            .iter()
            .map(|s| {
                let uids = accepted.get(s);
                let pods = self.latest[s]
                    .iter()
                    .filter(|sp| uids.is_some_and(|u| u.contains(sp.uid.as_str())))
                    .cloned()
                    .collect();
                (*s, pods)
            })
            .collect();
        (accepted, conflicts)
    }

    fn upsert(&mut self, pod: Arc<Pod>) {
        let uid = pod_uid(&pod).to_owned();
        match self.workers.get(&uid) {
            Some(w) if !w.terminate.is_cancelled() => {
                if **w.spec.borrow() != *pod {
                    let _ = w.spec.send(pod);
                }
            }
            _ => {
                info!(pod = %format_pod(&pod), "new pod");
                let admitted: Vec<Arc<Pod>> = self
                    .workers
                    .values()
                    .filter(|w| w.admitted && !w.terminate.is_cancelled())
                    .map(|w| Arc::clone(&w.spec.borrow()))
                    .collect();
                let node = self.ctx.admission_node();
                let admission =
                    admission::first_sight(&pod, &self.ctx.admission_state(&node, &admitted));
                let handle = worker::spawn(
                    Arc::clone(&self.ctx),
                    pod,
                    self.cancel.clone(),
                    &self.tracker,
                    admission,
                );
                self.workers.insert(uid, handle);
            }
        }
    }

    fn terminate(&mut self, uid: &str) {
        if let Some(w) = self.workers.get(uid) {
            info!(pod = %format_pod(&w.spec.borrow()), "pod removed from its source");
            w.terminate.cancel();
            w.poke(Trigger::Relist);
        }
    }

    /// Graceful deletion in the API server: the pod stops with the deletion's grace (its
    /// spec, sent to the worker first, carries `deletionGracePeriodSeconds`); once nothing
    /// runs, the worker unpublishes it and the API status sink deletes the object for good.
    fn delete_gracefully(&mut self, pod: &Arc<Pod>) {
        let uid = pod_uid(pod).to_owned();
        if !self.workers.contains_key(&uid) {
            // Deleted while bpflet was down, or before its worker started.
            self.upsert(Arc::clone(pod));
        }
        let Some(w) = self.workers.get(&uid) else {
            return;
        };
        if w.terminate.is_cancelled() {
            return;
        }
        if **w.spec.borrow() != **pod {
            let _ = w.spec.send(Arc::clone(pod));
        }
        info!(pod = %format_pod(pod), "pod deleted in the API server");
        w.terminate.cancel();
        w.poke(Trigger::Relist);
    }

    /// The burstable QoS cgroup's cpu.shares follow the sum of burstable pods' requests.
    fn update_qos_shares(&self) {
        let pods: Vec<Arc<Pod>> = self
            .workers
            .values()
            .filter(|w| w.admitted && !w.terminate.is_cancelled())
            .map(|w| Arc::clone(&w.spec.borrow()))
            .collect();
        if let Err(e) = self.ctx.tree().update_qos_shares(pods.iter().map(|p| &**p)) {
            warn!(error = %e, "cannot update the QoS cgroups' cpu shares");
        }
    }

    /// Forgets workers that finished terminating.
    fn reap_finished(&mut self) {
        self.workers.retain(|_, w| !w.done.is_finished());
    }

    /// Warns about running sandboxes of wanted pods that lack this agent's mark: made by a
    /// bpflet older than the mark (upgrade: stop them, `crictl stopp <id>`, so that only
    /// this agent's copy runs) or by another client of the runtime. Left as they are.
    async fn warn_unmarked(&self) {
        let wanted: HashSet<&str> = self.workers.keys().map(String::as_str).collect();
        if wanted.is_empty() {
            return;
        }
        let sandboxes = match self.ctx.runtime().list_pod_sandboxes(None).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot list the runtime's sandboxes");
                return;
            }
        };
        for (uid, id) in unmarked_sandboxes_of(&sandboxes, self.ctx.mark(), &wanted) {
            warn!(
                uid,
                sandbox = id,
                mark = super::labels::AGENT_LABEL,
                "a running sandbox of a pod this agent runs has no mark of this agent: not adopted (an older bpflet's? stop it with `crictl stopp {id}`)"
            );
        }
    }

    /// Tears down runtime pods that no source wants: a worker with a minimal pod runs the
    /// normal termination path (grace period, sandbox and cgroup removal). Only sandboxes
    /// carrying this agent's mark are candidates: another client's pods in a shared runtime
    /// (an upstream kubelet's, crictl's, another bpflet's) are never touched.
    async fn cleanup_orphans(&mut self) {
        self.orphans_checked = true;
        let uids = match runtime_pod_uids(self.ctx.runtime(), self.ctx.mark()).await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "cannot list runtime pods; orphans are not cleaned up");
                return;
            }
        };
        self.warn_unmarked().await;
        for uid in uids {
            if self.workers.contains_key(&uid) {
                continue;
            }
            info!(
                uid,
                "pod in the runtime that no source wants: terminating it"
            );
            let mut pod = Pod::default();
            pod.metadata.uid = Some(uid.clone());
            pod.metadata.name = Some(format!("orphan-{uid}"));
            // Admitted: an orphan is only torn down.
            let handle = worker::spawn(
                Arc::clone(&self.ctx),
                Arc::new(pod),
                self.cancel.clone(),
                &self.tracker,
                admission::Admission::Admitted,
            );
            handle.terminate.cancel();
            handle.poke(Trigger::Relist);
            self.workers.insert(uid, handle);
        }
    }
}
