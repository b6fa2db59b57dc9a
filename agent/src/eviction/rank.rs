//! The order in which pods are evicted, per starved resource. Pure.
//!
//! Upstream (`pkg/kubelet/eviction/helpers.go`), first key first:
//! - memory: usage exceeds request, lower priority, larger usage above request;
//! - ephemeral-storage: usage exceeds request, lower priority, larger usage above request;
//! - inodes: the same with a request of zero;
//! - pids: lower priority, more processes.
//!
//! A pod without statistics for the resource goes first in every usage key, as upstream.
//! [`EvictionRanking::Qos`] (bpflet's default) puts the QoS class (BestEffort, Burstable,
//! Guaranteed) before the memory keys; disk and pid ranking are upstream's in both modes.
//! The sort is stable: pods equal in every key keep the order they were given in.

use std::cmp::Ordering;

use crate::config::EvictionRanking;
use crate::config::eviction::Signal;
use crate::model::qos::QosClass;

use super::pod::PodUsage;

/// The resource a signal measures, as upstream names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::EphemeralStorage => "ephemeral-storage",
            Self::Inodes => "inodes",
            Self::Pids => "pids",
        }
    }

    /// What an eviction for `signal` reclaims.
    #[must_use]
    pub const fn of(signal: Signal) -> Self {
        match signal {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Self::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => {
                Self::EphemeralStorage
            }
            Signal::NodeFsInodesFree
            | Signal::ImageFsInodesFree
            | Signal::ContainerFsInodesFree => Self::Inodes,
            Signal::PidAvailable => Self::Pids,
        }
    }

    /// Disk space or inodes: node-level reclaim (dead containers, images) can help.
    #[must_use]
    pub const fn is_disk(self) -> bool {
        matches!(self, Self::EphemeralStorage | Self::Inodes)
    }
}

/// `pods` in eviction order for `resource`.
#[must_use]
pub fn rank(pods: &[PodUsage], resource: Resource, mode: EvictionRanking) -> Vec<&PodUsage> {
    let mut ranked: Vec<&PodUsage> = pods.iter().collect();
    ranked.sort_by(|a, b| compare(a, b, resource, mode));
    ranked
}

/// `Less`: `a` is evicted before `b`.
fn compare(a: &PodUsage, b: &PodUsage, resource: Resource, mode: EvictionRanking) -> Ordering {
    match resource {
        Resource::Pids => priority(a, b).then_with(|| larger_usage(a, b, resource)),
        Resource::Memory if mode == EvictionRanking::Qos => qos(a.qos)
            .cmp(&qos(b.qos))
            .then_with(|| upstream(a, b, resource)),
        _ => upstream(a, b, resource),
    }
}

/// Usage exceeds request, then priority, then usage above request.
fn upstream(a: &PodUsage, b: &PodUsage, resource: Resource) -> Ordering {
    exceeds_request(a, b, resource)
        .then_with(|| priority(a, b))
        .then_with(|| above_request(a, b, resource))
}

/// BestEffort first, Guaranteed last.
const fn qos(class: QosClass) -> u8 {
    match class {
        QosClass::BestEffort => 0,
        QosClass::Burstable => 1,
        QosClass::Guaranteed => 2,
    }
}

fn usage(p: &PodUsage, resource: Resource) -> Option<u64> {
    match resource {
        Resource::Memory => p.memory_working_set,
        Resource::EphemeralStorage => p.disk_bytes,
        Resource::Inodes => p.inodes,
        Resource::Pids => p.processes,
    }
}

fn request(p: &PodUsage, resource: Resource) -> u64 {
    match resource {
        Resource::Memory => p.memory_request,
        Resource::EphemeralStorage => p.storage_request,
        Resource::Inodes | Resource::Pids => 0,
    }
}

/// `true` before `false`.
fn true_first(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// Both measured, or the ordering that puts the unmeasured one first.
fn measured(a: &PodUsage, b: &PodUsage, resource: Resource) -> Result<(u64, u64), Ordering> {
    match (usage(a, resource), usage(b, resource)) {
        (Some(x), Some(y)) => Ok((x, y)),
        (x, y) => Err(true_first(x.is_none(), y.is_none())),
    }
}

fn exceeds_request(a: &PodUsage, b: &PodUsage, resource: Resource) -> Ordering {
    match measured(a, b, resource) {
        Ok((x, y)) => true_first(x > request(a, resource), y > request(b, resource)),
        Err(order) => order,
    }
}

/// Lower priority first.
fn priority(a: &PodUsage, b: &PodUsage) -> Ordering {
    a.priority.cmp(&b.priority)
}

/// Larger usage above request first (below request counts as negative).
fn above_request(a: &PodUsage, b: &PodUsage, resource: Resource) -> Ordering {
    match measured(a, b, resource) {
        Ok((x, y)) => {
            let over =
                |usage: u64, p: &PodUsage| i128::from(usage) - i128::from(request(p, resource));
            over(y, b).cmp(&over(x, a))
        }
        Err(order) => order,
    }
}

/// Larger usage first.
fn larger_usage(a: &PodUsage, b: &PodUsage, resource: Resource) -> Ordering {
    match measured(a, b, resource) {
        Ok((x, y)) => y.cmp(&x),
        Err(order) => order,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MI: u64 = 1 << 20;

    /// `(name, qos, priority, request, usage)`; usage `None` = no statistics.
    type Row = (&'static str, QosClass, i32, u64, Option<u64>);

    fn pods(rows: &[Row], resource: Resource) -> Vec<PodUsage> {
        rows.iter()
            .map(|&(name, qos, priority, request, used)| {
                let mut p = PodUsage {
                    uid: name.into(),
                    name: name.into(),
                    qos,
                    priority,
                    critical: false,
                    grace_period: Duration::from_secs(30),
                    memory_request: 0,
                    memory_working_set: None,
                    storage_request: 0,
                    disk_bytes: None,
                    inodes: None,
                    processes: None,
                    containers: Vec::new(),
                };
                match resource {
                    Resource::Memory => {
                        (p.memory_request, p.memory_working_set) = (request, used);
                    }
                    Resource::EphemeralStorage => {
                        (p.storage_request, p.disk_bytes) = (request, used);
                    }
                    Resource::Inodes => p.inodes = used,
                    Resource::Pids => p.processes = used,
                }
                p
            })
            .collect()
    }

    fn order(rows: &[Row], resource: Resource, mode: EvictionRanking) -> Vec<&'static str> {
        let pods = pods(rows, resource);
        rank(&pods, resource, mode)
            .into_iter()
            .map(|p| rows.iter().find(|r| r.0 == p.uid).expect("row").0)
            .collect()
    }

    use QosClass::{BestEffort as BE, Burstable as BU, Guaranteed as GU};

    struct Case {
        name: &'static str,
        resource: Resource,
        pods: &'static [Row],
        qos: &'static [&'static str],
        upstream: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "the ramp: a Guaranteed pod over its request still goes after BestEffort in qos mode",
            resource: Resource::Memory,
            pods: &[
                ("guaranteed", GU, 0, 100 * MI, Some(101 * MI)),
                ("burstable", BU, 0, 100 * MI, Some(50 * MI)),
                ("besteffort", BE, 0, 0, Some(10 * MI)),
            ],
            qos: &["besteffort", "burstable", "guaranteed"],
            // Upstream: both over request; 10Mi above beats 1Mi above.
            upstream: &["besteffort", "guaranteed", "burstable"],
        },
        Case {
            name: "upstream puts a Guaranteed pod far over its request before a BestEffort pod",
            resource: Resource::Memory,
            pods: &[
                ("besteffort", BE, 0, 0, Some(MI)),
                ("guaranteed", GU, 0, 100 * MI, Some(300 * MI)),
            ],
            qos: &["besteffort", "guaranteed"],
            upstream: &["guaranteed", "besteffort"],
        },
        Case {
            name: "inside a class: exceeding the request beats priority",
            resource: Resource::Memory,
            pods: &[
                ("under-low-prio", BU, -10, 100 * MI, Some(90 * MI)),
                ("over-high-prio", BU, 1000, 100 * MI, Some(110 * MI)),
            ],
            qos: &["over-high-prio", "under-low-prio"],
            upstream: &["over-high-prio", "under-low-prio"],
        },
        Case {
            name: "inside a class: lower priority first among pods over their requests",
            resource: Resource::Memory,
            pods: &[
                ("p100", BU, 100, 10 * MI, Some(500 * MI)),
                ("p0", BU, 0, 10 * MI, Some(20 * MI)),
                ("p-5", BU, -5, 10 * MI, Some(11 * MI)),
            ],
            qos: &["p-5", "p0", "p100"],
            upstream: &["p-5", "p0", "p100"],
        },
        Case {
            name: "same priority: larger usage above request first, below-request counts negative",
            resource: Resource::Memory,
            pods: &[
                ("under-by-50", BU, 0, 100 * MI, Some(50 * MI)),
                ("under-by-10", BU, 0, 100 * MI, Some(90 * MI)),
                ("over-by-5", BU, 0, 100 * MI, Some(105 * MI)),
                ("over-by-40", BU, 0, 10 * MI, Some(50 * MI)),
            ],
            qos: &["over-by-40", "over-by-5", "under-by-10", "under-by-50"],
            upstream: &["over-by-40", "over-by-5", "under-by-10", "under-by-50"],
        },
        Case {
            name: "pods without statistics go first; the class still comes first in qos mode",
            resource: Resource::Memory,
            pods: &[
                ("be", BE, 0, 0, Some(500 * MI)),
                ("gu-unknown", GU, 0, 100 * MI, None),
                ("bu-unknown", BU, 0, 100 * MI, None),
            ],
            qos: &["be", "bu-unknown", "gu-unknown"],
            upstream: &["gu-unknown", "bu-unknown", "be"],
        },
        Case {
            name: "priority decides across classes in upstream mode only",
            resource: Resource::Memory,
            pods: &[
                ("be-critical-ish", BE, 1_000_000, 0, Some(MI)),
                ("bu-low", BU, 0, 0, Some(MI)),
            ],
            qos: &["be-critical-ish", "bu-low"],
            upstream: &["bu-low", "be-critical-ish"],
        },
        Case {
            name: "equal pods keep their order",
            resource: Resource::Memory,
            pods: &[
                ("first", BE, 0, 0, Some(MI)),
                ("second", BE, 0, 0, Some(MI)),
            ],
            qos: &["first", "second"],
            upstream: &["first", "second"],
        },
        Case {
            name: "disk: upstream keys in both modes, no QoS key",
            resource: Resource::EphemeralStorage,
            pods: &[
                ("gu-over", GU, 0, MI, Some(5 * MI)),
                ("be-small", BE, 0, 0, Some(MI)),
                ("bu-under", BU, 0, 10 * MI, Some(MI)),
            ],
            qos: &["gu-over", "be-small", "bu-under"],
            upstream: &["gu-over", "be-small", "bu-under"],
        },
        Case {
            name: "inodes: the request is zero, so any use exceeds it; more first",
            resource: Resource::Inodes,
            pods: &[
                ("none", BE, 0, 0, Some(0)),
                ("few", GU, 0, 0, Some(10)),
                ("many", GU, 0, 0, Some(1000)),
                ("many-high-prio", BE, 10, 0, Some(5000)),
            ],
            qos: &["many", "few", "many-high-prio", "none"],
            upstream: &["many", "few", "many-high-prio", "none"],
        },
        Case {
            name: "pids: priority first, then more processes, unknown first",
            resource: Resource::Pids,
            pods: &[
                ("prio1-many", BE, 1, 0, Some(900)),
                ("prio0-few", GU, 0, 0, Some(3)),
                ("prio0-many", GU, 0, 0, Some(300)),
                ("prio0-unknown", GU, 0, 0, None),
            ],
            qos: &["prio0-unknown", "prio0-many", "prio0-few", "prio1-many"],
            upstream: &["prio0-unknown", "prio0-many", "prio0-few", "prio1-many"],
        },
    ];

    #[test]
    fn ranking_in_both_modes() {
        for case in CASES {
            assert_eq!(
                order(case.pods, case.resource, EvictionRanking::Qos),
                case.qos,
                "qos mode: {}",
                case.name
            );
            assert_eq!(
                order(case.pods, case.resource, EvictionRanking::Upstream),
                case.upstream,
                "upstream mode: {}",
                case.name
            );
        }
    }

    #[test]
    fn signals_map_to_resources() {
        let cases = [
            (Signal::MemoryAvailable, Resource::Memory, "memory"),
            (
                Signal::AllocatableMemoryAvailable,
                Resource::Memory,
                "memory",
            ),
            (
                Signal::NodeFsAvailable,
                Resource::EphemeralStorage,
                "ephemeral-storage",
            ),
            (
                Signal::ImageFsAvailable,
                Resource::EphemeralStorage,
                "ephemeral-storage",
            ),
            (
                Signal::ContainerFsAvailable,
                Resource::EphemeralStorage,
                "ephemeral-storage",
            ),
            (Signal::NodeFsInodesFree, Resource::Inodes, "inodes"),
            (Signal::ImageFsInodesFree, Resource::Inodes, "inodes"),
            (Signal::ContainerFsInodesFree, Resource::Inodes, "inodes"),
            (Signal::PidAvailable, Resource::Pids, "pids"),
        ];
        for (signal, resource, name) in cases {
            assert_eq!(Resource::of(signal), resource, "{signal}");
            assert_eq!(resource.as_str(), name);
        }
        assert_eq!(cases.len(), Signal::ALL.len());
    }
}
