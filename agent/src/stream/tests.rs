use std::collections::HashMap;
use std::sync::RwLock;
use std::time::SystemTime;

use super::*;
use crate::events::{ExitStatus, OomKill, OomScope, PodRef};

/// Pods by UID, for the hub's lookups.
#[derive(Default)]
struct FakePods(RwLock<HashMap<String, PodIdentity>>);

impl FakePods {
    fn add(&self, uid: &str, namespace: &str, name: &str) {
        self.0.write().unwrap().insert(
            uid.to_owned(),
            PodIdentity {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
                container_name: Some("c".into()),
                labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            },
        );
    }
    fn remove(&self, uid: &str) {
        self.0.write().unwrap().remove(uid);
    }
}

impl PodDirectory for FakePods {
    fn lookup(&self, uid: &str, _: Option<&str>) -> Option<PodIdentity> {
        self.0.read().unwrap().get(uid).cloned()
    }
    fn exists(&self, uid: &str) -> bool {
        self.0.read().unwrap().contains_key(uid)
    }
    fn find(&self, namespace: &str, name: &str) -> Option<String> {
        self.0
            .read()
            .unwrap()
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.uid.clone())
    }
}

fn hub(queue: usize, replay: usize) -> (Hub, Arc<FakePods>, StreamMetrics) {
    let pods = Arc::new(FakePods::default());
    pods.add("ua", "ns-a", "a");
    pods.add("ub", "ns-b", "b");
    let metrics = StreamMetrics::new().unwrap();
    let hub = Hub::new(
        HubLimits {
            queue,
            replay,
            timeline: 3,
        },
        Arc::clone(&pods) as Arc<dyn PodDirectory>,
        metrics.clone(),
    );
    (hub, pods, metrics)
}

fn exit_of(uid: &str, pid: u32) -> Event {
    Event {
        time: SystemTime::UNIX_EPOCH,
        kernel_ns: None,
        source: Source::Bpf,
        pid,
        comm: "true".into(),
        cgroup_id: None,
        cgroup: format!("/kubepods/pod{uid}/c1"),
        pod: Some(PodRef {
            pod_uid: uid.into(),
            container_id: Some("c1".into()),
        }),
        detail: Detail::Exit {
            status: ExitStatus::Code(0),
            pidns_init: false,
        },
    }
}

fn oom_of(uid: &str) -> Event {
    Event {
        detail: Detail::OomKill(OomKill {
            scope: OomScope::Container,
            limit_cgroup_id: None,
            limit_cgroup: Some(format!("/kubepods/pod{uid}/c1")),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(64 << 20),
            anon_rss_bytes: None,
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            total_vm_bytes: None,
            oom_score_adj: None,
            invoker_pid: 0,
        }),
        ..exit_of(uid, 99)
    }
}

/// Everything queued now: (sequences of events, dropped, not_replayed, run_changed).
fn drain(sub: &mut Subscription) -> (Vec<u64>, u64, u64, bool) {
    let (mut seqs, mut dropped, mut not_replayed, mut changed) = (vec![], 0, 0, false);
    while let Some(item) = sub.try_next() {
        match item {
            Item::Event(p) => seqs.push(p.sequence),
            Item::Missed {
                dropped: d,
                not_replayed: n,
                run_changed: c,
            } => {
                dropped += d;
                not_replayed += n;
                changed |= c;
            }
        }
    }
    (seqs, dropped, not_replayed, changed)
}

#[test]
fn a_slow_subscriber_loses_only_its_own_events_and_is_told_exactly_how_many() {
    let (hub, _, metrics) = hub(4, 0);
    let mut fast = hub.subscribe(WatchFilter::default(), None);
    let mut slow = hub.subscribe(WatchFilter::default(), None);
    let mut other = hub.subscribe(WatchFilter::new(&[], "", "ns-b", "", "").unwrap(), None);
    assert_eq!(metrics.subscribers.get(), 3);
    let mut fast_seen = vec![];
    for i in 1..=10 {
        assert_eq!(hub.publish(exit_of("ua", i)), u64::from(i));
        fast_seen.extend(drain(&mut fast).0);
    }
    assert_eq!(
        fast_seen,
        (1..=10).collect::<Vec<_>>(),
        "the reader loses nothing"
    );
    let (seqs, dropped, _, _) = drain(&mut slow);
    assert_eq!(seqs, vec![1, 2, 3, 4], "the queue holds the first 4");
    assert_eq!(dropped, 6, "and the other 6 are counted");
    assert_eq!(metrics.dropped.get(), 6);
    assert_eq!(drain(&mut other), (vec![], 0, 0, false), "nothing of ns-b");

    // The loss is reported once; afterwards the slow one gets every event again.
    hub.publish(exit_of("ub", 11));
    let (seqs, dropped, _, _) = drain(&mut slow);
    assert_eq!((seqs, dropped), (vec![11], 0));
    assert_eq!(drain(&mut other).0, vec![11]);
    assert_eq!(drain(&mut fast).0, vec![11]);
}

#[tokio::test]
async fn the_loss_report_comes_at_the_next_read() {
    let (hub, _, _) = hub(2, 0);
    let mut slow = hub.subscribe(WatchFilter::default(), None);
    for i in 1..=5 {
        hub.publish(exit_of("ua", i));
    }
    let first = slow.next().await.unwrap();
    assert!(
        matches!(first, Item::Missed { dropped: 3, .. }),
        "{first:?}"
    );
    assert!(matches!(slow.next().await.unwrap(), Item::Event(p) if p.sequence == 1));
}

#[test]
fn leaving_subscribers_are_removed() {
    let (hub, _, metrics) = hub(4, 0);
    let a = hub.subscribe(WatchFilter::default(), None);
    let _b = hub.subscribe(WatchFilter::default(), None);
    assert_eq!(metrics.subscribers.get(), 2);
    drop(a);
    assert_eq!(metrics.subscribers.get(), 1);
    hub.publish(exit_of("ua", 1));
    assert_eq!(metrics.subscribers.get(), 1);
}

#[test]
fn resume_within_the_window_misses_nothing() {
    let (hub, _, _) = hub(64, 8);
    for i in 1..=6 {
        hub.publish(exit_of(if i % 2 == 0 { "ua" } else { "ub" }, i));
    }
    let mut sub = hub.subscribe(
        WatchFilter::default(),
        Some(&Resume {
            since: 3,
            run_id: Some(hub.run_id().to_owned()),
        }),
    );
    hub.publish(exit_of("ua", 7));
    assert_eq!(drain(&mut sub), (vec![4, 5, 6, 7], 0, 0, false));

    // With a filter, the replay is filtered too.
    let mut a_only = hub.subscribe(
        WatchFilter::new(&[], "", "ns-a", "", "").unwrap(),
        Some(&Resume {
            since: 1,
            run_id: None,
        }),
    );
    assert_eq!(drain(&mut a_only), (vec![2, 4, 6, 7], 0, 0, false));

    // Resuming at the head replays nothing and reports nothing.
    let mut head = hub.subscribe(
        WatchFilter::default(),
        Some(&Resume {
            since: 7,
            run_id: None,
        }),
    );
    assert_eq!(drain(&mut head), (vec![], 0, 0, false));
}

#[test]
fn resume_beyond_the_window_is_told_how_many_it_missed() {
    let (hub, _, _) = hub(64, 4);
    for i in 1..=10 {
        hub.publish(exit_of("ua", i));
    }
    // Buffered: 7..=10; the client saw 2: 3..=6 are gone.
    let mut sub = hub.subscribe(
        WatchFilter::default(),
        Some(&Resume {
            since: 2,
            run_id: None,
        }),
    );
    assert_eq!(drain(&mut sub), (vec![7, 8, 9, 10], 0, 4, false));

    // A resume point of another run: this run's events not buffered are counted.
    let mut other_run = hub.subscribe(
        WatchFilter::default(),
        Some(&Resume {
            since: 9,
            run_id: Some("0000000000000000".into()),
        }),
    );
    assert_eq!(drain(&mut other_run), (vec![7, 8, 9, 10], 0, 6, true));
}

#[test]
fn timelines_are_bounded_per_pod_and_dropped_with_the_pod() {
    let (hub, pods, _) = hub(4, 0);
    for i in 1..=4 {
        hub.publish(exit_of("ua", i));
    }
    hub.publish(oom_of("ua"));
    hub.publish(exit_of("ub", 6));
    let (entries, dropped) = hub.timeline("ua").unwrap();
    let seqs: Vec<u64> = entries.iter().map(|p| p.sequence).collect();
    assert_eq!((seqs, dropped), (vec![3, 4, 5], 2));
    assert_eq!(entries[2].event.kind(), Kind::OomKill);
    assert_eq!(entries[2].pod.as_ref().unwrap().name, "a");
    pods.remove("ua");
    assert!(hub.timeline("ua").is_none(), "gone with the pod");
    assert_eq!(hub.timeline("ub").unwrap().0.len(), 1);
}

#[test]
fn identity_names_the_container_by_its_runtime_id() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "uid": "u1", "labels": {"app": "web"}},
        "status": {"containerStatuses": [
            {"name": "side", "containerID": "containerd://aaa", "image": "", "imageID": "", "ready": true, "restartCount": 0},
            {"name": "main", "containerID": "containerd://bbb", "image": "", "imageID": "", "ready": true, "restartCount": 0}
        ]}
    }))
    .unwrap();
    let id = identity_of(&pod, Some("bbb"));
    assert_eq!(id.namespace, "default");
    assert_eq!(id.name, "web");
    assert_eq!(id.container_name.as_deref(), Some("main"));
    assert_eq!(id.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(identity_of(&pod, Some("ccc")).container_name, None);
}

/// `grpcurl -plaintext -unix <socket> list`, done with tonic-reflection's client: the socket
/// names bpflet's service and health, and describes `bpflet.v1.EventService`.
#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sock");
    let listener = service::bind(&path, None).unwrap();
    let (hub, _, _) = hub(8, 8);
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(service::serve(listener, path.clone(), hub, cancel.clone()));
    let connect_to = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://bpflet.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = connect_to.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| -> ServerReflectionResponse {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .expect("one answer")
    };

    let listed = ask(MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bpflet.v1.EventService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );

    let described = ask(MessageRequest::FileContainingSymbol(
        "bpflet.v1.EventService".to_owned(),
    ))
    .await;
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("no descriptor for the service: {described:?}");
    };
    // The encoded FileDescriptorProto of events.proto: its package, service and methods
    // are there as the strings grpcurl shows.
    let file = files.file_descriptor_proto.concat();
    for name in [
        "bpflet.v1",
        "EventService",
        "Watch",
        "Timeline",
        "WatchRequest",
    ] {
        assert!(
            file.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} not in the descriptor"
        );
    }

    cancel.cancel();
    server.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket is removed at shutdown");
}
