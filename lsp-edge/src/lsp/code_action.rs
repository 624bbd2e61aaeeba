//! "Refactor to async" and `cerebrum.instruct`: the LSP side of the refactor
//! pipeline ([`crate::refactor`]). `textDocument/codeAction` answers at once with an
//! unresolved action; `codeAction/resolve` runs the model and returns a versioned
//! edit of exactly the function's (or selection's) range; `workspace/executeCommand`
//! `cerebrum.instruct` runs the same pipeline for any instruction and applies the
//! edit with `workspace/applyEdit`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_lsp_server::lsp_types::{
    CodeAction, CodeActionKind, CodeActionOptions, CodeActionOrCommand, CodeActionParams,
    CodeActionProviderCapability, CodeActionResponse, ExecuteCommandOptions, ExecuteCommandParams,
    OneOf, OptionalVersionedTextDocumentIdentifier, ProgressToken, Range, TextDocumentEdit,
    TextEdit, Uri, WorkspaceEdit,
};
use tower_lsp_server::Client;
use tracing::Instrument;

use super::documents::DocumentStore;
use super::error::LspError;
use super::position::{self, Encoding};
use crate::backend::Backends;
use crate::config::{Config, Task};
use crate::edge::Edge;
use crate::pipeline::refactor::{
    self, RefactorEnv, RefactorOutcome, RefactorProgress, RefactorRequest, Target,
};

/// The command editors call with `{instruction, uri, range}`.
pub const INSTRUCT_COMMAND: &str = "cerebrum.instruct";
pub const ASYNC_TITLE: &str = "Refactor to async";

/// What the handlers need from the session.
pub struct ActionContext<'a> {
    pub client: &'a Client,
    pub edge: &'a Arc<Edge>,
    pub documents: &'a DocumentStore,
    pub encoding: Encoding,
    pub backends: &'a Backends,
    pub config: &'a Config,
    pub work_done_progress: bool,
}

/// Carried in an offered action's `data` until it is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ActionData {
    uri: Uri,
    version: i32,
    range: Range,
}

/// `cerebrum.instruct`'s one argument.
#[derive(Debug, Deserialize)]
struct InstructArgs {
    instruction: String,
    uri: Uri,
    range: Range,
}

/// `codeActionProvider`: rewrites, resolved lazily.
pub fn capability() -> CodeActionProviderCapability {
    CodeActionProviderCapability::Options(CodeActionOptions {
        code_action_kinds: Some(vec![CodeActionKind::REFACTOR_REWRITE]),
        resolve_provider: Some(true),
        ..CodeActionOptions::default()
    })
}

/// `executeCommandProvider`: `cerebrum.instruct`.
pub fn command_capability() -> ExecuteCommandOptions {
    ExecuteCommandOptions {
        commands: vec![INSTRUCT_COMMAND.into()],
        ..ExecuteCommandOptions::default()
    }
}

fn wants_rewrite(only: Option<&[CodeActionKind]>) -> bool {
    let offered = CodeActionKind::REFACTOR_REWRITE;
    let offered = offered.as_str();
    only.is_none_or(|kinds| {
        kinds.iter().any(|kind| {
            let kind = kind.as_str();
            kind.is_empty() || offered == kind || offered.starts_with(&format!("{kind}."))
        })
    })
}

/// `textDocument/codeAction`: offers "Refactor to async" where it applies, at once.
pub async fn code_actions(
    cx: &ActionContext<'_>,
    params: CodeActionParams,
) -> Result<Option<CodeActionResponse>, LspError> {
    if !wants_rewrite(params.context.only.as_deref()) {
        return Ok(None);
    }
    let uri = params.text_document.uri;
    let snapshot = cx.documents.snapshot(&uri)?;
    let version = snapshot.version;
    let target = target_of(&snapshot.rope, params.range, cx.encoding);
    let engine = cx.edge.engine.clone();
    let (applies, document, token) = tokio::task::spawn_blocking(move || {
        let (document, token) = snapshot.into_document(&engine);
        (
            refactor::async_refactor_applies(&document, &target),
            document,
            token,
        )
    })
    .await
    .map_err(|err| LspError::internal(format!("code action task failed: {err}")))?;
    cx.documents.store_parsed(token, document);
    if !applies {
        return Ok(Some(Vec::new()));
    }
    let data = ActionData {
        uri,
        version,
        range: params.range,
    };
    let action = CodeAction {
        title: ASYNC_TITLE.into(),
        kind: Some(CodeActionKind::REFACTOR_REWRITE),
        data: serde_json::to_value(&data).ok(),
        ..CodeAction::default()
    };
    Ok(Some(vec![CodeActionOrCommand::CodeAction(action)]))
}

/// `codeAction/resolve`: runs the refactor and fills in the edit.
pub async fn resolve(
    cx: &ActionContext<'_>,
    mut action: CodeAction,
) -> Result<CodeAction, LspError> {
    let data: ActionData = action
        .data
        .clone()
        .ok_or_else(|| invalid("code action", "it carries no data".into()))
        .and_then(|data| {
            serde_json::from_value(data).map_err(|err| invalid("code action data", err.to_string()))
        })?;
    let (edit, _) = run(cx, &data.uri, Some(data.version), data.range, None, None).await?;
    action.edit = Some(edit);
    Ok(action)
}

/// `workspace/executeCommand` `cerebrum.instruct`: refactors with the given
/// instruction and applies the edit; answers `{applied, attempts, tokens}`.
pub async fn execute_command(
    cx: &ActionContext<'_>,
    params: ExecuteCommandParams,
) -> Result<Option<serde_json::Value>, LspError> {
    if params.command != INSTRUCT_COMMAND {
        return Err(invalid(
            "command",
            format!("unknown command {:?}", params.command),
        ));
    }
    let args = params
        .arguments
        .into_iter()
        .next()
        .ok_or_else(|| invalid("arguments", "expected [{instruction, uri, range}]".into()))?;
    let args: InstructArgs =
        serde_json::from_value(args).map_err(|err| invalid("arguments", err.to_string()))?;
    let token = params.work_done_progress_params.work_done_token;
    let (edit, outcome) = run(
        cx,
        &args.uri,
        None,
        args.range,
        Some(args.instruction),
        token,
    )
    .await?;
    let response = cx
        .client
        .apply_edit(edit)
        .await
        .map_err(|err| LspError::NotApplied(err.message.into_owned()))?;
    if !response.applied {
        let reason = response
            .failure_reason
            .unwrap_or_else(|| "no reason given".into());
        return Err(LspError::NotApplied(reason));
    }
    Ok(Some(serde_json::json!({
        "applied": true,
        "attempts": outcome.attempts,
        "tokens": outcome.tokens,
    })))
}

fn invalid(what: &'static str, message: String) -> LspError {
    LspError::InvalidParams { what, message }
}

/// A client range as a refactor target: empty means the function at the cursor.
fn target_of(rope: &ropey::Rope, range: Range, encoding: Encoding) -> Target {
    let start = position::to_byte(rope, range.start, encoding);
    let end = position::to_byte(rope, range.end, encoding);
    if start == end {
        Target::Function { cursor: start }
    } else {
        Target::Selection(start.min(end)..start.max(end))
    }
}

/// The shared path: snapshot, refactor with progress, and a versioned edit of the
/// current text (refused if the document changed meanwhile).
async fn run(
    cx: &ActionContext<'_>,
    uri: &Uri,
    expected_version: Option<i32>,
    range: Range,
    instruction: Option<String>,
    progress_token: Option<ProgressToken>,
) -> Result<(WorkspaceEdit, RefactorOutcome), LspError> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let method = if instruction.is_some() {
        "workspace/executeCommand"
    } else {
        "codeAction/resolve"
    };
    let span = tracing::info_span!("request", method, id, uri = %super::framing::shorten(uri.as_str(), 200));
    async {
        let snapshot = cx.documents.snapshot(uri)?;
        if let Some(expected) = expected_version {
            if snapshot.version != expected {
                return Err(LspError::Changed {
                    expected,
                    now: snapshot.version,
                });
            }
        }
        let version = snapshot.version;
        let language = snapshot.language;
        let rope = snapshot.rope.clone();
        let path = snapshot.path.clone();
        let target = target_of(&rope, range, cx.encoding);
        let engine = cx.edge.engine.clone();
        let (document, token) =
            tokio::task::spawn_blocking(move || snapshot.into_document(&engine))
                .await
                .map_err(|err| LspError::internal(format!("parse task failed: {err}")))?;
        cx.documents.store_parsed(token, document.clone());

        let env = RefactorEnv {
            engine: cx.edge.engine.clone(),
            backends: cx.backends.clone(),
            limiter: cx.edge.limiter.clone(),
            model: cx.config.models.model_for(language, Task::Refactor),
        };
        let request = RefactorRequest {
            document,
            target,
            instruction,
            path,
        };
        // Dropping this future ($/cancelRequest) cancels the token, which ends the
        // progress report; the refactor's own stream is dropped with the future.
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let (sender, receiver) = watch::channel(RefactorProgress::default());
        let reporter = tokio::spawn(report_progress(
            cx.client.clone(),
            cx.work_done_progress,
            progress_token,
            receiver,
            cancel.clone(),
        ));
        let started = tokio::time::Instant::now();
        let result = refactor::refactor_document(&env, request, Some(sender), cancel.clone()).await;
        cancel.cancel();
        let _ = reporter.await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::info!("refactor failed: {err}");
                return Err(err.into());
            }
        };
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            attempts = outcome.attempts,
            tokens = outcome.tokens,
            "refactored"
        );

        // Positions from the rope the refactor worked on; the versioned edit makes the
        // editor refuse it if the buffer moved on, and so do we.
        let now = cx.documents.snapshot(uri)?.version;
        if now != version {
            return Err(LspError::Changed {
                expected: version,
                now,
            });
        }
        let edit_range = Range::new(
            position::from_byte(&rope, outcome.range.start, cx.encoding),
            position::from_byte(&rope, outcome.range.end, cx.encoding),
        );
        let edit = WorkspaceEdit {
            document_changes: Some(tower_lsp_server::lsp_types::DocumentChanges::Edits(vec![
                TextDocumentEdit {
                    text_document: OptionalVersionedTextDocumentIdentifier {
                        uri: uri.clone(),
                        version: Some(version),
                    },
                    edits: vec![OneOf::Left(TextEdit {
                        range: edit_range,
                        new_text: outcome.new_text.clone(),
                    })],
                },
            ])),
            ..WorkspaceEdit::default()
        };
        Ok((edit, outcome))
    }
    .instrument(span)
    .await
}

/// Shows `window/workDoneProgress` with the token count until `done` is cancelled:
/// on the client's token when it sent one, else on one we create (when the client
/// supports it) once the client confirmed it. Returns as soon as `done` is cancelled,
/// answered or not.
async fn report_progress(
    client: Client,
    supported: bool,
    token: Option<ProgressToken>,
    mut updates: watch::Receiver<RefactorProgress>,
    done: CancellationToken,
) {
    let token = match token {
        Some(token) => token,
        // The refactor never waits for the editor's answer: without one by the end
        // there is simply no progress.
        None if supported => {
            match super::progress::create_token(&client, "refactor", done.cancelled()).await {
                Some(token) => token,
                None => return,
            }
        }
        None => return,
    };
    let progress = client
        .progress(token, "Cerebrum")
        .with_message("refactoring…")
        .begin()
        .await;
    loop {
        tokio::select! {
            () = done.cancelled() => break,
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let update = *updates.borrow_and_update();
                let message = match update.attempt {
                    0 | 1 => format!("{} tokens", update.tokens),
                    attempt => format!("retry {attempt}: {} tokens", update.tokens),
                };
                progress.report(message).await;
                // At most a few updates a second: each is a message to the editor.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }
    progress.finish().await;
}

#[cfg(test)]
mod tests {
    use tower_lsp_server::jsonrpc::{Error, ErrorCode};

    use super::*;
    use crate::pipeline::PipelineError;

    #[test]
    fn only_filters_by_kind_prefix() {
        assert!(wants_rewrite(None));
        assert!(wants_rewrite(Some(&[CodeActionKind::REFACTOR])));
        assert!(wants_rewrite(Some(&[CodeActionKind::REFACTOR_REWRITE])));
        assert!(wants_rewrite(Some(&[CodeActionKind::EMPTY])));
        assert!(!wants_rewrite(Some(&[CodeActionKind::QUICKFIX])));
        assert!(!wants_rewrite(Some(&[CodeActionKind::REFACTOR_EXTRACT])));
    }

    #[test]
    fn refactor_failures_map_to_clear_lsp_errors() {
        let err = Error::from(LspError::Pipeline(PipelineError::Rejected {
            attempts: 2,
            reason: "`f` is not async".into(),
        }));
        assert_eq!(err.code.code(), -32803);
        assert!(
            err.message.contains("could not follow the instruction"),
            "{}",
            err.message
        );
        assert!(err.message.contains("`f` is not async"), "{}", err.message);
        let err = Error::from(LspError::Pipeline(PipelineError::Cancelled));
        assert_eq!(err.code, ErrorCode::RequestCancelled);
        let err = Error::from(LspError::Changed {
            expected: 3,
            now: 4,
        });
        assert_eq!(err.code.code(), -32801);
    }

    #[test]
    fn a_client_range_becomes_a_target() {
        let rope = ropey::Rope::from_str("é = 1\ndef f():\n    pass\n");
        let cursor = Range::new(
            tower_lsp_server::lsp_types::Position::new(1, 4),
            tower_lsp_server::lsp_types::Position::new(1, 4),
        );
        assert_eq!(
            target_of(&rope, cursor, Encoding::Utf16),
            Target::Function { cursor: 11 }
        );
        let selection = Range::new(
            tower_lsp_server::lsp_types::Position::new(2, 0),
            tower_lsp_server::lsp_types::Position::new(1, 0),
        );
        assert_eq!(
            target_of(&rope, selection, Encoding::Utf16),
            Target::Selection(7..16)
        );
    }
}
