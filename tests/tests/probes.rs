//! Probes and lifecycle hooks for real: the `bpflet` binary against a private containerd
//! 1.6 with runc and the offline busybox image. Needs root; run with `--test-threads=1`.
//!
//! Every pod is host-network and serves on 127.0.0.1 only (busybox `httpd`, `nc`); every
//! probe and hook names host 127.0.0.1, so no traffic leaves the loopback. The test steers
//! a pod's health through files in a hostPath directory (`/ctl` in the container), and
//! records HTTP hooks with a small server of its own on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, WAIT, container_status, free_port, restarts, running, tail,
};
use serde_json::Value;

/// A node whose pods can mount `/ctl`, the host directory [`ctl`] names.
fn start_node() -> Node {
    let node = Node::start_with(NodeConfig {
        dir_prefix: "bpflet-probes-",
        ..NodeConfig::default()
    });
    std::fs::create_dir_all(ctl(&node)).expect("create ctl dir");
    node
}

/// The host side of every pod's `/ctl`.
fn ctl(node: &Node) -> PathBuf {
    node.dir.path().join("ctl")
}

fn ready(p: &Value, name: &str) -> bool {
    container_status(p, name)["ready"] == true
}

fn condition<'a>(p: &'a Value, kind: &str) -> &'a str {
    p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

/// Ready both on the container and in the pod's `Ready` and `ContainersReady` conditions.
fn pod_ready(p: &Value, name: &str) -> bool {
    ready(p, name) && condition(p, "Ready") == "True" && condition(p, "ContainersReady") == "True"
}

fn pod_not_ready(p: &Value, name: &str) -> bool {
    running(p, name)
        && !ready(p, name)
        && condition(p, "Ready") == "False"
        && condition(p, "ContainersReady") == "False"
}

/// A host-network pod with `/ctl` mounted from the node's control directory.
fn pod_yaml(node: &Node, name: &str, containers: &str) -> String {
    bpflet_tests::node::pod_yaml(
        name,
        "Always",
        &format!(
            "  containers:
{containers}
  volumes:
  - name: ctl
    hostPath: {{path: {ctl}, type: Directory}}
",
            ctl = ctl(node).display()
        ),
    )
}

/// A container serving `/ctl` with busybox httpd on 127.0.0.1:`port`, plus `extra` YAML
/// (probes, lifecycle) at container level.
fn httpd_container(port: u16, extra: &str) -> String {
    format!(
        "  - name: web
    image: {IMAGE}
    command: [httpd, -f, -p, '127.0.0.1:{port}', -h, /ctl]
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
{extra}"
    )
}

fn touch(path: &Path) {
    std::fs::write(path, "ok\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn remove(path: &Path) {
    std::fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

#[test]
fn failing_liveness_probe_restarts_the_container() {
    let node = start_node();
    let port = free_port();
    touch(&ctl(&node).join("healthz"));
    node.write_manifest(
        "live.yaml",
        &pod_yaml(
            &node,
            "live",
            &httpd_container(
                port,
                &format!(
                    "    livenessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: /healthz}}
      periodSeconds: 1
      failureThreshold: 2
    lifecycle:
      preStop:
        exec: {{command: [touch, /ctl/prestop-ran]}}
"
                ),
            ),
        ),
    );
    node.wait_pod("live", "web running", |p| running(p, "web"));
    // A passing liveness probe leaves the container alone.
    node.holds_for(
        "live",
        "no restart while healthy",
        Duration::from_secs(5),
        |p| restarts(p, "web") == 0 && running(p, "web"),
    );

    remove(&ctl(&node).join("healthz"));
    let p = node.wait_pod("live", "a restart after failed liveness", |p| {
        restarts(p, "web") >= 1
    });
    assert!(
        !container_status(&p, "web")["lastState"]["terminated"].is_null(),
        "the killed container is the last state: {p:#}"
    );
    assert!(
        node.agent_log().contains("Liveness probe failed"),
        "the failure is logged"
    );
    assert!(
        ctl(&node).join("prestop-ran").exists(),
        "a liveness kill runs the preStop hook first"
    );
    let log = node.agent_log();
    assert!(
        log.contains("reason=\"Unhealthy\"") && log.contains("reason=\"Killing\""),
        "Unhealthy and Killing events: {log}"
    );
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let killing: Vec<String> = node
        .events_of(&uid)
        .iter()
        .filter(|e| e["reason"] == "Killing")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        killing,
        ["Container web failed liveness probe, will be restarted"],
        "one Killing event, said once"
    );
}

#[test]
fn readiness_probe_flips_ready_both_ways() {
    let node = start_node();
    let port = free_port();
    let flag = ctl(&node).join("ready");
    node.write_manifest(
        "ready.yaml",
        &pod_yaml(
            &node,
            "ready",
            &httpd_container(
                port,
                &format!(
                    "    readinessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: /ready}}
      periodSeconds: 1
      failureThreshold: 1
"
                ),
            ),
        ),
    );
    node.wait_pod("ready", "running, not ready (404)", |p| {
        pod_not_ready(p, "web")
    });
    touch(&flag);
    node.wait_pod("ready", "Ready", |p| pod_ready(p, "web"));
    remove(&flag);
    let p = node.wait_pod("ready", "not Ready again", |p| pod_not_ready(p, "web"));
    let failure = p["metadata"]["annotations"]["bpflet.io/last-probe-failure.web"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        failure.contains("Readiness probe failed"),
        "the latest failure is on the pod: {p:#}"
    );
    touch(&flag);
    let p = node.wait_pod("ready", "Ready again", |p| pod_ready(p, "web"));
    assert_eq!(restarts(&p, "web"), 0, "readiness never restarts: {p:#}");
}

#[test]
fn tcp_socket_readiness_follows_a_listener() {
    let node = start_node();
    let port = free_port();
    let containers = format!(
        "  - name: nc
    image: {IMAGE}
    command: [sh, -c, 'while [ ! -f /ctl/listen ]; do sleep 0.2; done; exec nc -ll -p {port} -e true']
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
    readinessProbe:
      tcpSocket: {{host: 127.0.0.1, port: {port}}}
      periodSeconds: 1
      failureThreshold: 1
"
    );
    node.write_manifest("tcp.yaml", &pod_yaml(&node, "tcp", &containers));
    node.wait_pod("tcp", "running", |p| running(p, "nc"));
    node.holds_for(
        "tcp",
        "not ready while nothing listens",
        Duration::from_secs(3),
        |p| !ready(p, "nc"),
    );
    touch(&ctl(&node).join("listen"));
    node.wait_pod("tcp", "Ready once nc listens", |p| pod_ready(p, "nc"));
}

#[test]
fn startup_probe_holds_liveness_back() {
    let node = start_node();
    let containers = format!(
        "  - name: slow
    image: {IMAGE}
    command: [sleep, '3600']
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
    startupProbe:
      exec: {{command: [test, -f, /ctl/started]}}
      periodSeconds: 1
      failureThreshold: 120
    livenessProbe:
      exec: {{command: ['false']}}
      periodSeconds: 1
      failureThreshold: 1
"
    );
    node.write_manifest("slow.yaml", &pod_yaml(&node, "slow", &containers));
    node.wait_pod("slow", "running", |p| running(p, "slow"));
    // The failing liveness probe must not run before the startup probe passes.
    node.holds_for(
        "slow",
        "no restart and not started while starting up",
        Duration::from_secs(6),
        |p| restarts(p, "slow") == 0 && container_status(p, "slow")["started"] != true,
    );
    touch(&ctl(&node).join("started"));
    node.wait_pod("slow", "liveness kills it once started", |p| {
        restarts(p, "slow") >= 1
    });
}

#[test]
fn exec_probe_that_outlives_its_timeout_fails() {
    let node = start_node();
    let containers = format!(
        "  - name: stuck
    image: {IMAGE}
    command: [sleep, '3600']
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
    livenessProbe:
      exec: {{command: [sleep, '10']}}
      timeoutSeconds: 1
      periodSeconds: 2
      failureThreshold: 2
"
    );
    node.write_manifest("stuck.yaml", &pod_yaml(&node, "stuck", &containers));
    node.wait_pod("stuck", "running", |p| running(p, "stuck"));
    node.wait_pod("stuck", "a restart after timed-out probes", |p| {
        restarts(p, "stuck") >= 1
    });
    let log = node.agent_log();
    assert!(
        log.contains("Liveness probe failed") && log.contains("timed out after 1s"),
        "the timeout is the failure: {}",
        tail(&log, 40)
    );
}

/// An HTTP server on 127.0.0.1 that records each request's path (and appends
/// `<path without '/'>\n` to `log`, when set, before answering 200).
struct Recorder {
    port: u16,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(log: Option<PathBuf>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&paths), Arc::clone(&stop));
        // Bounded: it stops when dropped, and at the latest after WAIT * 3.
        let deadline = Instant::now() + WAIT * 3;
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                // Drain the headers.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                if let Some(log) = &log {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(log)
                        .unwrap();
                    writeln!(f, "{}", path.trim_start_matches('/')).unwrap();
                }
                seen.lock().unwrap().push(path);
                let _ = (&stream).write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self {
            port,
            paths,
            stop,
            thread: Some(thread),
        }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn post_start_hooks_run_and_a_failed_one_kills_the_container() {
    let node = start_node();
    let recorder = Recorder::start(None);
    let containers = format!(
        "  - name: ok
    image: {IMAGE}
    command: [sleep, '3600']
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, 'echo hooked >> /ctl/post-start']}}
  - name: http
    image: {IMAGE}
    command: [sleep, '3600']
    lifecycle:
      postStart:
        httpGet: {{host: 127.0.0.1, port: {port}, path: /post-start}}
",
        port = recorder.port
    );
    node.write_manifest("hooks.yaml", &pod_yaml(&node, "hooks", &containers));
    let p = node.wait_pod("hooks", "both running", |p| {
        running(p, "ok") && running(p, "http")
    });
    assert_eq!(
        std::fs::read_to_string(ctl(&node).join("post-start")).unwrap_or_default(),
        "hooked\n",
        "the exec hook ran once"
    );
    assert_eq!(recorder.paths(), ["/post-start"], "the HTTP hook ran once");
    assert_eq!((restarts(&p, "ok"), restarts(&p, "http")), (0, 0));

    let failing = format!(
        "  - name: doomed
    image: {IMAGE}
    command: [sleep, '3600']
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, 'exit 3']}}
"
    );
    node.write_manifest("doomed.yaml", &pod_yaml(&node, "doomed", &failing));
    let p = node.wait_pod("doomed", "killed and restarted", |p| {
        restarts(p, "doomed") >= 1
    });
    assert!(
        !container_status(&p, "doomed")["lastState"]["terminated"].is_null(),
        "{p:#}"
    );
}

#[test]
fn http_pre_stop_hook_runs_before_sigterm() {
    let node = start_node();
    let log = ctl(&node).join("log");
    let recorder = Recorder::start(Some(log.clone()));
    let containers = format!(
        "  - name: c
    image: {IMAGE}
    command: [sh, -c, 'trap \"echo term >> /ctl/log; exit 0\" TERM; while true; do sleep 0.1; done']
    volumeMounts: [{{name: ctl, mountPath: /ctl}}]
    lifecycle:
      preStop:
        httpGet: {{host: 127.0.0.1, port: {port}, path: /prestop}}
",
        port = recorder.port
    );
    node.write_manifest("stopper.yaml", &pod_yaml(&node, "stopper", &containers));
    node.wait_pod("stopper", "running", |p| running(p, "c"));
    node.remove_manifest("stopper.yaml");
    node.wait_until("the pod to be gone", |n| n.pod("stopper").is_none());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "prestop\nterm\n",
        "the preStop request came first, then SIGTERM reached the container"
    );
    assert_eq!(recorder.paths(), ["/prestop"]);
}
