//! Container log rotation (upstream's `ContainerLogManager`).
//!
//! Every `containerLogMonitorInterval` the rotator lists the running containers and, with
//! at most `containerLogMaxWorkers` at once, looks at each one's CRI log file. A file of
//! `containerLogMaxSize` or more is rotated, in upstream's order:
//!
//! 1. leftovers of an interrupted pass go: `*.tmp` files, and a rotated file whose `.gz`
//!    already exists;
//! 2. the oldest rotated files beyond `containerLogMaxFiles - 2` are deleted (room for the
//!    file rotated now and the current one);
//! 3. the rotated files that remain are compressed with gzip (`<file>.gz`, written as
//!    `<file>.gz.tmp` first), so only the file rotated next stays uncompressed;
//! 4. `<log>` is renamed `<log>.<YYYYMMDD-HHMMSS>` (UTC) and the runtime is asked to reopen
//!    the container's log (CRI `ReopenContainerLog`); when it cannot, the rename is undone
//!    so the container keeps writing to `<log>`.
//!
//! A log file that is missing is reopened, as upstream does. Failures are logged per
//! container and retried the next interval; nothing here stops the agent.
//!
//! [`plan`] decides steps 1 to 4 from a directory listing (pure, unit-tested);
//! [`LogRotator`] reads the listing and applies the plan.
//!
//! A container's log path never changes, so the rotator asks the runtime for it (CRI
//! `ContainerStatus`) once per container and keeps it while the container runs. Upstream
//! asks again for every running container at every interval: 11 calls a second at 110
//! pods, which cost containerd more CPU at idle than everything else bpflet asks of it.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use jiff::Timestamp;
use prometheus::{IntCounter, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ContainerLogConfig;
use crate::pods::labels::AgentMark;
use crate::runtime::{ContainerRuntime, RuntimeError, api};

/// Why one container's log was not rotated.
#[derive(Debug, thiserror::Error)]
pub enum LogRotateError {
    #[error("container {container}: {method} failed")]
    Runtime {
        container: String,
        method: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("container {container}: {op} {}", path.display())]
    Io {
        container: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {container}: the log rotation task failed")]
    Task {
        container: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What to do with one container's log directory; file names relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// Leftovers of an interrupted pass and rotated files beyond the limit, in that order.
    pub remove: Vec<String>,
    /// Rotated files to gzip (`<name>` becomes `<name>.gz`), oldest first.
    pub compress: Vec<String>,
    /// The name the current log is renamed to.
    pub rotate_to: String,
}

const COMPRESS_SUFFIX: &str = ".gz";
const TMP_SUFFIX: &str = ".tmp";
/// Upstream's `20060102-150405`.
const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";

/// The plan for log file `log` (a name in its directory) of `size` bytes, given the names
/// in its directory: `None` below `max_size`, or when a file rotated at `now` already
/// exists (two rotations in one second; the next interval rotates).
#[must_use]
pub fn plan(
    log: &str,
    size: u64,
    entries: &[String],
    max_size: u64,
    max_files: u32,
    now: Timestamp,
) -> Option<RotationPlan> {
    if size < max_size {
        return None;
    }
    let prefix = format!("{log}.");
    let mut ours: Vec<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|e| e.starts_with(&prefix))
        .collect();
    ours.sort_unstable();
    let mut remove = Vec::new();
    let mut rotated = Vec::new();
    for &e in &ours {
        let leftover = e.ends_with(TMP_SUFFIX)
            || (!e.ends_with(COMPRESS_SUFFIX)
                && ours.contains(&format!("{e}{COMPRESS_SUFFIX}").as_str()));
        if leftover {
            remove.push(e.to_owned());
        } else {
            rotated.push(e);
        }
    }
    // Room for the file rotated now and the current one.
    let keep = usize::try_from(max_files.saturating_sub(2)).unwrap_or(usize::MAX);
    let excess = rotated.len().saturating_sub(keep);
    remove.extend(rotated.drain(..excess).map(str::to_owned));
    // The file rotated now stays as it is until the next rotation: the newest rotated file
    // is the only uncompressed one.
    let compress = rotated
        .iter()
        .filter(|e| !e.ends_with(COMPRESS_SUFFIX))
        .map(|&e| e.to_owned())
        .collect();
    let rotate_to = format!("{prefix}{}", now.strftime(TIMESTAMP_FORMAT));
    if ours.iter().any(|e| e.starts_with(&rotate_to)) {
        return None;
    }
    Some(RotationPlan {
        remove,
        compress,
        rotate_to,
    })
}

/// `bpflet_container_log_rotations_total` and its failures (upstream exports none).
#[derive(Clone, Debug)]
pub struct RotationMetrics {
    pub rotations: IntCounter,
    pub failures: IntCounter,
}

impl RotationMetrics {
    /// New counters, registered in `registry`.
    ///
    /// # Errors
    /// A metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let rotations = IntCounter::new(
            "bpflet_container_log_rotations_total",
            "Container log files rotated (renamed and reopened by the runtime).",
        )?;
        let failures = IntCounter::new(
            "bpflet_container_log_rotation_failures_total",
            "Container log rotations that failed (retried the next interval).",
        )?;
        registry.register(Box::new(rotations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self {
            rotations,
            failures,
        })
    }
}

/// Rotates the logs of the runtime's running containers.
pub struct LogRotator<R> {
    runtime: Arc<R>,
    /// Only containers carrying it are rotated: another client of the runtime (an upstream
    /// kubelet) rotates its own logs.
    mark: AgentMark,
    config: ContainerLogConfig,
    metrics: Option<RotationMetrics>,
    /// The log path of each running container seen (empty: the container has none), kept
    /// while it is listed as running.
    log_paths: Mutex<HashMap<String, PathBuf>>,
}

impl<R: ContainerRuntime + 'static> LogRotator<R> {
    pub fn new(runtime: Arc<R>, mark: AgentMark, config: ContainerLogConfig) -> Self {
        Self {
            runtime,
            mark,
            config,
            metrics: None,
            log_paths: Mutex::new(HashMap::new()),
        }
    }

    #[must_use]
    pub fn with_metrics(mut self, metrics: RotationMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks every `monitor_interval` until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let rotated = self.rotate_all().await;
            if rotated > 0 {
                debug!(rotated, "container logs rotated");
            }
        }
    }

    /// One pass over the running containers; returns how many logs were rotated.
    pub async fn rotate_all(&self) -> usize {
        let running = api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning.into(),
            }),
            label_selector: self.mark.selector(None),
            ..api::ContainerFilter::default()
        };
        let containers = match self.runtime.list_containers(Some(running)).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "log rotation: cannot list the running containers");
                return 0;
            }
        };
        {
            let running: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
            self.paths().retain(|id, _| running.contains(id.as_str()));
        }
        let workers = usize::try_from(self.config.max_workers).unwrap_or(1).max(1);
        let results: Vec<Result<bool, LogRotateError>> = futures::stream::iter(containers)
            .map(|c| async move { self.rotate_container(&c.id).await })
            .buffer_unordered(workers)
            .collect()
            .await;
        let mut rotated = 0;
        for r in results {
            match r {
                Ok(true) => {
                    rotated += 1;
                    if let Some(m) = &self.metrics {
                        m.rotations.inc();
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.failures.inc();
                    }
                    warn!(error = %crate::error::full_text(&e), "container log rotation failed");
                }
            }
        }
        rotated
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, HashMap<String, PathBuf>> {
        self.log_paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Rotates container `id`'s log when it is due; `Ok(true)` when it was rotated.
    async fn rotate_container(&self, id: &str) -> Result<bool, LogRotateError> {
        let rt_err = |method, source| LogRotateError::Runtime {
            container: id.to_owned(),
            method,
            source,
        };
        let known = self.paths().get(id).cloned();
        let log = match known {
            Some(log) => log,
            None => {
                let status = match self.runtime.container_status(id).await {
                    Ok(s) => s,
                    // Gone since the listing.
                    Err(e) if e.is_not_found() => return Ok(false),
                    Err(e) => return Err(rt_err("ContainerStatus", e)),
                };
                let log = PathBuf::from(&status.log_path);
                self.paths().insert(id.to_owned(), log.clone());
                log
            }
        };
        if log.as_os_str().is_empty() {
            return Ok(false);
        }
        let config = self.config;
        let container = id.to_owned();
        let prepared = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || prepare(&container, &log, config))
                .await
                .map_err(|source| LogRotateError::Task {
                    container: id.to_owned(),
                    source,
                })??
        };
        let rotated = match prepared {
            Prepared::Nothing => return Ok(false),
            Prepared::Missing => {
                // Upstream's answer to a log someone removed: the runtime makes it anew.
                self.runtime
                    .reopen_container_log(id)
                    .await
                    .map_err(|e| rt_err("ReopenContainerLog", e))?;
                return Ok(false);
            }
            Prepared::Rotated(to) => to,
        };
        if let Err(e) = self.runtime.reopen_container_log(id).await {
            // The runtime still writes to the renamed file: give it its name back.
            if let Err(undo) = std::fs::rename(&rotated, &log) {
                warn!(container = id, from = %rotated.display(), to = %log.display(), error = %undo, "cannot undo a log rotation");
            }
            return Err(rt_err("ReopenContainerLog", e));
        }
        debug!(container = id, log = %log.display(), rotated = %rotated.display(), "container log rotated");
        Ok(true)
    }
}

enum Prepared {
    Nothing,
    Missing,
    /// Renamed to this path.
    Rotated(PathBuf),
}

/// Steps 1 to 3 of the plan and the rename, on the file system (blocking).
fn prepare(
    container: &str,
    log: &Path,
    config: ContainerLogConfig,
) -> Result<Prepared, LogRotateError> {
    let io_err = |op, path: &Path, source| LogRotateError::Io {
        container: container.to_owned(),
        op,
        path: path.to_owned(),
        source,
    };
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Prepared::Missing),
        Err(e) => return Err(io_err("cannot read", log, e)),
    };
    if size < config.max_size_bytes {
        return Ok(Prepared::Nothing);
    }
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Ok(Prepared::Nothing);
    };
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io_err("cannot list", dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let Some(plan) = plan(
        name,
        size,
        &entries,
        config.max_size_bytes,
        config.max_files,
        Timestamp::now(),
    ) else {
        return Ok(Prepared::Nothing);
    };
    for f in &plan.remove {
        let path = dir.join(f);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("cannot remove", &path, e));
            }
            _ => {}
        }
    }
    for f in &plan.compress {
        let path = dir.join(f);
        compress(&path).map_err(|(op, p, e)| io_err(op, &p, e))?;
    }
    let to = dir.join(&plan.rotate_to);
    std::fs::rename(log, &to).map_err(|e| io_err("cannot rename", log, e))?;
    Ok(Prepared::Rotated(to))
}

/// Writes `<path>.gz` (through `<path>.gz.tmp`) and removes `path`.
fn compress(path: &Path) -> Result<(), (&'static str, PathBuf, io::Error)> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(COMPRESS_SUFFIX);
    let gz = PathBuf::from(gz_name);
    let mut tmp_name = gz.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let mut input = std::fs::File::open(path).map_err(|e| ("cannot open", path.to_owned(), e))?;
    let output = std::fs::File::create(&tmp).map_err(|e| ("cannot create", tmp.clone(), e))?;
    let mut encoder =
        flate2::write::GzEncoder::new(io::BufWriter::new(output), flate2::Compression::default());
    let written = io::copy(&mut input, &mut encoder)
        .and_then(|_| encoder.finish())
        .and_then(|mut w| w.flush());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(("cannot compress into", tmp, e));
    }
    std::fs::rename(&tmp, &gz).map_err(|e| ("cannot rename", tmp.clone(), e))?;
    std::fs::remove_file(path).map_err(|e| ("cannot remove", path.to_owned(), e))
}
