//! Hostile or broken pod sources against the real agent: manifests whose identifiers would
//! become paths outside the agent's directories, a manifest directory that cannot be read,
//! manifests built to exhaust the parser, FIFOs where manifests should be, two manifests
//! claiming one pod, and rejected manifests whose log must say where the error is. Each test
//! checks the host, the other pods and the agent's health. Needs root; run with
//! `--test-threads=1`.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, ServeBody, WAIT, container_status, free_port, http_get, running,
    sleeping_pod, tail, uid,
};
use serde_json::Value;

/// A node whose agent logs JSON lines.
fn config(mut config: NodeConfig) -> NodeConfig {
    config
        .args
        .extend(["--log-format".to_owned(), "json".to_owned()]);
    config
}

/// The JSON log lines of the agent whose message is `message`.
fn log_lines(node: &Node, message: &str) -> Vec<Value> {
    node.agent_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// The `error` field of every "pod manifest rejected" log line.
fn rejections(node: &Node) -> Vec<String> {
    log_lines(node, "pod manifest rejected")
        .iter()
        .filter_map(|v| v["fields"]["error"].as_str().map(str::to_owned))
        .collect()
}

/// The first rejection whose text contains every one of `parts`.
fn rejection(node: &Node, parts: &[&str]) -> Option<String> {
    rejections(node)
        .into_iter()
        .find(|e| parts.iter().all(|p| e.contains(p)))
}

/// A pod like [`sleeping_pod`] with `metadata.uid: uid`.
fn pod_with_uid(name: &str, uid: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  uid: '{uid}'
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: {IMAGE}
    command: [sleep, '3600']
"
    )
}

/// [`pod_with_uid`] as JSON, for a `List` served at `--manifest-url`.
fn pod_json(name: &str, uid: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "uid": uid},
        "spec": {
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}],
        },
    })
}

/// A UID that, joined below `logs_dir` as `<ns>_<name>_<uid>`, resolves to `target`.
fn escaping_uid(logs_dir: &Path, target: &Path) -> String {
    let depth = logs_dir
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    let target = target.strip_prefix("/").expect("absolute target");
    format!("z/{}{}", "../".repeat(depth + 1), target.display())
}

/// The container id of container `c` of pod `name`.
fn container_id(node: &Node, name: &str) -> String {
    let pod = node.pod(name).unwrap_or(Value::Null);
    container_status(&pod, "c")["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("containerd://")
        .to_owned()
}

/// SIGTERM to the agent; panics unless it exits within [`WAIT`].
fn sigterm_and_wait(node: &mut Node) {
    let tail_of_log = tail(&node.agent_log(), 40);
    let child = node.agent().expect("the agent runs");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait for the agent").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the agent did not exit within {WAIT:?} of SIGTERM\n{tail_of_log}");
}

/// `metadata.uid` becomes part of the pod's log directory, which termination removes
/// recursively: a UID with `..` components must be refused (from a file and from
/// `--manifest-url`), and nothing outside the agent's directories may be removed.
///
/// The attack: pod `evilf` from the URL with UID `zf` runs, so its log directory
/// `<logs>/default_evilf-testnode_zf` exists; a manifest file for a pod of the same name
/// with UID `zf/../../<...>/decoy/file` names, through that directory, a directory outside;
/// removing that manifest removed it. The same the other way round (anchor in a file,
/// attack from the URL).
#[test]
fn uid_escaping_the_logs_dir_is_refused_and_the_host_dir_survives() {
    let decoy = tempfile::Builder::new()
        .prefix("bpflet-decoy-")
        .tempdir()
        .expect("decoy dir");
    for d in ["file", "url"] {
        std::fs::create_dir(decoy.path().join(d)).expect("decoy subdir");
        std::fs::write(decoy.path().join(d).join("precious"), "keep me").expect("decoy file");
    }
    let server = ServeBody::start(b"");
    let mut cfg = config(NodeConfig {
        kubelet_extra: "httpCheckFrequency: 1s\n".to_owned(),
        ..NodeConfig::default()
    });
    cfg.args
        .extend(["--manifest-url".to_owned(), server.url("/pods")]);
    let node = Node::start_with(cfg);
    let url = server.url("/pods");
    let logs_dir = node.root_dir().join("pods");
    let escaping = |anchor: &str, target: &str| {
        escaping_uid(&logs_dir, &decoy.path().join(target)).replacen('z', anchor, 1)
    };
    let file_uid = escaping("zf", "file");
    let url_uid = escaping("zu", "url");
    let list = |items: &[Value]| {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    };
    // The anchors: legitimate pods whose log directories the attacks climb through.
    node.write_manifest("anchor.yaml", &pod_with_uid("evilu", "zu"));
    server.set(list(&[pod_json("evilf", "zf")]).as_bytes());
    node.wait_pod("evilu", "running", |p| running(p, "c"));
    node.wait_pod("evilf", "running", |p| running(p, "c"));
    assert!(logs_dir.join("default_evilf-testnode_zf").is_dir());

    // The attacks.
    node.write_manifest("evil.yaml", &pod_with_uid("evilf", &file_uid));
    server.set(list(&[pod_json("evilf", "zf"), pod_json("evilu", &url_uid)]).as_bytes());
    let handled = |n: &Node, origin: &str, uid: &str| {
        rejection(n, &[origin, "metadata.uid"]).is_some()
            || log_lines(n, "new pod")
                .iter()
                .any(|l| l["fields"]["pod"].as_str().unwrap_or("").contains(uid))
    };
    node.wait_until("both attacks to be refused or taken", |n| {
        handled(n, "evil.yaml", &file_uid) && handled(n, &url, &url_uid)
    });
    let taken = |n: &Node| {
        log_lines(n, "new pod")
            .iter()
            .filter(|l| {
                let pod = l["fields"]["pod"].as_str().unwrap_or("");
                pod.contains(&file_uid) || pod.contains(&url_uid)
            })
            .count()
    };
    let started = taken(&node);
    // Remove both; wait until the agent is done with them.
    node.remove_manifest("evil.yaml");
    server.set(list(&[pod_json("evilf", "zf")]).as_bytes());
    node.wait_until("the agent to be done with the attacks", |n| {
        log_lines(n, "pod terminated")
            .iter()
            .filter(|l| {
                let pod = l["fields"]["pod"].as_str().unwrap_or("");
                pod.contains(&file_uid) || pod.contains(&url_uid)
            })
            .count()
            >= started
    });
    for d in ["file", "url"] {
        assert!(
            decoy.path().join(d).join("precious").exists(),
            "bpflet removed {} (outside its directories) when the pod went",
            decoy.path().join(d).display()
        );
    }
    assert!(
        rejection(&node, &["evil.yaml", "metadata.uid"]).is_some(),
        "no rejection of evil.yaml naming metadata.uid: {:#?}",
        rejections(&node)
    );
    assert!(
        rejection(&node, &[&url, "metadata.uid"]).is_some(),
        "no rejection of the URL's pod naming metadata.uid: {:#?}",
        rejections(&node)
    );
    assert_eq!(started, 0, "an attack was taken as a pod");
    // The anchors were never disturbed.
    for name in ["evilu", "evilf"] {
        let pod = node.pod(name).expect("anchor pod");
        assert!(running(&pod, "c"), "{pod:#}");
    }
}

/// A manifest directory that cannot be read says nothing about the pods: they keep running
/// (same container) while it is away, and come back under the source's control when it
/// returns.
#[test]
fn unreadable_manifest_dir_keeps_pods_until_it_returns() {
    let node = Node::start_with(config(NodeConfig::default()));
    node.write_manifest("keep.yaml", &sleeping_pod("keep"));
    let pod = node.wait_pod("keep", "running", |p| running(p, "c"));
    let pod_uid = uid(&pod);
    let before = container_id(&node, "keep");
    assert!(!before.is_empty(), "{pod:#}");

    let away = node.dir.path().join("manifests.away");
    std::fs::rename(node.manifests(), &away).expect("rename the manifest dir away");
    // The agent must notice (a warning) or, wrongly, drop the pod.
    node.wait_until("the agent to notice the directory is gone", |n| {
        !log_lines(n, "cannot read the static pod path; keeping its pods").is_empty()
            || n.pod("keep").is_none()
    });
    // Two rescans (fileCheckFrequency 2s) and more.
    node.holds_for(
        "keep",
        "running with the same container",
        Duration::from_secs(6),
        |p| {
            running(p, "c")
                && container_status(p, "c")["containerID"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&before))
        },
    );
    assert_eq!(node.task_status(&before).as_deref(), Some("RUNNING"));
    let (sandboxes, _) = node.runtime_ids(&pod_uid);
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");

    std::fs::rename(&away, node.manifests()).expect("rename the manifest dir back");
    // Under control again: a new manifest starts, a removed one stops.
    node.write_manifest("new.yaml", &sleeping_pod("new"));
    node.wait_pod("new", "running", |p| running(p, "c"));
    assert_eq!(container_id(&node, "keep"), before, "keep was restarted");
    node.remove_manifest("keep.yaml");
    node.wait_until("keep to be removed", |n| n.pod("keep").is_none());
    node.wait_until("keep's sandbox to go", |n| {
        n.runtime_ids(&pod_uid).0.is_empty()
    });
}

/// File-descriptor exhaustion (EMFILE) makes the manifest directory unlistable: the pods
/// stay (same container, task running) and the agent takes the directory up again once it
/// has descriptors. The agent's soft `RLIMIT_NOFILE` is lowered to 1 from outside, so every
/// new descriptor fails while the ones it holds keep working; pod state is read with `ctr`
/// meanwhile (the agent cannot accept connections either).
#[test]
fn fd_exhaustion_keeps_pods() {
    let mut node = Node::start_with(config(NodeConfig::default()));
    node.write_manifest("keep.yaml", &sleeping_pod("keep"));
    let pod = node.wait_pod("keep", "running", |p| running(p, "c"));
    let pod_uid = uid(&pod);
    let before = container_id(&node, "keep");
    let pid = libc::pid_t::try_from(node.agent().expect("agent").id()).expect("pid");
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child with valid pointers.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "read the agent's RLIMIT_NOFILE");
    let starved = libc::rlimit {
        rlim_cur: 1,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &starved, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "lower the agent's RLIMIT_NOFILE");
    // A change in the directory makes the agent look (and fail to open it).
    std::fs::write(node.manifests().join(".poke"), "").expect("poke the directory");
    node.wait_until("the agent to fail to list the directory", |n| {
        !log_lines(n, "cannot read the static pod path; keeping its pods").is_empty()
            || n.runtime_ids(&pod_uid).1.is_empty()
    });
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        assert_eq!(
            node.task_status(&before).as_deref(),
            Some("RUNNING"),
            "keep's container stopped while the agent had no descriptors\n{}",
            tail(&node.agent_log(), 40)
        );
        assert_eq!(node.runtime_ids(&pod_uid).1, vec![before.clone()]);
        std::thread::sleep(Duration::from_millis(500));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "restore the agent's RLIMIT_NOFILE");
    node.write_manifest("new.yaml", &sleeping_pod("new"));
    node.wait_pod("new", "running", |p| running(p, "c"));
    assert_eq!(container_id(&node, "keep"), before, "keep was restarted");
    assert!(
        log_lines(&node, "static pod path readable again").len() == 1,
        "the recovery is logged"
    );
}

/// A `--manifest-url` that fails (garbage, then nobody listening) says nothing about its
/// pods: they keep running, untouched, and follow the URL again once it serves pods.
#[test]
fn unusable_manifest_url_keeps_its_pods() {
    let server = ServeBody::start(sleeping_pod("remote").as_bytes());
    let port = server.port;
    let mut cfg = config(NodeConfig {
        kubelet_extra: "httpCheckFrequency: 1s\n".to_owned(),
        ..NodeConfig::default()
    });
    cfg.args
        .extend(["--manifest-url".to_owned(), server.url("/pods")]);
    let node = Node::start_with(cfg);
    node.wait_pod("remote", "running", |p| running(p, "c"));
    let before = container_id(&node, "remote");

    server.set(b"kind: [");
    node.wait_until("the agent to find the body unusable", |n| {
        !log_lines(n, "cannot use the manifest URL; keeping its pods").is_empty()
            || n.pod("remote").is_none()
    });
    let same = |p: &Value| {
        running(p, "c")
            && container_status(p, "c")["containerID"]
                .as_str()
                .is_some_and(|id| id.ends_with(&before))
    };
    node.holds_for(
        "remote",
        "running with the same container",
        Duration::from_secs(4),
        same,
    );
    drop(server);
    node.holds_for(
        "remote",
        "running with the same container",
        Duration::from_secs(4),
        same,
    );
    assert_eq!(node.task_status(&before).as_deref(), Some("RUNNING"));

    // Back, without the pod: it goes.
    let server = ServeBody::start_on(port, b"");
    node.wait_until("remote to be removed", |n| n.pod("remote").is_none());
    drop(server);
}

/// Manifests built to exhaust the parser (deep flow nesting, which costs the YAML scanner
/// quadratic time, deep block nesting, and sheer size) are refused with errors naming the
/// file and the limit, while the healthz port answers, other pods run, a good manifest
/// written after them starts, and SIGTERM still stops the agent.
#[test]
fn huge_and_deeply_nested_manifests_are_refused_while_the_agent_stays_healthy() {
    let healthz = free_port();
    let mut node = Node::start_with(config(NodeConfig {
        healthz_port: healthz,
        ..NodeConfig::default()
    }));
    node.write_manifest("calm.yaml", &sleeping_pod("calm"));
    node.wait_pod("calm", "running", |p| running(p, "c"));
    let calm = container_id(&node, "calm");

    node.write_manifest("nested-seq.yaml", &format!("a: {}", "[".repeat(100_000)));
    node.write_manifest("nested-map.yaml", &"{a: ".repeat(100_000));
    node.write_manifest("nested-block.yaml", &"- ".repeat(100_000));
    // 20 MiB of comments and a pod: well-formed, too large.
    let mut huge = String::with_capacity(21 << 20);
    while huge.len() < 20 << 20 {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    huge.push_str(&sleeping_pod("huge"));
    node.write_manifest("huge.yaml", &huge);

    let expected: [(&str, &[&str]); 4] = [
        ("nested-seq.yaml", &["nested-seq.yaml", "nesting", "64"]),
        ("nested-map.yaml", &["nested-map.yaml", "nesting", "64"]),
        ("nested-block.yaml", &["nested-block.yaml", "nesting", "64"]),
        ("huge.yaml", &["huge.yaml", "3145728 bytes"]),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = http_get(healthz, "/healthz");
        assert!(
            answer.as_ref().is_some_and(|(code, _)| *code == 200),
            "healthz did not answer 200 while the manifests were being refused: {answer:?}\n{}",
            tail(&node.agent_log(), 40)
        );
        if expected
            .iter()
            .all(|(_, parts)| rejection(&node, parts).is_some())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every manifest was refused naming its file and the limit: {:#?}\n{}",
            rejections(&node),
            tail(&node.agent_log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.write_manifest("after.yaml", &sleeping_pod("after"));
    node.wait_pod("after", "running", |p| running(p, "c"));
    assert!(node.pod("huge").is_none(), "the oversized manifest ran");
    assert_eq!(container_id(&node, "calm"), calm, "calm was restarted");
    // One more parser bomb, then SIGTERM at once: the agent must still exit.
    node.write_manifest("nested-late.yaml", &"{a: ".repeat(200_000));
    sigterm_and_wait(&mut node);
}

/// A FIFO as `--pod-manifest-path` (or replacing a manifest) would block a reader forever:
/// it is refused as not a regular file, naming the path, and SIGTERM still stops the agent.
#[test]
fn fifo_as_the_manifest_path_is_refused_and_does_not_block_sigterm() {
    let healthz = free_port();
    let mut node = Node::prepare(config(NodeConfig {
        healthz_port: healthz,
        ..NodeConfig::default()
    }));
    std::fs::remove_dir(node.manifests()).expect("remove the manifest dir");
    nix::unistd::mkfifo(
        &node.manifests(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    node.start_agent();
    let path = node.manifests().display().to_string();
    node.wait_until("the FIFO to be refused", |n| {
        rejection(n, &[&path, "not a regular file"]).is_some()
    });
    assert_eq!(http_get(healthz, "/healthz").map(|(c, _)| c), Some(200));
    sigterm_and_wait(&mut node);
}

/// A FIFO in the manifest directory is refused, naming it; the other manifests run.
#[test]
fn fifo_in_the_manifest_dir_is_refused_by_name() {
    let node = Node::start_with(config(NodeConfig::default()));
    let fifo = node.manifests().join("pipe.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    node.write_manifest("ok.yaml", &sleeping_pod("ok"));
    node.wait_pod("ok", "running", |p| running(p, "c"));
    let path = fifo.display().to_string();
    node.wait_until("the FIFO to be refused", |n| {
        rejection(n, &[&path, "not a regular file"]).is_some()
    });
}

/// Two manifests with one UID: the pod that was there first keeps running, untouched; the
/// later one is refused with an error naming both, from the same source (even when the later
/// file sorts first) and from another source.
#[test]
fn second_manifest_with_the_same_uid_is_refused_and_the_first_keeps_running() {
    let server = ServeBody::start(b"");
    let mut cfg = config(NodeConfig {
        kubelet_extra: "httpCheckFrequency: 1s\n".to_owned(),
        ..NodeConfig::default()
    });
    cfg.args
        .extend(["--manifest-url".to_owned(), server.url("/pods")]);
    let node = Node::start_with(cfg);
    let shared = "5a1e0000-0000-4000-8000-00000000beef";
    node.write_manifest("b-first.yaml", &pod_with_uid("first", shared));
    node.wait_pod("first", "running", |p| running(p, "c"));
    let before = container_id(&node, "first");

    // Sorts before the first one.
    node.write_manifest("a-second.yaml", &pod_with_uid("second", shared));
    server.set(pod_with_uid("third", shared).as_bytes());
    let url = server.url("/pods");
    node.wait_until(
        "both later manifests to be refused naming both origins",
        |n| {
            rejection(n, &["a-second.yaml", "b-first.yaml", shared]).is_some()
                && rejection(n, &[&url, "b-first.yaml", shared]).is_some()
        },
    );
    node.holds_for("first", "running, untouched", Duration::from_secs(4), |p| {
        running(p, "c")
            && container_status(p, "c")["containerID"]
                .as_str()
                .is_some_and(|id| id.ends_with(&before))
    });
    assert!(node.pod("second").is_none() && node.pod("third").is_none());
    assert_eq!(node.task_status(&before).as_deref(), Some("RUNNING"));
}

/// A rejected manifest's log line carries the parser's cause with line and column.
#[test]
fn rejected_manifest_log_names_line_and_column() {
    let node = Node::start_with(config(NodeConfig::default()));
    node.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n   bad: [\n",
    );
    node.wait_until("the rejection with a line and column", |n| {
        rejection(n, &["broken.yaml", "line 5 column"]).is_some()
    });
}
