//! `subPath` volume mounts that a container of the pod cannot redirect.
//!
//! A container that can write to a volume can also swap a directory in it for a symbolic
//! link to any host path. Checking the subPath and handing its *path* to the runtime leaves a
//! window in which the runtime's bind mount follows such a link out of the volume. So the
//! agent never hands the runtime a path inside the volume:
//!
//! 1. [`open_beneath`] opens the subPath relative to the volume root with `openat2(2)` and
//!    `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, one component at a time, each resolved from
//!    the root. The kernel refuses any resolution that leaves the root: `..` above it,
//!    absolute symbolic links (even one naming a path inside the volume on the host), links
//!    through `/proc`. Relative links that stay inside the volume are followed, as upstream
//!    does. Missing directories are created with `mkdirat(2)` in the directory the previous
//!    component opened, with the volume root's mode.
//! 2. [`pin`] bind-mounts the opened object (through `/proc/self/fd/N`) onto a mount point
//!    the agent owns, `<pod_dir>/volume-subpaths/<volume>/<container>/<index>` (an empty
//!    directory or file, like the object; `index` is the mount's position in
//!    `volumeMounts`), after unmounting whatever an earlier start left there. Every path
//!    below the pod directory is created and opened without following symbolic links.
//!
//! The runtime mounts that mount point. The bind mount holds the inode that was checked, so
//! swapping the directory afterwards changes nothing. Each container start opens and pins
//! again; the pod's teardown unmounts the pins.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::VolumeError;

/// The per-pod directory of pinned subPaths, named like upstream's.
pub const SUBPATHS_DIR: &str = "volume-subpaths";

/// Mode of the directories and files below [`SUBPATHS_DIR`] (the pod directory's).
const PIN_DIR_MODE: u32 = 0o750;
const PIN_FILE_MODE: u32 = 0o640;
/// How often one component is opened again after creating it, or after the kernel asked
/// for a retry (`EAGAIN`: a rename elsewhere raced a `..` in a link), before giving up.
const OPEN_ATTEMPTS: usize = 4;

/// The components of a `subPath`: relative, not empty, without `..`; `.` is dropped.
///
/// # Errors
/// The reason, for a subPath that is absolute, empty or climbs out with `..`.
pub fn components(sub_path: &str) -> Result<Vec<&OsStr>, String> {
    let mut parts = Vec::new();
    for c in Path::new(sub_path).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part),
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err("must be a relative path inside the volume, without \"..\"".to_owned());
            }
        }
    }
    if parts.is_empty() {
        return Err("must name something inside the volume".to_owned());
    }
    Ok(parts)
}

fn resolve_how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `sub_path` beneath the volume root `root` (see the module docs) and returns an
/// `O_PATH` descriptor of what it names: a directory, or (last component only) anything else.
///
/// # Errors
/// `refuse(reason)` for a subPath that leads out of the volume, through something that is not
/// a directory, or that keeps changing while it is opened; [`VolumeError::Io`] when the root
/// cannot be opened or a directory cannot be created.
pub fn open_beneath(
    root: &Path,
    sub_path: &str,
    refuse: &dyn Fn(String) -> VolumeError,
) -> Result<OwnedFd, VolumeError> {
    let parts = components(sub_path).map_err(refuse)?;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR => refuse(format!(
            "the volume ({}) is not a directory",
            root.display()
        )),
        e => io_err("open", root, e),
    })?;
    let mode = fstat(&root_fd, root)?.st_mode & 0o7777;
    let last = parts.len() - 1;
    let mut prefix = PathBuf::new();
    let mut opened = root_fd.try_clone().map_err(|e| VolumeError::Io {
        op: "duplicate the descriptor of",
        path: root.to_owned(),
        source: e,
    })?;
    for (i, part) in parts.into_iter().enumerate() {
        prefix.push(part);
        let flags = if i == last {
            OFlag::empty()
        } else {
            OFlag::O_DIRECTORY
        };
        let mut attempt = 1;
        opened = loop {
            let err = match nix::fcntl::openat2(&root_fd, &prefix, resolve_how(flags)) {
                Ok(fd) => break fd,
                Err(e) => e,
            };
            let shown = prefix.display();
            match err {
                Errno::ENOENT if attempt < OPEN_ATTEMPTS => {
                    // `opened` is the directory the previous component resolved to.
                    create_dir(&opened, part, mode, &prefix)?;
                }
                Errno::EAGAIN if attempt < OPEN_ATTEMPTS => {}
                Errno::EXDEV => {
                    return Err(refuse(format!(
                        "{shown} leads out of the volume (a symbolic link that is absolute \
                         or climbs above the volume)"
                    )));
                }
                Errno::ELOOP => {
                    return Err(refuse(format!(
                        "{shown}: too many symbolic links, or a link through /proc"
                    )));
                }
                Errno::ENOTDIR => {
                    return Err(refuse(format!("{shown} is not a directory")));
                }
                Errno::ENOENT if is_symlink(&opened, part) => {
                    return Err(refuse(format!(
                        "{shown} is a symbolic link to nothing inside the volume"
                    )));
                }
                Errno::ENOENT | Errno::EAGAIN => {
                    return Err(refuse(format!("{shown} kept changing while it was opened")));
                }
                e => return Err(io_err("open", &root.join(&prefix), e)),
            }
            attempt += 1;
        };
    }
    Ok(opened)
}

/// `mkdirat(parent, name)` with exactly `mode`. Something already there (a directory
/// another start made, a link the container swapped in) is left to the next open to judge.
/// The mode is set on a descriptor opened without following links, so a swap after the
/// mkdir changes nothing but the swapped-in entry.
fn create_dir(parent: &OwnedFd, name: &OsStr, mode: u32, shown: &Path) -> Result<(), VolumeError> {
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) => {}
        // Also when the parent went away or is not searchable any more: the next open
        // says why.
        Err(Errno::EEXIST | Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err(io_err("create directory", shown, e)),
    }
    if let Ok(dir) = nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(mode))
            .map_err(|e| io_err("set permissions of", shown, e))?;
    }
    Ok(())
}

/// Whether `name` in `parent` is a symbolic link (not followed).
fn is_symlink(parent: &OwnedFd, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| file_type(&st) == SFlag::S_IFLNK)
}

/// Bind-mounts `opened` (from [`open_beneath`]) onto
/// `<pod_dir>/volume-subpaths/<volume>/<container>/<index>` and returns that mount point
/// (canonical, as mountinfo shows it). A mount an earlier start left there is unmounted
/// first; an empty directory or file of the other type is replaced.
///
/// # Errors
/// [`VolumeError`] naming the path that could not be created, unmounted or mounted.
pub fn pin(
    opened: &OwnedFd,
    pod_dir: &Path,
    volume: &str,
    container: &str,
    index: usize,
) -> Result<PathBuf, VolumeError> {
    for name in [volume, container] {
        let mut c = Path::new(name).components();
        if !matches!((c.next(), c.next()), (Some(Component::Normal(n)), None) if n.as_bytes() == name.as_bytes())
        {
            return Err(VolumeError::PinName {
                name: name.to_owned(),
            });
        }
    }
    let real_pod_dir = std::fs::canonicalize(pod_dir).map_err(|source| VolumeError::Io {
        op: "resolve",
        path: pod_dir.to_owned(),
        source,
    })?;
    let index = index.to_string();
    let mount_point: PathBuf = [
        real_pod_dir.as_path(),
        Path::new(SUBPATHS_DIR),
        Path::new(volume),
        Path::new(container),
        Path::new(&index),
    ]
    .iter()
    .collect();
    super::unmount_all_at(&mount_point)?;

    let mut dir = nix::fcntl::open(
        &real_pod_dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", &real_pod_dir, e))?;
    let mut path = real_pod_dir.clone();
    for name in [SUBPATHS_DIR, volume, container] {
        path.push(name);
        match nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(PIN_DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("create directory", &path, e)),
        }
        dir = nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &path, e))?;
    }

    let want_dir = file_type(&fstat(opened, &mount_point)?) == SFlag::S_IFDIR;
    let target = mount_point_of_type(&dir, &index, want_dir, &mount_point)?;
    let source = proc_fd(opened);
    nix::mount::mount(
        Some(source.as_path()),
        proc_fd(&target).as_path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| VolumeError::Pin {
        mount_point: mount_point.clone(),
        source,
    })?;
    Ok(mount_point)
}

/// Opens (`O_PATH`, not following links) `name` in `dir` as an empty directory when
/// `want_dir`, else as an empty regular file, creating it or replacing one of the other type.
fn mount_point_of_type(
    dir: &OwnedFd,
    name: &str,
    want_dir: bool,
    shown: &Path,
) -> Result<OwnedFd, VolumeError> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let is_dir = file_type(&st) == SFlag::S_IFDIR;
            if is_dir != want_dir {
                let flag = if is_dir {
                    UnlinkatFlags::RemoveDir
                } else {
                    UnlinkatFlags::NoRemoveDir
                };
                nix::unistd::unlinkat(dir, name, flag).map_err(|e| io_err("remove", shown, e))?;
            }
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(io_err("inspect", shown, e)),
    }
    if want_dir {
        match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(PIN_DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("create directory", shown, e)),
        }
    } else {
        match nix::fcntl::openat(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(PIN_FILE_MODE),
        ) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("create file", shown, e)),
        }
    }
    let mut flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if want_dir {
        flags |= OFlag::O_DIRECTORY;
    }
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty())
        .map_err(|e| io_err("open", shown, e))?;
    if !want_dir && file_type(&fstat(&fd, shown)?) != SFlag::S_IFREG {
        return Err(io_err("use as a file mount point", shown, Errno::EEXIST));
    }
    Ok(fd)
}

/// `/proc/self/fd/<fd>`: the path through which `mount(2)` reaches an open descriptor.
fn proc_fd(fd: &impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

fn fstat(fd: &impl AsFd, shown: &Path) -> Result<FileStat, VolumeError> {
    nix::sys::stat::fstat(fd).map_err(|e| io_err("inspect", shown, e))
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn io_err(op: &'static str, path: &Path, errno: Errno) -> VolumeError {
    VolumeError::Io {
        op,
        path: path.to_owned(),
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests;
