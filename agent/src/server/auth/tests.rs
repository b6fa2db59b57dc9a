use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::Request as HttpRequest;
use tower::ServiceExt as _;

use super::*;
use crate::server::{ApiState, secure_router};

#[test]
fn paths_map_to_upstreams_subresources() {
    for (path, want) in [
        ("/pods", &["pods", "proxy"][..]),
        ("/pods/", &["pods", "proxy"]),
        ("/runningpods/", &["pods", "proxy"]),
        ("/runningpods", &["pods", "proxy"]),
        ("/healthz", &["healthz", "proxy"]),
        ("/healthz/syncloop", &["healthz", "proxy"]),
        ("/configz", &["configz", "proxy"]),
        ("/stats/summary", &["stats"]),
        ("/stats", &["stats"]),
        ("/metrics", &["metrics"]),
        ("/metrics/resource", &["metrics"]),
        ("/metrics/cadvisor", &["metrics"]),
        ("/logs/", &["log"]),
        ("/logs/messages", &["log"]),
        ("/checkpoint/ns/pod/c", &["checkpoint"]),
        ("/statusz", &["statusz"]),
        ("/flagz", &["configz"]),
        ("/exec/default/p/c", &["proxy"]),
        ("/attach/default/p/c", &["proxy"]),
        ("/portForward/default/p", &["proxy"]),
        ("/containerLogs/default/p/c", &["proxy"]),
        ("/events", &["proxy"]),
        ("/", &["proxy"]),
        // Prefixes that are not path segments are not subpaths.
        ("/podsx", &["proxy"]),
        ("/metricsfoo", &["proxy"]),
        ("/statsx", &["proxy"]),
        ("/healthzz", &["proxy"]),
    ] {
        assert_eq!(subresources(path), want, "{path}");
    }
}

#[test]
fn methods_map_to_upstreams_verbs() {
    for (method, verb) in [
        (Method::GET, "get"),
        (Method::POST, "create"),
        (Method::PUT, "update"),
        (Method::PATCH, "patch"),
        (Method::DELETE, "delete"),
        (Method::HEAD, ""),
        (Method::OPTIONS, ""),
    ] {
        assert_eq!(api_verb(&method), verb, "{method}");
    }
}

#[test]
fn cache_entries_live_exactly_their_ttl() {
    let t0 = Instant::now();
    let mut cache = TtlCache::default();
    cache.insert("a", 1, Duration::from_secs(30), t0);
    cache.insert("b", 2, Duration::ZERO, t0);
    assert_eq!(cache.get(&"a", t0), Some(1));
    assert_eq!(cache.get(&"a", t0 + Duration::from_millis(29_999)), Some(1));
    assert_eq!(
        cache.get(&"a", t0 + Duration::from_secs(30)),
        None,
        "expired"
    );
    assert_eq!(cache.get(&"b", t0), None, "a zero TTL caches nothing");
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_full_cache_drops_expired_entries_then_everything() {
    let t0 = Instant::now();
    let cap = TtlCache::<usize, ()>::CAPACITY;
    let mut cache = TtlCache::default();
    for i in 0..cap / 2 {
        cache.insert(i, (), Duration::from_secs(1), t0);
    }
    for i in cap / 2..cap {
        cache.insert(i, (), Duration::from_secs(60), t0);
    }
    let later = t0 + Duration::from_secs(2);
    cache.insert(cap, (), Duration::from_secs(60), later);
    assert_eq!(cache.len(), cap / 2 + 1, "the expired half went");
    for i in 0..cap {
        cache.insert(cap + 1 + i, (), Duration::from_secs(60), later);
    }
    assert!(cache.len() <= cap, "never above capacity: {}", cache.len());
}

/// Reviews answered from fixed tables, counting the calls.
#[derive(Default)]
struct FakeReviews {
    /// token -> user name.
    tokens: Vec<(&'static str, &'static str)>,
    /// (user, subresource) pairs allowed.
    allowed: Vec<(&'static str, &'static str)>,
    fail: bool,
    token_calls: AtomicUsize,
    access_calls: AtomicUsize,
}

impl Reviews for FakeReviews {
    fn review_token(&self, token: String) -> BoxFuture<'static, Result<Option<User>, ReviewError>> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        let answer = if self.fail {
            Err(ReviewError::Answer {
                review: "TokenReview",
                message: "unreachable".to_owned(),
            })
        } else {
            Ok(self
                .tokens
                .iter()
                .find(|(t, _)| *t == token)
                .map(|(_, name)| user(name, &["g"])))
        };
        Box::pin(async move { answer })
    }

    fn review_access(
        &self,
        user: User,
        attributes: Attributes,
    ) -> BoxFuture<'static, Result<bool, ReviewError>> {
        self.access_calls.fetch_add(1, Ordering::SeqCst);
        let answer = if self.fail {
            Err(ReviewError::Answer {
                review: "SubjectAccessReview",
                message: "unreachable".to_owned(),
            })
        } else {
            Ok(self
                .allowed
                .iter()
                .any(|(u, s)| *u == user.name && *s == attributes.subresource))
        };
        Box::pin(async move { answer })
    }
}

fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.to_owned(),
        uid: String::new(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        extra: BTreeMap::new(),
    }
}

fn config(anonymous: bool, token_ttl: Option<Duration>, webhook: bool) -> AuthConfig {
    AuthConfig {
        client_ca_file: None,
        token_webhook: token_ttl,
        anonymous,
        authorization: if webhook {
            Authorization::Webhook {
                authorized_ttl: Duration::from_secs(300),
                unauthorized_ttl: Duration::ZERO,
            }
        } else {
            Authorization::AlwaysAllow
        },
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    h
}

fn cert(result: Result<User, String>) -> PeerIdentity {
    PeerIdentity(Some(result))
}

#[tokio::test]
async fn authentication_order_and_failures_follow_upstream() {
    let reviews = Arc::new(FakeReviews {
        tokens: vec![("good", "sa")],
        ..FakeReviews::default()
    });
    let anon = Auth::new(
        "n",
        &config(true, Some(Duration::ZERO), false),
        Some(reviews.clone()),
    );
    let closed = Auth::new(
        "n",
        &config(false, Some(Duration::ZERO), false),
        Some(reviews),
    );
    let none = PeerIdentity::default();

    // A verified certificate: CN and O, plus system:authenticated.
    let u = anon
        .authenticate(
            &cert(Ok(user("admin", &["system:masters"]))),
            &HeaderMap::new(),
        )
        .await
        .expect("authenticated");
    assert_eq!(u.name, "admin");
    assert_eq!(u.groups, ["system:masters", AUTHENTICATED]);

    // A certificate from another CA fails, even with anonymous on...
    let foreign = cert(Err("unknown issuer".to_owned()));
    assert_eq!(
        anon.authenticate(&foreign, &HeaderMap::new()).await,
        Err(Unauthenticated::Failed(vec!["unknown issuer".to_owned()]))
    );
    // ...unless a good token comes with it.
    let u = anon
        .authenticate(&foreign, &bearer("good"))
        .await
        .expect("the token authenticates");
    assert_eq!((u.name.as_str(), u.groups.len()), ("sa", 2));

    // A token the API server refuses is a failure, not anonymous.
    assert!(matches!(
        anon.authenticate(&none, &bearer("bad")).await,
        Err(Unauthenticated::Failed(_))
    ));
    // No credentials: anonymous when on, else 401.
    let u = anon
        .authenticate(&none, &HeaderMap::new())
        .await
        .expect("anonymous");
    assert_eq!(u, User::anonymous());
    assert_eq!(u.groups, [UNAUTHENTICATED]);
    assert_eq!(
        closed.authenticate(&none, &HeaderMap::new()).await,
        Err(Unauthenticated::NoCredentials)
    );
    // Upstream's bearer parsing: scheme case-insensitive, an empty token is no token.
    let mut lower = HeaderMap::new();
    lower.insert(
        header::AUTHORIZATION,
        "bearer good".parse().expect("header"),
    );
    assert_eq!(
        closed
            .authenticate(&none, &lower)
            .await
            .expect("lowercase scheme")
            .name,
        "sa"
    );
    let mut empty = HeaderMap::new();
    empty.insert(header::AUTHORIZATION, "Bearer ".parse().expect("header"));
    assert_eq!(
        closed.authenticate(&none, &empty).await,
        Err(Unauthenticated::NoCredentials)
    );
}

#[tokio::test]
async fn tokens_are_cached_for_the_ttl_and_failed_reviews_are_not() {
    let reviews = Arc::new(FakeReviews {
        tokens: vec![("good", "sa")],
        ..FakeReviews::default()
    });
    let none = PeerIdentity::default();
    let cached = Auth::new(
        "n",
        &config(false, Some(Duration::from_secs(120)), false),
        Some(reviews.clone()),
    );
    for token in ["good", "good", "bad", "bad"] {
        let _ = cached.authenticate(&none, &bearer(token)).await;
    }
    assert_eq!(
        reviews.token_calls.load(Ordering::SeqCst),
        2,
        "one review per token, both answers cached"
    );
    let uncached = Auth::new(
        "n",
        &config(false, Some(Duration::ZERO), false),
        Some(reviews.clone()),
    );
    for _ in 0..2 {
        let _ = uncached.authenticate(&none, &bearer("good")).await;
    }
    assert_eq!(
        reviews.token_calls.load(Ordering::SeqCst),
        4,
        "cacheTTL 0: no cache"
    );

    let failing = Arc::new(FakeReviews {
        fail: true,
        ..FakeReviews::default()
    });
    let auth = Auth::new(
        "n",
        &config(true, Some(Duration::from_secs(120)), false),
        Some(failing.clone()),
    );
    for _ in 0..2 {
        assert!(matches!(
            auth.authenticate(&none, &bearer("good")).await,
            Err(Unauthenticated::Failed(_))
        ));
    }
    assert_eq!(failing.token_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn authorization_tries_the_fine_grained_subresource_then_proxy() {
    let reviews = Arc::new(FakeReviews {
        allowed: vec![("proxy-user", "proxy"), ("pods-user", "pods")],
        ..FakeReviews::default()
    });
    let auth = Auth::new("node-a", &config(false, None, true), Some(reviews.clone()));
    let get = Method::GET;
    let pods_user = user("pods-user", &[]);
    let proxy_user = user("proxy-user", &[]);
    let nobody = user("nobody", &[]);

    assert_eq!(
        auth.authorize(&pods_user, &get, "/pods").await.ok(),
        Some(None)
    );
    assert_eq!(
        auth.authorize(&proxy_user, &get, "/pods").await.ok(),
        Some(None)
    );
    assert_eq!(
        auth.authorize(&pods_user, &Method::POST, "/exec/default/p/c")
            .await
            .ok(),
        Some(Some(vec!["proxy"]))
    );
    assert_eq!(
        auth.authorize(&nobody, &get, "/pods").await.ok(),
        Some(Some(vec!["pods", "proxy"]))
    );

    // Allowed answers are cached (cacheAuthorizedTTL 5m), refusals not (TTL 0 here).
    let before = reviews.access_calls.load(Ordering::SeqCst);
    let _ = auth.authorize(&pods_user, &get, "/pods").await;
    assert_eq!(
        reviews.access_calls.load(Ordering::SeqCst),
        before,
        "cached"
    );
    let _ = auth.authorize(&nobody, &get, "/pods").await;
    assert_eq!(
        reviews.access_calls.load(Ordering::SeqCst),
        before + 2,
        "refusals asked again"
    );

    // A failed review is an error naming what was asked.
    let failing = Auth::new(
        "node-a",
        &config(false, None, true),
        Some(Arc::new(FakeReviews {
            fail: true,
            ..FakeReviews::default()
        })),
    );
    let (attributes, _) = failing
        .authorize(&nobody, &get, "/stats/summary")
        .await
        .expect_err("the review fails");
    assert_eq!(
        attributes,
        Attributes {
            verb: "get",
            subresource: "stats",
            name: "node-a".to_owned()
        }
    );

    // Webhook authorization without an API server refuses everything.
    let orphan = Auth::new("node-a", &config(false, None, true), None);
    assert_eq!(
        orphan.authorize(&proxy_user, &get, "/pods").await.ok(),
        Some(Some(vec!["pods", "proxy"]))
    );
}

async fn call(
    router: Router,
    method: Method,
    path: &str,
    peer: Option<PeerIdentity>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = HttpRequest::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut req = req.body(Body::empty()).expect("request");
    if let Some(peer) = peer {
        req.extensions_mut().insert(peer);
    }
    let response = router.oneshot(req).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

use axum::Router;

#[tokio::test]
async fn the_guard_answers_before_routing_with_upstreams_bodies() {
    let reviews = Arc::new(FakeReviews {
        tokens: vec![
            ("viewer", "system:serviceaccount:default:viewer"),
            ("proxy", "proxy-user"),
        ],
        allowed: vec![("proxy-user", "proxy")],
        ..FakeReviews::default()
    });
    let auth = Arc::new(Auth::new(
        "node-a",
        &config(false, Some(Duration::ZERO), true),
        Some(reviews),
    ));
    let router = secure_router(ApiState::default(), auth);

    let (status, body) = call(router.clone(), Method::GET, "/pods", None, None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, "Unauthorized")
    );

    // A path no handler serves (exec is not implemented yet) is still authorized first.
    let (status, body) = call(
        router.clone(),
        Method::POST,
        "/exec/default/p/c",
        None,
        Some("viewer"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "Forbidden (user=system:serviceaccount:default:viewer, verb=create, resource=nodes, subresource(s)=[proxy])\n"
    );
    let (status, body) = call(router.clone(), Method::GET, "/pods", None, Some("viewer")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("subresource(s)=[pods proxy]"), "{body}");

    // nodes/proxy lets a caller through to the routes.
    let (status, body) = call(router.clone(), Method::GET, "/pods", None, Some("proxy")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");
    let (status, _) = call(
        router.clone(),
        Method::POST,
        "/exec/default/p/c",
        None,
        Some("proxy"),
    )
    .await;
    // Authorized, then routed: the exec route itself refuses a request without `command`.
    assert_eq!(status, StatusCode::BAD_REQUEST, "authorized, then routed");

    // A certificate from another CA: 401.
    let foreign = PeerIdentity(Some(Err("unknown issuer".to_owned())));
    let (status, _) = call(router, Method::GET, "/pods", Some(foreign), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The HTTPS listener end to end in-process: a client that does not speak TLS is dropped
/// without harm, and a TLS client checking the self-signed certificate by the node's name
/// is served, anonymously here.
#[tokio::test]
async fn the_https_listener_drops_plain_clients_and_serves_tls_ones() {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = tempfile::tempdir().expect("tempdir");
    let tls = crate::config::TlsConfig {
        cert: crate::config::ServingCert::SelfSigned {
            dir: dir.path().join("pki"),
        },
        min_version: crate::config::TlsVersion::Tls12,
        cipher_suites: None,
    };
    let serving = crate::server::tls::TlsServing::new(&tls, None, "node-a", &[]).expect("TLS");
    let auth = Arc::new(Auth::new("node-a", &config(true, None, false), None));
    let listener = crate::server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::server::serve_secure(
        listener,
        ApiState::default(),
        serving,
        auth,
        cancel.clone(),
    ));

    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /pods HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .ok();
    assert!(
        !String::from_utf8_lossy(&answer).contains("PodList"),
        "no plain-text answer"
    );

    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("pki/kubelet.crt"))
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[1].clone()).expect("the CA is a root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("node-a").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: node-a\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    cancel.cancel();
    server.await.expect("no panic").expect("stops cleanly");
}
