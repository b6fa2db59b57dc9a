//! Command-line flags, named like the kubelet's. Flags win over every config file.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The agent's flags; `main` flattens this into its top-level command.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// KubeletConfiguration file (YAML or JSON); may also hold a BpfletConfiguration document.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory of drop-in config files (`*.conf`), applied in alphabetical order after --config.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Static pod manifests: a directory (files starting with '.' are ignored) or one file.
    #[arg(long = "pod-manifest-path", value_name = "PATH")]
    pub pod_manifest_path: Option<String>,

    /// URL serving a static Pod, PodList or List (http:// only).
    #[arg(long = "manifest-url", value_name = "URL")]
    pub manifest_url: Option<String>,

    /// CRI endpoint: `unix:///path/to.sock` or a plain socket path
    /// [config default: unix:///run/containerd/containerd.sock].
    #[arg(long = "container-runtime-endpoint", value_name = "ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,

    /// Directory for the agent's state.
    #[arg(
        long = "root-dir",
        value_name = "DIR",
        default_value = "/var/lib/bpflet"
    )]
    pub root_dir: PathBuf,

    /// Root of the cgroup hierarchy for pods [config default: /].
    #[arg(long = "cgroup-root", value_name = "PATH")]
    pub cgroup_root: Option<String>,

    /// Node name to use instead of the host name.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// The node's IP address(es), comma-separated (at most one per family).
    #[arg(long = "node-ip", value_name = "IP[,IP]")]
    pub node_ip: Option<String>,

    /// Kubeconfig of the API server to join (cluster mode): the node registers, keeps its
    /// lease, runs the pods bound to it and reports their status and events there.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Labels the node registers with, `key=value` comma-separated (cluster mode).
    #[arg(long = "node-labels", value_name = "LABELS")]
    pub node_labels: Option<String>,

    /// Taints the node registers with, `key[=value]:Effect` comma-separated (cluster mode).
    #[arg(long = "register-with-taints", value_name = "TAINTS")]
    pub register_with_taints: Option<String>,

    /// Read-only HTTP port; 0 turns it off [config default: 0].
    #[arg(long = "read-only-port", value_name = "PORT")]
    pub read_only_port: Option<i32>,

    /// Address the agent's HTTP server binds [config default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub address: Option<String>,

    /// Port of the authenticated HTTPS API (deprecated upstream in favour of the config
    /// file's `port`) [config default: 10250].
    #[arg(long, value_name = "PORT")]
    pub port: Option<i32>,

    /// The serving certificate (PEM); without it and --tls-private-key-file, a self-signed
    /// one is made in `<root-dir>/pki/`.
    #[arg(long = "tls-cert-file", value_name = "FILE")]
    pub tls_cert_file: Option<String>,

    /// The serving certificate's private key (PEM).
    #[arg(long = "tls-private-key-file", value_name = "FILE")]
    pub tls_private_key_file: Option<String>,

    /// CA bundle (PEM) whose client certificates authenticate requests to the HTTPS API
    /// (`authentication.x509.clientCAFile`).
    #[arg(long = "client-ca-file", value_name = "FILE")]
    pub client_ca_file: Option<String>,

    /// Port of the /healthz endpoint; 0 turns it off [config default: 10248].
    #[arg(long = "healthz-port", value_name = "PORT")]
    pub healthz_port: Option<i32>,

    /// Timeout of every CRI request except long-running ones, Go syntax [config default: 2m].
    #[arg(long = "runtime-request-timeout", value_name = "DURATION")]
    pub runtime_request_timeout: Option<String>,

    /// How pod lifecycle events are noticed [config default: event].
    #[arg(long = "pleg-mode", value_enum, value_name = "MODE")]
    pub pleg_mode: Option<PlegMode>,

    /// Hard eviction thresholds, e.g. `memory.available<100Mi,nodefs.available<10%`.
    #[arg(long = "eviction-hard", value_name = "THRESHOLDS")]
    pub eviction_hard: Option<String>,

    /// Resources reserved for the system, e.g. `memory=200Mi,cpu=100m`.
    #[arg(long = "system-reserved", value_name = "RESOURCES")]
    pub system_reserved: Option<String>,

    /// Resources reserved for Kubernetes daemons, e.g. `memory=200Mi,cpu=100m`.
    #[arg(long = "kube-reserved", value_name = "RESOURCES")]
    pub kube_reserved: Option<String>,

    /// Comma-separated levels to enforce node allocatable on (`pods` or `none`).
    #[arg(long = "enforce-node-allocatable", value_name = "LEVELS")]
    pub enforce_node_allocatable: Option<String>,

    /// Unsafe sysctls pods may set besides the safe set, comma-separated names or prefix
    /// patterns ending in `*` (e.g. `kernel.msg*,net.core.somaxconn`); each must be namespaced.
    #[arg(long = "allowed-unsafe-sysctls", value_name = "SYSCTLS")]
    pub allowed_unsafe_sysctls: Option<String>,

    /// Log verbosity: 0 and 1 log at info, 2 adds bpflet's debug messages, 3 and more its
    /// trace messages (klog's level numbers are not mapped one to one).
    #[arg(short = 'v', long = "v", value_name = "LEVEL", default_value_t = 0)]
    pub verbosity: u8,

    /// Log format on stderr.
    #[arg(long = "log-format", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How pod lifecycle events are noticed (bpflet-only setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlegMode {
    /// Kernel events trigger a relist of the affected pod; a slow safety relist backs it up.
    Event,
    /// Upstream's generic PLEG: relist every pod every second.
    Generic,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
