//! Publishing the pod: its status (computed from the observation, the plan's waiting
//! containers, the kernel's facts and the probes' verdicts), the OOM kills as events, and
//! the annotations that carry what upstream's status has no field for.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::Worker;
use crate::pleg::facts::{self, OomRecord};
use crate::pods::observe::Images;
use crate::pods::plan::{self, ObservedPod, PodActions};
use crate::pods::pod_uid;
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
