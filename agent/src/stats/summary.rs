//! `/stats/summary`: a [`Snapshot`] as the kubelet's `stats/v1alpha1` `Summary` (field names
//! and nesting as upstream's; absent values are left out, as its `omitempty`).
//! `only_cpu_and_memory=true` keeps CPU and memory only, as upstream's query parameter.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::read::Interface;
use super::sample::{ContainerSample, Fs, Network, PodSample, Snapshot, Usage};

/// The summary document.
#[must_use]
pub fn render(s: &Snapshot, only_cpu_and_memory: bool) -> Value {
    let n = &s.node;
    let mut node = Map::new();
    node.insert("nodeName".into(), json!(s.node_name));
    node.insert("startTime".into(), json!(time(n.boot_time)));
    let node_available = n.memory_capacity;
    insert_usage(&mut node, &n.usage, Some(node_available));
    if let Some(pods) = &n.pods {
        let mut pods_container = Map::new();
        pods_container.insert("name".into(), json!("pods"));
        pods_container.insert("startTime".into(), json!(time(n.boot_time)));
        insert_usage(&mut pods_container, pods, None);
        node.insert(
            "systemContainers".into(),
            Value::Array(vec![Value::Object(pods_container)]),
        );
    }
    if !only_cpu_and_memory {
        if let Some(net) = &n.network {
            node.insert("network".into(), network(net));
        }
        if let Some(fs) = &n.fs {
            node.insert("fs".into(), fs_stats(fs));
        }
        if let Some(fs) = &n.image_fs {
            node.insert("runtime".into(), json!({ "imageFs": fs_stats(fs) }));
        }
        if let Some((max, cur)) = n.rlimit {
            node.insert(
                "rlimit".into(),
                json!({ "time": time(n.usage.at), "maxpid": max, "curproc": cur }),
            );
        }
        if let Some(swap) = n.swap_used_bytes {
            node.insert(
                "swap".into(),
                json!({ "time": time(n.usage.at), "swapUsageBytes": swap }),
            );
        }
    }
    let pods: Vec<Value> = s
        .pods
        .iter()
        .map(|p| pod(p, n.fs.as_ref(), only_cpu_and_memory))
        .collect();
    json!({ "node": Value::Object(node), "pods": pods })
}

fn pod(p: &PodSample, nodefs: Option<&Fs>, only_cpu_and_memory: bool) -> Value {
    let mut o = Map::new();
    o.insert(
        "podRef".into(),
        json!({ "name": p.name, "namespace": p.namespace, "uid": p.uid }),
    );
    o.insert(
        "startTime".into(),
        json!(p.start_time.map_or(Value::Null, |t| json!(time(t)))),
    );
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| container(c, only_cpu_and_memory))
        .collect();
    o.insert("containers".into(), Value::Array(containers));
    insert_usage(&mut o, &p.usage, None);
    if !only_cpu_and_memory {
        if let Some(net) = &p.network {
            o.insert("network".into(), network(net));
        }
        if !p.volumes.is_empty() {
            let volumes: Vec<Value> = p
                .volumes
                .iter()
                .map(|v| {
                    let mut fs = fs_stats(&v.fs);
                    fs["name"] = json!(v.name);
                    fs
                })
                .collect();
            o.insert("volume".into(), Value::Array(volumes));
        }
        if let Some(e) = p.ephemeral_storage(nodefs) {
            o.insert("ephemeral-storage".into(), fs_stats(&e));
        }
        if let Some(n) = p.process_count {
            o.insert("process_stats".into(), json!({ "process_count": n }));
        }
    }
    Value::Object(o)
}

fn container(c: &ContainerSample, only_cpu_and_memory: bool) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(c.name));
    o.insert(
        "startTime".into(),
        c.start_time.map_or(Value::Null, |t| json!(time(t))),
    );
    insert_usage(&mut o, &c.usage, None);
    if !only_cpu_and_memory && let Some(logs) = &c.logs {
        o.insert("logs".into(), fs_stats(logs));
    }
    Value::Object(o)
}

/// `cpu` and `memory` of a usage; `availableBytes` is `capacity` (the node) or the
/// cgroup's limit, less the working set.
fn insert_usage(o: &mut Map<String, Value>, u: &Usage, capacity: Option<u64>) {
    if u.cpu_ns.is_some() {
        let mut cpu = Map::new();
        cpu.insert("time".into(), json!(time(u.at)));
        if let Some(n) = u.nano_cores {
            cpu.insert("usageNanoCores".into(), json!(n));
        }
        if let Some(ns) = u.cpu_ns {
            cpu.insert("usageCoreNanoSeconds".into(), json!(ns));
        }
        o.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(m) = &u.memory {
        let mut mem = Map::new();
        mem.insert("time".into(), json!(time(u.at)));
        let available = capacity
            .map(|c| c.saturating_sub(m.working_set_bytes))
            .or_else(|| m.available_bytes());
        if let Some(a) = available {
            mem.insert("availableBytes".into(), json!(a));
        }
        mem.insert("usageBytes".into(), json!(m.usage_bytes));
        mem.insert("workingSetBytes".into(), json!(m.working_set_bytes));
        mem.insert("rssBytes".into(), json!(m.rss_bytes));
        mem.insert("pageFaults".into(), json!(m.page_faults));
        mem.insert("majorPageFaults".into(), json!(m.major_page_faults));
        o.insert("memory".into(), Value::Object(mem));
    }
}

fn network(n: &Network) -> Value {
    let iface = |i: &Interface| {
        json!({
            "name": i.name,
            "rxBytes": i.rx_bytes,
            "rxErrors": i.rx_errors,
            "txBytes": i.tx_bytes,
            "txErrors": i.tx_errors,
        })
    };
    // The default interface inline: `eth0` when there is one, as the kubelet does.
    let default = n
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| n.interfaces.first());
    let mut o = match default.map(iface) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    o.insert("time".into(), json!(time(n.at)));
    o.insert(
        "interfaces".into(),
        Value::Array(n.interfaces.iter().map(iface).collect()),
    );
    Value::Object(o)
}

fn fs_stats(f: &Fs) -> Value {
    let mut o = Map::new();
    if let Some(at) = f.at {
        o.insert("time".into(), json!(time(at)));
    }
    for (key, v) in [
        ("availableBytes", f.available_bytes),
        ("capacityBytes", f.capacity_bytes),
        ("usedBytes", f.used_bytes),
        ("inodesFree", f.inodes_free),
        ("inodes", f.inodes),
        ("inodesUsed", f.inodes_used),
    ] {
        if let Some(v) = v {
            o.insert(key.into(), json!(v));
        }
    }
    Value::Object(o)
}

/// RFC 3339 in UTC with seconds, as `metav1.Time`.
fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::read::Memory;
    use crate::stats::sample::{NodeSample, VolumeSample};

    pub(crate) fn fixture() -> Snapshot {
        let at = Timestamp::new(1_700_000_000, 0).unwrap();
        let memory = |ws| Memory {
            usage_bytes: ws + 100,
            working_set_bytes: ws,
            rss_bytes: ws / 2,
            cache_bytes: 100,
            page_faults: 10,
            major_page_faults: 1,
            limit_bytes: Some(1 << 20),
            oom_kills: Some(0),
        };
        let usage = |ns, ws| Usage {
            at,
            cpu_ns: Some(ns),
            nano_cores: Some(ns / 10),
            memory: Some(memory(ws)),
        };
        Snapshot {
            node_name: "testnode".into(),
            node: NodeSample {
                boot_time: at,
                usage: Usage {
                    memory: Some(Memory {
                        limit_bytes: None,
                        ..memory(4000)
                    }),
                    ..usage(9_000_000_000, 4000)
                },
                memory_capacity: 10_000,
                swap_used_bytes: Some(0),
                network: Some(Network {
                    at,
                    interfaces: vec![Interface {
                        name: "eth0".into(),
                        rx_bytes: 1,
                        rx_errors: 0,
                        tx_bytes: 2,
                        tx_errors: 0,
                    }],
                }),
                fs: Some(Fs {
                    at: Some(at),
                    capacity_bytes: Some(1000),
                    available_bytes: Some(400),
                    used_bytes: Some(600),
                    inodes: Some(50),
                    inodes_free: Some(20),
                    inodes_used: Some(30),
                }),
                image_fs: None,
                rlimit: Some((4_194_304, 300)),
                pods: Some(usage(2_000_000_000, 3000)),
            },
            pods: vec![PodSample {
                name: "web".into(),
                namespace: "default".into(),
                uid: "uid-1".into(),
                start_time: Some(at),
                cgroup: "/kubepods/poduid-1".into(),
                usage: usage(1_500_000_000, 2048),
                containers: vec![ContainerSample {
                    name: "app".into(),
                    id: "abc".into(),
                    image: "busybox:latest".into(),
                    cgroup: "/kubepods/poduid-1/abc".into(),
                    start_time: Some(at),
                    usage: usage(1_000_000_000, 1024),
                    logs: None,
                }],
                network: None,
                volumes: vec![VolumeSample {
                    name: "scratch".into(),
                    fs: Fs {
                        at: Some(at),
                        used_bytes: Some(4096),
                        inodes_used: Some(2),
                        ..Fs::default()
                    },
                }],
                process_count: Some(2),
            }],
            errors: 0,
        }
    }

    #[test]
    fn summary_has_upstreams_shape() {
        let v = render(&fixture(), false);
        let node = &v["node"];
        assert_eq!(node["nodeName"], "testnode");
        assert_eq!(node["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(node["cpu"]["usageCoreNanoSeconds"], 9_000_000_000_u64);
        assert_eq!(node["cpu"]["usageNanoCores"], 900_000_000_u64);
        // The node's available memory is its capacity less the working set.
        assert_eq!(node["memory"]["availableBytes"], 6000);
        assert_eq!(node["memory"]["workingSetBytes"], 4000);
        assert_eq!(node["systemContainers"][0]["name"], "pods");
        assert_eq!(node["network"]["name"], "eth0");
        assert_eq!(node["network"]["interfaces"][0]["txBytes"], 2);
        assert_eq!(node["fs"]["usedBytes"], 600);
        // Without a separate image fs, the runtime's is the node's.
        assert!(node["runtime"].is_null());
        assert_eq!(node["rlimit"]["maxpid"], 4_194_304);
        assert_eq!(node["rlimit"]["curproc"], 300);
        let pod = &v["pods"][0];
        assert_eq!(pod["podRef"]["uid"], "uid-1");
        assert_eq!(pod["memory"]["workingSetBytes"], 2048);
        assert_eq!(pod["memory"]["availableBytes"], (1 << 20) - 2048);
        let c = &pod["containers"][0];
        assert_eq!(c["name"], "app");
        assert_eq!(c["memory"]["rssBytes"], 512);
        assert_eq!(c["memory"]["majorPageFaults"], 1);
        assert_eq!(pod["volume"][0]["name"], "scratch");
        assert_eq!(pod["volume"][0]["usedBytes"], 4096);
        assert_eq!(pod["ephemeral-storage"]["usedBytes"], 4096);
        assert_eq!(pod["ephemeral-storage"]["capacityBytes"], 1000);
        assert_eq!(pod["process_stats"]["process_count"], 2);
    }

    #[test]
    fn only_cpu_and_memory_drops_the_rest() {
        let v = render(&fixture(), true);
        assert!(v["node"]["fs"].is_null());
        assert!(v["node"]["network"].is_null());
        assert!(v["pods"][0]["volume"].is_null());
        assert!(v["pods"][0]["ephemeral-storage"].is_null());
        assert_eq!(
            v["pods"][0]["cpu"]["usageCoreNanoSeconds"],
            1_500_000_000_u64
        );
    }

    #[test]
    fn a_first_reading_has_no_rate() {
        let mut s = fixture();
        s.pods[0].containers[0].usage.nano_cores = None;
        let v = render(&s, false);
        let cpu = &v["pods"][0]["containers"][0]["cpu"];
        assert!(cpu.get("usageNanoCores").is_none());
        assert_eq!(cpu["usageCoreNanoSeconds"], 1_000_000_000_u64);
    }
}
