//! `cargo xtask image`: the agent's OCI image, offline (`xtask::images::build_bpflet`):
//! builds the release `bpflet` (the BPF object embedded, so `cargo xtask build-ebpf` first)
//! and writes `target/oci/bpflet.tar`, for `ctr -n k8s.io images import` on a node.

use std::path::PathBuf;

use anyhow::Result;

use crate::{cargo, run as run_cmd, target_dir};

#[derive(clap::Args)]
pub struct Options {
    /// Put this `bpflet` binary in the image instead of building the release one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

pub fn run(opts: &Options) -> Result<()> {
    let binary = match &opts.binary {
        Some(binary) => binary.clone(),
        None => {
            run_cmd(cargo().args(["build", "--release", "-p", "bpflet", "--bin", "bpflet"]))?;
            target_dir().join("release/bpflet")
        }
    };
    let archive = xtask::images::build_bpflet(&binary, &target_dir().join("oci"))?;
    for image in &archive.images {
        println!(
            "{}: {} (config {}, from {})",
            archive.path.display(),
            image.name,
            image.id,
            binary.display()
        );
    }
    println!(
        "import it on a node with: ctr -n k8s.io images import {}",
        archive.path.display()
    );
    Ok(())
}
