//! Hostile pods against the real runtime (root): a container of the pod races the agent for a
//! `subPath` by swapping it between a directory and a symbolic link to a host directory, while
//! other containers of the pod start with that `subPath`; and a `subPath` that is a symbolic
//! link out of the volume. The host directory must never be mounted into a container, the
//! agent must stay up and the other pods must keep running. Run with `--test-threads=1`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpflet_tests::node::{IMAGE, Node, container_status, pod_yaml, running, sleeping_pod, uid};
use serde_json::Value;

/// Containers that start with the contested `subPath`.
const VICTIMS: usize = 8;

fn node() -> Node {
    Node::start("event")
}

/// Starts the pod `bystander` and waits until it runs.
fn bystander(node: &Node) {
    node.write_manifest("bystander.yaml", &sleeping_pod("bystander"));
    node.wait_pod("bystander", "running", |p| running(p, "c"));
}

/// A directory of the host the pod must never reach, holding one file `secret`.
fn host_secret(node: &Node) -> PathBuf {
    let dir = node.dir.path().join("host-secret");
    std::fs::create_dir(&dir).expect("create the host directory");
    std::fs::write(dir.join("secret"), "host only").expect("write the host file");
    dir
}

/// The names in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The mount points at or below `dir` (mountinfo field 5; the test's paths need no
/// unescaping).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(dir).expect("canonical node directory");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(&real))
        .collect()
}

/// The logs of every run of `container` of `pod` (a start the runtime failed counts as a run).
fn container_logs(node: &Node, pod: &Value, container: &str) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let dir = node
        .root_dir()
        .join("pods")
        .join(format!("default_{name}_{}", uid(pod)))
        .join(container);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect()
}

#[test]
fn swapping_a_sub_path_for_a_link_to_the_host_never_mounts_the_host() {
    let mut node = node();
    bystander(&node);
    let secret = host_secret(&node);
    // The flipper keeps `d` a directory half of the time and a link to the host directory
    // the other half, 50 ms each: every check the agent makes and every mount the runtime
    // makes lands on either at random. It renames the directory away and back rather than
    // deleting it: a pinned directory that was deleted cannot be mounted into a container
    // (the kernel refuses to bind a deleted mount root), which would fail every start.
    let flipper = format!(
        "mkdir /shared/real; while :; do \
         mv -T /shared/real /shared/d 2>/dev/null || {{ rm -rf /shared/d; mkdir -p /shared/real; continue; }}; \
         sleep 0.05; mv -T /shared/d /shared/real; ln -s {secret} /shared/d; sleep 0.05; rm -f /shared/d; done",
        secret = secret.display()
    );
    let mut containers = format!(
        "  - name: flipper
    image: {IMAGE}
    command: [sh, -c, '{flipper}']
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"
    );
    for i in 0..VICTIMS {
        containers.push_str(&format!(
            "  - name: v{i}
    image: {IMAGE}
    command: [sh, -c, 'echo v{i} > /d/marker-v{i}; if [ -e /d/secret ]; then echo SAW-HOST; else echo SAW-VOLUME; fi; exec sleep 3600']
    volumeMounts: [{{name: shared, mountPath: /d, subPath: d}}]
"
        ));
    }
    node.write_manifest(
        "race.yaml",
        &pod_yaml(
            "race",
            "Always",
            &format!(
                "  containers:
{containers}  volumes:
  - name: shared
    emptyDir: {{}}
"
            ),
        ),
    );
    // Each victim either started or was refused (the link was there at its check); a
    // refused one backs off like a crash, so it may not start again within the test.
    let escape = "leads out of the volume";
    let refused = |p: &Value, name: &str| {
        container_status(p, name)["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(escape))
    };
    let pod = node.wait_pod("race", "every victim started or refused", |p| {
        (0..VICTIMS).all(|i| {
            let name = format!("v{i}");
            running(p, &name) || refused(p, &name)
        })
    });
    let started: Vec<String> = (0..VICTIMS)
        .map(|i| format!("v{i}"))
        .filter(|name| running(&pod, name))
        .collect();

    let left = names(&secret);
    assert_eq!(
        left,
        BTreeSet::from(["secret".to_owned()]),
        "containers wrote into the host directory {}: the host directory was mounted as their \
         subPath",
        secret.display()
    );
    for name in &started {
        node.wait_until(&format!("{name}'s verdict in its log"), |n| {
            container_logs(n, &pod, name).contains("SAW-")
        });
        let log = container_logs(&node, &pod, name);
        assert!(
            log.contains("SAW-VOLUME") && !log.contains("SAW-HOST"),
            "{name} saw the host directory as its subPath: {log}"
        );
    }
    // Starts that met the link were refused: each is a warning in the log and counts on a
    // `Failed` event of the pod.
    let uid = uid(&pod);
    let logged = node
        .agent_log()
        .lines()
        .filter(|l| l.contains("refusing a subPath") && l.contains(&uid) && l.contains(escape))
        .count();
    let evented: u64 = node
        .events_of(&uid)
        .iter()
        .filter(|e| {
            e["type"] == "Warning"
                && e["reason"] == "Failed"
                && e["message"].as_str().is_some_and(|m| m.contains(escape))
        })
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum();
    eprintln!(
        "{} of {VICTIMS} victims started; {logged} starts refused (the link was there)",
        started.len()
    );
    assert!(
        logged + started.len() >= VICTIMS,
        "every victim was either started or refused ({logged} refusals logged)"
    );
    assert_eq!(
        usize::try_from(evented).expect("fits"),
        logged,
        "every refused start is a Failed event"
    );
    let pod = node.pod("race").expect("the race pod");
    assert!(running(&pod, "flipper"), "the flipper still runs: {pod:#}");
    assert!(node.agent_alive(), "the agent is up");
    let bystander = node.pod("bystander").expect("the bystander pod");
    assert!(
        running(&bystander, "c"),
        "the other pod keeps running: {bystander:#}"
    );

    // Removing the pod unmounts every pinned subPath and deletes its directory.
    let pod_dir = node.root_dir().join("pods").join(&uid);
    node.remove_manifest("race.yaml");
    node.wait_until("the race pod's directory to go", |_| !pod_dir.exists());
    assert_eq!(
        mounts_under(&node.root_dir()),
        Vec::<PathBuf>::new(),
        "nothing stays mounted below the agent's root directory"
    );
    assert_eq!(names(&secret), BTreeSet::from(["secret".to_owned()]));
}

#[test]
fn a_sub_path_linking_out_of_the_volume_is_refused_with_an_event() {
    let mut node = node();
    bystander(&node);
    let secret = host_secret(&node);
    node.write_manifest(
        "escape.yaml",
        &pod_yaml(
            "escape",
            "Always",
            &format!(
                "  initContainers:
  - name: setup
    image: {IMAGE}
    command: [sh, -c, 'ln -s {secret} /shared/out']
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: victim
    image: {IMAGE}
    command: [sh, -c, 'echo x > /out/marker; exec sleep 3600']
    volumeMounts: [{{name: shared, mountPath: /out, subPath: out}}]
  volumes:
  - name: shared
    emptyDir: {{}}
",
                secret = secret.display()
            ),
        ),
    );
    let pod = node.wait_pod("escape", "the init container to finish", |p| {
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    });
    let uid = uid(&pod);
    let refused = |e: &Value| {
        e["type"] == "Warning"
            && e["reason"] == "Failed"
            && e["message"].as_str().is_some_and(|m| {
                m.contains("container \"victim\"")
                    && m.contains("subPath \"out\"")
                    && m.contains("leads out of the volume")
            })
    };
    node.wait_until("a Failed event naming the subPath", |n| {
        n.events_of(&uid).iter().any(refused)
    });
    node.holds_for(
        "escape",
        "the victim not running",
        Duration::from_secs(3),
        |p| !running(p, "victim"),
    );
    let log = node.agent_log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("subPath \"out\"")
            && l.contains("leads out of the volume")),
        "the refusal is logged as a warning"
    );
    assert_eq!(
        names(&secret),
        BTreeSet::from(["secret".to_owned()]),
        "nothing was written into the host directory"
    );
    assert!(node.agent_alive(), "the agent is up");
    let bystander = node.pod("bystander").expect("the bystander pod");
    assert!(
        running(&bystander, "c"),
        "the other pod keeps running: {bystander:#}"
    );
}
