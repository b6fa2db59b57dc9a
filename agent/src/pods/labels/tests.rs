use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, Lifecycle, LifecycleHandler, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn btree(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn container() -> Container {
    Container {
        name: "app".to_owned(),
        image: Some("busybox".to_owned()),
        termination_message_path: Some("/dev/termination-log".to_owned()),
        termination_message_policy: Some("File".to_owned()),
        ports: Some(vec![ContainerPort {
            container_port: 8080,
            name: Some("http".to_owned()),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sh".to_owned(), "-c".to_owned(), "sleep 1".to_owned()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    }
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-node1".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("0123abcd".to_owned()),
            labels: Some(btree(&[
                ("app", "web"),
                // A pod label cannot hijack the agent's keys.
                (POD_UID_LABEL, "forged"),
            ])),
            annotations: Some(btree(&[("kubernetes.io/config.source", "file")])),
            deletion_grace_period_seconds: Some(5),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container()],
            termination_grace_period_seconds: Some(45),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[test]
fn sandbox_labels_add_identity_over_pod_labels() {
    let labels = sandbox_labels(&pod());
    assert_eq!(
        labels,
        map(&[
            ("app", "web"),
            (POD_NAME_LABEL, "web-node1"),
            (POD_NAMESPACE_LABEL, "default"),
            (POD_UID_LABEL, "0123abcd"),
        ])
    );
    assert_eq!(pod_uid_from_labels(&labels), Some("0123abcd"));
    assert_eq!(pod_name_from_labels(&labels), Some("web-node1"));
    assert_eq!(pod_namespace_from_labels(&labels), Some("default"));
    assert_eq!(
        sandbox_annotations(&pod()),
        map(&[("kubernetes.io/config.source", "file")])
    );
}

#[test]
fn container_labels_round_trip() {
    let labels = container_labels(&pod(), &container());
    assert_eq!(labels.len(), 4, "only the agent's labels: {labels:?}");
    assert_eq!(container_name_from_labels(&labels), Some("app"));
    assert_eq!(
        ContainerIdentity::from_labels(&labels),
        Some(ContainerIdentity {
            pod_name: "web-node1".to_owned(),
            pod_namespace: "default".to_owned(),
            pod_uid: "0123abcd".to_owned(),
            container_name: "app".to_owned(),
        })
    );
}

#[test]
fn identity_needs_every_label() {
    for missing in [
        POD_NAME_LABEL,
        POD_NAMESPACE_LABEL,
        POD_UID_LABEL,
        CONTAINER_NAME_LABEL,
    ] {
        let mut labels = container_labels(&pod(), &container());
        labels.remove(missing);
        assert_eq!(
            ContainerIdentity::from_labels(&labels),
            None,
            "without {missing}"
        );
        labels.insert(missing.to_owned(), String::new());
        assert_eq!(
            ContainerIdentity::from_labels(&labels),
            None,
            "with empty {missing}"
        );
    }
}

#[test]
fn container_annotations_round_trip() {
    let c = container();
    let annotations = container_annotations(&pod(), &c, 7).expect("annotations");
    assert_eq!(annotations[CONTAINER_RESTART_COUNT_ANNOTATION], "7");
    assert_eq!(annotations[POD_TERMINATION_GRACE_PERIOD_ANNOTATION], "45");
    assert_eq!(
        annotations[CONTAINER_PORTS_ANNOTATION],
        r#"[{"containerPort":8080,"name":"http","protocol":"TCP"}]"#
    );
    let parsed = ContainerAnnotations::parse(&annotations).expect("parse");
    assert_eq!(
        parsed,
        ContainerAnnotations {
            hash: Some(container_hash(&c)),
            restart_count: 7,
            termination_message_path: Some("/dev/termination-log".to_owned()),
            termination_message_policy: Some("File".to_owned()),
            pod_termination_grace_seconds: Some(45),
            pod_deletion_grace_seconds: Some(5),
            pre_stop: c.lifecycle.and_then(|l| l.pre_stop),
            ports: c.ports.unwrap_or_default(),
        }
    );
    assert_eq!(
        container_hash_from_annotations(&annotations),
        Some(container_hash(&container()).as_str())
    );
    assert_eq!(
        restart_count_from_annotations(&annotations).expect("count"),
        Some(7)
    );
    assert_eq!(
        termination_grace_from_annotations(&annotations).expect("grace"),
        Some(45)
    );
}

#[test]
fn minimal_container_has_only_hash_and_restart_count() {
    let c = Container {
        name: "bare".to_owned(),
        ..Container::default()
    };
    let mut p = pod();
    p.metadata.deletion_grace_period_seconds = None;
    p.spec
        .as_mut()
        .expect("spec")
        .termination_grace_period_seconds = None;
    let annotations = container_annotations(&p, &c, 0).expect("annotations");
    let mut keys: Vec<&str> = annotations.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            CONTAINER_HASH_ANNOTATION,
            CONTAINER_RESTART_COUNT_ANNOTATION
        ]
    );
    let parsed = ContainerAnnotations::parse(&annotations).expect("parse");
    assert_eq!(parsed.restart_count, 0);
    assert_eq!(parsed.pre_stop, None);
    assert!(parsed.ports.is_empty());
}

#[test]
fn absent_annotations_are_none() {
    let empty = Map::new();
    assert_eq!(
        restart_count_from_annotations(&empty).expect("absent"),
        None
    );
    assert_eq!(
        termination_grace_from_annotations(&empty).expect("absent"),
        None
    );
    assert_eq!(container_hash_from_annotations(&empty), None);
    assert_eq!(
        ContainerAnnotations::parse(&empty).expect("parse"),
        ContainerAnnotations::default()
    );
}

#[test]
fn malformed_annotations_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            CONTAINER_RESTART_COUNT_ANNOTATION,
            "-1",
            "restartCount=\"-1\": expected a non-negative integer",
        ),
        (
            CONTAINER_RESTART_COUNT_ANNOTATION,
            "x",
            "restartCount=\"x\"",
        ),
        (
            POD_TERMINATION_GRACE_PERIOD_ANNOTATION,
            "30s",
            "terminationGracePeriod=\"30s\": expected an integer",
        ),
        (
            POD_DELETION_GRACE_PERIOD_ANNOTATION,
            "",
            "deletionGracePeriod=\"\"",
        ),
        (
            CONTAINER_PORTS_ANNOTATION,
            "{",
            "io.kubernetes.container.ports: invalid JSON",
        ),
        (
            CONTAINER_PRE_STOP_HANDLER_ANNOTATION,
            "[]",
            "preStopHandler: invalid JSON",
        ),
    ];
    for (key, value, expected) in cases {
        let err = ContainerAnnotations::parse(&map(&[(key, value)]))
            .expect_err(&format!("{key}={value:?} must not parse"));
        let msg = err.to_string();
        assert!(
            msg.contains(expected),
            "{key}={value:?}: {msg:?} lacks {expected:?}"
        );
    }
}

#[test]
fn the_mark_is_the_root_dir_and_tells_agents_apart() {
    let mark = AgentMark::for_root_dir(Path::new("/var/lib/bpflet/"));
    assert_eq!(mark.value(), "/var/lib/bpflet");
    assert_eq!(mark, AgentMark::for_root_dir(Path::new("/var/lib/bpflet")));
    let other = AgentMark::for_root_dir(Path::new("/var/lib/bpflet-2"));
    assert_ne!(mark, other);

    let mut labels = sandbox_labels(&pod());
    assert!(!mark.is_on(&labels), "an unmarked sandbox is nobody's");
    mark.apply(&mut labels);
    assert!(mark.is_on(&labels));
    assert!(
        !other.is_on(&labels),
        "another root dir's agent does not claim it"
    );
    assert_eq!(
        mark.selector(Some("u1")),
        map(&[(AGENT_LABEL, "/var/lib/bpflet"), (POD_UID_LABEL, "u1")])
    );
    assert_eq!(
        mark.selector(None),
        map(&[(AGENT_LABEL, "/var/lib/bpflet")])
    );
}

#[test]
fn a_pod_label_cannot_forge_the_mark() {
    let mut p = pod();
    p.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(AGENT_LABEL.to_owned(), "/var/lib/other".to_owned());
    let mut labels = sandbox_labels(&p);
    let mark = AgentMark::for_root_dir(Path::new("/var/lib/bpflet"));
    mark.apply(&mut labels);
    assert_eq!(
        labels[AGENT_LABEL], "/var/lib/bpflet",
        "the agent's mark wins"
    );
}
