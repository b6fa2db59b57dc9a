//! The API server away for a minute loses nothing: bpflet keeps its pods running, and what
//! happened on the node meanwhile (a container failing, an OOM kill and its event, a new
//! static pod) reaches the API server once it is back; the lease and the Node's status
//! resume. Judged through kubectl, as an operator would.
//!
//! Needs root (the node runs a private containerd and real pods).
use std::time::{Duration, Instant};

use bpflet_tests::cluster::{
    NODE_NAME, PodYaml, api_events, api_pod, joined_node, kubectl_json, node_condition,
    running_and_ready, wait_for, wait_for_default_service_account,
};
use bpflet_tests::node::sleeping_pod;
use jiff::Timestamp;
use serde_json::Value;

/// How long the API server stays away.
const OUTAGE: Duration = Duration::from_secs(60);

/// A pod bound to the node whose container `c` runs `sh -c cmd`, with the test's trigger
/// directory mounted at `/trigger`.
fn pod(name: &str, trigger: &str, cmd: &str) -> PodYaml {
    PodYaml::new(name)
        .bound()
        .restart_policy("Never")
        .sh(cmd)
        .container("    volumeMounts: [{name: trigger, mountPath: /trigger}]\n")
        .spec(&format!(
            "  volumes:\n  - name: trigger\n    hostPath: {{path: '{trigger}', type: Directory}}\n"
        ))
}

/// Waits for `/trigger/go`, then runs `then`.
fn on_trigger(then: &str) -> String {
    format!("until [ -e /trigger/go ]; do sleep 0.2; done; {then}")
}

/// The pod's only container status, when its state is `state` (`running`, `terminated`).
/// The pod's first container status.
fn first_container(mut pod: Value) -> Value {
    pod["status"]["containerStatuses"][0].take()
}

fn container_in<'a>(p: &'a Value, state: &str) -> Option<&'a Value> {
    let cs = &p["status"]["containerStatuses"][0];
    cs["state"][state].is_object().then_some(cs)
}

#[test]
fn an_api_server_outage_of_a_minute_loses_nothing() {
    let (dir, mut cp, mut node) = joined_node("bpflet-cluster-outage-", &[]);
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);
    let trigger = dir.path().join("trigger");
    std::fs::create_dir(&trigger).expect("create the trigger directory");
    let trigger_path = trigger.display().to_string();

    // Before: a long-running pod, Ready; a pod that will fail and one that will be
    // OOM-killed, both waiting for the trigger.
    pod("sleeper", &trigger_path, "exec sleep 3600").apply(&cp);
    pod("failer", &trigger_path, &on_trigger("exit 3")).apply(&cp);
    pod(
        "hog",
        &trigger_path,
        &on_trigger("exec dd if=/dev/zero of=/dev/null bs=64M count=1"),
    )
    .container("    resources:\n      limits: {memory: 32Mi}\n")
    .apply(&cp);
    let mut uids = std::collections::HashMap::new();
    for name in ["sleeper", "failer", "hog"] {
        let p = wait_for(
            &node,
            &format!("{name} Running and Ready"),
            running_and_ready(&cp, name),
        );
        uids.insert(name, p["metadata"]["uid"].as_str().expect("uid").to_owned());
    }
    // A static pod from before the outage: its mirror pod, Ready.
    node.write_manifest("early.yaml", &sleeping_pod("early"));
    let early = first_container(wait_for(
        &node,
        "the early mirror pod Ready",
        running_and_ready(&cp, "early-testnode"),
    ));
    let sleeper = api_pod(&cp, "sleeper").expect("sleeper");
    let sleeper_id = container_in(&sleeper, "running").expect("running")["containerID"].clone();
    let agent_pid = node.agent().expect("the agent runs").id();

    // The outage.
    let outage = Instant::now();
    cp.stop_apiserver().expect("stopping kube-apiserver");
    assert!(
        cp.kubectl_admin(&["get", "--raw", "/readyz"]).is_err(),
        "the API server still answers"
    );
    std::fs::write(trigger.join("go"), "").expect("pull the trigger");
    node.write_manifest("static.yaml", &sleeping_pod("static"));
    // On the node (its read-only API): the failure, the OOM kill and its event, the static
    // pod running.
    let local = |name: &str| {
        node.try_pods()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
    };
    node.wait_until("the node to see what happened", |node| {
        let failed = |name: &str| local(name).is_some_and(|p| p["status"]["phase"] == "Failed");
        failed("failer")
            && failed("hog")
            && local("static-testnode").is_some_and(|p| p["status"]["phase"] == "Running")
            && node
                .events_of(&uids["hog"])
                .iter()
                .any(|e| e["reason"] == "OOMKilled")
    });
    assert!(
        outage.elapsed() < OUTAGE,
        "the node took the whole outage to act ({:?})",
        outage.elapsed()
    );
    // The rest of the outage: the agent keeps running, and keeps its pods.
    while outage.elapsed() < OUTAGE {
        assert!(node.agent_alive(), "the agent died during the outage");
        std::thread::sleep(Duration::from_millis(500));
    }
    let back = Timestamp::now();
    cp.start_apiserver(&|| false)
        .expect("starting kube-apiserver again");
    eprintln!("API server away for {:.1}s", outage.elapsed().as_secs_f64());

    // After: everything that happened reached the API server.
    wait_for(
        &node,
        "the Node Ready",
        node_condition(&cp, "Ready", "True"),
    );
    let lease = wait_for(&node, "the Lease renewed after the outage", || {
        let lease = kubectl_json(&cp, &["-n", "kube-node-lease", "get", "lease", NODE_NAME]);
        let renewed: Timestamp = lease["spec"]["renewTime"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("{lease}"))?;
        if renewed > back {
            Ok(lease)
        } else {
            Err(format!("renewTime {renewed}, back at {back}"))
        }
    });
    assert_eq!(lease["spec"]["holderIdentity"], NODE_NAME);

    let failer = wait_for(&node, "failer Failed with exit code 3", || {
        let p = api_pod(&cp, "failer")?;
        match container_in(&p, "terminated") {
            Some(cs) if p["status"]["phase"] == "Failed" => Ok(cs["state"]["terminated"].clone()),
            _ => Err(format!("{}", p["status"])),
        }
    });
    assert_eq!(failer["exitCode"], 3, "{failer}");
    assert_eq!(failer["reason"], "Error", "{failer}");

    let hog = wait_for(&node, "hog Failed, OOMKilled", || {
        let p = api_pod(&cp, "hog")?;
        match container_in(&p, "terminated") {
            Some(cs) if p["status"]["phase"] == "Failed" => Ok(cs["state"]["terminated"].clone()),
            _ => Err(format!("{}", p["status"])),
        }
    });
    assert_eq!(
        (&hog["reason"], &hog["exitCode"]),
        (&Value::from("OOMKilled"), &Value::from(137)),
        "{hog}"
    );
    let event = wait_for(
        &node,
        "the OOMKilled event recorded during the outage",
        || {
            api_events(&cp, "hog", "OOMKilled")
                .into_iter()
                .next()
                .ok_or_else(|| "none".to_owned())
        },
    );
    assert_eq!(
        event["involvedObject"]["uid"],
        uids["hog"].as_str(),
        "{event}"
    );
    assert_eq!(event["type"], "Warning", "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("(dd) in container c") && message.contains("memory limit"),
        "{message}"
    );

    let mirror = wait_for(&node, "the static pod's mirror pod Running", || {
        let p = api_pod(&cp, "static-testnode")?;
        if p["status"]["phase"] == "Running" {
            Ok(p)
        } else {
            Err(format!("{}", p["status"]))
        }
    });
    assert!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(),
        "{mirror}"
    );

    // The long-running pod: the same container, never restarted, and Ready in the API
    // (whatever the node controller marked while the node's heartbeat was away).
    let sleeper = first_container(wait_for(
        &node,
        "sleeper Running and Ready",
        running_and_ready(&cp, "sleeper"),
    ));
    // The same for the static pod's mirror, which bpflet writes as it writes its own pods.
    let early_after = first_container(wait_for(
        &node,
        "the early mirror pod Running and Ready",
        running_and_ready(&cp, "early-testnode"),
    ));
    assert_eq!(
        early_after["containerID"], early["containerID"],
        "the static pod's container is the same"
    );
    eprintln!(
        "NodeNotReady events about the early mirror pod: {}",
        api_events(&cp, "early-testnode", "NodeNotReady").len()
    );
    // Whether the node lifecycle controller had marked the pods not ready (it does when it
    // sees the Node's heartbeat silent past its grace before bpflet's returns).
    let marked = api_events(&cp, "sleeper", "NodeNotReady");
    eprintln!("NodeNotReady events about the sleeper: {}", marked.len());
    assert_eq!(sleeper["containerID"], sleeper_id, "the same container");
    assert_eq!(sleeper["restartCount"], 0, "{sleeper}");

    assert!(node.agent_alive(), "the agent died");
    assert_eq!(
        node.agent().expect("the agent runs").id(),
        agent_pid,
        "the same agent process throughout"
    );
    drop(node);
    cp.stop().expect("teardown of the control plane");
}
