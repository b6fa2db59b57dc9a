//! The status manager: what the agent publishes about each pod (its spec and metadata with
//! the latest `status`, as the pod's worker computed it), and where that goes.
//!
//! Pod workers publish through a [`StatusManager`] handle; it hands each pod, shared behind
//! an `Arc` (one copy per publish, whatever the number of sinks), to every [`StatusSink`].
//! Today there is one sink: the local pod list ([`pod_list`]), which `/pods`, `/metrics`
//! and eviction read through [`PodList`] handles. Cluster mode adds the API server as one
//! more sink.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::Pod;

/// Where published pods go. Called on the publishing worker's task: it must return at once
/// (hand slow work, such as a request to an API server, to a task of its own).
pub trait StatusSink: Send + Sync {
    /// The pod with this UID as published now (spec, metadata and `status`).
    fn publish(&self, uid: &str, pod: &Arc<Pod>);
    /// The pod with this UID is gone (terminated and cleaned up).
    fn remove(&self, uid: &str);
}

/// The pod workers' handle: publishes to every sink. Cloning is cheap.
#[derive(Clone)]
pub struct StatusManager {
    sinks: Arc<[Arc<dyn StatusSink>]>,
}

impl fmt::Debug for StatusManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusManager")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl StatusManager {
    #[must_use]
    pub fn new(sinks: Vec<Arc<dyn StatusSink>>) -> Self {
        Self {
            sinks: sinks.into(),
        }
    }

    /// Publishes the pod with this UID (replacing what was published before).
    pub fn publish(&self, uid: &str, pod: Pod) {
        let pod = Arc::new(pod);
        for sink in self.sinks.iter() {
            sink.publish(uid, &pod);
        }
    }

    /// Unpublishes the pod with this UID.
    pub fn remove(&self, uid: &str) {
        for sink in self.sinks.iter() {
            sink.remove(uid);
        }
    }
}

type Pods = Arc<RwLock<BTreeMap<String, Arc<Pod>>>>;

/// The local pod list: the sink a [`StatusManager`] writes, and the read handle on it.
#[must_use]
pub fn pod_list() -> (Arc<dyn StatusSink>, PodList) {
    let pods = Pods::default();
    (Arc::new(PodListSink(Arc::clone(&pods))), PodList { pods })
}

/// The local pod list as a [`StatusSink`].
struct PodListSink(Pods);

impl StatusSink for PodListSink {
    fn publish(&self, uid: &str, pod: &Arc<Pod>) {
        write(&self.0).insert(uid.to_owned(), Arc::clone(pod));
    }

    fn remove(&self, uid: &str) {
        write(&self.0).remove(uid);
    }
}

/// Reads the published pods, by UID. Cloning is cheap and clones read the same list. Every
/// method holds the lock only for a map operation (and `Arc` clones); the default reads an
/// empty list nothing publishes to.
#[derive(Clone, Default)]
pub struct PodList {
    pods: Pods,
}

impl fmt::Debug for PodList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(read(&self.pods).keys()).finish()
    }
}

impl PodList {
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        read(&self.pods).get(uid).cloned()
    }

    /// Every pod, by UID (shared, not copied).
    #[must_use]
    pub fn list(&self) -> Vec<Arc<Pod>> {
        read(&self.pods).values().cloned().collect()
    }

    /// `f` of every pod (by UID) where it gives something, without copying the others.
    pub fn filter_map<T>(&self, f: impl FnMut(&Arc<Pod>) -> Option<T>) -> Vec<T> {
        read(&self.pods).values().filter_map(f).collect()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        read(&self.pods).len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        read(&self.pods).is_empty()
    }
}

// A panic while holding the lock cannot leave the map half-updated (every write is one
// insert or remove), so a poisoned lock is still good to use.
fn read(pods: &Pods) -> RwLockReadGuard<'_, BTreeMap<String, Arc<Pod>>> {
    pods.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(pods: &Pods) -> RwLockWriteGuard<'_, BTreeMap<String, Arc<Pod>>> {
    pods.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn pod(name: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod
    }

    /// A sink that remembers what it was told.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl StatusSink for Log {
        fn publish(&self, uid: &str, pod: &Arc<Pod>) {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            self.0.lock().unwrap().push(format!("publish {uid} {name}"));
        }

        fn remove(&self, uid: &str) {
            self.0.lock().unwrap().push(format!("remove {uid}"));
        }
    }

    #[test]
    fn the_pod_list_shows_the_latest_publish_of_each_pod_by_uid() {
        let (sink, pods) = pod_list();
        let manager = StatusManager::new(vec![sink]);
        assert!(pods.is_empty());
        manager.publish("uid-b", pod("web-b"));
        manager.clone().publish("uid-a", pod("web-a"));
        manager.publish("uid-a", pod("web-a2"));
        let reader = pods.clone();
        assert_eq!(reader.len(), 2, "clones read the same list");
        let names: Vec<_> = reader
            .list()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["web-a2", "web-b"], "by uid, latest publish");
        assert_eq!(
            pods.filter_map(|p| p.metadata.name.clone().filter(|n| n.ends_with('b'))),
            ["web-b"]
        );
        manager.remove("uid-a");
        manager.remove("uid-a");
        assert_eq!(pods.get("uid-a"), None);
        assert!(pods.get("uid-b").is_some());
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn every_sink_gets_the_same_published_pod() {
        let (list, pods) = pod_list();
        let log = Arc::new(Log::default());
        let manager = StatusManager::new(vec![list, Arc::clone(&log) as Arc<dyn StatusSink>]);
        manager.publish("u1", pod("web"));
        manager.remove("u1");
        manager.publish("u2", pod("db"));
        assert_eq!(
            *log.0.lock().unwrap(),
            ["publish u1 web", "remove u1", "publish u2 db"]
        );
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn a_published_pod_is_shared_not_copied() {
        let (sink, pods) = pod_list();
        let manager = StatusManager::new(vec![sink]);
        manager.publish("u1", pod("web"));
        let a = pods.get("u1").expect("published");
        let b = pods.list().pop().expect("listed");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
