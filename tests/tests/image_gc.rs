//! Image garbage collection for real: the `bpflet` binary and a private containerd (1.6, or
//! 2 with `BPFLET_TEST_CONTAINERD=2`) whose root (its images and snapshots) is a tmpfs of
//! 256 MiB the test mounts, so the image filesystem fills up with a few images. The images
//! are the offline busybox plus a filler layer of their own, pushed to the test registry
//! and pulled by the agent for pods. The GC period is shortened through the agent's
//! `BPFLET_IMAGE_GC_PERIOD` test switch. Needs root; run with `--test-threads=1`.

use std::path::Path;

use bpflet_tests::node::{IMAGE, Node, NodeConfig, pod_yaml, running, uid};
use bpflet_tests::registry::{PASSWORD, Registry};

/// The size of the test's image filesystem.
const IMAGE_FS_BYTES: u64 = 256 << 20;
/// Each filler image's own layer, in MiB (on disk twice: the layer blob and its snapshot).
const FILLER_MIB: u32 = 16;

/// A pod running `sleep` from `image`.
fn sleeper(name: &str, image: &str, policy: &str) -> String {
    pod_yaml(
        name,
        "Always",
        &format!(
            "  containers:\n  - name: c\n    image: '{image}'\n    imagePullPolicy: {policy}\n    command: [sleep, '3600']\n"
        ),
    )
}

/// Usage of the filesystem holding `path` in percent, as upstream computes it
/// (`100 - available * 100 / capacity`).
fn usage_percent(path: &Path) -> u64 {
    let v = nix::sys::statvfs::statvfs(path).expect("statvfs");
    let capacity = v.blocks() * v.fragment_size();
    let available = v.blocks_available() * v.fragment_size();
    100 - available * 100 / capacity
}

/// The image references containerd holds (tags and digests).
fn image_refs(node: &Node) -> Vec<String> {
    node.ctr(&["images", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn has_image(node: &Node, reference: &str) -> bool {
    image_refs(node).iter().any(|r| r == reference)
}

/// The value of counter `kubelet_image_garbage_collected_total{reason}` (0 when absent).
fn collected(node: &Node, reason: &str) -> u64 {
    let text = node.get_text("/metrics").unwrap_or_default();
    let prefix = format!("kubelet_image_garbage_collected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Builds filler image `name`, pushes it as `<registry>/<name>:v1`; the full reference.
fn push_filler(node: &Node, registry: &Registry, name: &str) -> String {
    let local = format!("bpflet.local/{name}:v1");
    let archive = xtask::images::build_filler(&node.dir.path().join("fillers"), &local, FILLER_MIB)
        .expect("build a filler image");
    registry.push(&archive.path, &local, &format!("{name}:v1"))
}

/// Runs a pod from `image` until it runs, then removes it and waits until the runtime
/// holds nothing of it: the image was used, and is not any more.
fn use_once(node: &Node, name: &str, image: &str) {
    let file = format!("{name}.yaml");
    node.write_manifest(&file, &sleeper(name, image, "IfNotPresent"));
    let p = node.wait_pod(name, "running from the pulled image", |p| running(p, "c"));
    let pod_uid = uid(&p);
    node.remove_manifest(&file);
    node.wait_until(&format!("pod {name} gone from the runtime"), |n| {
        n.pod(name).is_none() && n.runtime_ids(&pod_uid) == (Vec::new(), Vec::new())
    });
}

fn write_credentials(node: &Node, registry: &Registry) {
    std::fs::create_dir_all(node.root_dir()).expect("root dir");
    std::fs::write(
        node.root_dir().join("config.json"),
        registry.docker_config(PASSWORD),
    )
    .expect("write config.json");
}

/// A node collecting images every second with `gc` settings.
fn gc_node(gc: &str, root_bytes: Option<u64>) -> Node {
    Node::start_with(NodeConfig {
        kubelet_extra: gc.to_owned(),
        wrapper: Some(vec!["env".into(), "BPFLET_IMAGE_GC_PERIOD=1s".into()]),
        containerd_root_bytes: root_bytes,
        ..NodeConfig::default()
    })
}

#[test]
fn above_the_high_threshold_unused_images_go_oldest_first_and_never_one_in_use() {
    const HIGH: u64 = 60;
    const LOW: u64 = 45;
    let node = gc_node(
        &format!(
            "imageGCHighThresholdPercent: {HIGH}\nimageGCLowThresholdPercent: {LOW}\nimageMinimumGCAge: 1s\n"
        ),
        Some(IMAGE_FS_BYTES),
    );
    let root = node.ctd.root_dir.clone();
    let registry = Registry::for_node(&node);
    write_credentials(&node, &registry);
    // A pod that runs throughout, from the offline image.
    node.write_manifest("steady.yaml", &sleeper("steady", IMAGE, "Never"));
    node.wait_pod("steady", "running", |p| running(p, "c"));
    let before = usage_percent(&root);
    assert!(before < HIGH, "the image filesystem starts at {before} %");

    // Four images used once each, in order, then one kept running.
    let images: Vec<String> = (1..=5)
        .map(|i| push_filler(&node, &registry, &format!("filler{i}")))
        .collect();
    for (i, image) in images[..4].iter().enumerate() {
        use_once(&node, &format!("once{}", i + 1), image);
    }
    node.write_manifest("kept.yaml", &sleeper("kept", &images[4], "IfNotPresent"));
    node.wait_pod("kept", "running", |p| running(p, "c"));

    node.wait_until("image GC freed space", |n| collected(n, "space") > 0);
    node.wait_until("usage down to the low threshold", |_| {
        usage_percent(&root) <= LOW
    });
    let refs = image_refs(&node);
    let present: Vec<bool> = images.iter().map(|i| refs.contains(i)).collect();
    // The oldest went first: what is left of the four is the newest ones.
    assert!(!present[0], "the oldest unused image went: {refs:#?}");
    let first_kept = present[..4].iter().position(|p| *p).unwrap_or(4);
    assert!(
        present[first_kept..4].iter().all(|p| *p),
        "removed oldest first: {present:?}"
    );
    // Never the image of a running pod, nor the sandbox image (pinned on containerd 2,
    // the runtime's sandbox image on 1.6).
    assert!(present[4], "the running pod's image stays: {refs:#?}");
    assert!(has_image(&node, IMAGE), "the steady pod's image stays");
    assert!(
        has_image(&node, xtask::images::PAUSE_IMAGE),
        "the sandbox image stays: {refs:#?}"
    );
    assert!(running(&node.pod("steady").expect("steady"), "c"));
    assert!(running(&node.pod("kept").expect("kept"), "c"));
    let node_events = node.events_of("testnode");
    assert!(
        !node_events
            .iter()
            .any(|e| e["reason"] == "FreeDiskSpaceFailed" || e["reason"] == "ImageGCFailed"),
        "{node_events:#?}"
    );
}

#[test]
fn images_unused_for_the_maximum_age_go_whatever_the_usage() {
    let node = gc_node(
        "imageGCHighThresholdPercent: 100\nimageMinimumGCAge: 1s\nimageMaximumGCAge: 8s\n",
        None,
    );
    let registry = Registry::for_node(&node);
    write_credentials(&node, &registry);
    node.write_manifest("steady.yaml", &sleeper("steady", IMAGE, "Never"));
    node.wait_pod("steady", "running", |p| running(p, "c"));
    let stale = push_filler(&node, &registry, "stale");
    use_once(&node, "once", &stale);
    assert!(has_image(&node, &stale), "{:#?}", image_refs(&node));

    node.wait_until("the unused image aged out", |n| !has_image(n, &stale));
    assert!(collected(&node, "age") >= 1);
    assert_eq!(collected(&node, "space"), 0);
    assert!(has_image(&node, IMAGE), "the running pod's image stays");
    assert!(has_image(&node, xtask::images::PAUSE_IMAGE));
    assert!(running(&node.pod("steady").expect("steady"), "c"));
}
