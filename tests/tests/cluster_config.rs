//! bpflet configured as kubeadm configures a kubelet, on the real control plane (tests/k8s):
//! the KubeletConfiguration `kubeadm config print init-defaults --component-configs
//! KubeletConfiguration` writes (agent/src/config/testdata/kubeadm-kubelet-config.yaml, its
//! kubeadm paths adjusted to this machine) starts bpflet, which joins and gives pods
//! kubeadm's cluster DNS; labels and `NoExecute` taints put on the Node with kubectl after
//! the start apply to the pods admitted afterwards, and leave running pods alone; with
//! `--register-node=false` bpflet waits for someone else to create its Node, then reports its
//! status.
//!
//! Needs root (the node runs a private containerd and real pods).
use std::time::Duration;

use bpflet_tests::cluster::{
    NODE_NAME, PodYaml, api_event, api_pod, joined_node_on, node_args, node_condition,
    running_and_ready, start_control_plane, wait_for, wait_for_default_service_account,
};
use bpflet_tests::node::{Node, NodeConfig};
use serde_json::Value;

const KUBEADM: &str = include_str!("../../agent/src/config/testdata/kubeadm-kubelet-config.yaml");

/// The fixture with kubeadm's paths on this machine's: the static pod directory and the
/// cluster CA.
fn kubeadm_config(manifests: &str, ca: &str) -> String {
    KUBEADM
        .lines()
        .map(|l| {
            l.replace("/etc/kubernetes/manifests", manifests)
                .replace("/etc/kubernetes/pki/ca.crt", ca)
                + "\n"
        })
        .collect()
}

/// What this machine needs besides: the private containerd's socket (kubeadm's `""` is the
/// machine's containerd), no fixed healthz port on a shared machine, and no client
/// certificate rotation (refused: the fixture's `true`).
fn this_node(node: &Node) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{}
healthzPort: 0
rotateCertificates: false
",
        node.ctd.socket.display()
    )
}

/// The pod's phase and the first container's running state, container id and restarts.
fn running_container(cp: &xtask::cluster::ControlPlane, name: &str) -> Result<Value, String> {
    let p = api_pod(cp, name)?;
    let c = &p["status"]["containerStatuses"][0];
    if p["status"]["phase"] == "Running" && c["state"]["running"].is_object() {
        Ok(c.clone())
    } else {
        Err(format!("{}", p["status"]))
    }
}

/// Waits for pod `name` to be `Failed` with `reason` and returns its status.
fn rejected(node: &Node, cp: &xtask::cluster::ControlPlane, name: &str, reason: &str) -> Value {
    let event = wait_for(
        node,
        &format!("a {reason} event for {name}"),
        api_event(cp, name, reason),
    );
    assert_eq!(event["type"], "Warning", "{event}");
    wait_for(node, &format!("{name} Failed with {reason}"), || {
        let p = api_pod(cp, name)?;
        if p["status"]["phase"] == "Failed" {
            Ok(p["status"].clone())
        } else {
            Err(format!("{}", p["status"]))
        }
    })
}

#[test]
fn kubeadms_configuration_joins_and_gives_pods_the_cluster_dns() {
    let (_dir, cp) = start_control_plane("bpflet-cluster-config-", |_| {});
    let mut node = Node::prepare(NodeConfig {
        args: node_args(&cp),
        dir_prefix: "bpflet-cluster-agent-",
        ..NodeConfig::default()
    });
    let drop_ins = node.dir.path().join("kubelet.conf.d");
    std::fs::create_dir(&drop_ins).expect("mkdir kubelet.conf.d");
    let kubeadm = kubeadm_config(
        &node.manifests().display().to_string(),
        &cp.layout.ca_cert().display().to_string(),
    );
    std::fs::write(drop_ins.join("10-kubeadm.conf"), kubeadm).expect("write the kubeadm config");
    std::fs::write(drop_ins.join("90-this-node.conf"), this_node(&node))
        .expect("write this node's settings");
    // The README's quick path: kubeadm's `cgroupDriver: systemd` is refused, the flag wins.
    node.config.args.extend([
        "--config-dir".to_owned(),
        drop_ins.display().to_string(),
        "--cgroup-driver=cgroupfs".to_owned(),
    ]);
    node.start_agent();

    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);
    PodYaml::new("dns")
        .bound()
        .sh("cat /etc/resolv.conf; exec sleep 3600")
        .apply(&cp);
    wait_for(
        &node,
        "the dns pod Running and Ready",
        running_and_ready(&cp, "dns"),
    );
    let resolv = wait_for(&node, "the dns pod's resolv.conf in its log", || {
        let out = cp
            .kubectl_admin(&["logs", "dns", "-c", "c"])
            .map_err(|e| format!("{e:#}"))?;
        if out.contains("nameserver") {
            Ok(out)
        } else {
            Err(format!("kubectl logs: {out:?}"))
        }
    });
    let lines: Vec<&str> = resolv.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("nameserver"))
            .copied()
            .collect::<Vec<&str>>(),
        ["nameserver 10.96.0.10"],
        "kubeadm's clusterDNS only:\n{resolv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")),
        "the pod's namespace under kubeadm's clusterDomain first:\n{resolv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("options") && l.contains("ndots:5")),
        "{resolv}"
    );

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

#[test]
fn labels_and_taints_put_on_the_node_later_apply_to_pods_admitted_afterwards() {
    // The taint eviction controller would delete a running pod that does not tolerate a new
    // NoExecute taint: without it, what the node itself does shows.
    let (_dir, cp, node) = joined_node_on(
        "bpflet-cluster-live-node-",
        &[],
        NodeConfig::default(),
        |c| c.disabled_controllers = vec!["taint-eviction-controller".to_owned()],
    );
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);
    let kubectl = |args: &[&str]| {
        cp.kubectl_admin(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
    };

    // A label added after the start admits a pod that selects it.
    kubectl(&["label", "node", NODE_NAME, "disk=ssd"]);
    let selector = "  nodeSelector: {disk: ssd}\n";
    PodYaml::new("selected").bound().spec(selector).apply(&cp);
    let selected = wait_for(&node, "the selected pod running", || {
        running_container(&cp, "selected")
    });

    // The label removed: a new pod that selects it is rejected, the running one stays.
    kubectl(&["label", "node", NODE_NAME, "disk-"]);
    PodYaml::new("selected-later")
        .bound()
        .spec(selector)
        .apply(&cp);
    let status = rejected(&node, &cp, "selected-later", "NodeAffinity");
    assert_eq!(status["reason"], "NodeAffinity", "{status}");

    // A NoExecute taint added after the start: a new pod that does not tolerate it is
    // rejected with upstream's reason, one that tolerates it runs, the running pods stay.
    kubectl(&["taint", "node", NODE_NAME, "dedicated=later:NoExecute"]);
    PodYaml::new("untolerated").bound().apply(&cp);
    PodYaml::new("tolerating")
        .bound()
        .spec(
            "  tolerations: [{key: dedicated, operator: Equal, value: later, effect: NoExecute}]\n",
        )
        .apply(&cp);
    let status = rejected(&node, &cp, "untolerated", "TaintToleration");
    assert_eq!(status["reason"], "TaintToleration", "{status}");
    assert_eq!(
        status["message"],
        "Pod was rejected: Predicate TaintToleration failed: node(s) had taints that the pod \
         didn't tolerate",
        "{status}"
    );
    wait_for(&node, "the tolerating pod running", || {
        running_container(&cp, "tolerating")
    });
    let still = running_container(&cp, "selected").expect("the selected pod still runs");
    assert_eq!(still["containerID"], selected["containerID"], "{still}");
    assert_eq!(still["restartCount"], 0, "{still}");

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

#[test]
fn without_registration_the_node_waits_for_its_node_object_then_reports_it() {
    let (_dir, cp, node) = joined_node_on(
        "bpflet-cluster-no-register-",
        &["--register-node=false"],
        NodeConfig::default(),
        |_| {},
    );
    // bpflet is up (the harness waited for its /pods): the Node is not created.
    let absent = || match cp.kubectl_admin(&["get", "node", NODE_NAME, "-o", "name"]) {
        Ok(out) => Err(format!("the Node exists: {out}")),
        Err(e) if format!("{e:#}").contains("NotFound") => Ok(()),
        Err(e) => Err(format!("{e:#}")),
    };
    for _ in 0..10 {
        absent().expect("no Node with --register-node=false");
        std::thread::sleep(Duration::from_secs(1));
    }

    // Someone else creates it: bpflet reports its status.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\n  labels: {{made-by: admin}}\n"),
    )
    .expect("write node.yaml");
    cp.kubectl_admin(&["create", "-f", &file.display().to_string()])
        .expect("kubectl create node");
    let n = wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    assert_eq!(
        n["metadata"]["labels"]["made-by"], "admin",
        "{}",
        n["metadata"]
    );
    assert!(
        n["status"]["nodeInfo"]["kubeletVersion"].is_string(),
        "{}",
        n["status"]
    );

    drop(node);
    cp.stop().expect("teardown of the control plane");
}
