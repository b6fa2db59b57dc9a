//! `cargo xtask bench trace`: what `bpflet trace` costs and how fast its events arrive.
//!
//! One run measures, side by side on the same machine, the BPF source against the polling
//! fallback (the baseline: what an agent without BPF can do), at idle, at 1,000 and at
//! 10,000 process exits per second inside a cgroup the bench created:
//! - kernel-to-userspace latency of exit events (kernel timestamp to the tracer's loop),
//! - kernel time per program run (`kernel.bpf_stats_enabled`),
//! - the tracer's CPU and RSS, and the events received and lost.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::Ctx;
use super::agent_log::{LogRecord, tracing_source};
use super::util::{BpfStatsEnabled, Table, bpf_prog_stats, fmt_opt, sample_process};

/// Length of each measured scenario.
const SCENARIO: Duration = Duration::from_secs(10);
const LOADS: &[u64] = &[0, 1_000, 10_000];
const PROGRAMS: &[&str] = &["bpflet_exit", "bpflet_cgroup_mkdir", "bpflet_memcg_events"];

pub fn run(ctx: &Ctx) -> Result<()> {
    let cgroup = BenchCgroup::create()?;
    let mut table = Table::new([
        "source",
        "target exits/s",
        "achieved exits/s",
        "exit events received",
        "lost",
        "latency p50 (us)",
        "latency p99 (us)",
        "latency max (us)",
        "kernel ns/run (exit prog)",
        "tracer CPU %",
        "tracer RSS max (MiB)",
    ]);
    let variants: &[(&str, u64)] = &[("bpf", 0), ("bpf", 200), ("bpf", 1000), ("poll", 0)];
    for &(source, wakeup_us) in variants {
        for &rate in LOADS {
            eprintln!(
                "bench trace: source {source} (wakeup {wakeup_us}us), {rate} exits/s for {SCENARIO:?}"
            );
            let r = scenario(ctx, &cgroup, source, wakeup_us, rate)?;
            let label = if source == "bpf" {
                format!("bpf, wakeup <= 1/{wakeup_us}us")
            } else {
                "poll (1s)".to_owned()
            };
            table.row([
                label,
                rate.to_string(),
                format!("{:.0}", r.achieved_rate),
                r.exits_received.to_string(),
                r.lost.to_string(),
                fmt_opt(r.p50_us, 1),
                fmt_opt(r.p99_us, 1),
                fmt_opt(r.max_us, 1),
                fmt_opt(r.kernel_ns_per_run, 1),
                format!("{:.1}", r.cpu_percent),
                format!("{:.1}", r.rss_max_mib),
            ]);
        }
    }
    let report = format!(
        "## bpflet trace ({}s per scenario, exits from fork+_exit in a dedicated cgroup)\n\n{table}\n",
        SCENARIO.as_secs()
    );
    println!("{report}");
    let path = ctx.save("trace", &report)?;
    eprintln!("saved {}", path.display());
    Ok(())
}

struct ScenarioResult {
    achieved_rate: f64,
    exits_received: u64,
    lost: u64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
    kernel_ns_per_run: Option<f64>,
    cpu_percent: f64,
    rss_max_mib: f64,
}

fn scenario(
    ctx: &Ctx,
    cgroup: &BenchCgroup,
    source: &str,
    wakeup_us: u64,
    rate: u64,
) -> Result<ScenarioResult> {
    let mut tracer = Command::new(&ctx.bpflet)
        .args([
            "trace",
            "--json",
            "--summary",
            "--source",
            source,
            "--cgroup",
            &cgroup.rel,
        ])
        .args(["--kind", "exit", "--kind", "events_lost"])
        .args(["--wakeup-interval-us", &wakeup_us.to_string()])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", ctx.bpflet.display()))?;
    let stderr = tracer.stderr.take().context("tracer stderr")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (summary_tx, summary_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut summary = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match StderrLine::parse(&line) {
                Some(StderrLine::Log(record)) => {
                    if let Some(source) = tracing_source(std::slice::from_ref(&record)) {
                        let _ = ready_tx.send(source.to_owned());
                    }
                }
                Some(StderrLine::Summary(s)) => summary = Some(s),
                None => {}
            }
        }
        let _ = summary_tx.send(summary);
    });
    let started_source = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("bpflet trace did not start tracing")?;
    let want_source = match source {
        "bpf" => "Bpf",
        "poll" => "Poll",
        other => bail!("unknown trace source {other:?}"),
    };
    if started_source != want_source {
        nix_kill(tracer.id(), libc::SIGINT);
        let _ = tracer.wait();
        bail!("bpflet trace --source {source} traces with {started_source:?}");
    }

    let stats_guard = if source == "bpf" {
        Some(BpfStatsEnabled::enable()?)
    } else {
        None
    };
    let before = if source == "bpf" {
        bpf_prog_stats(PROGRAMS)?
    } else {
        Vec::new()
    };
    let load = if rate > 0 {
        Some(ExitLoad::start(cgroup, rate, SCENARIO)?)
    } else {
        None
    };
    let usage = sample_process(tracer.id(), SCENARIO, Duration::from_millis(200))?;
    let produced = match load {
        Some(load) => load.wait()?,
        None => 0,
    };
    let after = if source == "bpf" {
        bpf_prog_stats(PROGRAMS)?
    } else {
        Vec::new()
    };
    drop(stats_guard);
    let kernel_ns_per_run = after
        .iter()
        .find(|p| p.name.starts_with("bpflet_exit"))
        .and_then(|a| before.iter().find(|b| b.id == a.id).map(|b| a.since(b)))
        .and_then(|d| d.mean_ns());

    // Give the tracer time to drain, then stop it politely (it prints its summary).
    thread::sleep(Duration::from_millis(1500));
    nix_kill(tracer.id(), libc::SIGINT);
    tracer.wait()?;
    let summary = summary_rx
        .recv_timeout(Duration::from_secs(10))
        .ok()
        .flatten()
        .context("bpflet trace printed no summary")?;
    Ok(ScenarioResult {
        achieved_rate: produced as f64 / SCENARIO.as_secs_f64(),
        exits_received: summary.events.get("exit").copied().unwrap_or(0),
        lost: summary.lost_kernel + summary.lost_userspace,
        p50_us: summary.latency_us.p50,
        p99_us: summary.latency_us.p99,
        max_us: summary.latency_us.max,
        kernel_ns_per_run,
        cpu_percent: usage.cpu_percent,
        rss_max_mib: usage.rss_max_bytes as f64 / (1024.0 * 1024.0),
    })
}

/// What `bpflet trace --summary --log-format json` writes to stderr, line by line.
#[derive(Debug, PartialEq)]
enum StderrLine {
    /// A log record.
    Log(LogRecord),
    /// The `--summary` object, written last.
    Summary(TraceSummary),
}

impl StderrLine {
    fn parse(line: &str) -> Option<Self> {
        LogRecord::parse(line).map(Self::Log).or_else(|| {
            serde_json::from_str(line)
                .ok()
                .map(|s: TraceSummary| Self::Summary(s))
        })
    }
}

/// The fields of `bpflet trace --summary` this bench reads.
#[derive(Debug, PartialEq, Deserialize)]
struct TraceSummary {
    /// Events received, by kind.
    events: BTreeMap<String, u64>,
    latency_us: LatencySummary,
    lost_kernel: u64,
    lost_userspace: u64,
}

/// Kernel-to-userspace latency of the events received, µs; `None` when none came.
#[derive(Debug, PartialEq, Deserialize)]
struct LatencySummary {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

fn nix_kill(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The bench's own memory cgroup (v1 or v2), removed on drop.
struct BenchCgroup {
    path: PathBuf,
    rel: String,
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let mount = if v1.join("memory.limit_in_bytes").exists() {
            v1
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let rel = format!("/bpflet-bench-{}", std::process::id());
        let path = mount.join(rel.trim_start_matches('/'));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, rel })
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// A process in the bench cgroup that forks children which `_exit(0)` at once, at a fixed
/// rate, for a fixed time.
struct ExitLoad {
    pid: libc::pid_t,
}

impl ExitLoad {
    fn start(cgroup: &BenchCgroup, rate: u64, duration: Duration) -> Result<Self> {
        let procs = CString::new(cgroup.path.join("cgroup.procs").as_os_str().as_bytes())?;
        let per_ms = rate as f64 / 1000.0;
        let total_ms = duration.as_millis() as u64;
        // SAFETY: the child only makes async-signal-safe calls (open, write, close, fork,
        // waitpid, clock_gettime, nanosleep, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe { exit_load_child(&procs, per_ms, total_ms) }
        }
        Ok(Self { pid })
    }

    /// Waits for the generator and returns how many children it made.
    fn wait(self) -> Result<u64> {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0 {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
        if !libc::WIFEXITED(status) {
            bail!("exit load generator died: status {status}");
        }
        // The child reports thousands of children made through its exit code.
        Ok(u64::from(libc::WEXITSTATUS(status) as u32) * 1000)
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Body of the generator process. Never returns.
unsafe fn exit_load_child(procs: &CString, per_ms: f64, total_ms: u64) -> ! {
    // SAFETY (whole function): async-signal-safe libc calls only; see ExitLoad::start.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(101);
        }
        libc::close(fd);
        let start = now_ns();
        let mut made: u64 = 0;
        loop {
            let elapsed_ms = (now_ns() - start) / 1_000_000;
            if elapsed_ms >= total_ms {
                break;
            }
            let due = (per_ms * (elapsed_ms + 1) as f64) as u64;
            while made < due {
                match libc::fork() {
                    0 => libc::_exit(0),
                    -1 => break,
                    _ => made += 1,
                }
            }
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 200_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
        }
        while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
        libc::_exit(i32::try_from(made / 1000).unwrap_or(255).min(255))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_holds_json_log_records_then_the_summary() {
        let start = r#"{"timestamp":"2026-11-23T20:01:00Z","level":"INFO","fields":{"message":"tracing","source":"Bpf"},"target":"bpflet::trace"}"#;
        let Some(StderrLine::Log(record)) = StderrLine::parse(start) else {
            panic!("not a log record: {start}");
        };
        assert_eq!(tracing_source(&[record]), Some("Bpf"));

        let summary = r#"{"events":{"events_lost":1,"exit":9980},"latency_us":{"max":812.5,"n":9980,"p50":17.25,"p90":30.0,"p99":95.0},"lost_kernel":2,"lost_userspace":3}"#;
        assert_eq!(
            StderrLine::parse(summary),
            Some(StderrLine::Summary(TraceSummary {
                events: BTreeMap::from([("events_lost".to_owned(), 1), ("exit".to_owned(), 9980)]),
                latency_us: LatencySummary {
                    p50: Some(17.25),
                    p99: Some(95.0),
                    max: Some(812.5),
                },
                lost_kernel: 2,
                lost_userspace: 3,
            }))
        );
        // Nothing received: no percentiles.
        let Some(StderrLine::Summary(empty)) = StderrLine::parse(
            r#"{"events":{},"latency_us":{"max":null,"n":0,"p50":null,"p90":null,"p99":null},"lost_kernel":0,"lost_userspace":0}"#,
        ) else {
            panic!("an empty summary did not parse");
        };
        assert_eq!(
            (empty.latency_us.p50, empty.events.get("exit")),
            (None, None)
        );
        assert_eq!(
            StderrLine::parse("bpflet trace: cannot start the event source"),
            None
        );
    }
}
