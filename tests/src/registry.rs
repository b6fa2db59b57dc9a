//! A real image registry for the root tests: Debian's `docker-registry` (the distribution
//! v2 registry) on `127.0.0.1:<free port>`, with TLS (a CA and server certificate made here
//! with rcgen) and htpasswd (bcrypt) auth, its storage under the caller's directory.
//! [`Registry::push`] copies one of the offline images into it with skopeo;
//! [`Registry::trust`] writes the `hosts.toml` that makes a private containerd trust it.
//! Stopped (SIGTERM, then SIGKILL) on drop.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::node::{Node, free_port};

/// The user every test registry accepts.
pub const USER: &str = "bpflet";
/// Its password.
pub const PASSWORD: &str = "s3cret-pull";

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:<port>`: the registry part of image names.
    pub host: String,
    /// The CA that signed the registry's certificate (PEM).
    pub ca: PathBuf,
    /// Everything lives here.
    pub dir: PathBuf,
    log: PathBuf,
    child: Child,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install it with `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it into `dir`; returns
/// (CA, certificate, key) paths.
fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bpflet-test-registry-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .expect("sign the server cert");
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write ca.crt");
    std::fs::write(&paths.1, cert.pem()).expect("write server.crt");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write server.key");
    (paths.0, paths.1, paths.2)
}

impl Registry {
    /// Starts a registry with its files under `dir` (created); returns once it accepts
    /// connections.
    #[must_use]
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("data")).expect("registry dir");
        let (ca, cert, key) = write_pki(dir);
        let htpasswd = dir.join("htpasswd");
        let line = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
        std::fs::write(&htpasswd, line.trim_end().to_owned() + "\n").expect("write htpasswd");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
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
        .expect("write registry config");
        let log = dir.join("registry.log");
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting docker-registry: {e} (install it with `cargo xtask setup`)")
            });
        let mut registry = Registry {
            host,
            ca,
            dir: dir.to_owned(),
            log,
            child,
        };
        registry.wait_listening();
        registry
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(&self.host).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on {}:\n{}",
            self.host,
            self.log()
        );
    }

    /// The registry's log.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Copies image `name` of the OCI archive `archive` (as its `ref.name` annotation
    /// says) to `<host>/<repo_tag>`; returns the full name.
    pub fn push(&self, archive: &Path, name: &str, repo_tag: &str) -> String {
        let target = format!("{}/{repo_tag}", self.host);
        let cert_dir = self.dir.join("skopeo-certs");
        std::fs::create_dir_all(&cert_dir).expect("skopeo cert dir");
        std::fs::copy(&self.ca, cert_dir.join("ca.crt")).expect("copy the CA");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-creds"])
            .arg(format!("{USER}:{PASSWORD}"))
            .arg("--dest-cert-dir")
            .arg(&cert_dir)
            .arg(format!("oci-archive:{}:{name}", archive.display()))
            .arg(format!("docker://{target}")));
        target
    }

    /// Makes the containerd whose registry `config_path` is `certs_d` trust this
    /// registry's CA (containerd reads `hosts.toml` at each pull).
    pub fn trust(&self, certs_d: &Path) {
        let dir = certs_d.join(&self.host);
        std::fs::create_dir_all(&dir).expect("hosts dir");
        let mut text = String::new();
        // The CA on both entries: containerd tries the `[host]` first and falls back to
        // `server` after a "not found", so a CA only on the host entry turns an unknown image
        // into an x509 error (containerd 2); a bare `server` entry is not enough for 1.6.
        let _ = writeln!(text, "server = \"https://{}\"", self.host);
        let _ = writeln!(text, "ca = \"{}\"", self.ca.display());
        let _ = writeln!(text, "\n[host.\"https://{}\"]", self.host);
        let _ = writeln!(text, "  capabilities = [\"pull\", \"resolve\"]");
        let _ = writeln!(text, "  ca = \"{}\"", self.ca.display());
        std::fs::write(dir.join("hosts.toml"), text).expect("write hosts.toml");
    }

    /// A docker `config.json` holding this registry's credentials (`password` may be
    /// wrong on purpose).
    #[must_use]
    pub fn docker_config(&self, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        serde_json::json!({ "auths": { &self.host: { "auth": auth } } }).to_string()
    }
}

impl Registry {
    /// A registry for `node`: under the node's directory, trusted by its containerd.
    #[must_use]
    pub fn for_node(node: &Node) -> Self {
        let registry = Self::start(&node.dir.path().join("registry"));
        registry.trust(&node.ctd.registry_config_dir);
        registry
    }

    /// Pushes the offline busybox image as `<host>/<repo_tag>`; returns the full name.
    pub fn push_busybox(&self, node: &Node, repo_tag: &str) -> String {
        self.push(
            &node.ctd.images.path,
            xtask::images::BUSYBOX_IMAGE,
            repo_tag,
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
