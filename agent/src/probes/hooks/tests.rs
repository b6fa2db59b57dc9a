//! Lifecycle hooks against the fake runtime and a server on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, HTTPHeader, Lifecycle, PodSpec, SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::probes::testing::running_container;
use crate::runtime::{ExecOutput, Fault, Method};

const LOCALHOST: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("uid-1".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec::default()),
        ..Pod::default()
    }
}

fn with_post_start(handler: LifecycleHandler) -> Container {
    Container {
        name: "app".to_owned(),
        lifecycle: Some(Lifecycle {
            post_start: Some(handler),
            ..Lifecycle::default()
        }),
        ..Container::default()
    }
}

fn exec(args: &[&str]) -> LifecycleHandler {
    LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(args.iter().map(|&a| a.to_owned()).collect()),
        }),
        ..LifecycleHandler::default()
    }
}

/// Requests seen by the hook server: (path, x-hook header).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn serve_hooks() -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let record = |status: StatusCode, seen: Seen| {
        move |uri: axum::http::Uri, headers: HeaderMap| async move {
            let x = headers
                .get("x-hook")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            seen.lock().unwrap().push((uri.to_string(), x));
            status
        }
    };
    let app = Router::new()
        .route("/started", get(record(StatusCode::OK, Arc::clone(&seen))))
        .route(
            "/broken",
            get(record(StatusCode::INTERNAL_SERVER_ERROR, Arc::clone(&seen))),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("hook server") });
    (port, seen)
}

fn http(port: u16, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        port: IntOrString::Int(i32::from(port)),
        path: Some(path.to_owned()),
        ..HTTPGetAction::default()
    }
}

#[tokio::test]
async fn no_hook_is_nothing_to_do() {
    let (rt, id) = running_container().await;
    let c = Container {
        name: "app".to_owned(),
        ..Container::default()
    };
    run_post_start(&rt, &pod(), &c, &id, None, None)
        .await
        .expect("no hook");
    assert_eq!(rt.call_count(Method::ExecSync), 0);
}

#[tokio::test]
async fn exec_hook_passes_on_exit_zero_and_fails_otherwise() {
    let (rt, id) = running_container().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    rt.set_exec_handler(Arc::new(move |_, cmd: &[String]| {
        counter.fetch_add(1, Ordering::SeqCst);
        ExecOutput {
            stderr: b"boom".to_vec(),
            exit_code: if cmd[0] == "true" { 0 } else { 2 },
            ..ExecOutput::default()
        }
    }));
    run_post_start(
        &rt,
        &pod(),
        &with_post_start(exec(&["true"])),
        &id,
        None,
        None,
    )
    .await
    .expect("exit 0 passes");
    let err = run_post_start(
        &rt,
        &pod(),
        &with_post_start(exec(&["false"])),
        &id,
        None,
        None,
    )
    .await
    .expect_err("exit 2 fails");
    assert!(
        matches!(&err, HookError::ExecExit { exit_code: 2, output, .. } if output == "boom"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "postStart exec hook [\"false\"] of container app in pod web_default(uid-1) exited with code 2: boom"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 2);

    rt.inject(Method::ExecSync, Fault::Error(tonic::Code::Unavailable));
    let err = run_post_start(
        &rt,
        &pod(),
        &with_post_start(exec(&["true"])),
        &id,
        None,
        None,
    )
    .await
    .expect_err("runtime down");
    assert!(matches!(err, HookError::ExecRuntime { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_never_returns_times_out() {
    let (rt, id) = running_container().await;
    rt.inject(Method::ExecSync, Fault::Hang);
    let err = run_post_start(
        &rt,
        &pod(),
        &with_post_start(exec(&["sleep", "infinity"])),
        &id,
        None,
        Some(Duration::from_secs(30)),
    )
    .await
    .expect_err("hangs");
    assert_eq!(
        err.to_string(),
        "postStart hook of container app in pod web_default(uid-1) did not finish within 30s"
    );
}

#[tokio::test(start_paused = true)]
async fn sleep_hook_sleeps() {
    let (rt, id) = running_container().await;
    let hook = LifecycleHandler {
        sleep: Some(SleepAction { seconds: 5 }),
        ..LifecycleHandler::default()
    };
    let start = tokio::time::Instant::now();
    run_post_start(&rt, &pod(), &with_post_start(hook), &id, None, None)
        .await
        .expect("sleep passes");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn tcp_socket_and_empty_handlers_are_not_hooks() {
    let (rt, id) = running_container().await;
    let tcp = LifecycleHandler {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(80),
            host: None,
        }),
        ..LifecycleHandler::default()
    };
    let err = run_post_start(&rt, &pod(), &with_post_start(tcp), &id, None, None)
        .await
        .expect_err("tcpSocket is refused");
    assert!(
        matches!(
            err,
            HookError::Unsupported {
                handler: "tcpSocket",
                ..
            }
        ),
        "{err:?}"
    );
    let err = run_post_start(
        &rt,
        &pod(),
        &with_post_start(LifecycleHandler::default()),
        &id,
        None,
        None,
    )
    .await
    .expect_err("empty handler");
    assert!(matches!(err, HookError::Unsupported { .. }), "{err:?}");
}

#[tokio::test]
async fn http_post_start_goes_to_the_pod_ip_and_ignores_the_status() {
    let (rt, id) = running_container().await;
    let (port, seen) = serve_hooks().await;
    let hook = |path: &str| LifecycleHandler {
        http_get: Some(http(port, path)),
        ..LifecycleHandler::default()
    };
    run_post_start(
        &rt,
        &pod(),
        &with_post_start(hook("started")),
        &id,
        LOCALHOST,
        None,
    )
    .await
    .expect("200");
    // As upstream: any response counts as the hook having run.
    run_post_start(
        &rt,
        &pod(),
        &with_post_start(hook("/broken")),
        &id,
        LOCALHOST,
        None,
    )
    .await
    .expect("500 still counts as run");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("/started".to_owned(), "-".to_owned()),
            ("/broken".to_owned(), "-".to_owned())
        ]
    );
    let err = run_post_start(
        &rt,
        &pod(),
        &with_post_start(hook("/started")),
        &id,
        None,
        None,
    )
    .await
    .expect_err("no pod IP");
    assert!(matches!(err, HookError::NoPodIp { .. }), "{err:?}");
}

#[tokio::test]
async fn http_hook_without_an_answer_fails() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Container {
        name: "app".to_owned(),
        ..Container::default()
    };
    let err = run_http_hook(
        &http(port, "/"),
        &pod(),
        &c,
        LOCALHOST,
        Duration::from_secs(2),
    )
    .await
    .expect_err("connection refused");
    let HookError::Http { url, source, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(url, &format!("http://127.0.0.1:{port}/"));
    assert!(matches!(source, HttpError::Connect { .. }), "{source:?}");
}

#[tokio::test]
async fn pre_stop_http_hook_with_named_port_host_and_headers() {
    let (port, seen) = serve_hooks().await;
    let c = Container {
        name: "app".to_owned(),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_owned()),
            container_port: i32::from(port),
            ..ContainerPort::default()
        }]),
        ..Container::default()
    };
    let action = HTTPGetAction {
        port: IntOrString::String("admin".to_owned()),
        host: Some("127.0.0.1".to_owned()),
        path: Some("/started?drain=1".to_owned()),
        http_headers: Some(vec![HTTPHeader {
            name: "X-Hook".to_owned(),
            value: "prestop".to_owned(),
        }]),
        ..HTTPGetAction::default()
    };
    // The explicit host wins over the pod IP.
    let pod_ip = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    run_http_hook(&action, &pod(), &c, pod_ip, Duration::from_secs(5))
        .await
        .expect("preStop hook");
    assert_eq!(
        *seen.lock().unwrap(),
        [("/started?drain=1".to_owned(), "prestop".to_owned())]
    );

    let unknown = HTTPGetAction {
        port: IntOrString::String("nope".to_owned()),
        ..action
    };
    let err = run_http_hook(&unknown, &pod(), &c, pod_ip, Duration::from_secs(5))
        .await
        .expect_err("unknown port name");
    assert!(matches!(err, HookError::Invalid { .. }), "{err:?}");
}
