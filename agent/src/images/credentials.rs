//! Registry credentials for image pulls, as upstream's `credentialprovider` finds and
//! matches them:
//!
//! - a pod's `imagePullSecrets` of type `kubernetes.io/dockerconfigjson` (the
//!   `{"auths": {...}}` of `.dockerconfigjson`) or `kubernetes.io/dockercfg` (the legacy
//!   map of `.dockercfg`);
//! - the node's own docker config, read at every pull (upstream's `ReadDockerConfigFile`):
//!   the first `config.json` in `<root-dir>`, the working directory, `$HOME/.docker`,
//!   `/.docker`; failing that the first `.dockercfg` in `<root-dir>`, the working
//!   directory, `$HOME`, `/`. This is how a standalone node (static pods cannot name
//!   secrets) gets credentials.
//!
//! A keyring maps registry locations to credentials. A location is a host (with an
//! optional port and path; `https://` and a `/v1/` or `/v2/` path prefix are dropped as
//! the docker client does), each dot-separated host part may be a glob (`*.example.com`).
//! An image matches a location when it has as many host parts, each part matches, the
//! ports are equal and the image's path starts with the location's path. Every matching
//! location's credentials are returned, the most specific (reverse-sorted) first; the
//! puller tries them in turn. Pod secrets come before the node's credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use k8s_cri::v1 as api;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

/// Why a docker config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{what} is not a valid docker config")]
    Parse {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: the auth of registry {registry:?} is not base64 of \"user:password\"")]
    BadAuth { what: String, registry: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One registry's credentials, as a docker config holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl Credential {
    /// As the CRI takes it.
    #[must_use]
    pub fn auth_config(&self) -> api::AuthConfig {
        api::AuthConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            ..api::AuthConfig::default()
        }
    }
}

/// Registry location (as written) to credentials.
pub type DockerConfig = BTreeMap<String, Credential>;

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
struct RawConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
}

/// Parses a `config.json` / `.dockerconfigjson` (`{"auths": {...}}`); `what` names it in
/// errors.
pub fn parse_config_json(bytes: &[u8], what: &str) -> Result<DockerConfig, CredentialError> {
    let raw: RawConfigJson =
        serde_json::from_slice(bytes).map_err(|source| CredentialError::Parse {
            what: what.to_owned(),
            source,
        })?;
    entries(raw.auths, what)
}

/// Parses a legacy `.dockercfg` (the registry map itself).
pub fn parse_dockercfg(bytes: &[u8], what: &str) -> Result<DockerConfig, CredentialError> {
    let raw: BTreeMap<String, RawEntry> =
        serde_json::from_slice(bytes).map_err(|source| CredentialError::Parse {
            what: what.to_owned(),
            source,
        })?;
    entries(raw, what)
}

/// `auth` (base64 of `user:password`) wins over `username`/`password`, as upstream's
/// decoder fills them from it.
fn entries(raw: BTreeMap<String, RawEntry>, what: &str) -> Result<DockerConfig, CredentialError> {
    let mut out = DockerConfig::new();
    for (registry, e) in raw {
        let mut cred = Credential {
            username: e.username.unwrap_or_default(),
            password: e.password.unwrap_or_default(),
        };
        if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
            let bad = || CredentialError::BadAuth {
                what: what.to_owned(),
                registry: registry.clone(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (user, password) = text.split_once(':').ok_or_else(bad)?;
            cred.username = user.to_owned();
            cred.password = password.to_owned();
        }
        out.insert(registry, cred);
    }
    Ok(out)
}

/// `type` of a pull secret holding a `config.json` under [`DOCKER_CONFIG_JSON_KEY`].
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// `type` of a pull secret holding a legacy `.dockercfg` under [`DOCKERCFG_KEY`].
pub const DOCKERCFG_TYPE: &str = "kubernetes.io/dockercfg";
pub const DOCKERCFG_KEY: &str = ".dockercfg";

/// The docker config an image pull secret holds, as upstream reads a pod's
/// `imagePullSecrets`: a secret of type `kubernetes.io/dockerconfigjson` with a non-empty
/// `.dockerconfigjson`, else one of type `kubernetes.io/dockercfg` with a non-empty
/// `.dockercfg`; `None` for any other secret (upstream passes over it). `what` names the
/// secret in errors.
///
/// # Errors
/// [`CredentialError`] when the data is not a docker config.
pub fn from_secret(secret: &Secret, what: &str) -> Result<Option<DockerConfig>, CredentialError> {
    let data = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
    };
    let kind = secret.type_.as_deref().unwrap_or_default();
    if kind == DOCKER_CONFIG_JSON_TYPE
        && let Some(bytes) = data(DOCKER_CONFIG_JSON_KEY)
    {
        return parse_config_json(bytes, &format!("{what}: {DOCKER_CONFIG_JSON_KEY}")).map(Some);
    }
    if kind == DOCKERCFG_TYPE
        && let Some(bytes) = data(DOCKERCFG_KEY)
    {
        return parse_dockercfg(bytes, &format!("{what}: {DOCKERCFG_KEY}")).map(Some);
    }
    Ok(None)
}

/// Where the node's docker config is looked for: `config.json` in each of the first list,
/// then `.dockercfg` in each of the second (upstream's order; see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCredentials {
    pub config_json_dirs: Vec<PathBuf>,
    pub dockercfg_dirs: Vec<PathBuf>,
}

impl NodeCredentials {
    /// Upstream's search paths for a node whose `--root-dir` is `root_dir`.
    #[must_use]
    pub fn standard(root_dir: &Path) -> Self {
        let cwd = std::env::current_dir().unwrap_or_default();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut config_json_dirs = vec![root_dir.to_owned(), cwd.clone()];
        let mut dockercfg_dirs = vec![root_dir.to_owned(), cwd];
        if let Some(home) = home {
            config_json_dirs.push(home.join(".docker"));
            dockercfg_dirs.push(home);
        }
        config_json_dirs.push(PathBuf::from("/.docker"));
        dockercfg_dirs.push(PathBuf::from("/"));
        Self {
            config_json_dirs,
            dockercfg_dirs,
        }
    }

    /// The first config found (`None`: none anywhere). A file that cannot be read or
    /// parsed is skipped, as upstream does, and reported in the second list.
    #[must_use]
    pub fn read(&self) -> (Option<(PathBuf, DockerConfig)>, Vec<CredentialError>) {
        let mut problems = Vec::new();
        let json = self
            .config_json_dirs
            .iter()
            .map(|d| (d.join("config.json"), true));
        let legacy = self
            .dockercfg_dirs
            .iter()
            .map(|d| (d.join(".dockercfg"), false));
        for (path, is_json) in json.chain(legacy) {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    problems.push(CredentialError::Read { path, source });
                    continue;
                }
            };
            let what = path.display().to_string();
            let parsed = if is_json {
                parse_config_json(&bytes, &what)
            } else {
                parse_dockercfg(&bytes, &what)
            };
            match parsed {
                Ok(cfg) => return (Some((path, cfg)), problems),
                Err(e) => problems.push(e),
            }
        }
        (None, problems)
    }
}

/// A registry location split as upstream's `SplitURL` does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    host_parts: Vec<String>,
    port: String,
    path: String,
}

/// Parses `host[:port][/path]`, with or without `http(s)://`.
fn parse_location(s: &str) -> Location {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, p),
        _ => (authority, ""),
    };
    Location {
        host_parts: host.split('.').map(str::to_owned).collect(),
        port: port.to_owned(),
        path: path.to_owned(),
    }
}

/// Go's `filepath.Match` for one host part, `*` and `?` only (host names hold no `/`;
/// bracket classes are taken literally).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

fn matches(pattern: &Location, target: &Location) -> bool {
    pattern.port == target.port
        && pattern.host_parts.len() == target.host_parts.len()
        && target.path.starts_with(&pattern.path)
        && pattern
            .host_parts
            .iter()
            .zip(&target.host_parts)
            .all(|(p, t)| glob(p.as_bytes(), t.as_bytes()))
}

/// The repository an image names, normalised as upstream's `ParseImageName`: the tag and
/// digest dropped, Docker Hub's implicit `docker.io/` (and `library/`) added.
#[must_use]
pub fn repository(image: &str) -> String {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    // A tag is a `:` after the last `/` (a `:` before it is a port).
    let name = match (name.rfind(':'), name.rfind('/')) {
        (Some(c), Some(s)) if c > s => &name[..c],
        (Some(c), None) => &name[..c],
        _ => name,
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_registry =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        name.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{name}")
    }
}

const DOCKER_HUB_HOST: &str = "index.docker.io";

/// Credentials by registry location, most specific location first.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// (key as upstream normalises it, its parsed form, credentials), reverse-sorted by key.
    entries: Vec<(String, Location, Vec<Credential>)>,
}

impl Keyring {
    /// Adds every location of `config`.
    pub fn add(&mut self, config: &DockerConfig) {
        for (location, cred) in config {
            let key = normalise_key(location);
            match self.entries.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, _, creds)) => {
                    if !creds.contains(cred) {
                        creds.push(cred.clone());
                    }
                }
                None => {
                    let parsed = parse_location(&key);
                    self.entries.push((key, parsed, vec![cred.clone()]));
                }
            }
        }
        self.entries.sort_by(|a, b| b.0.cmp(&a.0));
    }

    /// Every credential for `image`'s repository, most specific location first; Docker
    /// Hub's images also match an `index.docker.io` entry.
    #[must_use]
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        let repo = repository(image);
        let target = parse_location(&repo);
        let found: Vec<Credential> = self
            .entries
            .iter()
            .filter(|(_, loc, _)| matches(loc, &target))
            .flat_map(|(_, _, creds)| creds.iter().cloned())
            .collect();
        if !found.is_empty() {
            return found;
        }
        if repo.starts_with("docker.io/") {
            return self
                .entries
                .iter()
                .filter(|(k, _, _)| k == DOCKER_HUB_HOST)
                .flat_map(|(_, _, creds)| creds.iter().cloned())
                .collect();
        }
        Vec::new()
    }

    /// This keyring's credentials for `image`, then `other`'s.
    #[must_use]
    pub fn lookup_with(&self, other: &Keyring, image: &str) -> Vec<Credential> {
        let mut creds = self.lookup(image);
        for c in other.lookup(image) {
            if !creds.contains(&c) {
                creds.push(c);
            }
        }
        creds
    }
}

/// Upstream's key for a location: scheme dropped, a `/v1/` or `/v2/` path prefix dropped,
/// a bare `/` path dropped.
fn normalise_key(location: &str) -> String {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path
        .strip_prefix("/v2/")
        .or_else(|| path.strip_prefix("/v1/"))
        .map_or(path.to_owned(), |p| format!("/{p}"));
    if path.is_empty() || path == "/" {
        host.to_owned()
    } else {
        format!("{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> Credential {
        Credential {
            username: user.to_owned(),
            password: format!("{user}-pw"),
        }
    }

    fn keyring(entries: &[(&str, &str)]) -> Keyring {
        let mut k = Keyring::default();
        k.add(
            &entries
                .iter()
                .map(|(l, u)| ((*l).to_owned(), cred(u)))
                .collect(),
        );
        k
    }

    fn users(creds: &[Credential]) -> Vec<&str> {
        creds.iter().map(|c| c.username.as_str()).collect()
    }

    #[test]
    fn config_json_decodes_auth_and_plain_fields() {
        let text = br#"{"auths": {
            "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjN0OmV4dHJh"},
            "https://registry.example.com/v1/": {"username": "bob", "password": "pw"}
        }}"#;
        let cfg = parse_config_json(text, "test").unwrap();
        assert_eq!(
            cfg["127.0.0.1:5000"],
            Credential {
                username: "alice".into(),
                password: "s3cr3t:extra".into()
            },
            "the password is everything after the first colon"
        );
        assert_eq!(cfg["https://registry.example.com/v1/"].username, "bob");
    }

    #[test]
    fn legacy_dockercfg_is_the_map_itself() {
        let cfg = parse_dockercfg(br#"{"h:1": {"auth": "dTpw"}}"#, "t").unwrap();
        assert_eq!(cfg["h:1"].username, "u");
        assert_eq!(cfg["h:1"].password, "p");
    }

    #[test]
    fn a_bad_auth_names_the_file_and_registry() {
        let e = parse_config_json(br#"{"auths": {"r:1": {"auth": "bm9jb2xvbg=="}}}"#, "f.json")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.json: the auth of registry \"r:1\" is not base64 of \"user:password\""
        );
        assert!(parse_config_json(b"{", "f.json").is_err());
    }

    #[test]
    fn repositories_are_normalised_as_upstream() {
        assert_eq!(repository("busybox"), "docker.io/library/busybox");
        assert_eq!(repository("busybox:1.36"), "docker.io/library/busybox");
        assert_eq!(repository("me/app:v1"), "docker.io/me/app");
        assert_eq!(repository("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b");
        assert_eq!(repository("127.0.0.1:5000/a"), "127.0.0.1:5000/a");
        assert_eq!(
            repository("localhost/x@sha256:abcd"),
            "localhost/x",
            "a digest is dropped"
        );
    }

    #[test]
    fn locations_match_by_host_port_glob_and_path_prefix() {
        let k = keyring(&[
            ("127.0.0.1:5000", "port"),
            ("127.0.0.1", "noport"),
            ("*.example.com", "glob"),
            ("reg.example.com/team", "team"),
            ("https://other.io/v2/", "other"),
        ]);
        assert_eq!(users(&k.lookup("127.0.0.1:5000/busybox:1")), ["port"]);
        assert_eq!(users(&k.lookup("127.0.0.1/busybox")), ["noport"]);
        assert!(
            k.lookup("127.0.0.1:5001/busybox").is_empty(),
            "port differs"
        );
        assert_eq!(
            users(&k.lookup("reg.example.com/team/app:1")),
            ["team", "glob"],
            "both match, the more specific first"
        );
        assert_eq!(users(&k.lookup("reg.example.com/other/app")), ["glob"]);
        assert!(
            k.lookup("a.b.example.com/app").is_empty(),
            "a glob part matches one host part only"
        );
        assert_eq!(
            users(&k.lookup("other.io/x")),
            ["other"],
            "https:// and /v2/ are dropped from the key"
        );
        assert!(k.lookup("busybox").is_empty());
    }

    #[test]
    fn docker_hub_images_fall_back_to_index_docker_io() {
        let k = keyring(&[("https://index.docker.io/v1/", "hub")]);
        assert_eq!(users(&k.lookup("busybox")), ["hub"]);
        assert_eq!(users(&k.lookup("me/app")), ["hub"]);
        assert!(k.lookup("quay.io/me/app").is_empty());
    }

    #[test]
    fn pod_credentials_come_before_the_nodes() {
        let pod = keyring(&[("127.0.0.1:5000", "pod")]);
        let node = keyring(&[("127.0.0.1:5000", "node"), ("127.0.0.1:5000/x", "nodex")]);
        assert_eq!(
            users(&pod.lookup_with(&node, "127.0.0.1:5000/x")),
            ["pod", "nodex", "node"]
        );
    }

    fn secret(kind: &str, key: &str, value: &[u8]) -> Secret {
        Secret {
            type_: Some(kind.to_owned()),
            data: Some(BTreeMap::from([(
                key.to_owned(),
                k8s_openapi::ByteString(value.to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn pull_secrets_are_read_by_type_and_key_as_upstream() {
        let json = br#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6cHc="}}}"#;
        let cfg = from_secret(
            &secret(DOCKER_CONFIG_JSON_TYPE, DOCKER_CONFIG_JSON_KEY, json),
            "secret ns/s",
        )
        .unwrap()
        .expect("a docker config");
        assert_eq!(cfg["127.0.0.1:5000"].username, "alice");
        let legacy = from_secret(
            &secret(
                DOCKERCFG_TYPE,
                DOCKERCFG_KEY,
                br#"{"h:1": {"auth": "dTpw"}}"#,
            ),
            "secret ns/s",
        )
        .unwrap()
        .expect("a legacy docker config");
        assert_eq!(legacy["h:1"].password, "p");
        // Another type, the other type's key, an empty value: not a pull secret.
        for s in [
            secret("Opaque", DOCKER_CONFIG_JSON_KEY, json),
            secret(DOCKER_CONFIG_JSON_TYPE, DOCKERCFG_KEY, json),
            secret(DOCKERCFG_TYPE, DOCKER_CONFIG_JSON_KEY, json),
            secret(DOCKER_CONFIG_JSON_TYPE, DOCKER_CONFIG_JSON_KEY, b""),
        ] {
            assert!(from_secret(&s, "x").unwrap().is_none(), "{s:?}");
        }
        let bad = from_secret(
            &secret(DOCKER_CONFIG_JSON_TYPE, DOCKER_CONFIG_JSON_KEY, b"{"),
            "secret ns/s",
        )
        .unwrap_err();
        assert_eq!(
            bad.to_string(),
            "secret ns/s: .dockerconfigjson is not a valid docker config"
        );
    }

    #[test]
    fn the_node_config_is_the_first_found_in_upstreams_order() {
        let dir = tempfile::tempdir().unwrap();
        let (root, home, slash) = (
            dir.path().join("root"),
            dir.path().join("home"),
            dir.path().join("slash"),
        );
        for d in [&root, &home, &slash] {
            std::fs::create_dir_all(d).unwrap();
        }
        let search = NodeCredentials {
            config_json_dirs: vec![root.clone(), home.join(".docker"), slash.join(".docker")],
            dockercfg_dirs: vec![root.clone(), home.clone(), slash.clone()],
        };
        assert!(search.read().0.is_none());
        std::fs::write(
            home.join(".dockercfg"),
            br#"{"h": {"auth": "bGVnYWN5OnA="}}"#,
        )
        .unwrap();
        let (found, _) = search.read();
        assert_eq!(found.unwrap().1["h"].username, "legacy");
        std::fs::create_dir_all(slash.join(".docker")).unwrap();
        std::fs::write(
            slash.join(".docker/config.json"),
            br#"{"auths": {"h": {"auth": "c2xhc2g6cA=="}}}"#,
        )
        .unwrap();
        assert_eq!(
            search.read().0.unwrap().1["h"].username,
            "slash",
            "any config.json beats a .dockercfg"
        );
        std::fs::write(root.join("config.json"), b"not json").unwrap();
        let (found, problems) = search.read();
        assert_eq!(
            found.unwrap().1["h"].username,
            "slash",
            "a broken file is skipped"
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("config.json"),
            "{}",
            problems[0]
        );
        std::fs::write(
            root.join("config.json"),
            br#"{"auths": {"h": {"username": "root", "password": "p"}}}"#,
        )
        .unwrap();
        let (found, _) = search.read();
        let (path, cfg) = found.unwrap();
        assert_eq!(
            (path, cfg["h"].username.as_str()),
            (root.join("config.json"), "root")
        );
    }
}
