//! The node's presence in the API server: registration, status reports and the node lease,
//! with upstream's periods and its request budget.
//!
//! - Registration creates the Node (labels, taints, status); a Node of that name that already
//!   exists is adopted (bpflet restarted) and its well-known labels are brought up to date.
//!   Failures retry with a back-off (100 ms doubling to 7 s) until it succeeds or the agent
//!   stops; nothing else waits for it: pods keep running meanwhile. With `registerNode: false`
//!   the Node is never created: the agent reads it, with the same back-off, until someone
//!   else has (upstream's kubelet then still reports its status and renews its lease, and so
//!   does bpflet).
//! - The watch on the Node also publishes its current labels and taints
//!   ([`crate::pods::admission::LiveNode`]) for admission, so labels and taints added with
//!   `kubectl label` / `kubectl taint` apply to the pods admitted afterwards, as upstream's
//!   admission reads its Node from the informer.
//! - Every `nodeStatusUpdateFrequency` (10 s) the reporter takes the Node from a watch on it
//!   (field selector `metadata.name=<node>`, as upstream's kubelet reads its Node from its
//!   informer), computes the status and patches it only when a field bpflet owns changed, or
//!   `nodeStatusReportFrequency` (5 min) passed. It reads the Node from the API server
//!   (`resourceVersion=0`: the API server's cache) only when the watch cannot be trusted:
//!   before its first list completed, while it relists, and after a watch error until the
//!   watch delivers again or a read finds the watch's copy current ([`NodeCache`]). A Node
//!   deleted under the agent is registered again. The watch is one request of the client,
//!   so it takes its token from the `kubeAPIQPS` bucket as every other request does.
//! - The Lease `kube-node-lease/<node>` (owned by the Node, so it goes with it) is renewed
//!   every quarter of `nodeLeaseDurationSeconds` (40 s → 10 s); a failed renewal retries after
//!   200 ms doubling to 7 s, as upstream's lease controller does.
//!
//! An API server that cannot be reached costs retries and warnings, never a pod.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{GetParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::node::{self, NodeIdentity, NodeInfo, NodeResources, Readiness, Reserved, StatusInputs};
use crate::pods::admission::LiveNode;
use crate::status::node::NodeConditions;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Reads the agent's readiness (CRI `Status`, PLEG health) for the `Ready` condition.
pub type ReadinessFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// The periods of the node's reports (KubeletConfiguration names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// `nodeStatusUpdateFrequency`: how often the status is computed (and sent if changed).
    pub status_update: Duration,
    /// `nodeStatusReportFrequency`: an unchanged status is still sent this often.
    pub status_report: Duration,
    /// `nodeLeaseDurationSeconds`; the lease is renewed every quarter of it.
    pub lease_duration: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Self {
            status_update: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
            lease_duration: Duration::from_secs(40),
        }
    }
}

/// What the node reports, and the client it reports with.
pub struct Heartbeat {
    pub client: kube::Client,
    pub identity: NodeIdentity,
    pub resources: NodeResources,
    pub reserved: Reserved,
    pub info: NodeInfo,
    pub conditions: NodeConditions,
    pub readiness: ReadinessFn,
    pub kubelet_port: Option<u16>,
    pub periods: Periods,
    /// `registerNode`: create the Node (else wait for it to exist).
    pub register: bool,
    /// Where the Node's current labels and taints are published (`None`: no Node seen, or
    /// it was deleted).
    pub live_node: watch::Sender<Option<LiveNode>>,
}

/// Retry delays: `first` doubling up to `max`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
        }
    }

    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Heartbeat {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn inputs<'a>(
        &'a self,
        pressure: &'a [k8s_openapi::api::core::v1::NodeCondition],
        readiness: &'a Readiness,
    ) -> StatusInputs<'a> {
        StatusInputs {
            identity: &self.identity,
            resources: self.resources,
            reserved: self.reserved,
            info: &self.info,
            pressure,
            readiness,
            kubelet_port: self.kubelet_port,
        }
    }

    /// Registers the node, then watches its Node, reports its status and renews its lease
    /// until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let Some(node) = this.register_until_done(&cancel).await else {
            return;
        };
        let lease =
            tokio::spawn(Arc::clone(&this).renew_lease(node.metadata.uid.clone(), cancel.clone()));
        let cache = Arc::new(Mutex::new(NodeCache::default()));
        let watch = tokio::spawn(Arc::clone(&this).watch_node(Arc::clone(&cache), cancel.clone()));
        this.report_status(node, &cache, &cancel).await;
        let _ = lease.await;
        let _ = watch.await;
    }

    /// Keeps `cache` up to date with the node's own Node until `cancel`: a kube-runtime
    /// watcher with the field selector `metadata.name=<node>`, restarted with its default
    /// back-off after an error.
    async fn watch_node(self: Arc<Self>, cache: Arc<Mutex<NodeCache>>, cancel: CancellationToken) {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.identity.name));
        let mut stream = std::pin::pin!(watcher::watcher(self.nodes(), config).default_backoff());
        let mut failing = false;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = stream.next() => next,
            };
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            match next {
                None => return,
                Some(Ok(event)) => {
                    if failing {
                        info!(node = %self.identity.name, "Node watch resumed");
                        failing = false;
                    }
                    cache.apply(event);
                    publish_live_node(&cache, &self.live_node);
                }
                Some(Err(e)) => {
                    if !failing {
                        warn!(node = %self.identity.name, error = %e, "Node watch failed; the status reporter reads the Node until it resumes; retrying");
                        failing = true;
                    }
                    cache.failed();
                }
            }
        }
    }

    /// Creates (or adopts) the Node, or with `registerNode: false` reads it until it
    /// exists; `None` when cancelled first.
    async fn register_until_done(&self, cancel: &CancellationToken) -> Option<Node> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(7));
        let mut warned = false;
        loop {
            let attempt = if self.register {
                self.register().await
            } else {
                self.nodes().get(&self.identity.name).await
            };
            match attempt {
                Ok(node) if self.register => {
                    info!(node = %self.identity.name, "node registered with the API server");
                    return Some(node);
                }
                Ok(node) => {
                    info!(node = %self.identity.name, "found the Node (registerNode: false: bpflet does not create it)");
                    return Some(node);
                }
                Err(e) => {
                    if warned {
                        debug!(error = %e, "node registration failed");
                    } else if self.register {
                        warn!(node = %self.identity.name, error = %e, "node registration failed; retrying");
                        warned = true;
                    } else {
                        warn!(node = %self.identity.name, error = %e, "cannot read the Node (registerNode: false: it must be created by someone else); retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(backoff.step()) => {}
            }
        }
    }

    async fn register(&self) -> Result<Node, kube::Error> {
        let readiness = (self.readiness)().await;
        let pressure = self.conditions.get();
        let wanted = node::registration(&self.inputs(&pressure, &readiness), Timestamp::now());
        match self.nodes().create(&PostParams::default(), &wanted).await {
            Ok(node) => Ok(node),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                // bpflet restarted (or another agent of this name ran): adopt the Node and
                // bring the labels bpflet owns up to date, as upstream's registration does.
                let labels = node::labels(&self.identity);
                let patch = serde_json::json!({ "metadata": { "labels": labels } });
                self.nodes()
                    .patch(
                        &self.identity.name,
                        &PatchParams::default(),
                        &Patch::Strategic(patch),
                    )
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// Every `status_update`: computes the status against what the API holds and patches it
    /// when needed. Runs until `cancel`.
    async fn report_status(
        &self,
        registered: Node,
        cache: &Mutex<NodeCache>,
        cancel: &CancellationToken,
    ) {
        let mut last_report: Option<Instant> = None;
        let mut warned = false;
        let mut current = Some(registered);
        loop {
            let result = self
                .report_once(current.take(), cache, &mut last_report)
                .await;
            match result {
                Ok(()) => {
                    if warned {
                        info!(node = %self.identity.name, "node status reaches the API server again");
                    }
                    warned = false;
                }
                Err(e) if is_not_found(&e) => {
                    warn!(node = %self.identity.name, "the Node was deleted; registering again");
                    match self.register_until_done(cancel).await {
                        Some(node) => current = Some(node),
                        None => return,
                    }
                    last_report = None;
                    continue;
                }
                Err(e) => {
                    if !warned {
                        warn!(node = %self.identity.name, error = %e, "cannot update the node's status; retrying every {:?}", self.periods.status_update);
                        warned = true;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.periods.status_update) => {}
            }
        }
    }

    /// One status pass; `current` is a Node just written, else the watch's copy when it can
    /// be trusted, else the Node is read (and shown to the cache, which may trust its copy
    /// again).
    async fn report_once(
        &self,
        current: Option<Node>,
        cache: &Mutex<NodeCache>,
        last_report: &mut Option<Instant>,
    ) -> Result<(), kube::Error> {
        let cached = || {
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .trusted()
                .cloned()
        };
        let current = match current.or_else(cached) {
            Some(node) => node,
            None => {
                let read = self
                    .nodes()
                    .get_with(&self.identity.name, &GetParams::any())
                    .await?;
                cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .confirm(&read);
                read
            }
        };
        let readiness = (self.readiness)().await;
        let pressure = self.conditions.get();
        let reported = current.status.as_ref();
        let status = node::status(
            &self.inputs(&pressure, &readiness),
            reported,
            Timestamp::now(),
        );
        let since = last_report.map_or(Duration::MAX, |at| at.elapsed());
        if !node::needs_report(reported, &status, since, self.periods.status_report) {
            return Ok(());
        }
        patch_status(&self.nodes(), &self.identity.name, status).await?;
        *last_report = Some(Instant::now());
        Ok(())
    }

    /// Keeps `kube-node-lease/<node>` renewed until `cancel`.
    async fn renew_lease(self: Arc<Self>, node_uid: Option<String>, cancel: CancellationToken) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let interval = self.periods.lease_duration / 4;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
        let mut held: Option<Lease> = None;
        let mut failing = false;
        loop {
            let wait = match self
                .renew_once(&leases, held.take(), node_uid.as_deref())
                .await
            {
                Ok(lease) => {
                    if failing {
                        info!(node = %self.identity.name, "node lease renewed again");
                    }
                    failing = false;
                    held = Some(lease);
                    backoff.reset();
                    interval
                }
                Err(e) => {
                    if !failing {
                        warn!(node = %self.identity.name, error = %e, "cannot renew the node lease; retrying");
                        failing = true;
                    }
                    backoff.step()
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews `held` (the lease as last written), or reads or creates the lease first.
    async fn renew_once(
        &self,
        leases: &Api<Lease>,
        held: Option<Lease>,
        node_uid: Option<&str>,
    ) -> Result<Lease, kube::Error> {
        let name = &self.identity.name;
        let lease = match held {
            Some(lease) => lease,
            None => match leases.get(name).await {
                Ok(lease) => lease,
                Err(e) if is_not_found(&e) => {
                    let lease = new_lease(
                        name,
                        node_uid,
                        self.periods.lease_duration,
                        Timestamp::now(),
                    );
                    return leases.create(&PostParams::default(), &lease).await;
                }
                Err(e) => return Err(e),
            },
        };
        // On a conflict (someone else wrote it) or not found, the next try reads it again.
        let renewed = renew(lease, name, self.periods.lease_duration, Timestamp::now());
        leases.replace(name, &PostParams::default(), &renewed).await
    }
}

/// The node's own Node as its watch last delivered it, and whether the status reporter may
/// take it instead of reading the Node from the API server.
///
/// The copy is trusted once the watch's list completed, until a watch error or a relist;
/// after an error it is trusted again when the watch delivers an event (it resumes from the
/// last resourceVersion it saw, so it missed nothing) or when a read of the Node finds the
/// same resourceVersion (the copy is current; a change after the read comes through the
/// watch, which replays from where it stopped). A Node deleted under the agent leaves nothing
/// to trust: the reporter reads, finds it gone and registers again.
#[derive(Debug, Default)]
pub struct NodeCache {
    node: Option<Node>,
    /// A list in progress, with the Node it found so far.
    relisting: Option<Option<Node>>,
    /// A list completed at least once.
    listed: bool,
    /// The watch delivered since its last error.
    healthy: bool,
}

impl NodeCache {
    /// Applies one event of the watch.
    pub fn apply(&mut self, event: Event<Node>) {
        match event {
            Event::Init => {
                self.relisting = Some(None);
                self.healthy = false;
            }
            Event::InitApply(node) => {
                if let Some(found) = self.relisting.as_mut() {
                    *found = Some(node);
                }
            }
            Event::InitDone => {
                self.node = self.relisting.take().flatten();
                self.listed = true;
                self.healthy = true;
            }
            Event::Apply(node) => {
                self.node = Some(node);
                self.healthy = self.listed && self.relisting.is_none();
            }
            Event::Delete(_) => {
                self.node = None;
                self.healthy = self.listed && self.relisting.is_none();
            }
        }
    }

    /// The watch failed: its copy may be behind until it delivers again.
    pub fn failed(&mut self) {
        self.healthy = false;
    }

    /// The Node the reporter may take instead of reading it; `None` means read it.
    #[must_use]
    pub fn trusted(&self) -> Option<&Node> {
        if self.healthy {
            self.node.as_ref()
        } else {
            None
        }
    }

    /// `read` is the Node as the API server has it now: the copy is trusted again when it
    /// is that same version of the Node.
    pub fn confirm(&mut self, read: &Node) {
        let version = |n: &Node| {
            n.metadata
                .resource_version
                .clone()
                .filter(|v| !v.is_empty())
        };
        let same = self
            .node
            .as_ref()
            .and_then(version)
            .is_some_and(|held| version(read).is_some_and(|now| now == held));
        if self.listed && self.relisting.is_none() && same {
            self.healthy = true;
        }
    }
}

/// Publishes the labels and taints of the Node `cache` holds now, when they changed.
fn publish_live_node(cache: &NodeCache, live: &watch::Sender<Option<LiveNode>>) {
    let now = cache.node.as_ref().map(LiveNode::of);
    live.send_if_modified(|held| {
        if *held == now {
            false
        } else {
            *held = now;
            true
        }
    });
}

/// Patches the Node's status subresource. A strategic merge patch merges conditions and
/// addresses by type, so conditions other components own survive.
async fn patch_status(
    nodes: &Api<Node>,
    name: &str,
    status: NodeStatus,
) -> Result<Node, kube::Error> {
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.is_not_found())
}

/// A new lease for the node, owned by its Node (so deleting the Node deletes it).
#[must_use]
pub fn new_lease(
    node_name: &str,
    node_uid: Option<&str>,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    let owner = node_uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Node".to_owned(),
            name: node_name.to_owned(),
            uid: uid.to_owned(),
            ..OwnerReference::default()
        }]
    });
    renew(
        Lease {
            metadata: ObjectMeta {
                name: Some(node_name.to_owned()),
                namespace: Some(LEASE_NAMESPACE.to_owned()),
                owner_references: owner,
                ..ObjectMeta::default()
            },
            spec: None,
        },
        node_name,
        duration,
        now,
    )
}

/// `lease` held by the node and renewed at `now`.
#[must_use]
pub fn renew(mut lease: Lease, node_name: &str, duration: Duration, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node_name.to_owned());
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_by_the_node_owned_by_its_node_and_renewed_in_place() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("valid");
        let lease = new_lease("node-a", Some("uid-1"), Duration::from_secs(40), t0);
        assert_eq!(lease.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        let owner = &lease.metadata.owner_references.as_deref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
        let spec = lease.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(t0)));

        let mut read = lease;
        read.metadata.resource_version = Some("42".to_owned());
        let t1 = Timestamp::from_second(1_800_000_010).expect("valid");
        let renewed = renew(read, "node-a", Duration::from_secs(40), t1);
        assert_eq!(
            renewed.metadata.resource_version.as_deref(),
            Some("42"),
            "a renewal is an update of the lease read, so a concurrent writer conflicts"
        );
        assert_eq!(renewed.spec.expect("spec").renew_time, Some(MicroTime(t1)));
    }

    #[test]
    fn back_off_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
        let steps: Vec<_> = (0..8).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(200));
    }

    fn node(version: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-a".to_owned()),
                resource_version: Some(version.to_owned()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    fn trusted_version(cache: &NodeCache) -> Option<&str> {
        cache
            .trusted()
            .and_then(|n| n.metadata.resource_version.as_deref())
    }

    fn listed(version: &str) -> NodeCache {
        let mut cache = NodeCache::default();
        for event in [
            Event::Init,
            Event::InitApply(node(version)),
            Event::InitDone,
        ] {
            cache.apply(event);
        }
        cache
    }

    #[test]
    fn the_watch_is_read_only_once_its_list_completed() {
        let mut cache = NodeCache::default();
        assert_eq!(
            trusted_version(&cache),
            None,
            "nothing listed: read the Node"
        );
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(node("5")));
        assert_eq!(trusted_version(&cache), None, "the list is not complete");
        cache.apply(Event::InitDone);
        assert_eq!(trusted_version(&cache), Some("5"));
        cache.apply(Event::Apply(node("6")));
        assert_eq!(
            trusted_version(&cache),
            Some("6"),
            "each change replaces it"
        );
    }

    #[test]
    fn after_a_watch_error_the_node_is_read_until_the_watch_delivers_again() {
        let mut cache = listed("5");
        cache.failed();
        assert_eq!(trusted_version(&cache), None, "the copy may be behind");
        cache.apply(Event::Apply(node("9")));
        assert_eq!(
            trusted_version(&cache),
            Some("9"),
            "the watch resumed from where it stopped"
        );

        // A relist after the error: the copy is trusted again only when it completes.
        cache.failed();
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(node("12")));
        cache.confirm(&node("9"));
        assert_eq!(trusted_version(&cache), None, "relisting");
        cache.apply(Event::InitDone);
        assert_eq!(trusted_version(&cache), Some("12"));
    }

    #[test]
    fn a_read_of_the_same_version_trusts_a_quiet_watch_again() {
        let mut cache = listed("5");
        cache.failed();
        cache.confirm(&node("7"));
        assert_eq!(
            trusted_version(&cache),
            None,
            "the API server holds a newer Node than the copy"
        );
        cache.confirm(&node(""));
        assert_eq!(trusted_version(&cache), None, "no version proves nothing");
        cache.confirm(&node("5"));
        assert_eq!(trusted_version(&cache), Some("5"), "the copy is current");

        // Before any list there is nothing to confirm.
        let mut fresh = NodeCache::default();
        fresh.confirm(&node("5"));
        assert_eq!(trusted_version(&fresh), None);
    }

    #[test]
    fn the_nodes_labels_and_taints_are_published_as_the_watch_delivers_them() {
        let (tx, mut rx) = watch::channel(None);
        let labelled = |version: &str, label: Option<&str>, taint: Option<&str>| {
            let mut n = node(version);
            n.metadata.labels = label.map(|l| [(l.to_owned(), "yes".to_owned())].into());
            n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: taint.map(|t| {
                    vec![k8s_openapi::api::core::v1::Taint {
                        key: t.to_owned(),
                        effect: "NoExecute".to_owned(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            });
            n
        };
        let mut cache = NodeCache::default();
        for event in [
            Event::Init,
            Event::InitApply(labelled("5", Some("disk"), None)),
        ] {
            cache.apply(event);
            publish_live_node(&cache, &tx);
        }
        assert_eq!(
            *rx.borrow_and_update(),
            None,
            "nothing before the list completes"
        );
        cache.apply(Event::InitDone);
        publish_live_node(&cache, &tx);
        let seen = rx.borrow_and_update().clone().expect("published");
        assert_eq!(seen.labels.get("disk").map(String::as_str), Some("yes"));
        assert!(seen.taints.is_empty());

        // A status update that changes neither labels nor taints wakes nobody.
        cache.apply(Event::Apply(labelled("6", Some("disk"), None)));
        publish_live_node(&cache, &tx);
        assert!(!rx.has_changed().expect("open"));

        cache.apply(Event::Apply(labelled("7", None, Some("dedicated"))));
        publish_live_node(&cache, &tx);
        assert!(rx.has_changed().expect("open"));
        let seen = rx.borrow_and_update().clone().expect("published");
        assert!(seen.labels.is_empty());
        assert_eq!(seen.taints[0].key, "dedicated");

        cache.apply(Event::Delete(labelled("8", None, None)));
        publish_live_node(&cache, &tx);
        assert_eq!(
            *rx.borrow_and_update(),
            None,
            "a deleted Node: the registered ones"
        );
    }

    #[test]
    fn a_deleted_node_leaves_nothing_to_trust() {
        let mut cache = listed("5");
        cache.apply(Event::Delete(node("6")));
        assert_eq!(trusted_version(&cache), None, "read: the Node is gone");
        cache.apply(Event::Apply(node("8")));
        assert_eq!(trusted_version(&cache), Some("8"), "registered again");

        let mut empty = NodeCache::default();
        empty.apply(Event::Init);
        empty.apply(Event::InitDone);
        assert_eq!(trusted_version(&empty), None, "listed, but no Node yet");
    }
}
