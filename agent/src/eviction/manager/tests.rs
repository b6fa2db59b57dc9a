use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::cgroups::{CgroupDriver, QosTree};
use crate::config::eviction::ThresholdValue;
use crate::eviction::local_storage::{ContainerStorage, Limit, LimitedContainer};
use crate::eviction::pod::{ContainerInfo, ContainerUsage, PodInfo};
use crate::eviction::signals::{Remnant, SignalRoots};
use crate::images::gc::{GcPolicy, ImageGc};
use crate::model::quantity::QuantityValue;
use crate::runtime::FakeRuntime;

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

fn bytes(n: u64) -> ThresholdValue {
    ThresholdValue::Quantity(QuantityValue::from_units(n))
}

fn threshold(signal: Signal, value: ThresholdValue, grace: u64) -> Threshold {
    Threshold {
        signal,
        value,
        grace_period: Duration::from_secs(grace),
        min_reclaim: None,
    }
}

fn config(
    thresholds: Vec<Threshold>,
    max_grace: Option<u64>,
    ranking: EvictionRanking,
) -> EvictionConfig {
    let (hard, soft) = thresholds.into_iter().partition(is_hard);
    EvictionConfig {
        hard,
        soft,
        pressure_transition_period: Duration::from_secs(300),
        max_pod_grace_period: max_grace.map(Duration::from_secs),
        ranking,
        local_storage_capacity_isolation: true,
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
}

/// A pod with one container `app` whose usage is the pod's.
fn pod(uid: &str, qos: QosClass, request: u64, usage: u64) -> PodUsage {
    let request_str = (request > 0).then(|| format!("{}Mi", request / MI));
    PodUsage {
        uid: uid.into(),
        name: format!("default/{uid}"),
        qos,
        priority: 0,
        critical: false,
        grace_period: Duration::from_secs(30),
        memory_request: request,
        memory_working_set: Some(usage),
        storage_request: 0,
        disk_bytes: None,
        inodes: None,
        processes: Some(1),
        containers: vec![ContainerUsage {
            name: "app".into(),
            memory_request: request_str,
            memory_working_set: Some(usage),
        }],
    }
}

fn the_ramp() -> Vec<PodUsage> {
    vec![
        pod("guaranteed", QosClass::Guaranteed, 100 * MI, 101 * MI),
        pod("burstable", QosClass::Burstable, 100 * MI, 50 * MI),
        pod("besteffort", QosClass::BestEffort, 0, 812 * MI),
    ]
}

fn memory(available: u64) -> Observations {
    Observations::default().with(Signal::MemoryAvailable, available, 8 * GI)
}

fn victim(d: &Decision) -> Option<&str> {
    d.eviction.as_ref().map(|e| e.pod_uid.as_str())
}

#[test]
fn hard_memory_threshold_evicts_one_pod_at_once() {
    let mut m = EvictionManager::new(
        config(
            vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
            None,
            EvictionRanking::Qos,
        ),
        false,
    );
    let d = m.decide(&memory(GI), &the_ramp(), at(0));
    assert_eq!(d.outcome, Outcome::NoPressure);
    assert!(d.eviction.is_none());

    let d = m.decide(&memory(50 * MI + 4096), &the_ramp(), at(1));
    assert_eq!(d.outcome, Outcome::Evict);
    assert!(!d.reclaim_disk_first);
    let e = d.eviction.expect("eviction");
    assert_eq!(
        e,
        Eviction {
            pod_uid: "besteffort".into(),
            pod_name: "default/besteffort".into(),
            qos: QosClass::BestEffort,
            grace_period: Duration::ZERO,
            signal: Signal::MemoryAvailable.into(),
            resource: Resource::Memory,
            hard: true,
            reason: "Evicted",
            message: "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51204Ki. \
                      Container app was using 812Mi, request is 0, has larger consumption of memory. "
                .into(),
            offenders: vec![Offender {
                container: "app".into(),
                usage: "812Mi".into()
            }],
            trigger: None,
            latency: None,
        }
    );
    assert_eq!(
        m.pending_evictions(),
        [("besteffort".to_owned(), QosClass::BestEffort)]
    );
}

#[test]
fn the_next_eviction_waits_for_the_previous_pod_to_be_gone() {
    let mut m = EvictionManager::new(
        config(
            vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
            None,
            EvictionRanking::Qos,
        ),
        false,
    );
    let pods = the_ramp();
    let d = m.decide(&memory(MI), &pods, at(0));
    assert_eq!(victim(&d), Some("besteffort"));

    // Remnant not observed, or processes left: wait.
    let d = m.decide(&memory(MI), &pods, at(1));
    assert_eq!(
        d.outcome,
        Outcome::WaitingForCleanup {
            pod_uid: "besteffort".into()
        }
    );
    let mut obs = memory(MI);
    obs.remnants
        .insert("besteffort".into(), Remnant::Present { processes: Some(2) });
    assert_eq!(victim(&m.decide(&obs, &pods, at(2))), None);
    obs.remnants
        .insert("besteffort".into(), Remnant::Present { processes: None });
    assert_eq!(victim(&m.decide(&obs, &pods, at(3))), None);

    // The pod's processes are gone: the next pod goes, the evicted one is never picked again
    // even if the agent still lists it.
    obs.remnants
        .insert("besteffort".into(), Remnant::Present { processes: Some(0) });
    let d = m.decide(&obs, &pods, at(4));
    assert_eq!(victim(&d), Some("burstable"));

    // Cleanup timeout: after 30s the manager moves on.
    let d = m.decide(&memory(MI), &pods[..1], at(33));
    assert_eq!(
        d.outcome,
        Outcome::WaitingForCleanup {
            pod_uid: "burstable".into()
        }
    );
    let d = m.decide(&memory(MI), &pods[..1], at(34));
    assert_eq!(victim(&d), Some("guaranteed"));

    // Gone for good.
    let mut obs = memory(GI);
    obs.remnants.insert("guaranteed".into(), Remnant::Gone);
    assert_eq!(m.decide(&obs, &[], at(35)).outcome, Outcome::NoPressure);
    assert!(m.pending_evictions().is_empty());
}

#[test]
fn grace_periods_for_soft_and_hard_thresholds() {
    // (pod grace, evictionMaxPodGracePeriod, hard, expected grace)
    let cases: &[(u64, Option<u64>, bool, u64)] = &[
        (30, None, true, 0),
        (30, Some(10), true, 0),
        (30, None, false, 30),
        (45, Some(10), false, 10),
        (5, Some(10), false, 5),
        (0, Some(10), false, 0),
    ];
    for &(pod_grace, max, hard, want) in cases {
        let grace = if hard { 0 } else { 60 };
        let mut m = EvictionManager::new(
            config(
                vec![threshold(Signal::MemoryAvailable, bytes(GI), grace)],
                max,
                EvictionRanking::Qos,
            ),
            false,
        );
        let mut p = pod("p", QosClass::BestEffort, 0, MI);
        p.grace_period = Duration::from_secs(pod_grace);
        let first = m.decide(&memory(MI), std::slice::from_ref(&p), at(0));
        let d = if hard {
            first
        } else {
            assert_eq!(
                first.outcome,
                Outcome::NoPressure,
                "soft: in its grace period"
            );
            assert_eq!(first.evaluation.in_grace.len(), 1);
            assert!(
                first.evaluation.conditions.iter().any(|c| c.status),
                "pressure is reported at once"
            );
            assert_eq!(
                m.decide(&memory(MI), std::slice::from_ref(&p), at(59))
                    .outcome,
                Outcome::NoPressure
            );
            m.decide(&memory(MI), std::slice::from_ref(&p), at(60))
        };
        let e = d.eviction.expect("eviction");
        assert_eq!(
            e.grace_period,
            Duration::from_secs(want),
            "{pod_grace} {max:?} {hard}"
        );
        assert_eq!(e.hard, hard);
    }
}

#[test]
fn ranking_mode_decides_the_victim() {
    let pods = vec![
        pod("besteffort", QosClass::BestEffort, 0, MI),
        pod("guaranteed", QosClass::Guaranteed, 100 * MI, 300 * MI),
    ];
    for (ranking, want) in [
        (EvictionRanking::Qos, "besteffort"),
        (EvictionRanking::Upstream, "guaranteed"),
    ] {
        let mut m = EvictionManager::new(
            config(
                vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
                None,
                ranking,
            ),
            false,
        );
        assert_eq!(m.ranking(), ranking);
        assert_eq!(
            victim(&m.decide(&memory(MI), &pods, at(0))),
            Some(want),
            "{ranking:?}"
        );
    }
}

#[test]
fn critical_pods_are_never_evicted() {
    let mut m = EvictionManager::new(
        config(
            vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
            None,
            EvictionRanking::Qos,
        ),
        false,
    );
    let mut critical = pod("critical", QosClass::BestEffort, 0, GI);
    critical.critical = true;
    let d = m.decide(&memory(MI), std::slice::from_ref(&critical), at(0));
    assert_eq!(
        d.outcome,
        Outcome::NoVictim {
            signal: Signal::MemoryAvailable
        }
    );
    let d = m.decide(
        &memory(MI),
        &[critical, pod("g", QosClass::Guaranteed, GI, GI)],
        at(1),
    );
    assert_eq!(victim(&d), Some("g"));
}

#[test]
fn allocatable_thresholds_come_from_hard_memory_thresholds() {
    let obs = Observations::default()
        .with(Signal::MemoryAvailable, 4 * GI, 8 * GI)
        .with(Signal::AllocatableMemoryAvailable, 50 * MI, 300 * MI);
    let thresholds = vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)];
    let mut m = EvictionManager::new(
        config(thresholds.clone(), None, EvictionRanking::Qos),
        false,
    );
    assert_eq!(
        m.decide(&obs, &the_ramp(), at(0)).outcome,
        Outcome::NoPressure
    );

    let mut m = EvictionManager::new(config(thresholds, None, EvictionRanking::Qos), true);
    let d = m.decide(&obs, &the_ramp(), at(0));
    let e = d.eviction.expect("eviction");
    assert_eq!(e.signal, Signal::AllocatableMemoryAvailable);
    assert_eq!(e.pod_uid, "besteffort");
    assert!(
        e.message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. "
        ),
        "{}",
        e.message
    );
    let memory_pressure = d
        .evaluation
        .conditions
        .iter()
        .find(|c| c.kind == PressureCondition::MemoryPressure)
        .expect("condition");
    assert!(memory_pressure.status);
    assert_eq!(memory_pressure.reason, "KubeletHasInsufficientMemory");
}

#[test]
fn disk_pressure_reclaims_before_evicting() {
    let thresholds = vec![threshold(
        Signal::NodeFsAvailable,
        ThresholdValue::Percentage(10.0),
        0,
    )];
    let nodefs =
        |available| Observations::default().with(Signal::NodeFsAvailable, available, 100 * GI);
    let mut pods = the_ramp();
    pods[0].disk_bytes = Some(10 * GI);
    pods[1].disk_bytes = Some(GI);
    pods[2].disk_bytes = Some(0);
    let mut m = EvictionManager::new(config(thresholds, None, EvictionRanking::Qos), false);
    let d = m.decide(&nodefs(5 * GI), &pods, at(0));
    assert_eq!(d.outcome, Outcome::Evict);
    assert!(d.reclaim_disk_first);
    let e = d.eviction.expect("eviction");
    assert_eq!(e.pod_uid, "guaranteed", "disk ranking has no QoS key");
    assert_eq!(
        e.message,
        "The node was low on resource: ephemeral-storage. "
    );
    assert!(
        m.pending_evictions().is_empty(),
        "not evicted until confirmed"
    );

    // Reclaim freed enough: no eviction.
    assert_eq!(
        m.confirm_after_reclaim(e.clone(), &nodefs(20 * GI), at(1)),
        None
    );
    assert!(m.pending_evictions().is_empty());
    // Not enough: evict, and wait for it.
    assert_eq!(
        m.confirm_after_reclaim(e.clone(), &nodefs(9 * GI), at(2)),
        Some(e)
    );
    assert_eq!(m.pending_evictions().len(), 1);
}

#[test]
fn pid_pressure_evicts_by_priority_then_processes() {
    let thresholds = vec![threshold(Signal::PidAvailable, bytes(1000), 0)];
    let mut pods = the_ramp();
    pods[0].processes = Some(10);
    pods[1].processes = Some(5000);
    pods[2].processes = Some(100);
    let mut m = EvictionManager::new(config(thresholds, None, EvictionRanking::Qos), false);
    let obs = Observations::default().with(Signal::PidAvailable, 500, 32_768);
    let d = m.decide(&obs, &pods, at(0));
    let e = d.eviction.expect("eviction");
    assert_eq!(e.pod_uid, "burstable");
    assert!(!d.reclaim_disk_first);
    assert_eq!(
        e.message,
        "The node was low on resource: pids. Threshold quantity: 1k, available: 500. "
    );
}

#[test]
fn stats_are_gathered_for_the_resources_under_pressure() {
    let thresholds = [
        threshold(Signal::MemoryAvailable, bytes(100 * MI), 0),
        Threshold {
            min_reclaim: Some(bytes(GI)),
            ..threshold(Signal::NodeFsAvailable, bytes(GI), 0)
        },
    ];
    let cases = [
        (
            GI,
            10 * GI,
            PodStatsNeed {
                usage: false,
                containers: false,
                disk: false,
            },
        ),
        (
            MI,
            10 * GI,
            PodStatsNeed {
                usage: true,
                containers: true,
                disk: false,
            },
        ),
        // Within the minimum reclaim counts: the threshold may still be active.
        (
            GI,
            GI + MI,
            PodStatsNeed {
                usage: true,
                containers: false,
                disk: true,
            },
        ),
        (
            MI,
            0,
            PodStatsNeed {
                usage: true,
                containers: true,
                disk: true,
            },
        ),
    ];
    for (mem, disk, want) in cases {
        let obs = memory(mem).with(Signal::NodeFsAvailable, disk, 100 * GI);
        assert_eq!(stats_needed(&thresholds, &obs), want, "{mem} {disk}");
    }
}

fn k8s_pod(
    requests: &[(&str, &str)],
    tolerations: Vec<Toleration>,
    priority_class: Option<&str>,
) -> Pod {
    let requests: BTreeMap<String, Quantity> = requests
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect();
    Pod {
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements {
                    requests: (!requests.is_empty()).then_some(requests),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            priority_class_name: priority_class.map(str::to_owned),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn admission_under_pressure() {
    let conditions = |kinds: &[PressureCondition]| -> Vec<NodeCondition> {
        PressureCondition::ALL
            .into_iter()
            .map(|kind| {
                let status = kinds.contains(&kind);
                let (reason, message) = kind.reason_and_message(status);
                NodeCondition {
                    kind,
                    status,
                    reason,
                    message,
                    last_transition_time: at(0),
                }
            })
            .collect()
    };
    let best_effort = k8s_pod(&[], vec![], None);
    let burstable = k8s_pod(&[("memory", "10Mi")], vec![], None);
    let critical = k8s_pod(&[], vec![], Some("system-node-critical"));
    let tolerant = k8s_pod(
        &[],
        vec![Toleration {
            key: Some("node.kubernetes.io/memory-pressure".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }],
        None,
    );
    let tolerates_all = k8s_pod(
        &[],
        vec![Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        }],
        None,
    );
    let memory = [PressureCondition::MemoryPressure];
    let memory_disk = [
        PressureCondition::MemoryPressure,
        PressureCondition::DiskPressure,
    ];
    let pid = [PressureCondition::PidPressure];
    let cases: Vec<(&str, &[PressureCondition], &Pod, Option<&str>)> = vec![
        ("no pressure", &[], &best_effort, None),
        (
            "memory: BestEffort refused",
            &memory,
            &best_effort,
            Some("The node had condition: [MemoryPressure]. "),
        ),
        ("memory: Burstable admitted", &memory, &burstable, None),
        ("memory: critical admitted", &memory, &critical, None),
        ("memory: toleration admitted", &memory, &tolerant, None),
        ("memory: tolerate everything", &memory, &tolerates_all, None),
        (
            "memory and disk: everyone refused",
            &memory_disk,
            &burstable,
            Some("The node had condition: [MemoryPressure DiskPressure]. "),
        ),
        (
            "memory and disk: toleration no help",
            &memory_disk,
            &tolerant,
            Some("The node had condition: [MemoryPressure DiskPressure]. "),
        ),
        (
            "pid: refused",
            &pid,
            &burstable,
            Some("The node had condition: [PIDPressure]. "),
        ),
        ("pid: critical admitted", &pid, &critical, None),
    ];
    for (name, kinds, pod, want) in cases {
        let got = admit(&conditions(kinds), pod);
        match want {
            None => assert_eq!(got, Ok(()), "{name}"),
            Some(message) => assert_eq!(
                got,
                Err(Rejection {
                    reason: "Evicted",
                    message: message.into()
                }),
                "{name}"
            ),
        }
    }
}

/// The pods of the shell test, changeable while it runs, and how often they were asked for.
#[derive(Clone, Default)]
struct TestPods(
    Arc<Mutex<Vec<PodInfo>>>,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<Mutex<Vec<LimitedPod>>>,
);

impl TestPods {
    fn asked(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl PodProvider for TestPods {
    fn active_pods(&self) -> Vec<PodInfo> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.lock().expect("lock").clone()
    }
    fn wanted_images(&self) -> Vec<String> {
        Vec::new()
    }
    fn storage_limited_pods(&self) -> Vec<LimitedPod> {
        self.2.lock().expect("lock").clone()
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn info(uid: &str, qos: QosClass) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        name: format!("default/{uid}"),
        qos,
        priority: 0,
        critical: false,
        grace_period: Duration::from_secs(30),
        memory_request: 0,
        storage_request: 0,
        containers: vec![ContainerInfo {
            name: "app".into(),
            id: Some(format!("c-{uid}")),
            memory_request: None,
        }],
        local_storage: Vec::new(),
    }
}

/// A cgroup v2 pod with `usage` bytes in its one container and `tasks` tasks.
fn pod_cgroup(root: &Path, qos_dir: &str, uid: &str, usage: u64, tasks: u64) {
    let pod = root
        .join("kubepods")
        .join(qos_dir)
        .join(format!("pod{uid}"));
    for dir in [pod.clone(), pod.join(format!("c-{uid}"))] {
        write(&dir.join("memory.current"), &usage.to_string());
        write(&dir.join("memory.stat"), "inactive_file 0\n");
    }
    write(&pod.join("pids.current"), &tasks.to_string());
}

async fn next_eviction(rx: &mut mpsc::Receiver<Eviction>) -> Eviction {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an eviction in time")
        .expect("channel open")
}

/// A running eviction manager over a fake v2 tree: kubepods limited to 300 MiB at
/// 100 MiB, a BestEffort pod `be` (60 MiB) and a Burstable `bu` (40 MiB); threshold
/// `memory.available < 100Mi`, periodic floor an hour away. Its first (periodic)
/// evaluation has published conditions without pressure.
struct Shell {
    _dir: tempfile::TempDir,
    cg: std::path::PathBuf,
    kubepods: std::path::PathBuf,
    pods: TestPods,
    evictions: mpsc::Receiver<Eviction>,
    conditions: watch::Receiver<Vec<NodeCondition>>,
    trigger_tx: mpsc::Sender<Trigger>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Shell {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path().join("proc");
        write(
            &proc_root.join("meminfo"),
            "MemTotal: 8388608 kB\nMemFree: 4194304 kB\nInactive(file): 0 kB\n",
        );
        write(&proc_root.join("sys/kernel/pid_max"), "32768\n");
        write(&proc_root.join("loadavg"), "0 0 0 1/100 1\n");
        let cg = dir.path().join("cgroup2");
        write(
            &cg.join("memory.stat"),
            &format!("anon {GI}\nfile 0\ninactive_file 0\n"),
        );
        let kubepods = cg.join("kubepods");
        write(&kubepods.join("memory.max"), &(300 * MI).to_string());
        write(&kubepods.join("memory.stat"), "inactive_file 0\n");
        write(&kubepods.join("memory.current"), &(100 * MI).to_string());
        pod_cgroup(&cg, "besteffort", "be", 60 * MI, 3);
        pod_cgroup(&cg, "burstable", "bu", 40 * MI, 2);

        let observer = Observer::new(
            SignalRoots {
                proc_root,
                nodefs: dir.path().to_path_buf(),
            },
            QosTree::new(CgroupDriver::v2(&cg), "/"),
        );
        let pods = TestPods::default();
        *pods.0.lock().expect("lock") = vec![
            info("be", QosClass::BestEffort),
            info("bu", QosClass::Burstable),
        ];
        let (eviction_tx, evictions) = mpsc::channel(4);
        let (conditions_tx, mut conditions) = watch::channel(Vec::new());
        let (trigger_tx, triggers) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let manager = EvictionManager::new(
            config(
                vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
                None,
                EvictionRanking::Qos,
            ),
            true,
        )
        .with_monitoring_interval(Duration::from_secs(3600));
        let runtime = Arc::new(FakeRuntime::new());
        let task = tokio::spawn(manager.run(
            EvictionIo {
                observer,
                runtime: Arc::clone(&runtime),
                image_gc: Arc::new(ImageGc::new(runtime, GcPolicy::default())),
                pods: pods.clone(),
                evictions: eviction_tx,
                conditions: conditions_tx,
            },
            triggers,
            cancel.clone(),
        ));

        // The first (periodic) evaluation publishes the conditions: no pressure.
        tokio::time::timeout(Duration::from_secs(10), conditions.changed())
            .await
            .expect("conditions in time")
            .expect("sender alive");
        let published = conditions.borrow_and_update().clone();
        assert_eq!(published.len(), 3);
        assert!(published.iter().all(|c| !c.status), "{published:?}");
        Self {
            _dir: dir,
            cg,
            kubepods,
            pods,
            evictions,
            conditions,
            trigger_tx,
            cancel,
            task,
        }
    }

    /// Kubepods' usage goes past the allocatable threshold.
    fn press(&self) {
        write(
            &self.kubepods.join("memory.current"),
            &(280 * MI).to_string(),
        );
    }

    /// A kernel pressure event.
    async fn kernel_trigger(&self) {
        self.trigger_tx.send(Trigger::now()).await.expect("trigger");
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops on cancel")
            .expect("no panic");
    }
}

#[tokio::test(start_paused = true)]
async fn the_shell_evicts_on_kernel_triggers_and_after_cleanup() {
    let Shell {
        _dir,
        cg,
        kubepods,
        pods,
        mut evictions,
        mut conditions,
        trigger_tx,
        cancel,
        task,
    } = Shell::start().await;
    // Pressure on kubepods, then a kernel event.
    write(&kubepods.join("memory.current"), &(280 * MI).to_string());
    let sent = Trigger::now();
    trigger_tx.send(sent).await.expect("trigger");
    let e = next_eviction(&mut evictions).await;
    assert_eq!(e.pod_uid, "be");
    assert_eq!(e.trigger, Some(TriggerKind::Kernel));
    assert_eq!(e.signal, Signal::AllocatableMemoryAvailable);
    assert!(e.latency.expect("latency") <= sent.at.elapsed());
    assert_eq!(
        e.message,
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi. \
         Container app was using 60Mi, request is 0, has larger consumption of memory. "
    );
    conditions.changed().await.expect("sender alive");
    assert!(
        conditions
            .borrow_and_update()
            .iter()
            .any(|c| c.kind == PressureCondition::MemoryPressure && c.status)
    );

    // More kernel events while the pod dies: nothing else is evicted, neither on the
    // trigger nor on the three cleanup polls that follow (virtual time: the evaluations
    // due in these 300 ms have all run when the sleep returns).
    trigger_tx.send(Trigger::now()).await.expect("trigger");
    tokio::time::sleep(3 * CLEANUP_POLL).await;
    assert!(evictions.try_recv().is_err(), "one eviction at a time");

    // The agent killed it: no tasks left. Still under pressure: the cleanup poll evicts the
    // next pod without waiting for the periodic floor.
    pods.0.lock().expect("lock").remove(0);
    write(&cg.join("kubepods/besteffort/podbe/pids.current"), "0");
    let e = next_eviction(&mut evictions).await;
    assert_eq!(e.pod_uid, "bu");
    assert_eq!(e.trigger, Some(TriggerKind::Cleanup));

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on cancel")
        .expect("no panic");
}

/// A kernel trigger that finds no pressure yet (usage crossed the notifier's threshold,
/// the signal not yet its own) keeps the manager looking for a moment.
#[tokio::test(start_paused = true)]
async fn a_kernel_trigger_without_pressure_is_watched_for_a_moment() {
    let mut shell = Shell::start().await;
    shell.kernel_trigger().await;
    // The trigger's evaluation and two watch polls, without pressure.
    tokio::time::sleep(WATCH_POLL * 5 / 2).await;
    assert!(shell.evictions.try_recv().is_err(), "no pressure yet");
    // The signal crosses its threshold with no further kernel event.
    shell.press();
    let e = next_eviction(&mut shell.evictions).await;
    assert_eq!(e.pod_uid, "be");
    assert_eq!(e.trigger, Some(TriggerKind::Watch));
    shell.stop().await;
}

/// Evaluations that find no threshold met look at the node's signals only: the pods (a copy
/// of every pod's status in the agent) are asked for once there is pressure.
#[tokio::test(start_paused = true)]
async fn pods_are_looked_at_only_under_pressure() {
    let mut shell = Shell::start().await;
    shell.kernel_trigger().await;
    // The trigger and the watch's evaluations every 100 ms, all without pressure
    // (virtual time: the three polls have run when the sleep returns).
    tokio::time::sleep(WATCH_POLL * 7 / 2).await;
    assert_eq!(shell.pods.asked(), 0, "no threshold met, no pods read");
    shell.press();
    let e = next_eviction(&mut shell.evictions).await;
    assert_eq!(e.pod_uid, "be");
    assert!(shell.pods.asked() > 0);
    shell.stop().await;
}

/// A pod `uid` whose emptyDir `data` may hold 10Mi, whose container `app` may use 10Mi,
/// and whose total may be 20Mi.
fn limited(uid: &str, root: &Path) -> LimitedPod {
    let limit = |bytes: u64| Limit {
        bytes,
        text: format!("{}Mi", bytes / MI),
    };
    LimitedPod {
        uid: uid.into(),
        name: format!("default/{uid}"),
        qos: QosClass::BestEffort,
        critical: false,
        empty_dir_root: root.join(uid).join("volumes/kubernetes.io~empty-dir"),
        empty_dir_limits: vec![("data".into(), limit(10 * MI))],
        memory_volumes: Vec::new(),
        containers: vec![LimitedContainer {
            name: "app".into(),
            id: None,
            log_dir: root.join("logs").join(uid).join("app"),
            limit: Some(limit(10 * MI)),
        }],
        pod_limit: Some(limit(20 * MI)),
    }
}

fn storage(data: u64, app: u64) -> StorageUsage {
    StorageUsage {
        empty_dirs: BTreeMap::from([("data".to_owned(), data)]),
        containers: BTreeMap::from([(
            "app".to_owned(),
            ContainerStorage {
                rootfs: Some(app),
                logs: 0,
            },
        )]),
        inodes: 0,
        truncated: false,
    }
}

#[test]
fn local_storage_limits_evict_every_offender_once() {
    let root = Path::new("/r");
    let mut m = EvictionManager::new(
        config(
            vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
            None,
            EvictionRanking::Qos,
        ),
        false,
    );
    let mut critical = limited("critical", root);
    critical.critical = true;
    let pods = vec![
        (limited("fine", root), storage(MI, MI)),
        (limited("volume", root), storage(30 * MI, 0)),
        (limited("layer", root), storage(0, 11 * MI)),
        (critical, storage(30 * MI, 0)),
    ];
    let evictions = m.decide_local_storage(&pods, at(0));
    let got: Vec<(&str, EvictionSignal, &str)> = evictions
        .iter()
        .map(|e| (e.pod_uid.as_str(), e.signal, e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "volume",
                EvictionSignal::Limit(LimitSignal::EmptyDirFs),
                "Usage of EmptyDir volume \"data\" exceeds the limit \"10Mi\". "
            ),
            (
                "layer",
                EvictionSignal::Limit(LimitSignal::EphemeralContainerFs),
                "Container app exceeded its local ephemeral storage limit \"10Mi\". "
            ),
        ],
        "every pod over a limit, the critical one left alone"
    );
    let e = &evictions[0];
    assert_eq!(e.grace_period, LIMIT_EVICTION_GRACE);
    assert_eq!(e.reason, "Evicted");
    assert_eq!(e.resource, Resource::EphemeralStorage);
    assert_eq!(e.signal.as_str(), "emptydirfs.limit");
    assert!(e.is_terminal());
    assert!(
        e.keeps_down(&[], &Pod::default()),
        "down without any pressure"
    );

    // Not evicted twice; and a pressure eviction waits for their cleanup.
    assert!(m.decide_local_storage(&pods, at(1)).is_empty());
    let d = m.decide(&memory(50 * MI), &the_ramp(), at(1));
    assert!(
        matches!(d.outcome, Outcome::WaitingForCleanup { .. }),
        "{:?}",
        d.outcome
    );
}

#[test]
fn local_storage_isolation_off_evicts_nothing() {
    let mut c = config(Vec::new(), None, EvictionRanking::Qos);
    c.local_storage_capacity_isolation = false;
    let mut m = EvictionManager::new(c, false);
    assert!(!m.enforces_local_storage());
    let pods = vec![(limited("volume", Path::new("/r")), storage(30 * MI, 0))];
    assert!(m.decide_local_storage(&pods, at(0)).is_empty());
}

#[test]
fn pressure_evictions_are_not_terminal() {
    let mut m = EvictionManager::new(
        config(
            vec![threshold(Signal::MemoryAvailable, bytes(100 * MI), 0)],
            None,
            EvictionRanking::Qos,
        ),
        false,
    );
    let e = m
        .decide(&memory(50 * MI), &the_ramp(), at(0))
        .eviction
        .expect("eviction");
    assert!(!e.is_terminal());
    assert!(!e.keeps_down(&[], &Pod::default()), "no pressure: back up");
    let mut api_pod = Pod::default();
    api_pod.metadata.annotations = Some(std::collections::BTreeMap::from([(
        crate::model::CONFIG_SOURCE_ANNOTATION.to_owned(),
        "api".to_owned(),
    )]));
    assert!(
        e.keeps_down(&[], &api_pod),
        "a pod of the API server stays evicted, Failed, as upstream's"
    );
}

#[tokio::test(start_paused = true)]
async fn the_periodic_pass_measures_and_evicts_limited_pods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc_root = dir.path().join("proc");
    write(
        &proc_root.join("meminfo"),
        "MemTotal: 8388608 kB\nMemFree: 4194304 kB\nInactive(file): 0 kB\n",
    );
    write(&proc_root.join("sys/kernel/pid_max"), "32768\n");
    write(&proc_root.join("loadavg"), "0 0 0 1/100 1\n");
    let cg = dir.path().join("cgroup2");
    write(&cg.join("memory.stat"), "anon 0\nfile 0\ninactive_file 0\n");
    let pods_dir = dir.path().join("pods");
    let hog = limited("hog", &pods_dir);
    let calm = limited("calm", &pods_dir);
    fs::create_dir_all(hog.empty_dir_root.join("data")).expect("mkdir");
    fs::write(hog.empty_dir_root.join("data/f"), vec![1u8; 11 << 20]).expect("write");
    fs::create_dir_all(calm.empty_dir_root.join("data")).expect("mkdir");
    fs::write(calm.empty_dir_root.join("data/f"), vec![1u8; 1 << 20]).expect("write");
    let pods = TestPods::default();
    *pods.2.lock().expect("lock") = vec![calm, hog];
    let (eviction_tx, mut evictions) = mpsc::channel(4);
    let (conditions_tx, _conditions) = watch::channel(Vec::new());
    let (_trigger_tx, triggers) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let manager = EvictionManager::new(config(Vec::new(), None, EvictionRanking::Qos), false)
        .with_monitoring_interval(Duration::from_millis(50));
    let runtime = Arc::new(FakeRuntime::new());
    let task = tokio::spawn(manager.run(
        EvictionIo {
            observer: Observer::new(
                SignalRoots {
                    proc_root,
                    nodefs: dir.path().to_path_buf(),
                },
                QosTree::new(CgroupDriver::v2(&cg), "/"),
            ),
            runtime: Arc::clone(&runtime),
            image_gc: Arc::new(ImageGc::new(runtime, GcPolicy::default())),
            pods: pods.clone(),
            evictions: eviction_tx,
            conditions: conditions_tx,
        },
        triggers,
        cancel.clone(),
    ));
    let e = next_eviction(&mut evictions).await;
    assert_eq!(e.pod_uid, "hog");
    assert_eq!(e.trigger, Some(TriggerKind::Periodic));
    assert_eq!(
        e.message,
        "Usage of EmptyDir volume \"data\" exceeds the limit \"10Mi\". "
    );
    // The pod still listed (its status lags) is not evicted again by the four periodic
    // passes that follow (virtual time).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(evictions.try_recv().is_err());
    cancel.cancel();
    task.await.expect("no panic");
}
