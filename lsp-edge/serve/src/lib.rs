//! The HTTP accept loop, with the limits `axum::serve` lacks: a connection limit
//! (past it, new connections wait in the kernel's backlog and cost no descriptor
//! here), and a deadline for each request's header, which also closes idle
//! keep-alive connections. Request bodies have their own deadline where they are
//! read (`ApiJson`).
//!
//! Both services serve HTTP through it: vps-infer its API, lsp-edge its endpoint for
//! scripts. It lives beside lsp-edge's context crate, the only other code they share.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From a connection's first byte of a request (or the end of the previous
    /// response) to the end of the request's header.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting,
/// asks every connection to close after its response in flight, and returns once
/// they all have (`true`), or when `drain` has passed (`false`; the connections
/// left are dropped with the runtime).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // One small write per token: without TCP_NODELAY, Nagle's algorithm would
        // hold tokens back while waiting for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let closing = closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!("HTTP connection ended: {err}");
                    }
                }
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a slot until it is closed.
    let drained = tokio::time::timeout(drain, slots.acquire_many(max as u32))
        .await
        .is_ok();
    drained
}
