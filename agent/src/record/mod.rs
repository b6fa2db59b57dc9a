//! Kubernetes events (`v1.Event`) the agent records about pods and the node. (Not to be
//! confused with [`crate::events`], the kernel's events.)
//!
//! Events are keyed by object reference, as kube-runtime's `Recorder` is: whoever makes an
//! event holds a cheap [`Recorder`] handle and names the object with an `ObjectReference`
//! ([`pod_reference`], [`container_reference`], [`node_reference`]), so nothing needs the
//! whole object. The sink today
//! is a bounded ring (1,000 events; a repeat within 10 minutes counts on the event it repeats,
//! as upstream's correlator does), which the local API serves on `/events` through an
//! [`Events`] read handle. An [`EventSink`] ([`Recorder::with_sink`]) also gets every event:
//! in cluster mode, the API server's (`cluster::events`).

mod log;

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};

pub use self::log::EVENT_CAPACITY;
use self::log::EventLog;

/// `Normal` or `Warning`, as upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where recorded events go besides the local ring (cluster mode: the API server). Called on
/// the recording task with the event as kept (new, or the one it repeats with its count
/// grown): it must return at once.
pub trait EventSink: Send + Sync {
    fn record(&self, event: &Event);
}

/// Records events, reported by this node. Cloning is cheap and clones share the sink.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<EventLog>,
    sink: Option<Arc<dyn EventSink>>,
    /// The node name: the events' reporting instance and source host.
    reporter: Arc<str>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder whose events say they come from `node_name`, with a sink of its own.
    #[must_use]
    pub fn new(node_name: &str) -> Self {
        Self {
            log: Arc::default(),
            sink: None,
            reporter: Arc::from(node_name),
        }
    }

    /// The same recorder, also handing every event to `sink`.
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Records an event about `object` and logs it (a repeat at debug). Returns at once: it
    /// takes one lock for a map lookup and an insert.
    pub fn record(&self, object: &ObjectReference, kind: EventType, reason: &str, message: &str) {
        let event = self
            .log
            .record(object, kind, reason, message, &self.reporter);
        if let Some(sink) = &self.sink {
            sink.record(&event);
        }
    }

    /// The read side of the events this recorder (and its clones) recorded.
    #[must_use]
    pub fn events(&self) -> Events {
        Events {
            log: Arc::clone(&self.log),
        }
    }
}

/// Reads the events a [`Recorder`] recorded. Cheap to clone. The default reads an empty
/// sink no recorder writes to.
#[derive(Clone, Default)]
pub struct Events {
    log: Arc<EventLog>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Every kept event, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<Event> {
        self.log.list()
    }
}

/// The reference of a pod, as upstream's events name it: kind `Pod`, apiVersion `v1`, its
/// namespace, name and uid.
#[must_use]
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        api_version: Some("v1".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The reference of one container of a pod, as upstream's kubelet names it in container
/// events (`Pulled`, `Created`, `Killing`, `BackOff`, ...): the pod's reference with the
/// field path `spec.containers{<name>}`, or `spec.initContainers{<name>}` for an init
/// container.
#[must_use]
pub fn container_reference(pod: &Pod, container: &str) -> ObjectReference {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == container));
    let list = if init { "initContainers" } else { "containers" };
    ObjectReference {
        field_path: Some(format!("spec.{list}{{{container}}}")),
        ..pod_reference(pod)
    }
}

/// The reference of the node, as upstream's kubelet names it in events: kind `Node`, its
/// name, and the name again as uid.
#[must_use]
pub fn node_reference(node_name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(node_name.to_owned()),
        uid: Some(node_name.to_owned()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, namespace: &str, uid: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.uid = Some(uid.into());
        pod
    }

    #[test]
    fn references_name_pods_and_the_node_as_upstream() {
        let json = |r: &ObjectReference| serde_json::to_string(r).expect("json");
        assert_eq!(
            json(&pod_reference(&pod("web", "team", "u1"))),
            r#"{"apiVersion":"v1","kind":"Pod","name":"web","namespace":"team","uid":"u1"}"#
        );
        assert_eq!(
            json(&node_reference("n1")),
            r#"{"kind":"Node","name":"n1","uid":"n1"}"#
        );
    }

    #[test]
    fn container_references_name_the_container_by_its_field_path() {
        let mut p = pod("web", "team", "u1");
        p.spec = Some(
            serde_json::from_value(serde_json::json!({
                "initContainers": [{"name": "setup"}],
                "containers": [{"name": "app"}],
            }))
            .expect("spec"),
        );
        let path = |c: &str| container_reference(&p, c).field_path;
        assert_eq!(path("app").as_deref(), Some("spec.containers{app}"));
        assert_eq!(path("setup").as_deref(), Some("spec.initContainers{setup}"));
        let app = container_reference(&p, "app");
        assert_eq!(
            (app.uid.as_deref(), app.name.as_deref(), app.kind.as_deref()),
            (Some("u1"), Some("web"), Some("Pod"))
        );
    }

    #[test]
    fn recorded_events_name_the_object_and_the_reporting_node() {
        let recorder = Recorder::new("n1");
        let events = recorder.events();
        let web = pod_reference(&pod("web", "team", "u1"));
        recorder.record(&web, EventType::Warning, "Failed", "Error: no image");
        recorder
            .clone()
            .record(&node_reference("n1"), EventType::Normal, "Tick", "tock");

        let list = events.list();
        assert_eq!(list.len(), 2, "clones share the sink: {list:#?}");
        let e = &list[0];
        assert_eq!(e.involved_object, web);
        assert_eq!(e.metadata.namespace.as_deref(), Some("team"));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("web.")),
            "{:?}",
            e.metadata.name
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("Failed"));
        assert_eq!(e.message.as_deref(), Some("Error: no image"));
        assert_eq!(e.reporting_instance.as_deref(), Some("n1"));
        assert_eq!(
            e.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("n1")
        );
        // A node is in no namespace; its events go to `default`, as upstream's.
        assert_eq!(list[1].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(list[1].type_.as_deref(), Some("Normal"));
    }

    #[test]
    fn a_repeat_counts_on_the_event_whoever_records_it() {
        let recorder = Recorder::new("n1");
        let web = pod_reference(&pod("web", "team", "u1"));
        for _ in 0..3 {
            recorder
                .clone()
                .record(&web, EventType::Warning, "Unhealthy", "probe failed");
        }
        let list = recorder.events().list();
        assert_eq!(list.len(), 1, "{list:#?}");
        assert_eq!(list[0].count, Some(3));
    }

    #[test]
    fn default_events_read_an_empty_sink() {
        let recorder = Recorder::new("n1");
        recorder.record(&node_reference("n1"), EventType::Normal, "Tick", "tock");
        assert!(Events::default().list().is_empty());
    }
}
