//! TLS for the authenticated API: the serving certificate (given, self-signed and kept
//! under `<root-dir>/pki/`, or issued by the cluster through a CSR, see
//! [`crate::cluster::csr`]), protocol versions and cipher suites from the configuration, and
//! client certificates.
//!
//! The certificate is presented through [`ServingCerts`], which its owner may replace while
//! the server runs: new handshakes present the new one, established connections keep theirs.
//!
//! Client certificates are handled as Go's `tls.RequestClientCert` does for upstream's
//! kubelet: the handshake asks for one (naming the client CAs) and checks that the client
//! holds its key, but does not judge the chain; [`ClientCerts::verify`] does, once per
//! connection, and a chain from another CA makes that connection's requests fail
//! authentication (401), while a connection without a certificate may still authenticate
//! with a bearer token.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::auth::User;
use crate::config::{CipherSuite, ServingCert, TlsConfig, TlsVersion};

/// Why the HTTPS API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("the client CA bundle {} is unusable", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the serving certificate {} or its key {} is unusable", cert.display(), key.display())]
    Certificate {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS settings are unusable")]
    Settings(#[source] rustls::Error),
    #[error("cannot make a self-signed serving certificate for {node}")]
    Generate {
        node: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the HTTPS listener needs: the rustls configuration and, with a client CA, the
/// judge of client certificates.
#[derive(Clone)]
pub struct TlsServing {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub client_certs: Option<ClientCerts>,
    /// The certificate the acceptor presents: set at once for given and self-signed
    /// certificates, by the CSR manager for a bootstrapped one.
    pub certs: ServingCerts,
    /// The crypto provider, which turns a PEM key into a signing key ([`certified_key`]).
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for TlsServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServing")
            .field("client_certs", &self.client_certs.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsServing {
    /// Reads (or, for a self-signed certificate, makes once) the certificate and key, and
    /// the client CA bundle. For [`ServingCert::Bootstrap`], nothing is presented until
    /// the CSR manager sets a certificate on [`Self::certs`].
    ///
    /// # Errors
    /// [`TlsError`] naming the file or setting at fault.
    pub fn new(
        tls: &TlsConfig,
        client_ca: Option<&Path>,
        node_name: &str,
        node_ips: &[IpAddr],
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(provider(tls));
        let files = match &tls.cert {
            ServingCert::Files { cert, key } => Some((cert.clone(), key.clone())),
            ServingCert::SelfSigned { dir } => Some(ensure_self_signed(dir, node_name, node_ips)?),
            ServingCert::Bootstrap { .. } => None,
        };
        let certs = ServingCerts::default();
        if let Some((cert_path, key_path)) = files {
            let chain = read_certs(&cert_path)?;
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsError::Pem {
                path: key_path.clone(),
                source,
            })?;
            let key = CertifiedKey::from_der(chain, key, &provider).map_err(|source| {
                TlsError::Certificate {
                    cert: cert_path,
                    key: key_path,
                    source,
                }
            })?;
            certs.set(Arc::new(key));
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let client_certs = client_ca
            .map(|path| ClientCerts::new(path, &provider))
            .transpose()?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(TlsError::Settings)?;
        let builder = match &client_certs {
            Some(c) => builder.with_client_cert_verifier(Arc::new(RequestClientCert {
                inner: Arc::clone(&c.verifier),
            })),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(Arc::new(certs.clone()));
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_certs,
            certs,
            provider,
        })
    }
}

/// The serving certificate the HTTPS API presents now; clones share it. Until one is set,
/// handshakes fail (and [`crate::server::serve_secure`] does not accept connections). A
/// certificate set with its expiry ([`Self::set_until`], the CSR bootstrap's) is presented
/// only until its NotAfter: past it handshakes fail, as upstream's certificate manager
/// returns no certificate once the current one has expired, and the first refusal is
/// logged naming the expiry.
#[derive(Clone)]
pub struct ServingCerts {
    current: Arc<tokio::sync::watch::Sender<Option<Arc<Presented>>>>,
}

/// One certificate as [`ServingCerts`] holds it.
struct Presented {
    key: Arc<CertifiedKey>,
    /// NotAfter of the leaf, when presenting it stops there.
    not_after: Option<jiff::Timestamp>,
    /// The expiry has been logged.
    expiry_logged: std::sync::atomic::AtomicBool,
}

impl Default for ServingCerts {
    fn default() -> Self {
        Self {
            current: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }
}

impl std::fmt::Debug for ServingCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.borrow();
        f.debug_struct("ServingCerts")
            .field("set", &current.is_some())
            .field("not_after", &current.as_ref().and_then(|p| p.not_after))
            .finish()
    }
}

impl ServingCerts {
    /// Presents `key` from the next handshake on, for as long as it is set (a given or
    /// self-signed certificate).
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.replace(key, None);
    }

    /// Presents `key` from the next handshake on until `not_after` (its leaf's NotAfter)
    /// has passed, then nothing until another is set.
    pub fn set_until(&self, key: Arc<CertifiedKey>, not_after: jiff::Timestamp) {
        self.replace(key, Some(not_after));
    }

    fn replace(&self, key: Arc<CertifiedKey>, not_after: Option<jiff::Timestamp>) {
        self.current.send_replace(Some(Arc::new(Presented {
            key,
            not_after,
            expiry_logged: std::sync::atomic::AtomicBool::new(false),
        })));
    }

    /// The certificate presented now.
    #[must_use]
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current_at(jiff::Timestamp::now())
    }

    /// The certificate presented at `now`: none once the current one's NotAfter is past.
    #[must_use]
    pub fn current_at(&self, now: jiff::Timestamp) -> Option<Arc<CertifiedKey>> {
        let presented = self.current.borrow().clone()?;
        match presented.not_after {
            Some(not_after) if now > not_after => {
                if !presented
                    .expiry_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::error!(
                        %not_after,
                        "the serving certificate expired at {not_after} and no new one has been issued: \
                         the HTTPS API refuses TLS handshakes until one is"
                    );
                }
                None
            }
            _ => Some(Arc::clone(&presented.key)),
        }
    }

    /// Returns once a certificate is set.
    pub async fn ready(&self) {
        let mut rx = self.current.subscribe();
        // The sender lives in `self`: the wait cannot end with a closed channel.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

impl ResolvesServerCert for ServingCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// A chain and its key, both PEM (one text may hold both, as `kubelet-server-current.pem`
/// does), as rustls presents them; the key must match the first certificate.
///
/// # Errors
/// Why the PEM or the pair is unusable.
pub fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("unreadable private key PEM: {e}"))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key does not serve the certificate: {e}"))
}

/// ring's provider, TLS 1.2 suites limited to `tlsCipherSuites` when set (in its order).
fn provider(tls: &TlsConfig) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(allowed) = &tls.cipher_suites {
        let all = std::mem::take(&mut provider.cipher_suites);
        let (tls13, tls12): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|s| s.version() == &rustls::version::TLS13);
        provider.cipher_suites = tls13;
        for want in allowed {
            let id = rustls_suite(*want);
            provider
                .cipher_suites
                .extend(tls12.iter().filter(|s| s.suite() == id).copied());
        }
    }
    provider
}

fn rustls_suite(suite: CipherSuite) -> rustls::CipherSuite {
    use rustls::CipherSuite as R;
    match suite {
        CipherSuite::EcdheEcdsaAes128GcmSha256 => R::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaAes256GcmSha384 => R::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaChacha20Poly1305 => R::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite::EcdheRsaAes128GcmSha256 => R::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes256GcmSha384 => R::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaChacha20Poly1305 => R::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The file names upstream's kubelet uses in its `--cert-dir`.
pub const SELF_SIGNED_CERT: &str = "kubelet.crt";
pub const SELF_SIGNED_KEY: &str = "kubelet.key";

/// `dir/kubelet.crt` and `dir/kubelet.key`: reused when both exist, else made as upstream's
/// kubelet makes them: a CA `<node>-ca@<unix time>` and a certificate `<node>@<unix time>`
/// for the node's name and addresses signed by it, valid a year, the file holding both.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be written.
pub fn ensure_self_signed(
    dir: &Path,
    node_name: &str,
    node_ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let (cert, key) = self_signed(node_name, node_ips).map_err(|source| TlsError::Generate {
        node: node_name.to_owned(),
        source,
    })?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(write_err(dir))?;
    }
    write_private(&key_path, key.as_bytes()).map_err(write_err(&key_path))?;
    write_private(&cert_path, cert.as_bytes()).map_err(write_err(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed serving certificate");
    Ok((cert_path, key_path))
}

/// Writes `path` whole or not at all (a temporary file renamed over it), mode 0600.
///
/// # Errors
/// The I/O error of the write or the rename.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A self-signed pair for `node_name` and `node_ips`: (PEM chain, PEM key).
fn self_signed(node_name: &str, node_ips: &[IpAddr]) -> Result<(String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = jiff::Timestamp::now();
    let date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let month = u8::try_from(date.month()).unwrap_or(1);
    let day = u8::try_from(date.day()).unwrap_or(1);
    let not_before = rcgen::date_time_ymd(i32::from(date.year()), month, day);
    let not_after = rcgen::date_time_ymd(i32::from(date.year()) + 1, month, day.min(28));
    let stamp = now.as_second();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("{node_name}-ca@{stamp}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut names = vec![node_name.to_owned()];
    names.extend(node_ips.iter().map(ToString::to_string));
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{node_name}@{stamp}"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((
        format!("{}{}", cert.pem(), ca_cert.pem()),
        key.serialize_pem(),
    ))
}

/// Client certificates checked against the client CA bundle.
#[derive(Clone)]
pub struct ClientCerts {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCerts {
    fn new(path: &Path, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(path)? {
            // A certificate rustls cannot use as a root is skipped, as Go skips it.
            let _ = roots.add(cert);
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.to_owned(),
                    source,
                })?;
        Ok(Self { verifier })
    }

    /// The user a client certificate chain names (`CN`, groups `O`), when it chains to the
    /// client CA bundle and is valid for client authentication now.
    ///
    /// # Errors
    /// Why the chain is refused.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<User, String> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no client certificate".to_owned())?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| format!("client certificate refused: {e}"))?;
        user_of(leaf)
    }
}

/// `CN` and `O`s of a certificate's subject.
fn user_of(cert: &CertificateDer<'_>) -> Result<User, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err("the client certificate has no common name".to_owned());
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok(User {
        name,
        uid: String::new(),
        groups,
        extra: std::collections::BTreeMap::new(),
    })
}

/// Asks for a client certificate and checks the client holds its key (the handshake
/// signatures); the chain is judged later ([`ClientCerts::verify`]), as Go's
/// `RequestClientCert`.
#[derive(Debug)]
struct RequestClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
