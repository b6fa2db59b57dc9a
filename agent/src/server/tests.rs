use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::List;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;
use crate::health::PING;

const TIMEOUT: Duration = Duration::from_secs(10);

fn pod(name: &str, uid: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.88.0.2"},
    }))
    .expect("valid pod")
}

/// An API serving the pods published through the returned status manager.
fn published_pods() -> (crate::status::manager::StatusManager, ApiState) {
    let (sink, pods) = crate::status::manager::pod_list();
    (
        crate::status::manager::StatusManager::new(vec![sink]),
        ApiState {
            pods,
            ..ApiState::default()
        },
    )
}

/// A server on 127.0.0.1 with a free port.
struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    async fn start(store: &ApiState, read_only: bool) -> Self {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let cancel = CancellationToken::new();
        let task = if read_only {
            tokio::spawn(serve_read_only(listener, store.clone(), cancel.clone()))
        } else {
            tokio::spawn(serve_healthz(
                listener,
                store.health.clone(),
                cancel.clone(),
            ))
        };
        Self { addr, cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("server stops after cancel")
            .expect("server task did not panic")
            .expect("server stops cleanly");
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 GET over a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"));
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn pods_is_a_pod_list() {
    let (statuses, store) = published_pods();
    statuses.publish("uid-b", pod("web-b", "uid-b"));
    statuses.publish("uid-a", pod("web-a", "uid-a"));
    let server = Running::start(&store, true).await;

    let reply = get(server.addr, "/pods").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.headers.contains("content-type: application/json"),
        "{}",
        reply.headers
    );
    let raw: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(raw["kind"], "PodList");
    assert_eq!(raw["apiVersion"], "v1");
    assert_eq!(raw["metadata"], json!({}));
    let items = raw["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].get("kind"), None, "items carry no type meta");
    assert_eq!(items[0].get("apiVersion"), None, "items carry no type meta");

    let list: List<Pod> = serde_json::from_str(&reply.body).expect("parses as a PodList");
    let names: Vec<&str> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["web-a", "web-b"], "ordered by uid");
    assert_eq!(
        list.items[0]
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref()),
        Some("10.88.0.2")
    );

    // Updates show up; removed pods go.
    statuses.remove("uid-a");
    let mut b = pod("web-b", "uid-b");
    b.status = Some(PodStatus {
        phase: Some("Succeeded".to_owned()),
        ..PodStatus::default()
    });
    statuses.publish("uid-b", b);
    let list: List<Pod> =
        serde_json::from_str(&get(server.addr, "/pods").await.body).expect("PodList");
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0]
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_pod_list() {
    let store = ApiState::default();
    let server = Running::start(&store, true).await;
    let reply = get(server.addr, "/pods").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn healthz_ok_and_failing() {
    let store = ApiState::default();
    let pleg_ok = Arc::new(AtomicBool::new(true));
    {
        let pleg_ok = Arc::clone(&pleg_ok);
        store.health.register("pleg", move || {
            if pleg_ok.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("pleg (Event mode) was last seen active 3m5s ago; threshold is 3m".to_owned())
            }
        });
    }
    store.health.set_healthy("runtime");
    let server = Running::start(&store, true).await;

    let reply = get(server.addr, "/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert!(
        reply
            .headers
            .contains("content-type: text/plain; charset=utf-8"),
        "{}",
        reply.headers
    );
    let reply = get(server.addr, "/healthz?verbose").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        "[+]ping ok\n[+]pleg ok\n[+]runtime ok\nhealthz check passed\n"
    );

    pleg_ok.store(false, Ordering::SeqCst);
    store
        .health
        .set_unhealthy("runtime", "container runtime is down");
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.body,
        "[+]ping ok\n\
         [-]pleg failed: pleg (Event mode) was last seen active 3m5s ago; threshold is 3m\n\
         [-]runtime failed: container runtime is down\n\
         healthz check failed\n"
    );

    let reply = get(server.addr, "/healthz/pleg").await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.body,
        "internal server error: pleg (Event mode) was last seen active 3m5s ago; threshold is 3m\n"
    );
    let reply = get(server.addr, "/healthz/ping").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert_eq!(get(server.addr, "/healthz/nope").await.status, 404);

    // Excluding the failing checks makes the rest pass.
    let reply = get(server.addr, "/healthz?exclude=pleg&exclude=runtime").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

    store.health.set_healthy("runtime");
    pleg_ok.store(true, Ordering::SeqCst);
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404() {
    let store = ApiState::default();
    let server = Running::start(&store, true).await;
    for path in ["/", "/nope", "/pods/extra"] {
        let reply = get(server.addr, path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.body, "404 page not found\n", "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_served_with_pod_counts_from_the_store() {
    let (statuses, store) = published_pods();
    statuses.publish("uid-a", pod("web-a", "uid-a"));
    let mut pending = pod("web-b", "uid-b");
    pending.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    statuses.publish("uid-b", pending);
    let store = ApiState {
        metrics: Some(crate::metrics::Metrics::new().expect("metrics")),
        ..store
    };
    let server = Running::start(&store, true).await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("kubelet_running_pods 1"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("kubelet_pleg_last_seen_seconds"),
        "{}",
        reply.body
    );
    server.stop().await;
}

/// Upstream serves `prober_probe_total` on `/metrics/probes` and not on `/metrics`.
#[tokio::test]
async fn probe_counters_are_served_on_metrics_probes_only() {
    let metrics = crate::metrics::Metrics::new().expect("metrics");
    let probes = crate::probes::ProbeMetrics::new();
    probes
        .register(metrics.probe_registry())
        .expect("register the probe counters");
    probes.observe(
        crate::probes::metrics::ProbeLabels {
            kind: crate::probes::spec::ProbeKind::Readiness,
            container: "app",
            pod: "web-a",
            namespace: "default",
            pod_uid: "uid-a",
        },
        &crate::probes::threshold::Outcome::Success(String::new()),
    );
    let store = ApiState {
        metrics: Some(metrics),
        ..ApiState::default()
    };
    let server = Running::start(&store, true).await;
    let probes_reply = get(server.addr, "/metrics/probes").await;
    assert_eq!(probes_reply.status, 200);
    assert!(
        probes_reply
            .body
            .contains("# TYPE prober_probe_total counter"),
        "{}",
        probes_reply.body
    );
    assert!(
        !probes_reply.body.contains("kubelet_"),
        "{}",
        probes_reply.body
    );
    let main = get(server.addr, "/metrics").await;
    assert_eq!(main.status, 200);
    assert!(main.body.contains("kubelet_running_pods"), "{}", main.body);
    assert!(!main.body.contains("prober_"), "{}", main.body);
    server.stop().await;
}

#[tokio::test]
async fn healthz_listener_serves_only_healthz() {
    let (statuses, store) = published_pods();
    statuses.publish("uid-a", pod("web-a", "uid-a"));
    let server = Running::start(&store, false).await;
    assert_eq!(get(server.addr, "/healthz").await.body, "ok");
    assert_eq!(get(server.addr, "/pods").await.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = taken.local_addr().expect("local address");
    let err = bind(addr).await.expect_err("port already in use");
    assert!(
        matches!(&err, ServerError::Bind { addr: a, .. } if *a == addr),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("cannot listen on {addr}"));
}

#[tokio::test]
async fn shutdown_stops_an_idle_server() {
    let store = ApiState::default();
    let server = Running::start(&store, true).await;
    // A keep-alive connection left open must not hold the shutdown.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0_u8; 256];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    server.stop().await;
}

/// A healthz server with `limits` on 127.0.0.1.
async fn start_limited(limits: ConnectionLimits) -> Running {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let cancel = CancellationToken::new();
    let router = healthz_router(HealthState::default());
    let task = tokio::spawn(serve(listener, router, limits, cancel.clone()));
    Running { addr, cancel, task }
}

/// Reads until the server closes the connection; what it sent before.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .expect("read");
    out
}

/// Sends one keep-alive request and reads exactly its response (`ok`, 2 bytes of body).
async fn healthz_keep_alive(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut raw = Vec::new();
    let mut buf = [0_u8; 512];
    while !raw.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(raw).expect("UTF-8")
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let server = start_limited(ConnectionLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(60),
        ..ConnectionLimits::default()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    // Both are served (accepted in order, before the third).
    assert!(
        healthz_keep_alive(&mut first)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        healthz_keep_alive(&mut second)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The third is closed without a byte, long before any timeout.
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(read_until_closed(&mut third).await, b"");
    // A freed place serves the next connection.
    drop(first);
    let reply = tokio::time::timeout(TIMEOUT, async {
        loop {
            let mut next = TcpStream::connect(server.addr).await.expect("connect");
            next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("send");
            let raw = read_until_closed(&mut next).await;
            if !raw.is_empty() {
                return String::from_utf8(raw).expect("UTF-8");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a place frees up once the first connection is gone");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(second);
    server.stop().await;
}

/// Connections beyond the cap are accepted and closed as fast as they come: the listener's
/// backlog does not overflow and new clients are not left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_cap_keeps_being_accepted() {
    let server = start_limited(ConnectionLimits {
        max_connections: 4,
        ..ConnectionLimits::default()
    })
    .await;
    let addr = server.addr;
    let opened = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for i in 0..1100 {
            // A SYN the kernel dropped is sent again after 1 s: a few may be.
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
        held.len()
    })
    .await
    .expect("connect task");
    assert_eq!(opened, 1100);
    server.stop().await;
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed() {
    let server = start_limited(ConnectionLimits {
        header_read_timeout: Duration::from_millis(200),
        ..ConnectionLimits::default()
    })
    .await;
    // Opened, never used.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // A request head that never ends (slowloris).
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    // Kept alive after one response, then idle.
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        healthz_keep_alive(&mut kept)
            .await
            .starts_with("HTTP/1.1 200")
    );

    assert_eq!(read_until_closed(&mut silent).await, b"");
    let slow_reply = read_until_closed(&mut slow).await;
    assert!(
        slow_reply.is_empty() || slow_reply.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&slow_reply)
    );
    assert_eq!(read_until_closed(&mut kept).await, b"");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_is_served_for_a_bounded_time() {
    let server = start_limited(ConnectionLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connection_age: Duration::from_millis(200),
        close_grace: Duration::from_millis(200),
        ..ConnectionLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        healthz_keep_alive(&mut stream)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(read_until_closed(&mut stream).await, b"");
    server.stop().await;
}

#[test]
fn repeated_warnings_are_throttled() {
    let start = std::time::Instant::now();
    let mut t = Throttled::default();
    assert_eq!(t.tick(start), Some(0));
    assert_eq!(t.tick(start + Duration::from_secs(1)), None);
    assert_eq!(t.tick(start + Duration::from_secs(9)), None);
    assert_eq!(t.tick(start + Duration::from_secs(10)), Some(2));
    assert_eq!(t.tick(start + Duration::from_secs(11)), None);
}

#[test]
fn healthz_query_parsing() {
    assert_eq!(HealthzQuery::parse(None), HealthzQuery::default());
    assert_eq!(
        HealthzQuery::parse(Some("verbose=1&exclude=pleg&exclude=&x=y&exclude=runtime")),
        HealthzQuery {
            verbose: true,
            exclude: vec!["pleg".to_owned(), "runtime".to_owned()],
        }
    );
}

#[test]
fn healthz_excluding_an_unknown_check_warns() {
    let results = [CheckResult {
        name: PING.to_owned(),
        result: Ok(()),
    }];
    let query = HealthzQuery {
        verbose: true,
        exclude: vec!["nope".to_owned()],
    };
    let (status, body) = render_healthz(&results, &query);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "[+]ping ok\n\
         warn: some health checks cannot be excluded: no matches for \"nope\"\n\
         healthz check passed\n"
    );
}

/// A server whose `/stream` sends `ticks` chunks 100 ms apart, holding a stream guard when
/// `guarded` (as a followed log does).
async fn start_streaming(limits: ConnectionLimits, ticks: usize, guarded: bool) -> Running {
    use axum::extract::Extension;
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let cancel = CancellationToken::new();
    let router = axum::Router::new().route(
        "/stream",
        axum::routing::get(
            move |Extension(streams): Extension<OpenStreams>| async move {
                let guard = guarded.then(|| streams.open());
                let chunks = futures::stream::unfold(0, move |i| async move {
                    if i == ticks {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::io::Error>(format!("tick-{i}\n")), i + 1))
                });
                let body = futures::StreamExt::map(chunks, move |c| {
                    let _held = &guard;
                    c
                });
                axum::body::Body::from_stream(body)
            },
        ),
    );
    let task = tokio::spawn(serve(listener, router, limits, cancel.clone()));
    Running { addr, cancel, task }
}

#[tokio::test]
async fn the_age_limit_waits_for_a_guarded_stream_and_cuts_an_unguarded_one() {
    let limits = ConnectionLimits {
        max_connection_age: Duration::from_millis(200),
        close_grace: Duration::from_millis(200),
        ..ConnectionLimits::default()
    };
    for guarded in [true, false] {
        let server = start_streaming(limits, 10, guarded).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let text = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // The last tick and the chunked body's end (`0\r\n\r\n`) arrive only when the age
        // limit does not cut the stream (1 s of ticks against 0.2 s + 0.2 s grace).
        let complete = text.contains("tick-9\n") && text.ends_with("0\r\n\r\n");
        assert_eq!(complete, guarded, "guarded {guarded}: {text:?}");
        server.stop().await;
    }
}
