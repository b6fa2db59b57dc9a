//! The HTTPS API's serving certificate through a CertificateSigningRequest
//! (`serverTLSBootstrap: true`), as upstream's kubelet gets and rotates it.
//!
//! - The key is an ECDSA P-256 key made on the node; the request names the node
//!   (`O=system:nodes`, `CN=system:node:<node>`) and, as subject alternative names, the
//!   node's name and addresses (what its Node status reports); it goes to the signer
//!   `kubernetes.io/kubelet-serving` for `digital signature` and `server auth`, without
//!   `expirationSeconds` (the signer's duration applies).
//! - Nobody approves serving CSRs by default: the manager logs the CSR's name and waits
//!   (up to [`CERTIFICATE_WAIT`]) for a cluster administrator or a controller to approve
//!   it and the signer to issue it. Until the first certificate is issued the HTTPS API
//!   accepts no connections.
//! - The issued chain and the key are written together, atomically and 0600, to
//!   `<root-dir>/pki/kubelet-server-current.pem`, which a restart reuses while it is valid.
//! - A new certificate is requested at a random point between 70 % and 90 % of the
//!   certificate's lifetime (its NotBefore to NotAfter), upstream's jitter; the server
//!   presents it from the next handshake on ([`ServingCerts`]).
//! - A denied or failed CSR, one that is not issued in time, or an API server away, is
//!   logged and retried with an exponential back-off (2 s doubling to 5 min); the current
//!   certificate stays in use meanwhile until its NotAfter, and nothing else in the agent
//!   stops. Past NotAfter it is no longer presented ([`ServingCerts::set_until`]): TLS
//!   handshakes fail (logged once, naming the expiry) until a new one is issued, as
//!   upstream's certificate manager does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::server::tls::{ServingCerts, certified_key, write_private};

/// The signer of kubelet serving certificates.
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The file holding the current chain and key (upstream's name), in the pki directory.
pub const CURRENT_FILE: &str = "kubelet-server-current.pem";
/// The usages requested (an ECDSA key: no `key encipherment`).
pub const USAGES: [&str; 2] = ["digital signature", "server auth"];
/// How long one CSR is waited for before a new one is made (upstream's 15 minutes).
pub const CERTIFICATE_WAIT: Duration = Duration::from_secs(15 * 60);
/// The back-off after a failed request: the first wait and the longest.
pub const BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(5 * 60));

/// Why a serving certificate could not be had this time.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("cannot make a key and certificate request for {node}")]
    Request {
        node: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot create a CertificateSigningRequest for {node}")]
    Create {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot watch the CertificateSigningRequest {name}")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error("the CertificateSigningRequest {name} was not issued within {waited:?}")]
    Timeout { name: String, waited: Duration },
    #[error("the CertificateSigningRequest {name} was deleted before it was issued")]
    Deleted { name: String },
    #[error("the CertificateSigningRequest {name} was {outcome}: {reason}: {message}")]
    Refused {
        name: String,
        /// `denied` or `failed`.
        outcome: &'static str,
        reason: String,
        message: String,
    },
    #[error("the certificate issued for the CertificateSigningRequest {name} is unusable: {why}")]
    Issued { name: String, why: String },
    #[error("cannot write {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a CertificateSigningRequest's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    Pending,
    /// The issued chain, PEM.
    Issued(Vec<u8>),
    Denied {
        reason: String,
        message: String,
    },
    Failed {
        reason: String,
        message: String,
    },
}

/// The state of `csr`: `Denied` and `Failed` conditions first (as upstream reads them), then
/// a certificate.
#[must_use]
pub fn csr_state(csr: &CertificateSigningRequest) -> CsrState {
    let status = csr.status.as_ref();
    for c in status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
    {
        let (reason, message) = (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        );
        match c.type_.as_str() {
            "Denied" => return CsrState::Denied { reason, message },
            "Failed" => return CsrState::Failed { reason, message },
            _ => {}
        }
    }
    match status.and_then(|s| s.certificate.as_ref()) {
        Some(cert) if !cert.0.is_empty() => CsrState::Issued(cert.0.clone()),
        _ => CsrState::Pending,
    }
}

/// A certificate's validity, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl Validity {
    /// The first certificate of a PEM chain's validity.
    ///
    /// # Errors
    /// Why the PEM holds no readable certificate.
    pub fn of_pem(pem: &[u8]) -> Result<Self, String> {
        let first = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| "no certificate in the PEM".to_owned())?
            .map_err(|e| format!("unreadable certificate PEM: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&first)
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let at = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| format!("certificate time: {e}"))
        };
        Ok(Self {
            not_before: at(cert.validity().not_before)?,
            not_after: at(cert.validity().not_after)?,
        })
    }

    /// When to request the next certificate: `fraction` (upstream draws it between 0.7 and
    /// 0.9) of the way from NotBefore to NotAfter.
    #[must_use]
    pub fn rotation_deadline(&self, fraction: f64) -> Timestamp {
        let total = self.not_after.as_millisecond() - self.not_before.as_millisecond();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_precision_loss,
            reason = "a certificate's lifetime in milliseconds is far within f64's exact range"
        )]
        let offset = (total.max(0) as f64 * fraction).round() as i64;
        Timestamp::from_millisecond(self.not_before.as_millisecond() + offset)
            .unwrap_or(self.not_after)
    }
}

/// Upstream's jitter: a fraction between 0.7 and 0.9 of the lifetime.
fn jitter_fraction() -> f64 {
    0.7 + 0.2 * fastrand::f64()
}

/// A new key and the PEM certificate request for `node` with `names` and `ips` as subject
/// alternative names: (request PEM, key PEM).
///
/// # Errors
/// rcgen's, when the names cannot be encoded.
pub fn certificate_request(node: &str, ips: &[IpAddr]) -> Result<(String, String), rcgen::Error> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node.to_owned()])?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "system:nodes");
    subject.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = subject;
    let request = params.serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}

/// The CertificateSigningRequest object for a PEM request.
#[must_use]
pub fn csr_object(request_pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("csr-".to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: SIGNER.to_owned(),
            usages: Some(USAGES.iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Gets and rotates the serving certificate; see the module's documentation.
pub struct ServerCertManager {
    client: kube::Client,
    node_name: String,
    node_ips: Vec<IpAddr>,
    file: PathBuf,
    certs: ServingCerts,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertManager {
    /// A manager that keeps its certificate in `dir` and presents it through `certs`.
    #[must_use]
    pub fn new(
        client: kube::Client,
        node_name: String,
        node_ips: Vec<IpAddr>,
        dir: &Path,
        certs: ServingCerts,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        Self {
            client,
            node_name,
            node_ips,
            file: dir.join(CURRENT_FILE),
            certs,
            provider,
        }
    }

    /// Presents the stored certificate when it is still valid, then requests one whenever
    /// the current one's rotation deadline passes (at once without one), until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut current = self.load_stored();
        let mut backoff = BACKOFF.0;
        loop {
            if let Some(validity) = current {
                let deadline = validity.rotation_deadline(jitter_fraction());
                let wait = Timestamp::now()
                    .duration_until(deadline)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                info!(
                    not_after = %validity.not_after,
                    rotation = %deadline,
                    "serving certificate in use; a new one will be requested at the rotation deadline"
                );
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                result = self.request() => result,
            };
            match result {
                Ok(validity) => {
                    current = Some(validity);
                    backoff = BACKOFF.0;
                }
                Err(e) => {
                    warn!(
                        error = %crate::error::full_text(&e),
                        retry_in = ?backoff,
                        current_not_after = ?current.map(|v| v.not_after),
                        "cannot get a serving certificate; the HTTPS API keeps its current one, if any, until it expires"
                    );
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// The stored certificate, presented, when it is readable and not expired.
    fn load_stored(&self) -> Option<Validity> {
        let pem = match std::fs::read(&self.file) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %self.file.display(), error = %e, "cannot read the stored serving certificate; requesting a new one");
                return None;
            }
        };
        let loaded = Validity::of_pem(&pem).and_then(|validity| {
            if validity.not_after <= Timestamp::now() {
                return Err(format!("it expired at {}", validity.not_after));
            }
            let key = certified_key(&pem, &pem, &self.provider)?;
            Ok((validity, key))
        });
        match loaded {
            Ok((validity, key)) => {
                self.certs.set_until(Arc::new(key), validity.not_after);
                info!(path = %self.file.display(), not_after = %validity.not_after, "reusing the stored serving certificate");
                Some(validity)
            }
            Err(why) => {
                warn!(path = %self.file.display(), %why, "the stored serving certificate is unusable; requesting a new one");
                None
            }
        }
    }

    /// One CSR, from creation to the issued certificate stored and presented.
    async fn request(&self) -> Result<Validity, CsrError> {
        let (request, key) =
            certificate_request(&self.node_name, &self.node_ips).map_err(|source| {
                CsrError::Request {
                    node: self.node_name.clone(),
                    source,
                }
            })?;
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let created = api
            .create(&PostParams::default(), &csr_object(&request))
            .await
            .map_err(|source| CsrError::Create {
                node: self.node_name.clone(),
                source,
            })?;
        let name = created.metadata.name.clone().unwrap_or_default();
        info!(
            csr = %name,
            signer = SIGNER,
            "requested a serving certificate; waiting for the CertificateSigningRequest to be \
             approved (kubectl certificate approve {name})"
        );
        let done = |csr: Option<&CertificateSigningRequest>| {
            csr.is_none_or(|c| csr_state(c) != CsrState::Pending)
        };
        let outcome = tokio::time::timeout(
            CERTIFICATE_WAIT,
            kube::runtime::wait::await_condition(api, &name, done),
        )
        .await
        .map_err(|_| CsrError::Timeout {
            name: name.clone(),
            waited: CERTIFICATE_WAIT,
        })?
        .map_err(|source| CsrError::Watch {
            name: name.clone(),
            source,
        })?;
        let chain = match outcome.as_ref().map(csr_state) {
            None => return Err(CsrError::Deleted { name }),
            Some(CsrState::Issued(chain)) => chain,
            Some(CsrState::Denied { reason, message }) => {
                return Err(CsrError::Refused {
                    name,
                    outcome: "denied",
                    reason,
                    message,
                });
            }
            Some(CsrState::Failed { reason, message }) => {
                return Err(CsrError::Refused {
                    name,
                    outcome: "failed",
                    reason,
                    message,
                });
            }
            Some(CsrState::Pending) => unreachable!("await_condition returns a decided CSR"),
        };
        let issued = |why: String| CsrError::Issued {
            name: name.clone(),
            why,
        };
        let validity = Validity::of_pem(&chain).map_err(issued)?;
        let certified = certified_key(&chain, key.as_bytes(), &self.provider).map_err(issued)?;
        let mut stored = chain;
        if !stored.ends_with(b"\n") {
            stored.push(b'\n');
        }
        stored.extend_from_slice(key.as_bytes());
        if let Some(dir) = self.file.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| CsrError::Store {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        write_private(&self.file, &stored).map_err(|source| CsrError::Store {
            path: self.file.clone(),
            source,
        })?;
        self.certs
            .set_until(Arc::new(certified), validity.not_after);
        info!(csr = %name, not_after = %validity.not_after, path = %self.file.display(), "serving certificate issued and in use");
        Ok(validity)
    }
}

#[cfg(test)]
mod tests;
