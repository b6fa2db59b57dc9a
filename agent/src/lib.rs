//! bpflet: a kubelet-class node agent that runs pods through the CRI and watches them
//! from the kernel with eBPF. `main.rs` only parses the command line and calls in here.

pub mod agent;
pub mod bpf;
pub mod cgroups;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod eviction;
pub mod gc;
pub mod health;
pub mod images;
pub mod logrotate;
pub mod metrics;
pub mod model;
pub mod mountinfo;
pub mod observe;
pub mod pleg;
pub mod pods;
pub mod probes;
pub mod record;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod status;
pub mod stream;
pub mod timer;
pub mod trace;
