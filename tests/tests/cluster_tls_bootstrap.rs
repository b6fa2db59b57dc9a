//! `serverTLSBootstrap: true` against the real control plane (tests/k8s): bpflet asks for
//! its serving certificate with a CertificateSigningRequest to `kubernetes.io/kubelet-serving`,
//! serves nothing on its HTTPS port until a cluster administrator approves it, then serves
//! the certificate kube-controller-manager signed with the cluster CA (which the API server
//! checks with `--kubelet-certificate-authority`, so `kubectl logs` goes through), keeps it
//! across restarts, and rotates it before it expires without a restart.
//!
//! Needs root (the node runs a private containerd and real pods).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use bpflet_tests::cluster::{
    NODE_NAME, PodYaml, joined_node_on, kubectl_json, wait_for, wait_for_default_service_account,
    wait_for_within,
};
use bpflet_tests::node::{HttpsClient, IMAGE, Node, NodeConfig, tail};
use serde_json::Value;
use xtask::cluster::ControlPlane;

const BOOTSTRAP: &str = "serverTLSBootstrap: true\n";

/// The node's serving CSRs, oldest first.
fn serving_csrs(cp: &ControlPlane) -> Vec<Value> {
    let list = kubectl_json(cp, &["get", "csr"]);
    let mut csrs: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c["spec"]["username"] == format!("system:node:{NODE_NAME}").as_str()
                && c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
        })
        .collect();
    csrs.sort_by_key(|c| {
        c["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned)
    });
    csrs
}

fn name(csr: &Value) -> String {
    csr["metadata"]["name"]
        .as_str()
        .expect("a CSR name")
        .to_owned()
}

fn issued(csr: &Value) -> bool {
    csr["status"]["certificate"].is_string()
}

/// Waits for a serving CSR beyond the first `known`, and returns it.
fn next_csr(cp: &ControlPlane, node: &Node, known: usize, limit: Duration) -> Value {
    wait_for_within(node, &format!("serving CSR #{}", known + 1), limit, || {
        let csrs = serving_csrs(cp);
        csrs.get(known)
            .cloned()
            .ok_or_else(|| format!("{} serving CSRs", csrs.len()))
    })
}

/// The PEM certificate the node's HTTPS port presents, as `openssl s_client` sees it within
/// 5 s; `Err` with what openssl said when it gets none.
fn served_cert(node: &Node) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", node.secure_port))
        .args(["-servername", NODE_NAME])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    match (begin, end) {
        (Some(b), Some(e)) => Ok(text[b..e + "-----END CERTIFICATE-----".len()].to_owned() + "\n"),
        _ => Err(format!(
            "no certificate (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `openssl <args>` fed `input`; its stdout.
fn openssl(args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("feed openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn approve(cp: &ControlPlane, csr: &str) {
    cp.kubectl_admin(&["certificate", "approve", csr])
        .unwrap_or_else(|e| panic!("kubectl certificate approve {csr}: {e:#}"));
}

/// The CSR's request (PEM) as `openssl req -text` shows it.
fn request_text(csr: &Value) -> String {
    let pem = openssl(
        &["base64", "-d", "-A"],
        csr["spec"]["request"].as_str().expect("spec.request"),
    );
    openssl(&["req", "-noout", "-text"], &pem)
}

/// A node joined with `serverTLSBootstrap`, on a control plane that signs for
/// `signing_duration` (its default, a year, when `None`).
fn bootstrapped_node(
    prefix: &str,
    signing_duration: Option<Duration>,
) -> (tempfile::TempDir, ControlPlane, Node) {
    joined_node_on(
        prefix,
        &[],
        NodeConfig {
            kubelet_extra: BOOTSTRAP.to_owned(),
            ..NodeConfig::default()
        },
        |c| c.signing_duration = signing_duration,
    )
}

#[test]
fn serving_certificate_is_requested_served_once_approved_and_reused_after_a_restart() {
    let (_dir, cp, mut node) = bootstrapped_node("bpflet-csr-", None);
    let csr = next_csr(&cp, &node, 0, Duration::from_secs(120));
    let csr_name = name(&csr);
    assert_eq!(csr["spec"]["signerName"], "kubernetes.io/kubelet-serving");
    assert_eq!(
        csr["spec"]["usages"],
        serde_json::json!(["digital signature", "server auth"])
    );
    assert!(
        csr["spec"]["expirationSeconds"].is_null(),
        "{}",
        csr["spec"]
    );
    let request = request_text(&csr);
    for want in [
        format!("Subject: O = system:nodes, CN = system:node:{NODE_NAME}"),
        format!("DNS:{NODE_NAME}"),
        "IP Address:127.0.0.1".to_owned(),
        "ASN1 OID: prime256v1".to_owned(),
    ] {
        assert!(
            request.contains(&want),
            "{want:?} not in the request:\n{request}"
        );
    }

    // Unapproved: the HTTPS port presents nothing, and the log names the CSR to approve.
    let refused = served_cert(&node).expect_err("no certificate before approval");
    assert!(
        node.agent_log()
            .contains(&format!("kubectl certificate approve {csr_name}")),
        "{refused}\n{}",
        tail(&node.agent_log(), 30)
    );

    approve(&cp, &csr_name);
    let first = wait_for(&node, "the issued certificate served", || {
        served_cert(&node)
    });
    // It chains to the cluster CA and is for the node's name and address: curl checks both.
    for host in [NODE_NAME, "127.0.0.1"] {
        let (code, body) = node.https(
            "GET",
            "/pods",
            &HttpsClient {
                ca: Some(cp.layout.ca_cert()),
                host: Some(host.to_owned()),
                ..HttpsClient::default()
            },
        );
        assert_eq!(
            code, 401,
            "{host}: verified TLS, then no credentials: {body}"
        );
    }
    let issued_pem = kubectl_json(&cp, &["get", "csr", &csr_name]);
    assert!(issued(&issued_pem), "{issued_pem}");
    let text = openssl(&["x509", "-noout", "-subject", "-issuer"], &first);
    assert!(
        text.contains(&format!("CN = system:node:{NODE_NAME}")),
        "{text}"
    );
    // Kept with its key, 0600, under the root dir.
    let stored = node.root_dir().join("pki/kubelet-server-current.pem");
    let meta = std::fs::metadata(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let stored_text = std::fs::read_to_string(&stored).expect("read the stored pair");
    assert!(stored_text.starts_with(&first), "{stored_text}");
    assert!(stored_text.contains("PRIVATE KEY-----"), "no key stored");

    // The API server reaches the node with it: `kubectl logs`.
    wait_for_default_service_account(&cp, &node);
    PodYaml::new("hello")
        .bound()
        .sh("echo hello from bpflet; exec sleep 3600")
        .apply(&cp);
    wait_for(&node, "kubectl logs through the API server", || {
        match cp.kubectl_admin(&["logs", "hello", "-c", "c"]) {
            Ok(out) if out == "hello from bpflet\n" => Ok(()),
            Ok(out) => Err(format!("kubectl logs: {out:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    });

    // A restart presents the stored certificate and asks for no new one.
    // `/runningpods/`: what the runtime runs, by the sandbox's name and the container's.
    let running = node.get_json("/runningpods/").expect("/runningpods/");
    let hello: Vec<&Value> = running["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p["metadata"]["name"] == "hello")
        .collect();
    assert_eq!(hello.len(), 1, "{running}");
    assert_eq!(hello[0]["metadata"]["namespace"], "default", "{running}");
    assert!(hello[0]["metadata"]["uid"].is_string(), "{running}");
    assert_eq!(
        hello[0]["spec"]["containers"],
        serde_json::json!([{"name": "c", "image": IMAGE, "resources": {}}]),
        "{running}"
    );

    node.kill_agent(libc::SIGTERM);
    node.start_agent();
    let again = wait_for(&node, "the stored certificate served again", || {
        served_cert(&node)
    });
    assert_eq!(again, first, "the restart changed the certificate");
    assert!(
        node.agent_log()
            .contains("reusing the stored serving certificate"),
        "{}",
        tail(&node.agent_log(), 30)
    );
    let csrs: Vec<String> = serving_csrs(&cp).iter().map(name).collect();
    assert_eq!(csrs, [csr_name], "a new CSR after the restart");
}

#[test]
fn serving_certificate_rotates_before_expiry_without_a_restart() {
    // Three-minute certificates: rotation falls between 70 % and 90 % of the lifetime.
    let (_dir, cp, mut node) = bootstrapped_node("bpflet-csr-rot-", Some(Duration::from_secs(180)));
    let pid = node.agent().expect("the agent").id();
    let first_csr = next_csr(&cp, &node, 0, Duration::from_secs(120));
    approve(&cp, &name(&first_csr));
    let first = wait_for(&node, "the first certificate served", || served_cert(&node));

    let second_csr = next_csr(&cp, &node, 1, Duration::from_secs(240));
    // Requested before the first certificate expired (`-checkend 0` fails once it has).
    openssl(&["x509", "-noout", "-checkend", "0"], &first);
    assert!(
        !issued(&serving_csrs(&cp)[1]),
        "the second CSR was issued before approval"
    );
    approve(&cp, &name(&second_csr));
    let second = wait_for(&node, "the rotated certificate served", || {
        served_cert(&node).and_then(|c| {
            if c == first {
                Err("still the first certificate".to_owned())
            } else {
                Ok(c)
            }
        })
    });
    assert_eq!(
        node.agent().expect("the agent").id(),
        pid,
        "the agent restarted"
    );
    let text = openssl(&["x509", "-noout", "-subject"], &second);
    assert!(
        text.contains(&format!("CN = system:node:{NODE_NAME}")),
        "{text}"
    );
}
