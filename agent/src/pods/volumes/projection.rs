//! The files of `configMap`, `secret`, `downwardAPI` and `projected` volumes, as upstream's
//! volume plugins make them (pkg/volume/{configmap,secret,downwardapi,projected}): pure, from
//! the pod and what was read from the API server for it ([`ApiData`]).
//!
//! - `items` empty: every key of the object is a file named after it; else each item's key
//!   becomes `items[].path`, with the item's `mode` or the volume's `defaultMode` (0644 when
//!   unset, the API server's default).
//! - A missing object fails the mount (`configmap "x" not found`) unless `optional`, which
//!   makes it empty; a missing key fails it (`configmap references non-existent config key:
//!   k`) unless `optional`, which skips it.
//! - `downwardAPI`: `fieldRef` `metadata.name`, `.namespace`, `.uid`, `.labels`,
//!   `.annotations` (whole maps as `key="value"` lines) and single keys of the last two;
//!   `resourceFieldRef` with its `containerName` and divisor, limits a container does not
//!   set read as the node's allocatable.
//! - `projected`: the sources above in order (later paths win) plus `serviceAccountToken`
//!   (the token for `audience` and `expirationSeconds`, at `path`), all with the volume's
//!   `defaultMode`. Errors of several sources are reported together.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIVolumeFile, KeyToPath, Pod,
    ProjectedVolumeSource, Secret, SecretProjection, SecretVolumeSource,
    ServiceAccountTokenProjection,
};

use super::atomic::{FileProjection, Payload};
use crate::model::downward::{self, Allocatable};

/// The mode of files a volume's `defaultMode` does not set (the API server's default, 0644).
pub const DEFAULT_MODE: i32 = 0o644;
/// `serviceAccountToken.expirationSeconds` when unset (the API server's default).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// Upstream's errors for an item whose key the object lacks.
const CONFIG_MAP_MISSING_KEY: &str = "configmap references non-existent config key";
const SECRET_MISSING_KEY: &str = "references non-existent secret key";

/// A service-account token a pod's volumes need: its audience (empty: the API server's)
/// and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    pub audience: String,
    pub expiration_seconds: i64,
}

impl TokenKey {
    /// The token a `serviceAccountToken` projection asks for.
    #[must_use]
    pub fn of(p: &ServiceAccountTokenProjection) -> Self {
        Self {
            audience: p.audience.clone().unwrap_or_default(),
            expiration_seconds: p
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
        }
    }
}

/// What a pod's volumes need from the API server, read before they are written: configMaps
/// and secrets by name (`None`: it does not exist), tokens by [`TokenKey`].
#[derive(Debug, Clone, Default)]
pub struct ApiData {
    pub config_maps: BTreeMap<String, Option<Arc<ConfigMap>>>,
    pub secrets: BTreeMap<String, Option<Arc<Secret>>>,
    pub tokens: BTreeMap<TokenKey, String>,
}

/// The file mode `mode` (an API `int32`), checked to be at most 0777.
fn file_mode(mode: Option<i32>, default: i32, what: &str) -> Result<u32, String> {
    let m = mode.unwrap_or(default);
    u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{what} {m:#o} is not a file mode (0 to 0777)"))
}

/// Files of `data` (string keys) and `binary` keys per `items` (upstream's `MakePayload`).
fn key_payload(
    missing_key: &str,
    items: Option<&[KeyToPath]>,
    data: &BTreeMap<String, Vec<u8>>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    let items = items.unwrap_or_default();
    if items.is_empty() {
        let mode = file_mode(None, default_mode, "defaultMode")?;
        for (key, value) in data {
            out.insert(
                key.clone(),
                FileProjection {
                    data: value.clone(),
                    mode,
                },
            );
        }
        return Ok(out);
    }
    for item in items {
        let Some(value) = data.get(&item.key) else {
            if optional {
                continue;
            }
            return Err(format!("{missing_key}: {}", item.key));
        };
        let mode = file_mode(
            item.mode,
            default_mode,
            &format!("items[{}].mode", item.key),
        )?;
        out.insert(
            item.path.clone(),
            FileProjection {
                data: value.clone(),
                mode,
            },
        );
    }
    Ok(out)
}

fn config_map_data(cm: Option<&ConfigMap>) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(cm) = cm {
        for (k, v) in cm.data.iter().flatten() {
            data.insert(k.clone(), v.as_bytes().to_vec());
        }
        for (k, v) in cm.binary_data.iter().flatten() {
            data.entry(k.clone()).or_insert_with(|| v.0.clone());
        }
    }
    data
}

fn secret_data(s: Option<&Secret>) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(s) = s {
        for (k, v) in s.data.iter().flatten() {
            data.insert(k.clone(), v.0.clone());
        }
        // Only a manifest that never went through the API server has these.
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.as_bytes().to_vec());
        }
    }
    data
}

/// The object `name` as read, or the mount's error when it is missing and not optional.
fn found<'a, T>(
    objects: &'a BTreeMap<String, Option<Arc<T>>>,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<Option<&'a T>, String> {
    match objects.get(name) {
        Some(Some(o)) => Ok(Some(o.as_ref())),
        _ if optional => Ok(None),
        _ => Err(format!("{kind} {name:?} not found")),
    }
}

/// A `configMap` volume's files.
///
/// # Errors
/// The mount's failure, in upstream's words.
pub fn config_map(src: &ConfigMapVolumeSource, api: &ApiData) -> Result<Payload, String> {
    let optional = src.optional.unwrap_or(false);
    let cm = found(&api.config_maps, "configmap", &src.name, optional)?;
    key_payload(
        CONFIG_MAP_MISSING_KEY,
        src.items.as_deref(),
        &config_map_data(cm),
        src.default_mode.unwrap_or(DEFAULT_MODE),
        optional,
    )
}

/// A `secret` volume's files.
///
/// # Errors
/// The mount's failure, in upstream's words.
pub fn secret(src: &SecretVolumeSource, api: &ApiData) -> Result<Payload, String> {
    let optional = src.optional.unwrap_or(false);
    let name = src.secret_name.as_deref().unwrap_or_default();
    let s = found(&api.secrets, "secret", name, optional)?;
    key_payload(
        SECRET_MISSING_KEY,
        src.items.as_deref(),
        &secret_data(s),
        src.default_mode.unwrap_or(DEFAULT_MODE),
        optional,
    )
}

/// One `fieldRef` path of a downwardAPI volume (upstream's `ExtractFieldPathAsString` for
/// a pod).
fn field(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    match path {
        "metadata.labels" => Ok(downward::format_map(meta.labels.as_ref())),
        "metadata.annotations" => Ok(downward::format_map(meta.annotations.as_ref())),
        _ => downward::metadata_field(meta, path).ok_or_else(|| {
            format!(
                "fieldRef {path:?} is not supported in a volume (metadata.name, \
                 metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, \
                 metadata.labels['<key>'], metadata.annotations['<key>'])"
            )
        }),
    }
}

/// A `downwardAPI` volume's (or projection's) files.
///
/// # Errors
/// The first item that cannot be rendered, naming its path.
pub fn downward_api(
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    pod: &Pod,
    allocatable: &Allocatable,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    let spec = pod.spec.clone().unwrap_or_default();
    for item in items {
        let err = |reason: String| format!("items {:?}: {reason}", item.path);
        let mode = file_mode(item.mode, default_mode, "mode").map_err(err)?;
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => {
                if let Some(v) = f
                    .api_version
                    .as_deref()
                    .filter(|v| !v.is_empty() && *v != "v1")
                {
                    return Err(err(format!(
                        "fieldRef.apiVersion {v:?}: only v1 is supported"
                    )));
                }
                field(pod, &f.field_path).map_err(err)?
            }
            (None, Some(r)) => {
                downward::resource_value(&spec, None, r, allocatable).map_err(err)?
            }
            _ => {
                return Err(err(
                    "needs exactly one of fieldRef and resourceFieldRef".to_owned()
                ));
            }
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode,
            },
        );
    }
    Ok(out)
}

/// A `projected` volume's files.
///
/// # Errors
/// Every failing source's error (one alone, or `[a, b]` as upstream aggregates them).
pub fn projected(
    src: &ProjectedVolumeSource,
    pod: &Pod,
    api: &ApiData,
    allocatable: &Allocatable,
) -> Result<Payload, String> {
    let default_mode = src.default_mode.unwrap_or(DEFAULT_MODE);
    let mut out = Payload::new();
    let mut errors = Vec::new();
    for (i, source) in src.sources.iter().flatten().enumerate() {
        let files = if let Some(ConfigMapProjection {
            name,
            items,
            optional,
        }) = &source.config_map
        {
            let optional = optional.unwrap_or(false);
            found(&api.config_maps, "configmap", name, optional).and_then(|cm| {
                key_payload(
                    CONFIG_MAP_MISSING_KEY,
                    items.as_deref(),
                    &config_map_data(cm),
                    default_mode,
                    optional,
                )
            })
        } else if let Some(SecretProjection {
            name,
            items,
            optional,
        }) = &source.secret
        {
            let optional = optional.unwrap_or(false);
            found(&api.secrets, "secret", name, optional).and_then(|s| {
                key_payload(
                    SECRET_MISSING_KEY,
                    items.as_deref(),
                    &secret_data(s),
                    default_mode,
                    optional,
                )
            })
        } else if let Some(d) = &source.downward_api {
            downward_api(
                d.items.as_deref().unwrap_or_default(),
                default_mode,
                pod,
                allocatable,
            )
        } else if let Some(t) = &source.service_account_token {
            match api.tokens.get(&TokenKey::of(t)) {
                Some(token) => file_mode(None, default_mode, "defaultMode").map(|mode| {
                    Payload::from([(
                        t.path.clone(),
                        FileProjection {
                            data: token.clone().into_bytes(),
                            mode,
                        },
                    )])
                }),
                None => Err("failed to fetch token: no token was requested".to_owned()),
            }
        } else if source.cluster_trust_bundle.is_some() {
            Err(format!("sources[{i}]: clusterTrustBundle is not supported"))
        } else {
            Err(format!("sources[{i}] names no source"))
        };
        match files {
            Ok(files) => out.extend(files),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

#[cfg(test)]
mod tests;
