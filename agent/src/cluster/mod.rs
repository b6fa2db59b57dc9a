//! Cluster mode: bpflet as a node of a Kubernetes API server. The pure parts (what the Node
//! object and its status look like) live here; the adapters that talk to the API server
//! use `kube` and stay in this folder.

pub mod events;
pub mod heartbeat;
pub mod node;
pub mod pods;
pub mod status;
