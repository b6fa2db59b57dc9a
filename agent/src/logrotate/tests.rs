use std::io::Read as _;

use super::*;

const KI: u64 = 1024;

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_log_below_max_size_is_left_alone() {
    let now = at("2026-12-07T14:15:00Z");
    assert_eq!(
        plan("0.log", 100 * KI - 1, &names(&["0.log"]), 100 * KI, 3, now),
        None
    );
}

#[test]
fn the_first_rotation_only_renames() {
    let now = at("2026-12-07T14:15:00Z");
    let p = plan(
        "0.log",
        100 * KI,
        &names(&["0.log", "1.log"]),
        100 * KI,
        5,
        now,
    )
    .expect("due");
    assert_eq!(
        p,
        RotationPlan {
            remove: vec![],
            compress: vec![],
            rotate_to: "0.log.20261207-141500".to_owned(),
        }
    );
}

#[test]
fn older_rotated_files_are_compressed_and_the_oldest_removed() {
    let now = at("2026-12-07T14:15:09Z");
    // max_files 3: the current file, the newest rotated one, and one compressed.
    let entries = names(&[
        "0.log",
        "0.log.20261207-141500.gz",
        "0.log.20261207-141503",
        "0.log.20261207-141506",
        // Another attempt's files are not ours.
        "1.log",
        "1.log.20261207-141400",
    ]);
    let p = plan("0.log", 200 * KI, &entries, 100 * KI, 3, now).expect("due");
    assert_eq!(
        p,
        RotationPlan {
            remove: names(&["0.log.20261207-141500.gz", "0.log.20261207-141503"]),
            compress: names(&["0.log.20261207-141506"]),
            rotate_to: "0.log.20261207-141509".to_owned(),
        }
    );
    // With 5 files: nothing removed, every rotated file compressed (the one rotated now
    // is the newest, uncompressed).
    let p = plan("0.log", 200 * KI, &entries, 100 * KI, 5, now).expect("due");
    assert_eq!(p.remove, names(&[]));
    assert_eq!(
        p.compress,
        names(&["0.log.20261207-141503", "0.log.20261207-141506"])
    );
    // With 2 files: no rotated file is kept beside the one rotated now.
    let p = plan("0.log", 200 * KI, &entries, 100 * KI, 2, now).expect("due");
    assert_eq!(p.remove.len(), 3);
    assert_eq!(p.compress, names(&[]));
}

#[test]
fn leftovers_of_an_interrupted_pass_are_removed_first() {
    let now = at("2026-12-07T14:15:09Z");
    let entries = names(&[
        "0.log",
        // Compressed, then interrupted before the original was removed.
        "0.log.20261207-141500",
        "0.log.20261207-141500.gz",
        // Interrupted while compressing.
        "0.log.20261207-141503.gz.tmp",
        "0.log.20261207-141503",
        "0.log.20261207-141506",
    ]);
    let p = plan("0.log", 100 * KI, &entries, 100 * KI, 5, now).expect("due");
    assert_eq!(
        p.remove,
        names(&["0.log.20261207-141500", "0.log.20261207-141503.gz.tmp"])
    );
    assert_eq!(
        p.compress,
        names(&["0.log.20261207-141503", "0.log.20261207-141506"])
    );
}

#[test]
fn a_second_rotation_within_the_same_second_waits() {
    let now = at("2026-12-07T14:15:09Z");
    let entries = names(&["0.log", "0.log.20261207-141509"]);
    assert_eq!(plan("0.log", 100 * KI, &entries, 100 * KI, 5, now), None);
}

#[test]
fn prepare_applies_the_plan_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("0.log");
    std::fs::write(&log, vec![b'x'; 2048]).unwrap();
    let old = dir.path().join("0.log.20000101-000000");
    std::fs::write(&old, b"older lines\n").unwrap();
    let newest = dir.path().join("0.log.20000101-000003");
    std::fs::write(&newest, b"newest lines\n").unwrap();
    let config = ContainerLogConfig {
        max_size_bytes: 1024,
        max_files: 5,
        max_workers: 1,
        monitor_interval: std::time::Duration::from_secs(10),
    };
    let Prepared::Rotated(to) = prepare("c1", &log, config).expect("rotated") else {
        panic!("not rotated");
    };
    assert!(!log.exists());
    assert_eq!(std::fs::read(&to).unwrap().len(), 2048);
    assert!(!old.exists());
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(dir.path().join("0.log.20000101-000000.gz")).unwrap(),
    )
    .read_to_string(&mut text)
    .unwrap();
    assert_eq!(text, "older lines\n");
    // Rotated files that remain are compressed, the one rotated now is not.
    assert!(!newest.exists());
    assert!(dir.path().join("0.log.20000101-000003.gz").exists());
    // A missing log is reported as such (the runtime is asked to reopen it).
    assert!(matches!(prepare("c1", &log, config), Ok(Prepared::Missing)));
}

/// A container's log path comes from the runtime once: later passes read the size of the
/// path kept, and a container that stopped running is forgotten (asked again if it returns).
#[tokio::test]
async fn the_log_path_is_asked_once_per_running_container() {
    use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
    use crate::runtime::{FakeRuntime, Method};

    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(IMAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sandbox = sandbox_config("u1");
    sandbox.log_directory = dir.path().to_string_lossy().into_owned();
    let sb = rt.run_pod_sandbox(&sandbox, "").await.expect("sandbox");
    let mut config = container_config("u1");
    config.log_path = "app/0.log".to_owned();
    let id = rt
        .create_container(&sb, &config, &sandbox)
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    let rotator = LogRotator::new(
        Arc::clone(&rt),
        AgentMark::for_tests(),
        ContainerLogConfig {
            max_size_bytes: 1024,
            max_files: 5,
            max_workers: 1,
            monitor_interval: std::time::Duration::from_secs(10),
        },
    );

    rt.clear_calls();
    for _ in 0..3 {
        rotator.rotate_all().await;
    }
    assert_eq!(
        rt.call_count(Method::ContainerStatus),
        1,
        "{:?}",
        rt.calls()
    );

    rt.stop_container(&id, std::time::Duration::ZERO)
        .await
        .expect("stop");
    rotator.rotate_all().await;
    assert!(
        rotator.paths().is_empty(),
        "a stopped container is forgotten"
    );
}

#[tokio::test]
async fn only_this_agents_containers_are_rotated() {
    use crate::pods::observe::tests::{IMAGE, container_config, sandbox_config};
    use crate::runtime::{FakeRuntime, Method};

    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(IMAGE);
    for (uid, ours) in [("u1", true), ("kubelet", false)] {
        let mut sb = sandbox_config(uid);
        let mut c = container_config(uid);
        if !ours {
            sb.labels.remove(crate::pods::labels::AGENT_LABEL);
            c.labels.remove(crate::pods::labels::AGENT_LABEL);
        }
        let sandbox = rt.run_pod_sandbox(&sb, "").await.unwrap();
        let id = rt.create_container(&sandbox, &c, &sb).await.unwrap();
        rt.start_container(&id).await.unwrap();
    }
    let rotator = LogRotator::new(
        Arc::clone(&rt),
        AgentMark::for_tests(),
        ContainerLogConfig {
            max_size_bytes: 10 << 20,
            max_files: 5,
            max_workers: 1,
            monitor_interval: std::time::Duration::from_secs(10),
        },
    );
    assert_eq!(rotator.rotate_all().await, 0, "no log is due");
    assert_eq!(
        rt.call_count(Method::ContainerStatus),
        1,
        "the kubelet's running container is not even looked at"
    );
}
