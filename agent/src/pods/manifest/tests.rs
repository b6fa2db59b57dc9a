use super::*;

const NODE: &str = "node-a";

fn seen() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_700_000_000).expect("valid")
}

fn file(name: &str) -> ManifestOrigin {
    ManifestOrigin::File(PathBuf::from(format!("/etc/bpflet/manifests/{name}")))
}

const WEB: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: app
    image: busybox
    command: [sleep, '3600']
    resources:
      limits: {cpu: 100m, memory: 64Mi}
    livenessProbe:
      httpGet: {port: 8080}
    ports:
    - containerPort: 8080
";

fn parse(text: &str) -> Result<StaticPod, ManifestError> {
    parse_pod_manifest(text.as_bytes(), &file("web.yaml"), NODE, seen())
}

#[test]
fn applies_static_pod_rules_and_defaults() {
    let sp = parse(WEB).expect("valid");
    let meta = &sp.pod.metadata;
    assert_eq!(meta.name.as_deref(), Some("web-node-a"));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(meta.uid.as_deref(), Some(sp.uid.as_str()));
    assert_eq!(sp.uid.len(), 32);
    assert!(sp.uid.bytes().all(|b| b.is_ascii_hexdigit()));
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "file");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], sp.uid);
    assert_eq!(annotations[CONFIG_SEEN_ANNOTATION], "2023-11-14T22:13:20Z");
    let spec = sp.pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    let toleration = &spec.tolerations.as_ref().expect("tolerations")[0];
    assert_eq!(toleration.operator.as_deref(), Some("Exists"));
    assert_eq!(toleration.effect.as_deref(), Some("NoExecute"));
    let c = &spec.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    assert_eq!(
        c.ports.as_ref().expect("ports")[0].protocol.as_deref(),
        Some("TCP")
    );
    let probe = c.liveness_probe.as_ref().expect("probe");
    assert_eq!(
        (
            probe.timeout_seconds,
            probe.period_seconds,
            probe.success_threshold,
            probe.failure_threshold
        ),
        (Some(1), Some(10), Some(1), Some(3))
    );
    assert_eq!(
        probe.http_get.as_ref().expect("httpGet").path.as_deref(),
        Some("/")
    );
    let requests = c
        .resources
        .as_ref()
        .expect("resources")
        .requests
        .as_ref()
        .expect("requests");
    assert_eq!(requests["cpu"].0, "100m", "requests default to limits");
    assert_eq!(requests["memory"].0, "64Mi");
    assert_eq!(
        sp.pod.status.as_ref().expect("status").phase.as_deref(),
        Some("Pending")
    );
}

#[test]
fn uid_is_deterministic_and_changes_with_content_node_and_file() {
    let uid = parse(WEB).expect("valid").uid;
    assert_eq!(parse(WEB).expect("valid").uid, uid, "same input, same UID");
    let reformatted = format!(
        "# a comment\n{}",
        WEB.replace("{app: web}", "\n    app: web")
    );
    assert_eq!(
        parse(&reformatted).expect("valid").uid,
        uid,
        "formatting does not matter"
    );
    let edited = WEB.replace("'3600'", "'7200'");
    assert_ne!(
        parse(&edited).expect("valid").uid,
        uid,
        "an edited manifest is a new pod"
    );
    let other_node =
        parse_pod_manifest(WEB.as_bytes(), &file("web.yaml"), "node-b", seen()).expect("valid");
    assert_ne!(other_node.uid, uid, "the node is part of the UID");
    let other_file =
        parse_pod_manifest(WEB.as_bytes(), &file("web2.yaml"), NODE, seen()).expect("valid");
    assert_ne!(other_file.uid, uid, "the file is part of the UID");
    let later = parse_pod_manifest(
        WEB.as_bytes(),
        &file("web.yaml"),
        NODE,
        seen() + jiff::SignedDuration::from_secs(5),
    )
    .expect("valid");
    assert_eq!(later.uid, uid, "the time it was seen is not");
    let with_uid = WEB.replace("name: web\n", "name: web\n  uid: 'abc-1234'\n");
    assert_eq!(
        parse(&with_uid).expect("valid").uid,
        "abc-1234",
        "an explicit UID is kept"
    );
}

#[test]
fn json_manifest_and_namespace() {
    let json = r#"{"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "db", "image": "busybox:1.36"}], "restartPolicy": "Never"}}"#;
    let sp = parse(json).expect("valid");
    assert_eq!(sp.pod.metadata.name.as_deref(), Some("db-node-a"));
    assert_eq!(sp.pod.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = sp.pod.spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
}

/// (what, manifest, expected message parts). The file name must be in every message.
#[test]
fn invalid_manifests_name_file_and_field() {
    let ok = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: app, image: busybox}\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("not yaml", "{{{".to_owned(), &["invalid YAML or JSON"]),
        ("a service", ok.replace("kind: Pod", "kind: Service"), &["kind \"Service\"", "expected apiVersion v1, kind Pod"]),
        ("no kind", ok.replace("kind: Pod\n", ""), &["kind \"\""]),
        ("wrong type", ok.replace("image: busybox", "image: [1]"), &["cannot decode spec.containers[0].image"]),
        ("no name", ok.replace("{name: p}", "{labels: {a: b}}"), &["metadata.name: is required"]),
        ("bad name", ok.replace("{name: p}", "{name: P_1}"), &["metadata.name", "lowercase"]),
        ("bad namespace", ok.replace("{name: p}", "{name: p, namespace: Kube.System}"), &["metadata.namespace"]),
        ("no spec", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".to_owned(), &["spec: is required"]),
        ("no containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n".to_owned(), &["spec.containers: at least one container"]),
        (
            "duplicate names",
            ok.replace("- {name: app, image: busybox}", "- {name: app, image: busybox}\n  - {name: app, image: busybox}"),
            &["spec.containers[1].name: duplicate container name \"app\""],
        ),
        (
            "init and app share a name",
            ok.replace("  containers:", "  initContainers:\n  - {name: app, image: busybox}\n  containers:"),
            &["spec.containers[0].name: duplicate container name"],
        ),
        ("bad container name", ok.replace("name: app", "name: App"), &["spec.containers[0].name"]),
        ("no image", ok.replace(", image: busybox", ""), &["spec.containers[0].image: is required"]),
        ("bad restart policy", ok.replace("spec:\n", "spec:\n  restartPolicy: Sometimes\n"), &["spec.restartPolicy", "Sometimes"]),
        ("user namespaces", ok.replace("spec:\n", "spec:\n  hostUsers: false\n"), &["spec.hostUsers", "not supported"]),
        (
            "ephemeral containers",
            ok.replace("spec:\n", "spec:\n  ephemeralContainers: [{name: dbg, image: busybox}]\n"),
            &["spec.ephemeralContainers", "cannot be set"],
        ),
        (
            "bad quantity",
            ok.replace("image: busybox}", "image: busybox, resources: {limits: {memory: 10Zi}}}"),
            &["spec.containers[0].resources.limits[\"memory\"]: invalid quantity \"10Zi\""],
        ),
        (
            "request above limit",
            ok.replace("image: busybox}", "image: busybox, resources: {requests: {cpu: 2}, limits: {cpu: 1}}}"),
            &["spec.containers[0].resources.requests[\"cpu\"]: must be less than or equal to the limit (2 > 1)"],
        ),
        (
            "bad pod-level quantity",
            ok.replace("spec:\n", "spec:\n  resources: {limits: {memory: lots}}\n"),
            &["spec.resources.limits[\"memory\"]: invalid quantity"],
        ),
        (
            "container limited above the pod-level limit",
            ok.replace("spec:\n", "spec:\n  resources: {limits: {memory: 64Mi}}\n")
                .replace("image: busybox}", "image: busybox, resources: {limits: {memory: 128Mi}}}"),
            &["spec.containers[0].resources.limits[\"memory\"]: must be less than or equal to the pod-level limit"],
        ),
        (
            "restart policy on an app container",
            ok.replace("image: busybox}", "image: busybox, restartPolicy: Always}"),
            &["spec.containers[0].restartPolicy: may only be set on init containers"],
        ),
        (
            "init container restart policy other than Always",
            ok.replace("  containers:", "  initContainers:\n  - {name: i, image: busybox, restartPolicy: Never}\n  containers:"),
            &["spec.initContainers[0].restartPolicy"],
        ),
        ("bad port", ok.replace("image: busybox}", "image: busybox, ports: [{containerPort: 0}]}"), &["spec.containers[0].ports[0].containerPort: 0 out of range"]),
        ("negative grace", ok.replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: -1\n"), &["spec.terminationGracePeriodSeconds"]),
    ];
    for (what, text, want) in cases {
        let err = parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(err.origin(), &file("web.yaml"), "{what}");
        let mut message = err.to_string();
        if let Some(source) = std::error::Error::source(&err) {
            message = format!("{message}: {source}");
        }
        assert!(
            message.contains("/etc/bpflet/manifests/web.yaml"),
            "{what}: {message}"
        );
        for part in want {
            assert!(message.contains(part), "{what}: {message:?} lacks {part:?}");
        }
    }
}

#[test]
fn long_name_with_node_suffix_is_rejected() {
    let name = "a".repeat(250);
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: app, image: busybox}}\n"
    );
    let err = parse(&text).expect_err("too long");
    assert!(err.to_string().contains("metadata.name"), "{err}");
}

#[test]
fn a_name_too_long_for_the_pod_log_directory_is_rejected() {
    let manifest = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: app, image: busybox}}\n"
        )
    };
    // `default_<name>-node-a_<32-hex uid>`: 255 bytes for a 214-character name.
    let label = "n".repeat(63);
    let fits = format!("{label}.{label}.{label}.{}", "n".repeat(15));
    assert_eq!(fits.len() + "-node-a".len(), 214);
    let sp = parse(&manifest(&fits)).expect("fits");
    assert_eq!(
        crate::pods::cri_config::pod_log_dir(std::path::Path::new(""), &sp.pod)
            .as_os_str()
            .len(),
        255
    );
    let err = parse(&manifest(&format!("{fits}n"))).expect_err("a byte too long");
    let text = err.to_string();
    assert!(
        text.contains("metadata.name")
            && text.contains("log directory")
            && text.contains("names of at most 214 characters fit"),
        "{text}"
    );
}

#[test]
fn url_manifests_single_pod_and_lists() {
    let url = "http://127.0.0.1:8080/pods";
    let single = parse_url_manifest(WEB.as_bytes(), url, NODE, seen()).expect("a document");
    assert_eq!(single.len(), 1);
    let sp = single.into_iter().next().expect("one").expect("valid");
    assert_eq!(sp.origin, ManifestOrigin::Url(url.to_owned()));
    let annotations = sp.pod.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "http");

    let list = "apiVersion: v1\nkind: PodList\nitems:\n\
                - {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: [{name: c, image: busybox}]}}\n\
                - {apiVersion: v1, kind: Pod, metadata: {name: b}, spec: {containers: []}}\n\
                - {apiVersion: v1, kind: Pod, metadata: {name: c}, spec: {containers: [{name: c, image: busybox}]}}\n";
    let results = parse_url_manifest(list.as_bytes(), url, NODE, seen()).expect("a document");
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0]
            .as_ref()
            .expect("a is valid")
            .pod
            .metadata
            .name
            .as_deref(),
        Some("a-node-a")
    );
    let err = results[1].as_ref().expect_err("b has no containers");
    assert!(err.to_string().contains("#items[1]"), "{err}");
    assert!(results[2].is_ok());

    let generic = list.replace("kind: PodList", "kind: List");
    assert_eq!(
        parse_url_manifest(generic.as_bytes(), url, NODE, seen())
            .expect("a document")
            .len(),
        3
    );
    let empty = "apiVersion: v1\nkind: PodList\nitems: []\n";
    assert!(
        parse_url_manifest(empty.as_bytes(), url, NODE, seen())
            .expect("a document")
            .is_empty()
    );
}

#[test]
fn manifest_uids_are_validated() {
    let with_uid = WEB.replace(
        "  name: web\n",
        "  name: web\n  uid: z/../../../tmp/victim\n",
    );
    let err = parse(&with_uid).expect_err("escaping uid");
    assert!(
        matches!(&err, ManifestError::Invalid { field, .. } if field == "metadata.uid"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("metadata.uid: \"z/../../../tmp/victim\""),
        "{err}"
    );
    let with_uid = WEB.replace(
        "  name: web\n",
        "  name: web\n  uid: 0f8fad5b-d9cb-469f-a165-70867728950e\n",
    );
    assert_eq!(
        parse(&with_uid).expect("a UUID").uid,
        "0f8fad5b-d9cb-469f-a165-70867728950e"
    );
}

/// Nesting past the limit is refused before decoding, naming the limit and where; within
/// it, decoding goes on. Deep flow nesting is what costs the scanner quadratic time.
#[test]
fn nesting_is_bounded_before_decoding() {
    let at_limit = format!(
        "{}{}",
        "[".repeat(MAX_MANIFEST_DEPTH),
        "]".repeat(MAX_MANIFEST_DEPTH)
    );
    assert_eq!(
        shape::check(at_limit.as_bytes(), MAX_MANIFEST_DEPTH, MAX_MANIFEST_NODES),
        Ok(())
    );
    for (text, line, column) in [
        ("[".repeat(100_000), 1, 65),
        ("{a: ".repeat(100_000), 1, 4 * 64 + 1),
        ("- ".repeat(100_000), 1, 2 * 64 + 1),
        (
            (0..100)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>(),
            65,
            65,
        ),
    ] {
        let err = parse(&text).expect_err("too deep");
        assert_eq!(
            err.full_text(),
            format!(
                "/etc/bpflet/manifests/web.yaml: collections nest deeper than the limit of 64 levels (nesting level 65, at line {line} column {column})"
            ),
            "{}",
            &text[..20]
        );
    }
    // Invalid YAML before the limit is the decoder's to report, with its position.
    let err = parse("a: [1, 2\nb: }").expect_err("syntax");
    assert!(matches!(err, ManifestError::Syntax { .. }), "{err}");
}

/// Node count is bounded before decoding (decoding costs memory per node); a real pod is
/// far below the limit.
#[test]
fn node_count_is_bounded_before_decoding() {
    let list = format!("a: [{}]", "x, ".repeat(MAX_MANIFEST_NODES));
    let err = parse(&list).expect_err("too many nodes");
    assert_eq!(
        err.to_string(),
        format!(
            "/etc/bpflet/manifests/web.yaml: more than the limit of 100000 YAML/JSON nodes (at line 1 column {})",
            4 + 3 * (MAX_MANIFEST_NODES - 3) + 1
        )
    );
    let env: String = (0..1000)
        .map(|i| format!("    - {{name: VAR{i}, value: v}}\n"))
        .collect();
    let big_pod = WEB.replace(
        "    command: [sleep, '3600']\n",
        &format!("    command: [sleep, '3600']\n    env:\n{env}"),
    );
    assert!(
        parse(&big_pod).is_ok(),
        "a pod with 1000 environment variables"
    );
}

#[test]
fn manifests_over_the_size_limit_are_refused_before_parsing() {
    let mut text = WEB.to_owned();
    text.push_str(&"#".repeat(usize::try_from(MAX_MANIFEST_BYTES).expect("fits")));
    let err = parse(&text).expect_err("too large");
    assert_eq!(
        err.to_string(),
        "/etc/bpflet/manifests/web.yaml: larger than the limit of 3145728 bytes"
    );
}

/// The full text carries the parser's cause with its line and column (the log line of a
/// rejected manifest is this text).
#[test]
fn full_text_keeps_the_parsers_line_and_column() {
    let err = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n   bad: [\n")
        .expect_err("syntax");
    assert_eq!(
        err.to_string(),
        "/etc/bpflet/manifests/web.yaml: invalid YAML or JSON"
    );
    let full = err.full_text();
    assert!(
        full.starts_with("/etc/bpflet/manifests/web.yaml: invalid YAML or JSON: ")
            && full.contains("at line 5 column"),
        "{full}"
    );
}

#[test]
fn url_documents_that_cannot_be_parsed_are_errors_of_the_whole() {
    let url = "http://127.0.0.1:8080/pods";
    let err = parse_url_manifest(b"kind: [", url, NODE, seen()).expect_err("syntax");
    assert!(matches!(err, ManifestError::Syntax { .. }), "{err}");
    let err = parse_url_manifest("[".repeat(1000).as_bytes(), url, NODE, seen()).expect_err("deep");
    assert!(matches!(err, ManifestError::TooDeep { .. }), "{err}");
}
