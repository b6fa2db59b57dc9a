//! When probes run: one min-heap of deadlines for every probe of every pod. Pure; the
//! manager's single scheduler task pops what is due and sleeps until the next deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

/// Probe ids by deadline. Equal deadlines pop in insertion order.
///
/// Entries are never removed early: a probe that is removed or rescheduled leaves its old
/// entry behind, and the caller skips entries that no longer match its probe's deadline.
/// Each probe has at most a few stale entries at a time, so the heap stays small.
#[derive(Debug, Default)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    seq: u64,
}

impl Schedule {
    pub fn push(&mut self, due: Instant, id: u64) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse((due, self.seq, id)));
    }

    /// The earliest deadline, if any.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _, _))| *due)
    }

    /// The earliest entry if it is due at `now`: `(deadline, id)`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, u64)> {
        if self.next_due()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((due, _, id))| (due, id))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// When a probe first runs: once the container has run for `initial_delay`, plus `jitter`
/// (a fraction in `[0, 1)`) of one period, so that probes of containers started together do
/// not all run in the same instant, every period, forever.
///
/// `running_for` is how long the container has already run when the probe is added (an
/// agent that restarts adopts containers that started long ago).
#[must_use]
pub fn first_due(
    now: Instant,
    running_for: Duration,
    initial_delay: Duration,
    period: Duration,
    jitter: f64,
) -> Instant {
    let jitter = if (0.0..1.0).contains(&jitter) {
        jitter
    } else {
        0.0
    };
    now + initial_delay.saturating_sub(running_for) + period.mul_f64(jitter)
}

/// The run after one that was due at `previous`: one period later, keeping the cadence
/// the first run set, or now if that has passed already (a slow probe or a full
/// concurrency cap never makes runs pile up).
#[must_use]
pub fn next_due(previous: Instant, period: Duration, now: Instant) -> Instant {
    (previous + period).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_then_insertion_order() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.push(t0 + Duration::from_secs(3), 30);
        s.push(t0 + Duration::from_secs(1), 10);
        s.push(t0 + Duration::from_secs(2), 20);
        s.push(t0 + Duration::from_secs(1), 11);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.pop_due(t0), None, "nothing is due yet");
        let now = t0 + Duration::from_secs(2);
        let mut popped = Vec::new();
        while let Some((_, id)) = s.pop_due(now) {
            popped.push(id);
        }
        assert_eq!(popped, [10, 11, 20]);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.pop_due(t0 + Duration::from_secs(3)),
            Some((t0 + Duration::from_secs(3), 30))
        );
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn first_run_waits_for_the_initial_delay_then_jitters_within_one_period() {
        let now = Instant::now();
        let period = Duration::from_secs(10);
        let delay = Duration::from_secs(5);
        // A fresh container: the whole delay.
        assert_eq!(
            first_due(now, Duration::ZERO, delay, period, 0.0),
            now + delay
        );
        // Started 2s ago: 3s left.
        assert_eq!(
            first_due(now, Duration::from_secs(2), delay, period, 0.0),
            now + Duration::from_secs(3)
        );
        // Adopted long after its delay: only the jitter.
        assert_eq!(
            first_due(now, Duration::from_secs(3600), delay, period, 0.5),
            now + Duration::from_secs(5)
        );
        // Out-of-range jitter is ignored rather than pushing a probe past its period.
        assert_eq!(
            first_due(now, Duration::ZERO, delay, period, 1.0),
            now + delay
        );
        assert_eq!(
            first_due(now, Duration::ZERO, delay, period, f64::NAN),
            now + delay
        );
    }

    #[test]
    fn jitter_spreads_many_probes_over_one_period() {
        let now = Instant::now();
        let period = Duration::from_secs(1);
        let mut rng = fastrand::Rng::with_seed(7);
        let dues: Vec<Instant> = (0..500)
            .map(|_| first_due(now, Duration::ZERO, Duration::ZERO, period, rng.f64()))
            .collect();
        assert!(dues.iter().all(|d| *d >= now && *d < now + period));
        // Ten 100ms buckets all get some probes: not a lockstep burst.
        let mut buckets = [0u32; 10];
        for d in &dues {
            let offset = d.duration_since(now).as_millis();
            buckets[usize::try_from(offset / 100).unwrap()] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 20), "{buckets:?}");
    }

    #[test]
    fn next_run_keeps_the_cadence_but_never_lies_in_the_past() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        assert_eq!(
            next_due(t0, period, t0 + Duration::from_millis(30)),
            t0 + period
        );
        let late = t0 + Duration::from_secs(25);
        assert_eq!(next_due(t0, period, late), late);
    }
}
