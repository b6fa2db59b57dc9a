//! The authenticated HTTPS API (`port`, upstream's 10250), called with curl as a client
//! would: standalone, the self-signed certificate it serves and keeps across restarts and
//! client certificates checked against `clientCAFile`; joined to the real control plane
//! (tests/k8s), service-account tokens through TokenReview, access through
//! SubjectAccessReview (RBAC on `nodes/proxy`, `nodes/pods`), a certificate from another CA
//! refused, and the API server's kubelet client certificate accepted.
//!
//! Needs root (the node runs a private containerd).

use std::path::{Path, PathBuf};

use bpflet_tests::cluster::{NODE_NAME, apply, joined_node, node_condition, wait_for};
use bpflet_tests::node::{HttpsClient, Node, NodeConfig, tail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

/// A CA written as `<dir>/<name>-ca.crt`, and a client certificate it signed for `cn` in
/// `org`, written as `<dir>/<name>.crt` / `.key`; returns (CA, (certificate, key)).
fn client_pki(dir: &Path, name: &str, cn: &str, org: &str) -> (PathBuf, (PathBuf, PathBuf)) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name}-ca"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("client key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("client params");
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.distinguished_name.push(DnType::OrganizationName, org);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("client certificate");
    let paths = (
        dir.join(format!("{name}-ca.crt")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    for (path, text) in [
        (&paths.0, ca_cert.pem()),
        (&paths.1, cert.pem()),
        (&paths.2, key.serialize_pem()),
    ] {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    (paths.0, (paths.1, paths.2))
}

fn pod_list(node: &Node, answer: &(u16, String)) -> Value {
    assert_eq!(
        answer.0,
        200,
        "body: {}\n--- agent log ---\n{}",
        answer.1,
        tail(&node.agent_log(), 40)
    );
    let list: Value = serde_json::from_str(&answer.1).expect("JSON");
    assert_eq!(list["kind"], "PodList", "{list}");
    list
}

#[test]
fn standalone_self_signed_certificate_is_served_and_reused_and_client_certificates_are_checked() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (client_ca, client) = client_pki(pki.path(), "client", "operator", "ops");
    let (_, foreign) = client_pki(pki.path(), "foreign", "operator", "ops");
    let mut node = Node::start_with(NodeConfig {
        kubelet_extra: format!(
            "authentication: {{x509: {{clientCAFile: {}}}}}\n",
            client_ca.display()
        ),
        ..NodeConfig::default()
    });
    let served_cert = node.root_dir().join("pki/kubelet.crt");
    let served =
        std::fs::read_to_string(&served_cert).expect("the self-signed certificate was written");
    // Checked against the file, by the node's name: the server serves that certificate.
    let by_name = |cert: Option<(PathBuf, PathBuf)>| HttpsClient {
        ca: Some(served_cert.clone()),
        host: Some(NODE_NAME.to_owned()),
        cert,
        token: None,
    };

    let answer = node.https("GET", "/pods", &by_name(None));
    assert_eq!(answer, (401, "Unauthorized".to_owned()), "no credentials");
    pod_list(
        &node,
        &node.https("GET", "/pods", &by_name(Some(client.clone()))),
    );
    let answer = node.https("GET", "/pods", &by_name(Some(foreign.clone())));
    assert_eq!(answer.0, 401, "another CA's certificate: {answer:?}");

    // A restart serves the same certificate, not a new one.
    node.kill_agent(libc::SIGTERM);
    node.start_agent();
    assert_eq!(
        std::fs::read_to_string(&served_cert).expect("certificate"),
        served,
        "kept across the restart"
    );
    pod_list(&node, &node.https("GET", "/pods", &by_name(Some(client))));
}

/// `kubectl create token <sa>` in `default`.
fn token(cp: &xtask::cluster::ControlPlane, sa: &str) -> String {
    cp.kubectl_admin(&["create", "token", sa])
        .unwrap_or_else(|e| panic!("kubectl create token {sa}: {e:#}"))
        .trim()
        .to_owned()
}

#[test]
fn joined_node_authenticates_and_authorizes_through_the_api_server() {
    let (dir, cp, node) = joined_node("bpflet-kubelet-api-", &[]);
    let registered = wait_for(
        &node,
        "the Node to be Ready",
        node_condition(&cp, "Ready", "True"),
    );
    assert_eq!(
        registered["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        u64::from(node.secure_port),
        "{}",
        registered["status"]
    );

    let ca = cp.layout.ca_cert();
    let client = |token: Option<String>, cert: Option<(PathBuf, PathBuf)>| HttpsClient {
        ca: Some(ca.clone()),
        cert,
        token,
        host: None,
    };

    // No credentials: 401.
    assert_eq!(
        node.https("GET", "/pods", &client(None, None)),
        (401, "Unauthorized".to_owned())
    );

    // A service account without nodes/proxy: 403 on exec (not served yet: authorization
    // comes first) and on /pods.
    apply(
        &cp,
        "kubelet-api-rbac",
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: proxier, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bpflet-test-nodes-proxy}
rules:
- apiGroups: ['']
  resources: [nodes/proxy]
  verbs: [get, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bpflet-test-nodes-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bpflet-test-nodes-proxy}
subjects:
- {kind: ServiceAccount, name: proxier, namespace: default}
",
    );
    let viewer = token(&cp, "viewer");
    let (status, body) = node.https(
        "POST",
        "/exec/default/p/c",
        &client(Some(viewer.clone()), None),
    );
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:default:viewer, verb=create, resource=nodes, subresource(s)=[proxy])\n"
        )
    );
    let (status, body) = node.https("GET", "/pods", &client(Some(viewer), None));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("subresource(s)=[pods proxy]"), "{body}");

    // With a ClusterRole granting nodes/proxy: through.
    let proxier = token(&cp, "proxier");
    let (status, body) = node.https(
        "POST",
        "/exec/default/p/c",
        &client(Some(proxier.clone()), None),
    );
    assert_ne!(status, 403, "{body}");
    assert_ne!(status, 401, "{body}");
    pod_list(
        &node,
        &node.https("GET", "/pods", &client(Some(proxier), None)),
    );

    // A client certificate from another CA, for a name the cluster would allow: refused.
    let (_, foreign) = client_pki(
        dir.path(),
        "foreign",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let answer = node.https("GET", "/pods", &client(None, Some(foreign)));
    assert_eq!(answer.0, 401, "{answer:?}");

    // The API server's own kubelet client certificate (what it presents for logs, exec
    // and nodes/<node>/proxy) is accepted and allowed. `kubectl get --raw
    // /api/v1/nodes/<node>/proxy/pods` cannot show it here: the API server refuses to
    // proxy to a node whose address is not global unicast ("address not allowed"), and the
    // test node is on 127.0.0.1.
    let apiserver = (
        cp.layout.pki.join("apiserver-kubelet-client.crt"),
        cp.layout.pki.join("apiserver-kubelet-client.key"),
    );
    pod_list(
        &node,
        &node.https("GET", "/pods", &client(None, Some(apiserver))),
    );
}
