use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ContainerState as ApiState, ContainerStatus};
use serde_json::json;

use super::*;
use crate::model::container::WaitingReason;
use crate::pods::plan::{ContainerState, ObservedContainer, ObservedSandbox, ProbeVerdict};

const UID: &str = "0123456789abcdef0123456789abcdef";
const NODE_IP: &str = "192.168.1.10";
const POD_IP: &str = "10.88.0.2";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
}

/// A pod: `apps` and `inits` are container names. An init name starting with "side" is a
/// sidecar; a name containing "ready" has a readiness probe, "startup" a startup probe.
fn pod(policy: &str, inits: &[&str], apps: &[&str]) -> Pod {
    let container = |name: &&str| {
        let mut c = json!({"name": name, "image": format!("example.com/{name}:1")});
        if name.starts_with("side") {
            c["restartPolicy"] = json!("Always");
        }
        if name.contains("ready") {
            c["readinessProbe"] = json!({"exec": {"command": ["true"]}});
        }
        if name.contains("startup") {
            c["startupProbe"] = json!({"exec": {"command": ["true"]}});
        }
        c
    };
    let mut spec = json!({
        "restartPolicy": policy,
        "containers": apps.iter().map(container).collect::<Vec<_>>(),
    });
    if !inits.is_empty() {
        spec["initContainers"] = json!(inits.iter().map(container).collect::<Vec<_>>());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-node-a", "namespace": "default", "uid": UID},
        "spec": spec,
    }))
    .expect("valid pod")
}

fn sandbox() -> ObservedSandbox {
    ObservedSandbox {
        id: "sb-1".to_owned(),
        ready: true,
        created: t(0),
        attempt: 0,
        host_network: false,
        ip: Some(POD_IP.to_owned()),
    }
}

/// Container `name`, attempt `attempt`, id `<name>-<attempt>`, created at `10 * attempt`.
fn container(name: &str, attempt: u32, state: ContainerState) -> ObservedContainer {
    let base = 10 * i64::from(attempt);
    let exited = state == ContainerState::Exited;
    ObservedContainer {
        id: format!("{name}-{attempt}"),
        name: name.to_owned(),
        state,
        created: t(base + 1),
        started_at: (state != ContainerState::Created).then(|| t(base + 2)),
        finished_at: exited.then(|| t(base + 5)),
        exit_code: exited.then_some(0),
        reason: None,
        restart_count: attempt,
        spec_hash: None,
        liveness: ProbeVerdict::Unknown,
        startup: ProbeVerdict::Unknown,
    }
}

fn running(name: &str, attempt: u32) -> ObservedContainer {
    container(name, attempt, ContainerState::Running)
}

/// Exited with `code`; the runtime's reason is set as containerd sets it.
fn exited(name: &str, attempt: u32, code: i32) -> ObservedContainer {
    ObservedContainer {
        exit_code: Some(code),
        reason: Some(if code == 0 { "Completed" } else { "Error" }.to_owned()),
        ..container(name, attempt, ContainerState::Exited)
    }
}

fn observed(containers: Vec<ObservedContainer>) -> ObservedPod {
    ObservedPod {
        sandboxes: vec![sandbox()],
        containers,
    }
}

fn waiting(name: &str, reason: WaitingReason, message: Option<&str>) -> Waiting {
    Waiting {
        container: name.to_owned(),
        reason,
        message: message.map(str::to_owned),
    }
}

fn ctx(now: Timestamp) -> StatusContext {
    StatusContext {
        node_ips: vec![NODE_IP.parse().expect("ip")],
        now,
        ..StatusContext::default()
    }
}

fn state_str(s: Option<&ApiState>) -> String {
    let Some(s) = s else { return "-".to_owned() };
    if s.running.is_some() {
        "running".to_owned()
    } else if let Some(w) = &s.waiting {
        format!("waiting:{}", w.reason.as_deref().unwrap_or(""))
    } else if let Some(t) = &s.terminated {
        format!(
            "terminated:{}:{}",
            t.reason.as_deref().unwrap_or(""),
            t.exit_code
        )
    } else {
        "-".to_owned()
    }
}

/// `name state last restarts ready|unready started|-`.
fn summary(s: &ContainerStatus) -> String {
    format!(
        "{} {} {} {} {} {}",
        s.name,
        state_str(s.state.as_ref()),
        state_str(s.last_state.as_ref()),
        s.restart_count,
        if s.ready { "ready" } else { "unready" },
        if s.started == Some(true) {
            "started"
        } else {
            "-"
        },
    )
}

fn summaries(statuses: Option<&Vec<ContainerStatus>>) -> Vec<String> {
    statuses.into_iter().flatten().map(summary).collect()
}

/// `Type=Status` or `Type=Status(Reason)`, kubelet-owned conditions only.
fn conditions(status: &PodStatus) -> Vec<String> {
    status
        .conditions
        .iter()
        .flatten()
        .map(|c| match &c.reason {
            Some(r) => format!("{}={}({r})", c.type_, c.status),
            None => format!("{}={}", c.type_, c.status),
        })
        .collect()
}

fn condition<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {:?}", status.conditions))
}

fn app_status<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

struct Case {
    name: &'static str,
    pod: Pod,
    observed: ObservedPod,
    waiting: Vec<Waiting>,
    facts: Vec<(&'static str, ContainerFacts)>,
    phase: &'static str,
    init: Vec<&'static str>,
    apps: Vec<&'static str>,
    conditions: [&'static str; 5],
}

const ALL_TRUE: [&str; 5] = [
    "PodReadyToStartContainers=True",
    "Initialized=True",
    "Ready=True",
    "ContainersReady=True",
    "PodScheduled=True",
];

fn oom_by_kernel() -> ContainerFacts {
    ContainerFacts {
        oom_killed_by_kernel: true,
        ..ContainerFacts::default()
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table")]
fn status_table() {
    let cases = vec![
        Case {
            name: "running pod",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![running("app", 0)]),
            waiting: vec![],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app running - 0 ready started"],
            conditions: ALL_TRUE,
        },
        Case {
            name: "nothing created yet",
            pod: pod("Always", &[], &["app"]),
            observed: ObservedPod::default(),
            waiting: vec![waiting("app", WaitingReason::ContainerCreating, None)],
            facts: vec![],
            phase: "Pending",
            init: vec![],
            apps: vec!["app waiting:ContainerCreating - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=False",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "init container in progress",
            pod: pod("Always", &["init-a", "init-b"], &["app"]),
            observed: observed(vec![exited("init-a", 0, 0), running("init-b", 0)]),
            waiting: vec![waiting("app", WaitingReason::PodInitializing, None)],
            facts: vec![],
            phase: "Pending",
            init: vec![
                "init-a terminated:Completed:0 - 0 ready -",
                "init-b running - 0 unready started",
            ],
            apps: vec!["app waiting:PodInitializing - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=False(ContainersNotInitialized)",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "init done, apps being created",
            pod: pod("Always", &["init"], &["app"]),
            observed: observed(vec![exited("init", 0, 0)]),
            waiting: vec![waiting("app", WaitingReason::ContainerCreating, None)],
            facts: vec![],
            phase: "Pending",
            init: vec!["init terminated:Completed:0 - 0 ready -"],
            apps: vec!["app waiting:ContainerCreating - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "CrashLoopBackOff shows the last exit",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![exited("app", 0, 1), exited("app", 1, 2)]),
            waiting: vec![waiting(
                "app",
                WaitingReason::CrashLoopBackOff,
                Some("back-off 20s restarting failed container=app pod=web-node-a_default(uid)"),
            )],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app waiting:CrashLoopBackOff terminated:Error:2 1 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "a start the runtime refused shows its reason, the failed attempt last",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![exited("app", 0, 128)]),
            waiting: vec![waiting(
                "app",
                WaitingReason::RunContainerError,
                Some("exec: \"/no/such/binary\": no such file or directory"),
            )],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app waiting:RunContainerError terminated:Error:128 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "a container never created shows why",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![]),
            waiting: vec![waiting(
                "app",
                WaitingReason::ErrImageNeverPull,
                Some("Container image \"busybox\" is not present with pull policy of Never"),
            )],
            facts: vec![],
            phase: "Pending",
            init: vec![],
            apps: vec!["app waiting:ErrImageNeverPull - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "a failure never hides a running container",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![running("app", 0)]),
            waiting: vec![waiting(
                "app",
                WaitingReason::CreateContainerConfigError,
                Some("volume gone"),
            )],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app running - 0 ready started"],
            conditions: ALL_TRUE,
        },
        Case {
            name: "restarted container: the attempt before is the last state",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![exited("app", 0, 1), running("app", 1)]),
            waiting: vec![],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app running terminated:Error:1 1 ready started"],
            conditions: ALL_TRUE,
        },
        Case {
            name: "OOMKilled from the runtime",
            pod: pod("Never", &[], &["app"]),
            observed: observed(vec![ObservedContainer {
                exit_code: Some(137),
                reason: Some("OOMKilled".to_owned()),
                ..exited("app", 0, 137)
            }]),
            waiting: vec![],
            facts: vec![],
            phase: "Failed",
            init: vec![],
            apps: vec!["app terminated:OOMKilled:137 - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(PodFailed)",
                "ContainersReady=False(PodFailed)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "OOMKilled from the kernel only (runtime said Error)",
            pod: pod("Never", &[], &["app"]),
            observed: observed(vec![exited("app", 0, 1)]),
            waiting: vec![],
            facts: vec![("app-0", oom_by_kernel())],
            phase: "Failed",
            init: vec![],
            apps: vec!["app terminated:OOMKilled:137 - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(PodFailed)",
                "ContainersReady=False(PodFailed)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "kernel OOM of an earlier attempt lands in lastState, not on the new one",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![exited("app", 0, 1), running("app", 1)]),
            waiting: vec![],
            facts: vec![("app-0", oom_by_kernel())],
            phase: "Running",
            init: vec![],
            apps: vec!["app running terminated:OOMKilled:137 1 ready started"],
            conditions: ALL_TRUE,
        },
        Case {
            name: "Succeeded",
            pod: pod("Never", &["init"], &["a", "b"]),
            observed: observed(vec![
                exited("init", 0, 0),
                exited("b", 0, 0),
                exited("a", 0, 0),
            ]),
            waiting: vec![],
            facts: vec![],
            phase: "Succeeded",
            init: vec!["init terminated:Completed:0 - 0 ready -"],
            apps: vec![
                "a terminated:Completed:0 - 0 unready -",
                "b terminated:Completed:0 - 0 unready -",
            ],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True(PodCompleted)",
                "Ready=False(PodCompleted)",
                "ContainersReady=False(PodCompleted)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "Failed: one container failed and will not restart",
            pod: pod("Never", &[], &["a", "b"]),
            observed: observed(vec![exited("a", 0, 0), exited("b", 0, 3)]),
            waiting: vec![],
            facts: vec![],
            phase: "Failed",
            init: vec![],
            apps: vec![
                "a terminated:Completed:0 - 0 unready -",
                "b terminated:Error:3 - 0 unready -",
            ],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(PodFailed)",
                "ContainersReady=False(PodFailed)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "Failed: init container failed with restartPolicy Never",
            pod: pod("Never", &["init"], &["app"]),
            observed: observed(vec![exited("init", 0, 1)]),
            waiting: vec![],
            facts: vec![],
            phase: "Failed",
            init: vec!["init terminated:Error:1 - 0 unready -"],
            apps: vec!["app waiting:PodInitializing - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=False(ContainersNotInitialized)",
                "Ready=False(PodFailed)",
                "ContainersReady=False(PodFailed)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "sidecar started, app running; sidecar counts for readiness",
            pod: pod("Always", &["side-ready"], &["app"]),
            observed: observed(vec![running("side-ready", 0), running("app", 0)]),
            waiting: vec![],
            facts: vec![],
            phase: "Running",
            init: vec!["side-ready running - 0 unready started"],
            apps: vec!["app running - 0 ready started"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "readiness probe success makes the container ready",
            pod: pod("Always", &["side-ready"], &["app-ready"]),
            observed: observed(vec![running("side-ready", 0), running("app-ready", 0)]),
            waiting: vec![],
            facts: vec![
                (
                    "side-ready-0",
                    ContainerFacts {
                        ready_by_probe: Some(true),
                        ..ContainerFacts::default()
                    },
                ),
                (
                    "app-ready-0",
                    ContainerFacts {
                        ready_by_probe: Some(true),
                        ..ContainerFacts::default()
                    },
                ),
            ],
            phase: "Running",
            init: vec!["side-ready running - 0 ready started"],
            apps: vec!["app-ready running - 0 ready started"],
            conditions: ALL_TRUE,
        },
        Case {
            name: "readiness probe failing or not concluded",
            pod: pod("Always", &[], &["a-ready", "b-ready"]),
            observed: observed(vec![running("a-ready", 0), running("b-ready", 0)]),
            waiting: vec![],
            facts: vec![(
                "b-ready-0",
                ContainerFacts {
                    ready_by_probe: Some(false),
                    ..ContainerFacts::default()
                },
            )],
            phase: "Running",
            init: vec![],
            apps: vec![
                "a-ready running - 0 unready started",
                "b-ready running - 0 unready started",
            ],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "startup probe not succeeded yet: running, not started, not ready",
            pod: pod("Always", &[], &["app-startup"]),
            observed: observed(vec![running("app-startup", 0)]),
            waiting: vec![],
            facts: vec![],
            phase: "Running",
            init: vec![],
            apps: vec!["app-startup running - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "created, not started: waiting ContainerCreating",
            pod: pod("Always", &[], &["app"]),
            observed: observed(vec![container("app", 0, ContainerState::Created)]),
            waiting: vec![waiting("app", WaitingReason::ContainerCreating, None)],
            facts: vec![],
            phase: "Pending",
            init: vec![],
            apps: vec!["app waiting:ContainerCreating - 0 unready -"],
            conditions: [
                "PodReadyToStartContainers=True",
                "Initialized=True",
                "Ready=False(ContainersNotReady)",
                "ContainersReady=False(ContainersNotReady)",
                "PodScheduled=True",
            ],
        },
        Case {
            name: "app statuses sorted by name, init statuses in spec order",
            pod: pod("Always", &["z-init", "a-init"], &["zeta", "alpha"]),
            observed: observed(vec![
                exited("z-init", 0, 0),
                exited("a-init", 0, 0),
                running("zeta", 0),
                running("alpha", 0),
            ]),
            waiting: vec![],
            facts: vec![],
            phase: "Running",
            init: vec![
                "z-init terminated:Completed:0 - 0 ready -",
                "a-init terminated:Completed:0 - 0 ready -",
            ],
            apps: vec![
                "alpha running - 0 ready started",
                "zeta running - 0 ready started",
            ],
            conditions: ALL_TRUE,
        },
    ];

    for case in cases {
        let mut ctx = ctx(t(100));
        ctx.facts = case
            .facts
            .iter()
            .map(|(id, f)| ((*id).to_owned(), *f))
            .collect();
        let status = pod_status(&case.pod, &case.observed, &case.waiting, &ctx);
        let name = case.name;
        assert_eq!(status.phase.as_deref(), Some(case.phase), "{name}: phase");
        assert_eq!(
            summaries(status.init_container_statuses.as_ref()),
            case.init,
            "{name}: init container statuses"
        );
        assert_eq!(
            summaries(status.container_statuses.as_ref()),
            case.apps,
            "{name}: container statuses"
        );
        assert_eq!(conditions(&status), case.conditions, "{name}: conditions");
    }
}

#[test]
fn running_pod_details() {
    let pod = pod("Always", &[], &["app"]);
    let mut ctx = ctx(t(100));
    ctx.images.insert(
        "app-0".to_owned(),
        ContainerImage {
            image: "example.com/app:1".to_owned(),
            image_ref: "sha256:abcd".to_owned(),
        },
    );
    let status = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &ctx);

    assert_eq!(status.host_ip.as_deref(), Some(NODE_IP));
    assert_eq!(
        status.host_ips,
        Some(vec![HostIP {
            ip: NODE_IP.to_owned()
        }])
    );
    assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
    assert_eq!(
        status.pod_ips,
        Some(vec![PodIP {
            ip: POD_IP.to_owned()
        }])
    );
    assert_eq!(status.start_time, Some(Time(t(100))));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    assert_eq!(status.init_container_statuses, None);

    let app = app_status(&status, "app");
    assert_eq!(app.container_id.as_deref(), Some("containerd://app-0"));
    assert_eq!(app.image, "example.com/app:1");
    assert_eq!(app.image_id, "sha256:abcd");
    let running = app
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .expect("running");
    assert_eq!(running.started_at, Some(Time(t(2))));
    // Upstream publishes `lastState: {}` when there is none.
    assert_eq!(app.last_state, Some(ApiState::default()));
    for c in status.conditions.iter().flatten() {
        assert_eq!(c.last_transition_time, Some(Time(t(100))), "{}", c.type_);
    }
}

#[test]
fn image_falls_back_to_the_spec_and_runtime_type_is_configurable() {
    let pod = pod("Always", &[], &["app"]);
    let mut ctx = ctx(t(100));
    ctx.runtime_type = "cri-o".to_owned();
    let status = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &ctx);
    let app = app_status(&status, "app");
    assert_eq!(app.image, "example.com/app:1");
    assert_eq!(app.image_id, "");
    assert_eq!(app.container_id.as_deref(), Some("cri-o://app-0"));
}

#[test]
fn crash_loop_back_off_details() {
    let pod = pod("Always", &[], &["app"]);
    let message = "back-off 20s restarting failed container=app pod=web-node-a_default(uid)";
    let status = pod_status(
        &pod,
        &observed(vec![exited("app", 0, 1), exited("app", 1, 2)]),
        &[waiting(
            "app",
            WaitingReason::CrashLoopBackOff,
            Some(message),
        )],
        &ctx(t(100)),
    );
    let app = app_status(&status, "app");
    let w = app
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .expect("waiting");
    assert_eq!(w.message.as_deref(), Some(message));
    let last = app
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last state");
    assert_eq!(last.container_id.as_deref(), Some("containerd://app-1"));
    assert_eq!(last.started_at, Some(Time(t(12))));
    assert_eq!(last.finished_at, Some(Time(t(15))));
    assert_eq!(app.container_id.as_deref(), Some("containerd://app-1"));
}

#[test]
fn kernel_oom_verdict_is_explained_and_sticks() {
    let pod = pod("Never", &[], &["app"]);
    let observed = observed(vec![exited("app", 0, 1)]);
    let mut first_ctx = ctx(t(100));
    first_ctx.facts.insert(
        "app-0".to_owned(),
        ContainerFacts {
            oom_killed_by_kernel: true,
            process_oom_kills: 2,
            ready_by_probe: None,
        },
    );
    let first = pod_status(&pod, &observed, &[], &first_ctx);
    let term = app_status(&first, "app")
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(term.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(term.exit_code, 137);
    assert_eq!(
        term.message.as_deref(),
        Some(
            "The kernel OOM-killed the container's init process; the runtime reported Error \
             with exit code 1. The kernel OOM-killed 2 other processes of the container."
        )
    );

    // The facts are gone (agent restart, event aged out); the verdict is not.
    let mut later_ctx = ctx(t(200));
    later_ctx.previous = Some(first.clone());
    let later = pod_status(&pod, &observed, &[], &later_ctx);
    assert_eq!(
        app_status(&later, "app").state,
        app_status(&first, "app").state
    );
}

#[test]
fn process_oom_kills_alone_keep_the_runtime_reason() {
    let pod = pod("Never", &[], &["app"]);
    let mut ctx = ctx(t(100));
    ctx.facts.insert(
        "app-0".to_owned(),
        ContainerFacts {
            process_oom_kills: 1,
            ..ContainerFacts::default()
        },
    );
    let status = pod_status(&pod, &observed(vec![exited("app", 0, 3)]), &[], &ctx);
    let term = app_status(&status, "app")
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(term.reason.as_deref(), Some("Error"));
    assert_eq!(term.exit_code, 3);
    assert_eq!(
        term.message.as_deref(),
        Some("The kernel OOM-killed 1 other process of the container.")
    );
}

#[test]
fn condition_transition_times_are_kept_until_the_status_changes() {
    let pod = pod("Always", &[], &["app"]);
    let waiting_now = [waiting("app", WaitingReason::ContainerCreating, None)];
    let mut c = ctx(t(100));
    let s1 = pod_status(&pod, &observed(vec![]), &waiting_now, &c);
    assert_eq!(condition(&s1, "Ready").status, "False");

    // Same inputs later: nothing transitions.
    c.previous = Some(s1.clone());
    c.now = t(150);
    let s2 = pod_status(&pod, &observed(vec![]), &waiting_now, &c);
    for cond in s2.conditions.iter().flatten() {
        assert_eq!(
            cond.last_transition_time,
            Some(Time(t(100))),
            "{}",
            cond.type_
        );
    }

    // The container runs: Ready and ContainersReady transition, the others keep theirs.
    c.previous = Some(s2);
    c.now = t(200);
    let s3 = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &c);
    for (type_, at) in [
        ("PodReadyToStartContainers", 100),
        ("Initialized", 100),
        ("Ready", 200),
        ("ContainersReady", 200),
        ("PodScheduled", 100),
    ] {
        let cond = condition(&s3, type_);
        assert_eq!(cond.last_transition_time, Some(Time(t(at))), "{type_}");
    }
    assert_eq!(
        s3.start_time,
        Some(Time(t(100))),
        "start time is the first sync"
    );

    // A reason change without a status change is not a transition.
    c.previous = Some(s3);
    c.now = t(300);
    let s4 = pod_status(
        &pod,
        &observed(vec![exited("app", 0, 1)]),
        &[waiting(
            "app",
            WaitingReason::CrashLoopBackOff,
            Some("back-off 10s"),
        )],
        &c,
    );
    assert_eq!(condition(&s4, "Ready").status, "False");
    assert_eq!(
        condition(&s4, "Ready").last_transition_time,
        Some(Time(t(300)))
    );
    c.previous = Some(s4);
    c.now = t(400);
    let s5 = pod_status(
        &pod,
        &observed(vec![exited("app", 0, 1), exited("app", 1, 1)]),
        &[waiting(
            "app",
            WaitingReason::CrashLoopBackOff,
            Some("back-off 20s"),
        )],
        &c,
    );
    assert_eq!(
        condition(&s5, "Ready").last_transition_time,
        Some(Time(t(300)))
    );
}

#[test]
fn unready_messages_name_the_containers() {
    let pod = pod("Always", &["init-a", "side-b"], &["app-z", "app-y"]);
    let status = pod_status(
        &pod,
        &observed(vec![running("init-a", 0)]),
        &[],
        &ctx(t(100)),
    );
    let init = condition(&status, "Initialized");
    assert_eq!(
        init.message.as_deref(),
        Some("containers with incomplete status: [init-a side-b]")
    );
    let ready = condition(&status, "ContainersReady");
    assert_eq!(
        ready.message.as_deref(),
        Some("containers with unready status: [side-b app-z app-y]")
    );
    assert_eq!(condition(&status, "Ready").message, ready.message);
}

#[test]
fn readiness_gates_read_the_previous_conditions() {
    let mut pod = pod("Always", &[], &["app"]);
    pod.spec.as_mut().expect("spec").readiness_gates =
        Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
            condition_type: "example.com/lb".to_owned(),
        }]);
    let observed = observed(vec![running("app", 0)]);
    let mut c = ctx(t(100));
    let s1 = pod_status(&pod, &observed, &[], &c);
    let ready = condition(&s1, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"example.com/lb\" does not exist.")
    );
    assert_eq!(condition(&s1, "ContainersReady").status, "True");

    // Someone else sets the gate's condition; it is carried over and honoured.
    let mut prev = s1;
    prev.conditions
        .get_or_insert_with(Vec::new)
        .push(PodCondition {
            type_: "example.com/lb".to_owned(),
            status: "True".to_owned(),
            last_transition_time: Some(Time(t(120))),
            ..PodCondition::default()
        });
    c.previous = Some(prev);
    c.now = t(130);
    let s2 = pod_status(&pod, &observed, &[], &c);
    assert_eq!(condition(&s2, "Ready").status, "True");
    assert_eq!(
        condition(&s2, "example.com/lb").last_transition_time,
        Some(Time(t(120)))
    );
}

#[test]
fn eviction_marks_the_pod_and_sticks() {
    let pod = pod("Always", &[], &["app"]);
    let observed = observed(vec![running("app", 0)]);
    let mut c = ctx(t(100));
    let mut status = pod_status(&pod, &observed, &[], &c);
    let message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: \
                   51200Ki. Container app was using 812Mi, request is 100Mi, has larger \
                   consumption of memory. ";
    mark_evicted(&mut status, message, t(110));
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(status.message.as_deref(), Some(message));
    let target = condition(&status, "DisruptionTarget");
    assert_eq!(target.status, "True");
    assert_eq!(target.reason.as_deref(), Some("TerminationByKubelet"));
    assert_eq!(target.message.as_deref(), Some(message));
    assert_eq!(target.last_transition_time, Some(Time(t(110))));

    // Marking again keeps the transition time of the condition.
    let mut again = status.clone();
    mark_evicted(&mut again, message, t(115));
    assert_eq!(
        condition(&again, "DisruptionTarget").last_transition_time,
        Some(Time(t(110)))
    );

    // The container still runs (being killed): the pod stays Failed/Evicted.
    c.previous = Some(status);
    c.now = t(120);
    let next = pod_status(&pod, &observed, &[], &c);
    assert_eq!(next.phase.as_deref(), Some("Failed"));
    assert_eq!(next.reason.as_deref(), Some("Evicted"));
    assert_eq!(next.message.as_deref(), Some(message));
    assert_eq!(
        condition(&next, "DisruptionTarget").last_transition_time,
        Some(Time(t(110)))
    );
    assert_eq!(
        condition(&next, "Ready").reason.as_deref(),
        Some("PodFailed")
    );
}

#[test]
fn succeeded_pod_keeps_its_ip_after_the_sandbox_is_gone() {
    let pod = pod("Never", &[], &["app"]);
    let mut c = ctx(t(100));
    let s1 = pod_status(&pod, &observed(vec![exited("app", 0, 0)]), &[], &c);
    assert_eq!(s1.phase.as_deref(), Some("Succeeded"));
    c.previous = Some(s1);
    c.now = t(200);
    let gone = ObservedPod {
        sandboxes: vec![ObservedSandbox {
            ready: false,
            ip: None,
            ..sandbox()
        }],
        containers: vec![exited("app", 0, 0)],
    };
    let s2 = pod_status(&pod, &gone, &[], &c);
    assert_eq!(s2.phase.as_deref(), Some("Succeeded"));
    assert_eq!(s2.pod_ip.as_deref(), Some(POD_IP));
    assert_eq!(condition(&s2, "PodReadyToStartContainers").status, "False");
}

#[test]
fn host_network_pod_reports_the_node_ips() {
    let mut pod = pod("Always", &[], &["app"]);
    pod.spec.as_mut().expect("spec").host_network = Some(true);
    let mut c = ctx(t(100));
    c.node_ips.push("fd00::10".parse().expect("ip"));
    let observed = ObservedPod {
        sandboxes: vec![ObservedSandbox {
            host_network: true,
            ip: None,
            ..sandbox()
        }],
        containers: vec![running("app", 0)],
    };
    let status = pod_status(&pod, &observed, &[], &c);
    assert_eq!(status.pod_ip.as_deref(), Some(NODE_IP));
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    assert_eq!(ips, [NODE_IP, "fd00::10"]);
    assert_eq!(status.host_ips.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        condition(&status, "PodReadyToStartContainers").status,
        "True"
    );
}

#[test]
fn container_gone_from_the_runtime_after_running() {
    let pod = pod("Always", &[], &["app"]);
    let mut c = ctx(t(100));
    let s1 = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &c);
    c.previous = Some(s1);
    c.now = t(200);
    let s2 = pod_status(
        &pod,
        &observed(vec![]),
        &[waiting("app", WaitingReason::ContainerCreating, None)],
        &c,
    );
    assert_eq!(
        summary(app_status(&s2, "app")),
        "app waiting:ContainerCreating terminated:ContainerStatusUnknown:137 1 unready -"
    );
    // Not counted twice.
    c.previous = Some(s2);
    c.now = t(300);
    let s3 = pod_status(&pod, &observed(vec![]), &[], &c);
    assert_eq!(app_status(&s3, "app").restart_count, 1);
}

#[test]
fn finished_init_container_removed_by_the_runtime_keeps_its_status() {
    let pod = pod("Always", &["init"], &["app"]);
    let mut c = ctx(t(100));
    let s1 = pod_status(
        &pod,
        &observed(vec![exited("init", 0, 0), running("app", 0)]),
        &[],
        &c,
    );
    c.previous = Some(s1.clone());
    c.now = t(200);
    let s2 = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &c);
    assert_eq!(
        app_status(&s2, "init"),
        app_status(&s1, "init"),
        "garbage-collected init container"
    );
    assert_eq!(condition(&s2, "Initialized").status, "True");
}

#[test]
fn last_state_survives_garbage_collection_of_the_previous_attempt() {
    let pod = pod("Always", &[], &["app"]);
    let mut c = ctx(t(100));
    let s1 = pod_status(
        &pod,
        &observed(vec![exited("app", 0, 1), running("app", 1)]),
        &[],
        &c,
    );
    c.previous = Some(s1);
    c.now = t(200);
    let s2 = pod_status(&pod, &observed(vec![running("app", 1)]), &[], &c);
    let last = app_status(&s2, "app")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last state kept");
    assert_eq!(last.container_id.as_deref(), Some("containerd://app-0"));
}

#[test]
fn status_serializes_like_the_kubelet() {
    let pod = pod("Always", &[], &["app"]);
    let status = pod_status(&pod, &observed(vec![running("app", 0)]), &[], &ctx(t(100)));
    let v = serde_json::to_value(&status).expect("serialize");
    assert_eq!(v["phase"], "Running");
    assert_eq!(v["startTime"], "2023-11-14T22:15:00Z");
    assert_eq!(v["containerStatuses"][0]["lastState"], json!({}));
    assert_eq!(
        v["containerStatuses"][0]["state"]["running"]["startedAt"],
        "2023-11-14T22:13:22Z"
    );
    assert_eq!(v["conditions"][0]["type"], "PodReadyToStartContainers");
    let _: HashMap<String, serde_json::Value> = serde_json::from_value(v).expect("an object");
}
