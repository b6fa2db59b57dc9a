//! `cargo xtask up --cluster`: the real Kubernetes control plane on 127.0.0.1
//! ([`xtask::cluster`]), in the foreground until Ctrl-C.
//!
//! 1. setup (unless `--no-setup`), which builds the test bed; otherwise `build-cluster`;
//! 2. etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with a fresh CA,
//!    `admin.kubeconfig` and `node.kubeconfig` in the work directory (default
//!    `target/cluster/`), logs in its `logs/`;
//! 3. a banner saying how to drive it with kubectl from a second shell;
//! 4. metrics-server ([`xtask::cluster_metrics`]) registered as `v1beta1.metrics.k8s.io`,
//!    scraping the node's read-only port, so `kubectl top node` / `top pod` work;
//! 5. the node of `up` (private containerd, agent, trace) joined to it: the agent runs with
//!    `--kubeconfig node.kubeconfig`, registers its Node and mirrors its static pods.
//!
//! Ctrl-C, SIGTERM or SIGHUP (or the end of `--duration`, or `--check`'s smoke check) stops
//! the daemons in reverse order and fails if any process of the run is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
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

    // The smoke check first: it registers (and deletes) a Node of the node's name.
    let outcome = if opts.check { cp.smoke_check() } else { Ok(()) };
    // metrics-server, scraping the node's authenticated port with its client certificate
    // and checking the node's serving certificate against the cluster CA (`kubectl top`
    // works once the node runs).
    let outcome = outcome.and_then(|()| {
        let kubelet = xtask::cluster_metrics::KubeletPort::Secure(crate::up::PORT);
        let port = cp.start_metrics_server(kubelet, &|| signalled().is_some())?;
        say(&format!(
            "metrics-server on 127.0.0.1:{port} serves metrics.k8s.io: try kubectl top node"
        ));
        Ok(())
    });
    let outcome = outcome.and_then(|()| {
        if signalled().is_some() {
            return Ok(());
        }
        join_node(opts, &cp)
    });
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

/// The node (`up`'s private containerd, agent and trace) joined to `cp` as `cp.node_name`,
/// until a signal, `--duration` or `--check`'s verdict. With `--check`, the Node must also
/// have been Ready in the API server meanwhile.
fn join_node(opts: &Options, cp: &ControlPlane) -> Result<()> {
    let node_name = cp.node_name.clone();
    let mut args = vec![
        "--kubeconfig".to_owned(),
        cp.layout.node_kubeconfig.display().to_string(),
        "--hostname-override".to_owned(),
        node_name.clone(),
        "--node-ip".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    args.extend(cp.layout.node_tls_args());
    let mut node_opts = opts.clone();
    node_opts.cluster = false;
    node_opts.no_setup = true;
    node_opts.work_dir = opts.work_dir.as_ref().map(|dir| dir.join("node"));
    say(&format!(
        "the node joins as {node_name}: watch it with {} --kubeconfig {} get nodes,pods -A",
        cp.kubectl.display(),
        cp.layout.admin_kubeconfig.display()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = opts.check.then(|| {
        let mut kubectl = cp.kubectl(&cp.layout.admin_kubeconfig);
        kubectl.args([
            "get",
            "node",
            &node_name,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(out) = kubectl.output()
                    && out.status.success()
                    && out.stdout == b"True"
                {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            None
        })
    });
    let ran = crate::up::run_node(&node_opts, args);
    stop.store(true, Ordering::SeqCst);
    let ready = ready.map(|t| t.join().unwrap_or(None));
    ran?;
    match ready {
        Some(Some(after)) => {
            say(&format!(
                "the Node {node_name} was Ready in the API server ({:.1}s after the node began to \
                 start, its build included)",
                after.as_secs_f64()
            ));
            Ok(())
        }
        Some(None) => Err(anyhow!(
            "the Node {node_name} never showed Ready in the API server while the node ran"
        )),
        None => Ok(()),
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
        "Ctrl-C (or SIGTERM) stops every daemon of this run.".to_owned(),
    ];
    for line in lines {
        say(&line);
    }
}
