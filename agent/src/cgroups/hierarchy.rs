//! Which cgroup hierarchy accounts memory, and how to find cgroups and processes in it.
//!
//! On cgroup v1 (including hybrid hosts, where v2 is mounted too but without the memory
//! controller) memory events name the memory controller's cgroups by inode number; on v2 the
//! cgroup id is the inode number of the cgroup directory. Either way a cgroup is identified by
//! the inode of its directory under [`Hierarchy::mount`].

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::CgroupError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The hierarchy that holds memory accounting on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: CgroupVersion,
    /// v1: the memory controller's mount; v2: the cgroup2 mount.
    pub mount: PathBuf,
    /// v1: the memory controller's hierarchy id from `/proc/cgroups`; v2: 0.
    pub hierarchy_id: u32,
}

impl Hierarchy {
    pub fn v1(mount: impl Into<PathBuf>, hierarchy_id: u32) -> Self {
        Hierarchy {
            version: CgroupVersion::V1,
            mount: mount.into(),
            hierarchy_id,
        }
    }

    pub fn v2(mount: impl Into<PathBuf>) -> Self {
        Hierarchy {
            version: CgroupVersion::V2,
            mount: mount.into(),
            hierarchy_id: 0,
        }
    }

    /// Finds the memory hierarchy from `<proc_root>/self/mountinfo`: a cgroup v1 mount carrying
    /// the `memory` controller wins (hybrid hosts), otherwise the cgroup2 mount.
    ///
    /// The mount is assumed to show the hierarchy from its root (no cgroup namespace or bind
    /// mount of a subtree), which holds for a node agent running in the host namespaces.
    pub fn detect(proc_root: &Path) -> Result<Self, CgroupError> {
        let mountinfo = proc_root.join("self/mountinfo");
        let text = read(&mountinfo)?;
        let mounts = crate::mountinfo::parse(text.as_bytes());

        if let Some(m) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
        {
            let cgroups = proc_root.join("cgroups");
            let id = memory_hierarchy_id(&read(&cgroups)?)
                .ok_or(CgroupError::NoMemoryController { path: cgroups })?;
            return Ok(Hierarchy::v1(&m.mount_point, id));
        }
        if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
            return Ok(Hierarchy::v2(&m.mount_point));
        }
        Err(CgroupError::NoHierarchy { path: mountinfo })
    }

    /// The directory of the cgroup `rel` (`"/kubepods/pod1"`; `"/"` is the mount itself).
    pub fn path_of(&self, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rel)
        }
    }

    /// The cgroup's id as memory events report it: the inode number of its directory.
    pub fn id_of(&self, rel: &str) -> Result<u64, CgroupError> {
        let path = self.path_of(rel);
        fs::metadata(&path)
            .map(|m| m.ino())
            .map_err(|source| CgroupError::Read { path, source })
    }

    /// Depth of a cgroup path: `"/"` is 0, `"/kubepods"` 1.
    pub fn level_of(rel: &str) -> u32 {
        let n = rel.split('/').filter(|c| !c.is_empty()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The memory cgroup of `pid` from `<proc_root>/<pid>/cgroup`: the line whose controller
    /// list has `memory` on v1, the `0::` line on v2.
    pub fn cgroup_of_pid(&self, proc_root: &Path, pid: u32) -> Result<String, CgroupError> {
        let path = proc_root.join(pid.to_string()).join("cgroup");
        let text = read(&path)?;
        let found = text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let controllers = parts.next()?;
            let cgroup = parts.next()?;
            let wanted = match self.version {
                CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
                CgroupVersion::V2 => id == "0" && controllers.is_empty(),
            };
            // v2 marks a removed cgroup that still holds a zombie.
            wanted.then(|| cgroup.strip_suffix(" (deleted)").unwrap_or(cgroup))
        });
        match found {
            Some(cgroup) => Ok(cgroup.to_owned()),
            None => Err(CgroupError::NoCgroupEntry { pid, path }),
        }
    }

    /// Every cgroup at or below `rel`, parents before children, with its id.
    ///
    /// Directories that vanish during the walk are skipped; `rel` itself must exist.
    pub fn walk(&self, rel: &str) -> Result<Vec<(String, u64)>, CgroupError> {
        let rel = normalize(rel);
        let id = self.id_of(&rel)?;
        let mut out = vec![(rel, id)];
        let mut next = 0;
        while next < out.len() {
            let parent = out[next].0.clone();
            next += 1;
            let dir = self.path_of(&parent);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Walk { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| CgroupError::Walk {
                    path: dir.clone(),
                    source,
                })?;
                // DirEntry::metadata does not follow symlinks; cgroupfs has none anyway.
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(CgroupError::Walk {
                            path: entry.path(),
                            source,
                        });
                    }
                };
                if !meta.is_dir() {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    tracing::debug!(path = %entry.path().display(), "skipping cgroup with a non-UTF-8 name");
                    continue;
                };
                out.push((join(&parent, &name), meta.ino()));
            }
        }
        Ok(out)
    }
}

/// `"/a/b/"` -> `"/a/b"`, `"a"` -> `"/a"`, `""` -> `"/"`.
pub(crate) fn normalize(rel: &str) -> String {
    let trimmed = rel.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// The child `name` of cgroup `parent`.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent of a normalized cgroup path; `None` for `"/"`.
pub(crate) fn parent_of(rel: &str) -> Option<&str> {
    if rel == "/" {
        return None;
    }
    match rel.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&rel[..i]),
        None => Some("/"),
    }
}

/// Whether cgroup `path` is `root` or below it.
pub(crate) fn is_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return path.starts_with('/');
    }
    match path.strip_prefix(root) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The memory controller's hierarchy id from `/proc/cgroups` (`memory 4 44 1`); `None` when it
/// is absent, bound to no v1 hierarchy (0) or disabled.
fn memory_hierarchy_id(text: &str) -> Option<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut f = line.split_whitespace();
            if f.next()? != "memory" {
                return None;
            }
            let id: u32 = f.next()?.parse().ok()?;
            let _num_cgroups = f.next()?;
            let enabled = f.next()?;
            (id != 0 && enabled == "1").then_some(id)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2_MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
28 22 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
memory\t4\t44\t1
pids\t8\t1\t1
";

    fn fake_proc(mountinfo: &str, cgroups: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("self")).expect("mkdir self");
        fs::write(dir.path().join("self/mountinfo"), mountinfo).expect("write mountinfo");
        fs::write(dir.path().join("cgroups"), cgroups).expect("write cgroups");
        dir
    }

    #[test]
    fn detect_prefers_v1_memory_on_hybrid_hosts() {
        let proc = fake_proc(HYBRID_MOUNTINFO, PROC_CGROUPS);
        let h = Hierarchy::detect(proc.path()).expect("detect");
        assert_eq!(h, Hierarchy::v1("/sys/fs/cgroup/memory", 4));
    }

    #[test]
    fn detect_finds_cgroup2() {
        let proc = fake_proc(
            V2_MOUNTINFO,
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t80\t1\n",
        );
        let h = Hierarchy::detect(proc.path()).expect("detect");
        assert_eq!(h, Hierarchy::v2("/sys/fs/cgroup"));
    }

    #[test]
    fn detect_without_cgroups_fails() {
        let proc = fake_proc(
            "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n",
            PROC_CGROUPS,
        );
        let err = Hierarchy::detect(proc.path()).expect_err("no cgroup mount");
        assert!(matches!(err, CgroupError::NoHierarchy { .. }), "{err:?}");
    }

    #[test]
    fn detect_v1_memory_without_hierarchy_id_fails() {
        let proc = fake_proc(HYBRID_MOUNTINFO, "memory\t0\t1\t1\n");
        let err = Hierarchy::detect(proc.path()).expect_err("no id");
        assert!(
            matches!(err, CgroupError::NoMemoryController { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn detect_reports_missing_mountinfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Hierarchy::detect(dir.path()).expect_err("no mountinfo");
        assert!(err.is_not_found(), "{err:?}");
    }

    #[test]
    fn path_and_level() {
        let h = Hierarchy::v1("/sys/fs/cgroup/memory", 4);
        assert_eq!(h.path_of("/"), PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            h.path_of("/kubepods/pod1"),
            PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1")
        );
        for (rel, level) in [
            ("/", 0),
            ("", 0),
            ("/kubepods", 1),
            ("/kubepods/burstable/pod1/", 3),
        ] {
            assert_eq!(Hierarchy::level_of(rel), level, "{rel}");
        }
    }

    #[test]
    fn path_helpers() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("a/b/"), "/a/b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(parent_of("/a/b"), Some("/a"));
        assert_eq!(parent_of("/a"), Some("/"));
        assert_eq!(parent_of("/"), None);
        assert!(is_under("/kubepods/pod1", "/kubepods"));
        assert!(is_under("/kubepods", "/kubepods"));
        assert!(!is_under("/kubepods2", "/kubepods"));
        assert!(is_under("/anything", "/"));
    }

    #[test]
    fn id_and_walk_match_inodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("kubepods/burstable/podx/ctr")).expect("mkdir");
        fs::write(root.join("kubepods/cgroup.procs"), "").expect("write");
        let h = Hierarchy::v2(root);
        let ino = fs::metadata(root.join("kubepods/burstable"))
            .expect("stat")
            .ino();
        assert_eq!(h.id_of("/kubepods/burstable").expect("id"), ino);
        assert!(h.id_of("/nope").expect_err("missing").is_not_found());

        let walked = h.walk("/kubepods").expect("walk");
        let paths: Vec<&str> = walked.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/kubepods",
                "/kubepods/burstable",
                "/kubepods/burstable/podx",
                "/kubepods/burstable/podx/ctr"
            ]
        );
        for (rel, id) in &walked {
            assert_eq!(*id, h.id_of(rel).expect("id"), "{rel}");
        }
        assert_eq!(h.walk("/").expect("walk /")[0].0, "/");
        assert!(h.walk("/missing").expect_err("missing root").is_not_found());
    }

    #[test]
    fn cgroup_of_pid_v1_and_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("42")).expect("mkdir");
        fs::write(
            dir.path().join("42/cgroup"),
            "9:name=systemd:/\n4:memory:/kubepods/pod1/ctr:with:colons\n1:cpu,cpuacct:/x\n0::/v2/path (deleted)\n",
        )
        .expect("write");
        let v1 = Hierarchy::v1("/sys/fs/cgroup/memory", 4);
        assert_eq!(
            v1.cgroup_of_pid(dir.path(), 42).expect("v1"),
            "/kubepods/pod1/ctr:with:colons"
        );
        let v2 = Hierarchy::v2("/sys/fs/cgroup");
        assert_eq!(v2.cgroup_of_pid(dir.path(), 42).expect("v2"), "/v2/path");

        fs::create_dir_all(dir.path().join("43")).expect("mkdir");
        fs::write(dir.path().join("43/cgroup"), "1:cpu:/\n").expect("write");
        assert!(matches!(
            v1.cgroup_of_pid(dir.path(), 43),
            Err(CgroupError::NoCgroupEntry { pid: 43, .. })
        ));
        assert!(
            v1.cgroup_of_pid(dir.path(), 44)
                .expect_err("gone")
                .is_not_found()
        );
    }

    #[test]
    fn detect_on_this_host() {
        // Every Linux host that runs the agent has a memory hierarchy.
        let h = Hierarchy::detect(Path::new("/proc")).expect("detect on the real /proc");
        assert!(h.mount.is_dir(), "{h:?}");
        let me = h
            .cgroup_of_pid(Path::new("/proc"), std::process::id())
            .expect("own cgroup");
        assert!(h.path_of(&me).is_dir(), "{me}");
    }
}
