//! Admission of API pods as upstream's kubelet admits them, on the real control plane
//! (tests/k8s): pods bound to the node by `nodeName` (past the scheduler) that ask for more
//! cpu or memory than the node's allocatable, whose `nodeSelector` does not match its
//! labels, or that do not tolerate its `NoExecute` taint (`--register-with-taints`) are
//! `Failed` with upstream's reason and message and a Warning event, never get a sandbox, and
//! leave a running pod alone.
//!
//! Needs root (the node runs a private containerd and real pods).
use bpflet_tests::cluster::{
    PodYaml, api_event, api_pod, joined_node, node_condition, running_and_ready, wait_for,
    wait_for_default_service_account,
};
use serde_json::Value;

const TAINT: &str = "dedicated=admission:NoExecute";
const TOLERATION: &str =
    "  tolerations: [{key: dedicated, operator: Equal, value: admission, effect: NoExecute}]\n";

#[test]
fn pods_that_do_not_fit_or_match_the_node_are_rejected_and_a_running_pod_runs_on() {
    let (_dir, cp, node) = joined_node(
        "bpflet-cluster-admission-",
        &["--register-with-taints", TAINT],
    );
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);

    PodYaml::new("runner").bound().spec(TOLERATION).apply(&cp);
    let runner = wait_for(
        &node,
        "the runner pod Running and Ready",
        running_and_ready(&cp, "runner"),
    );
    let runner_container = runner["status"]["containerStatuses"][0]["containerID"].clone();

    // (pod, what makes it not fit, upstream's reason, how its message starts)
    let cases = [
        (
            "too-much-cpu",
            PodYaml::new("too-much-cpu")
                .bound()
                .spec(TOLERATION)
                .container("    resources: {requests: {cpu: '64'}}\n"),
            "OutOfcpu",
            "Node didn't have enough resource: cpu, requested: 64000, used: 0, capacity: ",
        ),
        (
            "too-much-memory",
            PodYaml::new("too-much-memory")
                .bound()
                .spec(TOLERATION)
                .container("    resources: {requests: {memory: 64Ti}}\n"),
            "OutOfmemory",
            "Node didn't have enough resource: memory, requested: 70368744177664, used: 0, \
             capacity: ",
        ),
        (
            "other-selector",
            PodYaml::new("other-selector")
                .bound()
                .spec(TOLERATION)
                .spec("  nodeSelector: {disk: ssd}\n"),
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
        ),
        (
            "untolerated",
            PodYaml::new("untolerated").bound(),
            "TaintToleration",
            "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate",
        ),
    ];
    for (_, pod, _, _) in &cases {
        pod.apply(&cp);
    }
    for (name, _, reason, message) in &cases {
        let event = wait_for(
            &node,
            &format!("a {reason} event for {name}"),
            api_event(&cp, name, reason),
        );
        assert_eq!(event["type"], "Warning", "{event}");
        assert_eq!(event["source"]["component"], "kubelet", "{event}");
        assert!(
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message)),
            "{event}"
        );
        // The taint eviction controller deletes a pod that does not tolerate its node's
        // NoExecute taint, so that pod may be gone once rejected; the others stay Failed.
        let pod = wait_for(&node, &format!("{name} Failed"), || {
            let p = match api_pod(&cp, name) {
                Ok(p) => p,
                Err(e) if *name == "untolerated" && e.contains("NotFound") => {
                    return Ok(Value::Null);
                }
                Err(e) => return Err(e),
            };
            if p["status"]["phase"] == "Failed" {
                Ok(p)
            } else {
                Err(format!("{}", p["status"]))
            }
        });
        if !pod.is_null() {
            let status = &pod["status"];
            assert_eq!(status["reason"], *reason, "{name}: {status}");
            let full = format!("Pod was rejected: {message}");
            assert!(
                status["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&full)),
                "{name}: {status}"
            );
            let uid = pod["metadata"]["uid"].as_str().expect("uid");
            let (sandboxes, containers) = node.runtime_ids(uid);
            assert!(
                sandboxes.is_empty() && containers.is_empty(),
                "{name} in the runtime: {sandboxes:?} {containers:?}"
            );
        }
    }

    // Only the runner is in the runtime, with the same container and no restart.
    let all = node.all_runtime_containers();
    assert_eq!(
        all.len(),
        2,
        "only the runner's sandbox and container: {all:?}"
    );
    let runner = api_pod(&cp, "runner").expect("the runner pod");
    let container = &runner["status"]["containerStatuses"][0];
    assert_eq!(runner["status"]["phase"], "Running", "{}", runner["status"]);
    assert_eq!(container["containerID"], runner_container, "{container}");
    assert_eq!(container["restartCount"], 0, "{container}");
    assert!(container["state"]["running"].is_object(), "{container}");

    drop(node);
    cp.stop().expect("teardown of the control plane");
}
