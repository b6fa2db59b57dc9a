//! Pod status in the API server: the [`StatusSink`] that cluster mode adds beside the local pod
//! list, and the one task that writes what it collects.
//!
//! - Workers publish on their own task; the sink keeps the latest pod per UID (latest wins,
//!   so a burst of publishes costs one write) and wakes the writer. It never blocks.
//! - Pods from the API server (`kubernetes.io/config.source: api`) get their `status` patched
//!   (a strategic merge patch, so conditions and container statuses merge by key and what other
//!   components own survives), with the pod's UID as precondition, only when it differs from
//!   what bpflet last wrote. A terminal phase once written is never regressed.
//! - Static pods get a mirror pod (upstream's `kubernetes.io/config.mirror` annotation, owned
//!   by the Node), created when first published and replaced when the manifest's hash
//!   changes; its status is the static pod's.
//! - When a worker is done with a pod (`remove`; the manager terminates an API pod only when
//!   the API server deletes it or it left the node's pods): its final status is written and
//!   the object deleted for good (grace 0, UID precondition; gone already is fine); a static
//!   pod's mirror is deleted. Orphans (pods of no source) have nothing in the API.
//! - The API server's own view of the pods it binds to the node ([`ApiStatusSink::observe`],
//!   from the pod source's watch; a static pod's is its mirror's) is checked against what
//!   bpflet last wrote: a pod whose
//!   phase, conditions or container states there differ (the node lifecycle controller marks
//!   every pod of a node it lost `Ready: False`) is written again, as upstream's status
//!   manager reconciles against its pod cache.
//! - Failed writes retry after 1 s doubling to 10 s per pod (upstream's status manager
//!   retries every 10 s); an unreachable API server holds the latest status of every pod
//!   until it answers, and its first successful write brings every pod held for that
//!   forward, so the statuses catch up at once. Nothing here stops a pod.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::status::manager::StatusSink;

/// The `kubernetes.io/config.source` value of pods that come from the API server.
pub const API_SOURCE: &str = "api";
/// The annotation that marks a mirror pod, with the static pod's hash as value.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Wanted {
    Published(Arc<Pod>),
    /// The worker is done with the pod (the last published copy).
    Removed(Arc<Pod>),
}

#[derive(Debug, Default)]
struct Queue {
    latest: HashMap<String, Wanted>,
    dirty: BTreeSet<String>,
    /// The API server's status of the pods bound to the node (by UID), not yet checked.
    observed: Option<HashMap<String, PodStatus>>,
}

type Shared = Arc<(Mutex<Queue>, Notify)>;

/// The API server as a [`StatusSink`].
#[derive(Debug, Clone)]
pub struct ApiStatusSink {
    shared: Shared,
}

impl StatusSink for ApiStatusSink {
    fn publish(&self, uid: &str, pod: &Arc<Pod>) {
        self.queue(uid, Wanted::Published(Arc::clone(pod)));
    }

    fn remove(&self, uid: &str) {
        let (queue, _) = &*self.shared;
        let last = {
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.latest.get(uid) {
                Some(Wanted::Published(pod) | Wanted::Removed(pod)) => Some(Arc::clone(pod)),
                None => None,
            }
        };
        if let Some(pod) = last {
            self.queue(uid, Wanted::Removed(pod));
        }
    }
}

impl ApiStatusSink {
    /// The pods the API server binds to the node, as its watch last listed them (their
    /// status included): the writer writes again each pod whose status there is not what
    /// bpflet wrote. Returns at once.
    pub fn observe(&self, pods: &[Pod]) {
        let observed = pods
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.uid.clone()?,
                    p.status.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let (queue, wake) = &*self.shared;
        queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observed = Some(observed);
        wake.notify_one();
    }

    fn queue(&self, uid: &str, wanted: Wanted) {
        let (queue, wake) = &*self.shared;
        {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.latest.insert(uid.to_owned(), wanted);
            queue.dirty.insert(uid.to_owned());
        }
        wake.notify_one();
    }
}

/// What bpflet last wrote for one pod.
#[derive(Debug, Default)]
struct Written {
    /// The API object's UID: the pod's own, or its mirror pod's.
    api_uid: Option<String>,
    /// The mirror pod's hash annotation, when it is a mirror.
    mirror_hash: Option<String>,
    status: Option<PodStatus>,
    /// The API server's copy is not `status` (another changed it): write it again.
    stale: bool,
    retry: Option<Retry>,
}

/// A write to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    at: Instant,
    delay: Duration,
    /// It failed because the API server was away (see [`is_transient`]).
    away: bool,
}

impl Retry {
    /// The retry after a failure at `now`, following `previous`.
    fn after(previous: Option<Retry>, away: bool, now: Instant) -> Self {
        let delay = previous.map_or(RETRY_FIRST, |r| (r.delay * 2).min(RETRY_MAX));
        Self {
            at: now + delay,
            delay,
            away,
        }
    }
}

/// The API server answered again: every write held only because it was away is due `now`.
fn bring_forward(written: &mut HashMap<String, Written>, now: Instant) {
    for retry in written.values_mut().filter_map(|w| w.retry.as_mut()) {
        if retry.away {
            *retry = Retry {
                at: now,
                delay: RETRY_FIRST,
                away: true,
            };
        }
    }
}

/// Writes the sink's pods to the API server; one task.
pub struct StatusWriter {
    client: kube::Client,
    node_name: String,
    node_uid: Option<String>,
    shared: Shared,
    written: HashMap<String, Written>,
    /// The last write failed because the API server was away (warned once per outage).
    away: bool,
}

/// The sink for the status manager and the writer to spawn.
#[must_use]
pub fn api_status(client: kube::Client, node_name: String) -> (ApiStatusSink, StatusWriter) {
    let shared: Shared = Arc::default();
    (
        ApiStatusSink {
            shared: Arc::clone(&shared),
        },
        StatusWriter {
            client,
            node_name,
            node_uid: None,
            shared,
            written: HashMap::new(),
            away: false,
        },
    )
}

/// Why one write failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("the Node {0} is not registered yet")]
    NoNode(String),
    #[error(
        "pod {namespace}/{name} exists and is not a mirror pod: no mirror pod for the static pod"
    )]
    NameTaken { namespace: String, name: String },
    #[error("the outdated mirror pod {namespace}/{name} was deleted; the new one follows")]
    MirrorReplaced { namespace: String, name: String },
}

impl StatusWriter {
    /// Writes until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let next_retry = self
                .written
                .values()
                .filter_map(|w| w.retry.map(|r| r.at))
                .min();
            {
                let (_, wake) = &*self.shared;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = wake.notified() => {}
                    () = crate::timer::sleep_until(next_retry) => {}
                }
            }
            let now = Instant::now();
            let batch = self.take_batch(now);
            for (uid, wanted) in batch {
                if self
                    .written
                    .get(&uid)
                    .and_then(|w| w.retry)
                    .is_some_and(|r| r.at > now)
                {
                    continue;
                }
                let result = match &wanted {
                    Wanted::Published(pod) => self.write(&uid, pod).await,
                    Wanted::Removed(pod) => self.delete(&uid, pod).await,
                };
                match result {
                    Ok(()) => {
                        if self.away {
                            info!("pod statuses reach the API server again; catching up");
                            self.away = false;
                            bring_forward(&mut self.written, Instant::now());
                        }
                        if let Some(w) = self.written.get_mut(&uid) {
                            w.retry = None;
                        }
                        if matches!(wanted, Wanted::Removed(_)) {
                            self.forget(&uid);
                        }
                    }
                    Err(e) => {
                        let away = matches!(&e, WriteError::Api(e) if is_transient(e));
                        let w = self.written.entry(uid.clone()).or_default();
                        if away && !self.away {
                            warn!(error = %e, "cannot write pod statuses: the API server is away; holding the latest of each pod");
                        } else if !away && w.retry.is_none() {
                            warn!(pod_uid = %uid, error = %e, "cannot write the pod to the API server; retrying");
                        } else {
                            debug!(pod_uid = %uid, error = %e, "pod write failed again");
                        }
                        self.away |= away;
                        w.retry = Some(Retry::after(w.retry, away, Instant::now()));
                    }
                }
            }
        }
    }

    /// The pods to write now: those published or removed since the last pass, those whose
    /// retry is due, and those whose status in the API server is not what bpflet wrote.
    fn take_batch(&mut self, now: Instant) -> Vec<(String, Wanted)> {
        let (queue, _) = &*self.shared;
        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(observed) = queue.observed.take() {
            // Observed by the API object's UID: an API pod's own, or a static pod's mirror's.
            for (uid, w) in &mut self.written {
                let Some(status) = w.api_uid.as_ref().and_then(|api| observed.get(api)) else {
                    continue;
                };
                if w.status.as_ref().is_some_and(|ours| diverged(ours, status)) {
                    debug!(pod_uid = %uid, api_uid = ?w.api_uid, "the pod's status in the API server is not what was written; writing it again");
                    w.stale = true;
                    queue.dirty.insert(uid.clone());
                }
            }
        }
        for (uid, w) in &self.written {
            if w.retry.is_some_and(|r| r.at <= now) {
                queue.dirty.insert(uid.clone());
            }
        }
        let dirty = std::mem::take(&mut queue.dirty);
        dirty
            .into_iter()
            .filter_map(|uid| queue.latest.get(&uid).cloned().map(|w| (uid, w)))
            .collect()
    }

    fn forget(&mut self, uid: &str) {
        self.written.remove(uid);
        let (queue, _) = &*self.shared;
        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
        // A publish that raced the removal stays queued.
        if matches!(queue.latest.get(uid), Some(Wanted::Removed(_))) {
            queue.latest.remove(uid);
        }
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn write(&mut self, uid: &str, pod: &Pod) -> Result<(), WriteError> {
        let (namespace, name) = namespace_name(pod);
        let api_uid = match source_of(pod) {
            Source::Api => uid.to_owned(),
            Source::Static => self.ensure_mirror(uid, pod).await?,
            // A pod no source wants (an orphan being torn down): nothing in the API.
            Source::None => return Ok(()),
        };
        let written = self.written.entry(uid.to_owned()).or_default();
        let status = guard_terminal(
            written.status.as_ref(),
            pod.status.clone().unwrap_or_default(),
        );
        if !written.stale
            && written.status.as_ref() == Some(&status)
            && written.api_uid.as_deref() == Some(&api_uid)
        {
            return Ok(());
        }
        let patch = serde_json::json!({ "metadata": { "uid": api_uid }, "status": status });
        match self
            .pods(&namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                let written = self.written.entry(uid.to_owned()).or_default();
                written.status = Some(status);
                written.stale = false;
                written.api_uid = Some(api_uid);
                Ok(())
            }
            // The object is gone or is another pod of that name now: nothing to write to
            // (for a mirror pod, the next publish creates it again).
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
                let written = self.written.entry(uid.to_owned()).or_default();
                written.status = None;
                written.api_uid = None;
                written.mirror_hash = None;
                debug!(pod_uid = %uid, "pod object gone from the API server; status not written");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The mirror pod's UID, creating (or replacing) the mirror pod first when needed.
    async fn ensure_mirror(&mut self, uid: &str, pod: &Pod) -> Result<String, WriteError> {
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
            .cloned()
            .unwrap_or_else(|| uid.to_owned());
        if let Some(w) = self.written.get(uid)
            && w.mirror_hash.as_deref() == Some(&hash)
            && let Some(api_uid) = &w.api_uid
        {
            return Ok(api_uid.clone());
        }
        let (namespace, name) = namespace_name(pod);
        let pods = self.pods(&namespace);
        let node_uid = self.node_uid().await?;
        let mirror = mirror_pod(pod, &hash, &self.node_name, &node_uid);
        // Created first: the Node authorizer lets a node read only pods bound to it, so a
        // pod of that name that is not (another's) can only be found by the conflict.
        let existing = match pods.create(&PostParams::default(), &mirror).await {
            Ok(created) => {
                let api_uid = created.metadata.uid.unwrap_or_default();
                self.remember_mirror(uid, &api_uid, &hash);
                return Ok(api_uid);
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => match pods.get(&name).await {
                Ok(existing) => existing,
                Err(kube::Error::Api(s)) if s.is_forbidden() => {
                    return Err(WriteError::NameTaken { namespace, name });
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        match mirror_hash(&existing) {
            Some(found) if found == hash => {
                // Ours from before (bpflet restarted, or a create that timed out).
                let api_uid = existing.metadata.uid.unwrap_or_default();
                self.remember_mirror(uid, &api_uid, &hash);
                Ok(api_uid)
            }
            Some(_) => {
                // An outdated mirror (the manifest changed while bpflet was away): delete it;
                // the next try creates the new one.
                let dp = delete_now(existing.metadata.uid);
                match pods.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
                Err(WriteError::MirrorReplaced { namespace, name })
            }
            // A pod of the API server's own holds the name: upstream leaves it alone too;
            // the static pod runs without a mirror.
            None => Err(WriteError::NameTaken { namespace, name }),
        }
    }

    fn remember_mirror(&mut self, uid: &str, api_uid: &str, hash: &str) {
        let w = self.written.entry(uid.to_owned()).or_default();
        if w.api_uid.as_deref() != Some(api_uid) {
            w.status = None;
        }
        w.api_uid = Some(api_uid.to_owned());
        w.mirror_hash = Some(hash.to_owned());
    }

    async fn node_uid(&mut self) -> Result<String, WriteError> {
        if let Some(uid) = &self.node_uid {
            return Ok(uid.clone());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get_opt(&self.node_name)
            .await?
            .ok_or_else(|| WriteError::NoNode(self.node_name.clone()))?;
        let uid = node.metadata.uid.unwrap_or_default();
        self.node_uid = Some(uid.clone());
        Ok(uid)
    }

    /// The worker is done with the pod: delete an API pod that is being deleted, or the
    /// static pod's mirror.
    async fn delete(&mut self, uid: &str, pod: &Pod) -> Result<(), WriteError> {
        let (namespace, name) = namespace_name(pod);
        let target_uid = match source_of(pod) {
            // Only a pod being deleted, or gone from the API server, is terminated: its
            // final status first (upstream writes it before the deletion), then the object.
            Source::Api => {
                self.write(uid, pod).await?;
                Some(uid.to_owned())
            }
            Source::Static => self.written.get(uid).and_then(|w| w.api_uid.clone()),
            Source::None => None,
        };
        let Some(target_uid) = target_uid else {
            return Ok(());
        };
        let dp = delete_now(Some(target_uid));
        match self.pods(&namespace).delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether `e` says the API server is away (it cannot be reached, or it answers 429 or
/// 5xx: too busy, starting, its storage away) rather than refusing the request: worth
/// retrying for as long as it lasts.
#[must_use]
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// `(namespace, name)` of a pod (`default` when unset, as the API server defaults it).
fn namespace_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Delete at once (grace 0), and only the object with this UID when one is given (a new pod
/// of the same name is not ours to delete).
fn delete_now(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// From the API server: its own object.
    Api,
    /// A static pod (`file`, `http`): mirrored.
    Static,
    /// Neither (an orphan found in the runtime): not in the API at all.
    None,
}

fn source_of(pod: &Pod) -> Source {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .map(String::as_str)
    {
        Some(API_SOURCE) => Source::Api,
        Some("file" | "http") => Source::Static,
        _ => Source::None,
    }
}

/// The hash a mirror pod mirrors, if it is one.
#[must_use]
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .map(String::as_str)
}

/// Whether the API server's `api` status differs from `ours` (what bpflet last wrote) in
/// what bpflet owns: the phase, its reason, each condition bpflet wrote (by type: status and
/// reason) and each container status (by name: ready, started, restarts, id and the state).
/// What others own (their conditions, timestamps the API server rounds) is not compared.
fn diverged(ours: &PodStatus, api: &PodStatus) -> bool {
    use k8s_openapi::api::core::v1::ContainerStatus;
    let state_kind = |c: &ContainerStatus| {
        c.state.as_ref().map(|s| {
            (
                s.running.is_some(),
                s.waiting.as_ref().map(|w| w.reason.clone()),
                s.terminated
                    .as_ref()
                    .map(|t| (t.exit_code, t.reason.clone())),
            )
        })
    };
    let containers_differ = |ours: Option<&Vec<ContainerStatus>>,
                             api: Option<&Vec<ContainerStatus>>| {
        ours.into_iter().flatten().any(|o| {
            api.into_iter()
                .flatten()
                .find(|a| a.name == o.name)
                .is_none_or(|a| {
                    (
                        a.ready,
                        a.started,
                        a.restart_count,
                        &a.container_id,
                        state_kind(a),
                    ) != (
                        o.ready,
                        o.started,
                        o.restart_count,
                        &o.container_id,
                        state_kind(o),
                    )
                })
        })
    };
    let conditions_differ = ours.conditions.iter().flatten().any(|o| {
        api.conditions
            .iter()
            .flatten()
            .find(|a| a.type_ == o.type_)
            .is_none_or(|a| (&a.status, &a.reason) != (&o.status, &o.reason))
    });
    ours.phase != api.phase
        || ours.reason != api.reason
        || conditions_differ
        || containers_differ(
            ours.container_statuses.as_ref(),
            api.container_statuses.as_ref(),
        )
        || containers_differ(
            ours.init_container_statuses.as_ref(),
            api.init_container_statuses.as_ref(),
        )
}

/// `new`, except that a terminal phase already written stays (upstream never moves a pod
/// out of `Succeeded` or `Failed`).
fn guard_terminal(written: Option<&PodStatus>, mut new: PodStatus) -> PodStatus {
    let terminal = |s: Option<&str>| matches!(s, Some("Succeeded" | "Failed"));
    if let Some(old) = written
        && terminal(old.phase.as_deref())
        && !terminal(new.phase.as_deref())
    {
        new.phase.clone_from(&old.phase);
    }
    new
}

/// The mirror pod of a static pod: its metadata and spec, bound to the node and owned by it.
#[must_use]
pub fn mirror_pod(pod: &Pod, hash: &str, node_name: &str, node_uid: &str) -> Pod {
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(MIRROR_ANNOTATION.to_owned(), hash.to_owned());
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.node_name = Some(node_name.to_owned());
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node_name.to_owned(),
                uid: node_uid.to_owned(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod(source: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".to_owned()),
                namespace: Some("default".to_owned()),
                uid: Some("u1".to_owned()),
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                annotations: Some(BTreeMap::from([
                    (CONFIG_SOURCE_ANNOTATION.to_owned(), source.to_owned()),
                    (CONFIG_HASH_ANNOTATION.to_owned(), "h1".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec::default()),
            status: None,
        }
    }

    #[test]
    fn pods_are_told_apart_by_their_source() {
        assert_eq!(source_of(&pod("api")), Source::Api);
        assert_eq!(source_of(&pod("file")), Source::Static);
        assert_eq!(source_of(&pod("http")), Source::Static);
        let mut orphan = pod("file");
        orphan.metadata.annotations = None;
        assert_eq!(
            source_of(&orphan),
            Source::None,
            "an orphan has no API object"
        );
    }

    #[test]
    fn a_mirror_pod_carries_the_hash_and_belongs_to_the_node() {
        let mirror = mirror_pod(&pod("file"), "h1", "node-a", "node-uid");
        assert_eq!(mirror_hash(&mirror), Some("h1"));
        assert_eq!(
            mirror.metadata.uid, None,
            "the API server gives the mirror its own UID"
        );
        assert_eq!(
            mirror.spec.and_then(|s| s.node_name).as_deref(),
            Some("node-a")
        );
        let owner = &mirror.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("Node", "node-a", "node-uid", Some(true))
        );
        assert_eq!(mirror.metadata.labels.expect("labels")["app"], "web");
    }

    #[test]
    fn a_terminal_phase_is_never_regressed() {
        let status = |phase: &str| PodStatus {
            phase: Some(phase.to_owned()),
            ..PodStatus::default()
        };
        assert_eq!(
            guard_terminal(Some(&status("Failed")), status("Running"))
                .phase
                .as_deref(),
            Some("Failed")
        );
        assert_eq!(
            guard_terminal(Some(&status("Running")), status("Succeeded"))
                .phase
                .as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            guard_terminal(Some(&status("Pending")), status("Running"))
                .phase
                .as_deref(),
            Some("Running")
        );
    }

    fn ready_status(ready: &str) -> PodStatus {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateRunning, ContainerStatus, PodCondition,
        };
        PodStatus {
            phase: Some("Running".to_owned()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: ready.to_owned(),
                ..PodCondition::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "c".to_owned(),
                ready: ready == "True",
                restart_count: 0,
                container_id: Some("containerd://a".to_owned()),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }
    }

    #[test]
    fn a_status_changed_by_another_in_what_bpflet_owns_has_diverged() {
        use k8s_openapi::api::core::v1::PodCondition;
        let ours = ready_status("True");
        // What the API server holds after the write: the same, plus what others own.
        let mut api = ours.clone();
        api.qos_class = Some("BestEffort".to_owned());
        api.conditions.get_or_insert_default().push(PodCondition {
            type_: "PodScheduled".to_owned(),
            status: "True".to_owned(),
            ..PodCondition::default()
        });
        assert!(!diverged(&ours, &api));
        // The node lifecycle controller marked the pod not ready.
        let mut marked = api.clone();
        marked.conditions.as_mut().expect("conditions")[0].status = "False".to_owned();
        assert!(diverged(&ours, &marked));
        // A container state that is not ours.
        let mut other = api.clone();
        other.container_statuses.as_mut().expect("containers")[0].restart_count = 1;
        assert!(diverged(&ours, &other));
        let mut phase = api;
        phase.phase = Some("Pending".to_owned());
        assert!(diverged(&ours, &phase));
        assert!(
            diverged(&ours, &PodStatus::default()),
            "nothing written at all"
        );
    }

    #[test]
    fn retries_double_to_ten_seconds_and_the_api_servers_return_brings_them_forward() {
        let t0 = Instant::now();
        let mut retry = Retry::after(None, true, t0);
        let mut delays = vec![retry.delay.as_secs()];
        for _ in 0..5 {
            retry = Retry::after(Some(retry), true, t0);
            delays.push(retry.delay.as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);

        let mut written = HashMap::from([
            (
                "away".to_owned(),
                Written {
                    retry: Some(retry),
                    ..Written::default()
                },
            ),
            (
                "refused".to_owned(),
                Written {
                    retry: Some(Retry::after(None, false, t0)),
                    ..Written::default()
                },
            ),
        ]);
        let now = t0 + Duration::from_millis(300);
        bring_forward(&mut written, now);
        assert_eq!(
            written["away"].retry,
            Some(Retry {
                at: now,
                delay: RETRY_FIRST,
                away: true
            }),
            "held only because the API server was away: due now"
        );
        assert_eq!(
            written["refused"].retry.map(|r| r.at),
            Some(t0 + RETRY_FIRST),
            "a refused write keeps its back-off"
        );
    }

    #[test]
    fn the_api_server_being_away_is_told_from_a_refusal() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(500)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(422)));
        assert!(!is_transient(&status(403)));
        assert!(!is_transient(&kube::Error::TlsRequired));
    }

    /// A sink and writer over a client of an address nothing answers on (port 9): for tests
    /// of what the writer decides, which never reach the network.
    fn offline_api_status() -> (ApiStatusSink, StatusWriter) {
        api_status(
            kube::Client::try_from(kube::Config::new(
                "http://127.0.0.1:9".parse().expect("uri"),
            ))
            .expect("client"),
            "node-a".to_owned(),
        )
    }

    #[tokio::test]
    async fn the_api_servers_view_is_checked_against_what_was_written() {
        let (sink, mut writer) = offline_api_status();
        let mut api_pod = pod("api");
        api_pod.status = Some(ready_status("True"));
        sink.publish("u1", &Arc::new(api_pod.clone()));
        writer.written.insert(
            "u1".to_owned(),
            Written {
                api_uid: Some("u1".to_owned()),
                status: Some(ready_status("True")),
                ..Written::default()
            },
        );
        let now = Instant::now();
        assert_eq!(writer.take_batch(now).len(), 1, "the publish");
        assert!(writer.take_batch(now).is_empty());

        sink.observe(std::slice::from_ref(&api_pod));
        assert!(writer.take_batch(now).is_empty(), "the API server agrees");

        let mut marked = api_pod;
        marked.status = Some(ready_status("False"));
        sink.observe(&[marked]);
        let batch = writer.take_batch(now);
        assert_eq!(
            batch
                .iter()
                .map(|(uid, _)| uid.as_str())
                .collect::<Vec<_>>(),
            ["u1"],
            "marked not ready by another: written again"
        );
        assert!(writer.written["u1"].stale);
        assert_eq!(
            writer.written["u1"].status,
            Some(ready_status("True")),
            "what was written stays, for the terminal phase guard"
        );
    }

    #[tokio::test]
    async fn a_mirror_pods_status_is_checked_against_its_static_pod() {
        let (sink, mut writer) = offline_api_status();
        let mut static_pod = pod("web");
        static_pod.status = Some(ready_status("True"));
        sink.publish("static-uid", &Arc::new(static_pod.clone()));
        writer.written.insert(
            "static-uid".to_owned(),
            Written {
                api_uid: Some("mirror-uid".to_owned()),
                mirror_hash: Some("static-uid".to_owned()),
                status: Some(ready_status("True")),
                ..Written::default()
            },
        );
        let now = Instant::now();
        assert_eq!(writer.take_batch(now).len(), 1, "the publish");

        let mut mirror = static_pod;
        mirror.metadata.uid = Some("mirror-uid".to_owned());
        mirror.status = Some(ready_status("True"));
        sink.observe(std::slice::from_ref(&mirror));
        assert!(writer.take_batch(now).is_empty(), "the API server agrees");

        mirror.status = Some(ready_status("False"));
        sink.observe(&[mirror]);
        let batch = writer.take_batch(now);
        assert_eq!(
            batch
                .iter()
                .map(|(uid, _)| uid.as_str())
                .collect::<Vec<_>>(),
            ["static-uid"],
            "the mirror marked not ready by another: the static pod's status written again"
        );
        assert!(writer.written["static-uid"].stale);
    }

    #[tokio::test]
    async fn publishes_coalesce_and_a_removal_keeps_the_last_copy() {
        let shared: Shared = Arc::default();
        let sink = ApiStatusSink {
            shared: Arc::clone(&shared),
        };
        let mut first = pod("api");
        first.status = Some(PodStatus {
            phase: Some("Pending".to_owned()),
            ..PodStatus::default()
        });
        let mut second = first.clone();
        second.status = Some(PodStatus {
            phase: Some("Running".to_owned()),
            ..PodStatus::default()
        });
        sink.publish("u1", &Arc::new(first));
        sink.publish("u1", &Arc::new(second));
        sink.remove("u1");
        sink.remove("unknown");
        let queue = shared.0.lock().expect("lock");
        assert_eq!(queue.dirty.iter().collect::<Vec<_>>(), ["u1"]);
        match &queue.latest["u1"] {
            Wanted::Removed(pod) => assert_eq!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running")
            ),
            other => panic!("expected a removal, got {other:?}"),
        }
        assert!(
            !queue.latest.contains_key("unknown"),
            "nothing to remove for a pod never published"
        );
    }
}
