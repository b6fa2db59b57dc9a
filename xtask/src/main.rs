//! `cargo xtask`: bpflet's chores. One module per subcommand; add a new chore by adding a
//! module, a variant to [`Command`] and an arm to the `match` in [`main`].

mod bench;
mod cluster_up;
mod ebpf;
mod image;
mod setup;
mod test;
mod up;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bpflet's chores", version)]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Install what a fresh Debian 12 machine lacks (idempotent: only what is missing).
    Setup,
    /// Build the BPF programs (nightly, bpfel-unknown-none) for the agent to embed.
    BuildEbpf(ebpf::Options),
    /// Build the Kubernetes test bed (tests/k8s: control plane, etcd, kubectl) into
    /// target/cluster/bin, unless it is up to date.
    BuildCluster,
    /// Build the upstream peer (the kubelet from tests/k8s; containerd 2, runc and crictl
    /// from tests/runtime) into target/peer/bin, unless it is up to date.
    BuildPeer,
    /// Build the agent's OCI image offline (the release binary and its shared libraries)
    /// into target/oci/bpflet.tar.
    Image(image::Options),
    /// Bring bpflet up with the static pods in examples/, kernel tracing beside it (or,
    /// with --cluster, the real Kubernetes control plane); Ctrl-C tears everything down.
    Up(up::Options),
    /// Run every check: setup, build-ebpf, fmt, clippy, unit tests, root integration tests.
    Test(test::Options),
    /// Run benchmarks (all of them when no name is given).
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Chore::Setup => setup::run(),
        Chore::BuildEbpf(opts) => ebpf::run(&opts).map(drop),
        Chore::BuildCluster => cluster_up::build(),
        Chore::BuildPeer => build_peer(),
        Chore::Image(opts) => image::run(&opts),
        Chore::Up(opts) => up::run(&opts),
        Chore::Test(opts) => test::run(&opts),
        Chore::Bench(opts) => bench::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line; no backtrace: the chain already names the step and
            // the command that failed.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask build-peer`.
fn build_peer() -> Result<()> {
    if xtask::peer::build()?.is_none() {
        println!(
            "[peer] {} is up to date (kubelet {}, containerd {}, runc {}, crictl {})",
            xtask::peer::bin_dir().display(),
            xtask::cluster::KUBERNETES_VERSION,
            xtask::peer::CONTAINERD_VERSION,
            xtask::peer::RUNC_VERSION,
            xtask::peer::CRI_TOOLS_VERSION
        );
    }
    Ok(())
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` like `agent/build.rs` does.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `cargo` through the rustup proxy (so `+nightly` works), run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub use xtask::describe;

/// Runs `cmd` with inherited stdio; fails, naming the command, unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails, naming the command and quoting its stderr,
/// unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{line}` failed: {}: {}", out.status, stderr.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_env_and_quotes_odd_arguments() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args(["install", "bpf-linker", "it's here", ""]);
        assert_eq!(
            describe(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker 'it'\''s here' ''"
        );
    }

    #[test]
    fn failing_command_is_named() {
        let err = run(Command::new("false").arg("--flag")).unwrap_err();
        assert!(err.to_string().contains("`false --flag` failed"), "{err}");
        let err = output(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(err.to_string().contains("`/nonexistent/tool`"), "{err}");
    }
}
