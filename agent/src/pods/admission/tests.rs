use k8s_openapi::api::core::v1::Toleration;

use super::*;
use crate::model::CONFIG_SOURCE_ANNOTATION;

fn pod(sysctl: Option<&str>) -> Pod {
    let sysctls = sysctl.map_or(String::new(), |s| {
        format!("  securityContext:\n    sysctls: [{{name: {s}, value: '1'}}]\n")
    });
    let yaml = format!(
        "metadata: {{name: p, namespace: default, uid: u}}\nspec:\n  restartPolicy: Always\n{sysctls}  containers: [{{name: c, image: i}}]\n"
    );
    yaml_serde::from_str(&yaml).expect("pod")
}

/// A pod from its YAML `spec`, from the API server unless `source` says otherwise.
fn pod_with(spec: &str, source: &str) -> Pod {
    let yaml = format!(
        "metadata:\n  name: p\n  namespace: default\n  uid: u\n  annotations: {{kubernetes.io/config.source: {source}}}\nspec:\n  restartPolicy: Always\n{spec}"
    );
    yaml_serde::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn api_pod(spec: &str) -> Pod {
    pod_with(spec, "api")
}

fn node() -> AdmissionNode {
    AdmissionNode {
        name: "node-a".to_owned(),
        labels: [
            ("kubernetes.io/hostname", "node-a"),
            ("kubernetes.io/os", "linux"),
            ("pool", "blue"),
            ("cores", "8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        taints: Vec::new(),
        allocatable: Allocatable {
            cpu_millis: 2_000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 10 << 30,
            pods: 110,
        },
    }
}

fn admit_on(pod: &Pod, node: &AdmissionNode, admitted: &[Arc<Pod>]) -> Result<(), Rejection> {
    let policy = SysctlPolicy::default();
    admit(
        pod,
        &NodeState {
            sysctls: &policy,
            node,
            admitted,
        },
    )
}

fn reason(result: Result<(), Rejection>) -> &'static str {
    result.map_or_else(|r| r.reason, |()| "admitted")
}

fn requesting(cpu: &str, memory: &str) -> Pod {
    api_pod(&format!(
        "  containers: [{{name: c, image: i, resources: {{requests: {{cpu: '{cpu}', memory: '{memory}'}}}}}}]\n"
    ))
}

#[test]
fn pods_past_max_pods_are_out_of_pods() {
    let mut node = node();
    node.allocatable.pods = 2;
    let one = [Arc::new(pod(None))];
    let two = [Arc::new(pod(None)), Arc::new(pod(None))];
    assert_eq!(admit_on(&pod(None), &node, &[]), Ok(()));
    assert_eq!(admit_on(&pod(None), &node, &one), Ok(()));
    assert_eq!(
        admit_on(&pod(None), &node, &two),
        Err(Rejection {
            reason: "OutOfpods",
            message: "Node didn't have enough resource: pods, requested: 1, used: 2, \
                      capacity: 2"
                .to_owned(),
        })
    );
}

#[test]
fn requests_beyond_allocatable_are_out_of_cpu_memory_or_storage_with_upstream_s_message() {
    let node = node();
    assert_eq!(
        admit_on(&requesting("2", "1Gi"), &node, &[]),
        Ok(()),
        "exactly all of it fits"
    );
    assert_eq!(
        admit_on(&requesting("2001m", "1Mi"), &node, &[]),
        Err(Rejection {
            reason: "OutOfcpu",
            message: "Node didn't have enough resource: cpu, requested: 2001, used: 0, \
                      capacity: 2000"
                .to_owned(),
        })
    );
    assert_eq!(
        admit_on(&requesting("100m", "2Gi"), &node, &[]),
        Err(Rejection {
            reason: "OutOfmemory",
            message: "Node didn't have enough resource: memory, requested: 2147483648, \
                      used: 0, capacity: 1073741824"
                .to_owned(),
        })
    );
    let storage = api_pod(
        "  containers: [{name: c, image: i, resources: {requests: {ephemeral-storage: 11Gi}}}]\n",
    );
    assert_eq!(
        reason(admit_on(&storage, &node, &[])),
        "OutOfephemeral-storage"
    );
    // Both short: upstream reports cpu, the first it checks.
    assert_eq!(
        reason(admit_on(&requesting("3", "2Gi"), &node, &[])),
        "OutOfcpu"
    );
    // Pods count before cpu.
    let mut full = node.clone();
    full.allocatable.pods = 0;
    assert_eq!(
        reason(admit_on(&requesting("3", "2Gi"), &full, &[])),
        "OutOfpods"
    );
}

#[test]
fn the_admitted_pods_requests_are_used() {
    let node = node();
    let admitted = [Arc::new(requesting("1500m", "512Mi")), Arc::new(pod(None))];
    assert_eq!(
        admit_on(&requesting("500m", "512Mi"), &node, &admitted),
        Ok(())
    );
    assert_eq!(
        admit_on(&requesting("600m", "1Mi"), &node, &admitted),
        Err(Rejection {
            reason: "OutOfcpu",
            message: "Node didn't have enough resource: cpu, requested: 600, used: 1500, \
                      capacity: 2000"
                .to_owned(),
        })
    );
    // A pod that asks for nothing fits a full node (but for the pod count).
    let full = [Arc::new(requesting("2", "1Gi"))];
    assert_eq!(admit_on(&pod(None), &node, &full), Ok(()));
}

#[test]
fn init_containers_sidecars_and_overhead_count_as_upstream() {
    let node = node();
    let fits = |spec: &str| reason(admit_on(&api_pod(spec), &node, &[]));
    // max(init) vs sum(containers): a 1.5-core init container and two 1-core apps need 2.
    let init_below_sum = "  initContainers: [{name: i, image: i, resources: {requests: {cpu: 1500m}}}]\n  containers:\n  - {name: a, image: i, resources: {requests: {cpu: '1'}}}\n  - {name: b, image: i, resources: {requests: {cpu: '1'}}}\n";
    assert_eq!(fits(init_below_sum), "admitted");
    // An init container larger than the node does not fit, though the apps would.
    let init_above = "  initContainers: [{name: i, image: i, resources: {requests: {cpu: 2500m}}}]\n  containers: [{name: a, image: i, resources: {requests: {cpu: 100m}}}]\n";
    assert_eq!(fits(init_above), "OutOfcpu");
    // A sidecar adds to the apps: 1.5 + 1 > 2.
    let sidecar = "  initContainers: [{name: s, image: i, restartPolicy: Always, resources: {requests: {cpu: 1500m}}}]\n  containers: [{name: a, image: i, resources: {requests: {cpu: '1'}}}]\n";
    assert_eq!(fits(sidecar), "OutOfcpu");
    // A sidecar started before an init container runs beside it: 1 + 1.5 > 2, though the
    // sidecar and the app (1 + 0.5) fit.
    let sidecar_then_init = "  initContainers:\n  - {name: s, image: i, restartPolicy: Always, resources: {requests: {cpu: '1'}}}\n  - {name: i, image: i, resources: {requests: {cpu: 1500m}}}\n  containers: [{name: a, image: i, resources: {requests: {cpu: 500m}}}]\n";
    assert_eq!(fits(sidecar_then_init), "OutOfcpu");
    // The same init container before the sidecar runs alone: max(1.5, 1 + 0.5) fits.
    let init_then_sidecar = "  initContainers:\n  - {name: i, image: i, resources: {requests: {cpu: 1500m}}}\n  - {name: s, image: i, restartPolicy: Always, resources: {requests: {cpu: '1'}}}\n  containers: [{name: a, image: i, resources: {requests: {cpu: 500m}}}]\n";
    assert_eq!(fits(init_then_sidecar), "admitted");
    // The pod's overhead adds to its requests.
    let overhead = "  overhead: {memory: 512Mi}\n  containers: [{name: a, image: i, resources: {requests: {memory: 768Mi}}}]\n";
    assert_eq!(fits(overhead), "OutOfmemory");
    // A limit without a request counts as the request.
    let limit_only =
        "  containers: [{name: a, image: i, resources: {limits: {cpu: '3', memory: 1Gi}}}]\n";
    assert_eq!(fits(limit_only), "OutOfcpu");
}

fn affinity(expressions: &str) -> Pod {
    api_pod(&format!(
        "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n{expressions}  containers: [{{name: c, image: i}}]\n"
    ))
}

#[test]
fn a_node_selector_must_match_every_label() {
    let node = node();
    let selector = |s: &str| {
        api_pod(&format!(
            "  nodeSelector: {s}\n  containers: [{{name: c, image: i}}]\n"
        ))
    };
    assert_eq!(
        admit_on(
            &selector("{pool: blue, kubernetes.io/os: linux}"),
            &node,
            &[]
        ),
        Ok(())
    );
    assert_eq!(
        admit_on(&selector("{pool: blue, disk: ssd}"), &node, &[]),
        Err(Rejection {
            reason: "NodeAffinity",
            message: "Predicate NodeAffinity failed: node(s) didn't match Pod's node \
                      affinity/selector"
                .to_owned(),
        })
    );
    // The selector and the affinity must both match.
    let both = api_pod(
        "  nodeSelector: {pool: red}\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: [{matchExpressions: [{key: pool, operator: Exists}]}]\n  containers: [{name: c, image: i}]\n",
    );
    assert_eq!(reason(admit_on(&both, &node, &[])), "NodeAffinity");
}

#[test]
fn required_node_affinity_operators_match_as_upstream() {
    let node = node();
    let case = |expr: &str| {
        let term = format!("        - matchExpressions: [{expr}]\n");
        reason(admit_on(&affinity(&term), &node, &[]))
    };
    for (expr, want) in [
        ("{key: pool, operator: In, values: [red, blue]}", "admitted"),
        ("{key: pool, operator: In, values: [red]}", "NodeAffinity"),
        ("{key: disk, operator: In, values: [ssd]}", "NodeAffinity"),
        ("{key: pool, operator: NotIn, values: [red]}", "admitted"),
        (
            "{key: pool, operator: NotIn, values: [blue]}",
            "NodeAffinity",
        ),
        ("{key: disk, operator: NotIn, values: [ssd]}", "admitted"),
        ("{key: pool, operator: Exists}", "admitted"),
        ("{key: disk, operator: Exists}", "NodeAffinity"),
        ("{key: disk, operator: DoesNotExist}", "admitted"),
        ("{key: pool, operator: DoesNotExist}", "NodeAffinity"),
        ("{key: cores, operator: Gt, values: ['4']}", "admitted"),
        ("{key: cores, operator: Gt, values: ['8']}", "NodeAffinity"),
        ("{key: cores, operator: Lt, values: ['16']}", "admitted"),
        ("{key: cores, operator: Lt, values: ['8']}", "NodeAffinity"),
        // Not a number on either side, or no such label: no match.
        ("{key: pool, operator: Gt, values: ['1']}", "NodeAffinity"),
        ("{key: disk, operator: Lt, values: ['1']}", "NodeAffinity"),
        ("{key: cores, operator: Gt, values: [many]}", "NodeAffinity"),
        // Malformed requirements void the term.
        ("{key: pool, operator: In, values: []}", "NodeAffinity"),
        (
            "{key: pool, operator: Exists, values: [blue]}",
            "NodeAffinity",
        ),
        (
            "{key: pool, operator: Like, values: [blue]}",
            "NodeAffinity",
        ),
    ] {
        assert_eq!(case(expr), want, "{expr}");
    }
    // All expressions of a term must match; any term may.
    let and = "        - matchExpressions: [{key: pool, operator: Exists}, {key: disk, operator: Exists}]\n";
    assert_eq!(reason(admit_on(&affinity(and), &node, &[])), "NodeAffinity");
    let or = "        - matchExpressions: [{key: disk, operator: Exists}]\n        - matchExpressions: [{key: pool, operator: Exists}]\n";
    assert_eq!(reason(admit_on(&affinity(or), &node, &[])), "admitted");
    // An empty term matches nothing.
    let empty = "        - {}\n";
    assert_eq!(
        reason(admit_on(&affinity(empty), &node, &[])),
        "NodeAffinity"
    );
}

#[test]
fn match_fields_compare_metadata_name() {
    let node = node();
    let case = |expr: &str| {
        let term = format!("        - matchFields: [{expr}]\n");
        reason(admit_on(&affinity(&term), &node, &[]))
    };
    for (expr, want) in [
        (
            "{key: metadata.name, operator: In, values: [node-a]}",
            "admitted",
        ),
        (
            "{key: metadata.name, operator: In, values: [node-b]}",
            "NodeAffinity",
        ),
        (
            "{key: metadata.name, operator: NotIn, values: [node-b]}",
            "admitted",
        ),
        (
            "{key: metadata.name, operator: NotIn, values: [node-a]}",
            "NodeAffinity",
        ),
        // One value exactly, and In or NotIn only.
        (
            "{key: metadata.name, operator: In, values: [node-a, node-b]}",
            "NodeAffinity",
        ),
        ("{key: metadata.name, operator: Exists}", "NodeAffinity"),
    ] {
        assert_eq!(case(expr), want, "{expr}");
    }
    let both = "        - matchExpressions: [{key: pool, operator: In, values: [blue]}]\n          matchFields: [{key: metadata.name, operator: In, values: [node-b]}]\n";
    assert_eq!(
        reason(admit_on(&affinity(both), &node, &[])),
        "NodeAffinity"
    );
}

#[test]
fn another_node_s_name_is_refused() {
    let node = node();
    let on = |name: &str| {
        api_pod(&format!(
            "  nodeName: {name}\n  containers: [{{name: c, image: i}}]\n"
        ))
    };
    assert_eq!(admit_on(&on("node-a"), &node, &[]), Ok(()));
    assert_eq!(
        admit_on(&on("node-b"), &node, &[]),
        Err(Rejection {
            reason: "NodeName",
            message: "Predicate NodeName failed: node(s) didn't match the requested node name"
                .to_owned(),
        })
    );
}

#[test]
fn host_ports_in_use_are_refused() {
    let node = node();
    let port = |ports: &str| {
        Arc::new(api_pod(&format!(
            "  containers: [{{name: c, image: i, ports: [{ports}]}}]\n"
        )))
    };
    let taken = [port("{containerPort: 80, hostPort: 8080}")];
    let case = |ports: &str| reason(admit_on(&port(ports), &node, &taken));
    assert_eq!(case("{containerPort: 80, hostPort: 8080}"), "NodePorts");
    assert_eq!(
        case("{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}"),
        "NodePorts"
    );
    assert_eq!(
        case("{containerPort: 80, hostPort: 8080, protocol: UDP}"),
        "admitted"
    );
    assert_eq!(case("{containerPort: 80, hostPort: 8081}"), "admitted");
    assert_eq!(case("{containerPort: 8080}"), "admitted");
    let on_ip = [port(
        "{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}",
    )];
    let case = |ports: &str| reason(admit_on(&port(ports), &node, &on_ip));
    assert_eq!(
        case("{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.2}"),
        "admitted"
    );
    assert_eq!(case("{containerPort: 80, hostPort: 8080}"), "NodePorts");
    // A sidecar's host port is held; a plain init container's is not.
    let init = |restart: &str| {
        Arc::new(api_pod(&format!(
            "  initContainers: [{{name: s, image: i, {restart}ports: [{{containerPort: 1, hostPort: 9000}}]}}]\n  containers: [{{name: c, image: i}}]\n"
        )))
    };
    let want = port("{containerPort: 80, hostPort: 9000}");
    assert_eq!(
        reason(admit_on(&want, &node, &[init("restartPolicy: Always, ")])),
        "NodePorts"
    );
    assert_eq!(reason(admit_on(&want, &node, &[init("")])), "admitted");
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        value: value.map(str::to_owned),
        effect: effect.to_owned(),
        time_added: None,
    }
}

fn tolerating(tolerations: &str, source: &str) -> Pod {
    pod_with(
        &format!("  tolerations: {tolerations}\n  containers: [{{name: c, image: i}}]\n"),
        source,
    )
}

#[test]
fn an_untolerated_no_execute_taint_is_refused_for_api_pods_only() {
    let mut node = node();
    node.taints = vec![
        taint("dedicated", Some("gpu"), "NoExecute"),
        taint("ignored", None, "NoSchedule"),
    ];
    assert_eq!(
        admit_on(&tolerating("[]", "api"), &node, &[]),
        Err(Rejection {
            reason: "TaintToleration",
            message: "Predicate TaintToleration failed: node(s) had taints that the pod \
                      didn't tolerate"
                .to_owned(),
        })
    );
    assert_eq!(
        admit_on(&tolerating("[]", "file"), &node, &[]),
        Ok(()),
        "static pods skip taints"
    );
    for (tolerations, want) in [
        (
            "[{key: dedicated, operator: Equal, value: gpu, effect: NoExecute}]",
            "admitted",
        ),
        ("[{key: dedicated, value: gpu}]", "admitted"),
        (
            "[{key: dedicated, operator: Equal, value: cpu}]",
            "TaintToleration",
        ),
        ("[{key: dedicated, operator: Exists}]", "admitted"),
        (
            "[{key: dedicated, operator: Exists, effect: NoSchedule}]",
            "TaintToleration",
        ),
        ("[{operator: Exists}]", "admitted"),
        ("[{operator: Exists, effect: NoExecute}]", "admitted"),
        ("[{key: other, operator: Exists}]", "TaintToleration"),
        (
            "[{key: dedicated, operator: Lt, value: gpu}]",
            "TaintToleration",
        ),
    ] {
        assert_eq!(
            reason(admit_on(&tolerating(tolerations, "api"), &node, &[])),
            want,
            "{tolerations}"
        );
    }
    // NoSchedule taints are the scheduler's: a pod tolerating nothing is admitted.
    node.taints = vec![
        taint("ignored", None, "NoSchedule"),
        taint("p", None, "PreferNoSchedule"),
    ];
    assert_eq!(admit_on(&tolerating("[]", "api"), &node, &[]), Ok(()));
}

#[test]
fn pods_for_another_os_are_refused_first() {
    let node = node();
    let mut labelled = requesting("3", "1Mi");
    labelled.metadata.labels = Some([("kubernetes.io/os".to_owned(), "windows".to_owned())].into());
    assert_eq!(
        reason(admit_on(&labelled, &node, &[])),
        "PodOSSelectorNodeLabelDoesNotMatch"
    );
    labelled.metadata.labels = Some([("kubernetes.io/os".to_owned(), "linux".to_owned())].into());
    assert_eq!(reason(admit_on(&labelled, &node, &[])), "OutOfcpu");
}

#[test]
fn the_first_failure_in_upstream_s_order_is_reported() {
    let mut node = node();
    node.taints = vec![taint("t", None, "NoExecute")];
    // Too big, wrong selector, wrong node, untolerated taint: resources come first.
    let all = api_pod(
        "  nodeName: node-b\n  nodeSelector: {pool: red}\n  containers: [{name: c, image: i, resources: {requests: {memory: 2Gi}}}]\n",
    );
    assert_eq!(reason(admit_on(&all, &node, &[])), "OutOfmemory");
    let no_resources = api_pod(
        "  nodeName: node-b\n  nodeSelector: {pool: red}\n  containers: [{name: c, image: i}]\n",
    );
    assert_eq!(reason(admit_on(&no_resources, &node, &[])), "NodeAffinity");
    let wrong_node = api_pod("  nodeName: node-b\n  containers: [{name: c, image: i}]\n");
    assert_eq!(reason(admit_on(&wrong_node, &node, &[])), "NodeName");
    let port = Arc::new(api_pod(
        "  containers: [{name: c, image: i, ports: [{containerPort: 1, hostPort: 9000}]}]\n",
    ));
    let port_and_taint = Arc::clone(&port);
    assert_eq!(
        reason(admit_on(&port_and_taint, &node, &[port])),
        "NodePorts"
    );
    assert_eq!(
        reason(admit_on(
            &api_pod("  containers: [{name: c, image: i}]\n"),
            &node,
            &[]
        )),
        "TaintToleration"
    );
}

#[test]
fn a_forbidden_sysctl_is_reported_before_capacity() {
    let mut node = node();
    node.allocatable.pods = 0;
    let rejection = admit_on(&pod(Some("kernel.msgmax")), &node, &[]).expect_err("forbidden");
    assert_eq!(rejection.reason, "SysctlForbidden");
    assert!(rejection.message.contains("kernel.msgmax"), "{rejection:?}");
}

#[test]
fn a_pod_bpflet_cannot_run_fails_validation_naming_the_field_before_other_checks() {
    let mut node = node();
    node.allocatable.pods = 0;
    let mut userns = pod(Some("kernel.msgmax"));
    userns.spec.as_mut().expect("spec").host_users = Some(false);
    let rejection = admit_on(&userns, &node, &[]).expect_err("hostUsers: false");
    assert_eq!(rejection.reason, "FailedValidation");
    assert!(
        rejection
            .message
            .starts_with("spec.hostUsers: false is not supported"),
        "{rejection:?}"
    );
}

#[test]
fn only_an_api_pod_with_a_terminal_phase_is_terminal_at_first_sight() {
    let policy = SysctlPolicy::default();
    let mut node = node();
    node.allocatable.pods = 1;
    let admitted = [Arc::new(pod(None))];
    let state = NodeState {
        sysctls: &policy,
        node: &node,
        admitted: &admitted,
    };
    let with = |source: Option<&str>, phase: Option<&str>| {
        let mut p = pod(None);
        if let Some(source) = source {
            p.metadata.annotations =
                Some([(CONFIG_SOURCE_ANNOTATION.to_owned(), source.to_owned())].into());
        }
        p.status = phase.map(|phase| k8s_openapi::api::core::v1::PodStatus {
            phase: Some(phase.to_owned()),
            ..Default::default()
        });
        first_sight(&p, &state)
    };
    assert_eq!(with(Some("api"), Some("Succeeded")), Admission::Terminal);
    assert_eq!(
        with(Some("api"), Some("Failed")),
        Admission::Terminal,
        "not admitted again, even on a full node"
    );
    for (source, phase) in [
        (Some("api"), Some("Running")),
        (Some("api"), Some("Pending")),
        (Some("api"), None),
        (Some("file"), Some("Succeeded")),
        (None, Some("Failed")),
    ] {
        let admission = with(source, phase);
        assert!(
            matches!(&admission, Admission::Rejected(r) if r.reason == "OutOfpods"),
            "{source:?} {phase:?}: {admission:?}"
        );
    }
}

#[test]
fn toleration_type_is_the_api_s() {
    // The helper tolerates with upstream's field semantics on the real type.
    let t = Toleration {
        operator: Some("Exists".to_owned()),
        ..Default::default()
    };
    assert!(
        affinity::untolerated_taint(
            &Pod {
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    tolerations: Some(vec![t]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &[taint("any", Some("v"), "NoExecute")]
        )
        .is_none()
    );
}
