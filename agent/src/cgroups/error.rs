use std::io;
use std::path::PathBuf;

/// Errors from reading cgroup hierarchies and process cgroup membership, and from creating,
/// configuring and removing cgroups.
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
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("removing cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes {pids:?}; not removing it")]
    Populated { path: PathBuf, pids: Vec<u32> },
    #[error("{path}: no valid {field}")]
    Malformed { path: PathBuf, field: &'static str },
    #[error("{path}: the {controller} controller is not available")]
    MissingController {
        path: PathBuf,
        controller: &'static str,
    },
    #[error("pod UID {uid:?} cannot name a cgroup: expected letters, digits, '-' or '_'")]
    InvalidPodUid { uid: String },
    #[error(
        "memory reservations of {reserved} bytes exceed the node's memory capacity of {capacity} bytes"
    )]
    ReservationExceedsCapacity { capacity: u64, reserved: u64 },
}

impl CgroupError {
    /// True when the file or directory does not exist (a process or cgroup that went away).
    pub fn is_not_found(&self) -> bool {
        match self {
            CgroupError::Read { source, .. }
            | CgroupError::Walk { source, .. }
            | CgroupError::Write { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}
