//! Events in the API server: the [`EventSink`] cluster mode gives the recorder, and the one
//! task that posts what it collects.
//!
//! - The recorder already aggregates (a repeat within 10 minutes is the same event with its
//!   count grown, as upstream's correlator does); a new event is created, a repeat of one
//!   already posted is patched (`count`, `lastTimestamp`), as upstream's kubelet does.
//! - Spam filter, as upstream's: per involved object, a bucket of 25 events refilled one per
//!   5 minutes; an event over it is dropped (the local `/events` still has it).
//! - The queue holds at most 1,000 events. While the API server is away (it cannot be
//!   reached, or answers 429 or 5xx) the event at the head is retried, 500 ms doubling to
//!   10 s, for as long as it takes, and the queue keeps what comes meanwhile; once it is full,
//!   newer events are dropped (a warning at the 1st, 2nd, 4th, 8th... drop). An event the
//!   API server refuses is tried three times, then dropped with a warning. Events never hold
//!   up a pod.
//! - Events are written the legacy way (`core/v1`, no `eventTime`), as the kubelet writes
//!   them: from `source.component: kubelet` on the node (`source.host`), which are also the
//!   reporting component and instance, so what selects kubelet events selects bpflet's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::status::is_transient;
use crate::record::EventSink;

/// Events waiting to be posted, at most.
pub const QUEUE: usize = 1000;
/// The spam filter's bucket per involved object.
const BURST: f64 = 25.0;
/// ... refilled one event per this long.
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Tries of an event the API server refuses.
const TRIES: u32 = 3;
/// The first retry of an event not posted; the delay doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between tries while the API server is away: how late the held events
/// may reach it once it is back.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The component the kubelet's events name as their source and reporter.
pub const COMPONENT: &str = "kubelet";

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
    /// The API server was away at the last try (warned once per outage).
    away: bool,
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
            away: false,
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
            let mut refused = 0;
            let mut delay = RETRY_FIRST;
            loop {
                match self.post(&event, repeat).await {
                    Ok(()) => {
                        if self.away {
                            info!("events reach the API server again");
                            self.away = false;
                        }
                        break;
                    }
                    Err(e) if is_transient(&e) => {
                        if !self.away {
                            warn!(error = %e, "cannot post events: the API server is away; holding them (at most {QUEUE})");
                            self.away = true;
                        }
                    }
                    Err(e) => {
                        refused += 1;
                        if refused == TRIES {
                            warn!(error = %e, reason = ?event.reason, object = ?event.involved_object.name, "the API server refused an event; dropped (kept on /events)");
                            break;
                        }
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
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
/// the API server validate it as a new-style event needing an `action`), from the
/// [`COMPONENT`] on the node (source and reporter).
fn legacy(event: &Event) -> Event {
    let mut event = event.clone();
    event.event_time = None;
    let host = event.source.as_ref().and_then(|s| s.host.clone());
    event.source = Some(EventSource {
        component: Some(COMPONENT.to_owned()),
        host: host.clone(),
    });
    event.reporting_component = Some(COMPONENT.to_owned());
    event.reporting_instance = host;
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
    fn events_are_posted_the_legacy_way_from_the_kubelet_on_the_node() {
        let event = Event {
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                jiff::Timestamp::UNIX_EPOCH,
            )),
            reporting_component: Some("bpflet".to_owned()),
            reporting_instance: Some("node-a".to_owned()),
            source: Some(EventSource {
                component: Some("bpflet".to_owned()),
                host: Some("node-a".to_owned()),
            }),
            reason: Some("OOMKilled".to_owned()),
            ..Event::default()
        };
        let posted = legacy(&event);
        assert!(posted.event_time.is_none());
        assert_eq!(posted.reason.as_deref(), Some("OOMKilled"));
        let source = posted.source.expect("source");
        assert_eq!(
            (source.component.as_deref(), source.host.as_deref()),
            (Some("kubelet"), Some("node-a"))
        );
        assert_eq!(
            (
                posted.reporting_component.as_deref(),
                posted.reporting_instance.as_deref()
            ),
            (Some("kubelet"), Some("node-a"))
        );
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
