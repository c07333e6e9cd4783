//! The `quic-peer` command: parses the command line and hands each
//! subcommand to the module that runs it.
//!
//! - `args`: the clap structs, and the node flags turned into a `NodeConfig`.
//! - `run`: no subcommand, a node running until `exit` or a signal, printing
//!   its peers' comings and goings; `interactive` holds the commands it reads
//!   on standard input.
//! - `client`: `put` and `get` through a short-lived client node.
//! - `identity`: `id` and `keygen`.
//! - `demo` and `bench`: a network on loopback shown working, and measured.
//! - `display`: the lines the user reads, progress and transfer reports.

mod args;
mod bench;
mod client;
mod demo;
mod display;
mod identity;
mod interactive;
mod run;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Standard input is read on a blocking thread that never returns by itself:
    // do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause said once: many errors
/// already end with their cause's text (`cannot write X: No such file…`).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,quic_peer=info"));
    // Colours only on a terminal: a log file gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Id) => identity::print_id(&cli.node),
        Some(Command::Keygen { file, force }) => identity::keygen(&file, force),
        Some(Command::Demo { nodes, stay }) => demo::demo(nodes, stay).await,
        Some(Command::Bench { size_mib }) => bench::run(size_mib).await,
        Some(Command::BenchBareServer) => bench::bare_server().await,
        Some(Command::BenchBare { size_mib }) => bench::bare_only(size_mib).await,
        Some(Command::Put {
            path,
            replicas,
            chunk_size,
            public,
            convergent,
            pad,
        }) => {
            let how = client::PutHow {
                replicas,
                chunk_size,
                public,
                convergent,
                pad,
            };
            client::put(&cli.node, &path, &how).await
        }
        Some(Command::Get {
            target,
            key,
            out,
            retry_for,
            max_in_flight,
            force,
        }) => {
            let target = client::with_key(target, key)?;
            client::get(&cli.node, &target, &out, retry_for, max_in_flight, force).await
        }
        None => run::run_node(&cli.node, &cli.http).await,
    }
}
