use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::*;

fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn streams_are_flags_set_by_1_and_a_tty_carries_stderr() {
    assert_eq!(
        stream_options(&pairs("input=1&output=1&error=1")),
        Ok(StreamOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false
        })
    );
    assert_eq!(
        stream_options(&pairs("output=1&error=1&tty=1")),
        Ok(StreamOptions {
            stdin: false,
            stdout: true,
            stderr: false,
            tty: true
        })
    );
    // Upstream reads `1` only, under its own names.
    assert_eq!(
        stream_options(&pairs("output=true&error=0&stdout=1")),
        Err(StreamRequestError::NoStreams)
    );
    assert_eq!(
        stream_options(&pairs("tty=1&error=1")),
        Err(StreamRequestError::NoStreams)
    );
    assert_eq!(
        StreamRequestError::NoStreams.to_string(),
        "you must specify at least 1 of stdin, stdout, stderr"
    );
}

#[test]
fn exec_needs_a_command_and_keeps_its_words_in_order() {
    let (cmd, streams) =
        exec_options(&pairs("command=sh&output=1&command=-c&command=echo")).expect("valid");
    assert_eq!(cmd, ["sh", "-c", "echo"].map(str::to_owned));
    assert!(streams.stdout && !streams.stdin);
    let err = exec_options(&pairs("output=1")).expect_err("no command");
    assert_eq!(err, StreamRequestError::NoCommand);
    assert!(err.to_string().contains("\"command\""), "{err}");
    assert_eq!(
        exec_options(&pairs("command=ls")),
        Err(StreamRequestError::NoStreams)
    );
}

#[test]
fn ports_parse_as_upstream_and_are_required_for_websocket_only() {
    assert_eq!(
        forward_ports(&pairs("port=80,8080&port=9090"), true),
        Ok(vec![80, 8080, 9090])
    );
    assert_eq!(forward_ports(&pairs(""), false), Ok(vec![]));
    assert_eq!(
        forward_ports(&pairs(""), true),
        Err(StreamRequestError::NoPort)
    );
    assert_eq!(
        forward_ports(&pairs("port="), false),
        Err(StreamRequestError::EmptyPort)
    );
    assert_eq!(
        forward_ports(&pairs("port=80,http"), false),
        Err(StreamRequestError::BadPort {
            value: "80,http".to_owned()
        })
    );
    assert_eq!(
        forward_ports(&pairs("port=65536"), false),
        Err(StreamRequestError::BadPort {
            value: "65536".to_owned()
        })
    );
    assert_eq!(
        forward_ports(&pairs("port=0"), false),
        Err(StreamRequestError::ZeroPort {
            value: "0".to_owned()
        })
    );
}

#[test]
fn run_splits_cmd_at_spaces() {
    assert_eq!(
        run_command(&pairs("cmd=ls  -l%20/")).map(|c| c.len()),
        Ok(2),
        "raw pairs are not percent-decoded here"
    );
    assert_eq!(
        run_command(&[("cmd".to_owned(), "ls  -l /".to_owned())]),
        Ok(["ls", "-l", "/"].map(str::to_owned).to_vec())
    );
    assert_eq!(run_command(&pairs("cmd=")), Err(StreamRequestError::NoCmd));
    assert_eq!(run_command(&pairs("")), Err(StreamRequestError::NoCmd));
}

fn pod(status: &serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "spec": {
            "containers": [{"name": "app"}, {"name": "done"}],
            "initContainers": [{"name": "setup"}],
        },
        "status": status,
    }))
    .expect("valid pod")
}

fn running_pod() -> Pod {
    pod(&json!({
        "phase": "Running",
        "containerStatuses": [
            {"name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 0,
             "containerID": "containerd://c1", "state": {"running": {}}},
            {"name": "done", "image": "", "imageID": "", "ready": false, "restartCount": 0,
             "containerID": "containerd://c2", "state": {"terminated": {"exitCode": 0}}},
        ],
        "initContainerStatuses": [
            {"name": "setup", "image": "", "imageID": "", "ready": false, "restartCount": 0,
             "containerID": "containerd://c0", "state": {"terminated": {"exitCode": 0}}},
        ],
    }))
}

fn target(uid: Option<&str>) -> PodRef {
    PodRef {
        namespace: "default".to_owned(),
        pod: "web".to_owned(),
        uid: uid.map(str::to_owned),
    }
}

#[test]
fn the_pod_is_found_by_namespace_and_name_and_the_uid_must_match() {
    let pods = vec![Arc::new(running_pod())];
    assert!(find_pod(&pods, &target(None)).is_ok());
    assert!(find_pod(&pods, &target(Some("u1"))).is_ok());
    let err = find_pod(&pods, &target(Some("u2"))).expect_err("another uid");
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        err.to_string(),
        r#"pod "default/web" with uid "u2" does not exist"#
    );
    let other = PodRef {
        namespace: "kube-system".to_owned(),
        ..target(None)
    };
    let err = find_pod(&pods, &other).expect_err("another namespace");
    assert_eq!(err.to_string(), r#"pod "kube-system/web" does not exist"#);
}

#[test]
fn the_running_instance_is_streamed_to_and_else_the_last_one_the_runtime_judges() {
    let p = running_pod();
    assert_eq!(
        container_instance_id(&p, &target(None), "app").as_deref(),
        Ok("c1")
    );
    // Exists but is not running: the runtime is asked and refuses in its own words.
    assert_eq!(
        container_instance_id(&p, &target(None), "done").as_deref(),
        Ok("c2")
    );
    assert_eq!(
        container_instance_id(&p, &target(None), "setup").as_deref(),
        Ok("c0")
    );
    let err = container_instance_id(&p, &target(None), "nope").expect_err("unknown");
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        err.to_string(),
        r#"container "nope" not found in pod "default/web""#
    );
    // In the spec, no instance yet: upstream's `findContainer` miss, a 500.
    let pending = pod(&json!({"phase": "Pending"}));
    let err = container_instance_id(&pending, &target(None), "app").expect_err("no instance");
    assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(err.to_string(), r#"container not found ("app")"#);
}

/// A runtime whose streaming URLs point at one local server, recording what it was asked.
#[derive(Default)]
struct Recorder {
    url: String,
    calls: Mutex<Vec<String>>,
    fail: Option<tonic::Code>,
}

impl Recorder {
    fn answer(&self, call: String) -> Result<String, RuntimeError> {
        self.calls.lock().expect("lock").push(call);
        match self.fail {
            Some(code) => Err(RuntimeError::Call {
                method: crate::runtime::Method::Exec,
                socket: "/fake.sock".into(),
                source: tonic::Status::new(code, "the runtime says no"),
            }),
            None => Ok(self.url.clone()),
        }
    }
}

impl StreamingRuntime for Recorder {
    fn exec_url(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let r = self.answer(format!("exec {container_id} {cmd:?} {streams:?}"));
        Box::pin(async move { r })
    }

    fn attach_url(
        &self,
        container_id: &str,
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let r = self.answer(format!("attach {container_id} {streams:?}"));
        Box::pin(async move { r })
    }

    fn port_forward_url(
        &self,
        pod_uid: &str,
        ports: &[u16],
    ) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
        let r = self.answer(format!("portforward {pod_uid} {ports:?}"));
        Box::pin(async move { r.map(Some) })
    }

    fn run_in_container(
        &self,
        container_id: &str,
        cmd: &[String],
    ) -> BoxFuture<'_, Result<ExecOutput, RuntimeError>> {
        let r = self.answer(format!("run {container_id} {cmd:?}"));
        let exit_code = i32::from(cmd.first().is_some_and(|c| c == "false"));
        Box::pin(async move {
            r.map(|_| ExecOutput {
                stdout: b"out\n".to_vec(),
                stderr: b"err\n".to_vec(),
                exit_code,
            })
        })
    }
}

/// A stand-in for the runtime's streaming server: answers `/session` with 101 (echoing
/// the request's `X-Seen` header: method and path) and then echoes bytes; any other path
/// with 404.
async fn streaming_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|mut req: axum::http::Request<Incoming>| {
                let seen = format!(
                    "{} {} auth={}",
                    req.method(),
                    req.uri(),
                    req.headers().contains_key(header::AUTHORIZATION)
                );
                let upgrade = hyper::upgrade::on(&mut req);
                async move {
                    let mut builder = axum::http::Response::builder().header("x-seen", seen);
                    if req.uri().path() != "/session" {
                        builder = builder.status(StatusCode::NOT_FOUND);
                        return builder.body(http_body_util::Full::new(
                            axum::body::Bytes::from_static(b"no such session"),
                        ));
                    }
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.expect("upgraded"));
                        let mut buf = [0u8; 64];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    builder
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::CONNECTION, "Upgrade")
                        .header(header::UPGRADE, "SPDY/3.1")
                        .body(http_body_util::Full::new(axum::body::Bytes::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

struct Served {
    addr: SocketAddr,
    runtime: Arc<Recorder>,
    cancel: CancellationToken,
    _statuses: crate::status::manager::StatusManager,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn api_state(runtime: &Arc<Recorder>) -> (ApiState, crate::status::manager::StatusManager) {
    let (sink, pods) = crate::status::manager::pod_list();
    let statuses = crate::status::manager::StatusManager::new(vec![sink]);
    statuses.publish("u1", running_pod());
    let state = ApiState {
        pods,
        streaming: Some(Arc::clone(runtime) as Arc<dyn StreamingRuntime>),
        ..ApiState::default()
    };
    (state, statuses)
}

/// The streaming routes served on 127.0.0.1 (plain HTTP, no auth: the guard is tested
/// apart), their runtime's URLs on a [`streaming_server`] at `path`.
async fn serve_streaming(path: &str, fail: Option<tonic::Code>) -> Served {
    serve_streaming_within(path, fail, super::super::ConnectionLimits::default()).await
}

/// [`serve_streaming`] within `limits`.
async fn serve_streaming_within(
    path: &str,
    fail: Option<tonic::Code>,
    limits: super::super::ConnectionLimits,
) -> Served {
    let backend = streaming_server().await;
    let runtime = Arc::new(Recorder {
        url: format!("http://{backend}{path}"),
        fail,
        ..Recorder::default()
    });
    let (state, statuses) = api_state(&runtime);
    let listener = super::super::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    tokio::spawn(super::super::serve(
        listener,
        routes().with_state(state),
        limits,
        cancel.clone(),
    ));
    Served {
        addr,
        runtime,
        cancel,
        _statuses: statuses,
    }
}

/// Sends `head` (a request head, upgrade headers included) and returns the answer's head
/// and the connection.
async fn request(addr: SocketAddr, head: &str) -> (String, tokio::net::TcpStream) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).await.expect("read");
        assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (String::from_utf8(got).expect("UTF-8 head"), conn)
}

fn upgrade_head(method: &str, path: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer secret\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
}

#[tokio::test]
async fn exec_is_proxied_to_the_runtime_url_and_bytes_flow_both_ways_after_101() {
    let served = serve_streaming("/session", None).await;
    let (head, mut conn) = request(
        served.addr,
        &upgrade_head(
            "POST",
            "/exec/default/web/u1/app?command=sh&command=-c&command=echo%20hi&input=1&output=1",
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: spdy/3.1"), "{head}");
    // The runtime saw the client's method on its own path, without the credentials.
    assert!(lower.contains("x-seen: post /session auth=false"), "{head}");
    conn.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");
    assert_eq!(
        served.runtime.calls.lock().expect("lock").as_slice(),
        [format!(
            "exec c1 {:?} {:?}",
            ["sh", "-c", "echo hi"],
            StreamOptions {
                stdin: true,
                stdout: true,
                ..StreamOptions::default()
            }
        )]
    );
}

/// True when the server closes a fresh connection without a byte (refused at the
/// connection cap), false when it answers a request on it.
async fn refused_at_once(addr: SocketAddr) -> bool {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
        .await
        .expect("the server answers or closes");
    match read {
        Ok(_) => got.is_empty(),
        // Closed with the request unread: the kernel resets the connection.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got.is_empty(),
        Err(e) => panic!("read: {e}"),
    }
}

/// An upgraded session keeps its connection's place under the cap until it ends.
#[tokio::test]
async fn an_upgraded_session_counts_toward_the_connection_cap_until_it_ends() {
    let served = serve_streaming_within(
        "/session",
        None,
        super::super::ConnectionLimits {
            max_connections: 1,
            ..super::super::ConnectionLimits::default()
        },
    )
    .await;
    let (head, mut session) = request(
        served.addr,
        &upgrade_head("POST", "/exec/default/web/app?command=sh&input=1&output=1"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    session.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    session.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");
    // The HTTP connection has ended (upgraded, within moments of the 101); the session
    // still holds the only place, every time it is asked for.
    for _ in 0..20 {
        assert!(
            refused_at_once(served.addr).await,
            "a connection beyond the cap was served while the session ran"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(session);
    tokio::time::timeout(Duration::from_secs(10), async {
        while refused_at_once(served.addr).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the place frees once the session has ended");
}

#[tokio::test]
async fn attach_and_port_forward_are_proxied_too() {
    let served = serve_streaming("/session", None).await;
    let (head, _conn) = request(
        served.addr,
        &upgrade_head("GET", "/attach/default/web/app?output=1&tty=1"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (head, mut conn) = request(
        served.addr,
        &upgrade_head("POST", "/portForward/default/web?port=8080"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    conn.write_all(b"data").await.expect("write");
    let mut echo = [0u8; 4];
    conn.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"data");
    let calls = served.runtime.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("attach c1 "), "{calls:?}");
    assert_eq!(calls[1], "portforward u1 [8080]");
}

#[tokio::test]
async fn a_runtime_answer_other_than_101_is_passed_back() {
    let served = serve_streaming("/expired", None).await;
    let (head, mut conn) = request(
        served.addr,
        &upgrade_head("POST", "/exec/default/web/app?command=ls&output=1"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let mut body = vec![0u8; "no such session".len()];
    conn.read_exact(&mut body).await.expect("body");
    assert_eq!(body, b"no such session");
}

async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn refusals_name_what_is_wrong_before_the_runtime_is_asked() {
    let runtime = Arc::new(Recorder::default());
    let (state, _statuses) = api_state(&runtime);
    let router = routes().with_state(state);
    for (method, uri, status, body) in [
        (
            "POST",
            "/exec/default/web/app?output=1",
            400,
            r#"query parameter "command" is required"#,
        ),
        (
            "GET",
            "/exec/default/web/app?command=ls",
            400,
            "you must specify at least 1 of stdin, stdout, stderr",
        ),
        (
            "POST",
            "/exec/default/nope/app?command=ls&output=1",
            404,
            r#"pod "default/nope" does not exist"#,
        ),
        (
            "POST",
            "/exec/default/web/u2/app?command=ls&output=1",
            404,
            r#"pod "default/web" with uid "u2" does not exist"#,
        ),
        (
            "POST",
            "/attach/default/web/nope?output=1",
            404,
            r#"container "nope" not found in pod "default/web""#,
        ),
        (
            "POST",
            "/portForward/default/web/u2",
            404,
            r#"pod "default/web" with uid "u2" does not exist"#,
        ),
        (
            "POST",
            "/portForward/default/web?port=0",
            400,
            r#"port "0" must be > 0 (query parameter "port")"#,
        ),
        (
            "POST",
            "/run/default/web/app",
            400,
            r#"query parameter "cmd" is required"#,
        ),
    ] {
        let (got, text) = call(&router, method, uri).await;
        assert_eq!(
            (got.as_u16(), text.as_str()),
            (status, body),
            "{method} {uri}"
        );
    }
    assert!(
        runtime.calls.lock().expect("lock").is_empty(),
        "the runtime was asked"
    );
    // `/run` is POST only, as upstream.
    let (got, _) = call(&router, "GET", "/run/default/web/app?cmd=ls").await;
    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn run_answers_the_output_and_a_failed_command_or_runtime_is_an_error() {
    let runtime = Arc::new(Recorder::default());
    let (state, _statuses) = api_state(&runtime);
    let router = routes().with_state(state);
    assert_eq!(
        call(&router, "POST", "/run/default/web/u1/app?cmd=ls%20-l").await,
        (StatusCode::OK, "out\nerr\n".to_owned())
    );
    assert_eq!(
        runtime.calls.lock().expect("lock").as_slice(),
        [format!("run c1 {:?}", ["ls", "-l"])]
    );
    assert_eq!(
        call(&router, "POST", "/run/default/web/app?cmd=false").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "command \"false\" exited with 1: out\nerr\n".to_owned()
        )
    );

    for (code, status) in [
        (tonic::Code::NotFound, StatusCode::NOT_FOUND),
        (
            tonic::Code::ResourceExhausted,
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (tonic::Code::Unknown, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let runtime = Arc::new(Recorder {
            fail: Some(code),
            ..Recorder::default()
        });
        let (state, _statuses) = api_state(&runtime);
        let router = routes().with_state(state);
        let (got, body) = call(&router, "POST", "/exec/default/web/app?command=ls&output=1").await;
        assert_eq!(got, status, "{code:?}: {body}");
        assert!(body.contains("the runtime says no"), "{body}");
    }
}

/// A container that exists but is not running is the runtime's to refuse: its error comes
/// back as 500, as upstream passes it through (bpflet answered 400 before asking).
#[tokio::test]
async fn a_container_that_is_not_running_gets_the_runtimes_refusal_as_500() {
    let runtime = Arc::new(Recorder {
        fail: Some(tonic::Code::Unknown),
        ..Recorder::default()
    });
    let (state, _statuses) = api_state(&runtime);
    let router = routes().with_state(state);
    for uri in [
        "/attach/default/web/u1/done?output=1",
        "/exec/default/web/done?command=ls&output=1",
    ] {
        let (got, body) = call(&router, "POST", uri).await;
        assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR, "{uri}: {body}");
        assert!(body.contains("the runtime says no"), "{uri}: {body}");
    }
    let calls = runtime.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("attach c2 "), "{calls:?}");
    assert!(calls[1].starts_with("exec c2 "), "{calls:?}");

    // No instance at all: upstream's text, 500, and the runtime is not asked.
    let runtime = Arc::new(Recorder::default());
    let (sink, pods) = crate::status::manager::pod_list();
    let statuses = crate::status::manager::StatusManager::new(vec![sink]);
    statuses.publish("u1", pod(&json!({"phase": "Pending"})));
    let router = routes().with_state(ApiState {
        pods,
        streaming: Some(Arc::clone(&runtime) as Arc<dyn StreamingRuntime>),
        ..ApiState::default()
    });
    assert_eq!(
        call(&router, "POST", "/exec/default/web/app?command=ls&output=1").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"container not found ("app")"#.to_owned()
        )
    );
    assert!(runtime.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn without_a_runtime_the_endpoints_are_not_found() {
    let router = routes().with_state(ApiState::default());
    let (got, _) = call(&router, "POST", "/exec/default/web/app?command=ls&output=1").await;
    assert_eq!(got, StatusCode::NOT_FOUND);
}
