//! The `bpflet` binary: parse the command line, set up logging and signals, and hand over
//! to the library.

use std::process::ExitCode;

use bpflet::trace::{self, TraceArgs};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// A kubelet-class node agent that runs pods over CRI and watches them with eBPF.
#[derive(Debug, Parser)]
#[command(name = "bpflet", version, about)]
struct Cli {
    /// Log verbosity: 0 warnings, 1 info, 2 debug, 3+ trace.
    #[arg(
        short = 'v',
        long = "v",
        global = true,
        default_value_t = 1,
        value_name = "LEVEL"
    )]
    verbosity: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream kernel events (exits, OOM kills, memory pressure, cgroup changes) with pod
    /// attribution.
    Trace(TraceArgs),
}

/// EX_USAGE: bad flags, a bad config field.
const EXIT_USAGE: u8 = 64;

fn init_logging(verbosity: u8, format: LogFormat) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
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
    init_logging(cli.verbosity, cli.log_format);
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
        match cli.command {
            Command::Trace(args) => match trace::run(args, cancel).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpflet trace: {e}{}", cause_suffix(&e));
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            },
        }
    })
}

fn cause_suffix(e: &dyn std::error::Error) -> String {
    let chain = bpflet::bpf::error_chain(e);
    if chain.is_empty() {
        String::new()
    } else {
        format!(": {chain}")
    }
}
