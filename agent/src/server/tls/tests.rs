use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::*;

/// A CA (PEM certificate) and a client certificate it signed (DER) for `cn` in `orgs`.
fn ca_and_client(cn: &str, orgs: &[&str]) -> (String, CertificateDer<'static>) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(DnType::CommonName, "test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        leaf.distinguished_name.push(DnType::OrganizationName, *o);
    }
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), cert.der().clone())
}

fn tls_config(dir: &Path) -> TlsConfig {
    TlsConfig {
        cert: ServingCert::SelfSigned {
            dir: dir.join("pki"),
        },
        min_version: TlsVersion::Tls12,
        cipher_suites: None,
    }
}

#[test]
fn client_certificates_name_the_user_and_other_cas_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, client) = ca_and_client("kube-apiserver-kubelet-client", &["system:masters"]);
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca_pem).expect("write ca");
    let serving = TlsServing::new(&tls_config(dir.path()), Some(&ca_path), "node-a", &[])
        .expect("TLS is set up");
    let judge = serving.client_certs.expect("a client CA is configured");

    let user = judge.verify(&[client]).expect("signed by the client CA");
    assert_eq!(user.name, "kube-apiserver-kubelet-client");
    assert_eq!(user.groups, ["system:masters"]);

    let (_, foreign) = ca_and_client("intruder", &["system:masters"]);
    let err = judge
        .verify(&[foreign])
        .expect_err("another CA's certificate");
    assert!(err.contains("client certificate refused"), "{err}");
}

#[test]
fn the_self_signed_certificate_names_the_node_and_is_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let pki = dir.path().join("pki");
    let (cert, key) = ensure_self_signed(&pki, "node-a", &[ip]).expect("made");
    let first = std::fs::read(&cert).expect("cert");
    let chain = read_certs(&cert).expect("PEM");
    assert_eq!(chain.len(), 2, "the certificate, then its CA");
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("DER");
    let sans = leaf
        .subject_alternative_name()
        .expect("extension")
        .expect("SANs")
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect::<Vec<_>>();
    assert!(sans.iter().any(|n| n.contains("node-a")), "{sans:?}");
    assert!(
        sans.iter().any(|n| n == "IPAddress(7f:00:00:01)"),
        "{sans:?}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");

    ensure_self_signed(&pki, "node-a", &[ip]).expect("reused");
    assert_eq!(std::fs::read(&cert).expect("cert"), first, "not made again");
    TlsServing::new(&tls_config(dir.path()), None, "node-a", &[ip]).expect("served");
}

#[test]
fn cipher_suites_limit_tls12_and_keep_tls13() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = tls_config(dir.path());
    config.cipher_suites = Some(vec![CipherSuite::EcdheEcdsaAes256GcmSha384]);
    let p = provider(&config);
    let names: Vec<_> = p
        .cipher_suites
        .iter()
        .map(rustls::SupportedCipherSuite::suite)
        .collect();
    assert!(names.contains(&rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384));
    assert!(!names.contains(&rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
    assert!(names.contains(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    assert_eq!(provider(&tls_config(dir.path())).cipher_suites.len(), 9);
}

/// Upstream's certificate manager returns no certificate once NotAfter has passed; so does
/// a bootstrapped one here, whatever the renewal's fate.
#[test]
fn a_certificate_set_until_its_expiry_is_not_presented_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serving =
        TlsServing::new(&tls_config(dir.path()), None, "node-a", &[]).expect("TLS is set up");
    let key = serving
        .certs
        .current()
        .expect("the self-signed certificate");
    let not_after = jiff::Timestamp::from_second(1_900_000_000).expect("time");
    let second = jiff::SignedDuration::from_secs(1);

    let certs = ServingCerts::default();
    assert!(certs.current_at(not_after).is_none(), "nothing set yet");
    certs.set_until(Arc::clone(&key), not_after);
    assert!(certs.current_at(not_after - second).is_some());
    assert!(
        certs.current_at(not_after).is_some(),
        "NotAfter is inclusive"
    );
    assert!(certs.current_at(not_after + second).is_none());
    assert!(
        certs.current_at(not_after + second).is_none(),
        "still refused after the first (logged) refusal"
    );

    // What handshakes ask for (`resolve`) is `current()`: an expired one is refused now.
    certs.set_until(
        Arc::clone(&key),
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
    );
    assert!(certs.current().is_none());
    // A renewed one is presented again.
    certs.set_until(Arc::clone(&key), not_after);
    assert!(certs.current().is_some());

    // A given or self-signed certificate (`set`) has no expiry of bpflet's.
    certs.set(key);
    assert!(
        certs
            .current_at(not_after + jiff::SignedDuration::from_hours(24 * 365 * 100))
            .is_some()
    );
}
