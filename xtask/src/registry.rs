//! A real image registry on 127.0.0.1: Debian's `docker-registry` (the distribution v2
//! registry) with TLS (a CA and server certificate made here with rcgen) and htpasswd
//! (bcrypt) auth, its storage and files under one directory. Used by the root tests
//! (`tests/src/registry.rs`) and by `cargo xtask up`.
//!
//! [`Registry::push`] copies an image of an OCI archive (the offline images,
//! [`crate::images`]) into it with skopeo; [`Registry::trust`] writes the `hosts.toml` that
//! makes a private containerd trust it; [`Registry::docker_config`] is the `config.json`
//! that holds its credentials. Stopped (SIGTERM, then SIGKILL) by [`Registry::stop`] or on
//! drop. A registry left running by a caller that died is found through its pid file and
//! stopped by the next [`Registry::start`] on the same directory.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::command_output;

/// The user every registry made here accepts.
pub const USER: &str = "bpflet";
/// Its password.
pub const PASSWORD: &str = "s3cret-pull";

const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:<port>`: the registry part of image names.
    pub host: String,
    /// The CA that signed the registry's certificate (PEM).
    pub ca: PathBuf,
    /// Everything lives here.
    pub dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it into `dir`; returns
/// (CA, certificate, key) paths.
fn write_pki(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bpflet-test-registry-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    for (path, pem) in [
        (&paths.0, ca_cert.pem()),
        (&paths.1, cert.pem()),
        (&paths.2, key.serialize_pem()),
    ] {
        fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(paths)
}

impl Registry {
    /// Starts a registry on `127.0.0.1:<port>` with its files under `dir` (created; the
    /// images in `dir/data` are kept across runs, the certificates and password file are
    /// made anew); returns once it accepts connections.
    ///
    /// # Errors
    /// A tool is missing (`cargo xtask setup` installs them), a file cannot be written, or
    /// the registry exits or does not listen within 30 s (its log is quoted).
    pub fn start(dir: &Path, port: u16) -> Result<Self> {
        fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.join("data").display()))?;
        stop_stale(dir)?;
        let (ca, cert, key) = write_pki(dir)?;
        let htpasswd = dir.join("htpasswd");
        let line = command_output(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]))
            .context("making the password file (install apache2-utils: `cargo xtask setup`)")?;
        fs::write(&htpasswd, line.trim_end().to_owned() + "\n")
            .with_context(|| format!("writing {}", htpasswd.display()))?;
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {host}
  tls:
    certificate: {cert}
    key: {key}
auth:
  htpasswd:
    realm: bpflet-test-registry
    path: {htpasswd}
",
                data = dir.join("data").display(),
                cert = cert.display(),
                key = key.display(),
                htpasswd = htpasswd.display(),
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("registry.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log handle")?)
            .stderr(log_file)
            .spawn()
            .context("starting docker-registry (install it with `cargo xtask setup`)")?;
        fs::write(dir.join("registry.pid"), child.id().to_string())
            .with_context(|| format!("writing {}", dir.join("registry.pid").display()))?;
        let mut registry = Registry {
            host,
            ca,
            dir: dir.to_owned(),
            log,
            child: Some(child),
        };
        registry.wait_listening()?;
        Ok(registry)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("checking on docker-registry")?
            {
                self.child = None;
                bail!("docker-registry exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(&self.host).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not listen on {} within {LISTEN_TIMEOUT:?}:\n{}",
            self.host,
            self.log()
        )
    }

    /// The registry's log.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Copies image `name` of the OCI archive `archive` (as its `ref.name` annotation
    /// says) to `<host>/<repo_tag>`; returns the full name.
    ///
    /// # Errors
    /// skopeo fails (its message is quoted).
    pub fn push(&self, archive: &Path, name: &str, repo_tag: &str) -> Result<String> {
        let target = format!("{}/{repo_tag}", self.host);
        let cert_dir = self.dir.join("skopeo-certs");
        fs::create_dir_all(&cert_dir)
            .with_context(|| format!("creating {}", cert_dir.display()))?;
        fs::copy(&self.ca, cert_dir.join("ca.crt")).context("copying the CA for skopeo")?;
        command_output(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-creds"])
                .arg(format!("{USER}:{PASSWORD}"))
                .arg("--dest-cert-dir")
                .arg(&cert_dir)
                .arg(format!("oci-archive:{}:{name}", archive.display()))
                .arg(format!("docker://{target}")),
        )
        .with_context(|| format!("pushing {name} to {target}"))?;
        Ok(target)
    }

    /// Makes the containerd whose registry `config_path` is `certs_d` trust this
    /// registry's CA (containerd reads `hosts.toml` at each pull).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn trust(&self, certs_d: &Path) -> Result<()> {
        let dir = certs_d.join(&self.host);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::new();
        // The CA on both entries: containerd tries the `[host]` first and falls back to
        // `server` after a "not found", so a CA only on the host entry turns an unknown image
        // into an x509 error (containerd 2); a bare `server` entry is not enough for 1.6.
        let _ = writeln!(text, "server = \"https://{}\"", self.host);
        let _ = writeln!(text, "ca = \"{}\"", self.ca.display());
        let _ = writeln!(text, "\n[host.\"https://{}\"]", self.host);
        let _ = writeln!(text, "  capabilities = [\"pull\", \"resolve\"]");
        let _ = writeln!(text, "  ca = \"{}\"", self.ca.display());
        fs::write(dir.join("hosts.toml"), text)
            .with_context(|| format!("writing {}", dir.join("hosts.toml").display()))
    }

    /// A docker `config.json` holding this registry's credentials (`password` may be
    /// wrong on purpose).
    #[must_use]
    pub fn docker_config(&self, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        serde_json::json!({ "auths": { &self.host: { "auth": auth } } }).to_string()
    }

    /// Stops the registry: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.stop_child();
    }

    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        terminate(&mut child);
        let _ = fs::remove_file(self.dir.join("registry.pid"));
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaps the child.
fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Stops a registry an earlier caller left running on `dir` (its pid file names a
/// `docker-registry` serving `dir`'s config).
fn stop_stale(dir: &Path) -> Result<()> {
    let pid_file = dir.join("registry.pid");
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let config = dir.join("config.yml");
    if let Ok(pid) = text.trim().parse::<i32>()
        && let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline"))
    {
        let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = words
            .first()
            .is_some_and(|w| w.ends_with(b"docker-registry"))
            && words
                .iter()
                .any(|w| *w == config.as_os_str().as_encoded_bytes());
        if ours {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop_child();
    }
}
