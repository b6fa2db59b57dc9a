//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log as the kubelet
//! serves it (what `kubectl logs` reads through the API server).
//!
//! The pod is looked up among the published pods by namespace and name, the container by
//! name in its spec (app, init and ephemeral containers), and the runtime container whose
//! log is read is chosen from the pod's status as upstream does: the running or last
//! terminated instance, or with `previous` the one before it (`lastState.terminated`). The
//! runtime (CRI `ContainerStatus`) says where that container's log file is.
//!
//! The file is in the CRI log format, one line per record:
//! `<RFC 3339 timestamp> <stdout|stderr> <P|F>[:more tags] <text>`; `P` marks a piece of a
//! line the runtime split (it is joined with the pieces after it), `F` the end of one.
//!
//! Query parameters (`v1.PodLogOptions`): `follow`, `previous`, `timestamps` (booleans:
//! anything but `false` / `0`, as Go's query decoding), `tailLines` (the last n lines; a
//! line split into pieces counts once; `tail` is the old name, `tail=all` means all),
//! `limitBytes`, `sinceSeconds` or `sinceTime` (RFC 3339; records older are left out),
//! `stream` (`All`, `Stdout`, `Stderr`; as upstream with `PodLogsQuerySplitStreams` on).
//! Unknown parameters are ignored, as upstream's decoder does.
//!
//! Errors, as upstream words them: 400 `{"message": "Unable to decode query."}` for a value
//! that does not parse, 422 `{"message": "Invalid request."}` for options that fail
//! validation, 404 `pod "<name>" does not exist` / `container "<c>" not found in pod
//! "<name>"`, 400 for a container without the requested log (`previous terminated
//! container "<c>" in pod "<name>" not found`, `... is waiting to start: <reason>`).
//!
//! With `follow` the response stays open: the file is polled every
//! [`FOLLOW_POLL`]; the stream ends once the container is no longer running (asked of the
//! runtime at most every [`STATE_CHECK`]) and the file is drained, or when the client goes
//! away (the body is dropped with the connection, and with it the reader). When the path
//! names a new file (the runtime reopened the log after a rotation), the reader finishes the
//! old file and continues at the start of the new one.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ApiState;
use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};

/// How often a followed log file is read again at its end.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often following asks the runtime whether the container still runs.
pub const STATE_CHECK: Duration = Duration::from_secs(1);
/// A line longer than this without a newline is passed on in pieces of this size.
const MAX_LINE: usize = 1 << 20;
/// Bytes read from the file at once.
const READ_CHUNK: usize = 64 * 1024;

/// The routes of this module, for the read-only router.
pub fn routes() -> Router<ApiState> {
    Router::new().route(
        "/containerLogs/{namespace}/{pod}/{container}",
        get(container_logs),
    )
}

/// Where a container's log is, and whether it still runs: what this module needs from the
/// runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub running: bool,
}

/// The runtime, as the logs endpoint sees it (object safe, so the server holds any runtime).
pub trait ContainerLogSource: Send + Sync {
    /// The container's log file and state (CRI `ContainerStatus`).
    fn log_file(&self, container_id: &str) -> BoxFuture<'_, Result<LogFile, RuntimeError>>;
}

impl<R: ContainerRuntime> ContainerLogSource for R {
    fn log_file(&self, container_id: &str) -> BoxFuture<'_, Result<LogFile, RuntimeError>> {
        let id = container_id.to_owned();
        Box::pin(async move {
            let status = self.container_status(&id).await?;
            Ok(LogFile {
                path: PathBuf::from(status.log_path),
                running: status.state == ContainerState::Running,
            })
        })
    }
}

/// Which streams a request wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamFilter {
    #[default]
    All,
    Stdout,
    Stderr,
}

/// `v1.PodLogOptions` as decoded from the query, after validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<Timestamp>,
    pub stream: StreamFilter,
}

/// Why the query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value does not parse (upstream: 400 `Unable to decode query.`).
    #[error("query parameter {name}={value:?} does not parse")]
    Decode { name: &'static str, value: String },
    /// The options fail validation (upstream: 422 `Invalid request.`).
    #[error("invalid log options: {0}")]
    Invalid(&'static str),
}

impl QueryError {
    fn response(&self) -> Response {
        tracing::debug!(error = %self, "container logs request refused");
        match self {
            QueryError::Decode { .. } => error_text(
                StatusCode::BAD_REQUEST,
                r#"{"message": "Unable to decode query."}"#.to_owned(),
            ),
            QueryError::Invalid(_) => error_text(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"message": "Invalid request."}"#.to_owned(),
            ),
        }
    }
}

impl LogOptions {
    /// Decodes and validates the query's `(name, value)` pairs; the first value of a
    /// repeated name counts.
    ///
    /// # Errors
    /// [`QueryError::Decode`] for a value that does not parse, [`QueryError::Invalid`] for
    /// options upstream's validation refuses.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, QueryError> {
        let first = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let boolean =
            |name: &str| first(name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        fn int(name: &'static str, value: Option<&str>) -> Result<Option<i64>, QueryError> {
            value
                .map(|v| {
                    v.parse::<i64>().map_err(|_| QueryError::Decode {
                        name,
                        value: v.to_owned(),
                    })
                })
                .transpose()
        }
        // `tail` is the old name of `tailLines`; `tail=all` means no limit.
        let tail = match first("tail").filter(|t| !t.is_empty()) {
            Some("all") => None,
            Some(t) => Some(t),
            None => first("tailLines"),
        };
        let tail_lines = int("tailLines", tail)?;
        let limit_bytes = int("limitBytes", first("limitBytes"))?;
        let since_seconds = int("sinceSeconds", first("sinceSeconds"))?;
        let since_time = match first("sinceTime") {
            None | Some("" | "null") => None,
            Some(v) => Some(v.parse::<Timestamp>().map_err(|_| QueryError::Decode {
                name: "sinceTime",
                value: v.to_owned(),
            })?),
        };
        let stream = match first("stream") {
            None | Some("All") => StreamFilter::All,
            Some("Stdout") => StreamFilter::Stdout,
            Some("Stderr") => StreamFilter::Stderr,
            Some(_) => return Err(QueryError::Invalid("stream must be All, Stdout or Stderr")),
        };
        let non_negative = |v: Option<i64>, min: i64, why| match v {
            Some(n) if n < min => Err(QueryError::Invalid(why)),
            other => Ok(other.map(i64::unsigned_abs)),
        };
        let tail_lines = non_negative(tail_lines, 0, "tailLines must be >= 0")?;
        let limit_bytes = non_negative(limit_bytes, 1, "limitBytes must be >= 1")?;
        if since_seconds.is_some() && since_time.is_some() {
            return Err(QueryError::Invalid(
                "at most one of sinceTime or sinceSeconds may be given",
            ));
        }
        let since_seconds = non_negative(since_seconds, 1, "sinceSeconds must be >= 1")?;
        if stream != StreamFilter::All && tail_lines.is_some() {
            return Err(QueryError::Invalid(
                "tailLines cannot be combined with a single stream",
            ));
        }
        Ok(LogOptions {
            follow: boolean("follow"),
            previous: boolean("previous"),
            timestamps: boolean("timestamps"),
            tail_lines,
            limit_bytes,
            since_seconds,
            since_time,
            stream,
        })
    }

    /// The oldest record to show, for a request made at `now`.
    #[must_use]
    pub fn since(&self, now: Timestamp) -> Option<Timestamp> {
        if let Some(t) = self.since_time {
            return Some(t);
        }
        let secs = i64::try_from(self.since_seconds?).unwrap_or(i64::MAX);
        Some(
            now.checked_sub(jiff::SignedDuration::from_secs(secs))
                .unwrap_or(Timestamp::MIN),
        )
    }
}

/// The stream a record was written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One record of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: Timestamp,
    /// The timestamp as written, for `timestamps` output.
    pub timestamp_text: &'a str,
    pub stream: LogStream,
    /// A piece of a longer line (`P`): the text has no newline and the line goes on.
    pub partial: bool,
    /// The text, with its newline for a full line (`F`).
    pub text: &'a [u8],
}

/// Why a log line did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no timestamp")]
    Timestamp,
    #[error("no stream (stdout or stderr)")]
    Stream,
    #[error("no tag (P or F)")]
    Tag,
}

/// Parses one line of a CRI log file, with its trailing newline if it has one.
///
/// # Errors
/// [`RecordError`] naming the field that is missing or wrong.
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, RecordError> {
    let mut fields = line.splitn(3, |b| *b == b' ');
    let timestamp_text = fields
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or(RecordError::Timestamp)?;
    let timestamp = timestamp_text
        .parse::<Timestamp>()
        .map_err(|_| RecordError::Timestamp)?;
    let stream = match fields.next() {
        Some(b"stdout") => LogStream::Stdout,
        Some(b"stderr") => LogStream::Stderr,
        _ => return Err(RecordError::Stream),
    };
    let rest = fields.next().ok_or(RecordError::Tag)?;
    let (tags, text) = match rest.iter().position(|b| *b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        // An empty line may come without the space after its tag.
        None => match rest.strip_suffix(b"\n") {
            Some(tags) => (tags, &rest[tags.len()..]),
            None => (rest, &rest[rest.len()..]),
        },
    };
    let partial = match tags.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(RecordError::Tag),
    };
    let text = if partial {
        text.strip_suffix(b"\n").unwrap_or(text)
    } else {
        text
    };
    Ok(Record {
        timestamp,
        timestamp_text,
        stream,
        partial,
        text,
    })
}

/// A timestamp as upstream prints it (`timestamps=true`): RFC 3339 with exactly nine
/// fractional digits and the record's own offset (`Z` for UTC).
#[must_use]
pub fn format_timestamp(text: &str) -> String {
    // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; then an optional fraction, then the offset.
    let Some((base, rest)) = text.split_at_checked(19) else {
        return text.to_owned();
    };
    let (fraction, offset) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            r.split_at(digits)
        }
        None => ("", rest),
    };
    let offset = match offset {
        "z" | "+00:00" | "-00:00" => "Z",
        o => o,
    };
    let mut fraction = fraction.to_owned();
    fraction.truncate(9);
    format!("{base}.{fraction:0<9}{offset}")
}

/// Turns records into the response bytes: stream and time filter, timestamp prefixes, byte
/// limit. Pure; the reader feeds it.
#[derive(Debug)]
pub struct LogWriter {
    timestamps: bool,
    since: Option<Timestamp>,
    stream: StreamFilter,
    /// Bytes still allowed (`limitBytes`).
    remaining: Option<u64>,
    /// Whether the next record of stdout / stderr starts a line.
    line_start: [bool; 2],
}

impl LogWriter {
    #[must_use]
    pub fn new(options: &LogOptions, now: Timestamp) -> Self {
        Self {
            timestamps: options.timestamps,
            since: options.since(now),
            stream: options.stream,
            remaining: options.limit_bytes,
            line_start: [true, true],
        }
    }

    /// The byte limit is reached: nothing more will be written.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends what `record` shows to `out`.
    pub fn write(&mut self, record: &Record<'_>, out: &mut Vec<u8>) {
        let index = stream_index(record.stream);
        let line_start = std::mem::replace(&mut self.line_start[index], !record.partial);
        let wanted = match self.stream {
            StreamFilter::All => true,
            StreamFilter::Stdout => record.stream == LogStream::Stdout,
            StreamFilter::Stderr => record.stream == LogStream::Stderr,
        };
        if !wanted || self.since.is_some_and(|since| record.timestamp < since) {
            return;
        }
        let prefix = if self.timestamps && line_start {
            let mut p = format_timestamp(record.timestamp_text);
            p.push(' ');
            p
        } else {
            String::new()
        };
        for part in [prefix.as_bytes(), record.text] {
            let take = match self.remaining {
                Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(part.len()),
                None => part.len(),
            };
            out.extend_from_slice(&part[..take]);
            if let Some(left) = &mut self.remaining {
                *left -= take as u64;
            }
        }
    }
}

/// The offset where the last `n` lines of a CRI log start (a line split into `P` pieces
/// counts once, at its first piece; stdout and stderr lines are counted apart, so a piece of
/// one stream between those of the other does not cut a line; a line that does not parse
/// counts as one). `n = 0`: the end.
///
/// # Errors
/// Reading `file` failed.
pub fn tail_start(mut file: impl BufRead, n: u64) -> io::Result<u64> {
    let capacity = usize::try_from(n).unwrap_or(usize::MAX);
    let mut starts: VecDeque<u64> = VecDeque::new();
    let mut offset = 0u64;
    // Whether the next stdout / stderr record starts a line.
    let mut line_start = [true, true];
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = file.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        let starts_line = match parse_record(&line) {
            Ok(r) => {
                let index = stream_index(r.stream);
                std::mem::replace(&mut line_start[index], !r.partial)
            }
            Err(_) => true,
        };
        if starts_line && capacity > 0 {
            if starts.len() == capacity {
                starts.pop_front();
            }
            starts.push_back(offset);
        }
        offset += read as u64;
    }
    Ok(starts.front().copied().unwrap_or(offset))
}

fn stream_index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

/// Why a pod's container has no log to show (400, upstream's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerLogError {
    #[error("container {container:?} in pod {pod:?} is not available")]
    NotAvailable { pod: String, container: String },
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { pod: String, container: String },
    #[error("container {container:?} in pod {pod:?} is terminated")]
    Terminated { pod: String, container: String },
    #[error("container {container:?} in pod {pod:?} is waiting to start: {reason}")]
    Waiting {
        pod: String,
        container: String,
        reason: String,
    },
}

/// The container id (`<runtime>://<id>`, as the status has it) whose log a request for
/// `container` of `pod` reads, from the pod's status (upstream's choice).
///
/// # Errors
/// [`ContainerLogError`] when the status names no such container instance.
pub fn log_container_id(
    pod: &Pod,
    container: &str,
    previous: bool,
) -> Result<String, ContainerLogError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let found = status
        .into_iter()
        .flat_map(|s| {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .find(|c| c.name == container);
    let pod = pod_name.clone();
    let container = container.to_owned();
    let Some(c) = found else {
        return Err(ContainerLogError::NotAvailable { pod, container });
    };
    let id = pick_instance(c, previous).map_err(|missing| match missing {
        Missing::Instance => ContainerLogError::NotAvailable { pod, container },
        Missing::Previous => ContainerLogError::NoPrevious { pod, container },
        Missing::Terminated => ContainerLogError::Terminated { pod, container },
        Missing::Waiting(reason) => ContainerLogError::Waiting {
            pod,
            container,
            reason,
        },
    })?;
    Ok(id)
}

/// Why [`pick_instance`] found no instance.
enum Missing {
    Instance,
    Previous,
    Terminated,
    Waiting(String),
}

/// Upstream's choice of instance: with `previous` the last terminated one; else the
/// running one, the terminated one (or the one before it when the new one has no id yet),
/// or the last terminated one while the next waits.
fn pick_instance(c: &ContainerStatus, previous: bool) -> Result<String, Missing> {
    let id_of = |t: Option<&ContainerStateTerminated>| {
        t.and_then(|t| t.container_id.clone())
            .filter(|id| !id.is_empty())
    };
    let last_terminated = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = id_of(last_terminated);
    let state = c.state.clone().unwrap_or_default();
    if previous {
        return last.ok_or(Missing::Previous);
    }
    if state.running.is_some() {
        return c
            .container_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or(Missing::Instance);
    }
    if let Some(t) = &state.terminated {
        return id_of(Some(t)).or(last).ok_or(Missing::Terminated);
    }
    if last_terminated.is_some() {
        return last.ok_or(Missing::Terminated);
    }
    let reason = state.waiting.and_then(|w| w.reason).unwrap_or_default();
    Err(Missing::Waiting(match reason.as_str() {
        "ErrImagePull" => "image can't be pulled".to_owned(),
        "ImagePullBackOff" => "trying and failing to pull image".to_owned(),
        _ => reason,
    }))
}

/// `containerd://abc` -> `abc`.
fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, id)| id)
}

/// Whether `pod`'s spec has a container (app, init or ephemeral) named `name`.
fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == name)
    })
}

async fn container_logs(
    State(state): State<ApiState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    streams: Option<axum::Extension<super::OpenStreams>>,
    uri: Uri,
) -> Response {
    let pairs = match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(Query(p)) => p,
        Err(e) => {
            tracing::debug!(error = %e, "container logs query does not decode");
            return QueryError::Decode {
                name: "query",
                value: uri.query().unwrap_or_default().to_owned(),
            }
            .response();
        }
    };
    let options = match LogOptions::from_query(&pairs) {
        Ok(o) => o,
        Err(e) => return e.response(),
    };
    let Some(runtime) = state.runtime.clone() else {
        return super::not_found().await;
    };
    let found = state.pods.filter_map(|p| {
        (p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && p.metadata.name.as_deref() == Some(pod_name.as_str()))
        .then(|| Arc::clone(p))
    });
    let Some(pod) = found.into_iter().next() else {
        return error_text(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} does not exist"),
        );
    };
    if !has_container(&pod, &container) {
        return error_text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod_name:?}"),
        );
    }
    let id = match log_container_id(&pod, &container, options.previous) {
        Ok(id) => id,
        Err(e) => return error_text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let file = match runtime.log_file(strip_runtime(&id)).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(container = %id, error = %e, "no status for a container's log");
            return error_text(
                StatusCode::BAD_REQUEST,
                format!("unable to retrieve container logs for {id}"),
            );
        }
    };
    let id = strip_runtime(&id).to_owned();
    match LogReader::open(file, id, runtime, &options).await {
        Ok(reader) => {
            // A followed log is a long-lived response: the connection's age limit waits for it.
            let guard = options
                .follow
                .then(|| streams.map(|axum::Extension(s)| s.open()))
                .flatten();
            let body = futures::StreamExt::map(reader.into_stream(), move |chunk| {
                let _held = &guard;
                chunk
            });
            (
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
                Body::from_stream(body),
            )
                .into_response()
        }
        Err(e) => error_text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// A log file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to open log file {}: {source}", path.display())]
pub struct OpenError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Reads one container's log file for one request (see the module docs).
struct LogReader {
    path: PathBuf,
    file: tokio::fs::File,
    /// The inode of `file`, to notice the path naming a new file.
    inode: u64,
    container_id: String,
    runtime: Arc<dyn ContainerLogSource>,
    follow: bool,
    writer: LogWriter,
    /// The start of a line whose end has not been read yet.
    pending: Vec<u8>,
    running: bool,
    checked: Instant,
    done: bool,
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader")
            .field("path", &self.path)
            .field("container_id", &self.container_id)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    async fn open(
        file: LogFile,
        container_id: String,
        runtime: Arc<dyn ContainerLogSource>,
        options: &LogOptions,
    ) -> Result<Self, OpenError> {
        let err = |source| OpenError {
            path: file.path.clone(),
            source,
        };
        let std_file = std::fs::File::open(&file.path).map_err(err)?;
        let inode = std::os::unix::fs::MetadataExt::ino(&std_file.metadata().map_err(err)?);
        let start = match options.tail_lines {
            None => 0,
            Some(n) => {
                let f = std_file.try_clone().map_err(err)?;
                tokio::task::spawn_blocking(move || tail_start(io::BufReader::new(f), n))
                    .await
                    .map_err(|e| err(io::Error::other(e)))?
                    .map_err(err)?
            }
        };
        let mut tokio_file = tokio::fs::File::from_std(std_file);
        tokio_file
            .seek(io::SeekFrom::Start(start))
            .await
            .map_err(err)?;
        Ok(Self {
            path: file.path,
            file: tokio_file,
            inode,
            container_id,
            runtime,
            follow: options.follow,
            writer: LogWriter::new(options, Timestamp::now()),
            pending: Vec::new(),
            running: file.running,
            checked: Instant::now(),
            done: options.limit_bytes == Some(0),
        })
    }

    fn into_stream(self) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures::stream::unfold(self, |mut reader| async move {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), reader)),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(path = %reader.path.display(), error = %e, "cannot read a container log");
                    reader.done = true;
                    Some((Err(e), reader))
                }
            }
        })
    }

    /// The next bytes to send; `None` at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let mut buf = vec![0u8; READ_CHUNK];
        // Following: whether the container was seen stopped, so this is the last pass.
        let mut last_pass = false;
        loop {
            if self.done {
                return Ok(None);
            }
            let n = self.file.read(&mut buf).await?;
            if n > 0 {
                let out = self.consume(&buf[..n]);
                if !out.is_empty() {
                    return Ok(Some(Bytes::from(out)));
                }
                continue;
            }
            // At the end of the file.
            if !self.follow || last_pass {
                self.done = true;
                let out = self.flush_pending();
                return Ok((!out.is_empty()).then(|| Bytes::from(out)));
            }
            if self.reopen_if_rotated().await? {
                continue;
            }
            if self.checked.elapsed() >= STATE_CHECK {
                self.checked = Instant::now();
                self.running = self
                    .runtime
                    .log_file(&self.container_id)
                    .await
                    .is_ok_and(|f| f.running);
            }
            if !self.running {
                // Read once more: what the container wrote before it stopped.
                last_pass = true;
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Splits `data` into lines (after what is pending) and writes the complete ones.
    fn consume(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(end + 1);
            rest = tail;
            if self.pending.is_empty() {
                self.write_line(line, &mut out);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.write_line(&whole, &mut out);
            }
            if self.done {
                return out;
            }
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.write_line(&line, &mut out);
        }
        out
    }

    /// Writes the line without its end that is pending (the end of a file being read
    /// without follow).
    fn flush_pending(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let line = std::mem::take(&mut self.pending);
        if !line.is_empty() {
            self.write_line(&line, &mut out);
        }
        out
    }

    fn write_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        match parse_record(line) {
            Ok(record) => self.writer.write(&record, out),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "skipping a log line that does not parse");
            }
        }
        if self.writer.is_full() {
            self.done = true;
        }
    }

    /// At the end of the file: when the path now names another file (a rotation), switch
    /// to it, from its start. `true` when it switched.
    async fn reopen_if_rotated(&mut self) -> io::Result<bool> {
        let inode = match tokio::fs::metadata(&self.path).await {
            Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
            // Between the rename and the new file: keep the old one for now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if inode == self.inode {
            return Ok(false);
        }
        let file = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        self.inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().await?);
        self.file = file;
        self.pending.clear();
        Ok(true)
    }
}

fn error_text(status: StatusCode, body: String) -> Response {
    super::text(status, body)
}

#[cfg(test)]
mod tests;
