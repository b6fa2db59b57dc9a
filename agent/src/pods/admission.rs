//! Pod admission, as upstream's kubelet admits a pod before its first sync: each check
//! either lets the pod in or rejects it with upstream's reason and message. A rejected pod
//! is never started; it shows phase `Failed` with that reason until its source drops it.
//!
//! Checks, in order: what bpflet can run ([`crate::model::validation`], `FailedValidation`:
//! static pods were checked when their manifest was read, so this refuses API pods only),
//! sysctls ([`super::sysctls`], `SysctlForbidden`) and the node's pod capacity (`maxPods`,
//! `OutOfpods`). Resource fit (`OutOfcpu`, `OutOfmemory`), node affinity and taints are not
//! checked yet.
//!
//! Before admission, [`first_sight`] sets apart an API pod whose phase is terminal already
//! (it completed, or was rejected or evicted, before the agent restarted): as upstream's pod
//! workers do, it is taken as terminated and never started again.

use k8s_openapi::api::core::v1::Pod;

use super::sysctls::{REASON_FORBIDDEN, SysctlPolicy};

/// Upstream's reason for a pod over `maxPods`.
pub const REASON_OUT_OF_PODS: &str = "OutOfpods";

/// The reason for a pod that fails bpflet's checks ([`crate::model::validation`]): the event
/// reason upstream's kubelet gives a pod from a source that it refuses to run (its config
/// sources' `FailedValidation`). Upstream trusts the API server's validation and has no
/// admission reason for this; bpflet refuses some fields the API server takes (named in the
/// message), so the pod must show why it will never run.
pub const REASON_FAILED_VALIDATION: &str = "FailedValidation";

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

/// How a pod seen for the first time is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Admitted,
    /// Never start it: it shows phase `Failed` with the rejection's reason.
    Rejected(Rejection),
    /// Its phase in the API server is `Succeeded` or `Failed` already: never start it
    /// again, stop whatever of it still runs, and keep the status it has.
    Terminal,
}

impl Admission {
    /// Whether the pod counts against the node's capacity (`maxPods`).
    #[must_use]
    pub const fn is_admitted(&self) -> bool {
        matches!(self, Self::Admitted)
    }
}

/// How to handle `pod`, seen for the first time on a node in `node`'s state: an API pod
/// whose phase is terminal is [`Admission::Terminal`] (upstream's pod workers mark such a
/// pod terminated at first sight and its admission skips it); any other pod goes through
/// [`admit`]. Static pods carry no status of record, so only API pods can be terminal.
#[must_use]
pub fn first_sight(pod: &Pod, node: &NodeState<'_>) -> Admission {
    if is_terminal_in_api(pod) {
        return Admission::Terminal;
    }
    match admit(pod, node) {
        Ok(()) => Admission::Admitted,
        Err(rejection) => Admission::Rejected(rejection),
    }
}

/// An API pod whose phase is `Succeeded` or `Failed`.
#[must_use]
pub fn is_terminal_in_api(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    crate::model::is_api_pod(pod) && matches!(phase, Some("Succeeded" | "Failed"))
}

/// Admits `pod` onto a node in `node`'s state.
///
/// # Errors
/// The first check that refuses it.
pub fn admit(pod: &Pod, node: &NodeState<'_>) -> Result<(), Rejection> {
    crate::model::validation::validate_pod(pod).map_err(|(field, reason)| Rejection {
        reason: REASON_FAILED_VALIDATION,
        message: format!("{field}: {reason}"),
    })?;
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
    use crate::model::CONFIG_SOURCE_ANNOTATION;

    fn pod(sysctl: Option<&str>) -> Pod {
        let sysctls = sysctl.map_or(String::new(), |s| {
            format!("  securityContext:\n    sysctls: [{{name: {s}, value: '1'}}]\n")
        });
        let yaml = format!(
            "metadata: {{name: p, namespace: default, uid: u}}\nspec:\n  restartPolicy: Always\n{sysctls}  containers: [{{name: c, image: i}}]\n"
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

    #[test]
    fn a_pod_bpflet_cannot_run_fails_validation_naming_the_field_before_other_checks() {
        let policy = SysctlPolicy::default();
        let node = NodeState {
            sysctls: &policy,
            max_pods: 0,
            admitted: 0,
        };
        let mut userns = pod(Some("kernel.msgmax"));
        userns.spec.as_mut().expect("spec").host_users = Some(false);
        let rejection = admit(&userns, &node).expect_err("hostUsers: false");
        assert_eq!(rejection.reason, "FailedValidation");
        assert!(
            rejection
                .message
                .starts_with("spec.hostUsers: false is not supported"),
            "{rejection:?}"
        );
    }

    #[test]
    fn only_an_api_pod_with_a_terminal_phase_is_terminal_at_first_sight() {
        let policy = SysctlPolicy::default();
        let node = NodeState {
            sysctls: &policy,
            max_pods: 1,
            admitted: 1,
        };
        let with = |source: Option<&str>, phase: Option<&str>| {
            let mut p = pod(None);
            if let Some(source) = source {
                p.metadata.annotations =
                    Some([(CONFIG_SOURCE_ANNOTATION.to_owned(), source.to_owned())].into());
            }
            p.status = phase.map(|phase| k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.to_owned()),
                ..Default::default()
            });
            first_sight(&p, &node)
        };
        assert_eq!(with(Some("api"), Some("Succeeded")), Admission::Terminal);
        assert_eq!(
            with(Some("api"), Some("Failed")),
            Admission::Terminal,
            "not admitted again, even on a full node"
        );
        for (source, phase) in [
            (Some("api"), Some("Running")),
            (Some("api"), Some("Pending")),
            (Some("api"), None),
            (Some("file"), Some("Succeeded")),
            (None, Some("Failed")),
        ] {
            let admission = with(source, phase);
            assert!(
                matches!(&admission, Admission::Rejected(r) if r.reason == "OutOfpods"),
                "{source:?} {phase:?}: {admission:?}"
            );
        }
    }
}
