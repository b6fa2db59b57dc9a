//! The API server as a pod source: one watch on the pods bound to this node
//! (`spec.nodeName=<node>`), turned into snapshots of the whole set, as the static sources
//! send theirs.
//!
//! - The first snapshot goes out only once the initial list is complete, so the pod manager
//!   never takes a partial list for the truth (and terminates what it did not see).
//! - A relist (after the watch expired or the API server was away) replaces the set at once
//!   when it completes; meanwhile the last complete set holds, so an outage stops nothing.
//! - Mirror pods (bpflet's own reflection of its static pods) are in the set, for the status
//!   writer to check their status against what it wrote, but are not pods to run (the
//!   consumer leaves them out: [`is_mirror`]).
//! - Each pod is marked `kubernetes.io/config.source: api`, as upstream marks the pods of this
//!   source, so status writers can tell where a pod came from.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::status::{API_SOURCE, mirror_hash};
use crate::model::CONFIG_SOURCE_ANNOTATION;

/// The pods bound to the node, keyed by UID; applies watch events and says when the set
/// a consumer should see changed.
#[derive(Debug, Default)]
pub struct BoundPods {
    pods: BTreeMap<String, Pod>,
    /// A relist in progress.
    relisting: Option<BTreeMap<String, Pod>>,
    listed: bool,
}

impl BoundPods {
    /// Applies one watch event; `true` when the complete set changed.
    pub fn apply(&mut self, event: Event<Pod>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(pod) => {
                if let (Some(relisting), Some((uid, pod))) = (self.relisting.as_mut(), keyed(pod)) {
                    relisting.insert(uid, pod);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let first = !self.listed;
                self.listed = true;
                let changed = first || listed != self.pods;
                self.pods = listed;
                changed
            }
            Event::Apply(pod) => match keyed(pod) {
                Some((uid, pod)) => self
                    .pods
                    .insert(uid, pod.clone())
                    .is_none_or(|old| old != pod),
                None => false,
            },
            Event::Delete(pod) => {
                let uid = pod.metadata.uid.unwrap_or_default();
                self.pods.remove(&uid).is_some()
            }
        }
    }

    /// The complete set, or `None` before the first list completed.
    #[must_use]
    pub fn snapshot(&self) -> Option<Vec<Pod>> {
        self.listed.then(|| self.pods.values().cloned().collect())
    }
}

/// A mirror pod: bpflet's reflection of one of its static pods, not a pod to run.
#[must_use]
pub fn is_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
}

/// The pod keyed by UID, marked with its source unless it is a mirror pod; `None` for a pod
/// without UID.
fn keyed(mut pod: Pod) -> Option<(String, Pod)> {
    let uid = pod.metadata.uid.clone().filter(|u| !u.is_empty())?;
    if !is_mirror(&pod) {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(CONFIG_SOURCE_ANNOTATION.to_owned(), API_SOURCE.to_owned());
    }
    Some((uid, pod))
}

/// Watches the pods bound to `node_name` until `cancel`; each complete set goes to the
/// returned receiver (`None` until the first list completed).
pub fn watch_bound_pods(
    client: kube::Client,
    node_name: &str,
    cancel: CancellationToken,
) -> (
    impl Future<Output = ()> + Send + 'static,
    watch::Receiver<Option<Vec<Pod>>>,
) {
    let (tx, rx) = watch::channel(None);
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let node = node_name.to_owned();
    let task = async move {
        let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut pods = BoundPods::default();
        let mut failing = false;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                None => return,
                Some(Ok(event)) => {
                    if failing {
                        info!(node = %node, "pod watch resumed");
                        failing = false;
                    }
                    if pods.apply(event) {
                        let snapshot = pods.snapshot();
                        debug!(
                            pods = snapshot.as_ref().map_or(0, Vec::len),
                            "API pods changed"
                        );
                        tx.send_replace(snapshot);
                    }
                }
                Some(Err(e)) => {
                    if !failing {
                        warn!(node = %node, error = %e, "pod watch failed; the pods last seen keep running; retrying");
                        failing = true;
                    }
                }
            }
        }
    };
    (task, rx)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(uid: &str, image: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("default".to_owned()),
                uid: Some(uid.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "c".to_owned(),
                    image: Some(image.to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn uids(pods: &BoundPods) -> Option<Vec<String>> {
        pods.snapshot()
            .map(|p| p.into_iter().filter_map(|p| p.metadata.uid).collect())
    }

    #[test]
    fn nothing_is_seen_before_the_first_list_completes() {
        let mut pods = BoundPods::default();
        assert!(!pods.apply(Event::Init));
        assert!(!pods.apply(Event::InitApply(pod("a", "x"))));
        assert_eq!(uids(&pods), None, "a partial list is not the truth");
        assert!(pods.apply(Event::InitDone));
        assert_eq!(uids(&pods), Some(vec!["a".to_owned()]));
        let a = &pods.snapshot().expect("listed")[0];
        assert_eq!(
            a.metadata.annotations.as_ref().expect("annotated")[CONFIG_SOURCE_ANNOTATION],
            API_SOURCE
        );
    }

    #[test]
    fn an_empty_first_list_is_still_a_snapshot() {
        let mut pods = BoundPods::default();
        pods.apply(Event::Init);
        assert!(
            pods.apply(Event::InitDone),
            "the first list counts even when empty"
        );
        assert_eq!(uids(&pods), Some(vec![]));
    }

    #[test]
    fn changes_apply_and_a_relist_replaces_the_set_only_when_complete() {
        let mut pods = BoundPods::default();
        pods.apply(Event::Init);
        pods.apply(Event::InitApply(pod("a", "x")));
        pods.apply(Event::InitDone);

        assert!(pods.apply(Event::Apply(pod("b", "x"))));
        assert!(
            !pods.apply(Event::Apply(pod("b", "x"))),
            "an identical copy changes nothing"
        );
        assert!(pods.apply(Event::Apply(pod("b", "y"))));
        assert!(pods.apply(Event::Delete(pod("a", "x"))));
        assert_eq!(uids(&pods), Some(vec!["b".to_owned()]));

        // The watch expired: while the relist runs, the last complete set holds.
        pods.apply(Event::Init);
        pods.apply(Event::InitApply(pod("c", "x")));
        assert_eq!(uids(&pods), Some(vec!["b".to_owned()]));
        assert!(pods.apply(Event::InitDone));
        assert_eq!(uids(&pods), Some(vec!["c".to_owned()]));
    }

    #[test]
    fn mirror_pods_are_in_the_set_unmarked_and_known_as_mirrors() {
        let mut mirror = pod("m", "x");
        mirror.metadata.annotations = Some(BTreeMap::from([(
            super::super::status::MIRROR_ANNOTATION.to_owned(),
            "hash".to_owned(),
        )]));
        let mut pods = BoundPods::default();
        pods.apply(Event::Init);
        pods.apply(Event::InitApply(mirror.clone()));
        pods.apply(Event::InitApply(pod("a", "x")));
        pods.apply(Event::InitDone);
        let mut changed = mirror.clone();
        changed.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".to_owned()),
            ..Default::default()
        });
        assert!(
            pods.apply(Event::Apply(changed)),
            "a mirror pod's status change is seen (the status writer checks it)"
        );
        let snapshot = pods.snapshot().expect("listed");
        let (mirrors, others): (Vec<&Pod>, Vec<&Pod>) = snapshot.iter().partition(|p| is_mirror(p));
        assert_eq!(mirrors.len(), 1);
        assert!(
            !mirrors[0]
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CONFIG_SOURCE_ANNOTATION)),
            "a mirror pod is not marked as a pod of the api source"
        );
        assert_eq!(others.len(), 1);
    }
}
