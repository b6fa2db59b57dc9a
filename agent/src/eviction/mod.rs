//! Node-pressure eviction: watch memory, disk and pid signals against the configured
//! thresholds, publish the pressure node conditions, and pick at most one pod to evict per
//! evaluation, as kubelet's eviction manager does, but triggered by the kernel.
//!
//! - [`signals`]: observations of the node (`memory.available`, `allocatableMemory.available`,
//!   `nodefs.*`, `imagefs.*`, `pid.available`) and per-pod usage, from roots that tests
//!   replace with fixture directories.
//! - [`thresholds`]: pure: which thresholds are met, grace periods, minimum reclaim, the
//!   pressure transition period and the node conditions.
//! - [`rank`]: pure: the order in which pods are evicted for each starved resource.
//! - [`message`]: pure: upstream's eviction message and quantity formatting.
//! - [`reclaim`]: node-level disk reclaim (dead containers, then unused images through the
//!   image garbage collector) before any pod is evicted for disk pressure.
//! - [`local_storage`]: local storage limits (`emptyDir` `sizeLimit`, container and pod
//!   `ephemeral-storage` limits), measured on the file system, and [`local_storage::check`]
//!   (pure: which limit a pod exceeds, upstream's message).
//! - [`manager`]: [`EvictionManager::decide`] (pure: one evaluation) and
//!   [`EvictionManager::run`] (the async shell: observe on triggers and on a periodic floor,
//!   decide, hand evictions and conditions to the agent).
//!
//! Wiring (see [`EvictionManager::run`]):
//!
//! ```text
//! let manager = EvictionManager::new(config.eviction.clone(), config.cgroups.enforce_pods_allocatable);
//! let observer = Observer::new(SignalRoots { proc_root, nodefs: config.root_dir.clone() }, tree.clone());
//! let (trigger_tx, trigger_rx) = mpsc::channel(1);   // kernel pressure: trigger_tx.try_send(Trigger::now())
//! let (eviction_tx, eviction_rx) = mpsc::channel(8); // kill with e.grace_period, then status::mark_evicted
//! let (conditions_tx, conditions_rx) = watch::channel(Vec::new());
//! tracker.spawn(manager.run(EvictionIo { observer, runtime, image_gc, pods: StorePods { .. },
//!     evictions: eviction_tx, conditions: conditions_tx }, trigger_rx, cancel.clone()));
//! ```
//!
//! Where bpflet differs from upstream on purpose:
//! - Evaluations are triggered by kernel memory-pressure events; the 10 s loop is only the floor.
//! - `evictionRanking: qos` (the default) ranks memory evictions by QoS class first.
//! - Static pods are evictable (every bpflet pod is static; upstream never evicts static
//!   pods). Only pods with a system-critical priority (class) are never evicted.
//! - A pressure condition is reported while its threshold is met even with
//!   `evictionPressureTransitionPeriod: 0` (upstream then never reports it).
//! - A pod evicted for a local storage limit stays down for good (its phase is `Failed`, as
//!   upstream's; upstream never evicts static pods at all). An edited manifest is a new pod,
//!   which starts. An agent restart forgets the eviction: the pod starts again, and is
//!   evicted again at the next periodic pass if its volumes still hold too much.
//! - Writable layers are measured from the overlay's `upperdir` and logs from the log
//!   directory at every periodic pass, not from CRI statistics (containerd 1.6 refreshes
//!   those every `stats_collect_period`).

pub mod local_storage;
pub mod manager;
pub mod message;
pub mod notify;
pub mod pod;
pub mod rank;
pub mod reclaim;
pub mod signals;
pub mod thresholds;

use std::io;
use std::path::PathBuf;

pub use local_storage::{LimitSignal, LimitedPod, StorageMeter, StorageUsage};
pub use manager::{
    DEFAULT_MONITORING_INTERVAL, Decision, Eviction, EvictionIo, EvictionManager, EvictionSignal,
    Outcome, Rejection, Trigger, TriggerKind, admit, stats_needed,
};
pub use pod::{ContainerInfo, ContainerUsage, PodInfo, PodProvider, PodUsage, StorePods};
pub use rank::Resource;
pub use reclaim::{DiskReclaimer, ReclaimReport};
pub use signals::{Observation, Observations, Observer, PodStatsNeed, Remnant, SignalRoots};

use crate::cgroups::CgroupError;
use crate::runtime::{Method, RuntimeError};

/// What can go wrong while observing signals or reclaiming disk space.
#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no valid {field}")]
    Malformed { path: PathBuf, field: &'static str },
    #[error("statvfs {path}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("reading {what} of cgroup {cgroup}")]
    Cgroup {
        what: &'static str,
        cgroup: String,
        #[source]
        source: CgroupError,
    },
    #[error("runtime call {method} for disk reclaim")]
    Runtime {
        method: Method,
        #[source]
        source: RuntimeError,
    },
    #[error("deleting unused images for disk reclaim")]
    Images(#[source] crate::images::gc::ImageGcError),
}
