//! The agent's health checks, served on `/healthz` (upstream's healthz format, see
//! [`crate::server`]). Their owners (the PLEG, the agent's wiring) register or set them; the
//! local API only evaluates them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The name of the check that is always there and always healthy (as upstream's `ping`).
pub const PING: &str = "ping";

type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Check {
    /// Evaluated on every request (e.g. "last relist within the threshold").
    Probe(CheckFn),
    /// Pushed by its owner.
    Fixed(Result<(), String>),
}

/// One check's verdict: `Err` carries why it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub result: Result<(), String>,
}

impl CheckResult {
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.result.is_ok()
    }
}

/// Named health checks, e.g. `pleg` (last relist within the threshold), `runtime`,
/// `syncloop`. A check is either a callback evaluated on each request ([`Self::register`])
/// or a verdict its owner pushes ([`Self::set`]). [`PING`] is always present and healthy.
///
/// Cloning is cheap and clones share the checks: owners register and set checks, the local
/// API evaluates them.
#[derive(Clone, Default)]
pub struct HealthState {
    checks: Arc<RwLock<BTreeMap<String, Check>>>,
}

impl fmt::Debug for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checks = self.checks.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list().entries(checks.keys()).finish()
    }
}

impl HealthState {
    /// Adds (or replaces) a check evaluated on every request. The callback must be quick
    /// and must not block: it runs on the server's task.
    pub fn register(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.insert(name.into(), Check::Probe(Arc::new(check)));
    }

    /// Sets a check's verdict (adding the check if needed).
    pub fn set(&self, name: impl Into<String>, result: Result<(), String>) {
        self.insert(name.into(), Check::Fixed(result));
    }

    pub fn set_healthy(&self, name: impl Into<String>) {
        self.set(name, Ok(()));
    }

    pub fn set_unhealthy(&self, name: impl Into<String>, message: impl Into<String>) {
        self.set(name, Err(message.into()));
    }

    pub fn remove(&self, name: &str) {
        self.checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Every check's verdict now: [`PING`] first, then by name.
    #[must_use]
    pub fn evaluate(&self) -> Vec<CheckResult> {
        // Copy the checks out so the callbacks run without the lock.
        let checks: Vec<(String, Check)> = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        let mut results = vec![CheckResult {
            name: PING.to_owned(),
            result: Ok(()),
        }];
        results.extend(
            checks
                .into_iter()
                .filter(|(name, _)| name != PING)
                .map(|(name, check)| CheckResult {
                    result: run(&check),
                    name,
                }),
        );
        results
    }

    /// One check's verdict now; `None` if there is no such check.
    #[must_use]
    pub fn evaluate_one(&self, name: &str) -> Option<CheckResult> {
        if name == PING {
            return Some(CheckResult {
                name: PING.to_owned(),
                result: Ok(()),
            });
        }
        let check = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()?;
        Some(CheckResult {
            name: name.to_owned(),
            result: run(&check),
        })
    }

    fn insert(&self, name: String, check: Check) {
        self.checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, check);
    }
}

fn run(check: &Check) -> Result<(), String> {
    match check {
        Check::Probe(f) => f(),
        Check::Fixed(r) => r.clone(),
    }
}

/// The name of the sync loop's check (`/healthz/syncloop`).
pub const SYNC_LOOP: &str = "syncloop";

/// When the pod manager's loop last began an iteration, and how long it may go without
/// one: upstream's `syncLoopHealthCheck`, which fails once the loop has not been entered
/// for twice `syncFrequency`, at least five minutes. Before the loop's first iteration
/// the check passes (upstream's zero entry time).
///
/// Cloning is cheap and clones share the time: the loop stamps it, the check reads it.
#[derive(Debug, Clone)]
pub struct SyncLoopMonitor {
    entered: Arc<Mutex<Option<Instant>>>,
    bound: Duration,
}

impl SyncLoopMonitor {
    /// The shortest bound, whatever `syncFrequency` is (upstream's).
    pub const MIN_BOUND: Duration = Duration::from_secs(5 * 60);

    /// A monitor for a loop that resyncs every `sync_frequency`.
    #[must_use]
    pub fn new(sync_frequency: Duration) -> Self {
        Self {
            entered: Arc::default(),
            bound: sync_frequency.saturating_mul(2).max(Self::MIN_BOUND),
        }
    }

    /// How long the loop may go without an iteration before the check fails.
    #[must_use]
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The loop begins an iteration now.
    pub fn enter(&self) {
        self.enter_at(Instant::now());
    }

    fn enter_at(&self, now: Instant) {
        *self.entered.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
    }

    /// The check's verdict now.
    ///
    /// # Errors
    /// Why it fails: how long ago the loop last began an iteration.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let entered = *self.entered.lock().unwrap_or_else(PoisonError::into_inner);
        match entered {
            Some(at) if now.saturating_duration_since(at) > self.bound => Err(format!(
                "sync loop took longer than expected: last iteration began {:?} ago \
                 (bound {:?})",
                now.saturating_duration_since(at),
                self.bound
            )),
            _ => Ok(()),
        }
    }

    /// Registers [`SYNC_LOOP`] on `health`, fed by this monitor.
    pub fn register(&self, health: &HealthState) {
        let me = self.clone();
        health.register(SYNC_LOOP, move || me.check());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_loop_check_fails_once_the_loop_stalls_past_its_bound() {
        // syncFrequency 1m: the bound is upstream's floor of 5 minutes.
        let monitor = SyncLoopMonitor::new(Duration::from_secs(60));
        assert_eq!(monitor.bound(), Duration::from_secs(300));
        // 10 minutes: twice syncFrequency.
        assert_eq!(
            SyncLoopMonitor::new(Duration::from_secs(300)).bound(),
            Duration::from_secs(600)
        );
        let t0 = Instant::now();
        // Never entered: healthy, as upstream before its loop starts.
        assert_eq!(monitor.check_at(t0 + Duration::from_secs(3600)), Ok(()));
        monitor.enter_at(t0);
        assert_eq!(monitor.check_at(t0 + Duration::from_secs(300)), Ok(()));
        let stalled = monitor
            .check_at(t0 + Duration::from_secs(301))
            .expect_err("a loop silent for 301 s fails the check");
        assert!(
            stalled.contains("sync loop took longer than expected"),
            "{stalled}"
        );
        // The loop turns again: healthy.
        monitor.enter_at(t0 + Duration::from_secs(302));
        assert_eq!(monitor.check_at(t0 + Duration::from_secs(303)), Ok(()));

        // Through the health state, as `/healthz/syncloop` evaluates it.
        let health = HealthState::default();
        monitor.register(&health);
        monitor.enter_at(
            Instant::now()
                .checked_sub(Duration::from_secs(400))
                .expect("the monotonic clock reaches back 400 s"),
        );
        let result = health.evaluate_one(SYNC_LOOP).expect("the syncloop check");
        assert!(!result.healthy(), "{result:?}");
        monitor.enter();
        assert!(health.evaluate_one(SYNC_LOOP).is_some_and(|r| r.healthy()));
    }

    #[test]
    fn health_checks_ping_first_then_by_name_and_replaceable() {
        let health = HealthState::default();
        health.set_unhealthy("syncloop", "sync loop stalled");
        health.set_healthy("pleg");
        health.set_healthy(PING); // cannot be overridden
        let names: Vec<String> = health.evaluate().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["ping", "pleg", "syncloop"]);
        assert_eq!(
            health.evaluate_one("syncloop").map(|r| r.result),
            Some(Err("sync loop stalled".to_owned()))
        );
        health.register("syncloop", || Ok(()));
        assert!(health.evaluate().iter().all(CheckResult::healthy));
        health.remove("syncloop");
        assert_eq!(health.evaluate_one("syncloop"), None);
    }
}
