//! The LSP layer: sessions over TCP or stdio. Only this module knows LSP types.

mod code_action;
mod documents;
mod inflight;
pub mod position;
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
pub use session::{InlineCompletionRequest, RequestError, Session};

use crate::edge::Edge;

/// Serves one LSP session over a byte stream until the client exits or disconnects
/// (or is refused for a bad token).
pub async fn serve_connection<R, W>(edge: Arc<Edge>, read: R, write: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite,
{
    let closed = CancellationToken::new();
    let concurrency = edge.config.session_concurrency;
    let (service, socket) = LspService::build(|client| Session::new(client, edge, closed.clone()))
        .custom_method("textDocument/inlineCompletion", Session::inline_completion)
        .finish();
    let server = Server::new(read, write, socket).concurrency_level(concurrency);
    tokio::select! {
        () = server.serve(service) => {}
        () = closed.cancelled() => {}
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
