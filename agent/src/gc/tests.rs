use std::collections::HashMap;

use super::*;
use crate::pods::labels::{CONTAINER_NAME_LABEL, POD_UID_LABEL};
use crate::runtime::{ContainerMetadata, SandboxMetadata};

const NOW: i64 = 10_000;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("timestamp")
}

/// Container `id` of pod `uid`, named `name`, created at second `created` (attempt the same).
fn c(id: &str, uid: &str, name: &str, state: ContainerState, created: i64) -> Container {
    Container {
        id: id.to_owned(),
        pod_sandbox_id: format!("sb-{uid}"),
        metadata: ContainerMetadata {
            name: name.to_owned(),
            attempt: u32::try_from(created).unwrap(),
        },
        image: String::new(),
        image_ref: String::new(),
        state,
        created_at: ts(created),
        labels: HashMap::from([
            (POD_UID_LABEL.to_owned(), uid.to_owned()),
            (CONTAINER_NAME_LABEL.to_owned(), name.to_owned()),
        ]),
        annotations: HashMap::new(),
    }
}

fn sb(id: &str, uid: &str, state: SandboxState, created: i64) -> PodSandbox {
    PodSandbox {
        id: id.to_owned(),
        metadata: SandboxMetadata {
            name: format!("pod-{uid}"),
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            attempt: u32::try_from(created).unwrap(),
        },
        state,
        created_at: ts(created),
        labels: HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())]),
        annotations: HashMap::new(),
        runtime_handler: String::new(),
    }
}

fn wanted(uids: &[&str]) -> HashSet<String> {
    uids.iter().map(|u| (*u).to_owned()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

use ContainerState::{Created, Exited, Running, Unknown};

#[test]
fn per_container_name_the_newest_dead_one_stays() {
    let containers = [
        // A crash loop, running again: its last exit stays (lastState, `previous`).
        c("a1", "p", "app", Exited, 1),
        c("a2", "p", "app", Exited, 2),
        c("a3", "p", "app", Exited, 3),
        c("a4", "p", "app", Running, 4),
        // Waiting in back-off: the newest is dead and stays, the others go.
        c("b1", "p", "side", Exited, 1),
        c("b2", "p", "side", Exited, 2),
        // Another pod, one dead container: stays.
        c("q1", "q", "app", Exited, 1),
        // Not in the exited state: never a candidate in a wanted pod.
        c("u1", "q", "x", Unknown, 1),
        c("u2", "q", "x", Created, 2),
        c("u3", "q", "x", Running, 3),
    ];
    let s = select(
        &containers,
        &[],
        &[],
        Some(&wanted(&["p", "q"])),
        &GcPolicy::default(),
        ts(NOW),
    );
    assert_eq!(sorted(s.containers), ["a1", "a2", "b1"]);
    // Before every source reported, the per-pod limit alone applies, alike.
    let s = select(&containers, &[], &[], None, &GcPolicy::default(), ts(NOW));
    assert_eq!(sorted(s.containers), ["a1", "a2", "b1"]);
}

#[test]
fn the_limits_follow_the_policy() {
    let containers = [
        c("a1", "p", "app", Exited, 1),
        c("a2", "p", "app", Exited, 2),
        c("a3", "p", "app", Exited, NOW - 5),
        c("a4", "p", "app", Running, NOW - 1),
    ];
    let w = wanted(&["p"]);
    let run = |policy: GcPolicy| {
        sorted(select(&containers, &[], &[], Some(&w), &policy, ts(NOW)).containers)
    };
    // Two kept per name.
    let two = GcPolicy {
        max_per_pod_container: Some(2),
        ..GcPolicy::default()
    };
    assert_eq!(run(two), ["a1"]);
    // No per-name limit: nothing goes.
    let none = GcPolicy {
        max_per_pod_container: None,
        ..GcPolicy::default()
    };
    assert_eq!(run(none), Vec::<String>::new());
    // Zero kept, but a3 is younger than min_age.
    let young = GcPolicy {
        min_age: Duration::from_secs(10),
        max_per_pod_container: Some(0),
        max_containers: None,
    };
    assert_eq!(run(young), ["a1", "a2"]);
}

#[test]
fn the_newest_container_of_a_name_stays_even_with_no_dead_containers_allowed() {
    let containers = [
        c("a1", "p", "app", Exited, 1),
        c("a2", "p", "app", Exited, 2),
    ];
    let policy = GcPolicy {
        max_per_pod_container: Some(0),
        ..GcPolicy::default()
    };
    let s = select(
        &containers,
        &[],
        &[],
        Some(&wanted(&["p"])),
        &policy,
        ts(NOW),
    );
    assert_eq!(s.containers, ["a1"]);
}

#[test]
fn above_the_node_limit_groups_are_cut_evenly_then_the_oldest_go() {
    // Three groups whose newest containers run, each with dead ones (created 1..).
    let mut containers = Vec::new();
    for (pod, n) in [("p", 4), ("q", 2), ("r", 1)] {
        for i in 1..=n {
            containers.push(c(
                &format!("{pod}{i}"),
                pod,
                "app",
                Exited,
                i * 10 + i64::from(pod.as_bytes()[0]),
            ));
        }
        containers.push(c(&format!("{pod}-run"), pod, "app", Running, 1000));
    }
    let policy = GcPolicy {
        max_per_pod_container: None,
        max_containers: Some(2),
        ..GcPolicy::default()
    };
    let s = select(
        &containers,
        &[],
        &[],
        Some(&wanted(&["p", "q", "r"])),
        &policy,
        ts(NOW),
    );
    // 2 / 3 groups: one each (the newest), then the oldest of those three goes.
    assert_eq!(sorted(s.containers), ["p1", "p2", "p3", "q1", "r1"]);
}

#[test]
fn everything_dead_of_a_pod_gone_goes_with_its_sandboxes_and_logs() {
    let containers = [
        c("g1", "gone", "app", Exited, 1),
        c("g2", "gone", "app", Created, 2),
        c("k1", "kept", "app", Exited, 1),
        c("k2", "kept", "app", Running, 2),
        // A pod gone with a container still running: nothing of it goes but the dead.
        c("s1", "stuck", "app", Running, 1),
        c("s0", "stuck", "old", Exited, 1),
    ];
    let mut stuck_sandbox = sb("sb-stuck", "stuck", SandboxState::NotReady, 1);
    stuck_sandbox.id = "sb-stuck".to_owned();
    let sandboxes = [
        sb("sb-gone", "gone", SandboxState::NotReady, 1),
        sb("sb-gone-old", "gone", SandboxState::NotReady, 0),
        // The wanted pod: its newest sandbox stays even dead, older dead ones go, a ready
        // one stays.
        sb("sb-kept", "kept", SandboxState::Ready, 3),
        sb("sb-kept-old", "kept", SandboxState::NotReady, 1),
        stuck_sandbox,
    ];
    let dirs = [
        "default_gone_gone".to_owned(),
        "default_kept_kept".to_owned(),
        "default_stuck_stuck".to_owned(),
        // Not log directories: the volume directory of a pod gone, and a stray name.
        "gone".to_owned(),
        "x_y".to_owned(),
    ];
    let w = wanted(&["kept"]);
    let s = select(
        &containers,
        &sandboxes,
        &dirs,
        Some(&w),
        &GcPolicy::default(),
        ts(NOW),
    );
    assert_eq!(sorted(s.containers), ["g1", "g2", "s0"]);
    assert_eq!(
        sorted(s.sandboxes),
        ["sb-gone", "sb-gone-old", "sb-kept-old"]
    );
    assert_eq!(s.log_dirs, ["default_gone_gone"]);
    // Before every source reported nobody is gone: only the per-pod limits apply.
    let s = select(
        &containers,
        &sandboxes,
        &dirs,
        None,
        &GcPolicy::default(),
        ts(NOW),
    );
    assert_eq!(s.containers, Vec::<String>::new());
    assert_eq!(sorted(s.sandboxes), ["sb-gone-old", "sb-kept-old"]);
    assert_eq!(s.log_dirs, Vec::<String>::new());
}

#[test]
fn what_bpflet_did_not_create_is_never_touched() {
    let mut foreign = c("f1", "x", "app", Exited, 1);
    foreign.labels.clear();
    let mut foreign_sb = sb("sb-f", "x", SandboxState::NotReady, 1);
    foreign_sb.labels.clear();
    let s = select(
        &[foreign],
        &[foreign_sb],
        &[],
        Some(&wanted(&[])),
        &GcPolicy::default(),
        ts(NOW),
    );
    assert_eq!(s, Selection::default());
}

#[test]
fn log_dir_names() {
    assert_eq!(log_dir_uid("default_web_1234-abcd"), Some("1234-abcd"));
    assert_eq!(log_dir_uid("1234-abcd"), None);
    assert_eq!(log_dir_uid("a_b_c_d"), None);
    assert_eq!(log_dir_uid("_web_1234"), None);
}

#[tokio::test]
async fn a_pass_removes_through_the_runtime_and_retries_failures_next_pass() {
    use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
    use crate::runtime::{FakeRuntime, Fault, Method};

    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(IMAGE);
    let sb_config = sandbox_config("u1");
    let sandbox = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
    let id = rt
        .create_container(&sandbox, &container_config("u1"), &sb_config)
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    rt.stop_container(&id, Duration::ZERO).await.unwrap();
    rt.stop_pod_sandbox(&sandbox).await.unwrap();
    // An upstream kubelet's dead container and sandbox of a pod bpflet does not want, in
    // the same runtime: not bpflet's to remove.
    let mut kubelet_sb = sandbox_config("k1");
    let mut kubelet_c = container_config("k1");
    kubelet_sb.labels.remove(crate::pods::labels::AGENT_LABEL);
    kubelet_c.labels.remove(crate::pods::labels::AGENT_LABEL);
    let kubelet_sandbox = rt.run_pod_sandbox(&kubelet_sb, "").await.unwrap();
    let kubelet_id = rt
        .create_container(&kubelet_sandbox, &kubelet_c, &kubelet_sb)
        .await
        .unwrap();
    rt.start_container(&kubelet_id).await.unwrap();
    rt.stop_container(&kubelet_id, Duration::ZERO)
        .await
        .unwrap();
    rt.stop_pod_sandbox(&kubelet_sandbox).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    std::fs::create_dir(logs.path().join("default_web_u1")).unwrap();
    std::fs::create_dir(logs.path().join("default_other_u2")).unwrap();

    let (tx, rx) = watch::channel(None);
    let gc = ContainerGc::new(
        Arc::clone(&rt),
        crate::pods::labels::AgentMark::for_tests(),
        logs.path().to_owned(),
        GcPolicy::default(),
        rx,
    );
    // Sources not ready: the pod is not known to be gone.
    assert_eq!(gc.collect().await, PassReport::default());
    tx.send_replace(Some(wanted(&["u2"])));
    rt.inject_once(
        Method::RemoveContainer,
        Fault::Error(tonic::Code::Unavailable),
    );
    let first = gc.collect().await;
    assert_eq!(first.failures, 1, "{first:?}");
    assert_eq!(
        (first.containers, first.sandboxes, first.log_dirs),
        (0, 0, 0)
    );
    let second = gc.collect().await;
    assert_eq!(
        second,
        PassReport {
            containers: 1,
            sandboxes: 1,
            log_dirs: 1,
            failures: 0
        }
    );
    let containers: Vec<String> = rt
        .list_containers(None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let sandboxes: Vec<String> = rt
        .list_pod_sandboxes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(
        containers,
        [kubelet_id],
        "only the kubelet's dead container is left"
    );
    assert_eq!(
        sandboxes,
        [kubelet_sandbox],
        "only the kubelet's dead sandbox is left"
    );
    assert!(!logs.path().join("default_web_u1").exists());
    assert!(logs.path().join("default_other_u2").exists());
}

#[tokio::test(start_paused = true)]
async fn a_pass_follows_as_soon_as_the_wanted_pods_are_known() {
    use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
    use crate::runtime::FakeRuntime;

    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(IMAGE);
    let sb_config = sandbox_config("u1");
    let sandbox = rt.run_pod_sandbox(&sb_config, "").await.unwrap();
    let id = rt
        .create_container(&sandbox, &container_config("u1"), &sb_config)
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    rt.stop_container(&id, Duration::ZERO).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(None);
    let gc = ContainerGc::new(
        Arc::clone(&rt),
        crate::pods::labels::AgentMark::for_tests(),
        logs.path().to_owned(),
        GcPolicy::default(),
        rx,
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gc.run(GC_PERIOD, cancel.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rt.list_containers(None).await.unwrap().len(),
        1,
        "the first pass, before the sources reported, keeps the pod's container"
    );
    tx.send_replace(Some(wanted(&[])));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rt.list_containers(None).await.unwrap().is_empty(),
        "the pod no source wants goes at once, not a period later"
    );
    cancel.cancel();
    task.await.unwrap();
}
