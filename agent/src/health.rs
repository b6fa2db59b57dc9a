//! The agent's health checks, served on `/healthz` (upstream's healthz format, see
//! [`crate::server`]). Their owners (the PLEG, the agent's wiring) register or set them; the
//! local API only evaluates them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

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

#[cfg(test)]
mod tests {
    use super::*;

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
