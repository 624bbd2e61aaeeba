//! vps-infer: Cerebrum's inference service. llama.cpp behind an HTTP/SSE API, one model
//! at a time, with KV-cache reuse so that a keystroke costs only the tokens it changed.
//!
//! It knows nothing of editors or LSP: prompts arrive already assembled by lsp-edge.

pub mod bench;
pub mod compat;
pub mod config;
pub mod engine;
pub mod error;
pub mod guard;
pub mod routes;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use routes::{app, AppState};

/// Open connections get this long to close after SIGTERM; then the engine is stopped
/// and the process exits whatever they do.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// A client gets this long to send a request's header (or, on an idle keep-alive
/// connection, to start the next request) before the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client gets this long to send a request's body, once its header is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the engine and serves HTTP until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let stats = Arc::new(stats::Stats::default());
    let guard = guard::ResourceGuard::start(config.guard);
    let engine = engine::Engine::start(&config, stats.clone(), guard.clone())?;
    let shutdown = CancellationToken::new();
    let state = AppState {
        engine: engine.clone(),
        stats,
        guard,
        api_key: config.api_key.as_deref().map(Arc::from),
        started: Instant::now(),
        shutdown: shutdown.clone(),
        max_body_bytes: config.max_body_bytes,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: every client on this loopback address is let in");
    }
    tracing::info!(
        listen = %config.listen,
        default_model = %config.default_model,
        models = config.models.len(),
        "vps-infer ready"
    );
    let signal = shutdown.clone();
    let limits = cerebrum_serve::ServerLimits {
        max_connections: config.max_connections,
        header_timeout: HEADER_TIMEOUT,
    };
    let shutdown_signal = async move {
        wait_for_signal().await;
        tracing::info!("shutting down: ending open streams");
        signal.cancel();
    };
    if !cerebrum_serve::serve(
        listener,
        app(state),
        limits,
        shutdown_signal,
        DRAIN_DEADLINE,
    )
    .await
    {
        tracing::warn!("connections still open after {DRAIN_DEADLINE:?}; closing them");
    }
    // Streams have ended; let the engine leave llama.cpp before the process exits.
    tokio::task::spawn_blocking(move || engine.stop())
        .await
        .context("stopping the engine")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
