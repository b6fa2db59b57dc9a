//! cgroup hierarchies: detection (v1/v2), id <-> path, Kubernetes attribution.
//!
//! - [`hierarchy`]: which hierarchy accounts memory, and where cgroups and processes are in it.
//! - [`naming`]: pod and container from kubelet's and the runtimes' cgroup naming (pure).
//! - [`attribute`]: id -> path index that fills in events' cgroup, pod and OOM scope.

pub mod attribute;
mod error;
pub mod hierarchy;
pub mod naming;

pub use attribute::Attributor;
pub use error::CgroupError;
pub use hierarchy::{CgroupVersion, Hierarchy};
