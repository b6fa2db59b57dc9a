//! What the local API serves: the published pods (read from the status manager's pod list),
//! the recorded events, the agent's health checks, the node's conditions and the metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::status::manager::PodList;

/// The name of the check that is always there and always healthy (as upstream's `ping`).
pub const PING: &str = "ping";

/// Pods by UID, each with its latest published status, plus the health checks.
///
/// Cloning is cheap and clones share the state. Every method holds a lock only for a map
/// operation (and a clone), never across an `.await` or a health check's callback.
#[derive(Clone, Default)]
pub struct StatusStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    pods: PodList,
    health: HealthState,
    events: crate::record::Events,
    node_conditions: RwLock<Vec<k8s_openapi::api::core::v1::NodeCondition>>,
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

impl fmt::Debug for StatusStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusStore")
            .field("pods", &self.inner.pods)
            .field("health", &self.inner.health)
            .finish()
    }
}

impl StatusStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that serves these pods on `/pods` and these events on `/events`.
    #[must_use]
    pub fn with(pods: PodList, events: crate::record::Events) -> Self {
        Self {
            inner: Arc::new(Inner {
                pods,
                events,
                ..Inner::default()
            }),
        }
    }

    /// Events recorded about pods and the node (served on `/events`).
    #[must_use]
    pub fn events(&self) -> &crate::record::Events {
        &self.inner.events
    }

    /// Makes `/metrics` serve these metrics (the first call wins).
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    #[must_use]
    pub fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.inner.metrics.get()
    }

    /// Replaces the node's conditions (MemoryPressure, DiskPressure, PIDPressure).
    pub fn set_node_conditions(&self, conditions: Vec<k8s_openapi::api::core::v1::NodeCondition>) {
        *self
            .inner
            .node_conditions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = conditions;
    }

    #[must_use]
    pub fn node_conditions(&self) -> Vec<k8s_openapi::api::core::v1::NodeCondition> {
        self.inner
            .node_conditions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The published pods (served on `/pods`, counted on `/metrics`).
    #[must_use]
    pub fn pods(&self) -> &PodList {
        &self.inner.pods
    }

    /// The agent's health checks (`/healthz`).
    #[must_use]
    pub fn health(&self) -> &HealthState {
        &self.inner.health
    }
}

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
#[derive(Default)]
pub struct HealthState {
    checks: RwLock<BTreeMap<String, Check>>,
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
