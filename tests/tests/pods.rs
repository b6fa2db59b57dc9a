//! Running static pods for real: the `bpflet` binary against a private containerd 1.6 with
//! runc, the offline busybox image, real cgroups and the real kernel. Needs root; run with
//! `--test-threads=1`.
//!
//! Each test gets its own containerd, cgroup root, manifest directory and agent; pod state
//! is read from the agent's read-only `/pods` endpoint on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bpflet_tests::node::{
    GROW_MEMORY, IMAGE, Node, NodeConfig, container_status, mem_total, phase, pod_yaml, restarts,
    running, sleeping_pod, uid,
};
use serde_json::Value;

#[test]
fn init_and_two_containers_reach_running() {
    let node = Node::start("event");
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "Always",
            &format!(
                "  initContainers:
  - name: init
    image: {IMAGE}
    command: [sh, -c, 'echo ready > /data/flag']
    volumeMounts: [{{name: data, mountPath: /data}}]
  containers:
  - name: a
    image: {IMAGE}
    command: [sh, -c, 'test -f /data/flag && exec sleep 3600']
    volumeMounts: [{{name: data, mountPath: /data}}]
  - name: b
    image: {IMAGE}
    command: [sh, -c, 'echo hello from b; exec sleep 3600']
  volumes:
  - name: data
    emptyDir: {{}}
"
            ),
        ),
    );
    let pod = node.wait_pod("web", "both containers running", |p| {
        running(p, "a") && running(p, "b")
    });
    assert_eq!(phase(&pod), "Running", "{pod:#}");
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{pod:#}");
    assert_eq!(
        init["state"]["terminated"]["reason"], "Completed",
        "{pod:#}"
    );
    assert_eq!(
        restarts(&pod, "a"),
        0,
        "the app found the init container's file in the shared emptyDir"
    );
    assert!(
        container_status(&pod, "a")["containerID"]
            .as_str()
            .unwrap_or("")
            .starts_with("containerd://"),
        "{pod:#}"
    );
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    // Logs in the kubelet layout under --root-dir: pods/<ns>_<name>_<uid>/<container>/<attempt>.log
    let log = node
        .dir
        .path()
        .join("root/pods")
        .join(format!("default_web-testnode_{}", uid(&pod)))
        .join("b/0.log");
    node.wait_until("b's log line", |_| {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("hello from b"))
    });
}

#[test]
fn failing_container_restarts_with_growing_backoff() {
    let node = Node::start("event");
    node.write_manifest(
        "crash.yaml",
        &pod_yaml(
            "crash",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'exit 2']\n"
            ),
        ),
    );
    let pod = node.wait_pod("crash", "two restarts", |p| restarts(p, "c") >= 2);
    let c = container_status(&pod, "c");
    let last = &c["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 2, "{pod:#}");
    assert_eq!(last["reason"], "Error", "{pod:#}");
    let pod = node.wait_pod("crash", "CrashLoopBackOff", |p| {
        container_status(p, "c")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let msg = container_status(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(msg.contains("back-off"), "{msg}");
    assert_eq!(
        phase(&pod),
        "Running",
        "a restarting pod stays Running: {pod:#}"
    );
    // The delay doubles (upstream: immediate, 10s, 20s, 40s, ...).
    let waiting_message = |p: &Value| {
        container_status(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let pod = node.wait_pod("crash", "a 20s back-off", |p| {
        waiting_message(p).contains("back-off 20s")
    });
    let restarts_at_20s = restarts(&pod, "c");
    let pod = node.wait_pod("crash", "a 40s back-off", |p| {
        waiting_message(p).contains("back-off 40s")
    });
    assert_eq!(
        restarts(&pod, "c"),
        restarts_at_20s + 1,
        "one restart between the two back-offs: {pod:#}"
    );
}

#[test]
fn restart_policies_never_and_onfailure_end_in_the_right_phase() {
    let node = Node::start("event");
    let one = |name: &str, policy: &str, script: &str| {
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_yaml(name, policy, &format!("  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, '{script}']\n")),
        );
    };
    one("never-ok", "Never", "exit 0");
    one("never-fail", "Never", "exit 1");
    one("onfailure-ok", "OnFailure", "exit 0");
    let p = node.wait_pod("never-ok", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        container_status(&p, "c")["state"]["terminated"]["reason"],
        "Completed"
    );
    let p = node.wait_pod("never-fail", "Failed", |p| phase(p) == "Failed");
    assert_eq!(
        container_status(&p, "c")["state"]["terminated"]["exitCode"],
        1
    );
    assert_eq!(restarts(&p, "c"), 0, "Never does not restart: {p:#}");
    node.wait_pod("onfailure-ok", "Succeeded", |p| phase(p) == "Succeeded");

    // OnFailure restarts a failing container.
    one("onfailure-fail", "OnFailure", "exit 1");
    let p = node.wait_pod("onfailure-fail", "a restart", |p| restarts(p, "c") >= 1);
    assert_ne!(phase(&p), "Failed", "{p:#}");
}

/// In event mode the kernel alone brings container exits to the pod's worker: with the
/// safety relist and the workers' periodic sync an hour away, an exit and an OOM kill still
/// show, and the agent logs that a kernel trigger found them.
#[test]
fn event_mode_sees_exits_and_oom_kills_through_the_kernel() {
    let node = Node::start_with(NodeConfig {
        bpflet_extra: "plegSafetyRelistPeriod: 1h\n".to_owned(),
        sync_frequency: "1h",
        ..NodeConfig::pleg("event")
    });
    node.write_manifest(
        "exits.yaml",
        &pod_yaml(
            "exits",
            "Never",
            &format!("  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 2; exit 3']\n"),
        ),
    );
    let p = node.wait_pod("exits", "the exit", |p| {
        !container_status(p, "c")["state"]["terminated"].is_null()
    });
    assert_eq!(
        container_status(&p, "c")["state"]["terminated"]["exitCode"],
        3,
        "{p:#}"
    );
    let p = run_container_oom(&node);
    assert_eq!(phase(&p), "Failed", "{p:#}");
    // The status may show the kernel's account before the runtime agrees; the PLEG event
    // (the worker seeing the runtime agree, after a kernel trigger) follows.
    for pod in ["exits", "oom"] {
        node.wait_until(&format!("a kernel-triggered PLEG event for {pod}"), |n| {
            n.agent_log().lines().any(|l| {
                l.contains("PLEG: container state changed")
                    && l.contains(&format!("{pod}-testnode"))
                    && l.contains("state=Exited")
                    && l.contains("trigger=\"kernel\"")
            })
        });
    }
}

/// Containers without a pid namespace of their own (`shareProcessNamespace`, `hostPID`)
/// have no namespace init for the kernel to flag; their worker asks the runtime for the
/// main process's pid, and that pid's exit ends the container with its code at once. The
/// background child keeps the container's cgroup populated until the runtime kills it, so
/// neither the cgroup emptying nor its removal can know the code.
#[test]
fn event_mode_sees_the_main_process_exit_of_a_container_without_its_own_pid_namespace() {
    let node = Node::start_with(NodeConfig {
        bpflet_extra: "plegSafetyRelistPeriod: 1h\n".to_owned(),
        sync_frequency: "1h",
        ..NodeConfig::pleg("event")
    });
    let pods = [
        ("shared-pid", "shareProcessNamespace"),
        ("host-pid", "hostPID"),
    ];
    for (name, field) in pods {
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_yaml(
                name,
                "Never",
                &format!("  {field}: true\n  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 300 & sleep 2; exit 3']\n"),
            ),
        );
    }
    for (name, _) in pods {
        let p = node.wait_pod(name, "the exit", |p| {
            !container_status(p, "c")["state"]["terminated"].is_null()
        });
        let c = container_status(&p, "c");
        assert_eq!(c["state"]["terminated"]["exitCode"], 3, "{p:#}");
        let id = c["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("containerd://"))
            .unwrap_or_else(|| panic!("no containerID: {p:#}"))
            .to_owned();
        node.wait_until(
            &format!("the kernel's account of {name}'s main process"),
            |n| {
                n.agent_log().lines().any(|l| {
                    l.contains("kernel: container's main process ended")
                        && l.contains(&format!("{name}-testnode"))
                        && l.contains(&format!("id={id}"))
                        && l.contains("exit_code=3")
                })
            },
        );
    }
}

/// The CRI calls the agent made so far that look at pods (lists and statuses), from
/// `kubelet_runtime_operations_total` on `/metrics`.
fn runtime_reads(node: &Node) -> u64 {
    let metrics = node.get_text("/metrics").expect("GET /metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("kubelet_runtime_operations_total{"))
        .filter(|l| {
            [
                "list_podsandbox",
                "list_containers",
                "podsandbox_status",
                "container_status",
            ]
            .iter()
            .any(|op| l.contains(&format!("operation_type=\"{op}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("bad metric line {l:?}"))
        })
        .sum()
}

/// Event mode: a steady pod costs the runtime nothing between safety relists; the workers'
/// periodic syncs plan against what the PLEG already told them. Generic mode relists.
#[test]
fn steady_pods_cost_no_runtime_calls_in_event_mode() {
    for (mode, expect_calls) in [("event", false), ("generic", true)] {
        let node = Node::start_with(NodeConfig {
            bpflet_extra: "plegSafetyRelistPeriod: 1h\n".to_owned(),
            sync_frequency: "1s",
            ..NodeConfig::pleg(mode)
        });
        node.write_manifest("steady.yaml", &sleeping_pod("steady"));
        node.wait_pod("steady", "running", |p| running(p, "c"));
        // Let the start settle (the worker observes once more after acting).
        std::thread::sleep(Duration::from_secs(2));
        let before = runtime_reads(&node);
        // Five periodic syncs of the pod (syncFrequency 1s).
        std::thread::sleep(Duration::from_secs(5));
        let after = runtime_reads(&node);
        assert!(before > 0, "{mode}: the pod was observed at least once");
        if expect_calls {
            assert!(
                after > before,
                "{mode}: the 1 s relist reads the runtime ({before} -> {after})"
            );
        } else {
            assert_eq!(
                after, before,
                "{mode}: periodic syncs of a steady pod read the runtime"
            );
        }
        assert!(running(&node.pod("steady").unwrap(), "c"), "{mode}");
    }
}

/// Runs a pod whose only container outgrows its 32 MiB limit; returns the pod once the
/// container is reported `OOMKilled` with exit code 137.
fn run_container_oom(node: &Node) -> Value {
    run_oom_pod(
        node,
        "oom",
        &format!(
            "  containers:
  - name: hog
    image: {IMAGE}
    command: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]
    resources:
      limits: {{memory: 32Mi}}
"
        ),
    )
}

/// Runs pod `name` (`restartPolicy: Never`, `body` its spec) whose container `hog` gets
/// OOM-killed; returns the pod once `hog` is reported `OOMKilled` with exit code 137.
fn run_oom_pod(node: &Node, name: &str, body: &str) -> Value {
    node.write_manifest(&format!("{name}.yaml"), &pod_yaml(name, "Never", body));
    let p = node.wait_pod(name, "terminated", |p| {
        !container_status(p, "hog")["state"]["terminated"].is_null()
    });
    let t = &container_status(&p, "hog")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{p:#}");
    assert_eq!(t["exitCode"], 137, "{p:#}");
    p
}

#[test]
fn container_over_its_memory_limit_is_oomkilled() {
    let node = Node::start("event");
    let p = run_container_oom(&node);
    assert_eq!(phase(&p), "Failed");
    // The kernel's account: which process, and which limit.
    let e = oom_killed_event(&node, &uid(&p));
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("(dd)") && msg.contains("the container's memory limit"),
        "{msg}"
    );
    assert_eq!(e["type"], "Warning");
}

/// The `OOMKilled` event the agent records about pod `uid`, once there is one.
fn oom_killed_event(node: &Node, uid: &str) -> Value {
    node.wait_until("an OOMKilled event", |n| {
        n.events_of(uid).iter().any(|e| e["reason"] == "OOMKilled")
    });
    node.events_of(uid)
        .into_iter()
        .find(|e| e["reason"] == "OOMKilled")
        .expect("the OOMKilled event")
}

/// A pod-level memory limit (`spec.resources`, KEP-2837) caps the pod cgroup; a container
/// without a limit of its own that outgrows it is killed for the pod's limit, and says so.
#[test]
fn oom_kill_at_the_pod_limit_names_the_pod_limit() {
    let node = Node::start("event");
    let p = run_oom_pod(
        &node,
        "podlimit",
        &format!(
            "  resources:
    limits: {{memory: 48Mi}}
  containers:
  - name: hog
    image: {IMAGE}
    command: [dd, if=/dev/zero, of=/dev/null, bs=96M, count=1]
"
        ),
    );
    // Memory is limited at pod level, cpu nowhere.
    assert_eq!(p["status"]["qosClass"], "Burstable", "{p:#}");
    let e = oom_killed_event(&node, &uid(&p));
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("(dd)") && msg.contains("the pod's memory limit"),
        "{msg}"
    );
    let p = node.pod("podlimit").expect("the pod");
    let last = p["metadata"]["annotations"]["bpflet.io/last-oom-kill.hog"]
        .as_str()
        .unwrap_or("");
    assert!(last.contains("the pod's memory limit"), "{p:#}");
}

#[test]
fn oom_kill_of_a_non_init_process_is_recorded_while_the_container_lives() {
    let node = Node::start("event");
    node.write_manifest(
        "partial.yaml",
        &pod_yaml(
            "partial",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/dev/null bs=64M count=1; exec sleep 3600']
    resources:
      limits: {{memory: 32Mi}}
"
            ),
        ),
    );
    let p = node.wait_pod("partial", "the OOM kill counted", |p| {
        p["metadata"]["annotations"]["bpflet.io/oom-kills.c"] == "1"
    });
    assert!(
        running(&p, "c"),
        "the container's main process survived: {p:#}"
    );
    assert_eq!(restarts(&p, "c"), 0, "{p:#}");
    let last = p["metadata"]["annotations"]["bpflet.io/last-oom-kill.c"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        last.contains("(dd)") && last.contains("container c"),
        "{last}"
    );
    let uid = uid(&p);
    node.wait_until("a ProcessOOMKilled event", |n| {
        n.events_of(&uid)
            .iter()
            .any(|e| e["reason"] == "ProcessOOMKilled")
    });
    assert!(
        node.events_of(&uid)
            .iter()
            .all(|e| e["reason"] != "OOMKilled"),
        "the container itself was not OOM-killed"
    );
}

#[test]
fn generic_pleg_mode_reports_the_same_oom_kill() {
    let node = Node::start("generic");
    run_container_oom(&node);
}

#[test]
fn removing_a_manifest_leaves_no_sandbox_container_or_cgroup() {
    let node = Node::start("event");
    node.write_manifest("gone.yaml", &sleeping_pod("gone"));
    let p = node.wait_pod("gone", "running", |p| running(p, "c"));
    let uid = uid(&p);
    let (sandboxes, containers) = node.runtime_ids(&uid);
    assert_eq!(
        (sandboxes.len(), containers.len()),
        (1, 1),
        "the runtime has the sandbox and the container"
    );
    let cgroup =
        find_pod_cgroup(&node.ctd.cgroup_parent, &uid).expect("a pod cgroup exists while it runs");

    node.remove_manifest("gone.yaml");
    node.wait_until("the pod to leave /pods", |n| n.pod("gone").is_none());
    node.wait_until(
        "the runtime to forget the pod's sandbox and container",
        |n| n.runtime_ids(&uid) == (Vec::new(), Vec::new()),
    );
    assert!(
        !cgroup.exists(),
        "pod cgroup {} still exists",
        cgroup.display()
    );
}

/// `(reason, type, message, fieldPath)` of the events about pod `uid` whose reason is one of
/// `reasons`, oldest first.
fn lifecycle_events(node: &Node, uid: &str, reasons: &[&str]) -> Vec<[String; 4]> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    node.events_of(uid)
        .iter()
        .filter(|e| reasons.iter().any(|r| e["reason"] == *r))
        .map(|e| {
            [
                text(&e["reason"]),
                text(&e["type"]),
                text(&e["message"]),
                text(&e["involvedObject"]["fieldPath"]),
            ]
        })
        .collect()
}

fn event(reason: &str, kind: &str, message: &str, field_path: &str) -> [String; 4] {
    [reason, kind, message, field_path].map(str::to_owned)
}

/// What `kubectl describe pod` shows on any node: each container pulled (its image present:
/// `b` sets no policy, and the image's tag is not `:latest`, so it defaults to
/// IfNotPresent), created and started, the init container first; and, when the manifest
/// goes, each running container stopped.
#[test]
fn a_static_pod_s_start_and_removal_are_recorded_as_upstream_does() {
    let node = Node::start("event");
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "Always",
            &format!(
                "  initContainers:
  - name: init
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: ['true']
  containers:
  - name: a
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
  - name: b
    image: {IMAGE}
    command: [sleep, '3600']
"
            ),
        ),
    );
    let p = node.wait_pod("web", "both containers running", |p| {
        running(p, "a") && running(p, "b")
    });
    let uid = uid(&p);
    let start = ["Pulled", "Created", "Started"];
    let present = format!("Container image \"{IMAGE}\" already present on machine");
    let (init, a, b) = (
        "spec.initContainers{init}",
        "spec.containers{a}",
        "spec.containers{b}",
    );
    assert_eq!(
        lifecycle_events(&node, &uid, &start),
        [
            event("Pulled", "Normal", &present, init),
            event("Created", "Normal", "Created container: init", init),
            event("Started", "Normal", "Started container init", init),
            event("Pulled", "Normal", &present, a),
            event("Created", "Normal", "Created container: a", a),
            event("Started", "Normal", "Started container a", a),
            event("Pulled", "Normal", &present, b),
            event("Created", "Normal", "Created container: b", b),
            event("Started", "Normal", "Started container b", b),
        ],
        "{:#?}",
        node.events_of(&uid)
    );
    assert!(
        lifecycle_events(&node, &uid, &["Killing", "BackOff", "SandboxChanged"]).is_empty(),
        "{:#?}",
        node.events_of(&uid)
    );

    node.remove_manifest("web.yaml");
    node.wait_until("the pod to leave /pods", |n| n.pod("web").is_none());
    let mut killing = lifecycle_events(&node, &uid, &["Killing"]);
    // Both are stopped at once.
    killing.sort();
    assert_eq!(
        killing,
        [
            event("Killing", "Normal", "Stopping container a", a),
            event("Killing", "Normal", "Stopping container b", b),
        ],
        "{:#?}",
        node.events_of(&uid)
    );
}

/// The pod cgroup on the memory hierarchy, wherever its QoS class put it.
fn find_pod_cgroup(root: &str, uid: &str) -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup/memory")
        .join(root.trim_start_matches('/'))
        .join("kubepods");
    let name = format!("pod{uid}");
    [
        base.join(&name),
        base.join("burstable").join(&name),
        base.join("besteffort").join(&name),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

#[test]
fn malformed_manifest_does_not_disturb_a_healthy_pod() {
    let node = Node::start("event");
    node.write_manifest("ok.yaml", &sleeping_pod("ok"));
    let before = node.wait_pod("ok", "running", |p| running(p, "c"));
    node.write_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad\nspec: [",
    );
    node.wait_until("the agent to report the bad manifest", |n| {
        n.agent_log().contains("bad.yaml")
    });
    // A later manifest runs: the source has read the directory again since (the bad file
    // with it) and the agent has acted on that read, where a lost healthy pod would show.
    node.write_manifest("later.yaml", &sleeping_pod("later"));
    node.wait_pod("later", "running", |p| running(p, "c"));
    let after = node.pod("ok").expect("healthy pod still listed");
    assert!(running(&after, "c"));
    assert_eq!(restarts(&after, "c"), 0);
    assert_eq!(
        container_status(&before, "c")["containerID"],
        container_status(&after, "c")["containerID"]
    );

    // Fixing the file starts its pod.
    node.write_manifest("bad.yaml", &sleeping_pod("bad"));
    node.wait_pod("bad", "running once fixed", |p| running(p, "c"));
}

#[test]
fn agent_sigkill_and_restart_restarts_no_container() {
    let mut node = Node::start("event");
    node.write_manifest("steady.yaml", &sleeping_pod("steady"));
    node.write_manifest(
        "flappy.yaml",
        &pod_yaml("flappy", "Always", &format!("  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 1; exit 1']\n")),
    );
    let before = node.wait_pod("steady", "running", |p| running(p, "c"));
    let flappy = node.wait_pod("flappy", "a restart", |p| restarts(p, "c") >= 1);
    let flappy_restarts = restarts(&flappy, "c");

    node.kill_agent(libc::SIGKILL);
    node.start_agent();
    let after = node.wait_pod("steady", "adopted", |p| running(p, "c"));
    assert_eq!(
        container_status(&before, "c")["containerID"],
        container_status(&after, "c")["containerID"],
        "the running container was adopted, not replaced"
    );
    assert_eq!(restarts(&after, "c"), 0);
    let flappy = node.wait_pod("flappy", "status after restart", |p| {
        !container_status(p, "c").is_null()
    });
    assert!(
        restarts(&flappy, "c") >= flappy_restarts,
        "restart count kept across the agent restart: {flappy:#}"
    );
}

#[test]
fn sigterm_stops_the_agent_and_leaves_pods_running() {
    let mut node = Node::start("event");
    node.write_manifest("stay.yaml", &sleeping_pod("stay"));
    let p = node.wait_pod("stay", "running", |p| running(p, "c"));
    let uid = uid(&p);
    let (sandboxes, containers) = node.runtime_ids(&uid);
    assert_eq!(
        (sandboxes.len(), containers.len()),
        (1, 1),
        "one sandbox, one container"
    );
    node.kill_agent(libc::SIGTERM);
    // The agent has exited: whatever it did on the way out is done.
    for id in sandboxes.iter().chain(&containers) {
        assert_eq!(
            node.task_status(id).as_deref(),
            Some("RUNNING"),
            "{id} still runs after the agent stopped"
        );
    }
}

#[test]
fn containerd_restart_under_a_running_agent() {
    let mut node = Node::start("event");
    node.write_manifest("survivor.yaml", &sleeping_pod("survivor"));
    let before = node.wait_pod("survivor", "running", |p| running(p, "c"));
    node.ctd
        .restart()
        .unwrap_or_else(|e| panic!("restarting containerd: {e:#}"));
    node.write_manifest("newcomer.yaml", &sleeping_pod("newcomer"));
    node.wait_pod("newcomer", "running after the containerd restart", |p| {
        running(p, "c")
    });
    let after = node.pod("survivor").expect("survivor listed");
    assert_eq!(
        container_status(&before, "c")["containerID"],
        container_status(&after, "c")["containerID"]
    );
}

#[test]
fn generic_pleg_mode_runs_the_same_lifecycle() {
    let node = Node::start("generic");
    node.write_manifest(
        "crash.yaml",
        &pod_yaml(
            "crash",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'exit 2']\n"
            ),
        ),
    );
    let pod = node.wait_pod("crash", "a restart", |p| restarts(p, "c") >= 1);
    assert_eq!(
        container_status(&pod, "c")["lastState"]["terminated"]["exitCode"],
        2
    );
    let health = node.get_text("/healthz?verbose").unwrap_or_default();
    assert!(
        health.contains("[+]pleg-mode-generic ok"),
        "the PLEG mode shows on /healthz: {health}"
    );
    assert!(health.contains("[+]pleg ok"), "{health}");
    let metrics = node.get_text("/metrics").unwrap_or_default();
    assert!(
        metrics.contains("kubelet_pleg_relist_duration_seconds_count"),
        "generic mode relists: {metrics}"
    );
    assert!(metrics.contains("kubelet_running_pods 1"), "{metrics}");
}

#[test]
fn prestop_hook_runs_before_sigterm() {
    let node = Node::start("event");
    let out = node.dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    node.write_manifest(
        "hooked.yaml",
        &pod_yaml(
            "hooked",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'trap \"echo term >> /out/log; exit 0\" TERM; while true; do sleep 0.1; done']
    lifecycle:
      preStop:
        exec:
          command: [sh, -c, 'echo prestop >> /out/log']
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - name: out
    hostPath: {{path: {out}, type: Directory}}
",
                out = out.display()
            ),
        ),
    );
    node.wait_pod("hooked", "running", |p| running(p, "c"));
    node.remove_manifest("hooked.yaml");
    node.wait_until("the pod to be gone", |n| n.pod("hooked").is_none());
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    assert_eq!(
        log, "prestop\nterm\n",
        "preStop ran first, then SIGTERM reached the container"
    );
}

/// MemTotal in bytes.
#[test]
fn memory_ramp_evicts_besteffort_before_the_kernel_oom_killer_acts() {
    // kubepods gets 400 MiB (capacity minus systemReserved); with evictionHard
    // memory.available<100Mi, eviction starts when the pods use 300 MiB.
    let reserved_mib = mem_total() / (1 << 20) - 400;
    let node = Node::start_with(NodeConfig {
        kubelet_extra: format!(
            "systemReserved: {{memory: {reserved_mib}Mi}}\nevictionHard: {{memory.available: 100Mi}}\n"
        ),
        ..NodeConfig::pleg("event")
    });
    let limit: u64 = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(node.ctd.cgroup_parent.trim_start_matches('/'))
            .join("kubepods/memory.limit_in_bytes"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(
        limit,
        mem_total() - (reserved_mib << 20),
        "kubepods is limited to allocatable"
    );
    let pod = |name: &str, resources: &str, cmd: &str| {
        let cmd = cmd.replace('\'', "''");
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_yaml(
                name,
                "Always",
                &format!("  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, '{cmd}']\n{resources}"),
            ),
        );
    };
    pod(
        "guaranteed",
        "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n      requests: {cpu: 100m, memory: 64Mi}\n",
        "exec sleep 3600",
    );
    pod(
        "burstable",
        "    resources:\n      requests: {memory: 32Mi}\n",
        "exec sleep 3600",
    );
    node.wait_pod("guaranteed", "running", |p| running(p, "c"));
    node.wait_pod("burstable", "running", |p| running(p, "c"));
    pod("besteffort", "", GROW_MEMORY);
    let evicted = node.wait_pod("besteffort", "evicted", |p| {
        p["status"]["reason"] == "Evicted"
    });
    assert_eq!(phase(&evicted), "Failed", "{evicted:#}");
    let msg = evicted["status"]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("The node was low on resource: memory."),
        "{msg}"
    );
    let disruption = evicted["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(disruption["status"], "True", "{evicted:#}");
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{evicted:#}");

    for name in ["guaranteed", "burstable"] {
        node.holds_for(
            name,
            "running without restarts",
            Duration::from_secs(2),
            |p| running(p, "c") && restarts(p, "c") == 0,
        );
    }
    let node_json = node.get_json("/node").unwrap_or(Value::Null);
    let pressure = node_json["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "MemoryPressure"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        pressure["status"], "True",
        "MemoryPressure holds for the transition period: {node_json:#}"
    );
    // No kernel OOM kill happened anywhere in the pod tree.
    let ooms = node.kernel_oom_events();
    assert!(ooms.is_empty(), "the kernel OOM killer acted: {ooms:#?}");
    // The evicted static pod stays down while the pressure lasts.
    node.holds_for("besteffort", "Evicted", Duration::from_secs(3), |p| {
        p["status"]["reason"] == "Evicted"
    });
}

/// `maxPods`: a pod past the node's capacity is rejected at admission as upstream does
/// (`Failed`, `OutOfpods`, never a sandbox) and the admitted pods run on.
#[test]
fn pods_past_max_pods_are_rejected_out_of_pods() {
    let node = Node::start_with(NodeConfig {
        kubelet_extra: "maxPods: 2\n".to_owned(),
        ..NodeConfig::pleg("event")
    });
    for name in ["first", "second"] {
        node.write_manifest(&format!("{name}.yaml"), &sleeping_pod(name));
        node.wait_pod(name, "running", |p| running(p, "c"));
    }
    node.write_manifest("third.yaml", &sleeping_pod("third"));
    let third = node.wait_pod("third", "rejected", |p| phase(p) == "Failed");
    assert_eq!(third["status"]["reason"], "OutOfpods", "{third:#}");
    assert_eq!(
        third["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 2, \
         capacity: 2",
        "{third:#}"
    );
    assert_eq!(
        node.runtime_ids(&uid(&third)),
        (Vec::new(), Vec::new()),
        "the rejected pod never reaches the runtime"
    );
    let events = node.events_of(&uid(&third));
    assert!(
        events.iter().any(|e| e["reason"] == "OutOfpods"),
        "an OutOfpods event: {events:#?}"
    );
    for name in ["first", "second"] {
        let p = node.pod(name).expect("admitted pod listed");
        assert!(running(&p, "c"), "{name} runs on: {p:#}");
    }
}

/// The reservations reach `kubepods` as upstream's node allocatable enforcement writes
/// them: cpu shares for capacity minus reserved cpu, pids.max of pid_max minus reserved
/// pids, the memory limit of capacity minus reserved memory.
#[test]
fn reservations_limit_kubepods() {
    let node = Node::start_with(NodeConfig {
        kubelet_extra: "systemReserved: {cpu: 500m, memory: 256Mi, pid: '1000'}\n\
                        kubeReserved: {cpu: 250m, pid: '24'}\n"
            .to_owned(),
        ..NodeConfig::pleg("event")
    });
    let kubepods = |controller: &str, file: &str| -> String {
        let path = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(node.ctd.cgroup_parent.trim_start_matches('/'))
            .join("kubepods")
            .join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    let cpus = std::thread::available_parallelism().expect("cpus").get() as u64;
    let shares = ((cpus * 1000 - 750) * 1024 / 1000).max(2);
    assert_eq!(kubepods("cpu", "cpu.shares"), shares.to_string());
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    assert_eq!(kubepods("pids", "pids.max"), (pid_max - 1024).to_string());
    let limit: u64 = kubepods("memory", "memory.limit_in_bytes")
        .parse()
        .expect("limit is a number");
    assert_eq!(limit, (mem_total() - (256 << 20)) / 4096 * 4096);
}
