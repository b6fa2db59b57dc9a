//! Events in the API server: the [`EventSink`] cluster mode gives the recorder, and the one
//! task that posts what it collects.
//!
//! - The recorder already aggregates (a repeat within 10 minutes is the same event with its
//!   count grown, as upstream's correlator does); a new event is created, a repeat of one
//!   already posted is patched (`count`, `lastTimestamp`), as upstream's kubelet does.
//! - Spam filter, as upstream's: per involved object, a bucket of 25 events refilled one per
//!   5 minutes; an event over it is dropped (the local `/events` still has it).
//! - The queue holds at most 1,000 events; when the API server is slow or away, newer
//!   events are dropped (a warning at the 1st, 2nd, 4th, 8th... drop), and a failed write is
//!   retried twice, then dropped. Events never hold up a pod.
//! - Events are written the legacy way (`core/v1`, no `eventTime`), as the kubelet writes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::record::EventSink;

/// Events waiting to be posted, at most.
pub const QUEUE: usize = 1000;
/// The spam filter's bucket per involved object.
const BURST: f64 = 25.0;
/// ... refilled one event per this long.
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Tries per event.
const TRIES: u32 = 3;

/// The API server as an [`EventSink`].
#[derive(Debug, Clone)]
pub struct ApiEventSink {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventSink for ApiEventSink {
    fn record(&self, event: &Event) {
        if self.tx.try_send(event.clone()).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "the API server does not take events fast enough; events dropped (kept on /events)"
                );
            }
        }
    }
}

/// Posts events; one task.
pub struct EventWriter {
    client: kube::Client,
    rx: mpsc::Receiver<Event>,
    filter: SpamFilter,
    /// Events posted: name -> namespace, so a repeat is patched.
    posted: HashMap<String, String>,
}

/// The sink for the recorder and the writer to spawn.
#[must_use]
pub fn api_events(client: kube::Client) -> (ApiEventSink, EventWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        ApiEventSink {
            tx,
            dropped: Arc::default(),
        },
        EventWriter {
            client,
            rx,
            filter: SpamFilter::default(),
            posted: HashMap::new(),
        },
    )
}

impl EventWriter {
    /// Posts until `cancel` (or every sink is gone).
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = self.rx.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let repeat = event
                .metadata
                .name
                .as_ref()
                .is_some_and(|n| self.posted.contains_key(n));
            let object = event.involved_object.uid.clone().unwrap_or_default();
            if !self.filter.allow(&object, Instant::now()) {
                debug!(reason = ?event.reason, object = %object, "event over the per-object rate; not posted");
                continue;
            }
            for attempt in 1..=TRIES {
                match self.post(&event, repeat).await {
                    Ok(()) => break,
                    Err(e) if attempt == TRIES => {
                        debug!(error = %e, reason = ?event.reason, "event not posted; dropped");
                    }
                    Err(_) => {
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_millis(500) * attempt) => {}
                        }
                    }
                }
            }
        }
    }

    async fn post(&mut self, event: &Event, repeat: bool) -> Result<(), kube::Error> {
        let namespace = event
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if repeat {
            let patch = serde_json::json!({
                "count": event.count,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (events expire after an hour): post it again.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        match api.create(&PostParams::default(), &legacy(event)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        if self.posted.len() >= 4 * QUEUE {
            self.posted.clear();
        }
        self.posted.insert(name, namespace);
        Ok(())
    }
}

/// The event as the kubelet writes it to `core/v1`: without `eventTime` (which would make
/// the API server validate it as a new-style event needing an `action`).
fn legacy(event: &Event) -> Event {
    let mut event = event.clone();
    event.event_time = None;
    event.reporting_component = None;
    event.reporting_instance = None;
    event
}

/// Upstream's per-object spam filter: a token bucket per involved object.
#[derive(Debug, Default)]
struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    fn allow(&mut self, object: &str, now: Instant) -> bool {
        if self.buckets.len() > 4096 {
            // Forget full buckets of objects quiet long enough to have refilled.
            self.buckets
                .retain(|_, (_, at)| now.duration_since(*at) < REFILL_EVERY.mul_f64(BURST));
        }
        let (tokens, at) = self
            .buckets
            .entry(object.to_owned())
            .or_insert((BURST, now));
        let refilled = now.duration_since(*at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        *tokens = (*tokens + refilled).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spam_filter_allows_a_burst_per_object_then_one_per_five_minutes() {
        let mut filter = SpamFilter::default();
        let t0 = Instant::now();
        let allowed = (0..40).filter(|_| filter.allow("pod-a", t0)).count();
        assert_eq!(allowed, 25);
        assert!(
            filter.allow("pod-b", t0),
            "another object has its own bucket"
        );
        assert!(!filter.allow("pod-a", t0 + Duration::from_secs(299)));
        assert!(filter.allow("pod-a", t0 + Duration::from_secs(301)));
        assert!(!filter.allow("pod-a", t0 + Duration::from_secs(302)));
    }

    #[test]
    fn events_are_posted_the_legacy_way() {
        let event = Event {
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                jiff::Timestamp::UNIX_EPOCH,
            )),
            reporting_component: Some("bpflet".to_owned()),
            reporting_instance: Some("node-a".to_owned()),
            reason: Some("OOMKilled".to_owned()),
            ..Event::default()
        };
        let posted = legacy(&event);
        assert!(posted.event_time.is_none() && posted.reporting_component.is_none());
        assert_eq!(posted.reason.as_deref(), Some("OOMKilled"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = ApiEventSink {
            tx,
            dropped: Arc::default(),
        };
        sink.record(&Event::default());
        sink.record(&Event::default());
        sink.record(&Event::default());
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 2);
    }
}
