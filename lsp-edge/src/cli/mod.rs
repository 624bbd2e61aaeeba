//! The command line, and the `serve` command's start-up (configuration, shared
//! state, listener, signals).

pub mod complete;
pub mod connect;
pub mod context;
pub mod eval;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use self::context::ContextArgs;
use crate::config::{Config, Overrides};
use crate::edge::Edge;

#[derive(Debug, Parser)]
#[command(
    name = "lsp-edge",
    version,
    about = "Cerebrum's language server for editors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve editors: over TCP (many sessions), or one over stdio with --stdio.
    Serve(ServeArgs),
    /// Bridge stdio to an lsp-edge listening on HOST:PORT (for stdio-only editors).
    Connect(ConnectArgs),
    /// Print the context the engine builds for a file and cursor.
    Context(ContextArgs),
    /// Stream a completion of a file (or stdin) to the terminal, for scripts.
    Complete(complete::CompleteArgs),
    /// Measure completion quality on fill-in-the-middle holes drawn from source
    /// trees, beside plain windows of text (needs a running vps-infer).
    Eval(eval::EvalArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "CEREBRUM_LSP_CONFIG")]
    pub config: Option<PathBuf>,
    /// TCP address to listen on (default 127.0.0.1:7001).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve one editor over stdin/stdout instead of TCP.
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,
    /// A backend: `URL` (a vps-infer; default http://127.0.0.1:9000) or `KIND=URL`
    /// with KIND one of vps-infer, llama-server, openai, ollama. Repeat it for
    /// several; they replace the configuration file's.
    #[arg(long = "backend", value_name = "[KIND=]URL")]
    pub backends: Vec<String>,
    /// Address of the HTTP endpoint for scripts (default 127.0.0.1:7000).
    #[arg(long)]
    pub http: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The lsp-edge to bridge to, e.g. 100.64.0.10:7001.
    pub addr: String,
}

/// `lsp-edge serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        backends: args.backends,
    };
    let mut config = Config::load(
        args.config.as_deref(),
        |name| std::env::var(name).ok(),
        &overrides,
    )
    .context("invalid configuration")?;
    if let Some(http) = args.http {
        config.http.listen = http;
    }
    if !args.stdio {
        config
            .validate_listener()
            .context("invalid configuration")?;
        config
            .http
            .validate_listener()
            .context("invalid configuration")?;
    }
    let listen = config.listen;
    let backend_url = config
        .backend_list()
        .iter()
        .map(|backend| {
            format!(
                "{}={}",
                backend.kind,
                crate::backend::redact_url(&backend.url)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let edge = Edge::new(config).context("cannot start lsp-edge")?;
    // A prompt has the windows of the model it is for (`[context.models]`): when
    // the configuration names none, that is the backend's default.
    edge.backends.learn_default_models();

    if args.stdio {
        tracing::info!(backend = %backend_url, "serving one editor over stdio");
        crate::lsp::serve_stdio(edge).await;
        return Ok(());
    }
    let listener = crate::lsp::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %local, backend = %backend_url, "lsp-edge listening");
    let http_listen = edge.config.http.listen;
    let http = crate::http::spawn(edge.clone())
        .await
        .with_context(|| format!("cannot serve HTTP on {http_listen}"))?;
    crate::lsp::serve_tcp(edge, listener, shutdown_signal()).await;
    tracing::info!("shutting down");
    http.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
