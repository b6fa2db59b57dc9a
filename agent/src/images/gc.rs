//! Image garbage collection (upstream's `realImageGCManager`, kubelet v1.34).
//!
//! - Which images are in use ([`InUse`], shared with eviction's disk reclaim): those of
//!   every container the runtime holds, running or not (by image id, tag or digest), those
//!   the node's pods still name in their specs (an offline node could not pull them back),
//!   and the runtime's sandbox image. Pinned images (CRI `pinned`) are never candidates.
//! - Each pass lists the images and containers and keeps a [`Record`] per image id: when
//!   bpflet first saw it (`first_detected`), when it last saw it in use (`last_used`), its
//!   size and pin. Records of images that are gone are dropped; an agent restart starts
//!   them again (as upstream's).
//! - Candidates: images neither in use nor pinned, oldest `last_used` first (never used
//!   first), ties by `first_detected` ([`Records::candidates`]).
//! - `imageMaximumGCAge` (off by default): once the agent has run longer than it, a
//!   candidate unused for longer (since it was last seen in use, or since it was first
//!   seen) is removed whatever the disk usage (reason `age`).
//! - Then the runtime's image filesystem (CRI `ImageFsInfo`: the mountpoint of its
//!   snapshots, on containerd 1.6 and 2) is measured with `statvfs`, as upstream's stats
//!   provider does: usage is `100 - available * 100 / capacity` percent. At or above
//!   `imageGCHighThresholdPercent`, candidates first seen at least `imageMinimumGCAge` ago
//!   are removed in order until `capacity * (100 - low) / 100 - available` bytes (the
//!   runtime's sizes) are freed (reason `space`); freeing less is an error and a
//!   `FreeDiskSpaceFailed` warning on the node.
//! - [`ImageGc::run`] passes every [`GC_PERIOD`] (the first at once); a pass that fails
//!   twice in a row is an `ImageGCFailed` warning on the node. With
//!   `imageGCHighThresholdPercent: 100` and no maximum age the loop does not run (upstream
//!   disables image GC then); eviction's [`ImageGc::delete_unused`] (upstream's
//!   `DeleteUnusedImages`: every candidate past the minimum age) works either way.
//! - Passes and on-demand deletions take one lock, so they never overlap.
//!
//! Where bpflet differs on purpose: images the node's pods name are in use even when no
//! container holds them yet (upstream counts containers only); an image never seen in use
//! ages from when it was first seen (upstream's never-used images have no `lastUsed` and
//! go at the first age pass); and the sandbox image is protected by name when the runtime
//! does not pin it (containerd 1.6 does not).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Mutex;
// tokio's clock, so tests on a paused clock control ages.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::record::{EventType, Recorder, node_reference};
use crate::runtime::{Container, ContainerRuntime, Image, Method, RuntimeError};

/// Upstream's `ImageGCPeriod`.
pub const GC_PERIOD: Duration = Duration::from_secs(5 * 60);

/// `reason` of `kubelet_image_garbage_collected_total`.
pub const REASON_AGE: &str = "age";
pub const REASON_SPACE: &str = "space";

/// The image GC settings, validated as upstream validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// `imageGCHighThresholdPercent` (85): at or above this usage, collect.
    pub high_threshold_percent: u8,
    /// `imageGCLowThresholdPercent` (80): collect down to this usage.
    pub low_threshold_percent: u8,
    /// `imageMinimumGCAge` (2m): an image first seen more recently stays.
    pub min_age: Duration,
    /// `imageMaximumGCAge` (0: off): an image unused for longer goes, whatever the usage.
    pub max_age: Option<Duration>,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
            max_age: None,
        }
    }
}

impl GcPolicy {
    /// From the four settings: both thresholds in 0..=100, low below high, a maximum age
    /// (0: off) above the minimum. The error names the field.
    pub fn new(
        high: i32,
        low: i32,
        min_age: Duration,
        max_age: Duration,
    ) -> Result<Self, (String, String)> {
        let percent = |field: &str, v: i32| {
            u8::try_from(v).ok().filter(|p| *p <= 100).ok_or_else(|| {
                (
                    field.to_owned(),
                    format!("{v} must be between 0 and 100, inclusive"),
                )
            })
        };
        let high_threshold_percent = percent("imageGCHighThresholdPercent", high)?;
        let low_threshold_percent = percent("imageGCLowThresholdPercent", low)?;
        if low_threshold_percent >= high_threshold_percent {
            return Err((
                "imageGCLowThresholdPercent".to_owned(),
                format!("{low} must be less than imageGCHighThresholdPercent {high}"),
            ));
        }
        let max_age = (!max_age.is_zero()).then_some(max_age);
        if let Some(max) = max_age
            && max <= min_age
        {
            return Err((
                "imageMaximumGCAge".to_owned(),
                format!("{max:?} must be greater than imageMinimumGCAge {min_age:?}"),
            ));
        }
        Ok(Self {
            high_threshold_percent,
            low_threshold_percent,
            min_age,
            max_age,
        })
    }

    /// Upstream turns the periodic GC off when the high threshold is 100 and there is no
    /// maximum age.
    #[must_use]
    pub fn periodic(&self) -> bool {
        self.high_threshold_percent < 100 || self.max_age.is_some()
    }

    /// Bytes to free on a filesystem of `capacity` bytes with `available` free, or `None`
    /// when its usage is below the high threshold. `available` beyond `capacity` counts as
    /// `capacity`.
    #[must_use]
    pub fn bytes_to_free(&self, capacity: u64, available: u64) -> Option<u64> {
        if capacity == 0 {
            return None;
        }
        let available = available.min(capacity);
        let (cap, avail) = (u128::from(capacity), u128::from(available));
        let usage = 100 - avail * 100 / cap;
        if usage < u128::from(self.high_threshold_percent) {
            return None;
        }
        let target_free = cap * u128::from(100 - self.low_threshold_percent) / 100;
        Some(u64::try_from(target_free.saturating_sub(avail)).unwrap_or(u64::MAX))
    }

    /// Usage in percent as upstream computes it (`100 - available * 100 / capacity`).
    #[must_use]
    pub fn usage_percent(capacity: u64, available: u64) -> u64 {
        if capacity == 0 {
            return 100;
        }
        let available = available.min(capacity);
        100 - u64::try_from(u128::from(available) * 100 / u128::from(capacity)).unwrap_or(100)
    }
}

/// The normalized form of an image reference: a registry (`docker.io` by default, with
/// `library/` for official images) and a tag (`latest` by default) unless it has a digest.
/// Image ids (`sha256:...`) are left alone.
#[must_use]
pub fn normalize_reference(reference: &str) -> String {
    if reference.starts_with("sha256:") {
        return reference.to_owned();
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_domain = !first.is_empty() && (first.contains(['.', ':']) || first == "localhost");
    let mut out = if has_domain {
        name.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{name}")
    };
    let last = out.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':');
    match digest {
        Some(d) => {
            out.push('@');
            out.push_str(d);
        }
        None if !tagged => out.push_str(":latest"),
        None => {}
    }
    out
}

/// Which images are in use: by the runtime's containers (their resolved image id or
/// reference, and the reference they were created from) and by name (`wanted`: the images
/// the node's pods name, and the sandbox image). Names compare in normalized form.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    /// Image ids and references exactly as containers carry them.
    exact: BTreeSet<String>,
    /// Normalized references.
    named: BTreeSet<String>,
}

impl InUse {
    #[must_use]
    pub fn new<'a>(
        containers: impl IntoIterator<Item = &'a Container>,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut in_use = Self::default();
        for c in containers {
            in_use.exact.insert(c.image_ref.clone());
            in_use.exact.insert(c.image.clone());
            in_use.named.insert(normalize_reference(&c.image));
        }
        in_use
            .named
            .extend(wanted.into_iter().map(normalize_reference));
        in_use.exact.remove("");
        in_use
    }

    /// Whether `image` is in use (pinned or not).
    #[must_use]
    pub fn contains(&self, image: &Image) -> bool {
        self.exact.contains(&image.id)
            || image
                .repo_tags
                .iter()
                .chain(&image.repo_digests)
                .any(|r| self.exact.contains(r) || self.named.contains(&normalize_reference(r)))
    }
}

/// What bpflet knows about one image (upstream's `imageRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub first_detected: Instant,
    /// The last pass that saw it in use; `None`: never seen in use.
    pub last_used: Option<Instant>,
    pub size: u64,
    pub pinned: bool,
}

/// An image GC may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub record: Record,
}

impl Candidate {
    /// Since when it has been unused: its last use, else when it was first seen.
    #[must_use]
    pub fn unused_since(&self) -> Instant {
        self.record.last_used.unwrap_or(self.record.first_detected)
    }
}

/// The records of every image the runtime has, by image id.
#[derive(Debug, Clone, Default)]
pub struct Records {
    by_id: BTreeMap<String, Record>,
}

impl Records {
    /// Updates the records from one listing at `now` (upstream's `detectImages`) and
    /// returns the candidates in removal order: not in use, not pinned, never used or
    /// oldest use first, then first seen first.
    pub fn detect(&mut self, images: &[Image], in_use: &InUse, now: Instant) -> Vec<Candidate> {
        let present: BTreeSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.by_id.retain(|id, _| present.contains(id.as_str()));
        let mut used = BTreeSet::new();
        for image in images {
            let record = self.by_id.entry(image.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: None,
                size: 0,
                pinned: false,
            });
            if in_use.contains(image) {
                record.last_used = Some(now);
                used.insert(image.id.as_str());
            }
            record.size = image.size_bytes;
            record.pinned = image.pinned;
        }
        let mut candidates: Vec<Candidate> = self
            .by_id
            .iter()
            .filter(|(id, r)| !r.pinned && !used.contains(id.as_str()))
            .map(|(id, r)| Candidate {
                id: id.clone(),
                record: *r,
            })
            .collect();
        candidates.sort_by_key(|c| (c.record.last_used, c.record.first_detected, c.id.clone()));
        candidates
    }

    /// Forgets a removed image.
    pub fn forget(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.by_id.get(id)
    }
}

/// The candidates `imageMaximumGCAge` removes at `now`: none until the agent (since
/// `began`) has run longer than the age, then those unused for longer.
#[must_use]
pub fn expired(
    candidates: &[Candidate],
    policy: &GcPolicy,
    began: Instant,
    now: Instant,
) -> Vec<Candidate> {
    let Some(max) = policy.max_age else {
        return Vec::new();
    };
    if now.saturating_duration_since(began) <= max {
        return Vec::new();
    }
    candidates
        .iter()
        .filter(|c| now.saturating_duration_since(c.unused_since()) > max)
        .cloned()
        .collect()
}

/// The candidates old enough for space reclaim at `now` (first seen at least
/// `imageMinimumGCAge` ago), in removal order.
#[must_use]
pub fn old_enough(candidates: &[Candidate], policy: &GcPolicy, now: Instant) -> Vec<Candidate> {
    candidates
        .iter()
        .filter(|c| now.saturating_duration_since(c.record.first_detected) >= policy.min_age)
        .cloned()
        .collect()
}

/// The image filesystem's size and free space, as `statvfs` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

/// Measures the filesystem holding a path (tests replace `statvfs`).
pub type FsStat = Arc<dyn Fn(&Path) -> io::Result<FsUsage> + Send + Sync>;

/// `statvfs(path)`: blocks times fragment size, available blocks for unprivileged users.
pub fn statvfs(path: &Path) -> io::Result<FsUsage> {
    let v = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(FsUsage {
        capacity: v.blocks().saturating_mul(v.fragment_size()),
        available: v.blocks_available().saturating_mul(v.fragment_size()),
    })
}

/// What went wrong in a pass or a deletion.
#[derive(Debug, thiserror::Error)]
pub enum ImageGcError {
    #[error("runtime call {method} for image garbage collection")]
    Runtime {
        method: Method,
        #[source]
        source: RuntimeError,
    },
    #[error("the runtime reports no image filesystem (ImageFsInfo gave no absolute mountpoint)")]
    NoImageFs,
    #[error("statvfs {path} (the runtime's image filesystem)")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid capacity 0 on image filesystem {path}")]
    ZeroCapacity { path: PathBuf },
    #[error("removing image {id} ({size} bytes)")]
    Remove {
        id: String,
        size: u64,
        #[source]
        source: RuntimeError,
    },
    #[error("{failed} image removals failed (freed {freed} bytes); the first")]
    Removals {
        failed: usize,
        freed: u64,
        #[source]
        first: Box<ImageGcError>,
    },
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free."
    )]
    NotEnough { wanted: u64, freed: u64 },
}

/// `kubelet_image_garbage_collected_total{reason}` (upstream's name, help and label).
#[derive(Clone, Debug)]
pub struct ImageGcMetrics {
    pub collected: IntCounterVec,
}

impl ImageGcMetrics {
    /// The counter, registered in `registry`.
    ///
    /// # Errors
    /// A metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let collected = IntCounterVec::new(
            Opts::new(
                "kubelet_image_garbage_collected_total",
                "Total number of images garbage collected by the kubelet, whether through disk usage or image age.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(collected.clone()))?;
        Ok(Self { collected })
    }
}

/// What a pass or a deletion removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freed {
    /// Ids of the images removed, in order.
    pub images: Vec<String>,
    /// Their sizes, as the runtime reported them.
    pub bytes: u64,
}

/// The image garbage collector: one per node, shared by its periodic loop and eviction.
pub struct ImageGc<R> {
    runtime: Arc<R>,
    policy: GcPolicy,
    records: Mutex<Records>,
    /// When the agent started collecting (for `imageMaximumGCAge`).
    began: Instant,
    stat: FsStat,
    recorder: Option<(Recorder, String)>,
    metrics: Option<ImageGcMetrics>,
}

impl<R> std::fmt::Debug for ImageGc<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGc")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<R: ContainerRuntime + 'static> ImageGc<R> {
    #[must_use]
    pub fn new(runtime: Arc<R>, policy: GcPolicy) -> Self {
        Self {
            runtime,
            policy,
            records: Mutex::new(Records::default()),
            began: Instant::now(),
            stat: Arc::new(statvfs),
            recorder: None,
            metrics: None,
        }
    }

    /// Records `FreeDiskSpaceFailed` and `ImageGCFailed` on node `node_name`.
    #[must_use]
    pub fn with_recorder(mut self, recorder: Recorder, node_name: &str) -> Self {
        self.recorder = Some((recorder, node_name.to_owned()));
        self
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: ImageGcMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Measures the image filesystem with `stat` instead of `statvfs` (tests).
    #[must_use]
    pub fn with_stat(mut self, stat: FsStat) -> Self {
        self.stat = stat;
        self
    }

    #[must_use]
    pub fn policy(&self) -> &GcPolicy {
        &self.policy
    }

    /// Passes every `period` (the first at once) until `cancel`, unless the policy turns
    /// the periodic GC off. `wanted` names the images the node's pods need.
    pub async fn run(
        self: Arc<Self>,
        period: Duration,
        wanted: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        cancel: CancellationToken,
    ) {
        if !self.policy.periodic() {
            info!(
                "imageGCHighThresholdPercent is 100 and imageMaximumGCAge is 0: no periodic image garbage collection"
            );
            return;
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed_before = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.collect(&wanted()).await {
                Ok(freed) => {
                    if failed_before {
                        info!("image garbage collection works again");
                    }
                    failed_before = false;
                    debug!(
                        images = freed.images.len(),
                        bytes = freed.bytes,
                        "image garbage collection"
                    );
                }
                Err(e) => {
                    let text = crate::error::full_text(&e);
                    if failed_before {
                        warn!(error = %text, "image garbage collection failed again");
                        self.node_event("ImageGCFailed", &text);
                    } else {
                        warn!(error = %text, "image garbage collection failed");
                    }
                    failed_before = true;
                }
            }
        }
    }

    /// One pass (upstream's `GarbageCollect`): old images, then space. `wanted` are image
    /// references the node's pods name.
    ///
    /// # Errors
    /// The runtime could not list, the image filesystem could not be measured, a removal
    /// failed, or too little could be freed (also a `FreeDiskSpaceFailed` event).
    pub async fn collect(&self, wanted: &[String]) -> Result<Freed, ImageGcError> {
        let mut records = self.records.lock().await;
        let now = Instant::now();
        let candidates = self.detect(&mut records, wanted, now).await?;
        let mut freed = Freed::default();
        let old = expired(&candidates, &self.policy, self.began, now);
        let mut errors = Vec::new();
        for c in &old {
            match self.remove(&mut records, c, REASON_AGE).await {
                Ok(()) => {
                    freed.images.push(c.id.clone());
                    freed.bytes = freed.bytes.saturating_add(c.record.size);
                }
                Err(e) => errors.push(e),
            }
        }
        let removed: BTreeSet<&str> = freed.images.iter().map(String::as_str).collect();
        let rest: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| !removed.contains(c.id.as_str()))
            .collect();
        let (path, usage) = self.image_fs().await?;
        if usage.capacity == 0 {
            let e = ImageGcError::ZeroCapacity { path };
            self.node_event("InvalidDiskCapacity", &e.to_string());
            return Err(e);
        }
        if let Some(wanted_bytes) = self.policy.bytes_to_free(usage.capacity, usage.available) {
            info!(
                imagefs = %path.display(),
                usage = GcPolicy::usage_percent(usage.capacity, usage.available),
                high = self.policy.high_threshold_percent,
                low = self.policy.low_threshold_percent,
                to_free = wanted_bytes,
                "image filesystem over the high threshold; removing unused images"
            );
            let space = self
                .free(
                    &mut records,
                    &old_enough(&rest, &self.policy, now),
                    wanted_bytes,
                    &mut errors,
                )
                .await;
            freed.bytes = freed.bytes.saturating_add(space.bytes);
            freed.images.extend(space.images);
            if errors.is_empty() && space.bytes < wanted_bytes {
                let e = ImageGcError::NotEnough {
                    wanted: wanted_bytes,
                    freed: space.bytes,
                };
                self.node_event("FreeDiskSpaceFailed", &e.to_string());
                return Err(e);
            }
        }
        collect_errors(errors, freed.bytes)?;
        Ok(freed)
    }

    /// Removes every unused image past the minimum age (upstream's `DeleteUnusedImages`,
    /// which eviction calls under disk pressure). `wanted` as for [`Self::collect`].
    /// Returns what went, even when some removal failed, with the failures.
    pub async fn delete_unused(&self, wanted: &[String]) -> (Freed, Vec<ImageGcError>) {
        let mut records = self.records.lock().await;
        let now = Instant::now();
        let candidates = match self.detect(&mut records, wanted, now).await {
            Ok(c) => c,
            Err(e) => return (Freed::default(), vec![e]),
        };
        let mut errors = Vec::new();
        let freed = self
            .free(
                &mut records,
                &old_enough(&candidates, &self.policy, now),
                u64::MAX,
                &mut errors,
            )
            .await;
        (freed, errors)
    }

    /// Lists images and containers and updates `records`; the candidates in order.
    async fn detect(
        &self,
        records: &mut Records,
        wanted: &[String],
        now: Instant,
    ) -> Result<Vec<Candidate>, ImageGcError> {
        let images = self
            .runtime
            .list_images()
            .await
            .map_err(|source| ImageGcError::Runtime {
                method: Method::ListImages,
                source,
            })?;
        let containers =
            self.runtime
                .list_containers(None)
                .await
                .map_err(|source| ImageGcError::Runtime {
                    method: Method::ListContainers,
                    source,
                })?;
        let sandbox = self.runtime.sandbox_image().await;
        let in_use = InUse::new(
            &containers,
            wanted.iter().map(String::as_str).chain(sandbox.as_deref()),
        );
        Ok(records.detect(&images, &in_use, now))
    }

    /// Removes `candidates` in order until `goal` bytes are freed; failures go to `errors`.
    async fn free(
        &self,
        records: &mut Records,
        candidates: &[Candidate],
        goal: u64,
        errors: &mut Vec<ImageGcError>,
    ) -> Freed {
        let mut freed = Freed::default();
        for c in candidates {
            if freed.bytes >= goal {
                break;
            }
            match self.remove(records, c, REASON_SPACE).await {
                Ok(()) => {
                    freed.images.push(c.id.clone());
                    freed.bytes = freed.bytes.saturating_add(c.record.size);
                }
                Err(e) => errors.push(e),
            }
        }
        freed
    }

    async fn remove(
        &self,
        records: &mut Records,
        c: &Candidate,
        reason: &'static str,
    ) -> Result<(), ImageGcError> {
        info!(image = %c.id, size = c.record.size, reason, "removing unused image");
        self.runtime
            .remove_image(&c.id)
            .await
            .map_err(|source| ImageGcError::Remove {
                id: c.id.clone(),
                size: c.record.size,
                source,
            })?;
        records.forget(&c.id);
        if let Some(m) = &self.metrics {
            m.collected.with_label_values(&[reason]).inc();
        }
        Ok(())
    }

    /// The runtime's image filesystem and its usage.
    async fn image_fs(&self) -> Result<(PathBuf, FsUsage), ImageGcError> {
        let filesystems =
            self.runtime
                .image_fs_info()
                .await
                .map_err(|source| ImageGcError::Runtime {
                    method: Method::ImageFsInfo,
                    source,
                })?;
        let path = filesystems
            .into_iter()
            .map(|f| PathBuf::from(f.mountpoint))
            .find(|p| p.is_absolute())
            .ok_or(ImageGcError::NoImageFs)?;
        let stat = Arc::clone(&self.stat);
        let at = path.clone();
        let usage = tokio::task::spawn_blocking(move || stat(&at))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|source| ImageGcError::Statvfs {
                path: path.clone(),
                source,
            })?;
        Ok((path, usage))
    }

    fn node_event(&self, reason: &str, message: &str) {
        if let Some((recorder, node)) = &self.recorder {
            recorder.record(&node_reference(node), EventType::Warning, reason, message);
        }
    }
}

/// `Ok` without failures; else the first failure with their count.
fn collect_errors(mut errors: Vec<ImageGcError>, freed: u64) -> Result<(), ImageGcError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        failed => Err(ImageGcError::Removals {
            failed,
            freed,
            first: Box::new(errors.remove(0)),
        }),
    }
}

#[cfg(test)]
mod tests;
