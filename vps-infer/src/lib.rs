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
use axum::serve::ListenerExt as _;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use routes::{app, AppState};

/// Open streams get this long to end after SIGTERM before the process exits anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

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
    // Tokens go out one small SSE event at a time: without TCP_NODELAY, Nagle's
    // algorithm and the peer's delayed ACK hold some of them back for tens of ms.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
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
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: ending open streams");
            signal.cancel();
            // Streams end at once; anything still hanging is cut at the deadline.
            tokio::spawn(async {
                tokio::time::sleep(DRAIN_DEADLINE).await;
                tracing::warn!("drain deadline passed, exiting");
                std::process::exit(0);
            });
        })
        .await
        .context("HTTP server failed")?;
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
