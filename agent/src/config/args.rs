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

    /// The cgroup driver: `cgroupfs` (the only one bpflet has) [config default: cgroupfs].
    #[arg(long = "cgroup-driver", value_name = "DRIVER")]
    pub cgroup_driver: Option<String>,

    /// Pods the node runs at most [config default: 110].
    #[arg(long = "max-pods", value_name = "N")]
    pub max_pods: Option<i32>,

    /// Cluster mode: register the Node object (`--register-node=false`: the Node must exist;
    /// its status and lease are still kept) [config default: true].
    #[arg(
        long = "register-node",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub register_node: Option<bool>,

    /// Client certificate rotation: only `false` is accepted (`rotateCertificates`).
    #[arg(
        long = "rotate-certificates",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub rotate_certificates: Option<bool>,

    /// Cluster DNS servers, comma-separated (`clusterDNS`).
    #[arg(long = "cluster-dns", value_name = "IP[,IP]")]
    pub cluster_dns: Option<String>,

    /// The cluster's DNS domain (`clusterDomain`).
    #[arg(long = "cluster-domain", value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,

    /// The resolv.conf pods with `dnsPolicy: Default` inherit; empty: none
    /// [config default: /etc/resolv.conf].
    #[arg(long = "resolv-conf", value_name = "FILE")]
    pub resolv_conf: Option<String>,

    /// Upstream feature gates, `Name=true|false` comma-separated (`featureGates`).
    #[arg(long = "feature-gates", value_name = "GATES")]
    pub feature_gates: Option<String>,

    /// Log verbosity: 0 and 1 log at info, 2 adds bpflet's debug messages, 3 and more its
    /// trace messages (klog's level numbers are not mapped one to one)
    /// [config default: `logging.verbosity`, 0].
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// Log format on stderr [config default: `logging.format`, text].
    #[arg(long = "log-format", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
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
