use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// A container from `requests` and `limits` written as `cpu=100m,memory=64Mi`.
fn c(name: &str, requests: &str, limits: &str) -> Container {
    let map = |s: &str| {
        let m: BTreeMap<String, Quantity> = s
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (k, v) = e.split_once('=').expect("name=value");
                (k.to_owned(), Quantity(v.to_owned()))
            })
            .collect();
        (!m.is_empty()).then_some(m)
    };
    Container {
        name: name.to_owned(),
        image: Some("busybox".to_owned()),
        resources: Some(ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn sidecar(name: &str, requests: &str, limits: &str) -> Container {
    Container {
        restart_policy: Some("Always".to_owned()),
        ..c(name, requests, limits)
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("p".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers,
            init_containers: (!init.is_empty()).then_some(init),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[test]
fn qos_classes() {
    use QosClass::{BestEffort, Burstable, Guaranteed};
    let full = "cpu=500m,memory=128Mi";
    let cases: Vec<(&str, Pod, QosClass)> = vec![
        (
            "nothing anywhere",
            pod(vec![c("a", "", "")], vec![]),
            BestEffort,
        ),
        (
            "zero requests only",
            pod(vec![c("a", "cpu=0,memory=0", "")], vec![]),
            BestEffort,
        ),
        (
            "only non-qos resources",
            pod(vec![c("a", "ephemeral-storage=1Gi", "")], vec![]),
            BestEffort,
        ),
        (
            "limits equal requests",
            pod(vec![c("a", full, full)], vec![]),
            Guaranteed,
        ),
        (
            "limits only: requests default to limits",
            pod(vec![c("a", "", full)], vec![]),
            Guaranteed,
        ),
        (
            "same value spelled differently",
            pod(vec![c("a", "cpu=0.5,memory=134217728", full)], vec![]),
            Guaranteed,
        ),
        (
            "request below limit",
            pod(vec![c("a", "cpu=250m,memory=128Mi", full)], vec![]),
            Burstable,
        ),
        (
            "memory limit missing",
            pod(vec![c("a", "cpu=500m", "cpu=500m")], vec![]),
            Burstable,
        ),
        (
            "cpu limit missing",
            pod(vec![c("a", "memory=1Gi", "memory=1Gi")], vec![]),
            Burstable,
        ),
        (
            "requests only",
            pod(vec![c("a", full, "")], vec![]),
            Burstable,
        ),
        (
            "one of two containers without limits",
            pod(vec![c("a", full, full), c("b", "", "")], vec![]),
            Burstable,
        ),
        (
            "two guaranteed containers",
            pod(
                vec![c("a", full, full), c("b", "", "cpu=1,memory=1Gi")],
                vec![],
            ),
            Guaranteed,
        ),
        (
            "init container without limits",
            pod(vec![c("a", full, full)], vec![c("i", "", "")]),
            Burstable,
        ),
        (
            "guaranteed init container",
            pod(vec![c("a", full, full)], vec![c("i", full, full)]),
            Guaranteed,
        ),
        (
            "init container alone sets requests",
            pod(vec![c("a", "", "")], vec![c("i", "cpu=1", "")]),
            Burstable,
        ),
        (
            "guaranteed sidecar",
            pod(vec![c("a", full, full)], vec![sidecar("s", full, full)]),
            Guaranteed,
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(qos_class(&p), want, "{what}");
    }
}

#[test]
fn cpu_shares_and_quota() {
    let shares = [
        (0, 2),
        (1, 2),
        (2, 2),
        (10, 10),
        (100, 102),
        (250, 256),
        (1000, 1024),
        (2500, 2560),
        (1_000_000, 262_144),
    ];
    for (millis, want) in shares {
        assert_eq!(cpu_shares(millis), want, "{millis}m");
    }
    let quotas = [
        (0, None),
        (1, Some(1000)),
        (5, Some(1000)),
        (10, Some(1000)),
        (100, Some(10_000)),
        (250, Some(25_000)),
        (1000, Some(100_000)),
        (2500, Some(250_000)),
    ];
    for (millis, want) in quotas {
        assert_eq!(cfs_quota_us(millis, CFS_PERIOD_US), want, "{millis}m");
    }
}

#[test]
fn oom_score_adj_per_class() {
    let cap = 4 * GI;
    let burstable = |req: &str| pod(vec![c("a", req, "")], vec![]);
    let cases: Vec<(&str, Pod, i32)> = vec![
        (
            "guaranteed",
            pod(vec![c("a", "", "cpu=1,memory=1Gi")], vec![]),
            -997,
        ),
        ("best effort", pod(vec![c("a", "", "")], vec![]), 1000),
        // 1000 - 1000 * 1Gi / 4Gi = 750
        ("burstable 1/4 of memory", burstable("memory=1Gi"), 750),
        // 1000 - 1000 * 100Mi / 4Gi = 1000 - 24.4 -> 1000 - 24 = 976
        ("burstable 100Mi", burstable("memory=100Mi"), 976),
        // no memory request: 1000 -> 999 so it stays below BestEffort
        ("burstable cpu only", burstable("cpu=100m"), 999),
        // a request of (almost) the whole node: floor at 3
        ("burstable whole node", burstable("memory=4Gi"), 3),
        ("burstable more than node", burstable("memory=8Gi"), 3),
        // 1000 - 1000 * 4090Mi/4096Mi = 1000 - 998 = 2 -> floor 3
        (
            "burstable just under the floor",
            burstable("memory=4090Mi"),
            3,
        ),
        // 1000 - 1000*4080Mi/4096Mi = 1000 - 996 = 4
        (
            "burstable just above the floor",
            burstable("memory=4080Mi"),
            4,
        ),
    ];
    for (what, p, want) in cases {
        let container = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(oom_score_adj(&p, container, cap), want, "{what}");
    }
}

#[test]
fn oom_score_adj_of_sidecars_and_critical_pods() {
    let cap = 4 * GI;
    // The app requests 2Gi (score 500); the sidecar requests 100Mi (976) and is capped at 500.
    let p = pod(
        vec![c("app", "memory=2Gi", "")],
        vec![sidecar("proxy", "memory=100Mi", "")],
    );
    let spec = p.spec.as_ref().expect("spec");
    let side = &spec.init_containers.as_ref().expect("init")[0];
    assert_eq!(oom_score_adj(&p, &spec.containers[0], cap), 500);
    assert_eq!(oom_score_adj(&p, side, cap), 500);
    // A sidecar requesting more than the app keeps its own lower score.
    let p = pod(
        vec![c("app", "memory=100Mi", "")],
        vec![sidecar("proxy", "memory=2Gi", "")],
    );
    let side = &p
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("init")[0];
    assert_eq!(oom_score_adj(&p, side, cap), 500);
    // A regular init container is not capped.
    let p = pod(
        vec![c("app", "memory=2Gi", "")],
        vec![c("init", "memory=100Mi", "")],
    );
    let init = &p
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("init")[0];
    assert_eq!(oom_score_adj(&p, init, cap), 976);

    // system-node-critical static pod: -997 whatever its QoS.
    let mut p = pod(vec![c("a", "", "")], vec![]);
    p.metadata.annotations = Some(BTreeMap::from([(
        CONFIG_SOURCE_ANNOTATION.to_owned(),
        "file".to_owned(),
    )]));
    p.spec.as_mut().expect("spec").priority_class_name = Some("system-node-critical".to_owned());
    let container = p.spec.as_ref().expect("spec").containers[0].clone();
    assert_eq!(oom_score_adj(&p, &container, cap), -997);
    // The same from the API server needs the critical priority too.
    p.metadata.annotations = None;
    assert_eq!(oom_score_adj(&p, &container, cap), 1000);
    p.spec.as_mut().expect("spec").priority = Some(2_000_001_000);
    assert_eq!(oom_score_adj(&p, &container, cap), -997);
}

/// (what, pod, requests (cpu m, memory), limits (cpu m, memory)).
type TotalsCase = (&'static str, Pod, (u64, u64), (Option<u64>, Option<u64>));

#[test]
fn pod_totals_and_limits() {
    // (what, pod, requests (cpu m, memory), limits (cpu m, memory))
    let cases: Vec<TotalsCase> = vec![
        (
            "sum of app containers",
            pod(
                vec![
                    c("a", "cpu=100m,memory=64Mi", "cpu=200m,memory=128Mi"),
                    c("b", "cpu=300m,memory=64Mi", "cpu=1,memory=256Mi"),
                ],
                vec![],
            ),
            (400, 128 * MI),
            (Some(1200), Some(384 * MI)),
        ),
        (
            "a container without a memory limit: no pod memory limit",
            pod(
                vec![c("a", "", "cpu=1,memory=1Gi"), c("b", "", "cpu=1")],
                vec![],
            ),
            (2000, GI),
            (Some(2000), None),
        ),
        (
            "init container bigger than the app: max(sum(app), max(init))",
            pod(
                vec![c("a", "", "cpu=100m,memory=64Mi")],
                vec![
                    c("i1", "", "cpu=2,memory=32Mi"),
                    c("i2", "", "cpu=50m,memory=512Mi"),
                ],
            ),
            (2000, 512 * MI),
            (Some(2000), Some(512 * MI)),
        ),
        (
            "init container without limit: pod unlimited",
            pod(
                vec![c("a", "", "cpu=100m,memory=64Mi")],
                vec![c("i", "", "")],
            ),
            (100, 64 * MI),
            (None, None),
        ),
        (
            "sidecars add to the app and to later init containers",
            pod(
                vec![c("a", "", "cpu=100m,memory=100Mi")],
                vec![
                    c("i1", "", "cpu=1,memory=50Mi"),
                    sidecar("s", "", "cpu=200m,memory=200Mi"),
                    c("i2", "", "cpu=150m,memory=250Mi"),
                ],
            ),
            // app + sidecar = 300m / 300Mi; i1 alone = 1000m / 50Mi; s + i2 = 350m / 450Mi
            (1000, 450 * MI),
            (Some(1000), Some(450 * MI)),
        ),
    ];
    for (what, p, (cpu, memory), limits) in cases {
        assert_eq!(
            pod_requests(&p),
            Resources {
                cpu_millis: cpu,
                memory_bytes: memory
            },
            "{what}"
        );
        assert_eq!(pod_limits(&p), limits, "{what}");
    }
}

#[test]
fn pod_and_container_cgroup_settings() {
    let guaranteed = pod(vec![c("a", "", "cpu=500m,memory=128Mi")], vec![]);
    assert_eq!(
        pod_resource_config(&guaranteed),
        PodResourceConfig {
            qos: QosClass::Guaranteed,
            cpu_shares: 512,
            cpu_quota_us: Some(50_000),
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: Some(128 * MI),
        }
    );
    let burstable = pod(vec![c("a", "cpu=250m", "memory=1Gi")], vec![]);
    assert_eq!(
        pod_resource_config(&burstable),
        PodResourceConfig {
            qos: QosClass::Burstable,
            cpu_shares: 256,
            cpu_quota_us: None,
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: Some(GI),
        }
    );
    let best_effort = pod(vec![c("a", "", "")], vec![]);
    assert_eq!(
        pod_resource_config(&best_effort),
        PodResourceConfig {
            qos: QosClass::BestEffort,
            cpu_shares: 2,
            cpu_quota_us: None,
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: None,
        }
    );
    let container = &burstable.spec.as_ref().expect("spec").containers[0];
    assert_eq!(
        container_resource_config(&burstable, container, 4 * GI),
        ContainerResourceConfig {
            cpu_shares: 256,
            cpu_quota_us: None,
            cpu_period_us: CFS_PERIOD_US,
            memory_limit_bytes: Some(GI),
            oom_score_adj: 750,
        }
    );
}

/// `pod` with pod-level resources (`spec.resources`) written like [`c`]'s.
fn with_pod_level(mut p: Pod, requests: &str, limits: &str) -> Pod {
    let level = c("pod", requests, limits).resources;
    p.spec.as_mut().expect("spec").resources = level;
    p
}

#[test]
fn pod_level_resources_decide_class_and_pod_cgroup() {
    use QosClass::{Burstable, Guaranteed};
    let full = "cpu=1,memory=256Mi";
    /// (what, pod, class, pod limits (cpu, memory), pod requests)
    type Case = (
        &'static str,
        Pod,
        QosClass,
        (Option<u64>, Option<u64>),
        Resources,
    );
    let cases: Vec<Case> = vec![
        (
            "pod-level limits only: requests default to them",
            with_pod_level(pod(vec![c("a", "", ""), c("b", "", "")], vec![]), "", full),
            Guaranteed,
            (Some(1000), Some(256 * MI)),
            Resources {
                cpu_millis: 1000,
                memory_bytes: 256 * MI,
            },
        ),
        (
            "pod-level memory only, containers limited: pod level wins for memory",
            with_pod_level(
                pod(
                    vec![c("a", "cpu=100m,memory=32Mi", "cpu=100m,memory=32Mi")],
                    vec![],
                ),
                "",
                "memory=64Mi",
            ),
            Burstable,
            (Some(100), Some(64 * MI)),
            Resources {
                cpu_millis: 100,
                memory_bytes: 64 * MI,
            },
        ),
        (
            "pod-level request below its limit",
            with_pod_level(
                pod(vec![c("a", "", "")], vec![]),
                "cpu=1,memory=128Mi",
                full,
            ),
            Burstable,
            (Some(1000), Some(256 * MI)),
            Resources {
                cpu_millis: 1000,
                memory_bytes: 128 * MI,
            },
        ),
    ];
    for (what, p, class, limits, requests) in cases {
        assert_eq!(qos_class(&p), class, "{what}");
        assert_eq!(pod_limits(&p), limits, "{what}");
        assert_eq!(pod_requests(&p), requests, "{what}");
        assert_eq!(
            pod_resource_config(&p).memory_limit_bytes,
            limits.1,
            "{what}: the pod cgroup's memory limit"
        );
    }
}
