//! The `bpflet` binary: parse and validate the command line and configuration, set up
//! logging and signals, and hand over to the library.

use std::process::ExitCode;

use bpflet::config::{self, AgentArgs, LogFormat};
use bpflet::observe::{self, ObserveArgs};
use bpflet::trace::{self, TraceArgs};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// A kubelet-class node agent that runs pods over CRI and watches them with eBPF.
///
/// Without a subcommand, runs the agent (kubelet-named flags); `bpflet trace` streams
/// kernel events; `bpflet observe` watches the pods of another kubelet, read-only.
#[derive(Debug, Parser)]
#[command(
    name = "bpflet",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream kernel events (exits, OOM kills, memory pressure, cgroup changes) with pod
    /// attribution.
    Trace(TraceCommand),
    /// Beside any kubelet, run no pods: attribute OOM kills and memory pressure to the
    /// runtime's containers (read-only CRI) and serve them as Prometheus metrics, the gRPC
    /// event stream and (with a kubeconfig) Kubernetes Events.
    Observe(ObserveCommand),
}

#[derive(Debug, clap::Args)]
struct ObserveCommand {
    #[command(flatten)]
    args: ObserveArgs,
    /// Log verbosity on stderr: 0 warnings, 1 info, 2 debug, 3+ trace.
    #[arg(short = 'v', long = "v", default_value_t = 1, value_name = "LEVEL")]
    verbosity: u8,
    /// Log format on stderr.
    #[arg(long = "log-format", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
struct TraceCommand {
    #[command(flatten)]
    args: TraceArgs,
    /// Log verbosity on stderr: 0 warnings, 1 info, 2 debug, 3+ trace.
    #[arg(short = 'v', long = "v", default_value_t = 1, value_name = "LEVEL")]
    verbosity: u8,
    /// Log format on stderr (the events themselves go to stdout).
    #[arg(long = "log-format", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// EX_USAGE: bad flags, a bad config field.
const EXIT_USAGE: u8 = 64;

fn init_logging(verbosity: u8, format: LogFormat) {
    // Verbosity raises bpflet's own level; libraries (h2, tower, ...) stay at warn/info.
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "info,bpflet=debug",
        _ => "info,bpflet=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BPFLET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM.
fn cancel_on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        cancel.cancel();
    });
    Ok(())
}

fn cause_suffix(e: &dyn std::error::Error) -> String {
    let chain = bpflet::error::error_chain(e);
    if chain.is_empty() {
        String::new()
    } else {
        format!(": {chain}")
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Configuration before side effects: everything is parsed and validated first.
    let (verbosity, format, agent_config) = match &cli.command {
        Some(Command::Trace(t)) => (t.verbosity, t.log_format, None),
        Some(Command::Observe(o)) => (o.verbosity, o.log_format, None),
        None => match config::load(&cli.agent) {
            Ok(c) => (c.verbosity.max(1), c.log_format, Some(c)),
            Err(e) => {
                eprintln!("bpflet: invalid configuration: {e}{}", cause_suffix(&e));
                return ExitCode::from(config::exit_code());
            }
        },
    };
    init_logging(verbosity, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpflet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        if let Err(e) = cancel_on_signals(cancel.clone()) {
            eprintln!("bpflet: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        match (cli.command, agent_config) {
            (Some(Command::Trace(TraceCommand { args, .. })), _) => {
                match trace::run(args, cancel).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bpflet trace: {e}{}", cause_suffix(&e));
                        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                    }
                }
            }
            (Some(Command::Observe(ObserveCommand { args, .. })), _) => {
                match observe::run(args, cancel).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bpflet observe: {e}{}", cause_suffix(&e));
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            (None, Some(config)) => match bpflet::agent::run(config, cancel).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpflet: {e}{}", cause_suffix(&e));
                    ExitCode::FAILURE
                }
            },
            (None, None) => unreachable!("agent mode always loads its configuration"),
        }
    })
}
