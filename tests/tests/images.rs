//! Image pulls for real: the `bpflet` binary and a private containerd (1.6, or 2 with
//! `BPFLET_TEST_CONTAINERD=2`) pulling from a real registry (Debian's `docker-registry`
//! with TLS and htpasswd auth, on 127.0.0.1) that holds the offline busybox image.
//! Credentials come from the node's docker config, `<root-dir>/config.json`, as upstream's
//! kubelet reads it. Needs root; run with `--test-threads=1`.

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, container_status, free_port, pod_yaml, restarts, running,
};
use bpflet_tests::registry::{PASSWORD, Registry};
use serde_json::Value;

/// A pod running `sleep` from `image` under `policy` (none: the default for the tag).
fn pod(name: &str, image: &str, policy: Option<&str>) -> String {
    let policy = policy.map_or(String::new(), |p| format!("    imagePullPolicy: {p}\n"));
    pod_yaml(
        name,
        "Always",
        &format!(
            "  containers:\n  - name: c\n    image: '{image}'\n{policy}    command: [sleep, '3600']\n"
        ),
    )
}

fn waiting(p: &Value) -> (&str, &str) {
    let w = &container_status(p, "c")["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default(),
        w["message"].as_str().unwrap_or_default(),
    )
}

/// (reason, message) of the events about pod `name`.
fn events(node: &Node, name: &str) -> Vec<(String, String)> {
    let Some(p) = node.pod(name) else {
        return Vec::new();
    };
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    node.events_of(&uid)
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn has_event(node: &Node, name: &str, reason: &str, text: &str) -> bool {
    events(node, name)
        .iter()
        .any(|(r, m)| r == reason && m.contains(text))
}

/// How many times pod `name`'s pull started (repeats count on one event).
fn pulling_count(node: &Node, name: &str) -> u64 {
    let Some(p) = node.pod(name) else { return 0 };
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    node.events_of(&uid)
        .iter()
        .filter(|e| e["reason"] == "Pulling")
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

fn write_credentials(node: &Node, config: &str) {
    std::fs::create_dir_all(node.root_dir()).expect("root dir");
    std::fs::write(node.root_dir().join("config.json"), config).expect("write config.json");
}

#[test]
fn each_pull_policy_against_a_real_registry() {
    let node = Node::start_with(NodeConfig::pleg("event"));
    let registry = Registry::for_node(&node);
    let v1 = registry.push_busybox(&node, "busybox:v1");
    write_credentials(&node, &registry.docker_config(PASSWORD));

    // IfNotPresent (the default for a tagged image), missing: pulled.
    node.write_manifest("first.yaml", &pod("first", &v1, None));
    node.wait_pod("first", "running from the pulled image", |p| {
        running(p, "c")
    });
    assert!(has_event(
        &node,
        "first",
        "Pulling",
        &format!("Pulling image \"{v1}\"")
    ));
    let pulled = events(&node, "first")
        .into_iter()
        .find(|(r, _)| r == "Pulled")
        .expect("a Pulled event");
    assert!(
        pulled
            .1
            .starts_with(&format!("Successfully pulled image \"{v1}\" in "))
            && pulled.1.contains(" including waiting). Image size: ")
            && pulled.1.ends_with(" bytes."),
        "{pulled:?}"
    );

    // IfNotPresent, present: not pulled again.
    node.write_manifest("again.yaml", &pod("again", &v1, Some("IfNotPresent")));
    node.wait_pod("again", "running", |p| running(p, "c"));
    let again = events(&node, "again");
    assert!(
        again.iter().any(|(r, m)| r == "Pulled"
            && m == &format!("Container image \"{v1}\" already present on machine")),
        "{again:?}"
    );
    assert!(!again.iter().any(|(r, _)| r == "Pulling"), "{again:?}");

    // Always, present: pulled again.
    node.write_manifest("always.yaml", &pod("always", &v1, Some("Always")));
    node.wait_pod("always", "running", |p| running(p, "c"));
    assert!(
        has_event(&node, "always", "Pulling", &v1)
            && has_event(&node, "always", "Pulled", "Successfully pulled image"),
        "{:?}",
        events(&node, "always")
    );
    let log = registry.log();
    let manifest_gets = log
        .lines()
        // The access log: containerd resolves the tag with HEAD (or GET).
        .filter(|l| {
            l.contains("/v2/busybox/manifests/v1 HTTP/1.1\" 200 ") && l.contains("containerd/")
        })
        .count();
    assert!(
        manifest_gets >= 2,
        "the registry resolved the tag for both pulls ({manifest_gets}):\n{log}"
    );

    // Never, missing: ErrImageNeverPull, and nothing asked of the registry.
    let absent = format!("{}/busybox:absent", registry.host);
    node.write_manifest("never.yaml", &pod("never", &absent, Some("Never")));
    let p = node.wait_pod("never", "ErrImageNeverPull", |p| {
        waiting(p).0 == "ErrImageNeverPull"
    });
    assert_eq!(
        waiting(&p).1,
        format!("Container image \"{absent}\" is not present with pull policy of Never")
    );
    assert!(has_event(&node, "never", "ErrImageNeverPull", &absent));
    assert!(!registry.log().contains("busybox/manifests/absent"));

    // Two pulls, one size bucket.
    let metrics = node.get_text("/metrics").expect("GET /metrics");
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "kubelet_image_pull_duration_seconds_count{image_size_in_bytes=\"0-10MB\"}",
            )
        })
        .unwrap_or_else(|| panic!("no pull metric:\n{metrics}"));
    assert!(count.ends_with(" 2"), "{count}");
}

#[test]
fn a_pull_that_needs_credentials_fails_without_them_and_works_with_them() {
    let node = Node::start_with(NodeConfig::pleg("event"));
    let registry = Registry::for_node(&node);
    let image = registry.push_busybox(&node, "private/busybox:v1");

    // No credentials: the registry says 401.
    node.write_manifest("private.yaml", &pod("private", &image, None));
    let p = node.wait_pod("private", "ErrImagePull", |p| {
        waiting(p).0 == "ErrImagePull"
    });
    let (_, message) = waiting(&p);
    // containerd 1.6 passes on the registry's "401 Unauthorized"; containerd 2 says
    // "authorization failed: no basic auth credentials".
    let lower = message.to_lowercase();
    assert!(
        message.starts_with(&format!("Failed to pull image \"{image}\": "))
            && (lower.contains("unauthorized") || lower.contains("authorization failed")),
        "{message}"
    );
    assert!(has_event(
        &node,
        "private",
        "Failed",
        "Failed to pull image"
    ));
    assert!(has_event(&node, "private", "Failed", "Error: ErrImagePull"));
    let p = node.wait_pod("private", "ImagePullBackOff", |p| {
        waiting(p).0 == "ImagePullBackOff"
    });
    assert!(
        waiting(&p).1.starts_with(&format!(
            "Back-off pulling image \"{image}\": ErrImagePull: "
        )),
        "{p:#}"
    );

    // A wrong password: still 401, on the next try.
    write_credentials(&node, &registry.docker_config("wrong"));
    let pulls = |n: &Node| pulling_count(n, "private");
    let before = pulls(&node);
    node.wait_until("another failed pull", |n| pulls(n) > before);
    assert!(!running(&node.pod("private").expect("pod"), "c"));

    // The right one: the next try pulls and the container runs.
    write_credentials(&node, &registry.docker_config(PASSWORD));
    node.wait_pod("private", "running with credentials", |p| running(p, "c"));
    assert!(has_event(
        &node,
        "private",
        "Pulled",
        "Successfully pulled image"
    ));
}

#[test]
fn an_unknown_image_or_registry_fails_clearly_and_disturbs_no_other_pod() {
    let node = Node::start_with(NodeConfig::pleg("event"));
    let registry = Registry::for_node(&node);
    write_credentials(&node, &registry.docker_config(PASSWORD));
    node.write_manifest("steady.yaml", &pod("steady", IMAGE, Some("Never")));
    let steady = node.wait_pod("steady", "running", |p| running(p, "c"));
    let steady_id = container_status(&steady, "c")["containerID"].clone();

    let unknown_image = format!("{}/nothing/here:v1", registry.host);
    let unknown_registry = format!("127.0.0.1:{}/busybox:v1", free_port());
    node.write_manifest("noimage.yaml", &pod("noimage", &unknown_image, None));
    node.write_manifest(
        "noregistry.yaml",
        &pod("noregistry", &unknown_registry, None),
    );
    let p = node.wait_pod("noimage", "ErrImagePull", |p| {
        waiting(p).0 == "ErrImagePull"
    });
    let message = waiting(&p).1.to_owned();
    assert!(
        message.starts_with(&format!("Failed to pull image \"{unknown_image}\": "))
            && message.contains("not found"),
        "{message}"
    );
    let p = node.wait_pod("noregistry", "ErrImagePull", |p| {
        waiting(p).0 == "ErrImagePull"
    });
    let message = waiting(&p).1.to_owned();
    assert!(
        message.starts_with(&format!("Failed to pull image \"{unknown_registry}\": "))
            && message.contains("connection refused"),
        "{message}"
    );
    for name in ["noimage", "noregistry"] {
        node.wait_pod(name, "ImagePullBackOff", |p| {
            waiting(p).0 == "ImagePullBackOff"
        });
        assert!(has_event(&node, name, "Failed", "Failed to pull image"));
    }
    let steady = node.pod("steady").expect("steady");
    assert!(running(&steady, "c"), "{steady:#}");
    assert_eq!(restarts(&steady, "c"), 0);
    assert_eq!(
        container_status(&steady, "c")["containerID"],
        steady_id,
        "the running pod kept its container"
    );
    assert!(node.agent_log().lines().all(|l| !l.contains("panicked")));
}
