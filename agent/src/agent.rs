//! The node agent: wires configuration, cgroups, the container runtime, kernel events, the
//! PLEG, pod sources, pod workers and the local API together, and runs them until
//! cancelled. Cancelling (SIGTERM) stops bpflet and leaves every pod running.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cgroups::driver::CgroupDriver;
use crate::cgroups::tree::{self, QosTree};
use crate::cgroups::{Attributor, CgroupError, Hierarchy};
use crate::config::{Config, PlegMode};
use crate::events::Source;
use crate::events::poll::PollConfig;
use crate::events::source::{self, SourceChoice, SourceSpec};
use crate::eviction::{self, EvictionIo, EvictionManager, Observer, SignalRoots, StorePods};
use crate::health::HealthState;
use crate::metrics::Metrics;
use crate::pleg::facts::KernelFacts;
use crate::pleg::router::KernelRouter;
use crate::pleg::{Pleg, PlegHealth};
use crate::pods::cri_config::{DnsSettings, NodeAllocatable, ResolvConf};
use crate::pods::manager::PodManager;
use crate::pods::source::{FileSource, HttpSource, SourceKind};
use crate::pods::worker::{
    AdmissionPolicy, NodeInfo, Outputs, PodContext, PodHost, Signals, SyncTiming,
};
use crate::record::Recorder;
use crate::runtime::{ContainerRuntime, CriRuntime, RuntimeError};
use crate::server;
use crate::status::manager::StatusManager;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the node's cgroups")]
    Hierarchy(#[source] CgroupError),
    #[error("cannot set up the pod cgroup tree under {root}")]
    CgroupTree {
        root: String,
        #[source]
        source: CgroupError,
    },
    #[error("container runtime at {endpoint} is not answering")]
    Runtime {
        endpoint: PathBuf,
        #[source]
        source: RuntimeError,
    },
    #[error("cannot create {path}")]
    RootDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the node's memory is unknown: no MemTotal could be read from {path}")]
    NodeMemoryUnknown { path: PathBuf },
    #[error("metrics")]
    Metrics(#[source] crate::metrics::MetricsError),
    #[error("local API")]
    Server(#[source] server::ServerError),
    #[error("cluster mode")]
    Cluster(#[source] crate::cluster::ClusterError),
    #[error("the HTTPS API's TLS")]
    Tls(#[source] server::tls::TlsError),
    #[error("event stream")]
    EventStream(#[source] crate::stream::service::StreamError),
    #[error(
        "eventSource: {}: the kernel event source cannot start{}",
        choice.as_str(),
        if *choice == SourceChoice::Bpf { " (eventSource: auto would fall back to polling)" } else { "" }
    )]
    EventSource {
        choice: SourceChoice,
        #[source]
        source: source::SourceError,
    },
}

/// Runs the agent until `cancel` fires.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), AgentError> {
    let proc_root = PathBuf::from("/proc");
    let tracker = TaskTracker::new();
    protect_from_oom_killer(&proc_root);
    raise_open_files_limit(&proc_root);
    // The node as the configuration was checked against it: no second read that could
    // disagree.
    let capacity = tree::NodeCapacity::from_facts(&config.node).ok_or_else(|| {
        AgentError::NodeMemoryUnknown {
            path: proc_root.join("meminfo"),
        }
    })?;
    let memory = capacity.memory_bytes;

    let pods_dir = setup_data_dirs(&config.root_dir)?;
    // Everything this agent creates in the runtime carries its mark, and only what carries
    // it is adopted, cleaned up, collected or rotated: the runtime may be shared.
    let mark = crate::pods::labels::AgentMark::for_root_dir(&config.root_dir);
    info!(
        label = crate::pods::labels::AGENT_LABEL,
        value = mark.value(),
        "sandboxes and containers of this agent"
    );
    // The HTTPS API's certificate and client CAs, before anything touches the node.
    let tls = server::tls::TlsServing::new(
        &config.server.tls,
        config.server.auth.client_ca_file.as_deref(),
        &config.node_name,
        &config.node_ips,
    )
    .map_err(AgentError::Tls)?;

    // cgroups: the QoS tree under the configured root.
    let hierarchy = Hierarchy::detect(&proc_root).map_err(AgentError::Hierarchy)?;
    let cgroup_root = config.cgroups.root.to_string_lossy().into_owned();
    let driver = CgroupDriver::for_hierarchy(&hierarchy);
    let tree = QosTree::from_config(driver, &config, &capacity).map_err(|source| {
        AgentError::CgroupTree {
            root: cgroup_root.clone(),
            source,
        }
    })?;
    tree.ensure().map_err(|source| AgentError::CgroupTree {
        root: cgroup_root.clone(),
        source,
    })?;
    let kubepods = tree.kubepods();
    info!(root = %cgroup_root, kubepods = %kubepods, "pod cgroup tree ready");

    // Cluster mode: the API server's client (nothing is asked of it yet).
    let client = match &config.cluster {
        Some(cluster) => Some(
            crate::cluster::connect(cluster)
                .await
                .map_err(AgentError::Cluster)?,
        ),
        None => None,
    };
    // Events about pods and the node; the local API serves them on `/events`, and in
    // cluster mode they are posted to the API server.
    let mut recorder = Recorder::new(&config.node_name);
    // Pod status: workers publish through the status manager to the local pod list, which
    // the local API and eviction read, and in cluster mode to the API server.
    let (pod_list_sink, published) = crate::status::manager::pod_list();
    let mut status_sinks = vec![pod_list_sink];
    let mut api_statuses = None;
    if let Some(client) = &client {
        let (sink, writer) =
            crate::cluster::status::api_status(client.clone(), config.node_name.clone());
        api_statuses = Some(sink.clone());
        status_sinks.push(Arc::new(sink));
        tracker.spawn(writer.run(cancel.clone()));
        let (sink, writer) = crate::cluster::events::api_events(client.clone());
        recorder = recorder.with_sink(Arc::new(sink));
        tracker.spawn(writer.run(cancel.clone()));
    }
    let statuses = StatusManager::new(status_sinks);
    let metrics = Metrics::new().map_err(AgentError::Metrics)?;
    let health_checks = HealthState::default();
    // The node's pressure conditions, published once the eviction manager runs.
    let (conditions_tx, conditions_rx) = watch::channel(Vec::new());
    let (publish_conditions, node_conditions) =
        crate::status::node::publish_conditions(conditions_rx.clone(), cancel.clone());
    tracker.spawn(publish_conditions);
    let api = server::ApiState {
        pods: published.clone(),
        events: recorder.events(),
        node: node_conditions.clone(),
        health: health_checks.clone(),
        metrics: Some(metrics.clone()),
        stats: crate::stats::Stats::default(),
        runtime: None,
        timeline: None,
        running_pods: None,
        streaming: None,
    };

    // The container runtime.
    let runtime = Arc::new(
        CriRuntime::new(&config.runtime.endpoint)
            .with_metrics(metrics.clone())
            .with_request_timeout(config.runtime.request_timeout),
    );
    let version = wait_for_runtime(&*runtime, &config.runtime.endpoint, &cancel).await?;
    let api = server::ApiState {
        runtime: Some(Arc::clone(&runtime) as Arc<dyn server::logs::ContainerLogSource>),
        running_pods: Some(Arc::clone(&runtime) as Arc<dyn server::runningpods::RuntimePods>),
        streaming: Some(Arc::clone(&runtime) as Arc<dyn server::streaming::StreamingRuntime>),
        ..api
    };
    info!(runtime = %format!("{} {}", version.runtime_name, version.runtime_version), endpoint = %config.runtime.endpoint.display(), "container runtime ready");
    // Resource statistics: a sampler reads every cgroup each housekeeping period; the API
    // renders its last snapshot. Volume and log walks are shared with eviction's storage
    // meter through one cache.
    let usage_cache = eviction::local_storage::UsageCache::new();
    {
        let mut sampler = crate::stats::Sampler::new(
            config.node_name.clone(),
            tree.clone(),
            crate::stats::SamplerRoots {
                proc_root: proc_root.clone(),
                root_dir: config.root_dir.clone(),
                pods_dir: pods_dir.clone(),
                logs_dir: pods_dir.clone(),
            },
        );
        sampler.set_image_fs(image_fs_path(&*runtime).await);
        sampler.set_usage_cache(usage_cache.clone());
        tracker.spawn(crate::stats::sample::run(
            sampler,
            published.clone(),
            api.stats.clone(),
            cancel.clone(),
        ));
    }
    // The gRPC event stream (`eventStreamSocket`): bound before any pod is touched.
    let event_stream = crate::stream::start(
        &config.event_stream,
        &published,
        &metrics,
        &cancel,
        &tracker,
    )
    .map_err(AgentError::EventStream)?;
    let api = server::ApiState {
        timeline: Some(event_stream.clone()),
        ..api
    };

    // Local API first: a port that cannot be bound stops bpflet before it touches any pod.
    {
        let addr = SocketAddr::new(config.server.address, config.server.port);
        let listener = server::bind(addr).await.map_err(AgentError::Server)?;
        let reviews = client.clone().map(|c| {
            Arc::new(crate::cluster::reviews::ApiReviews::new(c)) as Arc<dyn server::auth::Reviews>
        });
        let auth = Arc::new(server::auth::Auth::new(
            &config.node_name,
            &config.server.auth,
            reviews,
        ));
        info!(%addr, ?auth, "HTTPS API");
        if let (crate::config::ServingCert::Bootstrap { dir }, Some(client)) =
            (&config.server.tls.cert, &client)
        {
            let manager = crate::cluster::csr::ServerCertManager::new(
                client.clone(),
                config.node_name.clone(),
                config.node_ips.clone(),
                dir,
                tls.certs.clone(),
                Arc::clone(&tls.provider),
            );
            tracker.spawn(manager.run(cancel.clone()));
        }
        let (api, cancel) = (api.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = server::serve_secure(listener, api, tls, auth, cancel).await {
                warn!(error = %e, "HTTPS API stopped");
            }
        });
    }
    if let Some(port) = config.server.read_only_port {
        let addr = SocketAddr::new(config.server.address, port);
        let listener = server::bind(addr).await.map_err(AgentError::Server)?;
        info!(%addr, "read-only API: /pods, /healthz, /stats/summary, /metrics/resource, /metrics/cadvisor");
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = server::serve_read_only(listener, api, cancel).await {
                warn!(error = %e, "read-only API stopped");
            }
        });
    }
    if let Some(port) = config.server.healthz_port {
        let addr = SocketAddr::new(config.server.healthz_bind_address, port);
        match server::bind(addr).await {
            Ok(listener) => {
                let (checks, cancel) = (health_checks.clone(), cancel.clone());
                tracker.spawn(async move {
                    if let Err(e) = server::serve_healthz(listener, checks, cancel).await {
                        warn!(error = %e, "healthz endpoint stopped");
                    }
                });
            }
            Err(e) => warn!(error = %e, "healthz endpoint not started"),
        }
    }

    // Kernel events (event mode): BPF, or the polling fallback as `eventSource` says. Both
    // feed the router (OOM kills, node OOMs, pressure, pod pokes); the PLEG runs in event
    // mode on BPF only, and relists every second otherwise.
    let mut kernel_rx = None;
    let mut kernel_source = None;
    let mut fallback_reason = None;
    if config.pleg.mode == PlegMode::Event {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let spec = SourceSpec {
            hierarchy: hierarchy.clone(),
            roots: vec![kubepods.clone()],
            watch_all: false,
            pressure_window: Duration::from_millis(100),
            // Containerd reports an exit ~40 ms after the kernel: 1 ms of batching costs the
            // PLEG nothing and saves the kernel an interrupt per exit.
            wakeup_interval: Duration::from_millis(1),
            poll_interval: PollConfig::DEFAULT_INTERVAL,
            proc_root: proc_root.clone(),
        };
        let choice = config.pleg.event_source;
        let running = source::start(choice, &spec, tx, &cancel, &tracker)
            .map_err(|source| AgentError::EventSource { choice, source })?;
        if running.source == Source::Poll {
            warn!(
                event_source = "poll",
                reason = running.fallback_reason.as_deref().unwrap_or_default(),
                "kernel events come from the polling fallback: DEGRADED. The PLEG relists every 1s (generic) to find container ends; \
                 OOM kills come from the kernel log (/dev/kmsg) and pressure from memory-cgroup counters, \
                 up to 1s late; exit codes come from the runtime only"
            );
        }
        kernel_source = Some(running.source);
        fallback_reason.clone_from(&running.fallback_reason);
        kernel_rx = Some((rx, running));
    }
    let pleg_mode = config.pleg.mode_with(kernel_source);
    let event_source = match kernel_source {
        Some(Source::Bpf) => "bpf",
        Some(Source::Poll) => "poll",
        None => "none",
    };
    info!(mode = ?pleg_mode, event_source, fallback = fallback_reason, "PLEG");
    // The mode and the kernel event source in use show on `/healthz?verbose` as
    // `[+]pleg-mode-event ok` (or -generic) and `[+]event-source-bpf ok` (-poll, -none).
    health_checks.set_healthy(match pleg_mode {
        PlegMode::Event => "pleg-mode-event",
        PlegMode::Generic => "pleg-mode-generic",
    });
    health_checks.set_healthy(format!("event-source-{event_source}"));
    let health = Arc::new(PlegHealth::new(pleg_mode, config.pleg.unhealthy_threshold));
    {
        let health = Arc::clone(&health);
        health_checks.register("pleg", move || health.check());
    }
    // The size of the file system holding the root directory: the node's ephemeral storage.
    let nodefs_bytes = nix::sys::statvfs::statvfs(&config.root_dir)
        .ok()
        .map(|v| v.blocks().saturating_mul(v.fragment_size()));
    // Cluster mode: the Node object's labels and taints as the API server holds them now,
    // published by the heartbeat's watch on the Node, for admission.
    let (live_node_tx, live_node_rx) = watch::channel(None);
    if let (Some(client), Some(cluster)) = (&client, &config.cluster) {
        let heartbeat = crate::cluster::heartbeat::Heartbeat {
            client: client.clone(),
            identity: crate::cluster::node::NodeIdentity {
                name: config.node_name.clone(),
                hostname: config.node_name.clone(),
                internal_ips: node_internal_ips(&config.node_ips),
                labels: cluster.node_labels.clone(),
                taints: cluster.register_with_taints.clone(),
            },
            resources: crate::cluster::node::NodeResources {
                cpu_millis: capacity.cpu_millis,
                memory_bytes: memory,
                ephemeral_storage_bytes: nodefs_bytes,
                max_pods: config.max_pods,
            },
            reserved: node_reserved(&config, capacity.memory_bytes, nodefs_bytes.unwrap_or(0)),
            info: crate::cluster::node::NodeInfo::read(
                Path::new("/"),
                &version.runtime_name,
                &version.runtime_version,
            ),
            conditions: node_conditions.clone(),
            readiness: readiness_fn(Arc::clone(&runtime), Arc::clone(&health)),
            kubelet_port: Some(config.server.port),
            periods: crate::cluster::heartbeat::Periods {
                status_update: cluster.node_status_update_frequency,
                status_report: cluster.node_status_report_frequency,
                lease_duration: cluster.node_lease_duration,
            },
            register: cluster.register_node,
            live_node: live_node_tx,
        };
        tracker.spawn(heartbeat.run(cancel.clone()));
    }
    // Image garbage collection: a pass every 5 minutes, and eviction's disk reclaim deletes
    // unused images through it. Images the node's pods name are kept.
    let image_gc = {
        let mut gc = crate::images::gc::ImageGc::new(Arc::clone(&runtime), config.image_gc)
            .with_recorder(recorder.clone(), &config.node_name);
        match crate::images::gc::ImageGcMetrics::register(&metrics.registry) {
            Ok(m) => gc = gc.with_metrics(m),
            Err(e) => warn!(error = %e, "kubelet_image_garbage_collected_total not exported"),
        }
        Arc::new(gc)
    };
    {
        use crate::eviction::PodProvider as _;
        let pods = StorePods {
            pods: published.clone(),
            pods_dir: pods_dir.clone(),
            logs_dir: pods_dir.clone(),
        };
        let wanted: Arc<dyn Fn() -> Vec<String> + Send + Sync> =
            Arc::new(move || pods.wanted_images());
        tracker.spawn(Arc::clone(&image_gc).run(image_gc_period(), wanted, cancel.clone()));
    }
    // Eviction: evaluated at once on kernel pressure in the pod tree, every 10s at least.
    let (trigger_tx, trigger_rx) = mpsc::channel::<eviction::Trigger>(1);
    let (eviction_tx, eviction_rx) = mpsc::channel::<eviction::Eviction>(8);
    {
        let manager = EvictionManager::new(
            config.eviction.clone(),
            config.cgroups.enforce_pods_allocatable,
        )
        .with_usage_cache(usage_cache);
        let observer = Observer::new(
            SignalRoots {
                proc_root: proc_root.clone(),
                nodefs: config.root_dir.clone(),
            },
            tree.clone(),
        );
        let io = EvictionIo {
            observer,
            runtime: Arc::clone(&runtime),
            image_gc,
            pods: StorePods {
                pods: published,
                pods_dir: pods_dir.clone(),
                logs_dir: pods_dir.clone(),
            },
            evictions: eviction_tx,
            conditions: conditions_tx,
        };
        let thresholds = manager.thresholds().to_vec();
        tracker.spawn(manager.run(io, trigger_rx, cancel.clone()));
        spawn_allocatable_notifier(
            &hierarchy,
            &tree,
            &thresholds,
            trigger_tx.clone(),
            &cancel,
            &tracker,
        );
    }

    let facts = KernelFacts::default();
    let relist_all = Arc::new(Notify::new());
    let (poke_tx, poke_rx) = mpsc::channel(4096);
    // Kept alive while the agent runs: dropping it detaches the BPF programs.
    let mut _kernel_source = None;
    if let Some((kernel_rx, running)) = kernel_rx {
        _kernel_source = Some(running);
        let mut attributor = Attributor::new(hierarchy.clone());
        if let Err(e) = attributor.index_subtree(&kubepods) {
            warn!(error = %e, "cannot index the pod cgroups");
        }
        let router = KernelRouter {
            attributor,
            facts: facts.clone(),
            recorder: recorder.clone(),
            node_name: config.node_name.clone(),
            relist_all: Arc::clone(&relist_all),
            pressure: Some(trigger_tx.clone()),
            stream: Some(event_stream.clone()),
        };
        tracker.spawn(router.run(kernel_rx, poke_tx.clone(), cancel.clone()));
    }
    let probe_metrics = crate::probes::ProbeMetrics::new();
    if let Err(e) = probe_metrics.register(metrics.probe_registry()) {
        warn!(error = %e, "prober_probe_total not exported");
    }
    let (probe_tx, mut probe_rx) = mpsc::channel::<String>(1024);
    let (probes, prober) = crate::probes::ProbeManager::new(
        Arc::clone(&runtime),
        probe_tx,
        probe_metrics.clone(),
        &crate::probes::ProbeOptions {
            recorder: Some(recorder.clone()),
            ..crate::probes::ProbeOptions::default()
        },
    );
    tracker.spawn(prober.run(cancel.clone()));
    {
        let pokes = poke_tx.clone();
        tracker.spawn(async move {
            while let Some(uid) = probe_rx.recv().await {
                let poke = crate::pleg::PodPoke {
                    uid,
                    trigger: crate::pleg::Trigger::Relist,
                    at: std::time::Instant::now(),
                };
                if pokes.send(poke).await.is_err() {
                    break;
                }
            }
        });
    }
    let pleg = Pleg::new(
        Arc::clone(&runtime),
        pleg_mode,
        config.pleg.safety_relist_period,
        health,
        relist_all,
    )
    .with_metrics(metrics.clone());
    tracker.spawn(pleg.run(poke_tx, cancel.clone()));

    // Pod sources.
    let (update_tx, update_rx) = mpsc::channel(64);
    let mut expected = HashSet::new();
    if let Some(path) = &config.sources.static_pod_path {
        expected.insert(SourceKind::File);
        let src = FileSource::new(
            path.clone(),
            config.node_name.clone(),
            config.sources.file_check_frequency,
        )
        .with_inotify(true);
        tracker.spawn(src.run(update_tx.clone(), cancel.clone()));
    }
    if let Some(url) = &config.sources.static_pod_url {
        expected.insert(SourceKind::Http);
        let src = HttpSource::new(
            url.clone(),
            config.node_name.clone(),
            config.sources.http_check_frequency,
            Duration::from_secs(10),
        );
        tracker.spawn(src.run(update_tx.clone(), cancel.clone()));
    }
    if let (Some(client), Some(statuses)) = (&client, api_statuses) {
        expected.insert(SourceKind::Api);
        tracker.spawn(crate::cluster::run_pod_source(
            client.clone(),
            config.node_name.clone(),
            update_tx.clone(),
            statuses,
            cancel.clone(),
        ));
    }
    drop(update_tx);

    // Pulls: the node's docker config as upstream looks for it, under the root dir first.
    let images = Arc::new(
        crate::images::ImageManager::new(
            config.image_pulls,
            crate::images::NodeCredentials::standard(&config.root_dir),
            &metrics.registry,
        )
        .map_err(|e| AgentError::Metrics(e.into()))?,
    );

    // Cluster mode: the configMaps and secrets pods read, watched while pods refer to them.
    let objects = client.as_ref().map(|c| {
        let metrics = crate::cluster::objects::ObjectMetrics::register(&metrics.registry)
            .inspect_err(|e| warn!(error = %e, "bpflet_object_* not exported"))
            .ok();
        Arc::new(crate::cluster::objects::ApiObjects::new(
            c.clone(),
            metrics,
            cancel.clone(),
        )) as Arc<dyn crate::pods::objects::PodObjects>
    });

    // Pod workers.
    let ctx = Arc::new(PodContext::new(
        // Kubelet layout under the root dir: pods/<uid>/volumes/... and, for logs,
        // pods/<namespace>_<name>_<uid>/<container>/<attempt>.log.
        PodHost::new(
            Arc::clone(&runtime),
            hierarchy.clone(),
            Arc::new(tree),
            pods_dir.clone(),
            pods_dir.clone(),
            mark.clone(),
        )
        .with_images(images)
        .with_objects(objects)
        .with_tokens(client.clone().map(|c| {
            Arc::new(crate::cluster::tokens::ApiTokens::new(c))
                as Arc<dyn crate::pods::volumes::api::ServiceAccountTokens>
        })),
        NodeInfo::new(
            config.node_name.clone(),
            config.node_ips.clone(),
            DnsSettings {
                host: host_resolv_conf(config.dns.resolv_conf.as_deref()),
                cluster_dns: config
                    .dns
                    .cluster_dns
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                cluster_domain: config.dns.cluster_domain.clone(),
            },
            // The downward API's default for a limit a container does not set.
            NodeAllocatable::from_capacity(
                capacity.cpu_millis,
                memory,
                nodefs_bytes,
                &config.system_reserved,
                &config.kube_reserved,
            ),
            memory,
        ),
        Outputs::new(statuses, recorder, metrics.clone()),
        Signals::new(facts, kubepods.clone(), probes, conditions_rx),
        SyncTiming::new(config.sync_frequency, pleg_mode == PlegMode::Event),
        {
            let policy = AdmissionPolicy::new(
                config.sysctls.clone(),
                admission_node(&config, capacity.cpu_millis, memory, nodefs_bytes),
            );
            if config.cluster.is_some() {
                policy.with_live_node(live_node_rx)
            } else {
                policy
            }
        },
    ));
    let logs_dir = pods_dir;
    // Container GC (dead containers, sandboxes, log directories of pods gone) and log
    // rotation, both through the runtime.
    let (wanted_tx, wanted_rx) = watch::channel(None);
    {
        let mut gc = crate::gc::ContainerGc::new(
            Arc::clone(&runtime),
            mark.clone(),
            logs_dir,
            crate::gc::GcPolicy::default(),
            wanted_rx,
        );
        match crate::gc::GcMetrics::register(&metrics.registry) {
            Ok(m) => gc = gc.with_metrics(m),
            Err(e) => warn!(error = %e, "bpflet_gc_* not exported"),
        }
        tracker.spawn(gc.run(crate::gc::GC_PERIOD, cancel.clone()));
        let mut rotator =
            crate::logrotate::LogRotator::new(Arc::clone(&runtime), mark, config.container_logs);
        match crate::logrotate::RotationMetrics::register(&metrics.registry) {
            Ok(m) => rotator = rotator.with_metrics(m),
            Err(e) => warn!(error = %e, "bpflet_container_log_rotation* not exported"),
        }
        tracker.spawn(rotator.run(cancel.clone()));
    }
    let sync_loop = crate::health::SyncLoopMonitor::new(config.sync_frequency);
    sync_loop.register(&health_checks);
    let manager = PodManager::new(ctx, expected, cancel.clone())
        .with_wanted_pods(wanted_tx)
        .with_sync_loop_monitor(sync_loop);
    tracker.spawn(manager.run(update_rx, poke_rx, eviction_rx));

    info!(node = %config.node_name, "bpflet running");
    cancel.cancelled().await;
    info!("stopping; pods keep running");
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The node's `InternalIP`s: `--node-ip`, else the address the host would use to reach
/// other hosts (its default route's source address; a UDP `connect` sends nothing), else none.
fn node_internal_ips(configured: &[std::net::IpAddr]) -> Vec<String> {
    if !configured.is_empty() {
        return configured.iter().map(ToString::to_string).collect();
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() => vec![addr.ip().to_string()],
        _ => {
            warn!("no default route: the Node reports no InternalIP (set --node-ip)");
            Vec::new()
        }
    }
}

/// The node as admission matches pods against it: the name, labels and taints it registers
/// with (standalone: the well-known labels, no taints) and the allocatable its Node status
/// reports (standalone alike).
fn admission_node(
    config: &Config,
    cpu_millis: u64,
    memory_bytes: u64,
    nodefs_bytes: Option<u64>,
) -> crate::pods::admission::AdmissionNode {
    let (labels, taints) = config.cluster.as_ref().map_or_else(Default::default, |c| {
        (c.node_labels.clone(), c.register_with_taints.clone())
    });
    let identity = crate::cluster::node::NodeIdentity {
        name: config.node_name.clone(),
        hostname: config.node_name.clone(),
        labels,
        ..Default::default()
    };
    let reserved = node_reserved(config, memory_bytes, nodefs_bytes.unwrap_or(0));
    crate::pods::admission::AdmissionNode {
        name: config.node_name.clone(),
        labels: crate::cluster::node::labels(&identity),
        taints,
        allocatable: crate::pods::admission::Allocatable {
            cpu_millis: cpu_millis.saturating_sub(reserved.cpu_millis),
            memory_bytes: memory_bytes.saturating_sub(reserved.memory_bytes),
            ephemeral_storage_bytes: nodefs_bytes
                .map_or(0, |n| n.saturating_sub(reserved.ephemeral_storage_bytes)),
            pods: config.max_pods,
        },
    }
}

/// What the Node's allocatable holds back from capacity: the reservations and, as upstream,
/// the hard eviction thresholds of `memory.available` and `nodefs.available`.
fn node_reserved(
    config: &Config,
    memory_bytes: u64,
    nodefs_bytes: u64,
) -> crate::cluster::node::Reserved {
    use crate::config::eviction::Signal;
    let reserved = |f: fn(&crate::config::Reservation) -> Option<u64>| {
        f(&config.system_reserved).unwrap_or(0) + f(&config.kube_reserved).unwrap_or(0)
    };
    let hard = |signal: Signal, capacity: u64| {
        config
            .eviction
            .hard
            .iter()
            .filter(|t| t.signal == signal)
            .map(|t| t.value.amount(capacity))
            .max()
            .unwrap_or(0)
    };
    crate::cluster::node::Reserved {
        cpu_millis: reserved(|r| r.cpu_millis),
        memory_bytes: reserved(|r| r.memory_bytes) + hard(Signal::MemoryAvailable, memory_bytes),
        ephemeral_storage_bytes: reserved(|r| r.ephemeral_storage_bytes)
            + hard(Signal::NodeFsAvailable, nodefs_bytes),
    }
}

/// The node's readiness as upstream words it: the runtime's `RuntimeReady` and
/// `NetworkReady` (CRI `Status`) and the PLEG's health.
fn readiness_fn<R: ContainerRuntime + 'static>(
    runtime: Arc<R>,
    pleg: Arc<PlegHealth>,
) -> crate::cluster::heartbeat::ReadinessFn {
    Arc::new(move || {
        let runtime = Arc::clone(&runtime);
        let pleg = Arc::clone(&pleg);
        Box::pin(async move {
            let describe = |c: Option<&crate::runtime::RuntimeCondition>, kind: &str| match c {
                Some(c) => format!("{kind}=false reason:{} message:{}", c.reason, c.message),
                None => format!("{kind}=false reason:NotReported message:"),
            };
            let (runtime_ready, network) = match runtime.status().await {
                Ok(status) => (
                    if status.runtime_ready() {
                        Ok(())
                    } else {
                        Err(format!(
                            "container runtime not ready: {}",
                            describe(
                                status.condition(crate::runtime::RuntimeStatus::RUNTIME_READY),
                                "RuntimeReady"
                            )
                        ))
                    },
                    if status.network_ready() {
                        Ok(())
                    } else {
                        Err(format!(
                            "container runtime network not ready: {}",
                            describe(
                                status.condition(crate::runtime::RuntimeStatus::NETWORK_READY),
                                "NetworkReady"
                            )
                        ))
                    },
                ),
                Err(e) => (Err(format!("container runtime is down: {e}")), Ok(())),
            };
            crate::cluster::node::Readiness {
                runtime: runtime_ready,
                network,
                pleg: pleg
                    .check()
                    .map_err(|e| format!("PLEG is not healthy: {e}")),
            }
        })
    })
}

/// The agent's own `oom_score_adj` (upstream: -999). Lowering it needs CAP_SYS_RESOURCE; a
/// refusal is a warning, never fatal.
const AGENT_OOM_SCORE_ADJ: i32 = -999;

fn protect_from_oom_killer(proc_root: &Path) {
    let path = proc_root.join("self/oom_score_adj");
    if let Err(e) = std::fs::write(&path, AGENT_OOM_SCORE_ADJ.to_string()) {
        warn!(path = %path.display(), error = %e, "cannot set bpflet's oom_score_adj to {AGENT_OOM_SCORE_ADJ}; the OOM killer may pick bpflet");
    }
}

/// Mode of the root directory and `pods/` (upstream's `setupDataDirs`: 0750). Pod volumes,
/// secrets among them one day, live below.
const DATA_DIR_MODE: u32 = 0o750;

/// Creates `<root>` and `<root>/pods` with [`DATA_DIR_MODE`] and returns the latter. Existing
/// directories that grant more than that are tightened (and logged); stricter ones are kept.
/// The runtime's image file system (`runtime.imageFs` on `/stats/summary`); `None` when the
/// runtime does not say (the node's file system stands in).
async fn image_fs_path<R: crate::runtime::ContainerRuntime>(runtime: &R) -> Option<PathBuf> {
    match runtime.image_fs_info().await {
        Ok(filesystems) => filesystems
            .into_iter()
            .map(|f| PathBuf::from(f.mountpoint))
            .find(|p| p.is_absolute()),
        Err(e) => {
            warn!(error = %e, "cannot ask the runtime for its image filesystem; stats show the node's");
            None
        }
    }
}

fn setup_data_dirs(root: &Path) -> Result<PathBuf, AgentError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let pods = root.join("pods");
    for dir in [root, pods.as_path()] {
        let err = |source| AgentError::RootDir {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(dir)
            .map_err(err)?;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
        if let Some(tight) = tightened_mode(mode, DATA_DIR_MODE) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(tight)).map_err(err)?;
            info!(path = %dir.display(), from = format!("{mode:04o}"), to = format!("{tight:04o}"), "tightened the mode of a data directory");
        }
    }
    Ok(pods)
}

/// `mode` with every permission outside `allowed` removed, or `None` when it has none.
/// (The umask may have left a new directory stricter than `allowed`: that is kept.)
fn tightened_mode(mode: u32, allowed: u32) -> Option<u32> {
    (mode & !allowed != 0).then_some(mode & allowed)
}

/// Raises the soft limit of open files to the hard limit (at most `fs.nr_open`), as Go
/// programs such as the kubelet do at start: every connection, pod source and runtime call
/// needs descriptors, and the usual soft limit of 1024 is small for a node agent. Failure
/// is a warning.
fn raise_open_files_limit(proc_root: &Path) {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open files limit");
            return;
        }
    };
    let mut target = hard;
    if hard == RLIM_INFINITY {
        let nr_open = std::fs::read_to_string(proc_root.join("sys/fs/nr_open"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        match nr_open {
            Some(n) => target = n,
            None => {
                warn!(
                    soft,
                    "hard open files limit is unlimited and fs.nr_open is unreadable; soft limit left as is"
                );
                return;
            }
        }
    }
    if soft >= target {
        info!(soft, hard, "open files limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => info!(
            from = soft,
            to = target,
            hard,
            "raised the open files soft limit"
        ),
        Err(e) => warn!(soft, hard, error = %e, "cannot raise the open files soft limit"),
    }
}

/// Hidden switch for the root tests: the image GC period (a duration such as `2s`) instead
/// of upstream's 5 minutes. Not for production.
const IMAGE_GC_PERIOD_ENV: &str = "BPFLET_IMAGE_GC_PERIOD";

/// [`crate::images::gc::GC_PERIOD`], or what [`IMAGE_GC_PERIOD_ENV`] says.
fn image_gc_period() -> Duration {
    let Some(value) = std::env::var_os(IMAGE_GC_PERIOD_ENV) else {
        return crate::images::gc::GC_PERIOD;
    };
    match crate::config::duration::parse_duration(&value.to_string_lossy()) {
        Ok(d) if !d.is_zero() => {
            warn!(period = ?d, "{IMAGE_GC_PERIOD_ENV}: image garbage collection runs at this period, not upstream's 5m");
            d
        }
        _ => {
            warn!(value = %value.to_string_lossy(), "{IMAGE_GC_PERIOD_ENV} is not a positive duration; ignored");
            crate::images::gc::GC_PERIOD
        }
    }
}

/// Hidden switch for `cargo xtask bench pleg`: `1` leaves the notifier out, so that a
/// generic-mode agent is the upstream periodic-only eviction loop. Not for production.
const DISABLE_NOTIFIER_ENV: &str = "BPFLET_DISABLE_MEMCG_NOTIFIER";

/// On cgroup v1, asks the kernel to signal when the kubepods cgroup's usage crosses the
/// `allocatableMemory.available` hard threshold, and turns each crossing into an eviction
/// trigger (see `eviction::notify`).
fn spawn_allocatable_notifier(
    hierarchy: &Hierarchy,
    tree: &QosTree,
    thresholds: &[crate::config::eviction::Threshold],
    triggers: mpsc::Sender<eviction::Trigger>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    use crate::cgroups::CgroupVersion;
    use crate::config::eviction::Signal;
    if hierarchy.version != CgroupVersion::V1 {
        return;
    }
    if std::env::var_os(DISABLE_NOTIFIER_ENV).is_some_and(|v| v == "1") {
        warn!(
            "{DISABLE_NOTIFIER_ENV}=1: no memory threshold notifier; eviction relies on pressure events and the periodic check"
        );
        return;
    }
    let Ok(Some(limit)) = tree.kubepods_memory_limit() else {
        return;
    };
    let Some(available) = thresholds
        .iter()
        .filter(|t| t.signal == Signal::AllocatableMemoryAvailable && t.grace_period.is_zero())
        .map(|t| t.value.amount(limit))
        .max()
    else {
        return;
    };
    let usage_threshold = limit.saturating_sub(available);
    let dir = hierarchy.path_of(&tree.kubepods());
    let mut notifier = match eviction::notify::UsageThreshold::register(&dir, usage_threshold) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, cause = %crate::error::error_chain(&e), "no memory threshold notifier; eviction relies on pressure events and the periodic check");
            return;
        }
    };
    info!(cgroup = %dir.display(), usage_threshold, "memory threshold notifier armed");
    let cancel = cancel.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                crossed = notifier.crossed() => match crossed {
                    Ok(()) => { let _ = triggers.try_send(eviction::Trigger::now()); }
                    Err(e) => {
                        warn!(error = %e, "memory threshold notifier failed");
                        return;
                    }
                },
            }
        }
    });
}

/// The host's resolver settings (`resolvConf`), for host-network pods and `dnsPolicy:
/// Default`; `None` (`resolvConf: ""`): none, as upstream.
fn host_resolv_conf(path: Option<&Path>) -> ResolvConf {
    let Some(path) = path else {
        return ResolvConf::default();
    };
    ResolvConf::read(path).unwrap_or_else(|e| {
        warn!(error = %e, "cannot read the host's resolv.conf; pods get no DNS settings from it");
        ResolvConf::default()
    })
}

/// Waits for the runtime to answer `Version`, retrying with backoff (a runtime starting at
/// the same time as the agent is normal).
async fn wait_for_runtime<R: ContainerRuntime>(
    rt: &R,
    endpoint: &Path,
    cancel: &CancellationToken,
) -> Result<crate::runtime::VersionInfo, AgentError> {
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match rt.version().await {
            Ok(v) => return Ok(v),
            Err(source) => {
                attempts += 1;
                if attempts >= 20 || cancel.is_cancelled() {
                    return Err(AgentError::Runtime {
                        endpoint: endpoint.to_owned(),
                        source,
                    });
                }
                warn!(endpoint = %endpoint.display(), error = %source, "runtime not ready; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn modes_are_tightened_never_loosened() {
        assert_eq!(tightened_mode(0o755, 0o750), Some(0o750));
        assert_eq!(tightened_mode(0o777, 0o750), Some(0o750));
        assert_eq!(tightened_mode(0o1777, 0o750), Some(0o750));
        assert_eq!(tightened_mode(0o750, 0o750), None);
        assert_eq!(tightened_mode(0o700, 0o750), None);
    }

    #[test]
    fn data_dirs_are_created_0750_and_loose_ones_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        let root = tmp.path().join("a/root");
        let pods = setup_data_dirs(&root).expect("create");
        assert_eq!(pods, root.join("pods"));
        // The umask can only take bits away.
        assert_eq!(mode(&root) & !0o750, 0, "{:o}", mode(&root));
        assert_eq!(mode(&pods) & !0o750, 0, "{:o}", mode(&pods));

        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(&pods, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        setup_data_dirs(&root).expect("again");
        assert_eq!(mode(&root), 0o750);
        assert_eq!(mode(&pods), 0o700, "a stricter mode is kept");
    }
}
