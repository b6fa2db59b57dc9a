//! `cargo xtask build-ebpf`: builds the BPF crate for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker (the linker is set in `.cargo/config.toml`).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{cargo, run as run_cmd, setup, target_dir};

pub const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "bpflet-ebpf";

#[derive(clap::Args)]
pub struct Options {
    /// Build the dev profile (debug assertions and overflow checks on) into
    /// `target/bpfel-unknown-none/debug`. Still optimised: at opt-level 0 bpf-linker rejects
    /// the code ("aggregate returns are not supported"). The agent embeds only the release
    /// object, and the verifier may refuse the extra panic paths.
    #[arg(long)]
    pub debug: bool,
}

/// Builds the BPF object and returns its path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    check_tools()?;
    let mut cmd = cargo();
    cmd.args([
        "+nightly",
        "build",
        "-p",
        PACKAGE,
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ]);
    if opts.debug {
        cmd.args(["--config", "profile.dev.opt-level=3"]);
        cmd.args(["--config", "profile.dev.package.\"*\".opt-level=3"]);
    } else {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;

    let profile = if opts.debug { "debug" } else { "release" };
    let object = target_dir().join(TARGET).join(profile).join(PACKAGE);
    if !object.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            object.display()
        );
    }
    println!("BPF object: {}", object.display());
    Ok(object)
}

/// Fails with a pointer to `cargo xtask setup` when the BPF toolchain is incomplete.
pub fn check_tools() -> Result<()> {
    let mut missing = Vec::new();
    if !setup::has_toolchain("nightly")? {
        missing.push("the nightly toolchain".to_owned());
    } else if !setup::has_component("nightly", "rust-src")? {
        missing.push("rust-src for nightly".to_owned());
    }
    if !setup::has_bpf_linker()? {
        missing.push(format!(
            "bpf-linker {} (on PATH)",
            setup::BPF_LINKER_VERSION
        ));
    }
    if !missing.is_empty() {
        bail!(
            "building BPF programs needs {}: run `cargo xtask setup`",
            missing.join(" and ")
        );
    }
    Ok(())
}
