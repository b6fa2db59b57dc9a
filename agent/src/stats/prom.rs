//! The Prometheus text format of a [`Snapshot`]: `/metrics/resource` (upstream's
//! `resource_metrics.go` collector: names, help, labels, explicit timestamps) and
//! `/metrics/cadvisor` (the `container_*` series of cAdvisor as the kubelet labels them).
//! Families are written sorted by name, each once, and only when they have a sample, as
//! client_golang's registry gathers them.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::sample::{Snapshot, Usage};

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

struct Sample {
    labels: Vec<(&'static str, String)>,
    value: f64,
    at: Option<Timestamp>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64, at: Option<Timestamp>) {
        self.samples.push(Sample { labels, value, at });
    }
}

fn write_families(mut families: Vec<Family>) -> String {
    families.sort_by_key(|f| f.name);
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = write!(out, " {}", s.value);
            if let Some(at) = s.at {
                let _ = write!(out, " {}", at.as_millisecond());
            }
            out.push('\n');
        }
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

#[expect(
    clippy::cast_precision_loss,
    reason = "Prometheus values are float64, as upstream's"
)]
fn f(v: u64) -> f64 {
    v as f64
}

fn seconds(ns: u64) -> f64 {
    f(ns) / 1e9
}

fn unix_seconds(t: Timestamp) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "Prometheus values are float64, as upstream's"
    )]
    let ns = t.as_nanosecond() as f64;
    ns / 1e9
}

/// `/metrics/resource`. `scrape_error` is left out: upstream deprecated it in 1.29 and its
/// registry hides it from 1.30 on; `resource_scrape_error` replaces it.
#[must_use]
pub fn resource_metrics(s: Option<&Snapshot>) -> String {
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        Kind::Counter,
    );
    let mut node_mem = Family::new(
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        Kind::Gauge,
    );
    let mut node_swap = Family::new(
        "node_swap_usage_bytes",
        "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems",
        Kind::Gauge,
    );
    let mut c_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        Kind::Counter,
    );
    let mut c_mem = Family::new(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        Kind::Gauge,
    );
    let mut c_start = Family::new(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        Kind::Gauge,
    );
    let mut p_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        Kind::Counter,
    );
    let mut p_mem = Family::new(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        Kind::Gauge,
    );
    let mut scrape_error = Family::new(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        Kind::Gauge,
    );
    match s {
        None => scrape_error.push(vec![], 1.0, None),
        Some(s) => {
            let n = &s.node;
            cpu_and_memory(&n.usage, &mut node_cpu, &mut node_mem, &[]);
            if let Some(swap) = n.swap_used_bytes {
                node_swap.push(vec![], f(swap), Some(n.usage.at));
            }
            for p in &s.pods {
                for c in &p.containers {
                    let labels = [
                        ("container", c.name.clone()),
                        ("pod", p.name.clone()),
                        ("namespace", p.namespace.clone()),
                    ];
                    if let Some(t) = c.start_time.filter(|t| t.as_second() > 0) {
                        c_start.push(labels.to_vec(), unix_seconds(t), None);
                    }
                    cpu_and_memory(&c.usage, &mut c_cpu, &mut c_mem, &labels);
                }
                let labels = [("pod", p.name.clone()), ("namespace", p.namespace.clone())];
                cpu_and_memory(&p.usage, &mut p_cpu, &mut p_mem, &labels);
            }
            scrape_error.push(vec![], if s.errors > 0 { 1.0 } else { 0.0 }, None);
        }
    }
    write_families(vec![
        node_cpu,
        node_mem,
        node_swap,
        c_cpu,
        c_mem,
        c_start,
        p_cpu,
        p_mem,
        scrape_error,
    ])
}

fn cpu_and_memory(
    u: &Usage,
    cpu: &mut Family,
    mem: &mut Family,
    labels: &[(&'static str, String)],
) {
    if let Some(ns) = u.cpu_ns {
        cpu.push(labels.to_vec(), seconds(ns), Some(u.at));
    }
    if let Some(m) = &u.memory {
        mem.push(labels.to_vec(), f(m.working_set_bytes), Some(u.at));
    }
}

/// One cgroup on `/metrics/cadvisor`, with the kubelet's labels for it.
struct Subject<'a> {
    id: &'a str,
    container: &'a str,
    image: &'a str,
    name: &'a str,
    namespace: &'a str,
    pod: &'a str,
    usage: &'a Usage,
    start: Option<Timestamp>,
}

impl Subject<'_> {
    fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("container", self.container.to_owned()),
            ("id", self.id.to_owned()),
            ("image", self.image.to_owned()),
            ("name", self.name.to_owned()),
            ("namespace", self.namespace.to_owned()),
            ("pod", self.pod.to_owned()),
        ]
    }
}

/// `/metrics/cadvisor`: the node's root cgroup, each pod's cgroup (`pod` and `namespace`
/// set, `container` empty) and each container's (`name` is the runtime's id, as cAdvisor's
/// alias for a containerd container). `container_oom_events_total` is the kernel's own
/// count (`memory.oom_control` / `memory.events` `oom_kill`).
#[must_use]
pub fn cadvisor_metrics(s: Option<&Snapshot>, now: Timestamp) -> String {
    let Some(s) = s else {
        return String::new();
    };
    let mut subjects = vec![Subject {
        id: "/",
        container: "",
        image: "",
        name: "",
        namespace: "",
        pod: "",
        usage: &s.node.usage,
        start: Some(s.node.boot_time),
    }];
    for p in &s.pods {
        subjects.push(Subject {
            id: &p.cgroup,
            container: "",
            image: "",
            name: "",
            namespace: &p.namespace,
            pod: &p.name,
            usage: &p.usage,
            start: p.start_time,
        });
        for c in &p.containers {
            subjects.push(Subject {
                id: &c.cgroup,
                container: &c.name,
                image: &c.image,
                name: &c.id,
                namespace: &p.namespace,
                pod: &p.name,
                usage: &c.usage,
                start: c.start_time,
            });
        }
    }
    let mut cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Kind::Counter,
    );
    let mut ws = Family::new(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Kind::Gauge,
    );
    let mut usage = Family::new(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        Kind::Gauge,
    );
    let mut rss = Family::new("container_memory_rss", "Size of RSS in bytes.", Kind::Gauge);
    let mut cache = Family::new(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Kind::Gauge,
    );
    let mut limit = Family::new(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Kind::Gauge,
    );
    let mut last_seen = Family::new(
        "container_last_seen",
        "Last time a container was seen by the exporter",
        Kind::Gauge,
    );
    let mut ooms = Family::new(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        Kind::Counter,
    );
    let mut start = Family::new(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Kind::Gauge,
    );
    for sub in &subjects {
        let labels = sub.labels();
        let at = Some(sub.usage.at);
        if let Some(ns) = sub.usage.cpu_ns {
            let mut l = vec![("cpu", "total".to_owned())];
            l.extend(labels.iter().cloned());
            cpu.push(l, seconds(ns), at);
        }
        if let Some(m) = &sub.usage.memory {
            ws.push(labels.clone(), f(m.working_set_bytes), at);
            usage.push(labels.clone(), f(m.usage_bytes), at);
            rss.push(labels.clone(), f(m.rss_bytes), at);
            cache.push(labels.clone(), f(m.cache_bytes), at);
            // cAdvisor writes 0 for "no limit".
            limit.push(labels.clone(), f(m.limit_bytes.unwrap_or(0)), None);
            if let Some(n) = m.oom_kills {
                ooms.push(labels.clone(), f(n), at);
            }
        }
        last_seen.push(labels.clone(), f(now.as_second().unsigned_abs()), Some(now));
        if let Some(t) = sub.start {
            start.push(labels, unix_seconds(t), None);
        }
    }
    write_families(vec![
        cpu, ws, usage, rss, cache, limit, last_seen, ooms, start,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::tests::fixture;

    #[test]
    fn resource_metrics_are_upstreams_series_with_timestamps() {
        let text = resource_metrics(Some(&fixture()));
        let ms = 1_700_000_000_000_i64;
        for line in [
            "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds".to_owned(),
            "# TYPE node_cpu_usage_seconds_total counter".to_owned(),
            format!("node_cpu_usage_seconds_total 9 {ms}"),
            format!("node_memory_working_set_bytes 4000 {ms}"),
            format!("node_swap_usage_bytes 0 {ms}"),
            format!("container_cpu_usage_seconds_total{{container=\"app\",pod=\"web\",namespace=\"default\"}} 1 {ms}"),
            format!("container_memory_working_set_bytes{{container=\"app\",pod=\"web\",namespace=\"default\"}} 1024 {ms}"),
            "container_start_time_seconds{container=\"app\",pod=\"web\",namespace=\"default\"} 1700000000".to_owned(),
            format!("pod_cpu_usage_seconds_total{{pod=\"web\",namespace=\"default\"}} 1.5 {ms}"),
            format!("pod_memory_working_set_bytes{{pod=\"web\",namespace=\"default\"}} 2048 {ms}"),
            "resource_scrape_error 0".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("scrape_error{") && !text.lines().any(|l| l.starts_with("scrape_error"))
        );
        // Families sorted by name, each declared once.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn no_snapshot_is_a_scrape_error() {
        assert_eq!(
            resource_metrics(None),
            "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
             # TYPE resource_scrape_error gauge\nresource_scrape_error 1\n"
        );
    }

    #[test]
    fn cadvisor_series_carry_the_kubelets_labels() {
        let now = Timestamp::new(1_700_000_100, 0).unwrap();
        let text = cadvisor_metrics(Some(&fixture()), now);
        let c = "container=\"app\",id=\"/kubepods/poduid-1/abc\",image=\"busybox:latest\",name=\"abc\",namespace=\"default\",pod=\"web\"";
        let p = "container=\"\",id=\"/kubepods/poduid-1\",image=\"\",name=\"\",namespace=\"default\",pod=\"web\"";
        let ms = 1_700_000_000_000_i64;
        for line in [
            format!("container_cpu_usage_seconds_total{{cpu=\"total\",{c}}} 1 {ms}"),
            format!("container_memory_working_set_bytes{{{c}}} 1024 {ms}"),
            format!("container_memory_usage_bytes{{{c}}} 1124 {ms}"),
            format!("container_memory_rss{{{c}}} 512 {ms}"),
            format!("container_memory_cache{{{c}}} 100 {ms}"),
            format!("container_spec_memory_limit_bytes{{{c}}} 1048576"),
            format!("container_oom_events_total{{{c}}} 0 {ms}"),
            format!("container_last_seen{{{c}}} 1700000100 1700000100000"),
            format!("container_memory_working_set_bytes{{{p}}} 2048 {ms}"),
            // The node's root cgroup has no limit: cAdvisor's 0.
            "container_spec_memory_limit_bytes{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 0".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
