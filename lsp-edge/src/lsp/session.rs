//! One editor's session: the `LanguageServer` implementation. It translates between
//! LSP and the domain (documents, context, generation) and owns nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cerebrum_context::{ContextOptions, Mode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::jsonrpc::{Error, Result};
use tower_lsp_server::lsp_types::notification::Notification;
use tower_lsp_server::lsp_types::{
    CompletionItem, CompletionItemKind, CompletionList, CompletionOptions, CompletionParams,
    CompletionResponse, CompletionTextEdit, DidChangeTextDocumentParams,
    DidCloseTextDocumentParams, DidOpenTextDocumentParams, InitializeParams, InitializeResult,
    InitializedParams, InlineCompletionItem, InlineCompletionList, InlineCompletionParams,
    InlineCompletionResponse, InsertTextFormat, MessageType, OneOf, Position, ProgressToken, Range,
    ServerCapabilities, ServerInfo, TextDocumentSyncCapability, TextDocumentSyncKind,
    TextDocumentSyncOptions, TextEdit, Uri,
};
use tower_lsp_server::{Client, LanguageServer};
use tracing::Instrument;

use super::documents::DocumentStore;
use super::error::LspError;
use super::inflight::InFlight;
use super::position::{self, Encoding};
use super::typed_ahead::TypedAhead;
use crate::backend::breaker::BreakerState;
use crate::backend::{BackendClient, Backends, ExtraChunk};
use crate::config::{Config, Task};
use crate::edge::Edge;
use crate::pipeline::{self, GenerationInput, Observer, Prompt};

/// `textDocument/inlineCompletion`'s params, plus `partialResultToken`: LSP 3.18's
/// `InlineCompletionParams` has no such field, and Cerebrum's editor plugins send it
/// to get the completion streamed (a documented extension).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InlineCompletionRequest {
    #[serde(flatten)]
    pub params: InlineCompletionParams,
    #[serde(default)]
    pub partial_result_token: Option<ProgressToken>,
}

/// A `$/progress` notification carrying a partial result.
///
/// Cerebrum's partial results are the whole growing completion each time (not a
/// delta to append): an editor shows the latest one, then the final response.
enum PartialResult {}

#[derive(Debug, Serialize, Deserialize)]
struct PartialResultParams {
    token: ProgressToken,
    value: serde_json::Value,
}

impl Notification for PartialResult {
    type Params = PartialResultParams;
    const METHOD: &'static str = "$/progress";
}

/// Which result type partial results take.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Inline,
    Completion,
}

/// The cursor as the client sees it, for building items.
#[derive(Debug, Clone)]
struct Cursor {
    position: Position,
    /// Where the identifier the cursor ends lies begins (for completion items).
    word_start: Position,
    word: String,
}

impl Cursor {
    fn inline_list(&self, text: &str) -> InlineCompletionList {
        let items = if text.is_empty() {
            Vec::new()
        } else {
            vec![InlineCompletionItem {
                insert_text: text.to_owned(),
                filter_text: None,
                range: Some(Range::new(self.position, self.position)),
                command: None,
                insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
            }]
        };
        InlineCompletionList { items }
    }

    fn completion_list(&self, text: &str) -> CompletionList {
        let items = if text.is_empty() {
            Vec::new()
        } else {
            // The item replaces the word before the cursor with that word plus the
            // completion, so menus that filter by the typed word keep it.
            let new_text = format!("{}{text}", self.word);
            let first_line = text
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("");
            let mut label: String = format!("{}{}", self.word, first_line.trim_start())
                .chars()
                .take(60)
                .collect();
            if text.trim().lines().count() > 1 {
                label.push_str(" …");
            }
            vec![CompletionItem {
                label,
                kind: Some(CompletionItemKind::SNIPPET),
                detail: Some("Cerebrum".into()),
                documentation: None,
                sort_text: Some("0".into()),
                filter_text: Some(new_text.clone()),
                insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                    range: Range::new(self.word_start, self.position),
                    new_text,
                })),
                ..CompletionItem::default()
            }]
        };
        // Incomplete: the next keystroke asks again rather than filtering this.
        CompletionList {
            is_incomplete: true,
            items,
        }
    }

    fn render(&self, shape: Shape, text: &str) -> serde_json::Value {
        let value = match shape {
            Shape::Inline => serde_json::to_value(self.inline_list(text)),
            Shape::Completion => serde_json::to_value(self.completion_list(text)),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// Settings fixed at `initialize`.
#[derive(Debug)]
struct SessionSettings {
    config: Config,
    encoding: Encoding,
    backends: Backends,
    work_done_progress: bool,
}

pub struct Session {
    client: Client,
    edge: Arc<Edge>,
    settings: OnceLock<SessionSettings>,
    documents: DocumentStore,
    inflight: InFlight,
    typed_ahead: TypedAhead,
    /// Cancelled when the session ends, or must end (a refused token).
    closed: CancellationToken,
    next_request: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("documents", &self.documents.len())
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inflight.cancel_all();
        self.closed.cancel();
    }
}

impl Session {
    pub fn new(client: Client, edge: Arc<Edge>, closed: CancellationToken) -> Session {
        Session {
            client,
            edge,
            settings: OnceLock::new(),
            documents: DocumentStore::default(),
            inflight: InFlight::default(),
            typed_ahead: TypedAhead::default(),
            closed,
            next_request: AtomicU64::new(1),
        }
    }

    fn settings(&self) -> std::result::Result<&SessionSettings, LspError> {
        self.settings.get().ok_or(LspError::NotInitialized)
    }

    /// What the refactor actions (`code_action.rs`) need from the session.
    fn action_context(
        &self,
    ) -> std::result::Result<super::code_action::ActionContext<'_>, LspError> {
        let settings = self.settings()?;
        Ok(super::code_action::ActionContext {
            client: &self.client,
            edge: &self.edge,
            documents: &self.documents,
            encoding: settings.encoding,
            backends: &settings.backends,
            config: &settings.config,
            work_done_progress: settings.work_done_progress,
        })
    }

    fn encoding(&self) -> Encoding {
        self.settings
            .get()
            .map_or(Encoding::Utf16, |settings| settings.encoding)
    }

    /// Checks `initializationOptions.token` when the server has one, in constant time.
    fn authenticate(&self, options: &serde_json::Value) -> Result<()> {
        let Some(expected) = &self.edge.config.token else {
            return Ok(());
        };
        let refusal = match options.get("token").and_then(|token| token.as_str()) {
            None => "this server requires a session token in initializationOptions.token",
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                return Ok(())
            }
            Some(_) => "the session token in initializationOptions.token is wrong",
        };
        tracing::warn!("refused a session: {refusal}");
        // The refusal must reach the client before the connection closes, and
        // tower-lsp-server offers no hook for "response written": close shortly after.
        let closed = self.closed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            closed.cancel();
        });
        Err(LspError::Unauthorized(refusal).into())
    }

    /// Tells the editor once per change of `backend`'s breaker, for the session's
    /// lifetime. With `several` backends, an open breaker moves the backend's
    /// documents to the others rather than pausing completions.
    fn watch_breaker(&self, backend: &BackendClient, several: bool) {
        // With several backends, an open breaker moves documents rather than
        // pausing completions.
        let (what, moves) = if several {
            (format!("backend {}", backend.name()), true)
        } else {
            (backend.kind().to_string(), false)
        };
        let mut changes = backend.breaker().subscribe();
        changes.borrow_and_update();
        let client = self.client.clone();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = closed.cancelled() => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let state = changes.borrow_and_update().clone();
                        match state {
                            BreakerState::Open { cooldown, reason } => {
                                let consequence = if moves {
                                    "its documents go to the other backends meanwhile".to_owned()
                                } else {
                                    format!("completions pause for {}s", cooldown.as_secs())
                                };
                                let message = format!(
                                    "Cerebrum: {what} is unavailable ({reason}); {consequence}."
                                );
                                client.show_message(MessageType::WARNING, message).await;
                            }
                            BreakerState::Closed => {
                                client
                                    .show_message(
                                        MessageType::INFO,
                                        format!("Cerebrum: {what} answers again; completions resumed."),
                                    )
                                    .await;
                            }
                            BreakerState::HalfOpen => {}
                        }
                    }
                }
            }
        });
    }

    /// The shared path of both completion methods.
    async fn complete(
        &self,
        method: &'static str,
        uri: &Uri,
        position: Position,
        partial: Option<(ProgressToken, Shape)>,
        budget: Option<Duration>,
    ) -> std::result::Result<(String, Cursor), LspError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("request", method, id, uri = %super::framing::shorten(uri.as_str(), 200));
        async {
            let started = Instant::now();
            let deadline = budget.map(|budget| started + budget);
            let settings = self.settings()?;
            // Everything up to holding a generation slot runs before the first
            // `.await`, so requests claim slots and supersede in arrival order.
            let snapshot = self.documents.snapshot(uri)?;
            let encoding = settings.encoding;
            let cursor_char = position::to_char(&snapshot.rope, position, encoding);
            let cursor = cursor_at(&snapshot.rope, cursor_char, encoding);
            let cursor_byte = snapshot.rope.char_to_byte(cursor_char);
            let (ticket, inherited) = self.inflight.begin(uri);
            let rope = snapshot.rope.clone();
            if let Some(rest) = self.typed_ahead.remainder(uri, &rope, cursor_char) {
                // The user typed what the ghost text showed: the rest of it is the
                // answer, and the superseded request's slot (if any) is freed.
                drop((ticket, inherited));
                tracing::info!(chars = rest.len(), "answered from the completion shown");
                self.typed_ahead.remember(uri, &rope, cursor_char, &rest);
                return Ok((rest, cursor));
            }
            let permit = match inherited {
                Some(permit) => permit,
                None => self.edge.limiter.try_acquire()?,
            };
            ticket.hold(permit);

            let work = self.generate(settings, snapshot, cursor_byte, &cursor, partial, deadline);
            let text = tokio::select! {
                biased;
                () = ticket.superseded() => {
                    tracing::debug!("superseded");
                    return Err(LspError::Superseded);
                }
                text = work => text?,
            };
            self.typed_ahead.remember(uri, &rope, cursor_char, &text);
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                chars = text.len(),
                "answered"
            );
            Ok((text, cursor))
        }
        .instrument(span)
        .await
    }

    async fn generate(
        &self,
        settings: &SessionSettings,
        snapshot: super::documents::Snapshot,
        cursor_byte: usize,
        cursor: &Cursor,
        partial: Option<(ProgressToken, Shape)>,
        deadline: Option<Instant>,
    ) -> std::result::Result<String, LspError> {
        let language = snapshot.language;
        let uri = snapshot.uri.clone();
        let engine = self.edge.engine.clone();
        let options = ContextOptions {
            path: snapshot.path.clone(),
            model: pipeline::prompt_model(
                &settings.config.models,
                &settings.backends,
                language,
                Some(uri.as_str()),
            ),
            ..ContextOptions::default()
        };
        let (document, token, context) = tokio::task::spawn_blocking(move || {
            let (document, token) = snapshot.into_document(&engine);
            let context = engine.context(&document, cursor_byte, &options);
            (document, token, context)
        })
        .await
        .map_err(|err| LspError::internal(format!("context task failed: {err}")))?;
        self.documents.store_parsed(token, document);
        tracing::debug!(
            chars_before = context.stats.chars_before,
            chars_after = context.stats.chars_after,
            extra = context.extra.len(),
            elapsed_us = context.stats.elapsed_us,
            "context"
        );

        let config = &settings.config;
        let task = match context.mode {
            Mode::Fim => Task::Completion,
            Mode::Instruction => Task::Refactor,
        };
        let model = config.models.model_for(language, task);
        let prompt = match context.mode {
            Mode::Fim => Prompt::Fim {
                prefix: context.prefix,
                suffix: context.suffix,
                extra: context
                    .extra
                    .into_iter()
                    .map(|chunk| ExtraChunk {
                        label: chunk.label,
                        text: chunk.text,
                    })
                    .collect(),
            },
            Mode::Instruction => Prompt::Instruction {
                prompt: context.prompt.unwrap_or_default(),
            },
        };
        let input = GenerationInput {
            prompt,
            fim: config.models.fim(model.as_deref()),
            model,
            settings: config.completion.clone(),
            document: Some(uri.as_str().to_owned()),
        };

        let (partials, partial_rx) = match &partial {
            Some(_) => {
                let (sender, receiver) = watch::channel(String::new());
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let (first_token, first_token_rx) = oneshot::channel();
        if settings.work_done_progress {
            let client = self.client.clone();
            // The backend the document is at home on, or the one it will go to.
            let candidates = settings.backends.candidates(Some(uri.as_str()));
            if let Some((_, backend)) = candidates.into_iter().next() {
                tokio::spawn(report_model_load(client, backend.client, first_token_rx));
            }
        }
        let observer = Observer {
            partials,
            first_token: Some(first_token),
            tokens: None,
        };
        let generation = pipeline::generate(&settings.backends, &input, observer, deadline);
        let forward = forward_partials(&self.client, partial_rx, partial, cursor);
        let (generated, ()) = tokio::join!(generation, forward);
        let generated = generated?;
        tracing::debug!(
            backend = %generated.backend,
            fim = generated.fim,
            cut_early = generated.cut_early,
            deadline_hit = generated.deadline_hit,
            tokens = generated.stats.as_ref().map(|stats| stats.total_tokens),
            cached = generated.stats.as_ref().map(|stats| stats.cached_tokens),
            "generated"
        );
        Ok(generated.text)
    }

    /// `textDocument/inlineCompletion` (registered as a custom method: tower-lsp-server
    /// 0.22 has no handler for it).
    pub async fn inline_completion(
        &self,
        request: InlineCompletionRequest,
    ) -> Result<Option<InlineCompletionResponse>> {
        let position = request.params.text_document_position;
        let partial = request
            .partial_result_token
            .map(|token| (token, Shape::Inline));
        let (text, cursor) = self
            .complete(
                "textDocument/inlineCompletion",
                &position.text_document.uri,
                position.position,
                partial,
                None,
            )
            .await?;
        Ok(Some(InlineCompletionResponse::List(
            cursor.inline_list(&text),
        )))
    }
}

/// The cursor's client-side position and the identifier that ends at it.
fn cursor_at(rope: &ropey::Rope, cursor_char: usize, encoding: Encoding) -> Cursor {
    let line_start = rope.line_to_char(rope.char_to_line(cursor_char));
    let mut word_start = cursor_char;
    while word_start > line_start {
        let c = rope.char(word_start - 1);
        if c.is_alphanumeric() || c == '_' {
            word_start -= 1;
        } else {
            break;
        }
    }
    Cursor {
        position: position::from_char(rope, cursor_char, encoding),
        word_start: position::from_char(rope, word_start, encoding),
        word: rope.slice(word_start..cursor_char).to_string(),
    }
}

/// Sends each published growing text as a `$/progress` partial result.
async fn forward_partials(
    client: &Client,
    receiver: Option<watch::Receiver<String>>,
    partial: Option<(ProgressToken, Shape)>,
    cursor: &Cursor,
) {
    let (Some(mut receiver), Some((token, shape))) = (receiver, partial) else {
        return;
    };
    while receiver.changed().await.is_ok() {
        let text = receiver.borrow_and_update().clone();
        let params = PartialResultParams {
            token: token.clone(),
            value: cursor.render(shape, &text),
        };
        client.send_notification::<PartialResult>(params).await;
    }
}

/// While a request waits for its first token, asks `/health` whether vps-infer is
/// loading a model and, if so, shows `window/workDoneProgress` until it is done.
async fn report_model_load(
    client: Client,
    backend: BackendClient,
    mut first_token: oneshot::Receiver<()>,
) {
    let delay = pipeline::load_probe_delay(&backend);
    tokio::select! {
        _ = &mut first_token => return,
        () = tokio::time::sleep(delay) => {}
    }
    let mut progress = None;
    loop {
        let loading = matches!(backend.health().await, Ok(health) if health.status == "loading");
        if !loading {
            break;
        }
        if progress.is_none() {
            // Never wait for the editor's answer past the first token.
            let first = async {
                let _ = (&mut first_token).await;
            };
            let Some(token) = super::progress::create_token(&client, "model-load", first).await
            else {
                return;
            };
            progress = Some(
                client
                    .progress(token, "Cerebrum")
                    .with_message("vps-infer is loading the model…")
                    .begin()
                    .await,
            );
        }
        tokio::select! {
            _ = &mut first_token => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    if let Some(progress) = progress {
        progress.finish_with_message("model loaded").await;
    }
}

impl LanguageServer for Session {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let options = params
            .initialization_options
            .unwrap_or(serde_json::Value::Null);
        self.authenticate(&options)?;
        let config = match &options {
            serde_json::Value::Null => self.edge.config.clone(),
            options => self
                .edge
                .config
                .with_session_options(options)
                .map_err(LspError::from)?,
        };
        let encoding = Encoding::negotiate(
            params
                .capabilities
                .general
                .as_ref()
                .and_then(|general| general.position_encodings.as_deref()),
        );
        let work_done_progress = params
            .capabilities
            .window
            .as_ref()
            .and_then(|window| window.work_done_progress)
            .unwrap_or(false);
        let backends = self.edge.backends_for(&config).map_err(LspError::from)?;
        let settings = SessionSettings {
            config,
            encoding,
            backends,
            work_done_progress,
        };
        if self.settings.set(settings).is_err() {
            return Err(Error::invalid_request());
        }
        tracing::info!(?encoding, "session initialized");
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(encoding.kind()),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        ..TextDocumentSyncOptions::default()
                    },
                )),
                completion_provider: Some(CompletionOptions::default()),
                inline_completion_provider: Some(OneOf::Left(true)),
                code_action_provider: Some(super::code_action::capability()),
                execute_command_provider: Some(super::code_action::command_capability()),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "lsp-edge".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        if let Ok(settings) = self.settings() {
            let several = settings.backends.members().len() > 1;
            for backend in settings.backends.members() {
                self.watch_breaker(&backend.client, several);
            }
        }
    }

    async fn shutdown(&self) -> Result<()> {
        self.inflight.cancel_all();
        Ok(())
    }

    async fn code_action(
        &self,
        params: tower_lsp_server::lsp_types::CodeActionParams,
    ) -> Result<Option<tower_lsp_server::lsp_types::CodeActionResponse>> {
        Ok(super::code_action::code_actions(&self.action_context()?, params).await?)
    }

    async fn code_action_resolve(
        &self,
        action: tower_lsp_server::lsp_types::CodeAction,
    ) -> Result<tower_lsp_server::lsp_types::CodeAction> {
        Ok(super::code_action::resolve(&self.action_context()?, action).await?)
    }

    async fn execute_command(
        &self,
        params: tower_lsp_server::lsp_types::ExecuteCommandParams,
    ) -> Result<Option<serde_json::Value>> {
        Ok(super::code_action::execute_command(&self.action_context()?, params).await?)
    }

    // The three document notifications mutate the store before any `.await`, so
    // they apply in the order they arrived (tower-lsp-server starts handlers in
    // arrival order; a later `.await` would let a newer one overtake).

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let document = params.text_document;
        let uri = document.uri.clone();
        self.documents.open(
            document.uri,
            &document.language_id,
            document.version,
            &document.text,
        );
        // Parse now, off the runtime, so that the first completion finds the tree
        // ready; one that comes sooner parses for itself.
        if let Ok(snapshot) = self.documents.snapshot(&uri) {
            let engine = self.edge.engine.clone();
            let parsed = tokio::task::spawn_blocking(move || snapshot.into_document(&engine));
            if let Ok((document, token)) = parsed.await {
                self.documents.store_parsed(token, document);
            }
        }
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let document = params.text_document;
        if let Err(err) = self.documents.change(
            &document.uri,
            document.version,
            params.content_changes,
            self.encoding(),
        ) {
            tracing::warn!("didChange: {err}");
        }
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.typed_ahead.forget(&params.text_document.uri);
        self.documents.close(&params.text_document.uri);
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let position = params.text_document_position;
        let partial = params
            .partial_result_params
            .partial_result_token
            .map(|token| (token, Shape::Completion));
        let budget = self.settings()?.config.completion.budget();
        let (text, cursor) = self
            .complete(
                "textDocument/completion",
                &position.text_document.uri,
                position.position,
                partial,
                Some(budget),
            )
            .await?;
        Ok(Some(CompletionResponse::List(
            cursor.completion_list(&text),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_params_accept_a_partial_result_token() {
        let request: InlineCompletionRequest = serde_json::from_value(serde_json::json!({
            "textDocument": {"uri": "file:///a.py"},
            "position": {"line": 1, "character": 4},
            "context": {"triggerKind": 2},
            "partialResultToken": "p1",
        }))
        .unwrap();
        assert_eq!(
            request.partial_result_token,
            Some(tower_lsp_server::lsp_types::NumberOrString::String(
                "p1".into()
            ))
        );
        assert_eq!(request.params.text_document_position.position.line, 1);
    }

    #[test]
    fn completion_items_replace_the_typed_word() {
        let rope = ropey::Rope::from_str("x = pri");
        let cursor = cursor_at(&rope, 7, Encoding::Utf16);
        assert_eq!(cursor.word, "pri");
        let list = cursor.completion_list("nt(x)\nfoo()");
        assert!(list.is_incomplete);
        let item = &list.items[0];
        assert_eq!(item.label, "print(x) …");
        let Some(CompletionTextEdit::Edit(edit)) = &item.text_edit else {
            panic!("{item:?}")
        };
        assert_eq!(edit.new_text, "print(x)\nfoo()");
        assert_eq!(
            edit.range,
            Range::new(Position::new(0, 4), Position::new(0, 7))
        );
        assert!(cursor.completion_list("").items.is_empty());
    }
}
