use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};

use super::*;

fn with_status(status: CertificateSigningRequestStatus) -> CertificateSigningRequest {
    CertificateSigningRequest {
        status: Some(status),
        ..csr_object("")
    }
}

fn condition(type_: &str, reason: &str) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(format!("{reason} by a test")),
        ..CertificateSigningRequestCondition::default()
    }
}

#[test]
fn the_request_names_the_node_its_addresses_the_signer_and_the_usages() {
    let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.7".parse().unwrap()];
    let (request, key) = certificate_request("node-a", &ips).expect("a request");
    assert!(key.contains("PRIVATE KEY"), "{key}");
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(request.as_bytes())
        .expect("a PEM request");
    let (_, csr) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<x509_parser::error::X509Error>>::from_der(&der)
        .expect("a DER request");
    let info = &csr.certification_request_info;
    assert_eq!(
        info.subject.to_string(),
        "O=system:nodes, CN=system:node:node-a"
    );
    // ECDSA P-256 (id-ecPublicKey with prime256v1).
    assert_eq!(
        info.subject_pki.algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
    let sans: Vec<String> = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter().map(ToString::to_string))
        .collect();
    assert_eq!(
        sans,
        [
            "DNSName(node-a)",
            "IPAddress(7f:00:00:01)",
            "IPAddress(0a:00:00:07)"
        ]
    );

    let object = csr_object(&request);
    assert_eq!(object.metadata.generate_name.as_deref(), Some("csr-"));
    assert_eq!(object.spec.signer_name, "kubernetes.io/kubelet-serving");
    assert_eq!(
        object.spec.usages.as_deref(),
        Some(&["digital signature".to_owned(), "server auth".to_owned()][..])
    );
    assert_eq!(object.spec.expiration_seconds, None);
    assert_eq!(object.spec.request.0, request.as_bytes());
}

#[test]
fn csr_state_reads_denied_and_failed_before_the_certificate() {
    assert_eq!(csr_state(&csr_object("")), CsrState::Pending);
    let issued = with_status(CertificateSigningRequestStatus {
        certificate: Some(ByteString(b"PEM".to_vec())),
        conditions: Some(vec![condition("Approved", "AutoApproved")]),
    });
    assert_eq!(csr_state(&issued), CsrState::Issued(b"PEM".to_vec()));
    let approved = with_status(CertificateSigningRequestStatus {
        certificate: None,
        conditions: Some(vec![condition("Approved", "KubectlApprove")]),
    });
    assert_eq!(csr_state(&approved), CsrState::Pending);
    let denied = with_status(CertificateSigningRequestStatus {
        certificate: None,
        conditions: Some(vec![condition("Denied", "KubectlDeny")]),
    });
    assert_eq!(
        csr_state(&denied),
        CsrState::Denied {
            reason: "KubectlDeny".to_owned(),
            message: "KubectlDeny by a test".to_owned()
        }
    );
    let failed = with_status(CertificateSigningRequestStatus {
        certificate: None,
        conditions: Some(vec![
            condition("Approved", "KubectlApprove"),
            condition("Failed", "SignerValidationFailure"),
        ]),
    });
    assert!(
        matches!(csr_state(&failed), CsrState::Failed { reason, .. } if reason == "SignerValidationFailure")
    );
}

#[test]
fn rotation_falls_between_70_and_90_percent_of_the_lifetime() {
    let validity = Validity {
        not_before: Timestamp::from_second(1_000).unwrap(),
        not_after: Timestamp::from_second(1_000 + 180).unwrap(),
    };
    assert_eq!(
        validity.rotation_deadline(0.7),
        Timestamp::from_second(1_126).unwrap()
    );
    assert_eq!(
        validity.rotation_deadline(0.9),
        Timestamp::from_second(1_162).unwrap()
    );
    for _ in 0..1000 {
        let f = jitter_fraction();
        assert!((0.7..=0.9).contains(&f), "{f}");
    }
}

#[test]
fn validity_and_key_of_a_stored_pem_round_trip() {
    let (request, key) = certificate_request("node-a", &[]).expect("a request");
    let _ = request;
    // A self-signed certificate for the same key stands in for the issued one.
    let pair = rcgen::KeyPair::from_pem(&key).expect("the key");
    let mut params = rcgen::CertificateParams::new(vec!["node-a".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2027, 1, 1);
    let cert = params.self_signed(&pair).expect("a certificate");
    let stored = format!("{}{}", cert.pem(), key);
    let validity = Validity::of_pem(stored.as_bytes()).expect("a validity");
    assert_eq!(validity.not_before, "2026-01-01T00:00:00Z".parse().unwrap());
    assert_eq!(validity.not_after, "2027-01-01T00:00:00Z".parse().unwrap());
    let provider = rustls::crypto::ring::default_provider();
    certified_key(stored.as_bytes(), stored.as_bytes(), &provider).expect("chain and key match");
    let (_, other) = certificate_request("node-a", &[]).expect("another key");
    let mismatch = certified_key(stored.as_bytes(), other.as_bytes(), &provider)
        .expect_err("another key does not serve the certificate");
    assert!(mismatch.contains("does not serve"), "{mismatch}");
}
