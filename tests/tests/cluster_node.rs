//! bpflet as a node of the real control plane (tests/k8s, the code behind `cargo xtask up
//! --cluster`): it registers its Node and becomes Ready, keeps its Lease, runs the pods the
//! scheduler binds to it, reports their status, and deletes them gracefully when the
//! Deployment scales down, mirrors its static pods, and reports an OOM kill as upstream
//! writes it plus bpflet's attribution as an event. Judged through kubectl, as an operator
//! would.
//!
//! Needs root (the node runs a private containerd and real pods).
use std::time::{Duration, Instant};

use bpflet_tests::cluster::{
    NODE_NAME, PodYaml, api_event, api_events, api_pod, condition, joined_node, joined_node_on,
    joined_node_with, kubectl_json, node_condition, node_requests, wait_for,
    wait_for_default_service_account,
};
use bpflet_tests::node::{GROW_MEMORY, IMAGE, NodeConfig, mem_total, sleeping_pod};
use serde_json::Value;

/// The running container of pod `name` in the API: its id and restart count.
fn running_container(
    cp: &xtask::cluster::ControlPlane,
    name: &str,
) -> Result<(String, u64), String> {
    let p = api_pod(cp, name)?;
    let cs = &p["status"]["containerStatuses"][0];
    if p["status"]["phase"] == "Running" && cs["state"]["running"].is_object() {
        Ok((
            cs["containerID"].as_str().unwrap_or_default().to_owned(),
            cs["restartCount"].as_u64().unwrap_or(u64::MAX),
        ))
    } else {
        Err(format!("{}", p["status"]))
    }
}

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
    wait_for_default_service_account(&cp, &node);
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
    let event = wait_for(
        &node,
        "an OOMKilled event in the API",
        api_event(&cp, "hog", "OOMKilled"),
    );
    assert_eq!(event["type"], "Warning", "{event}");
    // From the kubelet on the node, as upstream's kubelet writes its events.
    assert_eq!(event["source"]["component"], "kubelet", "{event}");
    assert_eq!(event["source"]["host"], "testnode", "{event}");
    assert_eq!(event["reportingComponent"], "kubelet", "{event}");
    assert_eq!(event["reportingInstance"], "testnode", "{event}");
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
/// What an audit event says of a request: `verb resource[/subresource] name`.
fn request_line(e: &Value) -> String {
    let o = &e["objectRef"];
    let sub = o["subresource"]
        .as_str()
        .map(|s| format!("/{s}"))
        .unwrap_or_default();
    format!(
        "{} {}{sub} {} ({})",
        e["verb"].as_str().unwrap_or("?"),
        o["resource"].as_str().unwrap_or("?"),
        o["name"].as_str().unwrap_or(""),
        e["requestURI"].as_str().unwrap_or("?")
    )
}

/// An idle node reads its own Node from its watch (field selector `metadata.name`), as
/// upstream's kubelet reads it from its informer: over 40 s from the Node's `Ready` (four
/// status passes at the default `nodeStatusUpdateFrequency` of 10 s) the API server's audit
/// log shows no `get` of the Node by the node, while its lease renewals show it was at work.
#[test]
fn an_idle_node_reads_its_node_from_its_watch_not_the_api_server() {
    let (_dir, cp, mut node) = joined_node_on(
        "bpflet-cluster-idle-",
        &[],
        NodeConfig::default(),
        |control_plane| control_plane.audit = true,
    );
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    let from = jiff::Timestamp::now();
    let window = Duration::from_secs(40);
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(node.agent_alive(), "the agent died while idle");
        let gets: Vec<String> = node_requests(&cp, from)
            .iter()
            .filter(|e| e["verb"] == "get" && e["objectRef"]["resource"] == "nodes")
            .map(request_line)
            .collect();
        assert!(
            gets.is_empty(),
            "the idle node read its Node from the API server {:.0?} into the window:\n{}",
            start.elapsed(),
            gets.join("\n")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let requests = node_requests(&cp, from);
    let lines: Vec<String> = requests.iter().map(request_line).collect();
    eprintln!(
        "the node's requests in {window:?} of idle:\n{}",
        lines.join("\n")
    );
    // The watch that replaced the reads (opened at registration, before the window).
    let watch = node_requests(&cp, jiff::Timestamp::UNIX_EPOCH)
        .into_iter()
        .find(|e| {
            e["verb"] == "watch"
                && e["objectRef"]["resource"] == "nodes"
                && e["requestURI"].as_str().is_some_and(|uri| {
                    uri.contains(&format!("fieldSelector=metadata.name%3D{NODE_NAME}"))
                })
        })
        .map(|e| request_line(&e))
        .unwrap_or_else(|| panic!("no watch on the node's own Node:\n{}", lines.join("\n")));
    eprintln!("the Node watch: {watch}");
    let renewals = requests
        .iter()
        .filter(|e| e["verb"] == "update" && e["objectRef"]["resource"] == "leases")
        .count();
    assert!(
        renewals >= 3,
        "the node renewed its lease {renewals} times in {window:?}: was it at work?\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("get nodes")),
        "{}",
        lines.join("\n")
    );

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

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
    wait_for_default_service_account(cp, &node);
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

/// A memory ramp in a BestEffort pod on a node whose pods get 400 MiB: bpflet evicts it as
/// upstream's kubelet writes an eviction (the pod `Failed`/`Evicted` with the DisruptionTarget
/// condition, a Warning `Evicted` event from the kubelet), the Node shows MemoryPressure (and
/// the node lifecycle controller taints it), the Guaranteed and Burstable pods run on
/// untouched, the kernel's OOM killer never acts, and the evicted pod stays in the API,
/// `Failed`, also once the pressure is over: a kubelet never deletes nor restarts it.
#[test]
fn a_memory_ramp_evicts_the_besteffort_pod_as_upstream_writes_it() {
    // kubepods gets 400 MiB (capacity minus systemReserved); with evictionHard
    // memory.available<100Mi, eviction starts when the pods use 300 MiB. The pressure
    // condition holds 30 s after the last pressure (upstream: 5 min), so the test also sees
    // the evicted pod stay down after it.
    let reserved_mib = mem_total() / (1 << 20) - 400;
    let (_dir, cp, node) = joined_node_with(
        "bpflet-cluster-evict-",
        &[],
        NodeConfig {
            kubelet_extra: format!(
                "systemReserved: {{memory: {reserved_mib}Mi}}\n\
                 evictionHard: {{memory.available: 100Mi}}\n\
                 evictionPressureTransitionPeriod: 30s\n"
            ),
            ..NodeConfig::default()
        },
    );
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);
    PodYaml::new("guaranteed")
        .container(
            "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n      requests: {cpu: 100m, memory: 64Mi}\n",
        )
        .apply(&cp);
    PodYaml::new("burstable")
        .container("    resources:\n      requests: {memory: 32Mi}\n")
        .apply(&cp);
    let mut before = Vec::new();
    for name in ["guaranteed", "burstable"] {
        let (id, restarts) = wait_for(&node, &format!("{name} Running"), || {
            running_container(&cp, name)
        });
        assert_eq!(restarts, 0, "{name}");
        before.push((name, id));
    }
    let qos = |name: &str| api_pod(&cp, name).expect("pod")["status"]["qosClass"].clone();
    assert_eq!(qos("guaranteed"), "Guaranteed");
    assert_eq!(qos("burstable"), "Burstable");

    PodYaml::new("besteffort").sh(GROW_MEMORY).apply(&cp);
    let evicted = wait_for(&node, "the BestEffort pod Evicted in the API", || {
        let p = api_pod(&cp, "besteffort")?;
        if p["status"]["reason"] == "Evicted" {
            Ok(p)
        } else {
            Err(format!("{}", p["status"]))
        }
    });
    let status = &evicted["status"];
    assert_eq!(status["qosClass"], "BestEffort", "{status:#}");
    assert_eq!(
        evicted["spec"]["nodeName"], NODE_NAME,
        "bound by the scheduler"
    );
    assert_eq!(status["phase"], "Failed", "{status:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: memory."),
        "{status:#}"
    );
    let disruption = condition(&evicted, "DisruptionTarget").cloned();
    let disruption = disruption.unwrap_or(Value::Null);
    assert_eq!(disruption["status"], "True", "{status:#}");
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{status:#}");
    let uid = evicted["metadata"]["uid"].as_str().expect("uid").to_owned();

    // The event, as upstream's kubelet writes it: about the pod, from the kubelet on this
    // node, with the status' message.
    let event = wait_for(&node, "an Evicted event in the API", || {
        api_events(&cp, "besteffort", "Evicted")
            .into_iter()
            .next()
            .ok_or_else(|| "none".to_owned())
    });
    assert_eq!(event["type"], "Warning", "{event:#}");
    let involved = &event["involvedObject"];
    assert_eq!(
        (&involved["kind"], &involved["uid"], &involved["namespace"]),
        (
            &Value::from("Pod"),
            &Value::from(uid.as_str()),
            &Value::from("default")
        ),
        "{event:#}"
    );
    assert_eq!(event["message"], message, "{event:#}");
    assert_eq!(event["source"]["component"], "kubelet", "{event:#}");
    assert_eq!(event["source"]["host"], NODE_NAME, "{event:#}");
    assert_eq!(event["reportingComponent"], "kubelet", "{event:#}");
    assert_eq!(event["reportingInstance"], NODE_NAME, "{event:#}");

    // The Node: MemoryPressure, and the node lifecycle controller's NoSchedule taint for it.
    let pressured = wait_for(
        &node,
        "MemoryPressure=True on the Node",
        node_condition(&cp, "MemoryPressure", "True"),
    );
    assert_eq!(
        condition(&pressured, "MemoryPressure").map(|c| c["reason"].clone()),
        Some(Value::from("KubeletHasInsufficientMemory")),
        "{:#}",
        pressured["status"]
    );
    let memory_taint = |n: &Value| {
        n["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"
            })
        })
    };
    wait_for(&node, "the memory-pressure taint on the Node", || {
        let n = kubectl_json(&cp, &["get", "node", NODE_NAME]);
        if memory_taint(&n) {
            Ok(())
        } else {
            Err(format!("{}", n["spec"]))
        }
    });

    // The others run on: the same containers, never restarted; the kernel never OOM-killed.
    for (name, id) in &before {
        let (now, restarts) = running_container(&cp, name)
            .unwrap_or_else(|e| panic!("{name} no longer running: {e}"));
        assert_eq!((&now, restarts), (id, 0), "{name}");
    }
    let ooms = node.kernel_oom_events();
    assert!(ooms.is_empty(), "the kernel OOM killer acted: {ooms:#?}");

    // The pressure ends (30 s after the last): the condition and the taint go, and the
    // evicted pod stays what it is, in the API and on the node.
    wait_for(
        &node,
        "MemoryPressure=False on the Node",
        node_condition(&cp, "MemoryPressure", "False"),
    );
    wait_for(&node, "the memory-pressure taint gone", || {
        let n = kubectl_json(&cp, &["get", "node", NODE_NAME]);
        if memory_taint(&n) {
            Err(format!("{}", n["spec"]))
        } else {
            Ok(())
        }
    });
    // Two resync periods of the pod workers (syncFrequency 10 s) after the pressure ended.
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        let p = api_pod(&cp, "besteffort").expect("the evicted pod stays in the API");
        assert_eq!(p["metadata"]["uid"], uid.as_str(), "the same pod object");
        assert_eq!(
            (&p["status"]["phase"], &p["status"]["reason"]),
            (&Value::from("Failed"), &Value::from("Evicted")),
            "{:#}",
            p["status"]
        );
        assert!(
            !p["status"]["containerStatuses"][0]["state"]["running"].is_object(),
            "the evicted pod's container runs again: {:#}",
            p["status"]
        );
        let (_, containers) = node.runtime_ids(&uid);
        for id in &containers {
            assert_ne!(
                node.task_status(id).as_deref(),
                Some("RUNNING"),
                "the evicted pod runs again in the runtime"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, id) in &before {
        let (now, restarts) = running_container(&cp, name)
            .unwrap_or_else(|e| panic!("{name} no longer running: {e}"));
        assert_eq!((&now, restarts), (id, 0), "{name}");
    }

    drop(node);
    cp.stop().expect("teardown of the control plane");
}
