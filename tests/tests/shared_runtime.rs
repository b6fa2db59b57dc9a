//! bpflet on a containerd it shares with another client: the upstream kubelet (standalone,
//! `xtask::peer`) runs its pods on the same private containerd 2, and bpflet's start-up
//! clean-up, its housekeeping and its container GC leave every one of them as it was: same
//! sandbox and container ids, nothing removed, no restart. Needs root and `cargo xtask
//! build-peer`; run with `--test-threads=1`.

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, WAIT, crictl_json, kubelet_pod, phase, pod_yaml, restarts, running,
    tail, wait_kubelet_pod,
};
use serde_json::Value;
use xtask::containerd::{Binaries, PrivateContainerd};
use xtask::peer::{Kubelet, KubeletSpec};

/// What the runtime holds: sandbox ids and container ids with their states.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    sandboxes: BTreeSet<String>,
    containers: BTreeSet<(String, String)>,
}

/// Every sandbox and container of pod `uid` in `ctd`, as crictl lists them.
fn held(ctd: &PrivateContainerd, uid: &str) -> Held {
    let label = format!("io.kubernetes.pod.uid={uid}");
    let pods = crictl_json(ctd, &["pods", "-o", "json", "--label", &label]);
    let containers = crictl_json(ctd, &["ps", "-a", "-o", "json", "--label", &label]);
    let ids =
        |v: &Value, key: &str| -> Vec<Value> { v[key].as_array().cloned().unwrap_or_default() };
    Held {
        sandboxes: ids(&pods, "items")
            .iter()
            .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
            .collect(),
        containers: ids(&containers, "containers")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_owned(),
                    c["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    }
}

/// The kubelet's pods (one running for an hour, one that completed and keeps its dead
/// container and stopped sandbox) survive a bpflet that starts on the same containerd,
/// cleans up the runtime pods no source of its own wants, runs its housekeeping and a GC
/// pass that knows its sources' pods: they keep their sandbox and container ids and
/// states, and the kubelet reports no restart.
#[test]
fn another_clients_pods_survive_bpflet_start_housekeeping_and_gc() {
    // bpflet runs no pod here: the upstream kubelet kills runtime pods it did not start
    // (its own orphan clean-up), which would only muddle what this test looks at.
    let mut node = Node::prepare(NodeConfig {
        containerd: Binaries::containerd2(),
        dir_prefix: "bpflet-shared-",
        ..NodeConfig::pleg("event")
    });
    let manifests = node.dir.path().join("kubelet-manifests");
    let mut spec = KubeletSpec::new(
        node.dir.path().join("kubelet"),
        &node.ctd,
        manifests.clone(),
        bpflet_tests::node::free_port(),
    );
    // Its own cgroup root beside bpflet's `<parent>/kubepods`: each manages its own tree.
    spec.cgroup_root = format!("{}/kubelet", node.ctd.cgroup_parent);
    spec.extra_config = "fileCheckFrequency: 2s\n".to_owned();
    let kubelet = Kubelet::start(spec).unwrap_or_else(|e| panic!("{e:#}"));
    fs::write(
        manifests.join("theirs.yaml"),
        pod_yaml(
            "theirs",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
            ),
        ),
    )
    .expect("write manifest");
    fs::write(
        manifests.join("done.yaml"),
        pod_yaml(
            "done",
            "Never",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'exit 0']\n"
            ),
        ),
    )
    .expect("write manifest");
    let theirs = wait_kubelet_pod(&kubelet, "theirs", "Running", |p| {
        phase(p) == "Running" && running(p, "c")
    });
    let done = wait_kubelet_pod(&kubelet, "done", "Succeeded", |p| phase(p) == "Succeeded");
    let uid = |p: &Value| p["metadata"]["uid"].as_str().expect("uid").to_owned();
    let (theirs_uid, done_uid) = (uid(&theirs), uid(&done));
    // The kubelet stops a finished pod's sandbox: wait until it has, so that what is held
    // below no longer changes on the kubelet's side.
    let deadline = Instant::now() + WAIT;
    let settled = loop {
        let pods = crictl_json(
            &node.ctd,
            &[
                "pods",
                "-o",
                "json",
                "--label",
                &format!("io.kubernetes.pod.uid={done_uid}"),
            ],
        );
        let ready = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["state"] == "SANDBOX_READY");
        if !ready {
            break (held(&node.ctd, &theirs_uid), held(&node.ctd, &done_uid));
        }
        assert!(
            Instant::now() < deadline,
            "the kubelet kept done's sandbox ready: {pods:#}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(settled.0.containers.len(), 1, "{settled:?}");
    assert!(
        settled
            .1
            .containers
            .iter()
            .all(|(_, s)| s == "CONTAINER_EXITED"),
        "{settled:?}"
    );
    assert!(!settled.1.containers.is_empty(), "{settled:?}");

    // bpflet starts on the same containerd with an empty static pod directory: its start-up
    // clean-up runs once the source reported, and the GC passes once the wanted pods (none)
    // are known.
    node.start_agent();
    let unchanged = |node: &Node| {
        let now = (held(&node.ctd, &theirs_uid), held(&node.ctd, &done_uid));
        assert_eq!(
            now,
            settled,
            "bpflet touched the kubelet's pods\n--- agent log ---\n{}\n--- kubelet log ---\n{}",
            tail(&node.agent_log(), 60),
            kubelet.log_tail(30)
        );
    };
    // The start-up clean-up ran once the source reported; housekeeping turns every 2 s and
    // the PLEG relists: a while of all three.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        unchanged(&node);
        thread::sleep(Duration::from_millis(500));
    }
    node.wait_until("a GC pass that knows the wanted pods", |n| {
        n.agent_log()
            .lines()
            .any(|l| l.contains("container garbage collection") && l.contains("pods_known=true"))
    });
    unchanged(&node);
    let log = node.agent_log();
    assert!(
        !log.contains("no source wants"),
        "bpflet took the kubelet's pods for its orphans:\n{}",
        tail(&log, 60)
    );
    let theirs = kubelet_pod(&kubelet, "theirs").expect("the kubelet still has theirs");
    assert!(
        phase(&theirs) == "Running" && running(&theirs, "c") && restarts(&theirs, "c") == 0,
        "the kubelet reports a change: {theirs:#}"
    );
    let done = kubelet_pod(&kubelet, "done").expect("the kubelet still has done");
    assert_eq!(phase(&done), "Succeeded", "{done:#}");
    kubelet.stop().unwrap_or_else(|e| panic!("{e:#}"));
}

/// Two bpflets with different root directories on one containerd (1.6 or 2, as the node's
/// default): the second to start leaves the first one's pod alone through its start-up
/// clean-up, its housekeeping and a GC pass that knows its own pods, and runs its own.
#[test]
fn two_bpflets_with_different_root_dirs_leave_each_others_pods_alone() {
    let mut node = Node::prepare(NodeConfig {
        dir_prefix: "bpflet-shared-two-",
        ..NodeConfig::pleg("event")
    });
    // The neighbour: the node's configuration with its own ports, manifests, socket and
    // root directory.
    let dir = node.dir.path().to_owned();
    let neighbour_manifests = dir.join("manifests-neighbour");
    fs::create_dir_all(&neighbour_manifests).expect("create manifests");
    let (port, secure_port) = (
        bpflet_tests::node::free_port(),
        bpflet_tests::node::free_port(),
    );
    let config = node
        .config_text()
        .replace(
            &format!("staticPodPath: {}\n", node.manifests().display()),
            &format!("staticPodPath: {}\n", neighbour_manifests.display()),
        )
        .replace(
            &format!("readOnlyPort: {}\n", node.port),
            &format!("readOnlyPort: {port}\n"),
        )
        .replace(
            &format!("port: {}\n", node.secure_port),
            &format!("port: {secure_port}\n"),
        )
        .replace(
            &node.event_socket().display().to_string(),
            &dir.join("events-neighbour.sock").display().to_string(),
        );
    assert!(
        config.contains(&format!("readOnlyPort: {port}\n")),
        "{config}"
    );
    let config_path = dir.join("config-neighbour.yaml");
    fs::write(&config_path, &config).expect("write config");
    fs::write(
        neighbour_manifests.join("theirs.yaml"),
        bpflet_tests::node::sleeping_pod("theirs"),
    )
    .expect("write manifest");
    let spec = xtask::agent::AgentSpec {
        root_dir: dir.join("root-neighbour"),
        config: config_path,
        log: dir.join("agent-neighbour.log"),
        ..node.agent_spec()
    };
    let mut neighbour = xtask::agent::Agent::spawn(&spec).unwrap_or_else(|e| panic!("{e:#}"));
    neighbour
        .wait_ready("serve /pods", WAIT, || Ok(xtask::agent::serves_pods(port)))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let neighbours_pod = || -> Option<Value> {
        let (_, body) = bpflet_tests::node::http_get(port, "/pods")?;
        let list: Value = serde_json::from_str(&body).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == "theirs-testnode")
            .cloned()
    };
    let deadline = Instant::now() + WAIT;
    let theirs = loop {
        if let Some(p) = neighbours_pod().filter(|p| running(p, "c")) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the neighbour's pod did not run:\n{}",
            neighbour.log_tail(40)
        );
        thread::sleep(Duration::from_millis(200));
    };
    let theirs_uid = theirs["metadata"]["uid"].as_str().expect("uid").to_owned();
    let ids = |node: &Node| {
        let (mut sandboxes, mut containers) = node.runtime_ids(&theirs_uid);
        sandboxes.sort();
        containers.sort();
        (sandboxes, containers)
    };
    let before = ids(&node);
    assert_eq!((before.0.len(), before.1.len()), (1, 1), "{before:?}");

    // The node's own agent starts on the same containerd with a pod of its own.
    node.write_manifest("ours.yaml", &bpflet_tests::node::sleeping_pod("ours"));
    node.start_agent();
    node.wait_pod("ours", "running", |p| running(p, "c"));
    let unchanged = |node: &Node| {
        assert_eq!(
            ids(node),
            before,
            "bpflet touched its neighbour's pod\n--- agent log ---\n{}",
            tail(&node.agent_log(), 60)
        );
    };
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        unchanged(&node);
        thread::sleep(Duration::from_millis(500));
    }
    node.wait_until("a GC pass that knows the wanted pods", |n| {
        n.agent_log()
            .lines()
            .any(|l| l.contains("container garbage collection") && l.contains("pods_known=true"))
    });
    unchanged(&node);
    let theirs = neighbours_pod().expect("the neighbour still serves its pod");
    assert!(
        running(&theirs, "c") && restarts(&theirs, "c") == 0,
        "{theirs:#}"
    );
    neighbour.stop(nix::sys::signal::Signal::SIGTERM, WAIT);
}
