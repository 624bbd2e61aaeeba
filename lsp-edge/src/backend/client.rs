//! The client for one backend: one pooled, kept-alive HTTP client, streamed
//! generation through the circuit breaker, and the health probe. It knows nothing of
//! LSP; what each kind of backend expects on the wire is [`super::wire`]'s.
//!
//! Dropping a [`TokenStream`] drops the HTTP response, which makes the backend stop
//! decoding within one token: that is how cancellation reaches the model.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::wire::{self, ErrorEnvelope, EventParser, Framing};
use crate::backend::breaker::{BreakerOpen, BreakerPermit, CircuitBreaker};
use crate::config::{BackendConfig, BackendKind, FimOrder, Secret};

/// One context chunk placed before the prompt (`{"label", "text"}` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraChunk {
    pub label: String,
    pub text: String,
}

/// `POST /v1/inference`'s body. With `suffix` it is a fill-in-the-middle request and
/// vps-infer builds the model's FIM prompt itself (`prompt` is then the prefix).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InferenceRequest {
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<ExtraChunk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub stream: bool,
    /// Sent only when it is not vps-infer's default.
    #[serde(skip_serializing_if = "FimOrder::is_psm")]
    pub fim_order: FimOrder,
    /// Lines the answer's first line must not be (vps-infer only; other kinds of
    /// backend do not take it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reject_first_line: Vec<String>,
    /// The deepest indentation the answer's first line may have (vps-infer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line_max_indent: Option<String>,
    /// The answer's first line has text (vps-infer only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first_line_not_blank: bool,
}

/// The final event's statistics.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GenerationStats {
    pub text: String,
    /// The model vps-infer used (its default when the request named none).
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub inference_time: f64,
    pub tokens_per_second: f64,
    pub stop_reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Token(String),
    Done(GenerationStats),
}

/// `GET /health`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Health {
    pub status: String,
    pub model_loaded: Option<String>,
    /// The model that answers a request naming none (vps-infer; for `openai` and
    /// `ollama`, the configured one).
    pub default_model: Option<String>,
}

/// The model a backend answers with when a request names none, as it last said: in
/// `/health`, or in the final event of an answer to such a request. lsp-edge shapes
/// a prompt for it when its configuration names no model.
#[derive(Debug, Default)]
pub struct DefaultModel(std::sync::Mutex<Option<String>>);

impl DefaultModel {
    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    fn set(&self, model: &str) {
        let mut slot = self.lock();
        if slot.as_deref() != Some(model) {
            tracing::debug!(model, "the backend's default model");
            *slot = Some(model.to_owned());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A name, written whole: a panic elsewhere cannot leave it half-written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    BreakerOpen(#[from] BreakerOpen),
    #[error("cannot reach {kind} at {url}: {message}")]
    Connect {
        kind: BackendKind,
        url: String,
        message: String,
    },
    #[error("the backend sent no token within {}s", .0.as_secs_f32())]
    FirstTokenTimeout(Duration),
    #[error("the backend did not finish within {}s", .0.as_secs_f32())]
    TotalTimeout(Duration),
    #[error("the backend refused the request ({status}{}): {message}", spaced(.kind))]
    Api {
        status: u16,
        kind: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the backend's stream broke off: {0}")]
    Stream(String),
    #[error("the backend sent something unexpected: {0}")]
    Protocol(String),
}

impl BackendError {
    /// Whether this says the backend is unwell (and so counts for the breaker):
    /// connection errors, timeouts, 5xx. A 4xx is a healthy service saying no, and
    /// so is llama-server's 501 for a model without FIM tokens.
    pub fn counts_as_failure(&self) -> bool {
        if self.is_fim_unsupported() {
            return false;
        }
        match self {
            BackendError::Connect { .. }
            | BackendError::FirstTokenTimeout(_)
            | BackendError::TotalTimeout(_)
            | BackendError::Stream(_) => true,
            BackendError::Api { status, .. } => *status >= 500,
            BackendError::BreakerOpen(_) | BackendError::Protocol(_) => false,
        }
    }

    /// Whether the backend refused a fill-in-the-middle request because the model
    /// has no FIM tokens: vps-infer's 400 `invalid_request_error`, or llama-server's
    /// 501 `not_supported_error` ("Infill is not supported by this model").
    pub fn is_fim_unsupported(&self) -> bool {
        match self {
            BackendError::Api {
                status: 400 | 501,
                kind,
                message,
                ..
            } if kind == "invalid_request_error" || kind == "not_supported_error" => {
                let message = message.to_ascii_lowercase();
                message.contains("fim") || message.contains("fill-in") || message.contains("infill")
            }
            _ => false,
        }
    }

    /// Whether another backend may well succeed where this one failed: the backend
    /// is unwell, its breaker is open, or it is too busy. A request it judged bad
    /// would be bad anywhere.
    pub fn worth_another_backend(&self) -> bool {
        self.counts_as_failure()
            || matches!(
                self,
                BackendError::BreakerOpen(_) | BackendError::Api { status: 429, .. }
            )
    }
}

/// ` kind`, or nothing for an error without a type.
fn spaced(kind: &str) -> String {
    if kind.is_empty() {
        String::new()
    } else {
        format!(" {kind}")
    }
}

/// The client for one backend, with its own breaker.
#[derive(Debug, Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` with any credentials and query replaced by `***`: what logs,
    /// `/health` and error messages show.
    display_url: String,
    api_key: Option<Secret>,
    config: BackendConfig,
    /// `config`'s display name.
    name: String,
    breaker: Arc<CircuitBreaker>,
    usage: Arc<Usage>,
    default_model: Arc<DefaultModel>,
}

impl BackendClient {
    pub fn new(
        config: &BackendConfig,
        breaker: Arc<CircuitBreaker>,
    ) -> Result<BackendClient, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| BackendError::Protocol(format!("cannot build HTTP client: {err}")))?;
        let default_model = Arc::new(DefaultModel::default());
        // `openai` and `ollama` backends are always asked for their configured model
        // (`wire::model_for`); a vps-infer is asked for the request's.
        if let (Some(model), BackendKind::Openai | BackendKind::Ollama) =
            (&config.model, config.kind)
        {
            default_model.set(model);
        }
        Ok(BackendClient {
            default_model,
            http,
            base_url: config.url.trim_end_matches('/').to_owned(),
            display_url: redact_url(config.url.trim_end_matches('/')),
            api_key: config.api_key.clone(),
            name: config.display_name(),
            config: wire::resolve(config),
            breaker,
            usage: Arc::default(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The model this backend answers a request naming none with, once known.
    pub fn default_model(&self) -> Option<String> {
        self.default_model.get()
    }

    /// Asks a vps-infer for its default model (`/health`), every 10 s until it
    /// answers; other kinds of backend are asked for their configured model, known
    /// already. Answers keep it up to date afterwards.
    pub async fn learn_default_model(&self) {
        if self.config.kind != BackendKind::VpsInfer {
            return;
        }
        loop {
            match self.health().await {
                Ok(health) => {
                    if let Some(model) = health.default_model {
                        self.default_model.set(&model);
                    }
                    return;
                }
                Err(err) => {
                    tracing::debug!(backend = %self.name, "default model not known yet: {err}");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }

    /// The base URL without credentials, for anything a person or client may read.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The name logs and stats show (`backends[].name`, or `KIND@HOST:PORT`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> BackendKind {
        self.config.kind
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Starts a streamed generation. The breaker refuses at once while open.
    pub async fn stream(&self, request: &InferenceRequest) -> Result<TokenStream, BackendError> {
        let mut attempt = Attempt::new(self.breaker.admit()?, &self.usage);
        let started = Instant::now();
        let first_deadline = started + self.config.first_token_timeout();
        let total_deadline = started + self.config.total_timeout();

        let mut request = request.clone();
        request.stream = true;
        let wire = match wire::build(&self.config, &request) {
            Ok(wire) => wire,
            Err(err) => {
                attempt.settle(&err);
                return Err(err);
            }
        };
        let accept = match wire.framing {
            Framing::Sse => "text/event-stream",
            Framing::JsonLines => "application/x-ndjson",
        };
        let mut builder = self
            .http
            .post(format!("{}{}", self.base_url, wire.path))
            .header(reqwest::header::ACCEPT, accept)
            .json(&wire.body);
        if let Some(key) = &self.api_key {
            let (name, value) = wire::auth_header(self.config.kind, key.expose());
            builder = builder.header(name, value);
        }

        let response = match tokio::time::timeout_at(first_deadline, builder.send()).await {
            Err(_) => {
                let err = BackendError::FirstTokenTimeout(self.config.first_token_timeout());
                attempt.settle(&err);
                return Err(err);
            }
            Ok(Err(err)) => {
                let err = self.transport_error(&err);
                attempt.settle(&err);
                return Err(err);
            }
            Ok(Ok(response)) => response,
        };

        let status = response.status();
        if !status.is_success() {
            let err = api_error(response, first_deadline).await;
            attempt.settle(&err);
            return Err(err);
        }

        Ok(TokenStream {
            learns_default: request.model.is_none().then(|| self.default_model.clone()),
            body: Box::pin(response.bytes_stream()),
            sse: SseDecoder::new(wire.framing),
            parser: EventParser::new(self.config.kind),
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            first_deadline,
            total_deadline,
            first_token_timeout: self.config.first_token_timeout(),
            total_timeout: self.config.total_timeout(),
            attempt,
            got_token: false,
            finished: false,
            lead: String::new(),
        })
    }

    /// The health probe, outside the breaker (it is how a loading model is
    /// noticed): vps-infer's `/health`; for other kinds, whether the server answers
    /// (`status` "ok", or "loading" for llama-server's 503 while it loads).
    pub async fn health(&self) -> Result<Health, BackendError> {
        let mut request = self
            .http
            .get(format!(
                "{}{}",
                self.base_url,
                wire::health_path(&self.config)
            ))
            .timeout(self.config.connect_timeout() + Duration::from_secs(2));
        if let Some(key) = &self.api_key {
            let (name, value) = wire::auth_header(self.config.kind, key.expose());
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
        let kind = self.config.kind;
        if kind == BackendKind::LlamaServer && response.status().as_u16() == 503 {
            return Ok(Health {
                status: "loading".into(),
                ..Health::default()
            });
        }
        if kind != BackendKind::VpsInfer && response.status().is_success() {
            return Ok(Health {
                status: "ok".into(),
                model_loaded: self.config.model.clone(),
                default_model: self.config.model.clone(),
            });
        }
        if !response.status().is_success() {
            return Err(BackendError::Api {
                status: response.status().as_u16(),
                kind: String::new(),
                message: "health check failed".into(),
                retry_after: None,
            });
        }
        response
            .json::<Health>()
            .await
            .map_err(|err| BackendError::Protocol(format!("health: {err}")))
    }

    fn transport_error(&self, err: &reqwest::Error) -> BackendError {
        if err.is_timeout() {
            return BackendError::FirstTokenTimeout(self.config.first_token_timeout());
        }
        // reqwest's messages quote the request URL, credentials included.
        let mut message = error_chain(err);
        if let Some(secret) = url_secrets(&self.base_url) {
            for part in secret {
                let mask = if part.starts_with('?') {
                    "?***"
                } else {
                    "***@"
                };
                message = message.replace(&part, mask);
            }
        }
        BackendError::Connect {
            kind: self.config.kind,
            url: self.display_url.clone(),
            message,
        }
    }
}

/// `url` with its user name, password and query replaced by `***`, so that logs and
/// `/health` never show credentials embedded in the backend URL.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    let had_credentials = !parsed.username().is_empty() || parsed.password().is_some();
    if had_credentials {
        let _ = parsed.set_username("***");
        let _ = parsed.set_password(None);
    }
    if parsed.query().is_some() {
        parsed.set_query(Some("***"));
    }
    if !had_credentials && parsed.query().is_none() {
        return url.to_owned();
    }
    parsed.as_str().trim_end_matches('/').to_owned()
}

/// The secret parts of `url` as they appear in its serialisation (percent-encoded):
/// `user:password@` and `?query`, whole, so that nothing else in a message matches.
fn url_secrets(url: &str) -> Option<Vec<String>> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let mut parts = Vec::new();
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let mut userinfo = parsed.username().to_owned();
        if let Some(password) = parsed.password() {
            userinfo = format!("{userinfo}:{password}");
        }
        parts.push(format!("{userinfo}@"));
    }
    if let Some(query) = parsed.query() {
        parts.push(format!("?{query}"));
    }
    (!parts.is_empty()).then_some(parts)
}

/// The innermost cause is the informative part ("Connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

async fn api_error(response: reqwest::Response, deadline: Instant) -> BackendError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = match tokio::time::timeout_at(deadline, response.text()).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    };
    let (kind, message) = match serde_json::from_str::<ErrorEnvelope>(&text) {
        Ok(envelope) => {
            let (_, kind, message) = envelope.error.into_parts();
            (kind, message)
        }
        Err(_) => (String::new(), text.chars().take(200).collect()),
    };
    BackendError::Api {
        status,
        kind,
        message,
        retry_after,
    }
}

/// What one backend has done, for routing and `/v1/stats`.
#[derive(Debug, Default)]
pub struct Usage {
    in_flight: AtomicUsize,
    started: AtomicU64,
    failed: AtomicU64,
}

impl Usage {
    /// Generations running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Generations sent.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Generations that failed in a way that counts against the backend.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// One generation's hold on its backend: the breaker's permit, settled once with
/// the outcome, and a place in the backend's in-flight count while it lives.
#[derive(Debug)]
struct Attempt {
    permit: Option<BreakerPermit>,
    usage: Arc<Usage>,
}

impl Attempt {
    fn new(permit: BreakerPermit, usage: &Arc<Usage>) -> Attempt {
        usage.in_flight.fetch_add(1, Ordering::Relaxed);
        usage.started.fetch_add(1, Ordering::Relaxed);
        Attempt {
            permit: Some(permit),
            usage: usage.clone(),
        }
    }

    fn succeeded(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.succeeded();
        }
    }

    /// Ends with `err`: a failure for the breaker when it says the backend is
    /// unwell, else the backend did its job.
    fn settle(&mut self, err: &BackendError) {
        if !err.counts_as_failure() {
            return self.succeeded();
        }
        if let Some(permit) = self.permit.take() {
            self.usage.failed.fetch_add(1, Ordering::Relaxed);
            permit.failed(err.to_string());
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // A permit dropped unsettled (a cancelled request) counts as neither.
        self.usage.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A streamed generation in progress. Dropping it cancels the generation.
pub struct TokenStream {
    body: ByteStream,
    sse: SseDecoder,
    parser: EventParser,
    /// Events' data not yet parsed.
    pending: VecDeque<String>,
    /// Parsed events not yet passed on (an event may hold a token and the end).
    ready: VecDeque<StreamEvent>,
    first_deadline: Instant,
    total_deadline: Instant,
    first_token_timeout: Duration,
    total_timeout: Duration,
    attempt: Attempt,
    got_token: bool,
    finished: bool,
    /// Whitespace the prompt left out at its end, still to be taken off the start
    /// of the answer ([`TokenStream::expect_leading`]).
    lead: String,
    /// Where the model named in the final event goes, when the request named none.
    learns_default: Option<Arc<DefaultModel>>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("got_token", &self.got_token)
            .field("finished", &self.finished)
            .finish()
    }
}

impl TokenStream {
    /// The prompt was sent without `lead` (spaces and tabs) at its end: take as much
    /// of it as the answer repeats off the answer's start, so that the text still
    /// fits the cursor. An answer that starts otherwise is passed on as it is.
    pub fn expect_leading(&mut self, lead: String) {
        self.lead = lead;
    }

    /// The next token, or the final statistics; `None` after the end.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, BackendError>> {
        loop {
            match self.next_event().await? {
                Ok(StreamEvent::Token(token)) if !self.lead.is_empty() => {
                    let token = take_lead(&mut self.lead, token);
                    // A token of indentation alone says nothing yet.
                    if !token.is_empty() {
                        return Some(Ok(StreamEvent::Token(token)));
                    }
                }
                other => return Some(other),
            }
        }
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, BackendError>> {
        if self.finished {
            return None;
        }
        let result = self.next_inner().await;
        match &result {
            Ok(StreamEvent::Token(_)) => self.got_token = true,
            Ok(StreamEvent::Done(done)) => {
                self.finished = true;
                self.attempt.succeeded();
                if let (Some(slot), Some(model)) = (&self.learns_default, &done.model) {
                    slot.set(model);
                }
            }
            Err(err) => {
                self.finished = true;
                self.attempt.settle(err);
            }
        }
        Some(result)
    }

    async fn next_inner(&mut self) -> Result<StreamEvent, BackendError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            while let Some(data) = self.pending.pop_front() {
                self.ready.extend(self.parser.parse(&data)?);
                if let Some(event) = self.ready.pop_front() {
                    return Ok(event);
                }
            }
            let (deadline, timeout) = if self.got_token {
                (
                    self.total_deadline,
                    BackendError::TotalTimeout(self.total_timeout),
                )
            } else if self.first_deadline <= self.total_deadline {
                (
                    self.first_deadline,
                    BackendError::FirstTokenTimeout(self.first_token_timeout),
                )
            } else {
                (
                    self.total_deadline,
                    BackendError::TotalTimeout(self.total_timeout),
                )
            };
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(timeout),
                Ok(None) => {
                    return Err(BackendError::Stream(
                        "the stream ended before its final event".into(),
                    ))
                }
                Ok(Some(Err(err))) => return Err(BackendError::Stream(error_chain(&err))),
                Ok(Some(Ok(bytes))) => {
                    self.pending.extend(self.sse.push(&bytes));
                    if self.sse.buffered() > MAX_SSE_EVENT_BYTES {
                        return Err(BackendError::Protocol(format!(
                            "an SSE event longer than {} KB",
                            MAX_SSE_EVENT_BYTES / 1024
                        )));
                    }
                }
            }
        }
    }
}

/// Takes as much of `lead` off the start of `token` as the token repeats; once the
/// answer leaves `lead`, nothing more is taken.
fn take_lead(lead: &mut String, token: String) -> String {
    let common = token
        .bytes()
        .zip(lead.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    if common == token.len() {
        lead.drain(..common);
        return String::new();
    }
    lead.clear();
    // `common` counts ASCII whitespace bytes, so it ends on a character boundary.
    token[common..].to_owned()
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // Dropped by its reader (cancelled, or trimmed to an end): a stream that has
        // produced tokens shows a healthy backend; one that has not shows nothing.
        if self.got_token {
            self.attempt.succeeded();
        }
    }
}

/// Splits a response body into its events' data: server-sent events' `data`, or
/// the lines of a JSON-lines stream.
#[derive(Debug)]
pub struct SseDecoder {
    framing: Framing,
    buffer: Vec<u8>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(Framing::Sse)
    }
}

/// An event (one token, or the final statistics) is far smaller: a stream that
/// sends this much without an event end is broken, and is not buffered further.
const MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

impl SseDecoder {
    pub fn new(framing: Framing) -> SseDecoder {
        SseDecoder {
            framing,
            buffer: Vec::new(),
        }
    }

    /// Bytes held for an event not yet ended.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend(bytes.iter().filter(|&&b| b != b'\r'));
        let mut events = Vec::new();
        if self.framing == Framing::JsonLines {
            while let Some(end) = find(&self.buffer, b"\n") {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                if !line.trim().is_empty() {
                    events.push(line.into_owned());
                }
            }
            return events;
        }
        while let Some(end) = find(&self.buffer, b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block[..end]);
            let data: Vec<&str> = block
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
                .collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        events
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// vps-infer's event `data`, parsed.
    fn parse_event(data: &str) -> Result<Option<StreamEvent>, BackendError> {
        let events = EventParser::new(BackendKind::VpsInfer).parse(data)?;
        Ok(events.into_iter().next())
    }

    /// The tokens a stream passes on after the prompt left `lead` out, joined by `|`.
    fn healed(lead: &str, tokens: &[&str]) -> String {
        let mut lead = lead.to_owned();
        tokens
            .iter()
            .map(|token| take_lead(&mut lead, (*token).to_owned()))
            .filter(|token| !token.is_empty())
            .collect::<Vec<_>>()
            .join("|")
    }

    #[test]
    fn the_left_out_indentation_comes_off_the_answer() {
        let cases = [
            ("    ", &["    ", "return", " x"][..]),
            ("    ", &["   ", " return", " x"]),
            ("    ", &["  ", "  x", "  "]),
            ("\t", &["\treturn", "\t"]),
            // The model dedents: what it repeats comes off, the rest stays.
            ("        ", &["    ", "else", ":"]),
            // The model starts a new line: the answer is passed on as it is.
            ("    ", &["\n", "    x"]),
            (" ", &["x", " "]),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|(lead, tokens)| format!("{lead:?} {tokens:?} -> {:?}", healed(lead, tokens)))
            .collect();
        expect_test::expect![[r#"
            "    " ["    ", "return", " x"] -> "return| x"
            "    " ["   ", " return", " x"] -> "return| x"
            "    " ["  ", "  x", "  "] -> "x|  "
            "\t" ["\treturn", "\t"] -> "return|\t"
            "        " ["    ", "else", ":"] -> "else|:"
            "    " ["\n", "    x"] -> "\n|    x"
            " " ["x", " "] -> "x| ""#]]
        .assert_eq(&out.join("\n"));
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(256))]

        /// Events split at any byte (inside a UTF-8 character, between `\r` and
        /// `\n`) come out whole and in order.
        #[test]
        fn sse_events_split_anywhere_come_out_whole(
            tokens in prop::collection::vec("\\PC{0,12}", 1..12),
            crlf in any::<bool>(),
            sizes in prop::collection::vec(1usize..40, 1..8),
        ) {
            let end = if crlf { "\r\n\r\n" } else { "\n\n" };
            let mut input = String::new();
            let mut expected = Vec::new();
            for token in &tokens {
                let data = serde_json::json!({ "token": token }).to_string();
                input.push_str(&format!(": keep-alive{end}data: {data}{end}"));
                expected.push(data);
            }
            let mut decoder = SseDecoder::default();
            let mut events = Vec::new();
            let mut rest = input.as_bytes();
            let mut size = sizes.iter().cycle();
            while !rest.is_empty() {
                let take = (*size.next().unwrap_or(&1)).clamp(1, rest.len());
                events.extend(decoder.push(&rest[..take]));
                rest = &rest[take..];
            }
            prop_assert_eq!(&events, &expected);
            for (event, token) in events.iter().zip(&tokens) {
                prop_assert_eq!(
                    parse_event(event).ok().flatten(),
                    Some(StreamEvent::Token(token.clone()))
                );
            }
            prop_assert_eq!(decoder.buffered(), 0);
        }

        /// Arbitrary bytes never panic the decoder or the event parser.
        #[test]
        fn sse_random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let mut decoder = SseDecoder::default();
            let mut rest = bytes.as_slice();
            let mut size = sizes.iter().cycle();
            while !rest.is_empty() {
                let take = (*size.next().unwrap_or(&1)).clamp(1, rest.len());
                for event in decoder.push(&rest[..take]) {
                    let _ = parse_event(&event);
                }
                rest = &rest[take..];
            }
            prop_assert!(decoder.buffered() <= bytes.len());
        }
    }

    #[test]
    fn credentials_in_the_backend_url_are_redacted() {
        assert_eq!(
            redact_url("http://user:secret@host:9000"),
            "http://***@host:9000"
        );
        assert_eq!(
            redact_url("http://host:9000/?key=k"),
            "http://host:9000/?***"
        );
        assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(
            url_secrets("http://user:s%40cret@host"),
            Some(vec!["user:s%40cret@".to_owned()])
        );
    }

    #[test]
    fn sse_events_split_across_chunks_and_multibyte_characters() {
        let mut sse = SseDecoder::default();
        let text = "data: {\"token\":\"é\"}\r\n\r\n: comment\n\ndata: {\"done\":true}\n\n";
        let bytes = text.as_bytes();
        let mut events = Vec::new();
        // Feed one byte at a time, splitting 'é' and the separators.
        for byte in bytes {
            events.extend(sse.push(std::slice::from_ref(byte)));
        }
        assert_eq!(events, vec!["{\"token\":\"é\"}", "{\"done\":true}"]);
    }

    #[test]
    fn events_parse_into_tokens_stats_and_errors() {
        assert_eq!(
            parse_event(r#"{"token":"x"}"#).unwrap(),
            Some(StreamEvent::Token("x".into()))
        );
        let done = parse_event(
            r#"{"done":true,"text":"ab","prompt_tokens":5,"cached_tokens":2,"total_tokens":2,"inference_time":0.1,"tokens_per_second":20.0,"stop_reason":"eos"}"#,
        )
        .unwrap();
        let Some(StreamEvent::Done(stats)) = done else {
            panic!("{done:?}")
        };
        assert_eq!(stats.cached_tokens, 2);
        assert_eq!(stats.stop_reason, "eos");
        let err =
            parse_event(r#"{"error":{"code":503,"type":"unavailable_error","message":"busy"}}"#)
                .unwrap_err();
        assert!(err.counts_as_failure());
        assert!(parse_event("not json").is_err());
    }

    fn api_error(status: u16, kind: &str, message: &str) -> BackendError {
        BackendError::Api {
            status,
            kind: kind.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn fim_refusals_are_recognised_and_are_not_failures() {
        let err = api_error(
            400,
            "invalid_request_error",
            "model smollm2-135m has no FIM tokens",
        );
        assert!(err.is_fim_unsupported());
        assert!(!err.counts_as_failure());
        let llama_server = api_error(
            501,
            "not_supported_error",
            "Infill is not supported by this model: prefix token is missing. ",
        );
        assert!(llama_server.is_fim_unsupported());
        assert!(!llama_server.counts_as_failure());
        assert!(!llama_server.worth_another_backend());
        let other = api_error(
            400,
            "invalid_request_error",
            "max_tokens must be within 1..=4096",
        );
        assert!(!other.is_fim_unsupported());
        let server = api_error(500, "server_error", "boom");
        assert!(server.counts_as_failure());
    }

    #[test]
    fn requests_leave_out_unset_fields() {
        let request = InferenceRequest {
            prompt: "def f(".into(),
            max_tokens: 16,
            temperature: 0.0,
            stream: true,
            ..InferenceRequest::default()
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"prompt": "def f(", "max_tokens": 16, "temperature": 0.0, "stream": true})
        );
    }
}
