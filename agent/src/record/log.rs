//! The bounded ring of events the [`super::Recorder`] writes and `/events` serves (until
//! cluster mode posts events to an API server), with upstream's repeat counting.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

use super::EventType;

/// How many events are kept (oldest dropped first).
pub const EVENT_CAPACITY: usize = 1000;
/// Repeats of an event within this long of its last occurrence count on it (upstream's
/// correlator uses 10 minutes).
const AGGREGATE_WITHIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
    counter: std::sync::atomic::AtomicU64,
}

/// What a repeat must share with the event it repeats besides reason, message and type: the
/// object and the part of it (a container's field path), as upstream's correlator keys it.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct Object<'a> {
    uid: Option<&'a str>,
    field_path: Option<&'a str>,
}

impl<'a> Object<'a> {
    fn of(r: &'a ObjectReference) -> Self {
        Self {
            uid: r.uid.as_deref(),
            field_path: r.field_path.as_deref(),
        }
    }
}

/// The kept events, oldest first, and where the latest event of each kind (object and field
/// path, reason, message, type) sits, so a repeat is found without scanning up to 1,000
/// events (500 failing probes record 500 times a second).
#[derive(Default)]
struct Ring {
    /// Each event with the hash of its kind.
    events: VecDeque<(u64, Event)>,
    /// Sequence number of `events[0]`; the event at index `i` has `first + i`.
    first: u64,
    /// Hash of an event's kind -> sequence number of its latest event. A hash collision
    /// costs only a missed aggregation: the found event is compared field by field.
    latest: HashMap<u64, u64>,
    hasher: RandomState,
}

impl Ring {
    fn key(&self, object: Object<'_>, reason: &str, message: &str, kind: &str) -> u64 {
        self.hasher.hash_one((object, reason, message, kind))
    }

    /// The latest kept event of this kind.
    fn latest_mut(
        &mut self,
        key: u64,
        object: Object<'_>,
        reason: &str,
        message: &str,
        kind: &str,
    ) -> Option<&mut Event> {
        let seq = *self.latest.get(&key)?;
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.events.get_mut(index).map(|(_, e)| e).filter(|e| {
            Object::of(&e.involved_object) == object
                && e.reason.as_deref() == Some(reason)
                && e.message.as_deref() == Some(message)
                && e.type_.as_deref() == Some(kind)
        })
    }

    fn push(&mut self, key: u64, event: Event) {
        if self.events.len() == EVENT_CAPACITY
            && let Some((old_key, _)) = self.events.pop_front()
        {
            if self.latest.get(&old_key) == Some(&self.first) {
                self.latest.remove(&old_key);
            }
            self.first += 1;
        }
        let seq = self.first + self.events.len() as u64;
        self.events.push_back((key, event));
        self.latest.insert(key, seq);
    }
}

impl EventLog {
    /// Records an event about `involved` and logs it; `node` is the reporting instance.
    /// Returns the event as kept: new (count 1) or the one it repeats, counted.
    pub fn record(
        &self,
        involved: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
        node: &str,
    ) -> Event {
        let name_base = involved.name.as_deref().unwrap_or_default();
        let now = Timestamp::now();
        // The same event again (a probe failing every period): one event whose count and
        // last timestamp grow, as upstream's event correlator does; logged once.
        let object = Object::of(involved);
        let key = {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            let key = ring.key(object, reason, message, kind.as_str());
            if let Some(e) = ring.latest_mut(key, object, reason, message, kind.as_str())
                && e.last_timestamp
                    .as_ref()
                    .is_some_and(|t| now.duration_since(t.0) < AGGREGATE_WITHIN)
            {
                e.count = Some(e.count.unwrap_or(1) + 1);
                e.last_timestamp = Some(Time(now));
                tracing::debug!(object = %name_base, reason, count = e.count, "{message}");
                return e.clone();
            }
            key
        };
        match kind {
            EventType::Normal => tracing::info!(object = %name_base, reason, "{message}"),
            EventType::Warning => tracing::warn!(object = %name_base, reason, "{message}"),
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name_base}.{:x}{n:04x}", now.as_nanosecond())),
                namespace: involved
                    .namespace
                    .clone()
                    .or_else(|| Some("default".into())),
                ..ObjectMeta::default()
            },
            involved_object: involved.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(kind.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some("bpflet".into()),
            reporting_instance: Some(node.to_owned()),
            source: Some(EventSource {
                component: Some("bpflet".into()),
                host: Some(node.to_owned()),
            }),
            ..Event::default()
        };
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key, event.clone());
        event
    }

    /// Every kept event, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<Event> {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::record::{node_reference, pod_reference};

    #[test]
    fn records_pod_and_node_events_in_a_bounded_ring() {
        let log = EventLog::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("u1".into());
        log.record(
            &pod_reference(&pod),
            EventType::Warning,
            "ProcessOOMKilled",
            "pid 7 (dd) killed",
            "n1",
        );
        log.record(
            &node_reference("n1"),
            EventType::Warning,
            "SystemOOM",
            "System OOM encountered",
            "n1",
        );
        let events = log.list();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].reason.as_deref(), Some("ProcessOOMKilled"));
        assert_eq!(events[0].involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(events[0].type_.as_deref(), Some("Warning"));
        assert_eq!(events[1].involved_object.kind.as_deref(), Some("Node"));
        for i in 0..EVENT_CAPACITY {
            log.record(
                &node_reference("n1"),
                EventType::Normal,
                "Tick",
                &i.to_string(),
                "n1",
            );
        }
        let events = log.list();
        assert_eq!(events.len(), EVENT_CAPACITY);
        assert_eq!(
            events[0].message.as_deref(),
            Some("0"),
            "the oldest were dropped"
        );
    }

    #[test]
    fn repeats_count_on_one_event() {
        let log = EventLog::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.uid = Some("u1".into());
        let failed = |message: &str| {
            log.record(
                &pod_reference(&pod),
                EventType::Warning,
                "Unhealthy",
                message,
                "n1",
            );
        };
        failed("Readiness probe failed: connection refused");
        failed("Readiness probe failed: connection refused");
        failed("Liveness probe failed: HTTP probe failed with statuscode: 500");
        failed("Readiness probe failed: connection refused");
        let events = log.list();
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0].count, Some(3));
        assert!(events[0].last_timestamp > events[0].first_timestamp);
        assert_eq!(events[1].count, Some(1));
    }

    /// Upstream's correlator tells containers apart by field path: the same words about two
    /// containers of a pod are two events.
    #[test]
    fn repeats_are_per_container() {
        let log = EventLog::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(
            serde_json::from_value(serde_json::json!({
                "containers": [{"name": "a"}, {"name": "b"}],
            }))
            .expect("spec"),
        );
        for c in ["a", "b", "a"] {
            log.record(
                &crate::record::container_reference(&pod, c),
                EventType::Warning,
                "FailedPreStopHook",
                "PreStopHook failed",
                "n1",
            );
        }
        let events = log.list();
        let seen: Vec<(Option<&str>, Option<i32>)> = events
            .iter()
            .map(|e| (e.involved_object.field_path.as_deref(), e.count))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("spec.containers{a}"), Some(2)),
                (Some("spec.containers{b}"), Some(1))
            ]
        );
    }

    /// Repeats are found through the index wherever the event sits in the ring, and the
    /// index forgets what the ring dropped.
    #[test]
    fn repeats_are_found_across_the_ring_and_forgotten_with_it() {
        let log = EventLog::default();
        let node = |message: &str| {
            log.record(
                &node_reference("n1"),
                EventType::Warning,
                "Test",
                message,
                "n1",
            );
        };
        node("a");
        for i in 1..EVENT_CAPACITY {
            node(&i.to_string());
        }
        node("a");
        let events = log.list();
        assert_eq!(events.len(), EVENT_CAPACITY);
        assert_eq!(events[0].message.as_deref(), Some("a"), "oldest kept");
        assert_eq!(events[0].count, Some(2), "the repeat counted on the oldest");

        node("one more");
        node("a");
        let events = log.list();
        assert_eq!(events.len(), EVENT_CAPACITY);
        // "a" and "1" were dropped for the two new events.
        assert_eq!(events[0].message.as_deref(), Some("2"));
        let last = events.last().expect("events");
        assert_eq!(last.message.as_deref(), Some("a"));
        assert_eq!(
            last.count,
            Some(1),
            "a new event, not a dropped one's count"
        );
        let ring = log.ring.lock().expect("lock");
        assert_eq!(ring.latest.len(), EVENT_CAPACITY, "one entry per kept kind");
    }
}
