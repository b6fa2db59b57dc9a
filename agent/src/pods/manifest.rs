//! Static pod manifests: decoding (YAML or JSON), upstream's static-pod rules (name, UID,
//! annotations, node name), then the API defaults ([`crate::model::defaults`]) and
//! validation ([`crate::model::validation`]).
//!
//! UID: unless the manifest sets `metadata.uid`, it is the first 128 bits of
//! `sha256(canonical JSON of the decoded Pod, "host:<node>", "file:<path>")` (or
//! `"url:<url>"`), in hex: 32 characters like upstream's md5-based UIDs. Hashing the decoded
//! object, not the bytes, means reformatting or commenting a manifest keeps the pod, while
//! any change to its content makes a new pod, as upstream. A UID the manifest sets must be
//! usable as one path component (see [`validate_uid`]).
//!
//! Limits (upstream has none; a node agent reading files anyone with write access to the
//! manifest directory or URL controls should): a manifest is at most [`MAX_MANIFEST_BYTES`]
//! (3 MiB, the API server's request size limit, so anything the API server would take fits)
//! nests collections at most [`MAX_MANIFEST_DEPTH`] deep and holds at most
//! [`MAX_MANIFEST_NODES`] nodes (scalars, aliases, collections), checked by a streaming
//! pass over the YAML events before the manifest is decoded: the YAML scanner's cost grows
//! with the square of the flow-collection depth (100,000 nested `{a: ` take minutes; a pod
//! nests about ten levels), and decoding costs about 250 bytes of memory per node (3 MiB of
//! `x, ` decode to a million nodes, 240 MB).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus, Toleration};
use sha2::{Digest, Sha256};

use crate::model::defaults::apply_spec_defaults;
use crate::model::validation::{FieldError, validate_pod, validate_uid};
use crate::model::{CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION};

/// The largest manifest file or `--manifest-url` body read: 3 MiB, the API server's limit
/// on a request body.
pub const MAX_MANIFEST_BYTES: u64 = 3 << 20;

/// The deepest nesting of YAML/JSON collections a manifest may have.
pub const MAX_MANIFEST_DEPTH: usize = 64;

/// The most nodes (scalars, aliases, collections) a manifest may have: a pod with a
/// hundred containers of a hundred environment variables each has about 40,000.
pub const MAX_MANIFEST_NODES: usize = 100_000;

/// Where a static pod came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ManifestOrigin {
    File(PathBuf),
    /// A URL, with `#items[i]` when the pod is one item of a list.
    Url(String),
    /// The API server (cluster mode): `namespace/name`.
    Api(String),
}

impl ManifestOrigin {
    /// The `kubernetes.io/config.source` annotation value: `file`, `http` or `api`.
    #[must_use]
    pub const fn source_name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Url(_) => "http",
            Self::Api(_) => "api",
        }
    }
}

impl fmt::Display for ManifestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(url) => f.write_str(url),
            Self::Api(pod) => write!(f, "API server pod {pod}"),
        }
    }
}

/// A static pod ready to run: renamed, defaulted, annotated, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    pub pod: Pod,
    /// Same as `pod.metadata.uid` and the `kubernetes.io/config.hash` annotation.
    pub uid: String,
    pub origin: ManifestOrigin,
}

/// Why a manifest did not yield a pod. Every variant names the file or URL.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{origin}: cannot read")]
    Read {
        origin: ManifestOrigin,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: cannot fetch")]
    Fetch {
        origin: ManifestOrigin,
        #[source]
        source: FetchError,
    },
    #[error("{origin}: not a regular file ({kind})")]
    NotRegular {
        origin: ManifestOrigin,
        kind: &'static str,
    },
    #[error("{origin}: larger than the limit of {limit} bytes")]
    TooLarge { origin: ManifestOrigin, limit: u64 },
    #[error(
        "{origin}: collections nest deeper than the limit of {limit} levels (nesting level {}, at line {line} column {column})", limit + 1
    )]
    TooDeep {
        origin: ManifestOrigin,
        limit: usize,
        line: u64,
        column: u64,
    },
    #[error(
        "{origin}: more than the limit of {limit} YAML/JSON nodes (at line {line} column {column})"
    )]
    TooManyNodes {
        origin: ManifestOrigin,
        limit: usize,
        line: u64,
        column: u64,
    },
    #[error("{origin}: invalid YAML or JSON")]
    Syntax {
        origin: ManifestOrigin,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{origin}: apiVersion {api_version:?} kind {kind:?}: expected {expected}")]
    WrongKind {
        origin: ManifestOrigin,
        api_version: String,
        kind: String,
        expected: &'static str,
    },
    #[error("{origin}: cannot decode {field}")]
    Decode {
        origin: ManifestOrigin,
        field: String,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: ManifestOrigin,
        field: String,
        reason: String,
    },
    #[error("{origin}: pod {name:?} in namespace {namespace:?} is also defined by {other}")]
    Duplicate {
        origin: ManifestOrigin,
        name: String,
        namespace: String,
        other: ManifestOrigin,
    },
    #[error("{origin}: pod UID {uid:?} is already used by {other}")]
    DuplicateUid {
        origin: ManifestOrigin,
        uid: String,
        other: ManifestOrigin,
    },
}

/// Why fetching `--manifest-url` failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL")]
    Url(#[source] hyper::http::uri::InvalidUri),
    #[error("only http:// URLs with a host are supported")]
    UnsupportedUrl,
    #[error("cannot connect to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("server answered {status}")]
    Status { status: hyper::StatusCode },
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot read the body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ManifestError {
    #[must_use]
    pub const fn origin(&self) -> &ManifestOrigin {
        match self {
            Self::Read { origin, .. }
            | Self::Fetch { origin, .. }
            | Self::NotRegular { origin, .. }
            | Self::TooLarge { origin, .. }
            | Self::TooDeep { origin, .. }
            | Self::TooManyNodes { origin, .. }
            | Self::Syntax { origin, .. }
            | Self::WrongKind { origin, .. }
            | Self::Decode { origin, .. }
            | Self::Invalid { origin, .. }
            | Self::Duplicate { origin, .. }
            | Self::DuplicateUid { origin, .. } => origin,
        }
    }

    /// The message with every cause after it (`a: b: c`), so a log line carries the
    /// parser's own words, line and column included.
    #[must_use]
    pub fn full_text(&self) -> String {
        crate::error::full_text(self)
    }
}

/// Parses a manifest file's content: exactly one Pod.
///
/// # Errors
/// [`ManifestError`] naming `origin` and, where it applies, the field.
pub fn parse_pod_manifest(
    data: &[u8],
    origin: &ManifestOrigin,
    node_name: &str,
    seen: jiff::Timestamp,
) -> Result<StaticPod, ManifestError> {
    let value = parse_value(data, origin)?;
    static_pod(value, origin.clone(), node_name, seen)
}

/// Parses what `--manifest-url` serves: a Pod, a PodList or a List of Pods. A bad item
/// yields an error for that item only.
///
/// # Errors
/// A document that is not YAML/JSON, too large or too deep: nothing can be said about
/// its pods.
pub fn parse_url_manifest(
    data: &[u8],
    url: &str,
    node_name: &str,
    seen: jiff::Timestamp,
) -> Result<Vec<Result<StaticPod, ManifestError>>, ManifestError> {
    let origin = ManifestOrigin::Url(url.to_owned());
    let value = parse_value(data, &origin)?;
    let (api_version, kind) = type_meta(&value);
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "PodList" | "List") => {
            let items = match value.get("items") {
                None | Some(yaml_serde::Value::Null) => Vec::new(),
                Some(yaml_serde::Value::Sequence(items)) => items.clone(),
                Some(_) => {
                    return Err(ManifestError::Invalid {
                        origin,
                        field: "items".to_owned(),
                        reason: "must be a list".to_owned(),
                    });
                }
            };
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let origin = ManifestOrigin::Url(format!("{url}#items[{i}]"));
                    static_pod(item, origin, node_name, seen)
                })
                .collect())
        }
        _ => Ok(vec![static_pod(value, origin, node_name, seen)]),
    }
}

/// Decodes YAML or JSON within the size and depth limits.
fn parse_value(data: &[u8], origin: &ManifestOrigin) -> Result<yaml_serde::Value, ManifestError> {
    if u64::try_from(data.len()).map_or(true, |len| len > MAX_MANIFEST_BYTES) {
        return Err(ManifestError::TooLarge {
            origin: origin.clone(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    match shape::check(data, MAX_MANIFEST_DEPTH, MAX_MANIFEST_NODES) {
        Ok(()) => {}
        Err(shape::Exceeded::Depth { line, column }) => {
            return Err(ManifestError::TooDeep {
                origin: origin.clone(),
                limit: MAX_MANIFEST_DEPTH,
                line,
                column,
            });
        }
        Err(shape::Exceeded::Nodes { line, column }) => {
            return Err(ManifestError::TooManyNodes {
                origin: origin.clone(),
                limit: MAX_MANIFEST_NODES,
                line,
                column,
            });
        }
    }
    yaml_serde::from_slice(data).map_err(|source| ManifestError::Syntax {
        origin: origin.clone(),
        source,
    })
}

fn type_meta(value: &yaml_serde::Value) -> (String, String) {
    let field = |name| {
        value
            .get(name)
            .and_then(yaml_serde::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (field("apiVersion"), field("kind"))
}

fn static_pod(
    value: yaml_serde::Value,
    origin: ManifestOrigin,
    node_name: &str,
    seen: jiff::Timestamp,
) -> Result<StaticPod, ManifestError> {
    let (api_version, kind) = type_meta(&value);
    if api_version != "v1" || kind != "Pod" {
        return Err(ManifestError::WrongKind {
            origin,
            api_version,
            kind,
            expected: "apiVersion v1, kind Pod",
        });
    }
    let pod: Pod = match serde_path_to_error::deserialize(value) {
        Ok(pod) => pod,
        Err(err) => {
            return Err(ManifestError::Decode {
                origin,
                field: err.path().to_string(),
                source: err.into_inner(),
            });
        }
    };
    let invalid = |field: &str, reason: String| ManifestError::Invalid {
        origin: origin.clone(),
        field: field.to_owned(),
        reason,
    };
    let uid = match pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => {
            validate_uid(uid)
                .map_err(|reason| invalid("metadata.uid", format!("{uid:?}: {reason}")))?;
            uid.to_owned()
        }
        None => static_pod_uid(&pod, &origin, node_name)
            .map_err(|e| invalid("metadata", format!("cannot hash the pod: {e}")))?,
    };
    let pod = apply_static_rules(pod, &origin, node_name, &uid, seen)
        .map_err(|(field, reason)| invalid(&field, reason))?;
    validate_pod(&pod).map_err(|(field, reason)| invalid(&field, reason))?;
    Ok(StaticPod { pod, uid, origin })
}

/// The deterministic UID of a static pod (see the module docs).
///
/// # Errors
/// Only if the pod cannot be serialized to JSON, which does not happen for decoded pods.
pub fn static_pod_uid(
    pod: &Pod,
    origin: &ManifestOrigin,
    node_name: &str,
) -> Result<String, serde_json::Error> {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(pod)?);
    match origin {
        ManifestOrigin::File(path) => {
            hasher.update(format!("host:{node_name}"));
            hasher.update(format!("file:{}", path.display()));
        }
        ManifestOrigin::Url(url) => {
            hasher.update(format!("host:{node_name}"));
            hasher.update(format!("url:{url}"));
        }
        ManifestOrigin::Api(pod) => {
            hasher.update(format!("host:{node_name}"));
            hasher.update(format!("api:{pod}"));
        }
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}

fn apply_static_rules(
    mut pod: Pod,
    origin: &ManifestOrigin,
    node_name: &str,
    uid: &str,
    seen: jiff::Timestamp,
) -> Result<Pod, FieldError> {
    let name = pod
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ("metadata.name".to_owned(), "is required".to_owned()))?;
    pod.metadata.name = Some(format!("{name}-{node_name}"));
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some("default".to_owned());
    }
    pod.metadata.uid = Some(uid.to_owned());
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        CONFIG_SOURCE_ANNOTATION.to_owned(),
        origin.source_name().to_owned(),
    );
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), uid.to_owned());
    annotations.insert(CONFIG_SEEN_ANNOTATION.to_owned(), seen.to_string());

    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| ("spec".to_owned(), "is required".to_owned()))?;
    spec.node_name = Some(node_name.to_owned());
    // Static pods tolerate every NoExecute taint, as upstream's.
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration {
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            ..Toleration::default()
        });
    apply_spec_defaults(spec);
    pod.status.get_or_insert_with(PodStatus::default).phase = Some("Pending".to_owned());
    Ok(pod)
}

/// The nesting and size check that runs before decoding.
mod shape {
    use std::mem::MaybeUninit;

    use libyaml_rs as sys;

    /// libyaml's parser, freed on drop. Boxed: it must not move once initialized.
    struct Parser(Box<MaybeUninit<sys::yaml_parser_t>>);

    impl Drop for Parser {
        fn drop(&mut self) {
            // SAFETY: initialized by `first_too_deep` before the value was built.
            unsafe { sys::yaml_parser_delete(self.0.as_mut_ptr()) };
        }
    }

    /// A limit `data` exceeds, and where (1-based line and column).
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Exceeded {
        Depth { line: u64, column: u64 },
        Nodes { line: u64, column: u64 },
    }

    /// Whether `data`'s collections nest at most `max_depth` deep and it has at most
    /// `max_nodes` nodes, streaming libyaml's events and stopping at the first excess, so
    /// the scan costs at most `max_depth` per token and no memory per node. `Ok` also
    /// when the YAML is invalid before any excess (decoding reports that).
    pub(super) fn check(data: &[u8], max_depth: usize, max_nodes: usize) -> Result<(), Exceeded> {
        let mut parser = Box::new(MaybeUninit::<sys::yaml_parser_t>::uninit());
        // SAFETY: `parser` points to writable memory for a parser; libyaml-rs aborts on
        // allocation failure, so a failed initialization only means nothing to free.
        if unsafe { sys::yaml_parser_initialize(parser.as_mut_ptr()) }.fail {
            return Ok(());
        }
        let mut parser = Parser(parser);
        // SAFETY: initialized; `data` outlives the parser (dropped at the end of this
        // function) and the length is its own. UTF-8, as yaml_serde reads it.
        unsafe {
            sys::yaml_parser_set_encoding(parser.0.as_mut_ptr(), sys::YAML_UTF8_ENCODING);
            sys::yaml_parser_set_input_string(
                parser.0.as_mut_ptr(),
                data.as_ptr(),
                data.len() as u64,
            );
        }
        let (mut depth, mut nodes) = (0usize, 0usize);
        loop {
            let mut event = MaybeUninit::<sys::yaml_event_t>::uninit();
            // SAFETY: the parser is initialized with its input; `event` is writable.
            if unsafe { sys::yaml_parser_parse(parser.0.as_mut_ptr(), event.as_mut_ptr()) }.fail {
                return Ok(());
            }
            // SAFETY: a successful parse filled the event.
            let (kind, mark) = unsafe {
                let e = event.assume_init_ref();
                (e.type_, e.start_mark)
            };
            // SAFETY: the event was filled by the parser and is deleted once.
            unsafe { sys::yaml_event_delete(event.as_mut_ptr()) };
            let (line, column) = (mark.line + 1, mark.column + 1);
            match kind {
                sys::YAML_SEQUENCE_START_EVENT | sys::YAML_MAPPING_START_EVENT => {
                    depth += 1;
                    if depth > max_depth {
                        return Err(Exceeded::Depth { line, column });
                    }
                }
                sys::YAML_SEQUENCE_END_EVENT | sys::YAML_MAPPING_END_EVENT => {
                    depth = depth.saturating_sub(1);
                }
                sys::YAML_STREAM_END_EVENT => return Ok(()),
                _ => {}
            }
            if matches!(
                kind,
                sys::YAML_SEQUENCE_START_EVENT
                    | sys::YAML_MAPPING_START_EVENT
                    | sys::YAML_SCALAR_EVENT
                    | sys::YAML_ALIAS_EVENT
            ) {
                nodes += 1;
                if nodes > max_nodes {
                    return Err(Exceeded::Nodes { line, column });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
