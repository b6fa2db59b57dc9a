//! The agent's own surface under hostile or careless input: a flood of idle connections to
//! its HTTP ports, bad configuration values, its data directories' modes, and pods asking
//! for sysctls that would change the node. The real `bpflet` binary against a private
//! containerd; needs root; run with `--test-threads=1`. Network traffic goes to 127.0.0.1
//! only, and every flood is bounded in count and time and closed at the end.

use std::io::{ErrorKind, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, WAIT, container_id, free_port, http_get, phase, pod_yaml, restarts,
    running, sleeping_pod, tail, uid,
};
use serde_json::Value;
use xtask::agent::{Agent, AgentSpec};

/// Hard eviction on memory only: this shared machine's disk can be under the default
/// `nodefs.available<10%`, which would evict the test pods.
const MEMORY_EVICTION_ONLY: &str = "evictionHard: {memory.available: 100Mi}\n";

/// Idle connections opened to each port: more than a 1024 soft limit of open files.
const FLOOD_PER_PORT: usize = 1100;

/// Opens up to `count` idle connections to 127.0.0.1:`port`, stopping at the first that
/// cannot be made within 5 s (the server's backlog stays full) or after 60 s in all.
fn open_idle_connections(port: u16, count: usize) -> Vec<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streams = Vec::with_capacity(count);
    while streams.len() < count && Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => streams.push(s),
            Err(e) => {
                eprintln!(
                    "connection {} to port {port} failed: {e}",
                    streams.len() + 1
                );
                break;
            }
        }
    }
    streams
}

/// Waits until the server closed every stream (a read returns end of file, or a reset),
/// at most [`WAIT`] in all; the number still open then.
fn still_open_after_wait(streams: &mut [TcpStream]) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut open = 0;
    let mut buf = [0_u8; 64];
    for s in streams.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            open += 1;
            continue;
        }
        s.set_read_timeout(Some(left)).expect("set read timeout");
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(_) | Err(_) => open += 1,
        }
    }
    open
}

/// App containers containerd holds for the static pod `name` (`<name>-testnode`).
fn runtime_containers_of(node: &Node, name: &str) -> Vec<String> {
    let filter = format!(
        "labels.\"io.kubernetes.pod.name\"=={name}-testnode,labels.\"io.cri-containerd.kind\"==container"
    );
    node.ctr(&["containers", "ls", "-q", &filter])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `Max open files` of process `pid`: (soft, hard).
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap_or_default().to_owned(),
        fields.next().unwrap_or_default().to_owned(),
    )
}

/// 1,100 idle connections to each of the healthz port and the read-only port of an agent
/// running under the open files limit `nofile` (`soft:hard`). The running pod keeps
/// running, a new pod starts while the connections are held, the server closes every
/// idle connection by itself, and then `/healthz` and `/pods` answer.
fn idle_connection_flood(nofile: &str, expected_soft: &str) {
    let healthz = free_port();
    let mut node = Node::start_with(NodeConfig {
        healthz_port: healthz,
        wrapper: Some(vec![
            "prlimit".to_owned(),
            format!("--nofile={nofile}"),
            "--".to_owned(),
        ]),
        dir_prefix: "bpflet-flood-",
        kubelet_extra: MEMORY_EVICTION_ONLY.to_owned(),
        ..NodeConfig::default()
    });
    let pid = node.agent().expect("agent started").id();
    let hard = nofile.split(':').nth(1).unwrap_or_default();
    assert_eq!(
        open_files_limit(pid),
        (expected_soft.to_owned(), hard.to_owned()),
        "the agent's open files limit"
    );
    node.write_manifest("steady.yaml", &sleeping_pod("steady"));
    let before = node.wait_pod("steady", "running", |p| running(p, "c"));
    let steady_id = container_id(&before, "c").unwrap_or_default();
    assert!(!steady_id.is_empty(), "{before:#}");

    let mut flood = open_idle_connections(healthz, FLOOD_PER_PORT);
    let opened_healthz = flood.len();
    flood.extend(open_idle_connections(node.port, FLOOD_PER_PORT));
    let opened_read_only = flood.len() - opened_healthz;
    eprintln!(
        "opened {opened_healthz} connections to healthz, {opened_read_only} to the read-only port"
    );
    // Connections beyond the cap are accepted and closed at once, never left in a full
    // backlog: the whole flood gets through.
    assert_eq!(
        (opened_healthz, opened_read_only),
        (FLOOD_PER_PORT, FLOOD_PER_PORT),
        "connections opened to healthz and to the read-only port"
    );

    // While the connections are held: a new pod starts (the agent can still read its
    // manifest directory and talk to the runtime) and the running one is left alone.
    node.write_manifest("fresh.yaml", &sleeping_pod("fresh"));
    node.wait_until("the new pod's container to run while flooded", |n| {
        runtime_containers_of(n, "fresh")
            .iter()
            .any(|id| n.task_status(id).as_deref() == Some("RUNNING"))
    });
    // Three rescans of the manifest directory (fileCheckFrequency 2s) under the flood.
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        assert_eq!(
            node.task_status(&steady_id).as_deref(),
            Some("RUNNING"),
            "the running pod's container was stopped under the flood\n{}",
            tail(&node.agent_log(), 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        runtime_containers_of(&node, "steady"),
        vec![steady_id.clone()],
        "the running pod kept its one container"
    );

    // The server closes idle connections by itself.
    let open = still_open_after_wait(&mut flood);
    assert_eq!(
        open,
        0,
        "{open} of {} idle connections were still open after {WAIT:?}\n{}",
        flood.len(),
        tail(&node.agent_log(), 60)
    );
    drop(flood);

    assert_eq!(
        http_get(healthz, "/healthz"),
        Some((200, "ok".to_owned())),
        "healthz after the flood\n{}",
        tail(&node.agent_log(), 40)
    );
    let steady = node.wait_pod("steady", "running", |p| running(p, "c"));
    assert_eq!(
        container_id(&steady, "c").unwrap_or_default(),
        steady_id,
        "{steady:#}"
    );
    assert_eq!(restarts(&steady, "c"), 0, "{steady:#}");
    node.wait_pod("fresh", "running", |p| running(p, "c"));
    assert!(node.agent_alive(), "the agent exited");
}

#[test]
fn idle_connection_flood_under_a_1024_file_limit_leaves_pods_running() {
    // Soft = hard: only the connection cap and timeouts protect the agent.
    idle_connection_flood("1024:1024", "1024");
}

#[test]
fn idle_connection_flood_with_a_higher_hard_limit_leaves_pods_running() {
    // The agent raises its soft limit to the hard one at start.
    idle_connection_flood("1024:4096", "4096");
}

/// Runs the agent on `config` (a KubeletConfiguration body, and a BpfletConfiguration
/// body) and returns its exit code and output (standard error and output); panics if it is
/// still running after 20 s (a configuration error must stop it before it does anything).
fn run_with_config(node: &Node, kubelet: &str, bpflet: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    let root = dir.path().join("root");
    let text = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
containerRuntimeEndpoint: unix://{socket}
readOnlyPort: 0
healthzPort: 0
{kubelet}
---
apiVersion: bpflet.io/v1alpha1
kind: BpfletConfiguration
{bpflet}
",
        manifests = node.manifests().display(),
        socket = node.ctd.socket.display(),
    );
    std::fs::write(&path, &text).expect("write config");
    let spec = AgentSpec {
        config: path,
        root_dir: root.clone(),
        log: dir.path().join("agent.log"),
        ..node.agent_spec()
    };
    let mut agent = Agent::spawn(&spec).unwrap_or_else(|e| panic!("{e:#}"));
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nwith:\n{text}"));
    let output = std::fs::read_to_string(&spec.log).expect("read the agent's output");
    assert!(
        !root.exists(),
        "a refused configuration created the root directory"
    );
    (status.code(), output)
}

#[test]
fn bad_configuration_values_exit_64_naming_the_field() {
    // A private containerd gives every case a cgroup parent of its own to point at: an
    // agent that wrongly accepted a value stays inside it (and its teardown removes it).
    let node = Node::prepare(NodeConfig::default());
    let parent = node.ctd.cgroup_parent.clone();
    let cases: &[(String, &str, &[&str])] = &[
        (
            format!("cgroupRoot: {parent}/x/.."),
            "",
            &["cgroupRoot", "\"..\" components"],
        ),
        (
            format!("cgroupRoot: {parent}\nfileCheckFrequency: 1ns"),
            "",
            &["fileCheckFrequency: 1ns is below the minimum of 1s"],
        ),
        (
            format!("cgroupRoot: {parent}\nsyncFrequency: 100ms"),
            "",
            &["syncFrequency: 100ms is below the minimum of 1s"],
        ),
        (
            format!("cgroupRoot: {parent}"),
            "plegSafetyRelistPeriod: 1ms",
            &["plegSafetyRelistPeriod: 1ms is below the minimum of 1s"],
        ),
        (
            format!("cgroupRoot: {parent}\nsystemReserved: {{memory: 100Ti}}"),
            "",
            &[
                "systemReserved[\"memory\"]: reserves 109951162777600 bytes of memory",
                "capacity of",
                "(MemTotal)",
            ],
        ),
        (
            format!("cgroupRoot: {parent}\nallowedUnsafeSysctls: [vm.swappiness]"),
            "",
            &["allowedUnsafeSysctls[0]: \"vm.swappiness\" is not known to be namespaced"],
        ),
    ];
    for (kubelet, bpflet, want) in cases {
        let (code, stderr) = run_with_config(&node, kubelet, bpflet);
        assert_eq!(code, Some(64), "{kubelet} / {bpflet}: stderr:\n{stderr}");
        for part in *want {
            assert!(
                stderr.contains(part),
                "{kubelet} / {bpflet}: stderr lacks {part:?}:\n{stderr}"
            );
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn data_directories_are_0750_and_a_loose_existing_root_is_tightened() {
    let mut node = Node::prepare(NodeConfig {
        kubelet_extra: MEMORY_EVICTION_ONLY.to_owned(),
        ..NodeConfig::default()
    });
    // A root directory someone created world-writable before the agent's first start.
    std::fs::create_dir_all(node.root_dir()).expect("create root dir");
    std::fs::set_permissions(node.root_dir(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    node.start_agent();
    assert_eq!(
        mode(&node.root_dir()),
        0o750,
        "root directory mode\n{}",
        tail(&node.agent_log(), 20)
    );
    assert_eq!(mode(&node.root_dir().join("pods")), 0o750, "pods/ mode");
    assert!(
        node.agent_log()
            .contains("tightened the mode of a data directory"),
        "the change is logged\n{}",
        tail(&node.agent_log(), 20)
    );
}

/// A pod `name` (host network, as every test pod) with the pod-level sysctls `sysctls`
/// (`name: value` pairs) whose container prints `file` and sleeps.
fn sysctl_pod(name: &str, sysctls: &[(&str, &str)], host_ipc: bool, file: &str) -> String {
    let list: Vec<String> = sysctls
        .iter()
        .map(|(n, v)| format!("    - {{name: {n}, value: '{v}'}}\n"))
        .collect();
    pod_yaml(
        name,
        "Always",
        &format!(
            "  hostIPC: {host_ipc}
  securityContext:
    sysctls:
{list}  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'echo value=$(cat {file}); exec sleep 3600']
",
            list = list.concat()
        ),
    )
}

/// The first log file of container `c` of pod `p`.
fn log_of(node: &Node, p: &Value, name: &str) -> String {
    let path = node
        .root_dir()
        .join("pods")
        .join(format!("default_{name}-testnode_{}", uid(p)))
        .join("c/0.log");
    std::fs::read_to_string(path).unwrap_or_default()
}

fn assert_rejected(node: &Node, name: &str, sysctl: &str, why: &str) {
    let p = node.wait_pod(name, "rejected at admission", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "SysctlForbidden", "{p:#}");
    let message = p["status"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!("Pod was rejected: forbidden sysctl: \"{sysctl}\" {why}"),
        "{p:#}"
    );
    let events = node.events_of(&uid(&p));
    let event_message = format!("forbidden sysctl: \"{sysctl}\" {why}");
    assert!(
        events.iter().any(|e| e["reason"] == "SysctlForbidden"
            && e["type"] == "Warning"
            && e["message"] == event_message.as_str()),
        "no SysctlForbidden event saying {event_message:?}: {events:#?}"
    );
    let (sandboxes, containers) = node.runtime_ids(&uid(&p));
    assert!(
        sandboxes.is_empty() && containers.is_empty(),
        "a rejected pod reached the runtime: {sandboxes:?} {containers:?}"
    );
}

#[test]
fn pods_with_forbidden_sysctls_are_rejected_and_never_started() {
    let node = Node::start_with(NodeConfig {
        kubelet_extra: MEMORY_EVICTION_ONLY.to_owned(),
        ..NodeConfig::default()
    });
    node.write_manifest("steady.yaml", &sleeping_pod("steady"));
    let steady = node.wait_pod("steady", "running", |p| running(p, "c"));
    let host_msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("host msgmax");

    // An unsafe IPC sysctl, an unsafe net sysctl, and a safe net sysctl on the host's
    // network namespace.
    node.write_manifest(
        "msgmax.yaml",
        &sysctl_pod(
            "msgmax",
            &[("kernel.msgmax", "12345")],
            false,
            "/proc/sys/kernel/msgmax",
        ),
    );
    node.write_manifest(
        "somaxconn.yaml",
        &sysctl_pod(
            "somaxconn",
            &[("net.core.somaxconn", "4096")],
            false,
            "/proc/sys/net/core/somaxconn",
        ),
    );
    node.write_manifest(
        "portrange.yaml",
        &sysctl_pod(
            "portrange",
            &[("net.ipv4.ip_local_port_range", "40000 50000")],
            false,
            "/proc/sys/net/ipv4/ip_local_port_range",
        ),
    );
    // The safe IPC sysctl is allowed.
    node.write_manifest(
        "safe.yaml",
        &sysctl_pod(
            "safe",
            &[("kernel.shm_rmid_forced", "1")],
            false,
            "/proc/sys/kernel/shm_rmid_forced",
        ),
    );

    assert_rejected(&node, "msgmax", "kernel.msgmax", "not allowlisted");
    assert_rejected(&node, "somaxconn", "net.core.somaxconn", "not allowlisted");
    assert_rejected(
        &node,
        "portrange",
        "net.ipv4.ip_local_port_range",
        "not allowed with host net enabled",
    );
    let safe = node.wait_pod("safe", "running", |p| running(p, "c"));
    node.wait_until("the safe sysctl's value in the container", |n| {
        log_of(n, &safe, "safe").contains("value=1")
    });

    let after = node.wait_pod("steady", "running", |p| running(p, "c"));
    assert_eq!(
        container_id(&after, "c").unwrap_or_default(),
        container_id(&steady, "c").unwrap_or_default(),
        "{after:#}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("host msgmax"),
        host_msgmax,
        "the host's kernel.msgmax changed"
    );
    // Still never started, a few syncs later.
    node.holds_for("msgmax", "Failed", Duration::from_secs(3), |p| {
        phase(p) == "Failed"
    });
    let msgmax = node.pod("msgmax").expect("msgmax listed");
    assert_eq!(node.runtime_ids(&uid(&msgmax)), (Vec::new(), Vec::new()));
}

#[test]
fn allowed_unsafe_sysctls_reach_the_pod() {
    let node = Node::start_with(NodeConfig {
        kubelet_extra: format!("{MEMORY_EVICTION_ONLY}allowedUnsafeSysctls: [\"kernel.msg*\"]\n"),
        ..NodeConfig::default()
    });
    let host_msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("host msgmax");
    node.write_manifest(
        "msgmax.yaml",
        &sysctl_pod(
            "msgmax",
            &[("kernel.msgmax", "12345")],
            false,
            "/proc/sys/kernel/msgmax",
        ),
    );
    // With hostIPC the pod would set the host's value: refused even when allowed.
    node.write_manifest(
        "hostipc.yaml",
        &sysctl_pod(
            "hostipc",
            &[("kernel.msgmax", "12345")],
            true,
            "/proc/sys/kernel/msgmax",
        ),
    );
    let p = node.wait_pod("msgmax", "running", |p| running(p, "c"));
    node.wait_until("the sysctl's value in the container", |n| {
        log_of(n, &p, "msgmax").contains("value=12345")
    });
    assert_rejected(
        &node,
        "hostipc",
        "kernel.msgmax",
        "not allowed with host ipc enabled",
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax").expect("host msgmax"),
        host_msgmax,
        "the host's kernel.msgmax changed"
    );
}
