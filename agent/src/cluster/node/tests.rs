use super::*;

fn identity() -> NodeIdentity {
    NodeIdentity {
        name: "node-a".to_owned(),
        hostname: "node-a".to_owned(),
        internal_ips: vec!["127.0.0.1".to_owned()],
        labels: BTreeMap::from([
            ("pool".to_owned(), "blue".to_owned()),
            // A --node-labels entry cannot override a well-known label.
            ("kubernetes.io/os".to_owned(), "windows".to_owned()),
        ]),
        taints: vec![Taint {
            key: "dedicated".to_owned(),
            value: Some("bpf".to_owned()),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        }],
    }
}

fn info() -> NodeInfo {
    NodeInfo {
        machine_id: "m".to_owned(),
        system_uuid: String::new(),
        boot_id: "b".to_owned(),
        kernel_version: "6.18.44".to_owned(),
        os_image: "Debian GNU/Linux 12 (bookworm)".to_owned(),
        container_runtime_version: "containerd://1.6.20~ds1".to_owned(),
    }
}

const GI: u64 = 1 << 30;

fn resources() -> NodeResources {
    NodeResources {
        cpu_millis: 2000,
        memory_bytes: 24 * GI,
        ephemeral_storage_bytes: Some(250 * GI),
        max_pods: 110,
    }
}

fn ready() -> Readiness {
    Readiness {
        runtime: Ok(()),
        network: Ok(()),
        pleg: Ok(()),
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
}

fn condition<'a>(status: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

#[test]
fn registration_has_upstreams_labels_taints_and_resources() {
    let identity = identity();
    let info = info();
    let readiness = ready();
    let inputs = StatusInputs {
        identity: &identity,
        resources: resources(),
        reserved: Reserved {
            cpu_millis: 500,
            memory_bytes: GI + 100 * (1 << 20),
            ephemeral_storage_bytes: 25 * GI,
        },
        info: &info,
        pressure: &[],
        readiness: &readiness,
        kubelet_port: None,
    };
    let node = registration(&inputs, at(0));
    assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
    let labels = node.metadata.labels.expect("labels");
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/os"], "linux", "well-known labels win");
    assert_eq!(labels["kubernetes.io/arch"], go_arch());
    assert_eq!(labels["beta.kubernetes.io/arch"], go_arch());
    assert_eq!(labels["pool"], "blue");
    let taints = node.spec.and_then(|s| s.taints).expect("taints");
    assert_eq!(taints[0].key, "dedicated");

    let status = node.status.expect("status");
    let capacity = status.capacity.expect("capacity");
    assert_eq!(capacity["cpu"], q("2"));
    assert_eq!(capacity["memory"], q("24Gi"));
    assert_eq!(capacity["pods"], q("110"));
    assert_eq!(capacity["ephemeral-storage"], q("250Gi"));
    let allocatable = status.allocatable.expect("allocatable");
    assert_eq!(allocatable["cpu"], q("1500m"));
    assert_eq!(allocatable["memory"], q("23452Mi"));
    assert_eq!(allocatable["ephemeral-storage"], q("225Gi"));
    assert_eq!(allocatable["pods"], q("110"));

    let addresses = status.addresses.expect("addresses");
    assert_eq!(
        addresses
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect::<Vec<_>>(),
        [("InternalIP", "127.0.0.1"), ("Hostname", "node-a")]
    );
    let node_info = status.node_info.expect("nodeInfo");
    assert_eq!(node_info.kubelet_version, KUBELET_VERSION);
    assert_eq!(
        node_info.container_runtime_version,
        "containerd://1.6.20~ds1"
    );
    assert_eq!(node_info.operating_system, "linux");
    assert!(
        status.daemon_endpoints.is_none(),
        "no kubelet API served yet"
    );

    let kinds: Vec<_> = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(kinds, CONDITION_ORDER);
}

#[test]
fn ready_names_every_problem_and_pressure_comes_from_the_eviction_manager() {
    let identity = identity();
    let info = info();
    let readiness = Readiness {
        runtime: Ok(()),
        network: Err("container runtime network not ready: NetworkReady=false".to_owned()),
        pleg: Err(
            "PLEG is not healthy: pleg was last seen active 3m5s ago; threshold is 3m0s".to_owned(),
        ),
    };
    let pressure = [NodeCondition {
        type_: "MemoryPressure".to_owned(),
        status: "True".to_owned(),
        reason: Some("KubeletHasInsufficientMemory".to_owned()),
        message: Some("kubelet has insufficient memory available".to_owned()),
        last_transition_time: Some(Time(at(-30))),
        last_heartbeat_time: Some(Time(at(-30))),
    }];
    let inputs = StatusInputs {
        identity: &identity,
        resources: resources(),
        reserved: Reserved::default(),
        info: &info,
        pressure: &pressure,
        readiness: &readiness,
        kubelet_port: Some(10250),
    };
    let status = status(&inputs, None, at(0));
    let ready = condition(&status, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some(
            "PLEG is not healthy: pleg was last seen active 3m5s ago; threshold is 3m0s, \
             container runtime network not ready: NetworkReady=false"
        )
    );
    let memory = condition(&status, "MemoryPressure");
    assert_eq!(memory.status, "True");
    assert_eq!(memory.last_transition_time, Some(Time(at(-30))));
    assert_eq!(
        memory.last_heartbeat_time,
        Some(Time(at(0))),
        "heartbeat is the report's time"
    );
    let disk = condition(&status, "DiskPressure");
    assert_eq!(disk.status, "False");
    assert_eq!(disk.reason.as_deref(), Some("KubeletHasNoDiskPressure"));
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(10250)
    );
}

#[test]
fn transition_times_move_only_when_a_status_changes() {
    let identity = identity();
    let info = info();
    let healthy = ready();
    let inputs = |readiness| StatusInputs {
        identity: &identity,
        resources: resources(),
        reserved: Reserved::default(),
        info: &info,
        pressure: &[],
        readiness,
        kubelet_port: None,
    };
    let first = status(&inputs(&healthy), None, at(0));
    assert_eq!(
        condition(&first, "Ready").last_transition_time,
        Some(Time(at(0)))
    );

    let same = status(&inputs(&healthy), Some(&first), at(10));
    assert_eq!(
        condition(&same, "Ready").last_transition_time,
        Some(Time(at(0)))
    );
    assert_eq!(
        condition(&same, "Ready").last_heartbeat_time,
        Some(Time(at(10)))
    );

    let unknown = Readiness::unknown();
    let down = status(&inputs(&unknown), Some(&same), at(20));
    let ready = condition(&down, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.last_transition_time, Some(Time(at(20))));
    assert_eq!(
        ready.message.as_deref(),
        Some("container runtime status check may not have completed yet")
    );
}

#[test]
fn only_a_change_or_the_report_period_sends_a_status() {
    let identity = identity();
    let info = info();
    let healthy = ready();
    let inputs = StatusInputs {
        identity: &identity,
        resources: resources(),
        reserved: Reserved::default(),
        info: &info,
        pressure: &[],
        readiness: &healthy,
        kubelet_port: None,
    };
    let period = Duration::from_secs(300);
    let sent = status(&inputs, None, at(0));
    assert!(
        needs_report(None, &sent, Duration::ZERO, period),
        "first report"
    );

    let heartbeat_only = status(&inputs, Some(&sent), at(10));
    assert!(!needs_report(
        Some(&sent),
        &heartbeat_only,
        Duration::from_secs(10),
        period
    ));
    assert!(needs_report(Some(&sent), &heartbeat_only, period, period));

    let mut with_others = heartbeat_only.clone();
    with_others.volumes_in_use = Some(vec!["kubernetes.io/csi/x".to_owned()]);
    with_others
        .conditions
        .get_or_insert_default()
        .push(NodeCondition {
            type_: "NetworkUnavailable".to_owned(),
            status: "False".to_owned(),
            ..NodeCondition::default()
        });
    assert!(
        !needs_report(
            Some(&with_others),
            &heartbeat_only,
            Duration::from_secs(10),
            period
        ),
        "fields other writers own are not bpflet's to report"
    );

    // The API server returns an unset kubelet endpoint as port 0 (Go's NodeDaemonEndpoints
    // is a struct, never left out), which is what bpflet wrote: no change.
    let mut as_read_back = sent.clone();
    as_read_back.daemon_endpoints = Some(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint { port: 0 }),
    });
    assert!(
        !needs_report(
            Some(&as_read_back),
            &heartbeat_only,
            Duration::from_secs(10),
            period
        ),
        "an unset kubelet endpoint reads back as port 0"
    );
    let mut other_port = sent.clone();
    other_port.daemon_endpoints = Some(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
    });
    assert!(needs_report(
        Some(&other_port),
        &heartbeat_only,
        Duration::from_secs(10),
        period
    ));

    let mut fewer_pods = inputs.clone();
    fewer_pods.resources.max_pods = 50;
    let changed = status(&fewer_pods, Some(&sent), at(10));
    assert!(needs_report(
        Some(&sent),
        &changed,
        Duration::from_secs(10),
        period
    ));
}

#[test]
fn quantities_are_written_as_apimachinery_canonicalises_them() {
    assert_eq!(bytes(0), q("0"));
    assert_eq!(bytes(1023), q("1023"));
    assert_eq!(bytes(24_561_532 * 1024), q("24561532Ki"));
    assert_eq!(bytes(3 << 30), q("3Gi"));
    assert_eq!(cpu(4000), q("4"));
    assert_eq!(cpu(250), q("250m"));
}

#[test]
fn node_info_reads_the_hosts_ids_and_leaves_the_unreadable_empty() {
    let root = tempfile::tempdir().expect("tempdir");
    let write = |path: &str, body: &str| {
        let path = root.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    };
    write("etc/machine-id", "abc123\n");
    write("proc/sys/kernel/random/boot_id", "boot-1\n");
    write("proc/sys/kernel/osrelease", "6.18.44-amd64\n");
    write(
        "etc/os-release",
        "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    );
    let info = NodeInfo::read(root.path(), "containerd", "1.6.20~ds1");
    assert_eq!(
        info,
        NodeInfo {
            machine_id: "abc123".to_owned(),
            system_uuid: String::new(),
            boot_id: "boot-1".to_owned(),
            kernel_version: "6.18.44-amd64".to_owned(),
            os_image: "Debian GNU/Linux 12 (bookworm)".to_owned(),
            container_runtime_version: "containerd://1.6.20~ds1".to_owned(),
        }
    );
}
