//! The upstream peer bpflet is measured against: the kubelet, containerd 2.x with its CRI
//! plugin, runc and crictl, built from their Go modules and run beside bpflet on the same
//! machine. Go is test infrastructure here, as for the control plane (`cluster.rs`).
//!
//! - The kubelet is one more `tool` of `tests/k8s` (the same `k8s.io/kubernetes` release as
//!   the control plane).
//! - containerd, its runc shim, `ctr`, runc and crictl are `tool`s of their own module,
//!   `tests/runtime`: containerd 2's dependency graph (newer `k8s.io/*` staging releases,
//!   otel, grpc) would otherwise move the control plane's pins.
//!
//! [`build`] puts them all in [`bin_dir`] (`target/peer/bin`). Each `go build` of [`BUILDS`]
//! has its own stamp (a hash of its module's go.mod and go.sum, its flags and `go version`),
//! so a change to one module relinks only its binaries. The Go caches are Go's defaults
//! under `$HOME`, shared with the control plane's build.
//!
//! [`Kubelet`] runs the upstream kubelet in standalone mode (static pods, no API server) on
//! a private containerd 2 (`containerd::Binaries::Containerd2`); see its docs for what it
//! changes on the machine and what it keeps away from.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use sha2::Digest as _;

mod kubelet;

pub use kubelet::{ClusterAccess, KERNEL_TUNABLES, Kubelet, KubeletSpec};

/// The containerd release `tests/runtime/go.mod` pins.
pub const CONTAINERD_VERSION: &str = "v2.2.10";
/// The runc release `tests/runtime/go.mod` pins.
pub const RUNC_VERSION: &str = "v1.4.4";
/// The cri-tools (crictl) release `tests/runtime/go.mod` pins.
pub const CRI_TOOLS_VERSION: &str = "v1.34.0";

/// Which Go module a build runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// `tests/k8s`: the Kubernetes release of the control plane.
    K8s,
    /// `tests/runtime`: containerd 2, runc, crictl.
    Runtime,
}

impl Module {
    /// The module's directory.
    pub fn dir(self) -> PathBuf {
        let tests = crate::cluster::go_module_dir()
            .parent()
            .expect("tests/k8s has a parent")
            .to_owned();
        match self {
            Module::K8s => tests.join("k8s"),
            Module::Runtime => tests.join("runtime"),
        }
    }
}

/// One `go build`: its module, the binaries (file name, Go package), cgo, tags and version
/// stamps (`-X` assignments).
#[derive(Clone, Copy, Debug)]
pub struct GoBuild {
    /// Names the stamp file (`<name>.stamp`).
    pub name: &'static str,
    pub module: Module,
    pub programs: &'static [(&'static str, &'static str)],
    /// runc needs cgo (its `nsenter` is C) and links libseccomp from Debian.
    pub cgo: bool,
    pub tags: &'static [&'static str],
    /// `-X` assignments besides the Kubernetes version stamps the kubelet gets.
    pub version_vars: &'static [(&'static str, &'static str)],
}

const CONTAINERD_VERSION_VARS: &[(&str, &str)] = &[
    (
        "github.com/containerd/containerd/v2/version.Version",
        CONTAINERD_VERSION,
    ),
    (
        "github.com/containerd/containerd/v2/version.Package",
        "github.com/containerd/containerd/v2",
    ),
];

/// Every build, in the order [`build`] runs them.
pub const BUILDS: [GoBuild; 4] = [
    GoBuild {
        name: "kubelet",
        module: Module::K8s,
        programs: &[("kubelet", "k8s.io/kubernetes/cmd/kubelet")],
        cgo: false,
        tags: &[],
        version_vars: &[],
    },
    GoBuild {
        name: "containerd",
        module: Module::Runtime,
        programs: &[
            (
                "containerd",
                "github.com/containerd/containerd/v2/cmd/containerd",
            ),
            ("ctr", "github.com/containerd/containerd/v2/cmd/ctr"),
            ("crictl", "sigs.k8s.io/cri-tools/cmd/crictl"),
        ],
        // Without cgo containerd leaves out only the btrfs snapshotter (unused here).
        cgo: false,
        tags: &["urfave_cli_no_docs"],
        version_vars: &[
            (
                "github.com/containerd/containerd/v2/version.Version",
                CONTAINERD_VERSION,
            ),
            (
                "github.com/containerd/containerd/v2/version.Package",
                "github.com/containerd/containerd/v2",
            ),
            (
                "sigs.k8s.io/cri-tools/pkg/version.Version",
                CRI_TOOLS_VERSION,
            ),
        ],
    },
    GoBuild {
        name: "shim",
        module: Module::Runtime,
        programs: &[(
            "containerd-shim-runc-v2",
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        )],
        cgo: false,
        // As containerd's Makefile builds the shim: without the gRPC server (ttrpc only).
        tags: &["urfave_cli_no_docs", "no_grpc"],
        version_vars: CONTAINERD_VERSION_VARS,
    },
    GoBuild {
        name: "runc",
        module: Module::Runtime,
        programs: &[("runc", "github.com/opencontainers/runc")],
        cgo: true,
        // As runc's Makefile: seccomp through libseccomp (Debian's libseccomp-dev).
        // runc embeds its version from its VERSION file.
        tags: &["seccomp", "urfave_cli_no_docs"],
        version_vars: &[],
    },
];

/// Every binary [`build`] makes.
pub fn programs() -> impl Iterator<Item = &'static str> {
    BUILDS
        .iter()
        .flat_map(|b| b.programs.iter().map(|(name, _)| *name))
}

fn say(line: &str) {
    println!("[peer] {line}");
}

/// `target/peer` (honouring `CARGO_TARGET_DIR`).
pub fn default_work_dir() -> PathBuf {
    crate::cluster::default_work_dir()
        .parent()
        .expect("target/cluster has a parent")
        .join("peer")
}

/// `target/peer/bin`: where [`build`] puts the binaries.
pub fn bin_dir() -> PathBuf {
    default_work_dir().join("bin")
}

/// `go build`'s compile jobs: `BPFLET_GO_JOBS` (a shared machine may want 1), else 2, the
/// machines' cores. Not part of the stamp: it does not change the binaries.
fn jobs() -> u32 {
    std::env::var("BPFLET_GO_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

impl GoBuild {
    /// The environment and arguments of this build's `go build` into `out` (everything
    /// the stamp covers; the job count is added by [`Self::command`]).
    fn env_and_args(&self, out: &Path) -> (Vec<(&'static str, String)>, Vec<String>) {
        let env = vec![
            ("CGO_ENABLED", if self.cgo { "1" } else { "0" }.to_owned()),
            ("GOTOOLCHAIN", "local".to_owned()),
            ("GOFLAGS", "-mod=readonly -buildvcs=false".to_owned()),
        ];
        let mut ldflags = match self.module {
            // The kubelet reports the release, as the control plane does.
            Module::K8s => crate::cluster::ldflags(),
            Module::Runtime => "-s -w".to_owned(),
        };
        for (var, value) in self.version_vars {
            let _ = write!(ldflags, " -X {var}={value}");
        }
        let mut args = vec!["build".to_owned(), "-trimpath".to_owned()];
        if !self.tags.is_empty() {
            args.push("-tags".to_owned());
            args.push(self.tags.join(","));
        }
        args.extend(["-ldflags".to_owned(), ldflags, "-o".to_owned()]);
        // A trailing slash: a directory, also for several main packages.
        args.push(format!("{}/", out.display()));
        args.extend(self.programs.iter().map(|(_, pkg)| (*pkg).to_owned()));
        (env, args)
    }

    fn command(&self, out: &Path) -> Command {
        let (env, args) = self.env_and_args(out);
        let mut cmd = Command::new("go");
        cmd.current_dir(self.module.dir())
            .envs(env)
            .arg(&args[0])
            .arg(format!("-p={}", jobs()))
            .args(&args[1..])
            .stdin(Stdio::null());
        cmd
    }

    fn stamp_file(&self, out: &Path) -> PathBuf {
        out.join(format!("{}.stamp", self.name))
    }

    /// What this build's stamp should be now.
    fn wanted_stamp(&self, out: &Path, go_version: &str) -> Result<String> {
        let dir = self.module.dir();
        let mut pinned = vec![];
        for name in ["go.mod", "go.sum"] {
            let path = dir.join(name);
            pinned.push((
                name,
                fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            ));
        }
        let (env, args) = self.env_and_args(out);
        Ok(stamp_for(&pinned, go_version, &env, &args))
    }

    fn is_built(&self, out: &Path, go_version: &str) -> Result<bool> {
        let stamp = fs::read_to_string(self.stamp_file(out)).unwrap_or_default();
        Ok(stamp.trim() == self.wanted_stamp(out, go_version)?
            && self
                .programs
                .iter()
                .all(|(name, _)| out.join(name).is_file()))
    }
}

/// A hash of what a build's binaries depend on.
fn stamp_for(
    pinned: &[(&str, Vec<u8>)],
    go_version: &str,
    env: &[(&str, String)],
    args: &[String],
) -> String {
    let mut hash = sha2::Sha256::new();
    for (name, content) in pinned {
        hash.update(name.as_bytes());
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(content);
    }
    hash.update(go_version.as_bytes());
    for (k, v) in env {
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(v.as_bytes());
        hash.update([0]);
    }
    for arg in args {
        hash.update(arg.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// `go version`, or an error saying what the peer needs.
fn go_version() -> Result<String> {
    let version = crate::command_output(
        Command::new("go")
            .arg("version")
            .env("GOTOOLCHAIN", "local"),
    )
    .context(
        "the upstream peer (tests/k8s, tests/runtime) is built with Go 1.26 and its module \
             proxy; the polyglot machines ship Go in /usr/local/go/bin: is it on PATH?",
    )?;
    Ok(version.trim().to_owned())
}

/// True when every binary is in [`bin_dir`] and was built from the current pins.
pub fn is_built() -> Result<bool> {
    let out = bin_dir();
    let go = go_version()?;
    for b in &BUILDS {
        if !b.is_built(&out, &go)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds what is not up to date into [`bin_dir`]. Returns how long the builds took, or
/// `None` when nothing had to be built.
pub fn build() -> Result<Option<Duration>> {
    let out = bin_dir();
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let go = go_version()?;
    let started = Instant::now();
    let mut built = false;
    for b in &BUILDS {
        if b.is_built(&out, &go)? {
            continue;
        }
        // A build that stops half way leaves no stamp: the next call builds again.
        let _ = fs::remove_file(b.stamp_file(&out));
        let mut cmd = b.command(&out);
        let line = crate::describe(&cmd);
        say(&format!(
            "building {} in {}",
            b.name,
            b.module.dir().display()
        ));
        say(&line);
        let one = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        ensure!(
            status.success(),
            "`{line}` (in {}) failed: {status}",
            b.module.dir().display()
        );
        fs::write(
            b.stamp_file(&out),
            format!("{}\n", b.wanted_stamp(&out, &go)?),
        )
        .with_context(|| format!("writing {}", b.stamp_file(&out).display()))?;
        say(&format!(
            "built {} in {:.0}s",
            b.name,
            one.elapsed().as_secs_f64()
        ));
        built = true;
    }
    Ok(built.then(|| started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_mod(module: Module) -> String {
        fs::read_to_string(module.dir().join("go.mod")).unwrap()
    }

    fn requires(go_mod: &str, module: &str, version: &str) -> bool {
        go_mod
            .lines()
            .any(|l| l.trim().starts_with(&format!("{module} {version}")))
    }

    #[test]
    fn go_mods_pin_the_named_releases_and_list_every_program_as_a_tool() {
        let runtime = go_mod(Module::Runtime);
        assert!(requires(
            &runtime,
            "github.com/containerd/containerd/v2",
            CONTAINERD_VERSION
        ));
        assert!(requires(
            &runtime,
            "github.com/opencontainers/runc",
            RUNC_VERSION
        ));
        assert!(requires(
            &runtime,
            "sigs.k8s.io/cri-tools",
            CRI_TOOLS_VERSION
        ));
        assert!(runtime.lines().any(|l| l == "go 1.26.0"), "go directive");
        let k8s = go_mod(Module::K8s);
        for b in &BUILDS {
            let text = if b.module == Module::K8s {
                &k8s
            } else {
                &runtime
            };
            for (_, pkg) in b.programs {
                assert!(
                    text.lines().any(|l| l.trim() == *pkg),
                    "{pkg} is not a tool of {:?}",
                    b.module
                );
            }
        }
    }

    #[test]
    fn runtime_module_uses_one_kubernetes_staging_release() {
        let runtime = go_mod(Module::Runtime);
        let versions: std::collections::BTreeSet<&str> = runtime
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("k8s.io/")
                    && !l.starts_with("k8s.io/klog")
                    && !l.starts_with("k8s.io/utils")
                    && !l.starts_with("k8s.io/kube-openapi")
            })
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(versions.len(), 1, "{versions:?}");
    }

    #[test]
    fn builds_put_cgo_only_on_runc_and_stamp_versions() {
        for b in &BUILDS {
            assert_eq!(b.cgo, b.name == "runc", "{}", b.name);
        }
        let (env, args) = BUILDS[1].env_and_args(Path::new("/x/bin"));
        assert!(env.contains(&("CGO_ENABLED", "0".to_owned())));
        assert!(env.contains(&("GOTOOLCHAIN", "local".to_owned())));
        let ldflags = &args[args.iter().position(|a| a == "-ldflags").unwrap() + 1];
        assert!(ldflags.contains("version.Version=v2.2.10"), "{ldflags}");
        assert!(
            ldflags.contains("cri-tools/pkg/version.Version=v1.34.0"),
            "{ldflags}"
        );
        assert!(args.contains(&"/x/bin/".to_owned()));
        let (_, kubelet) = BUILDS[0].env_and_args(Path::new("/x/bin"));
        assert!(
            kubelet
                .iter()
                .any(|a| a.contains("component-base/version.gitVersion=v1.34.4"))
        );
        let (runc_env, runc) = BUILDS[3].env_and_args(Path::new("/x/bin"));
        assert!(runc_env.contains(&("CGO_ENABLED", "1".to_owned())));
        assert!(
            runc.windows(2)
                .any(|w| w == ["-tags", "seccomp,urfave_cli_no_docs"])
        );
        assert_eq!(
            programs().collect::<Vec<_>>(),
            [
                "kubelet",
                "containerd",
                "ctr",
                "crictl",
                "containerd-shim-runc-v2",
                "runc"
            ]
        );
    }

    #[test]
    fn stamp_changes_with_the_pins_go_the_environment_or_the_flags_but_not_the_jobs() {
        let (env, args) = BUILDS[3].env_and_args(Path::new("/x/bin"));
        let pins = |sum: &str| vec![("go.mod", b"module m".to_vec()), ("go.sum", sum.into())];
        let base = stamp_for(&pins("a"), "go1.26.8", &env, &args);
        assert_eq!(base, stamp_for(&pins("a"), "go1.26.8", &env, &args));
        assert_ne!(base, stamp_for(&pins("b"), "go1.26.8", &env, &args));
        assert_ne!(base, stamp_for(&pins("a"), "go1.26.9", &env, &args));
        assert_ne!(base, stamp_for(&pins("a"), "go1.26.8", &env[1..], &args));
        assert_ne!(base, stamp_for(&pins("a"), "go1.26.8", &env, &args[1..]));
        let cmd = BUILDS[3].command(Path::new("/x/bin"));
        assert!(
            cmd.get_args()
                .any(|a| a.to_string_lossy().starts_with("-p=")),
            "{cmd:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("-p=")));
    }
}
