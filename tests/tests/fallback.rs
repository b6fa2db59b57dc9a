//! The agent without BPF: `eventSource: poll` forces the polling fallback on a machine
//! where BPF would load, as the agent runs when BPF cannot. Container ends come from the
//! generic 1 s relist; OOM kills from the kernel log (`/dev/kmsg`), with the victim's pid,
//! comm and the limit it hit. Needs root; run with `--test-threads=1`.

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, container_status, pod_yaml, restarts, running, sleeping_pod, uid,
};
use serde_json::Value;

/// A node whose agent takes kernel events from the polling fallback.
fn polling_node() -> Node {
    Node::start_with(NodeConfig {
        bpflet_extra: "eventSource: poll\n".to_owned(),
        ..NodeConfig::pleg("event")
    })
}

/// The agent says which source and PLEG it runs: on `/healthz?verbose`, in the `PLEG` log
/// record, and with a warning naming what degrades. A container that exits is restarted
/// (the generic relist sees the exit; the kernel log says nothing about it).
#[test]
fn polling_agent_says_so_and_restarts_exited_containers() {
    let node = polling_node();
    // The local API serves before the event source starts: wait for its record.
    node.wait_until("the PLEG record naming the poll source", |n| {
        n.agent_log().lines().any(|l| {
            l.contains(" PLEG ")
                && l.contains("mode=Generic")
                && l.contains("event_source=\"poll\"")
        })
    });
    let log = node.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("polling fallback: DEGRADED")),
        "no warning saying what degrades:\n{log}"
    );
    assert!(
        !log.contains("BPF programs attached"),
        "BPF was loaded: {log}"
    );
    let health = node
        .get_text("/healthz?verbose")
        .expect("GET /healthz?verbose");
    for check in ["[+]event-source-poll ok", "[+]pleg-mode-generic ok"] {
        assert!(health.contains(check), "{check} missing from:\n{health}");
    }
    assert!(
        !health.contains("pleg-mode-event") && !health.contains("event-source-bpf"),
        "{health}"
    );

    node.write_manifest(
        "crash.yaml",
        &pod_yaml(
            "crash",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'sleep 1; exit 2']\n"
            ),
        ),
    );
    let p = node.wait_pod("crash", "a restart", |p| restarts(p, "c") >= 1);
    assert_eq!(
        container_status(&p, "c")["lastState"]["terminated"]["exitCode"],
        2,
        "{p:#}"
    );
    node.wait_until("the exit seen by a relist", |n| {
        n.agent_log().lines().any(|l| {
            l.contains("PLEG: container state changed")
                && l.contains("crash-testnode")
                && l.contains("state=Exited")
                && l.contains("trigger=\"relist\"")
        })
    });
}

/// The `reason` event the agent records about pod `uid`, once there is one.
fn event(node: &Node, uid: &str, reason: &str) -> Value {
    node.wait_until(&format!("a {reason} event"), |n| {
        n.events_of(uid).iter().any(|e| e["reason"] == reason)
    });
    node.events_of(uid)
        .into_iter()
        .find(|e| e["reason"] == reason)
        .expect("the event")
}

/// A container OOM-killed inside its own 32 MiB limit is `OOMKilled`/137 (the runtime says
/// so too), and the kernel log's account reaches the pod: the `OOMKilled` event and the
/// annotations name the process and the container's own limit. A kill that leaves the
/// container running, which the runtime never sees, is a `ProcessOOMKilled` warning.
///
/// Each pod has a sidecar without a memory limit, so the pod cgroup has none: with one
/// limited container the pod's limit equals the container's, the pause process's pages
/// make the pod's counter fail first, and the kernel log names the pod's limit (the BPF
/// source reads both levels at their limit and names the container's).
#[test]
fn polling_agent_attributes_oom_kills_from_the_kernel_log() {
    let node = polling_node();
    node.write_manifest(
        "oom.yaml",
        &pod_yaml(
            "oom",
            "Never",
            &format!(
                "  containers:
  - name: hog
    image: {IMAGE}
    command: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]
    resources:
      limits: {{memory: 32Mi}}
  - name: side
    image: {IMAGE}
    command: [sleep, '3600']
"
            ),
        ),
    );
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
  - name: side
    image: {IMAGE}
    command: [sleep, '3600']
"
            ),
        ),
    );

    let p = node.wait_pod("oom", "terminated", |p| {
        !container_status(p, "hog")["state"]["terminated"].is_null()
    });
    let t = &container_status(&p, "hog")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{p:#}");
    assert_eq!(t["exitCode"], 137, "{p:#}");
    let e = event(&node, &uid(&p), "OOMKilled");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("(dd) in container hog")
            && msg.contains("the container's memory limit was hit")
            && msg.contains("of 32Mi)"),
        "{msg}"
    );
    assert_eq!(e["type"], "Warning");
    let p = node.wait_pod("oom", "the kill counted", |p| {
        p["metadata"]["annotations"]["bpflet.io/oom-kills.hog"] == "1"
    });
    let last = p["metadata"]["annotations"]["bpflet.io/last-oom-kill.hog"]
        .as_str()
        .unwrap_or("");
    assert!(last.contains("the container's memory limit"), "{p:#}");

    let p = node.wait_pod("partial", "the OOM kill counted", |p| {
        p["metadata"]["annotations"]["bpflet.io/oom-kills.c"] == "1"
    });
    assert!(
        running(&p, "c"),
        "the container's main process survived: {p:#}"
    );
    assert_eq!(restarts(&p, "c"), 0, "{p:#}");
    let e = event(&node, &uid(&p), "ProcessOOMKilled");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("(dd) in container c") && msg.contains("the container's memory limit"),
        "{msg}"
    );
    assert!(
        node.events_of(&uid(&p))
            .iter()
            .all(|e| e["reason"] != "OOMKilled"),
        "the container itself was not OOM-killed"
    );
}

/// Runs the agent without the capabilities BPF needs (`CAP_BPF`, `CAP_SYS_ADMIN`, dropped
/// from its bounding set by `setpriv`): BPF fails for real, at its first map.
fn without_bpf(bpflet_extra: &str) -> NodeConfig {
    NodeConfig {
        bpflet_extra: bpflet_extra.to_owned(),
        wrapper: Some(
            ["setpriv", "--bounding-set", "-bpf,-sys_admin", "--"]
                .map(str::to_owned)
                .to_vec(),
        ),
        ..NodeConfig::pleg("event")
    }
}

/// `eventSource: auto` (the default) on a node where BPF cannot load: the agent warns with
/// the step that failed and its cause, polls, and runs pods.
#[test]
fn auto_falls_back_to_polling_when_bpf_cannot_load() {
    let node = Node::start_with(without_bpf(""));
    // The PLEG record (after the event source started) says why it polls.
    node.wait_until("the PLEG record naming the poll source", |n| {
        n.agent_log().lines().any(|l| {
            l.contains(" PLEG ")
                && l.contains("event_source=\"poll\"")
                && l.contains("Operation not permitted")
        })
    });
    let log = node.agent_log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("BPF event source unavailable: the kernel refused the BPF object")
            && l.contains("Operation not permitted")
            && l.contains("falling back to polling")),
        "no warning naming the failed BPF step:\n{log}"
    );
    let health = node
        .get_text("/healthz?verbose")
        .expect("GET /healthz?verbose");
    for check in ["[+]event-source-poll ok", "[+]pleg-mode-generic ok"] {
        assert!(health.contains(check), "{check} missing from:\n{health}");
    }
    node.write_manifest("steady.yaml", &sleeping_pod("steady"));
    node.wait_pod("steady", "running", |p| running(p, "c"));
}

/// `eventSource: bpf` on a node where BPF cannot load: the agent refuses to start, exits 1,
/// and says which setting made it and why BPF failed.
#[test]
fn bpf_only_refuses_to_start_without_bpf() {
    let mut node = Node::prepare(without_bpf("eventSource: bpf\n"));
    node.spawn_agent();
    let status = node.wait_agent_exit();
    assert_eq!(status.code(), Some(1), "{}", node.agent_log());
    let log = node.agent_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("bpflet: eventSource: bpf:")
                && l.contains("BPF event source unavailable")
                && l.contains("Operation not permitted")),
        "no error naming the setting and the cause:\n{log}"
    );
    assert!(!log.contains("bpflet running"), "{log}");
}

/// MemTotal in bytes.
fn mem_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("MemTotal");
    kib * 1024
}

/// Pressure-triggered eviction without BPF: a BestEffort pod whose memory grows ~20 MiB/s
/// in a 400 MiB kubepods is evicted on a trigger (not the 10 s periodic pass), before the
/// kernel's OOM killer acts; the Guaranteed pod runs on. On cgroup v1 the trigger that
/// comes early enough is the usage notifier armed at the threshold, which does not depend
/// on the kernel event source; the polling source adds OOM kills and limit hits, which
/// come at a limit, later than the threshold.
#[test]
fn polling_agent_evicts_on_memory_pressure_before_the_oom_killer() {
    // kubepods gets 400 MiB; with memory.available<100Mi eviction starts at 300 MiB.
    let reserved_mib = mem_total() / (1 << 20) - 400;
    let node = Node::start_with(NodeConfig {
        kubelet_extra: format!(
            "systemReserved: {{memory: {reserved_mib}Mi}}\nevictionHard: {{memory.available: 100Mi}}\n"
        ),
        bpflet_extra: "eventSource: poll\n".to_owned(),
        ..NodeConfig::pleg("event")
    });
    node.write_manifest(
        "guaranteed.yaml",
        &pod_yaml(
            "guaranteed",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sleep, '3600']\n    resources:\n      limits: {{cpu: 100m, memory: 64Mi}}\n"
            ),
        ),
    );
    node.wait_pod("guaranteed", "running", |p| running(p, "c"));
    // ~1 MiB every 50 ms, forever.
    let grow = r#"exec awk "BEGIN { while (1) { s = s sprintf(\"%1048576s\", \"\"); system(\"sleep 0.05\") } }""#
        .replace('\'', "''");
    node.write_manifest(
        "besteffort.yaml",
        &pod_yaml(
            "besteffort",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, '{grow}']\n"
            ),
        ),
    );
    let evicted = node.wait_pod("besteffort", "evicted", |p| {
        p["status"]["reason"] == "Evicted"
    });
    let msg = evicted["status"]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("The node was low on resource: memory."),
        "{msg}"
    );
    let log = node.agent_log();
    let eviction = log
        .lines()
        .find(|l| l.contains("evicting pod") && l.contains("besteffort-testnode"))
        .unwrap_or_else(|| panic!("no eviction record:\n{log}"));
    eprintln!("eviction record: {eviction}");
    assert!(
        !eviction.contains("trigger=Periodic"),
        "the periodic pass evicted, not a trigger: {eviction}"
    );
    let g = node.pod("guaranteed").expect("listed");
    assert!(running(&g, "c"), "{g:#}");
    assert_eq!(restarts(&g, "c"), 0, "{g:#}");
    let ooms = node.kernel_oom_events();
    assert!(ooms.is_empty(), "the kernel OOM killer acted: {ooms:#?}");
}
