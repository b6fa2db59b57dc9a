//! `bpflet trace`: stream kernel events (exits, OOM kills, memory pressure, cgroup changes,
//! losses) with pod attribution, as a table or as JSON lines.

pub mod output;
pub mod remote;

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::bpf::decode::monotonic_ns;
use crate::cgroups::{Attributor, CgroupError, Hierarchy};
use crate::events::source::{self, SourceChoice, SourceError, SourceSpec};
use crate::events::{Detail, Event, Kind};

/// Options of `bpflet trace`.
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// Print one JSON object per line (keys as in proto/bpflet/v1/events.proto) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only cgroups at or below PREFIX, a path under the memory hierarchy's mount such as
    /// /kubepods (component-wise). Repeatable. Default: every cgroup.
    #[arg(long = "cgroup", value_name = "PREFIX")]
    pub cgroups: Vec<String>,
    /// Only events of KIND: exit, oom_kill, memory_pressure, cgroup_created, cgroup_removed,
    /// events_lost. Repeatable. Default: all.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<Kind>,
    /// Stop by itself after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Event source: bpf, poll (degraded fallback), or auto (bpf, else poll with a warning).
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// Minimum spacing of two memory_pressure events of one cgroup, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub pressure_window_ms: u64,
    /// Exit events wake the tracer at most once per US microseconds; events in between are
    /// collected within one interval. 0 wakes it for every event, which costs the kernel
    /// an interrupt per event (microseconds on virtual machines).
    #[arg(long, value_name = "US", default_value_t = 200)]
    pub wakeup_interval_us: u64,
    /// Interval of the polling source, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Print a JSON summary (kernel-to-userspace latency percentiles, counts, losses) to
    /// stderr on exit. For benchmarks.
    #[arg(long, hide = true)]
    pub summary: bool,
    /// Read the events of a running agent from its event stream socket instead of loading
    /// the BPF programs (default socket: /run/bpflet/events.sock, the agent's
    /// eventStreamSocket). The agent's event source and settings apply.
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = remote::DEFAULT_SOCKET)]
    pub remote: Option<PathBuf>,
    /// With --remote: only events of pods in NAMESPACE.
    #[arg(long, value_name = "NAMESPACE", requires = "remote")]
    pub namespace: Option<String>,
    /// With --remote: only events of pods named NAME.
    #[arg(long, value_name = "NAME", requires = "remote")]
    pub pod: Option<String>,
    /// With --remote: only events of pods whose labels match SELECTOR (key=value,
    /// key!=value, key, !key; comma-separated, as kubectl -l).
    #[arg(short = 'l', long, value_name = "SELECTOR", requires = "remote")]
    pub selector: Option<String>,
    /// With --remote: resume after sequence number SEQ (the `sequence` of --json), first
    /// printing the events after it that the agent still buffers; a gap is reported as
    /// events_lost.
    #[arg(long, value_name = "SEQ", requires = "remote")]
    pub since: Option<u64>,
    /// With --since: the agent run SEQ counts in (the `run_id` of --json); another run's
    /// number resumes from the start of the current run, with the gap reported.
    #[arg(long, value_name = "RUN", requires = "since")]
    pub run_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--cgroup {prefix:?}: must be an absolute path under the cgroup mount, like /kubepods")]
    RelativePrefix { prefix: String },
    #[error("--cgroup {prefix:?}: no such cgroup ({path} does not exist)")]
    NoSuchCgroup { prefix: String, path: PathBuf },
    #[error("--duration {0}: must be a positive number of seconds")]
    Duration(f64),
    #[error("--{flag} {value}: must be at least 1")]
    Zero { flag: &'static str, value: u64 },
    #[error("cannot find the memory cgroup hierarchy")]
    Hierarchy(#[source] CgroupError),
    #[error("cannot start the event source")]
    Source(#[source] SourceError),
    #[error("cannot write to standard output")]
    Output(#[source] io::Error),
    #[error(
        "--{flag}: applies to the local tracer only; with --remote the agent's event source and settings apply"
    )]
    NotRemote { flag: &'static str },
    #[error("--remote {}: no event stream socket there (is a bpflet agent running, with eventStreamSocket at this path?)", socket.display())]
    NoSocket {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--remote {}: no bpflet agent answers on this socket", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("--remote {}: the agent refused or broke the event stream", socket.display())]
    Watch {
        socket: PathBuf,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("--remote {}: the agent ended the event stream (it stopped?)", socket.display())]
    StreamEnded { socket: PathBuf },
}

impl TraceError {
    /// Usage errors exit 64 (EX_USAGE); failures at run time exit 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            TraceError::RelativePrefix { .. }
            | TraceError::NoSuchCgroup { .. }
            | TraceError::Duration(_)
            | TraceError::Zero { .. }
            | TraceError::NotRemote { .. } => 64,
            _ => 1,
        }
    }
}

/// Which events to show. Pure, so the matching rules are unit-tested.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    kinds: HashSet<Kind>,
    prefixes: Vec<String>,
}

/// `path` equals `prefix` or lies below it, component-wise ("/a" covers "/a/b", not "/ab").
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Filter {
    pub fn new(kinds: &[Kind], prefixes: &[String]) -> Self {
        Self {
            kinds: kinds.iter().copied().collect(),
            prefixes: prefixes.to_vec(),
        }
    }

    pub fn matches(&self, ev: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&ev.kind()) {
            return false;
        }
        if self.prefixes.is_empty() {
            return true;
        }
        let in_scope = |path: &str| self.prefixes.iter().any(|p| under(path, p));
        match &ev.detail {
            // Losses concern every cgroup.
            Detail::EventsLost { .. } => true,
            // An OOM kill matters to the victim's subtree and to the one whose limit was hit.
            Detail::OomKill(o) => {
                in_scope(&ev.cgroup) || o.limit_cgroup.as_deref().is_some_and(in_scope)
            }
            _ => in_scope(&ev.cgroup),
        }
    }
}

fn validate(args: &TraceArgs, hierarchy: &Hierarchy) -> Result<(), TraceError> {
    for prefix in &args.cgroups {
        if !prefix.starts_with('/') {
            return Err(TraceError::RelativePrefix {
                prefix: prefix.clone(),
            });
        }
        let path = hierarchy.path_of(prefix);
        if !path.is_dir() {
            return Err(TraceError::NoSuchCgroup {
                prefix: prefix.clone(),
                path,
            });
        }
    }
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        return Err(TraceError::Duration(d));
    }
    if args.pressure_window_ms == 0 {
        return Err(TraceError::Zero {
            flag: "pressure-window-ms",
            value: 0,
        });
    }
    if args.poll_interval_ms == 0 {
        return Err(TraceError::Zero {
            flag: "poll-interval-ms",
            value: 0,
        });
    }
    Ok(())
}

/// Latency and count summary printed with `--summary`.
#[derive(Default)]
struct Summary {
    latencies_ns: Vec<u64>,
    by_kind: std::collections::BTreeMap<&'static str, u64>,
    lost_kernel: u64,
    lost_userspace: u64,
}

impl Summary {
    fn record(&mut self, ev: &Event, received_ns: u64) {
        if let Some(k) = ev.kernel_ns {
            self.latencies_ns.push(received_ns.saturating_sub(k));
        }
        *self.by_kind.entry(ev.kind().as_str()).or_default() += 1;
        if let Detail::EventsLost { kernel, userspace } = ev.detail {
            self.lost_kernel += kernel;
            self.lost_userspace += userspace;
        }
    }

    fn finish(&mut self) -> serde_json::Value {
        self.latencies_ns.sort_unstable();
        let pct = |p: f64| -> Option<f64> {
            let n = self.latencies_ns.len();
            (n > 0).then(|| {
                let i = ((p / 100.0) * (n - 1) as f64).round() as usize;
                self.latencies_ns[i.min(n - 1)] as f64 / 1000.0
            })
        };
        serde_json::json!({
            "events": self.by_kind,
            "latency_us": { "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0), "n": self.latencies_ns.len() },
            "lost_kernel": self.lost_kernel,
            "lost_userspace": self.lost_userspace,
        })
    }
}

/// Capacity of the channel between the event source and the printer.
const CHANNEL: usize = 16 * 1024;

/// Runs the tracer until `cancel` fires or the duration elapses.
pub async fn run(args: TraceArgs, cancel: CancellationToken) -> Result<(), TraceError> {
    if let Some(socket) = args.remote.clone() {
        return remote::run(args, socket, cancel).await;
    }
    let proc_root = PathBuf::from("/proc");
    let hierarchy = Hierarchy::detect(&proc_root).map_err(TraceError::Hierarchy)?;
    validate(&args, &hierarchy)?;

    let spec = SourceSpec {
        hierarchy: hierarchy.clone(),
        roots: args.cgroups.clone(),
        watch_all: args.cgroups.is_empty(),
        pressure_window: Duration::from_millis(args.pressure_window_ms),
        wakeup_interval: Duration::from_micros(args.wakeup_interval_us),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        proc_root,
    };
    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let running =
        source::start(args.source, &spec, tx, &cancel, &tracker).map_err(TraceError::Source)?;
    info!(source = ?running.source, "tracing");

    let mut attributor = Attributor::new(hierarchy);
    let index_roots = if args.cgroups.is_empty() {
        vec!["/".to_owned()]
    } else {
        args.cgroups.clone()
    };
    for root in &index_roots {
        if let Err(e) = attributor.index_subtree(root) {
            tracing::warn!(root, error = %e, "cannot index cgroups; paths may be missing");
        }
    }
    let filter = Filter::new(&args.kinds, &args.cgroups);
    let deadline = args
        .duration
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs_f64(secs));
    let mut summary = Summary::default();
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if !args.json {
        writeln!(out, "{}", output::TABLE_HEADER).map_err(TraceError::Output)?;
        out.flush().map_err(TraceError::Output)?;
    }

    let sleep = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(sleep);
    let result = loop {
        let ev = tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            () = &mut sleep, if deadline.is_some() => break Ok(()),
            ev = rx.recv() => ev,
        };
        let Some(ev) = ev else { break Ok(()) };
        let mut batch = vec![ev];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let received = monotonic_ns();
        let written: io::Result<()> = (|| {
            for mut ev in batch {
                if args.summary {
                    summary.record(&ev, received);
                }
                attributor.attribute(&mut ev);
                if !filter.matches(&ev) {
                    continue;
                }
                if args.json {
                    serde_json::to_writer(&mut out, &output::to_json(&ev))?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "{}", output::to_row(&ev))?;
                }
            }
            out.flush()
        })();
        match written {
            Ok(()) => {}
            // A closed pipe (`bpflet trace | head`) ends the trace quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break Ok(()),
            Err(e) => break Err(TraceError::Output(e)),
        }
    };
    cancel.cancel();
    drop(running); // detaches the BPF programs
    tracker.close();
    tracker.wait().await;
    if args.summary {
        eprintln!("{}", summary.finish());
    }
    result
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::events::{ExitStatus, OomKill, OomScope, Source};

    fn ev(cgroup: &str, detail: Detail) -> Event {
        Event {
            time: SystemTime::UNIX_EPOCH,
            kernel_ns: None,
            source: Source::Bpf,
            pid: 1,
            comm: String::new(),
            cgroup_id: None,
            cgroup: cgroup.into(),
            pod: None,
            detail,
        }
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under("/kubepods", "/kubepods"));
        assert!(under("/kubepods/burstable/pod1", "/kubepods"));
        assert!(under("/kubepods/burstable/pod1", "/kubepods/"));
        assert!(!under("/kubepods2", "/kubepods"));
        assert!(!under("/", "/kubepods"));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn filter_by_kind_and_prefix() {
        let exit = ev(
            "/kubepods/pod1",
            Detail::Exit {
                status: ExitStatus::Code(0),
                pidns_init: false,
            },
        );
        let other = ev(
            "/system/x",
            Detail::Exit {
                status: ExitStatus::Code(0),
                pidns_init: false,
            },
        );
        let lost = ev(
            "",
            Detail::EventsLost {
                kernel: 1,
                userspace: 0,
            },
        );

        let all = Filter::default();
        assert!(all.matches(&exit) && all.matches(&other) && all.matches(&lost));

        let f = Filter::new(&[], &["/kubepods".into()]);
        assert!(f.matches(&exit));
        assert!(!f.matches(&other));
        assert!(f.matches(&lost), "losses are shown whatever the prefix");

        let f = Filter::new(&[Kind::OomKill], &[]);
        assert!(!f.matches(&exit));
        let f = Filter::new(&[Kind::OomKill, Kind::Exit], &[]);
        assert!(f.matches(&exit));
    }

    #[test]
    fn oom_matches_victim_or_limit_subtree() {
        let oom = |victim: &str, limit: Option<&str>| {
            ev(
                victim,
                Detail::OomKill(OomKill {
                    scope: OomScope::Cgroup,
                    limit_cgroup_id: None,
                    limit_cgroup: limit.map(str::to_owned),
                    limit_bytes: None,
                    usage_bytes: None,
                    anon_rss_bytes: None,
                    file_rss_bytes: None,
                    shmem_rss_bytes: None,
                    total_vm_bytes: None,
                    oom_score_adj: None,
                    invoker_pid: 0,
                }),
            )
        };
        let f = Filter::new(&[], &["/kubepods".into()]);
        assert!(f.matches(&oom("/kubepods/pod1/c", Some("/kubepods/pod1"))));
        assert!(f.matches(&oom("/elsewhere", Some("/kubepods"))));
        assert!(!f.matches(&oom("/elsewhere", None)));
    }

    #[test]
    fn bad_options_are_usage_errors() {
        let h = Hierarchy::v1(std::env::temp_dir(), 0);
        let base = TraceArgs {
            json: false,
            cgroups: vec![],
            kinds: vec![],
            duration: None,
            source: SourceChoice::Auto,
            pressure_window_ms: 100,
            wakeup_interval_us: 200,
            poll_interval_ms: 1000,
            summary: false,
            remote: None,
            namespace: None,
            pod: None,
            selector: None,
            since: None,
            run_id: None,
        };
        let err = validate(
            &TraceArgs {
                cgroups: vec!["kubepods".into()],
                ..base.clone()
            },
            &h,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(err.to_string().contains("\"kubepods\""), "{err}");
        let err = validate(
            &TraceArgs {
                cgroups: vec!["/no-such-cgroup-here".into()],
                ..base.clone()
            },
            &h,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no such cgroup"), "{err}");
        let err = validate(
            &TraceArgs {
                duration: Some(-1.0),
                ..base.clone()
            },
            &h,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 64);
        let err = validate(
            &TraceArgs {
                pressure_window_ms: 0,
                ..base.clone()
            },
            &h,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--pressure-window-ms"), "{err}");
        validate(&base, &h).expect("defaults are valid");
    }
}
