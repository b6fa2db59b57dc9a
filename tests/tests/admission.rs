//! Admission of static pods (standalone mode), as upstream's kubelet admits them: pods that
//! ask for more cpu or memory than the node's allocatable, or whose `nodeSelector` does not
//! match the node's labels, are `Failed` with upstream's reason and message and an event,
//! never reach the runtime, and leave a running pod alone. (Taints are cluster mode's:
//! `registerWithTaints` needs `--kubeconfig`, and static pods skip the taint check.)
//!
//! Needs root (the node runs a private containerd and real pods).
use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, container_status, phase, pod_yaml, restarts, running, sleeping_pod,
    uid,
};

#[test]
fn static_pods_that_do_not_fit_or_match_the_node_are_rejected_and_others_run_on() {
    let node = Node::start_with(NodeConfig::pleg("event"));
    node.write_manifest("runner.yaml", &sleeping_pod("runner"));
    let runner = node.wait_pod("runner", "running", |p| running(p, "c"));
    let runner_id = container_status(&runner, "c")["containerID"].clone();

    let container = |resources: &str| {
        format!(
            "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sleep, '3600']\n{resources}"
        )
    };
    let cases = [
        (
            "too-much-cpu",
            container("    resources: {requests: {cpu: '64'}}\n"),
            "OutOfcpu",
            "Node didn't have enough resource: cpu, requested: 64000, used: 0, capacity: ",
        ),
        (
            "too-much-memory",
            container("    resources: {requests: {memory: 64Ti}}\n"),
            "OutOfmemory",
            "Node didn't have enough resource: memory, requested: 70368744177664, used: 0, \
             capacity: ",
        ),
        (
            "other-selector",
            format!("  nodeSelector: {{disk: ssd}}\n{}", container("")),
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
        ),
    ];
    for (name, body, _, _) in &cases {
        node.write_manifest(&format!("{name}.yaml"), &pod_yaml(name, "Always", body));
    }
    for (name, _, reason, message) in &cases {
        let pod = node.wait_pod(name, "rejected", |p| phase(p) == "Failed");
        assert_eq!(pod["status"]["reason"], *reason, "{pod:#}");
        let full = format!("Pod was rejected: {message}");
        assert!(
            pod["status"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&full)),
            "{name}: {pod:#}"
        );
        assert_eq!(
            node.runtime_ids(&uid(&pod)),
            (Vec::new(), Vec::new()),
            "{name} never reaches the runtime"
        );
        let events = node.events_of(&uid(&pod));
        assert!(
            events.iter().any(|e| e["reason"] == *reason),
            "a {reason} event for {name}: {events:#?}"
        );
    }

    let runner = node.pod("runner").expect("the runner pod listed");
    assert!(running(&runner, "c"), "{runner:#}");
    assert_eq!(
        container_status(&runner, "c")["containerID"],
        runner_id,
        "{runner:#}"
    );
    assert_eq!(restarts(&runner, "c"), 0, "{runner:#}");
    let all = node.all_runtime_containers();
    assert_eq!(
        all.len(),
        2,
        "only the runner's sandbox and container: {all:?}"
    );
}
