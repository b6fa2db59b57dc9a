//! The image manager: gets a container's image onto the node before the container is
//! created, as upstream's (kubelet v1.34) `EnsureImageExists` does.
//!
//! - [`policy`]: whether to pull (`Always`, `IfNotPresent`, `Never`).
//! - [`credentials`]: which registry credentials go with a pull (pod secrets, then the
//!   node's docker config file).
//! - [`ImageManager::pull`]: the pull itself through the CRI. Pulls wait their turn:
//!   one at a time with `serializeImagePulls` (the default), else at most
//!   `maxParallelImagePulls` at once (unlimited when unset). Pulls of the same image with
//!   the same credentials that overlap share one CRI call. With several matching
//!   credentials each is tried in turn until one works; with none the pull is anonymous.
//!   Each pull is observed in `kubelet_image_pull_duration_seconds` (by
//!   `image_size_in_bytes`, upstream's size buckets).
//!
//! The pod worker records the events (`Pulling`, `Pulled`, `Failed`, `BackOff`,
//! `ErrImageNeverPull`) and backs a failed pull off per pod and container (10 s doubling
//! to 300 s, `ErrImagePull` then `ImagePullBackOff`); see `pods::worker::start`.
//!
//! [`gc`]: image garbage collection (upstream's image GC manager): unused images go when
//! the runtime's image filesystem is above `imageGCHighThresholdPercent`, or once unused
//! for `imageMaximumGCAge`; eviction's disk reclaim deletes unused images through it.

pub mod credentials;
pub mod gc;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1 as api;
use prometheus::{HistogramOpts, HistogramVec};
use tokio::sync::{Semaphore, watch};
// tokio's clock, so tests on a paused clock see the durations they set up.
use tokio::time::Instant;

use crate::runtime::{ContainerRuntime, RuntimeError};
pub use credentials::{Credential, Keyring, NodeCredentials};
pub use policy::{Decision, PullPolicy, decide};

/// `serializeImagePulls` and `maxParallelImagePulls`, validated as upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSettings {
    /// At most this many pulls at once; `None`: no limit.
    pub max_parallel: Option<u32>,
}

impl Default for PullSettings {
    /// Upstream's default: serialized.
    fn default() -> Self {
        Self {
            max_parallel: Some(1),
        }
    }
}

impl PullSettings {
    /// From the two settings: `serialize` (default true) allows only `max_parallel` unset
    /// or 1; a limit must be positive. The error names the field.
    pub fn new(serialize: bool, max_parallel: Option<i32>) -> Result<Self, (String, String)> {
        match max_parallel {
            Some(n) if n < 1 => Err((
                "maxParallelImagePulls".to_owned(),
                format!("{n} must be a positive number"),
            )),
            Some(n) if serialize && n > 1 => Err((
                "maxParallelImagePulls".to_owned(),
                format!("{n} must be 1 or unset when serializeImagePulls is true"),
            )),
            _ if serialize => Ok(Self {
                max_parallel: Some(1),
            }),
            n => Ok(Self {
                max_parallel: n.map(i32::unsigned_abs),
            }),
        }
    }
}

/// A pull that worked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The runtime's reference for the image (its id).
    pub image_ref: String,
    /// The image's size as the runtime reports it (0 when it does not).
    pub size_bytes: u64,
    /// How long the runtime took.
    pub pull: Duration,
    /// How long the caller waited, its turn included.
    pub total: Duration,
}

/// Why a pull failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error("pulling image {image:?}")]
    Runtime {
        image: String,
        #[source]
        source: Arc<RuntimeError>,
    },
    #[error(
        "pulling image {image:?}: every one of the {tried} matching credentials failed; the last"
    )]
    EveryCredential {
        image: String,
        tried: usize,
        #[source]
        source: Arc<RuntimeError>,
    },
    #[error("pulling image {image:?}: the pull this one waited on was abandoned")]
    Abandoned { image: String },
}

impl PullError {
    /// The runtime's error, when it gave one.
    #[must_use]
    pub fn runtime_error(&self) -> Option<&RuntimeError> {
        match self {
            PullError::Runtime { source, .. } | PullError::EveryCredential { source, .. } => {
                Some(source)
            }
            PullError::Abandoned { .. } => None,
        }
    }
}

type Outcome = Result<Pulled, PullError>;

/// What a pull needs of the runtime (every [`ContainerRuntime`] has it).
pub trait ImageService: Send + Sync {
    /// Pulls `image`; the runtime's reference for it.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        sandbox: Option<&api::PodSandboxConfig>,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// The image's size, when the runtime says.
    fn image_size(&self, image: &str) -> impl Future<Output = Option<u64>> + Send;
}

impl<R: ContainerRuntime> ImageService for R {
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        sandbox: Option<&api::PodSandboxConfig>,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        ContainerRuntime::pull_image(self, image, auth, sandbox)
    }

    async fn image_size(&self, image: &str) -> Option<u64> {
        self.image_status(image)
            .await
            .ok()
            .flatten()
            .map(|i| i.size_bytes)
    }
}

/// Pulls, their turns and their metric; shared by every pod worker.
pub struct ImageManager {
    limiter: Option<Arc<Semaphore>>,
    /// Pulls under way, by image and credentials: later callers wait for the first.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    node_credentials: NodeCredentials,
    pull_duration: HistogramVec,
}

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("node_credentials", &self.node_credentials)
            .finish_non_exhaustive()
    }
}

/// Upstream's `imagePullDurationBuckets` (seconds).
const PULL_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0,
    1200.0, 1800.0, 2700.0, 3600.0,
];

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// Upstream's `imageSizeBuckets`: (lower bound, exclusive; label).
const SIZE_BUCKETS: &[(u64, &str)] = &[
    (0, "0-10MB"),
    (10 * MIB, "10MB-100MB"),
    (100 * MIB, "100MB-500MB"),
    (500 * MIB, "500MB-1GB"),
    (GIB, "1GB-5GB"),
    (5 * GIB, "5GB-10GB"),
    (10 * GIB, "10GB-20GB"),
    (20 * GIB, "20GB-30GB"),
    (30 * GIB, "30GB-40GB"),
    (40 * GIB, "40GB-60GB"),
    (60 * GIB, "60GB-100GB"),
    (100 * GIB, "GT100GB"),
];

/// The `image_size_in_bytes` label for an image of `size` bytes (`N/A` when unknown).
#[must_use]
pub fn size_bucket(size: u64) -> &'static str {
    if size == 0 {
        return "N/A";
    }
    SIZE_BUCKETS
        .iter()
        .rev()
        .find(|(lower, _)| size > *lower)
        .map_or("N/A", |(_, label)| label)
}

impl ImageManager {
    /// A manager whose pull metric is registered in `registry`.
    pub fn new(
        settings: PullSettings,
        node_credentials: NodeCredentials,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let pull_duration = HistogramVec::new(
            HistogramOpts::new(
                "kubelet_image_pull_duration_seconds",
                "Duration in seconds to pull an image.",
            )
            .buckets(PULL_DURATION_BUCKETS.to_vec()),
            &["image_size_in_bytes"],
        )?;
        registry.register(Box::new(pull_duration.clone()))?;
        Ok(Self {
            limiter: settings
                .max_parallel
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            inflight: Mutex::new(HashMap::new()),
            node_credentials,
            pull_duration,
        })
    }

    /// A manager with no node credentials whose metric is registered nowhere (tests, and
    /// callers that configure none).
    #[must_use]
    pub fn unregistered(settings: PullSettings) -> Self {
        Self::new(
            settings,
            NodeCredentials::default(),
            &prometheus::Registry::new(),
        )
        .expect("a fresh registry takes the metric")
    }

    /// The node's keyring, read now (the file may change at any time, as upstream
    /// re-reads it). A file that cannot be used is logged and skipped.
    #[must_use]
    pub fn node_keyring(&self) -> Keyring {
        let (found, problems) = self.node_credentials.read();
        for e in problems {
            tracing::warn!(error = %e, cause = %crate::error::error_chain(&e), "skipping a docker config file");
        }
        let mut keyring = Keyring::default();
        if let Some((_, config)) = found {
            keyring.add(&config);
        }
        keyring
    }

    /// Pulls `image` with the first of `credentials` that works (anonymously when there
    /// are none), after waiting its turn; joins a pull of the same image with the same
    /// credentials that is under way.
    pub async fn pull<R: ImageService>(
        &self,
        runtime: &R,
        image: &str,
        credentials: &[Credential],
        sandbox: Option<&api::PodSandboxConfig>,
    ) -> Outcome {
        let started = Instant::now();
        let key = inflight_key(image, credentials);
        let existing = {
            let mut map = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        match existing {
            Err(mut rx) => {
                let shared = rx.wait_for(Option::is_some).await.map(|v| v.clone());
                match shared {
                    Ok(Some(Ok(mut pulled))) => {
                        pulled.total = started.elapsed();
                        Ok(pulled)
                    }
                    Ok(Some(Err(e))) => Err(e),
                    _ => Err(PullError::Abandoned {
                        image: image.to_owned(),
                    }),
                }
            }
            Ok(tx) => {
                let _leave = Leave {
                    map: &self.inflight,
                    key,
                };
                let outcome = self
                    .pull_now(runtime, image, credentials, sandbox, started)
                    .await;
                tx.send_replace(Some(outcome.clone()));
                outcome
            }
        }
    }

    async fn pull_now<R: ImageService>(
        &self,
        runtime: &R,
        image: &str,
        credentials: &[Credential],
        sandbox: Option<&api::PodSandboxConfig>,
        started: Instant,
    ) -> Outcome {
        let _turn = match &self.limiter {
            Some(s) => Some(s.acquire().await.map_err(|_| PullError::Abandoned {
                image: image.to_owned(),
            })?),
            None => None,
        };
        let pull_started = Instant::now();
        let attempts: Vec<Option<api::AuthConfig>> = if credentials.is_empty() {
            vec![None]
        } else {
            credentials.iter().map(|c| Some(c.auth_config())).collect()
        };
        let mut last = None;
        let mut image_ref = None;
        for auth in &attempts {
            match runtime.pull_image(image, auth.as_ref(), sandbox).await {
                Ok(r) => {
                    image_ref = Some(r);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(image_ref) = image_ref else {
            let source = Arc::new(last.expect("at least one attempt"));
            return Err(if attempts.len() > 1 {
                PullError::EveryCredential {
                    image: image.to_owned(),
                    tried: attempts.len(),
                    source,
                }
            } else {
                PullError::Runtime {
                    image: image.to_owned(),
                    source,
                }
            });
        };
        let pull = pull_started.elapsed();
        let size_bytes = runtime.image_size(&image_ref).await.unwrap_or(0);
        self.pull_duration
            .with_label_values(&[size_bucket(size_bytes)])
            .observe(pull.as_secs_f64());
        Ok(Pulled {
            image_ref,
            size_bytes,
            pull,
            total: started.elapsed(),
        })
    }
}

/// Removes an in-flight entry when its pull ends or is dropped (a waiter then sees the
/// channel close and reports the pull abandoned).
struct Leave<'a> {
    map: &'a Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    key: String,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Pulls share a CRI call only with the same image and the same credentials, so a pod
/// never gets an image through another pod's secret.
fn inflight_key(image: &str, credentials: &[Credential]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for c in credentials {
        h.update(c.username.as_bytes());
        h.update([0]);
        h.update(c.password.as_bytes());
        h.update([0]);
    }
    format!("{image}\0{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests;
