//! Pod volumes on the node's file system: `emptyDir` (disk or tmpfs), `hostPath`, and the
//! volumes whose files the agent writes: `configMap`, `secret`, `downwardAPI`, `projected`.
//!
//! Layout, as upstream's kubelet root: `<pods_dir>/<uid>/volumes/<plugin>/<name>`, where
//! `pods_dir` is `<root-dir>/pods` and `plugin` is upstream's (`kubernetes.io~empty-dir`,
//! `kubernetes.io~configmap`, `kubernetes.io~secret`, `kubernetes.io~downward-api`,
//! `kubernetes.io~projected`). Every other volume type needs a plugin (PVC, CSI, NFS, ...)
//! and is refused with [`VolumeError::Unsupported`].
//!
//! - `emptyDir` on disk: a directory, mode 0777.
//! - `emptyDir` with `medium: Memory`: a tmpfs mounted on that directory, mode 0777. Its
//!   size is `sizeLimit`, capped by the pod's memory limit when every container has one,
//!   or the pod's memory limit alone when there is no `sizeLimit` (upstream's
//!   `SizeMemoryBackedVolumes`, minus the node-allocatable cap); neither: the kernel's
//!   default (half of RAM).
//! - `hostPath`: checked as upstream's `type` says (`DirectoryOrCreate` creates a 0755
//!   directory, `FileOrCreate` an empty 0644 file without creating parents, `Directory`,
//!   `File`, `Socket`, `CharDevice`, `BlockDevice` must exist as that; empty: no check).
//!   The path must be absolute and free of `..`. Symbolic links are followed, as a bind
//!   mount would.
//! - A volume without any source is an `emptyDir` (the API server's default).
//! - `configMap` (a directory on disk, as upstream), `secret`, `downwardAPI` and `projected`
//!   (each a tmpfs sized like a memory `emptyDir` without `sizeLimit`, as upstream: secrets
//!   never reach the disk): their files ([`projection`]) are written by the atomic writer
//!   ([`atomic`]: a `..data` link swapped over a fresh directory), on every call of
//!   [`PodVolumes::prepare_with`], and only when they changed, so an update of the object
//!   shows in running containers (a `subPath` mount of them keeps the file it pinned, as
//!   upstream's). Containers mount them read-only, as upstream. What they read from the API
//!   server (configMaps, secrets, service-account tokens) is fetched before, by
//!   [`api::fetch`]; standalone, a volume that needs it is refused by name
//!   ([`VolumeError::NeedsApiServer`]). A mount that fails (an object missing and not
//!   `optional`, a key missing, a token refused) is [`VolumeError::SetUp`], in upstream's
//!   words (`MountVolume.SetUp failed for volume "v" : configmap "x" not found`).
//! - `subPath` of a volume mount: [`PodVolumes::prepare`] only checks that it is relative,
//!   without `..`, and names a volume of the pod (`subPathExpr` is not supported). Just
//!   before each container start, [`PodVolumes::pin_sub_paths`] opens it beneath the
//!   volume root (missing directories created with the root's mode; symbolic links
//!   followed only while they stay inside the volume) and bind-mounts what it opened onto
//!   `<pods_dir>/<uid>/volume-subpaths/<volume>/<container>/<index>`, the path the runtime
//!   gets; see [`subpath`]. A container that swaps the subPath for a link to a host
//!   path after the check cannot redirect that mount. A refused subPath is logged as a
//!   warning and fails that container's start.
//!
//! [`PodVolumes::prepare`] is idempotent: after an agent restart it finds the directories
//! and, through `/proc/self/mountinfo`, the tmpfs mounts it made before. Call it on every
//! sync. [`PodVolumes::teardown`] unmounts the pinned subPaths and the tmpfs volumes and
//! deletes the pod's directory without following symbolic links out of it; hostPath
//! sources live outside it and are never deleted.

pub mod api;
pub mod atomic;
pub mod projection;
pub mod subpath;

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, DownwardAPIVolumeSource, HostPathVolumeSource, Pod,
    ProjectedVolumeSource, SecretVolumeSource, Volume,
};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use self::atomic::AtomicError;
use self::projection::ApiData;
use crate::model::downward::Allocatable;
use crate::model::qos::pod_limits;
use crate::model::quantity::{QuantityValue, parse_quantity};
use crate::model::validation::validate_dns_label;
use crate::model::{format_pod, pod_uid};
use crate::mountinfo::MountEntry;

/// The per-pod directory of emptyDir volumes, named like upstream's plugin.
pub const EMPTY_DIR_PLUGIN_DIR: &str = "kubernetes.io~empty-dir";
/// The per-pod directories of the volumes whose files the agent writes, named like
/// upstream's plugins.
pub const CONFIG_MAP_PLUGIN_DIR: &str = "kubernetes.io~configmap";
pub const SECRET_PLUGIN_DIR: &str = "kubernetes.io~secret";
pub const DOWNWARD_API_PLUGIN_DIR: &str = "kubernetes.io~downward-api";
pub const PROJECTED_PLUGIN_DIR: &str = "kubernetes.io~projected";
/// Plugin directories whose volumes may be tmpfs mounts of the agent's.
const TMPFS_PLUGIN_DIRS: &[&str] = &[
    EMPTY_DIR_PLUGIN_DIR,
    SECRET_PLUGIN_DIR,
    DOWNWARD_API_PLUGIN_DIR,
    PROJECTED_PLUGIN_DIR,
];
/// Where the kernel lists this process's mounts.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

const POD_DIR_MODE: u32 = 0o750;
const EMPTY_DIR_MODE: u32 = 0o777;
const HOST_DIR_MODE: u32 = 0o755;
const HOST_FILE_MODE: u32 = 0o644;

/// Why a pod's volumes could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "pod {pod}: volume {volume:?}: {kind} volumes are not supported (no volume plugin; \
         only emptyDir, hostPath, configMap, secret, downwardAPI and projected)"
    )]
    Unsupported {
        pod: String,
        volume: String,
        kind: &'static str,
    },
    #[error("pod {pod}: volume {volume:?}: {reason}")]
    Invalid {
        pod: String,
        volume: String,
        reason: String,
    },
    #[error("pod {pod}: volume {volume:?}: hostPath {}: expected {expected}, found {found}", path.display())]
    HostPathType {
        pod: String,
        volume: String,
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "pod {pod}: container {container:?}: volume mount {volume:?}: subPath {sub_path:?}: {reason}"
    )]
    SubPath {
        pod: String,
        container: String,
        volume: String,
        sub_path: String,
        reason: String,
    },
    #[error(
        "pod {pod}: volume {volume:?}: {kind} needs an API server (standalone mode: no \
         --kubeconfig)"
    )]
    NeedsApiServer {
        pod: String,
        volume: String,
        kind: &'static str,
    },
    /// A mount upstream's kubelet would fail too (the pod waits in `ContainerCreating`).
    #[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
    SetUp { volume: String, reason: String },
    #[error("pod {pod}: volume {volume:?}: writing its files")]
    Write {
        pod: String,
        volume: String,
        #[source]
        source: AtomicError,
    },
    #[error("invalid pod UID {uid:?}: must be one non-empty path component")]
    InvalidUid { uid: String },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount tmpfs on {} with {options:?}", path.display())]
    Mount {
        path: PathBuf,
        options: String,
        #[source]
        source: Errno,
    },
    #[error("{} is already a {fstype} mount, not tmpfs", path.display())]
    WrongMount { path: PathBuf, fstype: String },
    #[error("cannot unmount {}", path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot bind-mount a subPath onto {}", mount_point.display())]
    Pin {
        mount_point: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{name:?} cannot name a subPath mount point: must be one non-empty path component")]
    PinName { name: String },
    #[error("{} is still mounted (not a tmpfs volume or a pinned subPath of the agent's); not deleting {}", mount_point.display(), pod_dir.display())]
    StillMounted {
        pod_dir: PathBuf,
        mount_point: PathBuf,
    },
}

impl VolumeError {
    /// Whether this is a mount that can succeed later without a change of the pod (an
    /// object or token the API server does not give yet): the pod then waits in
    /// `ContainerCreating`, as upstream's.
    #[must_use]
    pub fn is_set_up(&self) -> bool {
        matches!(self, VolumeError::SetUp { .. })
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::Io { op, path, source }
}

/// What backs a prepared volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// An `emptyDir` on the node's disk.
    EmptyDir,
    /// An `emptyDir` with `medium: Memory`: a tmpfs of this size (`None`: kernel default).
    EmptyDirMemory {
        size_bytes: Option<u64>,
    },
    HostPath,
    /// A `configMap`: files on disk.
    ConfigMap,
    /// A `secret`, `downwardAPI` or `projected` volume: files on a tmpfs of this size
    /// (`None`: kernel default).
    Secret {
        size_bytes: Option<u64>,
    },
    DownwardApi {
        size_bytes: Option<u64>,
    },
    Projected {
        size_bytes: Option<u64>,
    },
}

impl VolumeKind {
    /// Whether containers mount it read-only whatever their `readOnly` says (the volumes
    /// whose files the agent writes, as upstream).
    #[must_use]
    pub fn read_only(self) -> bool {
        matches!(
            self,
            VolumeKind::ConfigMap
                | VolumeKind::Secret { .. }
                | VolumeKind::DownwardApi { .. }
                | VolumeKind::Projected { .. }
        )
    }

    /// The tmpfs size of a memory-backed volume; `None` for one on disk.
    fn tmpfs(self) -> Option<Option<u64>> {
        match self {
            VolumeKind::EmptyDirMemory { size_bytes }
            | VolumeKind::Secret { size_bytes }
            | VolumeKind::DownwardApi { size_bytes }
            | VolumeKind::Projected { size_bytes } => Some(size_bytes),
            VolumeKind::EmptyDir | VolumeKind::HostPath | VolumeKind::ConfigMap => None,
        }
    }
}

/// One prepared volume of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    pub name: String,
    pub kind: VolumeKind,
    /// What containers bind-mount: the emptyDir directory, or the hostPath as written.
    pub path: PathBuf,
}

/// The volumes of one pod, ready to be mounted into its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolumes {
    uid: String,
    /// The pod as errors name it.
    pod: String,
    pod_dir: PathBuf,
    volumes: BTreeMap<String, PreparedVolume>,
}

/// Where the `subPath` mounts of one container are pinned: the mount point the runtime
/// mounts, by the mount's index in the container's `volumeMounts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubPathMounts(BTreeMap<usize, PathBuf>);

impl SubPathMounts {
    /// The mount point of `volumeMounts[index]`, if it has a pinned subPath.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&Path> {
        self.0.get(&index).map(PathBuf::as_path)
    }
}

impl FromIterator<(usize, PathBuf)> for SubPathMounts {
    fn from_iter<I: IntoIterator<Item = (usize, PathBuf)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl PodVolumes {
    /// Creates (or finds again) every volume of `pod` under `pods_dir` (`<root-dir>/pods`),
    /// and checks the `subPath`s its containers mount (see [`Self::pin_sub_paths`]). Nothing
    /// comes from the API server and the node's allocatable reads as zero: see
    /// [`Self::prepare_with`].
    ///
    /// # Errors
    /// [`VolumeError`] naming the pod and volume for a spec this agent cannot serve, a
    /// hostPath of the wrong type, or a file-system or mount failure.
    pub fn prepare(pod: &Pod, pods_dir: &Path) -> Result<Self, VolumeError> {
        Self::prepare_with(pod, pods_dir, &ApiData::default(), &Allocatable::default())
    }

    /// [`Self::prepare`], writing the files of `configMap`, `secret`, `downwardAPI` and
    /// `projected` volumes from `api` (what [`api::fetch`] read for the pod) and the pod
    /// itself; a limit a container does not set reads as `allocatable`. Files are written
    /// only when they changed.
    ///
    /// # Errors
    /// As [`Self::prepare`]; [`VolumeError::SetUp`] for a mount that fails as upstream's
    /// would (an object or key missing and not optional, a token missing);
    /// [`VolumeError::Write`] for files that cannot be written (a path leaving the volume).
    pub fn prepare_with(
        pod: &Pod,
        pods_dir: &Path,
        api: &ApiData,
        allocatable: &Allocatable,
    ) -> Result<Self, VolumeError> {
        let uid = pod_uid(pod);
        let pod_dir = pod_dir(pods_dir, uid)?;
        let volumes_dir = pod_dir.join("volumes");
        create_dir_all(&volumes_dir, POD_DIR_MODE)?;
        let pod_name = format_pod(pod);
        let mut mounts = None;
        let mut prepared = BTreeMap::new();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let invalid = |reason: String| VolumeError::Invalid {
                pod: pod_name.clone(),
                volume: volume.name.clone(),
                reason,
            };
            validate_dns_label(&volume.name).map_err(|r| invalid(format!("invalid name: {r}")))?;
            if prepared.contains_key(&volume.name) {
                return Err(invalid("duplicate volume name".to_owned()));
            }
            let prepared_volume = match source(volume) {
                Source::EmptyDir { medium, size_limit } => {
                    let path = volumes_dir.join(EMPTY_DIR_PLUGIN_DIR).join(&volume.name);
                    let kind = match medium {
                        "" => VolumeKind::EmptyDir,
                        "Memory" => VolumeKind::EmptyDirMemory {
                            size_bytes: tmpfs_size(pod, size_limit).map_err(invalid)?,
                        },
                        other => {
                            return Err(invalid(format!(
                                "emptyDir medium {other:?} is not supported (only \"\" and \
                                 \"Memory\")"
                            )));
                        }
                    };
                    setup_empty_dir(&path, kind, &mut mounts)?;
                    PreparedVolume {
                        name: volume.name.clone(),
                        kind,
                        path,
                    }
                }
                Source::HostPath(source) => PreparedVolume {
                    name: volume.name.clone(),
                    kind: VolumeKind::HostPath,
                    path: check_host_path(source, &pod_name, &volume.name)?,
                },
                Source::Files(files) => {
                    let plugin = files.plugin_dir();
                    let path = volumes_dir.join(plugin).join(&volume.name);
                    let memory = tmpfs_size(pod, None).map_err(invalid)?;
                    let kind = match files {
                        Files::ConfigMap(_) => VolumeKind::ConfigMap,
                        Files::Secret(_) => VolumeKind::Secret { size_bytes: memory },
                        Files::DownwardApi(_) => VolumeKind::DownwardApi { size_bytes: memory },
                        Files::Projected(_) => VolumeKind::Projected { size_bytes: memory },
                    };
                    let payload = files.payload(pod, api, allocatable).map_err(|reason| {
                        VolumeError::SetUp {
                            volume: volume.name.clone(),
                            reason,
                        }
                    })?;
                    setup_empty_dir(&path, kind, &mut mounts)?;
                    let written =
                        atomic::write(&path, &payload).map_err(|source| VolumeError::Write {
                            pod: pod_name.clone(),
                            volume: volume.name.clone(),
                            source,
                        })?;
                    if written {
                        tracing::debug!(pod = %pod_name, volume = %volume.name, files = payload.len(), "volume files written");
                    }
                    PreparedVolume {
                        name: volume.name.clone(),
                        kind,
                        path,
                    }
                }
                Source::Unsupported(kind) => {
                    return Err(VolumeError::Unsupported {
                        pod: pod_name,
                        volume: volume.name.clone(),
                        kind,
                    });
                }
            };
            prepared.insert(volume.name.clone(), prepared_volume);
        }
        check_sub_paths(pod, &pod_name, &prepared)?;
        Ok(Self {
            uid: uid.to_owned(),
            pod: pod_name,
            pod_dir,
            volumes: prepared,
        })
    }

    /// The pod's UID.
    #[must_use]
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// `<pods_dir>/<uid>`.
    #[must_use]
    pub fn pod_dir(&self) -> &Path {
        &self.pod_dir
    }

    /// The node path a container mounts for this volume.
    #[must_use]
    pub fn host_path(&self, volume_name: &str) -> Option<&Path> {
        self.volumes.get(volume_name).map(|v| v.path.as_path())
    }

    /// Whether containers mount the volume read-only whatever they ask
    /// ([`VolumeKind::read_only`]).
    #[must_use]
    pub fn read_only(&self, volume_name: &str) -> bool {
        self.volumes
            .get(volume_name)
            .is_some_and(|v| v.kind.read_only())
    }

    /// Opens every `subPath` that `container` mounts beneath its volume and bind-mounts it
    /// onto the container's mount point for it (replacing the mount of an earlier start);
    /// see [`subpath`]. Call it just before creating the container, and hand the
    /// result to the runtime config. A refusal is logged as a warning.
    ///
    /// # Errors
    /// [`VolumeError::SubPath`] naming pod, container, volume, subPath and the reason for a
    /// subPath that leads out of its volume (or through something not a directory); other
    /// [`VolumeError`]s for file-system and mount failures.
    pub fn pin_sub_paths(&self, container: &Container) -> Result<SubPathMounts, VolumeError> {
        let mut pinned = BTreeMap::new();
        for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
            let Some(sub_path) = m.sub_path.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let refuse = |reason: String| {
                let e = VolumeError::SubPath {
                    pod: self.pod.clone(),
                    container: container.name.clone(),
                    volume: m.name.clone(),
                    sub_path: sub_path.to_owned(),
                    reason,
                };
                tracing::warn!(error = %e, "refusing a subPath");
                e
            };
            let Some(volume) = self.volumes.get(&m.name) else {
                return Err(refuse("no volume of that name in the pod".to_owned()));
            };
            let opened = subpath::open_beneath(&volume.path, sub_path, &refuse)?;
            let mount_point =
                subpath::pin(&opened, &self.pod_dir, &m.name, &container.name, index)?;
            pinned.insert(index, mount_point);
        }
        Ok(SubPathMounts(pinned))
    }

    /// The prepared volumes, by name.
    pub fn volumes(&self) -> impl Iterator<Item = &PreparedVolume> {
        self.volumes.values()
    }

    /// Unmounts the pod's pinned subPaths and tmpfs volumes (deepest first; lazily, with a
    /// warning, when busy) and deletes `<pods_dir>/<uid>`. Symbolic links inside are
    /// removed, never followed. If anything else is still mounted below the pod's
    /// directory, nothing is unmounted or deleted. A pod without a
    /// directory is not an error.
    ///
    /// # Errors
    /// [`VolumeError`] naming the path that could not be unmounted or deleted.
    pub fn teardown(uid: &str, pods_dir: &Path) -> Result<(), VolumeError> {
        let pod_dir = pod_dir(pods_dir, uid)?;
        let meta = match fs::symlink_metadata(&pod_dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", &pod_dir)(e)),
        };
        if !meta.is_dir() {
            tracing::warn!(path = %pod_dir.display(), "pod directory is not a directory; removing it");
            return fs::remove_file(&pod_dir).map_err(io_err("remove", &pod_dir));
        }
        let real_dir = fs::canonicalize(&pod_dir).map_err(io_err("resolve", &pod_dir))?;
        let tmpfs_dirs: Vec<PathBuf> = TMPFS_PLUGIN_DIRS
            .iter()
            .map(|p| real_dir.join("volumes").join(p))
            .collect();
        let pins = real_dir.join(subpath::SUBPATHS_DIR);
        let mut below: Vec<MountEntry> = read_mounts()?
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&real_dir))
            .collect();
        // Deepest first, and the latest of stacked mounts first.
        below.reverse();
        below.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for mount in &below {
            let ours = mount.mount_point.starts_with(&pins)
                || (mount.fstype == "tmpfs"
                    && mount
                        .mount_point
                        .parent()
                        .is_some_and(|p| tmpfs_dirs.iter().any(|d| d == p)));
            if !ours {
                return Err(VolumeError::StillMounted {
                    pod_dir,
                    mount_point: mount.mount_point.clone(),
                });
            }
        }
        for mount in &below {
            unmount(&mount.mount_point)?;
        }
        if let Some(left) = read_mounts()?
            .into_iter()
            .find(|m| m.mount_point.starts_with(&real_dir))
        {
            return Err(VolumeError::StillMounted {
                pod_dir,
                mount_point: left.mount_point,
            });
        }
        // std's remove_dir_all removes symbolic links without following them.
        fs::remove_dir_all(&pod_dir).map_err(io_err("remove", &pod_dir))
    }
}

/// `<pods_dir>/<uid>`, refusing a UID that is not exactly one normal path component.
fn pod_dir(pods_dir: &Path, uid: &str) -> Result<PathBuf, VolumeError> {
    let mut components = Path::new(uid).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(c)), None) if c.as_bytes() == uid.as_bytes() => {
            Ok(pods_dir.join(uid))
        }
        _ => Err(VolumeError::InvalidUid {
            uid: uid.to_owned(),
        }),
    }
}

enum Source<'a> {
    EmptyDir {
        medium: &'a str,
        size_limit: Option<&'a str>,
    },
    HostPath(&'a HostPathVolumeSource),
    Files(Files<'a>),
    Unsupported(&'static str),
}

/// A volume whose files the agent writes.
#[derive(Clone, Copy)]
enum Files<'a> {
    ConfigMap(&'a ConfigMapVolumeSource),
    Secret(&'a SecretVolumeSource),
    DownwardApi(&'a DownwardAPIVolumeSource),
    Projected(&'a ProjectedVolumeSource),
}

impl Files<'_> {
    fn plugin_dir(&self) -> &'static str {
        match self {
            Files::ConfigMap(_) => CONFIG_MAP_PLUGIN_DIR,
            Files::Secret(_) => SECRET_PLUGIN_DIR,
            Files::DownwardApi(_) => DOWNWARD_API_PLUGIN_DIR,
            Files::Projected(_) => PROJECTED_PLUGIN_DIR,
        }
    }

    fn payload(
        &self,
        pod: &Pod,
        api: &ApiData,
        allocatable: &Allocatable,
    ) -> Result<atomic::Payload, String> {
        match self {
            Files::ConfigMap(src) => projection::config_map(src, api),
            Files::Secret(src) => projection::secret(src, api),
            Files::DownwardApi(src) => projection::downward_api(
                src.items.as_deref().unwrap_or_default(),
                src.default_mode.unwrap_or(projection::DEFAULT_MODE),
                pod,
                allocatable,
            ),
            Files::Projected(src) => projection::projected(src, pod, api, allocatable),
        }
    }
}

/// Whether `pod` has a volume whose files the agent writes (and so rewrites when they
/// change).
#[must_use]
pub fn has_written_files(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| matches!(source(v), Source::Files(_)))
}

/// The volume's source; none at all is an emptyDir, as the API server defaults it.
fn source(v: &Volume) -> Source<'_> {
    if let Some(e) = &v.empty_dir {
        return Source::EmptyDir {
            medium: e.medium.as_deref().unwrap_or_default(),
            size_limit: e.size_limit.as_ref().map(|q| q.0.as_str()),
        };
    }
    if let Some(h) = &v.host_path {
        return Source::HostPath(h);
    }
    if let Some(c) = &v.config_map {
        return Source::Files(Files::ConfigMap(c));
    }
    if let Some(s) = &v.secret {
        return Source::Files(Files::Secret(s));
    }
    if let Some(d) = &v.downward_api {
        return Source::Files(Files::DownwardApi(d));
    }
    if let Some(p) = &v.projected {
        return Source::Files(Files::Projected(p));
    }
    let others = [
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.ephemeral.is_some(), "ephemeral"),
        (v.csi.is_some(), "csi"),
        (v.image.is_some(), "image"),
        (v.nfs.is_some(), "nfs"),
        (v.iscsi.is_some(), "iscsi"),
        (v.git_repo.is_some(), "gitRepo"),
        (v.fc.is_some(), "fc"),
        (v.rbd.is_some(), "rbd"),
        (v.cephfs.is_some(), "cephfs"),
        (v.glusterfs.is_some(), "glusterfs"),
        (v.flex_volume.is_some(), "flexVolume"),
        (v.flocker.is_some(), "flocker"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.azure_disk.is_some(), "azureDisk"),
        (v.azure_file.is_some(), "azureFile"),
        (v.cinder.is_some(), "cinder"),
        (v.vsphere_volume.is_some(), "vsphereVolume"),
        (v.quobyte.is_some(), "quobyte"),
        (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
        (v.portworx_volume.is_some(), "portworxVolume"),
        (v.scale_io.is_some(), "scaleIO"),
        (v.storageos.is_some(), "storageos"),
    ];
    match others.into_iter().find(|(set, _)| *set) {
        Some((_, kind)) => Source::Unsupported(kind),
        None => Source::EmptyDir {
            medium: "",
            size_limit: None,
        },
    }
}

/// The tmpfs size: `sizeLimit` capped by the pod's memory limit, or either alone.
fn tmpfs_size(pod: &Pod, size_limit: Option<&str>) -> Result<Option<u64>, String> {
    let requested = size_limit
        .map(|s| parse_quantity(s).map_err(|e| format!("sizeLimit: {e}")))
        .transpose()?
        .map(QuantityValue::bytes)
        .filter(|&b| b > 0);
    let pod_limit = pod_limits(pod).1.filter(|&b| b > 0);
    Ok(match (requested, pod_limit) {
        (Some(r), Some(l)) => Some(r.min(l)),
        (r, l) => r.or(l),
    })
}

fn create_dir_all(path: &Path, mode: u32) -> Result<(), VolumeError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("create directory", path))
}

/// Creates `path` with exactly `mode` (not masked by the umask) unless it exists as a
/// directory; anything else there is an error. Returns whether it was created.
fn ensure_dir(path: &Path, mode: u32) -> Result<bool, VolumeError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(false),
        Ok(meta) => Err(io_err("use as a directory", path)(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is in the way", describe(meta.file_type())),
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(io_err("create directory", path))?;
            fs::set_permissions(path, Permissions::from_mode(mode))
                .map_err(io_err("set permissions of", path))?;
            Ok(true)
        }
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

fn setup_empty_dir(
    path: &Path,
    kind: VolumeKind,
    mounts: &mut Option<Vec<MountEntry>>,
) -> Result<(), VolumeError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent, POD_DIR_MODE)?;
    }
    ensure_dir(path, EMPTY_DIR_MODE)?;
    let Some(size_bytes) = kind.tmpfs() else {
        return Ok(());
    };
    let real = fs::canonicalize(path).map_err(io_err("resolve", path))?;
    if mounts.is_none() {
        *mounts = Some(read_mounts()?);
    }
    let existing = mounts.iter().flatten().rfind(|m| m.mount_point == real);
    if let Some(m) = existing {
        if m.fstype == "tmpfs" {
            return Ok(());
        }
        return Err(VolumeError::WrongMount {
            path: path.to_owned(),
            fstype: m.fstype.clone(),
        });
    }
    let mut options = format!("mode={EMPTY_DIR_MODE:o}");
    if let Some(size) = size_bytes {
        options.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        &real,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        path: path.to_owned(),
        options,
        source,
    })
}

fn describe(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "an unknown file type"
    }
}

/// Applies the hostPath `type` check; returns the path containers mount.
fn check_host_path(
    source: &HostPathVolumeSource,
    pod: &str,
    volume: &str,
) -> Result<PathBuf, VolumeError> {
    let path = PathBuf::from(&source.path);
    let invalid = |reason: String| VolumeError::Invalid {
        pod: pod.to_owned(),
        volume: volume.to_owned(),
        reason,
    };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "hostPath {:?} must be absolute and must not contain \"..\"",
            source.path
        )));
    }
    let kind = source.type_.as_deref().unwrap_or_default();
    let wrong_type = |expected: &'static str, found: &'static str| VolumeError::HostPathType {
        pod: pod.to_owned(),
        volume: volume.to_owned(),
        path: path.clone(),
        expected,
        found,
    };
    // Follows symbolic links, like the bind mount will.
    let found = match fs::metadata(&path) {
        Ok(meta) => Some(meta.file_type()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("inspect", &path)(e)),
    };
    let (expected, ok): (&'static str, fn(fs::FileType) -> bool) = match kind {
        "" => return Ok(path),
        "DirectoryOrCreate" => {
            if found.is_none() {
                create_dir_all(&path, HOST_DIR_MODE)?;
                return Ok(path);
            }
            ("a directory", |t| t.is_dir())
        }
        "FileOrCreate" => {
            if found.is_none() {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(HOST_FILE_MODE)
                    .open(&path)
                    .map_err(io_err("create file", &path))?;
                return Ok(path);
            }
            ("a regular file", |t| t.is_file())
        }
        "Directory" => ("a directory", |t| t.is_dir()),
        "File" => ("a regular file", |t| t.is_file()),
        "Socket" => ("a socket", |t| t.is_socket()),
        "CharDevice" => ("a character device", |t| t.is_char_device()),
        "BlockDevice" => ("a block device", |t| t.is_block_device()),
        other => {
            return Err(invalid(format!(
                "unknown hostPath type {other:?} (expected \"\", DirectoryOrCreate, Directory, \
                 FileOrCreate, File, Socket, CharDevice or BlockDevice)"
            )));
        }
    };
    match found {
        Some(t) if ok(t) => Ok(path),
        Some(t) => Err(wrong_type(expected, describe(t))),
        None => Err(wrong_type(expected, "nothing")),
    }
}

fn pod_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// Checks what can be checked before a container starts: every `subPath` is relative,
/// without `..`, and names a volume of the pod; `subPathExpr` is refused.
fn check_sub_paths(
    pod: &Pod,
    pod_name: &str,
    volumes: &BTreeMap<String, PreparedVolume>,
) -> Result<(), VolumeError> {
    for c in pod_containers(pod) {
        for m in c.volume_mounts.iter().flatten() {
            let err = |sub_path: &str, reason: String| VolumeError::SubPath {
                pod: pod_name.to_owned(),
                container: c.name.clone(),
                volume: m.name.clone(),
                sub_path: sub_path.to_owned(),
                reason,
            };
            if let Some(expr) = m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
                return Err(err(expr, "subPathExpr is not supported".to_owned()));
            }
            let Some(sub_path) = m.sub_path.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            if !volumes.contains_key(&m.name) {
                return Err(err(
                    sub_path,
                    "no volume of that name in the pod".to_owned(),
                ));
            }
            subpath::components(sub_path).map_err(|reason| err(sub_path, reason))?;
        }
    }
    Ok(())
}

fn read_mounts() -> Result<Vec<MountEntry>, VolumeError> {
    let path = Path::new(MOUNTINFO_PATH);
    let text = fs::read(path).map_err(io_err("read", path))?;
    Ok(crate::mountinfo::parse(&text))
}

/// Unmounts every mount stacked on `mount_point` (a canonical path), as mountinfo lists
/// them, without following a symbolic link.
pub(super) fn unmount_all_at(mount_point: &Path) -> Result<(), VolumeError> {
    let stacked = read_mounts()?
        .into_iter()
        .filter(|m| m.mount_point == mount_point)
        .count();
    for _ in 0..stacked {
        unmount(mount_point)?;
    }
    Ok(())
}

/// Unmounts without following a symbolic link; detaches lazily, with a warning, when busy.
fn unmount(path: &Path) -> Result<(), VolumeError> {
    match nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => {
            tracing::warn!(
                path = %path.display(),
                "mount is busy; detaching it lazily"
            );
            nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH).map_err(
                |source| VolumeError::Unmount {
                    path: path.to_owned(),
                    source,
                },
            )
        }
        Err(source) => Err(VolumeError::Unmount {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
