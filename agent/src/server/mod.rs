//! The local HTTP API (axum): the read-only port (upstream 10255: `/pods`, `/healthz`) and
//! the healthz-only listener (upstream `127.0.0.1:10248`).
//!
//! - `GET /pods`: a `v1.PodList` as the kubelet serves it: `kind`, `apiVersion`, empty
//!   `metadata`, and `items` without their own `kind` / `apiVersion`.
//! - `GET /healthz`: `ok` (200) when every check passes. Otherwise 500 with one line per
//!   check, `[+]name ok` or `[-]name failed: <message>`, then `healthz check failed`. The
//!   `verbose` query parameter lists the checks on success too (`healthz check passed`);
//!   `exclude=<name>` (repeatable) skips a check. This is the apiserver/kubelet healthz
//!   format, except that the failure message is shown rather than `reason withheld`: the
//!   endpoints are local and the message is what an operator needs.
//! - `GET /healthz/<check>`: one check: `ok` (200), `internal server error: <message>`
//!   (500), or 404 for an unknown check.
//! - `GET /runningpods/`: the pods the runtime runs ([`runningpods`]).
//! - `GET /metrics/probes`: `prober_probe_total`, which `/metrics` does not carry. `/stats/summary`,
//!   `/metrics/resource` and `/metrics/cadvisor` are [`crate::stats::routes`], merged in.
//!
//! [`bind`] first (it names the address when it fails), then [`serve_read_only`] or
//! [`serve_healthz`] until the cancellation token fires; in-flight requests finish.
//!
//! Hostile clients ([`ConnectionLimits`]): each listener serves at most 64 connections at
//! once; a connection accepted beyond that is closed at once (the agent's open files stay
//! bounded whatever the clients do, and the kernel's backlog does not fill up). A connection
//! that has not sent a complete request head within 10 s of opening, or of its last
//! response (an idle keep-alive), is closed. A connection is served for at most 60 s: then
//! it is asked to close after its request in flight, and is dropped 10 s later whatever
//! state it is in, which bounds every request, including one whose client reads the
//! response slowly. Request heads are read into at most 16 KiB.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod auth;
pub mod tls;

use crate::health::{CheckResult, HealthState};
use crate::record::Events;
use crate::status::manager;
use crate::status::node::NodeConditions;

pub mod logs;
pub mod runningpods;
pub mod streaming;
pub mod timeline;

/// What the read-only API serves: read handles on what their owners publish.
#[derive(Clone, Default)]
pub struct ApiState {
    /// The pods the status manager published (`/pods`, counted on `/metrics`).
    pub pods: manager::PodList,
    /// The recorded events (`/events`).
    pub events: Events,
    /// The node's conditions (`/node`).
    pub node: NodeConditions,
    /// The agent's health checks (`/healthz`).
    pub health: HealthState,
    /// `/metrics` (404 without).
    pub metrics: Option<crate::metrics::Metrics>,
    /// `/stats/summary`, `/metrics/resource`, `/metrics/cadvisor` (`crate::stats`).
    pub stats: crate::stats::Stats,
    /// The runtime, for `/containerLogs` (404 without).
    pub runtime: Option<Arc<dyn logs::ContainerLogSource>>,
    /// The event stream, for `/timeline/{namespace}/{pod}` (404 without).
    pub timeline: Option<crate::stream::Hub>,
    /// The runtime, for `/runningpods/` (404 without).
    pub running_pods: Option<Arc<dyn runningpods::RuntimePods>>,
    /// The runtime, for `/exec`, `/attach`, `/portForward`, `/run` (authenticated port
    /// only; 404 without).
    pub streaming: Option<Arc<dyn streaming::StreamingRuntime>>,
}

impl axum::extract::FromRef<ApiState> for HealthState {
    fn from_ref(state: &ApiState) -> Self {
        state.health.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the address of a listening socket")]
    LocalAddr(#[source] io::Error),
}

/// Connections the kernel queues for [`serve`] to accept (clamped by `net.core.somaxconn`).
/// Tokio's default of 128 overflowed under a burst of connections on a loaded node, and a
/// dropped SYN costs a client a 1 s retransmit; Go servers (the kubelet) use somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener (port 0 picks a free port; read it with `local_addr`).
///
/// # Errors
/// [`ServerError::Bind`] naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; one accepted beyond this is closed at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request head, counted from its opening
    /// and from the end of each response (the keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// How long a connection is served before it is asked to close after its request in
    /// flight.
    pub max_connection_age: Duration,
    /// How long a connection asked to close (age, shutdown) may take before it is dropped.
    pub close_grace: Duration,
    /// Read buffer of a connection, which bounds a request head.
    pub max_buf_size: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
            close_grace: Duration::from_secs(10),
            max_buf_size: 16 * 1024,
        }
    }
}

/// Serves `/pods` and `/healthz` on `listener` until `cancel` fires.
pub async fn serve_read_only(
    listener: TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    serve(
        listener,
        read_only_router(state),
        ConnectionLimits::default(),
        cancel,
    )
    .await
}

/// Serves the API over HTTPS on `listener` (upstream's port 10250) until `cancel` fires:
/// the read-only API's routes, each request authenticated and authorized by `auth` before
/// it is routed. No connection is accepted before `tls` has a certificate (one the cluster
/// has yet to sign, [`crate::cluster::csr`]).
pub async fn serve_secure(
    listener: TcpListener,
    state: ApiState,
    tls: tls::TlsServing,
    auth: Arc<auth::Auth>,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        () = tls.certs.ready() => {}
    }
    serve_with(
        listener,
        secure_router(state, auth),
        Some(Arc::new(tls)),
        ConnectionLimits::default(),
        cancel,
    )
    .await
}

/// The HTTPS API's routes: the read-only API's and [`streaming`]'s behind [`auth::guard`],
/// which also answers for paths no route serves.
pub fn secure_router(state: ApiState, auth: Arc<auth::Auth>) -> Router {
    read_only_router(state.clone())
        .merge(streaming::routes().with_state(state))
        .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
}

/// Serves only `/healthz` on `listener` until `cancel` fires.
pub async fn serve_healthz(
    listener: TcpListener,
    health: HealthState,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    serve(
        listener,
        healthz_router(health),
        ConnectionLimits::default(),
        cancel,
    )
    .await
}

/// The read-only API's routes.
pub fn read_only_router(state: ApiState) -> Router {
    let stats = crate::stats::routes(state.stats.clone());
    let running_pods = runningpods::routes(state.running_pods.clone());
    Router::new()
        .route("/pods", get(pods))
        .route("/events", get(events))
        .route("/node", get(node))
        .route("/metrics", get(metrics))
        .route("/metrics/probes", get(probe_metrics))
        .route("/healthz", get(healthz))
        .route("/healthz/{check}", get(healthz_check))
        .route("/timeline/{namespace}/{pod}", get(timeline::timeline_route))
        .merge(logs::routes())
        .fallback(not_found)
        .with_state(state)
        .merge(stats)
        .merge(running_pods)
}

/// `/events`: a `v1.EventList` of the events the agent recorded.
async fn events(State(state): State<ApiState>) -> Response {
    let list = serde_json::json!({
        "kind": "EventList",
        "apiVersion": "v1",
        "metadata": {},
        "items": state.events.list(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}

/// `/metrics`: Prometheus text format. Pod and container counts are taken from the
/// published pods at scrape time.
async fn metrics(State(state): State<ApiState>) -> Response {
    let Some(m) = &state.metrics else {
        return text(StatusCode::NOT_FOUND, "no metrics registered\n".to_owned());
    };
    let pods = state.pods.list();
    let running = |p: &&Arc<k8s_openapi::api::core::v1::Pod>| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    m.running_pods
        .set(i64::try_from(pods.iter().filter(running).count()).unwrap_or(i64::MAX));
    let mut by_state: std::collections::BTreeMap<&str, i64> = [
        ("running", 0),
        ("exited", 0),
        ("created", 0),
        ("unknown", 0),
    ]
    .into_iter()
    .collect();
    for p in &pods {
        let statuses = p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten());
        for c in statuses {
            let state = c.state.as_ref();
            let key = if state.is_some_and(|s| s.running.is_some()) {
                "running"
            } else if state.is_some_and(|s| s.terminated.is_some()) {
                "exited"
            } else if c.container_id.is_some() {
                "created"
            } else {
                "unknown"
            };
            *by_state.entry(key).or_default() += 1;
        }
    }
    for (state, n) in by_state {
        m.running_containers.with_label_values(&[state]).set(n);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.encode(),
    )
        .into_response()
}

/// `/metrics/probes`: `prober_probe_total` alone, as upstream serves it (and only here:
/// `/metrics` does not carry it).
async fn probe_metrics(State(state): State<ApiState>) -> Response {
    let Some(m) = &state.metrics else {
        return text(StatusCode::NOT_FOUND, "no metrics registered\n".to_owned());
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.encode_probes(),
    )
        .into_response()
}

/// `/node`: the node's pressure conditions, as a `v1.Node` with only `status.conditions`,
/// until cluster mode posts them to an API server.
async fn node(State(state): State<ApiState>) -> Response {
    let node = serde_json::json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {},
        "status": { "conditions": state.node.get() },
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        node.to_string(),
    )
        .into_response()
}

/// The healthz listener's routes.
pub fn healthz_router(health: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/healthz/{check}", get(healthz_check))
        .fallback(not_found)
        .with_state(health)
}

/// Serves `router` on `listener` within `limits` until `cancel` fires, then lets every
/// connection finish its request in flight (each within `limits.close_grace`).
///
/// # Errors
/// [`ServerError::LocalAddr`] when the listener has no address; accept errors are logged
/// and retried (running out of file descriptors must not stop the server for good).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    serve_with(listener, router, None, limits, cancel).await
}

/// [`serve`], over TLS when `tls` is given: the handshake must finish within
/// `limits.header_read_timeout`, and the connection's client certificate is judged once and
/// handed to every request as an [`auth::PeerIdentity`] extension.
async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<tls::TlsServing>>,
    limits: ConnectionLimits,
    cancel: CancellationToken,
) -> Result<(), ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    tracing::debug!(%addr, ?limits, "HTTP server listening");
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut refused = Throttled::default();
    let mut accept_errors = Throttled::default();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(more) = accept_errors.tick(Instant::now()) {
                    tracing::warn!(%addr, error = %e, repeated = more, "cannot accept a connection");
                }
                // EMFILE and the like: give the node a moment instead of spinning.
                if !is_connection_error(&e) {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(stream);
            if let Some(more) = refused.tick(Instant::now()) {
                tracing::warn!(
                    %addr,
                    max = limits.max_connections,
                    repeated = more,
                    "too many connections: closing new ones at once"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, cancel) = (router.clone(), cancel.clone());
        match tls.clone() {
            None => connections.spawn(serve_connection(stream, router, limits, cancel, permit)),
            Some(tls) => connections.spawn(async move {
                let handshake = tokio::select! {
                    () = cancel.cancelled() => return,
                    done = tokio::time::timeout(limits.header_read_timeout, tls.acceptor.accept(stream)) => done,
                };
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
                let peer = auth::PeerIdentity(match (&tls.client_certs, stream.get_ref().1.peer_certificates()) {
                    (Some(judge), Some(chain)) if !chain.is_empty() => Some(judge.verify(chain)),
                    _ => None,
                });
                let service = tower::ServiceBuilder::new()
                    .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        req
                    })
                    .service(router);
                serve_connection(stream, service, limits, cancel, permit).await;
            }),
        };
    }
    connections.close();
    connections.wait().await;
    tracing::debug!(%addr, "HTTP server stopped");
    Ok(())
}

/// One connection, HTTP/1 with keep-alive, within `limits`; the permit is its place under
/// `limits.max_connections`, handed to every request as a [`ConnectionPlace`] so that an
/// upgraded session ([`streaming`]) keeps it after this function returns.
async fn serve_connection<I, S>(
    stream: I,
    service: S,
    limits: ConnectionLimits,
    cancel: CancellationToken,
    permit: OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let streams = OpenStreams::default();
    let place = ConnectionPlace {
        _permit: Arc::new(permit),
    };
    let service = tower::ServiceBuilder::new()
        .map_request({
            let streams = streams.clone();
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(streams.clone());
                req.extensions_mut().insert(place.clone());
                req
            }
        })
        .service(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size)
        .keep_alive(true);
    // With upgrades: `/exec`, `/attach` and `/portForward` switch protocols; the connection
    // then ends here and its stream lives on in the `streaming` proxy.
    let conn = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // `Some`: the connection ended by itself; `None`: it is to be closed below.
    let ended = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = cancel.cancelled() => None,
        () = tokio::time::sleep(limits.max_connection_age) => {
            // No new request is read from here on; a response that streams (`follow`) is
            // not cut by the age limit: it ends when its stream does, when the client goes
            // away, or at shutdown (as upstream's kubelet, which has no age limit at all).
            conn.as_mut().graceful_shutdown();
            if streams.any() {
                tokio::select! {
                    result = conn.as_mut() => Some(result),
                    () = cancel.cancelled() => None,
                }
            } else {
                None
            }
        }
    };
    if let Some(result) = ended {
        if let Err(e) = result {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
        return;
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.close_grace, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended"),
        Err(_) => tracing::debug!("HTTP connection dropped: it did not close in time"),
    }
}

/// A connection's place under its listener's `max_connections`, handed to every request as
/// an extension: the place is free again once the connection has ended and every clone is
/// gone. An upgraded session (`/exec`, `/attach`, `/portForward`) outlives the HTTP
/// connection it came on and holds a clone until it ends, so it keeps counting.
#[derive(Debug, Clone)]
pub struct ConnectionPlace {
    /// Held for its drop, which frees the place.
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The streaming responses (`follow`) a connection is sending, handed to every request as
/// an extension: a handler that answers with a long-lived stream holds a [`StreamGuard`]
/// in it, so the connection age limit waits for the stream instead of cutting it.
#[derive(Debug, Clone, Default)]
pub struct OpenStreams(Arc<std::sync::atomic::AtomicUsize>);

impl OpenStreams {
    /// Counts a stream until the guard is dropped (with the response body).
    #[must_use]
    pub fn open(&self) -> StreamGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        StreamGuard(Arc::clone(&self.0))
    }

    fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

/// One open stream of [`OpenStreams`].
#[derive(Debug)]
pub struct StreamGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Errors of one connection (the peer gave up before it was accepted), not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A warning that repeats at most once per [`Throttled::PERIOD`].
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    const PERIOD: Duration = Duration::from_secs(10);

    /// `Some(occurrences suppressed since the last warning)` when a warning is due now.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < Self::PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `v1.PodList` in the kubelet's shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodList {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Map<String, serde_json::Value>,
    items: Vec<serde_json::Value>,
}

async fn pods(State(state): State<ApiState>) -> Response {
    match pod_list_json(&state.pods) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the pod list");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {e}\n"),
            )
        }
    }
}

fn pod_list_json(pods: &manager::PodList) -> Result<Vec<u8>, serde_json::Error> {
    let items = pods
        .list()
        .iter()
        .map(|pod| {
            let mut item = serde_json::to_value(&**pod)?;
            if let Some(obj) = item.as_object_mut() {
                // List items carry no type meta of their own.
                obj.remove("apiVersion");
                obj.remove("kind");
            }
            Ok(item)
        })
        .collect::<Result<_, serde_json::Error>>()?;
    serde_json::to_vec(&PodList {
        kind: "PodList",
        api_version: "v1",
        metadata: serde_json::Map::new(),
        items,
    })
}

/// `verbose` and `exclude=` from a healthz query string.
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthzQuery {
    verbose: bool,
    exclude: Vec<String>,
}

impl HealthzQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut q = Self::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "verbose" => q.verbose = true,
                "exclude" if !value.is_empty() => q.exclude.push(value.to_owned()),
                _ => {}
            }
        }
        q
    }
}

/// The healthz body and status for these results.
fn render_healthz(results: &[CheckResult], query: &HealthzQuery) -> (StatusCode, String) {
    let mut body = String::new();
    let mut failed = false;
    for r in results {
        if query.exclude.contains(&r.name) {
            body.push_str(&format!("[+]{} excluded: ok\n", r.name));
            continue;
        }
        match &r.result {
            Ok(()) => body.push_str(&format!("[+]{} ok\n", r.name)),
            Err(message) => {
                failed = true;
                body.push_str(&format!("[-]{} failed: {message}\n", r.name));
            }
        }
    }
    let unknown: Vec<String> = query
        .exclude
        .iter()
        .filter(|e| !results.iter().any(|r| &r.name == *e))
        .map(|e| format!("{e:?}"))
        .collect();
    if !unknown.is_empty() {
        body.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            unknown.join(",")
        ));
    }
    if failed {
        body.push_str("healthz check failed\n");
        (StatusCode::INTERNAL_SERVER_ERROR, body)
    } else if query.verbose {
        body.push_str("healthz check passed\n");
        (StatusCode::OK, body)
    } else {
        (StatusCode::OK, "ok".to_owned())
    }
}

async fn healthz(State(health): State<HealthState>, RawQuery(query): RawQuery) -> Response {
    let query = HealthzQuery::parse(query.as_deref());
    let results = health.evaluate();
    for r in &results {
        if let Err(message) = &r.result {
            tracing::debug!(check = %r.name, %message, "health check failed");
        }
    }
    let (status, body) = render_healthz(&results, &query);
    text(status, body)
}

async fn healthz_check(State(health): State<HealthState>, Path(name): Path<String>) -> Response {
    match health.evaluate_one(&name) {
        None => not_found().await,
        Some(CheckResult { result: Ok(()), .. }) => text(StatusCode::OK, "ok".to_owned()),
        Some(CheckResult {
            result: Err(message),
            ..
        }) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal server error: {message}\n"),
        ),
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 page not found\n".to_owned())
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
