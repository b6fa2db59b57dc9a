use std::io::Write as _;
use std::sync::Mutex;

use axum::http::Request;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::json;
use tower::ServiceExt as _;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

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

fn options(query: &str) -> Result<LogOptions, QueryError> {
    LogOptions::from_query(&pairs(query))
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

#[test]
fn parses_full_partial_and_empty_records() {
    let r = parse_record(b"2026-12-07T11:00:00.5Z stdout F hello world\n").expect("parses");
    assert_eq!(r.timestamp, ts("2026-12-07T11:00:00.5Z"));
    assert_eq!(r.timestamp_text, "2026-12-07T11:00:00.5Z");
    assert_eq!(r.stream, LogStream::Stdout);
    assert!(!r.partial);
    assert_eq!(r.text, b"hello world\n");

    let r = parse_record(b"2026-12-07T11:00:00+01:00 stderr P piece\n").expect("parses");
    assert_eq!(r.stream, LogStream::Stderr);
    assert!(r.partial);
    assert_eq!(r.text, b"piece", "a piece loses the file's newline");

    let r = parse_record(b"2026-12-07T11:00:00Z stdout F:x \n").expect("extra tags");
    assert_eq!(r.text, b"\n");
    let r = parse_record(b"2026-12-07T11:00:00Z stdout F\n").expect("no space after tag");
    assert_eq!(r.text, b"\n");
    let r = parse_record(b"2026-12-07T11:00:00Z stdout F unfinished").expect("no newline");
    assert_eq!(r.text, b"unfinished");

    assert_eq!(
        parse_record(b"yesterday stdout F x\n"),
        Err(RecordError::Timestamp)
    );
    assert_eq!(
        parse_record(b"2026-12-07T11:00:00Z stdin F x\n"),
        Err(RecordError::Stream)
    );
    assert_eq!(
        parse_record(b"2026-12-07T11:00:00Z stdout X x\n"),
        Err(RecordError::Tag)
    );
    assert_eq!(
        parse_record(b"2026-12-07T11:00:00Z stdout"),
        Err(RecordError::Tag)
    );
}

#[test]
fn timestamps_print_with_nine_digits_and_their_offset() {
    assert_eq!(
        format_timestamp("2026-12-07T11:00:00.5Z"),
        "2026-12-07T11:00:00.500000000Z"
    );
    assert_eq!(
        format_timestamp("2026-12-07T11:00:00Z"),
        "2026-12-07T11:00:00.000000000Z"
    );
    assert_eq!(
        format_timestamp("2026-12-07T11:00:00.123456789+01:00"),
        "2026-12-07T11:00:00.123456789+01:00"
    );
    assert_eq!(
        format_timestamp("2026-12-07T11:00:00.1+00:00"),
        "2026-12-07T11:00:00.100000000Z"
    );
}

#[test]
fn options_decode_as_upstream() {
    assert_eq!(options(""), Ok(LogOptions::default()));
    let o = options("follow=true&previous=1&timestamps&tailLines=3&limitBytes=10&sinceSeconds=5")
        .expect("valid");
    assert!(o.follow && o.previous && o.timestamps, "{o:?}");
    assert_eq!(
        (o.tail_lines, o.limit_bytes, o.since_seconds),
        (Some(3), Some(10), Some(5))
    );
    let o = options("follow=false&previous=0&timestamps=FALSE").expect("valid");
    assert!(!o.follow && !o.previous && !o.timestamps, "{o:?}");
    assert_eq!(options("tail=7").expect("valid").tail_lines, Some(7));
    assert_eq!(
        options("tail=all&tailLines=7").expect("valid").tail_lines,
        None
    );
    assert_eq!(
        options("sinceTime=2026-12-07T11:00:00Z")
            .expect("valid")
            .since_time,
        Some(ts("2026-12-07T11:00:00Z"))
    );
    assert_eq!(
        options("stream=Stderr").expect("valid").stream,
        StreamFilter::Stderr
    );
    assert_eq!(
        options("container=other&insecureSkipTLSVerifyBackend=true"),
        Ok(LogOptions::default()),
        "unknown and apiserver-only parameters are ignored"
    );
}

#[test]
fn options_refuse_what_upstream_refuses() {
    for bad in [
        "tailLines=x",
        "limitBytes=1.5",
        "sinceSeconds=",
        "sinceTime=noon",
    ] {
        assert!(
            matches!(options(bad), Err(QueryError::Decode { .. })),
            "{bad}: {:?}",
            options(bad)
        );
    }
    for invalid in [
        "tailLines=-1",
        "limitBytes=0",
        "sinceSeconds=0",
        "sinceSeconds=5&sinceTime=2026-12-07T11:00:00Z",
        "stream=Both",
        "stream=Stdout&tailLines=1",
    ] {
        assert!(
            matches!(options(invalid), Err(QueryError::Invalid(_))),
            "{invalid}: {:?}",
            options(invalid)
        );
    }
}

#[test]
fn since_seconds_counts_back_from_the_request() {
    let o = options("sinceSeconds=10").expect("valid");
    assert_eq!(
        o.since(ts("2026-12-07T11:00:10Z")),
        Some(ts("2026-12-07T11:00:00Z"))
    );
}

const LOG: &str = "\
2026-12-07T11:00:01Z stdout F one
2026-12-07T11:00:02Z stderr F two
2026-12-07T11:00:03Z stdout P thr
2026-12-07T11:00:03.5Z stdout P e
2026-12-07T11:00:04Z stderr F four
2026-12-07T11:00:05Z stdout F e!
";

/// What the writer shows of `LOG` for `query`.
fn render(query: &str) -> String {
    let o = options(query).expect("valid");
    let mut w = LogWriter::new(&o, ts("2026-12-07T12:00:00Z"));
    let mut out = Vec::new();
    for line in LOG.split_inclusive('\n') {
        w.write(&parse_record(line.as_bytes()).expect("parses"), &mut out);
        if w.is_full() {
            break;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn writer_joins_pieces_and_filters() {
    // The stderr record between the pieces of one stdout line lands where it was written.
    assert_eq!(render(""), "one\ntwo\nthrefour\ne!\n");
    assert_eq!(render("stream=Stdout"), "one\nthree!\n");
    assert_eq!(render("stream=Stderr"), "two\nfour\n");
    assert_eq!(
        render("sinceTime=2026-12-07T11:00:03.5Z"),
        "efour\ne!\n",
        "records at the since time are kept"
    );
    assert_eq!(render("limitBytes=6"), "one\ntw");
}

#[test]
fn writer_prefixes_each_line_once() {
    assert_eq!(
        render("timestamps=true&stream=Stdout"),
        "2026-12-07T11:00:01.000000000Z one\n\
         2026-12-07T11:00:03.000000000Z three!\n"
    );
    assert_eq!(
        render("timestamps=true&limitBytes=20"),
        "2026-12-07T11:00:01.",
        "the prefix counts against limitBytes"
    );
}

#[test]
fn tail_counts_split_lines_once() {
    let start = |n| tail_start(LOG.as_bytes(), n).expect("reads");
    let from = |n| &LOG[usize::try_from(start(n)).expect("fits")..];
    assert_eq!(from(0), "");
    // Logical lines start at: one, two, thr (stdout, ends at e!), four (stderr).
    assert!(
        from(1).starts_with("2026-12-07T11:00:04Z stderr F four"),
        "{}",
        from(1)
    );
    assert!(
        from(2).starts_with("2026-12-07T11:00:03Z stdout P thr"),
        "{}",
        from(2)
    );
    assert!(
        from(3).starts_with("2026-12-07T11:00:02Z stderr F two"),
        "{}",
        from(3)
    );
    assert_eq!(from(4), LOG);
    assert_eq!(from(100), LOG);
    assert_eq!(tail_start(&b""[..], 3).expect("reads"), 0);
}

fn status_pod(statuses: &serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
        "spec": {
            "containers": [{"name": "app"}],
            "initContainers": [{"name": "init"}],
        },
        "status": {"containerStatuses": statuses},
    }))
    .expect("valid pod")
}

#[test]
fn the_instance_is_chosen_as_upstream() {
    let running = status_pod(&json!([{
        "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
        "containerID": "containerd://c2",
        "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://c1"}},
    }]));
    assert_eq!(
        log_container_id(&running, "app", false),
        Ok("containerd://c2".to_owned())
    );
    assert_eq!(
        log_container_id(&running, "app", true),
        Ok("containerd://c1".to_owned())
    );
    assert_eq!(
        log_container_id(&running, "init", false)
            .expect_err("no status")
            .to_string(),
        r#"container "init" in pod "web" is not available"#
    );

    let first = status_pod(&json!([{
        "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 0,
        "containerID": "containerd://c1", "state": {"running": {}},
    }]));
    assert_eq!(
        log_container_id(&first, "app", true)
            .expect_err("no previous")
            .to_string(),
        r#"previous terminated container "app" in pod "web" not found"#
    );

    let backoff = status_pod(&json!([{
        "name": "app", "image": "", "imageID": "", "ready": false, "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://c1"}},
    }]));
    assert_eq!(
        log_container_id(&backoff, "app", false),
        Ok("containerd://c1".to_owned())
    );

    let pulling = status_pod(&json!([{
        "name": "app", "image": "", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull"}},
    }]));
    assert_eq!(
        log_container_id(&pulling, "app", false)
            .expect_err("waiting")
            .to_string(),
        r#"container "app" in pod "web" is waiting to start: image can't be pulled"#
    );
}

/// A runtime that knows one container, whose state a test flips.
struct OneContainer {
    id: String,
    path: PathBuf,
    running: Mutex<bool>,
}

impl ContainerLogSource for OneContainer {
    fn log_file(&self, container_id: &str) -> BoxFuture<'_, Result<LogFile, RuntimeError>> {
        let found = (container_id == self.id).then(|| LogFile {
            path: self.path.clone(),
            running: *self.running.lock().expect("lock"),
        });
        Box::pin(async move {
            found.ok_or_else(|| RuntimeError::Call {
                method: crate::runtime::Method::ContainerStatus,
                socket: PathBuf::from("/fake.sock"),
                source: tonic::Status::not_found("no such container"),
            })
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    runtime: Arc<OneContainer>,
    router: Router,
    _statuses: crate::status::manager::StatusManager,
}

fn fixture(log: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("0.log");
    std::fs::write(&path, log).expect("write log");
    let runtime = Arc::new(OneContainer {
        id: "c2".to_owned(),
        path: path.clone(),
        running: Mutex::new(true),
    });
    let (sink, pods) = crate::status::manager::pod_list();
    let statuses = crate::status::manager::StatusManager::new(vec![sink]);
    statuses.publish(
        "u1",
        status_pod(&json!([{
            "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
            "containerID": "containerd://c2",
            "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://gone"}},
        }])),
    );
    let state = ApiState {
        pods,
        runtime: Some(Arc::clone(&runtime) as Arc<dyn ContainerLogSource>),
        ..ApiState::default()
    };
    Fixture {
        _dir: dir,
        path,
        runtime,
        router: super::super::read_only_router(state),
        _statuses: statuses,
    }
}

async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("the body ends")
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_endpoint_serves_and_refuses_as_upstream() {
    let f = fixture(LOG);
    let logs = "/containerLogs/default/web/app";
    assert_eq!(
        get(&f.router, logs).await,
        (StatusCode::OK, "one\ntwo\nthrefour\ne!\n".to_owned())
    );
    assert_eq!(
        get(&f.router, &format!("{logs}?tailLines=2&timestamps=true")).await,
        (
            StatusCode::OK,
            // The last two lines: `three!` (stdout, in pieces around `four`) and `four`.
            "2026-12-07T11:00:03.000000000Z thre2026-12-07T11:00:04.000000000Z four\ne!\n"
                .to_owned()
        )
    );
    assert_eq!(
        get(
            &f.router,
            &format!("{logs}?sinceTime=2026-12-07T11%3A00%3A04Z")
        )
        .await,
        (StatusCode::OK, "four\ne!\n".to_owned())
    );
    assert_eq!(
        get(&f.router, &format!("{logs}?limitBytes=5")).await,
        (StatusCode::OK, "one\nt".to_owned())
    );
    assert_eq!(
        get(&f.router, "/containerLogs/default/nope/app").await,
        (
            StatusCode::NOT_FOUND,
            r#"pod "nope" does not exist"#.to_owned()
        )
    );
    assert_eq!(
        get(&f.router, "/containerLogs/other/web/app").await.0,
        StatusCode::NOT_FOUND,
        "the namespace counts"
    );
    assert_eq!(
        get(&f.router, "/containerLogs/default/web/db").await,
        (
            StatusCode::NOT_FOUND,
            r#"container "db" not found in pod "web""#.to_owned()
        )
    );
    assert_eq!(
        get(&f.router, &format!("{logs}?tailLines=many")).await,
        (
            StatusCode::BAD_REQUEST,
            r#"{"message": "Unable to decode query."}"#.to_owned()
        )
    );
    assert_eq!(
        get(
            &f.router,
            &format!("{logs}?sinceSeconds=1&sinceTime=2026-12-07T11:00:04Z")
        )
        .await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"message": "Invalid request."}"#.to_owned()
        )
    );
    assert_eq!(
        get(&f.router, &format!("{logs}?previous=true")).await,
        (
            StatusCode::BAD_REQUEST,
            "unable to retrieve container logs for containerd://gone".to_owned()
        ),
        "the previous instance is asked of the runtime, which no longer has it"
    );
    assert_eq!(
        get(&f.router, "/containerLogs/default/web/init").await,
        (
            StatusCode::BAD_REQUEST,
            r#"container "init" in pod "web" is not available"#.to_owned()
        )
    );
}

#[tokio::test]
async fn follow_streams_new_lines_until_the_container_stops() {
    let f = fixture("2026-12-07T11:00:01Z stdout F one\n");
    let response = f
        .router
        .clone()
        .oneshot(
            Request::get("/containerLogs/default/web/app?follow=true")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, body.next())
            .await
            .expect("a chunk in time")
            .map(|c| String::from_utf8(c.expect("chunk").to_vec()).expect("utf-8"))
    };
    assert_eq!(next().await.as_deref(), Some("one\n"));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&f.path)
        .expect("open log");
    // Half a record, then the rest: the reader waits for the newline.
    file.write_all(b"2026-12-07T11:00:02Z stdout F t")
        .expect("append");
    file.flush().expect("flush");
    file.write_all(b"wo\n").expect("append");
    assert_eq!(next().await.as_deref(), Some("two\n"));

    // A rotation: the path names a new file; the old one's last line still comes first.
    file.write_all(b"2026-12-07T11:00:03Z stdout F three\n")
        .expect("append");
    let rotated = f.path.with_extension("log.1");
    std::fs::rename(&f.path, &rotated).expect("rotate");
    std::fs::write(&f.path, "2026-12-07T11:00:04Z stdout F four\n").expect("new file");
    let mut seen = String::new();
    while !seen.ends_with("four\n") {
        seen.push_str(&next().await.expect("more"));
    }
    assert_eq!(seen, "three\nfour\n");

    // The container stops after a last line: the stream ends once that line is out.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f.path)
        .expect("open new log")
        .write_all(b"2026-12-07T11:00:05Z stdout F last\n")
        .expect("append");
    *f.runtime.running.lock().expect("lock") = false;
    let mut rest = String::new();
    while let Some(chunk) = next().await {
        rest.push_str(&chunk);
    }
    assert_eq!(rest, "last\n");
}
