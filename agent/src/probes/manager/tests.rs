//! The scheduler and its verdicts, on the fake runtime with tokio's paused clock: exec
//! probes whose exit codes the test sets per command.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ExecAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::pods::plan::ObservedContainer;
use crate::probes::testing::start_container;
use crate::runtime::{ExecOutput, FakeRuntime, Fault, Method};

const UID: &str = "uid-1";

/// One prober on a fake runtime. Exec probes run `[name]`; `exit` says how each name
/// exits (default 0); `calls` lists the names run, in order.
struct Harness {
    rt: FakeRuntime,
    manager: ProbeManager,
    pokes: mpsc::Receiver<String>,
    metrics: ProbeMetrics,
    /// Where the prober records `Unhealthy` events.
    events: crate::record::Events,
    exit: Arc<Mutex<HashMap<String, i32>>>,
    calls: Arc<Mutex<Vec<String>>>,
    cancel: CancellationToken,
}

impl Harness {
    fn new(max_concurrent: usize) -> Self {
        let rt = FakeRuntime::default();
        let exit: Arc<Mutex<HashMap<String, i32>>> = Arc::default();
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let (exit_h, calls_h) = (Arc::clone(&exit), Arc::clone(&calls));
        rt.set_exec_handler(Arc::new(move |_, cmd: &[String]| {
            calls_h.lock().unwrap().push(cmd[0].clone());
            ExecOutput {
                stdout: format!("{} said no", cmd[0]).into_bytes(),
                exit_code: exit_h.lock().unwrap().get(&cmd[0]).copied().unwrap_or(0),
                ..ExecOutput::default()
            }
        }));
        let (tx, pokes) = mpsc::channel(16);
        let metrics = ProbeMetrics::new();
        let recorder = crate::record::Recorder::new("node");
        let events = recorder.events();
        let options = ProbeOptions {
            max_concurrent,
            jitter_seed: Some(42),
            recorder: Some(recorder),
        };
        let (manager, runner) =
            ProbeManager::new(Arc::new(rt.clone()), tx, metrics.clone(), &options);
        let cancel = CancellationToken::new();
        tokio::spawn(runner.run(cancel.clone()));
        Self {
            rt,
            manager,
            pokes,
            metrics,
            events,
            exit,
            calls,
            cancel,
        }
    }

    fn set_exit(&self, name: &str, code: i32) {
        self.exit.lock().unwrap().insert(name.to_owned(), code);
    }

    fn calls_of(&self, name: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == name)
            .count()
    }

    /// Pokes received so far (uids).
    fn drain_pokes(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(uid) = self.pokes.try_recv() {
            out.push(uid);
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn exec_probe(name: &str, period: i32, success: i32, failure: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![name.to_owned()]),
        }),
        period_seconds: Some(period),
        success_threshold: Some(success),
        failure_threshold: Some(failure),
        ..Probe::default()
    }
}

fn pod(containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-node".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some(UID.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers,
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container(name: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some("busybox".to_owned()),
        ..Container::default()
    }
}

fn observed(containers: &[(&str, &str)], state: ContainerState) -> ObservedPod {
    let now = Timestamp::now();
    ObservedPod {
        sandboxes: Vec::new(),
        containers: containers
            .iter()
            .map(|(name, id)| ObservedContainer {
                id: (*id).to_owned(),
                name: (*name).to_owned(),
                state,
                created: now,
                started_at: Some(now),
                finished_at: None,
                exit_code: None,
                reason: None,
                restart_count: 0,
                spec_hash: None,
                liveness: ProbeVerdict::Unknown,
                startup: ProbeVerdict::Unknown,
            })
            .collect(),
    }
}

async fn advance(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn failing_liveness_concludes_after_the_threshold_pokes_and_holds() {
    let mut h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    h.set_exit("live", 1);
    let mut app = container("app");
    app.liveness_probe = Some(exec_probe("live", 1, 1, 3));
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );

    advance(2).await;
    let r = h.manager.results(UID, &id);
    assert_eq!(
        r.liveness,
        ProbeVerdict::Unknown,
        "one or two failures only"
    );
    assert_eq!(
        r.last_failure.as_ref().map(ToString::to_string).as_deref(),
        Some("Liveness probe failed: live said no")
    );
    assert!(h.drain_pokes().is_empty(), "no verdict changed yet");

    advance(2).await;
    assert_eq!(h.manager.results(UID, &id).liveness, ProbeVerdict::Failure);
    assert_eq!(h.drain_pokes(), [UID]);
    let mut obs = observed(&[("app", &id)], ContainerState::Running);
    h.manager.annotate(UID, &mut obs);
    assert_eq!(obs.containers[0].liveness, ProbeVerdict::Failure);

    // On hold until the container is replaced: no more runs.
    advance(30).await;
    assert_eq!(h.calls_of("live"), 3);
    let labels = ProbeLabels {
        kind: ProbeKind::Liveness,
        container: "app",
        pod: "web-node",
        namespace: "default",
        pod_uid: UID,
    };
    assert_eq!(h.metrics.count(labels, "failed"), 3);
    let events = h.events.list();
    assert_eq!(
        events.len(),
        1,
        "one event counting every failure: {events:#?}"
    );
    assert_eq!(events[0].reason.as_deref(), Some("Unhealthy"));
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        events[0].message.as_deref(),
        Some("Liveness probe failed: live said no")
    );
    assert_eq!(events[0].count, Some(3));
    assert_eq!(events[0].involved_object.uid.as_deref(), Some(UID));
    // As upstream's prober: the event names the container by field path.
    assert_eq!(
        events[0].involved_object.field_path.as_deref(),
        Some("spec.containers{app}")
    );
    assert_eq!(
        events[0].involved_object.namespace.as_deref(),
        Some("default")
    );

    // The restarted container (new id) is probed afresh; the old one is forgotten.
    let new_id = start_container(&h.rt, UID, "app").await;
    h.set_exit("live", 0);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &new_id)], ContainerState::Running),
        None,
    );
    advance(3).await;
    assert_eq!(
        h.manager.results(UID, &new_id).liveness,
        ProbeVerdict::Success
    );
    assert_eq!(
        h.manager.results(UID, &id),
        ContainerProbeResults::default()
    );
    assert!(h.calls_of("live") > 3);
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_both_ways_with_thresholds() {
    let mut h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    let mut app = container("app");
    app.readiness_probe = Some(exec_probe("ready", 1, 2, 2));
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );
    assert_eq!(h.manager.results(UID, &id).readiness, None);

    advance(3).await;
    assert_eq!(h.manager.results(UID, &id).readiness, Some(true));
    assert_eq!(h.drain_pokes(), [UID]);

    h.set_exit("ready", 1);
    advance(1).await;
    assert_eq!(
        h.manager.results(UID, &id).readiness,
        Some(true),
        "one failure is below the threshold"
    );
    advance(1).await;
    assert_eq!(h.manager.results(UID, &id).readiness, Some(false));
    assert_eq!(h.drain_pokes(), [UID]);

    h.set_exit("ready", 0);
    advance(2).await;
    assert_eq!(h.manager.results(UID, &id).readiness, Some(true));
    assert_eq!(h.drain_pokes(), [UID]);
    // Readiness never stops probing.
    let before = h.calls_of("ready");
    advance(5).await;
    assert_eq!(h.calls_of("ready"), before + 5);
}

#[tokio::test(start_paused = true)]
async fn startup_holds_liveness_and_readiness_back_until_it_passes() {
    let mut h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    h.set_exit("start", 1);
    h.set_exit("live", 1);
    let mut app = container("app");
    app.startup_probe = Some(exec_probe("start", 1, 1, 100));
    app.liveness_probe = Some(exec_probe("live", 1, 1, 1));
    app.readiness_probe = Some(exec_probe("ready", 1, 1, 1));
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );

    advance(20).await;
    assert!(h.calls_of("start") >= 19);
    assert_eq!(h.calls_of("live"), 0, "liveness waits for startup");
    assert_eq!(h.calls_of("ready"), 0, "readiness waits for startup");
    let r = h.manager.results(UID, &id);
    assert_eq!(
        (r.startup, r.liveness, r.readiness),
        (ProbeVerdict::Unknown, ProbeVerdict::Unknown, None)
    );

    h.set_exit("start", 0);
    advance(2).await;
    let r = h.manager.results(UID, &id);
    assert_eq!(r.startup, ProbeVerdict::Success);
    assert_eq!(
        r.liveness,
        ProbeVerdict::Failure,
        "liveness ran right after"
    );
    assert_eq!(r.readiness, Some(true));
    assert!(!h.drain_pokes().is_empty());
    // The startup probe is done for this container.
    let starts = h.calls_of("start");
    advance(10).await;
    assert_eq!(h.calls_of("start"), starts);
}

#[tokio::test(start_paused = true)]
async fn a_failed_startup_probe_concludes_and_stops() {
    let mut h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    h.set_exit("start", 1);
    let mut app = container("app");
    app.startup_probe = Some(exec_probe("start", 2, 1, 3));
    app.liveness_probe = Some(exec_probe("live", 1, 1, 1));
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );
    advance(20).await;
    let r = h.manager.results(UID, &id);
    assert_eq!(r.startup, ProbeVerdict::Failure);
    assert_eq!(r.liveness, ProbeVerdict::Unknown);
    assert_eq!(h.calls_of("start"), 3);
    assert_eq!(h.calls_of("live"), 0);
    assert_eq!(h.drain_pokes(), [UID]);
}

#[tokio::test(start_paused = true)]
async fn first_run_waits_for_the_initial_delay_plus_jitter_within_one_period() {
    let h = Harness::new(10);
    let mut containers = Vec::new();
    let mut running = Vec::new();
    for i in 0..20 {
        let name = format!("c{i}");
        let mut c = container(&name);
        c.liveness_probe = Some(Probe {
            initial_delay_seconds: Some(5),
            ..exec_probe(&name, 10, 1, 3)
        });
        containers.push(c);
        running.push((name.clone(), start_container(&h.rt, UID, &name).await));
    }
    let pod = pod(containers);
    let pairs: Vec<(&str, &str)> = running
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_str()))
        .collect();
    h.manager
        .add_pod(&pod, &observed(&pairs, ContainerState::Running), None);

    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert!(
        h.calls.lock().unwrap().is_empty(),
        "inside the initial delay"
    );
    advance(5).await;
    let early = h.calls.lock().unwrap().len();
    assert!(
        early > 0 && early < 20,
        "first runs spread over the period, not all at once: {early}"
    );
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let mut names = h.calls.lock().unwrap().clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 20, "every probe ran within delay + period");
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_cap_run_at_once_and_the_rest_wait_their_turn() {
    let h = Harness::new(2);
    // Every ExecSync answers after 5s.
    h.rt.inject(Method::ExecSync, Fault::Delay(Duration::from_secs(5)));
    let mut containers = Vec::new();
    let mut running = Vec::new();
    for i in 0..6 {
        let name = format!("c{i}");
        let mut c = container(&name);
        c.liveness_probe = Some(Probe {
            timeout_seconds: Some(10),
            ..exec_probe(&name, 1, 1, 3)
        });
        containers.push(c);
        running.push((name.clone(), start_container(&h.rt, UID, &name).await));
    }
    let pod = pod(containers);
    let pairs: Vec<(&str, &str)> = running
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_str()))
        .collect();
    h.manager
        .add_pod(&pod, &observed(&pairs, ContainerState::Running), None);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.rt.call_count(Method::ExecSync), 2);
    advance(5).await;
    assert_eq!(h.rt.call_count(Method::ExecSync), 4);
    advance(5).await;
    assert_eq!(
        h.rt.call_count(Method::ExecSync),
        6,
        "overdue probes run in deadline order before repeats"
    );
    let mut names: Vec<String> = h.calls.lock().unwrap().clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4, "four have answered by now: {names:?}");
}

#[tokio::test(start_paused = true)]
async fn exited_containers_and_removed_pods_lose_their_probes_and_series() {
    let h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    let mut app = container("app");
    app.readiness_probe = Some(exec_probe("ready", 1, 1, 1));
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );
    advance(3).await;
    assert_eq!(h.manager.results(UID, &id).readiness, Some(true));

    // The container exited: its probes stop and its results go.
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Exited),
        None,
    );
    advance(1).await;
    let runs = h.calls_of("ready");
    advance(10).await;
    assert_eq!(h.calls_of("ready"), runs);
    assert_eq!(
        h.manager.results(UID, &id),
        ContainerProbeResults::default()
    );

    let labels = ProbeLabels {
        kind: ProbeKind::Readiness,
        container: "app",
        pod: "web-node",
        namespace: "default",
        pod_uid: UID,
    };
    // Series survive a container restart but not the pod.
    assert!(h.metrics.count(labels, "successful") > 0);
    let id2 = start_container(&h.rt, UID, "app").await;
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id2)], ContainerState::Running),
        None,
    );
    advance(3).await;
    h.manager.remove_pod(UID);
    advance(3).await;
    assert_eq!(h.metrics.count(labels, "successful"), 0);
    assert_eq!(
        h.manager.results(UID, &id2),
        ContainerProbeResults::default()
    );
    let runs = h.calls_of("ready");
    advance(10).await;
    assert_eq!(h.calls_of("ready"), runs);
}

#[tokio::test(start_paused = true)]
async fn unrunnable_probes_count_as_unknown_and_conclude_nothing() {
    let h = Harness::new(10);
    let id = start_container(&h.rt, UID, "app").await;
    let mut app = container("app");
    // A named port the container does not declare.
    app.readiness_probe = Some(Probe {
        tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
            port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                "missing".to_owned(),
            ),
            host: None,
        }),
        period_seconds: Some(1),
        failure_threshold: Some(1),
        ..Probe::default()
    });
    let pod = pod(vec![app]);
    h.manager.add_pod(
        &pod,
        &observed(&[("app", &id)], ContainerState::Running),
        None,
    );
    advance(5).await;
    let r = h.manager.results(UID, &id);
    assert_eq!(r.readiness, None);
    assert_eq!(r.last_failure, None);
    let labels = ProbeLabels {
        kind: ProbeKind::Readiness,
        container: "app",
        pod: "web-node",
        namespace: "default",
        pod_uid: UID,
    };
    assert!(h.metrics.count(labels, "unknown") >= 4);
}

#[tokio::test(start_paused = true)]
async fn pods_without_probes_and_regular_init_containers_are_not_probed() {
    let h = Harness::new(10);
    let id = start_container(&h.rt, UID, "plain").await;
    let init_id = start_container(&h.rt, UID, "init").await;
    let mut init = container("init");
    init.liveness_probe = Some(exec_probe("init-live", 1, 1, 1));
    let mut pod = pod(vec![container("plain")]);
    pod.spec.as_mut().unwrap().init_containers = Some(vec![init]);
    h.manager.add_pod(
        &pod,
        &observed(
            &[("plain", &id), ("init", &init_id)],
            ContainerState::Running,
        ),
        None,
    );
    advance(5).await;
    assert!(h.calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sidecars_are_probed() {
    let h = Harness::new(10);
    let id = start_container(&h.rt, UID, "side").await;
    let mut side = container("side");
    side.restart_policy = Some("Always".to_owned());
    side.readiness_probe = Some(exec_probe("side-ready", 1, 1, 1));
    let mut pod = pod(vec![container("plain")]);
    pod.spec.as_mut().unwrap().init_containers = Some(vec![side]);
    h.manager.add_pod(
        &pod,
        &observed(&[("side", &id)], ContainerState::Running),
        None,
    );
    advance(3).await;
    assert_eq!(h.manager.results(UID, &id).readiness, Some(true));
}
