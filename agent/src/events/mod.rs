//! The typed kernel-event model every source produces and every consumer reads.
//!
//! Sources ([`crate::bpf`] and the polling fallback in [`poll`]) emit [`Event`]s that name
//! their cgroup by id, by path or both; [`crate::cgroups::Attributor`] fills in the path
//! and the pod/container before consumers (the tracer, the PLEG, eviction) see them.

pub mod poll;
pub mod source;

use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The BPF programs: exact, immediate.
    Bpf,
    /// The polling fallback: degraded (late, and some fields unknown).
    Poll,
}

/// Event kinds, named as `bpflet trace --kind` and `--json` spell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Exit,
    OomKill,
    MemoryPressure,
    CgroupCreated,
    CgroupRemoved,
    EventsLost,
}

/// The kind as `bpflet.v1.EventKind` (the stream's and `trace --remote`'s wire form).
impl From<Kind> for bpflet_proto::v1::EventKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Exit => Self::Exit,
            Kind::OomKill => Self::OomKill,
            Kind::MemoryPressure => Self::MemoryPressure,
            Kind::CgroupCreated => Self::CgroupCreated,
            Kind::CgroupRemoved => Self::CgroupRemoved,
            Kind::EventsLost => Self::EventsLost,
        }
    }
}

impl Kind {
    /// The kind a `bpflet.v1.EventKind` names; `None` for `UNSPECIFIED`.
    #[must_use]
    pub fn from_proto(k: bpflet_proto::v1::EventKind) -> Option<Self> {
        use bpflet_proto::v1::EventKind as Pb;
        Some(match k {
            Pb::Unspecified => return None,
            Pb::Exit => Kind::Exit,
            Pb::OomKill => Kind::OomKill,
            Pb::MemoryPressure => Kind::MemoryPressure,
            Pb::CgroupCreated => Kind::CgroupCreated,
            Pb::CgroupRemoved => Kind::CgroupRemoved,
            Pb::EventsLost => Kind::EventsLost,
        })
    }

    pub const ALL: [Kind; 6] = [
        Kind::Exit,
        Kind::OomKill,
        Kind::MemoryPressure,
        Kind::CgroupCreated,
        Kind::CgroupRemoved,
        Kind::EventsLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exit => "exit",
            Kind::OomKill => "oom_kill",
            Kind::MemoryPressure => "memory_pressure",
            Kind::CgroupCreated => "cgroup_created",
            Kind::CgroupRemoved => "cgroup_removed",
            Kind::EventsLost => "events_lost",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind string is not one of [`Kind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown event kind {0:?} (expected one of: exit, oom_kill, memory_pressure, cgroup_created, cgroup_removed, events_lost)"
)]
pub struct UnknownKind(pub String);

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// Which limit an OOM kill answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScope {
    /// The container's own memory limit.
    Container,
    /// The pod cgroup's limit.
    Pod,
    /// No cgroup limit: the node ran out of memory.
    Node,
    /// Another cgroup's limit (the kubepods root, a QoS cgroup, or a non-Kubernetes cgroup).
    Cgroup,
}

/// How a process ended, decoded from the kernel's wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal {
        signal: i32,
        core_dumped: bool,
    },
    /// The source could not tell (polling fallback, or no `exit_code` in BTF).
    Unknown,
}

impl ExitStatus {
    /// Decodes a wait(2) status as stored in `task_struct::exit_code`.
    pub fn from_wait_status(status: u32) -> Self {
        let signal = status & 0x7f;
        if signal == 0 {
            ExitStatus::Code(i32::from((status >> 8) as u8))
        } else {
            ExitStatus::Signal {
                signal: i32::from(signal as u8),
                core_dumped: status & 0x80 != 0,
            }
        }
    }

    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            _ => None,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signal { signal, .. } => Some(signal),
            _ => None,
        }
    }
}

/// An OOM kill, with the limit that was hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKill {
    pub scope: OomScope,
    /// Id of the cgroup whose limit was hit, when the source knows it (BPF does).
    pub limit_cgroup_id: Option<u64>,
    /// Path of the cgroup whose limit was hit; `None` for [`OomScope::Node`] or when unknown.
    pub limit_cgroup: Option<String>,
    /// The limit and the usage at kill time, bytes; `None` when the source cannot tell.
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub shmem_rss_bytes: Option<u64>,
    pub total_vm_bytes: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// The process whose allocation failed (0 when unknown).
    pub invoker_pid: u32,
}

/// Reclaim activity in one cgroup over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPressure {
    pub window_ms: u64,
    pub pages_scanned: u64,
    pub pages_reclaimed: u64,
    pub memcg_reclaims: u64,
    pub direct_reclaims: u64,
    pub throttled: u64,
    /// PSI `some avg10` when the polling source measured it.
    pub psi_some_avg10: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// A process (thread group) ended. `pidns_init`: it was pid 1 of a pid namespace below
    /// the host's, so its exit ends a container that has its own pid namespace.
    Exit {
        status: ExitStatus,
        pidns_init: bool,
    },
    OomKill(OomKill),
    MemoryPressure(MemoryPressure),
    CgroupCreated {
        level: u32,
    },
    CgroupRemoved {
        level: u32,
    },
    /// Events that never reached consumers: `kernel` ring-buffer reservations that failed,
    /// `userspace` decoded events dropped because a consumer was too slow.
    EventsLost {
        kernel: u64,
        userspace: u64,
    },
}

impl Detail {
    pub fn kind(&self) -> Kind {
        match self {
            Detail::Exit { .. } => Kind::Exit,
            Detail::OomKill(_) => Kind::OomKill,
            Detail::MemoryPressure(_) => Kind::MemoryPressure,
            Detail::CgroupCreated { .. } => Kind::CgroupCreated,
            Detail::CgroupRemoved { .. } => Kind::CgroupRemoved,
            Detail::EventsLost { .. } => Kind::EventsLost,
        }
    }
}

/// Pod and container a cgroup belongs to, from kubelet and runtime naming conventions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    pub pod_uid: String,
    /// Set when the cgroup is a container's (or below one).
    pub container_id: Option<String>,
}

/// One kernel event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Wall-clock time the kernel saw it (the source's best estimate when polling).
    pub time: SystemTime,
    /// CLOCK_MONOTONIC nanoseconds of the kernel record, when it came from BPF.
    pub kernel_ns: Option<u64>,
    pub source: Source,
    /// Process id (thread-group id); 0 when the event is about no process.
    pub pid: u32,
    pub comm: String,
    /// Memory cgroup inode (v1) or cgroup id (v2), when the source knows it.
    pub cgroup_id: Option<u64>,
    /// Path under the hierarchy's mount, e.g. `/kubepods/burstable/pod<uid>/<id>`; empty until
    /// attributed when only the id is known.
    pub cgroup: String,
    pub pod: Option<PodRef>,
    pub detail: Detail,
}

impl Event {
    pub fn kind(&self) -> Kind {
        self.detail.kind()
    }
}

/// Which source to use: `bpflet trace --source` and the agent's `eventSource` setting.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceChoice {
    /// BPF, falling back to polling (with a warning) when BPF cannot load.
    #[default]
    Auto,
    /// BPF only: fail when it cannot load.
    Bpf,
    /// Polling only (degraded: late, exit codes unknown).
    Poll,
}

impl SourceChoice {
    /// As the setting and the flag spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SourceChoice::Auto => "auto",
            SourceChoice::Bpf => "bpf",
            SourceChoice::Poll => "poll",
        }
    }
}
