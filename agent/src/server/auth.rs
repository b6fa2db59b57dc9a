//! Authentication and authorization of the HTTPS API, as upstream's kubelet does them
//! (`pkg/kubelet/server/auth.go`, the apiserver's delegating authenticator and authorizer).
//!
//! Authentication tries, in order: the connection's client certificate (verified against
//! `clientCAFile`: user = CN, groups = O), then an `Authorization: Bearer` token through the
//! API server's TokenReview. The first that succeeds names the user (plus the group
//! `system:authenticated`). When one of them failed (a certificate from another CA, a token
//! the API server does not accept, the API server unreachable) and none succeeded, the
//! request is refused with 401; a request with no credentials at all is
//! `system:anonymous` in `system:unauthenticated` when anonymous access is on, else 401.
//!
//! Authorization runs on every request before routing (so a path no handler serves answers
//! 403 to a caller without rights, not 404): the attributes are resource `nodes`, name the
//! node, API version `v1`, the verb from the HTTP method and the subresource from the path
//! ([`request_attributes`]); with `authorization.mode: Webhook` each is asked of the API
//! server as a SubjectAccessReview, the first allowed one lets the request through, none
//! gives 403 naming the user, verb and subresources, and a review that fails gives 500.
//!
//! Both reviews are cached: tokens for `authentication.webhook.cacheTTL` (both answers),
//! access decisions for `cacheAuthorizedTTL` (allowed) or `cacheUnauthorizedTTL` (not
//! allowed). Failed reviews are not cached. Each cache holds at most
//! [`TtlCache::CAPACITY`] entries, so clients cannot grow it without bound.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};

use crate::config::{AuthConfig, Authorization};

/// An authenticated user, as TokenReview and SubjectAccessReview carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const AUTHENTICATED: &str = "system:authenticated";

impl User {
    fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.to_owned(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.to_owned()],
            extra: BTreeMap::new(),
        }
    }

    /// Adds `system:authenticated`, as the apiserver's authenticated-group adder does.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

/// What is asked of the API server about one request: `nodes/<subresource>` of this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete`, or empty for other methods.
    pub verb: &'static str,
    pub subresource: &'static str,
    /// The node's name.
    pub name: String,
}

/// Why a review could not be made (the answer is not a decision).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{review} request to the API server failed")]
    Request {
        review: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{review}: the API server answered with an error: {message}")]
    Answer {
        review: &'static str,
        message: String,
    },
}

/// The API server's reviews (cluster mode puts the API server behind this).
pub trait Reviews: Send + Sync {
    /// TokenReview: the token's user, `None` when the API server does not authenticate it.
    fn review_token(&self, token: String) -> BoxFuture<'static, Result<Option<User>, ReviewError>>;
    /// SubjectAccessReview: whether `user` may do `attributes`.
    fn review_access(
        &self,
        user: User,
        attributes: Attributes,
    ) -> BoxFuture<'static, Result<bool, ReviewError>>;
}

/// The HTTP verb's API verb, as upstream maps it (anything else: empty, which no rule
/// allows).
#[must_use]
pub fn api_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// `path` is `base` or below it (`base` without its trailing `/`).
fn is_subpath(path: &str, base: &str) -> bool {
    let base = base.strip_suffix('/').unwrap_or(base);
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The subresources of `nodes` a request to `path` is authorized against, tried in order
/// (upstream v1.34 with `KubeletFineGrainedAuthz`, on by default): `/pods` and
/// `/runningpods/` try `pods`, `/healthz` `healthz`, `/configz` `configz`, then `proxy`;
/// `/stats/` is `stats`, `/metrics` `metrics`, `/logs/` `log`, `/checkpoint/` `checkpoint`,
/// `/statusz` `statusz`, `/flagz` `configz`; everything else is `proxy`.
#[must_use]
pub fn subresources(path: &str) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    if is_subpath(path, "/pods") || is_subpath(path, "/runningpods/") {
        out.push("pods");
    } else if is_subpath(path, "/healthz") {
        out.push("healthz");
    } else if is_subpath(path, "/configz") {
        out.push("configz");
    }
    out.push(
        [
            ("/stats/", "stats"),
            ("/metrics", "metrics"),
            ("/logs/", "log"),
            ("/checkpoint/", "checkpoint"),
            ("/statusz", "statusz"),
            ("/flagz", "configz"),
        ]
        .into_iter()
        .find(|(base, _)| is_subpath(path, base))
        .map_or("proxy", |(_, sub)| sub),
    );
    out
}

/// A map whose entries expire, holding at most [`Self::CAPACITY`] of them: when full, the
/// expired ones are dropped, and if none had expired the whole map is (a flood of distinct
/// keys costs reviews, never memory).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub const CAPACITY: usize = 4096;

    /// The value of `key` if it has not expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(v, _)| v.clone())
    }

    /// Keeps `value` for `ttl` from `now`; a zero `ttl` keeps nothing.
    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= Self::CAPACITY {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= Self::CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (value, now + ttl));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The connection's client certificate, judged once per connection: `None` when the client
/// sent none (or no client CA is configured), else the user or why it is refused.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Result<User, String>>);

/// Why a request is not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No credentials, and anonymous access is off.
    NoCredentials,
    /// Credentials that failed (each authenticator's reason).
    Failed(Vec<String>),
}

struct TokenAuth {
    reviews: Arc<dyn Reviews>,
    ttl: Duration,
    cache: Mutex<TtlCache<[u8; 32], Option<User>>>,
}

struct WebhookAuthz {
    reviews: Arc<dyn Reviews>,
    authorized_ttl: Duration,
    unauthorized_ttl: Duration,
    cache: Mutex<TtlCache<(User, Attributes), bool>>,
}

/// The HTTPS API's authenticator and authorizer.
pub struct Auth {
    node_name: String,
    tokens: Option<TokenAuth>,
    anonymous: bool,
    webhook: Option<WebhookAuthz>,
    /// Webhook authorization without an API server to ask: every request is refused.
    deny_all: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("node_name", &self.node_name)
            .field("tokens", &self.tokens.is_some())
            .field("anonymous", &self.anonymous)
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Auth {
    /// Authentication and authorization as `config` says; `reviews` is the API server
    /// (`None` in standalone mode, where the configuration refuses both webhooks).
    #[must_use]
    pub fn new(node_name: &str, config: &AuthConfig, reviews: Option<Arc<dyn Reviews>>) -> Self {
        let tokens = config
            .token_webhook
            .zip(reviews.clone())
            .map(|(ttl, reviews)| TokenAuth {
                reviews,
                ttl,
                cache: Mutex::default(),
            });
        let deny_all =
            matches!(config.authorization, Authorization::Webhook { .. }) && reviews.is_none();
        let webhook = match (config.authorization, reviews) {
            (
                Authorization::Webhook {
                    authorized_ttl,
                    unauthorized_ttl,
                },
                Some(reviews),
            ) => Some(WebhookAuthz {
                reviews,
                authorized_ttl,
                unauthorized_ttl,
                cache: Mutex::default(),
            }),
            _ => None,
        };
        Self {
            node_name: node_name.to_owned(),
            tokens,
            anonymous: config.anonymous,
            webhook,
            deny_all,
        }
    }

    /// The request's user, as module docs say.
    ///
    /// # Errors
    /// [`Unauthenticated`] when the request must get 401.
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        headers: &HeaderMap,
    ) -> Result<User, Unauthenticated> {
        let mut failed = Vec::new();
        match &peer.0 {
            Some(Ok(user)) => return Ok(user.clone().authenticated()),
            Some(Err(e)) => failed.push(e.clone()),
            None => {}
        }
        if let Some(tokens) = &self.tokens
            && let Some(token) = bearer_token(headers)
        {
            match tokens.authenticate(token).await {
                Ok(Some(user)) => return Ok(user.authenticated()),
                Ok(None) => failed.push("invalid bearer token".to_owned()),
                Err(e) => failed.push(error_chain(&e)),
            }
        }
        if !failed.is_empty() {
            return Err(Unauthenticated::Failed(failed));
        }
        if self.anonymous {
            return Ok(User::anonymous());
        }
        Err(Unauthenticated::NoCredentials)
    }

    /// `Ok(None)` when one of the request's attributes is allowed, else the 403 answer's
    /// subresources.
    ///
    /// # Errors
    /// A review failed (500), naming the attributes asked.
    pub async fn authorize(
        &self,
        user: &User,
        method: &Method,
        path: &str,
    ) -> Result<Option<Vec<&'static str>>, (Attributes, ReviewError)> {
        let subresources = subresources(path);
        if self.deny_all {
            return Ok(Some(subresources));
        }
        let Some(webhook) = &self.webhook else {
            return Ok(None);
        };
        for &subresource in &subresources {
            let attributes = Attributes {
                verb: api_verb(method),
                subresource,
                name: self.node_name.clone(),
            };
            match webhook.authorize(user, attributes.clone()).await {
                Ok(true) => return Ok(None),
                Ok(false) => {}
                Err(e) => return Err((attributes, e)),
            }
        }
        Ok(Some(subresources))
    }
}

impl TokenAuth {
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = lock(&self.cache).get(&key, Instant::now()) {
            return Ok(hit);
        }
        let answer = self.reviews.review_token(token.to_owned()).await?;
        lock(&self.cache).insert(key, answer.clone(), self.ttl, Instant::now());
        Ok(answer)
    }
}

impl WebhookAuthz {
    async fn authorize(&self, user: &User, attributes: Attributes) -> Result<bool, ReviewError> {
        let key = (user.clone(), attributes);
        if let Some(hit) = lock(&self.cache).get(&key, Instant::now()) {
            return Ok(hit);
        }
        let allowed = self
            .reviews
            .review_access(key.0.clone(), key.1.clone())
            .await?;
        let ttl = if allowed {
            self.authorized_ttl
        } else {
            self.unauthorized_ttl
        };
        lock(&self.cache).insert(key, allowed, ttl, Instant::now());
        Ok(allowed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), as upstream
/// reads it; `None` when there is none (an empty token included).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The middleware: authenticates, then authorizes, every request before it is routed.
pub async fn guard(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .unwrap_or_default();
    let user = match auth.authenticate(&peer, req.headers()).await {
        Ok(user) => user,
        Err(why) => {
            if let Unauthenticated::Failed(reasons) = &why {
                tracing::debug!(path = req.uri().path(), reasons = ?reasons, "unauthenticated request");
            }
            return plain(StatusCode::UNAUTHORIZED, "Unauthorized".to_owned());
        }
    };
    match auth.authorize(&user, req.method(), req.uri().path()).await {
        Ok(None) => {
            // As upstream: the credential is not handed on to the handlers.
            req.headers_mut().remove(header::AUTHORIZATION);
            next.run(req).await
        }
        Ok(Some(subresources)) => {
            tracing::debug!(user = %user.name, verb = api_verb(req.method()), ?subresources, "forbidden");
            plain(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])\n",
                    user.name,
                    api_verb(req.method()),
                    subresources.join(" ")
                ),
            )
        }
        Err((attributes, e)) => {
            tracing::warn!(user = %user.name, verb = attributes.verb, subresource = attributes.subresource, error = %error_chain(&e), "authorization error");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                    user.name, attributes.verb, attributes.subresource
                ),
            )
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
