//! The Node object bpflet registers and the status it reports, built from what the agent
//! knows (pure: no I/O here, see [`NodeInfo::read`] for the one reader).
//!
//! Upstream's shape, field by field: the well-known labels (`kubernetes.io/hostname`, `os`,
//! `arch` and their `beta.` twins), capacity and allocatable (`cpu`, `memory`, `pods`,
//! `ephemeral-storage`, `hugepages-*`), the addresses, `nodeInfo`, and the four conditions in
//! upstream's order (`MemoryPressure`, `DiskPressure`, `PIDPressure`, `Ready`). A condition's
//! `lastTransitionTime` moves only when its status does; `lastHeartbeatTime` is the time of
//! the report. [`needs_report`] is upstream's change detection: a status that differs in
//! anything but heartbeats is sent at once, an unchanged one only every
//! `nodeStatusReportFrequency`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// The version bpflet reports as `nodeInfo.kubeletVersion`: the kubelet API it follows, with
/// bpflet's own version as a pre-release tag so `kubectl get nodes` tells the agents apart.
pub const KUBELET_VERSION: &str = concat!("v1.34.0-bpflet.", env!("CARGO_PKG_VERSION"));

/// The condition types bpflet owns, in upstream's order.
pub const CONDITION_ORDER: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// The node's identity and what it registers with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeIdentity {
    /// `metadata.name` (`--hostname-override` or the host name, lower-cased).
    pub name: String,
    /// The `Hostname` address and the `kubernetes.io/hostname` label.
    pub hostname: String,
    /// `InternalIP` addresses, primary first.
    pub internal_ips: Vec<String>,
    /// `--node-labels`, added to the well-known ones (which they cannot override).
    pub labels: BTreeMap<String, String>,
    /// `--register-with-taints`.
    pub taints: Vec<Taint>,
}

/// What the node has. Byte counts are exact; `None` is unknown (left out of capacity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: Option<u64>,
    pub max_pods: u32,
}

/// What is held back from pods: `systemReserved` + `kubeReserved`, and the hard eviction
/// thresholds of `memory.available` and `nodefs.available` (upstream subtracts those too, so
/// the scheduler never fills the node past the point where the agent would evict).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

/// `nodeInfo`: what the node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    /// `<runtime name>://<version>`, e.g. `containerd://1.6.20~ds1`.
    pub container_runtime_version: String,
}

impl NodeInfo {
    /// Reads the node's ids and versions under `root` (`/` on a real node); what cannot be
    /// read is left empty, as upstream does for a missing `product_uuid`.
    #[must_use]
    pub fn read(root: &Path, runtime_name: &str, runtime_version: &str) -> Self {
        let first_line = |path: &str| {
            std::fs::read_to_string(root.join(path))
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .unwrap_or_default()
        };
        Self {
            machine_id: first_line("etc/machine-id"),
            system_uuid: first_line("sys/class/dmi/id/product_uuid"),
            boot_id: first_line("proc/sys/kernel/random/boot_id"),
            kernel_version: first_line("proc/sys/kernel/osrelease"),
            os_image: std::fs::read_to_string(root.join("etc/os-release"))
                .ok()
                .and_then(|s| os_pretty_name(&s))
                .unwrap_or_else(|| "Unknown".to_owned()),
            container_runtime_version: format!("{runtime_name}://{runtime_version}"),
        }
    }
}

/// `PRETTY_NAME` of an os-release file, unquoted.
fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.to_owned())
    })
}

/// The agent's own readiness, for the `Ready` condition: each `Err` is one reason the node
/// is not ready, in upstream's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// CRI `Status` `RuntimeReady` (or why it is not known).
    pub runtime: Result<(), String>,
    /// CRI `Status` `NetworkReady`.
    pub network: Result<(), String>,
    /// The PLEG's health check.
    pub pleg: Result<(), String>,
}

impl Readiness {
    /// The agent has not asked the runtime yet.
    #[must_use]
    pub fn unknown() -> Self {
        Self {
            runtime: Err("container runtime status check may not have completed yet".to_owned()),
            network: Ok(()),
            pleg: Ok(()),
        }
    }

    fn problems(&self) -> Vec<&str> {
        [&self.runtime, &self.pleg, &self.network]
            .into_iter()
            .filter_map(|r| r.as_ref().err().map(String::as_str))
            .collect()
    }
}

/// Everything one status report is made of.
#[derive(Debug, Clone)]
pub struct StatusInputs<'a> {
    pub identity: &'a NodeIdentity,
    pub resources: NodeResources,
    pub reserved: Reserved,
    pub info: &'a NodeInfo,
    /// The eviction manager's pressure conditions (any order; missing ones read as no
    /// pressure).
    pub pressure: &'a [NodeCondition],
    pub readiness: &'a Readiness,
    /// The kubelet API's port, once it is served (`daemonEndpoints`).
    pub kubelet_port: Option<u16>,
}

/// The Node to create when the node registers: metadata (labels), spec (taints) and status.
#[must_use]
pub fn registration(inputs: &StatusInputs<'_>, now: Timestamp) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(inputs.identity.name.clone()),
            labels: Some(labels(inputs.identity)),
            // Upstream's annotation: the node's volumes are attached by the controller.
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!inputs.identity.taints.is_empty()).then(|| inputs.identity.taints.clone()),
            ..NodeSpec::default()
        }),
        status: Some(status(inputs, None, now)),
    }
}

/// The node's labels: `--node-labels`, then the well-known ones (which win).
#[must_use]
pub fn labels(identity: &NodeIdentity) -> BTreeMap<String, String> {
    let mut labels = identity.labels.clone();
    let arch = go_arch();
    for (key, value) in [
        ("kubernetes.io/hostname", identity.hostname.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch),
    ] {
        labels.insert(key.to_owned(), value.to_owned());
    }
    labels
}

/// The status to report now; `previous` (what the API holds) keeps each condition's
/// `lastTransitionTime` while its status stays the same.
#[must_use]
pub fn status(
    inputs: &StatusInputs<'_>,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let capacity = capacity(&inputs.resources);
    let allocatable = allocatable(&inputs.resources, &inputs.reserved);
    let mut addresses: Vec<NodeAddress> = inputs
        .identity
        .internal_ips
        .iter()
        .map(|ip| NodeAddress {
            type_: "InternalIP".to_owned(),
            address: ip.clone(),
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".to_owned(),
        address: inputs.identity.hostname.clone(),
    });
    let previous_conditions = previous
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let conditions = CONDITION_ORDER
        .iter()
        .map(|kind| {
            let fresh = match *kind {
                "Ready" => ready_condition(inputs.readiness),
                pressure => inputs
                    .pressure
                    .iter()
                    .find(|c| c.type_ == pressure)
                    .cloned()
                    .unwrap_or_else(|| no_pressure(pressure)),
            };
            let previous = previous_conditions.iter().find(|c| c.type_ == *kind);
            stamp(fresh, previous, now)
        })
        .collect();
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(addresses),
        conditions: Some(conditions),
        daemon_endpoints: inputs.kubelet_port.map(|port| NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().to_owned(),
            boot_id: inputs.info.boot_id.clone(),
            container_runtime_version: inputs.info.container_runtime_version.clone(),
            kernel_version: inputs.info.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            machine_id: inputs.info.machine_id.clone(),
            operating_system: "linux".to_owned(),
            os_image: inputs.info.os_image.clone(),
            system_uuid: inputs.info.system_uuid.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Upstream's change detection: `reported` (the status the API holds) and `now_status`
/// differ in a field bpflet owns (anything but condition heartbeats, and nothing other
/// writers own, such as `volumesAttached` or another component's conditions), or
/// `report_frequency` passed since bpflet's last report.
#[must_use]
pub fn needs_report(
    reported: Option<&NodeStatus>,
    now_status: &NodeStatus,
    since_last_report: Duration,
    report_frequency: Duration,
) -> bool {
    let Some(reported) = reported else {
        return true;
    };
    since_last_report >= report_frequency || owned(reported) != owned(now_status)
}

/// The part of a status bpflet writes, heartbeats left out.
fn owned(status: &NodeStatus) -> NodeStatus {
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| CONDITION_ORDER.contains(&c.type_.as_str()))
        .map(|c| NodeCondition {
            last_heartbeat_time: None,
            ..c.clone()
        })
        .collect();
    NodeStatus {
        capacity: status.capacity.clone(),
        allocatable: status.allocatable.clone(),
        addresses: status.addresses.clone(),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: kubelet_endpoint_port(status),
            }),
        }),
        node_info: status.node_info.clone(),
        ..NodeStatus::default()
    }
}

/// The kubelet port a status names, 0 when it names none: the API server returns an unset
/// endpoint as port 0 (Go's `NodeDaemonEndpoints` is a struct, never left out), so the two
/// must compare equal or every pass would send the status again.
fn kubelet_endpoint_port(status: &NodeStatus) -> i32 {
    status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map_or(0, |e| e.port)
}

/// `previous`'s transition time when the status did not change, else `now`; heartbeat `now`.
fn stamp(
    mut fresh: NodeCondition,
    previous: Option<&NodeCondition>,
    now: Timestamp,
) -> NodeCondition {
    fresh.last_heartbeat_time = Some(Time(now));
    fresh.last_transition_time = match previous {
        Some(p) if p.status == fresh.status && p.last_transition_time.is_some() => {
            p.last_transition_time.clone()
        }
        _ => fresh.last_transition_time.or(Some(Time(now))),
    };
    fresh
}

fn ready_condition(readiness: &Readiness) -> NodeCondition {
    let problems = readiness.problems();
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_owned(),
        )
    } else {
        ("False", "KubeletNotReady", problems.join(", "))
    };
    NodeCondition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        ..NodeCondition::default()
    }
}

/// A pressure condition the eviction manager has not evaluated yet: upstream's "no pressure"
/// words (the manager's first evaluation replaces it).
fn no_pressure(kind: &str) -> NodeCondition {
    let (reason, message) = match kind {
        "MemoryPressure" => (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        "DiskPressure" => ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        _ => (
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    };
    NodeCondition {
        type_: kind.to_owned(),
        status: "False".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        ..NodeCondition::default()
    }
}

fn capacity(resources: &NodeResources) -> BTreeMap<String, Quantity> {
    let mut capacity = BTreeMap::from([
        ("cpu".to_owned(), cpu(resources.cpu_millis)),
        ("memory".to_owned(), bytes(resources.memory_bytes)),
        ("pods".to_owned(), Quantity(resources.max_pods.to_string())),
        // bpflet does not back pods with huge pages: none to offer (upstream reports 0 too
        // when none are reserved).
        ("hugepages-1Gi".to_owned(), Quantity("0".to_owned())),
        ("hugepages-2Mi".to_owned(), Quantity("0".to_owned())),
    ]);
    if let Some(storage) = resources.ephemeral_storage_bytes {
        capacity.insert("ephemeral-storage".to_owned(), bytes(storage));
    }
    capacity
}

fn allocatable(resources: &NodeResources, reserved: &Reserved) -> BTreeMap<String, Quantity> {
    let mut allocatable = capacity(resources);
    allocatable.insert(
        "cpu".to_owned(),
        cpu(resources.cpu_millis.saturating_sub(reserved.cpu_millis)),
    );
    allocatable.insert(
        "memory".to_owned(),
        bytes(resources.memory_bytes.saturating_sub(reserved.memory_bytes)),
    );
    if let Some(storage) = resources.ephemeral_storage_bytes {
        allocatable.insert(
            "ephemeral-storage".to_owned(),
            bytes(storage.saturating_sub(reserved.ephemeral_storage_bytes)),
        );
    }
    allocatable
}

/// Whole cores as a plain number, else millicores (`1500m`), as apimachinery prints them.
fn cpu(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Bytes in the largest binary unit that divides them exactly (`Ki` at least when it
/// divides; plain bytes otherwise), as apimachinery canonicalises a binary quantity.
fn bytes(n: u64) -> Quantity {
    const UNITS: [(&str, u64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if n == 0 {
        return Quantity("0".to_owned());
    }
    UNITS
        .iter()
        .find(|(_, size)| n.is_multiple_of(*size))
        .map_or_else(
            || Quantity(n.to_string()),
            |(unit, size)| Quantity(format!("{}{unit}", n / size)),
        )
}

/// The architecture as Go (and so Kubernetes) names it.
#[must_use]
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests;
