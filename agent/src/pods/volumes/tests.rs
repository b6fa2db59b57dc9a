use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource,
    PodSpec, ProjectedVolumeSource, SecretVolumeSource, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn pod(volumes: Vec<Volume>, mounts: Vec<VolumeMount>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-node1".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("uid-1".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn host_path(name: &str, path: &Path, kind: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string_lossy().into_owned(),
            type_: (!kind.is_empty()).then(|| kind.to_owned()),
        }),
        ..Volume::default()
    }
}

fn sub_path_mount(volume: &str, sub_path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: "/mnt".to_owned(),
        sub_path: Some(sub_path.to_owned()),
        ..VolumeMount::default()
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn empty_dir_on_disk() {
    let pods = tempfile::tempdir().expect("tempdir");
    let p = pod(
        vec![
            empty_dir("cache"),
            // No source at all: the API server's default, an emptyDir.
            Volume {
                name: "scratch".to_owned(),
                ..Volume::default()
            },
        ],
        vec![],
    );
    let volumes = PodVolumes::prepare(&p, pods.path()).expect("prepare");
    let base = pods.path().join("uid-1/volumes/kubernetes.io~empty-dir");
    assert_eq!(volumes.uid(), "uid-1");
    assert_eq!(volumes.pod_dir(), pods.path().join("uid-1"));
    for name in ["cache", "scratch"] {
        let path = base.join(name);
        assert_eq!(volumes.host_path(name), Some(path.as_path()));
        assert!(path.is_dir(), "{} is a directory", path.display());
        assert_eq!(
            mode(&path),
            0o777,
            "{name} is world-writable despite the umask"
        );
    }
    assert_eq!(mode(&pods.path().join("uid-1")), 0o750);
    assert_eq!(volumes.host_path("nope"), None);
    let kinds: Vec<VolumeKind> = volumes.volumes().map(|v| v.kind).collect();
    assert_eq!(kinds, [VolumeKind::EmptyDir, VolumeKind::EmptyDir]);
}

#[test]
fn prepare_is_idempotent_and_keeps_content() {
    let pods = tempfile::tempdir().expect("tempdir");
    let p = pod(
        vec![empty_dir("cache")],
        vec![sub_path_mount("cache", "a/b")],
    );
    let first = PodVolumes::prepare(&p, pods.path()).expect("first prepare");
    let cache = first.host_path("cache").expect("cache").to_owned();
    fs::write(cache.join("data"), "kept").expect("write");
    // The container changed the mode; a new prepare must not fight it.
    fs::set_permissions(&cache, Permissions::from_mode(0o755)).expect("chmod");
    let second = PodVolumes::prepare(&p, pods.path()).expect("second prepare");
    assert_eq!(first, second);
    assert_eq!(
        fs::read_to_string(cache.join("data")).expect("read"),
        "kept"
    );
    assert_eq!(mode(&cache), 0o755);
}

#[test]
fn memory_medium_is_validated_before_mounting() {
    let pods = tempfile::tempdir().expect("tempdir");
    let mut v = empty_dir("huge");
    v.empty_dir = Some(EmptyDirVolumeSource {
        medium: Some("HugePages".to_owned()),
        size_limit: None,
    });
    let err = PodVolumes::prepare(&pod(vec![v], vec![]), pods.path()).expect_err("hugepages");
    assert_eq!(
        err.to_string(),
        "pod web-node1_default(uid-1): volume \"huge\": emptyDir medium \"HugePages\" is not \
         supported (only \"\" and \"Memory\")"
    );

    let mut v = empty_dir("mem");
    v.empty_dir = Some(EmptyDirVolumeSource {
        medium: Some("Memory".to_owned()),
        size_limit: Some(Quantity("lots".to_owned())),
    });
    let err = PodVolumes::prepare(&pod(vec![v], vec![]), pods.path()).expect_err("bad size");
    assert!(
        err.to_string().starts_with(
            "pod web-node1_default(uid-1): volume \"mem\": sizeLimit: invalid quantity"
        ),
        "{err}"
    );
}

#[test]
fn tmpfs_size_follows_size_limit_and_pod_limit() {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    let mut limited = pod(vec![], vec![]);
    limited.spec.as_mut().expect("spec").containers[0].resources = Some(ResourceRequirements {
        limits: Some([("memory".to_owned(), Quantity("64Mi".to_owned()))].into()),
        ..ResourceRequirements::default()
    });
    let unlimited = pod(vec![], vec![]);
    let mi = |n: u64| n << 20;
    let cases = [
        (&unlimited, None, None),
        (&unlimited, Some("0"), None),
        (&unlimited, Some("16Mi"), Some(mi(16))),
        (&limited, None, Some(mi(64))),
        (&limited, Some("16Mi"), Some(mi(16))),
        (&limited, Some("1Gi"), Some(mi(64))),
    ];
    for (p, size_limit, expected) in cases {
        assert_eq!(
            tmpfs_size(p, size_limit),
            Ok(expected),
            "sizeLimit {size_limit:?}"
        );
    }
}

#[test]
fn host_path_types() {
    let host = tempfile::tempdir().expect("tempdir");
    let dir = host.path().join("dir");
    let file = host.path().join("file");
    let sock = host.path().join("sock");
    let link = host.path().join("link-to-dir");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(&file, "x").expect("write");
    let _listener = UnixListener::bind(&sock).expect("bind socket");
    symlink(&dir, &link).expect("symlink");
    let missing = host.path().join("missing");
    let null = Path::new("/dev/null");

    type Expect = Result<(), &'static str>;
    let cases: Vec<(&str, &Path, &str, Expect)> = vec![
        ("", &missing, "no check", Ok(())),
        ("", &file, "no check", Ok(())),
        ("Directory", &dir, "", Ok(())),
        ("Directory", &link, "followed link", Ok(())),
        (
            "Directory",
            &file,
            "",
            Err("expected a directory, found a regular file"),
        ),
        (
            "Directory",
            &missing,
            "",
            Err("expected a directory, found nothing"),
        ),
        ("File", &file, "", Ok(())),
        (
            "File",
            &dir,
            "",
            Err("expected a regular file, found a directory"),
        ),
        (
            "File",
            &missing,
            "",
            Err("expected a regular file, found nothing"),
        ),
        ("Socket", &sock, "", Ok(())),
        (
            "Socket",
            &file,
            "",
            Err("expected a socket, found a regular file"),
        ),
        ("CharDevice", null, "", Ok(())),
        (
            "CharDevice",
            &dir,
            "",
            Err("expected a character device, found a directory"),
        ),
        (
            "BlockDevice",
            null,
            "",
            Err("expected a block device, found a character device"),
        ),
        ("DirectoryOrCreate", &dir, "", Ok(())),
        (
            "DirectoryOrCreate",
            &file,
            "",
            Err("expected a directory, found a regular file"),
        ),
        ("FileOrCreate", &file, "", Ok(())),
        (
            "FileOrCreate",
            &dir,
            "",
            Err("expected a regular file, found a directory"),
        ),
        (
            "Sometimes",
            &dir,
            "",
            Err("unknown hostPath type \"Sometimes\""),
        ),
    ];
    let pods = tempfile::tempdir().expect("tempdir");
    for (kind, path, note, expect) in cases {
        let p = pod(vec![host_path("h", path, kind)], vec![]);
        match (PodVolumes::prepare(&p, pods.path()), expect) {
            (Ok(v), Ok(())) => {
                assert_eq!(v.host_path("h"), Some(path), "{kind} {}", path.display());
                assert_eq!(
                    v.volumes().next().map(|v| v.kind),
                    Some(VolumeKind::HostPath)
                );
            }
            (Err(e), Err(expected)) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("pod web-node1_default(uid-1): volume \"h\": ")
                        && msg.contains(expected),
                    "{kind} {} ({note}): {msg:?} lacks {expected:?}",
                    path.display()
                );
            }
            (got, expected) => panic!(
                "{kind} {} ({note}): got {got:?}, expected {expected:?}",
                path.display()
            ),
        }
    }
    assert!(!missing.exists(), "an untyped hostPath is never created");
}

#[test]
fn host_path_creation() {
    let host = tempfile::tempdir().expect("tempdir");
    let pods = tempfile::tempdir().expect("tempdir");
    let new_dir = host.path().join("a/b/c");
    let new_file = host.path().join("f");
    let orphan = host.path().join("no-parent/f");
    let p = pod(
        vec![
            host_path("d", &new_dir, "DirectoryOrCreate"),
            host_path("f", &new_file, "FileOrCreate"),
        ],
        vec![],
    );
    PodVolumes::prepare(&p, pods.path()).expect("prepare");
    assert!(new_dir.is_dir());
    assert!(new_file.is_file());
    assert_eq!(fs::read(&new_file).expect("read").len(), 0);
    // Idempotent: existing ones are kept.
    fs::write(&new_file, "content").expect("write");
    PodVolumes::prepare(&p, pods.path()).expect("prepare again");
    assert_eq!(fs::read_to_string(&new_file).expect("read"), "content");

    let p = pod(vec![host_path("f", &orphan, "FileOrCreate")], vec![]);
    let err = PodVolumes::prepare(&p, pods.path()).expect_err("parent missing");
    assert_eq!(
        err.to_string(),
        format!("cannot create file {}", orphan.display())
    );
}

#[test]
fn host_path_must_be_absolute_and_clean() {
    let pods = tempfile::tempdir().expect("tempdir");
    for path in ["relative/dir", "/var/../etc"] {
        let p = pod(vec![host_path("h", Path::new(path), "")], vec![]);
        let err = PodVolumes::prepare(&p, pods.path()).expect_err(path);
        assert!(
            err.to_string()
                .ends_with("must be absolute and must not contain \"..\""),
            "{path}: {err}"
        );
    }
}

#[test]
fn unsupported_volumes_name_pod_and_volume() {
    let pods = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            Volume {
                name: "data".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource::default()),
                ..Volume::default()
            },
            "persistentVolumeClaim",
        ),
        (
            Volume {
                name: "driver".to_owned(),
                csi: Some(k8s_openapi::api::core::v1::CSIVolumeSource::default()),
                ..Volume::default()
            },
            "csi",
        ),
    ];
    for (volume, kind) in cases {
        let name = volume.name.clone();
        let err = PodVolumes::prepare(&pod(vec![volume], vec![]), pods.path()).expect_err(kind);
        assert_eq!(
            err.to_string(),
            format!(
                "pod web-node1_default(uid-1): volume {name:?}: {kind} volumes are not supported \
                 (no volume plugin; only emptyDir, hostPath, configMap, secret, downwardAPI \
                 and projected)"
            )
        );
    }
}

fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

#[tokio::test]
async fn standalone_volumes_that_need_the_api_server_are_refused_by_name() {
    let token = Volume {
        name: "token".to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![k8s_openapi::api::core::v1::VolumeProjection {
                service_account_token: Some(
                    k8s_openapi::api::core::v1::ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }]),
            default_mode: None,
        }),
        ..Volume::default()
    };
    let secret = Volume {
        name: "s".to_owned(),
        secret: Some(SecretVolumeSource::default()),
        ..Volume::default()
    };
    for (volume, kind) in [
        (config_map_volume("cm", "cfg"), "configMap"),
        (secret, "secret"),
        (token, "serviceAccountToken"),
    ] {
        let name = volume.name.clone();
        let err = api::fetch(&pod(vec![volume], vec![]), &api::ApiAccess::default())
            .await
            .expect_err(kind);
        assert_eq!(
            err.to_string(),
            format!(
                "pod web-node1_default(uid-1): volume {name:?}: {kind} needs an API server \
                 (standalone mode: no --kubeconfig)"
            )
        );
    }
    // downwardAPI needs nothing of it.
    let downward = Volume {
        name: "info".to_owned(),
        downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIVolumeSource::default()),
        ..Volume::default()
    };
    api::fetch(&pod(vec![downward], vec![]), &api::ApiAccess::default())
        .await
        .expect("downwardAPI standalone");
}

fn cm(data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

async fn prepare(p: &Pod, access: &api::ApiAccess, pods: &Path) -> Result<PodVolumes, VolumeError> {
    let data = api::fetch(p, access).await?;
    PodVolumes::prepare_with(p, pods, &data, &Allocatable::default())
}

#[tokio::test]
async fn a_config_map_volume_follows_its_object_and_is_mounted_read_only() {
    let pods = tempfile::tempdir().expect("tempdir");
    let objects = std::sync::Arc::new(crate::pods::objects::FakeObjects::default());
    let access = api::ApiAccess {
        objects: Some(objects.clone()),
        tokens: None,
    };
    let p = pod(vec![config_map_volume("cfg", "app-config")], vec![]);
    // Missing: the mount fails as upstream's, and waits for the object.
    let err = prepare(&p, &access, pods.path())
        .await
        .expect_err("missing configMap");
    assert!(err.is_set_up(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app-config\" not found"
    );
    objects.config_maps.lock().unwrap().insert(
        "default/app-config".to_owned(),
        cm(&[("a", "1"), ("b", "1")]),
    );
    let volumes = prepare(&p, &access, pods.path()).await.expect("prepare");
    let dir = pods
        .path()
        .join("uid-1/volumes/kubernetes.io~configmap/cfg");
    assert_eq!(volumes.host_path("cfg"), Some(dir.as_path()));
    assert!(volumes.read_only("cfg"));
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    let first = fs::read_link(dir.join(atomic::DATA_DIR)).expect("..data");
    // Unchanged: not written again.
    prepare(&p, &access, pods.path())
        .await
        .expect("prepare again");
    assert_eq!(fs::read_link(dir.join(atomic::DATA_DIR)).unwrap(), first);
    // Changed: swapped.
    objects.config_maps.lock().unwrap().insert(
        "default/app-config".to_owned(),
        cm(&[("a", "2"), ("b", "2")]),
    );
    prepare(&p, &access, pods.path())
        .await
        .expect("prepare after the update");
    assert_ne!(fs::read_link(dir.join(atomic::DATA_DIR)).unwrap(), first);
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "2");
    assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "2");
    PodVolumes::teardown("uid-1", pods.path()).expect("teardown");
    assert!(!pods.path().join("uid-1").exists());
}

#[test]
fn invalid_names_and_uids() {
    let pods = tempfile::tempdir().expect("tempdir");
    for name in ["../escape", "a/b", "Upper", ""] {
        let err =
            PodVolumes::prepare(&pod(vec![empty_dir(name)], vec![]), pods.path()).expect_err(name);
        assert!(err.to_string().contains("invalid name"), "{name:?}: {err}");
    }
    let err = PodVolumes::prepare(
        &pod(vec![empty_dir("a"), empty_dir("a")], vec![]),
        pods.path(),
    )
    .expect_err("duplicate");
    assert!(
        err.to_string()
            .ends_with("volume \"a\": duplicate volume name"),
        "{err}"
    );

    for uid in ["", ".", "..", "a/b", "/abs", "a/"] {
        let mut p = pod(vec![], vec![]);
        p.metadata.uid = Some(uid.to_owned());
        let err = PodVolumes::prepare(&p, pods.path()).expect_err(uid);
        assert_eq!(
            err.to_string(),
            format!("invalid pod UID {uid:?}: must be one non-empty path component")
        );
        assert!(
            matches!(
                PodVolumes::teardown(uid, pods.path()),
                Err(VolumeError::InvalidUid { .. })
            ),
            "teardown {uid:?}"
        );
    }
}

#[test]
fn prepare_checks_sub_paths_without_touching_the_volume() {
    let pods = tempfile::tempdir().expect("tempdir");
    let p = pod(
        vec![empty_dir("cache")],
        vec![
            sub_path_mount("cache", "logs/app"),
            sub_path_mount("cache", "./logs/app"),
        ],
    );
    let volumes = PodVolumes::prepare(&p, pods.path()).expect("prepare");
    let root = volumes.host_path("cache").expect("cache");
    assert!(
        !root.join("logs").exists(),
        "subPaths are opened (and created) only when a container starts"
    );
    assert!(!volumes.pod_dir().join(subpath::SUBPATHS_DIR).exists());
}

fn app(mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: "app".to_owned(),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

#[test]
fn sub_path_escapes_are_refused() {
    let pods = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let p = pod(vec![empty_dir("cache")], vec![]);
    let volumes = PodVolumes::prepare(&p, pods.path()).expect("prepare");
    let root = volumes.host_path("cache").expect("cache").to_owned();
    symlink(outside.path(), root.join("out")).expect("symlink");
    fs::write(root.join("file"), "x").expect("write");
    let prefix = |sub_path: &str| {
        format!(
            "pod web-node1_default(uid-1): container \"app\": volume mount \"cache\": \
             subPath {sub_path:?}: "
        )
    };

    // Refused by prepare: the spec alone says it.
    for sub_path in ["../../etc", "/etc", "a/../../b"] {
        let p = pod(
            vec![empty_dir("cache")],
            vec![sub_path_mount("cache", sub_path)],
        );
        let msg = PodVolumes::prepare(&p, pods.path())
            .expect_err(sub_path)
            .to_string();
        assert!(
            msg.starts_with(&prefix(sub_path))
                && msg.contains("must be a relative path inside the volume"),
            "{sub_path}: {msg:?}"
        );
    }
    // Refused when the container starts, before anything is mounted (so this runs without
    // root, and mounts nothing with it): what the volume holds then.
    let cases = [
        ("out", "out leads out of the volume"),
        ("out/x", "out leads out of the volume"),
        ("file/x", "file is not a directory"),
    ];
    for (sub_path, expected) in cases {
        let msg = volumes
            .pin_sub_paths(&app(vec![sub_path_mount("cache", sub_path)]))
            .expect_err(sub_path)
            .to_string();
        assert!(
            msg.starts_with(&prefix(sub_path)) && msg.contains(expected),
            "{sub_path}: {msg:?} lacks {expected:?}"
        );
    }
    assert_eq!(
        fs::read_dir(outside.path()).expect("read").count(),
        0,
        "nothing created outside"
    );

    let mut expr = sub_path_mount("cache", "");
    expr.sub_path_expr = Some("$(POD_NAME)".to_owned());
    let err = PodVolumes::prepare(&pod(vec![empty_dir("cache")], vec![expr]), pods.path())
        .expect_err("subPathExpr");
    assert!(
        err.to_string().ends_with("subPathExpr is not supported"),
        "{err}"
    );

    let err = PodVolumes::prepare(
        &pod(vec![], vec![sub_path_mount("ghost", "x")]),
        pods.path(),
    )
    .expect_err("unknown volume");
    assert!(
        err.to_string()
            .ends_with("no volume of that name in the pod"),
        "{err}"
    );
    let err = volumes
        .pin_sub_paths(&app(vec![sub_path_mount("ghost", "x")]))
        .expect_err("unknown volume at start");
    assert!(
        err.to_string()
            .ends_with("no volume of that name in the pod"),
        "{err}"
    );
}

#[test]
fn containers_without_sub_paths_pin_nothing() {
    let pods = tempfile::tempdir().expect("tempdir");
    let p = pod(vec![empty_dir("cache")], vec![]);
    let volumes = PodVolumes::prepare(&p, pods.path()).expect("prepare");
    let plain = VolumeMount {
        name: "cache".to_owned(),
        mount_path: "/cache".to_owned(),
        ..VolumeMount::default()
    };
    let pinned = volumes.pin_sub_paths(&app(vec![plain])).expect("pin");
    assert_eq!(pinned, SubPathMounts::default());
    assert!(!volumes.pod_dir().join(subpath::SUBPATHS_DIR).exists());
}

#[test]
fn teardown_removes_everything_and_spares_host_paths() {
    let pods = tempfile::tempdir().expect("tempdir");
    let host = tempfile::tempdir().expect("tempdir");
    fs::write(host.path().join("precious"), "keep").expect("write");
    let p = pod(
        vec![empty_dir("cache"), host_path("h", host.path(), "Directory")],
        vec![sub_path_mount("cache", "deep/er")],
    );
    let volumes = PodVolumes::prepare(&p, pods.path()).expect("prepare");
    let cache = volumes.host_path("cache").expect("cache").to_owned();
    fs::create_dir_all(cache.join("deep/er")).expect("mkdir");
    fs::write(cache.join("deep/er/file"), "x").expect("write");
    // A container left links to the host path and to the host's root: not followed.
    symlink(host.path(), cache.join("to-host")).expect("symlink");
    symlink("/", cache.join("to-root")).expect("symlink");

    PodVolumes::teardown("uid-1", pods.path()).expect("teardown");
    assert!(!pods.path().join("uid-1").exists());
    assert!(pods.path().exists());
    assert_eq!(
        fs::read_to_string(host.path().join("precious")).expect("host file kept"),
        "keep"
    );
    // Again: nothing left is not an error.
    PodVolumes::teardown("uid-1", pods.path()).expect("second teardown");
}

#[test]
fn teardown_of_a_symlinked_pod_dir_removes_only_the_link() {
    let pods = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    fs::write(elsewhere.path().join("keep"), "x").expect("write");
    symlink(elsewhere.path(), pods.path().join("uid-1")).expect("symlink");
    PodVolumes::teardown("uid-1", pods.path()).expect("teardown");
    assert!(fs::symlink_metadata(pods.path().join("uid-1")).is_err());
    assert!(elsewhere.path().join("keep").exists());
}
