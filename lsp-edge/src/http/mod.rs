//! The HTTP endpoint for scripts and tools that are not editors: completions (JSON
//! or SSE), batches, refactors, health, statistics and Prometheus metrics, served by
//! `lsp-edge serve` beside the LSP listener.
//!
//! It shares the edge with the LSP side: the context engine, the vps-infer client
//! with its circuit breaker, and the generation limiter, so a script and an editor
//! compete for the same two slots. The logic is the pipeline's
//! ([`crate::pipeline::script`]), free of HTTP; [`routes`] only translates; [`app`]
//! builds the router so tests can call it without a socket.

pub mod error;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::config::Secret;
use crate::edge::Edge;
use crate::pipeline::script::Completer;
use crate::pipeline::stats::HttpStats;

/// Request bodies past this size are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long shutdown waits for open connections after ending the streams.
const DRAIN: Duration = Duration::from_secs(5);

/// A client gets this long to send a request's header (or, on an idle keep-alive
/// connection, to start the next request) before the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client gets this long to send a request's body, once its header is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub completer: Completer,
    token: Option<Secret>,
    /// Cancelled at shutdown: open streams end with an error event.
    pub shutdown: CancellationToken,
    started: Instant,
    next_id: Arc<AtomicU64>,
}

impl HttpState {
    /// The state over the shared edge; the token comes from `edge.config.http`.
    pub fn new(edge: Arc<Edge>) -> HttpState {
        let stats = Arc::new(HttpStats::default());
        for backend in edge.backends.members() {
            stats.watch_breaker(backend.client.breaker());
        }
        HttpState {
            token: edge.config.http.token.clone(),
            completer: Completer::new(edge, stats),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn edge(&self) -> &Arc<Edge> {
        self.completer.edge()
    }

    pub fn stats(&self) -> &Arc<HttpStats> {
        self.completer.stats()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The whole endpoint as a router.
pub fn app(state: HttpState) -> Router {
    let protected = Router::new()
        .route("/v1/complete", post(routes::complete))
        .route("/v1/complete/batch", post(routes::batch))
        .route("/v1/refactor", post(routes::refactor))
        .route("/v1/stats", get(routes::stats))
        .route("/metrics", get(routes::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::require_token,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this endpoint does not take that method".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A running HTTP endpoint.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Binds `edge.config.http.listen` and serves the endpoint in the background.
pub async fn spawn(edge: Arc<Edge>) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(edge.config.http.listen).await?;
    let addr = listener.local_addr()?;
    let edge_limits = edge.config.http.clone();
    let state = HttpState::new(edge);
    let shutdown = state.shutdown.clone();
    let signal = shutdown.clone().cancelled_owned();
    let router = app(state);
    let limits = cerebrum_serve::ServerLimits {
        max_connections: edge_limits.max_connections,
        header_timeout: HEADER_TIMEOUT,
    };
    let task = tokio::spawn(async move {
        // `shutdown` bounds the drain itself.
        cerebrum_serve::serve(listener, router, limits, signal, Duration::MAX).await;
    });
    tracing::info!(listen = %addr, "HTTP endpoint listening");
    Ok(HttpServer {
        addr,
        shutdown,
        task,
    })
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends open streams, and waits a bounded time for the
    /// connections to close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(DRAIN, self.task).await.is_err() {
            tracing::warn!("HTTP connections still open after {DRAIN:?}; closing them");
        }
    }
}

#[cfg(test)]
mod tests;
