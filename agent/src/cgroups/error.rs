use std::io;
use std::path::PathBuf;

/// Errors from reading cgroup hierarchies and process cgroup membership.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listing cgroup directory {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no cgroup v1 mount with the memory controller and no cgroup2 mount")]
    NoHierarchy { path: PathBuf },
    #[error("{path}: the memory controller is mounted but not listed with a hierarchy id")]
    NoMemoryController { path: PathBuf },
    #[error("{path}: no memory cgroup entry for pid {pid}")]
    NoCgroupEntry { pid: u32, path: PathBuf },
}

impl CgroupError {
    /// True when the file or directory does not exist (a process or cgroup that went away).
    pub fn is_not_found(&self) -> bool {
        match self {
            CgroupError::Read { source, .. } | CgroupError::Walk { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            _ => false,
        }
    }
}
