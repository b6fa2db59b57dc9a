//! Helpers for the root tests that join bpflet to the real control plane (`tests/k8s`, the
//! code behind `cargo xtask up --cluster`) and judge it through kubectl, as an operator would.

use std::time::{Duration, Instant};

use serde_json::Value;
use xtask::cluster::{self, ControlPlane};

use crate::node::{IMAGE, Node, NodeConfig};

/// Scheduling, image checks and container starts on a shared 2-core machine.
pub const WAIT: Duration = Duration::from_secs(120);

/// The node name the harness runs the agent as; the control plane's node credential is for it.
pub const NODE_NAME: &str = "testnode";

/// `kubectl <args> -o json` as the cluster admin, parsed; panics naming the command.
pub fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["-o", "json"]);
    let out = cp
        .kubectl_admin(&full)
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kubectl {}: not JSON: {e}", args.join(" ")))
}

/// Polls `probe` (every 500 ms, for up to [`WAIT`]) until it returns `Ok`, or panics naming
/// `what` with the last value seen and the agent's log tail.
pub fn wait_for<T>(node: &Node, what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_for_within(node, what, WAIT, probe)
}

/// [`wait_for`] for up to `limit` (for what the cluster does on its own schedule, e.g. a
/// certificate's rotation).
pub fn wait_for_within<T>(
    node: &Node,
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match probe() {
            Ok(v) => return v,
            Err(seen) => last = seen,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = node.agent_log();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    panic!(
        "timed out waiting for {what}; last seen: {last}\nagent log tail:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// The condition of type `kind` in an object's `status.conditions`.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A probe for [`wait_for`]: the Node's condition `kind` has `status`; returns the Node.
pub fn node_condition<'a>(
    cp: &'a ControlPlane,
    kind: &'a str,
    status: &'a str,
) -> impl FnMut() -> Result<Value, String> + 'a {
    move || {
        let out = cp
            .kubectl_admin(&["get", "node", NODE_NAME, "-o", "json"])
            .map_err(|e| format!("{e:#}"))?;
        let n: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        match condition(&n, kind) {
            Some(c) if c["status"] == status => Ok(n),
            other => Err(format!("{kind}: {other:?}")),
        }
    }
}

/// The control plane (its node credential for [`NODE_NAME`]) and a node joined to it with
/// `extra` agent arguments, configured by `config` (its `args` are replaced).
pub fn joined_node_with(
    prefix: &str,
    extra: &[&str],
    config: NodeConfig,
) -> (tempfile::TempDir, ControlPlane, Node) {
    joined_node_on(prefix, extra, config, |_| {})
}

/// [`joined_node_with`] on a control plane whose configuration `control_plane` adjusts
/// (its audit log, ...).
pub fn joined_node_on(
    prefix: &str,
    extra: &[&str],
    config: NodeConfig,
    control_plane: impl FnOnce(&mut cluster::Config),
) -> (tempfile::TempDir, ControlPlane, Node) {
    let (dir, cp) = start_control_plane(prefix, control_plane);
    let mut args = node_args(&cp);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let node = Node::start_with(NodeConfig {
        args,
        dir_prefix: "bpflet-cluster-agent-",
        ..config
    });
    (dir, cp, node)
}

/// The control plane alone (its node credential for [`NODE_NAME`]), in a temporary directory
/// named with `prefix`, configured by `control_plane`.
pub fn start_control_plane(
    prefix: &str,
    control_plane: impl FnOnce(&mut cluster::Config),
) -> (tempfile::TempDir, ControlPlane) {
    cluster::build().expect("building the Kubernetes test bed (tests/k8s)");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory");
    let mut cp_config = cluster::Config::new(dir.path().to_owned());
    cp_config.node_name = NODE_NAME.to_owned();
    control_plane(&mut cp_config);
    let cp = ControlPlane::start(&cp_config, &|| false).expect("starting the control plane");
    (dir, cp)
}

/// The agent arguments that join `cp`: its node credential, the node's InternalIP
/// (127.0.0.1) and the serving certificate and client CA of its PKI.
pub fn node_args(cp: &ControlPlane) -> Vec<String> {
    let mut args = vec![
        "--kubeconfig".to_owned(),
        cp.layout.node_kubeconfig.display().to_string(),
        "--node-ip".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    args.extend(cp.layout.node_tls_args());
    args
}

/// [`joined_node_with`] on the default node configuration.
pub fn joined_node(prefix: &str, extra: &[&str]) -> (tempfile::TempDir, ControlPlane, Node) {
    joined_node_with(prefix, extra, NodeConfig::default())
}

/// The requests of the node's identity (`system:node:<NODE_NAME>`) received at or after
/// `since`, as the API server's audit log has them (a control plane started with
/// `Config::audit`): one audit event each (stage `RequestReceived`, watches included), in
/// the order received. Panics naming the log if it cannot be read.
pub fn node_requests(cp: &ControlPlane, since: jiff::Timestamp) -> Vec<Value> {
    let path = &cp.layout.audit_log;
    let log = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the audit log {}: {e}", path.display()));
    let user = format!("system:node:{NODE_NAME}");
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "RequestReceived" && e["user"]["username"] == user.as_str())
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|at| at >= since)
        })
        .collect()
}

/// `kubectl apply` of `yaml` as the cluster admin (the manifest is kept as
/// `<control plane dir>/<file>.yaml`); panics naming the file.
pub fn apply(cp: &ControlPlane, file: &str, yaml: &str) {
    let path = cp.layout.work_dir.join(format!("{file}.yaml"));
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    cp.kubectl_admin(&["apply", "-f", &path.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply {}: {e:#}", path.display()));
}

/// The pod `name` in `default` as the API server has it, or why not (for [`wait_for`]).
pub fn api_pod(cp: &ControlPlane, name: &str) -> Result<Value, String> {
    let out = cp
        .kubectl_admin(&["get", "pod", name, "-o", "json"])
        .map_err(|e| format!("{e:#}"))?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

/// The events in `default` about the object `name` with `reason`, as the API server has them.
pub fn api_events(cp: &ControlPlane, name: &str, reason: &str) -> Vec<Value> {
    let selector = format!("involvedObject.name={name},reason={reason}");
    let events = kubectl_json(cp, &["get", "events", "--field-selector", &selector]);
    events["items"].as_array().cloned().unwrap_or_default()
}

/// A probe for [`wait_for`]: pod `name` is Running in the API, its first container running
/// and the pod Ready; returns the pod.
pub fn running_and_ready<'a>(
    cp: &'a ControlPlane,
    name: &'a str,
) -> impl FnMut() -> Result<Value, String> + 'a {
    move || {
        let p = api_pod(cp, name)?;
        let running = p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        if running && condition(&p, "Ready").is_some_and(|c| c["status"] == "True") {
            Ok(p)
        } else {
            Err(format!("{}", p["status"]))
        }
    }
}

/// A probe for [`wait_for`]: the first event about `name` with `reason`.
pub fn api_event<'a>(
    cp: &'a ControlPlane,
    name: &'a str,
    reason: &'a str,
) -> impl FnMut() -> Result<Value, String> + 'a {
    move || {
        api_events(cp, name, reason)
            .into_iter()
            .next()
            .ok_or_else(|| format!("no {reason} event about {name}"))
    }
}

/// Waits for the `default` ServiceAccount (the ServiceAccount admission refuses pods before
/// the token controller made it).
pub fn wait_for_default_service_account(cp: &ControlPlane, node: &Node) {
    wait_for(node, "the default ServiceAccount", || {
        cp.kubectl_admin(&["get", "serviceaccount", "default"])
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    });
}

/// A bare pod in `default` as the cluster tests write them: one container `c` on the offline
/// busybox (`IfNotPresent`), no service-account token, no service links, 1 s of grace.
#[derive(Debug, Clone)]
pub struct PodYaml {
    name: String,
    restart_policy: &'static str,
    bound: bool,
    command: String,
    container: String,
    spec: String,
}

impl PodYaml {
    /// Pod `name`, restart policy `Always`, left to the scheduler, running `sleep 3600`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            restart_policy: "Always",
            bound: false,
            command: "[sleep, '3600']".to_owned(),
            container: String::new(),
            spec: String::new(),
        }
    }

    #[must_use]
    pub fn restart_policy(mut self, policy: &'static str) -> Self {
        self.restart_policy = policy;
        self
    }

    /// Bound to [`NODE_NAME`] by `spec.nodeName`, past the scheduler.
    #[must_use]
    pub fn bound(mut self) -> Self {
        self.bound = true;
        self
    }

    /// The container runs `sh -c <cmd>`.
    #[must_use]
    pub fn sh(mut self, cmd: &str) -> Self {
        self.command = format!("[sh, -c, '{}']", cmd.replace('\'', "''"));
        self
    }

    /// YAML lines added to the container (indented four spaces: `resources`, ...).
    #[must_use]
    pub fn container(mut self, lines: &str) -> Self {
        self.container.push_str(lines);
        self
    }

    /// YAML lines added to the pod's spec (indented two spaces: `volumes`, ...).
    #[must_use]
    pub fn spec(mut self, lines: &str) -> Self {
        self.spec.push_str(lines);
        self
    }

    pub fn yaml(&self) -> String {
        let node = if self.bound {
            format!("  nodeName: {NODE_NAME}\n")
        } else {
            String::new()
        };
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
{node}  restartPolicy: {policy}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
{spec}  containers:
  - name: c
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: {command}
{container}",
            name = self.name,
            policy = self.restart_policy,
            spec = self.spec,
            command = self.command,
            container = self.container,
        )
    }

    /// `kubectl apply`s the pod (see [`apply`]).
    pub fn apply(&self, cp: &ControlPlane) {
        apply(cp, &self.name, &self.yaml());
    }
}
