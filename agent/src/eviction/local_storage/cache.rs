//! One timestamped cache of what pods' local storage trees hold, shared by the two readers
//! that walk them: eviction's [`StorageMeter`](super::StorageMeter) (pods with a storage
//! limit, every monitoring interval) and the stats sampler (every running pod's disk
//! `emptyDir` volumes and logs, at most once per `volumeStatsAggPeriod`). Each reader asks
//! for a tree no older than its own period: a tree another reader walked recently enough is
//! not walked again, so a limited pod's trees are walked at eviction's pace only, and the
//! sampler reads eviction's fresher numbers for it.
//!
//! Entries are per pod UID and tree ([`Tree`]). The sampler, which sees every pod, drops
//! the pods no longer listed ([`UsageCache::retain_pods`]); both readers drop trees nobody
//! refreshed for a while ([`UsageCache::forget_older_than`]). A walk runs outside the lock:
//! two readers missing the same tree at once both walk it, and the later result stays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::TreeUsage;

/// A tree of a pod's local storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tree {
    /// A disk `emptyDir` volume, by volume name.
    EmptyDir(String),
    /// A container's log directory (every attempt's log), by container name.
    Logs(String),
    /// A container's writable layer, by the runtime's container id.
    WritableLayer(String),
}

/// One walk of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// When the walk started (its age is measured from here).
    pub at: Instant,
    /// The same instant on the wall clock, for the stats' `time` fields.
    pub time: Timestamp,
    pub usage: TreeUsage,
}

/// The shared cache; clones share it.
#[derive(Debug, Clone, Default)]
pub struct UsageCache {
    pods: Arc<Mutex<HashMap<String, HashMap<Tree, Measured>>>>,
}

impl UsageCache {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<Tree, Measured>>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last walk of `tree` of pod `uid` when it started less than `max_age` before
    /// `now`.
    #[must_use]
    pub fn get(&self, uid: &str, tree: &Tree, max_age: Duration, now: Instant) -> Option<Measured> {
        self.lock()
            .get(uid)?
            .get(tree)
            .filter(|m| now.saturating_duration_since(m.at) < max_age)
            .copied()
    }

    /// Records a walk of `tree` of pod `uid`, unless a later one is already recorded.
    pub fn put(&self, uid: &str, tree: Tree, measured: Measured) {
        let mut pods = self.lock();
        let trees = pods.entry(uid.to_owned()).or_default();
        match trees.get(&tree) {
            Some(m) if m.at > measured.at => {}
            _ => {
                trees.insert(tree, measured);
            }
        }
    }

    /// The use of `tree` of pod `uid`: the cached walk when younger than `max_age`, else
    /// `walk`'s, recorded for every reader. `Duration::ZERO` always walks.
    ///
    /// # Errors
    /// `walk`'s error; nothing is recorded then.
    pub fn measure<E>(
        &self,
        uid: &str,
        tree: Tree,
        max_age: Duration,
        walk: impl FnOnce() -> Result<TreeUsage, E>,
    ) -> Result<Measured, E> {
        let now = Instant::now();
        if let Some(m) = self.get(uid, &tree, max_age, now) {
            return Ok(m);
        }
        let time = Timestamp::now();
        let usage = walk()?;
        let measured = Measured {
            at: now,
            time,
            usage,
        };
        self.put(uid, tree, measured);
        Ok(measured)
    }

    /// Keeps only the pods for which `live` holds.
    pub fn retain_pods(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|uid, _| live(uid));
    }

    /// Drops the walks that started `age` or more before `now`, and pods left without any.
    pub fn forget_older_than(&self, age: Duration, now: Instant) {
        let mut pods = self.lock();
        for trees in pods.values_mut() {
            trees.retain(|_, m| now.saturating_duration_since(m.at) < age);
        }
        pods.retain(|_, trees| !trees.is_empty());
    }

    /// The pods with a cached walk, sorted.
    #[must_use]
    pub fn pods(&self) -> Vec<String> {
        let mut uids: Vec<String> = self.lock().keys().cloned().collect();
        uids.sort();
        uids
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn usage(bytes: u64) -> TreeUsage {
        TreeUsage {
            bytes,
            inodes: 1,
            entries: 1,
            truncated: false,
        }
    }

    fn measured(at: Instant, bytes: u64) -> Measured {
        Measured {
            at,
            time: Timestamp::now(),
            usage: usage(bytes),
        }
    }

    const SAMPLER_PERIOD: Duration = Duration::from_secs(60);
    const EVICTION_AGE: Duration = Duration::from_secs(5);

    #[test]
    fn an_entry_is_fresh_for_a_reader_only_while_younger_than_its_period() {
        let cache = UsageCache::new();
        let t0 = Instant::now();
        let tree = Tree::EmptyDir("data".into());
        cache.put("u1", tree.clone(), measured(t0, 10));
        let at = |secs| t0 + Duration::from_secs(secs);
        // Eviction wants at most 5 s old; the sampler accepts a minute.
        assert_eq!(
            cache
                .get("u1", &tree, EVICTION_AGE, at(4))
                .map(|m| m.usage.bytes),
            Some(10)
        );
        assert_eq!(
            cache.get("u1", &tree, EVICTION_AGE, at(5)),
            None,
            "stale at its period"
        );
        assert!(cache.get("u1", &tree, SAMPLER_PERIOD, at(59)).is_some());
        assert_eq!(cache.get("u1", &tree, SAMPLER_PERIOD, at(60)), None);
        assert_eq!(
            cache.get("u1", &tree, Duration::ZERO, t0),
            None,
            "zero always walks"
        );
        // Other trees and pods are separate entries.
        assert_eq!(
            cache.get("u1", &Tree::Logs("data".into()), SAMPLER_PERIOD, t0),
            None
        );
        assert_eq!(cache.get("u2", &tree, SAMPLER_PERIOD, t0), None);
        // An older walk finishing late does not replace a newer one.
        cache.put(
            "u1",
            tree.clone(),
            measured(t0 - Duration::from_secs(1), 99),
        );
        assert_eq!(
            cache
                .get("u1", &tree, SAMPLER_PERIOD, t0)
                .map(|m| m.usage.bytes),
            Some(10)
        );
    }

    #[test]
    fn the_slower_reader_takes_the_faster_readers_walk_and_walks_only_when_stale() {
        let cache = UsageCache::new();
        let walks = Cell::new(0);
        let walk = |bytes| {
            walks.set(walks.get() + 1);
            Ok::<_, std::convert::Infallible>(usage(bytes))
        };
        let logs = || Tree::Logs("app".into());
        // Eviction refreshes the tree at its period...
        let by_eviction = cache
            .measure("u1", logs(), EVICTION_AGE, || walk(100))
            .unwrap();
        assert_eq!(walks.get(), 1);
        // ...and the sampler, due a minute later, reads that walk instead of its own.
        let by_sampler = cache
            .measure("u1", logs(), SAMPLER_PERIOD, || walk(200))
            .unwrap();
        assert_eq!((walks.get(), by_sampler), (1, by_eviction));
        // Eviction's next pass (its age is zero here: always fresh) walks again, and the
        // sampler sees the new number.
        cache
            .measure("u1", logs(), Duration::ZERO, || walk(300))
            .unwrap();
        assert_eq!(walks.get(), 2);
        let again = cache
            .measure("u1", logs(), SAMPLER_PERIOD, || walk(400))
            .unwrap();
        assert_eq!((walks.get(), again.usage.bytes), (2, 300));
        // A failed walk records nothing.
        let failed: Result<Measured, &str> =
            cache.measure("u1", Tree::EmptyDir("x".into()), SAMPLER_PERIOD, || {
                Err("gone")
            });
        assert_eq!(failed, Err("gone"));
        assert_eq!(
            cache.get(
                "u1",
                &Tree::EmptyDir("x".into()),
                SAMPLER_PERIOD,
                Instant::now()
            ),
            None
        );
    }

    #[test]
    fn pods_gone_and_trees_nobody_refreshes_are_dropped() {
        let cache = UsageCache::new();
        let t0 = Instant::now();
        cache.put("gone", Tree::EmptyDir("d".into()), measured(t0, 1));
        cache.put("live", Tree::Logs("app".into()), measured(t0, 1));
        cache.put(
            "live",
            Tree::WritableLayer("old-id".into()),
            measured(t0 - Duration::from_secs(200), 1),
        );
        cache.retain_pods(|uid| uid == "live");
        assert_eq!(cache.pods(), ["live"]);
        // The layer of a container replaced long ago goes; the refreshed logs stay.
        cache.forget_older_than(Duration::from_secs(120), t0);
        assert!(
            cache
                .get("live", &Tree::Logs("app".into()), SAMPLER_PERIOD, t0)
                .is_some()
        );
        assert!(
            cache
                .get(
                    "live",
                    &Tree::WritableLayer("old-id".into()),
                    Duration::MAX,
                    t0
                )
                .is_none()
        );
        // A pod left with nothing is dropped.
        cache.forget_older_than(Duration::from_secs(120), t0 + Duration::from_secs(120));
        assert!(cache.pods().is_empty());
    }
}
