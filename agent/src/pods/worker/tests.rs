//! The worker and the pod manager driven over the fake runtime, with the real status
//! manager and event recorder in memory, on tokio's paused clock.

use jiff::Timestamp;

use crate::pods::plan::{ContainerState as State, ObservedContainer};

/// An observed container `id` (named `c-<id>`) in `state`, for the pure tests.
pub(super) fn observed_container(id: &str, state: State) -> ObservedContainer {
    ObservedContainer {
        id: id.to_owned(),
        name: format!("c-{id}"),
        state,
        created: Timestamp::UNIX_EPOCH,
        started_at: Some(Timestamp::UNIX_EPOCH),
        finished_at: None,
        exit_code: None,
        reason: None,
        restart_count: 0,
        spec_hash: None,
        liveness: Default::default(),
        startup: Default::default(),
    }
}

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    AdmissionPolicy, Clock, NodeInfo, Outputs, PodContext, PodHost, Signals, SyncTiming,
    WorkerHandle, spawn,
};
use crate::cgroups::Hierarchy;
use crate::cgroups::driver::CgroupDriver;
use crate::cgroups::tree::QosTree;
use crate::config::eviction::Signal;
use crate::eviction::{Eviction, EvictionSignal, Resource};
use crate::model::node::{NodeCondition, PressureCondition};
use crate::model::qos::QosClass;
use crate::pleg::facts::KernelFacts;
use crate::pleg::{KernelEnd, PodPoke, Trigger};
use crate::pods::cri_config::{DnsSettings, NodeAllocatable};
use crate::pods::manager::PodManager;
use crate::pods::sysctls::SysctlPolicy;
use crate::pods::{ManifestOrigin, PodUpdate, SourceKind, StaticPod};
use crate::probes::{ProbeManager, ProbeMetrics, ProbeOptions};
use crate::record::{Events, Recorder};
use crate::runtime::{
    ContainerRuntime as _, ContainerState as RtState, ExecOutput, FakeRuntime, Method, SandboxState,
};
use crate::status::manager::{PodList, StatusManager, pod_list};

const IMAGE: &str = "busybox:latest";
const SYNC_FREQUENCY: Duration = Duration::from_secs(60);

/// A node of one fake runtime: the context workers share, its prober running, and the read
/// side of what they publish (statuses, events). Time of day follows tokio's paused clock.
struct Node {
    rt: FakeRuntime,
    ctx: Arc<PodContext<FakeRuntime>>,
    pods: PodList,
    events: Events,
    /// The uids of pods whose probe verdicts changed (the agent pokes their workers).
    probe_pokes: std::sync::Mutex<Option<mpsc::Receiver<String>>>,
    conditions: watch::Sender<Vec<NodeCondition>>,
    clock: Clock,
    tracker: TaskTracker,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        Self::with_objects(None)
    }

    /// A node whose pods read configMaps and secrets from `objects` (cluster mode).
    fn with_objects(objects: Option<Arc<dyn crate::pods::objects::PodObjects>>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::tokio();
        let rt = FakeRuntime::new();
        rt.add_image(IMAGE);
        rt.set_clock(Arc::new(move || clock.now()));
        let runtime = Arc::new(rt.clone());
        // A cgroup2 root with the controllers the tree enables (plain files: nothing here
        // is a cgroup, and nothing runs in one).
        let cgroup = dir.path().join("cgroup");
        std::fs::create_dir_all(&cgroup).expect("mkdir");
        std::fs::write(cgroup.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        let (sink, pods) = pod_list();
        let recorder = Recorder::new("node-a");
        let events = recorder.events();
        let (notify, probe_pokes) = mpsc::channel(1);
        let (probes, runner) = ProbeManager::new(
            Arc::clone(&runtime),
            notify,
            ProbeMetrics::new(),
            &ProbeOptions {
                recorder: Some(recorder.clone()),
                ..ProbeOptions::default()
            },
        );
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        tracker.spawn(runner.run(cancel.clone()));
        let (conditions, conditions_rx) = watch::channel(Vec::new());
        let ctx = PodContext::new(
            PodHost::new(
                runtime,
                Hierarchy::v2(&cgroup),
                Arc::new(QosTree::new(CgroupDriver::v2(&cgroup), "/")),
                dir.path().join("pods"),
                dir.path().join("logs"),
                crate::pods::labels::AgentMark::for_tests(),
            )
            .with_objects(objects),
            NodeInfo::new(
                "node-a".to_owned(),
                vec!["127.0.0.1".parse().expect("ip")],
                DnsSettings::default(),
                NodeAllocatable {
                    cpu_millis: 2_000,
                    memory_bytes: 1 << 30,
                    ephemeral_storage_bytes: 1 << 34,
                },
                1 << 30,
            ),
            Outputs::new(
                StatusManager::new(vec![sink]),
                recorder,
                crate::metrics::Metrics::new().expect("metrics"),
            ),
            Signals::new(
                KernelFacts::default(),
                "/kubepods".to_owned(),
                probes,
                conditions_rx,
            ),
            SyncTiming::new(SYNC_FREQUENCY, true).with_clock(clock),
            AdmissionPolicy::new(
                SysctlPolicy::default(),
                crate::pods::admission::AdmissionNode {
                    name: "node-a".to_owned(),
                    allocatable: crate::pods::admission::Allocatable {
                        cpu_millis: 2_000,
                        memory_bytes: 1 << 30,
                        ephemeral_storage_bytes: 1 << 34,
                        pods: 110,
                    },
                    ..Default::default()
                },
            ),
        );
        Self {
            rt,
            ctx: Arc::new(ctx),
            pods,
            events,
            probe_pokes: std::sync::Mutex::new(Some(probe_pokes)),
            conditions,
            clock,
            tracker,
            cancel,
            _dir: dir,
        }
    }

    fn spawn(&self, pod: Pod) -> WorkerHandle {
        spawn(
            Arc::clone(&self.ctx),
            Arc::new(pod),
            self.cancel.clone(),
            &self.tracker,
            crate::pods::admission::Admission::Admitted,
        )
    }

    /// The status of container `name` of pod `uid` as last published.
    fn container(&self, uid: &str, name: &str) -> Option<ContainerStatus> {
        self.pods
            .get(uid)?
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == name)
            .cloned()
    }

    fn phase(&self, uid: &str) -> Option<String> {
        self.pods.get(uid)?.status.as_ref()?.phase.clone()
    }

    /// The ids of the pod's containers the runtime reports running.
    async fn running(&self, uid: &str) -> Vec<String> {
        self.rt
            .list_containers(None)
            .await
            .expect("list containers")
            .into_iter()
            .filter(|c| c.state == RtState::Running)
            .filter(|c| crate::pods::labels::pod_uid_from_labels(&c.labels) == Some(uid))
            .map(|c| c.id)
            .collect()
    }

    /// The pod's sandboxes in the runtime.
    async fn sandboxes(&self, uid: &str) -> Vec<SandboxState> {
        self.rt
            .list_pod_sandboxes(None)
            .await
            .expect("list sandboxes")
            .into_iter()
            .filter(|s| crate::pods::labels::pod_uid_from_labels(&s.labels) == Some(uid))
            .map(|s| s.state)
            .collect()
    }

    /// The events about pod `uid` (and its containers), oldest first.
    fn pod_events(&self, uid: &str) -> Vec<Recorded> {
        self.events
            .list()
            .into_iter()
            .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
            .map(|e| Recorded {
                reason: e.reason.unwrap_or_default(),
                kind: e.type_.unwrap_or_default(),
                message: e.message.unwrap_or_default(),
                field_path: e.involved_object.field_path.unwrap_or_default(),
                count: e.count.unwrap_or_default(),
            })
            .collect()
    }

    /// Warning or normal events with `reason`, by message.
    fn events(&self, reason: &str) -> Vec<String> {
        self.events
            .list()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.message.unwrap_or_default())
            .collect()
    }
}

/// An event as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    reason: String,
    kind: String,
    message: String,
    /// `spec.containers{app}`; empty for the pod itself.
    field_path: String,
    count: i32,
}

/// A `Normal` event seen once, about the container at `field_path` (empty: the pod).
fn normal(reason: &str, message: &str, field_path: &str) -> Recorded {
    Recorded {
        reason: reason.to_owned(),
        kind: "Normal".to_owned(),
        message: message.to_owned(),
        field_path: field_path.to_owned(),
        count: 1,
    }
}

/// Waits (on tokio's clock, 10 ms at a time, at most 30 virtual minutes) until `f` gives
/// something.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1_800) {
        if let Some(t) = f().await {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 30 minutes");
}

/// A pod `name` with uid `uid`, one container `app`, and `extra` merged into its spec.
fn pod(name: &str, uid: &str, extra: &serde_json::Value) -> Pod {
    let mut spec = serde_json::json!({
        "containers": [{"name": "app", "image": IMAGE}],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 5,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": spec,
    }))
    .expect("pod")
}

const UID: &str = "0b7c1a5e-4f0d-4c51-9a53-1f6e1c2d3a4b";

fn waiting(c: &ContainerStatus) -> Option<(String, String)> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

#[tokio::test(start_paused = true)]
async fn a_pod_starts_and_a_crashing_container_backs_off_10s_then_20s() {
    let node = Node::new();
    let worker = node.spawn(pod("web", UID, &serde_json::json!({})));
    let first = until("the container runs", async || {
        let c = node.container(UID, "app").filter(is_running)?;
        (node.phase(UID).as_deref() == Some("Running")).then_some(c)
    })
    .await;
    assert_eq!(first.restart_count, 0);
    assert_eq!(node.sandboxes(UID).await, [SandboxState::Ready]);
    assert_eq!(node.rt.call_count(Method::RunPodSandbox), 1);
    assert_eq!(node.rt.call_count(Method::StartContainer), 1);

    // The first exit restarts at once; the window it arms (10 s) holds the next restart,
    // and the one after that waits 20 s.
    let mut waited = Vec::new();
    for restarts in 1..=3 {
        let running = node.running(UID).await;
        assert_eq!(running.len(), 1, "one container runs: {running:?}");
        node.rt.exit_container(&running[0], 1);
        let exited = tokio::time::Instant::now();
        worker.poke(Trigger::Relist);
        let (reason, message) = if restarts == 1 {
            (String::new(), String::new())
        } else {
            until("the back-off shows", async || {
                node.container(UID, "app").as_ref().and_then(waiting)
            })
            .await
        };
        until("the container runs again", async || {
            let c = node.container(UID, "app").filter(is_running)?;
            (c.restart_count == restarts).then_some(())
        })
        .await;
        waited.push((exited.elapsed().as_secs(), reason, message));
    }
    let app = format!("container=app pod=web_default({UID})");
    assert_eq!(waited[0].0, 0, "the first restart is immediate");
    assert_eq!(waited[1].1, "CrashLoopBackOff");
    assert_eq!(waited[1].2, format!("back-off 10s restarting failed {app}"));
    assert_eq!(waited[1].0, 10, "{waited:?}");
    assert_eq!(waited[2].2, format!("back-off 20s restarting failed {app}"));
    assert_eq!(waited[2].0, 20, "{waited:?}");
    assert_eq!(node.rt.call_count(Method::StartContainer), 4);
    assert_eq!(node.rt.call_count(Method::RunPodSandbox), 1, "one sandbox");
}

/// The container's terminated state as published: (exit code, reason).
fn terminated(c: &ContainerStatus) -> Option<(i32, String)> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.clone().unwrap_or_default()))
}

#[tokio::test(start_paused = true)]
async fn the_kernel_s_end_shows_first_and_the_restart_waits_for_the_runtime() {
    let node = Node::new();
    let worker = node.spawn(pod("web", UID, &serde_json::json!({})));
    until("the container runs", async || {
        node.container(UID, "app").filter(is_running)
    })
    .await;
    let id = node.running(UID).await.remove(0);

    // The kernel saw the main process exit 3; the runtime still reports it running.
    worker.poke(Trigger::Kernel(KernelEnd {
        container: id.clone(),
        exit_code: Some(3),
        at: node.clock.now(),
    }));
    let shown = until("the end shows", async || {
        node.container(UID, "app").as_ref().and_then(terminated)
    })
    .await;
    assert_eq!(shown, (3, "Error".to_owned()), "the kernel's exit code");
    assert_eq!(
        node.running(UID).await,
        std::slice::from_ref(&id),
        "the runtime lags"
    );
    // While the runtime lags, the worker relists; it plans nothing on the kernel's word.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(node.running(UID).await, std::slice::from_ref(&id));
    assert_eq!(
        node.rt.call_count(Method::StartContainer),
        1,
        "no restart yet"
    );
    assert_eq!(node.rt.call_count(Method::StopPodSandbox), 0);

    // The runtime catches up within the relist budget: the restart follows, no other poke.
    node.rt.exit_container(&id, 3);
    let restarted = until("the container runs again", async || {
        node.container(UID, "app")
            .filter(|c| is_running(c) && c.restart_count == 1)
    })
    .await;
    let last = restarted
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    assert_eq!(last.map(|t| t.exit_code), Some(3));
    assert_eq!(node.rt.call_count(Method::StartContainer), 2);
}

fn memory_pressure(status: bool) -> Vec<NodeCondition> {
    vec![NodeCondition {
        kind: PressureCondition::MemoryPressure,
        status,
        reason: "KubeletHasInsufficientMemory",
        message: "kubelet has insufficient memory available",
        last_transition_time: jiff::Timestamp::UNIX_EPOCH,
    }]
}

#[tokio::test(start_paused = true)]
async fn an_evicted_pod_stays_down_while_the_pressure_lasts_then_starts_again() {
    let node = Node::new();
    // BestEffort: memory pressure keeps it out.
    let worker = node.spawn(pod("web", UID, &serde_json::json!({})));
    until("the container runs", async || {
        node.container(UID, "app").filter(is_running)
    })
    .await;
    let id = node.running(UID).await.remove(0);

    node.conditions.send_replace(memory_pressure(true));
    let message = "The node was low on resource: memory. ";
    worker.evict(Eviction {
        pod_uid: UID.to_owned(),
        pod_name: "default/web".to_owned(),
        qos: QosClass::BestEffort,
        grace_period: Duration::from_secs(2),
        signal: EvictionSignal::Threshold(Signal::MemoryAvailable),
        resource: Resource::Memory,
        hard: false,
        reason: "Evicted",
        message: message.to_owned(),
        offenders: Vec::new(),
        trigger: None,
        latency: None,
    });
    until("the pod shows evicted", async || {
        let status = node.pods.get(UID)?.status.clone()?;
        (status.reason.as_deref() == Some("Evicted")).then_some(())
    })
    .await;
    assert_eq!(node.phase(UID).as_deref(), Some("Failed"));
    assert_eq!(
        node.rt.stop_graces(),
        [(id, Duration::from_secs(2))],
        "stopped with the eviction's grace, not the pod's 5 s"
    );
    assert_eq!(node.sandboxes(UID).await, [SandboxState::NotReady]);
    assert_eq!(node.events("Evicted"), [message]);

    // Held down: resyncs and pokes start nothing while the node is under pressure.
    let starts = node.rt.call_count(Method::StartContainer);
    for _ in 0..3 {
        worker.poke(Trigger::Relist);
        tokio::time::sleep(SYNC_FREQUENCY).await;
    }
    assert!(node.running(UID).await.is_empty(), "still down");
    assert_eq!(node.rt.call_count(Method::StartContainer), starts);
    assert_eq!(node.rt.call_count(Method::RunPodSandbox), 1);
    assert_eq!(node.phase(UID).as_deref(), Some("Failed"));

    // Pressure over: re-admitted at the next wakeup, in a new sandbox.
    node.conditions.send_replace(memory_pressure(false));
    until("the pod runs again", async || {
        (node.phase(UID).as_deref() == Some("Running")).then_some(())
    })
    .await;
    assert_eq!(node.running(UID).await.len(), 1);
    assert_eq!(node.rt.call_count(Method::RunPodSandbox), 2);
}

/// A pod manager over `node`, expecting the file source, running until `cancel`; returns
/// where its snapshots go and the task.
fn run_manager(
    node: &Node,
    cancel: &CancellationToken,
) -> (mpsc::Sender<PodUpdate>, tokio::task::JoinHandle<()>) {
    run_manager_of(node, cancel, SourceKind::File)
}

/// A pod manager over `node` expecting `source`, until `cancel`.
fn run_manager_of(
    node: &Node,
    cancel: &CancellationToken,
    source: SourceKind,
) -> (mpsc::Sender<PodUpdate>, tokio::task::JoinHandle<()>) {
    let manager = PodManager::new(
        Arc::clone(&node.ctx),
        HashSet::from([source]),
        cancel.clone(),
    );
    let (updates, updates_rx) = mpsc::channel(4);
    let (_pokes, pokes_rx) = mpsc::channel::<PodPoke>(1);
    let (_evictions, evictions_rx) = mpsc::channel::<Eviction>(1);
    let task = tokio::spawn(async move {
        // The senders live as long as the manager: a closed channel is not what is tested.
        let _keep = (_pokes, _evictions);
        manager.run(updates_rx, pokes_rx, evictions_rx).await;
    });
    (updates, task)
}

/// The file source's snapshot: exactly `pods`.
fn snapshot(pods: &[&Pod]) -> PodUpdate {
    PodUpdate::Snapshot {
        source: SourceKind::File,
        pods: pods
            .iter()
            .map(|p| StaticPod {
                pod: (*p).clone(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                origin: ManifestOrigin::File(
                    format!(
                        "/etc/pods/{}.yaml",
                        p.metadata.name.as_deref().unwrap_or_default()
                    )
                    .into(),
                ),
            })
            .collect(),
        errors: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_removed_from_its_source_is_stopped_with_its_grace_and_cleared_away() {
    let node = Node::new();
    let hooks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&hooks);
    node.rt
        .set_exec_handler(Arc::new(move |id: &str, cmd: &[String]| {
            seen.lock()
                .expect("lock")
                .push((id.to_owned(), cmd.to_vec()));
            ExecOutput {
                stdout: Vec::new(),
                stderr: Vec::new(),
                exit_code: 0,
            }
        }));
    let cancel = CancellationToken::new();
    let (updates, manager) = run_manager(&node, &cancel);
    let web = pod(
        "web",
        UID,
        &serde_json::json!({
            "terminationGracePeriodSeconds": 7,
            "containers": [{
                "name": "app",
                "image": IMAGE,
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/drain"]}}},
            }],
        }),
    );
    updates.send(snapshot(&[&web])).await.expect("send");
    until("the pod runs", async || {
        (node.phase(UID).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let id = node.running(UID).await.remove(0);
    assert!(hooks.lock().expect("lock").is_empty());

    updates.send(snapshot(&[])).await.expect("send");
    until("the pod is gone", async || {
        node.pods.get(UID).is_none().then_some(())
    })
    .await;
    assert_eq!(
        *hooks.lock().expect("lock"),
        [(id.clone(), vec!["/bin/drain".to_owned()])],
        "the preStop hook ran"
    );
    assert_eq!(
        node.rt.stop_graces(),
        [(id, Duration::from_secs(7))],
        "stopped with the pod's grace period"
    );
    assert!(node.sandboxes(UID).await.is_empty(), "sandbox removed");
    assert!(
        node.rt
            .list_containers(None)
            .await
            .expect("list")
            .is_empty(),
        "containers removed with it"
    );
    cancel.cancel();
    manager.await.expect("manager");
}

#[tokio::test(start_paused = true)]
async fn a_runtime_pod_that_no_source_wants_is_torn_down() {
    const ORPHAN: &str = "6f1d2c3b-0a9e-4d8c-8b7a-5e4f3d2c1b0a";
    let node = Node::new();
    let web = pod("web", UID, &serde_json::json!({}));
    let gone = pod("gone", ORPHAN, &serde_json::json!({}));

    // An agent ran both pods, then stopped (pods outlive it).
    let first = CancellationToken::new();
    let (updates, manager) = run_manager(&node, &first);
    updates.send(snapshot(&[&web, &gone])).await.expect("send");
    until("both pods run", async || {
        let both = node.running(UID).await.len() + node.running(ORPHAN).await.len();
        (both == 2).then_some(())
    })
    .await;
    first.cancel();
    manager.await.expect("manager");
    let web_id = node.running(UID).await.remove(0);
    assert_eq!(
        node.running(ORPHAN).await.len(),
        1,
        "pods outlive the agent"
    );

    // Another client of the runtime (an upstream kubelet) runs a pod with the kubelet's
    // labels and no mark, as does a bpflet with another root directory: neither is ours.
    const KUBELETS: &str = "0c6b1f0e-7d3a-4b2e-9f1c-2a3b4c5d6e7f";
    const NEIGHBOURS: &str = "1d7c2a1f-8e4b-4c3f-8a2d-3b4c5d6e7f80";
    let foreign = |uid: &str, mark: Option<&str>| {
        let mut labels = std::collections::HashMap::from([(
            crate::pods::labels::POD_UID_LABEL.to_owned(),
            uid.to_owned(),
        )]);
        if let Some(root) = mark {
            crate::pods::labels::AgentMark::for_root_dir(std::path::Path::new(root))
                .apply(&mut labels);
        }
        let sandbox = crate::runtime::api::PodSandboxConfig {
            metadata: Some(crate::runtime::api::PodSandboxMetadata {
                name: "theirs".to_owned(),
                uid: uid.to_owned(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            labels: labels.clone(),
            ..Default::default()
        };
        let container = crate::runtime::api::ContainerConfig {
            metadata: Some(crate::runtime::api::ContainerMetadata {
                name: "c".to_owned(),
                attempt: 0,
            }),
            image: Some(crate::runtime::api::ImageSpec {
                image: IMAGE.to_owned(),
                ..Default::default()
            }),
            labels,
            ..Default::default()
        };
        (sandbox, container)
    };
    for (uid, mark) in [
        (KUBELETS, None),
        (NEIGHBOURS, Some("/var/lib/other-bpflet")),
    ] {
        let (sb_config, c_config) = foreign(uid, mark);
        let sb = node.rt.run_pod_sandbox(&sb_config, "").await.expect("run");
        let c = node
            .rt
            .create_container(&sb, &c_config, &sb_config)
            .await
            .expect("create");
        node.rt.start_container(&c).await.expect("start");
    }
    let kubelets = node.running(KUBELETS).await;
    let neighbours = node.running(NEIGHBOURS).await;

    // The next agent's source no longer has `gone`: once the source reported, it goes.
    let second = CancellationToken::new();
    let (updates, manager) = run_manager(&node, &second);
    updates.send(snapshot(&[&web])).await.expect("send");
    until("the orphan is gone", async || {
        node.sandboxes(ORPHAN).await.is_empty().then_some(())
    })
    .await;
    assert!(node.running(ORPHAN).await.is_empty());
    assert_eq!(
        node.running(UID).await,
        [web_id],
        "the wanted pod is adopted, untouched"
    );
    assert_eq!(
        (node.running(KUBELETS).await, node.running(NEIGHBOURS).await),
        (kubelets, neighbours),
        "other clients' pods are not ours to clean up"
    );
    assert_eq!(node.sandboxes(KUBELETS).await, [SandboxState::Ready]);
    assert_eq!(node.sandboxes(NEIGHBOURS).await, [SandboxState::Ready]);
    second.cancel();
    manager.await.expect("manager");
}

/// `pod` as the API source sends it (marked `kubernetes.io/config.source: api`), with
/// `status` as the API server has it.
fn from_api(mut pod: Pod, status: &serde_json::Value) -> Pod {
    pod.metadata.annotations.get_or_insert_default().insert(
        crate::model::CONFIG_SOURCE_ANNOTATION.to_owned(),
        "api".to_owned(),
    );
    pod.status = serde_json::from_value(status.clone()).expect("status");
    pod
}

/// The API source's snapshot: exactly `pods`.
fn api_snapshot(pods: &[&Pod]) -> PodUpdate {
    PodUpdate::Snapshot {
        source: SourceKind::Api,
        pods: pods
            .iter()
            .map(|p| StaticPod {
                pod: (*p).clone(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                origin: ManifestOrigin::Api(format!(
                    "default/{}",
                    p.metadata.name.as_deref().unwrap_or_default()
                )),
            })
            .collect(),
        errors: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_api_pod_bpflet_cannot_run_is_rejected_failed_with_an_event_and_never_started() {
    const BAD: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
    let node = Node::new();
    let cancel = CancellationToken::new();
    let (updates, manager) = run_manager_of(&node, &cancel, SourceKind::Api);
    let good = from_api(
        pod("good", UID, &serde_json::json!({})),
        &serde_json::json!({}),
    );
    let bad = from_api(
        pod("userns", BAD, &serde_json::json!({"hostUsers": false})),
        &serde_json::json!({"phase": "Pending"}),
    );
    updates
        .send(api_snapshot(&[&good, &bad]))
        .await
        .expect("send");
    let status = until("the bad pod is Failed", async || {
        let status = node.pods.get(BAD)?.status.clone()?;
        (status.phase.as_deref() == Some("Failed")).then_some(status)
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("FailedValidation"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("Pod was rejected: spec.hostUsers: false is not supported"),
        "{message}"
    );
    let events = node.events("FailedValidation");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].starts_with("spec.hostUsers: "), "{events:?}");
    until("the good pod runs", async || {
        (node.phase(UID).as_deref() == Some("Running")).then_some(())
    })
    .await;
    tokio::time::sleep(SYNC_FREQUENCY * 2).await;
    assert!(node.sandboxes(BAD).await.is_empty(), "no sandbox, ever");
    assert_eq!(
        node.rt.call_count(Method::RunPodSandbox),
        1,
        "the good pod's"
    );
    assert_eq!(node.phase(BAD).as_deref(), Some("Failed"));
    cancel.cancel();
    manager.await.expect("manager");
}

#[tokio::test(start_paused = true)]
async fn an_api_pod_terminal_at_first_sight_is_stopped_and_never_run_again() {
    const DONE: &str = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d";
    let node = Node::new();
    // An agent ran the pod; it stopped (the pod outlives it), and meanwhile the pod was
    // evicted (or its phase set terminal by whoever): it still runs in the runtime.
    let first = CancellationToken::new();
    let (updates, manager) = run_manager_of(&node, &first, SourceKind::Api);
    let web = from_api(
        pod("web", UID, &serde_json::json!({})),
        &serde_json::json!({}),
    );
    updates.send(api_snapshot(&[&web])).await.expect("send");
    until("the pod runs", async || {
        (node.phase(UID).as_deref() == Some("Running")).then_some(())
    })
    .await;
    first.cancel();
    manager.await.expect("manager");
    assert_eq!(node.running(UID).await.len(), 1, "pods outlive the agent");

    // The next agent sees it Failed (Evicted), and a completed pod it has nothing of.
    let evicted = serde_json::json!({
        "phase": "Failed",
        "reason": "Evicted",
        "message": "The node was low on resource: memory. ",
    });
    let web = from_api(pod("web", UID, &serde_json::json!({})), &evicted);
    let completed = serde_json::json!({
        "phase": "Succeeded",
        "containerStatuses": [{
            "name": "app", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
        }],
    });
    let done = from_api(
        pod("done", DONE, &serde_json::json!({"restartPolicy": "Never"})),
        &completed,
    );
    let second = CancellationToken::new();
    let (updates, manager) = run_manager_of(&node, &second, SourceKind::Api);
    updates
        .send(api_snapshot(&[&web, &done]))
        .await
        .expect("send");
    until("the evicted pod's container is stopped", async || {
        node.running(UID).await.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(SYNC_FREQUENCY * 2).await;
    assert_eq!(
        node.rt.call_count(Method::RunPodSandbox),
        1,
        "no sandbox after the first agent's"
    );
    assert_eq!(node.rt.call_count(Method::StartContainer), 1);
    assert_eq!(node.sandboxes(UID).await, [SandboxState::NotReady]);
    assert!(node.sandboxes(DONE).await.is_empty());
    // Each keeps the status it has in the API server.
    let shown = node
        .pods
        .get(UID)
        .and_then(|p| p.status.clone())
        .expect("published");
    assert_eq!(
        (shown.phase.as_deref(), shown.reason.as_deref()),
        (Some("Failed"), Some("Evicted"))
    );
    assert_eq!(
        node.pods.get(DONE).and_then(|p| p.status.clone()),
        done.status
    );

    // Deleted from the API server, it goes for good.
    updates.send(api_snapshot(&[&done])).await.expect("send");
    until("the evicted pod is cleared away", async || {
        node.sandboxes(UID).await.is_empty().then_some(())
    })
    .await;
    second.cancel();
    manager.await.expect("manager");
}

#[tokio::test(start_paused = true)]
async fn an_evicted_api_pod_stays_down_after_the_pressure() {
    let node = Node::new();
    let worker = node.spawn(from_api(
        pod("web", UID, &serde_json::json!({})),
        &serde_json::json!({}),
    ));
    until("the container runs", async || {
        node.container(UID, "app").filter(is_running)
    })
    .await;
    node.conditions.send_replace(memory_pressure(true));
    worker.evict(Eviction {
        pod_uid: UID.to_owned(),
        pod_name: "default/web".to_owned(),
        qos: QosClass::BestEffort,
        grace_period: Duration::from_secs(2),
        signal: EvictionSignal::Threshold(Signal::MemoryAvailable),
        resource: Resource::Memory,
        hard: false,
        reason: "Evicted",
        message: "The node was low on resource: memory. ".to_owned(),
        offenders: Vec::new(),
        trigger: None,
        latency: None,
    });
    until("the pod shows evicted", async || {
        let status = node.pods.get(UID)?.status.clone()?;
        (status.reason.as_deref() == Some("Evicted")).then_some(())
    })
    .await;

    // Pressure over: a static pod would start again; an API pod's eviction is final.
    node.conditions.send_replace(memory_pressure(false));
    for _ in 0..3 {
        worker.poke(Trigger::Relist);
        tokio::time::sleep(SYNC_FREQUENCY).await;
    }
    assert!(node.running(UID).await.is_empty(), "still down");
    assert_eq!(node.rt.call_count(Method::RunPodSandbox), 1);
    assert_eq!(node.rt.call_count(Method::StartContainer), 1);
    assert_eq!(node.phase(UID).as_deref(), Some("Failed"));
}

/// The id of the pod's container `name` that the runtime reports running.
async fn running_named(node: &Node, uid: &str, name: &str) -> Option<String> {
    node.rt
        .list_containers(None)
        .await
        .expect("list containers")
        .into_iter()
        .filter(|c| c.state == RtState::Running)
        .filter(|c| crate::pods::labels::pod_uid_from_labels(&c.labels) == Some(uid))
        .find(|c| c.metadata.name == name)
        .map(|c| c.id)
}

#[tokio::test(start_paused = true)]
async fn a_start_records_pulled_created_and_started_per_container_init_first_and_always_pulls() {
    let node = Node::new();
    let spec = serde_json::json!({
        "initContainers": [{"name": "setup", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}],
        "containers": [
            {"name": "app", "image": IMAGE, "imagePullPolicy": "Never"},
            // `Always` pulls even a present image.
            {"name": "side", "image": IMAGE, "imagePullPolicy": "Always"},
        ],
    });
    let worker = node.spawn(pod("web", UID, &spec));
    let setup = until("the init container runs", async || {
        running_named(&node, UID, "setup").await
    })
    .await;
    node.rt.exit_container(&setup, 0);
    worker.poke(Trigger::Relist);
    until("both containers run", async || {
        let a = node.container(UID, "app").filter(is_running);
        let b = node.container(UID, "side").filter(is_running);
        (a.is_some() && b.is_some()).then_some(())
    })
    .await;

    let present = format!("Container image \"{IMAGE}\" already present on machine");
    assert_eq!(
        node.pod_events(UID),
        [
            normal("Pulled", &present, "spec.initContainers{setup}"),
            normal(
                "Created",
                "Created container: setup",
                "spec.initContainers{setup}"
            ),
            normal(
                "Started",
                "Started container setup",
                "spec.initContainers{setup}"
            ),
            normal("Pulled", &present, "spec.containers{app}"),
            normal("Created", "Created container: app", "spec.containers{app}"),
            normal("Started", "Started container app", "spec.containers{app}"),
            normal(
                "Pulling",
                &format!("Pulling image \"{IMAGE}\""),
                "spec.containers{side}"
            ),
            normal(
                "Pulled",
                &format!(
                    "Successfully pulled image \"{IMAGE}\" in 0s (0s including waiting). \
                     Image size: 1048576 bytes."
                ),
                "spec.containers{side}"
            ),
            normal(
                "Created",
                "Created container: side",
                "spec.containers{side}"
            ),
            normal("Started", "Started container side", "spec.containers{side}"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stopped_containers_record_killing_once_each_with_why() {
    let node = Node::new();
    // `a`'s preStop hook fails.
    node.rt
        .set_exec_handler(Arc::new(|_id: &str, cmd: &[String]| ExecOutput {
            stdout: Vec::new(),
            stderr: b"no drain here".to_vec(),
            exit_code: i32::from(cmd.first().is_some_and(|c| c == "/bin/drain")),
        }));
    let spec = |b_command: &str| {
        serde_json::json!({
            "containers": [
                {
                    "name": "a",
                    "image": IMAGE,
                    "lifecycle": {"preStop": {"exec": {"command": ["/bin/drain"]}}},
                },
                {"name": "b", "image": IMAGE, "command": [b_command]},
            ],
        })
    };
    let mut web = pod("web", UID, &spec("serve"));
    let worker = node.spawn(web.clone());
    until("both run", async || {
        let a = running_named(&node, UID, "a").await;
        let b = running_named(&node, UID, "b").await;
        a.zip(b)
    })
    .await;

    // `b`'s spec changes: it is replaced.
    web = pod("web", UID, &spec("serve-v2"));
    worker.spec.send_replace(Arc::new(web.clone()));
    until("b runs again", async || {
        node.container(UID, "b")
            .filter(|c| is_running(c) && c.restart_count == 1)
    })
    .await;
    // The pod is deleted in the API: both stop.
    web.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        node.clock.now(),
    ));
    worker.spec.send_replace(Arc::new(web.clone()));
    until("nothing runs", async || {
        node.running(UID).await.is_empty().then_some(())
    })
    .await;
    // Then it is gone: nothing runs any more, so nothing more is stopped.
    worker.terminate.cancel();
    worker.done.await.expect("worker");

    let killing: Vec<Recorded> = node
        .pod_events(UID)
        .into_iter()
        .filter(|e| e.reason == "Killing" || e.reason == "FailedPreStopHook")
        .collect();
    let mut deleted = killing[1..].to_vec();
    // The deletion stops both at once.
    deleted.sort_by(|x, y| {
        x.field_path
            .cmp(&y.field_path)
            .then(x.reason.cmp(&y.reason))
    });
    assert_eq!(
        killing[0],
        normal(
            "Killing",
            "Container b definition changed, will be restarted",
            "spec.containers{b}"
        ),
        "{killing:#?}"
    );
    assert_eq!(
        deleted,
        [
            Recorded {
                kind: "Warning".to_owned(),
                ..normal(
                    "FailedPreStopHook",
                    "PreStopHook failed",
                    "spec.containers{a}"
                )
            },
            normal("Killing", "Stopping container a", "spec.containers{a}"),
            normal("Killing", "Stopping container b", "spec.containers{b}"),
        ],
        "{killing:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_records_back_off_while_held_as_one_counted_event() {
    let node = Node::new();
    let worker = node.spawn(pod("web", UID, &serde_json::json!({})));
    let back_off = |n: &Node| {
        n.pod_events(UID)
            .into_iter()
            .filter(|e| e.reason == "BackOff")
            .collect::<Vec<_>>()
    };
    // The first exit restarts at once: no back-off.
    let mut restarts = 0;
    let mut held = 0;
    for pokes_while_held in [0, 2, 0, 0] {
        let id = until("the container runs", async || {
            running_named(&node, UID, "app").await
        })
        .await;
        node.rt.exit_container(&id, 1);
        worker.poke(Trigger::Relist);
        restarts += 1;
        if restarts > 1 {
            held += 1;
            until("the held restart is recorded", async || {
                let count: i32 = back_off(&node).iter().map(|e| e.count).sum();
                (count == held).then_some(())
            })
            .await;
            // Whatever wakes the worker during the window records it again, on the same
            // event.
            for _ in 0..pokes_while_held {
                worker.poke(Trigger::Relist);
                held += 1;
                until("the poke's sync records it", async || {
                    let count: i32 = back_off(&node).iter().map(|e| e.count).sum();
                    (count == held).then_some(())
                })
                .await;
            }
        }
        until("the container runs again", async || {
            node.container(UID, "app")
                .filter(|c| is_running(c) && c.restart_count == restarts)
        })
        .await;
    }
    // 3 held restarts (10 s, 20 s, 40 s windows) and 2 pokes: 5 syncs met the back-off,
    // and nothing else recorded it (the window's end starts the container).
    assert_eq!(
        back_off(&node),
        [Recorded {
            kind: "Warning".to_owned(),
            count: 5,
            ..normal(
                "BackOff",
                &format!("Back-off restarting failed container app in pod web_default({UID})"),
                "spec.containers{app}"
            )
        }]
    );
    let starts = node.rt.call_count(Method::StartContainer);
    assert_eq!(starts, 5);
    // Each start: one Created and one Started, counted.
    let events = node.pod_events(UID);
    let started = events
        .iter()
        .find(|e| e.reason == "Started")
        .expect("Started");
    assert_eq!(started.count, 5);
}

#[tokio::test(start_paused = true)]
async fn a_liveness_kill_records_one_killing() {
    let node = Node::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let check = Arc::clone(&healthy);
    node.rt
        .set_exec_handler(Arc::new(move |_id: &str, _cmd: &[String]| ExecOutput {
            stdout: b"not yet".to_vec(),
            stderr: Vec::new(),
            exit_code: i32::from(!check.load(std::sync::atomic::Ordering::SeqCst)),
        }));
    let spec = serde_json::json!({
        "containers": [{
            "name": "app",
            "image": IMAGE,
            "livenessProbe": {
                "exec": {"command": ["check"]},
                "periodSeconds": 1,
                "failureThreshold": 1,
                "timeoutSeconds": 1,
                "successThreshold": 1,
            },
        }],
    });
    let worker = Arc::new(node.spawn(pod("web", UID, &spec)));
    // The agent pokes the worker of a pod whose verdict changed.
    let mut pokes = node
        .probe_pokes
        .lock()
        .expect("lock")
        .take()
        .expect("probe pokes");
    let poked = Arc::clone(&worker);
    let forward = tokio::spawn(async move {
        while pokes.recv().await.is_some() {
            poked.poke(Trigger::Relist);
        }
    });
    until("the container is restarted", async || {
        node.container(UID, "app")
            .filter(|c| is_running(c) && c.restart_count == 1)
            .map(|_| healthy.store(true, std::sync::atomic::Ordering::SeqCst))
    })
    .await;
    // Long enough for the prober to see the new container healthy several times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    forward.abort();

    let events = node.pod_events(UID);
    let killing: Vec<&Recorded> = events.iter().filter(|e| e.reason == "Killing").collect();
    assert_eq!(
        killing,
        [&normal(
            "Killing",
            "Container app failed liveness probe, will be restarted",
            "spec.containers{app}"
        )],
        "{events:#?}"
    );
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    let at = |r: &str| reasons.iter().position(|x| *x == r);
    assert!(
        at("Unhealthy") < at("Killing"),
        "the failed probe, then the kill: {reasons:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replaced_sandbox_records_sandbox_changed_and_a_failed_one_says_why() {
    let node = Node::new();
    let worker = node.spawn(pod("web", UID, &serde_json::json!({})));
    until("the container runs", async || {
        running_named(&node, UID, "app").await
    })
    .await;
    assert!(
        node.pod_events(UID)
            .iter()
            .all(|e| e.reason != "SandboxChanged"),
        "a first sandbox is no change"
    );
    // The sandbox dies (its containers with it); the first new one fails.
    let sandbox = node
        .rt
        .list_pod_sandboxes(None)
        .await
        .expect("sandboxes")
        .remove(0);
    node.rt
        .stop_pod_sandbox(&sandbox.id)
        .await
        .expect("stop sandbox");
    node.rt.inject_once(
        Method::RunPodSandbox,
        crate::runtime::Fault::Error(tonic::Code::Unknown),
    );
    worker.poke(Trigger::Relist);
    until("the pod runs again", async || {
        node.container(UID, "app")
            .filter(|c| is_running(c) && c.restart_count == 1)
    })
    .await;

    let pod_level: Vec<Recorded> = node
        .pod_events(UID)
        .into_iter()
        .filter(|e| e.field_path.is_empty())
        .collect();
    assert_eq!(
        pod_level,
        [
            Recorded {
                count: 2,
                ..normal(
                    "SandboxChanged",
                    "Pod sandbox changed, it will be killed and re-created.",
                    ""
                )
            },
            Recorded {
                kind: "Warning".to_owned(),
                ..normal(
                    "FailedCreatePodSandBox",
                    "Failed to create pod sandbox: injected fault",
                    ""
                )
            },
        ]
    );
}

/// Upstream keys the image pull back-off by pod UID and image: two pods pulling the same
/// image that cannot be had each back off on their own windows, and a pod whose container
/// is changed to another image pulls that one at once.
#[tokio::test(start_paused = true)]
async fn two_pods_pulling_one_bad_image_back_off_independently() {
    const OTHER: &str = "1c8d2b6f-5a1e-4d62-8b64-2a7f2d3e4b5c";
    let node = Node::new();
    node.rt.inject(
        Method::PullImage,
        crate::runtime::Fault::Error(tonic::Code::NotFound),
    );
    let bad = serde_json::json!({
        "containers": [{"name": "app", "image": "registry.test/bad:v1", "imagePullPolicy": "IfNotPresent"}],
    });
    let pulls = |uid: &str| -> i32 {
        node.pod_events(uid)
            .iter()
            .filter(|e| e.reason == "Pulling")
            .map(|e| e.count)
            .sum()
    };
    let start = tokio::time::Instant::now();
    let a = node.spawn(pod("a", UID, &bad));
    let mut b = None;
    // When each pod's pull count went up, in whole seconds since the start.
    let mut seen = [(UID, 0, Vec::new()), (OTHER, 0, Vec::new())];
    while start.elapsed() < Duration::from_secs(40) {
        // The second pod arrives 5 s after the first one's pull failed.
        if b.is_none() && start.elapsed() >= Duration::from_secs(5) {
            b = Some(node.spawn(pod("b", OTHER, &bad)));
        }
        for (uid, count, at) in &mut seen {
            let now = pulls(uid);
            if now > *count {
                *count = now;
                at.push(start.elapsed().as_secs());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each pod: at once, after 10 s, after 20 s more; neither waits on the other's window.
    assert_eq!(seen[0].2, [0, 10, 30], "pod a's pulls");
    assert_eq!(seen[1].2, [5, 15, 35], "pod b's pulls");
    let (reason, message) = node
        .container(OTHER, "app")
        .as_ref()
        .and_then(waiting)
        .expect("b waits");
    // Its last pull failed at 35 s: `ErrImagePull` until a sync finds it held.
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}"
    );
    assert!(message.contains("\"registry.test/bad:v1\""), "{message}");

    // Pod a is changed to an image that is there: it starts now, not at its window's end.
    let changed = tokio::time::Instant::now();
    let good = serde_json::json!({
        "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}],
    });
    a.spec.send_replace(Arc::new(pod("a", UID, &good)));
    until("a runs the other image", async || {
        node.container(UID, "app").filter(is_running)
    })
    .await;
    assert_eq!(changed.elapsed().as_secs(), 0);
}

use k8s_openapi::api::core::v1::Secret;

use crate::pods::objects::{FakeObjects, PodObjects};

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_holds_the_container_until_it_exists_and_env_comes_from_it() {
    let objects = Arc::new(FakeObjects::default());
    let node = Node::with_objects(Some(Arc::clone(&objects) as Arc<dyn PodObjects>));
    let spec = serde_json::json!({"containers": [{
        "name": "app",
        "image": IMAGE,
        "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}],
        "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "DB_"}],
    }]});
    objects.secrets.lock().expect("lock").insert(
        "default/creds".to_owned(),
        serde_json::from_value(serde_json::json!({"data": {"USER": "YWxpY2U="}})).expect("secret"),
    );
    let worker = node.spawn(pod("web", UID, &spec));
    let (reason, message) = until("the container waits for its configMap", async || {
        node.container(UID, "app").as_ref().and_then(waiting)
    })
    .await;
    assert_eq!(
        (reason.as_str(), message.as_str()),
        (
            "CreateContainerConfigError",
            "configmap \"settings\" not found"
        )
    );
    assert!(
        node.events("Failed")
            .contains(&"Error: configmap \"settings\" not found".to_owned()),
        "{:?}",
        node.events("Failed")
    );
    assert_eq!(node.rt.call_count(Method::CreateContainer), 0);

    objects.config_maps.lock().expect("lock").insert(
        "default/settings".to_owned(),
        serde_json::from_value(serde_json::json!({"data": {"mode": "fast"}})).expect("cm"),
    );
    let id = until("the container runs once the configMap exists", async || {
        running_named(&node, UID, "app").await
    })
    .await;
    let config = node.rt.container_config(&id).expect("config");
    let envs: Vec<(&str, &str)> = config
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    assert_eq!(envs, [("DB_USER", "alice"), ("MODE", "fast")]);

    worker.terminate.cancel();
    worker.poke(Trigger::Relist);
    until("the worker ends", async || {
        worker.done.is_finished().then_some(())
    })
    .await;
    assert_eq!(
        *objects.registrations.lock().expect("lock"),
        [
            "register configmap default/settings,secret default/creds".to_owned(),
            format!("unregister {UID}"),
        ],
        "registered once when the worker starts, unregistered when it ends"
    );
}

#[tokio::test(start_paused = true)]
async fn pull_secrets_come_before_the_nodes_credentials_and_a_missing_one_is_reported() {
    let objects = Arc::new(FakeObjects::default());
    let node = Node::with_objects(Some(Arc::clone(&objects) as Arc<dyn PodObjects>));
    let config_json = br#"{"auths": {"127.0.0.1:5000": {"username": "puller", "password": "pw"}}}"#;
    objects.secrets.lock().expect("lock").insert(
        "default/regcred".to_owned(),
        Secret {
            type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
            data: Some(std::collections::BTreeMap::from([(
                ".dockerconfigjson".to_owned(),
                k8s_openapi::ByteString(config_json.to_vec()),
            )])),
            ..Secret::default()
        },
    );
    let image = "127.0.0.1:5000/private/app:1";
    let spec = serde_json::json!({
        "containers": [{"name": "app", "image": image}],
        "imagePullSecrets": [{"name": "absent"}, {"name": "regcred"}, {"name": ""}],
    });
    // Kept: a worker whose spec sender is gone spins on `changed()`.
    let _worker = node.spawn(pod("web", UID, &spec));
    until("the container runs", async || {
        running_named(&node, UID, "app").await
    })
    .await;
    assert_eq!(
        node.rt.pulls(),
        [(image.to_owned(), Some("puller".to_owned()))],
        "pulled with the pod's secret"
    );
    let warnings: Vec<Recorded> = node
        .pod_events(UID)
        .into_iter()
        .filter(|e| e.reason == "FailedToRetrieveImagePullSecret")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        (warnings[0].kind.as_str(), warnings[0].field_path.as_str()),
        ("Warning", ""),
        "about the pod"
    );
    assert_eq!(
        warnings[0].message,
        "Unable to retrieve some image pull secrets (absent); attempting to pull the image may \
         not succeed."
    );
}

#[tokio::test(start_paused = true)]
async fn a_standalone_pod_naming_pull_secrets_pulls_anonymously_with_a_warning() {
    let node = Node::new();
    let image = "127.0.0.1:5000/private/app:1";
    let spec = serde_json::json!({
        "containers": [{"name": "app", "image": image}],
        "imagePullSecrets": [{"name": "regcred"}],
    });
    // Kept: a worker whose spec sender is gone spins on `changed()`.
    let _worker = node.spawn(pod("web", UID, &spec));
    until("the container runs", async || {
        running_named(&node, UID, "app").await
    })
    .await;
    assert_eq!(node.rt.pulls(), [(image.to_owned(), None)]);
    assert_eq!(
        node.events("FailedToRetrieveImagePullSecret"),
        [
            "Unable to retrieve some image pull secrets (regcred); attempting to pull the image \
          may not succeed."
        ]
    );
}
