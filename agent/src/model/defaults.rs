//! The API server's defaults for the pod fields the agent reads (`SetDefaults_Pod` and
//! friends): static pods never pass through an API server, so the agent applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};

/// The API server's defaults for the fields the agent reads (`SetDefaults_Pod` and
/// friends); static pods never pass through an API server.
pub fn apply_spec_defaults(spec: &mut PodSpec) {
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    spec.dns_policy
        .get_or_insert_with(|| "ClusterFirst".to_owned());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".to_owned());
    spec.enable_service_links.get_or_insert(true);
    spec.security_context.get_or_insert_with(Default::default);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        apply_container_defaults(c);
    }
}

fn apply_container_defaults(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".to_owned());
    c.termination_message_policy
        .get_or_insert_with(|| "File".to_owned());
    if c.image_pull_policy.is_none() {
        let policy = if image_tag_is_latest(c.image.as_deref().unwrap_or_default()) {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.image_pull_policy = Some(policy.to_owned());
    }
    for port in c.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".to_owned());
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        apply_probe_defaults(probe);
    }
    // Requests default to limits for every resource that has a limit but no request.
    if let Some(resources) = c.resources.as_mut()
        && let Some(limits) = resources.limits.as_ref()
    {
        let requests = resources.requests.get_or_insert_with(BTreeMap::new);
        for (name, limit) in limits {
            requests
                .entry(name.clone())
                .or_insert_with(|| limit.clone());
        }
    }
}

fn apply_probe_defaults(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(http) = p.http_get.as_mut() {
        http.scheme.get_or_insert_with(|| "HTTP".to_owned());
        http.path.get_or_insert_with(|| "/".to_owned());
    }
}

/// An image without a tag or digest, or tagged `latest`, is pulled `Always`.
fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_defaults() {
        let cases = [
            ("busybox", true),
            ("busybox:latest", true),
            ("busybox:1.36", false),
            ("registry:5000/busybox", true),
            ("registry:5000/busybox:1.36", false),
            ("busybox@sha256:abcd", false),
        ];
        for (image, always) in cases {
            assert_eq!(image_tag_is_latest(image), always, "{image}");
        }
    }
}
