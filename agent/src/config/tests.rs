use std::fs;
use std::path::Path;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

fn args(flags: &[&str]) -> AgentArgs {
    let hostname: &[&str] = if flags.contains(&"--hostname-override") {
        &[]
    } else {
        &["--hostname-override", "Node-A"]
    };
    let argv = std::iter::once("bpflet")
        .chain(hostname.iter().copied())
        .chain(flags.iter().copied());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"))
        .args
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

const HEADER: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

fn with_config(text: &str, flags: &[&str]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "config.yaml", text);
    let path = path.to_string_lossy().into_owned();
    let mut all = vec!["--config", path.as_str()];
    all.extend_from_slice(flags);
    load(&args(&all))
}

fn mi(n: u64) -> ThresholdValue {
    ThresholdValue::Quantity(crate::model::quantity::QuantityValue::from_units(n << 20))
}

#[test]
fn defaults() {
    let c = load(&args(&[])).expect("defaults are valid");
    assert_eq!(c.node_name, "node-a");
    assert_eq!(c.root_dir, PathBuf::from("/var/lib/bpflet"));
    assert_eq!(c.sources.static_pod_path, None);
    assert_eq!(c.sources.static_pod_url, None);
    assert_eq!(c.sources.file_check_frequency, Duration::from_secs(20));
    assert_eq!(c.sources.http_check_frequency, Duration::from_secs(20));
    assert_eq!(c.sync_frequency, Duration::from_secs(60));
    assert_eq!(
        c.runtime.endpoint,
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(c.runtime.request_timeout, Duration::from_secs(120));
    assert_eq!(
        c.cgroups,
        CgroupConfig {
            root: PathBuf::from("/"),
            driver: CgroupDriver::Cgroupfs,
            enforce_pods_allocatable: true,
        }
    );
    assert_eq!(c.system_reserved, Reservation::default());
    let hard: Vec<(Signal, ThresholdValue)> = c
        .eviction
        .hard
        .iter()
        .map(|t| (t.signal, t.value))
        .collect();
    assert_eq!(
        hard,
        vec![
            (Signal::MemoryAvailable, mi(100)),
            (Signal::NodeFsAvailable, ThresholdValue::Percentage(10.0)),
            (Signal::NodeFsInodesFree, ThresholdValue::Percentage(5.0)),
            (Signal::ImageFsAvailable, ThresholdValue::Percentage(15.0)),
        ]
    );
    assert!(c.eviction.soft.is_empty());
    assert_eq!(
        c.eviction.pressure_transition_period,
        Duration::from_secs(300)
    );
    assert_eq!(c.eviction.max_pod_grace_period, None);
    assert_eq!(c.eviction.ranking, EvictionRanking::Qos);
    assert!(c.eviction.local_storage_capacity_isolation, "on by default");
    assert_eq!(
        c.server,
        ServerConfig {
            address: "0.0.0.0".parse().expect("ip"),
            port: 10250,
            read_only_port: None,
            healthz_port: Some(10248),
            healthz_bind_address: "127.0.0.1".parse().expect("ip"),
            tls: TlsConfig {
                cert: ServingCert::SelfSigned {
                    dir: PathBuf::from("/var/lib/bpflet/pki"),
                },
                min_version: TlsVersion::Tls12,
                cipher_suites: None,
            },
            // Standalone: no API server for the webhooks, anonymous off.
            auth: AuthConfig {
                client_ca_file: None,
                token_webhook: None,
                anonymous: false,
                authorization: Authorization::AlwaysAllow,
            },
        }
    );
    assert_eq!(c.max_pods, 110);
    assert_eq!(c.pod_pids_limit, None);
    assert_eq!(
        c.image_pulls,
        crate::images::PullSettings {
            max_parallel: Some(1)
        },
        "serialized by default"
    );
    assert_eq!(
        c.image_gc,
        crate::images::gc::GcPolicy::default(),
        "upstream's image GC defaults: 85 %, 80 %, 2m, no maximum age"
    );
    assert_eq!(
        c.pleg,
        PlegConfig {
            mode: PlegMode::Event,
            event_source: SourceChoice::Auto,
            safety_relist_period: Duration::from_secs(10),
            unhealthy_threshold: Duration::from_secs(180),
        }
    );
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.config_files.is_empty());
}

#[test]
fn node_name_falls_back_to_the_lowercased_host_name() {
    let c = load(&Cli::try_parse_from(["bpflet"]).expect("no flags").args).expect("valid");
    let host = nix::unistd::gethostname().expect("hostname");
    assert_eq!(c.node_name, host.to_string_lossy().trim().to_lowercase());
}

#[test]
fn full_file_is_typed() {
    let text = format!(
        "{HEADER}staticPodPath: /etc/bpflet/manifests
staticPodURL: http://127.0.0.1:8080/pods
fileCheckFrequency: 5s
httpCheckFrequency: 1m30s
syncFrequency: 30s
cgroupRoot: /bpflet
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
systemReserved: {{memory: 200Mi, cpu: 100m, ephemeral-storage: 1Gi, pid: 1000}}
kubeReserved: {{memory: 1Gi, cpu: 1}}
evictionHard: {{memory.available: 500Mi, pid.available: 5%}}
evictionSoft: {{memory.available: 1Gi}}
evictionSoftGracePeriod: {{memory.available: 1m}}
evictionPressureTransitionPeriod: 30s
evictionMaxPodGracePeriod: 60
evictionMinimumReclaim: {{memory.available: 100Mi}}
runtimeRequestTimeout: 10s
containerRuntimeEndpoint: /run/private/containerd.sock
readOnlyPort: 10255
address: 127.0.0.1
healthzPort: 0
healthzBindAddress: 0.0.0.0
maxPods: 20
podPidsLimit: 512
serializeImagePulls: false
maxParallelImagePulls: 4
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 50
imageMinimumGCAge: 30s
imageMaximumGCAge: 1h
localStorageCapacityIsolation: false
---
apiVersion: bpflet.io/v1alpha1
kind: BpfletConfiguration
plegMode: generic
plegSafetyRelistPeriod: 30s
plegUnhealthyThreshold: 1m
evictionRanking: upstream
"
    );
    let c = with_config(&text, &[]).expect("valid");
    assert_eq!(
        c.sources.static_pod_path,
        Some(PathBuf::from("/etc/bpflet/manifests"))
    );
    assert_eq!(
        c.sources.static_pod_url.as_deref(),
        Some("http://127.0.0.1:8080/pods")
    );
    assert_eq!(c.sources.file_check_frequency, Duration::from_secs(5));
    assert_eq!(c.sources.http_check_frequency, Duration::from_secs(90));
    assert_eq!(c.sync_frequency, Duration::from_secs(30));
    assert_eq!(c.cgroups.root, PathBuf::from("/bpflet"));
    assert_eq!(
        c.system_reserved,
        Reservation {
            cpu_millis: Some(100),
            memory_bytes: Some(200 << 20),
            ephemeral_storage_bytes: Some(1 << 30),
            pids: Some(1000),
        }
    );
    assert_eq!(c.kube_reserved.cpu_millis, Some(1000));
    assert_eq!(c.kube_reserved.memory_bytes, Some(1 << 30));
    assert_eq!(
        c.eviction.hard,
        vec![
            Threshold {
                signal: Signal::MemoryAvailable,
                value: mi(500),
                grace_period: Duration::ZERO,
                min_reclaim: Some(mi(100)),
            },
            Threshold {
                signal: Signal::PidAvailable,
                value: ThresholdValue::Percentage(5.0),
                grace_period: Duration::ZERO,
                min_reclaim: None,
            },
        ]
    );
    assert_eq!(
        c.eviction.soft,
        vec![Threshold {
            signal: Signal::MemoryAvailable,
            value: mi(1024),
            grace_period: Duration::from_secs(60),
            min_reclaim: Some(mi(100)),
        }]
    );
    assert_eq!(
        c.eviction.pressure_transition_period,
        Duration::from_secs(30)
    );
    assert_eq!(
        c.eviction.max_pod_grace_period,
        Some(Duration::from_secs(60))
    );
    assert_eq!(c.eviction.ranking, EvictionRanking::Upstream);
    assert!(!c.eviction.local_storage_capacity_isolation);
    assert_eq!(
        c.runtime.endpoint,
        PathBuf::from("/run/private/containerd.sock")
    );
    assert_eq!(c.runtime.request_timeout, Duration::from_secs(10));
    assert_eq!(c.server.read_only_port, Some(10255));
    assert_eq!(c.server.healthz_port, None);
    assert_eq!(c.max_pods, 20);
    assert_eq!(c.pod_pids_limit, Some(512));
    assert_eq!(c.image_pulls.max_parallel, Some(4));
    assert_eq!(
        c.image_gc,
        crate::images::gc::GcPolicy {
            high_threshold_percent: 90,
            low_threshold_percent: 50,
            min_age: Duration::from_secs(30),
            max_age: Some(Duration::from_secs(3600)),
        }
    );
    assert_eq!(c.pleg.mode, PlegMode::Generic);
    assert_eq!(c.pleg.safety_relist_period, Duration::from_secs(30));
    assert_eq!(c.pleg.unhealthy_threshold, Duration::from_secs(60));
    assert_eq!(c.config_files.len(), 1);
}

#[test]
fn json_config_is_accepted() {
    let text = r#"{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                   "maxPods": 7, "syncFrequency": "2m"}"#;
    let c = with_config(text, &[]).expect("valid");
    assert_eq!(c.max_pods, 7);
    assert_eq!(c.sync_frequency, Duration::from_secs(120));
}

#[test]
fn precedence_defaults_file_drop_ins_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "{HEADER}maxPods: 50\nsyncFrequency: 30s\nhealthzPort: 1111\n\
             evictionHard: {{memory.available: 200Mi, nodefs.available: 20%}}\n\
             systemReserved: {{memory: 1Gi, cpu: 500m}}\n"
        ),
    );
    let drop_in_dir = dir.path().join("conf.d");
    fs::create_dir(&drop_in_dir).expect("mkdir");
    write(
        &drop_in_dir,
        "20-second.conf",
        &format!("{HEADER}maxPods: 30\n"),
    );
    write(
        &drop_in_dir,
        "10-first.conf",
        &format!(
            "{HEADER}maxPods: 40\nsyncFrequency: 45s\nevictionHard: {{memory.available: 300Mi}}\n"
        ),
    );
    // Not drop-ins: wrong suffix, hidden.
    write(&drop_in_dir, "30-ignored.yaml", "this is not yaml: [");
    write(&drop_in_dir, ".40-hidden.conf", "this is not yaml: [");

    let config = config.to_string_lossy().into_owned();
    let drop_ins = drop_in_dir.to_string_lossy().into_owned();
    let base = [
        "--config",
        config.as_str(),
        "--config-dir",
        drop_ins.as_str(),
    ];

    let c = load(&args(&base)).expect("valid");
    assert_eq!(c.max_pods, 30, "later drop-in wins");
    assert_eq!(
        c.sync_frequency,
        Duration::from_secs(45),
        "drop-in beats file"
    );
    assert_eq!(c.server.healthz_port, Some(1111), "file beats default");
    assert_eq!(
        c.runtime.request_timeout,
        Duration::from_secs(120),
        "default"
    );
    let hard: Vec<(Signal, ThresholdValue)> = c
        .eviction
        .hard
        .iter()
        .map(|t| (t.signal, t.value))
        .collect();
    assert_eq!(
        hard,
        vec![
            (Signal::MemoryAvailable, mi(300)),
            (Signal::NodeFsAvailable, ThresholdValue::Percentage(20.0)),
        ],
        "drop-in maps merge key by key; a configured map replaces the defaults"
    );
    assert_eq!(c.config_files.len(), 3);
    assert!(c.config_files[1].ends_with("10-first.conf"));

    let mut flagged = base.to_vec();
    flagged.extend([
        "--healthz-port",
        "2222",
        "--eviction-hard",
        "memory.available<1Gi",
        "--system-reserved",
        "cpu=1",
        "--pleg-mode",
        "generic",
    ]);
    let c = load(&args(&flagged)).expect("valid");
    assert_eq!(c.server.healthz_port, Some(2222), "flag beats everything");
    let hard: Vec<(Signal, ThresholdValue)> = c
        .eviction
        .hard
        .iter()
        .map(|t| (t.signal, t.value))
        .collect();
    assert_eq!(
        hard,
        vec![(Signal::MemoryAvailable, mi(1024))],
        "a flag map replaces the field"
    );
    assert_eq!(
        c.system_reserved,
        Reservation {
            cpu_millis: Some(1000),
            ..Reservation::default()
        }
    );
    assert_eq!(c.pleg.mode, PlegMode::Generic);
}

#[test]
fn flags_map_onto_config_fields() {
    let c = load(&args(&[
        "--pod-manifest-path",
        "/etc/kubernetes/manifests",
        "--manifest-url",
        "http://127.0.0.1:9999/pod.yaml",
        "--container-runtime-endpoint",
        "unix:///tmp/cri.sock",
        "--root-dir",
        "/tmp/bpflet",
        "--cgroup-root",
        "/test",
        "--node-ip",
        "10.0.0.5,fd00::5",
        "--read-only-port",
        "10255",
        "--address",
        "127.0.0.1",
        "--runtime-request-timeout",
        "30s",
        "--kube-reserved",
        "memory=200Mi,cpu=100m",
        "--enforce-node-allocatable",
        "none",
        "-v",
        "4",
        "--log-format",
        "json",
    ]))
    .expect("valid");
    assert_eq!(
        c.sources.static_pod_path,
        Some(PathBuf::from("/etc/kubernetes/manifests"))
    );
    assert_eq!(
        c.sources.static_pod_url.as_deref(),
        Some("http://127.0.0.1:9999/pod.yaml")
    );
    assert_eq!(c.runtime.endpoint, PathBuf::from("/tmp/cri.sock"));
    assert_eq!(c.root_dir, PathBuf::from("/tmp/bpflet"));
    assert_eq!(c.cgroups.root, PathBuf::from("/test"));
    assert!(!c.cgroups.enforce_pods_allocatable);
    assert_eq!(c.node_ips.len(), 2);
    assert_eq!(c.server.read_only_port, Some(10255));
    assert_eq!(c.runtime.request_timeout, Duration::from_secs(30));
    assert_eq!(c.kube_reserved.memory_bytes, Some(200 << 20));
    assert_eq!(c.kube_reserved.cpu_millis, Some(100));
    assert_eq!(c.verbosity, 4);
    assert_eq!(c.log_format, LogFormat::Json);
}

/// Every kind of bad input: (config file body or "" for none, flags, expected message parts).
#[test]
fn bad_input_names_the_culprit() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "evictionHard: {memory.available: 10Zi}",
            &[],
            &[
                r#"evictionHard["memory.available"]: invalid quantity "10Zi""#,
                "config.yaml",
            ],
        ),
        (
            "evictionHard: {memory.free: 1Gi}",
            &[],
            &[r#"evictionHard["memory.free"]: unknown eviction signal "memory.free""#],
        ),
        (
            "evictionHard: {nodefs.available: 120%}",
            &[],
            &[r#"evictionHard["nodefs.available"]: invalid percentage "120%""#],
        ),
        (
            "fileCheckFrequency: \"20\"",
            &[],
            &["fileCheckFrequency: invalid duration \"20\": missing unit"],
        ),
        (
            "syncFrequency: 500ms",
            &[],
            &["syncFrequency: 500ms is below the minimum of 1s"],
        ),
        (
            "fileCheckFrequency: 1ns",
            &[],
            &[
                "fileCheckFrequency: 1ns is below the minimum of 1s",
                "config.yaml",
            ],
        ),
        (
            "httpCheckFrequency: 999ms",
            &[],
            &["httpCheckFrequency: 999ms is below the minimum of 1s"],
        ),
        (
            "containerLogMaxFiles: 1",
            &[],
            &["containerLogMaxFiles: 1 must be greater than or equal to 2"],
        ),
        (
            "containerLogMaxWorkers: 0",
            &[],
            &["containerLogMaxWorkers: 0 must be greater than or equal to 1"],
        ),
        (
            "containerLogMonitorInterval: 2s",
            &[],
            &["containerLogMonitorInterval: 2s is below the minimum of 3s"],
        ),
        (
            "containerLogMaxSize: 0",
            &[],
            &["containerLogMaxSize: \"0\" must be greater than 0"],
        ),
        (
            "containerLogMaxSize: ten",
            &[],
            &["containerLogMaxSize: invalid quantity"],
        ),
        (
            "---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nplegSafetyRelistPeriod: 10ms",
            &[],
            &["plegSafetyRelistPeriod: 10ms is below the minimum of 1s"],
        ),
        (
            "---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nplegMode: generic\neventSource: poll",
            &[],
            &["eventSource: poll needs plegMode: event", "config.yaml"],
        ),
        (
            "---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\neventSource: bpf",
            &["--pleg-mode", "generic"],
            &["eventSource: bpf needs plegMode: event"],
        ),
        (
            "cgroupRoot: /../../sys/fs/cgroup",
            &[],
            &["cgroupRoot: path \"/../../sys/fs/cgroup\" must not contain \"..\" components"],
        ),
        (
            "cgroupRoot: /kubepods/..",
            &[],
            &["cgroupRoot", "\"..\" components"],
        ),
        (
            "cgroupRoot: /a/./b",
            &[],
            &["cgroupRoot", "\".\" components"],
        ),
        (
            "allowedUnsafeSysctls: [kernel.msg*, vm.swappiness]",
            &[],
            &["allowedUnsafeSysctls[1]: \"vm.swappiness\" is not known to be namespaced"],
        ),
        (
            "allowedUnsafeSysctls: [Kernel.msgmax]",
            &[],
            &["allowedUnsafeSysctls[0]: \"Kernel.msgmax\" is not a sysctl name or pattern"],
        ),
        (
            "",
            &["--allowed-unsafe-sysctls", "net.*,kernel.*"],
            &[
                "allowedUnsafeSysctls[1]: \"kernel.*\" is not known to be namespaced",
                "(from flag --allowed-unsafe-sysctls)",
            ],
        ),
        (
            "systemReserved: {memory: 100Ti}",
            &[],
            &[
                "systemReserved[\"memory\"]: reserves",
                "bytes of memory, more than the node's capacity of",
                "bytes (MemTotal)",
            ],
        ),
        (
            "runtimeRequestTimeout: -1s",
            &[],
            &["runtimeRequestTimeout", "negative"],
        ),
        (
            "healthzPort: 70000",
            &[],
            &["healthzPort: port 70000 out of range"],
        ),
        (
            "readOnlyPort: -1",
            &[],
            &["readOnlyPort: port -1 out of range"],
        ),
        ("maxPods: -1", &[], &["maxPods: -1 must be greater than 0"]),
        (
            "maxParallelImagePulls: 3",
            &[],
            &["maxParallelImagePulls: 3 must be 1 or unset when serializeImagePulls is true"],
        ),
        (
            "serializeImagePulls: false\nmaxParallelImagePulls: 0",
            &[],
            &["maxParallelImagePulls: 0 must be a positive number"],
        ),
        (
            "imageGCHighThresholdPercent: 101",
            &[],
            &["imageGCHighThresholdPercent: 101 must be between 0 and 100, inclusive"],
        ),
        (
            "imageGCLowThresholdPercent: 90",
            &[],
            &["imageGCLowThresholdPercent: 90 must be less than imageGCHighThresholdPercent 85"],
        ),
        (
            "imageMaximumGCAge: 1m",
            &[],
            &["imageMaximumGCAge: 60s must be greater than imageMinimumGCAge 120s"],
        ),
        (
            "imageMinimumGCAge: -1s",
            &[],
            &["imageMinimumGCAge", "negative"],
        ),
        (
            "imageGcHighThresholdPercent: 90",
            &[],
            &["imageGcHighThresholdPercent"],
        ),
        (
            "staticPodPath: manifests",
            &[],
            &["staticPodPath: path \"manifests\" must be absolute"],
        ),
        (
            "cgroupRoot: kubepods",
            &[],
            &["cgroupRoot: path \"kubepods\" must be absolute"],
        ),
        (
            "staticPodURL: https://127.0.0.1/x",
            &[],
            &["staticPodURL", "https is not supported"],
        ),
        (
            "staticPodURL: ftp://host/x",
            &[],
            &["staticPodURL", "expected an http:// URL"],
        ),
        (
            "cgroupDriver: systemd",
            &[],
            &["cgroupDriver: the systemd cgroup driver is not supported"],
        ),
        (
            "cgroupDriver: foo",
            &[],
            &["cgroupDriver: unknown cgroup driver \"foo\""],
        ),
        (
            "containerRuntimeEndpoint: tcp://1.2.3.4:1",
            &[],
            &["containerRuntimeEndpoint", "unsupported scheme \"tcp\""],
        ),
        (
            "address: not-an-ip",
            &[],
            &["address: invalid IP address \"not-an-ip\""],
        ),
        (
            "systemReserved: {memory: lots}",
            &[],
            &[r#"systemReserved["memory"]: invalid quantity "lots""#],
        ),
        (
            "kubeReserved: {gpu: 1}",
            &[],
            &[r#"kubeReserved["gpu"]: unsupported resource "gpu""#],
        ),
        (
            "enforceNodeAllocatable: [system-reserved]",
            &[],
            &["enforceNodeAllocatable[0]", "not supported"],
        ),
        (
            "enforceNodeAllocatable: [pods, none]",
            &[],
            &["enforceNodeAllocatable[1]"],
        ),
        (
            "cgroupsPerQOS: false",
            &[],
            &["cgroupsPerQOS", "false is not supported"],
        ),
        (
            "evictionSoft: {memory.available: 1Gi}",
            &[],
            &[
                r#"evictionSoft["memory.available"]: soft threshold needs an evictionSoftGracePeriod"#,
            ],
        ),
        (
            "evictionSoftGracePeriod: {memory.available: 1m}",
            &[],
            &[
                r#"evictionSoftGracePeriod["memory.available"]: grace period for memory.available without"#,
            ],
        ),
        (
            "evictionMaxPodGracePeriod: -1",
            &[],
            &["evictionMaxPodGracePeriod: -1 must not be negative"],
        ),
        (
            "maxPods: many",
            &[],
            &["config.yaml: cannot decode maxPods"],
        ),
        (
            "fileCheckFrequncy: 20s",
            &[],
            &["config.yaml: cannot decode fileCheckFrequncy: unknown field"],
        ),
        (
            "",
            &["--eviction-hard", "memory.available>1Gi"],
            &[
                "--eviction-hard",
                "only the \"<\" operator",
                "flag --eviction-hard",
            ],
        ),
        (
            "",
            &["--eviction-hard", "memory.available<1Zi"],
            &[
                r#"evictionHard["memory.available"]: invalid quantity "1Zi" (from flag --eviction-hard)"#,
            ],
        ),
        (
            "",
            &["--system-reserved", "memory"],
            &["--system-reserved", "expected resource=quantity"],
        ),
        (
            "",
            &["--healthz-port", "99999"],
            &[
                "healthzPort: port 99999 out of range",
                "(from flag --healthz-port)",
            ],
        ),
        (
            "",
            &["--node-ip", "1.2.3"],
            &["--node-ip: invalid IP address \"1.2.3\""],
        ),
        (
            "",
            &["--node-ip", "1.2.3.4,5.6.7.8"],
            &["--node-ip: at most one IPv4"],
        ),
        (
            "",
            &["--root-dir", "relative"],
            &["--root-dir: path \"relative\" must be absolute"],
        ),
        (
            "",
            &["--root-dir", "/var/lib/../../etc"],
            &["--root-dir: path \"/var/lib/../../etc\" must not contain \"..\" components"],
        ),
        (
            "",
            &["--hostname-override", "Bad_Name"],
            &["nodeName: \"bad_name\" is not a valid node name"],
        ),
    ];
    for &(body, flags, want) in cases {
        let result = if body.is_empty() {
            load(&args(flags))
        } else {
            with_config(&format!("{HEADER}{body}\n"), flags)
        };
        let err = match result {
            Ok(_) => panic!("{body:?} {flags:?}: accepted"),
            Err(e) => e,
        };
        let message = crate::error::full_text(&err);
        for part in want {
            assert!(
                message.contains(part),
                "{body:?} {flags:?}: {message:?} lacks {part:?}"
            );
        }
        assert_eq!(err.exit_code(), 64);
    }
}

#[test]
fn bad_documents_name_the_file() {
    let cases: &[(&str, &[&str])] = &[
        (
            "apiVersion: v1\nkind: KubeletConfiguration\n",
            &["unsupported apiVersion \"v1\""],
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n",
            &["kind \"Pod\""],
        ),
        ("maxPods: 3\n", &["unsupported apiVersion \"\""]),
        ("{{{", &["invalid YAML"]),
        (
            "apiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nplegMode: fast\n",
            &["cannot decode plegMode", "unknown variant `fast`"],
        ),
        (
            "apiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\neventSource: ebpf\n",
            &["cannot decode eventSource", "unknown variant `ebpf`"],
        ),
        (
            "apiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nevictionRanking: random\n",
            &["evictionRanking: unknown ranking \"random\""],
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n---\n\
             apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
            &["more than one KubeletConfiguration document"],
        ),
    ];
    for &(body, want) in cases {
        let err = with_config(body, &[])
            .err()
            .unwrap_or_else(|| panic!("{body:?}: accepted"));
        let message = crate::error::full_text(&err);
        assert!(
            message.contains("config.yaml"),
            "{body:?}: {message:?} lacks the file"
        );
        for part in want {
            assert!(
                message.contains(part),
                "{body:?}: {message:?} lacks {part:?}"
            );
        }
    }
}

#[test]
fn missing_files_are_errors() {
    let err = load(&args(&["--config", "/nonexistent/bpflet.yaml"])).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let err = load(&args(&["--config-dir", "/nonexistent/conf.d"])).expect_err("missing dir");
    assert!(matches!(err, ConfigError::ReadDir { .. }), "{err:?}");
}

#[test]
fn error_origin_tracks_the_drop_in_that_set_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "config.yaml",
        &format!("{HEADER}evictionHard: {{memory.available: 1Gi}}\n"),
    );
    write(
        dir.path(),
        "50-bad.conf",
        &format!("{HEADER}evictionHard: {{nodefs.available: 200%}}\n"),
    );
    let config = config.to_string_lossy().into_owned();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let err = load(&args(&["--config", &config, "--config-dir", &dir_arg])).expect_err("bad");
    let message = err.to_string();
    assert!(message.contains("50-bad.conf"), "{message}");
    assert!(
        message.starts_with(r#"evictionHard["nodefs.available"]"#),
        "{message}"
    );
}

#[test]
fn zero_thresholds_disable() {
    let c = with_config(
        &format!("{HEADER}evictionHard: {{memory.available: \"0\", nodefs.available: 0%}}\n"),
        &[],
    )
    .expect("valid");
    assert!(c.eviction.hard.is_empty());
}

fn node(memory_gib: u64, cpus: u64) -> NodeFacts {
    NodeFacts {
        memory_bytes: Some(memory_gib << 30),
        cpu_millis: Some(cpus * 1000),
        pid_max: Some(4_194_304),
        kernel: Some((6, 18)),
    }
}

fn load_on_node(text: &str, node: &NodeFacts) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "config.yaml", &format!("{HEADER}{text}\n"));
    let path = path.to_string_lossy().into_owned();
    load_on(&args(&["--config", path.as_str()]), node)
}

#[test]
fn reservations_must_fit_the_node() {
    let n = node(4, 2);
    let ok = load_on_node(
        "systemReserved: {memory: 3Gi, cpu: 1}\nkubeReserved: {memory: 1Gi, cpu: 1}",
        &n,
    )
    .expect("exactly the capacity fits");
    assert_eq!(ok.system_reserved.memory_bytes, Some(3 << 30));
    for (text, field, resource) in [
        (
            "systemReserved: {memory: 100Ti}",
            r#"systemReserved["memory"]"#,
            "capacity of 4294967296 bytes (MemTotal)",
        ),
        (
            "kubeReserved: {cpu: 2500m}",
            r#"kubeReserved["cpu"]"#,
            "capacity of 2000 millicores (online CPUs)",
        ),
        (
            "systemReserved: {memory: 3Gi}\nkubeReserved: {memory: 2Gi}",
            r#"systemReserved["memory"] + kubeReserved["memory"]"#,
            "reserves 5368709120 bytes of memory",
        ),
    ] {
        let err = load_on_node(text, &n).expect_err(text);
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{field}: reserves")),
            "{message}"
        );
        assert!(message.contains(resource), "{message}");
        assert_eq!(err.exit_code(), 64);
    }
    // Unknown capacity: nothing to check against.
    load_on_node("systemReserved: {memory: 100Ti}", &NodeFacts::default())
        .expect("no capacity, no check");
}

#[test]
fn allowed_unsafe_sysctls_extend_the_safe_set() {
    let c = load_on_node("", &node(4, 2)).expect("defaults");
    assert!(
        c.sysctls
            .check("net.ipv4.tcp_syncookies", false, false)
            .is_ok()
    );
    assert!(c.sysctls.check("kernel.msgmax", false, false).is_err());
    let c = load_on_node(
        "allowedUnsafeSysctls: [\"kernel.msg*\", net.core.somaxconn]",
        &node(4, 2),
    )
    .expect("namespaced patterns");
    assert!(c.sysctls.check("kernel.msgmax", false, false).is_ok());
    assert!(c.sysctls.check("net.core.somaxconn", false, false).is_ok());
    assert!(c.sysctls.check("net.core.somaxconn", true, false).is_err());
    let flags = load_on(
        &args(&["--allowed-unsafe-sysctls", "kernel.msg*, kernel.sem"]),
        &node(4, 2),
    )
    .expect("flag");
    assert!(flags.sysctls.check("kernel.sem", false, false).is_ok());
    assert!(flags.sysctls.check("kernel.msgmnb", false, false).is_ok());
}

#[test]
fn loop_periods_at_their_minimum_are_accepted() {
    let c = load_on_node(
        "fileCheckFrequency: 1s\nhttpCheckFrequency: 1s\nsyncFrequency: 1s\n---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\nplegSafetyRelistPeriod: 1s\nplegUnhealthyThreshold: 2s",
        &node(4, 2),
    )
    .expect("minimums");
    assert_eq!(c.sources.file_check_frequency, Duration::from_secs(1));
    assert_eq!(c.pleg.safety_relist_period, Duration::from_secs(1));
}

/// The node the settings were checked against is the node `kubepods` is sized from: one
/// read at load, kept in the config, so an allocatable that fits at validation is the
/// limit the cgroup tree gets.
#[test]
fn kubepods_is_sized_from_the_node_the_config_was_checked_against() {
    use crate::cgroups::tree::{NodeCapacity, kubepods_settings};
    let n = node(4, 2);
    let c = load_on_node(
        "enforceNodeAllocatable: [pods]\nsystemReserved: {memory: 3Gi, cpu: 1500m, pid: 1000}",
        &n,
    )
    .expect("fits the node");
    assert_eq!(c.node, n);
    let capacity = NodeCapacity::from_facts(&c.node).expect("memory known");
    let k = kubepods_settings(
        c.cgroups.enforce_pods_allocatable,
        &c.system_reserved,
        &c.kube_reserved,
        &capacity,
    )
    .expect("what validation accepted fits");
    assert_eq!(k.memory_limit, Some(1 << 30));
    assert_eq!(k.cpu_shares, crate::model::qos::cpu_shares(500));
    assert_eq!(k.pids_limit, Some(4_194_304 - 1000));

    let unknown = NodeFacts {
        memory_bytes: None,
        ..n
    };
    assert_eq!(
        NodeCapacity::from_facts(&unknown),
        None,
        "no memory, no sizing"
    );
    let no_cpus = NodeFacts {
        cpu_millis: None,
        ..n
    };
    assert_eq!(
        NodeCapacity::from_facts(&no_cpus).map(|c| c.cpu_millis),
        Some(1000),
        "one CPU when the count is unknown"
    );
}

#[test]
fn mem_total_reads_meminfo() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("meminfo"),
        "MemTotal:       24567890 kB\nMemFree:        1 kB\n",
    )
    .expect("meminfo");
    assert_eq!(
        super::mem_total(dir.path()).expect("readable"),
        Some(24_567_890 * 1024)
    );
    std::fs::write(dir.path().join("meminfo"), "MemFree: 1 kB\n").expect("meminfo");
    assert_eq!(super::mem_total(dir.path()).expect("readable"), None);
    assert!(std::fs::read_dir(dir.path().join("missing")).is_err());
    assert!(super::mem_total(&dir.path().join("missing")).is_err());
    assert!(
        super::mem_total(std::path::Path::new("/proc"))
            .expect("this host")
            .is_some_and(|m| m > 0)
    );
}

/// `eventSource` picks the kernel event source of event mode; the PLEG runs in event mode
/// only on BPF, and generic mode reads no kernel events.
#[test]
fn event_source_setting_and_the_pleg_mode_in_use() {
    use crate::events::Source;
    let c = with_config(HEADER, &[]).expect("defaults");
    assert_eq!(c.pleg.event_source, SourceChoice::Auto);
    assert_eq!(c.pleg.mode_with(Some(Source::Bpf)), PlegMode::Event);
    assert_eq!(
        c.pleg.mode_with(Some(Source::Poll)),
        PlegMode::Generic,
        "the polling source finds exits a second late at best: the generic relist does it"
    );
    for source in ["auto", "bpf", "poll"] {
        let text = format!(
            "{HEADER}---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\neventSource: {source}\n"
        );
        let c = with_config(&text, &[]).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(c.pleg.event_source.as_str(), source);
        assert_eq!(c.pleg.mode, PlegMode::Event);
    }
    let generic = with_config(HEADER, &["--pleg-mode", "generic"]).expect("generic");
    assert_eq!(generic.pleg.event_source, SourceChoice::Auto);
    assert_eq!(generic.pleg.mode_with(None), PlegMode::Generic);
}

/// Cluster mode: `--kubeconfig` turns it on with upstream's defaults; its settings are
/// parsed and validated, and refused without it (they would do nothing).
#[test]
fn cluster_settings_need_a_kubeconfig_and_take_upstreams_defaults() {
    let standalone = with_config(HEADER, &[]).expect("defaults");
    assert!(standalone.cluster.is_none());

    let c = with_config(HEADER, &["--kubeconfig", "/etc/bpflet/node.kubeconfig"])
        .expect("cluster mode");
    let cluster = c.cluster.expect("cluster mode is on");
    assert_eq!(cluster.kubeconfig, Path::new("/etc/bpflet/node.kubeconfig"));
    assert_eq!(
        cluster.node_status_update_frequency,
        Duration::from_secs(10)
    );
    assert_eq!(
        cluster.node_status_report_frequency,
        Duration::from_secs(300)
    );
    assert_eq!(cluster.node_lease_duration, Duration::from_secs(40));
    assert!(cluster.node_labels.is_empty() && cluster.register_with_taints.is_empty());
    assert_eq!((cluster.kube_api_qps, cluster.kube_api_burst), (50, 100));

    // An explicit update frequency is also the report frequency's default, as upstream.
    let c = with_config(
        &format!("{HEADER}nodeStatusUpdateFrequency: 20s\nnodeLeaseDurationSeconds: 60\n"),
        &[
            "--kubeconfig",
            "/k",
            "--node-labels",
            "pool=blue,example.com/tier=web",
            "--register-with-taints",
            "dedicated=bpf:NoSchedule,spot:PreferNoSchedule",
        ],
    )
    .expect("cluster settings");
    let cluster = c.cluster.expect("cluster mode is on");
    assert_eq!(
        cluster.node_status_report_frequency,
        Duration::from_secs(20)
    );
    assert_eq!(cluster.node_lease_duration, Duration::from_secs(60));
    assert_eq!(cluster.node_labels["pool"], "blue");
    assert_eq!(cluster.node_labels["example.com/tier"], "web");
    let taints: Vec<_> = cluster
        .register_with_taints
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str()))
        .collect();
    assert_eq!(
        taints,
        [
            ("dedicated", Some("bpf"), "NoSchedule"),
            ("spot", None, "PreferNoSchedule")
        ]
    );

    for (text, flags, expected) in [
        (
            "nodeStatusUpdateFrequency: 10s\n",
            &[][..],
            "nodeStatusUpdateFrequency",
        ),
        ("", &["--node-labels", "a=b"][..], "--node-labels"),
        (
            "",
            &[
                "--kubeconfig",
                "/k",
                "--register-with-taints",
                "a=b:Sometimes",
            ][..],
            "register-with-taints",
        ),
        (
            "",
            &["--kubeconfig", "/k", "--node-labels=bad_=x"][..],
            "node-labels",
        ),
        (
            "nodeLeaseDurationSeconds: 2\n",
            &["--kubeconfig", "/k"][..],
            "nodeLeaseDurationSeconds",
        ),
    ] {
        let err = with_config(&format!("{HEADER}{text}"), flags)
            .expect_err(&format!("{text:?} {flags:?} must be refused"))
            .to_string();
        assert!(err.contains(expected), "{text:?} {flags:?}: {err}");
    }
}

/// `kubeAPIQPS` / `kubeAPIBurst`: upstream's client rate limit, cluster mode only, positive.
#[test]
fn the_api_client_rate_limit_is_positive_and_for_cluster_mode_only() {
    let c = with_config(
        &format!("{HEADER}kubeAPIQPS: 5\nkubeAPIBurst: 10\n"),
        &["--kubeconfig", "/k"],
    )
    .expect("a rate limit");
    let cluster = c.cluster.expect("cluster mode is on");
    assert_eq!((cluster.kube_api_qps, cluster.kube_api_burst), (5, 10));

    for (text, flags, field, reason) in [
        (
            "kubeAPIQPS: 5\n",
            &[][..],
            "kubeAPIQPS",
            "cluster mode only",
        ),
        (
            "kubeAPIBurst: 10\n",
            &[][..],
            "kubeAPIBurst",
            "cluster mode only",
        ),
        (
            "kubeAPIQPS: 0\n",
            &["--kubeconfig", "/k"][..],
            "kubeAPIQPS",
            "0 must be positive",
        ),
        (
            "kubeAPIQPS: -1\n",
            &["--kubeconfig", "/k"][..],
            "kubeAPIQPS",
            "-1 must be positive",
        ),
        (
            "kubeAPIBurst: -2\n",
            &["--kubeconfig", "/k"][..],
            "kubeAPIBurst",
            "-2 must be positive",
        ),
    ] {
        let err = with_config(&format!("{HEADER}{text}"), flags)
            .expect_err(&format!("{text:?} {flags:?} must be refused"))
            .to_string();
        assert!(
            err.contains(field) && err.contains(reason),
            "{text:?} {flags:?}: {err}"
        );
    }
}

fn invalid_field(result: Result<Config, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Invalid { field, reason, .. }) => (field, reason),
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn https_api_settings_are_typed() {
    let text = format!(
        "{HEADER}port: 11250
tlsCertFile: /etc/bpflet/tls.crt
tlsPrivateKeyFile: /etc/bpflet/tls.key
tlsMinVersion: VersionTLS13
tlsCipherSuites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
serverTLSBootstrap: false
rotateCertificates: false
authentication:
  x509: {{clientCAFile: /etc/bpflet/ca.crt}}
  webhook: {{enabled: true, cacheTTL: 10s}}
  anonymous: {{enabled: true}}
authorization:
  mode: Webhook
  webhook: {{cacheAuthorizedTTL: 1m, cacheUnauthorizedTTL: 0s}}
"
    );
    let c = with_config(&text, &["--kubeconfig", "/etc/bpflet/kubeconfig"]).expect("valid");
    assert_eq!(c.server.port, 11250);
    assert_eq!(
        c.server.tls,
        TlsConfig {
            cert: ServingCert::Files {
                cert: PathBuf::from("/etc/bpflet/tls.crt"),
                key: PathBuf::from("/etc/bpflet/tls.key"),
            },
            min_version: TlsVersion::Tls13,
            cipher_suites: Some(vec![
                CipherSuite::EcdheRsaChacha20Poly1305,
                CipherSuite::EcdheRsaAes128GcmSha256
            ]),
        }
    );
    assert_eq!(
        c.server.auth,
        AuthConfig {
            client_ca_file: Some(PathBuf::from("/etc/bpflet/ca.crt")),
            token_webhook: Some(Duration::from_secs(10)),
            anonymous: true,
            authorization: Authorization::Webhook {
                authorized_ttl: Duration::from_secs(60),
                // 0s is unset for upstream's defaulting: its default, 30s.
                unauthorized_ttl: Duration::from_secs(30),
            },
        }
    );
}

#[test]
fn cluster_mode_defaults_to_upstreams_webhooks() {
    let c = with_config(HEADER, &["--kubeconfig", "/etc/bpflet/kubeconfig"]).expect("valid");
    assert_eq!(
        c.server.auth,
        AuthConfig {
            client_ca_file: None,
            token_webhook: Some(Duration::from_secs(120)),
            anonymous: false,
            authorization: Authorization::Webhook {
                authorized_ttl: Duration::from_secs(300),
                unauthorized_ttl: Duration::from_secs(30),
            },
        }
    );
}

/// `serverTLSBootstrap` in cluster mode: the certificate comes through a CSR and is kept
/// in `<root-dir>/pki`; given files are then unused, as upstream's.
#[test]
fn server_tls_bootstrap_in_cluster_mode_requests_the_certificate() {
    for extra in [
        &[][..],
        &[
            "--tls-cert-file",
            "/a.crt",
            "--tls-private-key-file",
            "/a.key",
        ],
    ] {
        let text = format!("{HEADER}serverTLSBootstrap: true\n");
        let mut args = vec!["--kubeconfig", "/k", "--root-dir", "/var/lib/bpflet"];
        args.extend_from_slice(extra);
        let c = with_config(&text, &args).expect("valid");
        assert_eq!(
            c.server.tls.cert,
            ServingCert::Bootstrap {
                dir: PathBuf::from("/var/lib/bpflet/pki")
            },
            "{extra:?}"
        );
    }
}

#[test]
fn https_api_flags_override_the_file_and_keep_its_other_auth_settings() {
    let text = format!(
        "{HEADER}port: 11250
authentication:
  x509: {{clientCAFile: /file/ca.crt}}
  anonymous: {{enabled: true}}
"
    );
    let c = with_config(
        &text,
        &[
            "--port",
            "12250",
            "--client-ca-file",
            "/flag/ca.crt",
            "--tls-cert-file",
            "/flag/tls.crt",
            "--tls-private-key-file",
            "/flag/tls.key",
        ],
    )
    .expect("valid");
    assert_eq!(c.server.port, 12250);
    assert_eq!(
        c.server.auth.client_ca_file,
        Some(PathBuf::from("/flag/ca.crt"))
    );
    assert!(
        c.server.auth.anonymous,
        "the file's anonymous setting stays"
    );
    assert_eq!(
        c.server.tls.cert,
        ServingCert::Files {
            cert: PathBuf::from("/flag/tls.crt"),
            key: PathBuf::from("/flag/tls.key"),
        }
    );
}

#[test]
fn https_api_settings_are_validated() {
    for (text, flags, want_field, want_reason) in [
        ("port: -1\n", &[][..], "port", "between 1 and 65535"),
        ("port: 65536\n", &[], "port", "between 1 and 65535"),
        (
            "tlsCertFile: /a.crt\n",
            &[],
            "tlsPrivateKeyFile",
            "both or neither",
        ),
        (
            "tlsPrivateKeyFile: /a.key\n",
            &[],
            "tlsCertFile",
            "both or neither",
        ),
        (
            "tlsCertFile: a.crt\ntlsPrivateKeyFile: /a.key\n",
            &[],
            "tlsCertFile",
            "absolute",
        ),
        (
            "tlsMinVersion: VersionTLS10\n",
            &[],
            "tlsMinVersion",
            "TLS 1.2 and 1.3 only",
        ),
        ("tlsMinVersion: TLS12\n", &[], "tlsMinVersion", "unknown"),
        (
            "tlsCipherSuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_AES_128_CBC_SHA]\n",
            &[],
            "tlsCipherSuites[1]",
            "TLS_RSA_WITH_AES_128_CBC_SHA",
        ),
        (
            "serverTLSBootstrap: true\n",
            &[],
            "serverTLSBootstrap",
            "needs a cluster (--kubeconfig)",
        ),
        (
            "rotateCertificates: true\n",
            &[],
            "rotateCertificates",
            "not supported",
        ),
        (
            "authentication: {webhook: {enabled: true}}\n",
            &[],
            "authentication.webhook.enabled",
            "needs the API server",
        ),
        (
            "authorization: {mode: Webhook}\n",
            &[],
            "authorization.mode",
            "needs the API server",
        ),
        (
            "authorization: {mode: Node}\n",
            &["--kubeconfig", "/k"],
            "authorization.mode",
            "unknown mode",
        ),
        (
            "authentication: {webhook: {cacheTTL: soon}}\n",
            &["--kubeconfig", "/k"],
            "authentication.webhook.cacheTTL",
            "soon",
        ),
        (
            "authorization: {webhook: {cacheUnauthorizedTTL: x}}\n",
            &["--kubeconfig", "/k"],
            "authorization.webhook.cacheUnauthorizedTTL",
            "x",
        ),
        (
            "authentication: {x509: {clientCAFile: ca.crt}}\n",
            &[],
            "authentication.x509.clientCAFile",
            "absolute",
        ),
    ] {
        let (field, reason) = invalid_field(with_config(&format!("{HEADER}{text}"), flags));
        assert_eq!(field, want_field, "{text}");
        assert!(reason.contains(want_reason), "{text}: {reason}");
    }
    // Unknown fields under authentication are errors, as everywhere.
    let err = with_config(
        &format!("{HEADER}authentication: {{x509: {{clientCAFILE: /ca.crt}}}}\n"),
        &[],
    )
    .expect_err("unknown field");
    assert!(format!("{err:?}").contains("clientCAFILE"), "{err:?}");
}

#[test]
fn the_standalone_webhook_refusal_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "c.yaml",
        &format!("{HEADER}authentication: {{webhook: {{enabled: true}}}}\n"),
    );
    let err = load(&args(&["--config", &path.to_string_lossy()])).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.starts_with("authentication.webhook.enabled: "),
        "{text}"
    );
    assert!(text.contains(&*path.to_string_lossy()), "{text}");
}

#[test]
fn drop_ins_merge_nested_auth_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "{HEADER}authentication:\n  webhook: {{enabled: true, cacheTTL: 10s}}\n  anonymous: {{enabled: true}}\nauthorization:\n  webhook: {{cacheAuthorizedTTL: 1m, cacheUnauthorizedTTL: 5s}}\n"
        ),
    );
    let drop_ins = dir.path().join("conf.d");
    fs::create_dir(&drop_ins).expect("mkdir");
    write(
        &drop_ins,
        "10-ttl.conf",
        &format!(
            "{HEADER}authentication:\n  webhook: {{cacheTTL: 1m}}\nauthorization:\n  webhook: {{cacheAuthorizedTTL: 2m}}\n"
        ),
    );
    let c = load(&args(&[
        "--config",
        &config.to_string_lossy(),
        "--config-dir",
        &drop_ins.to_string_lossy(),
        "--kubeconfig",
        "/k",
    ]))
    .expect("valid");
    assert_eq!(
        c.server.auth.token_webhook,
        Some(Duration::from_secs(60)),
        "the drop-in's cacheTTL, the file's enabled"
    );
    assert!(c.server.auth.anonymous, "the file's anonymous stays");
    assert_eq!(
        c.server.auth.authorization,
        Authorization::Webhook {
            authorized_ttl: Duration::from_secs(120),
            unauthorized_ttl: Duration::from_secs(5),
        },
        "the drop-in's cacheAuthorizedTTL, the file's cacheUnauthorizedTTL"
    );

    // In standalone mode the file's `enabled: true` is still refused after the merge.
    let (field, _) = invalid_field(load(&args(&[
        "--config",
        &config.to_string_lossy(),
        "--config-dir",
        &drop_ins.to_string_lossy(),
    ])));
    assert_eq!(field, "authentication.webhook.enabled");
}

/// The `eventStream*` settings: defaults, `off`, a group by name (an unknown one refused),
/// bounded sizes, and TLS refused by name.
#[test]
fn event_stream_settings() {
    use crate::config::event_stream::DEFAULT_SOCKET;
    let c = with_config(HEADER, &[]).expect("defaults");
    assert_eq!(c.event_stream.socket, Some(PathBuf::from(DEFAULT_SOCKET)));
    assert_eq!(c.event_stream.group, None);
    assert_eq!(
        (
            c.event_stream.limits.queue,
            c.event_stream.limits.replay,
            c.event_stream.limits.timeline
        ),
        (1024, 4096, 64)
    );
    let bpflet = |lines: &str| {
        format!("{HEADER}---\napiVersion: bpflet.io/v1alpha1\nkind: BpfletConfiguration\n{lines}")
    };
    let c = with_config(&bpflet("eventStreamSocket: \"off\"\n"), &[]).expect("off");
    assert_eq!(c.event_stream.socket, None);
    let c = with_config(
        &bpflet("eventStreamSocket: /run/x/ev.sock\neventStreamGroup: root\neventStreamQueue: 16\neventStreamReplay: 0\n"),
        &[],
    )
    .expect("custom");
    assert_eq!(c.event_stream.socket, Some(PathBuf::from("/run/x/ev.sock")));
    assert_eq!(c.event_stream.group, Some(("root".to_owned(), 0)));
    assert_eq!(
        (c.event_stream.limits.queue, c.event_stream.limits.replay),
        (16, 0)
    );
    for (lines, wanted) in [
        (
            "eventStreamGroup: no-such-group-here\n",
            "eventStreamGroup: \"no-such-group-here\": no such group",
        ),
        ("eventStreamSocket: events.sock\n", "eventStreamSocket"),
        (
            "eventStreamQueue: 0\n",
            "eventStreamQueue: 0 must be between 1",
        ),
        (
            "eventStreamSocket: \"off\"\neventStreamGroup: root\n",
            "eventStreamGroup: needs the event stream socket",
        ),
        (
            "eventStreamTlsAddress: 127.0.0.1:9000\n",
            "eventStreamTlsAddress: \"127.0.0.1:9000\": TLS over TCP for the event stream is not supported yet",
        ),
    ] {
        let err = with_config(&bpflet(lines), &[]).expect_err(lines);
        let msg = err.to_string();
        assert!(msg.contains(wanted), "{lines}: {msg}");
    }
}

#[test]
fn container_log_rotation_defaults_and_values() {
    let c = load(&args(&[])).expect("defaults are valid");
    assert_eq!(
        c.container_logs,
        ContainerLogConfig {
            max_size_bytes: 10 << 20,
            max_files: 5,
            max_workers: 1,
            monitor_interval: Duration::from_secs(10),
        }
    );
    let c = with_config(
        &format!(
            "{HEADER}containerLogMaxSize: 100Ki\ncontainerLogMaxFiles: 3\n\
             containerLogMaxWorkers: 4\ncontainerLogMonitorInterval: 3s\n"
        ),
        &[],
    )
    .expect("valid");
    assert_eq!(
        c.container_logs,
        ContainerLogConfig {
            max_size_bytes: 100 << 10,
            max_files: 3,
            max_workers: 4,
            monitor_interval: Duration::from_secs(3),
        }
    );
}

mod kubeadm;
