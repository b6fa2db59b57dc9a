//! Configuration: defaults < `--config` file < `--config-dir` drop-ins < flags, merged,
//! validated and typed before the agent does anything else.
//!
//! Two document kinds are read (see [`file`]):
//! - `kubelet.config.k8s.io/v1beta1` `KubeletConfiguration`: the upstream fields bpflet
//!   implements, same names, same defaults;
//! - `bpflet.io/v1alpha1` `BpfletConfiguration`: bpflet-only settings (`plegMode`,
//!   `eventSource`, `plegSafetyRelistPeriod`, `plegUnhealthyThreshold`, `evictionRanking`).
//!
//! Merging follows upstream's drop-in rules: a later file replaces scalars and lists and
//! merges maps key by key (JSON merge patch), so a drop-in can change one eviction threshold.
//! A flag replaces the whole field, maps included. Note that an `evictionHard` map given
//! anywhere replaces the default thresholds entirely, as upstream did before
//! `MergeDefaultEvictionSettings`.
//!
//! Every error names the field path and where its value came from, e.g.
//! `evictionHard["memory.available"]: invalid quantity "10Zi" (from /etc/bpflet/config.yaml)`.
//! `main` exits with [`exit_code()`] (64, `EX_USAGE`) on any [`ConfigError`].

mod args;
pub mod duration;
pub mod event_stream;
pub mod eviction;
pub mod feature_gates;
pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Map, Value};

pub use self::args::{AgentArgs, LogFormat, PlegMode};
use self::duration::parse_duration;
use self::eviction::{
    Signal, Threshold, ThresholdValue, parse_threshold_value, split_threshold_flag,
};
pub use self::file::{BpfletConfiguration, KubeletConfiguration};
use crate::events::SourceChoice;
use crate::model::quantity::parse_quantity;
use crate::pods::sysctls::SysctlPolicy;

/// The process exit code for a configuration error (`EX_USAGE`).
#[must_use]
pub const fn exit_code() -> u8 {
    64
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("defaults"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

/// Everything that can be wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read config directory {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid YAML", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error(
        "{}: document {document}: unsupported apiVersion {api_version:?} / kind {kind:?}; expected \
         {}/{} or {}/{}",
        path.display(),
        file::KUBELET_API_VERSION,
        file::KUBELET_KIND,
        file::BPFLET_API_VERSION,
        file::BPFLET_KIND
    )]
    WrongType {
        path: PathBuf,
        document: usize,
        api_version: String,
        kind: String,
    },
    #[error("{}: more than one {kind} document", path.display())]
    DuplicateDocument { path: PathBuf, kind: &'static str },
    #[error("{}: cannot decode {}", path.display(), if field.is_empty() { "document" } else { field })]
    Decode {
        path: PathBuf,
        /// serde path of the offending field, empty for the document itself.
        field: String,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{field}: {reason} (from {origin})")]
    Invalid {
        field: String,
        origin: Origin,
        reason: String,
    },
    #[error("cannot merge configuration layers")]
    Merge {
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot determine the node name from the host name")]
    Hostname {
        #[source]
        source: nix::Error,
    },
}

impl ConfigError {
    /// The process exit code for this error: always [`exit_code()`].
    #[must_use]
    pub const fn exit_code(&self) -> u8 {
        exit_code()
    }
}

/// The merged, validated, typed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `--hostname-override` or the host name, lowercased; a valid DNS subdomain.
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    pub root_dir: PathBuf,
    pub verbosity: u8,
    pub log_format: LogFormat,
    /// The config file and drop-ins that were read, in order.
    pub config_files: Vec<PathBuf>,
    pub sources: SourceConfig,
    pub sync_frequency: Duration,
    pub runtime: RuntimeConfig,
    pub cgroups: CgroupConfig,
    pub system_reserved: Reservation,
    pub kube_reserved: Reservation,
    pub eviction: EvictionConfig,
    pub server: ServerConfig,
    pub max_pods: u32,
    /// `None`: unlimited.
    pub pod_pids_limit: Option<u64>,
    /// `serializeImagePulls` (true) and `maxParallelImagePulls`.
    pub image_pulls: crate::images::PullSettings,
    /// `imageGCHighThresholdPercent` (85), `imageGCLowThresholdPercent` (80),
    /// `imageMinimumGCAge` (2m), `imageMaximumGCAge` (0s: off).
    pub image_gc: crate::images::gc::GcPolicy,
    pub pleg: PlegConfig,
    /// The sysctls pods may set: the safe set and `allowedUnsafeSysctls`.
    pub sysctls: SysctlPolicy,
    /// Container log rotation (`containerLog*`).
    pub container_logs: ContainerLogConfig,
    /// Pod DNS (`clusterDNS`, `clusterDomain`, `resolvConf`).
    pub dns: DnsConfig,
    /// The node as read once at load: the settings above were checked against it, and the
    /// agent sizes the pod cgroup tree from it.
    pub node: NodeFacts,
    /// Cluster mode (`--kubeconfig`); `None`: standalone, static pods only.
    pub cluster: Option<ClusterConfig>,
    /// The gRPC event stream (`eventStream*` of the `BpfletConfiguration`).
    pub event_stream: event_stream::EventStreamConfig,
}

/// Cluster mode: the API server to join and how the node reports to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub kubeconfig: PathBuf,
    /// `--node-labels`.
    pub node_labels: BTreeMap<String, String>,
    /// `registerWithTaints` / `--register-with-taints`.
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// `nodeStatusUpdateFrequency` (10s).
    pub node_status_update_frequency: Duration,
    /// `nodeStatusReportFrequency` (5m; when unset but `nodeStatusUpdateFrequency` is set,
    /// the update frequency, as upstream).
    pub node_status_report_frequency: Duration,
    /// `nodeLeaseDurationSeconds` (40).
    pub node_lease_duration: Duration,
    /// `kubeAPIQPS` (50): requests a second to the API server, past the burst.
    pub kube_api_qps: u32,
    /// `kubeAPIBurst` (100): requests sent at once before `kubeAPIQPS` applies.
    pub kube_api_burst: u32,
    /// `registerNode` / `--register-node` (true): create the Node. When false the Node must
    /// exist (someone else creates it); its status and the lease are still kept.
    pub register_node: bool,
}

/// The DNS settings pods get (upstream's `clusterDNS`, `clusterDomain`, `resolvConf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster's DNS servers; empty: `ClusterFirst` pods get the host's settings.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's domain (a DNS subdomain); empty: no cluster search domains.
    pub cluster_domain: String,
    /// The resolv.conf whose servers, searches and options pods with `dnsPolicy: Default`
    /// inherit (and that cluster-first pods add their searches from); `None` (set to ""):
    /// none.
    pub resolv_conf: Option<PathBuf>,
}

/// What the node has, read once by [`load`]: the settings that must fit it are checked
/// against it, and the agent sizes `kubepods` from the same values
/// ([`crate::cgroups::tree::NodeCapacity::from_facts`]), so the two cannot disagree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `MemTotal`, when readable.
    pub memory_bytes: Option<u64>,
    /// Online CPUs in millicores, when known.
    pub cpu_millis: Option<u64>,
    /// `kernel.pid_max`, when readable.
    pub pid_max: Option<u64>,
    /// The kernel's `major.minor`, when readable.
    pub kernel: Option<(u32, u32)>,
}

/// The node's memory: `MemTotal` from `<proc_root>/meminfo`, in bytes; `None` when the file
/// has no readable `MemTotal` line.
///
/// # Errors
/// The file cannot be read.
pub fn mem_total(proc_root: &Path) -> std::io::Result<Option<u64>> {
    let text = std::fs::read_to_string(proc_root.join("meminfo"))?;
    Ok(text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kib = rest.trim().strip_suffix("kB")?.trim();
        kib.parse::<u64>().ok()?.checked_mul(1024)
    }))
}

impl NodeFacts {
    /// Reads the node's memory, CPUs, `pid_max` and kernel version under `proc_root`; what
    /// cannot be read stays `None` (and its checks are skipped).
    #[must_use]
    pub fn detect(proc_root: &Path) -> Self {
        let read = |path: &str| std::fs::read_to_string(proc_root.join(path)).ok();
        Self {
            memory_bytes: mem_total(proc_root).ok().flatten(),
            cpu_millis: std::thread::available_parallelism()
                .ok()
                .and_then(|n| u64::try_from(n.get()).ok())
                .map(|n| n * 1000),
            pid_max: read("sys/kernel/pid_max").and_then(|s| s.trim().parse().ok()),
            kernel: read("sys/kernel/osrelease")
                .and_then(|r| crate::pods::sysctls::parse_kernel_release(r.trim())),
        }
    }
}

/// Container log rotation, as upstream's `ContainerLogManager` does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLogConfig {
    /// `containerLogMaxSize` (10Mi): a running container's log larger than this is rotated.
    pub max_size_bytes: u64,
    /// `containerLogMaxFiles` (5, at least 2): files kept per container, current included.
    pub max_files: u32,
    /// `containerLogMaxWorkers` (1): containers whose logs are rotated at once.
    pub max_workers: u32,
    /// `containerLogMonitorInterval` (10s, at least 3s as upstream validates).
    pub monitor_interval: Duration,
}

/// Static pod sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// A directory or a single file (absolute).
    pub static_pod_path: Option<PathBuf>,
    /// An `http://` URL.
    pub static_pod_url: Option<String>,
    pub file_check_frequency: Duration,
    pub http_check_frequency: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The CRI unix socket.
    pub endpoint: PathBuf,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Absolute path inside the cgroup hierarchy (`/` by default).
    pub root: PathBuf,
    pub driver: CgroupDriver,
    /// `enforceNodeAllocatable` contains `pods`: limit the kubepods cgroup to allocatable.
    pub enforce_pods_allocatable: bool,
}

/// `systemReserved` / `kubeReserved`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub ephemeral_storage_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// How pods are ranked for eviction (bpflet-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionRanking {
    /// BestEffort, then Burstable, then Guaranteed; upstream's order inside a class.
    Qos,
    /// Upstream's order alone: usage above request, priority, usage above request amount.
    Upstream,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Hard thresholds (grace period zero), thresholds of `0`/`0%` dropped. When pods
    /// allocatable is enforced, the eviction manager also applies every `memory.available`
    /// threshold as `allocatableMemory.available`.
    pub hard: Vec<Threshold>,
    /// Soft thresholds, each with its grace period.
    pub soft: Vec<Threshold>,
    pub pressure_transition_period: Duration,
    /// Cap on a pod's grace period for soft evictions; `None` when unset or 0.
    pub max_pod_grace_period: Option<Duration>,
    pub ranking: EvictionRanking,
    /// `localStorageCapacityIsolation` (default true): pods are evicted when an `emptyDir`
    /// outgrows its `sizeLimit` or their local storage their `ephemeral-storage` limits.
    pub local_storage_capacity_isolation: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: IpAddr,
    /// `port`: the authenticated HTTPS API, on `address` (always on, as upstream's).
    pub port: u16,
    /// `None`: off.
    pub read_only_port: Option<u16>,
    /// `None`: off.
    pub healthz_port: Option<u16>,
    pub healthz_bind_address: IpAddr,
    /// The HTTPS API's certificate and protocol settings.
    pub tls: TlsConfig,
    /// Who may use the HTTPS API.
    pub auth: AuthConfig,
}

/// The HTTPS API's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: ServingCert,
    /// `tlsMinVersion` (default TLS 1.2, Go's server default).
    pub min_version: TlsVersion,
    /// `tlsCipherSuites`: the TLS 1.2 suites allowed, in order; `None`: every suite rustls
    /// has. TLS 1.3's suites are always allowed (Go ignores the list for TLS 1.3 too).
    pub cipher_suites: Option<Vec<CipherSuite>>,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingCert {
    /// `tlsCertFile` and `tlsPrivateKeyFile`.
    Files { cert: PathBuf, key: PathBuf },
    /// Neither set: `kubelet.crt` / `kubelet.key` in this directory (`<root-dir>/pki`, as
    /// upstream's `--cert-dir`), made self-signed for the node's name and addresses when
    /// missing and reused afterwards.
    SelfSigned { dir: PathBuf },
    /// `serverTLSBootstrap: true` (cluster mode): requested from the cluster's
    /// `kubernetes.io/kubelet-serving` signer through a CertificateSigningRequest, kept
    /// with its key in `kubelet-server-current.pem` in this directory (`<root-dir>/pki`)
    /// and rotated before it expires (`tlsCertFile` / `tlsPrivateKeyFile` are then unused,
    /// as upstream's).
    Bootstrap { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The TLS 1.2 cipher suites rustls implements, by Go's names (`tlsCipherSuites`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305,
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheRsaChacha20Poly1305,
}

impl CipherSuite {
    /// Go's names (`crypto/tls`), the legacy `CHACHA20_POLY1305` spellings included.
    const NAMES: [(&'static str, Self); 8] = [
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheEcdsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Self::EcdheEcdsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            Self::EcdheEcdsaChacha20Poly1305,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            Self::EcdheEcdsaChacha20Poly1305,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Self::EcdheRsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Self::EcdheRsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            Self::EcdheRsaChacha20Poly1305,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            Self::EcdheRsaChacha20Poly1305,
        ),
    ];
    /// TLS 1.3's suites: accepted in the list and ignored (always on), as Go does.
    const TLS13_NAMES: [&'static str; 3] = [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ];

    /// `Ok(None)` for a TLS 1.3 suite; an error for a name rustls does not implement.
    fn parse(name: &str) -> Result<Option<Self>, String> {
        if Self::TLS13_NAMES.contains(&name) {
            return Ok(None);
        }
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| Some(*s))
            .ok_or_else(|| {
                format!(
                    "{name:?} is not supported: bpflet's TLS (rustls) implements only the \
                     ECDHE AES-GCM and ChaCha20-Poly1305 suites for TLS 1.2 ({}) and TLS 1.3's",
                    Self::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Who may use the HTTPS API: authentication (client certificate, bearer token, anonymous,
/// tried in that order) and authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `authentication.x509.clientCAFile`.
    pub client_ca_file: Option<PathBuf>,
    /// `authentication.webhook`: bearer tokens through TokenReview, results cached for
    /// `cacheTTL` (`0s` is unset, as upstream's defaulting has it: 2m); `None`: off.
    pub token_webhook: Option<Duration>,
    /// `authentication.anonymous.enabled`: a request without credentials is
    /// `system:anonymous` in `system:unauthenticated`, else 401.
    pub anonymous: bool,
    pub authorization: Authorization,
}

/// `authorization.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    AlwaysAllow,
    /// SubjectAccessReview, allowed answers cached `authorized_ttl`, others
    /// `unauthorized_ttl` (`0s` in the file is unset: 5m and 30s, as upstream).
    Webhook {
        authorized_ttl: Duration,
        unauthorized_ttl: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlegConfig {
    /// The mode asked for. `event` runs on BPF; with the polling source (`eventSource: poll`,
    /// or `auto` when BPF cannot load) the generic relist is used (see [`PlegConfig::mode_with`]).
    pub mode: PlegMode,
    /// `eventSource`: where kernel events come from in event mode. `plegMode: generic`
    /// reads no kernel events, so it takes only `auto`.
    pub event_source: SourceChoice,
    /// Event mode: period of the full safety relist. Generic mode relists every second.
    pub safety_relist_period: Duration,
    pub unhealthy_threshold: Duration,
}

impl PlegConfig {
    /// The PLEG mode in use given the kernel event source that runs: the event PLEG needs
    /// BPF's immediate, exact exits; with the polling source (or none) the generic 1 s
    /// relist finds container ends.
    #[must_use]
    pub fn mode_with(&self, source: Option<crate::events::Source>) -> PlegMode {
        match (self.mode, source) {
            (PlegMode::Event, Some(crate::events::Source::Bpf)) => PlegMode::Event,
            _ => PlegMode::Generic,
        }
    }
}

mod defaults {
    pub const FILE_CHECK_FREQUENCY: &str = "20s";
    pub const HTTP_CHECK_FREQUENCY: &str = "20s";
    pub const SYNC_FREQUENCY: &str = "1m";
    pub const CGROUP_ROOT: &str = "/";
    pub const CGROUP_DRIVER: &str = "cgroupfs";
    pub const EVICTION_HARD: [(&str, &str); 4] = [
        ("memory.available", "100Mi"),
        ("nodefs.available", "10%"),
        ("nodefs.inodesFree", "5%"),
        ("imagefs.available", "15%"),
    ];
    pub const EVICTION_PRESSURE_TRANSITION_PERIOD: &str = "5m";
    pub const RUNTIME_REQUEST_TIMEOUT: &str = "2m";
    pub const CONTAINER_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
    pub const ADDRESS: &str = "0.0.0.0";
    pub const HEALTHZ_PORT: i32 = 10248;
    pub const PORT: i32 = 10250;
    pub const AUTHENTICATION_CACHE_TTL: &str = "2m";
    pub const AUTHORIZATION_CACHE_AUTHORIZED_TTL: &str = "5m";
    pub const AUTHORIZATION_CACHE_UNAUTHORIZED_TTL: &str = "30s";
    pub const HEALTHZ_BIND_ADDRESS: &str = "127.0.0.1";
    pub const MAX_PODS: i32 = 110;
    pub const POD_PIDS_LIMIT: i64 = -1;
    pub const PLEG_SAFETY_RELIST_PERIOD: &str = "10s";
    pub const PLEG_UNHEALTHY_THRESHOLD: &str = "3m";
    pub const EVICTION_RANKING: &str = "qos";
    pub const NODE_STATUS_UPDATE_FREQUENCY: &str = "10s";
    pub const NODE_STATUS_REPORT_FREQUENCY: &str = "5m";
    pub const NODE_LEASE_DURATION_SECONDS: i32 = 40;
    pub const KUBE_API_QPS: i32 = 50;
    pub const KUBE_API_BURST: i32 = 100;
    pub const CONTAINER_LOG_MAX_SIZE: &str = "10Mi";
    pub const CONTAINER_LOG_MAX_FILES: i32 = 5;
    pub const CONTAINER_LOG_MAX_WORKERS: i32 = 1;
    pub const CONTAINER_LOG_MONITOR_INTERVAL: &str = "10s";
    pub const IMAGE_GC_HIGH_THRESHOLD_PERCENT: i32 = 85;
    pub const IMAGE_GC_LOW_THRESHOLD_PERCENT: i32 = 80;
    pub const IMAGE_MINIMUM_GC_AGE: &str = "2m";
    pub const IMAGE_MAXIMUM_GC_AGE: &str = "0s";
    pub const RESOLV_CONF: &str = "/etc/resolv.conf";
    pub const CPU_MANAGER_RECONCILE_PERIOD: &str = "10s";
    pub const STREAMING_CONNECTION_IDLE_TIMEOUT: &str = "4h";
    pub const VOLUME_STATS_AGG_PERIOD: &str = "1m";
}

/// Upstream's defaulting gives a duration left at zero (`0s`, as kubeadm writes every one
/// it does not set) its default: a value that parses as zero is taken as unset. (A value that
/// does not parse is kept, for its error.)
fn unset_if_zero(value: Option<&str>) -> Option<&str> {
    value.filter(|v| parse_duration(v).map_or(true, |d| !d.is_zero()))
}

/// The same for numbers and strings upstream defaults when zero or empty.
fn unset_if_default<T: PartialEq + Default>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

/// Lower bounds of the periods that drive loops: below these an agent spins for nothing
/// (`fileCheckFrequency: 1ns` rescanned the manifest directory nonstop). Upstream only
/// refuses negative values; these bounds are bpflet's.
mod minimums {
    use std::time::Duration;

    /// `fileCheckFrequency`: the manifest directory rescan (inotify reports changes sooner).
    pub const FILE_CHECK_FREQUENCY: Duration = Duration::from_secs(1);
    /// `httpCheckFrequency`: one HTTP request per period.
    pub const HTTP_CHECK_FREQUENCY: Duration = Duration::from_secs(1);
    /// `syncFrequency`: every pod worker's periodic resync.
    pub const SYNC_FREQUENCY: Duration = Duration::from_secs(1);
    /// `nodeStatusUpdateFrequency` and `nodeStatusReportFrequency`: a read of the Node per
    /// period (upstream refuses nothing above zero).
    pub const NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(1);
    /// `plegSafetyRelistPeriod`: two CRI list calls per period; the generic PLEG's 1 s is
    /// the most frequent relist bpflet makes.
    pub const PLEG_SAFETY_RELIST_PERIOD: Duration = Duration::from_secs(1);
    /// `containerLogMonitorInterval`: upstream's own minimum (its validation refuses less).
    pub const CONTAINER_LOG_MONITOR_INTERVAL: Duration = Duration::from_secs(3);
}

/// Loads, merges and validates the configuration. Reads files only: no other side effect.
///
/// # Errors
/// [`ConfigError`] naming the file, flag or field at fault.
pub fn load(args: &AgentArgs) -> Result<Config, ConfigError> {
    load_on(args, &NodeFacts::detect(Path::new("/proc")))
}

/// [`load`], with the node's capacity and kernel given.
///
/// # Errors
/// [`ConfigError`] naming the file, flag or field at fault.
pub fn load_on(args: &AgentArgs, node: &NodeFacts) -> Result<Config, ConfigError> {
    let mut kubelet = Layers::default();
    let mut bpflet = Layers::default();
    let mut config_files = Vec::new();

    let mut files = Vec::new();
    if let Some(path) = &args.config {
        files.push(path.clone());
    }
    if let Some(dir) = &args.config_dir {
        files.extend(file::drop_ins(dir)?);
    }
    for path in files {
        let docs = file::read_documents(&path)?;
        let origin = Origin::File(path.clone());
        if let Some(doc) = docs.kubelet {
            kubelet.apply(to_object(&doc)?, &origin, Maps::Merge);
        }
        if let Some(doc) = docs.bpflet {
            bpflet.apply(to_object(&doc)?, &origin, Maps::Merge);
        }
        config_files.push(path);
    }
    apply_flags(args, &mut kubelet, &mut bpflet)?;

    let node_name = node_name(args.hostname_override.as_deref())?;
    let node_ips = node_ips(args.node_ip.as_deref())?;
    for (flag, path) in [
        ("root-dir", Some(&args.root_dir)),
        ("config-dir", args.config_dir.as_ref()),
    ] {
        if let Some(path) = path
            && let Err(reason) = clean_absolute(&path.to_string_lossy())
        {
            return Err(ConfigError::Invalid {
                field: format!("--{flag}"),
                origin: Origin::Flag(flag),
                reason,
            });
        }
    }

    let kc: KubeletConfiguration = kubelet.decode()?;
    let bc: BpfletConfiguration = bpflet.decode()?;
    let typed = Typed {
        kubelet: &kubelet.origins,
        bpflet: &bpflet.origins,
        node,
    };
    typed.build(&kc, &bc, node_name, node_ips, args, config_files)
}

/// `key=value,...` (`--node-labels`): each key a qualified name, each value a label value.
fn parse_labels(flag: &str) -> Result<BTreeMap<String, String>, String> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            validate_label(key, value).map_err(|e| format!("label {pair:?}: {e}"))?;
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Upstream's restriction on `--node-labels`: a label in the `kubernetes.io` or `k8s.io`
/// namespaces (or below them) must be one a kubelet may set on its own Node (the
/// NodeRestriction admission plugin refuses the others): in the `kubelet.kubernetes.io` or
/// `node.kubernetes.io` namespaces (or below them), or one of [`KUBELET_LABELS`].
fn kubelet_labels_only(labels: &BTreeMap<String, String>) -> Result<(), String> {
    fn namespace(key: &str) -> &str {
        key.split_once('/').map_or("", |(ns, _)| ns)
    }
    let within = |ns: &str, domain: &str| ns == domain || ns.ends_with(&format!(".{domain}"));
    let unknown: Vec<&str> = labels
        .keys()
        .map(String::as_str)
        .filter(|key| {
            let ns = namespace(key);
            let kubernetes = within(ns, "kubernetes.io") || within(ns, "k8s.io");
            let allowed = KUBELET_LABELS.contains(key)
                || KUBELET_LABEL_NAMESPACES.iter().any(|d| within(ns, d));
            kubernetes && !allowed
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "unknown 'kubernetes.io' or 'k8s.io' labels {unknown:?}: labels in the \
         'kubernetes.io' namespace must begin with an allowed prefix ({}) or be in the \
         specifically allowed set ({})",
        KUBELET_LABEL_NAMESPACES.join(", "),
        KUBELET_LABELS.join(", ")
    ))
}

/// The label namespaces a kubelet may set labels in on its own Node (upstream's
/// `KubeletLabelNamespaces`).
const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The `kubernetes.io` labels a kubelet may set on its own Node (upstream's `KubeletLabels`).
const KUBELET_LABELS: [&str; 11] = [
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// `key[=value]:Effect,...` (`--register-with-taints`).
fn parse_taints(flag: &str) -> Result<Vec<k8s_openapi::api::core::v1::Taint>, String> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|spec| {
            let (kv, effect) = spec
                .rsplit_once(':')
                .ok_or_else(|| format!("taint {spec:?} has no :Effect"))?;
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (kv, None),
            };
            let taint = k8s_openapi::api::core::v1::Taint {
                key: key.to_owned(),
                value,
                effect: effect.to_owned(),
                time_added: None,
            };
            validate_taint(&taint).map_err(|e| format!("taint {spec:?}: {e}"))?;
            Ok(taint)
        })
        .collect()
}

fn validate_taint(taint: &k8s_openapi::api::core::v1::Taint) -> Result<(), String> {
    if !matches!(
        taint.effect.as_str(),
        "NoSchedule" | "PreferNoSchedule" | "NoExecute"
    ) {
        return Err(format!(
            "effect {:?} must be NoSchedule, PreferNoSchedule or NoExecute",
            taint.effect
        ));
    }
    validate_label(&taint.key, taint.value.as_deref().unwrap_or_default())
}

/// A label (or taint) key and value as the API server accepts them: the key an optional DNS
/// subdomain prefix and `/`, then a name of at most 63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric; the value empty or such a name.
fn validate_label(key: &str, value: &str) -> Result<(), String> {
    fn name(s: &str) -> bool {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    }
    let (prefix, key_name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let subdomain = prefix.len() <= 253
            && prefix.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !subdomain {
            return Err(format!("key prefix {prefix:?} is not a DNS subdomain"));
        }
    }
    if !name(key_name) {
        return Err(format!(
            "key {key:?} must be at most 63 of [A-Za-z0-9._-], starting and ending alphanumeric"
        ));
    }
    if !value.is_empty() && !name(value) {
        return Err(format!(
            "value {value:?} must be at most 63 of [A-Za-z0-9._-], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// An absolute path of normal components only: no `.` or `..` (which would let a value
/// reach outside the tree it names, e.g. `cgroupRoot: /../..`).
fn clean_absolute(value: &str) -> Result<PathBuf, String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must be absolute"));
    }
    if value.contains('\0') {
        return Err(format!("path {value:?} contains a NUL byte"));
    }
    if let Some(bad) = value.split('/').find(|c| *c == "." || *c == "..") {
        return Err(format!(
            "path {value:?} must not contain {bad:?} components"
        ));
    }
    Ok(PathBuf::from(value))
}

/// Map handling when a layer is applied.
#[derive(Clone, Copy)]
enum Maps {
    /// Config files: maps merge key by key.
    Merge,
    /// Flags: a map replaces the whole field.
    Replace,
}

/// The merged JSON object of one document kind, and the origin of every field and map entry.
#[derive(Default)]
struct Layers {
    merged: Map<String, Value>,
    origins: BTreeMap<String, Origin>,
}

impl Layers {
    fn apply(&mut self, layer: Map<String, Value>, origin: &Origin, maps: Maps) {
        for (key, value) in layer {
            if key == "apiVersion" || key == "kind" {
                continue;
            }
            match (value, maps) {
                (Value::Object(entries), Maps::Merge) => {
                    let target = self
                        .merged
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !target.is_object() {
                        *target = Value::Object(Map::new());
                    }
                    if let Value::Object(target) = target {
                        for (entry, v) in entries {
                            self.origins
                                .insert(entry_path(&key, &entry), origin.clone());
                            merge_into(target.entry(entry).or_insert(Value::Null), v);
                        }
                    }
                }
                (value, _) => {
                    let prefix = format!("{key}[");
                    self.origins.retain(|k, _| !k.starts_with(&prefix));
                    if let Value::Object(entries) = &value {
                        for entry in entries.keys() {
                            self.origins.insert(entry_path(&key, entry), origin.clone());
                        }
                    }
                    self.merged.insert(key.clone(), value);
                }
            }
            self.origins.insert(key, origin.clone());
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_json::from_value(Value::Object(self.merged.clone()))
            .map_err(|source| ConfigError::Merge { source })
    }
}

/// Merges `value` into `target` as a JSON merge patch does (objects key by key, at any
/// depth; anything else replaces), so a drop-in can change `authentication.webhook.cacheTTL`
/// and keep `authentication.webhook.enabled`.
fn merge_into(target: &mut Value, value: Value) {
    match (target, value) {
        (Value::Object(target), Value::Object(entries)) => {
            for (key, v) in entries {
                merge_into(target.entry(key).or_insert(Value::Null), v);
            }
        }
        (target, value) => *target = value,
    }
}

fn entry_path(field: &str, key: &str) -> String {
    format!("{field}[{key:?}]")
}

fn to_object<T: serde::Serialize>(doc: &T) -> Result<Map<String, Value>, ConfigError> {
    match serde_json::to_value(doc).map_err(|source| ConfigError::Merge { source })? {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

fn flag_error(flag: &'static str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: format!("--{flag}"),
        origin: Origin::Flag(flag),
        reason: reason.to_string(),
    }
}

/// Turns the flags into one layer per document kind, each field tagged with its flag.
fn apply_flags(
    args: &AgentArgs,
    kubelet: &mut Layers,
    bpflet: &mut Layers,
) -> Result<(), ConfigError> {
    let mut flag = |name: &'static str, key: &str, value: Value| {
        let mut layer = Map::new();
        layer.insert(key.to_owned(), value);
        kubelet.apply(layer, &Origin::Flag(name), Maps::Replace);
    };
    if let Some(v) = &args.pod_manifest_path {
        flag("pod-manifest-path", "staticPodPath", v.clone().into());
    }
    if let Some(v) = &args.manifest_url {
        flag("manifest-url", "staticPodURL", v.clone().into());
    }
    if let Some(v) = &args.container_runtime_endpoint {
        flag(
            "container-runtime-endpoint",
            "containerRuntimeEndpoint",
            v.clone().into(),
        );
    }
    if let Some(v) = &args.cgroup_root {
        flag("cgroup-root", "cgroupRoot", v.clone().into());
    }
    if let Some(v) = args.read_only_port {
        flag("read-only-port", "readOnlyPort", v.into());
    }
    if let Some(v) = &args.address {
        flag("address", "address", v.clone().into());
    }
    if let Some(v) = args.healthz_port {
        flag("healthz-port", "healthzPort", v.into());
    }
    if let Some(v) = args.port {
        flag("port", "port", v.into());
    }
    if let Some(v) = &args.tls_cert_file {
        flag("tls-cert-file", "tlsCertFile", v.clone().into());
    }
    if let Some(v) = &args.tls_private_key_file {
        flag(
            "tls-private-key-file",
            "tlsPrivateKeyFile",
            v.clone().into(),
        );
    }
    if let Some(v) = &args.register_with_taints {
        let taints = parse_taints(v).map_err(|e| flag_error("register-with-taints", e))?;
        let taints =
            serde_json::to_value(taints).map_err(|e| flag_error("register-with-taints", e))?;
        flag("register-with-taints", "registerWithTaints", taints);
    }
    if let Some(v) = &args.runtime_request_timeout {
        flag(
            "runtime-request-timeout",
            "runtimeRequestTimeout",
            v.clone().into(),
        );
    }
    if let Some(v) = &args.cgroup_driver {
        flag("cgroup-driver", "cgroupDriver", v.clone().into());
    }
    if let Some(v) = args.max_pods {
        flag("max-pods", "maxPods", v.into());
    }
    if let Some(v) = args.register_node {
        flag("register-node", "registerNode", v.into());
    }
    if let Some(v) = args.rotate_certificates {
        flag("rotate-certificates", "rotateCertificates", v.into());
    }
    if let Some(v) = &args.cluster_domain {
        flag("cluster-domain", "clusterDomain", v.clone().into());
    }
    if let Some(v) = &args.resolv_conf {
        flag("resolv-conf", "resolvConf", v.clone().into());
    }
    if let Some(v) = &args.eviction_hard {
        let pairs = split_threshold_flag(v).map_err(|e| flag_error("eviction-hard", e))?;
        let map: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
        flag("eviction-hard", "evictionHard", Value::Object(map));
    }
    for (name, key, value) in [
        ("system-reserved", "systemReserved", &args.system_reserved),
        ("kube-reserved", "kubeReserved", &args.kube_reserved),
    ] {
        if let Some(v) = value {
            let map = split_resource_flag(v).map_err(|e| flag_error(name, e))?;
            flag(name, key, Value::Object(map));
        }
    }
    // Comma-separated list flags.
    for (name, key, value) in [
        (
            "enforce-node-allocatable",
            "enforceNodeAllocatable",
            &args.enforce_node_allocatable,
        ),
        (
            "allowed-unsafe-sysctls",
            "allowedUnsafeSysctls",
            &args.allowed_unsafe_sysctls,
        ),
        ("cluster-dns", "clusterDNS", &args.cluster_dns),
    ] {
        if let Some(v) = value {
            let items: Vec<Value> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect();
            flag(name, key, Value::Array(items));
        }
    }
    if let Some(v) = &args.client_ca_file {
        // Only `authentication.x509` is replaced: the file's webhook and anonymous settings
        // stay.
        let layer = serde_json::json!({"authentication": {"x509": {"clientCAFile": v}}});
        if let Value::Object(layer) = layer {
            kubelet.apply(layer, &Origin::Flag("client-ca-file"), Maps::Merge);
        }
    }
    if let Some(v) = &args.feature_gates {
        // Merged gate by gate over the files' (upstream's flag precedence keeps the file's
        // gates the flag does not name).
        let gates = parse_feature_gates(v).map_err(|e| flag_error("feature-gates", e))?;
        let mut layer = Map::new();
        layer.insert("featureGates".to_owned(), Value::Object(gates));
        kubelet.apply(layer, &Origin::Flag("feature-gates"), Maps::Merge);
    }
    if let Some(mode) = args.pleg_mode {
        let mut layer = Map::new();
        let value = serde_json::to_value(mode).map_err(|source| ConfigError::Merge { source })?;
        layer.insert("plegMode".to_owned(), value);
        bpflet.apply(layer, &Origin::Flag("pleg-mode"), Maps::Replace);
    }
    Ok(())
}

/// `Name=true,Other=false` (`--feature-gates`) -> {"Name": true, "Other": false}.
fn parse_feature_gates(flag: &str) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for entry in flag.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected Name=true|false"))?;
        let value: bool = value
            .trim()
            .parse()
            .map_err(|_| format!("{entry:?}: the value must be true or false"))?;
        map.insert(name.trim().to_owned(), Value::Bool(value));
    }
    Ok(map)
}

/// `memory=200Mi,cpu=100m` -> {"memory": "200Mi", "cpu": "100m"}.
fn split_resource_flag(flag: &str) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for entry in flag.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected resource=quantity"))?;
        map.insert(
            name.trim().to_owned(),
            Value::String(value.trim().to_owned()),
        );
    }
    Ok(map)
}

fn node_name(hostname_override: Option<&str>) -> Result<String, ConfigError> {
    let (name, origin) = match hostname_override.map(str::trim).filter(|s| !s.is_empty()) {
        Some(name) => (name.to_owned(), Origin::Flag("hostname-override")),
        None => {
            let host =
                nix::unistd::gethostname().map_err(|source| ConfigError::Hostname { source })?;
            (host.to_string_lossy().trim().to_owned(), Origin::Default)
        }
    };
    let name = name.to_lowercase();
    if let Err(reason) = crate::model::validation::validate_dns_subdomain(&name) {
        return Err(ConfigError::Invalid {
            field: "nodeName".to_owned(),
            origin,
            reason: format!("{name:?} is not a valid node name: {reason}"),
        });
    }
    Ok(name)
}

fn node_ips(flag: Option<&str>) -> Result<Vec<IpAddr>, ConfigError> {
    let Some(flag) = flag else {
        return Ok(Vec::new());
    };
    let ips = flag
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| flag_error("node-ip", format!("invalid IP address {:?}", s.trim())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    if ips.len() > 2 || v4 > 1 || ips.len() - v4 > 1 {
        return Err(flag_error(
            "node-ip",
            "at most one IPv4 and one IPv6 address",
        ));
    }
    Ok(ips)
}

/// Converts the merged documents to typed values; knows where each field came from.
struct Typed<'a> {
    kubelet: &'a BTreeMap<String, Origin>,
    bpflet: &'a BTreeMap<String, Origin>,
    /// What the node has, for the settings that must fit it.
    node: &'a NodeFacts,
}

impl Typed<'_> {
    fn origin(&self, field: &str) -> Origin {
        let top = field.split(['[', '.']).next().unwrap_or(field);
        [field, top]
            .into_iter()
            .find_map(|f| self.kubelet.get(f).or_else(|| self.bpflet.get(f)))
            .cloned()
            .unwrap_or(Origin::Default)
    }

    fn invalid(&self, field: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            field: field.to_owned(),
            origin: self.origin(field),
            reason: reason.to_string(),
        }
    }

    fn duration(
        &self,
        field: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        parse_duration(value.unwrap_or(default)).map_err(|e| self.invalid(field, e))
    }

    fn positive_duration(
        &self,
        field: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(field, value, default)?;
        if d.is_zero() {
            return Err(self.invalid(field, "must be greater than 0"));
        }
        Ok(d)
    }

    /// A duration of at least `min`.
    fn duration_at_least(
        &self,
        field: &str,
        value: Option<&str>,
        default: &str,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(field, value, default)?;
        if d < min {
            return Err(self.invalid(
                field,
                format!(
                    "{} is below the minimum of {min:?}",
                    value.unwrap_or(default)
                ),
            ));
        }
        Ok(d)
    }

    /// `systemReserved` + `kubeReserved` must fit the node's capacity (upstream refuses to
    /// start otherwise). Checked for memory and cpu, the capacities bpflet reads.
    fn within_capacity(
        &self,
        system: &Reservation,
        kube: &Reservation,
        node: &NodeFacts,
    ) -> Result<(), ConfigError> {
        let checks = [
            (
                "memory",
                system.memory_bytes,
                kube.memory_bytes,
                node.memory_bytes,
                ("bytes", "MemTotal"),
            ),
            (
                "cpu",
                system.cpu_millis,
                kube.cpu_millis,
                node.cpu_millis,
                ("millicores", "online CPUs"),
            ),
        ];
        for (resource, sys, kube, capacity, (unit, source)) in checks {
            let Some(capacity) = capacity else { continue };
            let reserved = sys.unwrap_or(0).saturating_add(kube.unwrap_or(0));
            if reserved <= capacity {
                continue;
            }
            let mut fields = Vec::new();
            if sys.is_some() {
                fields.push(entry_path("systemReserved", resource));
            }
            if kube.is_some() {
                fields.push(entry_path("kubeReserved", resource));
            }
            let field = fields.join(" + ");
            return Err(self.invalid(
                &field,
                format!(
                    "reserves {reserved} {unit} of {resource}, more than the node's capacity of {capacity} {unit} ({source}); capacity must be at least systemReserved + kubeReserved"
                ),
            ));
        }
        Ok(())
    }

    fn absolute_path(&self, field: &str, value: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            return Err(self.invalid(field, format!("path {value:?} must be absolute")));
        }
        Ok(path)
    }

    fn ip(&self, field: &str, value: &str) -> Result<IpAddr, ConfigError> {
        value
            .parse()
            .map_err(|_| self.invalid(field, format!("invalid IP address {value:?}")))
    }

    /// A port where 0 means off.
    fn port(&self, field: &str, value: i32) -> Result<Option<u16>, ConfigError> {
        match u16::try_from(value) {
            Ok(0) => Ok(None),
            Ok(port) => Ok(Some(port)),
            Err(_) => Err(self.invalid(field, format!("port {value} out of range 0-65535"))),
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one straight pass over every field reads better than scattered helpers"
    )]
    fn build(
        &self,
        kc: &KubeletConfiguration,
        bc: &BpfletConfiguration,
        node_name: String,
        node_ips: Vec<IpAddr>,
        args: &AgentArgs,
        config_files: Vec<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let node = self.node;
        let static_pod_path = kc
            .static_pod_path
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|p| self.absolute_path("staticPodPath", p))
            .transpose()?;
        let static_pod_url = kc
            .static_pod_url
            .clone()
            .filter(|s| !s.is_empty())
            .map(|url| self.http_url("staticPodURL", url))
            .transpose()?;
        let sources = SourceConfig {
            static_pod_path,
            static_pod_url,
            file_check_frequency: self.duration_at_least(
                "fileCheckFrequency",
                unset_if_zero(kc.file_check_frequency.as_deref()),
                defaults::FILE_CHECK_FREQUENCY,
                minimums::FILE_CHECK_FREQUENCY,
            )?,
            http_check_frequency: self.duration_at_least(
                "httpCheckFrequency",
                unset_if_zero(kc.http_check_frequency.as_deref()),
                defaults::HTTP_CHECK_FREQUENCY,
                minimums::HTTP_CHECK_FREQUENCY,
            )?,
        };
        let sync_frequency = self.duration_at_least(
            "syncFrequency",
            unset_if_zero(kc.sync_frequency.as_deref()),
            defaults::SYNC_FREQUENCY,
            minimums::SYNC_FREQUENCY,
        )?;

        let runtime = RuntimeConfig {
            endpoint: self.runtime_endpoint(
                unset_if_default(kc.container_runtime_endpoint.as_deref())
                    .unwrap_or(defaults::CONTAINER_RUNTIME_ENDPOINT),
            )?,
            request_timeout: self.positive_duration(
                "runtimeRequestTimeout",
                unset_if_zero(kc.runtime_request_timeout.as_deref()),
                defaults::RUNTIME_REQUEST_TIMEOUT,
            )?,
        };

        let driver = match unset_if_default(kc.cgroup_driver.as_deref())
            .unwrap_or(defaults::CGROUP_DRIVER)
        {
            "cgroupfs" => CgroupDriver::Cgroupfs,
            "systemd" => {
                return Err(self.invalid(
                    "cgroupDriver",
                    "the systemd cgroup driver is not supported: bpflet writes the pod cgroup \
                     tree through cgroupfs and creates no systemd slices; use \"cgroupfs\" \
                     (--cgroup-driver=cgroupfs), with the runtime on cgroupfs too (containerd: \
                     SystemdCgroup = false)",
                ));
            }
            other => {
                return Err(self.invalid(
                    "cgroupDriver",
                    format!("unknown cgroup driver {other:?}; expected \"cgroupfs\""),
                ));
            }
        };
        let mut enforce_pods_allocatable = false;
        let levels = kc
            .enforce_node_allocatable
            .clone()
            .unwrap_or_else(|| vec!["pods".to_owned()]);
        for (i, level) in levels.iter().enumerate() {
            let field = format!("enforceNodeAllocatable[{i}]");
            match level.as_str() {
                "pods" => enforce_pods_allocatable = true,
                "none" if levels.len() == 1 => {}
                "none" => {
                    return Err(
                        self.invalid(&field, "\"none\" cannot be combined with other levels")
                    );
                }
                "system-reserved"
                | "kube-reserved"
                | "system-reserved-compressible"
                | "kube-reserved-compressible" => {
                    return Err(self.invalid(
                        &field,
                        format!("{level:?} is not supported (bpflet has no systemReservedCgroup/kubeReservedCgroup)"),
                    ));
                }
                other => {
                    return Err(self.invalid(
                        &field,
                        format!("unknown level {other:?}; expected \"pods\" or \"none\""),
                    ));
                }
            }
        }
        if kc.cgroups_per_qos == Some(false) {
            // Upstream then puts every pod straight under the cgroup root; bpflet's tree,
            // eviction and kernel filter all assume kubepods/<qos>/pod<uid>.
            return Err(self.invalid(
                "cgroupsPerQOS",
                "false is not supported: bpflet always builds the QoS cgroup tree \
                 (kubepods/burstable, kubepods/besteffort)",
            ));
        }
        let cgroups = CgroupConfig {
            root: clean_absolute(kc.cgroup_root.as_deref().unwrap_or(defaults::CGROUP_ROOT))
                .map_err(|reason| self.invalid("cgroupRoot", reason))?,
            driver,
            enforce_pods_allocatable,
        };

        let system_reserved = self.reservation("systemReserved", kc.system_reserved.as_ref())?;
        let kube_reserved = self.reservation("kubeReserved", kc.kube_reserved.as_ref())?;
        self.within_capacity(&system_reserved, &kube_reserved, node)?;
        let eviction = self.eviction(kc, bc)?;

        let cluster = self.cluster(kc, args)?;
        let server = ServerConfig {
            address: self.ip(
                "address",
                unset_if_default(kc.address.as_deref()).unwrap_or(defaults::ADDRESS),
            )?,
            port: self.secure_port(unset_if_default(kc.port))?,
            tls: self.tls(kc, &args.root_dir, cluster.is_some())?,
            auth: self.auth(kc, cluster.is_some())?,
            read_only_port: self.port("readOnlyPort", kc.read_only_port.unwrap_or(0))?,
            healthz_port: self.port(
                "healthzPort",
                kc.healthz_port.unwrap_or(defaults::HEALTHZ_PORT),
            )?,
            healthz_bind_address: self.ip(
                "healthzBindAddress",
                unset_if_default(kc.healthz_bind_address.as_deref())
                    .unwrap_or(defaults::HEALTHZ_BIND_ADDRESS),
            )?,
        };
        let max_pods = unset_if_default(kc.max_pods).unwrap_or(defaults::MAX_PODS);
        let max_pods = u32::try_from(max_pods)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| self.invalid("maxPods", format!("{max_pods} must be greater than 0")))?;
        // Upstream's defaulting turns every negative value into -1 (unlimited).
        let pod_pids_limit = match kc.pod_pids_limit.unwrap_or(defaults::POD_PIDS_LIMIT) {
            i64::MIN..=0 => None,
            n => Some(u64::try_from(n).map_err(|_| {
                self.invalid(
                    "podPidsLimit",
                    format!("{n} must be -1 (unlimited) or positive"),
                )
            })?),
        };

        let image_pulls = crate::images::PullSettings::new(
            kc.serialize_image_pulls.unwrap_or(true),
            kc.max_parallel_image_pulls,
        )
        .map_err(|(field, reason)| self.invalid(&field, reason))?;
        let image_gc = crate::images::gc::GcPolicy::new(
            kc.image_gc_high_threshold_percent
                .unwrap_or(defaults::IMAGE_GC_HIGH_THRESHOLD_PERCENT),
            kc.image_gc_low_threshold_percent
                .unwrap_or(defaults::IMAGE_GC_LOW_THRESHOLD_PERCENT),
            self.duration(
                "imageMinimumGCAge",
                unset_if_zero(kc.image_minimum_gc_age.as_deref()),
                defaults::IMAGE_MINIMUM_GC_AGE,
            )?,
            self.duration(
                "imageMaximumGCAge",
                kc.image_maximum_gc_age.as_deref(),
                defaults::IMAGE_MAXIMUM_GC_AGE,
            )?,
        )
        .map_err(|(field, reason)| self.invalid(&field, reason))?;

        let container_logs = self.container_logs(kc)?;
        let pleg = self.pleg(bc)?;
        let event_stream = self.event_stream(bc)?;
        let sysctls = SysctlPolicy::new(
            node.kernel,
            kc.allowed_unsafe_sysctls.as_deref().unwrap_or_default(),
        )
        .map_err(|(i, e)| self.invalid(&format!("allowedUnsafeSysctls[{i}]"), e))?;
        let dns = self.dns(kc)?;
        let (verbosity, log_format) = self.logging(kc, args)?;
        for (name, &value) in kc.feature_gates.iter().flatten() {
            feature_gates::check(name, value)
                .map_err(|reason| self.invalid(&entry_path("featureGates", name), reason))?;
        }
        self.unimplemented(kc)?;

        Ok(Config {
            node_name,
            node_ips,
            root_dir: args.root_dir.clone(),
            verbosity,
            log_format,
            config_files,
            sources,
            sync_frequency,
            runtime,
            cgroups,
            system_reserved,
            kube_reserved,
            eviction,
            server,
            max_pods,
            pod_pids_limit,
            image_pulls,
            image_gc,
            pleg,
            sysctls,
            container_logs,
            dns,
            node: *node,
            cluster,
            event_stream,
        })
    }

    /// `clusterDNS` (IP addresses), `clusterDomain` (a DNS subdomain, or empty) and
    /// `resolvConf` (an absolute path; empty: none).
    fn dns(&self, kc: &KubeletConfiguration) -> Result<DnsConfig, ConfigError> {
        let cluster_dns = kc
            .cluster_dns
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| self.ip(&format!("clusterDNS[{i}]"), ip))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster_domain = kc.cluster_domain.clone().unwrap_or_default();
        if !cluster_domain.is_empty() {
            crate::model::validation::validate_dns_subdomain(&cluster_domain).map_err(|e| {
                self.invalid(
                    "clusterDomain",
                    format!("{cluster_domain:?} is not a DNS subdomain: {e}"),
                )
            })?;
        }
        let resolv_conf = match kc.resolv_conf.as_deref().unwrap_or(defaults::RESOLV_CONF) {
            "" => None,
            path => Some(clean_absolute(path).map_err(|e| self.invalid("resolvConf", e))?),
        };
        Ok(DnsConfig {
            cluster_dns,
            cluster_domain,
            resolv_conf,
        })
    }

    /// `-v` / `--log-format`, else `logging.verbosity` / `logging.format`. bpflet writes
    /// every line to stderr as it is logged: `flushFrequency` has nothing to flush, and the
    /// settings that ask for something else are refused.
    fn logging(
        &self,
        kc: &KubeletConfiguration,
        args: &AgentArgs,
    ) -> Result<(u8, LogFormat), ConfigError> {
        let logging = kc.logging.clone().unwrap_or_default();
        let format = match (args.log_format, logging.format.as_deref()) {
            (Some(flag), _) => flag,
            (None, None | Some("" | "text")) => LogFormat::Text,
            (None, Some("json")) => LogFormat::Json,
            (None, Some(other)) => {
                return Err(self.invalid(
                    "logging.format",
                    format!("unknown format {other:?}; expected \"text\" or \"json\""),
                ));
            }
        };
        let verbosity = args.verbosity.unwrap_or_else(|| {
            logging
                .verbosity
                .map_or(0, |v| u8::try_from(v).unwrap_or(u8::MAX))
        });
        match &logging.flush_frequency {
            None => {}
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {}
            Some(serde_json::Value::String(d)) if parse_duration(d).is_ok() => {}
            Some(other) => {
                return Err(self.invalid(
                    "logging.flushFrequency",
                    format!("{other} is neither nanoseconds nor a duration"),
                ));
            }
        }
        if logging.vmodule.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(self.invalid(
                "logging.vmodule",
                "per-file verbosity is not supported: bpflet has one verbosity (-v, \
                 logging.verbosity)",
            ));
        }
        let options = logging.options.unwrap_or_default();
        for (name, stream) in [("text", options.text), ("json", options.json)] {
            let stream = stream.unwrap_or_default();
            if stream.split_stream == Some(true) {
                return Err(self.invalid(
                    &format!("logging.options.{name}.splitStream"),
                    "true is not supported: bpflet writes every message to stderr",
                ));
            }
            if let Some(size) = &stream.info_buffer_size {
                let field = format!("logging.options.{name}.infoBufferSize");
                let bytes = parse_quantity(&size.0)
                    .map_err(|e| self.invalid(&field, e))?
                    .bytes();
                if bytes != 0 {
                    return Err(self.invalid(
                        &field,
                        format!("{:?} is not supported: bpflet buffers no messages", size.0),
                    ));
                }
            }
        }
        Ok((verbosity, format))
    }

    /// Fields whose every value but upstream's default asks for something bpflet does not
    /// do: the default (or the zero upstream takes for it) is accepted, anything else is
    /// refused naming the field and what is missing.
    fn unimplemented(&self, kc: &KubeletConfiguration) -> Result<(), ConfigError> {
        match kc.cpu_manager_policy.as_deref() {
            None | Some("" | "none") => {}
            Some("static") => {
                return Err(self.invalid(
                    "cpuManagerPolicy",
                    "static is not supported: bpflet has no CPU manager (exclusive CPUs for \
                     Guaranteed pods); use none",
                ));
            }
            Some(other) => {
                return Err(self.invalid(
                    "cpuManagerPolicy",
                    format!("unknown policy {other:?}; expected none"),
                ));
            }
        }
        // With the `none` policy there is nothing to reconcile; the period only has to be
        // a duration.
        self.duration(
            "cpuManagerReconcilePeriod",
            unset_if_zero(kc.cpu_manager_reconcile_period.as_deref()),
            defaults::CPU_MANAGER_RECONCILE_PERIOD,
        )?;
        match kc
            .memory_swap
            .as_ref()
            .and_then(|m| m.swap_behavior.as_deref())
        {
            None | Some("" | "NoSwap") => {}
            Some("LimitedSwap") => {
                return Err(self.invalid(
                    "memorySwap.swapBehavior",
                    "LimitedSwap is not supported: bpflet gives pods no swap limits; use \
                     NoSwap",
                ));
            }
            Some(other) => {
                return Err(self.invalid(
                    "memorySwap.swapBehavior",
                    format!("{other:?} must be one of: \"\", \"LimitedSwap\" or \"NoSwap\""),
                ));
            }
        }
        if kc
            .crash_loop_back_off
            .as_ref()
            .is_some_and(|c| c.max_container_restart_period.is_some())
        {
            return Err(self.invalid(
                "crashLoopBackOff.maxContainerRestartPeriod",
                "needs the KubeletCrashLoopBackOffMax feature gate (alpha, off), which bpflet \
                 does not implement: its crash-loop back-off is upstream's default, 10s \
                 doubling to 5m",
            ));
        }
        for field in ["shutdownGracePeriod", "shutdownGracePeriodCriticalPods"] {
            let value = if field == "shutdownGracePeriod" {
                kc.shutdown_grace_period.as_deref()
            } else {
                kc.shutdown_grace_period_critical_pods.as_deref()
            };
            if !self.duration(field, value, "0s")?.is_zero() {
                return Err(self.invalid(
                    field,
                    "graceful node shutdown is not supported: bpflet takes no systemd \
                     inhibitor lock and does not stop pods when the node shuts down; use 0s \
                     (off)",
                ));
            }
        }
        let fixed = [
            (
                "streamingConnectionIdleTimeout",
                kc.streaming_connection_idle_timeout.as_deref(),
                defaults::STREAMING_CONNECTION_IDLE_TIMEOUT,
                "bpflet sets no idle timeout of its own on exec, attach and port-forward \
                 streams: it proxies them to the runtime's streaming server, whose timeout \
                 applies (containerd's stream_idle_timeout, 4h by default)",
            ),
            (
                "volumeStatsAggPeriod",
                kc.volume_stats_agg_period.as_deref(),
                defaults::VOLUME_STATS_AGG_PERIOD,
                "bpflet walks pod volumes and logs for their usage once a minute (fixed)",
            ),
        ];
        for (field, value, default, why) in fixed {
            let value = unset_if_zero(value);
            if self.duration(field, value, default)? != parse_duration(default).unwrap_or_default()
            {
                return Err(self.invalid(
                    field,
                    format!("only upstream's default {default} (or 0s) is supported: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// `containerLog*`, validated as upstream does: at least 2 files, at least 1 worker, an
    /// interval of at least 3s; the size must be a positive quantity.
    fn container_logs(&self, kc: &KubeletConfiguration) -> Result<ContainerLogConfig, ConfigError> {
        let field = "containerLogMaxSize";
        let size = kc
            .container_log_max_size
            .as_ref()
            .map_or(defaults::CONTAINER_LOG_MAX_SIZE, |q| q.0.as_str());
        let max_size_bytes = parse_quantity(size)
            .map_err(|e| self.invalid(field, e))?
            .bytes();
        if max_size_bytes == 0 {
            return Err(self.invalid(field, format!("{size:?} must be greater than 0")));
        }
        let files = kc
            .container_log_max_files
            .unwrap_or(defaults::CONTAINER_LOG_MAX_FILES);
        let max_files = u32::try_from(files)
            .ok()
            .filter(|&n| n >= 2)
            .ok_or_else(|| {
                self.invalid(
                    "containerLogMaxFiles",
                    format!("{files} must be greater than or equal to 2"),
                )
            })?;
        let workers = kc
            .container_log_max_workers
            .unwrap_or(defaults::CONTAINER_LOG_MAX_WORKERS);
        let max_workers = u32::try_from(workers)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                self.invalid(
                    "containerLogMaxWorkers",
                    format!("{workers} must be greater than or equal to 1"),
                )
            })?;
        let monitor_interval = self.duration_at_least(
            "containerLogMonitorInterval",
            kc.container_log_monitor_interval.as_deref(),
            defaults::CONTAINER_LOG_MONITOR_INTERVAL,
            minimums::CONTAINER_LOG_MONITOR_INTERVAL,
        )?;
        Ok(ContainerLogConfig {
            max_size_bytes,
            max_files,
            max_workers,
            monitor_interval,
        })
    }

    /// `port`: 1-65535, as upstream validates it (the HTTPS API cannot be turned off).
    fn secure_port(&self, value: Option<i32>) -> Result<u16, ConfigError> {
        let value = value.unwrap_or(defaults::PORT);
        u16::try_from(value)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| self.invalid("port", format!("{value} must be between 1 and 65535")))
    }

    fn tls(
        &self,
        kc: &KubeletConfiguration,
        root_dir: &Path,
        cluster: bool,
    ) -> Result<TlsConfig, ConfigError> {
        if kc.rotate_certificates == Some(true) {
            return Err(self.invalid(
                "rotateCertificates",
                "true is not supported: bpflet does not rotate its client certificate \
                 (kubeadm writes true); the kubeconfig's credential is used as given until it \
                 expires: set rotateCertificates: false (--rotate-certificates=false)",
            ));
        }
        let path = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| clean_absolute(v).map_err(|e| self.invalid(field, e)))
                .transpose()
        };
        let cert = path("tlsCertFile", &kc.tls_cert_file)?;
        let key = path("tlsPrivateKeyFile", &kc.tls_private_key_file)?;
        let cert = match (cert, key) {
            _ if kc.server_tls_bootstrap == Some(true) => {
                if !cluster {
                    return Err(self.invalid(
                        "serverTLSBootstrap",
                        "true needs a cluster (--kubeconfig): the serving certificate is \
                         requested from the API server; standalone, give tlsCertFile and \
                         tlsPrivateKeyFile, or leave both unset for a self-signed certificate",
                    ));
                }
                ServingCert::Bootstrap {
                    dir: root_dir.join("pki"),
                }
            }
            (Some(cert), Some(key)) => ServingCert::Files { cert, key },
            (None, None) => ServingCert::SelfSigned {
                dir: root_dir.join("pki"),
            },
            (Some(_), None) => {
                return Err(self.invalid(
                    "tlsPrivateKeyFile",
                    "must be set with tlsCertFile (both or neither)",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "tlsCertFile",
                    "must be set with tlsPrivateKeyFile (both or neither)",
                ));
            }
        };
        let min_version = match kc.tls_min_version.as_deref().unwrap_or("") {
            "" | "VersionTLS12" => TlsVersion::Tls12,
            "VersionTLS13" => TlsVersion::Tls13,
            v @ ("VersionTLS10" | "VersionTLS11") => {
                return Err(self.invalid(
                    "tlsMinVersion",
                    format!(
                        "{v} is not supported: bpflet's TLS (rustls) implements TLS 1.2 and 1.3 \
                         only; use VersionTLS12 or VersionTLS13"
                    ),
                ));
            }
            other => {
                return Err(self.invalid(
                    "tlsMinVersion",
                    format!("unknown version {other:?}; expected VersionTLS12 or VersionTLS13"),
                ));
            }
        };
        let cipher_suites = match &kc.tls_cipher_suites {
            None => None,
            Some(names) => {
                let mut suites = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let suite = CipherSuite::parse(name)
                        .map_err(|e| self.invalid(&format!("tlsCipherSuites[{i}]"), e))?;
                    suites.extend(suite.filter(|s| !suites.contains(s)));
                }
                Some(suites)
            }
        };
        Ok(TlsConfig {
            cert,
            min_version,
            cipher_suites,
        })
    }

    /// `authentication` and `authorization`. TokenReview and SubjectAccessReview need the
    /// API server: in standalone mode (no `--kubeconfig`) both are off when left unset, and
    /// refused when set on, as upstream's kubelet refuses them without a client.
    fn auth(&self, kc: &KubeletConfiguration, cluster: bool) -> Result<AuthConfig, ConfigError> {
        let authn = kc.authentication.clone().unwrap_or_default();
        let client_ca_file = authn
            .x509
            .and_then(|x| x.client_ca_file)
            .filter(|f| !f.is_empty())
            .map(|f| {
                clean_absolute(&f).map_err(|e| self.invalid("authentication.x509.clientCAFile", e))
            })
            .transpose()?;
        let webhook = authn.webhook.unwrap_or_default();
        let origin_of = |top: &str, entry: &str| {
            self.kubelet
                .get(&entry_path(top, entry))
                .cloned()
                .unwrap_or(Origin::Default)
        };
        let standalone = |field: &str, origin: Origin, what: &str| ConfigError::Invalid {
            field: field.to_owned(),
            origin,
            reason: format!(
                "{what} needs the API server: set --kubeconfig, or turn it off in standalone mode"
            ),
        };
        let token_webhook = match webhook.enabled {
            Some(true) if !cluster => {
                return Err(standalone(
                    "authentication.webhook.enabled",
                    origin_of("authentication", "webhook"),
                    "bearer token authentication (TokenReview)",
                ));
            }
            Some(true) => Some(()),
            Some(false) => None,
            None => cluster.then_some(()),
        };
        let token_webhook = token_webhook
            .map(|()| {
                parse_duration(
                    unset_if_zero(webhook.cache_ttl.as_deref())
                        .unwrap_or(defaults::AUTHENTICATION_CACHE_TTL),
                )
                .map_err(|e| ConfigError::Invalid {
                    field: "authentication.webhook.cacheTTL".to_owned(),
                    origin: origin_of("authentication", "webhook"),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let anonymous = authn.anonymous.and_then(|a| a.enabled).unwrap_or(false);

        let authz = kc.authorization.clone().unwrap_or_default();
        let origin = origin_of("authorization", "mode");
        let authz_webhook = authz.webhook.unwrap_or_default();
        let ttl = |field: &str, value: Option<&str>, default: &str| {
            parse_duration(unset_if_zero(value).unwrap_or(default)).map_err(|e| {
                ConfigError::Invalid {
                    field: format!("authorization.webhook.{field}"),
                    origin: origin_of("authorization", "webhook"),
                    reason: e.to_string(),
                }
            })
        };
        let webhook_mode = || -> Result<Authorization, ConfigError> {
            Ok(Authorization::Webhook {
                authorized_ttl: ttl(
                    "cacheAuthorizedTTL",
                    authz_webhook.cache_authorized_ttl.as_deref(),
                    defaults::AUTHORIZATION_CACHE_AUTHORIZED_TTL,
                )?,
                unauthorized_ttl: ttl(
                    "cacheUnauthorizedTTL",
                    authz_webhook.cache_unauthorized_ttl.as_deref(),
                    defaults::AUTHORIZATION_CACHE_UNAUTHORIZED_TTL,
                )?,
            })
        };
        let authorization = match authz.mode.as_deref() {
            None if cluster => webhook_mode()?,
            None | Some("AlwaysAllow") => Authorization::AlwaysAllow,
            Some("Webhook") if !cluster => {
                return Err(standalone(
                    "authorization.mode",
                    origin,
                    "Webhook authorization (SubjectAccessReview)",
                ));
            }
            Some("Webhook") => webhook_mode()?,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "authorization.mode".to_owned(),
                    origin,
                    reason: format!("unknown mode {other:?}; expected Webhook or AlwaysAllow"),
                });
            }
        };
        Ok(AuthConfig {
            client_ca_file,
            token_webhook,
            anonymous,
            authorization,
        })
    }

    fn cluster(
        &self,
        kc: &KubeletConfiguration,
        args: &AgentArgs,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let update_set = unset_if_zero(kc.node_status_update_frequency.as_deref());
        let report_set = unset_if_zero(kc.node_status_report_frequency.as_deref());
        let update = self.duration_at_least(
            "nodeStatusUpdateFrequency",
            update_set,
            defaults::NODE_STATUS_UPDATE_FREQUENCY,
            minimums::NODE_STATUS_UPDATE_FREQUENCY,
        )?;
        // Unset, the report frequency is the update frequency when that one is set (upstream's
        // backward compatibility), else 5m.
        let report = self.duration_at_least(
            "nodeStatusReportFrequency",
            report_set.or(update_set),
            defaults::NODE_STATUS_REPORT_FREQUENCY,
            minimums::NODE_STATUS_UPDATE_FREQUENCY,
        )?;
        let lease = unset_if_default(kc.node_lease_duration_seconds)
            .unwrap_or(defaults::NODE_LEASE_DURATION_SECONDS);
        let lease = u64::try_from(lease)
            .ok()
            .filter(|&s| s >= 4)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                self.invalid(
                    "nodeLeaseDurationSeconds",
                    format!(
                        "{lease} must be at least 4 (the lease is renewed every quarter of it)"
                    ),
                )
            })?;
        let positive = |field: &str, value: Option<i32>, default: i32| {
            let value = value.unwrap_or(default);
            u32::try_from(value)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| self.invalid(field, format!("{value} must be positive")))
        };
        let kube_api_qps = positive("kubeAPIQPS", kc.kube_api_qps, defaults::KUBE_API_QPS)?;
        let kube_api_burst = positive(
            "kubeAPIBurst",
            unset_if_default(kc.kube_api_burst),
            defaults::KUBE_API_BURST,
        )?;
        let taints = kc.register_with_taints.clone().unwrap_or_default();
        for (i, taint) in taints.iter().enumerate() {
            validate_taint(taint)
                .map_err(|e| self.invalid(&format!("registerWithTaints[{i}]"), e))?;
        }
        let node_labels = match &args.node_labels {
            Some(v) => parse_labels(v)
                .and_then(|labels| kubelet_labels_only(&labels).map(|()| labels))
                .map_err(|e| flag_error("node-labels", e))?,
            None => BTreeMap::new(),
        };
        let Some(kubeconfig) = &args.kubeconfig else {
            // Values upstream takes as unset (kubeadm's `0s`) are not settings.
            let set: Vec<&str> = [
                ("nodeStatusUpdateFrequency", update_set.is_some()),
                ("nodeStatusReportFrequency", report_set.is_some()),
                (
                    "nodeLeaseDurationSeconds",
                    unset_if_default(kc.node_lease_duration_seconds).is_some(),
                ),
                ("registerWithTaints", kc.register_with_taints.is_some()),
                ("registerNode", kc.register_node == Some(false)),
                ("kubeAPIQPS", kc.kube_api_qps.is_some()),
                (
                    "kubeAPIBurst",
                    unset_if_default(kc.kube_api_burst).is_some(),
                ),
                ("--node-labels", args.node_labels.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if let Some(first) = set.first() {
                return Err(ConfigError::Invalid {
                    field: (*first).to_owned(),
                    origin: if first.starts_with("--") {
                        Origin::Flag("node-labels")
                    } else {
                        self.origin(first)
                    },
                    reason: "applies to cluster mode only: set --kubeconfig, or remove it"
                        .to_owned(),
                });
            }
            return Ok(None);
        };
        Ok(Some(ClusterConfig {
            kubeconfig: kubeconfig.clone(),
            node_labels,
            register_with_taints: taints,
            node_status_update_frequency: update,
            node_status_report_frequency: report,
            node_lease_duration: lease,
            kube_api_qps,
            kube_api_burst,
            register_node: kc.register_node.unwrap_or(true),
        }))
    }

    fn pleg(&self, bc: &BpfletConfiguration) -> Result<PlegConfig, ConfigError> {
        let mode = bc.pleg_mode.unwrap_or(PlegMode::Event);
        let event_source = bc.event_source.unwrap_or_default();
        if mode == PlegMode::Generic && event_source != SourceChoice::Auto {
            return Err(self.invalid(
                "eventSource",
                format!(
                    "{} needs plegMode: event (plegMode: generic reads no kernel events; \
                     with eventSource: poll the PLEG relists every second anyway)",
                    event_source.as_str()
                ),
            ));
        }
        let safety_relist_period = self.duration_at_least(
            "plegSafetyRelistPeriod",
            bc.pleg_safety_relist_period.as_deref(),
            defaults::PLEG_SAFETY_RELIST_PERIOD,
            minimums::PLEG_SAFETY_RELIST_PERIOD,
        )?;
        let unhealthy_threshold = self.positive_duration(
            "plegUnhealthyThreshold",
            bc.pleg_unhealthy_threshold.as_deref(),
            defaults::PLEG_UNHEALTHY_THRESHOLD,
        )?;
        Ok(PlegConfig {
            mode,
            event_source,
            safety_relist_period,
            unhealthy_threshold,
        })
    }

    fn http_url(&self, field: &str, url: String) -> Result<String, ConfigError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| self.invalid(field, format!("invalid URL {url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("http") if uri.authority().is_some() => Ok(url),
            Some("https") => Err(self.invalid(
                field,
                format!("{url:?}: https is not supported; use http://"),
            )),
            _ => Err(self.invalid(
                field,
                format!("{url:?}: expected an http:// URL with a host"),
            )),
        }
    }

    fn runtime_endpoint(&self, endpoint: &str) -> Result<PathBuf, ConfigError> {
        let field = "containerRuntimeEndpoint";
        let path = match endpoint.split_once("://") {
            Some(("unix", path)) => path,
            Some((scheme, _)) => {
                return Err(self.invalid(
                    field,
                    format!(
                        "{endpoint:?}: unsupported scheme {scheme:?}; use unix:// or a socket path"
                    ),
                ));
            }
            None => endpoint,
        };
        self.absolute_path(field, path)
    }

    fn reservation(
        &self,
        field: &str,
        map: Option<&BTreeMap<String, Quantity>>,
    ) -> Result<Reservation, ConfigError> {
        let mut r = Reservation::default();
        for (name, quantity) in map.into_iter().flatten() {
            let path = entry_path(field, name);
            let value = parse_quantity(&quantity.0).map_err(|e| self.invalid(&path, e))?;
            match name.as_str() {
                "cpu" => r.cpu_millis = Some(value.millis()),
                "memory" => r.memory_bytes = Some(value.bytes()),
                "ephemeral-storage" => r.ephemeral_storage_bytes = Some(value.bytes()),
                "pid" => r.pids = Some(value.units()),
                other => {
                    return Err(self.invalid(
                        &path,
                        format!("unsupported resource {other:?}; expected cpu, memory, ephemeral-storage or pid"),
                    ));
                }
            }
        }
        Ok(r)
    }

    fn thresholds(
        &self,
        field: &str,
        map: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<Signal, ThresholdValue>, ConfigError> {
        let mut out = BTreeMap::new();
        for (signal, value) in map {
            let path = entry_path(field, signal);
            let signal: Signal = signal.parse().map_err(|e| self.invalid(&path, e))?;
            let value = parse_threshold_value(value).map_err(|e| self.invalid(&path, e))?;
            out.insert(signal, value);
        }
        Ok(out)
    }

    fn eviction(
        &self,
        kc: &KubeletConfiguration,
        bc: &BpfletConfiguration,
    ) -> Result<EvictionConfig, ConfigError> {
        let default_hard: BTreeMap<String, String> = defaults::EVICTION_HARD
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let hard = self.thresholds(
            "evictionHard",
            kc.eviction_hard.as_ref().unwrap_or(&default_hard),
        )?;
        let soft = self.thresholds(
            "evictionSoft",
            kc.eviction_soft.as_ref().unwrap_or(&BTreeMap::new()),
        )?;
        let reclaim = self.thresholds(
            "evictionMinimumReclaim",
            kc.eviction_minimum_reclaim
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
        )?;
        let mut grace = BTreeMap::new();
        for (signal, value) in kc.eviction_soft_grace_period.iter().flatten() {
            let path = entry_path("evictionSoftGracePeriod", signal);
            let parsed: Signal = signal.parse().map_err(|e| self.invalid(&path, e))?;
            let d = parse_duration(value).map_err(|e| self.invalid(&path, e))?;
            if !soft.contains_key(&parsed) {
                return Err(self.invalid(
                    &path,
                    format!("grace period for {signal} without an evictionSoft threshold"),
                ));
            }
            grace.insert(parsed, d);
        }
        let mut soft_thresholds = Vec::new();
        for (signal, value) in soft {
            let Some(&grace_period) = grace.get(&signal) else {
                return Err(self.invalid(
                    &entry_path("evictionSoft", signal.as_str()),
                    format!(
                        "soft threshold needs an evictionSoftGracePeriod[{:?}]",
                        signal.as_str()
                    ),
                ));
            };
            if value.is_zero() {
                continue;
            }
            soft_thresholds.push(Threshold {
                signal,
                value,
                grace_period,
                min_reclaim: reclaim.get(&signal).copied(),
            });
        }
        let hard = hard
            .into_iter()
            .filter(|(_, value)| !value.is_zero())
            .map(|(signal, value)| Threshold {
                signal,
                value,
                grace_period: Duration::ZERO,
                min_reclaim: reclaim.get(&signal).copied(),
            })
            .collect();
        let max_pod_grace_period = match kc.eviction_max_pod_grace_period.unwrap_or(0) {
            0 => None,
            n => Some(Duration::from_secs(u64::try_from(n).map_err(|_| {
                self.invalid(
                    "evictionMaxPodGracePeriod",
                    format!("{n} must not be negative"),
                )
            })?)),
        };
        let ranking = match bc
            .eviction_ranking
            .as_deref()
            .unwrap_or(defaults::EVICTION_RANKING)
        {
            "qos" => EvictionRanking::Qos,
            "upstream" => EvictionRanking::Upstream,
            other => {
                return Err(self.invalid(
                    "evictionRanking",
                    format!("unknown ranking {other:?}; expected \"qos\" or \"upstream\""),
                ));
            }
        };
        Ok(EvictionConfig {
            hard,
            soft: soft_thresholds,
            pressure_transition_period: self.duration(
                "evictionPressureTransitionPeriod",
                unset_if_zero(kc.eviction_pressure_transition_period.as_deref()),
                defaults::EVICTION_PRESSURE_TRANSITION_PERIOD,
            )?,
            max_pod_grace_period,
            ranking,
            local_storage_capacity_isolation: kc.local_storage_capacity_isolation.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests;
