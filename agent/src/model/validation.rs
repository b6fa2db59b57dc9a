//! Validation of a pod the way the API server would refuse it, for what the agent relies on:
//! object names (DNS-1123 labels and subdomains), a UID that names directories, container
//! names, resources (quantities that parse, requests within limits, pod-level limits).
//! Pure: a pod in, the first invalid field out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{QuantityValue, parse_quantity};

/// An invalid field: its path (`spec.containers[0].name`) and why.
pub type FieldError = (String, String);

/// The longest `metadata.uid` accepted (a UUID has 36 characters, a derived UID 32).
pub const MAX_UID_LEN: usize = 64;

/// The longest file name Linux file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Validates what the agent relies on in a pod, the way the API server would refuse it:
/// names, resources, and the fields [`crate::pods::manifest`] documents.
///
/// # Errors
/// The first invalid field: its path and the reason.
pub fn validate_pod(pod: &Pod) -> Result<(), FieldError> {
    let err = |field: &str, reason: String| Err((field.to_owned(), reason));
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    // A static pod's name is its manifest's with `-<node>` appended; an API pod's is its own.
    let appended = if super::is_api_pod(pod) {
        ""
    } else {
        " (with the node name appended)"
    };
    if let Err(reason) = validate_dns_subdomain(name) {
        return err("metadata.name", format!("{name:?}{appended}: {reason}"));
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    if let Err(reason) = validate_dns_label(namespace) {
        return err("metadata.namespace", format!("{namespace:?}: {reason}"));
    }
    // The pod's log directory `<namespace>_<name>_<uid>` is one file name: past NAME_MAX
    // the runtime cannot create a container's log file, and no container could ever start.
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let log_dir = namespace.len() + name.len() + uid.len() + 2;
    if log_dir > NAME_MAX {
        return err(
            "metadata.name",
            format!(
                "{name:?}{appended} is too long for this node: the pod's log \
                 directory {namespace}_{name}_{uid} would be a {log_dir}-byte file name, and file \
                 names have at most {NAME_MAX} bytes (names of at most {} characters fit)",
                NAME_MAX - (log_dir - name.len())
            ),
        );
    }
    let Some(spec) = pod.spec.as_ref() else {
        return err("spec", "is required".to_owned());
    };
    if spec.containers.is_empty() {
        return err(
            "spec.containers",
            "at least one container is required".to_owned(),
        );
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        // The API server refuses them on create too: they are added to a running pod
        // through its `ephemeralcontainers` subresource, which a static pod does not have.
        return err(
            "spec.ephemeralContainers",
            "cannot be set in a pod manifest (ephemeral containers are added to a running pod \
             through the API server)"
                .to_owned(),
        );
    }
    if spec.host_users == Some(false) {
        return err(
            "spec.hostUsers",
            "false is not supported: bpflet does not run pods in user namespaces (remove the \
             field or set it to true)"
                .to_owned(),
        );
    }
    match spec.restart_policy.as_deref() {
        Some("Always" | "OnFailure" | "Never") => {}
        other => {
            return err(
                "spec.restartPolicy",
                format!("{other:?}: must be Always, OnFailure or Never"),
            );
        }
    }
    if let Some(grace) = spec.termination_grace_period_seconds
        && grace < 0
    {
        return err(
            "spec.terminationGracePeriodSeconds",
            format!("{grace} must not be negative"),
        );
    }
    let mut names = BTreeSet::new();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c, true));
    let app = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.containers[{i}]"), c, false));
    for (path, c, is_init) in init.chain(app) {
        if let Err(reason) = validate_dns_label(&c.name) {
            return err(&format!("{path}.name"), format!("{:?}: {reason}", c.name));
        }
        if !names.insert(c.name.as_str()) {
            return err(
                &format!("{path}.name"),
                format!("duplicate container name {:?}", c.name),
            );
        }
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            return err(&format!("{path}.image"), "is required".to_owned());
        }
        // Validated after defaulting, as upstream's API does (unset is never seen here).
        match c.image_pull_policy.as_deref() {
            None | Some("Always" | "IfNotPresent" | "Never") => {}
            Some(other) => {
                return err(
                    &format!("{path}.imagePullPolicy"),
                    format!("{other:?}: must be Always, IfNotPresent or Never"),
                );
            }
        }
        match (is_init, c.restart_policy.as_deref()) {
            (_, None) | (true, Some("Always")) => {}
            (true, Some(other)) => {
                return err(
                    &format!("{path}.restartPolicy"),
                    format!("{other:?}: an init container may only set \"Always\" (a sidecar)"),
                );
            }
            (false, Some(_)) => {
                return err(
                    &format!("{path}.restartPolicy"),
                    "may only be set on init containers".to_owned(),
                );
            }
        }
        for (i, port) in c.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&port.container_port) {
                return err(
                    &format!("{path}.ports[{i}].containerPort"),
                    format!("{} out of range 1-65535", port.container_port),
                );
            }
        }
        if let Some(r) = c.resources.as_ref() {
            validate_resources(&path, r)?;
        }
    }
    if let Some(r) = spec.resources.as_ref() {
        validate_resources("spec", r)?;
        validate_pod_level_limits(spec, r)?;
    }
    Ok(())
}

/// With pod-level resources (KEP-2837), no container may be limited above the pod.
fn validate_pod_level_limits(spec: &PodSpec, pod: &ResourceRequirements) -> Result<(), FieldError> {
    let value = |m: Option<&BTreeMap<String, Quantity>>, name: &str| {
        m.and_then(|m| m.get(name))
            .and_then(|q| parse_quantity(&q.0).ok())
    };
    for name in ["cpu", "memory"] {
        let Some(pod_limit) = value(pod.limits.as_ref(), name) else {
            continue;
        };
        let containers = spec.containers.iter().map(|c| ("containers", c)).chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| ("initContainers", c)),
        );
        for (i, (kind, c)) in containers.enumerate() {
            let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            if value(limits, name).is_some_and(|l| l > pod_limit) {
                let index = if kind == "containers" {
                    i
                } else {
                    i - spec.containers.len()
                };
                return Err((
                    format!("spec.{kind}[{index}].resources.limits[{name:?}]"),
                    "must be less than or equal to the pod-level limit (spec.resources.limits)"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(())
}

fn validate_resources(path: &str, resources: &ResourceRequirements) -> Result<(), FieldError> {
    let parse = |kind: &str, map: Option<&BTreeMap<String, Quantity>>| {
        let mut out = BTreeMap::new();
        for (name, q) in map.into_iter().flatten() {
            let field = format!("{path}.resources.{kind}[{name:?}]");
            let value: QuantityValue = parse_quantity(&q.0).map_err(|e| (field, e.to_string()))?;
            out.insert(name.clone(), value);
        }
        Ok::<_, FieldError>(out)
    };
    let limits = parse("limits", resources.limits.as_ref())?;
    let requests = parse("requests", resources.requests.as_ref())?;
    for (name, request) in &requests {
        if let Some(limit) = limits.get(name)
            && request > limit
        {
            return Err((
                format!("{path}.resources.requests[{name:?}]"),
                format!(
                    "must be less than or equal to the limit ({} > {})",
                    resources
                        .requests
                        .as_ref()
                        .and_then(|r| r.get(name))
                        .map_or("", |q| q.0.as_str()),
                    resources
                        .limits
                        .as_ref()
                        .and_then(|l| l.get(name))
                        .map_or("", |q| q.0.as_str()),
                ),
            ));
        }
    }
    Ok(())
}

/// A UID set in a manifest names directories (the pod's log directory
/// `<logs>/<namespace>_<name>_<uid>`, its volumes `<pods>/<uid>`) and its cgroup
/// (`pod<uid>`), so it must be one harmless path component: 1 to [`MAX_UID_LEN`] ASCII
/// letters, digits, `-` and `.`, starting and ending with a letter or digit (never `.` or
/// `..`). No `/`, and no `_`: `_` separates the parts of a log directory's name, so without
/// it no UID can spell another pod's log directory. UUIDs and derived UIDs pass.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > MAX_UID_LEN {
        return Err(format!(
            "must be 1 to {MAX_UID_LEN} characters, not {}",
            uid.len()
        ));
    }
    let bytes = uid.as_bytes();
    let ok_end = |b: u8| b.is_ascii_alphanumeric();
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || !ok_end(bytes[0])
        || !ok_end(bytes[bytes.len() - 1])
    {
        return Err(
            "must consist of ASCII letters, digits, '-' and '.', and start and end with a letter or digit (it names directories)"
                .to_owned(),
        );
    }
    Ok(())
}

/// A DNS-1123 label: at most 63 characters, lowercase alphanumerics and '-', starting and
/// ending with an alphanumeric.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > 63 {
        return Err(format!("must be at most 63 characters, not {}", s.len()));
    }
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    if !bytes.iter().all(|&b| ok_char(b) || b == b'-')
        || !ok_char(bytes[0])
        || !ok_char(bytes[bytes.len() - 1])
    {
        return Err(
            "must consist of lowercase alphanumerics and '-', and start and end with an alphanumeric"
                .to_owned(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("must be at most 253 characters, not {}", s.len()));
    }
    for label in s.split('.') {
        validate_dns_label(label).map_err(|reason| {
            format!("must be dot-separated lowercase labels ({label:?} {reason})")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(validate_dns_label(bad).is_err(), "{bad}");
        }
        for ok in ["node-a", "node-a.example.com"] {
            assert_eq!(validate_dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a..b", ".a", "Node", &"a".repeat(254)] {
            assert!(validate_dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uids_must_be_one_harmless_path_component() {
        for ok in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "c07e29c8cc27187642de1b71621f4f5a",
            "Z",
            "a.b-c",
            &"a".repeat(MAX_UID_LEN),
        ] {
            assert_eq!(validate_uid(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "z/../../etc",
            "/abs",
            "a_b",
            ".hidden",
            "trailing-",
            "sp ace",
            "nul\0",
            "é",
            &"a".repeat(MAX_UID_LEN + 1),
        ] {
            assert!(validate_uid(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_bad_name_mentions_the_node_suffix_only_for_static_pods() {
        let pod = |source: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "Web-testnode",
                    "namespace": "default",
                    "uid": "0f8fad5b-d9cb-469f-a165-70867728950e",
                    "annotations": {"kubernetes.io/config.source": source},
                },
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            }))
            .expect("a pod")
        };
        let (field, reason) = validate_pod(&pod("file")).expect_err("a capital letter");
        assert_eq!(field, "metadata.name");
        assert!(
            reason.starts_with("\"Web-testnode\" (with the node name appended): "),
            "{reason}"
        );
        let (field, reason) = validate_pod(&pod("api")).expect_err("a capital letter");
        assert_eq!(field, "metadata.name");
        assert!(reason.starts_with("\"Web-testnode\": "), "{reason}");
    }
}
