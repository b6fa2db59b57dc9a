//! The test registry: `xtask::registry`'s (Debian's `docker-registry` with TLS and htpasswd
//! auth on `127.0.0.1:<free port>`, the recipe `cargo xtask up` runs too), under a node's
//! directory and trusted by its containerd, with calls that panic with context as tests
//! do. Dereferences to the xtask registry (`host`, `ca`, `log()`, `docker_config()`).
//! Stopped on drop.

use std::ops::Deref;
use std::path::Path;

use crate::node::{Node, free_port};

pub use xtask::registry::{PASSWORD, USER};

/// A running registry.
pub struct Registry(xtask::registry::Registry);

impl Deref for Registry {
    type Target = xtask::registry::Registry;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Registry {
    /// Starts a registry with its files under `dir` (created) on a free port; returns once
    /// it accepts connections.
    #[must_use]
    pub fn start(dir: &Path) -> Self {
        Self(
            xtask::registry::Registry::start(dir, free_port())
                .unwrap_or_else(|e| panic!("starting the test registry: {e:#}")),
        )
    }

    /// A registry for `node`: under the node's directory, trusted by its containerd.
    #[must_use]
    pub fn for_node(node: &Node) -> Self {
        let registry = Self::start(&node.dir.path().join("registry"));
        registry.trust(&node.ctd.registry_config_dir);
        registry
    }

    /// Copies image `name` of the OCI archive `archive` to `<host>/<repo_tag>`; returns
    /// the full name.
    pub fn push(&self, archive: &Path, name: &str, repo_tag: &str) -> String {
        self.0
            .push(archive, name, repo_tag)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Makes the containerd whose registry `config_path` is `certs_d` trust this registry.
    pub fn trust(&self, certs_d: &Path) {
        self.0.trust(certs_d).unwrap_or_else(|e| panic!("{e:#}"));
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
