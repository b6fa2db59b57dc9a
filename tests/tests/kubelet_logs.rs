//! `/containerLogs/{namespace}/{pod}/{container}` on the read-only port, reading the log
//! files the real containerd writes for real containers. Needs root; run with
//! `--test-threads=1`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use bpflet_tests::node::{IMAGE, Node, WAIT, http_get, pod_yaml, restarts, running, uid};
use serde_json::Value;

/// The pod's logs path for container `c` (the static pod's name carries the node's).
fn logs_path(pod: &Value) -> String {
    format!(
        "/containerLogs/{}/{}/c",
        pod["metadata"]["namespace"].as_str().expect("namespace"),
        pod["metadata"]["name"].as_str().expect("name"),
    )
}

/// `GET path`: status and body.
fn get(node: &Node, path: &str) -> (u16, String) {
    http_get(node.port, path).unwrap_or_else(|| panic!("GET {path}: no answer"))
}

/// `GET path`, which must answer 200; the body.
fn get_ok(node: &Node, path: &str) -> String {
    let (status, body) = get(node, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Starts pod `name` (manifest `<name>.yaml`) whose one container `c` runs `sh -c script`,
/// and waits until `c` is running; the pod.
fn logging_pod(node: &Node, name: &str, restart_policy: &str, script: &str) -> Value {
    node.write_manifest(
        &format!("{name}.yaml"),
        &pod_yaml(
            name,
            restart_policy,
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, '{script}']
"
            ),
        ),
    );
    node.wait_pod(name, "container running", |p| running(p, "c"))
}

/// Waits until `GET logs` answers with a body that `logged` accepts.
/// On a timeout it names the last answer, so a failure says what the endpoint served.
fn wait_logged(node: &Node, logs: &str, what: &str, logged: impl Fn(&str) -> bool) {
    let mut last = None;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let answer = http_get(node.port, logs);
        if answer.as_ref().is_some_and(|(_, body)| logged(body)) {
            return;
        }
        last = answer;
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = last.map(|(status, body)| {
        let tail: String = body
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{status}, {} bytes, ending {tail:?}", body.len())
    });
    panic!(
        "timed out waiting for {what}: last answer to GET {logs}: {last:?}\n--- agent log (tail) ---\n{}",
        node.agent_log()
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The long line: more than containerd's 16 KiB line buffer, so it is logged in pieces.
const LONG: usize = 20_000;

#[test]
fn logs_of_a_running_container() {
    let node = Node::start("event");
    let pod = logging_pod(
        &node,
        "talk",
        "Always",
        &format!(
            "for i in 1 2 3 4 5; do echo line-$i; done; echo oops >&2; \
             head -c {LONG} /dev/zero | tr \"\\0\" x; echo; echo end; exec sleep 3600"
        ),
    );
    let logs = logs_path(&pod);
    wait_logged(&node, &logs, "the last line logged", |body| {
        body.ends_with("end\n")
    });
    let long = "x".repeat(LONG);
    let stdout = format!("line-1\nline-2\nline-3\nline-4\nline-5\n{long}\nend\n");

    // The runtime split the long line; the endpoint joins it.
    let file = log_file(&node, &uid(&pod));
    assert!(
        file.lines().any(|l| l.contains(" stdout P x")),
        "containerd logged the long line in pieces:\n{}",
        &file[..file.len().min(400)]
    );
    assert_eq!(get_ok(&node, &format!("{logs}?stream=Stdout")), stdout);
    assert_eq!(get_ok(&node, &format!("{logs}?stream=Stderr")), "oops\n");
    let all = get_ok(&node, &logs);
    assert_eq!(all.len(), stdout.len() + "oops\n".len(), "{all:.200}");
    assert!(all.contains("oops\n") && all.ends_with(&format!("{long}\nend\n")));

    // The long line counts once.
    assert_eq!(
        get_ok(&node, &format!("{logs}?tailLines=2")),
        format!("{long}\nend\n")
    );
    assert_eq!(get_ok(&node, &format!("{logs}?tail=all")), all);
    assert_eq!(get_ok(&node, &format!("{logs}?tailLines=0")), "");
    assert_eq!(
        get_ok(&node, &format!("{logs}?stream=Stdout&limitBytes=10")),
        "line-1\nlin"
    );

    // timestamps: RFC 3339 with nine fractional digits, then the line.
    let stamped = get_ok(&node, &format!("{logs}?timestamps=true&stream=Stdout"));
    let lines: Vec<(&str, &str)> = stamped
        .lines()
        .map(|l| l.split_once(' ').expect("a timestamp, a space, the line"))
        .collect();
    assert_eq!(lines.len(), 7, "{stamped:.300}");
    for (ts, line) in &lines {
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts} {line:.20}");
        let fraction = ts[20..].trim_end_matches(|c: char| !c.is_ascii_digit());
        assert_eq!(&ts[19..20], ".", "{ts}");
        assert_eq!(fraction.len(), 9, "{ts}");
    }
    assert_eq!(lines[2].1, "line-3");

    // sinceTime keeps the records at or after it: from line-3 on (and any line logged in
    // the same nanosecond before it).
    let since = lines[2].0;
    let expected: String = lines
        .iter()
        .filter(|(ts, _)| ts >= &since)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    assert!(expected.starts_with("line-3\n") || expected.starts_with("line-2\n"));
    let encoded = since.replace(':', "%3A").replace('+', "%2B");
    assert_eq!(
        get_ok(&node, &format!("{logs}?stream=Stdout&sinceTime={encoded}")),
        expected
    );
    assert_eq!(
        get_ok(&node, &format!("{logs}?sinceTime=2999-01-01T00:00:00Z")),
        ""
    );
    assert_eq!(get_ok(&node, &format!("{logs}?sinceSeconds=3600")), all);

    // Errors, as upstream's.
    let name = pod["metadata"]["name"].as_str().expect("name");
    let ns = pod["metadata"]["namespace"].as_str().expect("namespace");
    assert_eq!(
        get(&node, &format!("/containerLogs/{ns}/nope/c")),
        (404, r#"pod "nope" does not exist"#.to_owned())
    );
    assert_eq!(
        get(&node, &format!("/containerLogs/{ns}/{name}/db")),
        (404, format!(r#"container "db" not found in pod "{name}""#))
    );
    assert_eq!(
        get(&node, &format!("{logs}?previous=true")),
        (
            400,
            format!(r#"previous terminated container "c" in pod "{name}" not found"#)
        )
    );
    assert_eq!(
        get(
            &node,
            &format!("{logs}?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z")
        ),
        (422, r#"{"message": "Invalid request."}"#.to_owned())
    );
    assert_eq!(
        get(&node, &format!("{logs}?tailLines=ten")),
        (400, r#"{"message": "Unable to decode query."}"#.to_owned())
    );
}

/// The text of the container's log file (`<root>/pods/<ns>_<name>_<uid>/c/<n>.log`).
fn log_file(node: &Node, uid: &str) -> String {
    let pods = node.root_dir().join("pods");
    let dir = std::fs::read_dir(&pods)
        .unwrap_or_else(|e| panic!("{}: {e}", pods.display()))
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("_{uid}"))
        })
        .unwrap_or_else(|| panic!("no log directory for {uid} in {}", pods.display()))
        .path()
        .join("c");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).expect("container log dir") {
        text.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("log"));
    }
    text
}

#[test]
fn previous_shows_the_instance_before_a_restart() {
    let node = Node::start("event");
    node.write_manifest(
        "again.yaml",
        &pod_yaml(
            "again",
            "Always",
            &format!(
                "  containers:
  - name: c
    image: {IMAGE}
    command: [sh, -c, 'if [ -f /d/ran ]; then echo second; exec sleep 3600; fi; touch /d/ran; echo first; exit 1']
    volumeMounts: [{{name: d, mountPath: /d}}]
  volumes:
  - name: d
    emptyDir: {{}}
"
            ),
        ),
    );
    let pod = node.wait_pod("again", "restarted once and running", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    let logs = logs_path(&pod);
    wait_logged(&node, &logs, "the second instance logged", |body| {
        body == "second\n"
    });
    assert_eq!(get_ok(&node, &format!("{logs}?previous=true")), "first\n");
    assert_eq!(get_ok(&node, &logs), "second\n");
}

/// A `follow` request: writes the request head and returns the connection, positioned at
/// the body (HTTP/1.1, so the body comes in chunks and a stream that ends on purpose ends
/// with the last, empty chunk, unlike a dropped connection).
fn follow(node: &Node, path: &str) -> TcpStream {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, node.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    s
}

/// The body in `raw` chunked bytes so far, and whether the last chunk came.
fn dechunk(raw: &[u8]) -> (String, bool) {
    let mut body = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (String::from_utf8_lossy(&body).into_owned(), false);
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h.split(';').next().unwrap_or(h).trim(), 16).ok())
            .unwrap_or_else(|| panic!("a chunk size: {:?}", String::from_utf8_lossy(rest)));
        if size == 0 {
            return (String::from_utf8_lossy(&body).into_owned(), true);
        }
        let data = &rest[eol + 2..];
        if data.len() < size + 2 {
            return (String::from_utf8_lossy(&body).into_owned(), false);
        }
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

/// Reads from `s` until `done(body, last chunk seen)` holds; panics when the peer closes
/// first, or after [`WAIT`]. Returns the body and the raw bytes read.
fn read_until(
    s: &mut TcpStream,
    mut raw: Vec<u8>,
    done: impl Fn(&str, bool) -> bool,
) -> (String, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        let closed = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                false
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("reading the followed log: {e}"),
        };
        let (body, ended) = dechunk(&raw);
        if done(&body, ended) {
            return (body, raw);
        }
        assert!(
            !closed,
            "the connection closed before the stream ended: {body:?}"
        );
        assert!(Instant::now() < deadline, "timed out; got {body:?}");
    }
}

#[test]
fn follow_streams_lines_written_after_the_request() {
    let node = Node::start("event");
    let pod = logging_pod(
        &node,
        "tick",
        "Always",
        "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
    );
    let logs = logs_path(&pod);
    wait_logged(&node, &logs, "a tick logged", |body| {
        body.contains("tick-1\n")
    });
    let mut s = follow(&node, &format!("{logs}?follow=true&tailLines=1"));
    let (first, raw) = read_until(&mut s, Vec::new(), |seen, _| seen.ends_with('\n'));
    let n: u64 = first
        .trim_end()
        .strip_prefix("tick-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("one tick line: {first:?}"));
    // Lines the container writes after the request arrive on the open response.
    let later = format!("tick-{}\n", n + 2);
    let (seen, _) = read_until(&mut s, raw, |seen, _| seen.contains(&later));
    assert!(
        seen.starts_with(&format!("tick-{n}\ntick-{}\n", n + 1)),
        "{seen:?}"
    );
    drop(s);
    assert!(node.agent_log().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn follow_ends_when_the_container_exits() {
    let node = Node::start("event");
    let pod = logging_pod(&node, "brief", "Never", "echo a; sleep 3; echo b");
    let logs = logs_path(&pod);
    wait_logged(&node, &logs, "the first line logged", |body| body == "a\n");
    let mut s = follow(&node, &format!("{logs}?follow=true"));
    // The last chunk: the server ended the stream (not a dropped connection).
    let (body, _) = read_until(&mut s, Vec::new(), |_, ended| ended);
    assert_eq!(body, "a\nb\n");
}
