//! `cargo xtask up --cluster`: the real Kubernetes control plane on 127.0.0.1
//! ([`xtask::cluster`]), in the foreground until Ctrl-C.
//!
//! 1. setup (unless `--no-setup`), which builds the test bed; otherwise `build-cluster`;
//! 2. etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with a fresh CA,
//!    `admin.kubeconfig` and `node.kubeconfig` in the work directory (default
//!    `target/cluster/`), logs in its `logs/`;
//! 3. a banner saying how to drive it with kubectl from a second shell.
//!
//! bpflet does not join yet (the agent has no cluster mode): only the control plane runs.
//! Ctrl-C, SIGTERM or SIGHUP (or the end of `--duration`, or `--check`'s smoke check) stops
//! the daemons in reverse order and fails if any process of the run is left.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use xtask::cluster::{self, ControlPlane};

use crate::setup;
use crate::up::Options;

/// The last of SIGINT/SIGTERM/SIGHUP received, 0 for none.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int) {
    SIGNALLED.store(signo, Ordering::SeqCst);
}

fn signalled() -> Option<Signal> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

fn say(line: &str) {
    println!("[up] {line}");
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    // From here on a signal must lead to teardown.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }

    if opts.no_setup {
        build()?;
    } else {
        say("cargo xtask setup");
        setup::run().context("setup")?;
    }
    let mut config = cluster::Config::new(
        opts.work_dir
            .clone()
            .unwrap_or_else(cluster::default_work_dir),
    );
    if let Some(node) = &opts.node_name {
        config.node_name.clone_from(node);
    }
    say(&format!(
        "starting the control plane in {}",
        config.work_dir.display()
    ));
    let mut cp = ControlPlane::start(&config, &|| signalled().is_some())?;
    print_banner(&cp, started);

    let outcome = if opts.check {
        cp.smoke_check()
    } else {
        let until = opts
            .duration
            .map(|secs| Instant::now() + Duration::from_secs(secs));
        loop {
            if let Some(sig) = signalled() {
                say(&format!("{sig}: tearing down"));
                break Ok(());
            }
            if until.is_some_and(|t| Instant::now() >= t) {
                say("--duration is over: tearing down");
                break Ok(());
            }
            if let Err(e) = cp.check_running() {
                break Err(e);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let teardown = cp.stop();
    if teardown.is_ok() {
        say("teardown done: no process of this run is left");
    }
    match (outcome, teardown) {
        (Ok(()), Ok(())) => {
            if opts.check {
                say("--check passed");
            }
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(t)) => Err(t),
        (Err(e), Err(t)) => Err(anyhow!("{e:#}\nand the teardown failed too: {t:#}")),
    }
}

/// `cargo xtask build-cluster`: the binaries, rebuilt only when the pins change.
pub fn build() -> Result<()> {
    match cluster::build()? {
        Some(_) => {}
        None => println!(
            "[cluster] {} is up to date (Kubernetes {})",
            cluster::bin_dir().display(),
            cluster::KUBERNETES_VERSION
        ),
    }
    Ok(())
}

fn print_banner(cp: &ControlPlane, started: Instant) {
    let kubectl = cp.kubectl.display();
    let l = &cp.layout;
    let pids: Vec<String> = cp
        .pids()
        .iter()
        .map(|(name, pid)| format!("{name} {pid}"))
        .collect();
    let lines = [
        format!(
            "Kubernetes {} control plane is up ({:.1}s after `up` started) at {}",
            cluster::KUBERNETES_VERSION,
            started.elapsed().as_secs_f64(),
            cp.server
        ),
        format!("  pids:      {}", pids.join(", ")),
        format!(
            "  kubectl:   {kubectl} --kubeconfig {} get nodes",
            l.admin_kubeconfig.display()
        ),
        format!(
            "  as node:   {kubectl} --kubeconfig {} auth whoami   (system:node:{})",
            l.node_kubeconfig.display(),
            cp.node_name
        ),
        format!("  logs:      {}/*.log", l.logs.display()),
        "  bpflet does not join yet: the agent has no cluster mode.".to_owned(),
        "Ctrl-C (or SIGTERM) stops every daemon of this run.".to_owned(),
    ];
    for line in lines {
        say(&line);
    }
}
