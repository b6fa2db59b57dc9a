//! The on-disk documents: upstream's `KubeletConfiguration` (the subset bpflet implements)
//! and bpflet's own `BpfletConfiguration`. Both are decoded strictly: an unknown field, a
//! wrong type, a wrong apiVersion or kind is an error naming the file and the field.
//!
//! A config file or drop-in holds one or more YAML (or JSON) documents separated by `---`,
//! at most one of each kind. Keeping bpflet's settings in their own document leaves the
//! KubeletConfiguration document exactly upstream's schema, so an operator's kubelet config
//! (restricted to the fields bpflet supports) loads unchanged and a typo is still an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;
use super::args::PlegMode;
use crate::events::SourceChoice;

pub const KUBELET_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KUBELET_KIND: &str = "KubeletConfiguration";
pub const BPFLET_API_VERSION: &str = "bpflet.io/v1alpha1";
pub const BPFLET_KIND: &str = "BpfletConfiguration";

/// The KubeletConfiguration fields bpflet implements, exactly as upstream spells them.
/// Every field is optional here; defaults are applied when the layers are merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_pod_path: Option<String>,
    #[serde(rename = "staticPodURL", skip_serializing_if = "Option::is_none")]
    pub static_pod_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_check_frequency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_check_frequency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_frequency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_driver: Option<String>,
    #[serde(rename = "cgroupsPerQOS", skip_serializing_if = "Option::is_none")]
    pub cgroups_per_qos: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforce_node_allocatable: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "quantity_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_reserved: Option<BTreeMap<String, Quantity>>,
    #[serde(
        default,
        deserialize_with = "quantity_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_reserved: Option<BTreeMap<String, Quantity>>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub eviction_hard: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub eviction_soft: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft_grace_period: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_pressure_transition_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_max_pod_grace_period: Option<i32>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub eviction_minimum_reclaim: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_request_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthz_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthz_bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serialize_image_pulls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel_image_pulls: Option<i32>,
    /// Image GC: at or above this image filesystem usage (percent), unused images are
    /// removed (default 85; 100 with no `imageMaximumGCAge`: no periodic image GC).
    #[serde(
        rename = "imageGCHighThresholdPercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_gc_high_threshold_percent: Option<i32>,
    /// Image GC frees down to this usage (percent, default 80, below the high threshold).
    #[serde(
        rename = "imageGCLowThresholdPercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_gc_low_threshold_percent: Option<i32>,
    /// An image first seen more recently is never removed (default 2m).
    #[serde(rename = "imageMinimumGCAge", skip_serializing_if = "Option::is_none")]
    pub image_minimum_gc_age: Option<String>,
    /// An image unused for longer is removed whatever the usage (default 0s: off).
    #[serde(rename = "imageMaximumGCAge", skip_serializing_if = "Option::is_none")]
    pub image_maximum_gc_age: Option<String>,
    /// Enforce `emptyDir` `sizeLimit` and `ephemeral-storage` limits (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_storage_capacity_isolation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    /// Container log rotation: the size at which a running container's log is rotated
    /// (a quantity, default `10Mi`).
    #[serde(
        default,
        deserialize_with = "quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_log_max_size: Option<Quantity>,
    /// Log files kept per container, the current one included (default 5, at least 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_files: Option<i32>,
    /// Containers whose logs are rotated at once (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_workers: Option<i32>,
    /// How often log sizes are checked (default 10s, at least 3s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_monitor_interval: Option<String>,
    /// The authenticated HTTPS API's port (default 10250).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// The serving certificate (PEM, the chain after the leaf); with `tlsPrivateKeyFile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<String>,
    /// Go's names: `VersionTLS12`, `VersionTLS13`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_min_version: Option<String>,
    /// Go's names of the TLS 1.2 suites allowed (TLS 1.3's are always on, as in Go).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher_suites: Option<Vec<String>>,
    #[serde(rename = "serverTLSBootstrap", skip_serializing_if = "Option::is_none")]
    pub server_tls_bootstrap: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_certificates: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<KubeletAuthentication>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<KubeletAuthorization>,
    /// Cluster mode: how often the node's status is computed (sent when it changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_status_update_frequency: Option<String>,
    /// Cluster mode: an unchanged status is still sent this often.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_status_report_frequency: Option<String>,
    /// Cluster mode: the node lease's duration; renewed every quarter of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_lease_duration_seconds: Option<i32>,
    /// Cluster mode: taints the node registers with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
    /// Cluster mode: requests a second to the API server (a token bucket's refill rate).
    #[serde(rename = "kubeAPIQPS", skip_serializing_if = "Option::is_none")]
    pub kube_api_qps: Option<i32>,
    /// Cluster mode: requests to the API server sent at once (the bucket's size).
    #[serde(rename = "kubeAPIBurst", skip_serializing_if = "Option::is_none")]
    pub kube_api_burst: Option<i32>,
    /// Cluster mode: whether the node registers its Node object (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_node: Option<bool>,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` resolve through.
    #[serde(rename = "clusterDNS", skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<Vec<String>>,
    /// The cluster's DNS domain: pods search `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// The resolv.conf pods with `dnsPolicy: Default` inherit (default `/etc/resolv.conf`;
    /// empty: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<String>,
    /// Upstream's feature gates by name: each known gate at its default is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// Upstream's `logging` (component-base `LoggingConfiguration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<MemorySwapConfiguration>,
    /// `none` only (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_manager_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_manager_reconcile_period: Option<String>,
    /// Graceful node shutdown: `0s` (off, the default) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period_critical_pods: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming_connection_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_stats_agg_period: Option<String>,
    /// `{}` only: `maxContainerRestartPeriod` needs an alpha gate bpflet does not implement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_loop_back_off: Option<CrashLoopBackOffConfig>,
}

/// `crashLoopBackOff`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrashLoopBackOffConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_container_restart_period: Option<String>,
}

/// `logging`: upstream's component-base logging settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingConfiguration {
    /// `text` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Nanoseconds (a number) or a duration string; bpflet writes every line at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_frequency: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<u32>,
    /// Per-file verbosity: refused when not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmodule: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<LoggingOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<LoggingStreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<LoggingStreamOptions>,
}

/// `logging.options.text` / `logging.options.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingStreamOptions {
    /// Info messages to stdout, errors to stderr: refused when true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_stream: Option<bool>,
    /// A quantity; refused when not zero.
    #[serde(
        default,
        deserialize_with = "quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub info_buffer_size: Option<Quantity>,
}

/// `memorySwap`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySwapConfiguration {
    /// `NoSwap` (or empty) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_behavior: Option<String>,
}

/// `authentication`: who a request to the HTTPS API comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletAuthentication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509: Option<KubeletX509Authentication>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<KubeletWebhookAuthentication>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<KubeletAnonymousAuthentication>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletX509Authentication {
    /// PEM bundle of the CAs whose client certificates are accepted (user = CN, groups = O).
    #[serde(rename = "clientCAFile", skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletWebhookAuthentication {
    /// Bearer tokens through the API server's TokenReview.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL", skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletAnonymousAuthentication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `authorization`: what an authenticated request may do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletAuthorization {
    /// `Webhook` (SubjectAccessReview) or `AlwaysAllow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<KubeletWebhookAuthorization>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletWebhookAuthorization {
    #[serde(rename = "cacheAuthorizedTTL", skip_serializing_if = "Option::is_none")]
    pub cache_authorized_ttl: Option<String>,
    #[serde(
        rename = "cacheUnauthorizedTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_unauthorized_ttl: Option<String>,
}

/// bpflet's own settings (`apiVersion: bpflet.io/v1alpha1`, `kind: BpfletConfiguration`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BpfletConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `event` (default) or `generic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg_mode: Option<PlegMode>,
    /// Where kernel events come from in `plegMode: event`: `auto` (default: BPF, else the
    /// polling fallback), `bpf` (BPF or refuse to start) or `poll` (the polling fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_source: Option<SourceChoice>,
    /// In event mode, how often every pod is relisted anyway (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg_safety_relist_period: Option<String>,
    /// How long without a completed relist before the PLEG reports itself unhealthy (3m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pleg_unhealthy_threshold: Option<String>,
    /// `qos` (default: BestEffort, then Burstable, then Guaranteed, upstream order inside a
    /// class) or `upstream` (upstream's ranking alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_ranking: Option<String>,
    /// The event stream's unix socket (default `/run/bpflet/events.sock`; `off`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_socket: Option<String>,
    /// A group (by name) that may connect: the socket becomes 0660 with that group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_group: Option<String>,
    /// Events queued per subscriber before its events are dropped (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_queue: Option<i64>,
    /// Events kept for resuming with `since_sequence` (default 4096; 0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_replay: Option<i64>,
    /// Entries kept per pod timeline (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_timeline: Option<i64>,
    /// TLS over TCP for the event stream: refused (not supported yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_tls_address: Option<String>,
}

/// The documents found in one file.
#[derive(Debug, Default)]
pub(super) struct Documents {
    pub kubelet: Option<KubeletConfiguration>,
    pub bpflet: Option<BpfletConfiguration>,
}

/// Reads and decodes one config file or drop-in.
pub(super) fn read_documents(path: &Path) -> Result<Documents, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_documents(path, &text)
}

/// Decodes the documents of one file; `path` only names the file in errors.
pub(super) fn parse_documents(path: &Path, text: &str) -> Result<Documents, ConfigError> {
    let mut docs = Documents::default();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value =
            yaml_serde::Value::deserialize(document).map_err(|source| ConfigError::Syntax {
                path: path.to_owned(),
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let api_version = value.get("apiVersion").and_then(yaml_serde::Value::as_str);
        let kind = value.get("kind").and_then(yaml_serde::Value::as_str);
        let wrong = || ConfigError::WrongType {
            path: path.to_owned(),
            document: index,
            api_version: api_version.unwrap_or_default().to_owned(),
            kind: kind.unwrap_or_default().to_owned(),
        };
        match (api_version, kind) {
            (Some(KUBELET_API_VERSION), Some(KUBELET_KIND)) => {
                if docs.kubelet.is_some() {
                    return Err(ConfigError::DuplicateDocument {
                        path: path.to_owned(),
                        kind: KUBELET_KIND,
                    });
                }
                docs.kubelet = Some(decode(path, value)?);
            }
            (Some(BPFLET_API_VERSION), Some(BPFLET_KIND)) => {
                if docs.bpflet.is_some() {
                    return Err(ConfigError::DuplicateDocument {
                        path: path.to_owned(),
                        kind: BPFLET_KIND,
                    });
                }
                docs.bpflet = Some(decode(path, value)?);
            }
            _ => return Err(wrong()),
        }
    }
    Ok(docs)
}

fn decode<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: yaml_serde::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        ConfigError::Decode {
            path: path.to_owned(),
            field: if field == "." { String::new() } else { field },
            source: err.into_inner(),
        }
    })
}

/// The drop-ins of `--config-dir`: `*.conf` files, in alphabetical order.
pub(super) fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_dir_error = |source| ConfigError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let is_conf = path.extension().is_some_and(|ext| ext == "conf");
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if is_conf && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Strings, or numbers written bare in YAML (`pid.available: 1000`), as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::String(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
        }
    }
}

fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let map: Option<BTreeMap<String, Scalar>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_iter().map(|(k, v)| (k, v.into_string())).collect()))
}

/// A quantity given as a string or a number (`10Mi`, `1024`).
fn quantity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Quantity>, D::Error> {
    let v: Option<Scalar> = Option::deserialize(deserializer)?;
    Ok(v.map(|v| Quantity(v.into_string())))
}

fn quantity_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, Quantity>>, D::Error> {
    let map: Option<BTreeMap<String, Scalar>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| {
        m.into_iter()
            .map(|(k, v)| (k, Quantity(v.into_string())))
            .collect()
    }))
}
