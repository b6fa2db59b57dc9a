//! Service-account tokens for `projected` volumes through the API server's TokenRequest
//! (`POST /api/v1/namespaces/<ns>/serviceaccounts/<sa>/token`), as upstream's kubelet token
//! manager (pkg/kubelet/token) gets them: bound to the pod (name and UID), with the
//! projection's audience (none: the API server's own) and `expirationSeconds`; cached per
//! pod, service account, audience and lifetime; asked again once 80 % of the lifetime the
//! API server granted has passed or the token is 24 h old, each less a random jitter of up
//! to 10 s ([`requires_refresh`]). A refresh that fails keeps the cached token while it has
//! not expired. A pod's tokens are dropped when it goes ([`ServiceAccountTokens::forget_pod`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::pods::volumes::api::{ServiceAccountTokens, TokenError, TokenFor};

/// A token older than this is asked again whatever its lifetime (upstream's `maxTTL`).
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upstream's `maxJitter`: refreshes come up to this much early, at random.
const MAX_JITTER: Duration = Duration::from_secs(10);

/// Whether a token that expires at `expires` after a lifetime of `ttl_seconds` must be asked
/// again at `now`: after 80 % of its lifetime, or 24 h after it was issued, each less
/// `jitter` (upstream's `requiresRefresh`).
#[must_use]
pub fn requires_refresh(
    now: Timestamp,
    expires: Timestamp,
    ttl_seconds: i64,
    jitter: Duration,
) -> bool {
    let jitter = i64::try_from(jitter.as_secs()).unwrap_or(0);
    let now = now.as_second();
    let exp = expires.as_second();
    let issued = exp - ttl_seconds;
    let max_ttl = i64::try_from(MAX_TTL.as_secs()).unwrap_or(i64::MAX);
    if now > issued + max_ttl - jitter {
        return true;
    }
    now > exp - ttl_seconds * 20 / 100 - jitter
}

/// One cached token.
#[derive(Debug, Clone)]
struct Cached {
    token: String,
    expires: Timestamp,
    /// The lifetime the API server granted (its answer's `expirationSeconds`).
    ttl_seconds: i64,
}

/// The tokens held, by request (pure: the clock and jitter come in).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<TokenFor, Cached>,
}

impl TokenCache {
    /// The cached token for `request` unless it must be refreshed at `now`.
    #[must_use]
    pub fn fresh(&self, request: &TokenFor, now: Timestamp, jitter: Duration) -> Option<String> {
        let c = self.tokens.get(request)?;
        (!requires_refresh(now, c.expires, c.ttl_seconds, jitter)).then(|| c.token.clone())
    }

    /// The cached token for `request` if it has not expired at `now` (a failed refresh
    /// falls back to it).
    #[must_use]
    pub fn unexpired(&self, request: &TokenFor, now: Timestamp) -> Option<String> {
        let c = self.tokens.get(request)?;
        (now < c.expires).then(|| c.token.clone())
    }

    /// Keeps `token` for `request`; drops every token expired at `now`.
    pub fn insert(
        &mut self,
        request: TokenFor,
        token: String,
        expires: Timestamp,
        ttl_seconds: i64,
        now: Timestamp,
    ) {
        self.tokens.retain(|_, c| now < c.expires);
        self.tokens.insert(
            request,
            Cached {
                token,
                expires,
                ttl_seconds,
            },
        );
    }

    /// Drops the tokens of pod `uid`.
    pub fn forget_pod(&mut self, uid: &str) {
        self.tokens.retain(|k, _| k.pod_uid != uid);
    }

    /// How many tokens are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// [`ServiceAccountTokens`] through the API server, with the node's client.
#[derive(Clone)]
pub struct ApiTokens {
    client: kube::Client,
    cache: Arc<Mutex<TokenCache>>,
}

impl ApiTokens {
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
        }
    }
}

fn jitter() -> Duration {
    MAX_JITTER.mul_f64(fastrand::f64())
}

impl ServiceAccountTokens for ApiTokens {
    fn token(&self, request: TokenFor) -> BoxFuture<'static, Result<String, TokenError>> {
        let cache = Arc::clone(&self.cache);
        let client = self.client.clone();
        Box::pin(async move {
            let now = Timestamp::now();
            if let Some(token) =
                cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .fresh(&request, now, jitter())
            {
                return Ok(token);
            }
            match request_token(client, &request).await {
                Ok((token, expires, ttl_seconds)) => {
                    tracing::info!(
                        namespace = %request.namespace,
                        pod = %request.pod_name,
                        service_account = %request.service_account,
                        audience = %request.key.audience,
                        expiration_seconds = ttl_seconds,
                        expires = %expires,
                        "service-account token requested"
                    );
                    cache.lock().unwrap_or_else(PoisonError::into_inner).insert(
                        request,
                        token.clone(),
                        expires,
                        ttl_seconds,
                        Timestamp::now(),
                    );
                    Ok(token)
                }
                Err(e) => {
                    let cached = cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .unexpired(&request, Timestamp::now());
                    match cached {
                        Some(token) => {
                            tracing::warn!(
                                pod = %request.pod_name,
                                service_account = %request.service_account,
                                error = %crate::error::full_text(&e),
                                "refreshing a service-account token failed; the cached one is still valid"
                            );
                            Ok(token)
                        }
                        None => Err(e),
                    }
                }
            }
        })
    }

    fn forget_pod(&self, pod_uid: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_pod(pod_uid);
    }
}

/// The TokenRequest for `request`: the token, when it expires and the lifetime granted.
async fn request_token(
    client: kube::Client,
    request: &TokenFor,
) -> Result<(String, Timestamp, i64), TokenError> {
    let api: Api<ServiceAccount> = Api::namespaced(client, &request.namespace);
    let body = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if request.key.audience.is_empty() {
                Vec::new()
            } else {
                vec![request.key.audience.clone()]
            },
            expiration_seconds: Some(request.key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(request.pod_name.clone()),
                uid: Some(request.pod_uid.clone()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(&request.service_account, &PostParams::default(), &body)
        .await
        .map_err(|e| TokenError::Request {
            namespace: request.namespace.clone(),
            service_account: request.service_account.clone(),
            source: Box::new(e),
        })?;
    let empty = || TokenError::Empty {
        namespace: request.namespace.clone(),
        service_account: request.service_account.clone(),
    };
    let status = answer.status.ok_or_else(empty)?;
    if status.token.is_empty() {
        return Err(empty());
    }
    let ttl = answer
        .spec
        .expiration_seconds
        .unwrap_or(request.key.expiration_seconds);
    Ok((status.token, status.expiration_timestamp.0, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::volumes::projection::TokenKey;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("timestamp")
    }

    #[test]
    fn a_token_is_refreshed_after_80_percent_of_its_life_less_the_jitter() {
        // Issued at 0, 600 s of life: refreshed after 480 s.
        let exp = at(600);
        let no_jitter = Duration::ZERO;
        assert!(!requires_refresh(at(0), exp, 600, no_jitter));
        assert!(!requires_refresh(at(480), exp, 600, no_jitter));
        assert!(requires_refresh(at(481), exp, 600, no_jitter));
        // The jitter brings it forward by up to 10 s.
        assert!(!requires_refresh(at(470), exp, 600, MAX_JITTER));
        assert!(requires_refresh(at(471), exp, 600, MAX_JITTER));
        // An hour: 48 min.
        assert!(!requires_refresh(at(2880), at(3600), 3600, no_jitter));
        assert!(requires_refresh(at(2881), at(3600), 3600, no_jitter));
    }

    #[test]
    fn a_long_lived_token_is_refreshed_after_24_hours() {
        let week = 7 * 24 * 3600;
        let exp = at(week);
        assert!(!requires_refresh(at(24 * 3600), exp, week, Duration::ZERO));
        assert!(requires_refresh(
            at(24 * 3600 + 1),
            exp,
            week,
            Duration::ZERO
        ));
        assert!(requires_refresh(at(24 * 3600 - 5), exp, week, MAX_JITTER));
    }

    fn request(uid: &str, audience: &str, expiration_seconds: i64) -> TokenFor {
        TokenFor {
            namespace: "default".to_owned(),
            service_account: "default".to_owned(),
            pod_name: "web".to_owned(),
            pod_uid: uid.to_owned(),
            key: TokenKey {
                audience: audience.to_owned(),
                expiration_seconds,
            },
        }
    }

    #[test]
    fn the_cache_serves_fresh_tokens_per_pod_audience_and_life_and_forgets_pods() {
        let mut cache = TokenCache::default();
        let a = request("u1", "", 600);
        cache.insert(a.clone(), "t1".to_owned(), at(600), 600, at(0));
        assert_eq!(
            cache.fresh(&a, at(100), Duration::ZERO).as_deref(),
            Some("t1")
        );
        // Another audience, lifetime or pod is another token.
        assert_eq!(
            cache.fresh(&request("u1", "vault", 600), at(100), Duration::ZERO),
            None
        );
        assert_eq!(
            cache.fresh(&request("u1", "", 3600), at(100), Duration::ZERO),
            None
        );
        assert_eq!(
            cache.fresh(&request("u2", "", 600), at(100), Duration::ZERO),
            None
        );
        // Due for refresh, but a failed refresh may still use it until it expires.
        assert_eq!(cache.fresh(&a, at(500), Duration::ZERO), None);
        assert_eq!(cache.unexpired(&a, at(599)).as_deref(), Some("t1"));
        assert_eq!(cache.unexpired(&a, at(600)), None);
        // Expired tokens go at the next insert; a pod's tokens go with it.
        cache.insert(
            request("u2", "", 600),
            "t2".to_owned(),
            at(1300),
            600,
            at(700),
        );
        assert_eq!(cache.len(), 1, "the expired token is dropped");
        cache.forget_pod("u2");
        assert!(cache.is_empty());
    }
}
