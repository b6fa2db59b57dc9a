//! The HTTPS API's reviews through the API server: TokenReview (`authentication.k8s.io/v1`)
//! and SubjectAccessReview (`authorization.k8s.io/v1`), as upstream's kubelet asks them
//! (no audiences: the API server's own; the attributes of [`Attributes`]).

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use crate::server::auth::{Attributes, ReviewError, Reviews, User};

/// Posts `review` (of kind `kind`) and returns the API server's answer.
async fn create<K>(api: &Api<K>, review: &K, kind: &'static str) -> Result<K, ReviewError>
where
    K: Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    api.create(&PostParams::default(), review)
        .await
        .map_err(|e| ReviewError::Request {
            review: kind,
            source: Box::new(e),
        })
}

/// [`Reviews`] asked of the API server with the node's client.
#[derive(Clone)]
pub struct ApiReviews {
    client: kube::Client,
}

impl ApiReviews {
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Reviews for ApiReviews {
    fn review_token(&self, token: String) -> BoxFuture<'static, Result<Option<User>, ReviewError>> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = create(&api, &review, "TokenReview").await?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                if let Some(message) = status.error.filter(|e| !e.is_empty()) {
                    tracing::debug!(%message, "TokenReview: not authenticated");
                }
                return Ok(None);
            }
            let user = status.user.unwrap_or_default();
            Ok(Some(User {
                name: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default().into_iter().collect(),
            }))
        })
    }

    fn review_access(
        &self,
        user: User,
        attributes: Attributes,
    ) -> BoxFuture<'static, Result<bool, ReviewError>> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name),
                    uid: Some(user.uid).filter(|u| !u.is_empty()),
                    groups: Some(user.groups),
                    extra: Some(user.extra.into_iter().collect()).filter(
                        |e: &std::collections::BTreeMap<String, Vec<String>>| !e.is_empty(),
                    ),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(attributes.verb.to_owned()),
                        group: Some(String::new()),
                        version: Some("v1".to_owned()),
                        resource: Some("nodes".to_owned()),
                        subresource: Some(attributes.subresource.to_owned()),
                        name: Some(attributes.name),
                        ..ResourceAttributes::default()
                    }),
                    non_resource_attributes: None,
                },
                ..SubjectAccessReview::default()
            };
            let answer = create(&api, &review, "SubjectAccessReview").await?;
            let status = answer.status.unwrap_or_default();
            if !status.allowed
                && let Some(message) = status.evaluation_error.filter(|e| !e.is_empty())
            {
                tracing::debug!(%message, "SubjectAccessReview evaluation error");
            }
            Ok(status.allowed && status.denied != Some(true))
        })
    }
}
