//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.
//!
//! setup, build-ebpf, fmt, clippy (host crates, the tests crate, the BPF crate), unit tests,
//! and the root integration tests in `tests/`. Cargo's own output, including the test
//! summaries, goes straight through.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ebpf, is_root, run as run_cmd, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,
    /// Stop after the unit tests: the root integration tests are NOT run.
    #[arg(long)]
    pub unit: bool,
    /// Extra arguments for the test binaries, after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

enum Action {
    Setup,
    BuildEbpf,
    Cargo(Command),
}

struct Step {
    name: String,
    action: Action,
}

pub fn run(opts: &Options) -> Result<()> {
    // Fail before spending minutes on builds: the root tests must run, never be skipped.
    if !opts.unit && !is_root() {
        bail!(
            "the integration tests in tests/ need root and this is not root: run \
             `cargo xtask test` as root (or `cargo xtask test --unit`, which does NOT run them)"
        );
    }

    let steps = plan(opts);
    let total = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        println!("\n==> [{}/{total}] {}", i + 1, step.name);
        let result = match step.action {
            Action::Setup => setup::run(),
            Action::BuildEbpf => ebpf::run(&ebpf::Options { debug: false }).map(drop),
            Action::Cargo(mut cmd) => run_cmd(&mut cmd),
        };
        result.with_context(|| format!("step {}/{total} ({}) failed", i + 1, step.name))?;
    }

    println!("\n==> all {total} steps passed");
    if opts.unit {
        println!("==> NOTE: --unit: the root integration tests (tests/) were NOT run");
    }
    Ok(())
}

fn plan(opts: &Options) -> Vec<Step> {
    let mut steps = Vec::new();
    if !opts.no_setup {
        steps.push(Step {
            name: "cargo xtask setup".into(),
            action: Action::Setup,
        });
    }
    steps.push(Step {
        name: "cargo xtask build-ebpf".into(),
        action: Action::BuildEbpf,
    });

    let mut cargo_step = |args: &[&str], test_args: Option<&[String]>| {
        let mut cmd = cargo();
        cmd.args(args);
        if let Some(extra) = test_args {
            if !args.contains(&"--") {
                cmd.arg("--");
            }
            cmd.args(extra);
        }
        let name = crate::describe(&cmd);
        steps.push(Step {
            name,
            action: Action::Cargo(cmd),
        });
    };

    cargo_step(&["fmt", "--all", "--check"], None);
    // Default members: the host crates.
    cargo_step(&["clippy", "--all-targets", "--", "-D", "warnings"], None);
    cargo_step(
        &[
            "clippy",
            "-p",
            "bpflet-tests",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        None,
    );
    cargo_step(
        &[
            "+nightly",
            "clippy",
            "-p",
            "bpflet-ebpf",
            "--target",
            ebpf::TARGET,
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
        None,
    );
    let extra = (!opts.test_args.is_empty()).then_some(opts.test_args.as_slice());
    cargo_step(&["test"], extra);
    if !opts.unit {
        cargo_step(
            &["test", "-p", "bpflet-tests", "--", "--test-threads=1"],
            Some(&opts.test_args),
        );
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(opts: &Options) -> Vec<String> {
        plan(opts).into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn full_plan_ends_with_root_tests() {
        let opts = Options {
            no_setup: false,
            unit: false,
            test_args: vec!["oom".into()],
        };
        let names = names(&opts);
        assert_eq!(names[0], "cargo xtask setup");
        assert_eq!(names[1], "cargo xtask build-ebpf");
        assert_eq!(names[names.len() - 2], "cargo test -- oom");
        assert_eq!(
            names[names.len() - 1],
            "cargo test -p bpflet-tests -- --test-threads=1 oom"
        );
    }

    #[test]
    fn unit_plan_has_no_root_tests_and_no_setup_skips_setup() {
        let opts = Options {
            no_setup: true,
            unit: true,
            test_args: Vec::new(),
        };
        let names = names(&opts);
        assert_eq!(names[0], "cargo xtask build-ebpf");
        assert_eq!(names.last().map(String::as_str), Some("cargo test"));
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("cargo test -p bpflet-tests")),
            "{names:?}"
        );
    }
}
