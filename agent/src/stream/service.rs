//! `bpflet.v1.EventService` on a unix socket: `Watch` (the filtered stream, with resume)
//! and `Timeline`, beside `grpc.health.v1.Health` and server reflection (`grpc.reflection.v1`
//! and `v1alpha`, over the descriptors of both), so that
//! `grpcurl -plaintext -unix <socket> list` names the services and `describe` their
//! messages without a copy of the .proto files.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bpflet_proto::v1 as pb;
use futures::Stream;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use super::{Hub, Item, Published, Resume, WatchFilter};
use crate::events::{Detail, Event, ExitStatus, Kind, OomScope, Source};
use crate::trace::output::rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("event stream socket {}: another process serves it (another bpflet agent?)", path.display())]
    InUse { path: PathBuf },
    #[error("event stream socket {}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("event stream socket {}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("event stream socket {}: cannot give it to group id {gid}", path.display())]
    Chown {
        path: PathBuf,
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot build the reflection service from the compiled descriptors")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("event stream on {}", path.display())]
    Serve {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Mode of the socket without a group: root only.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket with `eventStreamGroup`.
pub const GROUP_SOCKET_MODE: u32 = 0o660;

/// Binds `path`: replaces a stale socket file (nobody accepts on it), refuses a live one or
/// any other file, then sets the mode (0600, or 0660 with `group`).
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, StreamError> {
    let io = |action: &'static str| {
        move |source| StreamError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(StreamError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing a stale event stream socket");
                    std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
                }
                Err(e) => return Err(io("probe the existing socket")(e)),
            }
        }
        Ok(_) => {
            return Err(StreamError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat")(e)),
    }
    // A new socket's mode is 0777 less the umask; connecting needs write permission, which
    // the usual umask (022) leaves to the owner alone until the chmod below.
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(
            |source| StreamError::Chown {
                path: path.to_owned(),
                gid,
                source,
            },
        )?;
    }
    let mode = if group.is_some() {
        GROUP_SOCKET_MODE
    } else {
        SOCKET_MODE
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    Ok(listener)
}

/// Serves the event stream, health and reflection on `listener` until `cancel` fires; removes the
/// socket file then.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    hub: Hub,
    cancel: CancellationToken,
) -> Result<(), StreamError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::event_service_server::EventServiceServer<EventService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(bpflet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_file(&path);
                return Err(StreamError::Reflection(e));
            }
        };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::event_service_server::EventServiceServer::new(
            EventService { hub },
        ))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await;
    let _ = std::fs::remove_file(&path);
    result.map_err(|source| StreamError::Serve { path, source })
}

/// The `EventService` implementation over a [`Hub`].
#[derive(Clone, Debug)]
pub struct EventService {
    pub hub: Hub,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The filter a `WatchRequest` asks for; a bad field is `INVALID_ARGUMENT` naming it.
pub fn filter_of(req: &pb::WatchRequest) -> Result<WatchFilter, Status> {
    let mut kinds = Vec::new();
    for &k in &req.kinds {
        let kind = pb::EventKind::try_from(k)
            .ok()
            .and_then(Kind::from_proto)
            .ok_or_else(|| Status::invalid_argument(format!("kinds: unknown event kind {k}")))?;
        kinds.push(kind);
    }
    if !req.cgroup_prefix.is_empty() && !req.cgroup_prefix.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "cgroup_prefix {:?}: must be an absolute path under the cgroup mount, like /kubepods",
            req.cgroup_prefix
        )));
    }
    WatchFilter::new(
        &kinds,
        &req.cgroup_prefix,
        &req.namespace,
        &req.pod_name,
        &req.label_selector,
    )
    .map_err(|e| Status::invalid_argument(format!("label_selector: {e}")))
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        let filter = filter_of(&req)?;
        let resume = req.since_sequence.map(|since| Resume {
            since,
            run_id: (!req.run_id.is_empty()).then(|| req.run_id.clone()),
        });
        debug!(?filter, ?resume, "Watch");
        let sub = self.hub.subscribe(filter, resume.as_ref());
        let run_id = self.hub.run_id().to_owned();
        let stream = futures::stream::unfold((sub, run_id), |(mut sub, run_id)| async move {
            let item = sub.next().await?;
            let ev = to_proto_item(&item, &run_id);
            Some((Ok(ev), (sub, run_id)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn timeline(
        &self,
        request: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineResponse>, Status> {
        let req = request.into_inner();
        let Some(uid) = self.hub.pods().find(&req.namespace, &req.pod_name) else {
            return Err(Status::not_found(format!(
                "pod {}/{}: not running on this node",
                req.namespace, req.pod_name
            )));
        };
        let (entries, dropped) = self.hub.timeline(&uid).unwrap_or_default();
        let run_id = self.hub.run_id();
        Ok(Response::new(pb::TimelineResponse {
            pod_uid: uid,
            events: entries.iter().map(|p| to_proto(p, run_id)).collect(),
            dropped,
        }))
    }
}

/// A subscriber's item as a proto event.
#[must_use]
pub fn to_proto_item(item: &Item, run_id: &str) -> pb::Event {
    match item {
        Item::Event(p) => to_proto(p, run_id),
        Item::Missed {
            dropped,
            not_replayed,
            run_changed,
        } => {
            let ev = super::missed_event(*dropped);
            let mut out = to_proto(
                &Published {
                    sequence: 0,
                    event: ev,
                    pod: None,
                },
                run_id,
            );
            out.detail = Some(pb::event::Detail::EventsLost(pb::EventsLost {
                kernel: 0,
                userspace: *dropped,
                not_replayed: *not_replayed,
                run_changed: *run_changed,
            }));
            out
        }
    }
}

fn pb_scope(s: OomScope) -> pb::OomScope {
    match s {
        OomScope::Container => pb::OomScope::Container,
        OomScope::Pod => pb::OomScope::Pod,
        OomScope::Node => pb::OomScope::Node,
        OomScope::Cgroup => pb::OomScope::Cgroup,
    }
}

/// A stream event as the proto `Event`.
#[must_use]
pub fn to_proto(p: &Published, run_id: &str) -> pb::Event {
    let ev: &Event = &p.event;
    let detail = match &ev.detail {
        Detail::Exit { status, pidns_init } => pb::event::Detail::Exit(pb::Exit {
            exit_code: status.code(),
            signal: status.signal(),
            core_dumped: matches!(
                status,
                ExitStatus::Signal {
                    core_dumped: true,
                    ..
                }
            ),
            pidns_init: *pidns_init,
        }),
        Detail::OomKill(o) => pb::event::Detail::OomKill(pb::OomKill {
            scope: pb_scope(o.scope).into(),
            limit_cgroup: o.limit_cgroup.clone().unwrap_or_default(),
            limit_bytes: o.limit_bytes.unwrap_or(0),
            usage_bytes: o.usage_bytes.unwrap_or(0),
            victim_anon_rss_bytes: o.anon_rss_bytes.unwrap_or(0),
            victim_file_rss_bytes: o.file_rss_bytes.unwrap_or(0),
            victim_shmem_rss_bytes: o.shmem_rss_bytes.unwrap_or(0),
            victim_total_vm_bytes: o.total_vm_bytes.unwrap_or(0),
            oom_score_adj: o.oom_score_adj.unwrap_or(0),
            invoker_pid: o.invoker_pid,
        }),
        Detail::MemoryPressure(m) => pb::event::Detail::MemoryPressure(pb::MemoryPressure {
            window_ms: m.window_ms,
            pages_scanned: m.pages_scanned,
            pages_reclaimed: m.pages_reclaimed,
            memcg_reclaims: m.memcg_reclaims,
            direct_reclaims: m.direct_reclaims,
            throttled: m.throttled,
            psi_some_avg10: m.psi_some_avg10,
        }),
        Detail::CgroupCreated { level } | Detail::CgroupRemoved { level } => {
            pb::event::Detail::CgroupChange(pb::CgroupChange {
                cgroup_id: ev.cgroup_id.unwrap_or(0),
                level: *level,
            })
        }
        Detail::EventsLost { kernel, userspace } => pb::event::Detail::EventsLost(pb::EventsLost {
            kernel: *kernel,
            userspace: *userspace,
            not_replayed: 0,
            run_changed: false,
        }),
    };
    let pod = p.pod.as_ref();
    pb::Event {
        ts: rfc3339(ev.time),
        kind: pb::EventKind::from(ev.kind()).into(),
        source: match ev.source {
            Source::Bpf => pb::Source::Bpf,
            Source::Poll => pb::Source::Poll,
        }
        .into(),
        pid: ev.pid,
        comm: ev.comm.clone(),
        cgroup: ev.cgroup.clone(),
        pod_uid: ev.pod.as_ref().map(|r| r.pod_uid.clone()),
        container_id: ev.pod.as_ref().and_then(|r| r.container_id.clone()),
        detail: Some(detail),
        sequence: p.sequence,
        run_id: run_id.to_owned(),
        namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
        pod_name: pod.map(|p| p.name.clone()).unwrap_or_default(),
        container_name: pod
            .and_then(|p| p.container_name.clone())
            .unwrap_or_default(),
    }
}
