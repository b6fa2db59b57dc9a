//! metrics-server in the Kubernetes test bed: built from `sigs.k8s.io/metrics-server`
//! ([`METRICS_SERVER_VERSION`], the `tool` of its own Go module `tests/metrics-server/`, so
//! its Kubernetes libraries do not move the control plane's pins) and run by
//! [`crate::cluster::ControlPlane::start_metrics_server`] as a host process on 127.0.0.1,
//! reached by the API server's aggregation layer as upstream's deployment is:
//!
//! - its own client certificate (`system:metrics-server`) and upstream's RBAC for it
//!   (nodes/metrics, pods, nodes; auth delegation; the authentication config reader);
//! - the front-proxy CA and names the API server proxies with (`--requestheader-*`);
//! - `--secure-port` on 127.0.0.1 with a self-signed serving certificate, which the
//!   APIService skips verifying (`insecureSkipTLSVerify`, as upstream's manifest);
//! - the APIService `v1beta1.metrics.k8s.io` pointing at the Service `kube-system/metrics-server`
//!   of type ExternalName `localhost`: an Endpoints object may not hold a loopback address,
//!   and the aggregator resolves an ExternalName service to `https://<name>:<port>`.
//! - kubelets are scraped on their InternalIP (`--kubelet-preferred-address-types`).
//!   [`KubeletPort::ReadOnly`] uses the read-only port over plain HTTP
//!   (`--deprecated-kubelet-completely-insecure`); [`KubeletPort::Secure`] the HTTPS port
//!   with metrics-server's client certificate: switching is that one argument.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// The metrics-server release `tests/metrics-server/go.mod` pins.
pub const METRICS_SERVER_VERSION: &str = "v0.8.0";
/// The binary's name in [`crate::cluster::bin_dir`].
pub const BINARY: &str = "metrics-server";
const STAMP: &str = "metrics-server.stamp";
const PACKAGE: &str = "sigs.k8s.io/metrics-server/cmd/metrics-server";
/// How often metrics-server scrapes every node (its minimum, 10 s, must exceed its
/// kubelet request timeout, 10 s by default: upstream's default resolution).
pub const METRIC_RESOLUTION: &str = "15s";

/// `tests/metrics-server`.
pub fn go_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .join("tests")
        .join("metrics-server")
}

fn go_command() -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(go_module_dir())
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-p=2 -mod=readonly -buildvcs=false");
    cmd
}

fn build_args(out: &Path) -> Vec<String> {
    vec![
        "build".into(),
        "-trimpath".into(),
        "-ldflags".into(),
        "-s -w".into(),
        "-o".into(),
        out.join(BINARY).display().to_string(),
        PACKAGE.into(),
    ]
}

fn wanted_stamp(out: &Path) -> Result<String> {
    let mut pinned = vec![];
    for name in ["go.mod", "go.sum"] {
        let path = go_module_dir().join(name);
        let content = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        pinned.push((name, content));
    }
    let mut version = go_command();
    version.arg("version");
    let version = crate::command_output(&mut version)?;
    Ok(crate::cluster::go_stamp(
        &go_command(),
        &pinned,
        version.trim(),
        &build_args(out),
    ))
}

/// Builds metrics-server into [`crate::cluster::bin_dir`] unless it is up to date (a stamp
/// over go.mod, go.sum, the flags and `go version`); returns how long the build took.
///
/// # Errors
/// `go build` fails (named with its directory).
pub fn build() -> Result<Option<Duration>> {
    let out = crate::cluster::bin_dir();
    let stamp = fs::read_to_string(out.join(STAMP)).unwrap_or_default();
    let wanted = wanted_stamp(&out)?;
    if stamp.trim() == wanted && out.join(BINARY).is_file() {
        return Ok(None);
    }
    let mut cmd = go_command();
    cmd.args(build_args(&out));
    let took = crate::cluster::go_build(
        cmd,
        &go_module_dir(),
        &out.join(STAMP),
        &format!(
            "building metrics-server {METRICS_SERVER_VERSION} from tests/metrics-server \
             (from cold: about 10 minutes on 2 cores)"
        ),
        || Ok(wanted),
    )?;
    Ok(Some(took))
}

/// Which kubelet port metrics-server scrapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeletPort {
    /// The read-only port, plain HTTP, no credentials.
    ReadOnly(u16),
    /// The authenticated HTTPS port; metrics-server presents its client certificate.
    Secure(u16),
}

/// The file paths metrics-server is given.
pub struct Files<'a> {
    pub kubeconfig: &'a Path,
    pub front_proxy_ca: &'a Path,
    pub cluster_ca: &'a Path,
    pub cert_dir: &'a Path,
}

/// metrics-server's command line.
#[must_use]
pub fn args(files: &Files<'_>, secure_port: u16, kubelet: KubeletPort) -> Vec<String> {
    let kubeconfig = files.kubeconfig.display();
    let mut args = vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={secure_port}"),
        format!("--cert-dir={}", files.cert_dir.display()),
        format!(
            "--requestheader-client-ca-file={}",
            files.front_proxy_ca.display()
        ),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--metric-resolution={METRIC_RESOLUTION}"),
    ];
    match kubelet {
        KubeletPort::ReadOnly(port) => {
            args.push(format!("--kubelet-port={port}"));
            args.push("--deprecated-kubelet-completely-insecure=true".into());
        }
        KubeletPort::Secure(port) => {
            args.push(format!("--kubelet-port={port}"));
            args.push(format!(
                "--kubelet-certificate-authority={}",
                files.cluster_ca.display()
            ));
        }
    }
    args
}

/// The RBAC, Service and APIService that make metrics-server on `127.0.0.1:<port>` serve
/// `metrics.k8s.io` through the API server (upstream's `components.yaml`, minus the
/// Deployment).
#[must_use]
pub fn manifests(port: u16) -> String {
    format!(
        "# Written by xtask::cluster_metrics (xtask/src/cluster_metrics.rs).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:metrics-server
rules:
- apiGroups: ['']
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: ['']
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:metrics-server
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:metrics-server
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: metrics-server:system:auth-delegator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: metrics-server-auth-reader
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: extension-apiserver-authentication-reader
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  type: ExternalName
  externalName: localhost
  ports:
  - name: https
    port: {port}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  insecureSkipTLSVerify: true
  service:
    name: metrics-server
    namespace: kube-system
    port: {port}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_pins_the_release() {
        let go_mod = fs::read_to_string(go_module_dir().join("go.mod")).unwrap();
        assert!(
            go_mod.lines().any(|l| l.trim().starts_with(&format!(
                "sigs.k8s.io/metrics-server {METRICS_SERVER_VERSION}"
            ))),
            "tests/metrics-server/go.mod does not pin {METRICS_SERVER_VERSION}"
        );
        assert!(go_mod.contains(&format!("tool {PACKAGE}")));
    }

    #[test]
    fn the_kubelet_port_switch_is_one_argument() {
        let files = Files {
            kubeconfig: Path::new("/k"),
            front_proxy_ca: Path::new("/fp"),
            cluster_ca: Path::new("/ca"),
            cert_dir: Path::new("/c"),
        };
        let ro = args(&files, 4443, KubeletPort::ReadOnly(10255));
        let secure = args(&files, 4443, KubeletPort::Secure(10250));
        assert!(ro.contains(&"--kubelet-port=10255".to_owned()));
        assert!(ro.contains(&"--deprecated-kubelet-completely-insecure=true".to_owned()));
        assert!(secure.contains(&"--kubelet-port=10250".to_owned()));
        assert!(!secure.iter().any(|a| a.contains("insecure")));
        assert!(ro.contains(&"--kubelet-preferred-address-types=InternalIP".to_owned()));
        assert!(ro.contains(&"--bind-address=127.0.0.1".to_owned()));
    }

    #[test]
    fn the_apiservice_reaches_localhost_through_an_external_name() {
        let m = manifests(4443);
        assert!(m.contains("type: ExternalName\n  externalName: localhost"));
        assert!(m.contains("name: v1beta1.metrics.k8s.io"));
        assert_eq!(m.matches("port: 4443").count(), 2, "{m}");
    }
}
