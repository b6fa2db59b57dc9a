//! The library half of xtask: what both `cargo xtask` (the binary in `main.rs`) and the
//! root integration tests in `tests/` use. Import it as `xtask::agent`, `xtask::containerd`,
//! `xtask::images`; do not `mod` these files again from `main.rs`.
//!
//! Nothing here may need `protoc` or the agent crate: `cargo xtask setup` builds this on
//! a fresh machine before anything is installed.

pub mod agent;
pub mod cluster;
pub mod containerd;
pub mod images;
pub mod lock;
/// `/proc/<pid>/mountinfo`: the agent's own parser. The file needs nothing but std, so it
/// is compiled here too rather than written a second time (xtask cannot depend on the agent
/// crate, see above).
#[path = "../../agent/src/mountinfo.rs"]
pub mod mountinfo;
