//! lsp-edge's entry point: parse the command line, log to stderr (stdio LSP owns
//! stdout), run the command.

use anyhow::Context as _;
use clap::Parser;
use lsp_edge::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The bridge stays quiet unless asked: its stderr often lands in an editor's log.
    let default_filter = match cli.command {
        Command::Connect(_) | Command::Complete(_) | Command::Eval(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();

    match cli.command {
        Command::Serve(args) => run(lsp_edge::cli::serve(args)),
        Command::Connect(args) => {
            run(async move { Ok(lsp_edge::cli::connect::run(&args.addr).await?) })
        }
        Command::Context(args) => lsp_edge::cli::context::run(args),
        Command::Complete(args) => run(lsp_edge::cli::complete::run(args)),
        Command::Eval(args) => run(lsp_edge::cli::eval::run(args)),
    }
}

/// Runs a command on a multi-threaded runtime.
fn run(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(command);
    // Tokio reads stdin on a blocking thread that no one can interrupt; waiting for it
    // at shutdown would hang `connect` and `serve --stdio` until the editor closed
    // our stdin. The command is done, so do not wait.
    runtime.shutdown_background();
    result
}
