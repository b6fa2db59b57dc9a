//! The node's pressure conditions (`MemoryPressure`, `DiskPressure`, `PIDPressure`) and
//! their API form (`v1.NodeCondition`), with upstream's reasons and messages.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The node conditions the eviction manager raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PressureCondition {
    MemoryPressure,
    DiskPressure,
    PidPressure,
}

impl PressureCondition {
    pub const ALL: [Self; 3] = [Self::MemoryPressure, Self::DiskPressure, Self::PidPressure];

    /// The condition type, as the API spells it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MemoryPressure => "MemoryPressure",
            Self::DiskPressure => "DiskPressure",
            Self::PidPressure => "PIDPressure",
        }
    }

    /// Upstream's reason and message (node status setters) for the status.
    #[must_use]
    pub const fn reason_and_message(self, pressure: bool) -> (&'static str, &'static str) {
        match (self, pressure) {
            (Self::MemoryPressure, true) => (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (Self::MemoryPressure, false) => (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            (Self::DiskPressure, true) => ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            (Self::DiskPressure, false) => {
                ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            }
            (Self::PidPressure, true) => (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (Self::PidPressure, false) => (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        }
    }
}

/// One pressure condition of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    pub kind: PressureCondition,
    /// `True`: the node is under this pressure.
    pub status: bool,
    pub reason: &'static str,
    pub message: &'static str,
    /// When `status` last changed (the first evaluation counts as a change).
    pub last_transition_time: Timestamp,
}

impl NodeCondition {
    /// The condition as it is from `now` on.
    #[must_use]
    pub fn new(kind: PressureCondition, status: bool, now: Timestamp) -> Self {
        let (reason, message) = kind.reason_and_message(status);
        Self {
            kind,
            status,
            reason,
            message,
            last_transition_time: now,
        }
    }

    /// The API object, with `heartbeat` as `lastHeartbeatTime`.
    #[must_use]
    pub fn to_api(&self, heartbeat: Timestamp) -> k8s_openapi::api::core::v1::NodeCondition {
        k8s_openapi::api::core::v1::NodeCondition {
            type_: self.kind.as_str().to_owned(),
            status: if self.status { "True" } else { "False" }.to_owned(),
            reason: Some(self.reason.to_owned()),
            message: Some(self.message.to_owned()),
            last_heartbeat_time: Some(Time(heartbeat)),
            last_transition_time: Some(Time(self.last_transition_time)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_form_has_upstream_type_status_reason_and_times() {
        let at = |s| Timestamp::from_second(s).expect("valid");
        let c = NodeCondition::new(PressureCondition::PidPressure, true, at(10));
        let api = c.to_api(at(20));
        assert_eq!(api.type_, "PIDPressure");
        assert_eq!(api.status, "True");
        assert_eq!(api.reason.as_deref(), Some("KubeletHasInsufficientPID"));
        assert_eq!(
            api.message.as_deref(),
            Some("kubelet has insufficient PID available")
        );
        assert_eq!(api.last_transition_time, Some(Time(at(10))));
        assert_eq!(api.last_heartbeat_time, Some(Time(at(20))));
        let api =
            NodeCondition::new(PressureCondition::MemoryPressure, false, at(10)).to_api(at(20));
        assert_eq!(
            (
                api.type_.as_str(),
                api.status.as_str(),
                api.reason.as_deref()
            ),
            (
                "MemoryPressure",
                "False",
                Some("KubeletHasSufficientMemory")
            )
        );
    }
}
