//! configMap, secret, downwardAPI and projected volumes on the real control plane (tests/k8s),
//! judged from inside the pods through `kubectl exec` and `kubectl logs`: a configMap update
//! shows in a running pod through the atomic `..data` swap and is never seen half-written
//! (a reader loop checks that two keys always agree), while a subPath mount of it keeps the
//! first file; a secret on tmpfs; downwardAPI labels (updated with the pod) and a memory
//! limit; the ServiceAccount admission plugin's `kube-api-access-*` volume, whose token the
//! API server accepts in a TokenReview, with the cluster's CA and the namespace; a token with
//! an audience and `expirationSeconds: 600` that is bound to the pod.
//!
//! Needs root (the node runs a private containerd and real pods).
use base64::Engine as _;
use bpflet_tests::cluster::{
    PodYaml, apply, joined_node, kubectl_json, node_condition, running_and_ready, wait_for,
    wait_for_default_service_account,
};
use bpflet_tests::node::Node;
use serde_json::Value;
use xtask::cluster::ControlPlane;

/// `cat <path>` in container `c` of pod `pod`, or why not.
fn cat(cp: &ControlPlane, pod: &str, path: &str) -> Result<String, String> {
    cp.kubectl_admin(&["exec", pod, "-c", "c", "--", "cat", path])
        .map_err(|e| format!("{e:#}"))
}

/// `sh -c <script>` in container `c` of pod `pod`; panics naming it.
fn sh(cp: &ControlPlane, pod: &str, script: &str) -> String {
    cp.kubectl_admin(&["exec", pod, "-c", "c", "--", "sh", "-c", script])
        .unwrap_or_else(|e| panic!("exec {script:?} in {pod}: {e:#}"))
}

/// A node joined to a fresh control plane, Ready, with the `default` ServiceAccount made.
fn ready_node(prefix: &str) -> (tempfile::TempDir, ControlPlane, Node) {
    let (dir, cp, node) = joined_node(prefix, &[]);
    wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    wait_for_default_service_account(&cp, &node);
    (dir, cp, node)
}

fn config_map(cp: &ControlPlane, version: u32) {
    apply(
        cp,
        "cfg",
        &format!(
            "apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: default
data:
  a: v{version}
  b: v{version}
"
        ),
    );
}

/// Reads `/cfg/..data/a` and `b` through one resolution of `..data` every 20 ms; logs
/// `seen <a>` when the value changes and `TORN <a>,<b>` whenever the two differ. A read
/// that finds the directory gone (swapped meanwhile) is tried again; errors are not logged.
const READER: &str = "exec 2>/dev/null; last=; while true; do \
    if out=$(cd /cfg/..data && cat a && printf , && cat b); then \
    a=${out%%,*}; b=${out#*,}; \
    if [ \"$a\" != \"$b\" ]; then echo \"TORN $out\"; fi; \
    if [ \"$a\" != \"$last\" ]; then echo \"seen $a\"; last=$a; fi; \
    fi; usleep 20000; done";

#[test]
fn a_config_map_update_shows_whole_in_a_running_pod_but_not_through_a_sub_path() {
    let (_dir, cp, node) = ready_node("bpflet-cluster-cfg-");
    config_map(&cp, 1);
    PodYaml::new("reader")
        .bound()
        .sh(READER)
        .spec(
            "  volumes:
  - name: cfg
    configMap:
      name: cfg
",
        )
        .container(
            "    volumeMounts:
    - name: cfg
      mountPath: /cfg
    - name: cfg
      mountPath: /pinned/a
      subPath: a
",
        )
        .apply(&cp);
    wait_for(
        &node,
        "the reader pod running",
        running_and_ready(&cp, "reader"),
    );
    assert_eq!(cat(&cp, "reader", "/cfg/a").as_deref(), Ok("v1"));
    // The agent writes these files; the pod may not.
    let write = cp.kubectl_admin(&["exec", "reader", "-c", "c", "--", "touch", "/cfg/x"]);
    assert!(
        write.is_err(),
        "the configMap volume is writable: {write:?}"
    );

    for version in 2..=4 {
        config_map(&cp, version);
        let want = format!("v{version}");
        wait_for(&node, &format!("/cfg/a = {want}"), || {
            match (cat(&cp, "reader", "/cfg/a"), cat(&cp, "reader", "/cfg/b")) {
                (Ok(a), Ok(b)) if a == want && b == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    let log = wait_for(&node, "the reader to log v4", || {
        let log = cp
            .kubectl_admin(&["logs", "reader", "-c", "c"])
            .map_err(|e| format!("{e:#}"))?;
        if log.contains("seen v4") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(!log.contains("TORN"), "a half-written set was seen:\n{log}");
    assert!(log.starts_with("seen v1\n"), "{log}");
    // A subPath mount keeps the file it pinned, as upstream's does.
    assert_eq!(cat(&cp, "reader", "/pinned/a").as_deref(), Ok("v1"));

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

#[test]
fn a_secret_volume_is_on_tmpfs_and_downward_api_files_follow_the_pod() {
    let (_dir, cp, node) = ready_node("bpflet-cluster-secret-");
    apply(
        &cp,
        "secret",
        "apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: default
stringData:
  password: hunter2
",
    );
    PodYaml::new("files")
        .bound()
        .spec(
            "  volumes:
  - name: creds
    secret:
      secretName: creds
      defaultMode: 0400
  - name: info
    downwardAPI:
      items:
      - path: labels
        fieldRef:
          fieldPath: metadata.labels
      - path: mem
        resourceFieldRef:
          containerName: c
          resource: limits.memory
          divisor: 1Mi
",
        )
        .container(
            "    resources:
      limits:
        memory: 64Mi
    volumeMounts:
    - name: creds
      mountPath: /sec
    - name: info
      mountPath: /info
",
        )
        .apply(&cp);
    cp.kubectl_admin(&["label", "pod", "files", "app=web", "tier=front"])
        .expect("label the pod");
    wait_for(
        &node,
        "the files pod running",
        running_and_ready(&cp, "files"),
    );

    assert_eq!(cat(&cp, "files", "/sec/password").as_deref(), Ok("hunter2"));
    assert_eq!(
        sh(&cp, "files", "stat -L -c %a /sec/password").trim(),
        "400"
    );
    assert_eq!(
        sh(
            &cp,
            "files",
            "awk '$2 == \"/sec\" { print $3 }' /proc/mounts"
        )
        .trim(),
        "tmpfs",
        "the secret is in memory in the pod"
    );
    // And on the node: a tmpfs of the agent's at upstream's path.
    let pod = kubectl_json(&cp, &["get", "pod", "files"]);
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let host = node
        .root_dir()
        .join(format!("pods/{uid}/volumes/kubernetes.io~secret/creds"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let real = std::fs::canonicalize(&host).expect("the secret's directory");
    assert!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&real.to_str().unwrap_or_default())
                && l.split(" - ")
                    .nth(1)
                    .is_some_and(|t| t.starts_with("tmpfs "))
        }),
        "no tmpfs at {}",
        real.display()
    );

    assert_eq!(cat(&cp, "files", "/info/mem").as_deref(), Ok("64"));
    wait_for(&node, "the labels file", || {
        match cat(&cp, "files", "/info/labels") {
            Ok(l) if l == "app=\"web\"\ntier=\"front\"" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    cp.kubectl_admin(&["label", "pod", "files", "--overwrite", "tier=back"])
        .expect("relabel the pod");
    wait_for(&node, "the labels file updated", || {
        match cat(&cp, "files", "/info/labels") {
            Ok(l) if l == "app=\"web\"\ntier=\"back\"" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

/// The claims of a JWT (its middle part, base64url without padding).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The API server's TokenReview of `token` for `audiences` (none: its own).
fn token_review(cp: &ControlPlane, token: &str, audiences: &[&str]) -> Value {
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    let path = cp.layout.work_dir.join("token-review.json");
    std::fs::write(&path, review.to_string()).expect("write the TokenReview");
    kubectl_json(cp, &["create", "-f", &path.display().to_string()])
}

#[test]
fn the_default_service_account_volume_holds_a_token_the_api_server_accepts() {
    let (_dir, cp, node) = ready_node("bpflet-cluster-token-");
    // A pod as clusters write them: the ServiceAccount admission plugin adds the
    // kube-api-access-* projected volume. Plus a token of its own for another audience.
    apply(
        &cp,
        "api-user",
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: api-user
  namespace: default
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  enableServiceLinks: false
  volumes:
  - name: vault
    projected:
      sources:
      - serviceAccountToken:
          audience: vault
          expirationSeconds: 600
          path: vault-token
  containers:
  - name: c
    image: {image}
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    volumeMounts:
    - name: vault
      mountPath: /vault
",
            node = bpflet_tests::cluster::NODE_NAME,
            image = bpflet_tests::node::IMAGE,
        ),
    );
    let pod = wait_for(
        &node,
        "the api-user pod running",
        running_and_ready(&cp, "api-user"),
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("kube-api-access-"), "{volumes}");
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();

    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token = cat(&cp, "api-user", &format!("{dir}/token")).expect("the token");
    let review = token_review(&cp, &token, &[]);
    let status = &review["status"];
    assert_eq!(status["authenticated"], true, "{review}");
    assert_eq!(
        status["user"]["username"], "system:serviceaccount:default:default",
        "{review}"
    );
    assert_eq!(
        status["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0],
        uid.as_str(),
        "the token is bound to the pod: {review}"
    );
    let ca = std::fs::read_to_string(cp.layout.ca_cert()).expect("the cluster CA");
    assert_eq!(
        cat(&cp, "api-user", &format!("{dir}/ca.crt")).as_deref(),
        Ok(ca.as_str())
    );
    assert_eq!(
        cat(&cp, "api-user", &format!("{dir}/namespace")).as_deref(),
        Ok("default")
    );

    // The token for vault: its audience only, 600 s of life, bound to the pod.
    let vault = cat(&cp, "api-user", "/vault/vault-token").expect("the vault token");
    let c = claims(&vault);
    assert_eq!(c["aud"], serde_json::json!(["vault"]), "{c}");
    assert_eq!(
        c["exp"].as_i64().zip(c["iat"].as_i64()).map(|(e, i)| e - i),
        Some(600),
        "{c}"
    );
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], uid.as_str(), "{c}");
    assert_eq!(
        token_review(&cp, &vault, &["vault"])["status"]["authenticated"],
        true
    );
    assert_ne!(
        token_review(&cp, &vault, &[])["status"]["authenticated"],
        true,
        "a vault token is not one for the API server"
    );
    // Refreshed at 80 % of its life (480 s): the cluster allows no shorter token than
    // 600 s, so the rule is asserted by cluster::tokens' unit tests.

    drop(node);
    cp.stop().expect("teardown of the control plane");
}

#[test]
fn a_pod_waits_in_container_creating_for_its_config_map_while_others_run() {
    let (_dir, cp, node) = ready_node("bpflet-cluster-cfg-wait-");
    PodYaml::new("other").bound().apply(&cp);
    PodYaml::new("waiter")
        .bound()
        .spec(
            "  volumes:
  - name: settings
    configMap:
      name: later
",
        )
        .container(
            "    volumeMounts:
    - name: settings
      mountPath: /settings
",
        )
        .apply(&cp);
    wait_for(
        &node,
        "the other pod running",
        running_and_ready(&cp, "other"),
    );
    let event = wait_for(
        &node,
        "a FailedMount event for the waiter",
        bpflet_tests::cluster::api_event(&cp, "waiter", "FailedMount"),
    );
    assert_eq!(
        event["message"],
        "MountVolume.SetUp failed for volume \"settings\" : configmap \"later\" not found",
        "{event}"
    );
    let waiting = wait_for(&node, "the waiter in ContainerCreating", || {
        let p = kubectl_json(&cp, &["get", "pod", "waiter"]);
        let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        if reason == "ContainerCreating" {
            Ok(p)
        } else {
            Err(format!("{}", p["status"]))
        }
    });
    assert_eq!(
        waiting["status"]["phase"], "Pending",
        "{}",
        waiting["status"]
    );
    apply(
        &cp,
        "later",
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: later
  namespace: default
data:
  mode: fast
",
    );
    wait_for(
        &node,
        "the waiter running",
        running_and_ready(&cp, "waiter"),
    );
    assert_eq!(cat(&cp, "waiter", "/settings/mode").as_deref(), Ok("fast"));

    drop(node);
    cp.stop().expect("teardown of the control plane");
}
