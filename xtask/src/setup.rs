//! `cargo xtask setup`: installs what a fresh Debian 12 machine (root, package registries only)
//! lacks. Every item is checked first and installed only when missing, so a second run does
//! nothing. Prints one line per item: `ok`, `installed`, or the error.

use std::fs;
use std::io::ErrorKind;
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cargo, describe, output, run as run_cmd};

/// Debian packages the build, the tests and the benches need.
const DEBIAN_PACKAGES: &[&str] = &[
    // bpf-linker links against Debian's LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // The real container runtime the integration tests drive.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // runc built from source (the upstream peer, `xtask::peer`) links libseccomp.
    "libseccomp-dev",
    // k8s-cri and the agent's own API compile .proto files.
    "protobuf-compiler",
    // The image registry the image tests pull from (distribution v2 with TLS and htpasswd
    // auth), the client that pushes the offline images into it, and `htpasswd` (bcrypt).
    "docker-registry",
    "skopeo",
    "apache2-utils",
    // Inspection, load generation and benchmarking.
    "bpftool",
    "stress-ng",
    "hyperfine",
    "iproute2",
    "util-linux",
    "procps",
    // The deployment tests: `systemd-analyze verify` of deploy/bpflet.service, `capsh`
    // decoding the agent's capability sets, `objcopy` slimming the agent for its image.
    "systemd",
    "libcap2-bin",
    "binutils",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Pseudo file systems the agent and the tests need, as (fstype, mount point).
const MOUNTS: &[(&str, &str)] = &[("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")];

pub fn run() -> Result<()> {
    let mut report = Report::default();

    debian_packages(&mut report);

    report.item(
        "rustup toolchain stable",
        || has_toolchain("stable"),
        || install_toolchain("stable"),
    );
    report.item(
        "rustup toolchain nightly",
        || has_toolchain("nightly"),
        || install_toolchain("nightly"),
    );
    for (toolchain, component) in [
        ("nightly", "rust-src"),
        ("nightly", "clippy"),
        ("stable", "rustfmt"),
        ("stable", "clippy"),
    ] {
        report.item(
            &format!("rustup component {component} ({toolchain})"),
            || has_component(toolchain, component),
            || {
                run_cmd(Command::new("rustup").args([
                    "component",
                    "add",
                    component,
                    "--toolchain",
                    toolchain,
                ]))
            },
        );
    }

    report.item(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        has_bpf_linker,
        install_bpf_linker,
    );

    for &(fstype, target) in MOUNTS {
        report.item(
            &format!("mount {fstype} at {target}"),
            || is_mounted(fstype, target),
            || run_cmd(Command::new("mount").args(["-t", fstype, fstype, target])),
        );
    }

    // Last: the long ones on a fresh machine (the Go builds of the control plane and of
    // the upstream peer).
    report.item(
        &format!(
            "Kubernetes test bed {} (tests/k8s)",
            xtask::cluster::KUBERNETES_VERSION
        ),
        xtask::cluster::is_built,
        || xtask::cluster::build().map(drop),
    );
    report.item(
        &format!(
            "upstream peer: kubelet, containerd {}",
            xtask::peer::CONTAINERD_VERSION
        ),
        xtask::peer::is_built,
        || xtask::peer::build().map(drop),
    );

    report.finish()
}

/// Tallies the items and prints one line for each.
#[derive(Default)]
struct Report {
    installed: usize,
    failed: usize,
}

impl Report {
    /// Checks one item and, when `check` says it is missing, installs it and checks again.
    fn item(
        &mut self,
        name: &str,
        check: impl Fn() -> Result<bool>,
        install: impl FnOnce() -> Result<()>,
    ) {
        let outcome = match check() {
            Ok(true) => Ok(false),
            Ok(false) => install().and_then(|()| match check() {
                Ok(true) => Ok(true),
                Ok(false) => Err(anyhow!(
                    "the install step succeeded but the item is still missing"
                )),
                Err(e) => Err(e),
            }),
            Err(e) => Err(e),
        };
        self.record(name, outcome);
    }

    /// Records `Ok(false)` as already present, `Ok(true)` as installed now.
    fn record(&mut self, name: &str, outcome: Result<bool>) {
        match outcome {
            Ok(false) => println!("{name:<44} ok"),
            Ok(true) => {
                self.installed += 1;
                println!("{name:<44} installed");
            }
            Err(e) => {
                self.failed += 1;
                println!("{name:<44} FAILED: {e:#}");
            }
        }
    }

    fn finish(self) -> Result<()> {
        if self.failed > 0 {
            bail!("setup: {} item(s) failed (see above)", self.failed);
        }
        if self.installed == 0 {
            println!("setup: nothing to do, everything was already in place");
        } else {
            println!("setup: installed {} item(s)", self.installed);
        }
        Ok(())
    }
}

/// Checks every package, then installs the missing ones in one `apt-get` run (after a single
/// `apt-get update`) and reports each package on its own line.
fn debian_packages(report: &mut Report) {
    let mut missing = Vec::new();
    let mut checked = Vec::new();
    for &package in DEBIAN_PACKAGES {
        let present = has_debian_package(package);
        if matches!(present, Ok(false)) {
            missing.push(package);
        }
        checked.push((package, present));
    }

    let install = if missing.is_empty() {
        Ok(())
    } else {
        apt_install(&missing)
    };
    let install_error = install.as_ref().err().map(|e| format!("{e:#}"));

    for (package, present) in checked {
        let name = format!("apt {package}");
        let outcome = match present {
            Ok(true) => Ok(false),
            Err(e) => Err(e),
            Ok(false) => match &install_error {
                Some(e) => Err(anyhow!("{e}")),
                None => match has_debian_package(package) {
                    Ok(true) => Ok(true),
                    Ok(false) => Err(anyhow!(
                        "apt-get succeeded but {package} is still not installed"
                    )),
                    Err(e) => Err(e),
                },
            },
        };
        report.record(&name, outcome);
    }
}

fn has_debian_package(package: &str) -> Result<bool> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Status}", package]);
    let line = describe(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    // dpkg-query exits 1 for a package it has never heard of: that is "not installed".
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// True when rustup has `name` for this host (`nightly-x86_64-...`, not a dated nightly).
pub fn has_toolchain(name: &str) -> Result<bool> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    Ok(list.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|tc| tc.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
    }))
}

fn install_toolchain(name: &str) -> Result<()> {
    run_cmd(Command::new("rustup").args(["toolchain", "install", name, "--profile", "minimal"]))
}

pub fn has_component(toolchain: &str, component: &str) -> Result<bool> {
    let list = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    // Host components carry the target triple (`clippy-x86_64-unknown-linux-gnu`); `rust-src`
    // does not.
    let with_triple = format!("{component}-");
    Ok(list
        .lines()
        .map(str::trim)
        .any(|c| c == component || c.starts_with(&with_triple)))
}

/// True when `bpf-linker --version` reports the version we pin (any 0.13.x).
pub fn has_bpf_linker() -> Result<bool> {
    let mut cmd = Command::new("bpf-linker");
    cmd.arg("--version");
    match cmd.output() {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("could not start `{}`", describe(&cmd))),
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            Ok(out.status.success() && bpf_linker_version_ok(&stdout))
        }
    }
}

fn bpf_linker_version_ok(version_output: &str) -> bool {
    let minor = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(minor, _patch)| minor);
    version_output
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix(minor))
        .is_some_and(|rest| rest.starts_with('.'))
}

fn install_bpf_linker() -> Result<()> {
    println!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)...");
    let mut cmd = cargo();
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--locked",
    ]);
    run_cmd(&mut cmd)?;
    if !has_bpf_linker()? {
        bail!(
            "`{}` succeeded but `bpf-linker --version` does not report {BPF_LINKER_VERSION}: \
             is $HOME/.cargo/bin on PATH?",
            describe(&cmd)
        );
    }
    Ok(())
}

fn is_mounted(fstype: &str, target: &str) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts_contain(&mounts, fstype, target))
}

fn mounts_contain(mounts: &str, fstype: &str, target: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(target) && fields.next() == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version_accepts_any_patch_of_the_pinned_minor() {
        assert!(bpf_linker_version_ok("bpf-linker 0.13.0\n"));
        assert!(bpf_linker_version_ok("bpf-linker 0.13.2"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.9.13"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.130.0"));
        assert!(!bpf_linker_version_ok("bpf-linker 0.14.0"));
        assert!(!bpf_linker_version_ok(""));
    }

    #[test]
    fn mounts_match_on_target_and_type() {
        let mounts = "\
proc /proc proc rw,nosuid 0 0
tracefs /sys/kernel/tracing tracefs rw,relatime 0 0
none /sys/fs/bpf tmpfs rw 0 0
";
        assert!(mounts_contain(mounts, "tracefs", "/sys/kernel/tracing"));
        assert!(!mounts_contain(mounts, "bpf", "/sys/fs/bpf"));
        assert!(!mounts_contain(
            mounts,
            "tracefs",
            "/sys/kernel/debug/tracing"
        ));
    }
}
