//! The Kubernetes test bed: the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) and kubectl, built from upstream's Go modules in
//! `tests/k8s/` and run on 127.0.0.1. Go is test infrastructure here; the product stays Rust.
//!
//! Used by `cargo xtask build-cluster`, `cargo xtask setup`, `cargo xtask up --cluster` and
//! the root test `tests/tests/cluster.rs`:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use xtask::cluster::{self, ControlPlane};
//! cluster::build()?;
//! let cp = ControlPlane::start(&cluster::Config::new("/tmp/cluster".into()), &|| false)?;
//! cp.smoke_check()?;
//! cp.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! [`build`] runs `go build` only when the pins change: it keeps a stamp (a hash of go.mod,
//! go.sum, our own Go sources, the build flags and the Go version) beside the binaries in
//! `target/cluster/bin/`. The Go module and build caches are Go's defaults (`go env
//! GOMODCACHE GOCACHE`, under `$HOME`), so a fresh clone on the same machine (CI's) only
//! links.
//!
//! [`ControlPlane::start`] generates a CA and every certificate and key (rcgen, in process),
//! starts the four daemons with TLS, the Node and RBAC authorizers and the NodeRestriction
//! admission plugin, and writes `admin.kubeconfig` and `node.kubeconfig` (a client
//! certificate for `system:node:<node>` in `system:nodes`) in the work directory. Every
//! daemon listens on 127.0.0.1 only, on ports picked free at start. etcd serves plain HTTP on
//! 127.0.0.1 (only the API server talks to it) and skips fsync: its data is thrown away.
//!
//! Every daemon runs in its own process group (a Ctrl-C at the terminal reaches only the
//! caller, which stops them in order) and gets SIGTERM if the thread that started it dies.
//! [`ControlPlane::stop`] (or drop) stops them in reverse order, removes the etcd data and
//! fails naming any process of this work directory that is still alive.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::Digest as _;

/// The Kubernetes release `tests/k8s/go.mod` pins (a unit test keeps the two in step).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// The binaries built, as (file name, Go package in `tests/k8s`).
pub const PROGRAMS: [(&str, &str); 6] = [
    ("etcd", "./cmd/etcd"),
    // `promtool check metrics`'s linter (client_golang's promlint) over stdin.
    ("promlint", "./cmd/promlint"),
    ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
    (
        "kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ),
    ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
    ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
];
/// `go build` runs at most this many compile jobs at once: the machines have 2 cores.
const GO_BUILD_JOBS: u32 = 2;
/// The files whose content decides whether the binaries must be rebuilt.
const PINNED_FILES: [&str; 4] = [
    "go.mod",
    "go.sum",
    "cmd/etcd/main.go",
    "cmd/promlint/main.go",
];
const STAMP: &str = "build.stamp";

/// The Service IP range. Nothing sends traffic there: bpflet's tests talk to 127.0.0.1.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// The first address of [`SERVICE_CLUSTER_IP_RANGE`]: the `kubernetes` Service, named in
/// the API server's certificate as upstream does.
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const CLUSTER_NAME: &str = "bpflet";

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONTROLLERS_READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one smoke step may wait for the cluster to converge (a namespace's deletion, a
/// pod's scheduling verdict).
const SMOKE_TIMEOUT: Duration = Duration::from_secs(90);
/// [`Config::audit`]'s policy: every request, metadata only (who, verb, object, code), at
/// every stage.
const AUDIT_POLICY: &str = "# Written by xtask::cluster (xtask/src/cluster.rs) when audit is on.
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
";

fn say(line: &str) {
    println!("[cluster] {line}");
}

/// The workspace root: the parent of xtask's directory.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// `tests/k8s`: the Go module of the test bed.
pub fn go_module_dir() -> PathBuf {
    workspace_root().join("tests").join("k8s")
}

/// `target/cluster` (honouring `CARGO_TARGET_DIR`): `up --cluster`'s work directory.
pub fn default_work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("cluster")
}

/// `target/cluster/bin`: where [`build`] puts the binaries.
pub fn bin_dir() -> PathBuf {
    default_work_dir().join("bin")
}

/// The `-ldflags` of the build: stripped, and the version upstream's release build stamps
/// in, so `kubectl version` and the API server report [`KUBERNETES_VERSION`], not v0.0.0.
pub fn ldflags() -> String {
    let (major, minor) = major_minor(KUBERNETES_VERSION);
    let mut flags = String::from("-s -w");
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        for (var, value) in [
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major),
            ("gitMinor", minor),
            // What upstream stamps into builds made from a source archive.
            ("gitTreeState", "archive"),
        ] {
            let _ = write!(flags, " -X {pkg}.{var}={value}");
        }
    }
    flags
}

/// `("1", "34")` for `v1.34.4`.
fn major_minor(version: &str) -> (&str, &str) {
    let mut parts = version.trim_start_matches('v').split('.');
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

/// The environment of every `go` command: no cgo (static binaries, no C toolchain needed),
/// the local Go only (never a toolchain download), and 2 compile jobs.
fn go_command() -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(go_module_dir())
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env(
            "GOFLAGS",
            format!("-p={GO_BUILD_JOBS} -mod=readonly -buildvcs=false"),
        );
    cmd
}

/// The arguments of the one `go build` that makes every binary into `out`.
fn build_args(out: &Path) -> Vec<String> {
    let mut args = vec![
        "build".to_owned(),
        "-trimpath".to_owned(),
        "-ldflags".to_owned(),
        ldflags(),
        "-o".to_owned(),
        // A trailing slash: a directory for several main packages.
        format!("{}/", out.display()),
    ];
    args.extend(PROGRAMS.iter().map(|(_, pkg)| (*pkg).to_owned()));
    args
}

/// The stamp of a build: what the binaries depend on, hashed.
fn stamp_for(pinned: &[(&str, Vec<u8>)], go_version: &str, args: &[String]) -> String {
    go_stamp(&go_command(), pinned, go_version, args)
}

/// The stamp of a `go build`: the pinned files (name and content), `go version`, the
/// environment `go` runs with (`cmd`'s) and the build arguments, hashed.
pub(crate) fn go_stamp(
    cmd: &Command,
    pinned: &[(&str, Vec<u8>)],
    go_version: &str,
    args: &[String],
) -> String {
    let mut hash = sha2::Sha256::new();
    for (name, content) in pinned {
        hash.update(name.as_bytes());
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(content);
    }
    hash.update(go_version.as_bytes());
    for (k, v) in cmd.get_envs() {
        hash.update(k.as_encoded_bytes());
        hash.update(v.map(std::ffi::OsStr::as_encoded_bytes).unwrap_or_default());
    }
    for arg in args {
        hash.update(arg.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// `go version`, or an error saying what the test bed needs.
fn go_version() -> Result<String> {
    let mut cmd = go_command();
    cmd.arg("version");
    let version = crate::command_output(&mut cmd).context(
        "the Kubernetes test bed (tests/k8s) is built with Go 1.26 and its module proxy; \
         the polyglot machines ship Go in /usr/local/go/bin: is it on PATH?",
    )?;
    Ok(version.trim().to_owned())
}

/// What the stamp of the binaries in [`bin_dir`] should be now.
fn wanted_stamp(out: &Path) -> Result<String> {
    let dir = go_module_dir();
    let mut pinned = vec![];
    for name in PINNED_FILES {
        let path = dir.join(name);
        pinned.push((
            name,
            fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        ));
    }
    Ok(stamp_for(&pinned, &go_version()?, &build_args(out)))
}

/// True when every binary is in [`bin_dir`] and was built from the current pins.
pub fn is_built() -> Result<bool> {
    let out = bin_dir();
    let stamp = fs::read_to_string(out.join(STAMP)).unwrap_or_default();
    Ok(stamp.trim() == wanted_stamp(&out)?
        && PROGRAMS.iter().all(|(name, _)| out.join(name).is_file()))
}

/// Builds the binaries into [`bin_dir`] unless they are up to date. Returns how long the
/// build took, or `None` when nothing had to be built.
pub fn build() -> Result<Option<Duration>> {
    let metrics_server = crate::cluster_metrics::build()?;
    if is_built()? {
        return Ok(metrics_server);
    }
    let out = bin_dir();
    let mut cmd = go_command();
    cmd.args(build_args(&out));
    let took = go_build(
        cmd,
        &go_module_dir(),
        &out.join(STAMP),
        &format!(
            "building the Kubernetes {KUBERNETES_VERSION} control plane and etcd from tests/k8s \
             (from cold: about 20 minutes on 2 cores; the Go caches make later builds fast)"
        ),
        || wanted_stamp(&out),
    )?;
    say(&format!(
        "built {} in {:.0}s",
        out.display(),
        took.as_secs_f64()
    ));
    Ok(Some(took))
}

/// Runs `cmd` (a `go build` in `module_dir`), announced with `what`; on success writes
/// `stamp()` to `stamp_file` and returns how long the build took. The old stamp is removed
/// first: a build that stops half way leaves none, so the next call builds again.
pub(crate) fn go_build(
    mut cmd: Command,
    module_dir: &Path,
    stamp_file: &Path,
    what: &str,
    stamp: impl FnOnce() -> Result<String>,
) -> Result<Duration> {
    if let Some(out) = stamp_file.parent() {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let _ = fs::remove_file(stamp_file);
    let line = crate::describe(&cmd);
    say(what);
    say(&line);
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    ensure!(
        status.success(),
        "`{line}` (in {}) failed: {status}",
        module_dir.display()
    );
    let took = started.elapsed();
    fs::write(stamp_file, format!("{}\n", stamp()?))
        .with_context(|| format!("writing {}", stamp_file.display()))?;
    Ok(took)
}

/// How to run a control plane.
#[derive(Clone, Debug)]
pub struct Config {
    /// Certificates, kubeconfigs, logs and etcd's data live here.
    pub work_dir: PathBuf,
    /// The binaries (see [`bin_dir`]).
    pub bin_dir: PathBuf,
    /// The node whose credential `node.kubeconfig` holds.
    pub node_name: String,
    /// Whether the API server writes an audit log (every request at `Metadata` level, JSON,
    /// to [`Layout::audit_log`]); off by default.
    pub audit: bool,
    /// kube-controller-manager's `--cluster-signing-duration`: how long the certificates
    /// it signs for approved CSRs last; `None`: its default (a year).
    pub signing_duration: Option<Duration>,
    /// Default controllers kube-controller-manager leaves out (`-<name>` in its
    /// `--controllers`), e.g. `taint-eviction-controller` for a test of what the node itself
    /// does with a `NoExecute` taint.
    pub disabled_controllers: Vec<String>,
}

impl Config {
    /// The binaries of [`bin_dir`], and a node named after this host.
    pub fn new(work_dir: PathBuf) -> Self {
        Config {
            work_dir,
            bin_dir: bin_dir(),
            node_name: default_node_name(),
            audit: false,
            signing_duration: None,
            disabled_controllers: Vec::new(),
        }
    }
}

/// The host name in lower case, as upstream's kubelet names its Node by default.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bpflet-node".to_owned())
}

/// The ports of one run, all on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

/// Ports that were free a moment ago: the listeners are held until all are picked, so the
/// five differ; a daemon may still lose its port to another process in between.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to find a free port")?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l
            .local_addr()
            .context("a listener without an address")?
            .port();
    }
    Ok(ports)
}

/// The paths of one run's files.
#[derive(Clone, Debug)]
pub struct Layout {
    pub work_dir: PathBuf,
    pub pki: PathBuf,
    pub etcd_data: PathBuf,
    pub logs: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub node_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
    /// The audit policy and log of [`Config::audit`].
    pub audit_policy: PathBuf,
    pub audit_log: PathBuf,
}

impl Layout {
    pub fn new(work_dir: &Path) -> Self {
        Layout {
            work_dir: work_dir.to_owned(),
            pki: work_dir.join("pki"),
            etcd_data: work_dir.join("etcd"),
            logs: work_dir.join("logs"),
            admin_kubeconfig: work_dir.join("admin.kubeconfig"),
            node_kubeconfig: work_dir.join("node.kubeconfig"),
            controller_manager_kubeconfig: work_dir.join("kube-controller-manager.kubeconfig"),
            scheduler_kubeconfig: work_dir.join("kube-scheduler.kubeconfig"),
            audit_policy: work_dir.join("audit-policy.yaml"),
            audit_log: work_dir.join("logs").join("audit.log"),
        }
    }

    /// The cluster CA's certificate (the node's `--client-ca-file`: the API server's
    /// kubelet client certificate is signed by it).
    pub fn ca_cert(&self) -> PathBuf {
        self.cert("ca")
    }

    /// The node's serving certificate and key for its HTTPS API, signed by the cluster CA.
    pub fn kubelet_serving(&self) -> (PathBuf, PathBuf) {
        (self.cert("kubelet-serving"), self.key("kubelet-serving"))
    }

    /// The node's HTTPS API flags: serving certificate and key, client CA.
    pub fn node_tls_args(&self) -> Vec<String> {
        let (cert, key) = self.kubelet_serving();
        vec![
            "--tls-cert-file".to_owned(),
            cert.display().to_string(),
            "--tls-private-key-file".to_owned(),
            key.display().to_string(),
            "--client-ca-file".to_owned(),
            self.ca_cert().display().to_string(),
        ]
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.pki.join(format!("{name}.crt"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.pki.join(format!("{name}.key"))
    }

    /// Everything a run writes except the logs (kept for reading after a failure).
    fn state(&self) -> [&Path; 7] {
        [
            &self.pki,
            &self.audit_policy,
            &self.etcd_data,
            &self.admin_kubeconfig,
            &self.node_kubeconfig,
            &self.controller_manager_kubeconfig,
            &self.scheduler_kubeconfig,
        ]
    }
}

/// One certificate to issue from the cluster CA.
struct CertSpec<'a> {
    /// File stem under `pki/`.
    file: &'a str,
    common_name: &'a str,
    organization: Option<&'a str>,
    /// DNS names and IP addresses; empty for a client-only certificate.
    sans: &'a [&'a str],
    client: bool,
    server: bool,
    /// Issued by the front-proxy CA instead of the cluster CA.
    front_proxy: bool,
}

/// The certificates of a run, as (file stem, CN, O, SANs, client, server). One certificate
/// per controller serves both its client identity and its 127.0.0.1 health endpoint.
fn cert_specs<'a>(node_common_name: &'a str, apiserver_sans: &'a [&'a str]) -> Vec<CertSpec<'a>> {
    const LOCAL: &[&str] = &["127.0.0.1", "localhost"];
    vec![
        CertSpec {
            file: "front-proxy-client",
            common_name: "front-proxy-client",
            organization: None,
            sans: &[],
            client: true,
            server: false,
            front_proxy: true,
        },
        CertSpec {
            file: "apiserver",
            common_name: "kube-apiserver",
            organization: None,
            sans: apiserver_sans,
            client: false,
            server: true,
            front_proxy: false,
        },
        CertSpec {
            file: "apiserver-kubelet-client",
            common_name: "kube-apiserver-kubelet-client",
            organization: Some("system:masters"),
            sans: &[],
            client: true,
            server: false,
            front_proxy: false,
        },
        CertSpec {
            file: "admin",
            common_name: "kubernetes-admin",
            organization: Some("system:masters"),
            sans: &[],
            client: true,
            server: false,
            front_proxy: false,
        },
        CertSpec {
            file: "kube-controller-manager",
            common_name: "system:kube-controller-manager",
            organization: None,
            sans: LOCAL,
            client: true,
            server: true,
            front_proxy: false,
        },
        CertSpec {
            file: "kube-scheduler",
            common_name: "system:kube-scheduler",
            organization: None,
            sans: LOCAL,
            client: true,
            server: true,
            front_proxy: false,
        },
        CertSpec {
            file: "metrics-server",
            common_name: "system:metrics-server",
            organization: None,
            sans: &[],
            client: true,
            server: false,
            front_proxy: false,
        },
        CertSpec {
            file: "node",
            common_name: node_common_name,
            organization: Some("system:nodes"),
            sans: &[],
            client: true,
            server: false,
            front_proxy: false,
        },
    ]
}

/// A self-signed CA, written as `pki/<file>.crt` and `.key`.
fn new_ca(layout: &Layout, file: &str, common_name: &str) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::generate().with_context(|| format!("generating the {file} key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .with_context(|| format!("{file} parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .with_context(|| format!("signing the {file} certificate"))?;
    for (path, text) in [
        (layout.cert(file), cert.pem()),
        (layout.key(file), key.serialize_pem()),
    ] {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Issuer::new(params, key))
}

/// Writes the CAs, every certificate and key, and the service-account signing key pair
/// (ECDSA P-256 throughout) under `layout.pki`.
fn write_pki(layout: &Layout, node_name: &str) -> Result<()> {
    fs::create_dir_all(&layout.pki)
        .with_context(|| format!("creating {}", layout.pki.display()))?;
    let write = |path: PathBuf, text: String| {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };

    let ca = new_ca(layout, "ca", "bpflet-test-cluster-ca")?;
    // The API server trusts requests its aggregation proxy forwards on this CA's word only.
    let front_proxy_ca = new_ca(layout, "front-proxy-ca", "bpflet-test-front-proxy-ca")?;

    let node_cn = format!("system:node:{node_name}");
    let apiserver_sans = [
        "127.0.0.1",
        "localhost",
        KUBERNETES_SERVICE_IP,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    for spec in cert_specs(&node_cn, &apiserver_sans) {
        let key = KeyPair::generate().with_context(|| format!("generating {}'s key", spec.file))?;
        let mut params = CertificateParams::new(
            spec.sans
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .with_context(|| format!("{}'s parameters", spec.file))?;
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name);
        if let Some(o) = spec.organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(
                &key,
                if spec.front_proxy {
                    &front_proxy_ca
                } else {
                    &ca
                },
            )
            .with_context(|| format!("signing {}'s certificate", spec.file))?;
        write(layout.cert(spec.file), cert.pem())?;
        write(layout.key(spec.file), key.serialize_pem())?;
    }

    // The node's serving certificate for its HTTPS API (the API server checks it against
    // the CA: --kubelet-certificate-authority), for the node's name and 127.0.0.1.
    {
        let key = KeyPair::generate().context("generating kubelet-serving's key")?;
        let mut params = CertificateParams::new(vec![node_name.to_owned(), "127.0.0.1".to_owned()])
            .context("kubelet-serving's parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_cn.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &ca)
            .context("signing kubelet-serving's certificate")?;
        write(layout.cert("kubelet-serving"), cert.pem())?;
        write(layout.key("kubelet-serving"), key.serialize_pem())?;
    }

    let sa = KeyPair::generate().context("generating the service-account key")?;
    write(layout.key("sa"), sa.serialize_pem())?;
    write(layout.pki.join("sa.pub"), sa.public_key_pem())?;
    Ok(())
}

/// A kubeconfig for `user` (whose certificate is `pki/<user>.crt`) against `server`.
fn render_kubeconfig(layout: &Layout, server: &str, user: &str) -> String {
    let q = |p: PathBuf| serde_json::to_string(&p.to_string_lossy()).expect("a string");
    format!(
        "# Written by xtask::cluster (xtask/src/cluster.rs) on every start.
apiVersion: v1
kind: Config
clusters:
- name: {CLUSTER_NAME}
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: {user}@{CLUSTER_NAME}
  context:
    cluster: {CLUSTER_NAME}
    user: {user}
current-context: {user}@{CLUSTER_NAME}
",
        ca = q(layout.cert("ca")),
        cert = q(layout.cert(user)),
        key = q(layout.key(user)),
    )
}

/// kubectl with one kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=10s");
        cmd
    }

    /// `kubectl get --raw <path>`, against the API server or `server`.
    fn get_raw(&self, server: Option<&str>, path: &str) -> Result<String> {
        let mut cmd = self.command();
        if let Some(server) = server {
            cmd.arg("--server").arg(server);
        }
        cmd.args(["get", "--raw", path]);
        Ok(crate::command_output(&mut cmd)?.trim().to_owned())
    }
}

/// A daemon of the control plane, its output appended to `logs/<name>.log`.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Stopped on purpose ([`ControlPlane::stop_apiserver`]): its exit is no failure.
    stopped: bool,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, logs: &Path) -> Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stderr = file
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            // Ctrl-C at the terminal reaches only the caller, which stops us in order.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call (prctl), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)
            });
        }
        let line = crate::describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        say(&format!("started {name} (pid {})", child.id()));
        Ok(Daemon {
            name,
            child,
            log,
            stopped: false,
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps the process.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        say(&format!(
            "{} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.name,
            self.child.id()
        ));
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The last `n` lines of the log.
    fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running control plane. Dropping it stops every daemon.
pub struct ControlPlane {
    pub layout: Layout,
    pub ports: Ports,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub node_name: String,
    pub kubectl: PathBuf,
    bin_dir: PathBuf,
    /// [`Config::audit`].
    audit: bool,
    /// [`Config::signing_duration`].
    signing_duration: Option<Duration>,
    /// [`Config::disabled_controllers`].
    disabled_controllers: Vec<String>,
    /// In start order; stopped in reverse.
    daemons: Vec<Daemon>,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler and waits
    /// until each is healthy. `cancelled` is polled while waiting: when it says true, the
    /// daemons started so far are stopped and the start fails.
    pub fn start(config: &Config, cancelled: &dyn Fn() -> bool) -> Result<Self> {
        for (name, _) in PROGRAMS {
            let bin = config.bin_dir.join(name);
            ensure!(
                bin.is_file(),
                "{} is missing: run `cargo xtask build-cluster`",
                bin.display()
            );
        }
        fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating {}", config.work_dir.display()))?;
        let work_dir = config
            .work_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", config.work_dir.display()))?;
        let lock = lock_work_dir(&work_dir)?;
        let bin_dir = config
            .bin_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", config.bin_dir.display()))?;
        let layout = Layout::new(&work_dir);

        // What a run that died without its teardown left: its daemons (matched by binary
        // and work directory, so nothing else is touched) and its state.
        for pid in leftover_pids(&bin_dir, &work_dir) {
            say(&format!("killing pid {pid}, left by an earlier run here"));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for path in layout.state() {
            remove_path(path)?;
        }
        remove_path(&layout.logs)?;
        fs::create_dir_all(&layout.logs)
            .with_context(|| format!("creating {}", layout.logs.display()))?;

        let [
            etcd_client,
            etcd_peer,
            apiserver,
            controller_manager,
            scheduler,
        ] = free_ports()?;
        let ports = Ports {
            etcd_client,
            etcd_peer,
            apiserver,
            controller_manager,
            scheduler,
        };
        write_pki(&layout, &config.node_name)?;
        let server = format!("https://127.0.0.1:{}", ports.apiserver);
        for (path, user) in [
            (&layout.admin_kubeconfig, "admin"),
            (&layout.node_kubeconfig, "node"),
            (
                &layout.controller_manager_kubeconfig,
                "kube-controller-manager",
            ),
            (&layout.scheduler_kubeconfig, "kube-scheduler"),
        ] {
            fs::write(path, render_kubeconfig(&layout, &server, user))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if config.audit {
            fs::write(&layout.audit_policy, AUDIT_POLICY)
                .with_context(|| format!("writing {}", layout.audit_policy.display()))?;
        }

        let mut cp = ControlPlane {
            kubectl: bin_dir.join("kubectl"),
            layout,
            ports,
            server,
            node_name: config.node_name.clone(),
            bin_dir,
            audit: config.audit,
            signing_duration: config.signing_duration,
            disabled_controllers: config.disabled_controllers.clone(),
            daemons: vec![],
            _lock: lock,
        };
        let started = Instant::now();
        cp.start_daemons(cancelled)?;
        say(&format!(
            "control plane ready in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            cp.server
        ));
        Ok(cp)
    }

    fn start_daemons(&mut self, cancelled: &dyn Fn() -> bool) -> Result<()> {
        let etcd = self.spawn("etcd", self.etcd_args())?;
        let health = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.etcd_client));
        self.wait_until(etcd, "etcd /health", ETCD_READY_TIMEOUT, cancelled, || {
            http_get(health, "/health")
                .is_ok_and(|(code, body)| code == 200 && body.contains("\"health\":\"true\""))
        })?;

        let admin = self.admin();
        let apiserver = self.spawn("kube-apiserver", self.apiserver_args())?;
        self.wait_until(
            apiserver,
            "kube-apiserver /readyz",
            APISERVER_READY_TIMEOUT,
            cancelled,
            || {
                admin
                    .get_raw(None, "/readyz")
                    .is_ok_and(|body| body == "ok")
            },
        )?;

        let kcm = self.spawn("kube-controller-manager", self.controller_manager_args())?;
        let scheduler = self.spawn("kube-scheduler", self.scheduler_args())?;
        for (index, what, port, path) in [
            (
                kcm,
                "kube-controller-manager /healthz",
                self.ports.controller_manager,
                "/healthz",
            ),
            (
                scheduler,
                "kube-scheduler /readyz",
                self.ports.scheduler,
                "/readyz",
            ),
        ] {
            let url = format!("https://127.0.0.1:{port}");
            self.wait_until(index, what, CONTROLLERS_READY_TIMEOUT, cancelled, || {
                admin.get_raw(Some(&url), path).is_ok_and(|b| b == "ok")
            })?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: Vec<String>) -> Result<usize> {
        let mut cmd = Command::new(self.bin_dir.join(name));
        cmd.args(args);
        self.daemons
            .push(Daemon::spawn(name, cmd, &self.layout.logs)?);
        Ok(self.daemons.len() - 1)
    }

    /// Polls `ready` until it holds; fails when the daemon `index` (or any other) exits,
    /// `cancelled` says so, or `timeout` passes, quoting the daemon's log.
    fn wait_until(
        &mut self,
        index: usize,
        what: &str,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
        ready: impl Fn() -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            if ready() {
                say(&format!(
                    "{what}: ok after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            self.check_running()?;
            ensure!(!cancelled(), "interrupted while waiting for {what}");
            if started.elapsed() > timeout {
                let d = &self.daemons[index];
                bail!(
                    "{what} not ready within {timeout:?}; last lines of {}:\n{}",
                    d.log.display(),
                    d.log_tail(15)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Fails naming the first daemon that has exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        for d in self.daemons.iter_mut().filter(|d| !d.stopped) {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    d.name,
                    d.log.display(),
                    d.log_tail(15)
                );
            }
        }
        Ok(())
    }

    /// The index of the daemon `name` in `daemons`.
    fn daemon_index(&self, name: &str) -> Result<usize> {
        self.daemons
            .iter()
            .position(|d| d.name == name)
            .with_context(|| format!("{name} is not part of this control plane"))
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after a grace), as an outage of the API server
    /// would look to its clients: connections refused on its port. etcd, the controller
    /// manager and the scheduler keep running. [`Self::start_apiserver`] brings it back.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        let index = self.daemon_index("kube-apiserver")?;
        let d = &mut self.daemons[index];
        ensure!(!d.stopped, "kube-apiserver is already stopped");
        let status = d.stop().context("stopping kube-apiserver")?;
        d.stopped = true;
        say(&format!(
            "kube-apiserver (pid {}) stopped: {status}",
            d.child.id()
        ));
        Ok(())
    }

    /// Starts kube-apiserver again, with the same arguments on the same port (its log goes
    /// on in the same file), and waits until it is ready.
    pub fn start_apiserver(&mut self, cancelled: &dyn Fn() -> bool) -> Result<()> {
        let index = self.daemon_index("kube-apiserver")?;
        ensure!(
            self.daemons[index].stopped,
            "kube-apiserver is running; stop it first"
        );
        let mut cmd = Command::new(self.bin_dir.join("kube-apiserver"));
        cmd.args(self.apiserver_args());
        self.daemons[index] = Daemon::spawn("kube-apiserver", cmd, &self.layout.logs)?;
        let admin = self.admin();
        self.wait_until(
            index,
            "kube-apiserver /readyz",
            APISERVER_READY_TIMEOUT,
            cancelled,
            || {
                admin
                    .get_raw(None, "/readyz")
                    .is_ok_and(|body| body == "ok")
            },
        )
    }

    fn etcd_args(&self) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.ports.etcd_client);
        let peer = format!("http://127.0.0.1:{}", self.ports.etcd_peer);
        vec![
            "--name=default".into(),
            format!("--data-dir={}", self.layout.etcd_data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            // A throw-away store on a shared disk: durability buys nothing here.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]
    }

    fn apiserver_args(&self) -> Vec<String> {
        let l = &self.layout;
        let p = |path: PathBuf| path.display().to_string();
        let mut args = vec![
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.ports.apiserver),
            format!("--cert-dir={}", p(l.pki.clone())),
            format!("--etcd-servers=http://127.0.0.1:{}", self.ports.etcd_client),
            format!("--tls-cert-file={}", p(l.cert("apiserver"))),
            format!("--tls-private-key-file={}", p(l.key("apiserver"))),
            format!("--client-ca-file={}", p(l.cert("ca"))),
            format!(
                "--kubelet-client-certificate={}",
                p(l.cert("apiserver-kubelet-client"))
            ),
            format!(
                "--kubelet-client-key={}",
                p(l.key("apiserver-kubelet-client"))
            ),
            format!("--kubelet-certificate-authority={}", p(l.cert("ca"))),
            // kubeadm's order: the node's InternalIP first (bpflet's and the kubelet's
            // Hostname address is the node name, which nothing resolves here).
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            // The aggregation layer's front proxy, as a kubeadm cluster configures it; the
            // controllers read this CA to authenticate proxied requests.
            format!(
                "--requestheader-client-ca-file={}",
                p(l.cert("front-proxy-ca"))
            ),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                p(l.cert("front-proxy-client"))
            ),
            format!("--proxy-client-key-file={}", p(l.key("front-proxy-client"))),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p(l.pki.join("sa.pub"))),
            format!("--service-account-signing-key-file={}", p(l.key("sa"))),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints
            // validation refuses; nothing here reaches the API through that Service.
            "--endpoint-reconciler-type=none".into(),
        ];
        if self.audit {
            args.extend(audit_args(l));
        }
        args
    }

    /// Flags both controllers share: their kubeconfig for the API and for delegated
    /// authentication and authorization of their own health endpoints, and their serving
    /// certificate on 127.0.0.1.
    fn controller_common_args(&self, name: &str, kubeconfig: &Path, port: u16) -> Vec<String> {
        let l = &self.layout;
        let kubeconfig = kubeconfig.display();
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", l.cert(name).display()),
            format!("--tls-private-key-file={}", l.key(name).display()),
            format!("--client-ca-file={}", l.cert("ca").display()),
            // One instance: no leader election to wait for.
            "--leader-elect=false".into(),
        ]
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let l = &self.layout;
        let mut args = self.controller_common_args(
            "kube-controller-manager",
            &l.controller_manager_kubeconfig,
            self.ports.controller_manager,
        );
        args.extend([
            "--use-service-account-credentials=true".into(),
            format!("--cluster-name={CLUSTER_NAME}"),
            format!("--root-ca-file={}", l.cert("ca").display()),
            format!(
                "--service-account-private-key-file={}",
                l.key("sa").display()
            ),
            format!("--cluster-signing-cert-file={}", l.cert("ca").display()),
            format!("--cluster-signing-key-file={}", l.key("ca").display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // Every default controller, plus the bootstrap-token ones a kubeadm cluster
            // runs. The node lifecycle controller keeps upstream's defaults (a Node is
            // NotReady/Unknown 50 s after its last heartbeat).
            format!(
                "--controllers=*,bootstrapsigner,tokencleaner{}",
                self.disabled_controllers
                    .iter()
                    .map(|c| format!(",-{c}"))
                    .collect::<String>()
            ),
        ]);
        if let Some(d) = self.signing_duration {
            args.push(format!("--cluster-signing-duration={}s", d.as_secs()));
        }
        args
    }

    fn scheduler_args(&self) -> Vec<String> {
        self.controller_common_args(
            "kube-scheduler",
            &self.layout.scheduler_kubeconfig,
            self.ports.scheduler,
        )
    }

    /// Starts metrics-server ([`crate::cluster_metrics`]) on a free port on 127.0.0.1,
    /// scraping kubelets on `kubelet`, registers it as `v1beta1.metrics.k8s.io` and waits
    /// until the API server reports that APIService available. Returns its port.
    pub fn start_metrics_server(
        &mut self,
        kubelet: crate::cluster_metrics::KubeletPort,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<u16> {
        use crate::cluster_metrics as ms;
        let bin = self.bin_dir.join(ms::BINARY);
        ensure!(
            bin.is_file(),
            "{} is missing: run `cargo xtask build-cluster`",
            bin.display()
        );
        let [port] = free_ports()?;
        let l = &self.layout;
        let kubeconfig = l.work_dir.join("metrics-server.kubeconfig");
        fs::write(
            &kubeconfig,
            render_kubeconfig(l, &self.server, "metrics-server"),
        )
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let cert_dir = l.work_dir.join("metrics-server");
        fs::create_dir_all(&cert_dir)
            .with_context(|| format!("creating {}", cert_dir.display()))?;
        let manifests = l.work_dir.join("metrics-server.yaml");
        fs::write(&manifests, ms::manifests(port))
            .with_context(|| format!("writing {}", manifests.display()))?;
        self.kubectl_admin(&["apply", "-f", &manifests.display().to_string()])?;
        let args = ms::args(
            &ms::Files {
                kubeconfig: &kubeconfig,
                front_proxy_ca: &l.cert("front-proxy-ca"),
                cluster_ca: &l.cert("ca"),
                cert_dir: &cert_dir,
            },
            port,
            kubelet,
        );
        let index = self.spawn(ms::BINARY, args)?;
        let admin = self.admin();
        self.wait_until(
            index,
            "APIService v1beta1.metrics.k8s.io Available",
            APISERVER_READY_TIMEOUT,
            cancelled,
            || {
                let mut cmd = admin.command();
                cmd.args([
                    "get",
                    "apiservice",
                    "v1beta1.metrics.k8s.io",
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Available")].status}"#,
                ]);
                crate::command_output(&mut cmd).is_ok_and(|s| s.trim() == "True")
            },
        )?;
        Ok(port)
    }

    /// `kubectl --kubeconfig <kubeconfig>`.
    pub fn kubectl(&self, kubeconfig: &Path) -> Command {
        Kubectl {
            bin: self.kubectl.clone(),
            kubeconfig: kubeconfig.to_owned(),
        }
        .command()
    }

    /// Runs kubectl as the admin and returns its stdout.
    pub fn kubectl_admin(&self, args: &[&str]) -> Result<String> {
        crate::command_output(self.kubectl(&self.layout.admin_kubeconfig).args(args))
    }

    /// Runs kubectl as the node and returns its stdout.
    pub fn kubectl_node(&self, args: &[&str]) -> Result<String> {
        crate::command_output(self.kubectl(&self.layout.node_kubeconfig).args(args))
    }

    /// kubectl as the admin, owning what it needs (usable while `self` is borrowed).
    fn admin(&self) -> Kubectl {
        Kubectl {
            bin: self.kubectl.clone(),
            kubeconfig: self.layout.admin_kubeconfig.clone(),
        }
    }

    /// Proves the control plane works as a cluster would: the API server is ready, the
    /// controllers act (a namespace's deletion completes, a pod gets a scheduling verdict),
    /// and the node credential is what the Node authorizer expects. Fails naming the step.
    pub fn smoke_check(&self) -> Result<()> {
        let step = |name: &str, check: &dyn Fn() -> Result<()>| {
            let result = check();
            match &result {
                Ok(()) => say(&format!("check: {name}: ok")),
                Err(e) => say(&format!("check: {name}: FAILED: {e:#}")),
            }
            result.with_context(|| format!("smoke check `{name}`"))
        };

        step("kubectl get --raw /readyz", &|| {
            let body = self.admin().get_raw(None, "/readyz")?;
            ensure_eq(&body, "ok")
        })?;

        step("kubectl get ns", &|| {
            let names = self.kubectl_admin(&["get", "ns", "-o", "name"])?;
            let missing: Vec<&str> = ["default", "kube-system", "kube-public", "kube-node-lease"]
                .into_iter()
                .filter(|ns| !names.lines().any(|l| l == format!("namespace/{ns}")))
                .collect();
            ensure!(
                missing.is_empty(),
                "namespaces {missing:?} missing: {names}"
            );
            Ok(())
        })?;

        let ns = format!("bpflet-smoke-{:08x}", fastrand::u32(..));
        step(&format!("create namespace {ns}"), &|| {
            self.kubectl_admin(&["create", "namespace", &ns]).map(drop)
        })?;
        step(
            "a pod is seen by the scheduler (no node: Unschedulable)",
            &|| self.unschedulable_pod(&ns),
        )?;
        step(
            &format!("delete namespace {ns} (the namespace controller finalizes it)"),
            &|| {
                let timeout = format!("--timeout={}s", SMOKE_TIMEOUT.as_secs());
                self.kubectl_admin(&["delete", "namespace", &ns, "--wait=true", &timeout])
                    .and_then(|_| {
                        let left = self.kubectl_admin(&[
                            "get",
                            "namespace",
                            &ns,
                            "--ignore-not-found",
                            "-o",
                            "name",
                        ])?;
                        ensure!(left.trim().is_empty(), "{ns} is still there: {left}");
                        Ok(())
                    })
            },
        )?;

        let node_user = format!("system:node:{}", self.node_name);
        step(
            &format!("the node credential is {node_user} in system:nodes"),
            &|| {
                let who = self.kubectl_node(&["auth", "whoami", "-o", "json"])?;
                let who: serde_json::Value =
                    serde_json::from_str(&who).context("`kubectl auth whoami` printed no JSON")?;
                let user = who.pointer("/status/userInfo/username");
                let groups = who.pointer("/status/userInfo/groups");
                ensure!(
                    user.and_then(|u| u.as_str()) == Some(node_user.as_str())
                        && groups
                            .and_then(|g| g.as_array())
                            .is_some_and(|g| g.iter().any(|g| g == "system:nodes")),
                    "whoami says {who}"
                );
                Ok(())
            },
        )?;
        let own_node = format!("nodes/{}", self.node_name);
        for (verb, resource, namespace, want) in [
            // Allowed by the Node authorizer: its own Node and its lease.
            ("get", own_node.as_str(), None, true),
            (
                "create",
                "leases.coordination.k8s.io",
                Some("kube-node-lease"),
                true,
            ),
            // Denied: secrets no pod on this node references, and other nodes' status.
            ("get", "secrets", Some("kube-system"), false),
            ("list", "secrets", Some("default"), false),
            ("create", "namespaces", None, false),
        ] {
            let mut args = vec!["auth", "can-i", verb, resource];
            if let Some(ns) = namespace {
                args.extend(["-n", ns]);
            }
            let name = format!(
                "as the node: can-i {} -> {}",
                args[2..].join(" "),
                if want { "yes" } else { "no" }
            );
            step(&name, &|| {
                self.can_i(&self.layout.node_kubeconfig, &args, want)
            })?;
        }
        // The same question the node is refused, asked by the admin: the refusal is the
        // node's, not a broken API.
        step(
            "as the admin: can-i get secrets -n kube-system -> yes",
            &|| {
                self.can_i(
                    &self.layout.admin_kubeconfig,
                    &["auth", "can-i", "get", "secrets", "-n", "kube-system"],
                    true,
                )
            },
        )?;
        // NodeRestriction (admission, which can-i does not reach): a node may create its own
        // Node object and no other.
        let other = format!("{}-other", self.node_name);
        step(
            &format!("as the node: create Node {} -> allowed", self.node_name),
            &|| self.create_node_as_node(&self.node_name).map(drop),
        )?;
        step(
            &format!("as the node: create Node {other} -> refused by NodeRestriction"),
            &|| match self.create_node_as_node(&other) {
                Ok(_) => {
                    let _ = self.kubectl_admin(&["delete", "node", &other, "--wait=false"]);
                    bail!("the node created Node {other}")
                }
                Err(e) if e.to_string().contains("is not allowed to modify node") => Ok(()),
                Err(e) => Err(e),
            },
        )?;
        step("delete the Node (admin)", &|| {
            self.kubectl_admin(&["delete", "node", &self.node_name])
                .map(drop)
        })?;
        Ok(())
    }

    /// `kubectl create` of a bare Node named `name`, with the node's credential.
    fn create_node_as_node(&self, name: &str) -> Result<String> {
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
        })
        .to_string();
        let path = self.layout.work_dir.join(format!("smoke-node-{name}.json"));
        fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))?;
        self.kubectl_node(&["create", "-f", &path.to_string_lossy()])
    }

    /// `kubectl auth can-i` answers yes (exit 0) or no (exit 1, "no" on stdout).
    fn can_i(&self, kubeconfig: &Path, args: &[&str], want: bool) -> Result<()> {
        let mut cmd = self.kubectl(kubeconfig);
        cmd.args(args).stdin(Stdio::null());
        let line = crate::describe(&cmd);
        let out = cmd
            .output()
            .with_context(|| format!("could not start `{line}`"))?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // "no" may be followed by the authorizer's reason ("no - No Object name found").
        let word = answer.split_whitespace().next().unwrap_or_default();
        let got = match (out.status.code(), word) {
            (Some(0), "yes") => true,
            (Some(1), "no") => false,
            _ => bail!(
                "`{line}`: {}: {answer} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        };
        ensure!(got == want, "`{line}` answered {answer}");
        Ok(())
    }

    /// Creates a pod in `ns` (once the service-account controller made `default` there)
    /// and waits for the scheduler to mark it Unschedulable: there is no node.
    fn unschedulable_pod(&self, ns: &str) -> Result<()> {
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "smoke", "namespace": ns},
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": "busybox:latest"}],
            },
        })
        .to_string();
        let path = self.layout.work_dir.join("smoke-pod.json");
        fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))?;
        let file = path.to_string_lossy();
        let deadline = Instant::now() + SMOKE_TIMEOUT;
        // Admission refuses a pod until its namespace's `default` ServiceAccount exists.
        loop {
            match self.kubectl_admin(&["create", "-f", &file]) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("serviceaccount") => {
                    thread::sleep(POLL_INTERVAL);
                }
                Err(e) => return Err(e),
            }
        }
        let jsonpath =
            "-o=jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}".to_owned();
        loop {
            let reason = self.kubectl_admin(&["get", "pod", "smoke", "-n", ns, &jsonpath])?;
            if reason.trim() == "Unschedulable" {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "pod {ns}/smoke has no PodScheduled=False/Unschedulable after \
                 {SMOKE_TIMEOUT:?} (reason now: {reason:?})"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The pids of the daemons, in start order.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.daemons
            .iter()
            .map(|d| (d.name, d.child.id()))
            .collect()
    }

    /// Stops the daemons in reverse order, removes the etcd data, and fails naming any
    /// process of this run still alive (or a daemon that had already died).
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut problems = vec![];
        while let Some(mut d) = self.daemons.pop() {
            match d.stop() {
                Ok(status) => say(&format!(
                    "{} (pid {}) stopped: {status}",
                    d.name,
                    d.child.id()
                )),
                Err(e) => problems.push(format!("stopping {}: {e}", d.name)),
            }
        }
        if let Err(e) = remove_path(&self.layout.etcd_data) {
            problems.push(format!("{e:#}"));
        }
        for pid in leftover_pids(&self.bin_dir, &self.layout.work_dir) {
            problems.push(format!(
                "pid {pid} ({}) is still running",
                fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ")
                    .trim()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "control plane teardown left problems: {}",
                problems.join("; ")
            ))
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if !self.daemons.is_empty()
            && let Err(e) = self.shutdown()
        {
            say(&format!("{e:#}"));
        }
    }
}

/// The API server's flags for [`Config::audit`].
fn audit_args(layout: &Layout) -> [String; 6] {
    [
        format!("--audit-policy-file={}", layout.audit_policy.display()),
        format!("--audit-log-path={}", layout.audit_log.display()),
        "--audit-log-format=json".into(),
        // Rotated files (`audit-<time>.log`) stay beside it; one run stays far below.
        "--audit-log-maxsize=500".into(),
        "--audit-log-maxbackup=3".into(),
        "--audit-log-maxage=1".into(),
    ]
}

fn ensure_eq(got: &str, want: &str) -> Result<()> {
    ensure!(got == want, "got {got:?}, want {want:?}");
    Ok(())
}

/// Processes running a binary of `bin_dir` with `work_dir` on their command line: the
/// daemons of a run on this work directory, and nothing else.
fn leftover_pids(bin_dir: &Path, work_dir: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    // A path below the work directory, in an argument (not argv[0]: the binary's own path
    // is below target/cluster, the default work directory).
    let below = format!("{}/", work_dir.display());
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.is_some_and(|exe| exe.starts_with(bin_dir))
                && names_dir(&cmdline, &below)
                && kill(Pid::from_raw(*pid), None) != Err(Errno::ESRCH)
        })
        .collect()
}

/// True when an argument after argv\[0\] of a NUL-separated `cmdline` contains `dir`.
fn names_dir(cmdline: &[u8], dir: &str) -> bool {
    cmdline
        .split(|&b| b == 0)
        .skip(1)
        .any(|arg| String::from_utf8_lossy(arg).contains(dir))
}

fn remove_path(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// An exclusive lock on `<work>/cluster.lock`, released when the file is closed.
fn lock_work_dir(work_dir: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    crate::lock::exclusive(&work_dir.join("cluster.lock"), |pid| {
        format!(
            "another control plane (pid {pid}) runs on {}; stop it or use another work directory",
            work_dir.display()
        )
    })
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (etcd's health): the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_pins_one_release_everywhere() {
        let go_mod = fs::read_to_string(go_module_dir().join("go.mod")).unwrap();
        assert!(
            go_mod.lines().any(|l| l
                .trim()
                .starts_with(&format!("k8s.io/kubernetes {KUBERNETES_VERSION}"))),
            "go.mod does not require k8s.io/kubernetes {KUBERNETES_VERSION}"
        );
        assert!(go_mod.lines().any(|l| l == "go 1.26.0"), "go directive");
        // Every staging module is replaced by the release matching k8s.io/kubernetes.
        let staging = format!(
            "v0.{}.{}",
            major_minor(KUBERNETES_VERSION).1,
            KUBERNETES_VERSION.rsplit('.').next().unwrap()
        );
        let replaces: Vec<&str> = go_mod.lines().filter(|l| l.contains("=>")).collect();
        assert!(replaces.len() >= 20, "{replaces:?}");
        for line in replaces {
            assert!(
                line.trim_end().ends_with(&staging),
                "{line} is not {staging}"
            );
        }
    }

    #[test]
    fn ldflags_stamp_the_release_version() {
        let flags = ldflags();
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMinor=34"));
        assert!(flags.contains("-X k8s.io/component-base/version.gitMajor=1 "));
        assert_eq!(major_minor("v1.34.4"), ("1", "34"));
    }

    #[test]
    fn build_builds_every_program_into_one_directory() {
        let args = build_args(Path::new("/x/bin"));
        assert_eq!(&args[..2], ["build", "-trimpath"]);
        assert!(args.contains(&"/x/bin/".to_owned()));
        for (_, pkg) in PROGRAMS {
            assert!(args.contains(&pkg.to_owned()), "{pkg}");
        }
    }

    #[test]
    fn stamp_changes_with_any_pin_the_go_version_or_the_flags() {
        let args = build_args(Path::new("/x/bin"));
        let pins = |sum: &str| vec![("go.mod", b"module m".to_vec()), ("go.sum", sum.into())];
        let base = stamp_for(&pins("a"), "go1.26.8", &args);
        assert_eq!(base, stamp_for(&pins("a"), "go1.26.8", &args));
        assert_ne!(base, stamp_for(&pins("b"), "go1.26.8", &args));
        assert_ne!(base, stamp_for(&pins("a"), "go1.26.9", &args));
        assert_ne!(base, stamp_for(&pins("a"), "go1.26.8", &args[1..]));
    }

    #[test]
    fn kubeconfig_names_the_user_certificate_and_the_ca() {
        let layout = Layout::new(Path::new("/w"));
        let text = render_kubeconfig(&layout, "https://127.0.0.1:1234", "node");
        assert!(text.contains("server: https://127.0.0.1:1234\n"));
        assert!(text.contains("certificate-authority: \"/w/pki/ca.crt\"\n"));
        assert!(text.contains("client-certificate: \"/w/pki/node.crt\"\n"));
        assert!(text.contains("client-key: \"/w/pki/node.key\"\n"));
        assert!(text.contains("current-context: node@bpflet\n"));
    }

    #[test]
    fn pki_writes_every_file_the_daemons_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        write_pki(&layout, "n1").unwrap();
        let cp_files = [
            "ca",
            "apiserver",
            "apiserver-kubelet-client",
            "admin",
            "node",
        ];
        for name in cp_files
            .iter()
            .chain(&["kube-controller-manager", "kube-scheduler"])
        {
            let cert = fs::read_to_string(layout.cert(name)).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
            let key = fs::read_to_string(layout.key(name)).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
        }
        let sa = fs::read_to_string(layout.pki.join("sa.pub")).unwrap();
        assert!(sa.starts_with("-----BEGIN PUBLIC KEY-----"));
        // The node certificate's subject carries the Node authorizer's identity.
        let node_specs = cert_specs("system:node:n1", &[]);
        let node = node_specs.iter().find(|s| s.file == "node").unwrap();
        assert_eq!(node.common_name, "system:node:n1");
        assert_eq!(node.organization, Some("system:nodes"));
    }

    #[test]
    fn leftovers_are_matched_on_arguments_below_the_work_dir_only() {
        let cmdline = b"/r/target/cluster/bin/etcd\0--data-dir=/tmp/w1/etcd\0";
        assert!(names_dir(cmdline, "/tmp/w1/"));
        // The binary's own path is below the default work directory: not a match.
        assert!(!names_dir(cmdline, "/r/target/cluster/"));
        // A sibling whose name starts the same is not below.
        assert!(!names_dir(cmdline, "/tmp/w/"));
    }

    #[test]
    fn audit_logs_json_beside_the_daemons_logs() {
        let layout = Layout::new(Path::new("/w"));
        assert_eq!(
            audit_args(&layout)[..3],
            [
                "--audit-policy-file=/w/audit-policy.yaml",
                "--audit-log-path=/w/logs/audit.log",
                "--audit-log-format=json",
            ]
        );
        assert!(layout.audit_log.starts_with(&layout.logs));
        assert!(layout.state().contains(&layout.audit_policy.as_path()));
        assert!(!Config::new("/w".into()).audit);
        assert!(
            AUDIT_POLICY.contains("kind: Policy") && AUDIT_POLICY.contains("- level: Metadata")
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports: [u16; 5] = free_ports().unwrap();
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "{ports:?}");
    }
}
