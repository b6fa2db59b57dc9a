//! The downward API's values, shared by environment variables (`pods::cri_config`) and
//! `downwardAPI` volumes (`pods::volumes`): the pod's metadata by field path, a container's
//! requests and limits by `resourceFieldRef`, and upstream's rendering of a whole label or
//! annotation map as a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::quantity::{QuantityValue, parse_quantity};

/// What the node offers pods, in the units `resourceFieldRef` reads: the value of a limit
/// a container does not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

/// `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['<key>']` and
/// `metadata.annotations['<key>']` (a missing key reads as empty); `None` for any other
/// path (the caller knows which others it serves).
#[must_use]
pub fn metadata_field(meta: &ObjectMeta, path: &str) -> Option<String> {
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")
    };
    if let Some(key) = map_key("metadata.labels") {
        return Some(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if let Some(key) = map_key("metadata.annotations") {
        return Some(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    match path {
        "metadata.name" => Some(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Some(meta.uid.clone().unwrap_or_default()),
        _ => None,
    }
}

/// A whole label or annotation map as upstream's downward API writes it to a file: one
/// `key="value"` line per key in key order, the value quoted as Go's `%q` does, without a
/// newline after the last.
#[must_use]
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in map.into_iter().flatten().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "{k}={}", go_quote(v));
    }
    out
}

/// `s` quoted as Go's `strconv.Quote` (`%q`): `\"`, `\\`, the C escapes, `\x..` for other
/// control bytes, `\u....` for other non-printable characters; printable Unicode as is.
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x20 || u32::from(c) == 0x7f => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `resourceFieldRef` value: the request or limit of `sel.containerName` (else
/// `container`) divided by the divisor, rounded up; a limit the container does not set
/// reads as `allocatable`, a request as 0.
///
/// # Errors
/// The reason, naming the field, for an unknown container, resource or divisor.
pub fn resource_value(
    spec: &PodSpec,
    container: Option<&Container>,
    sel: &ResourceFieldSelector,
    allocatable: &Allocatable,
) -> Result<String, String> {
    let target = match (
        sel.container_name.as_deref().filter(|n| !n.is_empty()),
        container,
    ) {
        (None, Some(c)) => c,
        (None, None) => return Err("resourceFieldRef.containerName is required".to_owned()),
        (Some(name), _) => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef.containerName {name:?}: no such container"))?,
    };
    let divisor = match &sel.divisor {
        None => QuantityValue::from_units(1),
        Some(q) => parse_quantity(&q.0).map_err(|e| format!("resourceFieldRef.divisor: {e}"))?,
    };
    if divisor.is_zero() {
        return Err("resourceFieldRef.divisor must not be zero".to_owned());
    }
    let (kind, resource) = sel.resource.split_once('.').unwrap_or(("", ""));
    let map = target.resources.as_ref().and_then(|r| match kind {
        "limits" => r.limits.as_ref(),
        "requests" => r.requests.as_ref(),
        _ => None,
    });
    let quantity = map
        .and_then(|m| m.get(resource))
        .map(|q| parse_quantity(&q.0))
        .transpose()
        .map_err(|e| format!("{} of container {:?}: {e}", sel.resource, target.name))?
        .filter(|q| !q.is_zero());
    let unsupported = || {
        format!(
            "resourceFieldRef.resource {:?} is not supported (limits.cpu, limits.memory, \
             limits.ephemeral-storage, requests.cpu, requests.memory, \
             requests.ephemeral-storage, limits/requests.hugepages-<size>)",
            sel.resource
        )
    };
    let limits = match kind {
        "limits" => true,
        "requests" => false,
        _ => return Err(unsupported()),
    };
    // What an unset limit reads as; an unset request is 0.
    let unset = |amount: u64| if limits { amount } else { 0 };
    let value = match resource {
        "cpu" => quantity
            .map_or(unset(allocatable.cpu_millis), QuantityValue::millis)
            .div_ceil(divisor.millis().max(1)),
        "memory" => quantity
            .map_or(unset(allocatable.memory_bytes), QuantityValue::bytes)
            .div_ceil(divisor.bytes().max(1)),
        "ephemeral-storage" => quantity
            .map_or(
                unset(allocatable.ephemeral_storage_bytes),
                QuantityValue::bytes,
            )
            .div_ceil(divisor.bytes().max(1)),
        r if r.starts_with("hugepages-") => quantity
            .map_or(0, QuantityValue::bytes)
            .div_ceil(divisor.bytes().max(1)),
        _ => return Err(unsupported()),
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_written_as_upstream_sorted_and_go_quoted() {
        let map: BTreeMap<String, String> = [
            ("b", "two\nlines"),
            ("a", "say \"hi\" \\ ok"),
            ("c", "tab\there\u{1}é"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            format_map(Some(&map)),
            "a=\"say \\\"hi\\\" \\\\ ok\"\nb=\"two\\nlines\"\nc=\"tab\\there\\x01é\""
        );
        assert_eq!(format_map(None), "");
    }

    #[test]
    fn metadata_fields_by_path() {
        let meta = ObjectMeta {
            name: Some("web".to_owned()),
            namespace: Some("prod".to_owned()),
            uid: Some("u-1".to_owned()),
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ..ObjectMeta::default()
        };
        let f = |p: &str| metadata_field(&meta, p);
        assert_eq!(f("metadata.name").as_deref(), Some("web"));
        assert_eq!(f("metadata.namespace").as_deref(), Some("prod"));
        assert_eq!(f("metadata.uid").as_deref(), Some("u-1"));
        assert_eq!(f("metadata.labels['app']").as_deref(), Some("web"));
        assert_eq!(f("metadata.labels['nope']").as_deref(), Some(""));
        assert_eq!(f("metadata.annotations['x']").as_deref(), Some(""));
        assert_eq!(f("spec.nodeName"), None);
        assert_eq!(f("metadata.labels"), None);
    }
}
