//! Pod volumes against the real kernel (root): `emptyDir` with `medium: Memory` mounts a tmpfs,
//! preparing again after an agent restart mounts nothing twice, a `subPath` is pinned by a
//! bind mount that a later swap cannot redirect, and teardown unmounts (lazily when busy) and
//! deletes. Every mount is made under a temporary directory the test created; a guard
//! detaches whatever is left there if an assertion fails.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use bpflet::pods::manifest::parse_pod_manifest;
use bpflet::pods::subpath::SUBPATHS_DIR;
use bpflet::pods::volumes::{EMPTY_DIR_PLUGIN_DIR, PodVolumes, VolumeError, VolumeKind};
use bpflet::pods::{ManifestOrigin, StaticPod};
use bpflet_tests::require_root;
use jiff::Timestamp;
use nix::mount::{MntFlags, MsFlags};

/// A mount seen in `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// The mounts at or below `dir` (canonical), in mount order. The test's temporary paths hold
/// no characters that mountinfo escapes.
fn mounts_under(dir: &Path) -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                point: PathBuf::from(fields.get(4)?),
                fstype: (*fields.get(sep + 1)?).to_owned(),
                super_options: (*fields.get(sep + 3)?).to_owned(),
            })
        })
        .filter(|m| m.point.starts_with(dir))
        .collect()
}

/// A temporary pods directory; on drop, detaches every mount still below it (deepest
/// first), so a failed assertion leaves nothing mounted.
struct PodsDir {
    dir: tempfile::TempDir,
    real: PathBuf,
}

impl PodsDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bpflet-volumes-")
            .tempdir()
            .expect("create temporary pods directory");
        let real = fs::canonicalize(dir.path()).expect("canonical pods directory");
        Self { dir, real }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn mounts(&self) -> Vec<Mount> {
        mounts_under(&self.real)
    }
}

impl Drop for PodsDir {
    fn drop(&mut self) {
        let mut left = self.mounts();
        left.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
        for m in left {
            let _ = nix::mount::umount2(&m.point, MntFlags::MNT_DETACH);
        }
    }
}

/// A static pod with a `medium: Memory` emptyDir `shm` and a disk emptyDir `disk`, decoded
/// from a manifest like the agent's file source does.
fn memory_pod(uid: &str, size_limit: Option<&str>, memory_limit: Option<&str>) -> StaticPod {
    let size_limit = size_limit.map_or(String::new(), |s| format!("\n      sizeLimit: {s}"));
    let resources = memory_limit.map_or(String::new(), |l| {
        format!("\n    resources:\n      limits:\n        memory: {l}")
    });
    let manifest = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: mem
  uid: {uid}
spec:
  containers:
  - name: app
    image: busybox{resources}
  volumes:
  - name: shm
    emptyDir:
      medium: Memory{size_limit}
  - name: disk
    emptyDir: {{}}
"
    );
    let origin = ManifestOrigin::File(PathBuf::from("/etc/bpflet/manifests/mem.yaml"));
    parse_pod_manifest(manifest.as_bytes(), &origin, "node1", Timestamp::now())
        .unwrap_or_else(|e| panic!("manifest {manifest}: {e}"))
}

fn volume_dir(pods: &PodsDir, uid: &str, name: &str) -> PathBuf {
    pods.real
        .join(uid)
        .join("volumes")
        .join(EMPTY_DIR_PLUGIN_DIR)
        .join(name)
}

#[test]
fn memory_empty_dir_is_one_tmpfs_across_restarts_and_teardown_removes_it() {
    require_root();
    let pods = PodsDir::new();
    let pod = memory_pod("uid-mem", Some("16Mi"), None);
    let shm = volume_dir(&pods, "uid-mem", "shm");

    let volumes = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    let kinds: BTreeMap<&str, VolumeKind> = volumes
        .volumes()
        .map(|v| (v.name.as_str(), v.kind))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("disk", VolumeKind::EmptyDir),
            (
                "shm",
                VolumeKind::EmptyDirMemory {
                    size_bytes: Some(16 << 20)
                }
            ),
        ])
    );
    let mounts = pods.mounts();
    assert_eq!(
        mounts.len(),
        1,
        "exactly the tmpfs volume is mounted: {mounts:?}"
    );
    assert_eq!(mounts[0].point, shm);
    assert_eq!(mounts[0].fstype, "tmpfs");
    assert!(
        mounts[0]
            .super_options
            .split(',')
            .any(|o| o == "size=16384k"),
        "sizeLimit 16Mi becomes the tmpfs size: {}",
        mounts[0].super_options
    );
    assert_eq!(
        fs::metadata(&shm).expect("stat tmpfs").permissions().mode() & 0o7777,
        0o777,
        "the tmpfs root is world-writable"
    );
    fs::write(shm.join("data"), "in memory").expect("write into the tmpfs");

    // An agent restart: preparing again finds the mount and keeps its content.
    let again = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare again");
    assert_eq!(again, volumes);
    assert_eq!(
        pods.mounts().len(),
        1,
        "no second tmpfs: {:?}",
        pods.mounts()
    );
    assert_eq!(
        fs::read_to_string(shm.join("data")).expect("read back"),
        "in memory"
    );

    PodVolumes::teardown("uid-mem", pods.path()).expect("teardown");
    assert_eq!(pods.mounts(), Vec::new(), "the tmpfs is unmounted");
    assert!(
        !pods.real.join("uid-mem").exists(),
        "the pod directory is gone"
    );
}

#[test]
fn tmpfs_size_defaults_to_the_pod_memory_limit() {
    require_root();
    let pods = PodsDir::new();
    let pod = memory_pod("uid-limit", None, Some("32Mi"));
    PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    let mounts = pods.mounts();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(
        mounts[0]
            .super_options
            .split(',')
            .any(|o| o == "size=32768k"),
        "the pod's 32Mi memory limit caps the tmpfs: {}",
        mounts[0].super_options
    );
    PodVolumes::teardown("uid-limit", pods.path()).expect("teardown");
    assert_eq!(pods.mounts(), Vec::new());
}

#[test]
fn busy_tmpfs_is_detached_lazily() {
    require_root();
    let pods = PodsDir::new();
    let pod = memory_pod("uid-busy", Some("8Mi"), None);
    let volumes = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    let shm = volumes.host_path("shm").expect("shm volume").to_owned();
    // An open file keeps the tmpfs busy: a plain unmount fails with EBUSY.
    let open = File::create(shm.join("held")).expect("open a file on the tmpfs");
    assert_eq!(
        nix::mount::umount2(&shm, MntFlags::UMOUNT_NOFOLLOW),
        Err(nix::errno::Errno::EBUSY),
        "an open file makes a plain unmount fail"
    );

    PodVolumes::teardown("uid-busy", pods.path()).expect("teardown detaches lazily");
    assert_eq!(pods.mounts(), Vec::new(), "detached from the tree");
    assert!(
        !pods.real.join("uid-busy").exists(),
        "the pod directory is gone"
    );
    drop(open);
}

#[test]
fn teardown_refuses_to_delete_below_a_foreign_mount() {
    require_root();
    let pods = PodsDir::new();
    let pod = memory_pod("uid-foreign", None, None);
    let volumes = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    // Something else (not a tmpfs volume of the agent's) is mounted inside the pod's
    // directory: a bind mount of the disk volume onto a directory of its own.
    let disk = volumes.host_path("disk").expect("disk volume").to_owned();
    fs::write(disk.join("keep"), "x").expect("write");
    let target = pods.real.join("uid-foreign").join("bound");
    fs::create_dir(&target).expect("mkdir bind target");
    nix::mount::mount(
        Some(&disk),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");

    let err = PodVolumes::teardown("uid-foreign", pods.path()).expect_err("foreign mount");
    assert!(
        matches!(&err, VolumeError::StillMounted { mount_point, .. } if *mount_point == target),
        "{err}"
    );
    assert!(disk.join("keep").exists(), "nothing was deleted");
    assert_eq!(
        pods.mounts().len(),
        2,
        "the agent's tmpfs was left alone too: {:?}",
        pods.mounts()
    );

    nix::mount::umount2(&target, MntFlags::empty()).expect("unmount the bind mount");
    PodVolumes::teardown("uid-foreign", pods.path()).expect("teardown after cleanup");
    assert_eq!(pods.mounts(), Vec::new());
    assert!(!pods.real.join("uid-foreign").exists());
}

/// A static pod whose container `app` mounts the emptyDir `shared` (`emptyDir: {empty_dir}`)
/// twice: `subPath: d` at `/d` (`volumeMounts[0]`) and `subPath: conf/app.ini` at
/// `/app.ini` (`volumeMounts[1]`).
fn sub_path_pod(uid: &str, empty_dir: &str) -> StaticPod {
    let manifest = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: sub
  uid: {uid}
spec:
  containers:
  - name: app
    image: busybox
    volumeMounts:
    - {{name: shared, mountPath: /d, subPath: d}}
    - {{name: shared, mountPath: /app.ini, subPath: conf/app.ini}}
  volumes:
  - name: shared
    emptyDir: {empty_dir}
"
    );
    let origin = ManifestOrigin::File(PathBuf::from("/etc/bpflet/manifests/sub.yaml"));
    parse_pod_manifest(manifest.as_bytes(), &origin, "node1", Timestamp::now())
        .unwrap_or_else(|e| panic!("manifest {manifest}: {e}"))
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_pinned_sub_path_stays_on_the_checked_directory() {
    require_root();
    let pods = PodsDir::new();
    let outside = tempfile::tempdir().expect("outside directory");
    fs::write(outside.path().join("secret"), "host").expect("write");
    let pod = sub_path_pod("uid-sub", "{}");
    let app = &pod.pod.spec.as_ref().expect("spec").containers[0];
    let volumes = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    let shared = volume_dir(&pods, "uid-sub", "shared");
    fs::create_dir(shared.join("d")).expect("mkdir d");
    fs::write(shared.join("d/inside"), "volume").expect("write");
    fs::create_dir(shared.join("conf")).expect("mkdir conf");
    fs::write(shared.join("conf/app.ini"), "ini").expect("write");

    let pinned = volumes.pin_sub_paths(app).expect("pin");
    let pins = pods
        .real
        .join("uid-sub")
        .join(SUBPATHS_DIR)
        .join("shared/app");
    let (dir_point, file_point) = (pins.join("0"), pins.join("1"));
    assert_eq!(pinned.get(0), Some(dir_point.as_path()));
    assert_eq!(pinned.get(1), Some(file_point.as_path()));
    let points: Vec<PathBuf> = pods.mounts().into_iter().map(|m| m.point).collect();
    assert_eq!(
        points,
        [dir_point.clone(), file_point.clone()],
        "one bind mount each"
    );
    assert_eq!(
        names(&dir_point),
        ["inside"],
        "the directory that was checked"
    );
    assert_eq!(fs::read_to_string(&file_point).expect("read"), "ini");

    // The container swaps `d` for a link to the host: the pinned mount does not follow.
    fs::rename(shared.join("d"), shared.join("d.old")).expect("rename");
    std::os::unix::fs::symlink(outside.path(), shared.join("d")).expect("symlink");
    assert_eq!(names(&dir_point), ["inside"], "still the checked directory");
    fs::write(dir_point.join("written"), "x").expect("write through the pin");
    assert!(
        shared.join("d.old/written").exists(),
        "landed in the volume"
    );
    assert_eq!(
        names(outside.path()),
        ["secret"],
        "nothing reached the host"
    );

    // The next start checks again and refuses; the earlier pin is left as it was.
    let err = volumes
        .pin_sub_paths(app)
        .expect_err("a link out of the volume");
    assert!(
        matches!(&err, VolumeError::SubPath { reason, .. } if reason.contains("leads out of the volume")),
        "{err}"
    );
    assert_eq!(names(outside.path()), ["secret"]);

    // A fresh directory: pinned again, replacing the earlier mount, not stacking on it.
    fs::remove_file(shared.join("d")).expect("remove link");
    fs::create_dir(shared.join("d")).expect("mkdir d");
    fs::write(shared.join("d/fresh"), "new").expect("write");
    let again = volumes.pin_sub_paths(app).expect("pin again");
    assert_eq!(again, pinned);
    assert_eq!(
        pods.mounts().len(),
        2,
        "replaced, not stacked: {:?}",
        pods.mounts()
    );
    assert_eq!(names(&dir_point), ["fresh"]);

    // An agent restart: preparing again keeps the pins.
    assert_eq!(
        PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare again"),
        volumes
    );
    assert_eq!(pods.mounts().len(), 2);

    PodVolumes::teardown("uid-sub", pods.path()).expect("teardown");
    assert_eq!(pods.mounts(), Vec::new(), "the pins are unmounted");
    assert!(
        !pods.real.join("uid-sub").exists(),
        "the pod directory is gone"
    );
    assert_eq!(names(outside.path()), ["secret"], "the host is untouched");
}

#[test]
fn missing_sub_paths_are_created_and_pinned_on_a_memory_volume() {
    require_root();
    let pods = PodsDir::new();
    let pod = sub_path_pod("uid-mem-sub", "{medium: Memory, sizeLimit: 8Mi}");
    let app = &pod.pod.spec.as_ref().expect("spec").containers[0];
    let volumes = PodVolumes::prepare(&pod.pod, pods.path()).expect("prepare");
    let pinned = volumes.pin_sub_paths(app).expect("pin");
    let shared = volume_dir(&pods, "uid-mem-sub", "shared");
    for created in ["d", "conf/app.ini"] {
        assert!(
            shared.join(created).is_dir(),
            "{created} created as a directory inside the tmpfs"
        );
    }
    let point = pinned.get(0).expect("pinned").to_owned();
    fs::write(point.join("log"), "x").expect("write through the pin");
    assert!(shared.join("d/log").exists(), "landed in the volume");
    let mounts = pods.mounts();
    assert_eq!(mounts.len(), 3, "the tmpfs and two pins: {mounts:?}");
    assert_eq!(mounts[1].point, point);
    assert!(
        mounts.iter().all(|m| m.fstype == "tmpfs"),
        "the pins are bind mounts of the tmpfs: {mounts:?}"
    );

    PodVolumes::teardown("uid-mem-sub", pods.path()).expect("teardown");
    assert_eq!(pods.mounts(), Vec::new());
    assert!(!pods.real.join("uid-mem-sub").exists());
}
