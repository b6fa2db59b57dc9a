//! Probes and lifecycle hooks for real: the `bpflet` binary against a private containerd
//! 1.6 with runc and the offline busybox image. Needs root; run with `--test-threads=1`.
//!
//! Every pod is host-network and serves on 127.0.0.1 only (busybox `httpd`, `nc`); every
//! probe and hook names host 127.0.0.1, so no traffic leaves the loopback. The test steers
//! a pod's health through files in a hostPath directory (`/ctl` in the container), and
//! records HTTP hooks with a small server of its own on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpflet_tests::{bpflet_bin, require_root};
use serde_json::Value;
use tempfile::TempDir;
use xtask::containerd::PrivateContainerd;

/// Upper bound for anything the agent must achieve; never a timing claim.
const WAIT: Duration = Duration::from_secs(90);

const IMAGE: &str = "bpflet.local/busybox:latest";

/// A node: private containerd + bpflet. Field order matters: the agent stops first, then
/// containerd tears every pod down, then the directory goes.
struct Node {
    agent: Option<Child>,
    ctd: PrivateContainerd,
    dir: TempDir,
    port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl Node {
    fn start() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("bpflet-probes-")
            .tempdir()
            .expect("temp dir");
        let ctd = PrivateContainerd::start(&dir.path().join("ctd"))
            .unwrap_or_else(|e| panic!("starting a private containerd: {e:#}"));
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::create_dir_all(dir.path().join("ctl")).unwrap();
        let mut node = Node {
            agent: None,
            ctd,
            dir,
            port: free_port(),
        };
        node.start_agent();
        node
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The host side of every pod's `/ctl`.
    fn ctl(&self) -> PathBuf {
        self.dir.path().join("ctl")
    }

    fn start_agent(&mut self) {
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 2s
syncFrequency: 10s
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{socket}
readOnlyPort: {port}
address: 127.0.0.1
healthzPort: 0
",
            manifests = self.manifests().display(),
            cgroup_root = self.ctd.cgroup_parent,
            socket = self.ctd.socket.display(),
            port = self.port,
        );
        let config_path = self.dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(bpflet_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .arg("--hostname-override")
            .arg("testnode")
            .arg("--v=2")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bpflet");
        self.agent = Some(child);
        self.wait_until("the agent to serve /pods", |n| n.try_pods().is_some());
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn write_manifest(&self, file: &str, yaml: &str) {
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests().join(file)).unwrap();
    }

    fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).unwrap();
    }

    fn try_pods(&self) -> Option<Vec<Value>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /pods HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let body = buf.split_once("\r\n\r\n")?.1;
        let list: Value = serde_json::from_str(body).ok()?;
        assert_eq!(list["kind"], "PodList", "{list}");
        list["items"].as_array().cloned()
    }

    /// The pod whose static name starts with `name-` (static pods get `-<node>` appended).
    fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-testnode");
        self.try_pods()?
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
    }

    fn wait_until(&self, what: &str, cond: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\n--- agent log (tail) ---\n{}",
            tail(&self.agent_log(), 60)
        );
    }

    /// Waits until `pred` holds for pod `name` and returns it.
    fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(p) = self.pod(name) {
                if pred(&p) {
                    return p;
                }
                last = Some(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "pod {name}: timed out waiting for {what}; last seen:\n{:#}\n--- agent log (tail) ---\n{}",
            last.unwrap_or(Value::Null),
            tail(&self.agent_log(), 60)
        );
    }

    /// Asserts that `pred` holds for pod `name` at every look during `period`.
    fn holds_for(&self, name: &str, what: &str, period: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            let p = self
                .pod(name)
                .unwrap_or_else(|| panic!("pod {name} is not listed"));
            assert!(
                pred(&p),
                "pod {name}: expected {what} throughout; saw:\n{p:#}\n--- agent log (tail) ---\n{}",
                tail(&self.agent_log(), 60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", tail(&self.agent_log(), 200));
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn container_status<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn running(p: &Value, name: &str) -> bool {
    !container_status(p, name)["state"]["running"].is_null()
}

fn restarts(p: &Value, name: &str) -> u64 {
    container_status(p, name)["restartCount"]
        .as_u64()
        .unwrap_or(0)
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
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
  containers:
{containers}
  volumes:
  - name: ctl
    hostPath: {{path: {ctl}, type: Directory}}
",
        ctl = node.ctl().display()
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
    let node = Node::start();
    let port = free_port();
    touch(&node.ctl().join("healthz"));
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

    remove(&node.ctl().join("healthz"));
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
        node.ctl().join("prestop-ran").exists(),
        "a liveness kill runs the preStop hook first"
    );
    let log = node.agent_log();
    assert!(
        log.contains("reason=\"Unhealthy\"") && log.contains("reason=\"Killing\""),
        "Unhealthy and Killing events: {log}"
    );
}

#[test]
fn readiness_probe_flips_ready_both_ways() {
    let node = Node::start();
    let port = free_port();
    let flag = node.ctl().join("ready");
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
    let node = Node::start();
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
    touch(&node.ctl().join("listen"));
    node.wait_pod("tcp", "Ready once nc listens", |p| pod_ready(p, "nc"));
}

#[test]
fn startup_probe_holds_liveness_back() {
    let node = Node::start();
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
    touch(&node.ctl().join("started"));
    node.wait_pod("slow", "liveness kills it once started", |p| {
        restarts(p, "slow") >= 1
    });
}

#[test]
fn exec_probe_that_outlives_its_timeout_fails() {
    let node = Node::start();
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
    let node = Node::start();
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
        std::fs::read_to_string(node.ctl().join("post-start")).unwrap_or_default(),
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
    let node = Node::start();
    let log = node.ctl().join("log");
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
