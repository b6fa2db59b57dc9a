//! Local storage limits on the real runtime (root): a pod whose `emptyDir` outgrows its
//! `sizeLimit`, whose container outgrows its `ephemeral-storage` limit (writable layer), or
//! whose total outgrows the sum of its containers' limits is evicted within a monitoring
//! pass or two, with upstream's message; pods within their limits and pods without limits
//! keep running. Amounts are small (tens of MiB). Run with `--test-threads=1`.

use std::path::PathBuf;
use std::time::Duration;

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, container_status, phase, pod_yaml, restarts, running, sleeping_pod,
    uid,
};
use serde_json::Value;

/// Longer than one eviction pass (10 s) plus the time to measure.
const PAST_A_PASS: Duration = Duration::from_secs(15);

/// A node with the harness's memory-only thresholds ([`DEFAULT_EVICTION_HARD`]): limit
/// evictions happen without any node pressure.
fn node() -> Node {
    Node::start("event")
}

fn evicted(p: &Value) -> bool {
    p["status"]["reason"] == "Evicted"
}

/// The pod's emptyDir `volume` on the host.
fn empty_dir(node: &Node, pod: &Value, volume: &str) -> PathBuf {
    node.root_dir()
        .join("pods")
        .join(uid(pod))
        .join("volumes/kubernetes.io~empty-dir")
        .join(volume)
}

/// Checks an evicted pod: `Failed`, reason `Evicted`, exactly `message`, an `Evicted`
/// warning event with that message, and no container of it running in the runtime.
fn assert_evicted(node: &Node, name: &str, message: &str) -> Value {
    let pod = node.wait_pod(name, "evicted", evicted);
    assert_eq!(phase(&pod), "Failed", "{pod:#}");
    assert_eq!(pod["status"]["message"], message, "{pod:#}");
    let events = node.events_of(&uid(&pod));
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "Evicted" && e["type"] == "Warning" && e["message"] == message),
        "an Evicted warning event: {events:#?}"
    );
    let (_, containers) = node.runtime_ids(&uid(&pod));
    node.wait_until(&format!("{name}'s containers to stop"), |n| {
        containers
            .iter()
            .all(|id| n.task_status(id).as_deref() != Some("RUNNING"))
    });
    pod
}

#[test]
fn empty_dir_over_its_size_limit_is_evicted_and_others_run_on() {
    let mut node = node();
    node.write_manifest("calm.yaml", &sleeping_pod("calm"));
    // Within both limits: 2 MiB in a 10Mi emptyDir, 2 MiB in a 10Mi writable layer.
    node.write_manifest(
        "modest.yaml",
        &pod_yaml(
            "modest",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/data/f bs=1M count=2 && dd if=/dev/zero of=/tmp/f bs=1M count=2 && touch /data/done && exec sleep 3600']
    resources:
      limits: {{ephemeral-storage: 10Mi}}
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    emptyDir: {{sizeLimit: 10Mi}}
"
            ),
        ),
    );
    node.write_manifest(
        "hog.yaml",
        &pod_yaml(
            "hog",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/data/f bs=1M count=30 && exec sleep 3600']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    emptyDir: {{sizeLimit: 10Mi}}
"
            ),
        ),
    );
    let calm = node.wait_pod("calm", "running", |p| running(p, "c"));
    let modest = node.wait_pod("modest", "running", |p| running(p, "c"));

    let hog = assert_evicted(
        &node,
        "hog",
        "Usage of EmptyDir volume \"data\" exceeds the limit \"10Mi\". ",
    );
    // What it wrote is freed (its volumes are torn down, as upstream's for a terminated pod).
    let hog_data = empty_dir(&node, &hog, "data");
    node.wait_until("hog's emptyDir to be removed", |_| !hog_data.exists());
    // Terminal: the evicted pod is not started again.
    node.holds_for("hog", "evicted and down", PAST_A_PASS, |p| {
        evicted(p) && !running(p, "c")
    });
    assert!(
        container_status(&hog, "c")["state"]["running"].is_null(),
        "{hog:#}"
    );

    // The pod within its limits wrote what it meant to and runs on, past a pass.
    let done = empty_dir(&node, &modest, "data").join("done");
    node.wait_until("modest to finish writing", |_| done.exists());
    node.holds_for("modest", "running, not evicted", PAST_A_PASS, |p| {
        running(p, "c") && !evicted(p) && restarts(p, "c") == 0
    });
    let calm_now = node.pod("calm").expect("calm listed");
    assert!(running(&calm_now, "c"), "{calm_now:#}");
    assert_eq!(restarts(&calm_now, "c"), 0, "{calm_now:#}");
    assert_eq!(uid(&calm_now), uid(&calm));
    assert!(node.agent_alive(), "the agent runs on");
}

#[test]
fn container_over_its_ephemeral_storage_limit_is_evicted() {
    let mut node = node();
    // `side`'s larger limit keeps the pod's total limit (110Mi) above the pod's usage, so
    // it is `app`'s own limit that is exceeded (upstream checks the pod's total first).
    node.write_manifest(
        "layer.yaml",
        &pod_yaml(
            "layer",
            "Always",
            &format!(
                "  containers:
  - name: app
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/tmp/f bs=1M count=30 && exec sleep 3600']
    resources:
      limits: {{ephemeral-storage: 10Mi}}
  - name: side
    image: {IMAGE}
    command: [sleep, '3600']
    resources:
      limits: {{ephemeral-storage: 100Mi}}
"
            ),
        ),
    );
    // Each container within its 10Mi (6 MiB), the emptyDir without a sizeLimit: 6 + 6 + 12
    // MiB is over the pod's 20Mi.
    node.write_manifest(
        "total.yaml",
        &pod_yaml(
            "total",
            "Always",
            &format!(
                "  containers:
  - name: a
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/tmp/f bs=1M count=6 && dd if=/dev/zero of=/data/f bs=1M count=12 && exec sleep 3600']
    resources:
      limits: {{ephemeral-storage: 10Mi}}
    volumeMounts: [{{name: data, mountPath: /data}}]
  - name: b
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/tmp/f bs=1M count=6 && exec sleep 3600']
    resources:
      limits: {{ephemeral-storage: 10Mi}}
  volumes:
  - name: data
    emptyDir: {{}}
"
            ),
        ),
    );
    assert_evicted(
        &node,
        "layer",
        "Container app exceeded its local ephemeral storage limit \"10Mi\". ",
    );
    assert_evicted(
        &node,
        "total",
        "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi. ",
    );
    assert!(node.agent_alive(), "the agent runs on");
}

#[test]
fn local_storage_capacity_isolation_false_turns_enforcement_off() {
    let mut node = Node::start_with(NodeConfig {
        kubelet_extra: "localStorageCapacityIsolation: false\n".to_owned(),
        ..NodeConfig::default()
    });
    node.write_manifest(
        "hog.yaml",
        &pod_yaml(
            "hog",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/data/f bs=1M count=30 && touch /data/done && exec sleep 3600']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    emptyDir: {{sizeLimit: 10Mi}}
"
            ),
        ),
    );
    let hog = node.wait_pod("hog", "running", |p| running(p, "c"));
    let done = empty_dir(&node, &hog, "data").join("done");
    node.wait_until("hog to finish writing", |_| done.exists());
    node.holds_for("hog", "running, not evicted", PAST_A_PASS, |p| {
        running(p, "c") && !evicted(p)
    });
    assert!(node.agent_alive(), "the agent runs on");
}
