//! `bpflet trace --remote [SOCKET]`: the events of a running agent, read from its event
//! stream (`bpflet.v1.EventService`) instead of loading the BPF programs a second time.
//! Same filters and output as the local tracer; the pod column names the pod.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bpflet_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::output::{self, PodNames};
use super::{Filter, TraceArgs, TraceError};
use crate::events::{
    Detail, Event, ExitStatus, Kind, MemoryPressure, OomKill, OomScope, PodRef, Source,
};

/// The agent's default event stream socket (`eventStreamSocket`).
pub use crate::config::event_stream::DEFAULT_SOCKET;

/// Connects to the agent's socket; the error says whether anyone listens there.
async fn connect(
    socket: &Path,
) -> Result<pb::event_service_client::EventServiceClient<tonic::transport::Channel>, TraceError> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://bpflet.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| TraceError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    Ok(pb::event_service_client::EventServiceClient::new(channel))
}

/// A proto event as the tracer's [`Event`]; `None` for a kind this build does not know.
/// Proto zeroes that mean "unknown" (limit, usage, sizes) become `None` as the tracer
/// shows them; a stream loss (`not_replayed`) is counted with `userspace`.
#[must_use]
pub fn from_proto(ev: &pb::Event) -> Option<Event> {
    let kind = Kind::from_proto(pb::EventKind::try_from(ev.kind).ok()?)?;
    let time = ev
        .ts
        .parse::<jiff::Timestamp>()
        .map_or(SystemTime::UNIX_EPOCH, SystemTime::from);
    let nonzero = |v: u64| (v != 0).then_some(v);
    let detail = match (&ev.detail, kind) {
        (Some(pb::event::Detail::Exit(x)), _) => Detail::Exit {
            status: match (x.exit_code, x.signal) {
                (Some(c), _) => ExitStatus::Code(c),
                (None, Some(signal)) => ExitStatus::Signal {
                    signal,
                    core_dumped: x.core_dumped,
                },
                (None, None) => ExitStatus::Unknown,
            },
            pidns_init: x.pidns_init,
        },
        (Some(pb::event::Detail::OomKill(o)), _) => Detail::OomKill(OomKill {
            scope: match pb::OomScope::try_from(o.scope).unwrap_or(pb::OomScope::Unspecified) {
                pb::OomScope::Container => OomScope::Container,
                pb::OomScope::Pod => OomScope::Pod,
                pb::OomScope::Node => OomScope::Node,
                pb::OomScope::Cgroup | pb::OomScope::Unspecified => OomScope::Cgroup,
            },
            limit_cgroup_id: None,
            limit_cgroup: (!o.limit_cgroup.is_empty()).then(|| o.limit_cgroup.clone()),
            limit_bytes: nonzero(o.limit_bytes),
            usage_bytes: nonzero(o.usage_bytes),
            anon_rss_bytes: nonzero(o.victim_anon_rss_bytes),
            file_rss_bytes: nonzero(o.victim_file_rss_bytes),
            shmem_rss_bytes: nonzero(o.victim_shmem_rss_bytes),
            total_vm_bytes: nonzero(o.victim_total_vm_bytes),
            oom_score_adj: Some(o.oom_score_adj),
            invoker_pid: o.invoker_pid,
        }),
        (Some(pb::event::Detail::MemoryPressure(m)), _) => Detail::MemoryPressure(MemoryPressure {
            window_ms: m.window_ms,
            pages_scanned: m.pages_scanned,
            pages_reclaimed: m.pages_reclaimed,
            memcg_reclaims: m.memcg_reclaims,
            direct_reclaims: m.direct_reclaims,
            throttled: m.throttled,
            psi_some_avg10: m.psi_some_avg10,
        }),
        (Some(pb::event::Detail::CgroupChange(c)), Kind::CgroupRemoved) => {
            Detail::CgroupRemoved { level: c.level }
        }
        (Some(pb::event::Detail::CgroupChange(c)), _) => Detail::CgroupCreated { level: c.level },
        (Some(pb::event::Detail::EventsLost(l)), _) => Detail::EventsLost {
            kernel: l.kernel,
            userspace: l.userspace + l.not_replayed,
        },
        (None, _) => return None,
    };
    let cgroup_id = match &ev.detail {
        Some(pb::event::Detail::CgroupChange(c)) => nonzero(c.cgroup_id),
        _ => None,
    };
    Some(Event {
        time,
        kernel_ns: None,
        source: if ev.source == i32::from(pb::Source::Poll) {
            Source::Poll
        } else {
            Source::Bpf
        },
        pid: ev.pid,
        comm: ev.comm.clone(),
        cgroup_id,
        cgroup: ev.cgroup.clone(),
        pod: ev.pod_uid.as_ref().map(|uid| PodRef {
            pod_uid: uid.clone(),
            container_id: ev.container_id.clone(),
        }),
        detail,
    })
}

/// The request for the tracer's filters: kinds, and the cgroup prefix when there is one
/// (several are matched here), namespace, pod and labels.
#[must_use]
pub fn request(args: &TraceArgs) -> pb::WatchRequest {
    pb::WatchRequest {
        kinds: args
            .kinds
            .iter()
            .map(|k| pb::EventKind::from(*k).into())
            .collect(),
        cgroup_prefix: match args.cgroups.as_slice() {
            [one] => one.clone(),
            _ => String::new(),
        },
        namespace: args.namespace.clone().unwrap_or_default(),
        pod_name: args.pod.clone().unwrap_or_default(),
        label_selector: args.selector.clone().unwrap_or_default(),
        since_sequence: args.since,
        run_id: args.run_id.clone().unwrap_or_default(),
    }
}

/// Validates the options that make sense with `--remote`.
pub fn validate(args: &TraceArgs) -> Result<(), TraceError> {
    for prefix in &args.cgroups {
        if !prefix.starts_with('/') {
            return Err(TraceError::RelativePrefix {
                prefix: prefix.clone(),
            });
        }
    }
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        return Err(TraceError::Duration(d));
    }
    // The agent's own source settings apply; refuse the local source's options.
    let local = [
        ("source", args.source != super::SourceChoice::Auto),
        ("pressure-window-ms", args.pressure_window_ms != 100),
        ("wakeup-interval-us", args.wakeup_interval_us != 200),
        ("poll-interval-ms", args.poll_interval_ms != 1000),
        ("summary", args.summary),
    ];
    if let Some((flag, _)) = local.into_iter().find(|(_, set)| *set) {
        return Err(TraceError::NotRemote { flag });
    }
    Ok(())
}

/// Runs the remote tracer until `cancel`, the duration, or the agent ends the stream.
pub async fn run(
    args: TraceArgs,
    socket: PathBuf,
    cancel: CancellationToken,
) -> Result<(), TraceError> {
    validate(&args)?;
    if let Err(e) = std::fs::symlink_metadata(&socket) {
        return Err(TraceError::NoSocket { socket, source: e });
    }
    let mut client = connect(&socket).await?;
    let mut stream = client
        .watch(request(&args))
        .await
        .map_err(|source| TraceError::Watch {
            socket: socket.clone(),
            source: Box::new(source),
        })?
        .into_inner();
    // Subscribed: the agent answered the call once the subscriber was registered.
    tracing::info!(socket = %socket.display(), "tracing (remote)");
    let filter = Filter::new(&args.kinds, &args.cgroups);
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if !args.json {
        writeln!(out, "{}", output::TABLE_HEADER).map_err(TraceError::Output)?;
        out.flush().map_err(TraceError::Output)?;
    }
    let deadline = args
        .duration
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs_f64(secs));
    let sleep = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
    );
    tokio::pin!(sleep);
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = &mut sleep, if deadline.is_some() => return Ok(()),
            msg = stream.message() => msg,
        };
        let pe = match msg {
            Ok(Some(pe)) => pe,
            Ok(None) => return Err(TraceError::StreamEnded { socket }),
            Err(source) => {
                return Err(TraceError::Watch {
                    socket,
                    source: Box::new(source),
                });
            }
        };
        let Some(ev) = from_proto(&pe) else { continue };
        if !filter.matches(&ev) {
            continue;
        }
        let names = (!pe.pod_name.is_empty()).then(|| PodNames {
            namespace: &pe.namespace,
            pod: &pe.pod_name,
            container: &pe.container_name,
        });
        let written: io::Result<()> = (|| {
            if args.json {
                let mut v = output::to_json(&ev);
                if let Some(m) = v.as_object_mut() {
                    if pe.sequence != 0 {
                        m.insert("sequence".into(), pe.sequence.into());
                    }
                    m.insert("run_id".into(), pe.run_id.clone().into());
                    if let Some(pb::event::Detail::EventsLost(l)) = &pe.detail
                        && (l.not_replayed != 0 || l.run_changed)
                    {
                        m.insert("lost_userspace".into(), l.userspace.into());
                        m.insert("lost_not_replayed".into(), l.not_replayed.into());
                        m.insert("run_changed".into(), l.run_changed.into());
                    }
                    if let Some(n) = names {
                        m.insert("namespace".into(), n.namespace.into());
                        m.insert("pod_name".into(), n.pod.into());
                        if !n.container.is_empty() {
                            m.insert("container_name".into(), n.container.into());
                        }
                    }
                }
                serde_json::to_writer(&mut out, &v)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", output::to_row_named(&ev, names))?;
            }
            out.flush()
        })();
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(TraceError::Output(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stream::{PodIdentity, Published};

    fn roundtrip(detail: Detail) -> Event {
        let ev = Event {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            kernel_ns: None,
            source: Source::Bpf,
            pid: 4242,
            comm: "stress".into(),
            cgroup_id: None,
            cgroup: "/kubepods/pod1/abcd".into(),
            pod: Some(PodRef {
                pod_uid: "1".into(),
                container_id: Some("abcd".into()),
            }),
            detail,
        };
        let published = Arc::new(Published {
            sequence: 7,
            event: ev,
            pod: Some(PodIdentity {
                namespace: "ns".into(),
                name: "web".into(),
                uid: "1".into(),
                container_name: Some("main".into()),
                labels: Default::default(),
            }),
        });
        let pe = crate::stream::service::to_proto(&published, "r1");
        assert_eq!((pe.sequence, pe.run_id.as_str()), (7, "r1"));
        assert_eq!((pe.namespace.as_str(), pe.pod_name.as_str()), ("ns", "web"));
        let back = from_proto(&pe).expect("known kind");
        assert_eq!(back, published.event, "the tracer sees what the agent saw");
        back
    }

    #[test]
    fn events_survive_the_stream_as_the_tracer_shows_them() {
        roundtrip(Detail::Exit {
            status: ExitStatus::Code(3),
            pidns_init: true,
        });
        roundtrip(Detail::Exit {
            status: ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            },
            pidns_init: false,
        });
        let oom = roundtrip(Detail::OomKill(OomKill {
            scope: OomScope::Container,
            limit_cgroup_id: None,
            limit_cgroup: Some("/kubepods/pod1/abcd".into()),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(64 << 20),
            anon_rss_bytes: Some(60 << 20),
            file_rss_bytes: Some(1),
            shmem_rss_bytes: Some(2),
            total_vm_bytes: Some(3),
            oom_score_adj: Some(-997),
            invoker_pid: 4242,
        }));
        let row = output::to_row_named(
            &oom,
            Some(PodNames {
                namespace: "ns",
                pod: "web",
                container: "main",
            }),
        );
        assert!(row.contains("pod ns/web ctr main"), "{row}");
        assert!(
            row.contains("oom_kill") && row.contains("limit=64.0MiB"),
            "{row}"
        );
        roundtrip(Detail::MemoryPressure(MemoryPressure {
            window_ms: 100,
            pages_scanned: 5,
            pages_reclaimed: 4,
            memcg_reclaims: 3,
            direct_reclaims: 2,
            throttled: 1,
            psi_some_avg10: None,
        }));
        roundtrip(Detail::CgroupRemoved { level: 4 });
        roundtrip(Detail::EventsLost {
            kernel: 2,
            userspace: 3,
        });
    }

    #[test]
    fn local_source_options_are_refused_with_remote() {
        let args = TraceArgs {
            json: false,
            cgroups: vec![],
            kinds: vec![Kind::OomKill],
            duration: None,
            source: super::super::SourceChoice::Auto,
            pressure_window_ms: 100,
            wakeup_interval_us: 200,
            poll_interval_ms: 1000,
            summary: false,
            remote: Some(DEFAULT_SOCKET.into()),
            namespace: Some("ns".into()),
            pod: None,
            selector: Some("app=web".into()),
            since: Some(5),
            run_id: None,
        };
        validate(&args).expect("defaults are fine");
        let req = request(&args);
        assert_eq!(req.kinds, vec![i32::from(pb::EventKind::OomKill)]);
        assert_eq!(
            (req.namespace.as_str(), req.label_selector.as_str()),
            ("ns", "app=web")
        );
        let err = validate(&TraceArgs {
            source: super::super::SourceChoice::Bpf,
            ..args.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--source"), "{err}");
        assert_eq!(err.exit_code(), 64);
    }
}
