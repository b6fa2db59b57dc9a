//! The pod cgroup tree ([`QosTree`] over [`CgroupDriver`]) on the live hierarchy (root).
//!
//! Everything happens below one cgroup root made for this run
//! (`/bpflet-test-<pid>-<n>-qos`); a guard removes it, and kills the one process the test
//! starts, even when an assertion fails. No other cgroup is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;

use bpflet::cgroups::driver::V1_CONTROLLERS;
use bpflet::cgroups::tree::allocatable_memory;
use bpflet::cgroups::{CgroupDriver, CgroupError, CgroupManager, CgroupVersion, QosTree};
use bpflet::config::Reservation;
use bpflet::pods::manifest::{ManifestOrigin, StaticPod, parse_pod_manifest};
use bpflet_tests::{require_root, unique_cgroup_name};

const MI: u64 = 1 << 20;

const BURSTABLE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: burst, namespace: default}
spec:
  containers:
  - name: app
    image: busybox
    resources:
      requests: {cpu: 250m, memory: 32Mi}
      limits: {memory: 128Mi}
";

const GUARANTEED: &str = "
apiVersion: v1
kind: Pod
metadata: {name: steady, namespace: default}
spec:
  containers:
  - name: app
    image: busybox
    resources:
      requests: {cpu: 500m, memory: 64Mi}
      limits: {cpu: 500m, memory: 64Mi}
";

fn static_pod(manifest: &str, file: &str) -> StaticPod {
    let origin = ManifestOrigin::File(PathBuf::from("/etc/kubernetes/manifests").join(file));
    parse_pod_manifest(
        manifest.as_bytes(),
        &origin,
        "node-1",
        jiff::Timestamp::now(),
    )
    .unwrap_or_else(|e| panic!("parsing {file}: {e}"))
}

/// Removes the test's cgroup root, after killing the test's own process if it still runs.
struct Cleanup {
    driver: CgroupDriver,
    root: String,
    sleeper: Option<Child>,
}

impl Cleanup {
    fn stop_sleeper(&mut self) {
        if let Some(mut child) = self.sleeper.take() {
            // The child may have exited already; kill then only fails with "no such process".
            let _ = child.kill();
            child
                .wait()
                .unwrap_or_else(|e| panic!("waiting for pid {}: {e}", child.id()));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_sleeper();
        if let Err(e) = self.driver.remove(&self.root) {
            let msg = format!("removing test cgroup root {}: {e:?}", self.root);
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Reads a control file: `v1_controller` picks the hierarchy on v1, v2 has just one.
fn read(driver: &CgroupDriver, v1_controller: &str, rel: &str, file: &str) -> String {
    let rel = rel.trim_start_matches('/');
    let path = match driver.version() {
        CgroupVersion::V1 => driver.root().join(v1_controller).join(rel).join(file),
        CgroupVersion::V2 => driver.root().join(rel).join(file),
    };
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The directories of a cgroup: one per managed controller on v1, one on v2.
fn dirs(driver: &CgroupDriver, rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    match driver.version() {
        CgroupVersion::V1 => V1_CONTROLLERS
            .iter()
            .map(|c| driver.root().join(c).join(rel))
            .collect(),
        CgroupVersion::V2 => vec![driver.root().join(rel)],
    }
}

/// The cgroup's directory in every hierarchy mounted on this host (v1: also the ones bpflet
/// does not manage, such as devices and freezer).
fn dirs_everywhere(driver: &CgroupDriver, rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    match driver.version() {
        CgroupVersion::V1 => fs::read_dir(driver.root())
            .unwrap_or_else(|e| panic!("listing {}: {e}", driver.root().display()))
            .map(|entry| entry.expect("cgroup mount entry").path().join(rel))
            .collect(),
        CgroupVersion::V2 => vec![driver.root().join(rel)],
    }
}

fn assert_limits(
    driver: &CgroupDriver,
    rel: &str,
    shares: u64,
    quota: Option<i64>,
    memory: Option<u64>,
) {
    match driver.version() {
        CgroupVersion::V1 => {
            assert_eq!(read(driver, "cpu", rel, "cpu.shares"), shares.to_string());
            assert_eq!(
                read(driver, "cpu", rel, "cpu.cfs_quota_us"),
                quota.unwrap_or(-1).to_string()
            );
            assert_eq!(read(driver, "cpu", rel, "cpu.cfs_period_us"), "100000");
        }
        CgroupVersion::V2 => {
            assert_eq!(
                read(driver, "cpu", rel, "cpu.weight"),
                bpflet::cgroups::driver::shares_to_weight(shares).to_string()
            );
            let quota = quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
            assert_eq!(
                read(driver, "cpu", rel, "cpu.max"),
                format!("{quota} 100000")
            );
        }
    }
    assert_eq!(driver.memory_limit(rel).expect("memory limit"), memory);
}

#[test]
fn qos_tree_on_the_live_hierarchy() {
    require_root();
    let driver = CgroupDriver::detect(Path::new("/proc")).expect("detecting the cgroup layout");
    let root = format!("/{}", unique_cgroup_name("qos"));
    assert!(!driver.exists(&root), "{root} exists already");
    let mut cleanup = Cleanup {
        driver: driver.clone(),
        root: root.clone(),
        sleeper: None,
    };

    // A 1 GiB "node" with 768 MiB reserved: pods together get 256 MiB.
    let reserved = |mi: u64| Reservation {
        memory_bytes: Some(mi * MI),
        ..Reservation::default()
    };
    let allocatable =
        allocatable_memory(1024 * MI, &reserved(512), &reserved(256)).expect("allocatable");
    assert_eq!(allocatable, 256 * MI);
    let tree = QosTree::new(driver.clone(), &root)
        .with_kubepods_memory_limit(Some(allocatable))
        .with_pod_pids_limit(Some(64));

    tree.ensure().expect("ensure the QoS tree");
    tree.ensure().expect("ensure is idempotent");
    let kubepods = format!("{root}/kubepods");
    for rel in [
        kubepods.clone(),
        format!("{kubepods}/burstable"),
        format!("{kubepods}/besteffort"),
    ] {
        for dir in dirs(&driver, &rel) {
            assert!(dir.is_dir(), "{} was not created", dir.display());
        }
    }
    assert_eq!(
        tree.kubepods_memory_limit().expect("kubepods limit"),
        Some(256 * MI)
    );
    assert_limits(&driver, &format!("{kubepods}/besteffort"), 2, None, None);
    if driver.version() == CgroupVersion::V1 {
        let host_cpus = read(&driver, "cpuset", "/", "cpuset.cpus");
        assert_eq!(
            read(
                &driver,
                "cpuset",
                &format!("{kubepods}/besteffort"),
                "cpuset.cpus"
            ),
            host_cpus
        );
    }

    let burstable = static_pod(BURSTABLE, "burst.yaml");
    let guaranteed = static_pod(GUARANTEED, "steady.yaml");
    let b = tree
        .ensure_pod(&burstable.pod)
        .expect("ensure burstable pod");
    assert_eq!(b, format!("{kubepods}/burstable/pod{}", burstable.uid));
    assert_eq!(tree.cri_cgroup_parent(&burstable.pod).expect("parent"), b);
    assert_limits(&driver, &b, 256, None, Some(128 * MI));
    assert_eq!(read(&driver, "pids", &b, "pids.max"), "64");

    let g = tree
        .ensure_pod(&guaranteed.pod)
        .expect("ensure guaranteed pod");
    assert_eq!(g, format!("{kubepods}/pod{}", guaranteed.uid));
    assert_limits(&driver, &g, 512, Some(50_000), Some(64 * MI));

    let shares = tree
        .update_qos_shares([&burstable.pod, &guaranteed.pod])
        .expect("update QoS shares");
    assert_eq!(shares, 256);
    assert_limits(&driver, &format!("{kubepods}/burstable"), 256, None, None);

    let mut listed = tree.list_pods().expect("list pods");
    listed.sort();
    let mut expected = vec![
        (burstable.uid.clone(), b.clone()),
        (guaranteed.uid.clone(), g.clone()),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // A process in the Burstable pod (in every controller's cgroup on v1, so the cpuset
    // copied from the parent is one a task can join).
    let child = Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawning sleep");
    let pid = child.id();
    cleanup.sleeper = Some(child);
    let mut joined = dirs(&driver, &b);
    if driver.version() == CgroupVersion::V1 {
        // What runc does with a cgroup parent: a container cgroup in every hierarchy,
        // including ones bpflet does not manage, creating the pod's directory there too.
        for controller in ["devices", "freezer"] {
            let ctr = driver
                .root()
                .join(controller)
                .join(b.trim_start_matches('/'))
                .join("ctr");
            fs::create_dir_all(&ctr).unwrap_or_else(|e| panic!("creating {}: {e}", ctr.display()));
            joined.push(ctr);
        }
    }
    for dir in joined {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving pid {pid} into {}: {e}", procs.display()));
    }
    assert_eq!(driver.procs(&b).expect("procs"), [pid]);
    let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/pid/cgroup");
    assert!(
        proc_cgroup.lines().any(|l| l.ends_with(&format!(":{b}"))),
        "{proc_cgroup}"
    );
    let usage = tree.kubepods_usage().expect("kubepods usage");
    assert!(usage.working_set_bytes <= usage.usage_bytes, "{usage:?}");

    let err = tree
        .remove_pod(&burstable.uid)
        .expect_err("a pod cgroup with a process must not be removed");
    match &err {
        CgroupError::Populated { path, pids } => {
            assert!(
                path.ends_with(b.trim_start_matches('/')),
                "{}",
                path.display()
            );
            assert_eq!(pids, &[pid]);
        }
        other => panic!("expected Populated, got {other:?}"),
    }
    assert!(err.to_string().contains(&b), "{err}");
    assert!(driver.exists(&b), "the refused removal removed something");
    // The process survived the attempt.
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    cleanup.stop_sleeper();
    assert!(
        tree.remove_pod(&burstable.uid)
            .expect("remove burstable pod")
    );
    for dir in dirs_everywhere(&driver, &b) {
        assert!(!dir.exists(), "{} survived remove_pod", dir.display());
    }
    assert!(!tree.remove_pod(&burstable.uid).expect("removing again"));
    assert_eq!(
        tree.list_pods().expect("list pods"),
        [(guaranteed.uid.clone(), g.clone())]
    );

    // The whole root, Guaranteed pod included, goes with one remove.
    driver.remove(&root).expect("remove the test root");
    for dir in dirs_everywhere(&driver, &root) {
        assert!(!dir.exists(), "{} survived remove", dir.display());
    }
    drop(cleanup);
}
