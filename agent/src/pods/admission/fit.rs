//! Whether a pod fits the node beside the pods admitted before it: upstream's
//! `noderesources.Fits` against the node's allocatable (pod count, then cpu, memory and
//! ephemeral-storage requests) and `nodeports.Fits` (host ports in use).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerPort, Pod};

use crate::model::qos::{self, is_restartable_init_container};

/// What the node offers pods: its allocatable (capacity minus `systemReserved`,
/// `kubeReserved` and the hard eviction thresholds, as the Node status reports it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Zero when the size of the agent's file system is unknown (upstream leaves the
    /// resource out of allocatable, which fits no request either).
    pub ephemeral_storage_bytes: u64,
    /// `maxPods`.
    pub pods: u32,
}

/// A resource the node has too little of: upstream's `InsufficientResourceError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insufficient {
    /// `pods`, `cpu`, `memory` or `ephemeral-storage`.
    pub resource: &'static str,
    /// Millicores for cpu, bytes for memory and storage, a count for pods.
    pub requested: u64,
    pub used: u64,
    pub capacity: u64,
}

impl Insufficient {
    /// Upstream's admission reason: `OutOf` and the resource name.
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self.resource.as_bytes() {
            b"pods" => "OutOfpods",
            b"cpu" => "OutOfcpu",
            b"memory" => "OutOfmemory",
            _ => "OutOfephemeral-storage",
        }
    }

    /// Upstream's message.
    #[must_use]
    pub fn message(&self) -> String {
        format!(
            "Node didn't have enough resource: {}, requested: {}, used: {}, capacity: {}",
            self.resource, self.requested, self.used, self.capacity
        )
    }
}

/// What a pod asks the node for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Requests {
    cpu_millis: u64,
    memory_bytes: u64,
    ephemeral_storage_bytes: u64,
}

impl Requests {
    /// Upstream's `PodRequests`: sidecar-aware container totals, pod-level requests for cpu
    /// and memory, plus the overhead ([`qos::pod_requests`]).
    fn of(pod: &Pod) -> Self {
        let r = qos::pod_requests(pod);
        Self {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            ephemeral_storage_bytes: qos::pod_ephemeral_storage_request(pod),
        }
    }

    fn plus(self, o: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            ephemeral_storage_bytes: self
                .ephemeral_storage_bytes
                .saturating_add(o.ephemeral_storage_bytes),
        }
    }
}

/// Every resource `pod` does not fit in, in upstream's order (pods, cpu, memory,
/// ephemeral-storage); empty when it fits. A resource the pod does not request always fits
/// (`pods` aside: every pod counts one).
#[must_use]
pub fn insufficient(
    pod: &Pod,
    admitted: &[Arc<Pod>],
    allocatable: &Allocatable,
) -> Vec<Insufficient> {
    let mut short = Vec::new();
    let count = u64::try_from(admitted.len()).unwrap_or(u64::MAX);
    if count.saturating_add(1) > u64::from(allocatable.pods) {
        short.push(Insufficient {
            resource: "pods",
            requested: 1,
            used: count,
            capacity: u64::from(allocatable.pods),
        });
    }
    let want = Requests::of(pod);
    let used = admitted
        .iter()
        .map(|p| Requests::of(p))
        .fold(Requests::default(), Requests::plus);
    for (resource, requested, used, capacity) in [
        (
            "cpu",
            want.cpu_millis,
            used.cpu_millis,
            allocatable.cpu_millis,
        ),
        (
            "memory",
            want.memory_bytes,
            used.memory_bytes,
            allocatable.memory_bytes,
        ),
        (
            "ephemeral-storage",
            want.ephemeral_storage_bytes,
            used.ephemeral_storage_bytes,
            allocatable.ephemeral_storage_bytes,
        ),
    ] {
        if requested > 0 && requested > capacity.saturating_sub(used) {
            short.push(Insufficient {
                resource,
                requested,
                used,
                capacity,
            });
        }
    }
    short
}

/// The host ports a pod holds (upstream's `GetHostPorts`): those of its app containers and
/// sidecars (restartable init containers), with `hostPort > 0`.
fn host_ports(pod: &Pod) -> impl Iterator<Item = &ContainerPort> {
    let spec = pod.spec.as_ref();
    let sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| is_restartable_init_container(c));
    let apps = spec.map_or(&[][..], |s| s.containers.as_slice()).iter();
    sidecars
        .chain(apps)
        .flat_map(|c| c.ports.as_deref().unwrap_or(&[]))
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
}

/// `(host IP, protocol, port)` with upstream's defaults: `0.0.0.0` and `TCP`.
fn binding(p: &ContainerPort) -> (&str, &str, i32) {
    let ip = p
        .host_ip
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(ANY_IP);
    let protocol = p
        .protocol
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("TCP");
    (ip, protocol, p.host_port.unwrap_or(0))
}

const ANY_IP: &str = "0.0.0.0";

/// Whether every host port `pod` wants is free of the admitted pods' (upstream's
/// `nodeports.Fits`): a port on `0.0.0.0` conflicts with the same protocol and port on any
/// IP, one on a given IP with that IP's and `0.0.0.0`'s.
#[must_use]
pub fn ports_fit(pod: &Pod, admitted: &[Arc<Pod>]) -> bool {
    let used: BTreeSet<(&str, &str, i32)> = admitted
        .iter()
        .flat_map(|p| host_ports(p))
        .map(binding)
        .collect();
    host_ports(pod).map(binding).all(|(ip, protocol, port)| {
        !used.iter().any(|&(used_ip, used_protocol, used_port)| {
            used_protocol == protocol
                && used_port == port
                && (ip == ANY_IP || used_ip == ANY_IP || used_ip == ip)
        })
    })
}
