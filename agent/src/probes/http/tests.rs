//! The `httpGet` handler against servers on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, HTTPHeader, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;
use crate::probes::spec::{Action, ProbeKind, ProbeSpec};

const TIMEOUT: Duration = Duration::from_secs(5);

fn redirect(to: String) -> AxumResponse {
    (AxumStatus::FOUND, [(axum::http::header::LOCATION, to)]).into_response()
}

/// A server on 127.0.0.1 with one route per behaviour under test.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                (
                    AxumStatus::from_u16(code).unwrap(),
                    format!("status {code}"),
                )
            }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                format!(
                    "ua={} host={} accept={} x-probe={}",
                    h("user-agent"),
                    h("host"),
                    h("accept"),
                    h("x-probe")
                )
            }),
        )
        .route(
            "/redirect/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    "arrived".into_response()
                } else {
                    redirect(format!("/redirect/{}", n - 1))
                }
            }),
        )
        .route(
            "/dir/here",
            get(|| async { redirect("there?x=1".to_owned()) }),
        )
        .route("/dir/there", get(|| async { "relative ok" }))
        .route(
            "/absolute",
            get(move || async move { redirect(format!("http://127.0.0.1:{port}/ok")) }),
        )
        .route(
            "/elsewhere",
            // Another host name for the same server: the prober must not follow it.
            get(move || async move { redirect(format!("http://localhost:{port}/status/500")) }),
        )
        .route(
            "/redirect-to-500",
            get(|| async { redirect("/status/500".to_owned()) }),
        )
        .route("/big", get(|| async { "x".repeat(1 << 20) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("test server") });
    addr
}

fn get_path(port: u16, path: &str) -> HttpGet {
    HttpGet {
        scheme: Scheme::Http,
        host: None,
        port,
        path: path.to_owned(),
        headers: Vec::new(),
    }
}

async fn probe(port: u16, path: &str) -> Outcome {
    probe_http(&get_path(port, path), "127.0.0.1", TIMEOUT).await
}

#[tokio::test]
async fn status_codes_2xx_and_3xx_pass_others_fail() {
    let port = serve().await.port();
    assert_eq!(probe(port, "/ok").await, Outcome::Success("ok".to_owned()));
    assert_eq!(
        probe(port, "/status/204").await,
        Outcome::Success(String::new())
    );
    assert!(matches!(
        probe(port, "/status/304").await,
        Outcome::Warning(_)
    ));
    for code in [400, 404, 500, 503] {
        assert_eq!(
            probe(port, &format!("/status/{code}")).await,
            Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
        );
    }
}

#[tokio::test]
async fn headers_user_agent_accept_and_host_override() {
    let port = serve().await.port();
    let Outcome::Success(body) = probe(port, "/headers").await else {
        panic!("headers route failed");
    };
    assert_eq!(
        body,
        format!("ua=kube-probe/1.33 host=127.0.0.1:{port} accept=*/* x-probe=-")
    );

    let mut get = get_path(port, "/headers");
    get.headers = vec![
        ("X-Probe".to_owned(), "yes".to_owned()),
        ("Host".to_owned(), "svc.example".to_owned()),
        ("User-Agent".to_owned(), "mine/1".to_owned()),
        ("Accept".to_owned(), "application/json".to_owned()),
    ];
    let out = probe_http(&get, "127.0.0.1", TIMEOUT).await;
    assert_eq!(
        out,
        Outcome::Success(
            "ua=mine/1 host=svc.example accept=application/json x-probe=yes".to_owned()
        )
    );

    get.headers = vec![("bad header".to_owned(), "x".to_owned())];
    let out = probe_http(&get, "127.0.0.1", TIMEOUT).await;
    assert!(
        matches!(&out, Outcome::Error(m) if m.contains("bad header")),
        "{out:?}"
    );
}

#[tokio::test]
async fn same_host_redirects_are_followed_up_to_ten_requests() {
    let port = serve().await.port();
    assert_eq!(
        probe(port, "/redirect/9").await,
        Outcome::Success("arrived".to_owned()),
        "nine redirects, ten requests"
    );
    let out = probe(port, "/redirect/10").await;
    assert!(
        matches!(&out, Outcome::Failure(m) if m.contains("stopped after 10 redirects")),
        "{out:?}"
    );
    assert_eq!(
        probe(port, "/dir/here").await,
        Outcome::Success("relative ok".to_owned())
    );
    assert_eq!(
        probe(port, "/absolute").await,
        Outcome::Success("ok".to_owned())
    );
    // The redirect target decides.
    assert_eq!(
        probe(port, "/redirect-to-500").await,
        Outcome::Failure("HTTP probe failed with statuscode: 500".to_owned())
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_passes_with_a_warning_and_is_not_followed() {
    let port = serve().await.port();
    let out = probe(port, "/elsewhere").await;
    let Outcome::Warning(message) = out else {
        panic!("expected a warning, got {out:?}");
    };
    assert!(
        message.contains(&format!("http://localhost:{port}/status/500")),
        "{message}"
    );
}

#[tokio::test]
async fn body_is_read_up_to_the_limit() {
    let port = serve().await.port();
    let Outcome::Success(body) = probe(port, "/big").await else {
        panic!("big body failed");
    };
    assert_eq!(body.len(), MAX_BODY);
}

#[tokio::test]
async fn a_slow_server_fails_at_the_timeout() {
    let port = serve().await.port();
    let get = get_path(port, "/slow");
    let out = probe_http(&get, "127.0.0.1", Duration::from_millis(200)).await;
    assert_eq!(
        out,
        Outcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/slow\": timed out after 200ms"
        ))
    );
}

#[tokio::test]
async fn connection_refused_fails() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = probe(port, "/").await;
    assert!(
        matches!(&out, Outcome::Failure(m) if m.contains(&format!("dial tcp 127.0.0.1:{port}")) && m.contains("refused")),
        "{out:?}"
    );
}

#[tokio::test]
async fn named_port_from_the_container_spec() {
    let port = serve().await.port();
    let container = Container {
        name: "web".to_owned(),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(port),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".to_owned()),
                path: Some("headers".to_owned()),
                host: Some("127.0.0.1".to_owned()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".to_owned(),
                    value: "named".to_owned(),
                }]),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        }),
        ..Container::default()
    };
    let spec = ProbeSpec::for_container(&container, ProbeKind::Readiness).unwrap();
    let Ok(Action::Http(get)) = &spec.action else {
        panic!("{:?}", spec.action);
    };
    // The probe names its host: the pod IP is not used.
    let out = probe_http(get, "192.0.2.1", TIMEOUT).await;
    assert!(
        matches!(&out, Outcome::Success(b) if b.ends_with("x-probe=named")),
        "{out:?}"
    );
}

#[test]
fn locations_resolve_against_the_current_url() {
    let base = Url {
        scheme: Scheme::Http,
        host: "127.0.0.1".to_owned(),
        port: 8080,
        path: "/a/b?q=1".to_owned(),
    };
    let join = |l: &str| base.join(l).map(|u| u.to_string());
    assert_eq!(join("/x").as_deref(), Some("http://127.0.0.1:8080/x"));
    assert_eq!(join("c?d").as_deref(), Some("http://127.0.0.1:8080/a/c?d"));
    assert_eq!(join("/x#frag").as_deref(), Some("http://127.0.0.1:8080/x"));
    assert_eq!(
        join("https://[::1]/y").as_deref(),
        Some("https://[::1]:443/y")
    );
    assert_eq!(join("//other:81/z").as_deref(), Some("http://other:81/z"));
    assert_eq!(join("HTTP://Host").as_deref(), Some("http://Host:80/"));
    assert_eq!(join("ftp://x/"), None);
    assert_eq!(join("http://"), None);
}

/// A one-shot-per-connection HTTPS server with a self-signed certificate.
async fn serve_tls() -> u16 {
    let certs = CertificateDer::pem_slice_iter(include_bytes!("../testdata/test-cert.pem"))
        .collect::<Result<Vec<_>, _>>()
        .expect("test certificate");
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/test-key.pem"))
        .expect("test key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn https_does_not_verify_the_certificate() {
    let port = serve_tls().await;
    let mut get = get_path(port, "/");
    get.scheme = Scheme::Https;
    assert_eq!(
        probe_http(&get, "127.0.0.1", TIMEOUT).await,
        Outcome::Success("secure".to_owned())
    );
    // Plain HTTP against the TLS port fails (no silent fallback for probes).
    get.scheme = Scheme::Http;
    assert!(matches!(
        probe_http(&get, "127.0.0.1", TIMEOUT).await,
        Outcome::Failure(_)
    ));
}
