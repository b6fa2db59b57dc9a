//! STAND-IN for the `objects` branch's seam (agent/src/pods/objects.rs), written to its agreed
//! signature so the volumes branch compiles before that branch lands; the merge takes theirs.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("cannot read {kind} {namespace}/{name} from the API server")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
    },
}

/// What a pod may read from the API server.
pub trait PodObjects: Send + Sync {
    /// `Ok(None)`: the object does not exist (the caller decides with `optional`).
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<ConfigMap>>, ObjectError>>;
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<Secret>>, ObjectError>>;
    /// The pod now refers to these objects / no longer does (for watches); may be no-ops.
    fn register_pod(&self, pod: &Pod);
    fn unregister_pod(&self, pod: &Pod);
}
