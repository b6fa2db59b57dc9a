//! Choosing where kernel events come from: the BPF programs, or, when they cannot load,
//! the polling fallback. The fallback is never silent: the failed step and its cause are
//! logged as a warning, and every event it yields says `source: poll`.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::poll::{PollConfig, PollSource};
use super::{Event, Source};
use crate::bpf::{self, BpfError, KernelProbe, WatchSpec};
use crate::cgroups::{CgroupError, CgroupVersion, Hierarchy};

/// Which source to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// BPF, falling back to polling (with a warning) when BPF cannot load.
    #[default]
    Auto,
    /// BPF only: fail when it cannot load.
    Bpf,
    /// Polling only (degraded: late, exit codes unknown).
    Poll,
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    pub hierarchy: Hierarchy,
    /// Watched subtrees, as paths under the hierarchy mount ("/kubepods").
    pub roots: Vec<String>,
    /// Report every cgroup (tracing the whole machine); `roots` are then only indexed.
    pub watch_all: bool,
    pub pressure_window: Duration,
    /// See [`crate::bpf::WatchSpec::wakeup_interval`].
    pub wakeup_interval: Duration,
    pub poll_interval: Duration,
    pub proc_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("watched cgroup {root:?}")]
    Root {
        root: String,
        #[source]
        source: CgroupError,
    },
    #[error("BPF event source unavailable")]
    Bpf(#[source] BpfError),
}

/// The running source. Keep it alive as long as events are wanted: dropping it detaches
/// the BPF programs.
pub struct RunningSource {
    pub source: Source,
    /// The attached programs (BPF only).
    pub probe: Option<KernelProbe>,
    pub losses: Option<std::sync::Arc<bpf::LossCounters>>,
    /// Why BPF is not in use, when the fallback runs.
    pub fallback_reason: Option<String>,
}

/// Starts the chosen source; its task sends into `tx` until `cancel` fires.
pub fn start(
    choice: SourceChoice,
    spec: &SourceSpec,
    tx: mpsc::Sender<Event>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<RunningSource, SourceError> {
    let fallback_reason = match choice {
        SourceChoice::Poll => Some("polling source requested".to_owned()),
        SourceChoice::Bpf | SourceChoice::Auto => {
            match start_bpf(spec, tx.clone(), cancel, tracker) {
                Ok(running) => return Ok(running),
                Err(SourceError::Bpf(e)) if choice == SourceChoice::Auto => {
                    let reason = crate::error::full_text(&e);
                    warn!(
                        "BPF event source unavailable ({reason}); falling back to polling every {:?}: DEGRADED (events late, exit codes unknown)",
                        spec.poll_interval
                    );
                    Some(reason)
                }
                Err(e) => return Err(e),
            }
        }
    };
    let poll = PollSource::new(PollConfig {
        hierarchy: spec.hierarchy.clone(),
        roots: if spec.watch_all {
            vec!["/".to_owned()]
        } else {
            spec.roots.clone()
        },
        interval: spec.poll_interval,
        proc_root: spec.proc_root.clone(),
        kmsg: Some(PathBuf::from("/dev/kmsg")),
    });
    let cancel = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = poll.run(tx, cancel).await {
            warn!(error = %e, cause = %crate::error::error_chain(&e), "polling event source stopped");
        }
    });
    Ok(RunningSource {
        source: Source::Poll,
        probe: None,
        losses: None,
        fallback_reason,
    })
}

fn start_bpf(
    spec: &SourceSpec,
    tx: mpsc::Sender<Event>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<RunningSource, SourceError> {
    let roots = spec
        .roots
        .iter()
        .map(|root| {
            let id = spec
                .hierarchy
                .id_of(root)
                .map_err(|source| SourceError::Root {
                    root: root.clone(),
                    source,
                })?;
            Ok((id, Hierarchy::level_of(root)))
        })
        .collect::<Result<Vec<_>, SourceError>>()?;
    let watch = WatchSpec {
        roots: if spec.watch_all { Vec::new() } else { roots },
        watch_all: spec.watch_all,
        hierarchy_id: spec.hierarchy.hierarchy_id,
        cgroup_v2: spec.hierarchy.version == CgroupVersion::V2,
        pressure_window: spec.pressure_window,
        wakeup_interval: spec.wakeup_interval,
        ..WatchSpec::default()
    };
    let (probe, reader) = bpf::load(&watch).map_err(SourceError::Bpf)?;
    info!(
        roots = ?spec.roots,
        watch_all = spec.watch_all,
        degraded = ?probe.degraded,
        "BPF programs attached"
    );
    let losses = reader.losses();
    let cancel = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = reader.run(tx, cancel).await {
            warn!(error = %e, cause = %crate::error::error_chain(&e), "kernel event reader stopped");
        }
    });
    Ok(RunningSource {
        source: Source::Bpf,
        probe: Some(probe),
        losses: Some(losses),
        fallback_reason: None,
    })
}
