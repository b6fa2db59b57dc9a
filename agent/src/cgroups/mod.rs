//! cgroup hierarchies: detection (v1/v2), id <-> path, Kubernetes attribution, and the pod
//! cgroup tree the agent manages.
//!
//! - [`hierarchy`]: which hierarchy accounts memory, and where cgroups and processes are in it.
//! - [`naming`]: pod and container from kubelet's and the runtimes' cgroup naming (pure).
//! - [`attribute`]: id -> path index that fills in events' cgroup, pod and OOM scope.
//! - [`driver`]: the cgroupfs driver: create, limit, read and remove cgroups on v1 or v2.
//! - [`tree`]: the QoS and pod cgroup tree below the cgroup root (`kubepods/...`).

pub mod attribute;
pub mod driver;
mod error;
pub mod hierarchy;
pub mod naming;
pub mod tree;

pub use attribute::Attributor;
pub use driver::{CgroupDriver, CgroupManager, MemoryUsage};
pub use error::CgroupError;
pub use hierarchy::{CgroupVersion, Hierarchy};
pub use tree::QosTree;
