//! The agent's Prometheus metrics, under the names operators already chart for the kubelet
//! (`kubelet_pleg_relist_duration_seconds`, `kubelet_evictions`, ...), served on `/metrics`.
//! The prober's counters live in a registry of their own, served on `/metrics/probes` only,
//! as upstream's kubelet serves `prober_probe_total`.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the agent exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` serves.
    pub registry: Registry,
    /// What `/metrics/probes` serves (see [`Self::probe_registry`]).
    probes: Registry,
    pub pleg_relist_duration: Histogram,
    pub pleg_relist_interval: Histogram,
    /// Unix time of the last completed relist.
    pub pleg_last_seen: Gauge,
    /// By `eviction_signal`; no `_total` suffix, as upstream.
    pub evictions: IntCounterVec,
    pub running_pods: IntGauge,
    /// By `container_state`.
    pub running_containers: IntGaugeVec,
    /// CRI calls by `operation_type` (see [`crate::runtime::Method::operation_type`]).
    pub runtime_operations: IntCounterVec,
    pub runtime_operations_errors: IntCounterVec,
    pub runtime_operations_duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot register metric")]
pub struct MetricsError(#[from] prometheus::Error);

/// Upstream's buckets for relist timings (seconds).
const RELIST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let pleg_relist_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kubelet_pleg_relist_duration_seconds",
                "Duration in seconds for relisting pods in PLEG.",
            )
            .buckets(RELIST_BUCKETS.to_vec()),
        )?;
        let pleg_relist_interval = Histogram::with_opts(
            HistogramOpts::new(
                "kubelet_pleg_relist_interval_seconds",
                "Interval in seconds between relisting in PLEG.",
            )
            .buckets(RELIST_BUCKETS.to_vec()),
        )?;
        let pleg_last_seen = Gauge::new(
            "kubelet_pleg_last_seen_seconds",
            "Timestamp in seconds when PLEG was last seen active.",
        )?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "kubelet_evictions",
                "Cumulative number of pod evictions by eviction signal",
            ),
            &["eviction_signal"],
        )?;
        let running_pods = IntGauge::new(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
        )?;
        let running_containers = IntGaugeVec::new(
            Opts::new(
                "kubelet_running_containers",
                "Number of containers currently running",
            ),
            &["container_state"],
        )?;
        let runtime_operations = IntCounterVec::new(
            Opts::new(
                "kubelet_runtime_operations_total",
                "Cumulative number of runtime operations by operation type.",
            ),
            &["operation_type"],
        )?;
        let runtime_operations_errors = IntCounterVec::new(
            Opts::new(
                "kubelet_runtime_operations_errors_total",
                "Cumulative number of runtime operation errors by operation type.",
            ),
            &["operation_type"],
        )?;
        let runtime_operations_duration = HistogramVec::new(
            HistogramOpts::new(
                "kubelet_runtime_operations_duration_seconds",
                "Duration in seconds of runtime operations. Broken down by operation type.",
            )
            .buckets(RELIST_BUCKETS.to_vec()),
            &["operation_type"],
        )?;
        registry.register(Box::new(runtime_operations.clone()))?;
        registry.register(Box::new(runtime_operations_errors.clone()))?;
        registry.register(Box::new(runtime_operations_duration.clone()))?;
        registry.register(Box::new(pleg_relist_duration.clone()))?;
        registry.register(Box::new(pleg_relist_interval.clone()))?;
        registry.register(Box::new(pleg_last_seen.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(running_pods.clone()))?;
        registry.register(Box::new(running_containers.clone()))?;
        Ok(Self {
            registry,
            probes: Registry::new(),
            pleg_relist_duration,
            pleg_relist_interval,
            pleg_last_seen,
            evictions,
            running_pods,
            running_containers,
            runtime_operations,
            runtime_operations_errors,
            runtime_operations_duration,
        })
    }

    /// Counts one runtime call that took `elapsed` and failed or not; `operation_type` is
    /// the call's label (`list_containers`, ...).
    pub fn runtime_operation(
        &self,
        operation_type: &str,
        elapsed: std::time::Duration,
        failed: bool,
    ) {
        let op = [operation_type];
        self.runtime_operations.with_label_values(&op).inc();
        self.runtime_operations_duration
            .with_label_values(&op)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.runtime_operations_errors.with_label_values(&op).inc();
        }
    }

    /// The registry of `/metrics/probes`, apart from `/metrics`'s: the prober registers
    /// `prober_probe_total` here (`crate::probes::ProbeMetrics::register`).
    #[must_use]
    pub fn probe_registry(&self) -> &Registry {
        &self.probes
    }

    /// The text exposition format of every metric `/metrics` serves.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }

    /// The text exposition format of `/metrics/probes`.
    pub fn encode_probes(&self) -> String {
        encode_registry(&self.probes)
    }
}

fn encode_registry(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_kubelet_names() {
        let m = Metrics::new().unwrap();
        m.pleg_relist_duration.observe(0.002);
        m.evictions.with_label_values(&["memory.available"]).inc();
        m.running_pods.set(3);
        m.running_containers.with_label_values(&["running"]).set(4);
        m.runtime_operation(
            crate::runtime::Method::ListContainers.operation_type(),
            std::time::Duration::from_millis(2),
            false,
        );
        m.runtime_operation(
            crate::runtime::Method::PodSandboxStatus.operation_type(),
            std::time::Duration::from_millis(1),
            true,
        );
        let text = m.encode();
        for needle in [
            "kubelet_pleg_relist_duration_seconds_bucket",
            "kubelet_pleg_relist_interval_seconds",
            "kubelet_pleg_last_seen_seconds",
            "kubelet_evictions{eviction_signal=\"memory.available\"} 1",
            "kubelet_running_pods 3",
            "kubelet_running_containers{container_state=\"running\"} 4",
            "kubelet_runtime_operations_total{operation_type=\"list_containers\"} 1",
            "kubelet_runtime_operations_errors_total{operation_type=\"podsandbox_status\"} 1",
            "kubelet_runtime_operations_duration_seconds_count{operation_type=\"list_containers\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(
            !text.contains("kubelet_evictions_total"),
            "upstream has no _total suffix"
        );
    }
}
