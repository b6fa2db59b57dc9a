//! Pod admission, as upstream's kubelet admits a pod before its first sync: each check
//! either lets the pod in or rejects it with upstream's reason and message. A rejected pod
//! is never started; it shows phase `Failed` with that reason until its source drops it.
//!
//! Checks, in order: sysctls ([`super::sysctls`], `SysctlForbidden`) and the node's pod
//! capacity (`maxPods`, `OutOfpods`). Resource fit (`OutOfcpu`, `OutOfmemory`), node
//! affinity and taints come with cluster mode.

use k8s_openapi::api::core::v1::Pod;

use super::sysctls::{REASON_FORBIDDEN, SysctlPolicy};

/// Upstream's reason for a pod over `maxPods`.
pub const REASON_OUT_OF_PODS: &str = "OutOfpods";

/// Why a pod was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status reason and the event reason (`SysctlForbidden`, `OutOfpods`).
    pub reason: &'static str,
    /// What the event says; the status message is `Pod was rejected: <message>`.
    pub message: String,
}

/// What admission needs to know about the node.
#[derive(Debug, Clone, Copy)]
pub struct NodeState<'a> {
    pub sysctls: &'a SysctlPolicy,
    /// `maxPods`.
    pub max_pods: u32,
    /// Pods admitted before this one that have not been removed.
    pub admitted: usize,
}

/// Admits `pod` onto a node in `node`'s state.
///
/// # Errors
/// The first check that refuses it.
pub fn admit(pod: &Pod, node: &NodeState<'_>) -> Result<(), Rejection> {
    node.sysctls.admit(pod).map_err(|message| Rejection {
        reason: REASON_FORBIDDEN,
        message,
    })?;
    let capacity = usize::try_from(node.max_pods).unwrap_or(usize::MAX);
    if node.admitted >= capacity {
        return Err(Rejection {
            reason: REASON_OUT_OF_PODS,
            message: format!(
                "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                node.admitted, node.max_pods
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sysctl: Option<&str>) -> Pod {
        let sysctls = sysctl.map_or(String::new(), |s| {
            format!("  securityContext:\n    sysctls: [{{name: {s}, value: '1'}}]\n")
        });
        let yaml = format!(
            "metadata: {{name: p, uid: u}}\nspec:\n{sysctls}  containers: [{{name: c, image: i}}]\n"
        );
        yaml_serde::from_str(&yaml).expect("pod")
    }

    #[test]
    fn pods_past_max_pods_are_out_of_pods() {
        let policy = SysctlPolicy::default();
        let node = |admitted| NodeState {
            sysctls: &policy,
            max_pods: 2,
            admitted,
        };
        assert_eq!(admit(&pod(None), &node(0)), Ok(()));
        assert_eq!(admit(&pod(None), &node(1)), Ok(()));
        assert_eq!(
            admit(&pod(None), &node(2)),
            Err(Rejection {
                reason: "OutOfpods",
                message: "Node didn't have enough resource: pods, requested: 1, used: 2, \
                          capacity: 2"
                    .to_owned(),
            })
        );
    }

    #[test]
    fn a_forbidden_sysctl_is_reported_before_capacity() {
        let policy = SysctlPolicy::default();
        let node = NodeState {
            sysctls: &policy,
            max_pods: 1,
            admitted: 5,
        };
        let rejection = admit(&pod(Some("kernel.msgmax")), &node).expect_err("forbidden");
        assert_eq!(rejection.reason, "SysctlForbidden");
        assert!(rejection.message.contains("kernel.msgmax"), "{rejection:?}");
    }
}
