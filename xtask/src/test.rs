//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.
//!
//! setup, build-ebpf, fmt, clippy (host crates, the tests crate, the BPF crate), unit tests,
//! and the root integration tests in `tests/`, once per containerd: Debian's 1.6, then
//! containerd 2 (`target/peer/bin`, built by setup), each run's banner and failure naming
//! its runtime; `--containerd` picks one. Cargo's own output, including the test summaries,
//! goes straight through.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use xtask::peer;

use crate::{cargo, ebpf, is_root, run as run_cmd, setup};

/// The variable the tests' node harness reads to pick its containerd
/// (`bpflet_tests::node::default_containerd`).
const CONTAINERD_ENV: &str = "BPFLET_TEST_CONTAINERD";

/// Which containerd the root integration tests run on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// Debian's containerd 1.6 (and runc 1.1).
    #[value(name = "1.6")]
    Debian,
    /// containerd 2 and runc from `target/peer/bin` (`cargo xtask build-peer`).
    #[value(name = "2")]
    Two,
    /// 1.6, then 2.
    Both,
}

impl Containerd {
    /// The runtimes in the order the tests run on them, as `BPFLET_TEST_CONTAINERD`
    /// values.
    fn versions(self) -> &'static [&'static str] {
        match self {
            Containerd::Debian => &["1.6"],
            Containerd::Two => &["2"],
            Containerd::Both => &["1.6", "2"],
        }
    }
}

#[derive(clap::Args)]
pub struct Options {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,
    /// Stop after the unit tests: the root integration tests are NOT run.
    #[arg(long)]
    pub unit: bool,
    /// The containerd the root integration tests run on: `1.6` (Debian's), `2` (built by
    /// `cargo xtask build-peer`) or `both`, one after the other.
    #[arg(long, value_enum, default_value = "both")]
    pub containerd: Containerd,
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

    let versions = if opts.unit {
        &[][..]
    } else {
        opts.containerd.versions()
    };
    // Without setup nothing builds containerd 2: fail now rather than after the 1.6 run.
    if opts.no_setup && versions.contains(&"2") && !peer::is_built()? {
        bail!(
            "the root tests on containerd 2 need the upstream peer, which is missing or not \
             from the current pins: run `cargo xtask build-peer` (or `cargo xtask test \
             --containerd 1.6`)"
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
    } else {
        println!(
            "==> the root integration tests passed on containerd {}",
            versions.join(" and ")
        );
        if opts.containerd != Containerd::Both {
            println!("==> NOTE: --containerd: they were NOT run on the other containerd");
        }
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
        for version in opts.containerd.versions() {
            let mut cmd = cargo();
            cmd.env(CONTAINERD_ENV, version)
                .args(["test", "-p", "bpflet-tests", "--", "--test-threads=1"])
                .args(&opts.test_args);
            steps.push(Step {
                name: format!(
                    "root integration tests on containerd {version}: {}",
                    crate::describe(&cmd)
                ),
                action: Action::Cargo(cmd),
            });
        }
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
    fn full_plan_ends_with_root_tests_on_both_runtimes_1_6_first() {
        let opts = Options {
            no_setup: false,
            unit: false,
            containerd: Containerd::Both,
            test_args: vec!["oom".into()],
        };
        let names = names(&opts);
        assert_eq!(names[0], "cargo xtask setup");
        assert_eq!(names[1], "cargo xtask build-ebpf");
        assert_eq!(names[names.len() - 3], "cargo test -- oom");
        assert_eq!(
            names[names.len() - 2],
            "root integration tests on containerd 1.6: \
             BPFLET_TEST_CONTAINERD=1.6 cargo test -p bpflet-tests -- --test-threads=1 oom"
        );
        assert_eq!(
            names[names.len() - 1],
            "root integration tests on containerd 2: \
             BPFLET_TEST_CONTAINERD=2 cargo test -p bpflet-tests -- --test-threads=1 oom"
        );
    }

    #[test]
    fn containerd_picks_one_runtime() {
        for (choice, version) in [(Containerd::Debian, "1.6"), (Containerd::Two, "2")] {
            let opts = Options {
                no_setup: true,
                unit: false,
                containerd: choice,
                test_args: Vec::new(),
            };
            let roots: Vec<String> = names(&opts)
                .into_iter()
                .filter(|n| n.starts_with("root integration tests"))
                .collect();
            assert_eq!(
                roots,
                [format!(
                    "root integration tests on containerd {version}: \
                     BPFLET_TEST_CONTAINERD={version} cargo test -p bpflet-tests -- --test-threads=1"
                )]
            );
        }
    }

    #[test]
    fn containerd_option_parses_the_three_choices_and_defaults_to_both() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            opts: Options,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
                .map(|c| c.opts.containerd)
        };
        assert_eq!(parse(&[]).unwrap(), Containerd::Both);
        assert_eq!(parse(&["--containerd", "1.6"]).unwrap(), Containerd::Debian);
        assert_eq!(parse(&["--containerd", "2"]).unwrap(), Containerd::Two);
        assert_eq!(parse(&["--containerd", "both"]).unwrap(), Containerd::Both);
        assert!(parse(&["--containerd", "1.7"]).is_err());
    }

    #[test]
    fn unit_plan_has_no_root_tests_and_no_setup_skips_setup() {
        let opts = Options {
            no_setup: true,
            unit: true,
            containerd: Containerd::Both,
            test_args: Vec::new(),
        };
        let names = names(&opts);
        assert_eq!(names[0], "cargo xtask build-ebpf");
        assert_eq!(names.last().map(String::as_str), Some("cargo test"));
        assert!(
            !names.iter().any(|n| n.contains("test -p bpflet-tests")),
            "{names:?}"
        );
    }
}
