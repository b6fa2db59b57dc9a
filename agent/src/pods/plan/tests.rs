use serde_json::json;

use super::*;

const UID: &str = "0123456789abcdef0123456789abcdef";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
}

/// A pod: `apps` and `inits` are container names; an init name starting with "side" is a
/// sidecar (restartPolicy Always); "probed-side" also has a startup probe.
fn pod(policy: &str, inits: &[&str], apps: &[&str]) -> Pod {
    let container = |name: &&str| {
        let mut c = json!({"name": name, "image": "busybox"});
        if name.starts_with("side") || name.starts_with("probed-side") {
            c["restartPolicy"] = json!("Always");
        }
        if name.starts_with("probed") {
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

fn spec_container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn sandbox(id: &str, ready: bool, attempt: u32) -> ObservedSandbox {
    ObservedSandbox {
        id: id.to_owned(),
        ready,
        created: t(i64::from(attempt)),
        attempt,
        host_network: false,
        ip: Some("10.88.0.2".to_owned()),
    }
}

/// An observed container whose hash matches `pod`'s spec.
fn container(pod: &Pod, name: &str, state: ContainerState) -> ObservedContainer {
    ObservedContainer {
        id: format!("{name}-id"),
        name: name.to_owned(),
        state,
        created: t(10),
        started_at: (state != ContainerState::Created).then(|| t(11)),
        finished_at: (state == ContainerState::Exited).then(|| t(20)),
        exit_code: (state == ContainerState::Exited).then_some(0),
        reason: None,
        restart_count: 0,
        spec_hash: Some(container_hash(spec_container(pod, name))),
        liveness: ProbeVerdict::Unknown,
        startup: ProbeVerdict::Unknown,
    }
}

fn exited(pod: &Pod, name: &str, code: i32) -> ObservedContainer {
    ObservedContainer {
        exit_code: Some(code),
        ..container(pod, name, ContainerState::Exited)
    }
}

fn running(pod: &Pod, name: &str) -> ObservedContainer {
    container(pod, name, ContainerState::Running)
}

fn ready(containers: Vec<ObservedContainer>) -> ObservedPod {
    ObservedPod {
        sandboxes: vec![sandbox("sb-1", true, 0)],
        containers,
    }
}

/// A compact view of the actions for table comparisons.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    kill_pod: Option<KillPodReason>,
    create: Option<(u32, SandboxReason)>,
    init_start: Vec<(&'static str, StartReason)>,
    start: Vec<(&'static str, StartReason)>,
    kill: Vec<(&'static str, KillReason)>,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn summary(a: &PodActions) -> Summary {
    let starts = |v: &[ContainerStart]| v.iter().map(|s| (leak(&s.name), s.reason)).collect();
    Summary {
        kill_pod: a.kill_pod.as_ref().map(|k| k.reason),
        create: a.create_sandbox.as_ref().map(|c| (c.attempt, c.reason)),
        init_start: starts(&a.init_containers_to_start),
        start: starts(&a.containers_to_start),
        kill: a
            .containers_to_kill
            .iter()
            .map(|k| (leak(&k.name), k.reason))
            .collect(),
    }
}

fn plan(pod: &Pod, observed: &ObservedPod) -> PodActions {
    compute_pod_actions(pod, observed, &Backoff::default(), t(100))
}

#[test]
fn sandbox_rows() {
    use ContainerState::Exited as E;
    use KillPodReason::{PodDone, SandboxChanged};
    use SandboxReason::*;
    use StartReason::NewSandbox;

    let always = pod("Always", &[], &["app", "log"]);
    let with_init = pod("Always", &["init"], &["app"]);
    let on_failure = pod("OnFailure", &[], &["app", "log"]);
    let never = pod("Never", &[], &["app"]);
    let mut host = pod("Always", &[], &["app"]);
    host.spec.as_mut().expect("spec").host_network = Some(true);

    let dead = |containers| ObservedPod {
        sandboxes: vec![sandbox("sb-old", false, 2)],
        containers,
    };
    let no_ip = ObservedPod {
        sandboxes: vec![ObservedSandbox {
            ip: None,
            ..sandbox("sb-1", true, 0)
        }],
        containers: vec![running(&always, "app"), running(&always, "log")],
    };
    let two_ready = ObservedPod {
        sandboxes: vec![sandbox("sb-1", true, 0), sandbox("sb-2", true, 1)],
        containers: vec![],
    };

    let rows: Vec<(&str, &Pod, ObservedPod, Summary)> = vec![
        (
            "nothing yet: sandbox attempt 0, all apps",
            &always,
            ObservedPod::default(),
            Summary {
                create: Some((0, NoSandbox)),
                start: vec![("app", NewSandbox), ("log", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "nothing yet with an init container: only the first init container",
            &with_init,
            ObservedPod::default(),
            Summary {
                create: Some((0, NoSandbox)),
                init_start: vec![("init", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "sandbox died: kill everything, attempt + 1",
            &always,
            dead(vec![running(&always, "app")]),
            Summary {
                kill_pod: Some(SandboxChanged),
                create: Some((3, NotReady)),
                start: vec![("app", NewSandbox), ("log", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "two ready sandboxes: reconcile",
            &always,
            two_ready,
            Summary {
                kill_pod: Some(SandboxChanged),
                create: Some((2, MultipleReady)),
                start: vec![("app", NewSandbox), ("log", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "hostNetwork changed",
            &host,
            ready(vec![running(&host, "app")]),
            Summary {
                kill_pod: Some(SandboxChanged),
                create: Some((1, NetworkChanged)),
                start: vec![("app", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "no IP without host network",
            &always,
            no_ip,
            Summary {
                kill_pod: Some(SandboxChanged),
                create: Some((1, NoIp)),
                start: vec![("app", NewSandbox), ("log", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "Never: a dead sandbox of a pod that ran is not recreated (nor stopped again)",
            &never,
            dead(vec![exited(&never, "app", 1)]),
            Summary::default(),
        ),
        (
            "Never: a dead sandbox with a container still running: stop it, no new sandbox",
            &never,
            dead(vec![running(&never, "app")]),
            Summary {
                kill_pod: Some(SandboxChanged),
                ..Summary::default()
            },
        ),
        (
            "OnFailure: everything succeeded, no new sandbox, nothing left to stop",
            &on_failure,
            dead(vec![
                exited(&on_failure, "app", 0),
                exited(&on_failure, "log", 0),
            ]),
            Summary::default(),
        ),
        (
            "OnFailure: only the failed container comes back",
            &on_failure,
            dead(vec![
                exited(&on_failure, "app", 0),
                exited(&on_failure, "log", 2),
            ]),
            Summary {
                kill_pod: Some(SandboxChanged),
                create: Some((3, NotReady)),
                start: vec![("log", NewSandbox)],
                ..Summary::default()
            },
        ),
        (
            "healthy pod: nothing to do",
            &always,
            ready(vec![running(&always, "app"), running(&always, "log")]),
            Summary::default(),
        ),
        (
            "host network pod needs no IP",
            &host,
            ObservedPod {
                sandboxes: vec![ObservedSandbox {
                    host_network: true,
                    ip: None,
                    ..sandbox("sb-1", true, 0)
                }],
                containers: vec![container(&host, "app", ContainerState::Running)],
            },
            Summary::default(),
        ),
        (
            "Never: all exited in a ready sandbox: stop the sandbox",
            &never,
            ready(vec![container(&never, "app", E)]),
            Summary {
                kill_pod: Some(PodDone),
                ..Summary::default()
            },
        ),
    ];
    for (what, pod, observed, want) in rows {
        assert_eq!(summary(&plan(pod, &observed)), want, "{what}");
    }
}

#[test]
fn app_container_rows() {
    use KillPodReason::PodDone;
    use StartReason::*;

    let always = pod("Always", &[], &["app", "log"]);
    let on_failure = pod("OnFailure", &[], &["app", "log"]);
    let never = pod("Never", &[], &["app", "log"]);
    let changed = ObservedContainer {
        spec_hash: Some("0000000000000000".to_owned()),
        ..running(&always, "app")
    };
    let live_failed = |p: &Pod| ObservedContainer {
        liveness: ProbeVerdict::Failure,
        ..running(p, "app")
    };
    let startup_failed = ObservedContainer {
        startup: ProbeVerdict::Failure,
        ..running(&always, "app")
    };
    let unknown = container(&always, "app", ContainerState::Unknown);
    let created = container(&always, "app", ContainerState::Created);

    let rows: Vec<(&str, &Pod, ObservedPod, Summary)> = vec![
        (
            "Always: exited 0 restarts",
            &always,
            ready(vec![exited(&always, "app", 0), running(&always, "log")]),
            Summary {
                start: vec![("app", Exited { exit_code: 0 })],
                ..Summary::default()
            },
        ),
        (
            "Always: exited 1 restarts",
            &always,
            ready(vec![exited(&always, "app", 1), running(&always, "log")]),
            Summary {
                start: vec![("app", Exited { exit_code: 1 })],
                ..Summary::default()
            },
        ),
        (
            "OnFailure: exited 0 stays down",
            &on_failure,
            ready(vec![
                exited(&on_failure, "app", 0),
                running(&on_failure, "log"),
            ]),
            Summary::default(),
        ),
        (
            "OnFailure: exited 137 restarts",
            &on_failure,
            ready(vec![
                exited(&on_failure, "app", 137),
                running(&on_failure, "log"),
            ]),
            Summary {
                start: vec![("app", Exited { exit_code: 137 })],
                ..Summary::default()
            },
        ),
        (
            "Never: exited 1 stays down",
            &never,
            ready(vec![exited(&never, "app", 1), running(&never, "log")]),
            Summary::default(),
        ),
        (
            "Never: everything exited: stop the sandbox",
            &never,
            ready(vec![exited(&never, "app", 1), exited(&never, "log", 0)]),
            Summary {
                kill_pod: Some(PodDone),
                ..Summary::default()
            },
        ),
        (
            "OnFailure: all succeeded: stop the sandbox",
            &on_failure,
            ready(vec![
                exited(&on_failure, "app", 0),
                exited(&on_failure, "log", 0),
            ]),
            Summary {
                kill_pod: Some(PodDone),
                ..Summary::default()
            },
        ),
        (
            "not created yet",
            &always,
            ready(vec![running(&always, "log")]),
            Summary {
                start: vec![("app", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "spec hash changed: only that container, whatever the policy",
            &always,
            ready(vec![changed.clone(), running(&always, "log")]),
            Summary {
                start: vec![("app", SpecChanged)],
                kill: vec![("app", KillReason::SpecChanged)],
                ..Summary::default()
            },
        ),
        (
            "liveness failure restarts",
            &always,
            ready(vec![live_failed(&always), running(&always, "log")]),
            Summary {
                start: vec![("app", LivenessFailed)],
                kill: vec![("app", KillReason::LivenessProbe)],
                ..Summary::default()
            },
        ),
        (
            "liveness failure with Never: killed, not restarted",
            &never,
            ready(vec![live_failed(&never), running(&never, "log")]),
            Summary {
                kill: vec![("app", KillReason::LivenessProbe)],
                ..Summary::default()
            },
        ),
        (
            "startup failure restarts",
            &always,
            ready(vec![startup_failed, running(&always, "log")]),
            Summary {
                start: vec![("app", StartupFailed)],
                kill: vec![("app", KillReason::StartupProbe)],
                ..Summary::default()
            },
        ),
        (
            "unknown state: kill first, then start",
            &always,
            ready(vec![unknown, running(&always, "log")]),
            Summary {
                start: vec![("app", UnknownState)],
                kill: vec![("app", KillReason::UnknownState)],
                ..Summary::default()
            },
        ),
        (
            "created but never started",
            &always,
            ready(vec![created, running(&always, "log")]),
            Summary {
                start: vec![("app", CreatedNotStarted)],
                ..Summary::default()
            },
        ),
    ];
    for (what, pod, observed, want) in rows {
        assert_eq!(summary(&plan(pod, &observed)), want, "{what}");
    }

    let a = plan(&always, &ready(vec![changed, running(&always, "log")]));
    assert_eq!(
        a.containers_to_kill[0].message,
        "Container app definition changed, will be restarted"
    );
    assert_eq!(a.sandbox_id.as_deref(), Some("sb-1"));
}

#[test]
fn init_container_rows() {
    use KillPodReason::InitContainerFailed;
    use StartReason::*;

    let p = |policy| pod(policy, &["first", "second"], &["app"]);
    let always = p("Always");
    let never = p("Never");
    let on_failure = p("OnFailure");
    let sidecars = pod("Always", &["side-a", "init", "probed-side-b"], &["app"]);
    let never_sidecar = pod("Never", &["side-a"], &["app"]);

    let rows: Vec<(&str, &Pod, ObservedPod, Summary)> = vec![
        (
            "first done: start the second",
            &always,
            ready(vec![exited(&always, "first", 0)]),
            Summary {
                init_start: vec![("second", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "first running: wait",
            &always,
            ready(vec![running(&always, "first")]),
            Summary::default(),
        ),
        (
            "first failed, Always: restart it",
            &always,
            ready(vec![exited(&always, "first", 1)]),
            Summary {
                init_start: vec![("first", Exited { exit_code: 1 })],
                ..Summary::default()
            },
        ),
        (
            "first failed, OnFailure: restart it (as upstream)",
            &on_failure,
            ready(vec![exited(&on_failure, "first", 1)]),
            Summary {
                init_start: vec![("first", Exited { exit_code: 1 })],
                ..Summary::default()
            },
        ),
        (
            "first failed, Never: the pod fails",
            &never,
            ready(vec![exited(&never, "first", 1)]),
            Summary {
                kill_pod: Some(InitContainerFailed),
                ..Summary::default()
            },
        ),
        (
            "init unknown, Always: kill and restart",
            &always,
            ready(vec![container(&always, "first", ContainerState::Unknown)]),
            Summary {
                init_start: vec![("first", UnknownState)],
                kill: vec![("first", KillReason::UnknownState)],
                ..Summary::default()
            },
        ),
        (
            "all init done: start the app",
            &always,
            ready(vec![
                exited(&always, "first", 0),
                exited(&always, "second", 0),
            ]),
            Summary {
                start: vec![("app", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "first garbage-collected, second done: start the app",
            &always,
            ready(vec![exited(&always, "second", 0)]),
            Summary {
                start: vec![("app", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "app already running, init statuses gone: nothing",
            &always,
            ready(vec![running(&always, "app")]),
            Summary::default(),
        ),
        (
            "sidecar first: start it, nothing after it yet",
            &sidecars,
            ready(vec![]),
            Summary {
                init_start: vec![("side-a", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "sidecar running: the next init container starts",
            &sidecars,
            ready(vec![running(&sidecars, "side-a")]),
            Summary {
                init_start: vec![("init", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "probed sidecar not started yet: wait for its startup probe",
            &sidecars,
            ready(vec![
                running(&sidecars, "side-a"),
                exited(&sidecars, "init", 0),
                running(&sidecars, "probed-side-b"),
            ]),
            Summary::default(),
        ),
        (
            "probed sidecar started: the app starts",
            &sidecars,
            ready(vec![
                running(&sidecars, "side-a"),
                exited(&sidecars, "init", 0),
                ObservedContainer {
                    startup: ProbeVerdict::Success,
                    ..running(&sidecars, "probed-side-b")
                },
            ]),
            Summary {
                start: vec![("app", NotCreated)],
                ..Summary::default()
            },
        ),
        (
            "sidecar crashed while the app runs: restart only the sidecar",
            &sidecars,
            ready(vec![
                exited(&sidecars, "side-a", 1),
                exited(&sidecars, "init", 0),
                running(&sidecars, "probed-side-b"),
                running(&sidecars, "app"),
            ]),
            Summary {
                init_start: vec![("side-a", Exited { exit_code: 1 })],
                ..Summary::default()
            },
        ),
        (
            "sidecar spec changed: restart it, keep going",
            &sidecars,
            ready(vec![
                ObservedContainer {
                    spec_hash: Some("changed".to_owned()),
                    ..running(&sidecars, "side-a")
                },
                exited(&sidecars, "init", 0),
                ObservedContainer {
                    startup: ProbeVerdict::Success,
                    ..running(&sidecars, "probed-side-b")
                },
                running(&sidecars, "app"),
            ]),
            Summary {
                init_start: vec![("side-a", SpecChanged)],
                kill: vec![("side-a", KillReason::SpecChanged)],
                ..Summary::default()
            },
        ),
        (
            "Never: app done while sidecars run: stop the pod",
            &never_sidecar,
            ready(vec![
                running(&never_sidecar, "side-a"),
                exited(&never_sidecar, "app", 0),
            ]),
            Summary {
                kill_pod: Some(KillPodReason::PodDone),
                ..Summary::default()
            },
        ),
    ];
    for (what, pod, observed, want) in rows {
        assert_eq!(summary(&plan(pod, &observed)), want, "{what}");
    }
}

#[test]
fn waiting_reasons() {
    let p = pod("Always", &["init"], &["app", "log"]);
    let a = plan(&p, &ready(vec![running(&p, "init")]));
    let reasons: Vec<(&str, WaitingReason)> = a
        .waiting
        .iter()
        .map(|w| (w.container.as_str(), w.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("app", WaitingReason::PodInitializing),
            ("log", WaitingReason::PodInitializing)
        ]
    );

    let p = pod("Always", &[], &["app"]);
    let a = plan(&p, &ObservedPod::default());
    assert_eq!(
        a.waiting,
        vec![Waiting {
            container: "app".to_owned(),
            reason: WaitingReason::ContainerCreating,
            message: None
        }]
    );
}

#[test]
fn crash_loop_backoff() {
    let p = pod("Always", &[], &["app"]);
    let key = BackoffKey::new(UID, "app");
    let mut backoff = Backoff::default();
    // First crash: restart at once.
    let crashed = |finished: i64, restarts: u32| {
        ready(vec![ObservedContainer {
            finished_at: Some(t(finished)),
            restart_count: restarts,
            ..exited(&p, "app", 1)
        }])
    };
    let a = compute_pod_actions(&p, &crashed(0, 0), &backoff, t(0));
    assert_eq!(a.containers_to_start[0].backoff, None);
    assert_eq!(a.containers_to_start[0].attempt, 1);
    backoff.record_restart(&key, t(0), t(0));
    backoff.record_restart(&key, t(5), t(15));

    // Crashed again at 20 with a 20s window: at 25, 15s are left.
    let a = compute_pod_actions(&p, &crashed(20, 2), &backoff, t(25));
    let start = &a.containers_to_start[0];
    assert_eq!(start.attempt, 3);
    let wait = start.backoff.as_ref().expect("in backoff");
    assert_eq!(wait.delay, Duration::from_secs(20));
    assert_eq!(wait.remaining, Duration::from_secs(15));
    let message =
        format!("back-off 20s restarting failed container=app pod=web-node-a_default({UID})");
    assert_eq!(wait.message, message);
    assert_eq!(
        a.waiting,
        vec![Waiting {
            container: "app".to_owned(),
            reason: WaitingReason::CrashLoopBackOff,
            message: Some(message),
        }]
    );
    assert_eq!(a.kill_pod, None, "a container in backoff keeps the pod");

    // At 40 the window is over.
    let a = compute_pod_actions(&p, &crashed(20, 2), &backoff, t(40));
    assert_eq!(a.containers_to_start[0].backoff, None);

    // Long windows print like Go.
    for _ in 0..5 {
        backoff.record_restart(&key, t(20), t(40));
    }
    let a = compute_pod_actions(&p, &crashed(50, 9), &backoff, t(51));
    let wait = a.containers_to_start[0]
        .backoff
        .as_ref()
        .expect("in backoff");
    assert!(
        wait.message
            .starts_with("back-off 5m0s restarting failed container=app"),
        "{}",
        wait.message
    );
}

#[test]
fn deleted_pod_is_killed() {
    let mut p = pod("Always", &[], &["app"]);
    p.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0)));
    let a = plan(&p, &ready(vec![running(&p, "app")]));
    assert_eq!(
        summary(&a),
        Summary {
            kill_pod: Some(KillPodReason::Deleted),
            ..Summary::default()
        }
    );
}

#[test]
fn container_hash_tracks_the_spec() {
    let p = pod("Always", &[], &["app"]);
    let c = spec_container(&p, "app");
    assert_eq!(container_hash(c), container_hash(&c.clone()));
    assert_eq!(container_hash(c).len(), 16);
    let mut edited = c.clone();
    edited.image = Some("busybox:1.36".to_owned());
    assert_ne!(container_hash(c), container_hash(&edited));
}

#[test]
fn phases() {
    let (r, c, u) = (
        ContainerState::Running,
        ContainerState::Created,
        ContainerState::Unknown,
    );
    use Phase::*;

    let row =
        |policy: &str, inits: &[&str], apps: &[&str], observed: &[(&str, ContainerState, i32)]| {
            let p = pod(policy, inits, apps);
            let containers = observed
                .iter()
                .map(|&(name, state, code)| ObservedContainer {
                    exit_code: Some(code),
                    ..container(&p, name, state)
                })
                .collect();
            pod_phase(&p, &ready(containers))
        };
    let e = ContainerState::Exited;
    let cases: Vec<(&str, Phase, Phase)> = vec![
        ("nothing started", row("Always", &[], &["a"], &[]), Pending),
        (
            "all running",
            row("Always", &[], &["a", "b"], &[("a", r, 0), ("b", r, 0)]),
            Running,
        ),
        (
            "one not created",
            row("Always", &[], &["a", "b"], &[("a", r, 0)]),
            Pending,
        ),
        (
            "created",
            row("Always", &[], &["a"], &[("a", c, 0)]),
            Pending,
        ),
        (
            "unknown",
            row("Always", &[], &["a"], &[("a", u, 0)]),
            Pending,
        ),
        (
            "init running",
            row("Always", &["i"], &["a"], &[("i", r, 0)]),
            Pending,
        ),
        (
            "init failed, Never",
            row("Never", &["i"], &["a"], &[("i", e, 1)]),
            Failed,
        ),
        (
            "init failed, Always",
            row("Always", &["i"], &["a"], &[("i", e, 1)]),
            Pending,
        ),
        (
            "init done, app running",
            row("Always", &["i"], &["a"], &[("i", e, 0), ("a", r, 0)]),
            Running,
        ),
        (
            "init gone, app running",
            row("Always", &["i"], &["a"], &[("a", r, 0)]),
            Running,
        ),
        (
            "Always, all exited",
            row("Always", &[], &["a"], &[("a", e, 0)]),
            Running,
        ),
        (
            "OnFailure, all exited 0",
            row("OnFailure", &[], &["a", "b"], &[("a", e, 0), ("b", e, 0)]),
            Succeeded,
        ),
        (
            "OnFailure, one failed",
            row("OnFailure", &[], &["a", "b"], &[("a", e, 0), ("b", e, 1)]),
            Running,
        ),
        (
            "Never, all exited 0",
            row("Never", &[], &["a"], &[("a", e, 0)]),
            Succeeded,
        ),
        (
            "Never, one failed",
            row("Never", &[], &["a", "b"], &[("a", e, 0), ("b", e, 2)]),
            Failed,
        ),
        (
            "Never, one still running",
            row("Never", &[], &["a", "b"], &[("a", e, 1), ("b", r, 0)]),
            Running,
        ),
        (
            "sidecar starting",
            row("Always", &["side"], &["a"], &[("side", c, 0)]),
            Pending,
        ),
        (
            "sidecar + app running",
            row("Always", &["side"], &["a"], &[("side", r, 0), ("a", r, 0)]),
            Running,
        ),
        (
            "Never: app done, sidecar still running",
            row("Never", &["side"], &["a"], &[("side", r, 0), ("a", e, 0)]),
            Running,
        ),
        (
            "Never: app done, sidecar stopped",
            row("Never", &["side"], &["a"], &[("side", e, 137), ("a", e, 0)]),
            Succeeded,
        ),
        (
            "probed sidecar not started",
            row("Always", &["probed-side"], &["a"], &[("probed-side", r, 0)]),
            Pending,
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
}

fn failed_start(
    at: i64,
    reason: WaitingReason,
    message: &str,
) -> crate::pods::backoff::StartFailure {
    crate::pods::backoff::StartFailure {
        at: t(at),
        reason,
        message: message.to_owned(),
        image: None,
    }
}

#[test]
fn a_failed_start_backs_off_and_says_why_while_its_sibling_starts() {
    let p = pod("Always", &[], &["bad", "good"]);
    let key = BackoffKey::new(UID, "bad");
    let mut backoff = Backoff::default();
    // Never created (its image is missing): nothing in the runtime, only the failure.
    let message = "Container image \"busybox\" is not present with pull policy of Never";
    backoff.record_failure(
        &key,
        failed_start(0, WaitingReason::ErrImageNeverPull, message),
    );
    let observed = ready(vec![]);
    let a = compute_pod_actions(&p, &observed, &backoff, t(3));
    let (bad, good) = (&a.containers_to_start[0], &a.containers_to_start[1]);
    let wait = bad.backoff.as_ref().expect("bad waits");
    assert_eq!(
        (wait.delay, wait.remaining),
        (Duration::from_secs(10), Duration::from_secs(7))
    );
    assert_eq!(bad.backoff_since, Some(t(0)));
    assert_eq!((good.backoff.as_ref(), good.backoff_since), (None, None));
    assert_eq!(
        a.waiting[0],
        Waiting {
            container: "bad".to_owned(),
            reason: WaitingReason::ErrImageNeverPull,
            message: Some(message.to_owned()),
        },
        "upstream repeats ErrImageNeverPull while it retries"
    );
    // The window over, the start goes ahead and arms the next window from the failure.
    let a = compute_pod_actions(&p, &observed, &backoff, t(10));
    assert_eq!(a.containers_to_start[0].backoff, None);
    assert_eq!(a.containers_to_start[0].backoff_since, Some(t(0)));
}

#[test]
fn a_container_the_runtime_could_not_start_is_in_crash_loop_back_off() {
    let p = pod("Always", &[], &["app"]);
    let key = BackoffKey::new(UID, "app");
    let mut backoff = Backoff::default();
    // containerd keeps a failed start as an exited container (128, StartError).
    let failed = ObservedContainer {
        finished_at: Some(t(20)),
        reason: Some("StartError".to_owned()),
        ..exited(&p, "app", 128)
    };
    let runc = "exec: \"/no/such/binary\": stat /no/such/binary: no such file or directory";
    backoff.record_failure(
        &key,
        failed_start(21, WaitingReason::RunContainerError, runc),
    );
    let a = compute_pod_actions(&p, &ready(vec![failed.clone()]), &backoff, t(25));
    let wait = a.containers_to_start[0].backoff.as_ref().expect("waits");
    assert_eq!(wait.reason, WaitingReason::CrashLoopBackOff);
    assert_eq!(
        wait.message,
        format!(
            "back-off 10s restarting failed container=app pod=web-node-a_default({UID}): \
             RunContainerError: {runc}"
        )
    );
    assert_eq!(a.containers_to_start[0].backoff_since, Some(t(21)));
    // An exit newer than the failure (the container started and crashed since) is the
    // previous attempt: a plain crash loop.
    let crashed = ObservedContainer {
        finished_at: Some(t(30)),
        restart_count: 1,
        ..exited(&p, "app", 1)
    };
    let a = compute_pod_actions(&p, &ready(vec![failed, crashed]), &backoff, t(31));
    let wait = a.containers_to_start[0].backoff.as_ref().expect("waits");
    assert_eq!(wait.reason, WaitingReason::CrashLoopBackOff);
    assert!(
        !wait.message.contains("RunContainerError"),
        "{}",
        wait.message
    );
    assert_eq!(a.containers_to_start[0].backoff_since, Some(t(30)));
}

#[test]
fn an_image_that_could_not_be_pulled_is_in_image_pull_back_off() {
    let p = pod("Always", &[], &["app"]);
    let key = BackoffKey::new(UID, "app");
    let mut backoff = Backoff::default();
    backoff.record_failure(
        &key,
        failed_start(0, WaitingReason::ErrImagePull, "not pulled"),
    );
    let a = compute_pod_actions(&p, &ready(vec![]), &backoff, t(1));
    assert_eq!(
        a.waiting[0],
        Waiting {
            container: "app".to_owned(),
            reason: WaitingReason::ImagePullBackOff,
            message: Some(
                "Back-off pulling image \"busybox\": ErrImagePull: not pulled".to_owned()
            ),
        }
    );
}

#[test]
fn a_pull_back_off_holds_only_the_image_that_failed_in_the_pod_that_failed() {
    let p = pod("Always", &[], &["app"]);
    let key = BackoffKey::new(UID, "app");
    let pulled = |image: &str| crate::pods::backoff::StartFailure {
        image: Some(image.to_owned()),
        ..failed_start(0, WaitingReason::ErrImagePull, "not found")
    };
    let mut backoff = Backoff::default();
    backoff.record_failure(&key, pulled("busybox"));
    let held = compute_pod_actions(&p, &ready(vec![]), &backoff, t(1));
    assert_eq!(held.waiting[0].reason, WaitingReason::ImagePullBackOff);
    assert!(held.containers_to_start[0].backoff.is_some());

    // Another pod with the same image (upstream's key is pod UID + image) is not held.
    let mut other = pod("Always", &[], &["app"]);
    other.metadata.uid = Some("fedcba9876543210fedcba9876543210".to_owned());
    let free = compute_pod_actions(&other, &ready(vec![]), &backoff, t(1));
    assert_eq!(free.waiting[0].reason, WaitingReason::ContainerCreating);
    assert_eq!(free.containers_to_start[0].backoff, None);

    // The failed pull was of an image the container no longer names: it starts now.
    let mut backoff = Backoff::default();
    backoff.record_failure(&key, pulled("busybox:old"));
    let changed = compute_pod_actions(&p, &ready(vec![]), &backoff, t(1));
    assert_eq!(changed.containers_to_start.len(), 1);
    assert_eq!(changed.containers_to_start[0].backoff, None);
    assert_eq!(changed.containers_to_start[0].backoff_since, None);
    assert_eq!(changed.waiting[0].reason, WaitingReason::ContainerCreating);
}
