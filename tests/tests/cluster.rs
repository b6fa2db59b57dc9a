//! The Kubernetes test bed (`xtask::cluster`, the code behind `cargo xtask up --cluster`):
//! the real control plane built from tests/k8s comes up on 127.0.0.1, reports the pinned
//! release, passes the smoke check (readiness, namespaces, the controllers and the scheduler
//! at work, the node credential under the Node authorizer and NodeRestriction), and its
//! teardown leaves no process and frees its ports.
//!
//! The binaries come from `cargo xtask setup` (or `cargo xtask build-cluster`); this test
//! builds them itself only when they are missing or stale.

use std::net::{Ipv4Addr, TcpListener};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::Value;
use xtask::cluster::{self, ControlPlane, KUBERNETES_VERSION};

#[test]
fn control_plane_comes_up_passes_the_smoke_check_and_leaves_nothing_behind() {
    cluster::build().expect("building the Kubernetes test bed (tests/k8s)");
    let dir = tempfile::Builder::new()
        .prefix("bpflet-cluster-test-")
        .tempdir()
        .expect("a temporary directory");
    let mut config = cluster::Config::new(dir.path().to_owned());
    config.node_name = "bpflet-test-node".to_owned();

    let cp = ControlPlane::start(&config, &|| false).expect("starting the control plane");
    let pids = cp.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]
    );
    let ports = cp.ports;

    // kubectl and the API server report the pinned release, not the v0.0.0 of an
    // unstamped build (the node controller and kubectl's skew checks read these).
    let version: Value = serde_json::from_str(
        &cp.kubectl_admin(&["version", "-o", "json"])
            .expect("kubectl version"),
    )
    .expect("kubectl version -o json prints JSON");
    for side in ["clientVersion", "serverVersion"] {
        assert_eq!(
            version.pointer(&format!("/{side}/gitVersion")),
            Some(&Value::from(KUBERNETES_VERSION)),
            "{side} in {version}"
        );
    }

    cp.smoke_check().expect("the smoke check");

    cp.stop().expect("teardown");
    for (name, pid) in pids {
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        assert_eq!(
            kill(pid, None),
            Err(Errno::ESRCH),
            "{name} (pid {pid}) still exists after teardown"
        );
    }
    for port in [ports.apiserver, ports.etcd_client, ports.controller_manager] {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("port {port} is still taken after teardown: {e}"));
    }
    assert!(
        !dir.path().join("etcd").exists(),
        "etcd's data is left in {}",
        dir.path().display()
    );
}
