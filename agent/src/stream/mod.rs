//! The agent's event stream: every attributed kernel event gets a sequence number, goes
//! into a bounded replay buffer and a bounded per-pod timeline, and is fanned out to the
//! `Watch` subscribers of [`service`] whose filter it matches.
//!
//! The fan-out never waits: each subscriber has its own bounded queue, filled with
//! `try_send`; when it is full the event is dropped for that subscriber alone and counted,
//! and the subscriber's stream yields an `EventsLost` with that count (`userspace`) before
//! the next event it reads. The kernel path (the router that calls [`Hub::publish`]) and
//! the other subscribers do not notice a slow one.

pub mod filter;
pub mod service;
pub mod timeline;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::mpsc;

use crate::events::{Detail, Event, Kind, Source};
use crate::status::manager::PodList;
pub use filter::{Selector, SelectorError, WatchFilter};
use timeline::Timelines;

/// Who an event is about, beyond the cgroup's pod UID and container id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container's name in the spec, once the runtime has reported its id.
    pub container_name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Where the hub looks pods up by UID (the published pod list in the agent).
pub trait PodDirectory: Send + Sync {
    fn lookup(&self, uid: &str, container_id: Option<&str>) -> Option<PodIdentity>;
    /// Whether the pod is still known (timelines of other pods are dropped).
    fn exists(&self, uid: &str) -> bool;
    /// The UID of the pod `namespace`/`name`.
    fn find(&self, namespace: &str, name: &str) -> Option<String>;
}

impl PodDirectory for PodList {
    fn lookup(&self, uid: &str, container_id: Option<&str>) -> Option<PodIdentity> {
        let pod = self.get(uid)?;
        Some(identity_of(&pod, container_id))
    }

    fn exists(&self, uid: &str) -> bool {
        self.get(uid).is_some()
    }

    fn find(&self, namespace: &str, name: &str) -> Option<String> {
        self.filter_map(|p| {
            let m = &p.metadata;
            (m.namespace.as_deref().unwrap_or("default") == namespace
                && m.name.as_deref() == Some(name))
            .then(|| m.uid.clone())
            .flatten()
        })
        .into_iter()
        .next()
    }
}

/// The identity of `pod`; the container named by matching `container_id` against the
/// ids its status reports (`<runtime>://<id>`).
#[must_use]
pub fn identity_of(pod: &Pod, container_id: Option<&str>) -> PodIdentity {
    let meta = &pod.metadata;
    let container_name = container_id.and_then(|id| {
        let status = pod.status.as_ref()?;
        [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .find(|s| {
            s.container_id
                .as_deref()
                .and_then(|c| c.rsplit_once("://"))
                .is_some_and(|(_, c)| c == id)
        })
        .map(|s| s.name.clone())
    });
    PodIdentity {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        container_name,
        labels: meta.labels.clone().unwrap_or_default(),
    }
}

/// One event of the stream.
#[derive(Debug)]
pub struct Published {
    /// 1, 2, 3, ... per agent run; 0 for a loss report made for one subscriber.
    pub sequence: u64,
    pub event: Event,
    pub pod: Option<PodIdentity>,
}

/// What a subscriber reads: stream events, and reports of what it missed.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Arc<Published>),
    /// `dropped`: its queue was full; `not_replayed`: a resume point no longer buffered;
    /// `run_changed`: the resume point was of another agent run.
    Missed {
        dropped: u64,
        not_replayed: u64,
        run_changed: bool,
    },
}

pub use crate::config::event_stream::HubLimits;

/// The stream's metrics: `bpflet_event_subscribers` and
/// `bpflet_event_subscriber_dropped_total` (summed over subscribers: no per-subscriber label).
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    pub subscribers: IntGauge,
    pub dropped: IntCounter,
    pub published: IntCounter,
}

impl StreamMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            subscribers: IntGauge::new(
                "bpflet_event_subscribers",
                "Watch subscribers of the event stream connected now",
            )?,
            dropped: IntCounter::new(
                "bpflet_event_subscriber_dropped_total",
                "Events dropped for slow Watch subscribers (their queue was full), summed over subscribers",
            )?,
            published: IntCounter::new(
                "bpflet_event_stream_events_total",
                "Events numbered and published on the event stream",
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.subscribers.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.published.clone()))
    }
}

struct Subscriber {
    id: u64,
    filter: WatchFilter,
    tx: mpsc::Sender<Arc<Published>>,
    dropped: Arc<AtomicU64>,
}

struct State {
    next_sequence: u64,
    next_subscriber: u64,
    replay: VecDeque<Arc<Published>>,
    subscribers: Vec<Subscriber>,
    timelines: Timelines,
}

struct Inner {
    run_id: String,
    limits: HubLimits,
    pods: Arc<dyn PodDirectory>,
    metrics: StreamMetrics,
    state: Mutex<State>,
}

/// The stream's fan-out point. Cloning is cheap; clones publish to the same subscribers.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("run_id", &self.inner.run_id)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Where a subscriber starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// The last sequence number the client saw.
    pub since: u64,
    /// The run `since` counts in; `None`: the current one.
    pub run_id: Option<String>,
}

/// A subscriber's end: the replayed items, then the live queue.
pub struct Subscription {
    pub backlog: VecDeque<Item>,
    rx: mpsc::Receiver<Arc<Published>>,
    dropped: Arc<AtomicU64>,
    guard: SubscriberGuard,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}

/// Removes the subscriber from the hub when its stream is dropped (the client left).
struct SubscriberGuard {
    hub: Hub,
    id: u64,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        let before = state.subscribers.len();
        state.subscribers.retain(|s| s.id != self.id);
        if state.subscribers.len() < before {
            self.hub.inner.metrics.subscribers.dec();
        }
    }
}

impl Subscription {
    /// What is owed before the next queued event: the replay backlog, then the count of
    /// events dropped since the last read.
    fn pending(&mut self) -> Option<Item> {
        if let Some(item) = self.backlog.pop_front() {
            return Some(item);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        (dropped > 0).then_some(Item::Missed {
            dropped,
            not_replayed: 0,
            run_changed: false,
        })
    }

    /// The next item: the backlog first; then, before each live event, what was dropped
    /// since the last read. `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Item> {
        if let Some(item) = self.pending() {
            return Some(item);
        }
        let ev = self.rx.recv().await?;
        // Drops counted while this one waited in the queue happened after it: they are
        // reported before the next read.
        Some(Item::Event(ev))
    }

    /// Like [`Self::next`] without waiting: `None` when nothing is queued.
    pub fn try_next(&mut self) -> Option<Item> {
        if let Some(item) = self.pending() {
            return Some(item);
        }
        self.rx.try_recv().ok().map(Item::Event)
    }
}

/// A fresh run id: 16 hex digits from the clock and the process id.
fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    #[expect(
        clippy::cast_possible_truncation,
        reason = "only the low bits vary between runs"
    )]
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40) ^ fastrand::u64(..);
    format!("{mixed:016x}")
}

impl Hub {
    #[must_use]
    pub fn new(limits: HubLimits, pods: Arc<dyn PodDirectory>, metrics: StreamMetrics) -> Self {
        let limits = HubLimits {
            queue: limits.queue.max(1),
            timeline: limits.timeline.max(1),
            ..limits
        };
        Self {
            inner: Arc::new(Inner {
                run_id: new_run_id(),
                limits,
                pods,
                metrics,
                state: Mutex::new(State {
                    next_sequence: 1,
                    next_subscriber: 0,
                    replay: VecDeque::with_capacity(limits.replay.min(4096)),
                    subscribers: Vec::new(),
                    timelines: Timelines::new(limits.timeline),
                }),
            }),
        }
    }

    #[must_use]
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one push
        // or one counter): keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers `event` (already attributed), records it and hands it to every subscriber
    /// whose filter matches, without waiting for any. Returns its sequence number.
    pub fn publish(&self, event: Event) -> u64 {
        let pod = event.pod.as_ref().and_then(|p| {
            self.inner
                .pods
                .lookup(&p.pod_uid, p.container_id.as_deref())
        });
        let mut state = self.lock();
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let published = Arc::new(Published {
            sequence,
            event,
            pod,
        });
        if self.inner.limits.replay > 0 {
            if state.replay.len() == self.inner.limits.replay {
                state.replay.pop_front();
            }
            state.replay.push_back(Arc::clone(&published));
        }
        if let Some(pod) = &published.pod
            && timeline::kept(published.event.kind())
        {
            let pods = &self.inner.pods;
            state
                .timelines
                .record(&pod.uid, Arc::clone(&published), |uid| pods.exists(uid));
        }
        let metrics = &self.inner.metrics;
        metrics.published.inc();
        let mut closed = 0;
        state.subscribers.retain(|s| {
            if !s.filter.matches(&published.event, published.pod.as_ref()) {
                return true;
            }
            match s.tx.try_send(Arc::clone(&published)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics.dropped.inc();
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    closed += 1;
                    false
                }
            }
        });
        metrics.subscribers.sub(closed);
        sequence
    }

    /// A new subscriber with `filter`; with `resume`, the buffered events after it that
    /// match come first (and a [`Item::Missed`] for those no longer buffered).
    #[must_use]
    pub fn subscribe(&self, filter: WatchFilter, resume: Option<&Resume>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.limits.queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut state = self.lock();
        let mut backlog = VecDeque::new();
        if let Some(resume) = resume {
            let run_changed = resume
                .run_id
                .as_deref()
                .is_some_and(|r| r != self.inner.run_id);
            // In another run, everything of this run is after the resume point.
            let since = if run_changed { 0 } else { resume.since };
            let oldest = state
                .replay
                .front()
                .map_or(state.next_sequence, |p| p.sequence);
            // Events since+1 .. oldest-1 are gone (for this run); never beyond what was numbered.
            let not_replayed = oldest
                .min(state.next_sequence)
                .saturating_sub(since.saturating_add(1));
            if not_replayed > 0 || run_changed {
                backlog.push_back(Item::Missed {
                    dropped: 0,
                    not_replayed,
                    run_changed,
                });
            }
            backlog.extend(
                state
                    .replay
                    .iter()
                    .filter(|p| p.sequence > since)
                    .filter(|p| filter.matches(&p.event, p.pod.as_ref()))
                    .map(|p| Item::Event(Arc::clone(p))),
            );
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.push(Subscriber {
            id,
            filter,
            tx,
            dropped: Arc::clone(&dropped),
        });
        drop(state);
        self.inner.metrics.subscribers.inc();
        Subscription {
            backlog,
            rx,
            dropped,
            guard: SubscriberGuard {
                hub: self.clone(),
                id,
            },
        }
    }

    /// The timeline of the pod `uid`, oldest first, and how many entries it dropped.
    #[must_use]
    pub fn timeline(&self, uid: &str) -> Option<(Vec<Arc<Published>>, u64)> {
        let pods = &self.inner.pods;
        let mut state = self.lock();
        state.timelines.prune(|u| pods.exists(u));
        state.timelines.get(uid)
    }

    /// Where the hub looks pods up.
    #[must_use]
    pub fn pods(&self) -> &Arc<dyn PodDirectory> {
        &self.inner.pods
    }

    /// The sequence number the next event will get.
    #[must_use]
    pub fn next_sequence(&self) -> u64 {
        self.lock().next_sequence
    }
}

/// Starts the stream: the hub (fed by the kernel router), and when `eventStreamSocket` is
/// set, `bpflet.v1.EventService` on that socket (bound here, so that a socket another agent
/// serves stops this one before it touches anything).
pub fn start(
    config: &crate::config::event_stream::EventStreamConfig,
    pods: &PodList,
    metrics: &crate::metrics::Metrics,
    cancel: &tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Hub, service::StreamError> {
    let stream_metrics = StreamMetrics::new().and_then(|m| {
        m.register(&metrics.registry)?;
        Ok(m)
    });
    let stream_metrics = stream_metrics.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "event stream metrics not exported");
        StreamMetrics::new().expect("metric names and help are valid")
    });
    let hub = Hub::new(config.limits, Arc::new(pods.clone()), stream_metrics);
    if let Some(path) = &config.socket {
        let listener = service::bind(path, config.group.as_ref().map(|g| g.1))?;
        tracing::info!(
            socket = %path.display(),
            group = config.group.as_ref().map(|g| g.0.as_str()),
            run_id = hub.run_id(),
            queue = config.limits.queue,
            replay = config.limits.replay,
            "event stream (bpflet.v1.EventService)"
        );
        let (hub, path, cancel) = (hub.clone(), path.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = service::serve(listener, path, hub, cancel).await {
                tracing::warn!(error = %e, cause = %crate::error::error_chain(&e), "event stream stopped");
            }
        });
    }
    Ok(hub)
}

/// The loss record a subscriber is given, as an [`Event`] (time: now).
#[must_use]
pub fn missed_event(dropped: u64) -> Event {
    Event {
        time: SystemTime::now(),
        kernel_ns: None,
        source: Source::Bpf,
        pid: 0,
        comm: String::new(),
        cgroup_id: None,
        cgroup: String::new(),
        pod: None,
        detail: Detail::EventsLost {
            kernel: 0,
            userspace: dropped,
        },
    }
}

/// Kinds a [`Kind`] list accepts, for logs.
#[must_use]
pub fn kinds_str(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
