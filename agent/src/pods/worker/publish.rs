//! Publishing the pod: its status (computed from the observation, the plan's waiting
//! containers, the kernel's facts and the probes' verdicts), the OOM kills as events, and
//! the annotations that carry what upstream's status has no field for.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::Worker;
use crate::model::pod_uid;
use crate::pleg::facts::{self, OomRecord};
use crate::pods::observe::Images;
use crate::pods::plan::{self, ObservedPod, PodActions};
use crate::record::{EventType, pod_reference};
use crate::runtime::ContainerRuntime;
use crate::status::{self, ContainerFacts, StatusContext};

/// Annotations the worker adds to the published pod, by name.
type Annotations = BTreeMap<String, String>;

impl<R: ContainerRuntime + 'static> Worker<R> {
    /// Publishes the pod as `observed` shows it, with `actions`' waiting containers: the
    /// kernel's OOM facts (and their events), the probes' verdicts, and the annotations
    /// both add.
    pub(super) fn publish(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        images: Images,
        actions: &PodActions,
    ) {
        let mut facts = HashMap::new();
        let mut annotations = Annotations::new();
        self.oom_facts(pod, observed, &mut facts, &mut annotations);
        self.probe_facts(pod, observed, &mut facts, &mut annotations);
        let ctx = StatusContext {
            node_ips: self.ctx.node.ips.clone(),
            previous: self.status.clone(),
            now: self.ctx.now(),
            facts,
            images,
            ..StatusContext::default()
        };
        let status = status::pod_status(pod, observed, &actions.waiting, &ctx);
        self.ctx
            .outputs
            .statuses
            .publish(pod_uid(pod), with_status(pod, status.clone(), annotations));
        self.status = Some(status);
    }

    /// The kernel's OOM kills of each container: its facts for status, an event per kill
    /// (see [`Self::report_ooms`]), and two annotations (how many, and the last one).
    fn oom_facts(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        facts: &mut HashMap<String, ContainerFacts>,
        annotations: &mut Annotations,
    ) {
        for c in &observed.containers {
            let kills = self.ctx.signals.facts.ooms(&c.id);
            if kills.is_empty() {
                continue;
            }
            if let Some(again) = self.report_ooms(pod, c, &kills) {
                self.recheck = Some(self.recheck.map_or(again, |r| r.min(again)));
            }
            annotations.extend(oom_annotations(&c.name, &kills, &self.ctx.signals.kubepods));
            facts.insert(
                c.id.clone(),
                facts::container_facts(c.finished_at, c.exit_code, &kills),
            );
        }
    }

    /// The probes' verdicts: readiness for status, the last failure as an annotation.
    fn probe_facts(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        facts: &mut HashMap<String, ContainerFacts>,
        annotations: &mut Annotations,
    ) {
        for c in &observed.containers {
            let r = self.ctx.signals.probes.results(pod_uid(pod), &c.id);
            if r.readiness.is_some() {
                facts.entry(c.id.clone()).or_default().ready_by_probe = r.readiness;
            }
            if let Some(failure) = &r.last_failure {
                annotations.insert(
                    format!("bpflet.io/last-probe-failure.{}", c.name),
                    format!("{} {failure}", failure.at),
                );
            }
        }
    }

    /// Records one event per OOM kill, once it is clear what the kill did: `OOMKilled` when
    /// it ended the container (its init process died), `ProcessOOMKilled` when another
    /// process died and the container lives on (the kubelet says nothing then). Returns when
    /// to look again for a kill that is not decided yet.
    fn report_ooms(
        &mut self,
        pod: &Pod,
        c: &plan::ObservedContainer,
        kills: &[OomRecord],
    ) -> Option<Duration> {
        let reported = self.oom_reported.entry(c.id.clone()).or_default();
        let running = c.state == plan::ContainerState::Running;
        let now = self.ctx.now();
        while let Some(kill) = kills.get(*reported) {
            let age = Duration::try_from(now.duration_since(kill.at)).unwrap_or_default();
            if running && age < facts::KILL_TO_EXIT {
                return Some(facts::KILL_TO_EXIT - age);
            }
            let ended = !running
                && facts::init_oom_killed(c.finished_at, c.exit_code, std::slice::from_ref(kill));
            let reason = if ended {
                "OOMKilled"
            } else {
                "ProcessOOMKilled"
            };
            let message = kill.describe(&c.name, &self.ctx.signals.kubepods);
            self.ctx.outputs.recorder.record(
                &pod_reference(pod),
                EventType::Warning,
                reason,
                &message,
            );
            *reported += 1;
        }
        None
    }
}

/// `bpflet.io/oom-kills.<container>` (how many) and `bpflet.io/last-oom-kill.<container>`
/// (when, and what the last kill killed) for a container with `kills`.
fn oom_annotations(container: &str, kills: &[OomRecord], kubepods: &str) -> Annotations {
    let mut out = Annotations::new();
    out.insert(
        format!("bpflet.io/oom-kills.{container}"),
        kills.len().to_string(),
    );
    if let Some(last) = kills.last() {
        out.insert(
            format!("bpflet.io/last-oom-kill.{container}"),
            format!("{} {}", last.at, last.describe(container, kubepods)),
        );
    }
    out
}

/// The pod as published: `pod` with `status` and `annotations` added to its own.
fn with_status(
    pod: &Pod,
    status: k8s_openapi::api::core::v1::PodStatus,
    annotations: Annotations,
) -> Pod {
    let mut published = pod.clone();
    published.status = Some(status);
    if !annotations.is_empty() {
        published
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(annotations);
    }
    published
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::api::core::v1::PodStatus;

    use super::*;
    use crate::events::OomScope;

    fn kill(at: i64, pid: u32, scope: OomScope, cgroup: &str) -> OomRecord {
        OomRecord {
            at: Timestamp::from_second(at).expect("timestamp"),
            pid,
            comm: "stress".to_owned(),
            scope,
            limit_cgroup: Some(cgroup.to_owned()),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(64 << 20),
            anon_rss_bytes: Some(60 << 20),
            oom_score_adj: Some(1000),
        }
    }

    #[test]
    fn oom_annotations_count_the_kills_and_describe_the_last() {
        let kills = [
            kill(100, 7, OomScope::Container, "/kubepods/pod1/c"),
            kill(200, 9, OomScope::Cgroup, "/kubepods"),
        ];
        let a = oom_annotations("app", &kills, "/kubepods");
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a["bpflet.io/oom-kills.app"], "2");
        assert_eq!(
            a["bpflet.io/last-oom-kill.app"],
            "1970-01-01T00:03:20Z process 9 (stress) in container app was OOM-killed: node \
             allocatable (the kubepods cgroup's limit) was hit (64Mi of 64Mi); victim rss \
             60Mi, oom_score_adj 1000"
        );
        assert_eq!(
            oom_annotations("app", &[], "/kubepods")["bpflet.io/oom-kills.app"],
            "0"
        );
    }

    #[test]
    fn the_published_pod_carries_the_status_and_both_sets_of_annotations() {
        let mut pod = Pod::default();
        pod.metadata.annotations =
            Some([("kubernetes.io/config.source".to_owned(), "file".to_owned())].into());
        let status = PodStatus {
            phase: Some("Running".to_owned()),
            ..PodStatus::default()
        };
        let plain = with_status(&pod, status.clone(), Annotations::new());
        assert_eq!(plain.status.as_ref(), Some(&status));
        assert_eq!(plain.metadata.annotations, pod.metadata.annotations);
        let annotated = with_status(
            &pod,
            status,
            [("bpflet.io/oom-kills.app".to_owned(), "1".to_owned())].into(),
        );
        let keys: Vec<&str> = annotated
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            keys,
            ["bpflet.io/oom-kills.app", "kubernetes.io/config.source"]
        );
        assert!(pod.status.is_none(), "the spec's pod is not touched");
    }
}
