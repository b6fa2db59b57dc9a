//! Pods that cannot start, for real: a command that does not exist, an image that is not
//! there, a volume that cannot be prepared, a pod name too long for the node, and a large pod
//! removed in the middle of its first sync. Each must fail alone (its siblings, the other pods
//! and the agent carry on), say why in its status and events, and retry under a back-off
//! instead of storming the runtime. Needs root; run with `--test-threads=1`.

use std::time::Duration;

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, container_status, pod_yaml, restarts, running, sleeping_pod, uid,
    waiting_reason,
};
use serde_json::Value;

/// A node whose disk thresholds cannot fire: the build machines' disks are fuller than the
/// default `imagefs.available<15%`, and an eviction would end these tests for the wrong
/// reason.
fn node() -> Node {
    Node::start("event")
}

/// The waiting message of container `name`, or "".
fn waiting_message<'a>(p: &'a Value, name: &str) -> &'a str {
    container_status(p, name)["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
}

/// Reasons of the warning events recorded about pod `uid`.
fn warning_reasons(node: &Node, uid: &str) -> Vec<String> {
    node.events_of(uid)
        .iter()
        .filter(|e| e["type"] == "Warning")
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

/// A sibling pod that must keep running whatever its neighbour does.
fn with_bystander(node: &Node) {
    node.write_manifest("bystander.yaml", &sleeping_pod("bystander"));
    node.wait_pod("bystander", "the bystander running", |p| running(p, "c"));
}

fn assert_bystander_untouched(node: &mut Node) {
    assert!(node.agent_alive(), "the agent died");
    let p = node.pod("bystander").expect("bystander listed");
    assert!(running(&p, "c"), "bystander stopped: {p:#}");
    assert_eq!(restarts(&p, "c"), 0, "bystander restarted: {p:#}");
}

#[test]
fn a_command_that_does_not_exist_backs_off_and_spares_its_sibling() {
    let mut node = node();
    with_bystander(&node);
    node.write_manifest(
        "nocmd.yaml",
        &pod_yaml(
            "nocmd",
            "Always",
            &format!(
                "  containers:
  - name: bad
    image: {IMAGE}
    command: [/no/such/binary]
  - name: good
    image: {IMAGE}
    command: [sleep, '3600']
"
            ),
        ),
    );
    let pod = node.wait_pod("nocmd", "the sibling running and the failure shown", |p| {
        running(p, "good")
            && matches!(
                waiting_reason(p, "bad"),
                Some("RunContainerError" | "CrashLoopBackOff")
            )
    });
    let uid = uid(&pod);
    node.wait_pod("nocmd", "the failure naming the binary", |p| {
        matches!(
            waiting_reason(p, "bad"),
            Some("RunContainerError" | "CrashLoopBackOff")
        ) && waiting_message(p, "bad").contains("/no/such/binary")
    });
    // Storm detector, not a timing claim: with a back-off of 10 s, 20 s, 40 s ... a handful
    // of attempts fit in half a minute; without one, hundreds did.
    node.holds_for(
        "nocmd",
        "a bounded number of attempts",
        Duration::from_secs(30),
        |p| restarts(p, "bad") <= 6 && running(p, "good"),
    );
    let attempts = restarts(&node.pod("nocmd").expect("listed"), "bad") + 1;
    eprintln!("nocmd: {attempts} attempts to start the missing binary");
    let bad = node.containers_named(&uid, "bad");
    assert!(
        bad.len() <= 2,
        "containerd keeps {} containers of the failing container: {bad:?}",
        bad.len()
    );
    let events = warning_reasons(&node, &uid);
    assert!(
        events.iter().any(|r| r == "Failed"),
        "a Failed warning event: {events:?}"
    );
    assert_bystander_untouched(&mut node);
}

#[test]
fn a_missing_image_with_pull_policy_never_spares_its_sibling() {
    let mut node = node();
    with_bystander(&node);
    node.write_manifest(
        "noimage.yaml",
        &pod_yaml(
            "noimage",
            "Always",
            &format!(
                "  containers:
  - name: never
    image: bpflet.local/no-such-image:1
    imagePullPolicy: Never
  - name: ifnotpresent
    image: bpflet.local/no-such-image:2
    imagePullPolicy: IfNotPresent
  - name: good
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, '3600']
"
            ),
        ),
    );
    let pod = node.wait_pod("noimage", "the sibling running, the others not", |p| {
        running(p, "good")
            && waiting_reason(p, "never") == Some("ErrImageNeverPull")
            && matches!(
                waiting_reason(p, "ifnotpresent"),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
    });
    assert_eq!(
        waiting_message(&pod, "never"),
        "Container image \"bpflet.local/no-such-image:1\" is not present with pull policy of Never",
        "{pod:#}"
    );
    let uid = uid(&pod);
    // Upstream keeps ErrImageNeverPull (there is nothing to back off to).
    node.holds_for(
        "noimage",
        "ErrImageNeverPull",
        Duration::from_secs(15),
        |p| waiting_reason(p, "never") == Some("ErrImageNeverPull") && running(p, "good"),
    );
    let events = warning_reasons(&node, &uid);
    assert!(
        events.iter().any(|r| r == "ErrImageNeverPull"),
        "an ErrImageNeverPull warning: {events:?}"
    );
    assert!(
        node.containers_named(&uid, "never").is_empty(),
        "nothing created for a missing image"
    );
    assert_bystander_untouched(&mut node);
}

#[test]
fn a_volume_that_cannot_be_prepared_shows_why_without_flooding_the_log() {
    let mut node = node();
    with_bystander(&node);
    let missing = node.dir.path().join("no-such-dir");
    node.write_manifest(
        "novol.yaml",
        &pod_yaml(
            "novol",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sleep, '3600']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    hostPath: {{path: {}, type: Directory}}
",
                missing.display()
            ),
        ),
    );
    let pod = node.wait_pod("novol", "CreateContainerConfigError naming the path", |p| {
        waiting_reason(p, "c") == Some("CreateContainerConfigError")
            && waiting_message(p, "c").contains(&missing.display().to_string())
    });
    let uid = uid(&pod);
    let failures = |node: &Node| {
        node.agent_log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("novol-testnode"))
            .count()
    };
    let before = failures(&node);
    node.holds_for("novol", "the failure shown", Duration::from_secs(20), |p| {
        waiting_reason(p, "c") == Some("CreateContainerConfigError")
    });
    let warned = failures(&node) - before;
    eprintln!("novol: {warned} warnings in 20 s");
    assert!(
        warned <= 2,
        "{warned} warnings in 20 s about the same failure:\n{}",
        node.agent_log()
    );
    let events = warning_reasons(&node, &uid);
    assert!(
        events.iter().any(|r| r == "FailedMount"),
        "a FailedMount warning: {events:?}"
    );
    // The directory appears: the pod starts at its next attempt.
    std::fs::create_dir_all(&missing).expect("create the hostPath directory");
    node.wait_pod("novol", "running once the path exists", |p| running(p, "c"));
    assert_bystander_untouched(&mut node);
}

#[test]
fn a_sandbox_the_runtime_refuses_backs_off_and_says_why() {
    // Admission lets `kernel.msgmax` through (allowed), but runc cannot write "x" to it: the
    // sandbox cannot be created.
    let mut node = Node::start_with(NodeConfig {
        kubelet_extra: "allowedUnsafeSysctls: [kernel.msgmax]\n".to_owned(),
        ..NodeConfig::default()
    });
    with_bystander(&node);
    node.write_manifest(
        "nosandbox.yaml",
        &pod_yaml(
            "nosandbox",
            "Always",
            &format!(
                "  securityContext:
    sysctls: [{{name: kernel.msgmax, value: x}}]
  containers:
  - name: c
    image: {IMAGE}
    command: [sleep, '3600']
"
            ),
        ),
    );
    let pod = node.wait_pod("nosandbox", "the sandbox failure shown", |p| {
        waiting_reason(p, "c") == Some("ContainerCreating")
            && waiting_message(p, "c").contains("msgmax")
    });
    let uid = uid(&pod);
    let attempts = |n: &Node| {
        n.agent_log()
            .lines()
            .filter(|l| l.contains("creating sandbox") && l.contains("nosandbox-testnode"))
            .count()
    };
    let before = attempts(&node);
    node.holds_for(
        "nosandbox",
        "the failure shown",
        Duration::from_secs(20),
        |p| waiting_message(p, "c").contains("msgmax"),
    );
    let during = attempts(&node) - before;
    eprintln!("nosandbox: {during} sandbox attempts in 20 s");
    // 2 s, 4 s, 8 s, 16 s: at most four retries in 20 s (every 2 s before).
    assert!(during <= 4, "{during} sandbox attempts in 20 s");
    let (sandboxes, _) = node.runtime_ids(&uid);
    assert!(
        sandboxes.len() <= 1,
        "failed sandboxes pile up: {sandboxes:?}"
    );
    let events = warning_reasons(&node, &uid);
    assert!(
        events.iter().any(|r| r == "FailedCreatePodSandBox"),
        "a FailedCreatePodSandBox warning: {events:?}"
    );
    assert_bystander_untouched(&mut node);
}

#[test]
fn a_pod_name_too_long_for_the_node_is_refused_naming_the_field() {
    let mut node = node();
    with_bystander(&node);
    // With "-testnode" appended, 253 characters: the longest valid DNS subdomain, but the
    // pod's log directory `default_<name>_<uid>` would be a 294-byte file name, which no
    // Linux file system takes: every container start failed ("file name too long").
    let label = "n".repeat(63);
    let name = format!("{label}.{label}.{label}.{}", "n".repeat(52));
    assert_eq!(name.len() + "-testnode".len(), 253);
    node.write_manifest("long.yaml", &sleeping_pod(&name));
    node.wait_until("the manifest refused, naming the field", |n| {
        let log = n.agent_log();
        log.lines().any(|l| {
            l.contains("long.yaml") && l.contains("metadata.name") && l.contains("log directory")
        })
    });
    assert!(node.pod(&name).is_none(), "a refused pod is not listed");
    let bystander = uid(&node.pod("bystander").expect("bystander listed"));
    let all = node.all_runtime_containers();
    let (sandboxes, containers) = node.runtime_ids(&bystander);
    assert_eq!(
        all.len(),
        sandboxes.len() + containers.len(),
        "nothing but the bystander in containerd: {all:?}"
    );
    assert_bystander_untouched(&mut node);
}

#[test]
fn removing_a_large_pod_mid_sync_stops_its_starts() {
    let mut node = node();
    with_bystander(&node);
    const N: usize = 60;
    let mut body = String::from("  containers:\n");
    for i in 0..N {
        body.push_str(&format!(
            "  - name: c{i}\n    image: {IMAGE}\n    command: [sleep, '3600']\n"
        ));
    }
    node.write_manifest("big.yaml", &pod_yaml("big", "Always", &body));
    // The pod is listed (ContainerCreating) before its first sync starts anything; the
    // sync's progress shows in containerd.
    let pod = node.wait_pod("big", "listed", |_| true);
    let uid = uid(&pod);
    node.wait_until("a few of its containers created", |n| {
        n.runtime_ids(&uid).1.len() >= 5
    });
    node.remove_manifest("big.yaml");
    node.wait_until("the big pod gone from /pods", |n| n.pod("big").is_none());
    node.wait_until("the big pod gone from containerd", |n| {
        let (sandboxes, containers) = n.runtime_ids(&uid);
        sandboxes.is_empty() && containers.is_empty()
    });
    let started = node
        .agent_log()
        .lines()
        .filter(|l| l.contains("starting container") && l.contains("big-testnode"))
        .count();
    eprintln!("big: {started} of {N} containers started");
    assert!(
        started < N / 2,
        "{started} of {N} containers started although the pod was removed early"
    );
    assert_bystander_untouched(&mut node);
}
