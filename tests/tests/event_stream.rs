//! The agent's event stream (`bpflet.v1.EventService` on its unix socket) end to end: the
//! real agent, real containerd and runc, the real kernel. Needs root; fails (never skips)
//! without it.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpflet_proto::v1 as pb;
use bpflet_proto::v1::event_service_client::EventServiceClient;
use bpflet_tests::bpflet_bin;
use bpflet_tests::node::{IMAGE, Node, NodeConfig, container_status, oom_pod, remote_tracer};
use tonic::transport::{Channel, Endpoint, Uri};

/// Upper bound for anything the agent and the kernel must produce; never a timing claim.
const WAIT: Duration = Duration::from_secs(120);

/// Exits of `/bin/true` that pod `burst-a` makes.
const BURST: usize = 6000;
/// Exits of `/bin/true` that pod `quiet-b` (namespace `team-b`) makes.
const QUIET: usize = 50;
/// Static pods are named `<name>-<node>`; the harness's node is `testnode`.
const POD_A: &str = "burst-a-testnode";

/// A client on `socket`; `window`: the HTTP/2 receive windows (bytes), to make a client that
/// does not read hold little.
async fn client(socket: &Path, window: Option<u32>) -> EventServiceClient<Channel> {
    let path = socket.to_owned();
    let channel = Endpoint::from_static("http://bpflet.invalid")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    EventServiceClient::new(channel)
}

fn watch(kinds: &[pb::EventKind], namespace: &str, pod: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        kinds: kinds.iter().map(|k| i32::from(*k)).collect(),
        namespace: namespace.into(),
        pod_name: pod.into(),
        ..Default::default()
    }
}

fn is_true_exit(e: &pb::Event) -> bool {
    e.kind == i32::from(pb::EventKind::Exit) && e.comm == "true"
}

fn lost(e: &pb::Event) -> Option<&pb::EventsLost> {
    match &e.detail {
        Some(pb::event::Detail::EventsLost(l)) => Some(l),
        _ => None,
    }
}

/// A pod that runs `/bin/true` `n` times, then sleeps.
fn burst_pod(name: &str, namespace: &str, n: usize) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {name}}}
spec:
  hostNetwork: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; exec sleep 3600']
"
    )
}

/// Events a reading subscriber collected, shared with the test thread.
type Seen = Arc<Mutex<Vec<pb::Event>>>;

/// Reads `stream` into a shared list until it ends.
fn collect(rt: &tokio::runtime::Runtime, mut stream: tonic::Streaming<pb::Event>) -> Seen {
    let seen = Seen::default();
    let out = Arc::clone(&seen);
    rt.spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            out.lock().unwrap().push(e);
        }
    });
    seen
}

fn count(seen: &Seen, pred: impl Fn(&pb::Event) -> bool) -> usize {
    seen.lock().unwrap().iter().filter(|e| pred(e)).count()
}

fn wait_for(what: &str, cond: impl Fn() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "no {what}: {}", detail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two subscribers with different filters each get exactly their events while a third that
/// never reads loses its own (and is told exactly how many when it reads again), and a
/// subscriber that leaves mid-burst and resumes with `since_sequence` misses nothing.
#[test]
fn subscribers_get_their_events_a_stuck_one_is_told_what_it_missed_and_resume_misses_nothing() {
    let node = Node::start_with(NodeConfig {
        bpflet_extra: "eventStreamReplay: 20000\n".into(),
        ..NodeConfig::pleg("event")
    });
    let socket = node.event_socket();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // 1: exits of pod burst-a; 2: everything in namespace team-b; 3: as 1, never reads.
    let exits_a = watch(&[pb::EventKind::Exit], "", POD_A);
    let s1 = rt.block_on(async {
        client(&socket, None)
            .await
            .watch(exits_a.clone())
            .await
            .expect("watch 1")
            .into_inner()
    });
    let s1 = collect(&rt, s1);
    let s2 = rt.block_on(async {
        client(&socket, None)
            .await
            .watch(watch(&[], "team-b", ""))
            .await
            .expect("watch 2")
            .into_inner()
    });
    let s2 = collect(&rt, s2);
    let mut s3 = rt.block_on(async {
        client(&socket, Some(65_535))
            .await
            .watch(exits_a.clone())
            .await
            .expect("watch 3")
            .into_inner()
    });
    // 4: as 1, leaves after half the burst, then resumes after the last sequence it saw.
    let s4_first: Seen = Seen::default();
    let s4_resumed: Seen = Seen::default();
    {
        let (first, resumed, socket, req) = (
            Arc::clone(&s4_first),
            Arc::clone(&s4_resumed),
            socket.clone(),
            exits_a.clone(),
        );
        let mut stream = rt.block_on(async {
            client(&socket, None)
                .await
                .watch(req.clone())
                .await
                .expect("watch 4")
                .into_inner()
        });
        rt.spawn(async move {
            let mut last = None;
            while let Ok(Some(e)) = stream.message().await {
                let done = is_true_exit(&e) && {
                    let n = first
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|e| is_true_exit(e))
                        .count();
                    n + 1 >= BURST / 2
                };
                last = Some((e.sequence, e.run_id.clone()));
                first.lock().unwrap().push(e);
                if done {
                    break;
                }
            }
            drop(stream);
            let (since, run_id) = last.expect("subscriber 4 saw events");
            let mut stream = client(&socket, None)
                .await
                .watch(pb::WatchRequest {
                    since_sequence: Some(since),
                    run_id,
                    ..req
                })
                .await
                .expect("resume")
                .into_inner();
            while let Ok(Some(e)) = stream.message().await {
                resumed.lock().unwrap().push(e);
            }
        });
    }

    node.write_manifest("b.yaml", &burst_pod("quiet-b", "team-b", QUIET));
    node.write_manifest("a.yaml", &burst_pod("burst-a", "default", BURST));

    let true_exits = |s: &Seen| count(s, is_true_exit);
    wait_for(
        "burst of pod burst-a on subscriber 1",
        || true_exits(&s1) >= BURST,
        || {
            let told: Vec<String> = s1
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| lost(e).map(|l| format!("{l:?}")))
                .collect();
            format!("{} of {BURST}; losses: {told:?}", true_exits(&s1))
        },
    );
    wait_for(
        "exits of pod quiet-b on subscriber 2",
        || true_exits(&s2) >= QUIET,
        || format!("{} of {QUIET}", true_exits(&s2)),
    );
    // Both pods sleep now: nothing more of theirs can come but their sleeps' exits later.
    {
        let s1 = s1.lock().unwrap();
        assert_eq!(s1.iter().filter(|e| is_true_exit(e)).count(), BURST);
        for e in s1.iter() {
            assert!(lost(e).is_none(), "subscriber 1 lost events: {e:?}");
            assert_eq!(e.kind, i32::from(pb::EventKind::Exit), "{e:?}");
            assert_eq!(
                (e.namespace.as_str(), e.pod_name.as_str()),
                ("default", POD_A),
                "{e:?}"
            );
            // Named once the runtime has reported the container's id (runc's own exits
            // come before that).
            assert!(["", "c"].contains(&e.container_name.as_str()), "{e:?}");
            assert!(e.sequence > 0, "{e:?}");
        }
        let last = s1
            .iter()
            .rev()
            .find(|e| is_true_exit(e))
            .expect("a true exit");
        assert_eq!(last.container_name, "c", "{last:?}");
        let seqs: Vec<u64> = s1.iter().map(|e| e.sequence).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in sequence order");
    }
    {
        let s2 = s2.lock().unwrap();
        assert_eq!(s2.iter().filter(|e| is_true_exit(e)).count(), QUIET);
        for e in s2.iter() {
            assert!(lost(e).is_none(), "subscriber 2 lost events: {e:?}");
            assert_eq!(
                (e.namespace.as_str(), e.pod_name.as_str()),
                ("team-b", "quiet-b-testnode"),
                "{e:?}"
            );
        }
    }

    // The stuck subscriber: what it holds plus what it is told it lost is the burst.
    let (got, dropped) = rt.block_on(async {
        let (mut got, mut dropped) = (0, 0);
        while got + dropped < BURST as u64 {
            let next = tokio::time::timeout(WAIT, s3.message()).await;
            let Ok(Ok(Some(e))) = next else {
                panic!("subscriber 3 ended early: {got} events, {dropped} told lost, {next:?}")
            };
            if let Some(l) = lost(&e) {
                assert_eq!((l.kernel, l.not_replayed), (0, 0), "{e:?}");
                dropped += l.userspace;
            } else if is_true_exit(&e) {
                got += 1;
            }
        }
        (got, dropped)
    });
    assert!(
        dropped > 0,
        "the stuck subscriber lost nothing ({got} events)"
    );
    assert_eq!(
        got + dropped,
        BURST as u64,
        "{got} received + {dropped} lost"
    );
    eprintln!("stuck subscriber: {got} received, {dropped} told lost");
    let metrics = node.get_text("/metrics").expect("/metrics");
    assert!(
        metrics.contains(&format!("bpflet_event_subscriber_dropped_total {dropped}")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("bpflet_event"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Resume: the two connections of subscriber 4 together saw every exit once.
    wait_for(
        "the resumed subscriber to catch up",
        || true_exits(&s4_first) + true_exits(&s4_resumed) >= BURST,
        || format!("{} + {}", true_exits(&s4_first), true_exits(&s4_resumed)),
    );
    let seqs = |s: &Seen| -> Vec<u64> {
        s.lock()
            .unwrap()
            .iter()
            .filter(|e| is_true_exit(e))
            .map(|e| e.sequence)
            .collect()
    };
    let (first, resumed) = (seqs(&s4_first), seqs(&s4_resumed));
    assert!(
        !first.is_empty() && !resumed.is_empty(),
        "{} / {}",
        first.len(),
        resumed.len()
    );
    assert!(
        s4_resumed.lock().unwrap().iter().all(|e| lost(e).is_none()),
        "a resume within the window reports no loss"
    );
    let union: BTreeSet<u64> = first.iter().chain(&resumed).copied().collect();
    assert_eq!(union.len(), first.len() + resumed.len(), "no event twice");
    let all: BTreeSet<u64> = seqs(&s1).into_iter().collect();
    assert_eq!(union, all, "no event missed");
}

/// `bpflet trace --remote SOCKET` shows an OOM kill the running agent saw, naming the pod
/// and the limit; the socket is root's alone (0600).
#[test]
fn trace_remote_shows_an_oom_kill_with_the_pod_named() {
    let node = Node::start("event");
    let socket = node.event_socket();
    let meta = std::fs::metadata(&socket).expect("the agent made its socket");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");

    let socket_arg = socket.to_string_lossy().into_owned();
    let (mut child, lines) = remote_tracer(&[&socket_arg, "--kind", "oom_kill"]);
    node.write_manifest("oom.yaml", &oom_pod("oom"));
    let v = lines.recv_timeout(WAIT).expect("an oom_kill line");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v["kind"], "oom_kill", "{v:#}");
    assert_eq!(v["comm"], "dd", "{v:#}");
    assert_eq!(
        (v["namespace"].as_str(), v["pod_name"].as_str()),
        (Some("default"), Some("oom-testnode")),
        "{v:#}"
    );
    assert_eq!(v["scope"], "container", "{v:#}");
    assert_eq!(v["limit_bytes"], 32 << 20, "{v:#}");
    assert!(v["sequence"].as_u64().is_some_and(|s| s > 0), "{v:#}");
    let p = node.wait_pod("oom", "OOMKilled", |p| {
        container_status(p, "hog")["state"]["terminated"]["reason"] == "OOMKilled"
    });
    // The pod's timeline on the HTTP API holds the kill.
    let t = node
        .get_json("/timeline/default/oom-testnode")
        .expect("/timeline");
    assert_eq!(t["uid"], p["metadata"]["uid"], "{t:#}");
    assert!(
        t["events"].as_array().is_some_and(|es| es
            .iter()
            .any(|e| e["kind"] == "oom_kill" && e["limit_bytes"] == 32 << 20)),
        "{t:#}"
    );
}

/// Without an agent: a missing socket and a stale one are clear errors naming the path.
#[test]
fn trace_remote_without_an_agent_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.sock");
    let out = Command::new(bpflet_bin())
        .args(["trace", "--remote"])
        .arg(&missing)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&*missing.to_string_lossy()) && err.contains("no event stream socket"),
        "{err}"
    );

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = Command::new(bpflet_bin())
        .args(["trace", "--remote"])
        .arg(&stale)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no bpflet agent answers"), "{err}");
}

/// A socket someone serves stops the agent with its path named; a stale one is replaced.
#[test]
fn a_live_socket_stops_the_agent_a_stale_one_is_replaced() {
    let mut node = Node::prepare(NodeConfig::pleg("event"));
    let socket: PathBuf = node.event_socket();
    let live = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    node.spawn_agent();
    let status = node.wait_agent_exit();
    assert!(!status.success(), "the agent started beside a live socket");
    let log = node.agent_log();
    assert!(
        log.contains(&*socket.to_string_lossy()) && log.contains("another process serves it"),
        "{log}"
    );
    drop(live); // the file stays: stale now
    assert!(socket.exists());
    node.start_agent();
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert!(
        node.agent_log()
            .contains("replacing a stale event stream socket")
    );
}
