use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;

use k8s_openapi::api::core::v1::{
    ContainerStatus, EmptyDirVolumeSource, PodSpec, PodStatus, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::cgroups::CgroupDriver;

const MI: u64 = 1 << 20;

fn container(name: &str, limit: Option<&str>) -> Container {
    Container {
        name: name.into(),
        resources: limit.map(|l| ResourceRequirements {
            limits: Some(BTreeMap::from([(
                EPHEMERAL_STORAGE.to_owned(),
                Quantity(l.to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn sidecar(name: &str, limit: Option<&str>) -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..container(name, limit)
    }
}

fn empty_dir(name: &str, medium: Option<&str>, size_limit: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            size_limit: size_limit.map(|s| Quantity(s.to_owned())),
        }),
        ..Volume::default()
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers,
            init_containers: (!init.is_empty()).then_some(init),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn limited(p: &Pod) -> Option<LimitedPod> {
    LimitedPod::from_pod(p, Path::new("/r/pods"), Path::new("/r/logs"))
}

fn limit(bytes: u64, text: &str) -> Limit {
    Limit {
        bytes,
        text: text.into(),
    }
}

#[test]
fn pods_without_limits_are_not_measured() {
    for (what, p) in [
        (
            "no limits",
            pod(vec![container("app", None)], vec![], vec![]),
        ),
        (
            "emptyDir without sizeLimit",
            pod(
                vec![container("app", None)],
                vec![],
                vec![empty_dir("data", None, None)],
            ),
        ),
        (
            "memory emptyDir with sizeLimit (a bounded tmpfs)",
            pod(
                vec![container("app", None)],
                vec![],
                vec![empty_dir("mem", Some("Memory"), Some("10Mi"))],
            ),
        ),
        (
            "zero sizeLimit",
            pod(
                vec![container("app", None)],
                vec![],
                vec![empty_dir("data", None, Some("0"))],
            ),
        ),
    ] {
        assert_eq!(limited(&p), None, "{what}");
    }
    let mut done = pod(vec![container("app", Some("1Gi"))], vec![], vec![]);
    for (phase, measured) in [("Running", true), ("Succeeded", false), ("Failed", false)] {
        done.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        });
        assert_eq!(limited(&done).is_some(), measured, "{phase}");
    }
}

#[test]
fn limits_and_paths_from_the_spec() {
    let mut p = pod(
        vec![container("app", Some("10Mi")), container("side", None)],
        vec![
            container("init", Some("1Gi")),
            sidecar("proxy", Some("5Mi")),
        ],
        vec![
            empty_dir("data", None, Some("1.5Gi")),
            empty_dir("mem", Some("Memory"), Some("64Mi")),
            empty_dir("scratch", Some(""), None),
        ],
    );
    p.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "app".into(),
            container_id: Some("containerd://abc".into()),
            ..ContainerStatus::default()
        }]),
        init_container_statuses: Some(vec![ContainerStatus {
            name: "proxy".into(),
            container_id: Some("containerd://def".into()),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    let l = limited(&p).expect("limited");
    assert_eq!(l.uid, "u1");
    assert_eq!(l.name, "default/web");
    assert_eq!(
        l.empty_dir_root,
        Path::new("/r/pods/u1/volumes/kubernetes.io~empty-dir")
    );
    assert_eq!(
        l.empty_dir_limits,
        [("data".to_owned(), limit(1536 * MI, "1536Mi"))]
    );
    assert_eq!(l.memory_volumes, ["mem"]);
    let names: Vec<(&str, Option<&str>, Option<u64>)> = l
        .containers
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.id.as_deref(),
                c.limit.as_ref().map(|l| l.bytes),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("app", Some("abc"), Some(10 * MI)),
            ("side", None, None),
            ("proxy", Some("def"), Some(5 * MI)),
        ]
    );
    assert_eq!(
        l.containers[0].log_dir,
        Path::new("/r/logs/default_web_u1/app")
    );
    // The init container's 1Gi is larger than app + proxy (15Mi).
    assert_eq!(l.pod_limit, Some(limit(1 << 30, "1Gi")));
}

#[test]
fn pod_limit_follows_upstream_pod_limits() {
    let cases: Vec<(&str, Pod, Option<Limit>)> = vec![
        (
            "app containers summed, those without a limit add nothing",
            pod(
                vec![
                    container("a", Some("10Mi")),
                    container("b", Some("10Mi")),
                    container("c", None),
                ],
                vec![],
                vec![],
            ),
            Some(limit(20 * MI, "20Mi")),
        ),
        (
            "printed in the first limit's format",
            pod(
                vec![container("a", Some("500M")), container("b", Some("1G"))],
                vec![],
                vec![],
            ),
            Some(limit(1_500_000_000, "1500M")),
        ),
        (
            "sidecars add to the apps; an init container counts with the sidecars before it",
            pod(
                vec![container("a", Some("10Mi"))],
                vec![sidecar("s", Some("5Mi")), container("i", Some("12Mi"))],
                vec![],
            ),
            Some(limit(17 * MI, "17Mi")),
        ),
        (
            "only an init container has one",
            pod(
                vec![container("a", None)],
                vec![container("i", Some("3Mi"))],
                vec![],
            ),
            Some(limit(3 * MI, "3Mi")),
        ),
        (
            "none",
            pod(vec![container("a", None)], vec![], vec![]),
            None,
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(pod_limit(&p), want, "{what}");
    }
    let mut with_overhead = pod(vec![container("a", Some("10Mi"))], vec![], vec![]);
    with_overhead.spec.as_mut().expect("spec").overhead = Some(BTreeMap::from([(
        EPHEMERAL_STORAGE.to_owned(),
        Quantity("1Mi".into()),
    )]));
    assert_eq!(pod_limit(&with_overhead), Some(limit(11 * MI, "11Mi")));
}

fn limited_pod(
    empty_dirs: &[(&str, u64)],
    containers: &[(&str, Option<u64>)],
    pod_limit: Option<u64>,
) -> LimitedPod {
    let text = |b: u64| format!("{}Mi", b / MI);
    LimitedPod {
        uid: "u1".into(),
        name: "default/web".into(),
        qos: QosClass::BestEffort,
        critical: false,
        empty_dir_root: PathBuf::from("/r/pods/u1/volumes/kubernetes.io~empty-dir"),
        empty_dir_limits: empty_dirs
            .iter()
            .map(|&(n, b)| (n.to_owned(), limit(b, &text(b))))
            .collect(),
        memory_volumes: Vec::new(),
        containers: containers
            .iter()
            .map(|&(n, l)| LimitedContainer {
                name: n.into(),
                id: Some(format!("id-{n}")),
                log_dir: PathBuf::from("/r/logs").join(n),
                limit: l.map(|b| limit(b, &text(b))),
            })
            .collect(),
        pod_limit: pod_limit.map(|b| limit(b, &text(b))),
    }
}

fn usage(empty_dirs: &[(&str, u64)], containers: &[(&str, Option<u64>, u64)]) -> StorageUsage {
    StorageUsage {
        empty_dirs: empty_dirs.iter().map(|&(n, b)| (n.to_owned(), b)).collect(),
        containers: containers
            .iter()
            .map(|&(n, rootfs, logs)| (n.to_owned(), ContainerStorage { rootfs, logs }))
            .collect(),
        inodes: 0,
        truncated: false,
    }
}

#[test]
fn check_matches_upstream_order_and_messages() {
    let emptydir = |m: &str| {
        Some(Violation {
            signal: LimitSignal::EmptyDirFs,
            message: m.to_owned(),
        })
    };
    let pod_total = |m: &str| {
        Some(Violation {
            signal: LimitSignal::EphemeralPodFs,
            message: m.to_owned(),
        })
    };
    let container = |m: &str| {
        Some(Violation {
            signal: LimitSignal::EphemeralContainerFs,
            message: m.to_owned(),
        })
    };
    let cases: Vec<(&str, LimitedPod, StorageUsage, Option<Violation>)> = vec![
        (
            "emptyDir over its sizeLimit",
            limited_pod(&[("data", 10 * MI)], &[("app", None)], None),
            usage(&[("data", 30 * MI)], &[("app", Some(0), 0)]),
            emptydir("Usage of EmptyDir volume \"data\" exceeds the limit \"10Mi\". "),
        ),
        (
            "emptyDir exactly at its limit",
            limited_pod(&[("data", 10 * MI)], &[("app", None)], None),
            usage(&[("data", 10 * MI)], &[]),
            None,
        ),
        (
            "the second emptyDir is over",
            limited_pod(&[("a", 10 * MI), ("b", 4 * MI)], &[], None),
            usage(&[("a", MI), ("b", 5 * MI)], &[]),
            emptydir("Usage of EmptyDir volume \"b\" exceeds the limit \"4Mi\". "),
        ),
        (
            "emptyDir checked before the pod's total",
            limited_pod(
                &[("data", 10 * MI)],
                &[("app", Some(10 * MI))],
                Some(10 * MI),
            ),
            usage(&[("data", 30 * MI)], &[("app", Some(30 * MI), 0)]),
            emptydir("Usage of EmptyDir volume \"data\" exceeds the limit \"10Mi\". "),
        ),
        (
            "one container: the pod's total is over first",
            limited_pod(&[], &[("app", Some(10 * MI))], Some(10 * MI)),
            usage(&[], &[("app", Some(30 * MI), 0)]),
            pod_total(
                "Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ",
            ),
        ),
        (
            "the pod's total counts layers, logs and disk emptyDirs",
            limited_pod(
                &[],
                &[("a", Some(10 * MI)), ("b", Some(10 * MI))],
                Some(20 * MI),
            ),
            usage(
                &[("data", 12 * MI)],
                &[("a", Some(5 * MI), MI), ("b", Some(3 * MI), 0)],
            ),
            pod_total(
                "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi. ",
            ),
        ),
        (
            "a container over its own limit, the pod under its total",
            limited_pod(
                &[],
                &[("app", Some(10 * MI)), ("side", Some(100 * MI))],
                Some(110 * MI),
            ),
            usage(&[], &[("app", Some(28 * MI), 2 * MI), ("side", Some(0), 0)]),
            container("Container app exceeded its local ephemeral storage limit \"10Mi\". "),
        ),
        (
            "logs alone can exceed it",
            limited_pod(
                &[],
                &[("app", Some(10 * MI)), ("side", Some(100 * MI))],
                Some(110 * MI),
            ),
            usage(&[], &[("app", None, 11 * MI)]),
            container("Container app exceeded its local ephemeral storage limit \"10Mi\". "),
        ),
        (
            "a container without a limit exceeds nothing",
            limited_pod(
                &[],
                &[("free", None), ("app", Some(10 * MI))],
                Some(10 * MI),
            ),
            usage(&[], &[("free", Some(5 * MI), 0), ("app", Some(MI), 0)]),
            None,
        ),
        (
            "not measured: nothing",
            limited_pod(&[("data", MI)], &[("app", Some(MI))], Some(2 * MI)),
            StorageUsage::default(),
            None,
        ),
    ];
    for (what, p, u, want) in cases {
        assert_eq!(check(&p, &u), want, "{what}");
    }
}

fn write(path: &Path, bytes: usize) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, vec![b'x'; bytes]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn allocated(path: &Path) -> u64 {
    fs::symlink_metadata(path).expect("stat").blocks() * 512
}

#[test]
fn walk_counts_allocated_blocks_once_per_inode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vol");
    write(&root.join("big"), 300_000);
    write(&root.join("sub/small"), 10);
    fs::hard_link(root.join("big"), root.join("sub/big-again")).expect("hard link");
    // A link out of the tree, to something large: never followed.
    write(&dir.path().join("outside"), 1_000_000);
    symlink(dir.path().join("outside"), root.join("out")).expect("symlink");
    symlink(dir.path(), root.join("up")).expect("symlink");

    let u = walk(&root, MAX_WALK_ENTRIES).expect("walk");
    let want = [
        root.clone(),
        root.join("big"),
        root.join("sub"),
        root.join("sub/small"),
        root.join("out"),
        root.join("up"),
    ]
    .iter()
    .map(|p| allocated(p))
    .sum::<u64>();
    assert_eq!(
        u.bytes, want,
        "the hard link counts once, symlinks as themselves"
    );
    assert!(u.bytes >= 300_000 && u.bytes < 1_000_000, "{u:?}");
    // vol, big (once), sub, small, out, up.
    assert_eq!(u.inodes, 6);
    assert!(!u.truncated);

    assert_eq!(
        walk(&dir.path().join("absent"), MAX_WALK_ENTRIES).expect("absent"),
        TreeUsage::default()
    );
    assert_eq!(u.entries, 6, "every entry below the root");
    let cut = walk(&root, 2).expect("walk");
    assert!(cut.truncated, "{cut:?}");
    assert_eq!(cut.entries, 2, "{cut:?}");
}

#[test]
fn walk_counts_trees_deeper_than_path_max() {
    use std::io::Write as _;

    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};

    const DEPTH: usize = 2100; // "/d" per level: 4200 bytes of path, over PATH_MAX (4096).
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vol");
    fs::create_dir(&root).expect("mkdir");
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = openat(nix::fcntl::AT_FDCWD, &root, flags, Mode::empty()).expect("open root");
    for _ in 0..DEPTH {
        mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
        fd = openat(&fd, "d", flags, Mode::empty()).expect("openat");
    }
    let file = openat(
        &fd,
        "deep",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .expect("create deep file");
    fs::File::from(file)
        .write_all(&vec![b'x'; 200_000])
        .expect("write");

    let u = walk(&root, MAX_WALK_ENTRIES).expect("walk");
    assert!(!u.truncated, "{u:?}");
    assert_eq!(u.inodes, 1 + DEPTH as u64 + 1, "{u:?}");
    assert!(u.bytes >= 200_000, "the file at the bottom counts: {u:?}");
}

#[test]
fn the_root_overlay_names_the_writable_layer() {
    let upper = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs";
    let text = format!(
        "1201 1100 0:321 / / rw,relatime - overlay overlay rw,lowerdir=/l/1/fs:/l/2/fs,upperdir={upper},workdir=/w/42/work\n\
         1202 1201 0:322 / /proc rw,nosuid - proc proc rw\n"
    );
    assert_eq!(root_upperdir(text.as_bytes()), Some(PathBuf::from(upper)));
    let escaped =
        "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/a\\040b/fs,workdir=/w\n";
    assert_eq!(
        root_upperdir(escaped.as_bytes()),
        Some(PathBuf::from("/a b/fs"))
    );
    for other in [
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n",
        "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/l,upperdir=rel/fs,workdir=/w\n",
        "1 0 0:1 / /mnt rw - overlay overlay rw,upperdir=/u\n",
    ] {
        assert_eq!(root_upperdir(other.as_bytes()), None, "{other}");
    }
}

#[test]
fn meter_measures_volumes_logs_and_writable_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tree = QosTree::new(CgroupDriver::v2(d.join("cgroup")), "/");
    let proc_root = d.join("proc");
    let mut l = limited_pod(
        &[("data", 10 * MI)],
        &[("app", Some(10 * MI)), ("idle", Some(MI))],
        Some(11 * MI),
    );
    l.empty_dir_root = d.join("pods/u1/volumes/kubernetes.io~empty-dir");
    l.memory_volumes = vec!["mem".into()];
    for c in &mut l.containers {
        c.log_dir = d.join("logs").join(&c.name);
    }
    l.containers[1].id = None;
    write(&l.empty_dir_root.join("data/f"), 50_000);
    write(&l.empty_dir_root.join("mem/f"), 50_000);
    write(&d.join("logs/app/0.log"), 4096);
    let upper = d.join("snapshots/7/fs");
    write(&upper.join("tmp/f"), 100_000);
    let cgroup = join(
        &tree
            .pod_cgroup_of("u1", QosClass::BestEffort)
            .expect("cgroup"),
        "id-app",
    );
    let cgroup_dir = d.join("cgroup").join(cgroup.trim_start_matches('/'));
    fs::create_dir_all(&cgroup_dir).expect("mkdir");
    fs::write(cgroup_dir.join("cgroup.procs"), "4242\n").expect("procs");
    fs::create_dir_all(proc_root.join("4242")).expect("mkdir");
    fs::write(
        proc_root.join("4242/mountinfo"),
        format!(
            "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/l,upperdir={},workdir=/w\n",
            upper.display()
        ),
    )
    .expect("mountinfo");

    let mut meter = StorageMeter::new(proc_root.clone(), tree);
    // A layer outside the runtime's image filesystem is not believed.
    meter.set_layer_root(Some(d.join("elsewhere")));
    let (usages, _) = meter.measure(std::slice::from_ref(&l));
    assert_eq!(usages[0].containers["app"].rootfs, None);
    meter.set_layer_root(Some(d.join("snapshots")));
    let (usages, errors) = meter.measure(std::slice::from_ref(&l));
    assert!(errors.is_empty(), "{errors:?}");
    let u = &usages[0];
    assert_eq!(
        u.empty_dirs.keys().collect::<Vec<_>>(),
        ["data"],
        "the memory volume is not counted"
    );
    assert!(u.empty_dirs["data"] >= 50_000, "{u:?}");
    let app = u.containers["app"];
    assert!(app.rootfs.is_some_and(|b| b >= 100_000), "{u:?}");
    assert!(app.logs >= 4096, "{u:?}");
    assert_eq!(
        u.containers["idle"],
        ContainerStorage {
            rootfs: None,
            logs: 0
        },
        "no instance, no logs"
    );

    // The layer is remembered: the process may be gone by the next pass.
    fs::remove_dir_all(proc_root.join("4242")).expect("rm");
    write(&upper.join("tmp/g"), 100_000);
    let (usages, errors) = meter.measure(std::slice::from_ref(&l));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        usages[0].containers["app"]
            .rootfs
            .is_some_and(|b| b >= 200_000),
        "{usages:?}"
    );
    // The budget is per pod: a small one truncates.
    let mut small = meter.clone().with_budget(2);
    let (usages, _) = small.measure(std::slice::from_ref(&l));
    assert!(usages[0].truncated, "{usages:?}");
    // A container no longer listed is forgotten.
    l.containers[0].id = Some("id-new".into());
    let (usages, _) = meter.measure(std::slice::from_ref(&l));
    assert_eq!(usages[0].containers["app"].rootfs, None);
}

#[test]
fn meter_with_a_shared_cache_walks_only_trees_older_than_its_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tree = QosTree::new(CgroupDriver::v2(d.join("cgroup")), "/");
    let mut l = limited_pod(&[("data", 10 * MI)], &[("app", Some(10 * MI))], None);
    l.empty_dir_root = d.join("pods/u1/volumes/kubernetes.io~empty-dir");
    l.containers[0].log_dir = d.join("logs/app");
    l.containers[0].id = None;
    write(&l.empty_dir_root.join("data/f"), 50_000);
    let cache = UsageCache::new();
    let mut meter = StorageMeter::new(d.join("proc"), tree)
        .with_cache(cache.clone(), Duration::from_secs(3600));
    let (first, _) = meter.measure(std::slice::from_ref(&l));
    assert!(first[0].empty_dirs["data"] >= 50_000, "{first:?}");
    // What the meter walked is there for the stats sampler.
    let cached = cache
        .get(
            &l.uid,
            &Tree::EmptyDir("data".into()),
            Duration::from_secs(60),
            std::time::Instant::now(),
        )
        .expect("the meter's walk is cached");
    assert_eq!(cached.usage.bytes, first[0].empty_dirs["data"]);
    // Within its age the meter takes the cached walk: a file written since does not show...
    write(&l.empty_dir_root.join("data/g"), 200_000);
    let (second, _) = meter.measure(std::slice::from_ref(&l));
    assert_eq!(second[0].empty_dirs["data"], first[0].empty_dirs["data"]);
    // ...and once the walk is older than its age (here: any age), it walks again.
    let mut eager = meter.with_cache(cache.clone(), Duration::ZERO);
    let (third, _) = eager.measure(std::slice::from_ref(&l));
    assert!(third[0].empty_dirs["data"] >= 250_000, "{third:?}");
    // The sampler, whose period has not passed, now reads the new walk.
    let cached = cache
        .get(
            &l.uid,
            &Tree::EmptyDir("data".into()),
            Duration::from_secs(60),
            std::time::Instant::now(),
        )
        .expect("cached");
    assert_eq!(cached.usage.bytes, third[0].empty_dirs["data"]);
}
