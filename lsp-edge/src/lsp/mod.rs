//! The LSP layer: sessions over TCP or stdio. Only this module knows LSP types.

mod code_action;
mod documents;
mod error;
pub mod framing;
mod inflight;
pub mod position;
mod progress;
mod session;
mod typed_ahead;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::{LspService, Server};

pub use documents::{DocumentError, DocumentStore};
pub use error::LspError;
pub use framing::FrameLimits;
pub use session::{InlineCompletionRequest, Session};

use crate::edge::Edge;

/// Bytes buffered between our framing layer and tower-lsp-server, each way.
const PIPE_BYTES: usize = 64 * 1024;

/// Serves one LSP session over a byte stream until the client exits or disconnects
/// (or is refused for a bad token or a bad frame).
///
/// The editor's bytes pass [`framing`] before tower-lsp-server sees them. When the
/// editor disconnects, the whole session is dropped at once: every request in flight
/// with it, which drops their streams from vps-infer and so stops their decodes
/// (tower-lsp-server alone would finish them first).
pub async fn serve_connection<R, W>(edge: Arc<Edge>, read: R, write: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let closed = CancellationToken::new();
    let concurrency = edge.config.session_concurrency;
    let limits = FrameLimits::from_config(&edge.config.limits);
    let (service, socket) = LspService::build(|client| Session::new(client, edge, closed.clone()))
        .custom_method("textDocument/inlineCompletion", Session::inline_completion)
        .finish();
    let (server_input, to_server) = tokio::io::simplex(PIPE_BYTES);
    let (from_server, server_output) = tokio::io::simplex(PIPE_BYTES);
    let (answers, answers_rx) = tokio::sync::mpsc::channel(16);
    let server = Server::new(server_input, server_output, socket).concurrency_level(concurrency);
    let mut serve = Box::pin(server.serve(service));
    let reader = framing::read_frames(read, to_server, limits, answers);
    let mut writer = Box::pin(framing::write_frames(from_server, write, answers_rx));
    tokio::pin!(reader);
    let drain = tokio::select! {
        () = &mut serve => true,
        () = closed.cancelled() => true,
        end = &mut reader => {
            if let framing::ReadEnd::Disconnected(Some(err)) = end {
                tracing::debug!("the connection broke: {err}");
            }
            false
        }
        () = &mut writer => false,
    };
    // Dropping the server drops every request still running, and the session.
    closed.cancel();
    drop(serve);
    if drain {
        // The client is still there: let the last answers (a refusal) reach it.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

/// Serves one editor over stdin/stdout.
pub async fn serve_stdio(edge: Arc<Edge>) {
    serve_connection(edge, tokio::io::stdin(), tokio::io::stdout()).await;
}

/// Accepts editors on `listener`, each connection its own session, until
/// `shutdown` resolves.
pub async fn serve_tcp(edge: Arc<Edge>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "session opened");
            let (read, write) = stream.into_split();
            serve_connection(edge, read, write).await;
            tracing::info!(%peer, "session closed");
        });
    }
}

/// Binds the TCP listener (a separate step so that `serve` can report the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
