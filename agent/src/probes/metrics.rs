//! Probe counters under upstream's names.
//!
//! [`ProbeMetrics`] registers into whichever [`prometheus::Registry`] it is given: the
//! agent gives it the one it serves on `/metrics/probes` alone
//! (`crate::metrics::Metrics::probe_registry`), as upstream.

use prometheus::core::Collector as _;
use prometheus::{IntCounterVec, Opts, Registry};

use super::spec::ProbeKind;
use super::threshold::Outcome;

/// Label names of `prober_probe_total`, in upstream's set (`pod_uid` included, so a static
/// pod recreated under the same name starts new series).
const LABELS: [&str; 6] = [
    "probe_type",
    "result",
    "container",
    "pod",
    "namespace",
    "pod_uid",
];

/// The values of `result`.
const RESULTS: [&str; 3] = ["successful", "failed", "unknown"];

/// `prober_probe_total{probe_type, result, container, pod, namespace, pod_uid}`: probe runs
/// by result. Cheap to clone; clones count into the same series.
#[derive(Debug, Clone)]
pub struct ProbeMetrics {
    probe_total: IntCounterVec,
}

/// Which pod and container a probe belongs to, for labels.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLabels<'a> {
    pub kind: ProbeKind,
    pub container: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub pod_uid: &'a str,
}

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeMetrics {
    /// Counters not yet in any registry (see [`Self::register`]).
    ///
    /// # Panics
    /// Never: the metric name and labels are constants that prometheus accepts.
    #[must_use]
    pub fn new() -> Self {
        let opts = Opts::new(
            "prober_probe_total",
            "Cumulative number of a liveness, readiness or startup probe for a container by result.",
        );
        Self {
            probe_total: IntCounterVec::new(opts, &LABELS)
                .expect("prober_probe_total has a valid name and labels"),
        }
    }

    /// Adds the counters to `registry`.
    ///
    /// # Errors
    /// The registry already has a metric of this name.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.probe_total.clone()))
    }

    /// Counts one run.
    pub fn observe(&self, labels: ProbeLabels<'_>, outcome: &Outcome) {
        self.probe_total
            .with_label_values(&Self::values(labels, outcome.metric_result()))
            .inc();
    }

    /// The count of runs with this result (for tests and the bench); 0 for a series that
    /// does not exist (reading does not create it).
    #[must_use]
    pub fn count(&self, labels: ProbeLabels<'_>, result: &str) -> u64 {
        let want = Self::values(labels, result);
        let families = self.probe_total.collect();
        let found = families
            .iter()
            .flat_map(prometheus::proto::MetricFamily::get_metric)
            .find(|m| {
                m.get_label().iter().all(|pair| {
                    LABELS
                        .iter()
                        .position(|&n| n == pair.name())
                        .is_some_and(|i| want[i] == pair.value())
                })
            });
        // An IntCounter holds a non-negative whole number, exact in an f64 below 2^53.
        found.map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// Drops the probe's series (its pod is gone), so pods that come and go do not grow
    /// the exposition forever.
    pub fn forget(&self, labels: ProbeLabels<'_>) {
        for result in RESULTS {
            // Absent series (never counted) are fine.
            let _ = self
                .probe_total
                .remove_label_values(&Self::values(labels, result));
        }
    }

    fn values<'a>(labels: ProbeLabels<'a>, result: &'a str) -> [&'a str; 6] {
        [
            labels.kind.as_str(),
            result,
            labels.container,
            labels.pod,
            labels.namespace,
            labels.pod_uid,
        ]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};

    use super::*;

    #[test]
    fn counts_render_under_the_upstream_name_and_can_be_forgotten() {
        let registry = Registry::new();
        let metrics = ProbeMetrics::new();
        metrics.register(&registry).unwrap();
        let labels = ProbeLabels {
            kind: ProbeKind::Liveness,
            container: "app",
            pod: "web-node",
            namespace: "default",
            pod_uid: "uid-1",
        };
        metrics.observe(labels, &Outcome::Success(String::new()));
        metrics.observe(labels, &Outcome::Failure("boom".to_owned()));
        metrics.observe(labels, &Outcome::Failure("boom".to_owned()));
        metrics.observe(labels, &Outcome::Error("runtime down".to_owned()));
        assert_eq!(metrics.count(labels, "successful"), 1);
        assert_eq!(metrics.count(labels, "failed"), 2);
        assert_eq!(metrics.count(labels, "unknown"), 1);

        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(
                "prober_probe_total{container=\"app\",namespace=\"default\",pod=\"web-node\",pod_uid=\"uid-1\",probe_type=\"Liveness\",result=\"failed\"} 2"
            ),
            "{text}"
        );

        metrics.forget(labels);
        assert_eq!(metrics.count(labels, "failed"), 0);
        assert!(registry.gather().iter().all(|f| f.get_metric().is_empty()));
        // Registering twice is refused, not silently doubled.
        assert!(metrics.register(&registry).is_err());
    }
}
