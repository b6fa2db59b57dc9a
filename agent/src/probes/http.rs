//! The `httpGet` handler, for probes and lifecycle hooks: HTTP/1.1 GET over a fresh
//! connection (no keep-alive, as upstream), `https` without certificate verification.
//!
//! As upstream's prober: 2xx and 3xx pass; redirects to the same host name are followed,
//! at most 10 requests in all; a redirect to another host is not followed and passes with a
//! warning; at most 10 KiB of the body is read; the whole exchange, redirects included,
//! must finish within the timeout.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::describe;
use super::exec::truncated;
use super::spec::{HttpGet, Scheme};
use super::threshold::Outcome;
use crate::config::duration::format_duration;

/// How much of a response body a probe reads (upstream: 10 KiB).
pub const MAX_BODY: usize = 10 * 1024;
/// Requests in one exchange, the first included (upstream: "stopped after 10 redirects").
pub const MAX_REQUESTS: usize = 10;
/// The `User-Agent` of probes unless the probe sets one. Applications filter on the
/// `kube-probe/` prefix, so bpflet sends the upstream name with the API version it speaks.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.33";
/// The `User-Agent` of lifecycle hooks unless the hook sets one.
pub const HOOK_USER_AGENT: &str = "kube-lifecycle/1.33";

/// Why one HTTP exchange failed, with the layer that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("dial tcp {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {address}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("HTTP exchange")]
    Http(#[source] hyper::Error),
    #[error("reading the response body")]
    Body(#[source] hyper::Error),
    #[error("redirect to {location:?} is not a valid URL")]
    Redirect { location: String },
    #[error("stopped after {MAX_REQUESTS} redirects")]
    TooManyRedirects,
    #[error("timed out after {}", format_duration(*timeout))]
    Timeout { timeout: Duration },
}

/// A header the request cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("invalid HTTP header {name:?}")]
pub struct HeaderError {
    pub name: String,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// A name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// `host:port`, with brackets around an IPv6 address.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves a `Location` header against this URL: absolute, scheme-relative,
    /// absolute-path and relative references (dot segments are left to the server).
    #[must_use]
    pub fn join(&self, location: &str) -> Option<Self> {
        let location = location.split('#').next().unwrap_or_default().trim();
        if location.starts_with("//") {
            return Self::parse_absolute(&format!("{}:{location}", self.scheme.as_str()));
        }
        if is_absolute(location) {
            return Self::parse_absolute(location);
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..=base.rfind('/').unwrap_or(0)];
            format!("{dir}{location}")
        };
        Some(Self {
            path,
            ..self.clone()
        })
    }

    fn parse_absolute(url: &str) -> Option<Self> {
        let uri: hyper::Uri = url.parse().ok()?;
        let scheme = match uri.scheme_str()?.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let authority = uri.authority()?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        Some(Self {
            scheme,
            host: host.to_owned(),
            port,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path
        )
    }
}

/// The last response of an exchange.
#[derive(Debug)]
pub struct Response {
    /// The URL that answered (after same-host redirects).
    pub url: Url,
    pub status: StatusCode,
    /// A redirect to another host that was not followed.
    pub redirect_elsewhere: Option<String>,
    /// At most [`MAX_BODY`] bytes.
    pub body: Bytes,
}

/// An `httpGet` request before it is sent: the URL and the headers.
#[derive(Debug, Clone)]
pub struct Request {
    url: Url,
    /// The `Host` header when `httpHeaders` set one.
    host_header: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Request {
    /// The request for `get`, sent to `default_host` (the pod IP) unless the handler names
    /// a host. `user_agent` and `Accept: */*` are added unless the handler sets them.
    ///
    /// # Errors
    /// A header name or value HTTP cannot carry.
    pub fn new(
        get: &HttpGet,
        default_host: &str,
        user_agent: &'static str,
    ) -> Result<Self, HeaderError> {
        let mut host_header = None;
        let mut headers = Vec::with_capacity(get.headers.len() + 2);
        for (name, value) in &get.headers {
            let invalid = || HeaderError { name: name.clone() };
            let name = HeaderName::try_from(name.as_str()).map_err(|_| invalid())?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|_| invalid())?;
            if name == header::HOST {
                host_header = Some(value);
            } else {
                headers.push((name, value));
            }
        }
        let has = |n: &HeaderName, headers: &[(HeaderName, HeaderValue)]| {
            headers.iter().any(|(h, _)| h == n)
        };
        if !has(&header::USER_AGENT, &headers) {
            headers.push((header::USER_AGENT, HeaderValue::from_static(user_agent)));
        }
        if !has(&header::ACCEPT, &headers) {
            headers.push((header::ACCEPT, HeaderValue::from_static("*/*")));
        }
        let host = get.host.as_deref().unwrap_or(default_host);
        Ok(Self {
            url: Url {
                scheme: get.scheme,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: get.port,
                path: get.path.clone(),
            },
            host_header,
            headers,
        })
    }

    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends the request, following same-host redirects, all within `timeout`.
    ///
    /// # Errors
    /// Connection, TLS and protocol failures, too many redirects, the timeout.
    pub async fn send(&self, timeout: Duration) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.exchange())
            .await
            .unwrap_or(Err(HttpError::Timeout { timeout }))
    }

    async fn exchange(&self) -> Result<Response, HttpError> {
        let first_host = self.url.host.clone();
        let mut url = self.url.clone();
        let mut host_header = self.host_header.clone();
        for _ in 0..MAX_REQUESTS {
            let (status, location, body) = self.once(&url, host_header.as_ref()).await?;
            let follows = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let Some(location) = location.filter(|_| follows) else {
                return Ok(Response {
                    url,
                    status,
                    redirect_elsewhere: None,
                    body,
                });
            };
            let next = url.join(&location).ok_or_else(|| HttpError::Redirect {
                location: location.clone(),
            })?;
            if !next.host.eq_ignore_ascii_case(&first_host) {
                return Ok(Response {
                    url,
                    status,
                    redirect_elsewhere: Some(next.to_string()),
                    body,
                });
            }
            // A custom Host header survives relative redirects only (as Go's client).
            if is_absolute(&location) {
                host_header = None;
            }
            url = next;
        }
        Err(HttpError::TooManyRedirects)
    }

    /// One request on a fresh connection: status, `Location`, limited body.
    async fn once(
        &self,
        url: &Url,
        host_header: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Option<String>, Bytes), HttpError> {
        let address = url.authority();
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| HttpError::Connect {
                address: address.clone(),
                source,
            })?;
        let authority = HeaderValue::from_str(&address).map_err(|_| HttpError::ServerName {
            host: url.host.clone(),
        })?;
        let mut request = hyper::Request::get(url.path.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|_| HttpError::Redirect {
                location: url.to_string(),
            })?;
        let headers = request.headers_mut();
        headers.insert(header::HOST, host_header.cloned().unwrap_or(authority));
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        match url.scheme {
            Scheme::Http => exchange(tcp, request).await,
            Scheme::Https => {
                let name =
                    ServerName::try_from(url.host.clone()).map_err(|_| HttpError::ServerName {
                        host: url.host.clone(),
                    })?;
                let tls = tokio_rustls::TlsConnector::from(insecure_tls_config())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| HttpError::Tls { address, source })?;
                exchange(tls, request).await
            }
        }
    }
}

/// `scheme:...` or `//host/...`: a `Location` that is not relative to the current URL.
fn is_absolute(location: &str) -> bool {
    let location = location.trim();
    if location.starts_with("//") {
        return true;
    }
    location.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Drives one HTTP/1.1 exchange on `io` in the calling task.
async fn exchange<IO>(
    io: IO,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<String>, Bytes), HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(HttpError::Http)?;
    let call = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(HttpError::Http)?;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut buf = Vec::new();
        while buf.len() < MAX_BODY {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(HttpError::Body(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        buf.truncate(MAX_BODY);
        Ok((status, location, Bytes::from(buf)))
    };
    let mut call = std::pin::pin!(call);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        biased;
        result = &mut call => result,
        // The connection ended (closed after the response, or broken): what was received
        // is still delivered to the call, which then finishes.
        _ = &mut connection => call.await,
    }
}

/// Runs an `httpGet` probe: 2xx passes, 3xx passes with a warning, anything else fails.
pub async fn probe_http(get: &HttpGet, default_host: &str, timeout: Duration) -> Outcome {
    let request = match Request::new(get, default_host, PROBE_USER_AGENT) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(describe(&e)),
    };
    let response = match request.send(timeout).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("Get \"{}\": {}", request.url(), describe(&e))),
    };
    let body = truncated(&response.body, MAX_BODY);
    let code = response.status.as_u16();
    if let Some(elsewhere) = &response.redirect_elsewhere {
        return Outcome::Warning(format!(
            "Probe terminated redirects to {elsewhere}, Response body: {body}"
        ));
    }
    match code {
        200..=299 => Outcome::Success(body),
        300..=399 => Outcome::Warning(format!("Probe terminated redirects, Response body: {body}")),
        _ => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// TLS for probes and hooks: no certificate verification (as upstream's
/// `InsecureSkipVerify`), but handshake signatures are still checked.
fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AcceptAnyCertificate(Arc::clone(&provider)));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        // The ring provider supports both default versions: failing here is a build bug.
        Arc::new(config.expect("ring supports the default TLS versions"))
    }))
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
