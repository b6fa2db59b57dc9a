//! A pod spec turned into the CRI configs the runtime takes: [`sandbox_config`] and
//! [`container_config`]. Pure: everything from the node (log directory, cgroup parent, DNS,
//! IPs, prepared volumes, memory capacity) comes in through a context.
//!
//! What follows upstream's `kuberuntime` (sandbox and container config generation):
//! - sandbox: metadata, hostname (`spec.hostname` or the pod name cut to 63 characters; a
//!   host-network pod gets the node's host name), log directory
//!   `<pod logs dir>/<namespace>_<name>_<uid>`, DNS per `dnsPolicy`, port mappings,
//!   labels and annotations ([`super::labels`]), cgroup parent, namespace options
//!   (network NODE/POD, pid NODE/POD/CONTAINER, ipc NODE/POD), security context, sysctls,
//!   pod-level resources;
//! - container: `command`/`args` with `$(VAR)` expanded from the container's environment,
//!   environment variables ([`environment`]: `envFrom` first, then `env` in order, a later
//!   variable replacing an earlier one of the same name; `value` with `$(VAR)` expansion
//!   over the variables before it; `fieldRef` and `resourceFieldRef`, limits a container
//!   does not set being the node's allocatable, as upstream; `configMapKeyRef`,
//!   `secretKeyRef` and `envFrom` from the objects read for it, [`EnvObjects`]), mounts
//!   through [`PodVolumes`], log path
//!   `<name>/<attempt>.log`, linux resources and `oom_score_adj` from
//!   [`crate::model::qos`], and the security context.
//!
//! Not done (each needs something this agent does not have or do): `configMapKeyRef`,
//! `secretKeyRef` and `envFrom` in standalone mode (no API server: refused with an error),
//! service link variables, the termination message file mount, the agent-managed `/etc/hosts` (the
//! runtime writes one), checking `runAsNonRoot` against the image's user (only an explicit
//! `runAsUser: 0` is refused), `Localhost` seccomp profiles (refused), swap limits,
//! hugepages, AppArmor and SELinux.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMapKeySelector, Container, EnvFromSource, ObjectFieldSelector, Pod, PodSecurityContext,
    PodSpec, ResourceFieldSelector, SeccompProfile, SecretKeySelector,
};

use super::labels::{self, LabelError};
use super::objects::{EnvObjects, ObjectKind};
use super::volumes::{PodVolumes, SubPathMounts};
use crate::model::qos::{
    container_resource_config, is_restartable_init_container, pod_resource_config,
};
use crate::model::{format_pod, pod_uid};
use crate::runtime::api;

/// Upstream's limit on nameservers in a pod's resolv.conf (glibc reads three).
pub const MAX_DNS_NAMESERVERS: usize = 3;
/// Upstream's limit on search domains.
pub const MAX_DNS_SEARCHES: usize = 32;
/// Upstream's limit on the length of the search line.
pub const MAX_DNS_SEARCH_CHARS: usize = 2048;
/// The `ndots` option of cluster DNS.
pub const CLUSTER_DNS_OPTIONS: &[&str] = &["ndots:5"];
/// Longest host name a pod gets (a DNS label).
pub const MAX_HOSTNAME_LEN: usize = 63;

/// /proc and /sys paths masked in every unprivileged container.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// /proc paths read-only in every unprivileged container.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why a CRI config could not be built. Every variant names the pod (and container).
#[derive(Debug, thiserror::Error)]
pub enum ConfigBuildError {
    #[error("pod {pod}: {field}: {reason}")]
    Pod {
        pod: String,
        field: String,
        reason: String,
    },
    #[error("pod {pod}: container {container:?}: {field}: {reason}")]
    Container {
        pod: String,
        container: String,
        field: String,
        reason: String,
    },
    #[error("pod {pod}: container {container:?}: environment variable {variable:?}: {reason}")]
    Env {
        pod: String,
        container: String,
        variable: String,
        reason: String,
    },
    /// A configMap or secret (or one of its keys) the environment needs does not exist;
    /// `message` is upstream's (`configmap "x" not found`, `couldn't find key k in ConfigMap
    /// ns/x`), which the container's status shows.
    #[error("pod {pod}: container {container:?}: {field}: {message}")]
    MissingObject {
        pod: String,
        container: String,
        field: String,
        message: String,
    },
    #[error("pod {pod}: container {container:?}: cannot build annotations")]
    Annotations {
        pod: String,
        container: String,
        #[source]
        source: LabelError,
    },
}

/// A resolv.conf's settings (what a pod with DNS policy `Default` inherits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A resolv.conf that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub struct ResolvConfError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl ResolvConf {
    /// Reads a resolv.conf file (the host's is `/etc/resolv.conf`).
    ///
    /// # Errors
    /// [`ResolvConfError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, ResolvConfError> {
        fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .map_err(|source| ResolvConfError {
                path: path.to_owned(),
                source,
            })
    }

    /// Parses resolv.conf text: `nameserver` lines add up, the last `search` line wins
    /// (trailing dots dropped, `.` ignored), `options` add up (a later option replaces an
    /// earlier one of the same name). `domain`, comments and the rest are ignored.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_owned)),
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("options") => merge_options(&mut conf.options, fields),
                _ => {}
            }
        }
        conf
    }
}

/// The node's DNS settings for pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// The node's resolv.conf (kubelet `resolvConf`).
    pub host: ResolvConf,
    /// Cluster DNS servers (kubelet `clusterDNS`); empty: `ClusterFirst` pods fall back to
    /// the host's settings, as upstream does.
    pub cluster_dns: Vec<String>,
    /// The cluster domain (kubelet `clusterDomain`), e.g. `cluster.local`; empty: none.
    pub cluster_domain: String,
}

/// What [`sandbox_config`] needs from the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxContext {
    /// The root of pod log directories (upstream `/var/log/pods`); a pod logs to
    /// [`pod_log_dir`] below it.
    pub pod_logs_dir: PathBuf,
    /// The pod's cgroup, as the runtime takes it (e.g. `/kubepods/burstable/pod<uid>`).
    pub cgroup_parent: String,
    pub dns: DnsSettings,
}

/// What the node offers pods; limits a container does not set read as these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

impl NodeAllocatable {
    /// The same amounts, as the downward API reads them.
    #[must_use]
    pub fn downward(&self) -> crate::model::downward::Allocatable {
        crate::model::downward::Allocatable {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            ephemeral_storage_bytes: self.ephemeral_storage_bytes,
        }
    }

    /// Upstream's node allocatable: each resource's capacity minus `systemReserved` and
    /// `kubeReserved` (never below zero). `nodefs_bytes` is the size of the file system
    /// that holds the agent's root directory; unknown counts as zero.
    #[must_use]
    pub fn from_capacity(
        cpu_millis: u64,
        memory_bytes: u64,
        nodefs_bytes: Option<u64>,
        system: &crate::config::Reservation,
        kube: &crate::config::Reservation,
    ) -> Self {
        let left = |capacity: u64, f: fn(&crate::config::Reservation) -> Option<u64>| {
            capacity
                .saturating_sub(f(system).unwrap_or(0))
                .saturating_sub(f(kube).unwrap_or(0))
        };
        Self {
            cpu_millis: left(cpu_millis, |r| r.cpu_millis),
            memory_bytes: left(memory_bytes, |r| r.memory_bytes),
            ephemeral_storage_bytes: left(nodefs_bytes.unwrap_or(0), |r| r.ephemeral_storage_bytes),
        }
    }
}

/// What [`container_config`] needs from the node and the pod's sandbox.
#[derive(Debug, Clone, Default)]
pub struct ContainerContext<'a> {
    /// The pod's prepared volumes; `None`: none (a volume mount is then an error).
    pub volumes: Option<&'a PodVolumes>,
    /// Where this container's `subPath` mounts are pinned
    /// ([`PodVolumes::pin_sub_paths`]); `None`: none (a `subPath` is then an error).
    pub sub_paths: Option<&'a SubPathMounts>,
    /// `spec.nodeName` when the pod does not set it.
    pub node_name: String,
    /// The sandbox's IPs, primary first; for a host-network pod, empty means the host's.
    pub pod_ips: Vec<String>,
    /// The node's IPs, primary first.
    pub host_ips: Vec<String>,
    /// The node's memory capacity, for `oom_score_adj`.
    pub memory_capacity_bytes: u64,
    pub allocatable: NodeAllocatable,
    /// The configMaps and secrets this container's environment names, read from the API
    /// server; `None`: standalone mode, where `configMapKeyRef`, `secretKeyRef` and
    /// `envFrom` are refused.
    pub env_objects: Option<&'a EnvObjects>,
}

fn spec_of(pod: &Pod) -> Result<&PodSpec, ConfigBuildError> {
    pod.spec.as_ref().ok_or_else(|| ConfigBuildError::Pod {
        pod: format_pod(pod),
        field: "spec".to_owned(),
        reason: "is required".to_owned(),
    })
}

fn is_host_network(spec: &PodSpec) -> bool {
    spec.host_network == Some(true)
}

/// `<pod_logs_dir>/<namespace>_<name>_<uid>`: the pod's log directory.
#[must_use]
pub fn pod_log_dir(pod_logs_dir: &Path, pod: &Pod) -> PathBuf {
    pod_logs_dir.join(pod_log_dir_name(pod))
}

fn pod_log_dir_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    format!(
        "{}_{}_{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    )
}

/// Why a pod's log directory was not removed.
#[derive(Debug, thiserror::Error)]
pub enum LogDirError {
    #[error("{name:?} is not one entry of {}: not removing it", logs_dir.display())]
    NotAnEntry { logs_dir: PathBuf, name: String },
    #[error("{}: not a directory (a {kind}): not removing it", path.display())]
    NotADirectory { path: PathBuf, kind: &'static str },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Removes the pod's log directory ([`pod_log_dir`]) with everything in it, and never
/// anything else: its name must be one plain entry of `pod_logs_dir` (no `/`, not `.` or
/// `..`, whatever the pod's fields hold) and the entry must be a directory, not a symbolic
/// link. The removal does not follow symbolic links (a link swapped in after the check is
/// removed itself, not its target). A missing directory is not an error.
///
/// # Errors
/// [`LogDirError`] naming the entry and why it was left alone, or the removal failure.
pub fn remove_pod_log_dir(pod_logs_dir: &Path, pod: &Pod) -> Result<(), LogDirError> {
    remove_log_dir_named(pod_logs_dir, &pod_log_dir_name(pod))
}

/// [`remove_pod_log_dir`] by the directory's name (`<namespace>_<name>_<uid>`), with the
/// same checks.
///
/// # Errors
/// [`LogDirError`] naming the entry and why it was left alone, or the removal failure.
pub fn remove_log_dir_named(pod_logs_dir: &Path, name: &str) -> Result<(), LogDirError> {
    let name = name.to_owned();
    let mut components = Path::new(&name).components();
    let one_entry = matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(c)), None) if c == name.as_str()
    );
    if !one_entry {
        return Err(LogDirError::NotAnEntry {
            logs_dir: pod_logs_dir.to_owned(),
            name,
        });
    }
    let path = pod_logs_dir.join(&name);
    let metadata = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(LogDirError::Remove { path, source }),
    };
    let file_type = metadata.file_type();
    if !file_type.is_dir() {
        let kind = if file_type.is_symlink() {
            "symbolic link"
        } else {
            "file"
        };
        return Err(LogDirError::NotADirectory { path, kind });
    }
    match fs::remove_dir_all(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(LogDirError::Remove { path, source: e })
        }
        _ => Ok(()),
    }
}

/// The container's log file, relative to the pod's log directory.
#[must_use]
pub fn container_log_path(container_name: &str, attempt: u32) -> String {
    format!("{container_name}/{attempt}.log")
}

/// The CRI config of the pod's sandbox, attempt `attempt`.
///
/// # Errors
/// [`ConfigBuildError`] naming the pod and field for a spec the agent cannot serve.
pub fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    ctx: &SandboxContext,
) -> Result<api::PodSandboxConfig, ConfigBuildError> {
    let spec = spec_of(pod)?;
    let pod_err = |field: &str, reason: String| ConfigBuildError::Pod {
        pod: format_pod(pod),
        field: field.to_owned(),
        reason,
    };
    // A host-network sandbox shares the node's UTS namespace: the runtime refuses to set a
    // hostname there (runc: "unable to set hostname without a private UTS namespace"), and
    // upstream leaves it empty.
    let hostname = if is_host_network(spec) {
        String::new()
    } else {
        pod_hostname(pod).map_err(|reason| pod_err("spec.hostname", reason))?
    };
    let resources = pod_resource_config(pod);
    Ok(api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod_uid(pod).to_owned(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: pod_log_dir(&ctx.pod_logs_dir, pod)
            .to_string_lossy()
            .into_owned(),
        dns_config: Some(dns_config(pod, spec, &ctx.dns).map_err(|(f, r)| pod_err(f, r))?),
        port_mappings: port_mappings(pod, spec)?,
        labels: labels::sandbox_labels(pod),
        annotations: labels::sandbox_annotations(pod),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: ctx.cgroup_parent.clone(),
            security_context: Some(sandbox_security_context(spec).map_err(|(f, r)| pod_err(f, r))?),
            sysctls: sysctls(spec),
            overhead: None,
            resources: Some(api::LinuxContainerResources {
                cpu_period: to_i64(resources.cpu_period_us),
                cpu_quota: resources.cpu_quota_us.unwrap_or(0),
                cpu_shares: to_i64(resources.cpu_shares),
                memory_limit_in_bytes: resources.memory_limit_bytes.map_or(0, to_i64),
                ..api::LinuxContainerResources::default()
            }),
        }),
        windows: None,
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `spec.hostname`, else the pod name cut to 63 characters without a trailing `-` or `.`.
fn pod_hostname(pod: &Pod) -> Result<String, String> {
    let spec_hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty());
    if let Some(hostname) = spec_hostname {
        crate::model::validation::validate_dns_label(hostname)
            .map_err(|r| format!("{hostname:?}: {r}"))?;
        return Ok(hostname.to_owned());
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if name.len() <= MAX_HOSTNAME_LEN {
        return Ok(name.to_owned());
    }
    let cut = name
        .get(..MAX_HOSTNAME_LEN)
        .ok_or_else(|| format!("pod name {name:?} is not ASCII"))?;
    Ok(cut.trim_end_matches(['-', '.']).to_owned())
}

/// Adds `options` (each `name` or `name:value`), replacing an earlier one of the same name.
fn merge_options<'a>(into: &mut Vec<String>, options: impl IntoIterator<Item = &'a str>) {
    for option in options {
        let name = option.split(':').next().unwrap_or(option);
        match into.iter_mut().find(|o| o.split(':').next() == Some(name)) {
            Some(existing) => option.clone_into(existing),
            None => into.push(option.to_owned()),
        }
    }
}

fn push_unique(into: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// The pod's DNS config per `dnsPolicy` (upstream `GetPodDNS`), with `spec.dnsConfig`
/// appended and upstream's limits applied.
fn dns_config(
    pod: &Pod,
    spec: &PodSpec,
    dns: &DnsSettings,
) -> Result<api::DnsConfig, (&'static str, String)> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "None" => None,
        "Default" => Some(false),
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!is_host_network(spec)),
        other => {
            return Err((
                "spec.dnsPolicy",
                format!(
                    "{other:?}: must be ClusterFirst, ClusterFirstWithHostNet, Default or None"
                ),
            ));
        }
    };
    let mut config = api::DnsConfig::default();
    match cluster {
        None => {}
        Some(true) if !dns.cluster_dns.is_empty() => {
            config.servers.clone_from(&dns.cluster_dns);
            if !dns.cluster_domain.is_empty() {
                let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
                let domain = &dns.cluster_domain;
                config.searches = vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ];
            }
            push_unique(&mut config.searches, dns.host.searches.iter().cloned());
            config.options = CLUSTER_DNS_OPTIONS.iter().map(|&o| o.to_owned()).collect();
        }
        // The host's settings, also for cluster-first pods when no cluster DNS is set.
        Some(_) => {
            config.servers.clone_from(&dns.host.nameservers);
            config.searches.clone_from(&dns.host.searches);
            config.options.clone_from(&dns.host.options);
        }
    }
    if let Some(extra) = &spec.dns_config {
        push_unique(
            &mut config.servers,
            extra.nameservers.iter().flatten().cloned(),
        );
        push_unique(
            &mut config.searches,
            extra.searches.iter().flatten().cloned(),
        );
        let options: Vec<String> = extra
            .options
            .iter()
            .flatten()
            .filter_map(|o| {
                let name = o.name.as_deref().filter(|n| !n.is_empty())?;
                Some(match o.value.as_deref() {
                    Some(v) if !v.is_empty() => format!("{name}:{v}"),
                    _ => name.to_owned(),
                })
            })
            .collect();
        merge_options(&mut config.options, options.iter().map(String::as_str));
    }
    if config.servers.len() > MAX_DNS_NAMESERVERS {
        tracing::warn!(
            pod = %format_pod(pod),
            servers = ?config.servers,
            "more than {MAX_DNS_NAMESERVERS} nameservers; the others are left out"
        );
        config.servers.truncate(MAX_DNS_NAMESERVERS);
    }
    fit_searches(pod, &mut config.searches);
    Ok(config)
}

/// Keeps at most [`MAX_DNS_SEARCHES`] searches, in at most [`MAX_DNS_SEARCH_CHARS`].
fn fit_searches(pod: &Pod, searches: &mut Vec<String>) {
    let mut chars = 0;
    let keep = searches
        .iter()
        .take(MAX_DNS_SEARCHES)
        .take_while(|s| {
            chars += s.len() + usize::from(chars > 0);
            chars <= MAX_DNS_SEARCH_CHARS
        })
        .count();
    if keep < searches.len() {
        tracing::warn!(
            pod = %format_pod(pod),
            dropped = ?&searches[keep..],
            "search line longer than {MAX_DNS_SEARCHES} domains or {MAX_DNS_SEARCH_CHARS} \
             characters; the rest is left out"
        );
        searches.truncate(keep);
    }
}

/// App containers and sidecars: the containers that serve.
fn serving_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| is_restartable_init_container(c)),
    )
}

fn port_mappings(pod: &Pod, spec: &PodSpec) -> Result<Vec<api::PortMapping>, ConfigBuildError> {
    let mut out: Vec<api::PortMapping> = Vec::new();
    for c in serving_containers(spec) {
        for (i, port) in c.ports.iter().flatten().enumerate() {
            let err = |reason: String| ConfigBuildError::Container {
                pod: format_pod(pod),
                container: c.name.clone(),
                field: format!("ports[{i}]"),
                reason,
            };
            let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => api::Protocol::Tcp,
                "UDP" => api::Protocol::Udp,
                "SCTP" => api::Protocol::Sctp,
                other => return Err(err(format!("protocol {other:?}: must be TCP, UDP or SCTP"))),
            };
            if !(1..=65535).contains(&port.container_port) {
                return Err(err(format!(
                    "containerPort {} is not in 1-65535",
                    port.container_port
                )));
            }
            let host_port = port.host_port.unwrap_or(0);
            if !(0..=65535).contains(&host_port) {
                return Err(err(format!("hostPort {host_port} is not in 0-65535")));
            }
            let mapping = api::PortMapping {
                protocol: protocol.into(),
                container_port: port.container_port,
                host_port,
                host_ip: port.host_ip.clone().unwrap_or_default(),
            };
            if !out.contains(&mapping) {
                out.push(mapping);
            }
        }
    }
    Ok(out)
}

/// The pod's containers get no pid namespace of their own: they share the pod's
/// (`shareProcessNamespace`) or the node's (`hostPID`), so no container process is a
/// namespace's init.
pub fn shares_pid_namespace(spec: &PodSpec) -> bool {
    spec.share_process_namespace == Some(true) || spec.host_pid == Some(true)
}

fn namespace_options(spec: &PodSpec) -> api::NamespaceOption {
    let mode = |host: Option<bool>, otherwise: api::NamespaceMode| {
        if host == Some(true) {
            api::NamespaceMode::Node
        } else {
            otherwise
        }
    };
    let pid = if !shares_pid_namespace(spec) {
        api::NamespaceMode::Container
    } else if spec.host_pid == Some(true) {
        api::NamespaceMode::Node
    } else {
        api::NamespaceMode::Pod
    };
    api::NamespaceOption {
        network: mode(spec.host_network, api::NamespaceMode::Pod).into(),
        pid: pid.into(),
        ipc: mode(spec.host_ipc, api::NamespaceMode::Pod).into(),
        ..api::NamespaceOption::default()
    }
}

/// The CRI seccomp profile; none given is unconfined (upstream without `seccompDefault`).
fn seccomp(profile: Option<&SeccompProfile>) -> Result<api::SecurityProfile, String> {
    use api::security_profile::ProfileType;
    let profile_type = match profile.map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => ProfileType::Unconfined,
        Some("RuntimeDefault") => ProfileType::RuntimeDefault,
        Some("Localhost") => {
            return Err(
                "Localhost profiles are not supported (no seccomp profile directory)".to_owned(),
            );
        }
        Some(other) => {
            return Err(format!(
                "type {other:?}: must be RuntimeDefault, Unconfined or Localhost"
            ));
        }
    };
    Ok(api::SecurityProfile {
        profile_type: profile_type.into(),
        localhost_ref: String::new(),
    })
}

/// `supplementalGroups` plus `fsGroup`.
fn supplemental_groups(psc: Option<&PodSecurityContext>) -> Vec<i64> {
    let Some(psc) = psc else {
        return Vec::new();
    };
    let mut groups = psc.supplemental_groups.clone().unwrap_or_default();
    if let Some(fs_group) = psc.fs_group
        && !groups.contains(&fs_group)
    {
        groups.push(fs_group);
    }
    groups
}

fn is_privileged(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

fn sandbox_security_context(
    spec: &PodSpec,
) -> Result<api::LinuxSandboxSecurityContext, (&'static str, String)> {
    let psc = spec.security_context.as_ref();
    let seccomp = seccomp(psc.and_then(|s| s.seccomp_profile.as_ref()))
        .map_err(|r| ("spec.securityContext.seccompProfile", r))?;
    let any_privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(is_privileged);
    Ok(api::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(spec)),
        run_as_user: psc
            .and_then(|s| s.run_as_user)
            .map(|value| api::Int64Value { value }),
        run_as_group: psc
            .and_then(|s| s.run_as_group)
            .map(|value| api::Int64Value { value }),
        supplemental_groups: supplemental_groups(psc),
        privileged: any_privileged,
        seccomp: Some(seccomp),
        ..api::LinuxSandboxSecurityContext::default()
    })
}

/// `spec.securityContext.sysctls`, names with `/` separators turned into `.` ones. Which
/// sysctls a pod may set is decided at admission ([`super::sysctls`]), before any sandbox.
fn sysctls(spec: &PodSpec) -> HashMap<String, String> {
    spec.security_context
        .iter()
        .flat_map(|s| s.sysctls.iter().flatten())
        .map(|s| (super::sysctls::normalize(&s.name), s.value.clone()))
        .collect()
}

/// The CRI config of `container` of `pod`, attempt `attempt` (its restart count).
///
/// # Errors
/// [`ConfigBuildError`] naming the pod, container and field (or variable) for a spec the
/// agent cannot serve.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    ctx: &ContainerContext<'_>,
) -> Result<api::ContainerConfig, ConfigBuildError> {
    let spec = spec_of(pod)?;
    let err = |field: &str, reason: String| ConfigBuildError::Container {
        pod: format_pod(pod),
        container: container.name.clone(),
        field: field.to_owned(),
        reason,
    };
    let image = container
        .image
        .as_deref()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| err("image", "is required".to_owned()))?;
    let envs = environment(pod, spec, container, ctx)?;
    let lookup = |name: &str| {
        envs.iter()
            .rev()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.clone())
    };
    let expand_all =
        |list: &Option<Vec<String>>| list.iter().flatten().map(|s| expand(s, lookup)).collect();
    let resources = container_resource_config(pod, container, ctx.memory_capacity_bytes);
    let annotations = labels::container_annotations(pod, container, attempt).map_err(|source| {
        ConfigBuildError::Annotations {
            pod: format_pod(pod),
            container: container.name.clone(),
            source,
        }
    })?;
    Ok(api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: image.to_owned(),
            user_specified_image: image.to_owned(),
            ..api::ImageSpec::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        mounts: mounts(container, ctx.volumes, ctx.sub_paths, err)?,
        envs,
        labels: labels::container_labels(pod, container),
        annotations,
        log_path: container_log_path(&container.name, attempt),
        // Kept open by the runtime for `kubectl attach -i` / `kubectl run -it`.
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: to_i64(resources.cpu_period_us),
                cpu_quota: resources.cpu_quota_us.unwrap_or(0),
                cpu_shares: to_i64(resources.cpu_shares),
                memory_limit_in_bytes: resources.memory_limit_bytes.map_or(0, to_i64),
                oom_score_adj: i64::from(resources.oom_score_adj),
                ..api::LinuxContainerResources::default()
            }),
            security_context: Some(container_security_context(spec, container, err)?),
        }),
        ..api::ContainerConfig::default()
    })
}

/// The CRI mounts: a volume's node path, or for a `subPath` the mount point it is pinned on
/// (never a path inside the volume, which a container could swap for a link).
fn mounts(
    container: &Container,
    volumes: Option<&PodVolumes>,
    sub_paths: Option<&SubPathMounts>,
    err: impl Fn(&str, String) -> ConfigBuildError,
) -> Result<Vec<api::Mount>, ConfigBuildError> {
    let mut out = Vec::new();
    for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
        let field = format!("volumeMounts[{i}]");
        let Some(volume_path) = volumes.and_then(|v| v.host_path(&m.name)) else {
            return Err(err(&field, format!("volume {:?} was not prepared", m.name)));
        };
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => volume_path,
            Some(sub_path) => sub_paths.and_then(|s| s.get(i)).ok_or_else(|| {
                err(
                    &format!("{field}.subPath"),
                    format!("{sub_path:?} of volume {:?} was not prepared", m.name),
                )
            })?,
        };
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => api::MountPropagation::PropagationPrivate,
            Some("HostToContainer") => api::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") if is_privileged(container) => {
                api::MountPropagation::PropagationBidirectional
            }
            Some("Bidirectional") => {
                return Err(err(
                    &format!("{field}.mountPropagation"),
                    "Bidirectional needs a privileged container".to_owned(),
                ));
            }
            Some(other) => {
                return Err(err(
                    &format!("{field}.mountPropagation"),
                    format!("{other:?}: must be None, HostToContainer or Bidirectional"),
                ));
            }
        };
        out.push(api::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            // The volumes whose files the agent writes are read-only, as upstream's.
            readonly: m.read_only.unwrap_or(false) || volumes.is_some_and(|v| v.read_only(&m.name)),
            propagation: propagation.into(),
            ..api::Mount::default()
        });
    }
    Ok(out)
}

fn container_security_context(
    spec: &PodSpec,
    container: &Container,
    err: impl Fn(&str, String) -> ConfigBuildError,
) -> Result<api::LinuxContainerSecurityContext, ConfigBuildError> {
    let psc = spec.security_context.as_ref();
    let csc = container.security_context.as_ref();
    // The container's setting, else the pod's.
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let run_as_non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root));
    if run_as_non_root == Some(true) && run_as_user == Some(0) {
        return Err(err(
            "securityContext.runAsUser",
            "0 breaks runAsNonRoot".to_owned(),
        ));
    }
    let privileged = is_privileged(container);
    let caps = csc.and_then(|s| s.capabilities.as_ref());
    let seccomp_profile = csc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| psc.and_then(|s| s.seccomp_profile.as_ref()));
    let paths = |list: &[&str]| {
        if privileged {
            Vec::new()
        } else {
            list.iter().map(|&p| p.to_owned()).collect()
        }
    };
    Ok(api::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| api::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..api::Capability::default()
        }),
        privileged,
        namespace_options: Some(namespace_options(spec)),
        run_as_user: run_as_user.map(|value| api::Int64Value { value }),
        run_as_group: run_as_group.map(|value| api::Int64Value { value }),
        readonly_rootfs: csc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: supplemental_groups(psc),
        no_new_privs: csc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        seccomp: Some(
            seccomp(seccomp_profile).map_err(|r| err("securityContext.seccompProfile", r))?,
        ),
        ..api::LinuxContainerSecurityContext::default()
    })
}

/// Expands `$(NAME)` references as Kubernetes does: a defined name becomes its value, an
/// undefined one stays as written, `$$` is a literal `$`, and any other `$` is literal.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.as_bytes().first() {
            Some(b'$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some(b'(') => {
                if let Some(close) = after.find(')') {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            let _ = write!(out, "$({name})");
                        }
                    }
                    rest = &after[close + 1..];
                } else {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Keys of an `envFrom` source left out of a container's environment because they are not
/// environment variable names (upstream's `InvalidEnvironmentVariableNames` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKeys {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    /// Sorted, prefix included.
    pub keys: Vec<String>,
}

impl SkippedKeys {
    /// Upstream's event message.
    #[must_use]
    pub fn message(&self) -> String {
        let kind = match self.kind {
            ObjectKind::ConfigMap => "configMap",
            ObjectKind::Secret => "secret",
        };
        format!(
            "Keys [{}] from the EnvFrom {kind} {}/{} were skipped since they are considered \
             invalid environment variable names.",
            self.keys.join(", "),
            self.namespace,
            self.name
        )
    }
}

/// An environment variable name as upstream's relaxed rule has it (the rule of kubelet
/// v1.34): not empty, printable ASCII, no `=`. The API server accepts no configMap or
/// secret key and no `envFrom` prefix that breaks it, so only objects from elsewhere can
/// have such keys; a `=` in a name would corrupt the container's environment.
#[must_use]
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// The `envFrom` keys of `container` that [`environment`] leaves out as invalid names,
/// per source (nothing when a source is missing: that fails the container instead).
#[must_use]
pub fn skipped_env_keys(
    pod: &Pod,
    container: &Container,
    objects: &EnvObjects,
) -> Vec<SkippedKeys> {
    env_from_vars(pod, container, objects)
        .map(|(_, skipped)| skipped)
        .unwrap_or_default()
}

/// Upstream's message for an object that does not exist.
fn not_found(kind: ObjectKind, name: &str) -> String {
    format!("{kind} {name:?} not found")
}

/// Upstream's message for a key an object lacks.
fn key_not_found(kind: ObjectKind, key: &str, namespace: &str, name: &str) -> String {
    format!(
        "couldn't find key {key} in {} {namespace}/{name}",
        kind.api_name()
    )
}

/// Environment variables as (name, value), in order.
type EnvVars = Vec<(String, String)>;

/// The variables of `container`'s `envFrom` sources, in order (each source's keys sorted,
/// after its `prefix`), and the keys skipped as invalid names. A missing source that is
/// not `optional` is an error naming it; an optional one gives nothing.
fn env_from_vars(
    pod: &Pod,
    container: &Container,
    objects: &EnvObjects,
) -> Result<(EnvVars, Vec<SkippedKeys>), ConfigBuildError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut vars = Vec::new();
    let mut skipped = Vec::new();
    for (i, from) in container.env_from.iter().flatten().enumerate() {
        let missing = |field: &str, message: String| ConfigBuildError::MissingObject {
            pod: format_pod(pod),
            container: container.name.clone(),
            field: format!("envFrom[{i}].{field}"),
            message,
        };
        let (kind, name, data): (ObjectKind, &str, Vec<(String, String)>) =
            match env_from_source(from, objects) {
                EnvFromData::Neither | EnvFromData::Missing { optional: true, .. } => continue,
                EnvFromData::Missing {
                    kind,
                    name,
                    field,
                    optional: false,
                } => return Err(missing(field, not_found(kind, name))),
                EnvFromData::Found { kind, name, data } => (kind, name, data),
            };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let mut invalid = Vec::new();
        for (key, value) in data {
            let key = format!("{prefix}{key}");
            if is_env_var_name(&key) {
                vars.push((key, value));
            } else {
                invalid.push(key);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            skipped.push(SkippedKeys {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                keys: invalid,
            });
        }
    }
    Ok((vars, skipped))
}

/// What one `envFrom` source gives.
enum EnvFromData<'a> {
    /// It names neither a configMap nor a secret.
    Neither,
    Missing {
        kind: ObjectKind,
        name: &'a str,
        field: &'static str,
        optional: bool,
    },
    Found {
        kind: ObjectKind,
        name: &'a str,
        data: Vec<(String, String)>,
    },
}

fn env_from_source<'a>(from: &'a EnvFromSource, objects: &EnvObjects) -> EnvFromData<'a> {
    if let Some(r) = &from.config_map_ref {
        let name = r.name.as_str();
        return match objects.config_maps.get(name).and_then(Option::as_ref) {
            Some(cm) => EnvFromData::Found {
                kind: ObjectKind::ConfigMap,
                name,
                data: cm
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            None => EnvFromData::Missing {
                kind: ObjectKind::ConfigMap,
                name,
                field: "configMapRef",
                optional: r.optional == Some(true),
            },
        };
    }
    if let Some(r) = &from.secret_ref {
        let name = r.name.as_str();
        return match objects.secrets.get(name).and_then(Option::as_ref) {
            Some(s) => EnvFromData::Found {
                kind: ObjectKind::Secret,
                name,
                data: s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
            },
            None => EnvFromData::Missing {
                kind: ObjectKind::Secret,
                name,
                field: "secretRef",
                optional: r.optional == Some(true),
            },
        };
    }
    EnvFromData::Neither
}

/// A `configMapKeyRef` value; `Ok(None)`: the configMap or key is missing and the reference
/// is `optional`, so the variable is left out (as upstream does).
fn config_map_key(
    namespace: &str,
    sel: &ConfigMapKeySelector,
    objects: &EnvObjects,
) -> Result<Option<String>, String> {
    let optional = sel.optional == Some(true);
    let kind = ObjectKind::ConfigMap;
    let Some(cm) = objects.config_maps.get(&sel.name).and_then(Option::as_ref) else {
        return if optional {
            Ok(None)
        } else {
            Err(not_found(kind, &sel.name))
        };
    };
    match cm.data.as_ref().and_then(|d| d.get(&sel.key)) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(key_not_found(kind, &sel.key, namespace, &sel.name)),
    }
}

/// A `secretKeyRef` value (bytes that are not UTF-8 are replaced, the CRI takes text); as
/// [`config_map_key`] otherwise.
fn secret_key(
    namespace: &str,
    sel: &SecretKeySelector,
    objects: &EnvObjects,
) -> Result<Option<String>, String> {
    let optional = sel.optional == Some(true);
    let kind = ObjectKind::Secret;
    let Some(s) = objects.secrets.get(&sel.name).and_then(Option::as_ref) else {
        return if optional {
            Ok(None)
        } else {
            Err(not_found(kind, &sel.name))
        };
    };
    match s.data.as_ref().and_then(|d| d.get(&sel.key)) {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
        None if optional => Ok(None),
        None => Err(key_not_found(kind, &sel.key, namespace, &sel.name)),
    }
}

/// Sets `key` to `value`: a new name goes last, a repeated one keeps its place and takes
/// the new value.
fn set_env(envs: &mut Vec<api::KeyValue>, key: &str, value: String) {
    match envs.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value,
        None => envs.push(api::KeyValue {
            key: key.to_owned(),
            value,
        }),
    }
}

/// The container's environment, as upstream builds it: the `envFrom` sources first, then
/// `env` in order, a later variable replacing an earlier one of the same name (which keeps
/// its first place). A `value` expands `$(VAR)` over the variables set before it. A
/// missing configMap or secret, or key, fails unless its reference is `optional`
/// ([`ConfigBuildError::MissingObject`], upstream's message); an optional one that is
/// missing leaves its variable out. Without [`ContainerContext::env_objects`] (standalone
/// mode) `configMapKeyRef`, `secretKeyRef` and `envFrom` are refused.
fn environment(
    pod: &Pod,
    spec: &PodSpec,
    container: &Container,
    ctx: &ContainerContext<'_>,
) -> Result<Vec<api::KeyValue>, ConfigBuildError> {
    let mut envs: Vec<api::KeyValue> = Vec::new();
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        let Some(objects) = ctx.env_objects else {
            return Err(ConfigBuildError::Container {
                pod: format_pod(pod),
                container: container.name.clone(),
                field: "envFrom".to_owned(),
                reason: "configMapRef and secretRef need an API server; not supported".to_owned(),
            });
        };
        for (key, value) in env_from_vars(pod, container, objects)?.0 {
            set_env(&mut envs, &key, value);
        }
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    for var in container.env.iter().flatten() {
        let env_err = |reason: String| ConfigBuildError::Env {
            pod: format_pod(pod),
            container: container.name.clone(),
            variable: var.name.clone(),
            reason,
        };
        let missing = |field: &str, message: String| ConfigBuildError::MissingObject {
            pod: format_pod(pod),
            container: container.name.clone(),
            field: format!("environment variable {:?}: valueFrom.{field}", var.name),
            message,
        };
        let value = match (var.value.as_deref(), var.value_from.as_ref()) {
            (Some(v), _) if !v.is_empty() => expand(v, |name| {
                envs.iter()
                    .find(|kv| kv.key == name)
                    .map(|kv| kv.value.clone())
            }),
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, spec, field, ctx).map_err(env_err)?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_value(spec, container, resource, ctx).map_err(env_err)?
                } else if let Some(sel) = &from.config_map_key_ref {
                    let Some(objects) = ctx.env_objects else {
                        return Err(env_err(
                            "valueFrom.configMapKeyRef needs an API server; not supported"
                                .to_owned(),
                        ));
                    };
                    match config_map_key(namespace, sel, objects)
                        .map_err(|m| missing("configMapKeyRef", m))?
                    {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(sel) = &from.secret_key_ref {
                    let Some(objects) = ctx.env_objects else {
                        return Err(env_err(
                            "valueFrom.secretKeyRef needs an API server; not supported".to_owned(),
                        ));
                    };
                    match secret_key(namespace, sel, objects)
                        .map_err(|m| missing("secretKeyRef", m))?
                    {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    return Err(env_err("valueFrom names no source".to_owned()));
                }
            }
            _ => String::new(),
        };
        set_env(&mut envs, &var.name, value);
    }
    Ok(envs)
}

fn first_or_err(ips: &[String], what: &str) -> Result<String, String> {
    ips.first()
        .cloned()
        .ok_or_else(|| format!("{what} is not known yet"))
}

/// A `fieldRef` value (upstream's downward API paths allowed in environment variables).
fn field_value(
    pod: &Pod,
    spec: &PodSpec,
    sel: &ObjectFieldSelector,
    ctx: &ContainerContext<'_>,
) -> Result<String, String> {
    if let Some(v) = sel
        .api_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "v1")
    {
        return Err(format!("fieldRef.apiVersion {v:?}: only v1 is supported"));
    }
    let meta = &pod.metadata;
    let pod_ips = if ctx.pod_ips.is_empty() && is_host_network(spec) {
        &ctx.host_ips
    } else {
        &ctx.pod_ips
    };
    let path = sel.field_path.as_str();
    if let Some(value) = crate::model::downward::metadata_field(meta, path) {
        return Ok(value);
    }
    Ok(match path {
        "spec.nodeName" => spec
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ctx.node_name.clone()),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" => first_or_err(pod_ips, "the pod IP")?,
        "status.podIPs" => {
            first_or_err(pod_ips, "the pod IP")?;
            pod_ips.join(",")
        }
        "status.hostIP" => first_or_err(&ctx.host_ips, "the host IP")?,
        "status.hostIPs" => {
            first_or_err(&ctx.host_ips, "the host IP")?;
            ctx.host_ips.join(",")
        }
        other => {
            return Err(format!(
                "fieldRef {other:?} is not supported (metadata.name, metadata.namespace, \
                 metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], \
                 spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s))"
            ));
        }
    })
}

/// A `resourceFieldRef` value (see [`crate::model::downward::resource_value`]).
fn resource_value(
    spec: &PodSpec,
    container: &Container,
    sel: &ResourceFieldSelector,
    ctx: &ContainerContext<'_>,
) -> Result<String, String> {
    crate::model::downward::resource_value(spec, Some(container), sel, &ctx.allocatable.downward())
}

#[cfg(test)]
mod tests;
