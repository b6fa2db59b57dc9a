//! bpflet as a node of the real control plane (tests/k8s, the code behind `cargo xtask up
//! --cluster`): it registers its Node and becomes Ready, keeps its Lease, runs the pods the
//! scheduler binds to it, reports their status, and deletes them gracefully when the
//! Deployment scales down, mirrors its static pods, and reports an OOM kill as upstream
//! writes it plus bpflet's attribution as an event. Judged through kubectl, as an operator
//! would.
//!
//! Needs root (the node runs a private containerd and real pods).
use bpflet_tests::cluster::{condition, joined_node, kubectl_json, node_condition, wait_for};
use bpflet_tests::node::{IMAGE, sleeping_pod};
use serde_json::Value;

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: 5
      containers:
      - name: c
        image: {IMAGE}
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
"
    )
}

#[test]
fn bpflet_joins_runs_a_deployment_and_deletes_its_pods_gracefully() {
    let (dir, cp, node) = joined_node(
        "bpflet-cluster-node-",
        &["--node-labels", "bpflet.io/test=cluster-node"],
    );

    // The Node: registered as upstream registers it, and Ready.
    let registered = wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    let labels = &registered["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "testnode");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["bpflet.io/test"], "cluster-node");
    let status = &registered["status"];
    assert_eq!(status["capacity"]["pods"], "110");
    assert!(status["allocatable"]["memory"].is_string(), "{status}");
    assert!(
        status["nodeInfo"]["kubeletVersion"]
            .as_str()
            .is_some_and(|v| v.contains("bpflet")),
        "{status}"
    );
    assert!(
        status["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://")),
        "{status}"
    );
    for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            condition(&registered, kind).map(|c| c["status"].clone()),
            Some(Value::from("False")),
            "{kind} in {status}"
        );
    }
    assert!(
        status["addresses"].as_array().is_some_and(|a| a
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == "127.0.0.1")),
        "{status}"
    );

    // The Lease: held by the node, owned by its Node.
    let lease = kubectl_json(&cp, &["-n", "kube-node-lease", "get", "lease", "testnode"]);
    assert_eq!(lease["spec"]["holderIdentity"], "testnode");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");

    // A static pod shows in the API server as its mirror pod, with the status bpflet sees.
    node.write_manifest("static.yaml", &sleeping_pod("static"));
    let mirror = wait_for(&node, "the static pod's mirror pod Running", || {
        let out = cp
            .kubectl_admin(&["get", "pod", "static-testnode", "-o", "json"])
            .map_err(|e| format!("{e:#}"))?;
        let p: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        if p["status"]["phase"] == "Running" {
            Ok(p)
        } else {
            Err(format!("phase {}", p["status"]["phase"]))
        }
    });
    let annotations = &mirror["metadata"]["annotations"];
    assert!(
        annotations["kubernetes.io/config.mirror"].is_string(),
        "{annotations}"
    );
    assert_eq!(annotations["kubernetes.io/config.source"], "file");
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(mirror["spec"]["nodeName"], "testnode");
    node.remove_manifest("static.yaml");
    wait_for(
        &node,
        "the mirror pod to go with its static pod",
        || match cp.kubectl_admin(&[
            "get",
            "pod",
            "static-testnode",
            "--ignore-not-found",
            "-o",
            "name",
        ]) {
            Ok(out) if out.trim().is_empty() => Ok(()),
            Ok(out) => Err(out),
            Err(e) => Err(format!("{e:#}")),
        },
    );

    // A Deployment of 3 replicas runs on the node.
    wait_for(&node, "the default ServiceAccount", || {
        cp.kubectl_admin(&["get", "serviceaccount", "default"])
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    });
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, deployment(3)).expect("write the deployment");
    cp.kubectl_admin(&["apply", "-f", &manifest.display().to_string()])
        .expect("kubectl apply");
    let pods = wait_for(&node, "3 web pods Running and Ready", || {
        let pods = kubectl_json(&cp, &["get", "pods", "-l", "app=web"]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let ready = items
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
            })
            .count();
        if ready == 3 {
            Ok(items)
        } else {
            Err(format!(
                "{ready} ready; phases {:?}",
                items
                    .iter()
                    .map(|p| (
                        p["status"]["phase"].clone(),
                        p["status"]["containerStatuses"].clone()
                    ))
                    .collect::<Vec<_>>()
            ))
        }
    });
    let mut uids = Vec::new();
    for pod in &pods {
        assert_eq!(pod["spec"]["nodeName"], "testnode");
        let cs = &pod["status"]["containerStatuses"][0];
        assert_eq!(cs["name"], "c");
        assert!(cs["state"]["running"].is_object(), "{cs}");
        assert_eq!(cs["restartCount"], 0);
        assert!(
            cs["containerID"]
                .as_str()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{cs}"
        );
        let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
        // Really running in the node's runtime: a sandbox and a running task.
        let (sandboxes, containers) = node.runtime_ids(&uid);
        assert_eq!(sandboxes.len(), 1, "sandboxes of {uid}: {sandboxes:?}");
        assert_eq!(containers.len(), 1, "containers of {uid}: {containers:?}");
        assert_eq!(node.task_status(&containers[0]).as_deref(), Some("RUNNING"));
        uids.push(uid);
    }

    // Scale to 0: the pods stop gracefully and their objects go away.
    cp.kubectl_admin(&["scale", "deployment", "web", "--replicas=0"])
        .expect("kubectl scale");
    wait_for(&node, "the web pods to be gone from the API server", || {
        let pods = kubectl_json(&cp, &["get", "pods", "-l", "app=web"]);
        let left = pods["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} pods left"))
        }
    });
    for uid in &uids {
        let (sandboxes, containers) = node.runtime_ids(uid);
        assert!(
            sandboxes.is_empty() && containers.is_empty(),
            "pod {uid} still in the runtime: {sandboxes:?} {containers:?}"
        );
    }
    // An OOM kill looks in the API as upstream writes it, with bpflet's attribution as an
    // event: the container's last state OOMKilled/137, and an OOMKilled event naming the
    // process and the limit hit.
    let oom = dir.path().join("oom.yaml");
    std::fs::write(
        &oom,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: hog
  namespace: default
spec:
  nodeName: testnode
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]
    resources:
      limits: {{memory: 32Mi}}
"
        ),
    )
    .expect("write the oom pod");
    cp.kubectl_admin(&["apply", "-f", &oom.display().to_string()])
        .expect("kubectl apply the oom pod");
    let hog = wait_for(&node, "the hog container OOMKilled in the API", || {
        let p = kubectl_json(&cp, &["get", "pod", "hog"]);
        let cs = &p["status"]["containerStatuses"][0];
        let terminated = if cs["lastState"]["terminated"].is_object() {
            &cs["lastState"]["terminated"]
        } else {
            &cs["state"]["terminated"]
        };
        if terminated["reason"] == "OOMKilled" {
            Ok(terminated.clone())
        } else {
            Err(format!("{cs}"))
        }
    });
    assert_eq!(hog["exitCode"], 137, "{hog}");
    let event = wait_for(&node, "an OOMKilled event in the API", || {
        let events = kubectl_json(
            &cp,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=hog,reason=OOMKilled",
            ],
        );
        events["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
            .ok_or_else(|| format!("{events}"))
    });
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["source"]["component"], "bpflet", "{event}");
    assert_eq!(event["source"]["host"], "testnode", "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("(dd) in container hog") && message.contains("memory limit"),
        "{message}"
    );
    cp.kubectl_admin(&["delete", "pod", "hog", "--wait=true", "--timeout=60s"])
        .expect("kubectl delete the oom pod");

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

/// The agent stopped: the node controller marks the Node not ready (its lease expires) and the
/// pod keeps running; the agent back: the Node is Ready again and the pod was not restarted.
#[test]
fn a_stopped_agent_leaves_pods_running_and_its_return_makes_the_node_ready_again() {
    let (dir, cp, mut node) = joined_node("bpflet-cluster-restart-", &[]);
    let plane = cp;
    let cp = &plane;
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(cp, "Ready", "True"),
    );
    let pod = dir.path().join("sleeper.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: sleeper
  namespace: default
spec:
  nodeName: testnode
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
"
        ),
    )
    .expect("write the pod");
    cp.kubectl_admin(&["apply", "-f", &pod.display().to_string()])
        .expect("kubectl apply");
    let container_id = || {
        let p = kubectl_json(cp, &["get", "pod", "sleeper"]);
        let cs = &p["status"]["containerStatuses"][0];
        if cs["state"]["running"].is_object() {
            Ok((
                cs["containerID"].as_str().unwrap_or_default().to_owned(),
                cs["restartCount"].clone(),
            ))
        } else {
            Err(format!("{cs}"))
        }
    };
    let (before, _) = wait_for(&node, "the pod Running", container_id);

    node.kill_agent(libc::SIGTERM);
    // The node controller's grace for a silent node is upstream's default (50 s in v1.34).
    wait_for(
        &node,
        "the Node to go Unknown",
        node_condition(cp, "Ready", "Unknown"),
    );
    let id = before.trim_start_matches("containerd://");
    assert_eq!(
        node.task_status(id).as_deref(),
        Some("RUNNING"),
        "the pod keeps running while the agent is away"
    );

    node.start_agent();
    wait_for(
        &node,
        "the Node to be Ready again",
        node_condition(cp, "Ready", "True"),
    );
    let (after, restarts) = wait_for(&node, "the pod Running", container_id);
    assert_eq!(after, before, "the same container, adopted");
    assert_eq!(restarts, 0);

    drop(node);
    plane.stop().expect("teardown of the control plane");
}
