//! What a pod's volumes read from the API server, fetched before they are written: the
//! configMaps and secrets they name (through [`PodObjects`]) and their service-account tokens
//! (through [`ServiceAccountTokens`]). Standalone (neither given), a volume that needs
//! either is refused by name; `downwardAPI` needs neither.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

use super::VolumeError;
use super::projection::{ApiData, TokenKey};
use crate::model::format_pod;
use crate::pods::objects::PodObjects;

/// A service-account token for a pod, bound to it (name and UID).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenFor {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub key: TokenKey,
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("TokenRequest for service account {namespace}/{service_account} failed")]
    Request {
        namespace: String,
        service_account: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the API server answered the TokenRequest for service account \
         {namespace}/{service_account} without a token or expiry"
    )]
    Empty {
        namespace: String,
        service_account: String,
    },
}

/// Service-account tokens through the API server's TokenRequest (cluster mode).
pub trait ServiceAccountTokens: Send + Sync {
    /// A token for `request`: a cached one while it is fresh, else a new one.
    fn token(&self, request: TokenFor) -> BoxFuture<'static, Result<String, TokenError>>;
    /// The pod is gone: drop its tokens.
    fn forget_pod(&self, pod_uid: &str);
}

/// How a pod's volumes reach the API server; both `None` standalone.
#[derive(Clone, Default)]
pub struct ApiAccess {
    pub objects: Option<Arc<dyn PodObjects>>,
    pub tokens: Option<Arc<dyn ServiceAccountTokens>>,
}

/// What one volume of the pod needs from the API server.
enum Need<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
    Token(TokenKey),
}

/// Every (volume, need) of `pod`'s volumes.
fn needs(pod: &Pod) -> Vec<(&str, Need<'_>)> {
    let mut out = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = v.name.as_str();
        if let Some(cm) = &v.config_map {
            out.push((name, Need::ConfigMap(cm.name.as_str())));
        } else if let Some(s) = &v.secret {
            out.push((
                name,
                Need::Secret(s.secret_name.as_deref().unwrap_or_default()),
            ));
        } else if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    out.push((name, Need::ConfigMap(cm.name.as_str())));
                }
                if let Some(s) = &source.secret {
                    out.push((name, Need::Secret(s.name.as_str())));
                }
                if let Some(t) = &source.service_account_token {
                    out.push((name, Need::Token(TokenKey::of(t))));
                }
            }
        }
    }
    out
}

/// Whether any volume of `pod` reads from the API server.
#[must_use]
pub fn needs_api(pod: &Pod) -> bool {
    !needs(pod).is_empty()
}

/// Reads what `pod`'s volumes need (each object and token once).
///
/// # Errors
/// [`VolumeError::NeedsApiServer`] standalone for a volume that needs the API server;
/// [`VolumeError::SetUp`] naming the volume when an object could not be read (not when it
/// does not exist: the volume decides by `optional`) or a token could not be had.
pub async fn fetch(pod: &Pod, access: &ApiAccess) -> Result<ApiData, VolumeError> {
    let mut data = ApiData::default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut asked: BTreeSet<(u8, String)> = BTreeSet::new();
    for (volume, need) in needs(pod) {
        let set_up = |reason: String| VolumeError::SetUp {
            volume: volume.to_owned(),
            reason,
        };
        let standalone = |kind: &'static str| VolumeError::NeedsApiServer {
            pod: format_pod(pod),
            volume: volume.to_owned(),
            kind,
        };
        match need {
            Need::ConfigMap(name) => {
                let objects = access
                    .objects
                    .as_ref()
                    .ok_or_else(|| standalone("configMap"))?;
                if !asked.insert((0, name.to_owned())) {
                    continue;
                }
                let cm = objects
                    .config_map(namespace, name)
                    .await
                    .map_err(|e| set_up(crate::error::full_text(&e)))?;
                data.config_maps.insert(name.to_owned(), cm);
            }
            Need::Secret(name) => {
                let objects = access
                    .objects
                    .as_ref()
                    .ok_or_else(|| standalone("secret"))?;
                if !asked.insert((1, name.to_owned())) {
                    continue;
                }
                let s = objects
                    .secret(namespace, name)
                    .await
                    .map_err(|e| set_up(crate::error::full_text(&e)))?;
                data.secrets.insert(name.to_owned(), s);
            }
            Need::Token(key) => {
                let tokens = access
                    .tokens
                    .as_ref()
                    .ok_or_else(|| standalone("serviceAccountToken"))?;
                if data.tokens.contains_key(&key) {
                    continue;
                }
                let request = TokenFor {
                    namespace: namespace.to_owned(),
                    service_account: service_account(pod).to_owned(),
                    pod_name: pod.metadata.name.clone().unwrap_or_default(),
                    pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                    key: key.clone(),
                };
                let token = tokens.token(request).await.map_err(|e| {
                    set_up(format!(
                        "failed to fetch token: {}",
                        crate::error::full_text(&e)
                    ))
                })?;
                data.tokens.insert(key, token);
            }
        }
    }
    Ok(data)
}

/// The pod's service account: `spec.serviceAccountName`, `default` when unset (what the
/// API server's ServiceAccount admission sets).
fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}
