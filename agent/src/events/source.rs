//! Choosing where kernel events come from: the BPF programs, or, when they cannot load,
//! the polling fallback. The fallback is never silent: the failed step and its cause are
//! logged as a warning, and every event it yields says `source: poll`.

pub use super::SourceChoice;
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

/// What [`select`] picked.
#[derive(Debug, PartialEq, Eq)]
pub enum Selected<T, E> {
    /// BPF loaded: its running form.
    Bpf(T),
    /// The polling source; `bpf_failure` is why BPF is not used when it was tried (`auto`),
    /// `None` when polling was asked for.
    Poll { bpf_failure: Option<E> },
}

/// Decides the source from the choice and the outcome of loading BPF, which `load_bpf`
/// performs and which is tried only when the choice allows BPF: `poll` never tries it,
/// `bpf` fails with the loading error, `auto` falls back to polling with it.
///
/// # Errors
/// The loading error, for [`SourceChoice::Bpf`].
pub fn select<T, E>(
    choice: SourceChoice,
    load_bpf: impl FnOnce() -> Result<T, E>,
) -> Result<Selected<T, E>, E> {
    match choice {
        SourceChoice::Poll => Ok(Selected::Poll { bpf_failure: None }),
        SourceChoice::Bpf => load_bpf().map(Selected::Bpf),
        SourceChoice::Auto => Ok(match load_bpf() {
            Ok(t) => Selected::Bpf(t),
            Err(e) => Selected::Poll {
                bpf_failure: Some(e),
            },
        }),
    }
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
    // A watched cgroup that cannot be read is not a reason to poll instead: it fails
    // whatever the choice.
    let roots = if choice == SourceChoice::Poll {
        Vec::new()
    } else {
        root_ids(spec)?
    };
    let fallback_reason = match select(choice, || {
        start_bpf(spec, &roots, tx.clone(), cancel, tracker)
    })? {
        Selected::Bpf(running) => return Ok(running),
        Selected::Poll { bpf_failure: None } => {
            warn!(
                "polling event source requested: polling every {:?}: DEGRADED (events late, exit codes unknown)",
                spec.poll_interval
            );
            "polling source requested".to_owned()
        }
        Selected::Poll {
            bpf_failure: Some(e),
        } => {
            let reason = crate::error::full_text(&e);
            warn!(
                "{reason}; falling back to polling every {:?}: DEGRADED (events late, exit codes unknown)",
                spec.poll_interval
            );
            reason
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
        fallback_reason: Some(fallback_reason),
    })
}

/// The watched roots' cgroup ids and levels.
fn root_ids(spec: &SourceSpec) -> Result<Vec<(u64, u32)>, SourceError> {
    spec.roots
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
        .collect()
}

fn start_bpf(
    spec: &SourceSpec,
    roots: &[(u64, u32)],
    tx: mpsc::Sender<Event>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<RunningSource, SourceError> {
    let watch = WatchSpec {
        roots: if spec.watch_all {
            Vec::new()
        } else {
            roots.to_vec()
        },
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// `select` with a BPF load that ends as `outcome`; also whether the load was tried.
    fn pick(
        choice: SourceChoice,
        outcome: Result<&'static str, &'static str>,
    ) -> (
        Result<Selected<&'static str, &'static str>, &'static str>,
        bool,
    ) {
        let tried = Cell::new(false);
        let got = select(choice, || {
            tried.set(true);
            outcome
        });
        (got, tried.get())
    }

    #[test]
    fn auto_uses_bpf_and_falls_back_to_polling_with_the_failure() {
        assert_eq!(
            pick(SourceChoice::Auto, Ok("probe")),
            (Ok(Selected::Bpf("probe")), true)
        );
        assert_eq!(
            pick(SourceChoice::Auto, Err("loading the programs: EPERM")),
            (
                Ok(Selected::Poll {
                    bpf_failure: Some("loading the programs: EPERM")
                }),
                true
            )
        );
    }

    #[test]
    fn bpf_refuses_to_degrade() {
        assert_eq!(
            pick(SourceChoice::Bpf, Ok("probe")),
            (Ok(Selected::Bpf("probe")), true)
        );
        assert_eq!(
            pick(SourceChoice::Bpf, Err("loading the programs: EPERM")),
            (Err("loading the programs: EPERM"), true)
        );
    }

    #[test]
    fn poll_never_loads_bpf() {
        for outcome in [Ok("probe"), Err("EPERM")] {
            assert_eq!(
                pick(SourceChoice::Poll, outcome),
                (Ok(Selected::Poll { bpf_failure: None }), false)
            );
        }
    }

    #[test]
    fn choices_are_spelled_as_the_setting_and_the_flag() {
        for c in [SourceChoice::Auto, SourceChoice::Bpf, SourceChoice::Poll] {
            let json = serde_json::to_value(c).unwrap();
            assert_eq!(json, c.as_str());
            assert_eq!(serde_json::from_value::<SourceChoice>(json).unwrap(), c);
            assert_eq!(
                <SourceChoice as clap::ValueEnum>::from_str(c.as_str(), false).unwrap(),
                c
            );
        }
    }
}
