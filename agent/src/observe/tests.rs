use std::time::SystemTime;

use clap::Parser as _;

use super::*;
use crate::events::{OomKill, OomScope};
use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
use crate::runtime::{FakeRuntime, Method};
use crate::stream::{Item, WatchFilter};

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ObserveArgs,
}

fn args(flags: &[&str]) -> ObserveArgs {
    let argv = std::iter::once("observe").chain(flags.iter().copied());
    Cli::try_parse_from(argv).expect("flags parse").args
}

#[test]
fn defaults_are_valid_and_agent_flags_are_refused_by_name() {
    let s = validate(&args(&["--node-name", "n1"])).expect("defaults");
    assert_eq!(s.socket, PathBuf::from("/run/containerd/containerd.sock"));
    assert_eq!(s.cgroup_root, "");
    assert_eq!(
        s.event_socket,
        Some(PathBuf::from(crate::config::event_stream::DEFAULT_SOCKET))
    );
    assert_eq!(s.node_name, "n1");
    for (flag, value) in [
        ("--config", "/etc/kubelet.yaml"),
        ("--root-dir", "/var/lib/bpflet"),
        ("--pod-manifest-path", "/etc/kubernetes/manifests"),
        ("--manifest-url", "http://x"),
    ] {
        let err = validate(&args(&[flag, value])).expect_err(flag);
        assert_eq!(err.exit_code(), 64, "{err}");
        assert!(err.to_string().starts_with(flag), "{flag}: {err}");
    }
    for (flags, named) in [
        (
            &["--container-runtime-endpoint", "tcp://x"][..],
            "--container-runtime-endpoint",
        ),
        (&["--cgroup-root", "kubelet"][..], "--cgroup-root"),
        (
            &["--event-stream-socket", "rel.sock"][..],
            "--event-stream-socket",
        ),
        (&["--relist-period", "0"][..], "--relist-period"),
    ] {
        let err = validate(&args(flags)).expect_err(named);
        assert!(err.to_string().starts_with(named), "{err}");
    }
    let off = validate(&args(&[
        "--event-stream-socket",
        "off",
        "--cgroup-root",
        "/kubelet/",
    ]))
    .expect("valid");
    assert_eq!(
        (off.event_socket, off.cgroup_root.as_str()),
        (None, "/kubelet")
    );
}

/// Every CRI method that changes something.
const MUTATING: [Method; 15] = [
    Method::RunPodSandbox,
    Method::StopPodSandbox,
    Method::RemovePodSandbox,
    Method::CreateContainer,
    Method::StartContainer,
    Method::StopContainer,
    Method::RemoveContainer,
    Method::UpdateContainerResources,
    Method::ReopenContainerLog,
    Method::ExecSync,
    Method::PullImage,
    Method::RemoveImage,
    Method::Exec,
    Method::Attach,
    Method::PortForward,
];

/// The cgroup of container `cid` of pod `uid`, as the upstream kubelet's cgroupfs driver
/// names it.
fn cgroup_of(uid: &str, cid: &str) -> String {
    format!("/kubepods/burstable/pod{uid}/{cid}")
}

fn oom_kill(uid: &str, cid: &str) -> Event {
    let cgroup = cgroup_of(uid, cid);
    Event {
        time: SystemTime::now(),
        kernel_ns: Some(1),
        source: Source::Bpf,
        pid: 4242,
        comm: "dd".to_owned(),
        cgroup_id: None,
        cgroup: cgroup.clone(),
        pod: None,
        detail: Detail::OomKill(OomKill {
            scope: OomScope::Cgroup,
            limit_cgroup_id: None,
            limit_cgroup: Some(cgroup),
            limit_bytes: Some(32 << 20),
            usage_bytes: Some(32 << 20),
            anon_rss_bytes: Some(31 << 20),
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            total_vm_bytes: None,
            oom_score_adj: Some(1000),
            invoker_pid: 4242,
        }),
    }
}

/// A kubelet's pod in the fake runtime: a sandbox and a running container `app`.
async fn kubelets_pod(rt: &FakeRuntime, uid: &str) -> String {
    let mut sb = sandbox_config(uid);
    sb.labels.remove(crate::pods::labels::AGENT_LABEL);
    let mut c = container_config(uid);
    c.labels.remove(crate::pods::labels::AGENT_LABEL);
    let sandbox = rt.run_pod_sandbox(&sb, "").await.expect("sandbox");
    let id = rt
        .create_container(&sandbox, &c, &sb)
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    id
}

#[tokio::test]
async fn an_oom_kill_in_a_new_container_is_named_counted_streamed_and_recorded_read_only() {
    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = ObserverMetrics::new().expect("metrics");
    let directory = RuntimeDirectory::default();
    let hub = Hub::new(
        HubLimits::default(),
        Arc::new(directory.clone()) as Arc<dyn PodDirectory>,
        StreamMetrics::new().expect("stream metrics"),
    );
    let mut watch = hub.subscribe(WatchFilter::new(&[], "", "", "", "").expect("filter"), None);
    let recorder = Recorder::new("node-a");
    let mut observer = Observer {
        view: RuntimeView::new(rt.clone()),
        directory,
        metrics: metrics.clone(),
        attributor: Attributor::new(Hierarchy::v1(dir.path(), 4)),
        hub,
        recorder: Some(recorder.clone()),
        kubepods: "/kubepods".to_owned(),
        last_relist: Instant::now() - RELIST_MIN_GAP,
    };
    observer.relist().await;
    // The container appears after the last listing; its OOM kill names it anyway.
    let cid = kubelets_pod(&rt, UID).await;
    observer.last_relist = Instant::now() - RELIST_MIN_GAP;
    assert!(!observer.handle(oom_kill(UID, &cid)).await);

    let text = metrics.encode();
    let line = r#"bpflet_oom_kills_total{container="app",namespace="default",pod="web",scope="container"} 1"#;
    assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    assert!(
        text.contains(r#"bpflet_oom_kill_limit_bytes{container="app",namespace="default",pod="web",scope="container"} 33554432"#),
        "{text}"
    );
    let Some(Item::Event(published)) = watch.try_next() else {
        panic!("nothing streamed");
    };
    let pod = published.pod.as_ref().expect("named on the stream");
    assert_eq!(
        (
            pod.namespace.as_str(),
            pod.name.as_str(),
            pod.container_name.as_deref()
        ),
        ("default", "web", Some("app"))
    );
    let events = recorder.events().list();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e.reason.as_deref(), Some(OOM_EVENT_REASON));
    assert_eq!(e.involved_object.uid.as_deref(), Some(UID));
    assert_eq!(e.involved_object.name.as_deref(), Some("web"));
    let message = e.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("process 4242 (dd) in container app")
            && message.contains("the container's memory limit")
            && message.contains("32Mi"),
        "{message}"
    );

    // A new container's cgroup asks for a relist soon, not at once.
    let mut created = oom_kill(UID, &"f".repeat(64));
    created.detail = Detail::CgroupCreated { level: 5 };
    assert!(observer.handle(created).await);

    // The pod goes: its series go with it at the next listing.
    for sb in rt.list_pod_sandboxes(None).await.expect("list") {
        rt.stop_pod_sandbox(&sb.id).await.expect("stop");
        rt.remove_pod_sandbox(&sb.id).await.expect("remove");
    }
    let mutations_by_the_test: Vec<usize> = MUTATING.iter().map(|m| rt.call_count(*m)).collect();
    observer.relist().await;
    assert!(
        !metrics.encode().contains(r#"pod="web""#),
        "{}",
        metrics.encode()
    );

    // Nothing the observer did changed the runtime: only the test's own calls are there.
    let after: Vec<usize> = MUTATING.iter().map(|m| rt.call_count(*m)).collect();
    assert_eq!(after, mutations_by_the_test);
    assert!(rt.call_count(Method::ListPodSandbox) >= 3);
}

#[tokio::test]
async fn the_observer_never_calls_a_mutating_cri_method() {
    let rt = FakeRuntime::new();
    rt.add_image(IMAGE);
    let uid = "1d7c2a1f-8e4b-4c3f-8a2d-3b4c5d6e7f80";
    let cid = kubelets_pod(&rt, uid).await;
    let before: Vec<usize> = MUTATING.iter().map(|m| rt.call_count(*m)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let directory = RuntimeDirectory::default();
    let mut observer = Observer {
        view: RuntimeView::new(rt.clone()),
        directory: directory.clone(),
        metrics: ObserverMetrics::new().expect("metrics"),
        attributor: Attributor::new(Hierarchy::v1(dir.path(), 4)),
        hub: Hub::new(
            HubLimits::default(),
            Arc::new(directory) as Arc<dyn PodDirectory>,
            StreamMetrics::new().expect("stream metrics"),
        ),
        recorder: None,
        kubepods: "/kubepods".to_owned(),
        last_relist: Instant::now(),
    };
    observer.relist().await;
    for detail in [
        Detail::Exit {
            status: crate::events::ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            },
            pidns_init: true,
        },
        Detail::CgroupRemoved { level: 5 },
        Detail::MemoryPressure(crate::events::MemoryPressure::default()),
    ] {
        let mut ev = oom_kill(uid, &cid);
        ev.detail = detail;
        observer.handle(ev).await;
    }
    observer.handle(oom_kill(uid, &cid)).await;
    let after: Vec<usize> = MUTATING.iter().map(|m| rt.call_count(*m)).collect();
    assert_eq!(
        after, before,
        "a container the kernel saw end stays the kubelet's"
    );
}
