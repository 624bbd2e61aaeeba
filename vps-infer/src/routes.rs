//! The HTTP surface: translates between JSON/SSE and the engine's types, nothing more.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::prompt::{ChatRequest, FimOrder};
use crate::engine::{
    self, Engine, EngineError, Event, Extra, GenerateRequest, Priority, PromptParts, Sampling,
};
use crate::error::ApiError;
use crate::guard::{Refusal, ResourceGuard};
use crate::stats::Stats;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub stats: Arc<Stats>,
    pub guard: Arc<ResourceGuard>,
    pub api_key: Option<Arc<str>>,
    pub started: Instant,
    /// Cancelled on SIGTERM: open streams end.
    pub shutdown: CancellationToken,
    pub max_body_bytes: usize,
}

/// The whole service as a router, so tests can call it without a socket.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/inference", post(inference))
        .route("/v1/stats", get(stats))
        .route("/v1/models", get(models))
        .route("/v1/cleanup", post(cleanup))
        .merge(crate::compat::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .merge(protected)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// 405 with the envelope (axum's own has an empty body).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; see the README for each endpoint's method",
        uri.path()
    ))
}

async fn require_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.api_key else {
        return next.run(request).await;
    };
    let headers = request.headers();
    // A header that is there but not visible ASCII is a wrong key, not a missing one.
    let unreadable = [headers.get("x-api-key"), headers.get(header::AUTHORIZATION)]
        .into_iter()
        .flatten()
        .any(|v| v.to_str().is_err());
    if unreadable {
        Stats::add(&app.stats.rejected_auth, 1);
        return ApiError::Authentication(
            "invalid API key: the X-API-Key (or Authorization) header holds characters other \
             than visible ASCII, which no key has"
                .into(),
        )
        .into_response();
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match given {
        Some(key) if bool::from(key.as_bytes().ct_eq(expected.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => {
            Stats::add(&app.stats.rejected_auth, 1);
            ApiError::Authentication("invalid API key".into()).into_response()
        }
        None => {
            Stats::add(&app.stats.rejected_auth, 1);
            ApiError::Authentication(
                "missing API key: send it in the X-API-Key header (or Authorization: Bearer)"
                    .into(),
            )
            .into_response()
        }
    }
}

/// JSON body whose errors use our envelope: 413 past the size limit, 400 naming the
/// field that is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let expected = match req.uri().path() {
            "/v1/inference" => r#"a JSON object such as {"prompt": "..."}"#,
            _ => "a JSON object",
        };
        // A client that sends its body slowly is cut off, not waited for.
        let read = tokio::time::timeout(crate::BODY_TIMEOUT, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the request body did not arrive within {}s",
                    crate::BODY_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(
                        "request body is larger than the limit of 64 KB".into(),
                    )
                } else {
                    ApiError::InvalidRequest(format!("cannot read the request body: {e}"))
                }
            })?;
        let value = json_object(&bytes, expected)?;
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    ApiError::InvalidRequest(format!("invalid request body: {inner}"))
                } else {
                    ApiError::InvalidRequest(format!("{path}: {inner}"))
                }
            })
    }
}

/// The body as a JSON object, or an error that says what was wrong with it (empty,
/// not JSON at all with serde's position, or JSON of another shape) and what the
/// endpoint expects.
fn json_object(bytes: &[u8], expected: &str) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(format!(
            "the request body is empty; expected {expected}"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "the request body is not valid JSON ({e}); expected {expected}"
        ))
    })?;
    let shape = match &value {
        serde_json::Value::Object(_) => return Ok(value),
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Null => "null",
    };
    Err(ApiError::InvalidRequest(format!(
        "the request body is {shape}; expected {expected}"
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceBody {
    pub prompt: String,
    pub suffix: Option<String>,
    #[serde(default)]
    pub extra: Vec<Extra>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub seed: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    /// Treat `prompt` as the user's turn in the model's chat template.
    #[serde(default)]
    pub chat: bool,
    /// System message for `chat`.
    pub system: Option<String>,
    /// `psm` (default) or `spm`: where `suffix` goes in the prompt.
    #[serde(default)]
    pub fim_order: FimOrder,
    /// `interactive`, `instruction` or `background`; by default a chat request or
    /// one without a suffix asking for more than 256 tokens is an instruction, any
    /// other interactive (`Priority::default_for`).
    pub priority: Option<Priority>,
    /// Lines the answer's first line must not be (trailing whitespace aside): when
    /// decoding arrives at one, the engine backs up to the step where a token that
    /// leaves every such line behind makes the likeliest text, and goes on from there.
    /// Editors send the lines next to the cursor, which small fill-in-the-middle
    /// models tend to copy.
    #[serde(default)]
    pub reject_first_line: Vec<String>,
    /// The deepest indentation the answer's first line may have (spaces and tabs):
    /// a token that would indent it deeper is passed over for the likeliest one that
    /// does not. Editors send the cursor's indentation when it stands after one
    /// (`""`: none), where small models go on inside a deeper block.
    pub first_line_max_indent: Option<String>,
    /// The answer's first line has text: a line break, or the end of the answer,
    /// before any is passed over for the likeliest token that is not one. Editors
    /// ask for it when the cursor's line is empty, where a model may end the line at
    /// once and the answer shows nothing.
    #[serde(default)]
    pub first_line_not_blank: bool,
}

/// The longest `first_line_max_indent`.
const MAX_INDENT_BYTES: usize = 256;

/// Most lines in `reject_first_line`, and the longest.
const MAX_REJECTED_LINES: usize = 8;
const MAX_REJECTED_LINE_BYTES: usize = 1024;

impl InferenceBody {
    fn validate(self, default_model: &str) -> Result<(GenerateRequest, bool), ApiError> {
        let max_tokens = self.max_tokens.unwrap_or(128);
        if !(1..=4096).contains(&max_tokens) {
            return Err(ApiError::InvalidRequest(format!(
                "max_tokens: {max_tokens} is outside 1..=4096"
            )));
        }
        let temperature = self.temperature.unwrap_or(0.2);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::InvalidRequest(format!(
                "temperature: {temperature} is outside 0..=2"
            )));
        }
        let top_p = self.top_p.unwrap_or(0.95);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::InvalidRequest(format!(
                "top_p: {top_p} is outside (0, 1]"
            )));
        }
        if self.system.is_some() && !self.chat {
            return Err(ApiError::InvalidRequest(
                "system: only allowed with \"chat\": true".into(),
            ));
        }
        if self.stop.len() > 16 {
            return Err(ApiError::InvalidRequest("stop: at most 16 strings".into()));
        }
        if self.reject_first_line.len() > MAX_REJECTED_LINES {
            return Err(ApiError::InvalidRequest(format!(
                "reject_first_line: at most {MAX_REJECTED_LINES} lines"
            )));
        }
        for (k, line) in self.reject_first_line.iter().enumerate() {
            if line.contains('\n') {
                return Err(ApiError::InvalidRequest(format!(
                    "reject_first_line[{k}]: holds a line break; each entry is one line"
                )));
            }
            if line.len() > MAX_REJECTED_LINE_BYTES {
                return Err(ApiError::InvalidRequest(format!(
                    "reject_first_line[{k}]: {} bytes; at most {MAX_REJECTED_LINE_BYTES}",
                    line.len()
                )));
            }
        }
        if let Some(indent) = &self.first_line_max_indent {
            if indent.len() > MAX_INDENT_BYTES {
                return Err(ApiError::InvalidRequest(format!(
                    "first_line_max_indent: {} bytes; at most {MAX_INDENT_BYTES}",
                    indent.len()
                )));
            }
            if !indent.bytes().all(|b| b == b' ' || b == b'\t') {
                return Err(ApiError::InvalidRequest(
                    "first_line_max_indent: only spaces and tabs".into(),
                ));
            }
        }
        if self.prompt.is_empty() && self.suffix.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::InvalidRequest("prompt: must not be empty".into()));
        }
        let parts = PromptParts {
            prompt: self.prompt,
            suffix: self.suffix,
            extra: self.extra,
            chat: self.chat.then_some(ChatRequest {
                system: self.system,
            }),
            fim_order: self.fim_order,
        };
        let request = GenerateRequest {
            model: self.model.unwrap_or_else(|| default_model.to_string()),
            priority: self
                .priority
                .unwrap_or_else(|| Priority::default_for(&parts, max_tokens)),
            parts,
            sampling: Sampling {
                max_tokens,
                temperature,
                top_p,
                stop: self.stop,
                seed: self.seed.unwrap_or(0x5eed),
                reject_first_line: self.reject_first_line,
                first_line_max_indent: self.first_line_max_indent,
                first_line_not_blank: self.first_line_not_blank,
            },
        };
        Ok((request, self.stream))
    }
}

async fn inference(
    State(app): State<AppState>,
    body: Result<ApiJson<InferenceBody>, ApiError>,
) -> Result<Response, ApiError> {
    let (request, stream) = body
        .and_then(|ApiJson(body)| body.validate(app.engine.default_model()))
        .inspect_err(|_| Stats::add(&app.stats.rejected_invalid, 1))?;
    let (events, _) = start_generation(&app, request).await?;
    if stream {
        Ok(Sse::new(sse_stream(events, app.shutdown.clone()))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        let outcome = engine::collect(events).await?;
        Ok(Json(outcome).into_response())
    }
}

/// What the engine reported when it took a request.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
}

/// Checks the guards, queues `request` and waits until the engine takes it; every route
/// that generates goes through here, so they share guards, queue and statistics.
/// Errors found before the first token (context too long, no FIM tokens, model failed
/// to load) are answered with their status code, not inside a stream.
pub async fn start_generation(
    app: &AppState,
    request: GenerateRequest,
) -> Result<(mpsc::Receiver<Event>, Started), ApiError> {
    if let Err(why) = app.guard.check() {
        let counter = match why {
            Refusal::Cpu { .. } => &app.stats.rejected_cpu,
            Refusal::Memory { .. } => &app.stats.rejected_memory,
        };
        Stats::add(counter, 1);
        return Err(EngineError::from(why).into());
    }
    let mut events = app.engine.generate(request)?;
    match events.recv().await {
        Some(Event::Started {
            prompt_tokens,
            cached_tokens,
        }) => Ok((
            events,
            Started {
                prompt_tokens,
                cached_tokens,
            },
        )),
        Some(Event::Error(e)) => Err(e.into()),
        Some(other) => Err(ApiError::Server(format!(
            "engine answered {other:?} before starting"
        ))),
        None => Err(ApiError::Server("the engine dropped the request".into())),
    }
}

/// One SSE event per token, then `done` (or an error) and the end. Dropping the stream
/// (client gone, server stopping) drops the receiver, which cancels the decode.
fn sse_stream(
    events: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(Some((events, shutdown)), |state| async move {
        let (mut events, shutdown) = state?;
        let event = tokio::select! {
            e = events.recv() => e,
            () = shutdown.cancelled() => {
                let e = ApiError::unavailable("server is shutting down", 5);
                return Some((Ok(json_event(&e.envelope())), None));
            }
        };
        let (data, more) = match event? {
            Event::Token(token) => (json_event(&json!({ "token": token })), true),
            Event::Done(outcome) => (
                json_event(&Done {
                    done: true,
                    outcome,
                }),
                false,
            ),
            Event::Error(e) => (json_event(&ApiError::from(e).envelope()), false),
            Event::Started { .. } => (SseEvent::default().comment("started"), true),
        };
        Some((Ok(data), more.then_some((events, shutdown))))
    })
}

#[derive(Serialize)]
struct Done {
    done: bool,
    #[serde(flatten)]
    outcome: engine::Outcome,
}

fn json_event(value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().data("{}"))
}

async fn health(State(app): State<AppState>) -> Json<serde_json::Value> {
    let status = app.engine.status();
    let state = if status.loading.is_some() {
        "loading"
    } else if app.guard.check().is_err() || status.last_load_error.is_some() {
        "degraded"
    } else {
        "ok"
    };
    Json(json!({
        "status": state,
        "model_loaded": status.loaded,
        "model_loading": status.loading,
        "default_model": app.engine.default_model(),
        "last_load_error": status.last_load_error,
        "cpu_percent": app.guard.other_cpu_percent(),
        "memory_available_mb": app.guard.available_mb(),
        "uptime_s": app.started.elapsed().as_secs(),
    }))
}

async fn stats(State(app): State<AppState>) -> Json<crate::stats::StatsSnapshot> {
    Json(app.stats.snapshot(
        app.engine.status().loaded,
        app.engine.queue_depth(),
        app.started,
    ))
}

/// OpenAI's list shape (`object`, `data[].id`) with our fields added to each entry, and
/// our own `models` list beside it: one answer serves OpenAI clients and ours.
async fn models(State(app): State<AppState>) -> Json<serde_json::Value> {
    let loaded = app.engine.status().loaded;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let models: Vec<_> = app
        .engine
        .models()
        .iter()
        .map(|(name, m)| {
            json!({
                "name": name,
                "path": m.path,
                "size": std::fs::metadata(&m.path).map(|md| md.len()).ok(),
                "ctx_size": m.ctx_size,
                "gpu_layers": m.gpu_layers,
                "loaded": loaded.as_deref() == Some(name.as_str()),
                "default": name == app.engine.default_model(),
            })
        })
        .collect();
    let data: Vec<_> = models
        .iter()
        .map(|m| {
            let mut entry = json!({
                "id": m["name"],
                "object": "model",
                "created": created,
                "owned_by": "vps-infer",
            });
            if let (Some(entry), Some(ours)) = (entry.as_object_mut(), m.as_object()) {
                entry.extend(ours.clone());
            }
            entry
        })
        .collect();
    Json(json!({ "object": "list", "data": data, "models": models }))
}

async fn cleanup(State(app): State<AppState>) -> Result<Response, ApiError> {
    let report = app.engine.unload().await?;
    Ok(Json(report).into_response())
}
