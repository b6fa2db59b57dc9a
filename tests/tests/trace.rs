//! `bpflet trace` end to end: the real binary, the real kernel, processes in cgroups the
//! test created and limited. Needs root; fails (never skips) without it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bpflet_tests::{TestCgroup, bpflet_bin, require_root};
use serde_json::Value;

/// Upper bound for anything the kernel and the tracer must produce; never a timing claim.
const WAIT: Duration = Duration::from_secs(60);

/// A running `bpflet trace --json`, its stdout lines parsed as JSON.
struct Tracer {
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Events read so far, in order.
    seen: Vec<Value>,
}

impl Tracer {
    /// Starts the tracer and waits until it says it is tracing.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(bpflet_bin())
            .arg("trace")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bpflet trace");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("trace printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[bpflet trace] {line}");
                if line.contains(" tracing")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("bpflet trace did not report that it is tracing");
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one satisfies `pred`, and returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {what} event; saw {} events: {:#?}",
                    self.seen.len(),
                    last(&self.seen, 20)
                ),
            }
        }
    }

    /// Reads every event that arrives within `quiet` of the previous one.
    fn drain(&mut self, quiet: Duration) {
        while let Ok(v) = self.lines.recv_timeout(quiet) {
            self.seen.push(v);
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last(v: &[Value], n: usize) -> &[Value] {
    &v[v.len().saturating_sub(n)..]
}

fn pid_of(child: &Child) -> u64 {
    u64::from(child.id())
}

/// A process that allocates and touches `mib` MiB at once: dd's block buffer.
fn memory_hog(mib: u64) -> Command {
    let mut cmd = Command::new("dd");
    cmd.args([
        "if=/dev/zero",
        "of=/dev/null",
        &format!("bs={mib}M"),
        "count=1",
    ])
    .stderr(Stdio::null());
    cmd
}

fn assert_killed_by_sigkill(child: &mut Child) {
    use std::os::unix::process::ExitStatusExt as _;
    let status = child.wait().expect("wait for child");
    assert_eq!(
        status.signal(),
        Some(9),
        "child should have been OOM-killed, got {status:?}"
    );
}

#[test]
fn exit_codes_and_signals_are_reported_with_pid_and_cgroup() {
    require_root();
    let cg = TestCgroup::new("exit");
    let mut tracer = Tracer::start(&["--cgroup", cg.rel_path()]);

    let mut child = cg.spawn(Command::new("sh").args(["-c", "exit 3"]));
    let pid = pid_of(&child);
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let ev = tracer.wait_for("exit with code 3", |v| {
        v["kind"] == "exit" && v["pid"] == pid
    });
    assert_eq!(ev["exit_code"], 3, "{ev}");
    assert_eq!(ev["cgroup"], cg.rel_path(), "{ev}");
    assert_eq!(ev["cgroup_id"], cg.inode(), "{ev}");
    assert_eq!(ev["source"], "bpf", "{ev}");
    assert!(ev.get("signal").is_none(), "{ev}");

    let mut child = cg.spawn(Command::new("sh").args(["-c", "kill -9 $$"]));
    let pid = pid_of(&child);
    let _ = child.wait();
    let ev = tracer.wait_for("exit by SIGKILL", |v| {
        v["kind"] == "exit" && v["pid"] == pid
    });
    assert_eq!(ev["signal"], 9, "{ev}");
    assert!(ev.get("exit_code").is_none(), "{ev}");
    assert!(ev.get("pidns_init").is_none(), "{ev}");
}

/// A container's main process is pid 1 of its pid namespace; its exit ends the container,
/// and the PLEG relies on the kernel saying so.
#[test]
fn exit_of_a_pid_namespace_init_is_flagged() {
    require_root();
    let cg = TestCgroup::new("pidns");
    let mut tracer = Tracer::start(&["--cgroup", cg.rel_path(), "--kind", "exit"]);

    // unshare (exit 6, host namespace) -> sh as pid 1 (exit 6) -> sh (exit 4).
    let mut child = cg.spawn(Command::new("unshare").args([
        "--pid",
        "--fork",
        "sh",
        "-c",
        "sh -c 'exit 4'; exit 6",
    ]));
    assert_eq!(child.wait().unwrap().code(), Some(6));
    let unshare_pid = pid_of(&child);
    let inner = tracer.wait_for("exit of the namespace's second process", |v| {
        v["exit_code"] == 4
    });
    assert!(inner.get("pidns_init").is_none(), "{inner}");
    let init = tracer.wait_for("exit of the namespace's init", |v| {
        v["exit_code"] == 6 && v["pid"] != unshare_pid
    });
    assert_eq!(init["pidns_init"], true, "{init}");
    let outer = tracer.wait_for("exit of unshare", |v| v["pid"] == unshare_pid);
    assert!(outer.get("pidns_init").is_none(), "{outer}");
}

#[test]
fn only_watched_cgroups_are_reported() {
    require_root();
    let watched = TestCgroup::new("watched");
    let other = TestCgroup::new("other");
    let mut tracer = Tracer::start(&["--cgroup", watched.rel_path(), "--kind", "exit"]);

    let mut outside = other.spawn(Command::new("sh").args(["-c", "exit 7"]));
    let outside_pid = pid_of(&outside);
    outside.wait().unwrap();
    let mut inside = watched.spawn(Command::new("sh").args(["-c", "exit 5"]));
    let inside_pid = pid_of(&inside);
    inside.wait().unwrap();

    tracer.wait_for("exit of the watched process", |v| v["pid"] == inside_pid);
    tracer.drain(Duration::from_millis(300));
    assert!(
        tracer.seen.iter().all(|v| v["pid"] != outside_pid),
        "an exit outside the watched cgroup was reported: {:#?}",
        tracer.seen
    );
    assert!(
        tracer.seen.iter().all(|v| v["kind"] == "exit"),
        "--kind exit let other kinds through"
    );
}

#[test]
fn oom_kill_names_victim_cgroup_and_limit() {
    require_root();
    let cg = TestCgroup::new("oom").with_memory_limit(64 << 20);
    let mut tracer = Tracer::start(&["--cgroup", cg.rel_path()]);

    let mut hog = cg.spawn(&mut memory_hog(256));
    let pid = pid_of(&hog);
    assert_killed_by_sigkill(&mut hog);
    let ev = tracer.wait_for("oom_kill", |v| v["kind"] == "oom_kill" && v["pid"] == pid);
    assert_eq!(ev["comm"], "dd", "{ev}");
    assert_eq!(ev["cgroup"], cg.rel_path(), "{ev}");
    assert_eq!(
        ev["scope"], "cgroup",
        "a test cgroup is no pod or container: {ev}"
    );
    assert_eq!(ev["limit_cgroup"], cg.rel_path(), "{ev}");
    assert_eq!(ev["limit_bytes"], 64u64 << 20, "{ev}");
    let usage = ev["usage_bytes"].as_u64().expect("usage_bytes");
    assert!(
        usage > 60 << 20 && usage <= 64 << 20,
        "usage at the limit: {ev}"
    );
    let anon = ev["victim_anon_rss_bytes"].as_u64().expect("anon rss");
    assert!(anon > 32 << 20, "the victim's rss is its buffer: {ev}");
    // The victim's exit follows, by SIGKILL.
    let exit = tracer.wait_for("victim exit", |v| v["kind"] == "exit" && v["pid"] == pid);
    assert_eq!(exit["signal"], 9, "{exit}");
}

#[test]
fn oom_kill_in_child_cgroup_names_the_parent_limit() {
    require_root();
    let parent = TestCgroup::new("oomparent").with_memory_limit(64 << 20);
    let child_cg = parent.child("leaf");
    let mut tracer = Tracer::start(&["--cgroup", parent.rel_path(), "--kind", "oom_kill"]);

    let mut hog = child_cg.spawn(&mut memory_hog(256));
    let pid = pid_of(&hog);
    assert_killed_by_sigkill(&mut hog);
    let ev = tracer.wait_for("oom_kill", |v| v["pid"] == pid);
    assert_eq!(
        ev["cgroup"],
        child_cg.rel_path(),
        "victim's own cgroup: {ev}"
    );
    assert_eq!(
        ev["limit_cgroup"],
        parent.rel_path(),
        "the limit hit was the parent's: {ev}"
    );
    assert_eq!(ev["limit_bytes"], 64u64 << 20, "{ev}");
}

#[test]
fn every_exit_of_a_burst_is_received_or_counted_lost() {
    require_root();
    const N: u64 = 10_000;
    let cg = TestCgroup::new("burst");
    let mut tracer = Tracer::start(&[
        "--cgroup",
        cg.rel_path(),
        "--kind",
        "exit",
        "--kind",
        "events_lost",
    ]);

    let script = format!("i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done");
    let mut sh = cg.spawn(Command::new("sh").args(["-c", &script]));
    let sh_pid = pid_of(&sh);
    assert!(sh.wait().unwrap().success());
    tracer.wait_for("the loop's own exit", |v| {
        v["kind"] == "exit" && v["pid"] == sh_pid
    });
    // Losses are reported within a second of happening; wait for them to be flushed.
    tracer.drain(Duration::from_millis(1500));

    let received = tracer
        .seen
        .iter()
        .filter(|v| v["kind"] == "exit" && v["comm"] == "true")
        .count() as u64;
    let lost: u64 = tracer
        .seen
        .iter()
        .filter(|v| v["kind"] == "events_lost")
        .map(|v| v["lost_kernel"].as_u64().unwrap_or(0) + v["lost_userspace"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("burst of {N}: received {received}, lost {lost}");
    assert!(received <= N, "more exits than processes: {received}");
    assert!(
        received + lost >= N,
        "exits neither received nor counted as lost: received {received} + lost {lost} < {N}"
    );
}

#[test]
fn reclaim_pressure_is_reported_at_a_bounded_rate() {
    require_root();
    const WINDOW_MS: u64 = 200;
    let cg = TestCgroup::new("pressure").with_memory_limit(48 << 20);
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir on disk");
    let file = dir.path().join("pagecache");
    let mut tracer = Tracer::start(&[
        "--cgroup",
        cg.rel_path(),
        "--kind",
        "memory_pressure",
        "--pressure-window-ms",
        &WINDOW_MS.to_string(),
    ]);
    // Writing then reading 192 MiB of file data from inside a 48 MiB cgroup: its page cache
    // is charged here, so the kernel must reclaim it over and over (file pages only, so no
    // OOM kill).
    let script = format!(
        "dd if=/dev/zero of={f} bs=1M count=192 2>/dev/null && for i in 1 2 3; do cat {f} > /dev/null; done",
        f = file.display()
    );
    let mut worker = cg.spawn(Command::new("sh").args(["-c", &script]));
    assert!(worker.wait().unwrap().success());
    tracer.wait_for("memory_pressure", |v| v["kind"] == "memory_pressure");
    tracer.drain(Duration::from_millis(500));

    let events: Vec<&Value> = tracer
        .seen
        .iter()
        .filter(|v| v["cgroup"] == cg.rel_path())
        .collect();
    assert!(
        !events.is_empty(),
        "no pressure event for {}: {:#?}",
        cg.rel_path(),
        tracer.seen
    );
    let scanned: u64 = events
        .iter()
        .map(|v| v["pages_scanned"].as_u64().unwrap_or(0))
        .sum();
    let reclaimed: u64 = events
        .iter()
        .map(|v| v["pages_reclaimed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        scanned > 0 && reclaimed > 0,
        "reclaim counted: scanned {scanned}, reclaimed {reclaimed}"
    );
    // Aggregation in the kernel: two records of one cgroup are at least one window apart.
    let times: Vec<i128> = events
        .iter()
        .map(|v| parse_ns(v["ts"].as_str().unwrap()))
        .collect();
    for pair in times.windows(2) {
        let gap_ms = (pair[1] - pair[0]) / 1_000_000;
        assert!(
            gap_ms >= i128::from(WINDOW_MS) * 9 / 10,
            "records {gap_ms} ms apart, window {WINDOW_MS} ms"
        );
    }
    eprintln!(
        "{} pressure records, {scanned} pages scanned, {reclaimed} reclaimed",
        events.len()
    );
}

#[test]
fn polling_fallback_reports_the_same_oom_kill() {
    require_root();
    let cg = TestCgroup::new("pollom").with_memory_limit(64 << 20);
    let mut tracer = Tracer::start(&[
        "--source",
        "poll",
        "--poll-interval-ms",
        "200",
        "--cgroup",
        cg.rel_path(),
    ]);

    let mut hog = cg.spawn(&mut memory_hog(256));
    let pid = pid_of(&hog);
    assert_killed_by_sigkill(&mut hog);
    let ev = tracer.wait_for("oom_kill from the poller", |v| {
        v["kind"] == "oom_kill" && v["pid"] == pid
    });
    assert_eq!(ev["source"], "poll", "{ev}");
    assert_eq!(ev["cgroup"], cg.rel_path(), "{ev}");
    assert_eq!(ev["limit_cgroup"], cg.rel_path(), "{ev}");
    assert_eq!(ev["comm"], "dd", "{ev}");
}

#[test]
fn bad_input_is_a_usage_error() {
    require_root();
    let run = |args: &[&str]| {
        let out = Command::new(bpflet_bin())
            .args(args)
            .output()
            .expect("run bpflet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["trace", "--no-such-flag"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err) = run(&["trace", "--kind", "oom"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("oom"), "{err}");
    let (code, err) = run(&["trace", "--cgroup", "/bpflet-no-such-cgroup"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("/bpflet-no-such-cgroup"), "{err}");
}

/// RFC 3339 with nanoseconds to nanoseconds since the epoch.
fn parse_ns(ts: &str) -> i128 {
    let t: jiff::Timestamp = ts.parse().unwrap_or_else(|e| panic!("bad ts {ts:?}: {e}"));
    t.as_nanosecond()
}
