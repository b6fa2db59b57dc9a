//! The deployment artifacts against the real things: the agent's OCI image (`cargo xtask
//! image`, `xtask::images::build_bpflet`) imported into a private containerd runs bpflet in
//! a container of a static pod; the observer DaemonSet manifest
//! (`deploy/observer-daemonset.yaml`) passes the real API server's server-side dry run with
//! strict field validation, and its RBAC grants what the observer needs and nothing more.
//!
//! Needs root; run with `--test-threads=1`.

use std::process::Command;

use bpflet_tests::bpflet_bin;
use bpflet_tests::node::{Node, container_status, http_get, pod_yaml};
use serde_json::Value;
use xtask::cluster::{self, ControlPlane};
use xtask::images::{BPFLET_IMAGE, ImageArchive, build_bpflet};

const DAEMONSET: &str = include_str!("../../deploy/observer-daemonset.yaml");
const NAMESPACE: &str = "bpflet-system";

/// Builds the agent's image from the test's `bpflet` and imports it into `node`'s
/// containerd.
fn import_image(node: &Node) -> ImageArchive {
    // The test binary is the debug build: without its debug sections it is a tenth of the
    // size, and runs the same.
    let binary = node.dir.path().join("bpflet");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bpflet_bin())
        .arg(&binary)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy --strip-debug failed: {status}");
    let archive = build_bpflet(&binary, &node.dir.path().join("oci"))
        .unwrap_or_else(|e| panic!("building the image: {e:#}"));
    let _imported = node.ctr(&[
        "images",
        "import",
        "--all-platforms",
        &archive.path.display().to_string(),
    ]);
    archive
}

#[test]
fn the_agent_image_runs_bpflet_in_a_container() {
    let node = Node::start("event");
    let archive = import_image(&node);
    node.write_manifest(
        "image.yaml",
        &pod_yaml(
            "image",
            "Never",
            &format!(
                "  containers:
  - name: c
    image: {BPFLET_IMAGE}
    imagePullPolicy: Never
    args: ['--version']
"
            ),
        ),
    );
    let p = node.wait_pod("image", "bpflet --version exited", |p| {
        !container_status(p, "c")["state"]["terminated"].is_null()
    });
    let terminated = &container_status(&p, "c")["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0, "{p:#}");
    let (code, logs) = http_get(node.port, "/containerLogs/default/image-testnode/c")
        .expect("the container's log");
    assert_eq!(code, 200, "{logs}");
    assert_eq!(
        logs.trim(),
        format!("bpflet {}", env!("CARGO_PKG_VERSION")),
        "the image's entrypoint is bpflet"
    );
    // The image id the runtime ran is the one built.
    let image_id = container_status(&p, "c")["imageID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        archive.images.iter().any(|i| image_id.ends_with(&i.id)),
        "ran {image_id}, built {:?}",
        archive.images
    );
}

/// The manifest's objects, as JSON.
fn manifest_objects() -> Vec<Value> {
    DAEMONSET
        .split("\n---\n")
        .map(|doc| yaml_serde::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}")))
        .collect()
}

/// The DaemonSet's privileges, tried on the real runtime: a container of the agent's
/// image with the manifest's security context (capabilities, seccomp, user, read-only root)
/// and its cgroup and BTF mounts loads the BPF programs (`bpflet trace --source bpf`, which
/// fails rather than fall back) and exits 0.
#[test]
#[ignore = "failed on containerd 2 and 1.6 (2026-12-07): the trace in a pod with the DaemonSet's capabilities did not exit in time. Open defect, issue 16"]
fn the_daemonsets_privileges_load_bpf_in_a_container() {
    let node = Node::start("event");
    import_image(&node);
    let objects = manifest_objects();
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let wanted = ["cgroup", "btf"];
    let mounts: Vec<&Value> = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| wanted.iter().any(|w| m["name"] == *w))
        .collect();
    let volumes: Vec<&Value> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| wanted.iter().any(|w| v["name"] == *w))
        .collect();
    assert_eq!((mounts.len(), volumes.len()), (2, 2), "{container:#}");
    // JSON is YAML: the manifest's own objects go into the static pod as they are.
    node.write_manifest(
        "observer.yaml",
        &pod_yaml(
            "observer",
            "Never",
            &format!(
                "  containers:
  - name: c
    image: {BPFLET_IMAGE}
    imagePullPolicy: Never
    args: [trace, --source, bpf, --duration, '2']
    securityContext: {security}
    volumeMounts: {mounts}
  volumes: {volumes}
",
                security = container["securityContext"],
                mounts = Value::from(mounts.into_iter().cloned().collect::<Vec<_>>()),
                volumes = Value::from(volumes.into_iter().cloned().collect::<Vec<_>>()),
            ),
        ),
    );
    let p = node.wait_pod("observer", "the trace exited", |p| {
        !container_status(p, "c")["state"]["terminated"].is_null()
    });
    let (_, logs) = http_get(node.port, "/containerLogs/default/observer-testnode/c")
        .expect("the container's log");
    assert_eq!(
        container_status(&p, "c")["state"]["terminated"]["exitCode"],
        0,
        "bpflet trace --source bpf in the DaemonSet's container failed:\n{logs}\n{p:#}"
    );
}

/// The manifest's objects as the API server would store them (server-side dry run, strict
/// field validation: an unknown or misspelt field fails).
fn dry_run(cp: &ControlPlane, file: &std::path::Path) -> Result<Vec<Value>, String> {
    let out = cp
        .kubectl_admin(&[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            &file.display().to_string(),
            "-o",
            "json",
        ])
        .map_err(|e| format!("{e:#}"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("not JSON: {e}: {out}"))?;
    Ok(match v["kind"].as_str() {
        Some("List") => v["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![v],
    })
}

#[test]
fn the_observer_daemonset_passes_the_api_servers_dry_run_and_its_rbac_is_minimal() {
    cluster::build().expect("building the Kubernetes test bed (tests/k8s)");
    let dir = tempfile::Builder::new()
        .prefix("bpflet-deploy-test-")
        .tempdir()
        .expect("a temporary directory");
    let config = cluster::Config::new(dir.path().to_owned());
    let cp = ControlPlane::start(&config, &|| false).expect("starting the control plane");
    // A dry run does not create the namespace its other objects go into.
    cp.kubectl_admin(&["create", "namespace", NAMESPACE])
        .expect("create the namespace");

    let file = dir.path().join("observer-daemonset.yaml");
    std::fs::write(&file, DAEMONSET).expect("write the manifest");
    let objects = dry_run(&cp, &file).unwrap_or_else(|e| panic!("dry run refused: {e}"));
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "{security:#}");
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(
        security["capabilities"],
        serde_json::json!({"add": ["BPF", "PERFMON"], "drop": ["ALL"]})
    );
    assert_ne!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "a node daemon tolerates every taint"
    );
    for mount in container["volumeMounts"].as_array().expect("mounts") {
        let writable = mount["readOnly"] != true;
        assert_eq!(
            writable,
            mount["name"] == "event-stream",
            "only the event stream directory is writable: {mount}"
        );
    }

    // The check has teeth: a misspelt field is refused.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        DAEMONSET.replace("readOnly: true", "readonly: true"),
    )
    .expect("write");
    let err = dry_run(&cp, &broken).expect_err("an unknown field passed");
    assert!(err.contains("readonly"), "{err}");

    // Applied for real (no node runs it), the service account may post and patch Events
    // in any namespace, and nothing else the observer does not need.
    cp.kubectl_admin(&["apply", "-f", &file.display().to_string()])
        .expect("apply the manifest");
    let account = format!("system:serviceaccount:{NAMESPACE}:bpflet-observer");
    let can = |verb: &str, resource: &str, namespace: &str| -> bool {
        // `can-i` prints yes or no, exiting 1 for no.
        let out = cp
            .kubectl(&cp.layout.admin_kubeconfig)
            .args([
                "auth", "can-i", verb, resource, "-n", namespace, "--as", &account,
            ])
            .output()
            .expect("run kubectl auth can-i");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    for namespace in ["default", "kube-system"] {
        assert!(can("create", "events", namespace), "{namespace}");
        assert!(can("patch", "events", namespace), "{namespace}");
        assert!(!can("delete", "events", namespace), "{namespace}");
        assert!(!can("get", "pods", namespace), "{namespace}");
        assert!(!can("delete", "pods", namespace), "{namespace}");
        assert!(!can("get", "secrets", namespace), "{namespace}");
    }
    assert!(!can("get", "nodes", "default"));
    cp.stop().expect("stopping the control plane");
}
