//! CrashLoopBackOff bookkeeping per (pod UID, container name). Pure: every call takes `now`.
//!
//! Semantics follow upstream's `flowcontrol.Backoff` as the kubelet uses it:
//! - the first restart after a container exits is immediate, and arms a 10s window;
//! - while the container's last exit is less than the window ago, it waits (CrashLoopBackOff);
//! - each permitted restart doubles the window, up to 300s;
//! - a container that exits more than 10 minutes (2 x the cap) after its last restart ran
//!   fine: its window starts again at 10s.
//!
//! Upstream also adds jitter to the first window; bpflet does not.
//!
//! A start that fails before the container runs (its config cannot be built, its image is
//! missing, the runtime refuses to create or start it) is recorded with
//! [`Backoff::record_failure`]: it counts as an exit at the moment of the failure, so the
//! container backs off exactly as if it had crashed (10s, 20s, ... 300s), and the planner can
//! say why it waits. A successful start clears it ([`Backoff::clear_failure`]).

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::model::container::WaitingReason;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// Identifies one container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackoffKey {
    pub pod_uid: String,
    pub container: String,
}

impl BackoffKey {
    #[must_use]
    pub fn new(pod_uid: impl Into<String>, container: impl Into<String>) -> Self {
        Self {
            pod_uid: pod_uid.into(),
            container: container.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The current window.
    delay: Duration,
    /// When the last restart was permitted.
    last_restart: Timestamp,
}

/// The answer to "may this exited container be restarted now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffState {
    Ready,
    /// In CrashLoopBackOff: the current window and how much of it is left.
    Waiting {
        delay: Duration,
        remaining: Duration,
    },
}

/// Why the last attempt to start a container failed before it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub at: Timestamp,
    /// `CreateContainerConfigError`, `ErrImageNeverPull`, `RunContainerError`, ...
    pub reason: WaitingReason,
    /// What failed, in the words of the layer that failed (the runtime's message, ...).
    pub message: String,
    /// For an image that could not be had (`ErrImagePull`, `ErrImageNeverPull`): the image,
    /// as the container named it. Upstream keys its pull back-off by pod UID and image, so
    /// the failure holds the container back only while it names that image.
    pub image: Option<String>,
}

impl StartFailure {
    /// Whether this failure says anything about a container that now names `image`: a
    /// failed pull of another image does not.
    #[must_use]
    pub fn applies_to(&self, image: Option<&str>) -> bool {
        self.image.is_none() || self.image.as_deref() == image
    }
}

/// Backoff windows for every container that has been restarted.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    entries: HashMap<BackoffKey, Entry>,
    /// The last failed start of each container, until one succeeds.
    failures: HashMap<BackoffKey, StartFailure>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL_BACKOFF, MAX_BACKOFF, RESET_AFTER)
    }
}

impl Backoff {
    #[must_use]
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            initial,
            max,
            reset_after,
            entries: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    /// Whether the container, which last exited at `finished_at`, may restart at `now`.
    #[must_use]
    pub fn check(&self, key: &BackoffKey, finished_at: Timestamp, now: Timestamp) -> BackoffState {
        let Some(entry) = self.entries.get(key) else {
            return BackoffState::Ready;
        };
        if self.ran_fine(entry, finished_at) {
            return BackoffState::Ready;
        }
        let elapsed = duration_between(finished_at, now);
        if elapsed < entry.delay {
            BackoffState::Waiting {
                delay: entry.delay,
                remaining: entry.delay - elapsed,
            }
        } else {
            BackoffState::Ready
        }
    }

    /// Records that the container, which last exited at `finished_at`, is restarted at `now`;
    /// returns the window the next restart will have to wait out.
    pub fn record_restart(
        &mut self,
        key: &BackoffKey,
        finished_at: Timestamp,
        now: Timestamp,
    ) -> Duration {
        let delay = match self.entries.get(key) {
            Some(entry) if !self.ran_fine(entry, finished_at) => (entry.delay * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(
            key.clone(),
            Entry {
                delay,
                last_restart: now,
            },
        );
        delay
    }

    /// Records a start of the container that failed before it ran; the failure counts as
    /// an exit at `failure.at`. A container that never restarted before gets its first
    /// window here, so the next attempt waits it out (a window armed by
    /// [`Self::record_restart`] for this attempt stays as it is).
    pub fn record_failure(&mut self, key: &BackoffKey, failure: StartFailure) {
        if self
            .entries
            .get(key)
            .is_none_or(|e| self.ran_fine(e, failure.at))
        {
            self.entries.insert(
                key.clone(),
                Entry {
                    delay: self.initial,
                    last_restart: failure.at,
                },
            );
        }
        self.failures.insert(key.clone(), failure);
    }

    /// The container's last failed start, if no start succeeded since.
    #[must_use]
    pub fn failure(&self, key: &BackoffKey) -> Option<&StartFailure> {
        self.failures.get(key)
    }

    /// The container started: its earlier failure no longer says anything.
    pub fn clear_failure(&mut self, key: &BackoffKey) {
        self.failures.remove(key);
    }

    /// The current window of a container, if it has one.
    #[must_use]
    pub fn delay(&self, key: &BackoffKey) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Forgets one container's window and failure (it starts afresh).
    pub fn reset(&mut self, key: &BackoffKey) {
        self.entries.remove(key);
        self.failures.remove(key);
    }

    /// Forgets every container of a pod (the pod is gone).
    pub fn forget_pod(&mut self, pod_uid: &str) {
        self.entries.retain(|k, _| k.pod_uid != pod_uid);
        self.failures.retain(|k, _| k.pod_uid != pod_uid);
    }

    /// Drops entries whose last restart is so old that they would reset anyway.
    pub fn gc(&mut self, now: Timestamp) {
        let reset_after = self.reset_after;
        self.entries
            .retain(|_, e| duration_between(e.last_restart, now) <= reset_after);
        let entries = &self.entries;
        self.failures.retain(|k, _| entries.contains_key(k));
    }

    fn ran_fine(&self, entry: &Entry, finished_at: Timestamp) -> bool {
        duration_between(entry.last_restart, finished_at) > self.reset_after
    }
}

/// `to - from`, zero when `to` is earlier.
pub(crate) fn duration_between(from: Timestamp, to: Timestamp) -> Duration {
    let nanos = to.as_nanosecond() - from.as_nanosecond();
    u64::try_from(nanos).map_or(Duration::ZERO, Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    fn key() -> BackoffKey {
        BackoffKey::new("uid-1", "app")
    }

    #[test]
    fn first_restart_is_immediate_then_windows_double_up_to_the_cap() {
        let mut b = Backoff::default();
        let k = key();
        // (finished_at, restart_at, expected window recorded)
        let crashes = [
            (0, 0, 10),
            (12, 22, 20),
            (24, 44, 40),
            (46, 86, 80),
            (88, 168, 160),
            (170, 330, 300),
            (332, 632, 300),
        ];
        for (finished, restart, window) in crashes {
            assert_eq!(
                b.check(&k, t(finished), t(restart)),
                BackoffState::Ready,
                "restart at {restart}"
            );
            if restart > finished {
                // One second earlier it was still waiting, with the previous window.
                let previous = b.delay(&k).expect("armed");
                assert_eq!(
                    b.check(&k, t(finished), t(restart - 1)),
                    BackoffState::Waiting {
                        delay: previous,
                        remaining: Duration::from_secs(1)
                    }
                );
            }
            assert_eq!(
                b.record_restart(&k, t(finished), t(restart)),
                Duration::from_secs(window)
            );
        }
    }

    #[test]
    fn waiting_reports_window_and_remaining() {
        let mut b = Backoff::default();
        let k = key();
        b.record_restart(&k, t(0), t(0));
        assert_eq!(
            b.check(&k, t(5), t(8)),
            BackoffState::Waiting {
                delay: Duration::from_secs(10),
                remaining: Duration::from_secs(7)
            }
        );
        assert_eq!(b.check(&k, t(5), t(15)), BackoffState::Ready);
    }

    #[test]
    fn resets_after_ten_minutes_of_running_fine() {
        let mut b = Backoff::default();
        let k = key();
        for (finished, restart) in [(0, 0), (10, 20), (30, 50)] {
            b.record_restart(&k, t(finished), t(restart));
        }
        assert_eq!(b.delay(&k), Some(Duration::from_secs(40)));
        // Exits 601s after its last restart: it ran fine, so no wait and a fresh window.
        assert_eq!(b.check(&k, t(651), t(651)), BackoffState::Ready);
        assert_eq!(
            b.record_restart(&k, t(651), t(651)),
            Duration::from_secs(10)
        );
        // Exits 599s after a restart: still counts as a crash loop.
        b.record_restart(&k, t(700), t(710));
        assert_eq!(b.delay(&k), Some(Duration::from_secs(20)));
        assert!(matches!(
            b.check(&k, t(1309), t(1310)),
            BackoffState::Waiting { .. }
        ));
    }

    fn failure(secs: i64) -> StartFailure {
        StartFailure {
            at: t(secs),
            reason: WaitingReason::RunContainerError,
            message: "exec: no such file".to_owned(),
            image: None,
        }
    }

    #[test]
    fn a_failed_start_backs_off_like_a_crash() {
        let mut b = Backoff::default();
        let k = key();
        // Never started: the failure arms the first window at once.
        b.record_failure(&k, failure(0));
        assert_eq!(b.failure(&k), Some(&failure(0)));
        assert_eq!(
            b.check(&k, t(0), t(4)),
            BackoffState::Waiting {
                delay: Duration::from_secs(10),
                remaining: Duration::from_secs(6)
            }
        );
        // Each later attempt is recorded as a restart before it runs, so the windows double.
        assert_eq!(b.check(&k, t(0), t(10)), BackoffState::Ready);
        assert_eq!(b.record_restart(&k, t(0), t(10)), Duration::from_secs(20));
        b.record_failure(&k, failure(10));
        assert_eq!(b.delay(&k), Some(Duration::from_secs(20)), "kept");
        assert!(matches!(
            b.check(&k, t(10), t(29)),
            BackoffState::Waiting { .. }
        ));
        // A start that works clears the failure, not the window.
        b.clear_failure(&k);
        assert_eq!(b.failure(&k), None);
        assert_eq!(b.delay(&k), Some(Duration::from_secs(20)));
        b.record_failure(&k, failure(40));
        b.forget_pod("uid-1");
        assert_eq!((b.failure(&k), b.delay(&k)), (None, None));
        b.record_failure(&k, failure(40));
        b.gc(t(641));
        assert_eq!((b.failure(&k), b.delay(&k)), (None, None), "gc drops both");
    }

    #[test]
    fn keys_are_independent_and_forget_and_gc_drop_entries() {
        let mut b = Backoff::default();
        let a = BackoffKey::new("uid-1", "a");
        let other = BackoffKey::new("uid-2", "a");
        b.record_restart(&a, t(0), t(0));
        assert_eq!(b.check(&other, t(1), t(1)), BackoffState::Ready);
        b.record_restart(&other, t(0), t(100));
        b.forget_pod("uid-1");
        assert_eq!(b.delay(&a), None);
        assert!(b.delay(&other).is_some());
        b.gc(t(701));
        assert!(b.delay(&other).is_none());
    }
}
