//! `cargo xtask bench [NAME...]`: benchmarks against the real kernel and runtime.
//!
//! Each bench is a module with `pub fn run(ctx: &Ctx) -> anyhow::Result<()>`; register it in
//! [`ALL`] and in the `match` in [`dispatch`]. Benches print Markdown tables (see
//! [`util::Table`]) and save them with [`Ctx::save`]. Timing belongs here, never in tests.
//!
//! The agent and `bpflet trace` run with `--log-format json`; what a bench takes from their
//! logs it reads as records and fields through [`agent_log`], and what the agent serves
//! (`/pods`, `/events`, `/metrics`) it reads from there.

pub mod agent_log;
pub mod cluster;
pub mod peer;
pub mod pleg;
pub mod pods;
pub mod probes;
pub mod trace;
pub mod util;

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ebpf, run as run_cmd, target_dir, workspace_root};

/// Every bench, in the order `cargo xtask bench` without names runs them.
pub const ALL: &[&str] = &["trace", "pods", "pleg", "probes", "cluster"];

#[derive(clap::Args)]
pub struct Options {
    /// Benches to run (all when none is given).
    pub names: Vec<String>,
    /// List the benches and exit.
    #[arg(long)]
    pub list: bool,
}

/// What every bench gets.
pub struct Ctx {
    /// The workspace root.
    pub root: PathBuf,
    /// The release `bpflet` binary, freshly built.
    pub bpflet: PathBuf,
    /// Where [`Ctx::save`] writes results: `target/bench`.
    pub results_dir: PathBuf,
}

impl Ctx {
    /// Writes `report` (Markdown) to `target/bench/<name>.md` and returns the path.
    pub fn save(&self, name: &str, report: &str) -> Result<PathBuf> {
        fs::create_dir_all(&self.results_dir)
            .with_context(|| format!("creating {}", self.results_dir.display()))?;
        let path = self.results_dir.join(format!("{name}.md"));
        fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Writes `value` (pretty JSON) to `target/bench/<name>.json` and returns the path.
    pub fn save_json(&self, name: &str, value: &serde_json::Value) -> Result<PathBuf> {
        let text = serde_json::to_string_pretty(value).context("serializing the results")?;
        fs::create_dir_all(&self.results_dir)
            .with_context(|| format!("creating {}", self.results_dir.display()))?;
        let path = self.results_dir.join(format!("{name}.json"));
        fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

fn dispatch(name: &str, ctx: &Ctx) -> Result<()> {
    match name {
        "trace" => trace::run(ctx),
        "pods" => pods::run(ctx),
        "pleg" => pleg::run(ctx),
        "probes" => probes::run(ctx),
        "cluster" => cluster::run(ctx),
        other => bail!("unknown bench `{other}` (known: {})", ALL.join(", ")),
    }
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.list {
        for name in ALL {
            println!("{name}");
        }
        return Ok(());
    }
    let names: Vec<&str> = if opts.names.is_empty() {
        ALL.to_vec()
    } else {
        opts.names.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = names.iter().find(|n| !ALL.contains(n)) {
        bail!("unknown bench `{unknown}` (known: {})", ALL.join(", "));
    }

    // The agent embeds the release BPF object, so build that first.
    ebpf::run(&ebpf::Options { debug: false })?;
    run_cmd(cargo().args(["build", "--release", "-p", "bpflet"]))?;
    let target = target_dir();
    let ctx = Ctx {
        root: workspace_root().to_path_buf(),
        bpflet: target.join("release/bpflet"),
        results_dir: target.join("bench"),
    };
    if !ctx.bpflet.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            ctx.bpflet.display()
        );
    }

    println!(
        "bench: workspace {}, agent {}, results in {}",
        ctx.root.display(),
        ctx.bpflet.display(),
        ctx.results_dir.display()
    );
    let mut failed = Vec::new();
    for name in names {
        println!("\n==> bench {name}");
        if let Err(e) = dispatch(name, &ctx) {
            eprintln!("bench {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("bench(es) failed: {}", failed.join(", "));
    }
    Ok(())
}
