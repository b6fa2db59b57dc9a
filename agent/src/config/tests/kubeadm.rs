//! The KubeletConfiguration kubeadm writes (testdata/kubeadm-kubelet-config.yaml), and the
//! fields and flags it brings: each is honoured, takes upstream's default for the zero
//! kubeadm writes, or is refused naming the field.

use super::*;

const KUBEADM: &str = include_str!("../testdata/kubeadm-kubelet-config.yaml");

/// The fixture as kubeadm wrote it.
fn kubeadm_text() -> String {
    KUBEADM.to_owned()
}

/// Loads the fixture as kubeadm's kubelet gets it (`--config`, `--kubeconfig`), with
/// `drop_in` in `--config-dir` and `flags`.
fn kubeadm(drop_in: Option<&str>, flags: &[&str]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "config.yaml", &kubeadm_text());
    let drop_ins = dir.path().join("conf.d");
    fs::create_dir(&drop_ins).expect("mkdir conf.d");
    if let Some(text) = drop_in {
        write(&drop_ins, "10-node.conf", &format!("{HEADER}{text}"));
    }
    let (config, drop_ins) = (config.display().to_string(), drop_ins.display().to_string());
    let mut all = vec![
        "--config",
        config.as_str(),
        "--config-dir",
        drop_ins.as_str(),
        "--kubeconfig",
        "/etc/kubernetes/kubelet.conf",
    ];
    all.extend_from_slice(flags);
    load(&args(&all))
}

fn refusal(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(c) => panic!("loaded: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn kubeadms_config_is_refused_for_the_systemd_driver_then_certificate_rotation_only() {
    let err = refusal(kubeadm(None, &[]));
    assert!(
        err.starts_with("cgroupDriver: the systemd cgroup driver is not supported")
            && err.contains("--cgroup-driver=cgroupfs"),
        "{err}"
    );
    let err = refusal(kubeadm(None, &["--cgroup-driver", "cgroupfs"]));
    assert!(
        err.starts_with("rotateCertificates: true is not supported")
            && err.contains("(from ")
            && err.contains("config.yaml"),
        "{err}"
    );
    kubeadm(
        None,
        &["--cgroup-driver", "cgroupfs", "--rotate-certificates=false"],
    )
    .expect("the flags answer both refusals");
    kubeadm(
        Some("cgroupDriver: cgroupfs\nrotateCertificates: false\n"),
        &[],
    )
    .expect("a drop-in answers both refusals");
}

#[test]
fn kubeadms_config_takes_upstreams_values() {
    let c = kubeadm(
        None,
        &["--cgroup-driver=cgroupfs", "--rotate-certificates=false"],
    )
    .expect("valid");
    assert_eq!(
        c.dns,
        DnsConfig {
            cluster_dns: vec!["10.96.0.10".parse().expect("ip")],
            cluster_domain: "cluster.local".to_owned(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    );
    assert_eq!(
        c.sources.static_pod_path,
        Some(PathBuf::from("/etc/kubernetes/manifests"))
    );
    // kubeadm's `0s` durations are unset: upstream's defaults.
    assert_eq!(c.sync_frequency, Duration::from_secs(60));
    assert_eq!(c.sources.file_check_frequency, Duration::from_secs(20));
    assert_eq!(c.sources.http_check_frequency, Duration::from_secs(20));
    assert_eq!(c.runtime.request_timeout, Duration::from_secs(120));
    assert_eq!(
        c.runtime.endpoint,
        PathBuf::from("/run/containerd/containerd.sock"),
        "containerRuntimeEndpoint: \"\" is the default"
    );
    assert_eq!(
        c.eviction.pressure_transition_period,
        Duration::from_secs(300)
    );
    let cluster = c.cluster.as_ref().expect("cluster mode");
    assert_eq!(
        cluster.node_status_update_frequency,
        Duration::from_secs(10)
    );
    assert_eq!(
        cluster.node_status_report_frequency,
        Duration::from_secs(300)
    );
    assert_eq!(cluster.node_lease_duration, Duration::from_secs(40));
    assert!(cluster.register_node);
    assert_eq!(
        c.server.auth,
        AuthConfig {
            client_ca_file: Some(PathBuf::from("/etc/kubernetes/pki/ca.crt")),
            token_webhook: Some(Duration::from_secs(120)),
            anonymous: false,
            authorization: Authorization::Webhook {
                authorized_ttl: Duration::from_secs(300),
                unauthorized_ttl: Duration::from_secs(30),
            },
        }
    );
    assert_eq!(c.server.healthz_port, Some(10248));
    assert_eq!(
        c.server.healthz_bind_address,
        "127.0.0.1".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(c.server.port, 10250);
    assert_eq!(c.cgroups.driver, CgroupDriver::Cgroupfs);
    assert_eq!((c.verbosity, c.log_format), (0, LogFormat::Text));
}

#[test]
fn zero_and_empty_values_take_upstreams_defaults() {
    let c = with_config(
        &format!(
            "{HEADER}port: 0\nmaxPods: 0\npodPidsLimit: -5\naddress: \"\"\n\
             healthzBindAddress: \"\"\ncontainerRuntimeEndpoint: \"\"\ncgroupDriver: \"\"\n\
             nodeLeaseDurationSeconds: 0\nkubeAPIBurst: 0\nsyncFrequency: 0s\n\
             nodeStatusUpdateFrequency: 20s\nnodeStatusReportFrequency: 0s\n\
             cpuManagerReconcilePeriod: 0s\nstreamingConnectionIdleTimeout: 0s\n\
             volumeStatsAggPeriod: 0s\nshutdownGracePeriod: 0s\n\
             shutdownGracePeriodCriticalPods: 0s\nmemorySwap: {{}}\ncrashLoopBackOff: {{}}\n"
        ),
        &["--kubeconfig", "/k"],
    )
    .expect("valid");
    assert_eq!(c.server.port, 10250);
    assert_eq!(c.max_pods, 110);
    assert_eq!(c.pod_pids_limit, None, "a negative limit is -1: unlimited");
    assert_eq!(c.server.address, "0.0.0.0".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        c.server.healthz_bind_address,
        "127.0.0.1".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        c.runtime.endpoint,
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(c.sync_frequency, Duration::from_secs(60));
    let cluster = c.cluster.expect("cluster");
    assert_eq!(cluster.node_lease_duration, Duration::from_secs(40));
    assert_eq!(cluster.kube_api_burst, 100);
    assert_eq!(
        cluster.node_status_report_frequency,
        Duration::from_secs(20),
        "unset, the report frequency follows a set update frequency"
    );

    // Standalone, a zero is no cluster setting.
    with_config(
        &format!("{HEADER}nodeStatusUpdateFrequency: 0s\nnodeLeaseDurationSeconds: 0\n"),
        &[],
    )
    .expect("zeros are unset");
}

#[test]
fn cluster_dns_and_resolv_conf_are_typed() {
    let c = with_config(
        &format!(
            "{HEADER}clusterDNS: [10.0.0.10, 'fd00::a']\nclusterDomain: example.org\n\
             resolvConf: /run/systemd/resolve/resolv.conf\n"
        ),
        &[],
    )
    .expect("valid");
    assert_eq!(
        c.dns,
        DnsConfig {
            cluster_dns: vec![
                "10.0.0.10".parse().expect("ip"),
                "fd00::a".parse().expect("ip")
            ],
            cluster_domain: "example.org".to_owned(),
            resolv_conf: Some(PathBuf::from("/run/systemd/resolve/resolv.conf")),
        }
    );
    let c = with_config(&format!("{HEADER}resolvConf: \"\"\n"), &[]).expect("valid");
    assert_eq!(c.dns.resolv_conf, None, "empty: pods inherit no host DNS");
    assert_eq!(c.dns.cluster_dns, Vec::<IpAddr>::new());

    // Flags win over the file.
    let c = with_config(
        &format!("{HEADER}clusterDNS: [10.0.0.10]\nclusterDomain: example.org\n"),
        &[
            "--cluster-dns",
            "10.1.0.10,10.1.0.11",
            "--cluster-domain",
            "cluster.local",
            "--resolv-conf",
            "/etc/other-resolv.conf",
        ],
    )
    .expect("valid");
    assert_eq!(
        c.dns.cluster_dns,
        vec![
            "10.1.0.10".parse::<IpAddr>().expect("ip"),
            "10.1.0.11".parse().expect("ip")
        ]
    );
    assert_eq!(c.dns.cluster_domain, "cluster.local");
    assert_eq!(
        c.dns.resolv_conf,
        Some(PathBuf::from("/etc/other-resolv.conf"))
    );
}

#[test]
fn flags_win_over_the_file() {
    let c = with_config(
        &format!("{HEADER}maxPods: 7\ncgroupDriver: systemd\nregisterNode: true\n"),
        &[
            "--max-pods",
            "42",
            "--cgroup-driver",
            "cgroupfs",
            "--register-node=false",
            "--kubeconfig",
            "/k",
        ],
    )
    .expect("valid");
    assert_eq!(c.max_pods, 42);
    assert_eq!(c.cgroups.driver, CgroupDriver::Cgroupfs);
    assert!(!c.cluster.expect("cluster").register_node);

    // `--register-node` alone is true, as a Go bool flag.
    let c = with_config(
        &format!("{HEADER}registerNode: false\n"),
        &["--register-node", "--kubeconfig", "/k"],
    )
    .expect("valid");
    assert!(c.cluster.expect("cluster").register_node);

    // Logging: the file's settings, the flags over them.
    let logging = format!("{HEADER}logging: {{format: json, verbosity: 3, flushFrequency: 5s}}\n");
    let c = with_config(&logging, &[]).expect("valid");
    assert_eq!((c.verbosity, c.log_format), (3, LogFormat::Json));
    let c = with_config(&logging, &["-v", "1", "--log-format", "text"]).expect("valid");
    assert_eq!((c.verbosity, c.log_format), (1, LogFormat::Text));
}

#[test]
fn feature_gates_are_accepted_at_their_defaults_and_merged_with_the_flags() {
    // Every gate upstream's kubelet knows, at its default: accepted.
    let all: Vec<String> = feature_gates::KNOWN
        .iter()
        .map(|g| format!("{}={}", g.name, g.default))
        .collect();
    with_config("", &["--feature-gates", &all.join(",")]).expect("every gate at its default");

    let unlocked = feature_gates::KNOWN
        .iter()
        .find(|g| !g.locked && g.stage == "ALPHA")
        .expect("an alpha gate");
    let other = feature_gates::KNOWN
        .iter()
        .find(|g| !g.locked && g.name != unlocked.name)
        .expect("another gate");
    // The file sets one gate off its default; the flag names another: the file's stays.
    let text = format!(
        "{HEADER}featureGates:\n  {}: {}\n",
        unlocked.name, !unlocked.default
    );
    let err = refusal(with_config(
        &text,
        &[
            "--feature-gates",
            &format!("{}={}", other.name, other.default),
        ],
    ));
    assert!(
        err.starts_with(&format!(
            "featureGates[\"{}\"]: {} is not supported",
            unlocked.name, !unlocked.default
        )) && err.contains("config.yaml"),
        "{err}"
    );
    // The flag sets it back to its default: accepted.
    with_config(
        &text,
        &[
            "--feature-gates",
            &format!("{}={}", unlocked.name, unlocked.default),
        ],
    )
    .expect("the flag wins for the gate it names");
    // Set off its default by the flag: the flag is named.
    let err = refusal(with_config(
        "",
        &[
            "--feature-gates",
            &format!("{}={}", unlocked.name, !unlocked.default),
        ],
    ));
    assert!(err.contains("(from flag --feature-gates)"), "{err}");
}

#[test]
fn node_labels_in_kubernetes_namespaces_are_limited_to_upstreams_set() {
    let c = with_config(
        "",
        &[
            "--kubeconfig",
            "/k",
            "--node-labels",
            "node.kubernetes.io/pool=a,pool.node.kubernetes.io/x=y,kubelet.kubernetes.io/z=1,\
         topology.kubernetes.io/zone=z1,example.com/disk=ssd,plain=yes",
        ],
    )
    .expect("valid");
    assert_eq!(c.cluster.expect("cluster").node_labels.len(), 6);
    for label in [
        "node-role.kubernetes.io/worker=",
        "kubernetes.io/role=x",
        "example.k8s.io/a=b",
        "k8s.io/a=b",
    ] {
        let err = refusal(with_config(
            "",
            &[
                "--kubeconfig",
                "/k",
                "--node-labels",
                &format!("plain=yes,{label}"),
            ],
        ));
        let key = label.split('=').next().expect("key");
        assert!(
            err.starts_with("--node-labels: unknown 'kubernetes.io' or 'k8s.io' labels")
                && err.contains(key)
                && err.contains("node.kubernetes.io"),
            "{label}: {err}"
        );
    }
}

/// Each value asking for something bpflet does not do is refused naming its field.
#[test]
fn refusals_name_the_field() {
    let alpha = feature_gates::KNOWN
        .iter()
        .find(|g| !g.locked && !g.default)
        .expect("a gate off by default");
    let locked = feature_gates::KNOWN
        .iter()
        .find(|g| g.locked)
        .expect("a locked gate");
    let alpha_on = format!("featureGates: {{{}: true}}", alpha.name);
    let locked_off = format!("featureGates: {{{}: {}}}", locked.name, !locked.default);
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "cpuManagerPolicy: static",
            &[],
            "cpuManagerPolicy",
            "no CPU manager",
        ),
        (
            "cpuManagerPolicy: fancy",
            &[],
            "cpuManagerPolicy",
            "unknown policy",
        ),
        (
            "cpuManagerReconcilePeriod: soon",
            &[],
            "cpuManagerReconcilePeriod",
            "",
        ),
        (
            "memorySwap: {swapBehavior: LimitedSwap}",
            &[],
            "memorySwap.swapBehavior",
            "no swap limits",
        ),
        (
            "shutdownGracePeriod: 30s",
            &[],
            "shutdownGracePeriod",
            "graceful node shutdown is not supported",
        ),
        (
            "shutdownGracePeriodCriticalPods: 10s",
            &[],
            "shutdownGracePeriodCriticalPods",
            "graceful node shutdown is not supported",
        ),
        (
            "streamingConnectionIdleTimeout: 1h",
            &[],
            "streamingConnectionIdleTimeout",
            "stream_idle_timeout",
        ),
        (
            "volumeStatsAggPeriod: 2m",
            &[],
            "volumeStatsAggPeriod",
            "once a minute",
        ),
        (
            "logging: {format: xml}",
            &[],
            "logging.format",
            "unknown format",
        ),
        (
            "logging: {vmodule: [{filePattern: 'pods*', verbosity: 4}]}",
            &[],
            "logging.vmodule",
            "one verbosity",
        ),
        (
            "logging: {options: {text: {splitStream: true}}}",
            &[],
            "logging.options.text.splitStream",
            "stderr",
        ),
        (
            "logging: {options: {json: {infoBufferSize: 1Mi}}}",
            &[],
            "logging.options.json.infoBufferSize",
            "buffers no messages",
        ),
        (
            "logging: {flushFrequency: soon}",
            &[],
            "logging.flushFrequency",
            "neither nanoseconds nor a duration",
        ),
        (
            "clusterDNS: [10.0.0.10, dns]",
            &[],
            "clusterDNS[1]",
            "invalid IP address",
        ),
        (
            "clusterDomain: Cluster_Local",
            &[],
            "clusterDomain",
            "not a DNS subdomain",
        ),
        ("resolvConf: etc/resolv.conf", &[], "resolvConf", "absolute"),
        (
            "featureGates: {NoSuchGate: true}",
            &[],
            "featureGates[\"NoSuchGate\"]",
            "unrecognized feature gate: NoSuchGate",
        ),
        (&alpha_on, &[], "featureGates[", "true is not supported"),
        (&locked_off, &[], "featureGates[", "feature is locked to"),
        (
            "registerNode: false",
            &[],
            "registerNode",
            "cluster mode only",
        ),
        (
            "crashLoopBackOff: {maxContainerRestartPeriod: 1m}",
            &[],
            "crashLoopBackOff.maxContainerRestartPeriod",
            "KubeletCrashLoopBackOffMax",
        ),
        (
            "",
            &["--register-node=false"],
            "registerNode",
            "(from flag --register-node)",
        ),
        (
            "rotateCertificates: true",
            &[],
            "rotateCertificates",
            "--rotate-certificates=false",
        ),
        (
            "",
            &["--cgroup-driver", "systemd"],
            "cgroupDriver",
            "(from flag --cgroup-driver)",
        ),
        ("", &["--max-pods=-3"], "maxPods", "(from flag --max-pods)"),
        (
            "",
            &["--feature-gates", "A=yes"],
            "--feature-gates",
            "true or false",
        ),
    ];
    for (text, flags, field, reason) in cases {
        let err = refusal(with_config(&format!("{HEADER}{text}\n"), flags));
        assert!(
            err.starts_with(&field.to_string()) && err.contains(reason),
            "{text:?} {flags:?}: want {field:?} ... {reason:?}, got: {err}"
        );
    }
}
