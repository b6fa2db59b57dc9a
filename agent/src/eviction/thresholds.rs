//! Which thresholds are met, which of them have waited out their grace period, and the
//! node's pressure conditions. Pure: observations and times in, decisions out.
//!
//! As upstream's eviction manager (`synchronize`), one evaluation:
//! 1. takes the thresholds met now (`available < threshold`, percentages resolved against
//!    the signal's capacity), plus those that drove the previous evaluation and have not yet
//!    reclaimed their `evictionMinimumReclaim` (`available < threshold + minimum reclaim`);
//! 2. remembers when each was first observed (a threshold that stops being met is forgotten,
//!    so its grace period starts over);
//! 3. derives the conditions (`MemoryPressure`, `DiskPressure`, `PIDPressure`) from them,
//!    grace periods notwithstanding, and keeps a condition true until it has not been
//!    observed for `evictionPressureTransitionPeriod`;
//! 4. keeps the thresholds whose grace period has passed (hard ones at once): these drive
//!    eviction, memory signals first.
//!
//! With `enforceNodeAllocatable: [pods]`, every hard `memory.available` threshold is also a
//! threshold on `allocatableMemory.available` ([`effective_thresholds`]): upstream copies the
//! hard ones only (`addAllocatableThresholds`), and so does bpflet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use crate::config::EvictionConfig;
use crate::config::eviction::{Signal, Threshold};
use crate::model::node::{NodeCondition, PressureCondition};

use super::signals::Observations;

/// Every threshold the manager evaluates: hard, soft, and with pods allocatable enforced the
/// `allocatableMemory.available` copies of the hard `memory.available` ones. Duplicates (a
/// configured `allocatableMemory.available` equal to a copy) are dropped.
#[must_use]
pub fn effective_thresholds(
    config: &EvictionConfig,
    enforce_pods_allocatable: bool,
) -> Vec<Threshold> {
    let mut all: Vec<Threshold> = Vec::new();
    let copies = config
        .hard
        .iter()
        .filter(|t| enforce_pods_allocatable && t.signal == Signal::MemoryAvailable)
        .map(|t| Threshold {
            signal: Signal::AllocatableMemoryAvailable,
            ..t.clone()
        })
        .collect::<Vec<_>>();
    for t in config.hard.iter().chain(&config.soft).chain(&copies) {
        if !all.contains(t) {
            all.push(t.clone());
        }
    }
    all
}

/// A hard threshold evicts at once, with a grace period of zero for the pod.
#[must_use]
pub fn is_hard(threshold: &Threshold) -> bool {
    threshold.grace_period.is_zero()
}

/// The amount below which `threshold` is met, for a signal of `capacity`; with
/// `with_min_reclaim`, plus its minimum reclaim.
#[must_use]
pub fn threshold_amount(threshold: &Threshold, capacity: u64, with_min_reclaim: bool) -> u64 {
    let base = threshold.value.amount(capacity);
    match threshold.min_reclaim {
        Some(reclaim) if with_min_reclaim => base.saturating_add(reclaim.amount(capacity)),
        _ => base,
    }
}

/// Whether `threshold` is met by `obs` (never when its signal was not observed).
#[must_use]
pub fn is_met(threshold: &Threshold, obs: &Observations, with_min_reclaim: bool) -> bool {
    obs.get(threshold.signal)
        .is_some_and(|o| threshold_amount(threshold, o.capacity, with_min_reclaim) > o.available)
}

/// The thresholds of `thresholds` that `obs` meets.
#[must_use]
pub fn thresholds_met(
    thresholds: &[Threshold],
    obs: &Observations,
    with_min_reclaim: bool,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| is_met(t, obs, with_min_reclaim))
        .cloned()
        .collect()
}

/// The node condition a signal's thresholds raise.
#[must_use]
pub const fn pressure_condition(signal: Signal) -> PressureCondition {
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => {
            PressureCondition::MemoryPressure
        }
        Signal::PidAvailable => PressureCondition::PidPressure,
        Signal::NodeFsAvailable
        | Signal::NodeFsInodesFree
        | Signal::ImageFsAvailable
        | Signal::ImageFsInodesFree
        | Signal::ContainerFsAvailable
        | Signal::ContainerFsInodesFree => PressureCondition::DiskPressure,
    }
}

/// The result of one [`ThresholdTracker::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Met now, or not yet recovered by their minimum reclaim; grace periods ignored.
    pub met: Vec<Threshold>,
    /// Met thresholds whose grace period has passed, in eviction order: memory signals
    /// first, then by signal, hard before soft.
    pub active: Vec<Threshold>,
    /// Met soft thresholds still in their grace period, with the time left.
    pub in_grace: Vec<(Threshold, Duration)>,
    /// All three pressure conditions.
    pub conditions: Vec<NodeCondition>,
    /// A condition changed status (or this was the first evaluation).
    pub conditions_changed: bool,
}

/// What one evaluation remembers for the next.
#[derive(Debug, Clone, Default)]
pub struct ThresholdTracker {
    first_observed: Vec<(Threshold, Timestamp)>,
    /// The thresholds that drove the last evaluation (grace passed): they stay met until
    /// their minimum reclaim is reached.
    active: Vec<Threshold>,
    condition_last_observed: BTreeMap<PressureCondition, Timestamp>,
    conditions: BTreeMap<PressureCondition, NodeCondition>,
}

/// Time from `since` to `now`; zero if the clock went backwards.
fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

impl ThresholdTracker {
    /// One evaluation of `thresholds` against `obs` at `now`.
    pub fn evaluate(
        &mut self,
        thresholds: &[Threshold],
        obs: &Observations,
        transition_period: Duration,
        now: Timestamp,
    ) -> Evaluation {
        let mut met = thresholds_met(thresholds, obs, false);
        for t in thresholds_met(&self.active, obs, true) {
            if !met.contains(&t) {
                met.push(t);
            }
        }

        self.first_observed = met
            .iter()
            .map(|t| {
                let since = self
                    .first_observed
                    .iter()
                    .find(|(known, _)| known == t)
                    .map_or(now, |&(_, at)| at);
                (t.clone(), since)
            })
            .collect();

        let observed: BTreeSet<PressureCondition> =
            met.iter().map(|t| pressure_condition(t.signal)).collect();
        for &c in &observed {
            self.condition_last_observed.insert(c, now);
        }
        let mut conditions_changed = false;
        for kind in PressureCondition::ALL {
            let pressure = observed.contains(&kind)
                || self
                    .condition_last_observed
                    .get(&kind)
                    .is_some_and(|&at| elapsed(now, at) < transition_period);
            match self.conditions.get(&kind) {
                Some(c) if c.status == pressure => {}
                _ => {
                    conditions_changed = true;
                    self.conditions
                        .insert(kind, NodeCondition::new(kind, pressure, now));
                }
            }
        }

        let mut active = Vec::new();
        let mut in_grace = Vec::new();
        for (t, since) in &self.first_observed {
            let waited = elapsed(now, *since);
            if waited >= t.grace_period {
                active.push(t.clone());
            } else {
                in_grace.push((t.clone(), t.grace_period - waited));
            }
        }
        active.sort_by_key(|t| (t.signal, !is_hard(t)));
        self.active.clone_from(&active);

        Evaluation {
            met,
            active,
            in_grace,
            conditions: self.conditions.values().cloned().collect(),
            conditions_changed,
        }
    }

    /// The conditions as of the last evaluation (empty before the first).
    #[must_use]
    pub fn conditions(&self) -> Vec<NodeCondition> {
        self.conditions.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::config::EvictionRanking;
    use crate::config::eviction::ThresholdValue;
    use crate::model::quantity::QuantityValue;

    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;

    fn bytes(n: u64) -> ThresholdValue {
        ThresholdValue::Quantity(QuantityValue::from_units(n))
    }

    fn hard(signal: Signal, value: ThresholdValue) -> Threshold {
        Threshold {
            signal,
            value,
            grace_period: Duration::ZERO,
            min_reclaim: None,
        }
    }

    fn soft(signal: Signal, value: ThresholdValue, grace: u64) -> Threshold {
        Threshold {
            grace_period: Duration::from_secs(grace),
            ..hard(signal, value)
        }
    }

    fn reclaim(mut t: Threshold, min: ThresholdValue) -> Threshold {
        t.min_reclaim = Some(min);
        t
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
    }

    fn memory(available: u64) -> Observations {
        Observations::default().with(Signal::MemoryAvailable, available, 8 * GI)
    }

    #[test]
    fn thresholds_met_table() {
        let mem_100mi = hard(Signal::MemoryAvailable, bytes(100 * MI));
        let nodefs_10pct = hard(Signal::NodeFsAvailable, ThresholdValue::Percentage(10.0));
        let with_reclaim = reclaim(mem_100mi.clone(), bytes(400 * MI));
        let pct_reclaim = reclaim(nodefs_10pct.clone(), ThresholdValue::Percentage(5.0));
        let disk =
            |available| Observations::default().with(Signal::NodeFsAvailable, available, 1000 * GI);
        let cases: Vec<(&str, &Threshold, Observations, bool, bool)> = vec![
            // (name, threshold, observations, with min reclaim, met)
            ("below", &mem_100mi, memory(99 * MI), false, true),
            (
                "exactly at the threshold is not met",
                &mem_100mi,
                memory(100 * MI),
                false,
                false,
            ),
            ("above", &mem_100mi, memory(101 * MI), false, false),
            ("signal not observed", &mem_100mi, disk(0), false, false),
            (
                "min reclaim ignored unless asked",
                &with_reclaim,
                memory(300 * MI),
                false,
                false,
            ),
            (
                "min reclaim extends the threshold",
                &with_reclaim,
                memory(300 * MI),
                true,
                true,
            ),
            (
                "min reclaim reached",
                &with_reclaim,
                memory(500 * MI),
                true,
                false,
            ),
            (
                "percentage of capacity",
                &nodefs_10pct,
                disk(99 * GI),
                false,
                true,
            ),
            (
                "percentage not met",
                &nodefs_10pct,
                disk(101 * GI),
                false,
                false,
            ),
            (
                "percentage min reclaim",
                &pct_reclaim,
                disk(140 * GI),
                true,
                true,
            ),
            (
                "percentage min reclaim reached",
                &pct_reclaim,
                disk(151 * GI),
                true,
                false,
            ),
        ];
        for (name, t, obs, with_min_reclaim, want) in cases {
            assert_eq!(is_met(t, &obs, with_min_reclaim), want, "{name}");
        }
    }

    fn config(hard: Vec<Threshold>, soft: Vec<Threshold>) -> EvictionConfig {
        EvictionConfig {
            hard,
            soft,
            pressure_transition_period: Duration::from_secs(300),
            max_pod_grace_period: None,
            ranking: EvictionRanking::Qos,
            local_storage_capacity_isolation: true,
        }
    }

    #[test]
    fn allocatable_copies_hard_memory_thresholds_only() {
        let h = reclaim(hard(Signal::MemoryAvailable, bytes(100 * MI)), bytes(MI));
        let s = soft(Signal::MemoryAvailable, bytes(GI), 60);
        let n = hard(Signal::NodeFsAvailable, ThresholdValue::Percentage(10.0));
        let c = config(vec![h.clone(), n.clone()], vec![s.clone()]);
        assert_eq!(
            effective_thresholds(&c, false),
            [h.clone(), n.clone(), s.clone()]
        );
        let copy = Threshold {
            signal: Signal::AllocatableMemoryAvailable,
            ..h.clone()
        };
        assert_eq!(
            effective_thresholds(&c, true),
            [h.clone(), n.clone(), s.clone(), copy.clone()]
        );
        // A configured threshold equal to the copy is not doubled.
        let c = config(vec![h.clone(), copy.clone()], vec![]);
        assert_eq!(effective_thresholds(&c, true), [h, copy]);
    }

    /// One step of a scenario: time, observed memory.available, then what must hold.
    struct Step {
        at: i64,
        available: u64,
        active: &'static [Signal],
        in_grace: usize,
        pressure: bool,
        transition_at: i64,
    }

    fn run(thresholds: &[Threshold], transition: u64, steps: &[Step], name: &str) {
        let mut tracker = ThresholdTracker::default();
        for (i, s) in steps.iter().enumerate() {
            let obs = Observations::default()
                .with(Signal::MemoryAvailable, s.available, 8 * GI)
                .with(Signal::AllocatableMemoryAvailable, s.available, GI);
            let e = tracker.evaluate(thresholds, &obs, Duration::from_secs(transition), at(s.at));
            let active: Vec<Signal> = e.active.iter().map(|t| t.signal).collect();
            assert_eq!(active, s.active, "{name}: step {i} active");
            assert_eq!(e.in_grace.len(), s.in_grace, "{name}: step {i} in grace");
            let memory = e
                .conditions
                .iter()
                .find(|c| c.kind == PressureCondition::MemoryPressure)
                .expect("memory condition");
            assert_eq!(memory.status, s.pressure, "{name}: step {i} pressure");
            assert_eq!(
                memory.last_transition_time,
                at(s.transition_at),
                "{name}: step {i} transition"
            );
        }
    }

    const MEM: &[Signal] = &[Signal::MemoryAvailable];
    const NONE: &[Signal] = &[];

    #[test]
    fn hard_thresholds_act_at_once_and_conditions_linger() {
        run(
            &[hard(Signal::MemoryAvailable, bytes(100 * MI))],
            300,
            &[
                Step {
                    at: 0,
                    available: GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 0,
                },
                Step {
                    at: 10,
                    available: 50 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 10,
                },
                Step {
                    at: 11,
                    available: 60 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 10,
                },
                // Cleared, but the condition stays for the transition period (5m since last seen).
                Step {
                    at: 20,
                    available: GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 10,
                },
                Step {
                    at: 310,
                    available: GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 10,
                },
                Step {
                    at: 311,
                    available: GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 311,
                },
            ],
            "hard",
        );
    }

    #[test]
    fn soft_thresholds_wait_out_their_grace_period() {
        run(
            &[soft(Signal::MemoryAvailable, bytes(GI), 60)],
            30,
            &[
                // Met: pressure at once, eviction only after 60s.
                Step {
                    at: 0,
                    available: 500 * MI,
                    active: NONE,
                    in_grace: 1,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 59,
                    available: 500 * MI,
                    active: NONE,
                    in_grace: 1,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 60,
                    available: 500 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 0,
                },
                // Recovers: the grace period starts over when met again.
                Step {
                    at: 70,
                    available: 2 * GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 80,
                    available: 500 * MI,
                    active: NONE,
                    in_grace: 1,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 139,
                    available: 500 * MI,
                    active: NONE,
                    in_grace: 1,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 140,
                    available: 500 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 0,
                },
                Step {
                    at: 171,
                    available: 2 * GI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 171,
                },
            ],
            "soft",
        );
    }

    #[test]
    fn minimum_reclaim_keeps_an_active_threshold_met() {
        let t = reclaim(
            hard(Signal::MemoryAvailable, bytes(100 * MI)),
            bytes(400 * MI),
        );
        run(
            std::slice::from_ref(&t),
            0,
            &[
                // Above threshold + reclaim, nothing.
                Step {
                    at: 0,
                    available: 300 * MI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 0,
                },
                // Below: active.
                Step {
                    at: 1,
                    available: 90 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 1,
                },
                // Above the threshold but below threshold + reclaim: still active.
                Step {
                    at: 2,
                    available: 300 * MI,
                    active: MEM,
                    in_grace: 0,
                    pressure: true,
                    transition_at: 1,
                },
                // Reclaimed enough. Transition period 0: the condition clears at once.
                Step {
                    at: 3,
                    available: 600 * MI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 3,
                },
                // Only the threshold itself counts once resolved.
                Step {
                    at: 4,
                    available: 300 * MI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 3,
                },
            ],
            "minimum reclaim",
        );
    }

    #[test]
    fn minimum_reclaim_applies_only_after_the_grace_period() {
        let t = reclaim(
            soft(Signal::MemoryAvailable, bytes(100 * MI), 10),
            bytes(400 * MI),
        );
        run(
            std::slice::from_ref(&t),
            0,
            &[
                Step {
                    at: 0,
                    available: 90 * MI,
                    active: NONE,
                    in_grace: 1,
                    pressure: true,
                    transition_at: 0,
                },
                // Not yet active, so the minimum reclaim does not hold it.
                Step {
                    at: 5,
                    available: 300 * MI,
                    active: NONE,
                    in_grace: 0,
                    pressure: false,
                    transition_at: 5,
                },
            ],
            "soft minimum reclaim",
        );
    }

    #[test]
    fn active_thresholds_in_eviction_order() {
        let thresholds = [
            hard(Signal::PidAvailable, bytes(100)),
            hard(Signal::NodeFsAvailable, ThresholdValue::Percentage(10.0)),
            soft(Signal::MemoryAvailable, bytes(GI), 0),
            hard(Signal::AllocatableMemoryAvailable, bytes(100 * MI)),
            hard(Signal::MemoryAvailable, bytes(100 * MI)),
        ];
        // A zero grace period makes a soft threshold act at once, but after the hard one.
        let obs = Observations::default()
            .with(Signal::MemoryAvailable, 0, 8 * GI)
            .with(Signal::AllocatableMemoryAvailable, 0, GI)
            .with(Signal::NodeFsAvailable, 0, GI)
            .with(Signal::PidAvailable, 0, 1000);
        let e = ThresholdTracker::default().evaluate(&thresholds, &obs, Duration::ZERO, at(0));
        let order: Vec<(Signal, Duration)> = e
            .active
            .iter()
            .map(|t| (t.signal, t.grace_period))
            .collect();
        assert_eq!(
            order,
            [
                (Signal::MemoryAvailable, Duration::ZERO),
                (Signal::MemoryAvailable, Duration::ZERO),
                (Signal::AllocatableMemoryAvailable, Duration::ZERO),
                (Signal::NodeFsAvailable, Duration::ZERO),
                (Signal::PidAvailable, Duration::ZERO),
            ]
        );
        let statuses: Vec<(&str, bool, &str)> = e
            .conditions
            .iter()
            .map(|c| (c.kind.as_str(), c.status, c.reason))
            .collect();
        assert_eq!(
            statuses,
            [
                ("MemoryPressure", true, "KubeletHasInsufficientMemory"),
                ("DiskPressure", true, "KubeletHasDiskPressure"),
                ("PIDPressure", true, "KubeletHasInsufficientPID"),
            ]
        );
        assert!(e.conditions_changed);
    }

    #[test]
    fn conditions_change_only_on_transitions() {
        let t = [hard(Signal::NodeFsInodesFree, bytes(1000))];
        let inodes = |free| Observations::default().with(Signal::NodeFsInodesFree, free, 1_000_000);
        let mut tracker = ThresholdTracker::default();
        assert!(tracker.conditions().is_empty());
        let e = tracker.evaluate(&t, &inodes(5000), Duration::ZERO, at(0));
        assert!(e.conditions_changed, "the first evaluation publishes");
        assert!(e.conditions.iter().all(|c| !c.status));
        let e = tracker.evaluate(&t, &inodes(5000), Duration::ZERO, at(1));
        assert!(!e.conditions_changed);
        let e = tracker.evaluate(&t, &inodes(10), Duration::ZERO, at(2));
        assert!(e.conditions_changed);
        let disk = e
            .conditions
            .iter()
            .find(|c| c.kind == PressureCondition::DiskPressure)
            .expect("disk");
        assert_eq!(
            (
                disk.status,
                disk.reason,
                disk.message,
                disk.last_transition_time
            ),
            (
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
                at(2)
            )
        );
        let api = disk.to_api(at(3));
        assert_eq!(api.type_, "DiskPressure");
        assert_eq!(api.status, "True");
        assert_eq!(api.last_heartbeat_time, Some(Time(at(3))));
        assert_eq!(api.last_transition_time, Some(Time(at(2))));
        let memory = e
            .conditions
            .iter()
            .find(|c| c.kind == PressureCondition::MemoryPressure)
            .expect("memory");
        assert_eq!(
            (
                memory.status,
                memory.reason,
                memory.message,
                memory.last_transition_time
            ),
            (
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                at(0)
            )
        );
        let pid = PressureCondition::PidPressure.reason_and_message(false);
        assert_eq!(
            pid,
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available"
            )
        );
        assert_eq!(
            PressureCondition::DiskPressure.reason_and_message(false),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        );
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic() {
        let t = [soft(Signal::MemoryAvailable, bytes(GI), 10)];
        let mut tracker = ThresholdTracker::default();
        tracker.evaluate(&t, &memory(0), Duration::from_secs(5), at(100));
        let e = tracker.evaluate(&t, &memory(0), Duration::from_secs(5), at(50));
        assert_eq!(e.in_grace.len(), 1);
        assert_eq!(e.in_grace[0].1, Duration::from_secs(10));
    }

    #[test]
    fn signals_map_to_conditions() {
        for signal in Signal::ALL {
            let want = match signal {
                Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => "MemoryPressure",
                Signal::PidAvailable => "PIDPressure",
                _ => "DiskPressure",
            };
            assert_eq!(pressure_condition(signal).as_str(), want, "{signal}");
        }
    }
}
