//! The kubelet's stats endpoints on the real runtime: `/stats/summary`, `/metrics/resource`
//! and `/metrics/cadvisor` report what the cgroup files say.
//!
//! Memory is compared with the kernel's own files, read by the test: a container's
//! working set is `memory.usage_in_bytes − total_inactive_file` of its memory cgroup, found
//! by the container id the runtime gave it (not by anything bpflet reports). The agent
//! samples every 10 s, so values agree within 10 % rather than exactly.

use std::path::{Path, PathBuf};

use bpflet_tests::node::{IMAGE, Node, NodeConfig, container_id, pod_yaml, running, uid};
use serde_json::Value;

/// A container command that holds ~32 MiB of anonymous memory and sleeps.
const HOLD_32M: &str =
    r#"exec awk "BEGIN { s = sprintf(\"%33554432s\", \"\"); system(\"sleep 3600\") }""#;
const MIB: u64 = 1024 * 1024;

fn memory_mount() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/memory")
}

/// The directory named `id` below `dir` (breadth first).
fn find_dir(dir: &Path, id: &str) -> Option<PathBuf> {
    let mut queue = vec![dir.to_path_buf()];
    while let Some(d) = queue.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name() == id {
                    return Some(e.path());
                }
                queue.push(e.path());
            }
        }
    }
    None
}

/// The runtime id of container `name` of pod `p` and its v1 memory cgroup, found by that
/// id below the node's cgroup parent.
fn container_memory_dir(node: &Node, p: &Value, name: &str) -> (String, PathBuf) {
    let id = container_id(p, name).expect("container id");
    let parent = memory_mount().join(node.ctd.cgroup_parent.trim_start_matches('/'));
    let dir = find_dir(&parent, &id)
        .unwrap_or_else(|| panic!("no memory cgroup named {id} below {}", parent.display()));
    (id, dir)
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn stat_field(dir: &Path, key: &str) -> u64 {
    let path = dir.join("memory.stat");
    let text = std::fs::read_to_string(&path).expect("memory.stat");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in {}", path.display()))
}

/// The working set of the v1 memory cgroup at `dir`, from the kernel's files.
fn working_set(dir: &Path) -> u64 {
    read_u64(&dir.join("memory.usage_in_bytes"))
        .saturating_sub(stat_field(dir, "total_inactive_file"))
}

#[expect(clippy::cast_precision_loss, reason = "a ratio of two byte counts")]
fn within_10pct(got: u64, want: u64) -> bool {
    let (g, w) = (got as f64, want as f64);
    (g - w).abs() <= 0.1 * w
}

fn summary(node: &Node) -> Option<Value> {
    node.get_json("/stats/summary")
}

fn pod_stats<'a>(s: &'a Value, pod_uid: &str) -> Option<&'a Value> {
    s["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["uid"] == pod_uid)
}

fn container_stats<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The value of the sample of `family` whose labels include every `labels` pair.
fn sample(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(family)?;
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| labels_part.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.split(' ').next()?.parse().ok())?
    })
}

fn hold_pod(name: &str) -> String {
    pod_yaml(
        name,
        "Always",
        &format!(
            "  containers:
  - name: hold
    image: {IMAGE}
    command: [sh, -c, '{HOLD_32M}']
    resources:
      limits: {{memory: 128Mi, cpu: 500m}}
"
        ),
    )
}

#[test]
fn summary_and_resource_metrics_agree_with_the_cgroup_files() {
    let node = Node::start_with(NodeConfig::default());
    node.write_manifest("hold.yaml", &hold_pod("hold"));
    let p = node.wait_pod("hold", "hold running", |p| running(p, "hold"));
    let pod_uid = uid(&p);
    let (_, container_dir) = container_memory_dir(&node, &p, "hold");
    let pod_dir = container_dir.parent().expect("pod cgroup").to_path_buf();
    // The allocation is done once the kernel counts it.
    node.wait_until("the container holding 32 MiB", |_| {
        working_set(&container_dir) >= 32 * MIB
    });

    // A snapshot with the container's rate (two readings) and its allocation.
    node.wait_until("the summary to show the container with a CPU rate", |n| {
        summary(n).is_some_and(|s| {
            pod_stats(&s, &pod_uid)
                .and_then(|p| container_stats(p, "hold"))
                .is_some_and(|c| {
                    c["cpu"]["usageNanoCores"].is_u64()
                        && c["memory"]["workingSetBytes"].as_u64() >= Some(32 * MIB)
                })
        })
    });
    let s = summary(&node).expect("summary");
    let pod = pod_stats(&s, &pod_uid).expect("pod in the summary");
    assert_eq!(pod["podRef"]["name"], "hold-testnode", "{pod:#}");
    assert_eq!(pod["podRef"]["namespace"], "default", "{pod:#}");
    let c = container_stats(pod, "hold").expect("container");
    let c_ws = c["memory"]["workingSetBytes"]
        .as_u64()
        .expect("working set");
    let kernel_c_ws = working_set(&container_dir);
    assert!(
        within_10pct(c_ws, kernel_c_ws),
        "container working set: summary {c_ws}, cgroup files {kernel_c_ws}"
    );
    let c_rss = c["memory"]["rssBytes"].as_u64().expect("rss");
    let kernel_rss = stat_field(&container_dir, "total_rss");
    assert!(
        within_10pct(c_rss, kernel_rss),
        "container rss: summary {c_rss}, cgroup files {kernel_rss}"
    );
    // The limit less the working set.
    let available = c["memory"]["availableBytes"].as_u64().expect("available");
    assert_eq!(available, 128 * MIB - c_ws, "{c:#}");
    let p_ws = pod["memory"]["workingSetBytes"].as_u64().expect("pod ws");
    let kernel_p_ws = working_set(&pod_dir);
    assert!(
        within_10pct(p_ws, kernel_p_ws),
        "pod working set: summary {p_ws}, cgroup files {kernel_p_ws}"
    );
    // CPU: the rate of a sleeping container is far below its 500m limit.
    let nano = c["cpu"]["usageNanoCores"].as_u64().expect("nano cores");
    assert!(
        nano < 500_000_000,
        "a sleeping container at {nano} nanocores"
    );
    assert!(c["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0), "{c:#}");
    assert!(
        pod["process_stats"]["process_count"].as_u64() >= Some(2),
        "{pod:#}"
    );
    assert!(c["startTime"].is_string(), "{c:#}");

    // The node: the root memory cgroup, within 10 % of a fresh read (other work on the
    // machine moves it between the sample and the read: wait for one that agrees).
    node.wait_until(
        "the node's working set to agree with the root cgroup",
        |n| {
            summary(n).is_some_and(|s| {
                let ws = s["node"]["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
                within_10pct(ws, working_set(&memory_mount()))
            })
        },
    );
    assert_eq!(s["node"]["nodeName"], "testnode");
    assert!(
        s["node"]["fs"]["capacityBytes"].as_u64() > Some(0),
        "{:#}",
        s["node"]
    );
    assert!(
        s["node"]["rlimit"]["maxpid"].as_u64() > Some(0),
        "{:#}",
        s["node"]
    );
    assert_eq!(s["node"]["systemContainers"][0]["name"], "pods");

    // /metrics/resource: the same container and pod, upstream's names and labels.
    let text = node
        .get_text("/metrics/resource")
        .expect("/metrics/resource");
    let labels = [
        ("container", "hold"),
        ("pod", "hold-testnode"),
        ("namespace", "default"),
    ];
    let m_ws = sample(&text, "container_memory_working_set_bytes", &labels)
        .unwrap_or_else(|| panic!("no container working set in\n{text}"));
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "bytes"
    )]
    let m_ws = m_ws as u64;
    assert!(
        within_10pct(m_ws, working_set(&container_dir)),
        "resource metrics working set {m_ws}\n{text}"
    );
    for family in [
        "container_cpu_usage_seconds_total",
        "container_start_time_seconds",
    ] {
        assert!(
            sample(&text, family, &labels).is_some(),
            "no {family} in\n{text}"
        );
    }
    let pod_labels = [("pod", "hold-testnode"), ("namespace", "default")];
    for family in [
        "pod_cpu_usage_seconds_total",
        "pod_memory_working_set_bytes",
    ] {
        assert!(
            sample(&text, family, &pod_labels).is_some(),
            "no {family} in\n{text}"
        );
    }
    for family in [
        "node_cpu_usage_seconds_total",
        "node_memory_working_set_bytes",
    ] {
        assert!(
            sample(&text, family, &[]).is_some(),
            "no {family} in\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "resource_scrape_error", &[]),
        Some(0.0),
        "{text}"
    );
}

/// `container_oom_events_total` is the kernel's count for the container's cgroup: a child
/// process killed at the container's limit while the container's shell lives on.
#[test]
fn cadvisor_counts_oom_kills_from_the_kernel() {
    let node = Node::start_with(NodeConfig::default());
    node.write_manifest(
        "oomer.yaml",
        &pod_yaml(
            "oomer",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'dd if=/dev/zero of=/dev/null bs=64M count=1; exec sleep 3600']
    resources:
      limits: {{memory: 32Mi}}
"
            ),
        ),
    );
    let p = node.wait_pod("oomer", "c running", |p| running(p, "c"));
    let (id, dir) = container_memory_dir(&node, &p, "c");
    let kernel = || {
        let text = std::fs::read_to_string(dir.join("memory.oom_control")).expect("oom_control");
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("oom_kill")
    };
    node.wait_until("the kernel to count the dd OOM kill", |_| kernel() >= 1);
    let labels = [
        ("container", "c"),
        ("pod", "oomer-testnode"),
        ("name", id.as_str()),
    ];
    node.wait_until("cadvisor metrics to show the kernel's count", |n| {
        n.get_text("/metrics/cadvisor").is_some_and(|t| {
            #[expect(clippy::cast_precision_loss, reason = "a small count")]
            let want = kernel() as f64;
            sample(&t, "container_oom_events_total", &labels) == Some(want)
        })
    });
    let text = node
        .get_text("/metrics/cadvisor")
        .expect("/metrics/cadvisor");
    for family in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_last_seen",
    ] {
        assert!(
            sample(&text, family, &labels).is_some(),
            "no {family} in\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "container_spec_memory_limit_bytes", &labels),
        Some(32.0 * 1024.0 * 1024.0),
        "{text}"
    );
}

/// Bytes of a Kubernetes memory quantity as `kubectl top` prints it (`33Mi`, `1024Ki`).
fn quantity_bytes(q: &str) -> Option<u64> {
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "Ki" => 1024,
        "Mi" => MIB,
        "Gi" => 1024 * MIB,
        _ => return None,
    };
    Some(n * mult)
}

/// The memory column of `kubectl top <kind> <name> --no-headers`.
fn top_memory(cp: &xtask::cluster::ControlPlane, kind: &str, name: &str) -> Result<u64, String> {
    let out = cp
        .kubectl_admin(&["top", kind, name, "--no-headers"])
        .map_err(|e| format!("{e:#}"))?;
    let cols: Vec<&str> = out.split_whitespace().collect();
    // pod: NAME CPU MEMORY; node: NAME CPU CPU% MEMORY MEMORY%
    let col = if kind == "node" { 3 } else { 2 };
    cols.get(col)
        .and_then(|q| quantity_bytes(q))
        .ok_or_else(|| format!("no memory in {out:?}"))
}

/// metrics-server (built from sigs.k8s.io/metrics-server, run by the test bed) scrapes
/// bpflet's `/metrics/resource`; `kubectl top` shows its numbers, within 10 % of the
/// cgroup files.
#[test]
fn kubectl_top_shows_bpflets_numbers() {
    use bpflet_tests::cluster::{joined_node, wait_for};
    use xtask::cluster_metrics::KubeletPort;
    let (_dir, mut cp, node) = joined_node("bpflet-stats-top-", &[]);
    // The authenticated port, as on a real node: metrics-server's client certificate is
    // checked against the cluster CA and its `nodes/metrics` access through the API server.
    cp.start_metrics_server(KubeletPort::Secure(node.secure_port), &|| false)
        .expect("starting metrics-server");
    node.write_manifest("hold.yaml", &hold_pod("hold"));
    let p = node.wait_pod("hold", "hold running", |p| running(p, "hold"));
    let (_, container_dir) = container_memory_dir(&node, &p, "hold");
    let pod_dir = container_dir.parent().expect("pod cgroup").to_path_buf();
    node.wait_until("the container holding 32 MiB", |_| {
        working_set(&container_dir) >= 32 * MIB
    });

    let pod_top = wait_for(
        &node,
        "kubectl top pod to agree with the pod cgroup",
        || {
            let got = top_memory(&cp, "pod", "hold-testnode")?;
            let want = working_set(&pod_dir);
            if within_10pct(got, want) {
                Ok(got)
            } else {
                Err(format!("kubectl top pod {got}, cgroup files {want}"))
            }
        },
    );
    assert!(pod_top >= 32 * MIB, "kubectl top pod {pod_top}");
    let node_top = wait_for(
        &node,
        "kubectl top node to agree with the root cgroup",
        || {
            let got = top_memory(&cp, "node", "testnode")?;
            let want = working_set(&memory_mount());
            if within_10pct(got, want) {
                Ok(got)
            } else {
                Err(format!("kubectl top node {got}, cgroup files {want}"))
            }
        },
    );
    eprintln!("kubectl top: pod {pod_top} bytes, node {node_top} bytes");
}

/// Every metrics endpoint the agent serves passes `promtool check metrics`'s linter
/// (client_golang's promlint, `tests/k8s/cmd/promlint`, built with the test bed).
#[test]
fn every_metrics_endpoint_is_lint_clean() {
    use std::io::Write as _;
    xtask::cluster::build().expect("building the Kubernetes test bed (tests/k8s)");
    let promlint = xtask::cluster::bin_dir().join("promlint");
    let node = Node::start_with(NodeConfig::default());
    node.write_manifest(
        "probed.yaml",
        &pod_yaml(
            "probed",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sleep, '3600']
    readinessProbe:
      exec: {{command: ['true']}}
      periodSeconds: 1
"
            ),
        ),
    );
    node.wait_pod("probed", "c running", |p| running(p, "c"));
    // Every endpoint with series in it: a sampled pod, a probe run.
    node.wait_until("a sample and a probe run", |n| {
        n.get_text("/metrics/resource")
            .is_some_and(|t| t.contains("pod=\"probed-testnode\""))
            && n.get_text("/metrics/probes")
                .is_some_and(|t| t.contains("prober_probe_total{"))
    });
    // Upstream serves the prober's counters on /metrics/probes only.
    let main = node.get_text("/metrics").expect("GET /metrics");
    assert!(!main.contains("prober_probe_total"), "{main}");
    for path in [
        "/metrics",
        "/metrics/resource",
        "/metrics/cadvisor",
        "/metrics/probes",
    ] {
        let (code, text) = bpflet_tests::node::http_get(node.port, path)
            .unwrap_or_else(|| panic!("GET {path} failed"));
        assert_eq!(code, 200, "GET {path}: {text}");
        assert!(!text.is_empty(), "{path} is empty");
        let mut child = std::process::Command::new(&promlint)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", promlint.display()));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing to promlint");
        let out = child.wait_with_output().expect("promlint");
        assert!(
            out.status.success(),
            "{path} is not lint clean ({}):\n{}{}\n--- {path} ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
