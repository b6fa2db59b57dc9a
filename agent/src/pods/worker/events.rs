//! The events the worker records about a pod's containers and sandbox, with upstream's
//! reasons, types and messages (kubelet v1.34), so `kubectl describe pod` reads as it does
//! on any node:
//!
//! | reason | type | when |
//! |---|---|---|
//! | `Pulling` | Normal | a pull starts (policy `Always`, or the image is missing) |
//! | `Pulled` | Normal | a pull worked (size, durations), or the image is present and the policy is not `Always` |
//! | `Failed` | Warning | a pull failed (`Failed to pull image ...`, then `Error: ErrImagePull`) |
//! | `FailedToRetrieveImagePullSecret` | Warning | (on the pod) a pull needs the pod's pull secrets and some cannot be had (missing, unreadable, standalone mode) |
//! | `InvalidEnvironmentVariableNames` | Warning | (on the pod) `envFrom` keys left out as invalid names |
//! | `Created`, `Started` | Normal | each container, init containers included |
//! | `Killing` | Normal | each container stopped: the planner's reason (a failed probe, a changed spec), else `Stopping container <name>` |
//! | `BackOff` | Warning | a restart held back by CrashLoopBackOff (Normal for an image) |
//! | `FailedPreStopHook`, `FailedPostStartHook` | Warning | a lifecycle hook failed |
//! | `SandboxChanged` | Normal | the pod's sandbox is replaced |
//!
//! Container events name the container by field path ([`container_reference`]).
//!
//! A runtime pod that no source wants (an orphan, torn down under a made-up name without a
//! namespace) gets no events: there is no object in the API to record them about.

use k8s_openapi::api::core::v1::Pod;

use super::Worker;
use crate::model::format_pod;
use crate::record::{EventType, container_reference, pod_reference};

/// Upstream's message when a sandbox is replaced.
pub(super) const SANDBOX_CHANGED: &str = "Pod sandbox changed, it will be killed and re-created.";
/// Upstream leaves a failed hook's output out of the event (it may hold secrets); the
/// agent's log has it.
pub(super) const PRE_STOP_FAILED: &str = "PreStopHook failed";
pub(super) const POST_START_FAILED: &str = "PostStartHook failed";
/// The `Killing` message of a container stopped after its postStart hook failed (upstream
/// passes the reason as the message).
pub(super) const KILLED_FOR_POST_START: &str = "FailedPostStartHook";

pub(super) fn image_present(image: &str) -> String {
    format!("Container image {image:?} already present on machine")
}

pub(super) fn pulling(image: &str) -> String {
    format!("Pulling image {image:?}")
}

/// Upstream's message for a pull that worked: the pull's own time, the time including its
/// turn, both to the millisecond, and the image's size.
pub(super) fn pulled(image: &str, pulled: &crate::images::Pulled) -> String {
    let ms = |d: std::time::Duration| {
        crate::config::duration::format_duration(std::time::Duration::from_millis(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        ))
    };
    format!(
        "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {} bytes.",
        ms(pulled.pull),
        ms(pulled.total),
        pulled.size_bytes
    )
}

/// Upstream's warning when a pod's pull secrets cannot be had.
pub(super) fn unreadable_pull_secrets(names: &[&str]) -> String {
    format!(
        "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
        names.join(", ")
    )
}

pub(super) fn created(container: &str) -> String {
    format!("Created container: {container}")
}

pub(super) fn started(container: &str) -> String {
    format!("Started container {container}")
}

pub(super) fn stopping(container: &str) -> String {
    format!("Stopping container {container}")
}

pub(super) fn back_off_restart(container: &str, pod: &Pod) -> String {
    format!(
        "Back-off restarting failed container {container} in pod {}",
        format_pod(pod)
    )
}

pub(super) fn back_off_pull(image: &str) -> String {
    format!("Back-off pulling image {image:?}")
}

/// Whether the pod is one the API knows (an orphan the manager tears down has no namespace).
fn recordable(pod: &Pod) -> bool {
    pod.metadata.namespace.is_some()
}

impl<R> Worker<R> {
    /// Records an event about container `container` of `pod`.
    pub(super) fn record_container(
        &self,
        pod: &Pod,
        container: &str,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if recordable(pod) {
            self.ctx.outputs.recorder.record(
                &container_reference(pod, container),
                kind,
                reason,
                message,
            );
        }
    }

    /// Records an event about `pod` itself.
    pub(super) fn record_pod(&self, pod: &Pod, kind: EventType, reason: &str, message: &str) {
        if recordable(pod) {
            self.ctx
                .outputs
                .recorder
                .record(&pod_reference(pod), kind, reason, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_upstream_s() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "u1"},
        }))
        .expect("pod");
        assert_eq!(
            image_present("busybox:1.36"),
            "Container image \"busybox:1.36\" already present on machine"
        );
        assert_eq!(created("app"), "Created container: app");
        assert_eq!(started("app"), "Started container app");
        assert_eq!(stopping("app"), "Stopping container app");
        assert_eq!(
            back_off_restart("app", &pod),
            "Back-off restarting failed container app in pod web_team(u1)"
        );
        assert_eq!(back_off_pull("x:1"), "Back-off pulling image \"x:1\"");
        assert_eq!(pulling("x:1"), "Pulling image \"x:1\"");
        let p = crate::images::Pulled {
            image_ref: "sha256:1".into(),
            size_bytes: 1_234_567,
            pull: std::time::Duration::from_micros(1_234_567),
            total: std::time::Duration::from_micros(61_500_100),
        };
        assert_eq!(
            pulled("x:1", &p),
            "Successfully pulled image \"x:1\" in 1.234s (1m1.5s including waiting). \
             Image size: 1234567 bytes."
        );
        assert_eq!(
            unreadable_pull_secrets(&["a", "b"]),
            "Unable to retrieve some image pull secrets (a, b); attempting to pull the image \
             may not succeed."
        );
    }
}
