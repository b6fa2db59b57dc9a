//! Writes the files of a `configMap`, `secret`, `downwardAPI` or `projected` volume so that a
//! reader never sees a half-written set, with upstream's `AtomicWriter` layout
//! (pkg/volume/util/atomic_writer.go):
//!
//! ```text
//! <volume>/..2026_12_07_18_00_00.123456789   the payload, files and directories
//! <volume>/..data -> ..2026_12_07_18_00_00.123456789
//! <volume>/<key>  -> ..data/<key>            one link per top-level name of the payload
//! ```
//!
//! A write (see [`write`]) puts the whole payload into a fresh timestamped directory, points
//! a `..data_tmp` link at it and renames that link over `..data` (`rename(2)` is atomic), then
//! adds the user-visible links for new top-level names, removes those of names gone, and
//! removes the previous directory. A reader that resolves `..data` once (or opens one file)
//! sees either the old set or the new one. Nothing is written when the payload equals what
//! `..data` holds (contents and modes).
//!
//! Paths come from the pod (`items[].path`): each must be relative, without `..` components,
//! must not start with `..` (the writer's own names), at most 4096 bytes, each component at
//! most 255 (see [`validate_path`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};

use super::subpath;

/// The link to the current payload directory.
pub const DATA_DIR: &str = "..data";
/// The link renamed over [`DATA_DIR`].
const DATA_TMP: &str = "..data_tmp";
/// Mode of the payload directories (upstream's).
const PAYLOAD_DIR_MODE: u32 = 0o755;
/// Upstream's limits on a payload path and each of its components.
const MAX_PATH_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 255;

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (at most `0o777`).
    pub mode: u32,
}

/// The files of a volume, by path relative to the volume.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("path {path:?}: mode {mode:#o} is not a file mode (0 to 0777)")]
    InvalidMode { path: String, mode: u32 },
    #[error("path {path:?} is both a file and a directory of the payload")]
    Conflict { path: String },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicError {
    let path = path.to_owned();
    move |source| AtomicError::Io { op, path, source }
}

/// Checks a payload path and returns its components: relative, no `..`, not starting with
/// `..`, at most 4096 bytes with components of at most 255.
///
/// # Errors
/// [`AtomicError::InvalidPath`] naming the path and the rule it breaks.
pub fn validate_path(path: &str) -> Result<Vec<String>, AtomicError> {
    let invalid = |reason: &str| AtomicError::InvalidPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.len() > MAX_PATH_LEN {
        return Err(invalid("longer than 4096 bytes"));
    }
    if path.starts_with("..") {
        return Err(invalid("must not start with \"..\""));
    }
    let parts = subpath::components(path).map_err(|r| invalid(&r))?;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let part = part.to_str().ok_or_else(|| invalid("is not valid UTF-8"))?;
        if part.len() > MAX_NAME_LEN {
            return Err(invalid("has a component longer than 255 bytes"));
        }
        out.push(part.to_owned());
    }
    Ok(out)
}

/// Checks every path and mode of `payload` and returns it keyed by normalized path.
fn clean(payload: &Payload) -> Result<Payload, AtomicError> {
    let mut out = Payload::new();
    for (path, file) in payload {
        if file.mode > 0o777 {
            return Err(AtomicError::InvalidMode {
                path: path.clone(),
                mode: file.mode,
            });
        }
        let parts = validate_path(path)?;
        out.insert(parts.join("/"), file.clone());
    }
    // A file may not also be a directory of another path.
    for path in out.keys() {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() && out.contains_key(&prefix) {
                return Err(AtomicError::Conflict { path: prefix });
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
    }
    Ok(out)
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` into `target` (an existing directory) as the module docs say. Returns
/// whether anything was written (`false`: `..data` already held exactly this payload).
///
/// # Errors
/// [`AtomicError`] for a path or mode the payload may not hold, or the file-system step
/// that failed; the previous payload then stays in place.
pub fn write(target: &Path, payload: &Payload) -> Result<bool, AtomicError> {
    let payload = clean(payload)?;
    let data_link = target.join(DATA_DIR);
    let old_dir = match fs::read_link(&data_link) {
        Ok(dest) => {
            let name = dest.to_str().unwrap_or_default();
            // Only a directory of the writer's own, beside the link.
            if name.starts_with("..") && !name.contains('/') && name != DATA_DIR {
                Some(name.to_owned())
            } else {
                return Err(io_err("use", &data_link)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("it points at {}, not a payload directory", dest.display()),
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read the link", &data_link)(e)),
    };
    let new_tops: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    let mut gone_tops = BTreeSet::new();
    if let Some(old) = &old_dir {
        let old_path = target.join(old);
        // A link to nothing (the directory removed by hand) is written over.
        let old_files = match fs::symlink_metadata(&old_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            _ => list_files(&old_path)?,
        };
        for path in &old_files {
            let top = top_level(path);
            if !new_tops.contains(top) {
                gone_tops.insert(top.to_owned());
            }
        }
        if gone_tops.is_empty() && !differs(&old_path, &old_files, &payload)? {
            // Same payload: only make sure every user-visible link is there (a crash
            // between the swap and the links leaves them missing).
            link_visible(target, &new_tops)?;
            return Ok(false);
        }
    }

    let ts_name = timestamp_dir_name();
    let ts_dir = target.join(&ts_name);
    make_dir(&ts_dir)?;
    if let Err(e) = write_payload(&ts_dir, &payload) {
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(e);
    }
    let tmp_link = target.join(DATA_TMP);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp_link)(e)),
    }
    symlink(&ts_name, &tmp_link).map_err(io_err("create the link", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(io_err("rename over", &data_link))?;

    link_visible(target, &new_tops)?;
    for top in &gone_tops {
        let link = target.join(top);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::remove_file(&link).map_err(io_err("remove", &link))?;
            }
            _ => {}
        }
    }
    // The previous payload, and any a crash left behind.
    for entry in fs::read_dir(target).map_err(io_err("list", target))? {
        let entry = entry.map_err(io_err("list", target))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..")
            && name != DATA_DIR
            && name != ts_name
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            let path = entry.path();
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old payload directory");
            }
        }
    }
    Ok(true)
}

/// `..<UTC time>.<nanoseconds>`: a fresh name beside `..data`.
fn timestamp_dir_name() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "..{}.{:09}{:04}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        fastrand::u16(..10_000)
    )
}

/// Creates `path` with exactly [`PAYLOAD_DIR_MODE`] (not masked by the umask).
fn make_dir(path: &Path) -> Result<(), AtomicError> {
    DirBuilder::new()
        .mode(PAYLOAD_DIR_MODE)
        .create(path)
        .map_err(io_err("create directory", path))?;
    fs::set_permissions(path, Permissions::from_mode(PAYLOAD_DIR_MODE))
        .map_err(io_err("set permissions of", path))
}

fn write_payload(dir: &Path, payload: &Payload) -> Result<(), AtomicError> {
    for (path, file) in payload {
        let full = dir.join(path);
        let mut parent = dir.to_owned();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push(part);
            match fs::symlink_metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(AtomicError::Conflict { path: path.clone() });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&parent)?,
                Err(e) => return Err(io_err("inspect", &parent)(e)),
            }
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(io_err("create file", &full))?;
        f.write_all(&file.data).map_err(io_err("write", &full))?;
        f.set_permissions(Permissions::from_mode(file.mode))
            .map_err(io_err("set permissions of", &full))?;
    }
    Ok(())
}

/// The regular files below `dir`, as paths relative to it (links are not followed).
fn list_files(dir: &Path) -> Result<Vec<String>, AtomicError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in fs::read_dir(&path).map_err(io_err("list", &path))? {
            let entry = entry.map_err(io_err("list", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(io_err("inspect", &entry.path()))?;
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `payload` differs from the files `old_files` in `old_dir` (paths, contents, modes).
fn differs(old_dir: &Path, old_files: &[String], payload: &Payload) -> Result<bool, AtomicError> {
    if old_files.len() != payload.len() || old_files.iter().any(|p| !payload.contains_key(p)) {
        return Ok(true);
    }
    for (path, file) in payload {
        let full = old_dir.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_err("inspect", &full)(e)),
        };
        if !meta.is_file()
            || meta.permissions().mode() & 0o7777 != file.mode
            || meta.len() != file.data.len() as u64
        {
            return Ok(true);
        }
        let data = fs::read(&full).map_err(io_err("read", &full))?;
        if data != file.data {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Creates `<target>/<top> -> ..data/<top>` for every top-level name that has no entry yet.
fn link_visible(target: &Path, tops: &BTreeSet<&str>) -> Result<(), AtomicError> {
    for top in tops {
        let link = target.join(top);
        match fs::symlink_metadata(&link) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                symlink(Path::new(DATA_DIR).join(top), &link)
                    .map_err(io_err("create the link", &link))?;
            }
            Err(e) => return Err(io_err("inspect", &link)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
