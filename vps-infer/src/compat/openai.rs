//! OpenAI's `/v1/completions` (with `suffix` for fill-in-the-middle) and
//! `/v1/chat/completions`, streamed as OpenAI streams them (`data: [DONE]` last), with
//! errors in OpenAI's envelope.
//!
//! Chat uses the model's own template through our chat mode, which knows one system
//! message and one user turn: earlier turns of a conversation are written into the
//! user's turn as a transcript.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::llamacpp::PromptInput;
use super::{
    data, invalid, pick_model, stream, unix_now, Finish, Generation, OneOrMany, Render, Translate,
    Watch,
};
use crate::engine::prompt::ChatRequest;
use crate::engine::{GenerateRequest, PromptParts};
use crate::error::ApiError;
use crate::routes::{ApiJson, AppState};

/// Our error in OpenAI's envelope: `{"error": {message, type, param, code}}`.
pub(crate) struct OpenAiError(ApiError);

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> OpenAiError {
        OpenAiError(error)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let mut response = (error.status(), Json(envelope(&error))).into_response();
        if let ApiError::Unavailable { retry_after_s, .. } = &error {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        response
    }
}

fn envelope(error: &ApiError) -> Value {
    json!({
        "error": {
            "message": error.to_string(),
            "type": error.kind(),
            "param": null,
            "code": error.status().as_u16(),
        }
    })
}

/// Something that starts with "b" like llama.cpp's build numbers, which some clients
/// and llama.cpp's tests look for.
fn fingerprint() -> String {
    format!("b{}-vps-infer", env!("CARGO_PKG_VERSION"))
}

fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", super::seed(None))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields both OpenAI routes share.
#[derive(Debug, Deserialize)]
pub(crate) struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    stop: Option<OneOrMany>,
    seed: Option<i64>,
    /// llama.cpp's extras, honoured here too.
    n_indent: Option<i64>,
    t_max_predict_ms: Option<i64>,
}

impl Common {
    fn check(&self) -> Result<(), ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::InvalidRequest(
                "n: more than one choice per request is not offered by vps-infer".into(),
            ));
        }
        Ok(())
    }

    fn translate(&mut self, app: &AppState, parts: PromptParts) -> Translate {
        Translate {
            model: pick_model(app, self.model.as_deref()),
            parts,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: OneOrMany::take_all(&mut self.stop),
            seed: self.seed,
        }
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionsBody {
    prompt: Option<PromptInput>,
    suffix: Option<String>,
    echo: Option<bool>,
    logprobs: Option<Value>,
    best_of: Option<u32>,
    #[serde(flatten)]
    common: Common,
}

pub(crate) async fn completions(
    State(app): State<AppState>,
    body: Result<ApiJson<CompletionsBody>, ApiError>,
) -> Result<Response, OpenAiError> {
    let ApiJson(mut body) = body.map_err(|e| invalid(&app, e))?;
    let request = (|| -> Result<GenerateRequest, ApiError> {
        body.common.check()?;
        if body.echo == Some(true) {
            return Err(ApiError::InvalidRequest(
                "echo: echoing the prompt is not offered by vps-infer".into(),
            ));
        }
        if body.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
            return Err(ApiError::InvalidRequest(
                "logprobs: token probabilities are not offered by vps-infer".into(),
            ));
        }
        if body.best_of.unwrap_or(1) != 1 {
            return Err(ApiError::InvalidRequest(
                "best_of: is not offered by vps-infer".into(),
            ));
        }
        let prompt = body
            .prompt
            .take()
            .map(PromptInput::into_text)
            .transpose()?
            .unwrap_or_default();
        // An empty suffix is a plain completion, so that clients that always send one
        // also work with models that have no FIM tokens.
        let suffix = body.suffix.take().filter(|s| !s.is_empty());
        body.common
            .translate(
                &app,
                PromptParts {
                    prompt,
                    suffix,
                    ..PromptParts::default()
                },
            )
            .build()
    })()
    .map_err(|e| invalid(&app, e))?;
    let watch = Watch::new(body.common.n_indent, body.common.t_max_predict_ms);
    let generation = Generation::start(&app, request, watch).await?;
    let id = new_id("cmpl");
    let created = unix_now();
    if body.common.stream {
        return Ok(stream(
            generation,
            TextChunks {
                id,
                created,
                include_usage: body.common.include_usage(),
            },
        ));
    }
    let finish = generation.collect().await?;
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": finish.model,
        "system_fingerprint": fingerprint(),
        "choices": [{
            "text": finish.text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish.stop.openai(),
        }],
        "usage": finish.usage(),
        "timings": finish.timings(),
    }))
    .into_response())
}

/// Streamed events of `/v1/completions`.
struct TextChunks {
    id: String,
    created: u64,
    include_usage: bool,
}

impl TextChunks {
    fn chunk(&self, model: &str, text: &str, finish_reason: Option<&str>) -> SseEvent {
        data(&json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": model,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        }))
    }
}

impl Render for TextChunks {
    fn text(&mut self, text: &str) -> Vec<SseEvent> {
        vec![self.chunk("", text, None)]
    }

    fn done(&mut self, finish: &Finish) -> Vec<SseEvent> {
        let mut events = vec![self.chunk(&finish.model, "", Some(finish.stop.openai()))];
        events.extend(closing_events(
            self.include_usage,
            &self.id,
            "text_completion",
            self.created,
            finish,
        ));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![data(&envelope(error))]
    }
}

/// A message's content: text, or a list of parts of which only text is offered.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    role: String,
    content: Option<Content>,
}

impl Message {
    fn text(&self, index: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::InvalidRequest(format!(
                                "messages[{index}].content: parts of type {kind:?} are not offered by vps-infer (text only)"
                            )))
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatBody {
    messages: Vec<Message>,
    max_completion_tokens: Option<i64>,
    tools: Option<Value>,
    response_format: Option<Value>,
    logprobs: Option<bool>,
    #[serde(flatten)]
    common: Common,
}

/// The system text and the user's turn for our chat mode.
fn conversation(messages: &[Message]) -> Result<(Option<String>, String), ApiError> {
    let mut system = Vec::new();
    let mut turns = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => system.push(m.text(i)?),
            "user" | "assistant" => turns.push((m.role.as_str(), m.text(i)?)),
            other => {
                return Err(ApiError::InvalidRequest(format!(
                    "messages[{i}].role: {other:?} is not offered by vps-infer (system, developer, user, assistant)"
                )))
            }
        }
    }
    let Some((last_role, last)) = turns.pop() else {
        return Err(ApiError::InvalidRequest(
            "messages: there must be a user message".into(),
        ));
    };
    if last_role != "user" {
        return Err(ApiError::InvalidRequest(
            "messages: the last message must be the user's (continuing an assistant message is not offered by vps-infer)".into(),
        ));
    }
    let mut user = String::new();
    if !turns.is_empty() {
        user.push_str("The conversation so far:\n\n");
        for (role, text) in &turns {
            let who = if *role == "user" { "User" } else { "Assistant" };
            user.push_str(&format!("{who}: {text}\n\n"));
        }
        user.push_str("User: ");
    }
    user.push_str(&last);
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, user))
}

pub(crate) async fn chat_completions(
    State(app): State<AppState>,
    body: Result<ApiJson<ChatBody>, ApiError>,
) -> Result<Response, OpenAiError> {
    let ApiJson(mut body) = body.map_err(|e| invalid(&app, e))?;
    let request = (|| -> Result<GenerateRequest, ApiError> {
        body.common.check()?;
        if body.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::InvalidRequest(
                "tools: tool calls are not offered by vps-infer".into(),
            ));
        }
        if body.logprobs == Some(true) {
            return Err(ApiError::InvalidRequest(
                "logprobs: token probabilities are not offered by vps-infer".into(),
            ));
        }
        if let Some(format) = &body.response_format {
            if format.get("type").and_then(Value::as_str).unwrap_or("text") != "text" {
                return Err(ApiError::InvalidRequest(
                    "response_format: constrained output is not offered by vps-infer".into(),
                ));
            }
        }
        if body.common.max_tokens.is_none() {
            body.common.max_tokens = body.max_completion_tokens;
        }
        let (system, user) = conversation(&body.messages)?;
        body.common
            .translate(
                &app,
                PromptParts {
                    prompt: user,
                    chat: Some(ChatRequest { system }),
                    ..PromptParts::default()
                },
            )
            .build()
    })()
    .map_err(|e| invalid(&app, e))?;
    let watch = Watch::new(body.common.n_indent, body.common.t_max_predict_ms);
    let generation = Generation::start(&app, request, watch).await?;
    let id = new_id("chatcmpl");
    let created = unix_now();
    if body.common.stream {
        return Ok(stream(
            generation,
            ChatChunks {
                id,
                created,
                include_usage: body.common.include_usage(),
                role_sent: false,
            },
        ));
    }
    let finish = generation.collect().await?;
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": finish.model,
        "system_fingerprint": fingerprint(),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": finish.text},
            "logprobs": null,
            "finish_reason": finish.stop.openai(),
        }],
        "usage": finish.usage(),
        "timings": finish.timings(),
    }))
    .into_response())
}

/// Streamed events of `/v1/chat/completions`.
struct ChatChunks {
    id: String,
    created: u64,
    include_usage: bool,
    role_sent: bool,
}

impl ChatChunks {
    fn chunk(&self, model: &str, delta: Value, finish_reason: Option<&str>) -> SseEvent {
        data(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        }))
    }

    /// The first chunk names the role, as OpenAI's do.
    fn role(&mut self, model: &str) -> Option<SseEvent> {
        if self.role_sent {
            return None;
        }
        self.role_sent = true;
        Some(self.chunk(model, json!({"role": "assistant", "content": null}), None))
    }
}

impl Render for ChatChunks {
    fn text(&mut self, text: &str) -> Vec<SseEvent> {
        let mut events: Vec<SseEvent> = self.role("").into_iter().collect();
        events.push(self.chunk("", json!({ "content": text }), None));
        events
    }

    fn done(&mut self, finish: &Finish) -> Vec<SseEvent> {
        let mut events: Vec<SseEvent> = self.role(&finish.model).into_iter().collect();
        events.push(self.chunk(&finish.model, json!({}), Some(finish.stop.openai())));
        events.extend(closing_events(
            self.include_usage,
            &self.id,
            "chat.completion.chunk",
            self.created,
            finish,
        ));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![data(&envelope(error))]
    }
}

/// The end of an OpenAI stream: the usage chunk when the client asked for it
/// (`stream_options.include_usage`), then `[DONE]`.
fn closing_events(
    include_usage: bool,
    id: &str,
    object: &str,
    created: u64,
    finish: &Finish,
) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(2);
    if include_usage {
        events.push(data(&json!({
            "id": id,
            "object": object,
            "created": created,
            "model": finish.model,
            "system_fingerprint": fingerprint(),
            "choices": [],
            "usage": finish.usage(),
            "timings": finish.timings(),
        })));
    }
    events.push(SseEvent::default().data("[DONE]"));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, text: &str) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(text.into())),
        }
    }

    #[test]
    fn one_user_message_is_the_users_turn() {
        let (system, user) =
            conversation(&[message("system", "be brief"), message("user", "hi")]).unwrap();
        assert_eq!(system.as_deref(), Some("be brief"));
        assert_eq!(user, "hi");
    }

    #[test]
    fn earlier_turns_become_a_transcript() {
        let (system, user) = conversation(&[
            message("user", "a"),
            message("assistant", "b"),
            message("user", "c"),
        ])
        .unwrap();
        assert_eq!(system, None);
        assert_eq!(
            user,
            "The conversation so far:\n\nUser: a\n\nAssistant: b\n\nUser: c"
        );
    }

    #[test]
    fn a_conversation_must_end_with_the_user() {
        assert!(conversation(&[message("user", "a"), message("assistant", "b")]).is_err());
        assert!(conversation(&[message("system", "a")]).is_err());
        assert!(conversation(&[message("tool", "a"), message("user", "b")]).is_err());
    }
}
