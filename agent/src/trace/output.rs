//! Rendering events for `bpflet trace`: a readable table or one JSON object per line.
//!
//! The JSON keys follow the `bpflet.v1.Event` schema in `proto/`, with the `detail`
//! message's fields flattened into the top-level object.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::events::{Detail, Event, ExitStatus, OomScope};

/// RFC 3339, UTC, nanoseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{ts:.9}")
}

pub fn scope_str(s: OomScope) -> &'static str {
    match s {
        OomScope::Container => "container",
        OomScope::Pod => "pod",
        OomScope::Node => "node",
        OomScope::Cgroup => "cgroup",
    }
}

/// The event as a JSON object (see the module doc for the key set).
pub fn to_json(ev: &Event) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(rfc3339(ev.time)));
    m.insert("kind".into(), json!(ev.kind().as_str()));
    m.insert("source".into(), json!(ev.source));
    m.insert("pid".into(), json!(ev.pid));
    m.insert("comm".into(), json!(ev.comm));
    m.insert("cgroup".into(), json!(ev.cgroup));
    if let Some(id) = ev.cgroup_id {
        m.insert("cgroup_id".into(), json!(id));
    }
    if let Some(pod) = &ev.pod {
        m.insert("pod_uid".into(), json!(pod.pod_uid));
        if let Some(c) = &pod.container_id {
            m.insert("container_id".into(), json!(c));
        }
    }
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &ev.detail {
        Detail::Exit { status, pidns_init } => {
            match *status {
                ExitStatus::Code(c) => put("exit_code", json!(c)),
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => {
                    put("signal", json!(signal));
                    put("core_dumped", json!(core_dumped));
                }
                ExitStatus::Unknown => {}
            }
            if *pidns_init {
                put("pidns_init", json!(true));
            }
        }
        Detail::OomKill(o) => {
            put("scope", json!(scope_str(o.scope)));
            if let Some(c) = &o.limit_cgroup {
                put("limit_cgroup", json!(c));
            }
            let opt = |v: Option<u64>| v.map_or(Value::Null, |v| json!(v));
            put("limit_bytes", opt(o.limit_bytes));
            put("usage_bytes", opt(o.usage_bytes));
            put("victim_anon_rss_bytes", opt(o.anon_rss_bytes));
            put("victim_file_rss_bytes", opt(o.file_rss_bytes));
            put("victim_shmem_rss_bytes", opt(o.shmem_rss_bytes));
            put("victim_total_vm_bytes", opt(o.total_vm_bytes));
            if let Some(adj) = o.oom_score_adj {
                put("oom_score_adj", json!(adj));
            }
            put("invoker_pid", json!(o.invoker_pid));
        }
        Detail::MemoryPressure(p) => {
            put("window_ms", json!(p.window_ms));
            put("pages_scanned", json!(p.pages_scanned));
            put("pages_reclaimed", json!(p.pages_reclaimed));
            put("memcg_reclaims", json!(p.memcg_reclaims));
            put("direct_reclaims", json!(p.direct_reclaims));
            put("throttled", json!(p.throttled));
            if let Some(psi) = p.psi_some_avg10 {
                put("psi_some_avg10", json!(psi));
            }
        }
        Detail::CgroupCreated { level } | Detail::CgroupRemoved { level } => {
            put("level", json!(level));
        }
        Detail::EventsLost { kernel, userspace } => {
            put("lost_kernel", json!(kernel));
            put("lost_userspace", json!(userspace));
        }
    }
    Value::Object(m)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Header line of the table.
pub const TABLE_HEADER: &str = "TIME                            KIND             PID      COMM             CGROUP / POD                              DETAIL";

/// The pod an event is about, by name (`bpflet trace --remote`: the agent knows it).
#[derive(Clone, Copy, Debug)]
pub struct PodNames<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    /// Empty when the agent has not learnt the container's name.
    pub container: &'a str,
}

/// One table row.
pub fn to_row(ev: &Event) -> String {
    to_row_named(ev, None)
}

/// One table row; with `names`, the pod column names the pod and container.
pub fn to_row_named(ev: &Event, names: Option<PodNames<'_>>) -> String {
    let who = match (&ev.pod, names) {
        (pod, Some(n)) => {
            let c = if n.container.is_empty() {
                pod.as_ref()
                    .and_then(|p| p.container_id.as_deref())
                    .map_or("-", |c| &c[..c.len().min(12)])
            } else {
                n.container
            };
            format!("pod {}/{} ctr {c}", n.namespace, n.pod)
        }
        (pod, None) => match pod {
            Some(p) => {
                let c = p
                    .container_id
                    .as_deref()
                    .map(|c| &c[..c.len().min(12)])
                    .unwrap_or("-");
                format!("pod {} ctr {c}", p.pod_uid)
            }
            None if ev.cgroup.is_empty() => ev
                .cgroup_id
                .map(|id| format!("cgroup#{id}"))
                .unwrap_or_default(),
            None => ev.cgroup.clone(),
        },
    };
    let mut detail = String::new();
    match &ev.detail {
        Detail::Exit {
            status: ExitStatus::Code(c),
            ..
        } => {
            let _ = write!(detail, "exit_code={c}");
        }
        Detail::Exit {
            status:
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                },
            ..
        } => {
            let _ = write!(
                detail,
                "signal={signal}{}",
                if *core_dumped { " (core dumped)" } else { "" }
            );
        }
        Detail::Exit {
            status: ExitStatus::Unknown,
            ..
        } => detail.push_str("exit status unknown"),
        Detail::OomKill(o) => {
            let _ = write!(detail, "scope={}", scope_str(o.scope));
            if let Some(c) = &o.limit_cgroup {
                let _ = write!(detail, " limit_cgroup={c}");
            }
            if let (Some(l), Some(u)) = (o.limit_bytes, o.usage_bytes) {
                let _ = write!(detail, " limit={} usage={}", mib(l), mib(u));
            }
            if let Some(a) = o.anon_rss_bytes {
                let _ = write!(detail, " anon_rss={}", mib(a));
            }
            if let Some(adj) = o.oom_score_adj {
                let _ = write!(detail, " oom_score_adj={adj}");
            }
        }
        Detail::MemoryPressure(p) => {
            let _ = write!(
                detail,
                "window={}ms scanned={} reclaimed={} memcg_reclaims={} direct_reclaims={} throttled={}",
                p.window_ms,
                p.pages_scanned,
                p.pages_reclaimed,
                p.memcg_reclaims,
                p.direct_reclaims,
                p.throttled
            );
            if let Some(psi) = p.psi_some_avg10 {
                let _ = write!(detail, " psi_some_avg10={psi:.2}");
            }
        }
        Detail::CgroupCreated { level } | Detail::CgroupRemoved { level } => {
            let _ = write!(detail, "level={level}");
        }
        Detail::EventsLost { kernel, userspace } => {
            let _ = write!(detail, "lost kernel={kernel} userspace={userspace}");
        }
    }
    if let Detail::Exit {
        pidns_init: true, ..
    } = ev.detail
    {
        detail.push_str(" pidns_init");
    }
    let ts = rfc3339(ev.time);
    let pid = if ev.pid == 0 {
        "-".to_owned()
    } else {
        ev.pid.to_string()
    };
    let comm = if ev.comm.is_empty() { "-" } else { &ev.comm };
    format!(
        "{ts:<31} {:<16} {pid:<8} {comm:<16} {who:<41} {detail}",
        ev.kind().as_str()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::{Kind, OomKill, PodRef, Source};

    fn event(detail: Detail) -> Event {
        Event {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            kernel_ns: Some(5),
            source: Source::Bpf,
            pid: 4242,
            comm: "stress".into(),
            cgroup_id: Some(99),
            cgroup: "/kubepods/burstable/pod1234/abcd".into(),
            pod: Some(PodRef {
                pod_uid: "1234".into(),
                container_id: Some("abcd".into()),
            }),
            detail,
        }
    }

    #[test]
    fn exit_json_shape() {
        let v = to_json(&event(Detail::Exit {
            status: ExitStatus::Code(3),
            pidns_init: false,
        }));
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["source"], "bpf");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "stress");
        assert_eq!(v["cgroup"], "/kubepods/burstable/pod1234/abcd");
        assert_eq!(v["pod_uid"], "1234");
        assert_eq!(v["container_id"], "abcd");
        assert_eq!(v["exit_code"], 3);
        assert!(v.get("signal").is_none());

        let v = to_json(&event(Detail::Exit {
            status: ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            },
            pidns_init: false,
        }));
        assert_eq!(v["signal"], 9);
        assert!(v.get("exit_code").is_none());
    }

    #[test]
    fn oom_json_shape() {
        let oom = OomKill {
            scope: OomScope::Container,
            limit_cgroup_id: Some(99),
            limit_cgroup: Some("/kubepods/burstable/pod1234/abcd".into()),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(63 << 20),
            anon_rss_bytes: Some(60 << 20),
            file_rss_bytes: Some(0),
            shmem_rss_bytes: Some(0),
            total_vm_bytes: Some(70 << 20),
            oom_score_adj: Some(1000),
            invoker_pid: 4242,
        };
        let v = to_json(&event(Detail::OomKill(oom)));
        assert_eq!(v["kind"], "oom_kill");
        assert_eq!(v["scope"], "container");
        assert_eq!(v["limit_bytes"], 64u64 << 20);
        assert_eq!(v["usage_bytes"], 63u64 << 20);
        assert_eq!(v["victim_anon_rss_bytes"], 60u64 << 20);
        assert_eq!(v["oom_score_adj"], 1000);
        let row = to_row(&event(Detail::OomKill(OomKill {
            scope: OomScope::Node,
            limit_cgroup_id: None,
            limit_cgroup: None,
            limit_bytes: None,
            usage_bytes: None,
            anon_rss_bytes: None,
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            total_vm_bytes: None,
            oom_score_adj: None,
            invoker_pid: 0,
        })));
        assert!(
            row.contains("oom_kill") && row.contains("scope=node"),
            "{row}"
        );
    }

    #[test]
    fn every_kind_renders() {
        for detail in [
            Detail::Exit {
                status: ExitStatus::Unknown,
                pidns_init: false,
            },
            Detail::MemoryPressure(Default::default()),
            Detail::CgroupCreated { level: 2 },
            Detail::CgroupRemoved { level: 2 },
            Detail::EventsLost {
                kernel: 3,
                userspace: 4,
            },
        ] {
            let kind = detail.kind();
            let v = to_json(&event(detail.clone()));
            assert_eq!(v["kind"], kind.as_str());
            assert!(to_row(&event(detail)).contains(kind.as_str()));
            if kind == Kind::EventsLost {
                assert_eq!(v["lost_kernel"], 3);
                assert_eq!(v["lost_userspace"], 4);
            }
        }
    }
}
