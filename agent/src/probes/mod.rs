//! Container probes (liveness, readiness, startup) and lifecycle hooks (postStart, and the
//! httpGet form of preStop).
//!
//! - [`ProbeManager`] is the pod workers' handle: after each sync a worker tells it which of
//!   the pod's containers run ([`ProbeManager::add_pod`]), reads verdicts back
//!   ([`ProbeManager::results`], [`ProbeManager::annotate`]) and forgets the pod when it is
//!   gone ([`ProbeManager::remove_pod`]). A verdict change pokes the pod's worker through a
//!   channel of pod uids.
//! - [`ProbeRunner`] is the one scheduler task behind it: a min-heap of deadlines for every
//!   probe of every pod ([`schedule`]); each due probe runs in its own short task, at most
//!   [`ProbeOptions::max_concurrent`] at a time; the thresholds ([`threshold`]) turn runs
//!   into verdicts.
//! - Handlers: [`exec`] (CRI `ExecSync` with the probe timeout), [`http`] (httpGet, also
//!   for hooks), [`tcp`], [`grpc`] (`grpc.health.v1`).
//! - [`hooks`] runs postStart (exec, httpGet, sleep) and the preStop httpGet handler.
//! - [`metrics`] counts runs in `prober_probe_total`.
//!
//! Upstream semantics kept: defaults (period 10s, timeout 1s, thresholds 1/3, no initial
//! delay); probes start once the container runs and stop when it exits; a startup probe
//! holds liveness and readiness back until it succeeds, and runs no more afterwards; a
//! liveness or startup failure puts that container's probing on hold (the worker restarts
//! it; its successor has a new id and new probes); a probe that cannot be run (a runtime
//! error, an unknown port name) counts as `unknown` and changes no verdict; an exec probe
//! that outlives its timeout fails.
//!
//! Cost: one scheduler task and one heap entry per probe; a probe task lives only while its
//! probe runs, and httpGet/tcpSocket/grpc probes open one short connection each (no
//! keep-alive, as upstream). `cargo xtask bench probes` measures 500 probes at a 1 s period
//! (docs/BENCHMARKS.md): ~6.5 % of a core, most of it the kernel's side of one loopback
//! connection per run, the scheduler itself ~2 % of the samples. Exec probes cost mostly
//! containerd and runc (one exec each) and are not in that figure.
//!
//! Deliberate differences: every probe's first run is jittered within one period (upstream
//! jitters only right after the kubelet starts), so containers started together never probe
//! in lockstep; results are keyed by container id, not name, so a verdict about one attempt
//! never lands on the next.

pub mod exec;
pub mod grpc;
pub mod hooks;
pub mod http;
mod manager;
pub mod metrics;
pub mod schedule;
pub mod spec;
pub mod tcp;
pub mod threshold;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

pub use hooks::{HookError, run_http_hook, run_post_start};
pub use manager::{ProbeManager, ProbeOptions, ProbeRunner};
pub use metrics::ProbeMetrics;
pub use spec::{ProbeKind, ProbeSpec};
pub use threshold::Outcome;

use crate::pods::plan::{ObservedPod, ProbeVerdict};
use crate::runtime::ContainerRuntime;
use spec::{Action, ActionError};

/// What the probes of one container concluded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbeResults {
    /// [`ProbeVerdict::Failure`] once `failureThreshold` runs failed in a row: the worker
    /// kills the container.
    pub liveness: ProbeVerdict,
    /// [`ProbeVerdict::Success`] once the startup probe passed; `Failure` kills.
    pub startup: ProbeVerdict,
    /// The readiness verdict; `None` until the probe concludes (or without one).
    pub readiness: Option<bool>,
    /// The latest failed run of any of the container's probes.
    pub last_failure: Option<ProbeFailure>,
}

/// One failed probe run, as operators see it (`Liveness probe failed: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub kind: ProbeKind,
    pub message: String,
    pub at: Timestamp,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} probe failed: {}", self.kind, self.message)
    }
}

/// The address probes and hooks without a `host` go to: the pod IP; for host-network
/// pods the node's primary IP, or 127.0.0.1 when the node has none configured.
#[must_use]
pub fn pod_ip(pod: &Pod, observed: &ObservedPod, node_ips: &[IpAddr]) -> Option<IpAddr> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if host_network {
        return Some(
            node_ips
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
    }
    observed
        .sandboxes
        .iter()
        .filter(|s| s.ready)
        .max_by_key(|s| (s.created, s.attempt))
        .and_then(|s| s.ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

/// Runs one probe handler once.
pub async fn run_action<R: ContainerRuntime>(
    runtime: &R,
    action: &Result<Action, ActionError>,
    container_id: &str,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
) -> Outcome {
    let action = match action {
        Ok(a) => a,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let host = |explicit: Option<&str>| -> Option<String> {
        explicit
            .map(str::to_owned)
            .or_else(|| pod_ip.map(|ip| ip.to_string()))
    };
    let no_ip = || Outcome::Error("the pod has no IP yet".to_owned());
    match action {
        Action::Exec { command } => exec::probe_exec(runtime, container_id, command, timeout).await,
        Action::Http(get) => match host(get.host.as_deref()) {
            Some(h) => http::probe_http(get, &h, timeout).await,
            None => no_ip(),
        },
        Action::Tcp {
            host: explicit,
            port,
        } => match host(explicit.as_deref()) {
            Some(h) => tcp::probe_tcp(&h, *port, timeout).await,
            None => no_ip(),
        },
        Action::Grpc { port, service } => match host(None) {
            Some(h) => grpc::probe_grpc(&h, *port, service, timeout).await,
            None => no_ip(),
        },
    }
}

/// An error and its causes on one line.
fn describe(e: &dyn std::error::Error) -> String {
    crate::error::full_text(e)
}

#[cfg(test)]
pub(crate) mod testing;
