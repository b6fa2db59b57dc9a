//! Per-pod timelines: the last exits, OOM kills and memory pressure events of each pod the
//! agent runs, bounded per pod, and forgotten once the pod is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Published;
use crate::events::Kind;

/// Kinds a timeline keeps.
#[must_use]
pub fn kept(kind: Kind) -> bool {
    matches!(kind, Kind::Exit | Kind::OomKill | Kind::MemoryPressure)
}

/// How many records between two sweeps for pods that are gone.
const PRUNE_EVERY: u32 = 256;

#[derive(Default)]
struct Timeline {
    entries: VecDeque<Arc<Published>>,
    dropped: u64,
}

pub struct Timelines {
    cap: usize,
    by_uid: HashMap<String, Timeline>,
    since_prune: u32,
}

impl Timelines {
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            by_uid: HashMap::new(),
            since_prune: 0,
        }
    }

    /// Appends `ev` to the timeline of `uid`, dropping its oldest entry when full; now and
    /// then forgets the pods `exists` no longer knows.
    pub fn record(&mut self, uid: &str, ev: Arc<Published>, exists: impl Fn(&str) -> bool) {
        let t = self.by_uid.entry(uid.to_owned()).or_default();
        if t.entries.len() == self.cap {
            t.entries.pop_front();
            t.dropped += 1;
        }
        t.entries.push_back(ev);
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.prune(exists);
        }
    }

    /// Forgets the timelines of pods `exists` does not know.
    pub fn prune(&mut self, exists: impl Fn(&str) -> bool) {
        self.since_prune = 0;
        self.by_uid.retain(|uid, _| exists(uid));
    }

    /// The entries of `uid`, oldest first, and how many were dropped.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<(Vec<Arc<Published>>, u64)> {
        self.by_uid
            .get(uid)
            .map(|t| (t.entries.iter().cloned().collect(), t.dropped))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}
