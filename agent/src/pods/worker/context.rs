//! What every pod worker shares, in groups: the host the pod runs on (runtime, cgroups,
//! directories), the node's identity and capacity, where status and events go, what the
//! kernel, the prober and the eviction manager report, the sync cadence, and the admission
//! policy. The fields stay inside the worker module; the pod manager sees the few it needs
//! through methods.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::cgroups::Hierarchy;
use crate::cgroups::tree::QosTree;
use crate::images::{ImageManager, PullSettings};
use crate::model::node::NodeCondition;
use crate::pleg::facts::KernelFacts;
use crate::pods::admission::{AdmissionNode, LiveNode, NodeState};
use crate::pods::cri_config::{DnsSettings, NodeAllocatable};
use crate::pods::labels::AgentMark;
use crate::pods::objects::PodObjects;
use crate::pods::sysctls::SysctlPolicy;
use crate::pods::volumes::api::{ApiAccess, ServiceAccountTokens};
use crate::probes::ProbeManager;
use crate::record::Recorder;
use crate::status::manager::StatusManager;

/// What every worker shares. Built once by the agent; see the module docs for the groups.
pub struct PodContext<R> {
    pub(super) host: PodHost<R>,
    pub(super) node: NodeInfo,
    pub(super) outputs: Outputs,
    pub(super) signals: Signals,
    pub(super) timing: SyncTiming,
    admission: AdmissionPolicy,
}

impl<R> PodContext<R> {
    #[must_use]
    pub fn new(
        host: PodHost<R>,
        node: NodeInfo,
        outputs: Outputs,
        signals: Signals,
        timing: SyncTiming,
        admission: AdmissionPolicy,
    ) -> Self {
        Self {
            host,
            node,
            outputs,
            signals,
            timing,
            admission,
        }
    }

    /// The runtime the pods run in (the manager lists it for orphans).
    pub(in crate::pods) fn runtime(&self) -> &R {
        &self.host.runtime
    }

    /// The mark on everything this agent creates in the runtime (the manager lists only
    /// what carries it).
    pub(in crate::pods) fn mark(&self) -> &AgentMark {
        &self.host.mark
    }

    /// The QoS cgroup tree (the manager keeps its cpu shares current).
    pub(in crate::pods) fn tree(&self) -> &QosTree {
        &self.host.tree
    }

    /// The node as admission matches a pod against it now: the registered one, with the
    /// Node object's current labels and taints once they are known (cluster mode).
    pub(in crate::pods) fn admission_node(&self) -> Cow<'_, AdmissionNode> {
        self.admission.node()
    }

    /// The node as admission sees it (`node`, from [`Self::admission_node`]), with
    /// `admitted` pods admitted before.
    pub(in crate::pods) fn admission_state<'a>(
        &'a self,
        node: &'a AdmissionNode,
        admitted: &'a [Arc<Pod>],
    ) -> NodeState<'a> {
        NodeState {
            sysctls: &self.admission.sysctls,
            node,
            admitted,
        }
    }

    /// Now, by the context's clock.
    pub(super) fn now(&self) -> Timestamp {
        self.timing.clock.now()
    }
}

/// Where the pod lives: the runtime, its cgroups, and its directories.
pub struct PodHost<R> {
    pub(super) runtime: Arc<R>,
    /// The watched cgroup hierarchy (to read a process's cgroup).
    pub(super) hierarchy: Hierarchy,
    pub(super) tree: Arc<QosTree>,
    /// `<root-dir>/pods`: volumes and per-pod state.
    pub(super) pods_dir: PathBuf,
    /// Where container logs go (`/var/log/pods` layout).
    pub(super) logs_dir: PathBuf,
    /// Pulls images (policies, credentials, turns, metric).
    pub(super) images: Arc<ImageManager>,
    /// Put on every sandbox and container created; only what carries it is observed.
    pub(super) mark: AgentMark,
    /// The configMaps and secrets pods read from the API server; `None` in standalone
    /// mode, where every field that needs them is refused by name.
    pub(super) objects: Option<Arc<dyn PodObjects>>,
    /// Service-account tokens for projected volumes (TokenRequest); `None` in standalone
    /// mode, where a volume that needs one is refused by name.
    pub(super) tokens: Option<Arc<dyn ServiceAccountTokens>>,
}

impl<R> PodHost<R> {
    #[must_use]
    pub fn new(
        runtime: Arc<R>,
        hierarchy: Hierarchy,
        tree: Arc<QosTree>,
        pods_dir: PathBuf,
        logs_dir: PathBuf,
        mark: AgentMark,
    ) -> Self {
        Self {
            runtime,
            hierarchy,
            tree,
            pods_dir,
            logs_dir,
            images: Arc::new(ImageManager::unregistered(PullSettings::default())),
            mark,
            objects: None,
            tokens: None,
        }
    }

    /// Pods read configMaps and secrets from `objects` (cluster mode).
    #[must_use]
    pub fn with_objects(mut self, objects: Option<Arc<dyn PodObjects>>) -> Self {
        self.objects = objects;
        self
    }

    /// Projected volumes get service-account tokens from `tokens` (cluster mode).
    #[must_use]
    pub fn with_tokens(mut self, tokens: Option<Arc<dyn ServiceAccountTokens>>) -> Self {
        self.tokens = tokens;
        self
    }

    /// What volumes read from the API server through.
    pub(super) fn api_access(&self) -> ApiAccess {
        ApiAccess {
            objects: self.objects.clone(),
            tokens: self.tokens.clone(),
        }
    }

    /// Pulls go through `images` (the agent's, configured and registered in its metrics).
    #[must_use]
    pub fn with_images(mut self, images: Arc<ImageManager>) -> Self {
        self.images = images;
        self
    }
}

/// The node the pods run on, as their configs and statuses show it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub(super) name: String,
    pub(super) ips: Vec<IpAddr>,
    pub(super) dns: DnsSettings,
    /// The downward API's default for a limit a container does not set.
    pub(super) allocatable: NodeAllocatable,
    pub(super) memory_capacity: u64,
}

impl NodeInfo {
    #[must_use]
    pub fn new(
        name: String,
        ips: Vec<IpAddr>,
        dns: DnsSettings,
        allocatable: NodeAllocatable,
        memory_capacity: u64,
    ) -> Self {
        Self {
            name,
            ips,
            dns,
            allocatable,
            memory_capacity,
        }
    }
}

/// Where the workers report: pod statuses, events, metrics.
pub struct Outputs {
    pub(super) statuses: StatusManager,
    pub(super) recorder: Recorder,
    pub(super) metrics: crate::metrics::Metrics,
}

impl Outputs {
    #[must_use]
    pub fn new(
        statuses: StatusManager,
        recorder: Recorder,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            statuses,
            recorder,
            metrics,
        }
    }
}

/// What others found out about the pods: the kernel (OOM kills, main pids), the prober,
/// and the eviction manager (node pressure).
pub struct Signals {
    /// OOM kills the kernel reported, by container id.
    pub(super) facts: KernelFacts,
    /// The kubepods cgroup (to name allocatable OOMs).
    pub(super) kubepods: String,
    /// Liveness, readiness and startup probes of every pod.
    pub(super) probes: ProbeManager,
    /// Node pressure conditions: an evicted pod stays down while `Eviction::keeps_down`
    /// says so.
    pub(super) conditions: watch::Receiver<Vec<NodeCondition>>,
}

impl Signals {
    #[must_use]
    pub fn new(
        facts: KernelFacts,
        kubepods: String,
        probes: ProbeManager,
        conditions: watch::Receiver<Vec<NodeCondition>>,
    ) -> Self {
        Self {
            facts,
            kubepods,
            probes,
            conditions,
        }
    }
}

/// When workers sync.
pub struct SyncTiming {
    pub(super) sync_frequency: Duration,
    /// Where the grid of periodic resyncs starts (see `run::resync_deadline`): one
    /// instant for every worker, so their resyncs fall together.
    pub(super) resync_epoch: tokio::time::Instant,
    /// Event PLEG: every runtime change of a pod reaches its worker as a poke (kernel
    /// events, and the safety relist's diff for what the kernel cannot see), so a sync that
    /// only the `sync_frequency` timer asked for plans against the last observation instead
    /// of asking the runtime again. Generic PLEG: every sync observes.
    pub(super) runtime_changes_poke: bool,
    pub(super) clock: Clock,
}

impl SyncTiming {
    /// Syncs at least every `sync_frequency`, on a grid that starts now.
    #[must_use]
    pub fn new(sync_frequency: Duration, runtime_changes_poke: bool) -> Self {
        Self {
            sync_frequency,
            resync_epoch: tokio::time::Instant::now(),
            runtime_changes_poke,
            clock: Clock::System,
        }
    }

    /// Reads the time of day (status timestamps, back-off windows) from `clock`.
    #[cfg(test)]
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

/// Where the workers read the time of day from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system clock.
    System,
    /// `base` plus the time tokio's clock moved since `start`: on a paused tokio clock,
    /// back-off windows pass as the test advances time.
    #[cfg(test)]
    Tokio {
        base: Timestamp,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's from now on.
    #[cfg(test)]
    #[must_use]
    pub fn tokio() -> Self {
        Self::Tokio {
            base: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }
    }

    #[must_use]
    pub fn now(self) -> Timestamp {
        match self {
            Self::System => Timestamp::now(),
            #[cfg(test)]
            Self::Tokio { base, start } => {
                let since = tokio::time::Instant::now().duration_since(start);
                base.checked_add(since).unwrap_or(base)
            }
        }
    }
}

/// Which pods the node admits beyond the eviction manager's pressure check.
#[derive(Debug, Clone)]
pub struct AdmissionPolicy {
    /// Which sysctls a pod may set; a pod setting another is rejected at admission.
    sysctls: SysctlPolicy,
    /// The node's name, labels, taints and allocatable (`maxPods` included): admission
    /// rejects pods that do not fit or match it.
    node: AdmissionNode,
    /// Cluster mode: the Node object's current labels and taints, which replace the
    /// registered ones once published.
    live: Option<watch::Receiver<Option<LiveNode>>>,
}

impl AdmissionPolicy {
    #[must_use]
    pub fn new(sysctls: SysctlPolicy, node: AdmissionNode) -> Self {
        Self {
            sysctls,
            node,
            live: None,
        }
    }

    /// The node to admit a pod onto now: the registered one, with the published labels and
    /// taints in place of its own while there are some.
    fn node(&self) -> Cow<'_, AdmissionNode> {
        let live = self.live.as_ref().and_then(|rx| rx.borrow().clone());
        match live {
            Some(live) => Cow::Owned(self.node.with_live(&live)),
            None => Cow::Borrowed(&self.node),
        }
    }

    /// Matches pods against the labels and taints published on `live` (the Node object's)
    /// whenever there are some.
    #[must_use]
    pub fn with_live_node(mut self, live: watch::Receiver<Option<LiveNode>>) -> Self {
        self.live = Some(live);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_takes_the_nodes_published_labels_and_taints_while_there_are_some() {
        let registered = AdmissionNode {
            name: "node-a".to_owned(),
            labels: [("kubernetes.io/hostname".to_owned(), "node-a".to_owned())].into(),
            ..AdmissionNode::default()
        };
        let (tx, rx) = watch::channel(None);
        let policy =
            AdmissionPolicy::new(SysctlPolicy::default(), registered.clone()).with_live_node(rx);
        assert_eq!(*policy.node(), registered, "nothing published yet");

        let live = LiveNode {
            labels: [("disk".to_owned(), "ssd".to_owned())].into(),
            taints: vec![k8s_openapi::api::core::v1::Taint {
                key: "dedicated".to_owned(),
                effect: "NoExecute".to_owned(),
                ..Default::default()
            }],
        };
        tx.send_replace(Some(live.clone()));
        let node = policy.node();
        assert_eq!(node.labels, live.labels);
        assert_eq!(node.taints, live.taints);
        assert_eq!(
            (node.name.as_str(), node.allocatable),
            ("node-a", registered.allocatable),
            "name and allocatable stay the registered ones"
        );

        tx.send_replace(None);
        assert_eq!(*policy.node(), registered, "the Node was deleted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_tokio_s_paused_time() {
        let clock = Clock::tokio();
        let start = clock.now();
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now().duration_since(start).as_secs(), 90);
    }
}
