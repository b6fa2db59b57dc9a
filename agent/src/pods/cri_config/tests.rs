use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HostPathVolumeSource, PodDNSConfig, PodDNSConfigOption, ResourceRequirements,
    SecretKeySelector, SecurityContext, Sysctl, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::pods::labels::{
    CONTAINER_HASH_ANNOTATION, CONTAINER_NAME_LABEL, CONTAINER_RESTART_COUNT_ANNOTATION,
    ContainerAnnotations, ContainerIdentity, POD_UID_LABEL,
};
use crate::pods::plan::container_hash;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

fn quantities(s: &str) -> Option<BTreeMap<String, Quantity>> {
    let m: BTreeMap<String, Quantity> = s
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = e.split_once('=').expect("name=value");
            (k.to_owned(), Quantity(v.to_owned()))
        })
        .collect();
    (!m.is_empty()).then_some(m)
}

/// A container with `requests` and `limits` written as `cpu=100m,memory=64Mi`.
fn container(name: &str, requests: &str, limits: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some("busybox:1.36".to_owned()),
        resources: Some(ResourceRequirements {
            requests: quantities(requests),
            limits: quantities(limits),
            ..ResourceRequirements::default()
        }),
        termination_message_path: Some("/dev/termination-log".to_owned()),
        ..Container::default()
    }
}

fn pod_with(containers: Vec<Container>, edit: impl FnOnce(&mut PodSpec)) -> Pod {
    let mut spec = PodSpec {
        containers,
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    edit(&mut spec);
    Pod {
        metadata: ObjectMeta {
            name: Some("web-node1".to_owned()),
            namespace: Some("prod".to_owned()),
            uid: Some("uid-1".to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            annotations: Some(BTreeMap::from([("note".to_owned(), "hello".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn pod(edit: impl FnOnce(&mut PodSpec)) -> Pod {
    pod_with(vec![container("app", "", "")], edit)
}

fn host_resolv() -> ResolvConf {
    ResolvConf {
        nameservers: strings(&["10.0.0.2"]),
        searches: strings(&["corp.example"]),
        options: strings(&["ndots:1", "timeout:2"]),
    }
}

fn sandbox_ctx() -> SandboxContext {
    SandboxContext {
        pod_logs_dir: PathBuf::from("/var/lib/bpflet/pods"),
        cgroup_parent: "/kubepods/besteffort/poduid-1".to_owned(),
        dns: DnsSettings {
            host: host_resolv(),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".to_owned(),
        },
    }
}

fn container_ctx(volumes: Option<&PodVolumes>) -> ContainerContext<'_> {
    ContainerContext {
        volumes,
        sub_paths: None,
        node_name: "node1".to_owned(),
        pod_ips: strings(&["10.88.0.5", "fd00::5"]),
        host_ips: strings(&["192.168.1.10"]),
        memory_capacity_bytes: GI,
        allocatable: NodeAllocatable {
            cpu_millis: 2000,
            memory_bytes: 4 * GI,
            ephemeral_storage_bytes: 100 * GI,
        },
        env_objects: None,
    }
}

fn build_sandbox(pod: &Pod) -> api::PodSandboxConfig {
    sandbox_config(pod, 2, &sandbox_ctx()).expect("sandbox config")
}

fn namespaces(config: &api::PodSandboxConfig) -> (i32, i32, i32) {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .expect("namespace options");
    (ns.network, ns.pid, ns.ipc)
}

#[test]
fn sandbox_metadata_labels_and_linux() {
    let p = pod(|s| {
        s.security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![4000]),
            sysctls: Some(vec![
                Sysctl {
                    name: "kernel.shm_rmid_forced".to_owned(),
                    value: "1".to_owned(),
                },
                Sysctl {
                    name: "net/ipv4/conf/eth0.100/forwarding".to_owned(),
                    value: "0".to_owned(),
                },
            ]),
            ..PodSecurityContext::default()
        });
    });
    let config = build_sandbox(&p);
    assert_eq!(
        config.metadata,
        Some(api::PodSandboxMetadata {
            name: "web-node1".to_owned(),
            uid: "uid-1".to_owned(),
            namespace: "prod".to_owned(),
            attempt: 2,
        })
    );
    assert_eq!(config.hostname, "web-node1");
    assert_eq!(
        config.log_directory,
        "/var/lib/bpflet/pods/prod_web-node1_uid-1"
    );
    assert_eq!(config.labels["app"], "web");
    assert_eq!(config.labels[POD_UID_LABEL], "uid-1");
    assert_eq!(config.labels["io.kubernetes.pod.name"], "web-node1");
    assert_eq!(config.labels["io.kubernetes.pod.namespace"], "prod");
    assert_eq!(
        config.annotations,
        HashMap::from([("note".to_owned(), "hello".to_owned())])
    );
    let linux = config.linux.expect("linux");
    assert_eq!(linux.cgroup_parent, "/kubepods/besteffort/poduid-1");
    assert_eq!(
        linux.sysctls,
        HashMap::from([
            ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
            (
                "net.ipv4.conf.eth0/100.forwarding".to_owned(),
                "0".to_owned()
            ),
        ])
    );
    let sc = linux.security_context.expect("security context");
    assert_eq!(sc.run_as_user, Some(api::Int64Value { value: 1000 }));
    assert_eq!(sc.run_as_group, Some(api::Int64Value { value: 3000 }));
    assert_eq!(sc.supplemental_groups, vec![4000, 2000]);
    assert!(!sc.privileged);
    assert_eq!(
        sc.seccomp.map(|s| s.profile_type),
        Some(api::security_profile::ProfileType::Unconfined.into())
    );
}

#[test]
fn host_network_vs_pod_network() {
    use api::NamespaceMode::{Container as Ctr, Node, Pod as P};
    struct Case {
        name: &'static str,
        edit: fn(&mut PodSpec),
        hostname: &'static str,
        namespaces: (api::NamespaceMode, api::NamespaceMode, api::NamespaceMode),
    }
    let cases = [
        Case {
            name: "pod network",
            edit: |_| {},
            hostname: "web-node1",
            namespaces: (P, Ctr, P),
        },
        Case {
            name: "spec.hostname",
            edit: |s| s.hostname = Some("custom".to_owned()),
            hostname: "custom",
            namespaces: (P, Ctr, P),
        },
        Case {
            name: "host network shares the node's UTS namespace: no hostname",
            edit: |s| {
                s.host_network = Some(true);
                s.hostname = Some("ignored".to_owned());
            },
            hostname: "",
            namespaces: (Node, Ctr, P),
        },
        Case {
            name: "shareProcessNamespace",
            edit: |s| s.share_process_namespace = Some(true),
            hostname: "web-node1",
            namespaces: (P, P, P),
        },
        Case {
            name: "hostPID",
            edit: |s| s.host_pid = Some(true),
            hostname: "web-node1",
            namespaces: (P, Node, P),
        },
        Case {
            name: "hostPID and hostIPC",
            edit: |s| {
                s.host_pid = Some(true);
                s.host_ipc = Some(true);
                s.share_process_namespace = Some(true);
            },
            hostname: "web-node1",
            namespaces: (P, Node, Node),
        },
    ];
    for case in cases {
        let p = pod(case.edit);
        let config = build_sandbox(&p);
        assert_eq!(config.hostname, case.hostname, "{}", case.name);
        let (n, pid, ipc) = case.namespaces;
        assert_eq!(
            shares_pid_namespace(p.spec.as_ref().expect("spec")),
            pid != Ctr,
            "{}",
            case.name
        );
        assert_eq!(
            namespaces(&config),
            (n.into(), pid.into(), ipc.into()),
            "{}",
            case.name
        );
        // Containers share the sandbox's namespace choices.
        let c = container_config(&p, &p.spec.as_ref().expect("spec").containers[0], 0, &{
            let mut ctx = container_ctx(None);
            ctx.pod_ips.clear();
            ctx
        })
        .expect("container config");
        let csc = c.linux.and_then(|l| l.security_context).expect("sc");
        let ns = csc.namespace_options.expect("namespace options");
        assert_eq!(
            (ns.network, ns.pid, ns.ipc),
            (n.into(), pid.into(), ipc.into()),
            "{}",
            case.name
        );
    }
}

#[test]
fn long_pod_names_are_cut_to_a_dns_label() {
    let mut p = pod(|_| {});
    let name = format!("{}-.{}", "a".repeat(61), "b".repeat(20));
    p.metadata.name = Some(name);
    assert_eq!(build_sandbox(&p).hostname, "a".repeat(61));

    let bad = pod(|s| s.hostname = Some("Not_A_Label".to_owned()));
    let err = sandbox_config(&bad, 0, &sandbox_ctx()).expect_err("invalid hostname");
    assert!(
        err.to_string()
            .starts_with("pod web-node1_prod(uid-1): spec.hostname: \"Not_A_Label\""),
        "{err}"
    );
}

#[test]
fn dns_by_policy() {
    struct Case {
        name: &'static str,
        policy: Option<&'static str>,
        host_network: bool,
        cluster_dns: &'static [&'static str],
        extra: Option<PodDNSConfig>,
        servers: &'static [&'static str],
        searches: &'static [&'static str],
        options: &'static [&'static str],
    }
    let extra = || {
        Some(PodDNSConfig {
            nameservers: Some(strings(&["1.1.1.1", "10.0.0.2"])),
            searches: Some(strings(&["extra.example"])),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".to_owned()),
                    value: Some("3".to_owned()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".to_owned()),
                    value: None,
                },
            ]),
        })
    };
    let cluster_searches: &[&str] = &[
        "prod.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "corp.example",
    ];
    let cases = [
        Case {
            name: "ClusterFirst without cluster DNS falls back to the host",
            policy: None,
            host_network: false,
            cluster_dns: &[],
            extra: None,
            servers: &["10.0.0.2"],
            searches: &["corp.example"],
            options: &["ndots:1", "timeout:2"],
        },
        Case {
            name: "ClusterFirst with cluster DNS",
            policy: Some("ClusterFirst"),
            host_network: false,
            cluster_dns: &["10.96.0.10"],
            extra: None,
            servers: &["10.96.0.10"],
            searches: cluster_searches,
            options: &["ndots:5"],
        },
        Case {
            name: "ClusterFirst on the host network is Default",
            policy: Some("ClusterFirst"),
            host_network: true,
            cluster_dns: &["10.96.0.10"],
            extra: None,
            servers: &["10.0.0.2"],
            searches: &["corp.example"],
            options: &["ndots:1", "timeout:2"],
        },
        Case {
            name: "ClusterFirstWithHostNet",
            policy: Some("ClusterFirstWithHostNet"),
            host_network: true,
            cluster_dns: &["10.96.0.10"],
            extra: None,
            servers: &["10.96.0.10"],
            searches: cluster_searches,
            options: &["ndots:5"],
        },
        Case {
            name: "Default with dnsConfig appended",
            policy: Some("Default"),
            host_network: false,
            cluster_dns: &["10.96.0.10"],
            extra: extra(),
            servers: &["10.0.0.2", "1.1.1.1"],
            searches: &["corp.example", "extra.example"],
            options: &["ndots:3", "timeout:2", "edns0"],
        },
        Case {
            name: "None uses dnsConfig only",
            policy: Some("None"),
            host_network: false,
            cluster_dns: &["10.96.0.10"],
            extra: extra(),
            servers: &["1.1.1.1", "10.0.0.2"],
            searches: &["extra.example"],
            options: &["ndots:3", "edns0"],
        },
    ];
    for case in cases {
        let p = pod(|s| {
            s.dns_policy = case.policy.map(str::to_owned);
            s.host_network = Some(case.host_network);
            s.dns_config = case.extra;
        });
        let mut ctx = sandbox_ctx();
        ctx.dns.cluster_dns = strings(case.cluster_dns);
        let dns = sandbox_config(&p, 0, &ctx)
            .expect("sandbox config")
            .dns_config
            .expect("dns config");
        assert_eq!(dns.servers, strings(case.servers), "{}", case.name);
        assert_eq!(dns.searches, strings(case.searches), "{}", case.name);
        assert_eq!(dns.options, strings(case.options), "{}", case.name);
    }
}

#[test]
fn dns_limits_and_bad_policy() {
    let p = pod(|s| {
        s.dns_policy = Some("None".to_owned());
        s.dns_config = Some(PodDNSConfig {
            nameservers: Some(strings(&["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"])),
            searches: Some((0..40).map(|i| format!("s{i}.example")).collect()),
            options: None,
        });
    });
    let dns = build_sandbox(&p).dns_config.expect("dns");
    assert_eq!(dns.servers, strings(&["1.1.1.1", "2.2.2.2", "3.3.3.3"]));
    assert_eq!(dns.searches.len(), MAX_DNS_SEARCHES);

    let p = pod(|s| s.dns_policy = Some("Sometimes".to_owned()));
    let err = sandbox_config(&p, 0, &sandbox_ctx()).expect_err("bad policy");
    assert!(
        err.to_string()
            .contains("spec.dnsPolicy: \"Sometimes\": must be"),
        "{err}"
    );
}

#[test]
fn resolv_conf_parsing() {
    let text = "\
# generated
domain corp.example
nameserver 10.0.0.2
nameserver 10.0.0.3
search old.example
search a.example. . b.example
options ndots:2 rotate
options ndots:1
; comment
nameserver
";
    assert_eq!(
        ResolvConf::parse(text),
        ResolvConf {
            nameservers: strings(&["10.0.0.2", "10.0.0.3"]),
            searches: strings(&["a.example", "b.example"]),
            options: strings(&["ndots:1", "rotate"]),
        }
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    fs::write(&path, text).expect("write");
    assert_eq!(ResolvConf::read(&path).expect("read").nameservers.len(), 2);
    let missing = dir.path().join("missing");
    let err = ResolvConf::read(&missing).expect_err("missing file");
    assert_eq!(
        err.to_string(),
        format!("cannot read {}", missing.display())
    );
}

fn port(container_port: i32, host_port: Option<i32>, protocol: Option<&str>) -> ContainerPort {
    ContainerPort {
        container_port,
        host_port,
        protocol: protocol.map(str::to_owned),
        ..ContainerPort::default()
    }
}

#[test]
fn port_mappings_from_app_containers_and_sidecars() {
    let mut app = container("app", "", "");
    app.ports = Some(vec![
        port(8080, Some(80), None),
        port(53, None, Some("UDP")),
        ContainerPort {
            host_ip: Some("127.0.0.1".to_owned()),
            ..port(9090, Some(9090), Some("SCTP"))
        },
        // Exact duplicates are dropped.
        port(8080, Some(80), Some("TCP")),
    ]);
    let mut sidecar = container("proxy", "", "");
    sidecar.restart_policy = Some("Always".to_owned());
    sidecar.ports = Some(vec![port(15001, None, None)]);
    let mut init = container("setup", "", "");
    init.ports = Some(vec![port(7000, None, None)]);
    let p = pod_with(vec![app], |s| s.init_containers = Some(vec![init, sidecar]));
    let mapping =
        |protocol: api::Protocol, container_port, host_port, host_ip: &str| api::PortMapping {
            protocol: protocol.into(),
            container_port,
            host_port,
            host_ip: host_ip.to_owned(),
        };
    assert_eq!(
        build_sandbox(&p).port_mappings,
        vec![
            mapping(api::Protocol::Tcp, 8080, 80, ""),
            mapping(api::Protocol::Udp, 53, 0, ""),
            mapping(api::Protocol::Sctp, 9090, 9090, "127.0.0.1"),
            mapping(api::Protocol::Tcp, 15001, 0, ""),
        ]
    );
}

#[test]
fn bad_ports_name_the_container_and_port() {
    let cases = [
        (port(80, None, Some("ICMP")), "ports[0]: protocol \"ICMP\""),
        (
            port(0, None, None),
            "ports[0]: containerPort 0 is not in 1-65535",
        ),
        (port(80, Some(70000), None), "ports[0]: hostPort 70000"),
    ];
    for (bad, expected) in cases {
        let mut c = container("app", "", "");
        c.ports = Some(vec![bad]);
        let p = pod_with(vec![c], |_| {});
        let err = sandbox_config(&p, 0, &sandbox_ctx()).expect_err(expected);
        let msg = err.to_string();
        assert!(
            msg.contains("container \"app\"") && msg.contains(expected),
            "{msg:?} lacks {expected:?}"
        );
    }
}

#[test]
fn sandbox_is_privileged_when_any_container_is() {
    let mut init = container("init", "", "");
    init.security_context = Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    });
    let p = pod(|s| s.init_containers = Some(vec![init]));
    let sc = build_sandbox(&p)
        .linux
        .and_then(|l| l.security_context)
        .expect("sc");
    assert!(sc.privileged);
}

/// (cpu shares, cpu quota, cpu period, memory limit, oom_score_adj)
type Resources = (i64, i64, i64, i64, i64);

fn resources_of(r: Option<&api::LinuxContainerResources>) -> Resources {
    let r = r.expect("resources");
    (
        r.cpu_shares,
        r.cpu_quota,
        r.cpu_period,
        r.memory_limit_in_bytes,
        r.oom_score_adj,
    )
}

#[test]
fn resources_per_qos_class() {
    let mi = |n: u64| i64::try_from(n * MI).expect("fits");
    let cases: [(&str, &str, &str, Resources, Resources); 4] = [
        (
            "Guaranteed",
            "cpu=500m,memory=128Mi",
            "cpu=500m,memory=128Mi",
            (512, 50_000, 100_000, mi(128), -997),
            (512, 50_000, 100_000, mi(128), 0),
        ),
        (
            "Burstable without cpu limit",
            "cpu=250m,memory=64Mi",
            "memory=128Mi",
            // 1000 - 1000 * 64Mi / 1Gi = 938
            (256, 0, 100_000, mi(128), 938),
            (256, 0, 100_000, mi(128), 0),
        ),
        (
            "Burstable with cpu limit only",
            "",
            "cpu=2",
            (2048, 200_000, 100_000, 0, 999),
            (2048, 200_000, 100_000, 0, 0),
        ),
        (
            "BestEffort",
            "",
            "",
            (2, 0, 100_000, 0, 1000),
            (2, 0, 100_000, 0, 0),
        ),
    ];
    for (name, requests, limits, expected, sandbox) in cases {
        let p = pod_with(vec![container("app", requests, limits)], |_| {});
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let config = container_config(&p, c, 0, &container_ctx(None)).expect(name);
        assert_eq!(
            resources_of(config.linux.as_ref().and_then(|l| l.resources.as_ref())),
            expected,
            "{name}"
        );
        let sb = build_sandbox(&p);
        assert_eq!(
            resources_of(sb.linux.as_ref().and_then(|l| l.resources.as_ref())),
            sandbox,
            "{name} (sandbox)"
        );
    }
}

fn value(name: &str, v: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(v.to_owned()),
        value_from: None,
    }
}

fn from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(source),
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    from(
        name,
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        },
    )
}

fn resource(name: &str, res: &str, divisor: Option<&str>, container: Option<&str>) -> EnvVar {
    from(
        name,
        EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: container.map(str::to_owned),
                divisor: divisor.map(|d| Quantity(d.to_owned())),
                resource: res.to_owned(),
            }),
            ..EnvVarSource::default()
        },
    )
}

#[test]
fn environment_resolution() {
    type Expect = Result<&'static [(&'static str, &'static str)], &'static str>;
    let cases: Vec<(&str, Vec<EnvVar>, Expect)> = vec![
        (
            "values and expansion",
            vec![
                value("A", "x"),
                value("B", "$(A)-y"),
                value("C", "$(LATER) $$(A) $A $("),
                value("LATER", "z"),
                EnvVar {
                    name: "EMPTY".to_owned(),
                    ..EnvVar::default()
                },
                value("A", "again"),
            ],
            Ok(&[
                ("A", "again"),
                ("B", "x-y"),
                ("C", "$(LATER) $(A) $A $("),
                ("LATER", "z"),
                ("EMPTY", ""),
            ]),
        ),
        (
            "fieldRef",
            vec![
                field("NAME", "metadata.name"),
                field("NS", "metadata.namespace"),
                field("UID", "metadata.uid"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("IP", "status.podIP"),
                field("IPS", "status.podIPs"),
                field("HOST", "status.hostIP"),
                field("APP", "metadata.labels['app']"),
                field("NOTE", "metadata.annotations['note']"),
                field("NONE", "metadata.labels['missing']"),
                value("URL", "http://$(IP):80/$(NAME)"),
            ],
            Ok(&[
                ("NAME", "web-node1"),
                ("NS", "prod"),
                ("UID", "uid-1"),
                ("NODE", "node1"),
                ("SA", ""),
                ("IP", "10.88.0.5"),
                ("IPS", "10.88.0.5,fd00::5"),
                ("HOST", "192.168.1.10"),
                ("APP", "web"),
                ("NOTE", "hello"),
                ("NONE", ""),
                ("URL", "http://10.88.0.5:80/web-node1"),
            ]),
        ),
        (
            "resourceFieldRef",
            vec![
                resource("LIM_CPU", "limits.cpu", None, None),
                resource("LIM_CPU_M", "limits.cpu", Some("1m"), None),
                resource("REQ_CPU", "requests.cpu", None, None),
                resource("REQ_CPU_M", "requests.cpu", Some("1m"), None),
                resource("LIM_MEM", "limits.memory", None, None),
                resource("LIM_MEM_MI", "limits.memory", Some("1Mi"), None),
                resource("REQ_MEM_MI", "requests.memory", Some("1Mi"), None),
                resource("LIM_EPH_GI", "limits.ephemeral-storage", Some("1Gi"), None),
                resource("REQ_EPH", "requests.ephemeral-storage", None, None),
                resource("OTHER_CPU_M", "limits.cpu", Some("1m"), Some("side")),
            ],
            Ok(&[
                ("LIM_CPU", "2"),
                ("LIM_CPU_M", "2000"),
                ("REQ_CPU", "1"),
                ("REQ_CPU_M", "250"),
                ("LIM_MEM", "134217728"),
                ("LIM_MEM_MI", "128"),
                ("REQ_MEM_MI", "64"),
                ("LIM_EPH_GI", "100"),
                ("REQ_EPH", "0"),
                ("OTHER_CPU_M", "300"),
            ]),
        ),
        (
            "configMapKeyRef",
            vec![from(
                "CM",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector::default()),
                    ..EnvVarSource::default()
                },
            )],
            Err("environment variable \"CM\": valueFrom.configMapKeyRef needs an API server"),
        ),
        (
            "secretKeyRef",
            vec![from(
                "S",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector::default()),
                    ..EnvVarSource::default()
                },
            )],
            Err("environment variable \"S\": valueFrom.secretKeyRef needs an API server"),
        ),
        (
            "unsupported fieldRef",
            vec![field("PHASE", "status.phase")],
            Err("environment variable \"PHASE\": fieldRef \"status.phase\" is not supported"),
        ),
        (
            "unknown resource",
            vec![resource("X", "limits.gpu", None, None)],
            Err("environment variable \"X\": resourceFieldRef.resource \"limits.gpu\""),
        ),
        (
            "zero divisor",
            vec![resource("X", "limits.cpu", Some("0"), None)],
            Err("resourceFieldRef.divisor must not be zero"),
        ),
        (
            "unknown container",
            vec![resource("X", "limits.cpu", None, Some("ghost"))],
            Err("resourceFieldRef.containerName \"ghost\": no such container"),
        ),
        (
            "empty valueFrom",
            vec![from("X", EnvVarSource::default())],
            Err("environment variable \"X\": valueFrom names no source"),
        ),
    ];
    for (name, env, expect) in cases {
        let mut app = container("app", "cpu=250m,memory=64Mi", "memory=128Mi");
        app.env = Some(env);
        let side = container("side", "", "cpu=300m");
        let p = pod_with(vec![app, side], |_| {});
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let result = container_config(&p, c, 0, &container_ctx(None));
        match (result, expect) {
            (Ok(config), Ok(expected)) => {
                let got: Vec<(&str, &str)> = config
                    .envs
                    .iter()
                    .map(|kv| (kv.key.as_str(), kv.value.as_str()))
                    .collect();
                assert_eq!(got, expected, "{name}");
            }
            (Err(e), Err(expected)) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("pod web-node1_prod(uid-1): container \"app\": ")
                        && msg.contains(expected),
                    "{name}: {msg:?} lacks {expected:?}"
                );
            }
            (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn pod_ip_comes_from_the_host_on_the_host_network_only() {
    let mut app = container("app", "", "");
    app.env = Some(vec![field("IP", "status.podIP")]);
    let mut ctx = container_ctx(None);
    ctx.pod_ips.clear();

    let p = pod_with(vec![app.clone()], |s| s.host_network = Some(true));
    let config = container_config(&p, &app, 0, &ctx).expect("host network");
    assert_eq!(config.envs[0].value, "192.168.1.10");

    let p = pod_with(vec![app.clone()], |_| {});
    let err = container_config(&p, &app, 0, &ctx).expect_err("pod network without IP");
    assert!(
        err.to_string().ends_with("the pod IP is not known yet"),
        "{err}"
    );
}

#[test]
fn env_from_is_refused() {
    let mut app = container("app", "", "");
    app.env_from = Some(vec![EnvFromSource::default()]);
    let p = pod_with(vec![app.clone()], |_| {});
    let err = container_config(&p, &app, 0, &container_ctx(None)).expect_err("envFrom");
    assert_eq!(
        err.to_string(),
        "pod web-node1_prod(uid-1): container \"app\": envFrom: configMapRef and secretRef \
         need an API server; not supported"
    );
}

/// configMap `all` (`A`, `B`, `1st`), secret `s` (`TOKEN`), as read from the API server;
/// `gone` of either kind does not exist.
fn env_objects() -> crate::pods::objects::EnvObjects {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let cm = ConfigMap {
        data: Some(BTreeMap::from([
            ("A".to_owned(), "from-cm".to_owned()),
            ("B".to_owned(), "b".to_owned()),
            ("1st".to_owned(), "one".to_owned()),
        ])),
        ..ConfigMap::default()
    };
    let secret = Secret {
        data: Some(BTreeMap::from([(
            "TOKEN".to_owned(),
            k8s_openapi::ByteString(b"t0k".to_vec()),
        )])),
        ..Secret::default()
    };
    crate::pods::objects::EnvObjects {
        config_maps: BTreeMap::from([
            ("all".to_owned(), Some(std::sync::Arc::new(cm))),
            ("gone".to_owned(), None),
        ]),
        secrets: BTreeMap::from([
            ("s".to_owned(), Some(std::sync::Arc::new(secret))),
            ("gone".to_owned(), None),
        ]),
    }
}

fn env_from(kind: ObjectKind, name: &str, prefix: Option<&str>, optional: bool) -> EnvFromSource {
    use k8s_openapi::api::core::v1::{ConfigMapEnvSource, SecretEnvSource};
    let optional = optional.then_some(true);
    EnvFromSource {
        config_map_ref: (kind == ObjectKind::ConfigMap).then(|| ConfigMapEnvSource {
            name: name.to_owned(),
            optional,
        }),
        secret_ref: (kind == ObjectKind::Secret).then(|| SecretEnvSource {
            name: name.to_owned(),
            optional,
        }),
        prefix: prefix.map(str::to_owned),
    }
}

fn cm_key(var: &str, name: &str, key: &str, optional: bool) -> EnvVar {
    from(
        var,
        EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.to_owned(),
                key: key.to_owned(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        },
    )
}

fn secret_key_ref(var: &str, name: &str, key: &str, optional: bool) -> EnvVar {
    from(
        var,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.to_owned(),
                key: key.to_owned(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        },
    )
}

fn envs_of(config: &api::ContainerConfig) -> Vec<(&str, &str)> {
    config
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect()
}

#[test]
fn env_from_the_api_env_from_first_then_env_in_order_later_wins() {
    let objects = env_objects();
    let mut app = container("app", "", "");
    app.env_from = Some(vec![
        env_from(ObjectKind::ConfigMap, "all", None, false),
        env_from(ObjectKind::Secret, "s", Some("S_"), false),
        env_from(ObjectKind::ConfigMap, "gone", Some("G_"), true),
    ]);
    app.env = Some(vec![
        value("A", "env-wins"),
        cm_key("X", "all", "B", false),
        secret_key_ref("Y", "s", "TOKEN", false),
        cm_key("NO_KEY", "all", "missing", true),
        cm_key("NO_MAP", "gone", "k", true),
        secret_key_ref("NO_SECRET", "gone", "k", true),
        value("U", "$(B)-$(S_TOKEN)-$(NO_KEY)"),
        value("B", "last"),
    ]);
    let p = pod_with(vec![app.clone()], |_| {});
    let ctx = ContainerContext {
        env_objects: Some(&objects),
        ..container_ctx(None)
    };
    let config = container_config(&p, &app, 0, &ctx).expect("config");
    assert_eq!(
        envs_of(&config),
        [
            ("1st", "one"),
            ("A", "env-wins"),
            ("B", "last"),
            ("S_TOKEN", "t0k"),
            ("X", "b"),
            ("Y", "t0k"),
            ("U", "b-t0k-$(NO_KEY)"),
        ],
        "envFrom first (sorted keys, prefix); env replaces in place; optional misses are left out"
    );
    assert!(skipped_env_keys(&p, &app, &objects).is_empty());
}

#[test]
fn a_missing_object_or_key_fails_with_upstreams_message() {
    let objects = env_objects();
    let cases: Vec<(Option<EnvFromSource>, Option<EnvVar>, &str)> = vec![
        (
            Some(env_from(ObjectKind::ConfigMap, "gone", None, false)),
            None,
            "configmap \"gone\" not found",
        ),
        (
            Some(env_from(ObjectKind::Secret, "gone", Some("P_"), false)),
            None,
            "secret \"gone\" not found",
        ),
        (
            None,
            Some(cm_key("V", "gone", "k", false)),
            "configmap \"gone\" not found",
        ),
        (
            None,
            Some(cm_key("V", "all", "nokey", false)),
            "couldn't find key nokey in ConfigMap prod/all",
        ),
        (
            None,
            Some(secret_key_ref("V", "gone", "k", false)),
            "secret \"gone\" not found",
        ),
        (
            None,
            Some(secret_key_ref("V", "s", "nokey", false)),
            "couldn't find key nokey in Secret prod/s",
        ),
    ];
    for (source, var, expected) in cases {
        let mut app = container("app", "", "");
        app.env_from = source.map(|s| vec![s]);
        app.env = var.map(|v| vec![v]);
        let p = pod_with(vec![app.clone()], |_| {});
        let ctx = ContainerContext {
            env_objects: Some(&objects),
            ..container_ctx(None)
        };
        match container_config(&p, &app, 0, &ctx) {
            Err(ConfigBuildError::MissingObject { message, field, .. }) => {
                assert_eq!(message, expected, "{field}");
            }
            other => panic!("{expected}: got {other:?}"),
        }
    }
}

#[test]
fn env_from_keys_that_are_not_variable_names_are_skipped_and_reported() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut objects = env_objects();
    let odd = ConfigMap {
        data: Some(BTreeMap::from([
            ("GOOD".to_owned(), "1".to_owned()),
            ("HAS=EQUALS".to_owned(), "2".to_owned()),
            ("\u{dc}MLAUT".to_owned(), "3".to_owned()),
            ("TAB\t".to_owned(), "4".to_owned()),
            ("with space".to_owned(), "5".to_owned()),
        ])),
        ..ConfigMap::default()
    };
    objects
        .config_maps
        .insert("odd".to_owned(), Some(std::sync::Arc::new(odd)));
    let mut app = container("app", "", "");
    app.env_from = Some(vec![env_from(
        ObjectKind::ConfigMap,
        "odd",
        Some("P_"),
        false,
    )]);
    let p = pod_with(vec![app.clone()], |_| {});
    let ctx = ContainerContext {
        env_objects: Some(&objects),
        ..container_ctx(None)
    };
    let config = container_config(&p, &app, 0, &ctx).expect("config");
    assert_eq!(
        envs_of(&config),
        [("P_GOOD", "1"), ("P_with space", "5")],
        "printable ASCII without '=' is a name (upstream's relaxed rule)"
    );
    let skipped = skipped_env_keys(&p, &app, &objects);
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        skipped[0].message(),
        "Keys [P_HAS=EQUALS, P_TAB\t, P_\u{dc}MLAUT] from the EnvFrom configMap prod/odd were \
         skipped since they are considered invalid environment variable names."
    );
    assert!(!is_env_var_name(""));
}

#[test]
fn expansion_rules() {
    let lookup = |name: &str| match name {
        "A" => Some("x".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let cases = [
        ("plain", "plain"),
        ("$(A)", "x"),
        ("pre$(A)post", "prexpost"),
        ("$(A)$(A)", "xx"),
        ("$(EMPTY)|", "|"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$x"),
        ("$$", "$"),
        ("$", "$"),
        ("a$", "a$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("$(A$(A))", "$(A$(A))"),
        ("ünï$(A)cödé", "ünïxcödé"),
    ];
    for (input, expected) in cases {
        assert_eq!(expand(input, lookup), expected, "{input:?}");
    }
}

#[test]
fn command_and_args_are_expanded_from_the_environment() {
    let mut app = container("app", "", "");
    app.command = Some(strings(&["sh", "-c"]));
    app.args = Some(strings(&["echo $(MSG) $(NOPE) $$(MSG)"]));
    app.env = Some(vec![value("MSG", "hi")]);
    app.working_dir = Some("/work".to_owned());
    let p = pod_with(vec![app.clone()], |_| {});
    let config = container_config(&p, &app, 3, &container_ctx(None)).expect("config");
    assert_eq!(config.command, strings(&["sh", "-c"]));
    assert_eq!(config.args, strings(&["echo hi $(NOPE) $(MSG)"]));
    assert_eq!(config.working_dir, "/work");
}

#[test]
fn container_metadata_labels_annotations_and_log_path() {
    let app = container("app", "", "");
    let p = pod_with(vec![app.clone()], |_| {});
    let config = container_config(&p, &app, 3, &container_ctx(None)).expect("config");
    assert_eq!(
        config.metadata,
        Some(api::ContainerMetadata {
            name: "app".to_owned(),
            attempt: 3
        })
    );
    let image = config.image.expect("image");
    assert_eq!(image.image, "busybox:1.36");
    assert_eq!(image.user_specified_image, "busybox:1.36");
    assert_eq!(config.log_path, "app/3.log");
    assert!(!config.stdin && !config.stdin_once && !config.tty);

    // The spec's stdin, stdinOnce and tty reach the runtime (for `kubectl attach -i`).
    let interactive = Container {
        stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(true),
        ..app.clone()
    };
    let p2 = pod_with(vec![interactive.clone()], |_| {});
    let attached = container_config(&p2, &interactive, 0, &container_ctx(None)).expect("config");
    assert!(attached.stdin && attached.stdin_once && attached.tty);
    assert_eq!(config.labels[CONTAINER_NAME_LABEL], "app");
    assert_eq!(
        ContainerIdentity::from_labels(&config.labels),
        Some(ContainerIdentity {
            pod_name: "web-node1".to_owned(),
            pod_namespace: "prod".to_owned(),
            pod_uid: "uid-1".to_owned(),
            container_name: "app".to_owned(),
        })
    );
    assert_eq!(
        config.annotations[CONTAINER_HASH_ANNOTATION],
        container_hash(&app)
    );
    assert_eq!(config.annotations[CONTAINER_RESTART_COUNT_ANNOTATION], "3");
    let parsed = ContainerAnnotations::parse(&config.annotations).expect("parse");
    assert_eq!(parsed.restart_count, 3);
    assert_eq!(parsed.pod_termination_grace_seconds, Some(30));
    assert_eq!(
        parsed.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );

    let mut no_image = app;
    no_image.image = None;
    let err = container_config(&p, &no_image, 0, &container_ctx(None)).expect_err("no image");
    assert!(
        err.to_string()
            .ends_with("container \"app\": image: is required"),
        "{err}"
    );
}

#[test]
fn security_context() {
    let mut app = container("app", "", "");
    app.security_context = Some(SecurityContext {
        run_as_user: Some(1001),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(strings(&["NET_ADMIN"])),
            drop: Some(strings(&["ALL"])),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    });
    let p = pod_with(vec![app.clone()], |s| {
        s.security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            run_as_non_root: Some(true),
            fs_group: Some(2000),
            ..PodSecurityContext::default()
        });
    });
    let sc = container_config(&p, &app, 0, &container_ctx(None))
        .expect("config")
        .linux
        .and_then(|l| l.security_context)
        .expect("sc");
    assert_eq!(sc.run_as_user, Some(api::Int64Value { value: 1001 }));
    assert_eq!(sc.run_as_group, Some(api::Int64Value { value: 3000 }));
    assert_eq!(sc.supplemental_groups, vec![2000]);
    assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.add_capabilities, strings(&["NET_ADMIN"]));
    assert_eq!(caps.drop_capabilities, strings(&["ALL"]));
    assert_eq!(sc.masked_paths, strings(DEFAULT_MASKED_PATHS));
    assert_eq!(sc.readonly_paths, strings(DEFAULT_READONLY_PATHS));
    assert_eq!(
        sc.seccomp.map(|s| s.profile_type),
        Some(api::security_profile::ProfileType::RuntimeDefault.into())
    );

    // Defaults: nothing set, unconfined seccomp, escalation allowed.
    let plain = container("plain", "", "");
    let p = pod_with(vec![plain.clone()], |_| {});
    let sc = container_config(&p, &plain, 0, &container_ctx(None))
        .expect("config")
        .linux
        .and_then(|l| l.security_context)
        .expect("sc");
    assert_eq!(sc.run_as_user, None);
    assert_eq!(sc.capabilities, None);
    assert!(!sc.readonly_rootfs && !sc.no_new_privs);
    assert_eq!(
        sc.seccomp.map(|s| s.profile_type),
        Some(api::security_profile::ProfileType::Unconfined.into())
    );

    // Privileged: the runtime unmasks everything.
    let mut privileged = container("priv", "", "");
    privileged.security_context = Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    });
    let p = pod_with(vec![privileged.clone()], |_| {});
    let sc = container_config(&p, &privileged, 0, &container_ctx(None))
        .expect("config")
        .linux
        .and_then(|l| l.security_context)
        .expect("sc");
    assert!(sc.privileged);
    assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());

    // runAsNonRoot with an explicit root user.
    let mut root = container("root", "", "");
    root.security_context = Some(SecurityContext {
        run_as_user: Some(0),
        ..SecurityContext::default()
    });
    let p = pod_with(vec![root.clone()], |s| {
        s.security_context = Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        });
    });
    let err = container_config(&p, &root, 0, &container_ctx(None)).expect_err("root");
    assert!(
        err.to_string()
            .ends_with("container \"root\": securityContext.runAsUser: 0 breaks runAsNonRoot"),
        "{err}"
    );
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

#[test]
fn mounts_resolve_through_prepared_volumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = tempfile::tempdir().expect("tempdir");
    let host_path = host.path().to_string_lossy().into_owned();
    let mut app = container("app", "", "");
    app.volume_mounts = Some(vec![
        mount("cache", "/cache"),
        VolumeMount {
            read_only: Some(true),
            mount_propagation: Some("HostToContainer".to_owned()),
            ..mount("host", "/host")
        },
        VolumeMount {
            sub_path: Some("logs/app".to_owned()),
            ..mount("cache", "/logs")
        },
    ]);
    let p = pod_with(vec![app.clone()], |s| {
        s.volumes = Some(vec![
            Volume {
                name: "cache".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "host".to_owned(),
                host_path: Some(HostPathVolumeSource {
                    path: host_path.clone(),
                    type_: Some("Directory".to_owned()),
                }),
                ..Volume::default()
            },
        ]);
    });
    let volumes = PodVolumes::prepare(&p, dir.path()).expect("prepare");
    let cache = dir
        .path()
        .join("uid-1/volumes/kubernetes.io~empty-dir/cache");
    // Pinning needs root (a bind mount); the config takes whatever mount point it is given.
    let pinned = dir.path().join("uid-1/volume-subpaths/cache/app/2");
    let sub_paths: SubPathMounts = [(2, pinned.clone())].into_iter().collect();
    let ctx = ContainerContext {
        sub_paths: Some(&sub_paths),
        ..container_ctx(Some(&volumes))
    };
    let config = container_config(&p, &app, 0, &ctx).expect("config");
    let private = api::MountPropagation::PropagationPrivate.into();
    assert_eq!(
        config.mounts,
        vec![
            api::Mount {
                container_path: "/cache".to_owned(),
                host_path: cache.to_string_lossy().into_owned(),
                readonly: false,
                propagation: private,
                ..api::Mount::default()
            },
            api::Mount {
                container_path: "/host".to_owned(),
                host_path,
                readonly: true,
                propagation: api::MountPropagation::PropagationHostToContainer.into(),
                ..api::Mount::default()
            },
            api::Mount {
                container_path: "/logs".to_owned(),
                host_path: pinned.to_string_lossy().into_owned(),
                readonly: false,
                propagation: private,
                ..api::Mount::default()
            },
        ]
    );
    assert!(
        !cache.join("logs").exists(),
        "building the config touches no volume"
    );
}

#[test]
fn mount_errors_name_the_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = container("app", "", "");
    app.volume_mounts = Some(vec![VolumeMount {
        mount_propagation: Some("Bidirectional".to_owned()),
        ..mount("cache", "/cache")
    }]);
    let p = pod_with(vec![app.clone()], |s| {
        s.volumes = Some(vec![Volume {
            name: "cache".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]);
    });
    let volumes = PodVolumes::prepare(&p, dir.path()).expect("prepare");
    let err =
        container_config(&p, &app, 0, &container_ctx(Some(&volumes))).expect_err("bidirectional");
    assert!(
        err.to_string().ends_with(
            "container \"app\": volumeMounts[0].mountPropagation: Bidirectional needs a \
             privileged container"
        ),
        "{err}"
    );

    let err = container_config(&p, &app, 0, &container_ctx(None)).expect_err("no volumes");
    assert!(
        err.to_string()
            .ends_with("volumeMounts[0]: volume \"cache\" was not prepared"),
        "{err}"
    );

    let mut sub = container("app", "", "");
    sub.volume_mounts = Some(vec![VolumeMount {
        sub_path: Some("late".to_owned()),
        ..mount("cache", "/late")
    }]);
    let err = container_config(&p, &sub, 0, &container_ctx(Some(&volumes)))
        .expect_err("subPath not prepared");
    assert!(
        err.to_string()
            .ends_with("volumeMounts[0].subPath: \"late\" of volume \"cache\" was not prepared"),
        "{err}"
    );
}

#[test]
fn seccomp_profiles() {
    use api::security_profile::ProfileType;
    let profile = |t: &str| SeccompProfile {
        type_: t.to_owned(),
        localhost_profile: Some("profiles/audit.json".to_owned()),
    };
    let cases: [(Option<&str>, Result<ProfileType, &str>); 5] = [
        (None, Ok(ProfileType::Unconfined)),
        (Some("Unconfined"), Ok(ProfileType::Unconfined)),
        (Some("RuntimeDefault"), Ok(ProfileType::RuntimeDefault)),
        (
            Some("Localhost"),
            Err("seccompProfile: Localhost profiles are not supported"),
        ),
        (
            Some("Strict"),
            Err("seccompProfile: type \"Strict\": must be"),
        ),
    ];
    for (kind, expected) in cases {
        let p = pod(|s| {
            s.security_context = Some(PodSecurityContext {
                seccomp_profile: kind.map(profile),
                ..PodSecurityContext::default()
            });
        });
        let c = p.spec.as_ref().expect("spec").containers[0].clone();
        let sandbox = sandbox_config(&p, 0, &sandbox_ctx());
        let container = container_config(&p, &c, 0, &container_ctx(None));
        match expected {
            Ok(t) => {
                let sb = sandbox
                    .expect("sandbox config")
                    .linux
                    .and_then(|l| l.security_context)
                    .and_then(|s| s.seccomp);
                let ctr = container
                    .expect("container config")
                    .linux
                    .and_then(|l| l.security_context)
                    .and_then(|s| s.seccomp);
                for got in [sb, ctr] {
                    assert_eq!(
                        got,
                        Some(api::SecurityProfile {
                            profile_type: t.into(),
                            localhost_ref: String::new(),
                        }),
                        "{kind:?}"
                    );
                }
            }
            Err(expected) => {
                let sb = sandbox.expect_err("sandbox").to_string();
                assert!(
                    sb.contains(&format!("spec.securityContext.{expected}")),
                    "{kind:?}: {sb:?}"
                );
                let ctr = container.expect_err("container").to_string();
                assert!(
                    ctr.contains("container \"app\": securityContext.") && ctr.contains(expected),
                    "{kind:?}: {ctr:?}"
                );
            }
        }
    }
}

fn pod_named(namespace: &str, name: &str, uid: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

/// Removal of a pod's log directory stays inside the logs directory whatever the pod's
/// fields hold: a UID with `..` or `/`, a symbolic link in the directory's place or inside
/// it. Only the pod's own directory goes.
#[test]
fn removing_pod_log_dirs_never_leaves_the_logs_dir() {
    let root = tempfile::tempdir().expect("tempdir");
    let logs = root.path().join("logs");
    let outside = root.path().join("outside");
    fs::create_dir_all(&logs).expect("logs");
    fs::create_dir_all(outside.join("victim")).expect("outside");
    fs::write(outside.join("victim/precious"), "x").expect("precious");

    // A UID that climbs out: the directory it names even exists, through a real entry.
    let escape = pod_named("default", "web", "z/../../outside/victim");
    fs::create_dir_all(logs.join("default_web_z")).expect("entry to climb through");
    let err = remove_pod_log_dir(&logs, &escape).expect_err("refused");
    assert!(matches!(err, LogDirError::NotAnEntry { .. }), "{err}");
    assert!(err.to_string().contains("z/../../outside/victim"), "{err}");
    for uid in ["a/b", "/abs", "x/."] {
        let err = remove_pod_log_dir(&logs, &pod_named("default", "web", uid)).expect_err(uid);
        assert!(
            matches!(err, LogDirError::NotAnEntry { .. }),
            "{uid:?}: {err}"
        );
    }

    // A symbolic link in the directory's place: left alone, its target too.
    let linked = pod_named("default", "linked", "1");
    std::os::unix::fs::symlink(outside.join("victim"), pod_log_dir(&logs, &linked))
        .expect("symlink");
    let err = remove_pod_log_dir(&logs, &linked).expect_err("refused");
    assert!(
        matches!(
            err,
            LogDirError::NotADirectory {
                kind: "symbolic link",
                ..
            }
        ),
        "{err}"
    );

    // The pod's real directory, with a link inside: the directory goes, the target stays.
    let real = pod_named("default", "real", "2");
    let dir = pod_log_dir(&logs, &real);
    fs::create_dir_all(dir.join("c")).expect("log dir");
    fs::write(dir.join("c/0.log"), "log").expect("log");
    std::os::unix::fs::symlink(outside.join("victim"), dir.join("c/escape")).expect("symlink");
    remove_pod_log_dir(&logs, &real).expect("removed");
    assert!(!dir.exists());
    assert!(outside.join("victim/precious").exists());
    // Gone already: fine.
    remove_pod_log_dir(&logs, &real).expect("missing is not an error");
    assert!(outside.join("victim/precious").exists());
    assert!(
        logs.join("default_web_z").exists(),
        "only the pod's own entry is removed"
    );
}

#[test]
fn node_allocatable_is_capacity_minus_both_reservations() {
    let system = crate::config::Reservation {
        cpu_millis: Some(500),
        memory_bytes: Some(1 << 30),
        ephemeral_storage_bytes: Some(10 << 30),
        pids: None,
    };
    let kube = crate::config::Reservation {
        cpu_millis: Some(250),
        ephemeral_storage_bytes: Some(5 << 30),
        ..crate::config::Reservation::default()
    };
    assert_eq!(
        NodeAllocatable::from_capacity(2000, 4 << 30, Some(100 << 30), &system, &kube),
        NodeAllocatable {
            cpu_millis: 1250,
            memory_bytes: 3 << 30,
            ephemeral_storage_bytes: 85 << 30,
        }
    );
    // An unknown file system and reservations past capacity give zero, never a wrap.
    assert_eq!(
        NodeAllocatable::from_capacity(500, 1 << 29, None, &system, &kube),
        NodeAllocatable::default()
    );
}
