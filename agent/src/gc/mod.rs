//! Container garbage collection (upstream's `containerGC`), once a minute, and once more as
//! soon as every pod source has reported.
//!
//! What goes, decided by [`select`] (pure, unit-tested) from one listing of this agent's
//! containers and sandboxes (those carrying its mark, [`AgentMark`]: another client of a
//! shared runtime, such as an upstream kubelet, keeps its dead containers) and of the pod
//! log directories:
//!
//! - Dead containers (exited, created at least `min_age` ago), grouped by pod UID and
//!   container name: of a pod no source wants, all of them (created ones too); of a wanted
//!   pod, all but the newest `max_per_pod_container`, and never the newest container of
//!   its name when that one is dead (the pod's restart count, back-off and `previous` logs
//!   read it). Above `max_containers` dead containers in all, each group is cut to
//!   `max_containers / groups` (at least 1), then the oldest go.
//! - Sandboxes that are not ready and hold no container: of a pod no source wants, all;
//!   of a wanted pod, all but its newest sandbox.
//! - Pod log directories (`<namespace>_<name>_<uid>`) of pods no source wants and of which
//!   the runtime holds nothing any more.
//!
//! Nothing that needs "no source wants it" is decided before every source has reported
//! once (the pod manager publishes the wanted pods from then on). Containers and sandboxes
//! without bpflet's pod labels or its mark are never touched. Removal goes through the
//! runtime (with its request timeout); a failed removal is logged with the id and met
//! again the next pass. The pod worker also removes its own pod's surplus dead attempts right after a
//! sync; this pass catches what it could not (a failed removal, an agent restart, a pod
//! removed while the agent was down).
//!
//! Upstream exposes the three limits only as deprecated flags
//! (`--maximum-dead-containers-per-container`, `--maximum-dead-containers`,
//! `--minimum-container-ttl-duration`); bpflet runs with their defaults ([`GcPolicy`]) and
//! does not accept the flags.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::pods::labels::{AgentMark, container_name_from_labels, pod_uid_from_labels};
use crate::runtime::{Container, ContainerRuntime, ContainerState, PodSandbox, SandboxState, api};

/// Upstream's `ContainerGCPeriod`.
pub const GC_PERIOD: Duration = Duration::from_secs(60);

/// The limits (upstream's `GCPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// A dead container younger than this stays (`MinAge`, default 0).
    pub min_age: Duration,
    /// Dead containers kept per pod and container name (`MaxPerPodContainer`, default 1);
    /// `None`: no limit.
    pub max_per_pod_container: Option<usize>,
    /// Dead containers kept on the node (`MaxContainers`, default -1); `None`: no limit.
    pub max_containers: Option<usize>,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            min_age: Duration::ZERO,
            max_per_pod_container: Some(1),
            max_containers: None,
        }
    }
}

/// What one pass removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub containers: Vec<String>,
    pub sandboxes: Vec<String>,
    /// Names of pod log directories.
    pub log_dirs: Vec<String>,
}

/// The pod UID of a pod log directory's name `<namespace>_<name>_<uid>` (namespaces and
/// names cannot hold `_`); `None` for anything else (the volume directories `<uid>` that
/// share the directory included).
#[must_use]
pub fn log_dir_uid(name: &str) -> Option<&str> {
    let mut parts = name.split('_');
    let (Some(ns), Some(pod), Some(uid), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (!ns.is_empty() && !pod.is_empty() && !uid.is_empty()).then_some(uid)
}

/// What goes (see the module's documentation). `wanted`: the UIDs of the pods the sources
/// want, `None` before every source reported (then only the per-pod limits apply).
#[must_use]
pub fn select(
    containers: &[Container],
    sandboxes: &[PodSandbox],
    log_dirs: &[String],
    wanted: Option<&HashSet<String>>,
    policy: &GcPolicy,
    now: Timestamp,
) -> Selection {
    let gone = |uid: &str| wanted.is_some_and(|w| !w.contains(uid));
    let old_enough = |c: &Container| {
        let age = now.duration_since(c.created_at);
        age >= jiff::SignedDuration::try_from(policy.min_age).unwrap_or(jiff::SignedDuration::MAX)
    };
    // (pod uid, container name) -> every container of that name, newest first.
    let mut groups: BTreeMap<(&str, &str), Vec<&Container>> = BTreeMap::new();
    for c in containers {
        let Some(uid) = pod_uid_from_labels(&c.labels) else {
            continue;
        };
        let name = container_name_from_labels(&c.labels).unwrap_or(&c.metadata.name);
        groups.entry((uid, name)).or_default().push(c);
    }
    let mut remove: Vec<&Container> = Vec::new();
    // Per group: the dead containers that may go, newest first, after the per-pod limit.
    let mut kept: Vec<Vec<&Container>> = Vec::new();
    for ((uid, _), group) in &mut groups {
        group.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.metadata.attempt)));
        if gone(uid) {
            remove.extend(group.iter().filter(|c| {
                matches!(c.state, ContainerState::Exited | ContainerState::Created) && old_enough(c)
            }));
            continue;
        }
        // The newest container of the name, when dead, is what the pod's status and
        // restart read: it is never a candidate.
        let candidates: Vec<&Container> = group
            .iter()
            .enumerate()
            .filter(|(i, c)| *i > 0 && c.state == ContainerState::Exited && old_enough(c))
            .map(|(_, c)| *c)
            .collect();
        let protected = usize::from(group[0].state == ContainerState::Exited);
        let allowed = policy
            .max_per_pod_container
            .map_or(usize::MAX, |n| n.saturating_sub(protected));
        let (keep, extra) = candidates.split_at(candidates.len().min(allowed));
        remove.extend(extra);
        kept.push(keep.to_vec());
    }
    if let Some(max) = policy.max_containers {
        let total = |kept: &[Vec<&Container>]| kept.iter().map(Vec::len).sum::<usize>();
        if total(&kept) > max && !kept.is_empty() {
            let per_group = (max / kept.len()).max(1);
            for group in &mut kept {
                if group.len() > per_group {
                    remove.extend(group.drain(per_group..));
                }
            }
            let mut rest: Vec<&Container> = kept.into_iter().flatten().collect();
            rest.sort_by_key(|c| (c.created_at, c.metadata.attempt));
            let over = rest.len().saturating_sub(max);
            remove.extend(rest.into_iter().take(over));
        }
    }
    let removed: HashSet<&str> = remove.iter().map(|c| c.id.as_str()).collect();
    let mut out = Selection {
        containers: remove.iter().map(|c| c.id.clone()).collect(),
        ..Selection::default()
    };

    // Sandboxes that still hold a container after this pass.
    let occupied: HashSet<&str> = containers
        .iter()
        .filter(|c| !removed.contains(c.id.as_str()))
        .map(|c| c.pod_sandbox_id.as_str())
        .collect();
    let mut by_pod: BTreeMap<&str, Vec<&PodSandbox>> = BTreeMap::new();
    for sb in sandboxes {
        if sb.metadata.uid.is_empty() || pod_uid_from_labels(&sb.labels).is_none() {
            continue;
        }
        by_pod.entry(sb.metadata.uid.as_str()).or_default().push(sb);
    }
    let mut removed_sandboxes = HashSet::new();
    for (uid, pod_sandboxes) in &mut by_pod {
        pod_sandboxes.sort_by_key(|sb| std::cmp::Reverse((sb.created_at, sb.metadata.attempt)));
        let skip = usize::from(!gone(uid));
        for sb in pod_sandboxes.iter().skip(skip) {
            if sb.state == SandboxState::NotReady && !occupied.contains(sb.id.as_str()) {
                out.sandboxes.push(sb.id.clone());
                removed_sandboxes.insert(sb.id.as_str());
            }
        }
    }

    // Log directories of pods gone, once the runtime holds nothing of them.
    let held: HashSet<&str> = containers
        .iter()
        .filter(|c| !removed.contains(c.id.as_str()))
        .filter_map(|c| pod_uid_from_labels(&c.labels))
        .chain(
            sandboxes
                .iter()
                .filter(|sb| !removed_sandboxes.contains(sb.id.as_str()))
                .map(|sb| sb.metadata.uid.as_str()),
        )
        .collect();
    out.log_dirs = log_dirs
        .iter()
        .filter(|d| log_dir_uid(d).is_some_and(|uid| gone(uid) && !held.contains(uid)))
        .cloned()
        .collect();
    out
}

/// `bpflet_gc_removed_total{object}` and `bpflet_gc_failures_total{object}` (`container`,
/// `sandbox`, `log_dir`); upstream exports no container GC metrics.
#[derive(Clone, Debug)]
pub struct GcMetrics {
    pub removed: IntCounterVec,
    pub failures: IntCounterVec,
}

impl GcMetrics {
    /// New counters, registered in `registry`.
    ///
    /// # Errors
    /// A metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let removed = IntCounterVec::new(
            Opts::new(
                "bpflet_gc_removed_total",
                "Dead containers, sandboxes and pod log directories removed by garbage collection.",
            ),
            &["object"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "bpflet_gc_failures_total",
                "Garbage collection removals that failed (retried the next pass).",
            ),
            &["object"],
        )?;
        registry.register(Box::new(removed.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self { removed, failures })
    }
}

/// How one pass went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub containers: usize,
    pub sandboxes: usize,
    pub log_dirs: usize,
    pub failures: usize,
}

/// Runs [`select`] every [`GC_PERIOD`] and removes what it selects.
pub struct ContainerGc<R> {
    runtime: Arc<R>,
    /// Only sandboxes and containers carrying it are listed, so only they can go.
    mark: AgentMark,
    logs_dir: PathBuf,
    policy: GcPolicy,
    wanted: watch::Receiver<Option<HashSet<String>>>,
    metrics: Option<GcMetrics>,
}

impl<R: ContainerRuntime + 'static> ContainerGc<R> {
    /// `wanted`: the pod manager's wanted pods (`None` until every source reported).
    /// `mark`: this agent's; what other clients of the runtime made is never listed.
    pub fn new(
        runtime: Arc<R>,
        mark: AgentMark,
        logs_dir: PathBuf,
        policy: GcPolicy,
        wanted: watch::Receiver<Option<HashSet<String>>>,
    ) -> Self {
        Self {
            runtime,
            mark,
            logs_dir,
            policy,
            wanted,
            metrics: None,
        }
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: GcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A pass every `period` until `cancel`: the first at once, and one more as soon as
    /// the wanted pods are first known (every source reported), so that what the sources
    /// let go of while the agent was down goes without waiting a period.
    pub async fn run(mut self, period: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known = self.wanted.borrow().is_some();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = self.wanted.changed(), if !known => {
                    if changed.is_err() || self.wanted.borrow_and_update().is_none() {
                        // The manager is gone (stopping) or still waiting: the ticks go on.
                        known = changed.is_err();
                        continue;
                    }
                }
            }
            known |= self.wanted.borrow().is_some();
            let report = self.collect().await;
            debug!(
                containers = report.containers,
                sandboxes = report.sandboxes,
                log_dirs = report.log_dirs,
                failures = report.failures,
                pods_known = known,
                "container garbage collection"
            );
        }
    }

    /// One pass.
    pub async fn collect(&self) -> PassReport {
        let mut report = PassReport::default();
        let containers = self.runtime.list_containers(Some(api::ContainerFilter {
            label_selector: self.mark.selector(None),
            ..api::ContainerFilter::default()
        }));
        let containers = match containers.await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "container GC: cannot list containers");
                return report;
            }
        };
        let sandboxes = self.runtime.list_pod_sandboxes(Some(api::PodSandboxFilter {
            label_selector: self.mark.selector(None),
            ..api::PodSandboxFilter::default()
        }));
        let sandboxes = match sandboxes.await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "container GC: cannot list sandboxes");
                return report;
            }
        };
        let log_dirs = list_dir(&self.logs_dir);
        // Read after the listings: a pod seen there was wanted, if at all, by now.
        let wanted = self.wanted.borrow().clone();
        let selection = select(
            &containers,
            &sandboxes,
            &log_dirs,
            wanted.as_ref(),
            &self.policy,
            Timestamp::now(),
        );
        let mut failed_containers = HashSet::new();
        for id in &selection.containers {
            match self.runtime.remove_container(id).await {
                Ok(()) => {
                    report.containers += 1;
                    self.count("container", true);
                }
                Err(e) => {
                    warn!(container = %id, error = %e, "container GC: removing a dead container failed");
                    failed_containers.insert(id.as_str());
                    report.failures += 1;
                    self.count("container", false);
                }
            }
        }
        // A sandbox whose container could not be removed still holds it: next pass.
        let still_held: BTreeSet<&str> = containers
            .iter()
            .filter(|c| failed_containers.contains(c.id.as_str()))
            .map(|c| c.pod_sandbox_id.as_str())
            .collect();
        // A pod whose container or sandbox could not be removed keeps its logs: next pass.
        let mut failed_pods: HashSet<&str> = containers
            .iter()
            .filter(|c| failed_containers.contains(c.id.as_str()))
            .filter_map(|c| pod_uid_from_labels(&c.labels))
            .collect();
        for id in &selection.sandboxes {
            if still_held.contains(id.as_str()) {
                continue;
            }
            match self.runtime.remove_pod_sandbox(id).await {
                Ok(()) => {
                    report.sandboxes += 1;
                    self.count("sandbox", true);
                }
                Err(e) => {
                    warn!(sandbox = %id, error = %e, "container GC: removing a dead sandbox failed");
                    if let Some(sb) = sandboxes.iter().find(|s| &s.id == id) {
                        failed_pods.insert(sb.metadata.uid.as_str());
                    }
                    report.failures += 1;
                    self.count("sandbox", false);
                }
            }
        }
        for name in &selection.log_dirs {
            if log_dir_uid(name).is_some_and(|uid| failed_pods.contains(uid)) {
                continue;
            }
            match remove_log_dir(&self.logs_dir, name) {
                Ok(()) => {
                    report.log_dirs += 1;
                    self.count("log_dir", true);
                }
                Err(e) => {
                    warn!(dir = %self.logs_dir.join(name).display(), error = %crate::error::full_text(&e), "container GC: removing a pod's log directory failed");
                    report.failures += 1;
                    self.count("log_dir", false);
                }
            }
        }
        report
    }

    fn count(&self, object: &str, ok: bool) {
        if let Some(m) = &self.metrics {
            let counter = if ok { &m.removed } else { &m.failures };
            counter.with_label_values(&[object]).inc();
        }
    }
}

/// The names in `dir` that are directories (not symbolic links); empty when unreadable.
fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Removes one pod log directory by name through the pod code's careful removal (one
/// plain entry, a real directory, symbolic links not followed).
fn remove_log_dir(logs_dir: &Path, name: &str) -> Result<(), crate::pods::cri_config::LogDirError> {
    crate::pods::cri_config::remove_log_dir_named(logs_dir, name)
}
