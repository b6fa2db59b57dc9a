//! `kubectl exec`, `attach` and `port-forward` (and the kubelet's `/run`), served on the
//! authenticated port only, as upstream's kubelet serves them:
//!
//! - `GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}?command=..&input=1&output=1..`
//! - `GET|POST /attach/{namespace}/{pod}[/{uid}]/{container}?input=1&output=1..`
//! - `GET|POST /portForward/{namespace}/{pod}[/{uid}]` (`port=` for websocket clients)
//! - `POST /run/{namespace}/{pod}[/{uid}]/{container}?cmd=..`: runs `cmd` (split at spaces)
//!   with CRI `ExecSync` and answers its stdout then stderr; a non-zero exit is a 500.
//!
//! bpflet speaks none of the streaming protocols (SPDY/3.1, websocket): it asks the runtime
//! (CRI `Exec`, `Attach`, `PortForward`) for a one-shot URL on the runtime's own streaming
//! server, then proxies the client's request there (method, headers but `Host` and
//! `Authorization`, and body) and hands back the runtime's answer. When the runtime switches
//! protocols (101), both connections are upgraded and bytes are copied both ways until
//! either side closes. An upgraded session keeps its connection's place under the
//! listener's connection limit until it ends ([`super::ConnectionPlace`]), so sessions
//! cannot open file descriptors without bound; the connection age limit no longer applies
//! to it (the HTTP connection has ended; upstream has no age limit).
//!
//! The streams are upstream's query flags `input` (stdin), `output` (stdout), `error`
//! (stderr) and `tty`, true only as `1` (what the API server sends). Errors: 400 for a query that does not make a session (no `command`, no stream,
//! a bad `port`), 404 for an unknown pod (or one whose uid is not the path's) or
//! container, 500 `container not found ("<name>")` for a container of the spec that has
//! no instance in the runtime (upstream's message), and for a runtime failure its
//! message with 404 (gRPC `NotFound`), 429 (`ResourceExhausted`) or 500, as upstream's
//! `streaming.WriteError`. A container that exists but is not running is asked for all the
//! same: the runtime's refusal (containerd: `container is in CONTAINER_EXITED state`) comes
//! back as that 500, as upstream passes it through.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;

use super::ApiState;
use crate::pods::labels::POD_UID_LABEL;
use crate::runtime::{
    ContainerRuntime, ExecOutput, RuntimeError, SandboxState, StreamOptions, api,
};

/// How long connecting to the runtime's streaming server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes of this module, for the authenticated router only.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            get(exec_uid).post(exec_uid),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            get(attach_uid).post(attach_uid),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(port_forward_uid).post(port_forward_uid),
        )
        .route("/run/{namespace}/{pod}/{container}", post(run))
        .route("/run/{namespace}/{pod}/{uid}/{container}", post(run_uid))
}

/// The runtime, as these endpoints see it (object safe, so the server holds any runtime).
pub trait StreamingRuntime: Send + Sync {
    /// CRI `Exec`: the URL that serves the session.
    fn exec_url(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>>;

    /// CRI `Attach`: the URL that serves the session.
    fn attach_url(
        &self,
        container_id: &str,
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>>;

    /// CRI `PortForward` into the pod's newest ready sandbox: the URL that serves the
    /// session, or `None` when the pod has no ready sandbox.
    fn port_forward_url(
        &self,
        pod_uid: &str,
        ports: &[u16],
    ) -> BoxFuture<'_, Result<Option<String>, RuntimeError>>;

    /// CRI `ExecSync` without a time limit of its own (the call's request timeout bounds it).
    fn run_in_container(
        &self,
        container_id: &str,
        cmd: &[String],
    ) -> BoxFuture<'_, Result<ExecOutput, RuntimeError>>;
}

impl<R: ContainerRuntime> StreamingRuntime for R {
    fn exec_url(
        &self,
        container_id: &str,
        cmd: &[String],
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let (id, cmd) = (container_id.to_owned(), cmd.to_vec());
        Box::pin(async move { self.exec(&id, &cmd, streams).await })
    }

    fn attach_url(
        &self,
        container_id: &str,
        streams: StreamOptions,
    ) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let id = container_id.to_owned();
        Box::pin(async move { self.attach(&id, streams).await })
    }

    fn port_forward_url(
        &self,
        pod_uid: &str,
        ports: &[u16],
    ) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
        let (uid, ports) = (pod_uid.to_owned(), ports.to_vec());
        Box::pin(async move {
            let filter = api::PodSandboxFilter {
                state: Some(api::PodSandboxStateValue {
                    state: api::PodSandboxState::SandboxReady.into(),
                }),
                label_selector: [(POD_UID_LABEL.to_owned(), uid)].into(),
                ..api::PodSandboxFilter::default()
            };
            let sandboxes = self.list_pod_sandboxes(Some(filter)).await?;
            let newest = sandboxes
                .into_iter()
                .filter(|s| s.state == SandboxState::Ready)
                .max_by_key(|s| s.created_at);
            match newest {
                Some(sandbox) => self.port_forward(&sandbox.id, &ports).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn run_in_container(
        &self,
        container_id: &str,
        cmd: &[String],
    ) -> BoxFuture<'_, Result<ExecOutput, RuntimeError>> {
        let (id, cmd) = (container_id.to_owned(), cmd.to_vec());
        Box::pin(async move { self.exec_sync(&id, &cmd, Duration::ZERO).await })
    }
}

/// Why a request was refused before the runtime was asked (400 or 404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRequestError {
    #[error("the query does not decode: {0}")]
    Decode(String),
    #[error("query parameter \"command\" is required")]
    NoCommand,
    #[error("query parameter \"cmd\" is required")]
    NoCmd,
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    #[error("query parameter \"port\" is required")]
    NoPort,
    #[error("query parameter \"port\" cannot be empty")]
    EmptyPort,
    #[error("unable to parse {value:?} as a port (query parameter \"port\")")]
    BadPort { value: String },
    #[error("port {value:?} must be > 0 (query parameter \"port\")")]
    ZeroPort { value: String },
    #[error("pod \"{namespace}/{pod}\" does not exist")]
    NoPod { namespace: String, pod: String },
    #[error("pod \"{namespace}/{pod}\" with uid {uid:?} does not exist")]
    WrongUid {
        namespace: String,
        pod: String,
        uid: String,
    },
    #[error("container {container:?} not found in pod \"{namespace}/{pod}\"")]
    NoContainer {
        namespace: String,
        pod: String,
        container: String,
    },
    /// In the spec, but the runtime holds no instance of it (never created yet): upstream's
    /// `findContainer` finds nothing and answers this text with 500.
    #[error("container not found ({container:?})")]
    NoInstance { container: String },
    #[error("pod \"{namespace}/{pod}\" has no ready sandbox")]
    NoSandbox { namespace: String, pod: String },
}

impl StreamRequestError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoPod { .. } | Self::WrongUid { .. } | Self::NoContainer { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::NoInstance { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn response(&self) -> Response {
        tracing::debug!(error = %self, "streaming request refused");
        error_text(self.status(), self.to_string())
    }
}

/// The query's `(name, value)` pairs.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, StreamRequestError> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(p)| p)
        .map_err(|e| StreamRequestError::Decode(e.body_text()))
}

/// A flag as upstream reads it: the first value is `1`.
fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .is_some_and(|(_, v)| v == "1")
}

/// `input` (stdin), `output` (stdout), `error` (stderr) and `tty`, as upstream's
/// `remotecommand.NewOptions` reads them: with a TTY
/// stderr is dropped (the terminal carries both); at least one stream is required.
///
/// # Errors
/// [`StreamRequestError::NoStreams`].
pub fn stream_options(pairs: &[(String, String)]) -> Result<StreamOptions, StreamRequestError> {
    let tty = flag(pairs, "tty");
    let options = StreamOptions {
        stdin: flag(pairs, "input"),
        stdout: flag(pairs, "output"),
        stderr: flag(pairs, "error") && !tty,
        tty,
    };
    if options.stdin || options.stdout || options.stderr {
        Ok(options)
    } else {
        Err(StreamRequestError::NoStreams)
    }
}

/// An exec's `command` (repeated, in order) and streams.
///
/// # Errors
/// [`StreamRequestError::NoCommand`], or [`stream_options`]'s.
pub fn exec_options(
    pairs: &[(String, String)],
) -> Result<(Vec<String>, StreamOptions), StreamRequestError> {
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return Err(StreamRequestError::NoCommand);
    }
    Ok((command, stream_options(pairs)?))
}

/// The `port` values (each may list ports split by `,`), as upstream's port-forward options
/// parse them; required (`required`) for websocket clients, whose ports come only in the
/// query (SPDY clients name them per stream).
///
/// # Errors
/// [`StreamRequestError::NoPort`], `EmptyPort`, `BadPort`, `ZeroPort`.
pub fn forward_ports(
    pairs: &[(String, String)],
    required: bool,
) -> Result<Vec<u16>, StreamRequestError> {
    let values: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "port")
        .map(|(_, v)| v.as_str())
        .collect();
    if values.is_empty() && required {
        return Err(StreamRequestError::NoPort);
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err(StreamRequestError::EmptyPort);
        }
        for p in value.split(',') {
            let port: u16 = p.parse().map_err(|_| StreamRequestError::BadPort {
                value: value.to_owned(),
            })?;
            if port == 0 {
                return Err(StreamRequestError::ZeroPort {
                    value: value.to_owned(),
                });
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

/// `/run`'s `cmd`, split at spaces as upstream does.
///
/// # Errors
/// [`StreamRequestError::NoCmd`] when it is missing or blank.
pub fn run_command(pairs: &[(String, String)]) -> Result<Vec<String>, StreamRequestError> {
    let cmd = pairs
        .iter()
        .find(|(k, _)| k == "cmd")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let words: Vec<String> = cmd
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if words.is_empty() {
        Err(StreamRequestError::NoCmd)
    } else {
        Ok(words)
    }
}

/// The pod a path names: namespace, name and, when the path has one, its uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
}

/// The published pod `target` names.
///
/// # Errors
/// [`StreamRequestError::NoPod`], or `WrongUid` when the path's uid is not the pod's.
pub fn find_pod(pods: &[Arc<Pod>], target: &PodRef) -> Result<Arc<Pod>, StreamRequestError> {
    let pod = pods
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(target.namespace.as_str())
                && p.metadata.name.as_deref() == Some(target.pod.as_str())
        })
        .ok_or_else(|| StreamRequestError::NoPod {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
        })?;
    match &target.uid {
        Some(uid) if pod.metadata.uid.as_deref() != Some(uid.as_str()) => {
            Err(StreamRequestError::WrongUid {
                namespace: target.namespace.clone(),
                pod: target.pod.clone(),
                uid: uid.clone(),
            })
        }
        _ => Ok(Arc::clone(pod)),
    }
}

/// The runtime id of `container`'s instance in `pod` (app, init or ephemeral) to stream
/// to: its running one, or else the one its status last reported (not running: the runtime
/// refuses it with its own words, which the client gets as upstream's 500).
///
/// # Errors
/// [`StreamRequestError::NoContainer`] when the spec has no such container, `NoInstance`
/// when the status shows no instance of it at all.
pub fn container_instance_id(
    pod: &Pod,
    target: &PodRef,
    container: &str,
) -> Result<String, StreamRequestError> {
    let in_spec = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == container)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !in_spec {
        return Err(StreamRequestError::NoContainer {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
            container: container.to_owned(),
        });
    }
    pod.status
        .iter()
        .flat_map(|s| {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .filter(|c| c.name == container)
        .filter_map(|c| {
            let id = c.container_id.as_deref()?;
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
            (!id.is_empty()).then(|| (running, id.to_owned()))
        })
        // A running instance first.
        .max_by_key(|(running, _)| *running)
        .map(|(_, id)| id)
        .ok_or_else(|| StreamRequestError::NoInstance {
            container: container.to_owned(),
        })
}

/// What a streaming request names: the runtime, the pod and its container's instance.
type Located = (Arc<dyn StreamingRuntime>, Arc<Pod>, Option<String>);

/// The runtime and the container instance a request names, or the answer refusing it (boxed:
/// a `Response` is large and this is the rare path).
fn locate(
    state: &ApiState,
    target: &PodRef,
    container: Option<&str>,
) -> Result<Located, Box<Response>> {
    let Some(runtime) = state.streaming.clone() else {
        return Err(Box::new(error_text(
            StatusCode::NOT_FOUND,
            "no container runtime for streaming".to_owned(),
        )));
    };
    let pods = state.pods.filter_map(|p| {
        (p.metadata.namespace.as_deref() == Some(target.namespace.as_str())
            && p.metadata.name.as_deref() == Some(target.pod.as_str()))
        .then(|| Arc::clone(p))
    });
    let pod = find_pod(&pods, target).map_err(|e| Box::new(e.response()))?;
    let id = container
        .map(|c| container_instance_id(&pod, target, c))
        .transpose()
        .map_err(|e| Box::new(e.response()))?;
    Ok((runtime, pod, id))
}

/// The answer for a failed runtime call, as upstream's `streaming.WriteError`.
fn runtime_error(what: &str, e: &RuntimeError) -> Response {
    tracing::debug!(error = %e, what, "streaming runtime call failed");
    let status = match e.code() {
        Some(tonic::Code::NotFound) => StatusCode::NOT_FOUND,
        Some(tonic::Code::ResourceExhausted) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_text(status, error_chain(e))
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn pod_ref(namespace: String, pod: String, uid: Option<String>) -> PodRef {
    PodRef {
        namespace,
        pod,
        uid,
    }
}

async fn exec(
    State(state): State<ApiState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    exec_in(&state, &pod_ref(namespace, pod, None), &container, req).await
}

async fn exec_uid(
    State(state): State<ApiState>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    exec_in(&state, &pod_ref(namespace, pod, Some(uid)), &container, req).await
}

async fn exec_in(state: &ApiState, target: &PodRef, container: &str, req: Request) -> Response {
    let options = query_pairs(req.uri()).and_then(|pairs| exec_options(&pairs));
    let (command, streams) = match options {
        Ok(o) => o,
        Err(e) => return e.response(),
    };
    let (runtime, _, id) = match locate(state, target, Some(container)) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let id = id.unwrap_or_default();
    match runtime.exec_url(&id, &command, streams).await {
        Ok(url) => proxy(&url, req).await,
        Err(e) => runtime_error("exec", &e),
    }
}

async fn attach(
    State(state): State<ApiState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    attach_to(&state, &pod_ref(namespace, pod, None), &container, req).await
}

async fn attach_uid(
    State(state): State<ApiState>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    attach_to(&state, &pod_ref(namespace, pod, Some(uid)), &container, req).await
}

async fn attach_to(state: &ApiState, target: &PodRef, container: &str, req: Request) -> Response {
    let streams = match query_pairs(req.uri()).and_then(|pairs| stream_options(&pairs)) {
        Ok(s) => s,
        Err(e) => return e.response(),
    };
    let (runtime, _, id) = match locate(state, target, Some(container)) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let id = id.unwrap_or_default();
    match runtime.attach_url(&id, streams).await {
        Ok(url) => proxy(&url, req).await,
        Err(e) => runtime_error("attach", &e),
    }
}

async fn port_forward(
    State(state): State<ApiState>,
    Path((namespace, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward_to(&state, &pod_ref(namespace, pod, None), req).await
}

async fn port_forward_uid(
    State(state): State<ApiState>,
    Path((namespace, pod, uid)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    forward_to(&state, &pod_ref(namespace, pod, Some(uid)), req).await
}

async fn forward_to(state: &ApiState, target: &PodRef, req: Request) -> Response {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let ports = match query_pairs(req.uri()).and_then(|pairs| forward_ports(&pairs, websocket)) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let (runtime, pod, _) = match locate(state, target, None) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    match runtime.port_forward_url(&uid, &ports).await {
        Ok(Some(url)) => proxy(&url, req).await,
        Ok(None) => StreamRequestError::NoSandbox {
            namespace: target.namespace.clone(),
            pod: target.pod.clone(),
        }
        .response(),
        Err(e) => runtime_error("port-forward", &e),
    }
}

async fn run(
    State(state): State<ApiState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    uri: Uri,
) -> Response {
    run_in(&state, &pod_ref(namespace, pod, None), &container, &uri).await
}

async fn run_uid(
    State(state): State<ApiState>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    uri: Uri,
) -> Response {
    run_in(
        &state,
        &pod_ref(namespace, pod, Some(uid)),
        &container,
        &uri,
    )
    .await
}

async fn run_in(state: &ApiState, target: &PodRef, container: &str, uri: &Uri) -> Response {
    let cmd = match query_pairs(uri).and_then(|pairs| run_command(&pairs)) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let (runtime, _, id) = match locate(state, target, Some(container)) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match runtime
        .run_in_container(&id.unwrap_or_default(), &cmd)
        .await
    {
        Ok(out) => {
            let mut body = out.stdout;
            body.extend_from_slice(&out.stderr);
            if out.exit_code == 0 {
                (StatusCode::OK, body).into_response()
            } else {
                error_text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "command {:?} exited with {}: {}",
                        cmd.join(" "),
                        out.exit_code,
                        String::from_utf8_lossy(&body)
                    ),
                )
            }
        }
        Err(e) => runtime_error("run", &e),
    }
}

/// Why the runtime's streaming server could not be reached (502).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the runtime's streaming URL {url:?} is not an http://host:port URL")]
    Url { url: String },
    #[error("cannot connect to the runtime's streaming server at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to the runtime's streaming server at {addr} within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: String },
    #[error("the runtime's streaming server at {addr} failed the request")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}

/// Proxies `req` to the runtime's streaming `url` and answers with the runtime's answer;
/// on 101 both connections are upgraded and joined.
async fn proxy(url: &str, req: Request) -> Response {
    match try_proxy(url, req).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "streaming proxy failed");
            error_text(StatusCode::BAD_GATEWAY, error_chain(&e))
        }
    }
}

async fn try_proxy(url: &str, mut req: Request) -> Result<Response, ProxyError> {
    let bad_url = || ProxyError::Url {
        url: url.to_owned(),
    };
    let target: Uri = url.parse().map_err(|_| bad_url())?;
    if target.scheme_str() != Some("http") {
        return Err(bad_url());
    }
    let authority = target.authority().ok_or_else(bad_url)?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = format!("{}:{port}", authority.host());
    let path = target
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);

    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
            Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
        };
    let _ = stream.set_nodelay(true);
    let http = |source| ProxyError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "connection to the runtime's streaming server ended");
        }
    });

    let client_upgrade = hyper::upgrade::on(&mut req);
    // Held by the session below until it ends: it counts as its connection did.
    let place = req.extensions().get::<super::ConnectionPlace>().cloned();
    let (parts, body) = req.into_parts();
    let mut forward = axum::http::Request::builder()
        .method(parts.method)
        .uri(path)
        .body(body)
        .map_err(|_| bad_url())?;
    let headers = forward.headers_mut();
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION {
            headers.append(name, value.clone());
        }
    }
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }

    let mut response = sender.send_request(forward).await.map_err(http)?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(Body::new));
    }
    let runtime_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let _place = place;
        let (client, runtime) = tokio::join!(client_upgrade, runtime_upgrade);
        match (client, runtime) {
            (Ok(client), Ok(runtime)) => {
                let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
                match tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
                    Ok((up, down)) => tracing::debug!(up, down, "streaming session ended"),
                    Err(e) => tracing::debug!(error = %e, "streaming session broke"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "streaming session not upgraded");
            }
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

fn error_text(status: StatusCode, message: String) -> Response {
    super::text(status, message)
}

#[cfg(test)]
mod tests;
