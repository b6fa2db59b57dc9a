//! `bpflet observe`: the kernel's account of the node's containers beside any kubelet,
//! without running a pod.
//!
//! The observer loads the same event source as the agent (BPF, or the polling fallback as
//! `--event-source` says) on the kubelet's pod cgroups (`<cgroup root>/kubepods` with the
//! cgroupfs driver, `kubepods.slice` with the systemd one), names each event's pod and
//! container through the runtime (a read-only [`RuntimeView`]: CRI `ListPodSandbox` and
//! `ListContainers`, relisted when a container's cgroup appears or an event names a
//! container not listed yet, and every `--relist-period` otherwise) and the cgroup naming
//! of [`crate::cgroups::naming`], and turns OOM kills and memory pressure into
//! - Prometheus metrics on `--metrics-bind-address` (`/metrics`, [`metrics`]);
//! - the gRPC event stream (`bpflet.v1.EventService` on `--event-stream-socket`, the
//!   agent's [`crate::stream`] as it is: `bpflet trace --remote SOCKET` reads it);
//! - with `--kubeconfig` (or `--in-cluster`), Kubernetes Events `OOMKilling` on the
//!   involved pod, through the agent's event sink (`cluster::events`: queue, per-object
//!   rate limit, repeats patched).
//!
//! It never creates, starts, stops, removes or changes a sandbox, container or cgroup: it
//! only ever holds a [`RuntimeView`], and it writes nothing under the cgroup mount.
//!
//! What it needs from the host (for a DaemonSet; paths are the defaults):
//! - the CRI socket (`--container-runtime-endpoint`, `/run/containerd/containerd.sock`),
//!   connected to for list calls only (a read-only mount of the socket is enough);
//! - the host's cgroup hierarchy at `/sys/fs/cgroup` (read-only): the host's mount, not a
//!   cgroup namespace's view, since cgroup ids are resolved to paths by walking it and
//!   paths name pods (hostPath `/sys/fs/cgroup` onto `/sys/fs/cgroup`);
//! - BPF (the default `--event-source auto`): CAP_BPF and CAP_PERFMON (raw tracepoints,
//!   kernel reads), `/sys/kernel/btf/vmlinux` readable; nothing else of the host;
//! - the polling fallback (`--event-source poll`, or `auto` without BPF): `/dev/kmsg`
//!   (the device, and CAP_SYSLOG when `kernel.dmesg_restrict` is 1) for OOM kills, the
//!   host's `/proc` (`hostPID`) for node pressure and process names;
//! - `--event-stream-socket` (`/run/bpflet/events.sock`): a writable directory for the
//!   socket (hostPath `/run/bpflet` to reach it from the host; `off` to serve none);
//! - `--metrics-bind-address` (`127.0.0.1:9810`): in a pod without host networking, bind
//!   `0.0.0.0:9810` for Prometheus to scrape it;
//! - Events: `--kubeconfig` with a node's credentials, or `--in-cluster` with a service
//!   account allowed to `create` and `patch` `events` (core) in the pods' namespaces; the
//!   node name (`--node-name`, `$NODE_NAME` from the downward API) names the reporter.

pub mod directory;
pub mod metrics;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cgroups::{Attributor, CgroupError, Hierarchy};
use crate::events::source::{self, SourceChoice, SourceSpec};
use crate::events::{Detail, Event, Source};
use crate::pleg::facts::OomRecord;
use crate::record::{EventType, Recorder};
use crate::runtime::{ContainerRuntime, CriRuntime, RuntimeError};
use crate::stream::{Hub, HubLimits, PodDirectory, StreamMetrics};
pub use directory::{RuntimeDirectory, Snapshot};
pub use metrics::{ObserverMetrics, Who};
pub use view::RuntimeView;

/// The kubelet's default CRI socket (containerd's).
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
/// The metrics listener unless `--metrics-bind-address` says otherwise.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9810";
/// The reason of the Events on pods whose process was OOM-killed (node-problem-detector's
/// word for the kernel's OOM kill).
pub const OOM_EVENT_REASON: &str = "OOMKilling";

/// Options of `bpflet observe`.
#[derive(Clone, Debug, clap::Args)]
pub struct ObserveArgs {
    /// The CRI socket (`unix://` path), listed read-only.
    #[arg(long, value_name = "ENDPOINT", default_value = DEFAULT_RUNTIME_ENDPOINT)]
    pub container_runtime_endpoint: String,
    /// The kubelet's cgroupRoot: pods are watched below `<ROOT>/kubepods` (cgroupfs
    /// driver) and `<ROOT>/kubepods.slice` (systemd driver), whichever exist.
    #[arg(long, value_name = "ROOT", default_value = "/")]
    pub cgroup_root: String,
    /// Event source: bpf, poll (degraded fallback), or auto (bpf, else poll with a warning).
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub event_source: SourceChoice,
    /// Where `/metrics` and `/healthz` are served (HTTP).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_METRICS_ADDRESS)]
    pub metrics_bind_address: SocketAddr,
    /// The event stream's unix socket (`bpflet.v1.EventService`, mode 0600), or `off`.
    #[arg(long, value_name = "PATH", default_value = crate::config::event_stream::DEFAULT_SOCKET)]
    pub event_stream_socket: String,
    /// A kubeconfig: OOM kills become Events on the involved pod.
    #[arg(long, value_name = "PATH", conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Post Events with the pod's service account (in-cluster configuration).
    #[arg(long)]
    pub in_cluster: bool,
    /// The node's name, as Events report it (default: the host name).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// How often the runtime is listed when no cgroup event asks for it, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub relist_period: u64,
    /// Agent flags that do not apply to an observer: refused by name.
    #[arg(long = "config", hide = true, value_name = "PATH")]
    pub refused_config: Option<String>,
    #[arg(long = "root-dir", hide = true, value_name = "PATH")]
    pub refused_root_dir: Option<String>,
    #[arg(long = "pod-manifest-path", hide = true, value_name = "PATH")]
    pub refused_pod_manifest_path: Option<String>,
    #[arg(long = "manifest-url", hide = true, value_name = "URL")]
    pub refused_manifest_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("--{flag}: {reason}")]
    Refused {
        flag: &'static str,
        reason: &'static str,
    },
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot find the memory cgroup hierarchy")]
    Hierarchy(#[source] CgroupError),
    #[error(
        "--cgroup-root {root}: no kubepods cgroup below it ({looked}); is a kubelet running with cgroupsPerQOS, with this cgroupRoot?"
    )]
    NoPods { root: String, looked: String },
    #[error("container runtime at {endpoint} is not answering")]
    Runtime {
        endpoint: String,
        #[source]
        source: RuntimeError,
    },
    #[error("cannot start the event source ({})", choice.as_str())]
    Source {
        choice: SourceChoice,
        #[source]
        source: source::SourceError,
    },
    #[error("metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("metrics listener")]
    Server(#[source] crate::server::ServerError),
    #[error("event stream")]
    Stream(#[source] crate::stream::service::StreamError),
    #[error("Kubernetes client")]
    Cluster(#[source] crate::cluster::ClusterError),
    #[error("--in-cluster: not running in a pod with a service account")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("--in-cluster: cannot build an API client")]
    InClusterClient(#[source] kube::Error),
}

impl ObserveError {
    /// Usage errors exit 64 (EX_USAGE); failures at run time exit 1.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } | Self::Invalid { .. } => 64,
            _ => 1,
        }
    }
}

/// The flags' settings, checked before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    socket: PathBuf,
    cgroup_root: String,
    event_socket: Option<PathBuf>,
    relist_period: Duration,
    node_name: String,
}

fn validate(args: &ObserveArgs) -> Result<Settings, ObserveError> {
    let refused = [
        (
            "config",
            args.refused_config.is_some(),
            "the observer takes flags only; a KubeletConfiguration configures the node agent",
        ),
        (
            "root-dir",
            args.refused_root_dir.is_some(),
            "the observer runs no pods and keeps no state on the node",
        ),
        (
            "pod-manifest-path",
            args.refused_pod_manifest_path.is_some(),
            "the observer runs no pods (static pods are the kubelet's)",
        ),
        (
            "manifest-url",
            args.refused_manifest_url.is_some(),
            "the observer runs no pods (static pods are the kubelet's)",
        ),
    ];
    if let Some((flag, _, reason)) = refused.into_iter().find(|(_, set, _)| *set) {
        return Err(ObserveError::Refused { flag, reason });
    }
    let socket = args
        .container_runtime_endpoint
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ObserveError::Invalid {
            flag: "container-runtime-endpoint",
            value: args.container_runtime_endpoint.clone(),
            reason: "must be unix:// followed by an absolute path",
        })?;
    if !args.cgroup_root.starts_with('/') {
        return Err(ObserveError::Invalid {
            flag: "cgroup-root",
            value: args.cgroup_root.clone(),
            reason: "must be an absolute cgroup path, like / or /kubelet",
        });
    }
    let event_socket = match args.event_stream_socket.as_str() {
        "off" => None,
        p if p.starts_with('/') => Some(PathBuf::from(p)),
        _ => {
            return Err(ObserveError::Invalid {
                flag: "event-stream-socket",
                value: args.event_stream_socket.clone(),
                reason: "must be an absolute path or off",
            });
        }
    };
    if args.relist_period == 0 {
        return Err(ObserveError::Invalid {
            flag: "relist-period",
            value: "0".to_owned(),
            reason: "must be at least 1 (seconds)",
        });
    }
    let node_name = match &args.node_name {
        Some(n) if n.is_empty() => {
            return Err(ObserveError::Invalid {
                flag: "node-name",
                value: String::new(),
                reason: "must not be empty",
            });
        }
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    Ok(Settings {
        socket: PathBuf::from(socket),
        cgroup_root: args.cgroup_root.trim_end_matches('/').to_owned(),
        event_socket,
        relist_period: Duration::from_secs(args.relist_period),
        node_name,
    })
}

/// The kubepods subtrees below `root` (`""` for the hierarchy's root) that exist.
fn pod_roots(hierarchy: &Hierarchy, root: &str) -> Vec<String> {
    ["kubepods", "kubepods.slice"]
        .iter()
        .map(|name| format!("{root}/{name}"))
        .filter(|rel| hierarchy.path_of(rel).is_dir())
        .collect()
}

/// The Event message of an OOM kill: the process, the container and the limit hit (with
/// the agent's wording, [`OomRecord::describe`]).
#[must_use]
pub fn oom_message(ev: &Event, container: &str, kubepods: &str) -> Option<String> {
    let Detail::OomKill(oom) = &ev.detail else {
        return None;
    };
    let record = OomRecord {
        at: jiff::Timestamp::try_from(ev.time).unwrap_or_else(|_| jiff::Timestamp::now()),
        pid: ev.pid,
        comm: ev.comm.clone(),
        scope: oom.scope,
        limit_cgroup: oom.limit_cgroup.clone(),
        limit_bytes: oom.limit_bytes,
        usage_bytes: oom.usage_bytes,
        anon_rss_bytes: oom.anon_rss_bytes,
        oom_score_adj: oom.oom_score_adj,
    };
    Some(record.describe(container, kubepods))
}

/// The pod an event is about, as the metrics and Events name it; empty outside pods.
fn identify(directory: &RuntimeDirectory, ev: &Event) -> (Who, Option<ObjectReference>) {
    let Some(pod) = &ev.pod else {
        return (Who::default(), None);
    };
    let identity = directory.lookup(&pod.pod_uid, pod.container_id.as_deref());
    let Some(identity) = identity else {
        // Not (or no longer) listed by the runtime: the UID alone.
        return (
            Who {
                uid: pod.pod_uid.clone(),
                pod: pod.pod_uid.clone(),
                ..Who::default()
            },
            None,
        );
    };
    let reference = ObjectReference {
        kind: Some("Pod".to_owned()),
        api_version: Some("v1".to_owned()),
        name: Some(identity.name.clone()),
        namespace: Some(identity.namespace.clone()),
        uid: Some(identity.uid.clone()),
        ..ObjectReference::default()
    };
    let container = match (&pod.container_id, identity.container_name) {
        (_, Some(name)) => name,
        (Some(id), None) => id[..id.len().min(12)].to_owned(),
        (None, None) => String::new(),
    };
    (
        Who {
            uid: identity.uid,
            namespace: identity.namespace,
            pod: identity.name,
            container,
        },
        Some(reference),
    )
}

/// Relists the runtime into `directory`; drops the metrics of pods not listed.
async fn relist<R: ContainerRuntime>(
    view: &RuntimeView<R>,
    directory: &RuntimeDirectory,
    metrics: &ObserverMetrics,
) {
    let listed = async {
        let sandboxes = view.list_pod_sandboxes().await?;
        let containers = view.list_containers().await?;
        Ok::<_, RuntimeError>(Snapshot::from_listing(&sandboxes, &containers))
    };
    match listed.await {
        Ok(snapshot) => {
            // Series of pods not listed (gone, or never listed: counted under their UID).
            let listed = snapshot.uids();
            let stale: Vec<String> = metrics
                .pods()
                .into_iter()
                .filter(|uid| !uid.is_empty() && !listed.contains(uid.as_str()))
                .collect();
            if !stale.is_empty() {
                metrics.forget_pods(&stale);
            }
            directory.replace(snapshot);
        }
        Err(e) => warn!(error = %e, "cannot list the runtime's pods; names may lag"),
    }
}

/// The smallest pause between two relists an event asks for.
const RELIST_MIN_GAP: Duration = Duration::from_millis(200);

/// What the loop does with each event, apart from the I/O.
struct Observer<R> {
    view: RuntimeView<R>,
    directory: RuntimeDirectory,
    metrics: ObserverMetrics,
    attributor: Attributor,
    hub: Hub,
    recorder: Option<Recorder>,
    /// The first watched root, for the messages' "node allocatable" wording.
    kubepods: String,
    last_relist: Instant,
}

impl<R: ContainerRuntime> Observer<R> {
    async fn relist(&mut self) {
        relist(&self.view, &self.directory, &self.metrics).await;
        self.last_relist = Instant::now();
    }

    /// Handles one event; returns whether a relist is due soon (a new container cgroup).
    async fn handle(&mut self, mut ev: Event) -> bool {
        if let Detail::EventsLost { kernel, userspace } = ev.detail {
            self.metrics
                .events_lost
                .with_label_values(&["kernel"])
                .inc_by(kernel);
            self.metrics
                .events_lost
                .with_label_values(&["userspace"])
                .inc_by(userspace);
            self.hub.publish(ev);
            return false;
        }
        self.attributor.attribute(&mut ev);
        let unknown = ev
            .pod
            .as_ref()
            .is_some_and(|p| !self.directory.knows(&p.pod_uid, p.container_id.as_deref()));
        let mut soon = false;
        match &ev.detail {
            // Named now: a kill in a container created since the last listing. (Pressure
            // comes in bursts; its names follow the relist its cgroup's creation asked for.)
            Detail::OomKill(_) if unknown && self.last_relist.elapsed() >= RELIST_MIN_GAP => {
                self.relist().await;
            }
            Detail::CgroupCreated { .. } if unknown => soon = true,
            _ => {}
        }
        let (who, reference) = identify(&self.directory, &ev);
        match &ev.detail {
            Detail::OomKill(oom) => {
                self.metrics
                    .oom_kill(&who, oom.scope, oom.limit_bytes, &ev.comm);
                if let Some(message) = oom_message(&ev, &who.container, &self.kubepods) {
                    info!(namespace = %who.namespace, pod = %who.pod, container = %who.container, %message, "OOM kill");
                    if let (Some(recorder), Some(reference)) = (&self.recorder, &reference) {
                        recorder.record(reference, EventType::Warning, OOM_EVENT_REASON, &message);
                    }
                }
            }
            Detail::MemoryPressure(_) => self.metrics.pressure(&who, Instant::now()),
            _ => {}
        }
        self.hub.publish(ev);
        soon
    }
}

/// The kube client for Events, when asked for.
async fn kube_client(args: &ObserveArgs) -> Result<Option<kube::Client>, ObserveError> {
    if let Some(path) = &args.kubeconfig {
        let cluster = crate::config::ClusterConfig {
            kubeconfig: path.clone(),
            node_labels: std::collections::BTreeMap::new(),
            register_with_taints: Vec::new(),
            node_status_update_frequency: Duration::from_secs(10),
            node_status_report_frequency: Duration::from_secs(300),
            node_lease_duration: Duration::from_secs(40),
            kube_api_qps: 50,
            kube_api_burst: 100,
            // The observer never touches the Node.
            register_node: false,
        };
        return crate::cluster::connect(&cluster)
            .await
            .map(Some)
            .map_err(ObserveError::Cluster);
    }
    if args.in_cluster {
        let config = kube::Config::incluster().map_err(ObserveError::InCluster)?;
        let builder =
            kube::client::ClientBuilder::try_from(config).map_err(ObserveError::InClusterClient)?;
        let limit = crate::cluster::ratelimit::RateLimitLayer::new(50, 100);
        return Ok(Some(builder.with_layer(&limit).build()));
    }
    Ok(None)
}

/// `/metrics` and `/healthz`.
fn router(metrics: ObserverMetrics) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Runs the observer until `cancel` fires.
///
/// # Errors
/// [`ObserveError`] naming the flag or the step that failed.
pub async fn run(args: ObserveArgs, cancel: CancellationToken) -> Result<(), ObserveError> {
    let settings = validate(&args)?;
    let proc_root = PathBuf::from("/proc");
    let hierarchy = Hierarchy::detect(&proc_root).map_err(ObserveError::Hierarchy)?;
    let roots = pod_roots(&hierarchy, &settings.cgroup_root);
    if roots.is_empty() {
        return Err(ObserveError::NoPods {
            root: args.cgroup_root.clone(),
            looked: ["kubepods", "kubepods.slice"]
                .iter()
                .map(|n| {
                    hierarchy
                        .path_of(&format!("{}/{n}", settings.cgroup_root))
                        .display()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let tracker = TaskTracker::new();

    // The runtime, read-only.
    let view = RuntimeView::new(CriRuntime::new(&settings.socket));
    let version = view
        .version()
        .await
        .map_err(|source| ObserveError::Runtime {
            endpoint: args.container_runtime_endpoint.clone(),
            source,
        })?;
    info!(runtime = %format!("{} {}", version.runtime_name, version.runtime_version), endpoint = %args.container_runtime_endpoint, "container runtime (read-only)");

    let metrics = ObserverMetrics::new().map_err(ObserveError::Metrics)?;
    let directory = RuntimeDirectory::default();
    relist(&view, &directory, &metrics).await;

    // The event stream, bound before the kernel is asked for anything.
    let stream_metrics = StreamMetrics::new().map_err(ObserveError::Metrics)?;
    stream_metrics
        .register(&metrics.registry)
        .map_err(ObserveError::Metrics)?;
    let hub = Hub::new(
        HubLimits::default(),
        Arc::new(directory.clone()) as Arc<dyn PodDirectory>,
        stream_metrics,
    );
    if let Some(path) = &settings.event_socket {
        let listener = crate::stream::service::bind(path, None).map_err(ObserveError::Stream)?;
        info!(socket = %path.display(), run_id = hub.run_id(), "event stream (bpflet.v1.EventService)");
        let (hub, path, cancel) = (hub.clone(), path.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = crate::stream::service::serve(listener, path, hub, cancel).await {
                warn!(error = %e, cause = %crate::error::error_chain(&e), "event stream stopped");
            }
        });
    }
    let listener = crate::server::bind(args.metrics_bind_address)
        .await
        .map_err(ObserveError::Server)?;
    info!(addr = %args.metrics_bind_address, "metrics: /metrics, /healthz");
    {
        let (router, cancel) = (router(metrics.clone()), cancel.clone());
        tracker.spawn(async move {
            let limits = crate::server::ConnectionLimits::default();
            if let Err(e) = crate::server::serve(listener, router, limits, cancel).await {
                warn!(error = %e, "metrics listener stopped");
            }
        });
    }

    let recorder = match kube_client(&args).await? {
        Some(client) => {
            let (sink, writer) = crate::cluster::events::api_events(client);
            tracker.spawn(writer.run(cancel.clone()));
            info!(node = %settings.node_name, "OOM kills become Events on their pods");
            Some(Recorder::new(&settings.node_name).with_sink(Arc::new(sink)))
        }
        None => None,
    };

    // The kernel.
    let (tx, mut rx) = mpsc::channel(16 * 1024);
    let spec = SourceSpec {
        hierarchy: hierarchy.clone(),
        roots: roots.clone(),
        watch_all: false,
        pressure_window: Duration::from_millis(100),
        wakeup_interval: Duration::from_millis(1),
        poll_interval: crate::events::poll::PollConfig::DEFAULT_INTERVAL,
        proc_root,
    };
    let choice = args.event_source;
    let running = source::start(choice, &spec, tx, &cancel, &tracker)
        .map_err(|source| ObserveError::Source { choice, source })?;
    if running.source == Source::Poll {
        warn!(
            reason = running.fallback_reason.as_deref().unwrap_or_default(),
            "kernel events come from the polling fallback: DEGRADED (OOM kills from /dev/kmsg, pressure from memory-cgroup counters, up to 1s late)"
        );
    }
    let mut attributor = Attributor::new(hierarchy);
    for root in &roots {
        if let Err(e) = attributor.index_subtree(root) {
            warn!(root, error = %e, "cannot index the pod cgroups");
        }
    }
    info!(source = ?running.source, roots = ?roots, node = %settings.node_name, "observing");

    let mut observer = Observer {
        view,
        directory,
        metrics,
        attributor,
        hub,
        recorder,
        kubepods: roots[0].clone(),
        last_relist: Instant::now(),
    };
    let mut periodic = tokio::time::interval(settings.relist_period);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let due_at = due.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = periodic.tick() => observer.relist().await,
            () = tokio::time::sleep_until(due_at), if due.is_some() => {
                due = None;
                observer.relist().await;
            }
            ev = rx.recv() => match ev {
                Some(ev) => {
                    if observer.handle(ev).await && due.is_none() {
                        due = Some(tokio::time::Instant::now() + RELIST_MIN_GAP);
                    }
                }
                None => break,
            },
        }
    }
    cancel.cancel();
    drop(running);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests;
