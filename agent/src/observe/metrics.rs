//! The observer's Prometheus metrics: OOM kills and memory pressure per container.
//!
//! - `bpflet_oom_kills_total{namespace,pod,container,scope}`: OOM kills of processes in the
//!   container, by the limit that was hit (`container`, `pod`, `node`, `cgroup`);
//! - `bpflet_oom_kill_limit_bytes{namespace,pod,container,scope}`: the limit the last such
//!   kill hit (absent when the kernel did not say);
//! - `bpflet_oom_kill_last_victim_info{namespace,pod,container,process}`: 1, for the last
//!   process killed in the container (one series per container);
//! - `bpflet_memory_pressure_episodes_total{namespace,pod,container}`: episodes of memory
//!   reclaim in the container's (or the pod's, `container=""`) cgroup: pressure reports
//!   less than [`EPISODE_GAP`] apart are one episode;
//! - `bpflet_memory_pressure_reports_total{namespace,pod,container}`: the reports;
//! - `bpflet_kernel_events_lost_total{stage}`: events lost in the `kernel` ring buffer or in
//!   `userspace` queues.
//!
//! Cardinality stays bounded by the pods the runtime holds: every series of a pod is
//! dropped once the pod is no longer listed ([`ObserverMetrics::forget_pods`]). Kills and
//! pressure outside any pod are counted with empty `namespace`, `pod` and `container`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::events::OomScope;

/// Pressure reports of one cgroup closer than this belong to one episode.
pub const EPISODE_GAP: Duration = Duration::from_secs(10);

/// Who a series is about. Empty strings outside pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Who {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Who {
    /// `namespace`, `pod`, `container` and `last`, as label values.
    fn with<'a>(&'a self, last: &'a str) -> [&'a str; 4] {
        [
            self.namespace.as_str(),
            self.pod.as_str(),
            self.container.as_str(),
            last,
        ]
    }
}

/// The metric's label for an OOM scope.
#[must_use]
pub fn scope_label(scope: OomScope) -> &'static str {
    match scope {
        OomScope::Container => "container",
        OomScope::Pod => "pod",
        OomScope::Node => "node",
        OomScope::Cgroup => "cgroup",
    }
}

/// The series, and what was written of each pod to drop it when it goes.
#[derive(Clone)]
pub struct ObserverMetrics {
    pub registry: Registry,
    oom_kills: IntCounterVec,
    oom_limit: IntGaugeVec,
    oom_victim: IntGaugeVec,
    episodes: IntCounterVec,
    reports: IntCounterVec,
    pub events_lost: IntCounterVec,
    state: std::sync::Arc<std::sync::Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Label values written, by pod UID: (metric, values).
    series: HashMap<String, Vec<(Metric, Vec<String>)>>,
    /// The last victim's process per container, to replace its series.
    victims: HashMap<Who, String>,
    /// The last pressure report per cgroup owner.
    last_pressure: HashMap<Who, Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    OomKills,
    OomLimit,
    OomVictim,
    Episodes,
    Reports,
}

impl std::fmt::Debug for ObserverMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverMetrics").finish_non_exhaustive()
    }
}

const POD_LABELS: [&str; 3] = ["namespace", "pod", "container"];

impl ObserverMetrics {
    /// The series, registered in a new registry.
    ///
    /// # Errors
    /// A bad name or help (a bug).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let with_scope = ["namespace", "pod", "container", "scope"];
        let oom_kills = IntCounterVec::new(
            Opts::new(
                "bpflet_oom_kills_total",
                "OOM kills of processes in the container, by the limit that was hit (scope).",
            ),
            &with_scope,
        )?;
        let oom_limit = IntGaugeVec::new(
            Opts::new(
                "bpflet_oom_kill_limit_bytes",
                "The memory limit the container's last OOM kill of this scope hit, in bytes.",
            ),
            &with_scope,
        )?;
        let oom_victim = IntGaugeVec::new(
            Opts::new(
                "bpflet_oom_kill_last_victim_info",
                "The process (comm) the container's last OOM kill killed; always 1.",
            ),
            &["namespace", "pod", "container", "process"],
        )?;
        let episodes = IntCounterVec::new(
            Opts::new(
                "bpflet_memory_pressure_episodes_total",
                "Episodes of memory reclaim in the container's cgroup (the pod's: container=\"\").",
            ),
            &POD_LABELS,
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                "bpflet_memory_pressure_reports_total",
                "Memory pressure reports (at most one per cgroup and window) in the container's cgroup.",
            ),
            &POD_LABELS,
        )?;
        let events_lost = IntCounterVec::new(
            Opts::new(
                "bpflet_kernel_events_lost_total",
                "Kernel events lost before the observer read them, by stage (kernel, userspace).",
            ),
            &["stage"],
        )?;
        registry.register(Box::new(oom_kills.clone()))?;
        registry.register(Box::new(oom_limit.clone()))?;
        registry.register(Box::new(oom_victim.clone()))?;
        registry.register(Box::new(episodes.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(events_lost.clone()))?;
        Ok(Self {
            registry,
            oom_kills,
            oom_limit,
            oom_victim,
            episodes,
            reports,
            events_lost,
            state: std::sync::Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(state: &mut State, who: &Who, metric: Metric, values: &[&str]) {
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let written = state.series.entry(who.uid.clone()).or_default();
        if !written.iter().any(|(m, v)| *m == metric && *v == values) {
            written.push((metric, values));
        }
    }

    /// An OOM kill of `process` in `who`'s cgroup at a `scope` limit of `limit_bytes`.
    pub fn oom_kill(&self, who: &Who, scope: OomScope, limit_bytes: Option<u64>, process: &str) {
        let mut state = self.lock();
        let scoped = who.with(scope_label(scope));
        self.oom_kills.with_label_values(&scoped).inc();
        Self::remember(&mut state, who, Metric::OomKills, &scoped);
        if let Some(limit) = limit_bytes {
            self.oom_limit
                .with_label_values(&scoped)
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
            Self::remember(&mut state, who, Metric::OomLimit, &scoped);
        }
        let victim = who.with(process);
        if let Some(previous) = state.victims.insert(who.clone(), process.to_owned())
            && previous != process
        {
            let _ = self.oom_victim.remove_label_values(&who.with(&previous));
        }
        self.oom_victim.with_label_values(&victim).set(1);
        Self::remember(&mut state, who, Metric::OomVictim, &victim);
    }

    /// A memory pressure report about `who`'s cgroup, received `at`.
    pub fn pressure(&self, who: &Who, at: Instant) {
        let mut state = self.lock();
        let labels = [
            who.namespace.as_str(),
            who.pod.as_str(),
            who.container.as_str(),
        ];
        let new_episode = state
            .last_pressure
            .insert(who.clone(), at)
            .is_none_or(|last| at.saturating_duration_since(last) >= EPISODE_GAP);
        if new_episode {
            self.episodes.with_label_values(&labels).inc();
            Self::remember(&mut state, who, Metric::Episodes, &labels);
        }
        self.reports.with_label_values(&labels).inc();
        Self::remember(&mut state, who, Metric::Reports, &labels);
    }

    /// The UIDs of the pods with series (`""` for what is outside pods).
    #[must_use]
    pub fn pods(&self) -> Vec<String> {
        self.lock().series.keys().cloned().collect()
    }

    /// Drops every series of the pods `uids` (no longer in the runtime).
    pub fn forget_pods(&self, uids: &[String]) {
        let mut state = self.lock();
        for uid in uids {
            for (metric, values) in state.series.remove(uid).unwrap_or_default() {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                let _ = match metric {
                    Metric::OomKills => self.oom_kills.remove_label_values(&values),
                    Metric::OomLimit => self.oom_limit.remove_label_values(&values),
                    Metric::OomVictim => self.oom_victim.remove_label_values(&values),
                    Metric::Episodes => self.episodes.remove_label_values(&values),
                    Metric::Reports => self.reports.remove_label_values(&values),
                };
            }
            state.victims.retain(|who, _| who.uid != *uid);
            state.last_pressure.retain(|who, _| who.uid != *uid);
        }
    }

    /// The Prometheus text exposition of every series.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: &str, pod: &str, container: &str) -> Who {
        Who {
            uid: uid.to_owned(),
            namespace: "team".to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
        }
    }

    #[test]
    fn oom_kills_count_per_container_and_scope_with_the_limit_and_the_last_victim() {
        let m = ObserverMetrics::new().expect("metrics");
        let app = who("u1", "web", "app");
        m.oom_kill(&app, OomScope::Container, Some(32 << 20), "dd");
        m.oom_kill(&app, OomScope::Container, Some(32 << 20), "stress");
        m.oom_kill(&app, OomScope::Node, None, "stress");
        let text = m.encode();
        for line in [
            r#"bpflet_oom_kills_total{container="app",namespace="team",pod="web",scope="container"} 2"#,
            r#"bpflet_oom_kills_total{container="app",namespace="team",pod="web",scope="node"} 1"#,
            r#"bpflet_oom_kill_limit_bytes{container="app",namespace="team",pod="web",scope="container"} 33554432"#,
            r#"bpflet_oom_kill_last_victim_info{container="app",namespace="team",pod="web",process="stress"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"process="dd""#),
            "one victim series per container:\n{text}"
        );
        assert!(
            !text.contains(r#"scope="node"} 0"#)
                && !text
                    .lines()
                    .any(|l| l.starts_with("bpflet_oom_kill_limit_bytes")
                        && l.contains(r#"scope="node""#)),
            "no limit series for a kill without a limit:\n{text}"
        );
    }

    #[test]
    fn pressure_reports_close_together_are_one_episode() {
        let m = ObserverMetrics::new().expect("metrics");
        let app = who("u1", "web", "app");
        let pod = who("u1", "web", "");
        let t0 = Instant::now();
        m.pressure(&app, t0);
        m.pressure(&app, t0 + Duration::from_secs(3));
        m.pressure(&app, t0 + Duration::from_secs(12));
        m.pressure(&app, t0 + Duration::from_secs(30));
        m.pressure(&pod, t0 + Duration::from_secs(30));
        let text = m.encode();
        for line in [
            r#"bpflet_memory_pressure_episodes_total{container="app",namespace="team",pod="web"} 2"#,
            r#"bpflet_memory_pressure_reports_total{container="app",namespace="team",pod="web"} 4"#,
            r#"bpflet_memory_pressure_episodes_total{container="",namespace="team",pod="web"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }

    #[test]
    fn a_pod_gone_from_the_runtime_takes_its_series_along() {
        let m = ObserverMetrics::new().expect("metrics");
        m.oom_kill(&who("u1", "web", "app"), OomScope::Pod, Some(1 << 30), "dd");
        m.pressure(&who("u1", "web", "app"), Instant::now());
        m.oom_kill(
            &who("u2", "db", "main"),
            OomScope::Container,
            Some(1 << 20),
            "pg",
        );
        m.forget_pods(&["u1".to_owned()]);
        let text = m.encode();
        assert!(
            !text.contains(r#"pod="web""#),
            "series of the gone pod:\n{text}"
        );
        assert!(text.contains(r#"pod="db""#), "{text}");
        // It may come back (a new sandbox of a static pod): counted from zero.
        m.oom_kill(&who("u1", "web", "app"), OomScope::Pod, Some(1 << 30), "dd");
        assert!(m.encode().contains(
            r#"bpflet_oom_kills_total{container="app",namespace="team",pod="web",scope="pod"} 1"#
        ));
    }
}
