//! Server-initiated `window/workDoneProgress`: asking the editor for a token.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tower_lsp_server::lsp_types::request::WorkDoneProgressCreate;
use tower_lsp_server::lsp_types::{NumberOrString, ProgressToken, WorkDoneProgressCreateParams};
use tower_lsp_server::Client;

/// Asks the editor to create the progress token `cerebrum-{kind}-{n}`. `None` when
/// the editor refuses, or when `give_up` completes first: some editors (Helix)
/// answer a server's request only after their own pending request is answered, so
/// the work the progress reports on must never wait for this answer.
pub(super) async fn create_token(
    client: &Client,
    kind: &str,
    give_up: impl Future<Output = ()>,
) -> Option<ProgressToken> {
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = NumberOrString::String(format!(
        "cerebrum-{kind}-{}",
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    ));
    let create = client.send_request::<WorkDoneProgressCreate>(WorkDoneProgressCreateParams {
        token: token.clone(),
    });
    tokio::select! {
        created = create => created.ok().map(|()| token),
        () = give_up => None,
    }
}
