//! The worker's loop: admission (a rejected pod, or one terminal in the API server, is never
//! started), eviction hold, one sync at a time, and what wakes the worker between syncs
//! (pokes, spec changes, eviction, removal, retry and resync timers).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::info;

use super::Worker;
use crate::model::format_pod;
use crate::pods::admission::{Admission, Rejection};
use crate::pods::objects::PodRegistration;
use crate::runtime::ContainerRuntime;

/// Parts of `sync_frequency` in one step of the resync grid.
const RESYNC_GRID_STEPS: u32 = 6;

/// When a periodic resync falls due: `period` after `now`, rounded up to the grid of
/// `period / 6` steps counted from `epoch`. Every worker uses the same grid, so at idle the
/// pods' resyncs wake the agent together a few times a period instead of one pod at a time
/// (110 pods at the default 1 min: 6 wakeups a minute instead of 110). A resync comes at
/// most a sixth of the period late; upstream spreads its resyncs over 1 to 1.5 periods.
pub(super) fn resync_deadline(
    epoch: tokio::time::Instant,
    now: tokio::time::Instant,
    period: Duration,
) -> tokio::time::Instant {
    let due = now + period;
    let step = (period / RESYNC_GRID_STEPS).as_nanos();
    if step == 0 || due < epoch {
        return due;
    }
    let since = due.duration_since(epoch).as_nanos();
    let on_grid = since.div_ceil(step) * step;
    u64::try_from(on_grid).map_or(due, |n| epoch + Duration::from_nanos(n))
}

impl<R: ContainerRuntime + 'static> Worker<R> {
    pub(super) async fn run(mut self, admission: Admission) {
        // Admission (decided by the manager): a rejected pod is never started; it shows as
        // Failed until it is gone. Neither is a pod the API server shows terminal.
        match admission {
            Admission::Admitted => {}
            Admission::Rejected(rejection) => {
                self.run_rejected(&rejection).await;
                return;
            }
            Admission::Terminal => {
                self.run_terminal().await;
                return;
            }
        }
        // The configMaps and secrets the pod refers to are watched from now until the
        // worker ends (cluster mode).
        let mut registration = self.ctx.host.objects.as_ref().map(|objects| {
            PodRegistration::new(Arc::clone(objects), Arc::clone(&self.spec.borrow()))
        });
        // Whether the last wait ended by the `sync_frequency` timer alone.
        let mut timer_only = false;
        loop {
            if self.terminate.is_cancelled() {
                let pod = Arc::clone(&self.spec.borrow());
                self.terminate_pod(&pod).await;
                return;
            }
            let pod = Arc::clone(&self.spec.borrow_and_update());
            if let Some(registration) = registration.as_mut() {
                registration.update(&pod);
            }
            if self.held_down_by_eviction(&pod).await {
                // Still under pressure (or evicted for good): stay down, wake on pokes or
                // at the next sync.
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = self.terminate.cancelled() => {}
                    _ = self.spec.changed() => {}
                    () = self.poke.notified() => {}
                    () = tokio::time::sleep(self.ctx.timing.sync_frequency) => {}
                }
                continue;
            }
            let waits = std::mem::take(
                &mut *self
                    .kernel_waits
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let quiet = timer_only && waits.is_empty() && self.ctx.timing.runtime_changes_poke;
            // The pod's removal (or the agent's shutdown) drops a sync in progress: a large
            // pod's first sync starts containers for minutes, none of which is wanted once
            // the pod is gone. Every await in a sync is a runtime call or a short sleep, and
            // `terminate_pod` observes the runtime afresh, so dropping one loses nothing.
            let (terminate, cancel) = (self.terminate.clone(), self.cancel.clone());
            let synced = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = terminate.cancelled() => {
                    info!(pod = %format_pod(&pod), "pod removed during its sync: dropping the rest of the sync");
                    continue;
                }
                synced = async {
                    if quiet {
                        self.sync_from_last_observation(&pod).await
                    } else {
                        self.sync(&pod, &waits).await
                    }
                } => synced,
            };
            let next = match synced {
                Ok(next) => {
                    self.sync_failures = 0;
                    self.last_sync_error = None;
                    next
                }
                Err(e) => Some(self.sync_failed(&pod, &e)),
            };
            let recheck = self.recheck.take();
            let periodic = next.is_none() && recheck.is_none();
            let wait = next
                .unwrap_or(self.ctx.timing.sync_frequency)
                .min(self.ctx.timing.sync_frequency)
                .min(recheck.unwrap_or(Duration::MAX));
            let now = tokio::time::Instant::now();
            let deadline = if periodic {
                resync_deadline(
                    self.ctx.timing.resync_epoch,
                    now,
                    self.ctx.timing.sync_frequency,
                )
            } else {
                now + wait
            };
            timer_only = false;
            // After a failed sync, pokes (the PLEG, probes) wait for the retry: a sandbox
            // that fails to start leaves exits of its own in the pod's cgroup, and those
            // must not bring the retry forward. An eviction, a spec change or the pod's
            // removal still wake the worker at once.
            let hold_pokes = self.sync_failures > 0;
            loop {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = self.terminate.cancelled() => {}
                    _ = self.spec.changed() => {}
                    () = self.poke.notified() => {
                        if hold_pokes && !self.eviction_pending() {
                            continue;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => timer_only = periodic,
                }
                break;
            }
        }
    }

    /// A pod rejected at admission: shown as `Failed`, never started, terminated when it
    /// is removed.
    async fn run_rejected(&mut self, rejection: &Rejection) {
        let first = Arc::clone(&self.spec.borrow());
        self.reject(&first, rejection.reason, &rejection.message)
            .await;
        self.wait_for_removal().await;
    }

    /// A pod whose phase in the API server is terminal when the worker starts (it completed,
    /// or was rejected or evicted, before the agent restarted): as upstream's pod workers,
    /// taken as terminated. Never started again: whatever of it still runs is stopped, and
    /// it keeps the status it has (no sandbox, so nothing newer to show). Terminated when it
    /// is removed.
    async fn run_terminal(&mut self) {
        let pod = Arc::clone(&self.spec.borrow());
        let status = pod.status.clone().unwrap_or_default();
        info!(
            pod = %format_pod(&pod),
            phase = status.phase.as_deref().unwrap_or_default(),
            "pod is terminal in the API server: not running it again"
        );
        self.stop_in_place(&pod).await;
        self.ctx
            .outputs
            .statuses
            .publish(crate::model::pod_uid(&pod), (*pod).clone());
        self.status = Some(status);
        self.wait_for_removal().await;
    }

    /// Waits until the pod is removed, then terminates it; returns at once on shutdown.
    async fn wait_for_removal(&mut self) {
        tokio::select! {
            () = self.cancel.cancelled() => return,
            () = self.terminate.cancelled() => {}
        }
        let pod = Arc::clone(&self.spec.borrow());
        self.terminate_pod(&pod).await;
    }

    /// Carries out an eviction the eviction manager asked for, and says whether the pod
    /// stays down: it was evicted and the node is still under that pressure (or it was
    /// evicted for good, see `Eviction::keeps_down`, API pods included). Once the pressure
    /// is over, a static pod starts again with a fresh status.
    async fn held_down_by_eviction(&mut self, pod: &Pod) -> bool {
        let requested = self
            .eviction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(e) = requested {
            self.evict(pod, e).await;
        }
        let Some(evicted) = &self.evicted else {
            return false;
        };
        // An API pod's eviction is final (`Eviction::keeps_down`), as upstream's: its phase
        // in the API server is `Failed`, and its owner makes a replacement.
        if evicted.keeps_down(&self.ctx.signals.conditions.borrow(), pod) {
            return true;
        }
        info!(pod = %format_pod(pod), "node pressure is over: starting the evicted pod again");
        self.evicted = None;
        self.status = None;
        false
    }

    /// The eviction manager asked for an eviction not carried out yet.
    fn eviction_pending(&self) -> bool {
        self.eviction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_land_on_a_shared_grid_at_most_a_step_late() {
        let epoch = tokio::time::Instant::now();
        let period = Duration::from_secs(60);
        let step = Duration::from_secs(10);
        // Workers that went to sleep at different moments resync together.
        let a = resync_deadline(epoch, epoch + Duration::from_millis(1_300), period);
        let b = resync_deadline(epoch, epoch + Duration::from_millis(7_900), period);
        assert_eq!(a, epoch + Duration::from_secs(70));
        assert_eq!(a, b);
        // Never early, never more than one step late.
        for ms in [0, 1, 9_999, 10_000, 10_001, 123_456] {
            let now = epoch + Duration::from_millis(ms);
            let d = resync_deadline(epoch, now, period);
            assert!(
                d >= now + period && d < now + period + step,
                "{ms} ms: {d:?}"
            );
            assert_eq!(d.duration_since(epoch).as_nanos() % step.as_nanos(), 0);
        }
        // On the grid already: no added delay.
        let on = epoch + Duration::from_secs(20);
        assert_eq!(resync_deadline(epoch, on, period), on + period);
    }

    #[test]
    fn tiny_periods_are_not_rounded() {
        let epoch = tokio::time::Instant::now();
        let now = epoch + Duration::from_nanos(7);
        let period = Duration::from_nanos(5);
        assert_eq!(resync_deadline(epoch, now, period), now + period);
    }
}
