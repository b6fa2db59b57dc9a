//! API pods handled as upstream's kubelet handles them, on the real control plane (tests/k8s):
//! a pod bpflet cannot run is rejected at admission (phase Failed, a reason and message naming
//! the field, a Warning event, never a sandbox) while other pods run on; a pod whose phase in
//! the API is terminal is never run again after an agent restart, while a running pod is
//! adopted; the pod conditions upstream's kubelet writes are visible through kubectl.
//!
//! Needs root (the node runs a private containerd and real pods).
use bpflet::runtime::{ContainerRuntime as _, CriRuntime};
use bpflet_tests::cluster::{
    PodYaml, api_event, condition, joined_node, kubectl_json, node_condition, running_and_ready,
    wait_for, wait_for_default_service_account,
};
use bpflet_tests::node::{Node, container_id};
use serde_json::Value;
use xtask::cluster::ControlPlane;

/// A probe for [`wait_for`]: pod `name` is in phase `phase`; returns the pod.
fn pod_phase<'a>(
    cp: &'a ControlPlane,
    name: &'a str,
    phase: &'a str,
) -> impl FnMut() -> Result<Value, String> + 'a {
    move || {
        let p = kubectl_json(cp, &["get", "pod", name]);
        if p["status"]["phase"] == phase {
            Ok(p)
        } else {
            Err(format!("{}", p["status"]))
        }
    }
}

/// `(status, reason)` of the pod's condition `kind`.
fn cond(pod: &Value, kind: &str) -> (String, String) {
    let c =
        condition(pod, kind).unwrap_or_else(|| panic!("no {kind} condition: {}", pod["status"]));
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().expect("uid").to_owned()
}

#[test]
fn a_pod_bpflet_cannot_run_is_rejected_failed_with_an_event_and_others_run_on() {
    let (_dir, cp, node) = joined_node("bpflet-cluster-pods-reject-", &[]);
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);

    // The API server takes `hostUsers: false`; bpflet does not run pods in user namespaces.
    PodYaml::new("userns")
        .bound()
        .spec("  hostUsers: false\n")
        .apply(&cp);
    PodYaml::new("runner").bound().apply(&cp);

    let rejected = wait_for(
        &node,
        "the userns pod Failed",
        pod_phase(&cp, "userns", "Failed"),
    );
    let status = &rejected["status"];
    assert_eq!(status["reason"], "FailedValidation", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Pod was rejected: ") && message.contains("spec.hostUsers"),
        "{status}"
    );
    let event = wait_for(
        &node,
        "a FailedValidation event for the userns pod",
        api_event(&cp, "userns", "FailedValidation"),
    );
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["source"]["component"], "kubelet", "{event}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.hostUsers")),
        "{event}"
    );

    // The other pod runs, with the conditions upstream's kubelet writes for a ready pod.
    let runner = wait_for(
        &node,
        "the runner pod Running and Ready",
        running_and_ready(&cp, "runner"),
    );
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert_eq!(
            cond(&runner, kind).0,
            "True",
            "{kind} of a ready pod: {}",
            runner["status"]
        );
    }
    let (sandboxes, containers) = node.runtime_ids(&uid(&runner));
    assert_eq!(
        (sandboxes.len(), containers.len()),
        (1, 1),
        "the runner pod in the runtime"
    );

    // Never a sandbox for the rejected pod, and it stays Failed.
    let rejected_uid = uid(&rejected);
    let (sandboxes, containers) = node.runtime_ids(&rejected_uid);
    assert!(
        sandboxes.is_empty() && containers.is_empty(),
        "the rejected pod in the runtime: {sandboxes:?} {containers:?}"
    );
    let all = node.all_runtime_containers();
    assert_eq!(
        all.len(),
        2,
        "only the runner's sandbox and container: {all:?}"
    );
    let again = kubectl_json(&cp, &["get", "pod", "userns"]);
    assert_eq!(again["status"]["phase"], "Failed", "{}", again["status"]);

    // Deleted, the rejected pod goes for good.
    cp.kubectl_admin(&["delete", "pod", "userns", "--wait=true", "--timeout=60s"])
        .expect("kubectl delete the rejected pod");

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

/// Stops and removes pod `uid`'s sandboxes (and so their containers) through CRI, as a node
/// whose runtime lost the pod (or an operator's `crictl rmp`) leaves it.
fn remove_from_runtime(node: &Node, uid: &str) {
    let (sandboxes, _) = node.runtime_ids(uid);
    let socket = node.ctd.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let cri = CriRuntime::connect(socket).await.expect("connect to CRI");
        for id in &sandboxes {
            cri.stop_pod_sandbox(id).await.expect("stop the sandbox");
            cri.remove_pod_sandbox(id)
                .await
                .expect("remove the sandbox");
        }
    });
}

/// Checks `probe` every 500 ms for 15 s; panics naming `what` with what was seen and the
/// agent's log tail the first time it fails. (Something that must not happen has no
/// moment to wait for; an agent that reruns a pod does so within a second of its list.)
fn holds_for(node: &Node, what: &str, mut probe: impl FnMut() -> Result<(), String>) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if let Err(seen) = probe() {
            let log = node.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{what} stopped holding: {seen}\nagent log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn a_terminal_api_pod_is_not_run_again_after_an_agent_restart() {
    let (_dir, cp, mut node) = joined_node("bpflet-cluster-pods-terminal-", &[]);
    let plane = cp;
    let cp = &plane;
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(cp, "Ready", "True"),
    );
    wait_for_default_service_account(cp, &node);
    PodYaml::new("once")
        .bound()
        .restart_policy("Never")
        .sh("exit 0")
        .apply(cp);
    PodYaml::new("sleeper").bound().apply(cp);

    let done = wait_for(
        &node,
        "the once pod Succeeded",
        pod_phase(cp, "once", "Succeeded"),
    );
    let cs = &done["status"]["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs}");
    // The conditions upstream's kubelet writes for a pod that completed.
    let once_uid = uid(&done);
    let done = wait_for(&node, "the once pod's sandbox stopped", || {
        let p = kubectl_json(cp, &["get", "pod", "once"]);
        match condition(&p, "PodReadyToStartContainers") {
            Some(c) if c["status"] == "False" => Ok(p),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(cond(&done, "Initialized").0, "True", "{}", done["status"]);
    for kind in ["ContainersReady", "Ready"] {
        assert_eq!(
            cond(&done, kind),
            ("False".to_owned(), "PodCompleted".to_owned()),
            "{kind} of a completed pod: {}",
            done["status"]
        );
    }
    let sleeper = wait_for(
        &node,
        "the sleeper pod Running and Ready",
        running_and_ready(cp, "sleeper"),
    );
    let sleeper_container = container_id(&sleeper, "c").unwrap_or_default();
    let (once_sandboxes, once_containers) = node.runtime_ids(&once_uid);
    assert_eq!(
        (once_sandboxes.len(), once_containers.len()),
        (1, 1),
        "the completed pod in the runtime"
    );

    // The agent stops; meanwhile the runtime loses the completed pod (a node whose runtime
    // state went, an operator's cleanup). Back, the agent must not run it again: its phase
    // in the API is terminal.
    node.kill_agent(libc::SIGTERM);
    remove_from_runtime(&node, &once_uid);
    assert_eq!(node.runtime_ids(&once_uid), (vec![], vec![]));
    node.start_agent();
    wait_for(
        &node,
        "the Node to be Ready again",
        node_condition(cp, "Ready", "True"),
    );

    // The running pod is adopted: the same container, no restart.
    let sleeper = wait_for(
        &node,
        "the sleeper pod Running and Ready",
        running_and_ready(cp, "sleeper"),
    );
    assert_eq!(
        container_id(&sleeper, "c").unwrap_or_default(),
        sleeper_container,
        "the same container, adopted"
    );
    assert_eq!(sleeper["status"]["containerStatuses"][0]["restartCount"], 0);
    // The agent has seen both pods (the sleeper's status is written after the agent's
    // first complete list): the completed one stays as it was, and nothing of it runs.
    holds_for(
        &node,
        "the once pod Succeeded with nothing in the runtime",
        || {
            let p = kubectl_json(cp, &["get", "pod", "once"]);
            let ids = node.runtime_ids(&once_uid);
            if p["status"]["phase"] == "Succeeded" && ids == (vec![], vec![]) {
                Ok(())
            } else {
                Err(format!("phase {}, runtime {ids:?}", p["status"]["phase"]))
            }
        },
    );
    let after = kubectl_json(cp, &["get", "pod", "once"]);
    let cs = &after["status"]["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs}");
    assert_eq!(cs["restartCount"], 0, "{cs}");

    drop(node);
    plane.stop().expect("teardown of the control plane");
}
