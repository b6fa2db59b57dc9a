//! The configMaps and secrets pods read, from the API server ([`PodObjects`]), as upstream's
//! kubelet reads them with its default `configMapAndSecretChangeDetectionStrategy: Watch`:
//!
//! - A pod's worker registers the pod ([`PodObjects::register_pod`]): every object it
//!   refers to ([`referenced_objects`]) gets one watch of its own (in its namespace, field
//!   selector `metadata.name=<name>`), shared by every pod that refers to it. The watch stops
//!   when no registered pod refers to the object any more ([`References`]).
//! - A read comes from the watch's cache once the watch has listed the object (present or
//!   absent); before that, and for an object no registered pod names, it is a GET.
//! - An object marked `immutable: true` cannot change: once one is read (by its watch or a
//!   GET), its watch stops and the copy read is served while pods refer to it.
//! - Every request goes through the agent's rate-limited client. The API server away: a
//!   watch keeps what it last listed and retries (kube's back-off); a read that needs the
//!   API server fails with an error naming the object, and its caller (the pod worker)
//!   retries at its next sync. Nothing else waits for it.
//!
//! Metrics: `bpflet_object_watches{kind}` (watches open) and
//! `bpflet_object_reads_total{kind,from}` (`cache` or `api`); upstream has none.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::{format_pod, pod_uid};
use crate::pods::objects::{ObjectError, ObjectKey, ObjectKind, PodObjects, referenced_objects};

/// How long a GET may take before the read fails (the worker retries at its next sync).
pub const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// Which objects the registered pods refer to, and so which watches should run. Pure:
/// every change says which watches to start and which to stop.
#[derive(Debug, Default)]
pub struct References {
    /// By pod UID: the objects that pod refers to.
    pods: HashMap<String, BTreeSet<ObjectKey>>,
    /// By object: how many registered pods refer to it.
    counts: HashMap<ObjectKey, usize>,
}

/// Watches to start and to stop after a registration changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub start: Vec<ObjectKey>,
    pub stop: Vec<ObjectKey>,
}

impl References {
    /// Pod `uid` now refers to `objects` (replacing what it referred to before).
    pub fn register(&mut self, uid: &str, objects: BTreeSet<ObjectKey>) -> Changes {
        let before = self.pods.remove(uid).unwrap_or_default();
        let mut changes = Changes::default();
        for key in objects.difference(&before) {
            let count = self.counts.entry(key.clone()).or_default();
            *count += 1;
            if *count == 1 {
                changes.start.push(key.clone());
            }
        }
        for key in before.difference(&objects) {
            if self.release(key) {
                changes.stop.push(key.clone());
            }
        }
        if !objects.is_empty() {
            self.pods.insert(uid.to_owned(), objects);
        }
        changes
    }

    /// Pod `uid` refers to nothing any more.
    pub fn unregister(&mut self, uid: &str) -> Changes {
        let before = self.pods.remove(uid).unwrap_or_default();
        Changes {
            start: Vec::new(),
            stop: before.into_iter().filter(|k| self.release(k)).collect(),
        }
    }

    /// Drops one reference to `key`; `true` when it was the last.
    fn release(&mut self, key: &ObjectKey) -> bool {
        match self.counts.get_mut(key) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(key);
                true
            }
            None => false,
        }
    }

    /// Whether some registered pod refers to `key`.
    #[must_use]
    pub fn is_referenced(&self, key: &ObjectKey) -> bool {
        self.counts.contains_key(key)
    }
}

/// One object as read, either kind.
#[derive(Debug, Clone)]
enum Object {
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
}

impl Object {
    fn is_immutable(&self) -> bool {
        match self {
            Self::ConfigMap(cm) => cm.immutable == Some(true),
            Self::Secret(s) => s.immutable == Some(true),
        }
    }
}

/// What a watch knows of its object.
#[derive(Debug, Clone, Default)]
enum Cached {
    /// Not listed yet.
    #[default]
    Unsynced,
    /// Listed: the object, or `None` when it does not exist.
    Synced(Option<Object>),
}

/// A kind the store reads and watches.
trait Watchable:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    const KIND: ObjectKind;
    fn into_object(self) -> Object;
    fn from_object(object: &Object) -> Option<Arc<Self>>;
}

impl Watchable for ConfigMap {
    const KIND: ObjectKind = ObjectKind::ConfigMap;

    fn into_object(self) -> Object {
        Object::ConfigMap(Arc::new(self))
    }

    fn from_object(object: &Object) -> Option<Arc<Self>> {
        match object {
            Object::ConfigMap(cm) => Some(Arc::clone(cm)),
            Object::Secret(_) => None,
        }
    }
}

impl Watchable for Secret {
    const KIND: ObjectKind = ObjectKind::Secret;

    fn into_object(self) -> Object {
        Object::Secret(Arc::new(self))
    }

    fn from_object(object: &Object) -> Option<Arc<Self>> {
        match object {
            Object::Secret(s) => Some(Arc::clone(s)),
            Object::ConfigMap(_) => None,
        }
    }
}

/// Applies a watch's events to what it knows of its one object: a list (`Init` ...
/// `InitDone`) replaces it when complete, `Apply` and `Delete` change it. Objects of
/// another name (the field selector lets none through) are ignored.
#[derive(Debug, Default)]
struct Listing {
    /// A list in progress: what it found so far.
    listing: Option<Option<Object>>,
}

impl Listing {
    /// The new state after `event`, when it changes what the cache holds.
    fn apply<K: Watchable>(&mut self, name: &str, event: Event<K>) -> Option<Cached> {
        let named = |k: &K| k.meta().name.as_deref() == Some(name);
        match event {
            Event::Init => {
                self.listing = Some(None);
                None
            }
            Event::InitApply(k) => {
                if let Some(listing) = self.listing.as_mut()
                    && named(&k)
                {
                    *listing = Some(k.into_object());
                }
                None
            }
            Event::InitDone => Some(Cached::Synced(self.listing.take().flatten())),
            Event::Apply(k) => named(&k).then(|| Cached::Synced(Some(k.into_object()))),
            Event::Delete(k) => named(&k).then_some(Cached::Synced(None)),
        }
    }
}

/// The store's metrics.
#[derive(Debug, Clone)]
pub struct ObjectMetrics {
    watches: IntGaugeVec,
    reads: IntCounterVec,
}

impl ObjectMetrics {
    /// Registers `bpflet_object_watches` and `bpflet_object_reads_total` in `registry`.
    ///
    /// # Errors
    /// The registry refused a metric (a name taken).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let watches = IntGaugeVec::new(
            Opts::new(
                "bpflet_object_watches",
                "Watches open on configMaps and secrets that pods refer to.",
            ),
            &["kind"],
        )?;
        let reads = IntCounterVec::new(
            Opts::new(
                "bpflet_object_reads_total",
                "Reads of configMaps and secrets for pods, from a watch's cache or the API server.",
            ),
            &["kind", "from"],
        )?;
        registry.register(Box::new(watches.clone()))?;
        registry.register(Box::new(reads.clone()))?;
        Ok(Self { watches, reads })
    }
}

/// One watch: what it knows and how to stop it.
#[derive(Debug)]
struct Watch {
    cached: Arc<Mutex<Cached>>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    references: References,
    watches: HashMap<ObjectKey, Watch>,
}

struct Inner {
    client: kube::Client,
    state: Mutex<State>,
    metrics: Option<ObjectMetrics>,
    /// The agent's shutdown: every watch stops.
    cancel: CancellationToken,
    get_timeout: Duration,
}

/// configMaps and secrets from the API server; see the module docs.
#[derive(Clone)]
pub struct ApiObjects {
    inner: Arc<Inner>,
}

impl ApiObjects {
    /// A store that reads through `client`, counts in `metrics`, and whose watches stop at
    /// `cancel`.
    #[must_use]
    pub fn new(
        client: kube::Client,
        metrics: Option<ObjectMetrics>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                state: Mutex::new(State::default()),
                metrics,
                cancel,
                get_timeout: GET_TIMEOUT,
            }),
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the watch of `key` has listed, when it has.
    fn cached(&self, key: &ObjectKey) -> Option<Option<Object>> {
        let state = self.state();
        let watch = state.watches.get(key)?;
        let cached = watch
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match cached {
            Cached::Synced(object) => Some(object),
            Cached::Unsynced => None,
        }
    }

    /// An immutable object was read by a GET: its watch (if a pod refers to it) keeps
    /// this copy and stops.
    fn hold_immutable(&self, key: &ObjectKey, object: Object) {
        let state = self.state();
        if let Some(watch) = state.watches.get(key) {
            *watch.cached.lock().unwrap_or_else(PoisonError::into_inner) =
                Cached::Synced(Some(object));
            watch.stop.cancel();
        }
    }

    fn count_read(&self, kind: ObjectKind, from: &str) {
        if let Some(m) = &self.metrics {
            let kind = kind.to_string();
            m.reads.with_label_values(&[kind.as_str(), from]).inc();
        }
    }

    async fn read<K: Watchable>(&self, key: ObjectKey) -> Result<Option<Arc<K>>, ObjectError> {
        if let Some(object) = self.cached(&key) {
            self.count_read(K::KIND, "cache");
            return Ok(object.as_ref().and_then(K::from_object));
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let got = tokio::time::timeout(self.get_timeout, api.get_opt(&key.name))
            .await
            .map_err(|_| ObjectError::Timeout {
                kind: K::KIND,
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                after: self.get_timeout,
            })?
            .map_err(|e| ObjectError::Get {
                kind: K::KIND,
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                source: Arc::new(e),
            })?;
        self.count_read(K::KIND, "api");
        let object = got.map(K::into_object);
        if let Some(o) = object.as_ref().filter(|o| o.is_immutable()) {
            self.hold_immutable(&key, o.clone());
        }
        Ok(object.as_ref().and_then(K::from_object))
    }

    /// Starts the watch of `key` (the state's lock held by the caller).
    fn start_watch(self: &Arc<Self>, state: &mut State, key: ObjectKey) {
        let cached = Arc::new(Mutex::new(Cached::Unsynced));
        let stop = self.cancel.child_token();
        state.watches.insert(
            key.clone(),
            Watch {
                cached: Arc::clone(&cached),
                stop: stop.clone(),
            },
        );
        let metrics = self.metrics.clone();
        let client = self.client.clone();
        let shown = key.to_string();
        let task = async move {
            if let Some(m) = &metrics {
                m.watches.with_label_values(&[key.kind.to_string()]).inc();
            }
            match key.kind {
                ObjectKind::ConfigMap => {
                    run_watch::<ConfigMap>(client, &key, &cached, &stop).await;
                }
                ObjectKind::Secret => run_watch::<Secret>(client, &key, &cached, &stop).await,
            }
            if let Some(m) = &metrics {
                m.watches.with_label_values(&[key.kind.to_string()]).dec();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(task)),
            // Never in the agent (workers register from their tasks): reads stay GETs.
            Err(_) => {
                warn!(object = %shown, "no async runtime to watch in; reads go to the API server");
            }
        }
    }
}

/// Watches one object until `stop`, keeping `cached` current; ends early once the object
/// read is immutable.
async fn run_watch<K: Watchable>(
    client: kube::Client,
    key: &ObjectKey,
    cached: &Mutex<Cached>,
    stop: &CancellationToken,
) {
    let api: Api<K> = Api::namespaced(client, &key.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut listing = Listing::default();
    let mut failing = false;
    debug!(object = %key, "watching");
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                if !failing {
                    warn!(object = %key, error = %e, "watch failed; reads keep what it listed last; retrying");
                    failing = true;
                }
            }
            Some(Ok(event)) => {
                if failing {
                    info!(object = %key, "watch resumed");
                    failing = false;
                }
                let Some(update) = listing.apply(&key.name, event) else {
                    continue;
                };
                let immutable = matches!(&update, Cached::Synced(Some(o)) if o.is_immutable());
                *cached.lock().unwrap_or_else(PoisonError::into_inner) = update;
                if immutable {
                    debug!(object = %key, "immutable: no more watching");
                    return;
                }
            }
        }
    }
}

impl PodObjects for ApiObjects {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<ConfigMap>>, ObjectError>> {
        let inner = Arc::clone(&self.inner);
        let key = ObjectKey::new(ObjectKind::ConfigMap, namespace, name);
        Box::pin(async move { inner.read::<ConfigMap>(key).await })
    }

    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<Secret>>, ObjectError>> {
        let inner = Arc::clone(&self.inner);
        let key = ObjectKey::new(ObjectKind::Secret, namespace, name);
        Box::pin(async move { inner.read::<Secret>(key).await })
    }

    fn register_pod(&self, pod: &Pod) {
        let objects = referenced_objects(pod);
        let mut state = self.inner.state();
        let changes = state.references.register(pod_uid(pod), objects);
        apply_changes(&self.inner, &mut state, changes, pod);
    }

    fn unregister_pod(&self, pod: &Pod) {
        let mut state = self.inner.state();
        let changes = state.references.unregister(pod_uid(pod));
        apply_changes(&self.inner, &mut state, changes, pod);
    }
}

fn apply_changes(inner: &Arc<Inner>, state: &mut State, changes: Changes, pod: &Pod) {
    if changes != Changes::default() {
        debug!(pod = %format_pod(pod), start = changes.start.len(), stop = changes.stop.len(), "object watches change");
    }
    for key in changes.stop {
        if let Some(watch) = state.watches.remove(&key) {
            watch.stop.cancel();
        }
    }
    for key in changes.start {
        inner.start_watch(state, key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn key(kind: ObjectKind, name: &str) -> ObjectKey {
        ObjectKey::new(kind, "ns", name)
    }

    fn set(keys: &[&ObjectKey]) -> BTreeSet<ObjectKey> {
        keys.iter().map(|k| (*k).clone()).collect()
    }

    #[test]
    fn a_watch_runs_while_some_registered_pod_refers_to_its_object() {
        let (a, b, c) = (
            key(ObjectKind::ConfigMap, "a"),
            key(ObjectKind::Secret, "b"),
            key(ObjectKind::ConfigMap, "c"),
        );
        let mut refs = References::default();
        assert_eq!(
            refs.register("p1", set(&[&a, &b])),
            Changes {
                start: vec![a.clone(), b.clone()],
                stop: vec![]
            }
        );
        assert_eq!(
            refs.register("p2", set(&[&a])),
            Changes::default(),
            "a second pod shares the watch"
        );
        assert_eq!(
            refs.register("p1", set(&[&a, &b])),
            Changes::default(),
            "registering the same references again changes nothing"
        );
        assert_eq!(
            refs.register("p1", set(&[&c])),
            Changes {
                start: vec![c.clone()],
                stop: vec![b.clone()]
            },
            "an updated pod: c is new, b is nobody's now, a is still p2's"
        );
        assert!(refs.is_referenced(&a));
        assert_eq!(
            refs.unregister("p2"),
            Changes {
                start: vec![],
                stop: vec![a.clone()]
            }
        );
        assert_eq!(
            refs.unregister("p2"),
            Changes::default(),
            "unregistering twice is harmless"
        );
        assert_eq!(
            refs.unregister("p1"),
            Changes {
                start: vec![],
                stop: vec![c.clone()]
            }
        );
        assert!(!refs.is_referenced(&a) && !refs.is_referenced(&c));
        assert_eq!(refs.unregister("never"), Changes::default());
    }

    fn cm(name: &str, value: &str, immutable: Option<bool>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("k".to_owned(), value.to_owned())])),
            immutable,
            ..ConfigMap::default()
        }
    }

    fn value(cached: Option<Cached>) -> Option<Option<String>> {
        match cached? {
            Cached::Unsynced => None,
            Cached::Synced(None) => Some(None),
            Cached::Synced(Some(o)) => {
                let cm = ConfigMap::from_object(&o).expect("a configMap");
                Some(cm.data.as_ref().and_then(|d| d.get("k")).cloned())
            }
        }
    }

    #[test]
    fn a_list_counts_only_when_complete_and_changes_follow() {
        let mut l = Listing::default();
        assert!(value(l.apply::<ConfigMap>("x", Event::Init)).is_none());
        assert!(
            value(l.apply("x", Event::InitApply(cm("x", "1", None)))).is_none(),
            "a partial list is not what the object is"
        );
        assert_eq!(
            value(l.apply::<ConfigMap>("x", Event::InitDone)),
            Some(Some("1".to_owned()))
        );
        assert_eq!(
            value(l.apply("x", Event::Apply(cm("x", "2", None)))),
            Some(Some("2".to_owned()))
        );
        assert_eq!(
            value(l.apply("x", Event::Apply(cm("other", "3", None)))),
            None,
            "another object is not this one"
        );
        assert_eq!(
            value(l.apply("x", Event::Delete(cm("x", "2", None)))),
            Some(None)
        );
        // A relist that finds nothing: the object is gone.
        l.apply::<ConfigMap>("x", Event::Init);
        assert_eq!(
            value(l.apply::<ConfigMap>("x", Event::InitDone)),
            Some(None)
        );
    }

    #[test]
    fn immutable_objects_are_known_as_such() {
        assert!(cm("x", "1", Some(true)).into_object().is_immutable());
        assert!(!cm("x", "1", Some(false)).into_object().is_immutable());
        assert!(!cm("x", "1", None).into_object().is_immutable());
        let secret = Secret {
            immutable: Some(true),
            ..Secret::default()
        };
        assert!(secret.into_object().is_immutable());
    }
}
