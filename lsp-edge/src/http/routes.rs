//! The HTTP surface: translates between JSON/SSE and the completion service's types,
//! nothing more.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cerebrum_context::Language;
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::ApiError;
use super::{HttpState, MAX_BODY_BYTES};
use crate::backend::breaker::BreakerState;
use crate::backend::{BackendError, Backends};
use crate::pipeline::refactor::RefactorOutcome;
use crate::pipeline::script::{CompleteBody, Generation, GenerationEvent, Summary};
use crate::pipeline::stats::{breaker_state_name, prometheus_text, BackendStats, Gauges};
use crate::pipeline::PipelineError;

/// A JSON body whose errors use the envelope: 413 past the size limit, 400 naming
/// the field that is wrong. The content type is not checked, so `curl -d` works.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let example = example_body(req.uri().path());
        // A client that sends its body slowly is cut off, not waited for.
        let read = tokio::time::timeout(super::BODY_TIMEOUT, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the request body did not arrive within {}s",
                    super::BODY_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|err| {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(format!(
                        "request body is larger than the limit of {} KB",
                        MAX_BODY_BYTES / 1024
                    ))
                } else {
                    ApiError::InvalidRequest(format!("cannot read the request body: {err}"))
                }
            })?;
        let value = json_object(&bytes, example)?;
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|err| field_error("", err))
    }
}

/// What a body for this endpoint looks like, for error messages.
fn example_body(path: &str) -> &'static str {
    match path {
        "/v1/complete/batch" => r#"{"requests": [{"prompt": "..."}, ...]}"#,
        "/v1/refactor" => r#"{"code": "...", "language": "python"}"#,
        _ => r#"{"prompt": "..."}"#,
    }
}

/// The body as a JSON object, or an error that says what was wrong with it: empty,
/// not JSON at all (with serde's position), or JSON of another shape.
fn json_object(bytes: &[u8], example: &str) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(format!(
            "the request body is empty; expected a JSON object such as {example}"
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        ApiError::InvalidRequest(format!(
            "the request body is not valid JSON ({err}); expected a JSON object such as {example}"
        ))
    })?;
    let shape = match &value {
        Value::Object(_) => return Ok(value),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(ApiError::InvalidRequest(format!(
        "the request body is {shape}; expected a JSON object such as {example}"
    )))
}

/// A deserialisation error as a 400 that names the field, under `prefix`
/// (`requests[2]` for a batch item).
fn field_error<E: std::fmt::Display>(prefix: &str, err: serde_path_to_error::Error<E>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let field = match (prefix.is_empty(), path.as_str()) {
        (true, "." | "") => String::new(),
        (false, "." | "") => prefix.to_owned(),
        (true, path) => path.to_owned(),
        (false, path) => format!("{prefix}.{path}"),
    };
    if field.is_empty() {
        ApiError::InvalidRequest(format!("invalid JSON body: {inner}"))
    } else {
        ApiError::InvalidRequest(format!("{field}: {inner}"))
    }
}

/// Requires the bearer token on every route it wraps, when one is configured.
pub async fn require_token(State(app): State<HttpState>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.token else {
        return next.run(request).await;
    };
    let headers = request.headers();
    // A header that is there but not visible ASCII is a wrong token, not a missing one.
    let unreadable = [headers.get(header::AUTHORIZATION), headers.get("x-api-key")]
        .into_iter()
        .flatten()
        .any(|value| value.to_str().is_err());
    if unreadable {
        app.stats().unauthorized.inc();
        return ApiError::Authentication(
            "invalid token: the Authorization header holds characters other than visible \
             ASCII, which no token has"
                .into(),
        )
        .into_response();
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        });
    match given {
        Some(token) if bool::from(token.trim().as_bytes().ct_eq(expected.expose().as_bytes())) => {
            next.run(request).await
        }
        Some(_) => {
            app.stats().unauthorized.inc();
            ApiError::Authentication("invalid token".into()).into_response()
        }
        None => {
            app.stats().unauthorized.inc();
            ApiError::Authentication(
                "missing token: send it as `Authorization: Bearer <token>`".into(),
            )
            .into_response()
        }
    }
}

fn invalid(app: &HttpState, err: ApiError) -> ApiError {
    if matches!(
        err,
        ApiError::InvalidRequest(_) | ApiError::PayloadTooLarge(_)
    ) {
        app.stats().invalid.inc();
    }
    err
}

/// `POST /v1/complete`.
pub async fn complete(
    State(app): State<HttpState>,
    body: Result<ApiJson<CompleteBody>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let span = tracing::info_span!("request", method = "POST /v1/complete", id = app.next_id());
    async move {
        let ApiJson(body) = body.map_err(|err| invalid(&app, err))?;
        let stream = body.stream;
        let request = body
            .into_request(&app.edge().config.completion)
            .map_err(|message| invalid(&app, ApiError::InvalidRequest(message)))?;
        let prepared = app.completer.prepare(request, received).await?;
        let generation = app.completer.start(prepared).await?;
        if stream {
            Ok(sse(generation, app.shutdown.clone()).into_response())
        } else {
            Ok(Json(generation.collect().await?).into_response())
        }
    }
    .instrument(span)
    .await
}

#[derive(Serialize)]
struct Done {
    done: bool,
    #[serde(flatten)]
    summary: Summary,
}

fn json_event(value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().data("{}"))
}

/// One `data: {"token": ...}` event per token, then `data: {"done": true, ...}` (or
/// an error envelope) and the end. The stream owns the generation: when the client
/// goes away the body is dropped, and with it the backend stream and the slot.
fn sse(
    generation: Generation,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = futures::stream::unfold(Some((generation, shutdown)), |state| async move {
        let (mut generation, shutdown) = state?;
        let event = tokio::select! {
            event = generation.next() => event?,
            () = shutdown.cancelled() => {
                let err = ApiError::Unavailable {
                    message: "lsp-edge is shutting down".into(),
                    retry_after_s: 5,
                };
                return Some((Ok(json_event(&err.envelope())), None));
            }
        };
        match event {
            Ok(GenerationEvent::Token(token)) => Some((
                Ok(json_event(&json!({ "token": token }))),
                Some((generation, shutdown)),
            )),
            Ok(GenerationEvent::Done(summary)) => Some((
                Ok(json_event(&Done {
                    done: true,
                    summary: *summary,
                })),
                None,
            )),
            Err(err) => Some((Ok(json_event(&ApiError::from(err).envelope())), None)),
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub requests: Vec<Value>,
}

/// `POST /v1/complete/batch`: the items one after another, each taking a slot of
/// the shared limit in turn (vps-infer decodes one at a time anyway), answered in
/// order, each a result or an error envelope.
pub async fn batch(
    State(app): State<HttpState>,
    body: Result<ApiJson<BatchBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let span = tracing::info_span!(
        "request",
        method = "POST /v1/complete/batch",
        id = app.next_id()
    );
    async move {
        let ApiJson(body) = body.map_err(|err| invalid(&app, err))?;
        let max = app.edge().config.http.max_batch;
        if body.requests.len() > max {
            return Err(invalid(
                &app,
                ApiError::InvalidRequest(format!(
                    "requests: {} items, at most {max} per batch",
                    body.requests.len()
                )),
            ));
        }
        let mut results = Vec::with_capacity(body.requests.len());
        for (index, item) in body.requests.into_iter().enumerate() {
            let answer = batch_item(&app, index, item).await;
            results.push(
                match answer {
                    Ok(summary) => serde_json::to_value(summary),
                    Err(err) => serde_json::to_value(invalid(&app, err).envelope()),
                }
                .unwrap_or(Value::Null),
            );
        }
        Ok(Json(json!({ "results": results })))
    }
    .instrument(span)
    .await
}

async fn batch_item(app: &HttpState, index: usize, item: Value) -> Result<Summary, ApiError> {
    let received = Instant::now();
    let prefix = format!("requests[{index}]");
    let body: CompleteBody =
        serde_path_to_error::deserialize(item).map_err(|err| field_error(&prefix, err))?;
    if body.stream {
        return Err(ApiError::InvalidRequest(format!(
            "{prefix}.stream: batch items cannot stream"
        )));
    }
    let request = body
        .into_request(&app.edge().config.completion)
        .map_err(|message| ApiError::InvalidRequest(format!("{prefix}.{message}")))?;
    let prepared = app.completer.prepare(request, received).await?;
    Ok(app.completer.start(prepared).await?.collect().await?)
}

/// `POST /v1/refactor`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefactorBody {
    pub code: String,
    pub language: String,
    /// Default: refactor to async/await.
    pub instruction: Option<String>,
}

#[derive(Debug, Serialize)]
struct RefactorAnswer {
    /// The rewritten code, validated (it parses, keeps the name, and is async when
    /// the instruction asks for it).
    code: String,
    function: Option<String>,
    instruction: String,
    /// 2 when the first answer was rejected and the retry at temperature 0 passed.
    attempts: u32,
    tokens: u64,
    total_ms: f64,
}

/// Counts a refactor as cancelled unless it finished: the handler's future is
/// dropped when the client disconnects, and with it the stream to vps-infer.
struct CancelGuard<'a>(Option<&'a HttpState>);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if let Some(app) = self.0 {
            app.stats().cancelled.inc();
        }
    }
}

/// `POST /v1/refactor`: the code action's pipeline on a snippet (the refactor
/// module's, with its validation and one retry at temperature 0).
pub async fn refactor(
    State(app): State<HttpState>,
    body: Result<ApiJson<RefactorBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let received = Instant::now();
    let span = tracing::info_span!("request", method = "POST /v1/refactor", id = app.next_id());
    async move {
        let ApiJson(body) = body.map_err(|err| invalid(&app, err))?;
        if body.code.trim().is_empty() {
            return Err(invalid(
                &app,
                ApiError::InvalidRequest("code: must not be empty".into()),
            ));
        }
        let language = Language::from_name(&body.language);
        let instruction = body
            .instruction
            .as_deref()
            .filter(|text| !text.trim().is_empty());
        app.stats().requests.inc();
        let mut guard = CancelGuard(Some(&app));
        let cancel = app.shutdown.child_token();
        let outcome = crate::pipeline::refactor::refactor(
            app.edge(),
            &body.code,
            language,
            instruction,
            cancel,
        )
        .await;
        guard.0 = None;
        let outcome: RefactorOutcome = outcome.map_err(|err| {
            let stats = app.stats();
            match &err {
                PipelineError::Overloaded(_) => stats.shed.inc(),
                PipelineError::Backend(BackendError::BreakerOpen(_)) => stats.breaker_refused.inc(),
                PipelineError::UnsupportedLanguage(_)
                | PipelineError::NoFunction
                | PipelineError::AlreadyAsync(_)
                | PipelineError::EmptyInstruction => stats.invalid.inc(),
                PipelineError::Cancelled => stats.cancelled.inc(),
                _ => stats.failed.inc(),
            }
            ApiError::from(err)
        })?;
        app.stats().ok.inc();
        tracing::info!(
            attempts = outcome.attempts,
            tokens = outcome.tokens,
            "refactored"
        );
        let answer = RefactorAnswer {
            code: outcome.new_text,
            function: outcome.function,
            instruction: outcome.instruction,
            attempts: outcome.attempts,
            tokens: outcome.tokens,
            total_ms: received.elapsed().as_secs_f64() * 1000.0,
        };
        Ok(Json(serde_json::to_value(answer).unwrap_or(Value::Null)))
    }
    .instrument(span)
    .await
}

/// `GET /health`: the edge's state and every backend's, each probed now.
/// `backend` is the first backend (the only one, in the common case); `status` is
/// "ok" while every backend is.
pub async fn health(State(app): State<HttpState>) -> Json<Value> {
    let edge = app.edge();
    let members = edge.backends.members();
    let probes =
        members
            .iter()
            .zip(backend_stats(&edge.backends))
            .map(|(backend, stats)| async move {
                let client = &backend.client;
                let breaker = client.breaker().state();
                let probe = client.health().await;
                let reachable = probe.is_ok();
                let mut json = serde_json::to_value(&stats).unwrap_or(Value::Null);
                json["reachable"] = json!(reachable);
                json["breaker"] = breaker_json(&breaker);
                // The model prompts are shaped for when lsp-edge names none.
                json["default_model"] = json!(client.default_model());
                match probe {
                    Ok(health) => {
                        json["status"] = json!(health.status);
                        json["model_loaded"] = json!(health.model_loaded);
                    }
                    Err(err) => {
                        json["status"] = json!("unreachable");
                        json["model_loaded"] = Value::Null;
                        json["error"] = json!(err.to_string());
                    }
                }
                let healthy = reachable
                    && breaker == BreakerState::Closed
                    && json["status"].as_str() != Some("degraded");
                (healthy, json)
            });
    let probes = futures::future::join_all(probes).await;
    let healthy = probes.iter().all(|(healthy, _)| *healthy);
    let backends: Vec<Value> = probes.into_iter().map(|(_, json)| json).collect();
    Json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "edge": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": app.started.elapsed().as_secs(),
            "in_flight": edge.limiter.in_flight(),
            "max_in_flight": edge.limiter.max(),
        },
        "backend": backends.first().cloned().unwrap_or(Value::Null),
        "backends": backends,
    }))
}

fn breaker_json(state: &BreakerState) -> Value {
    match state {
        BreakerState::Open { cooldown, reason } => json!({
            "state": breaker_state_name(state),
            "reason": reason,
            "cooldown_s": cooldown.as_secs_f64(),
        }),
        _ => json!({ "state": breaker_state_name(state) }),
    }
}

fn gauges(app: &HttpState) -> Gauges {
    let edge = app.edge();
    let (cache_entries, cache_bytes, cache_max_bytes) = app.completer.cache_usage();
    Gauges {
        in_flight: edge.limiter.in_flight(),
        max_in_flight: edge.limiter.max(),
        breaker: overall_breaker(&edge.backends),
        cache_entries,
        cache_bytes,
        cache_max_bytes,
        backends: backend_stats(&edge.backends),
    }
}

/// Whether lsp-edge can generate: closed while any backend's breaker is, else
/// half-open while any is, else the first backend's open state.
fn overall_breaker(backends: &Backends) -> BreakerState {
    let states: Vec<BreakerState> = backends
        .members()
        .iter()
        .map(|backend| backend.client.breaker().state())
        .collect();
    for wanted in [BreakerState::Closed, BreakerState::HalfOpen] {
        if states.contains(&wanted) {
            return wanted;
        }
    }
    states.into_iter().next().unwrap_or(BreakerState::Closed)
}

fn backend_stats(backends: &Backends) -> Vec<BackendStats> {
    backends
        .members()
        .iter()
        .zip(backends.documents())
        .map(|(backend, documents)| {
            let client = &backend.client;
            let config = client.config();
            let breaker = client.breaker().state();
            BackendStats {
                name: client.name().to_owned(),
                kind: client.kind().name(),
                url: client.display_url().to_owned(),
                breaker: breaker_state_name(&breaker),
                reason: match breaker {
                    BreakerState::Open { reason, .. } => Some(reason),
                    _ => None,
                },
                weight: config.weight,
                in_flight: client.usage().in_flight(),
                max_in_flight: config.max_in_flight,
                generations: client.usage().started(),
                failures: client.usage().failed(),
                documents,
            }
        })
        .collect()
}

/// `GET /v1/stats`.
pub async fn stats(State(app): State<HttpState>) -> Json<crate::pipeline::stats::StatsSnapshot> {
    Json(app.stats().snapshot(gauges(&app)))
}

/// `GET /metrics`: the same figures in Prometheus' text format.
pub async fn metrics(State(app): State<HttpState>) -> Response {
    let text = prometheus_text(&app.stats().snapshot(gauges(&app)));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
