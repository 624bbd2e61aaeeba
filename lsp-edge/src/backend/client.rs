//! The vps-infer client: one pooled, kept-alive HTTP client, streamed inference
//! through the circuit breaker, and `/health`. It knows nothing of LSP.
//!
//! Dropping a [`TokenStream`] drops the HTTP response, which makes vps-infer stop
//! decoding within one token: that is how cancellation reaches the model.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backend::breaker::{BreakerOpen, BreakerPermit, CircuitBreaker};
use crate::config::{BackendConfig, FimOrder, Secret};

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
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    BreakerOpen(#[from] BreakerOpen),
    #[error("cannot reach vps-infer at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("vps-infer sent no token within {}s", .0.as_secs_f32())]
    FirstTokenTimeout(Duration),
    #[error("vps-infer did not finish within {}s", .0.as_secs_f32())]
    TotalTimeout(Duration),
    #[error("vps-infer refused the request ({status} {kind}): {message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("vps-infer's stream broke off: {0}")]
    Stream(String),
    #[error("vps-infer sent something unexpected: {0}")]
    Protocol(String),
}

impl BackendError {
    /// Whether this says vps-infer is unwell (and so counts for the breaker):
    /// connection errors, timeouts, 5xx. A 4xx is a healthy service saying no.
    pub fn counts_as_failure(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::FirstTokenTimeout(_)
            | BackendError::TotalTimeout(_)
            | BackendError::Stream(_) => true,
            BackendError::Api { status, .. } => *status >= 500,
            BackendError::BreakerOpen(_) | BackendError::Protocol(_) => false,
        }
    }

    /// Whether vps-infer refused a fill-in-the-middle request because the model has
    /// no FIM tokens (a 400 `invalid_request_error` that says so).
    pub fn is_fim_unsupported(&self) -> bool {
        match self {
            BackendError::Api {
                status: 400,
                kind,
                message,
                ..
            } if kind == "invalid_request_error" => {
                let message = message.to_ascii_lowercase();
                message.contains("fim") || message.contains("fill-in")
            }
            _ => false,
        }
    }
}

/// The client for one vps-infer, with its own breaker.
#[derive(Debug, Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` with any credentials and query replaced by `***`: what logs,
    /// `/health` and error messages show.
    display_url: String,
    api_key: Option<Secret>,
    config: BackendConfig,
    breaker: Arc<CircuitBreaker>,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
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
        Ok(BackendClient {
            http,
            base_url: config.url.trim_end_matches('/').to_owned(),
            display_url: redact_url(config.url.trim_end_matches('/')),
            api_key: config.api_key.clone(),
            config: config.clone(),
            breaker,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The base URL without credentials, for anything a person or client may read.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Starts a streamed generation. The breaker refuses at once while open.
    pub async fn stream(&self, request: &InferenceRequest) -> Result<TokenStream, BackendError> {
        let permit = self.breaker.admit()?;
        let started = Instant::now();
        let first_deadline = started + self.config.first_token_timeout();
        let total_deadline = started + self.config.total_timeout();

        let mut body = request.clone();
        body.stream = true;
        let mut builder = self
            .http
            .post(format!("{}/v1/inference", self.base_url))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.header("X-API-Key", key.expose());
        }

        let response = match tokio::time::timeout_at(first_deadline, builder.send()).await {
            Err(_) => {
                let err = BackendError::FirstTokenTimeout(self.config.first_token_timeout());
                permit.failed(err.to_string());
                return Err(err);
            }
            Ok(Err(err)) => {
                let err = self.transport_error(&err);
                permit.failed(err.to_string());
                return Err(err);
            }
            Ok(Ok(response)) => response,
        };

        let status = response.status();
        if !status.is_success() {
            let err = api_error(response, first_deadline).await;
            if err.counts_as_failure() {
                permit.failed(err.to_string());
            } else {
                permit.succeeded();
            }
            return Err(err);
        }

        Ok(TokenStream {
            body: Box::pin(response.bytes_stream()),
            sse: SseDecoder::default(),
            pending: VecDeque::new(),
            first_deadline,
            total_deadline,
            first_token_timeout: self.config.first_token_timeout(),
            total_timeout: self.config.total_timeout(),
            permit: Some(permit),
            got_token: false,
            finished: false,
            lead: String::new(),
        })
    }

    /// `GET /health`, outside the breaker (it is how a loading model is noticed).
    pub async fn health(&self) -> Result<Health, BackendError> {
        let request = self
            .http
            .get(format!("{}/health", self.base_url))
            .timeout(self.config.connect_timeout() + Duration::from_secs(2));
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
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
        Ok(envelope) => (envelope.error.kind, envelope.error.message),
        Err(_) => (String::new(), text.chars().take(200).collect()),
    };
    BackendError::Api {
        status,
        kind,
        message,
        retry_after,
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A streamed generation in progress. Dropping it cancels the generation.
pub struct TokenStream {
    body: ByteStream,
    sse: SseDecoder,
    pending: VecDeque<String>,
    first_deadline: Instant,
    total_deadline: Instant,
    first_token_timeout: Duration,
    total_timeout: Duration,
    permit: Option<BreakerPermit>,
    got_token: bool,
    finished: bool,
    /// Whitespace the prompt left out at its end, still to be taken off the start
    /// of the answer ([`TokenStream::expect_leading`]).
    lead: String,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("got_token", &self.got_token)
            .field("finished", &self.finished)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct WireEvent {
    token: Option<String>,
    #[serde(default)]
    done: bool,
    error: Option<ErrorBodyWithCode>,
}

#[derive(Debug, Deserialize)]
struct ErrorBodyWithCode {
    #[serde(default)]
    code: u16,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
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
            Ok(StreamEvent::Done(_)) => {
                self.finished = true;
                if let Some(permit) = self.permit.take() {
                    permit.succeeded();
                }
            }
            Err(err) => {
                self.finished = true;
                if let Some(permit) = self.permit.take() {
                    if err.counts_as_failure() {
                        permit.failed(err.to_string());
                    } else {
                        permit.succeeded();
                    }
                }
            }
        }
        Some(result)
    }

    async fn next_inner(&mut self) -> Result<StreamEvent, BackendError> {
        loop {
            while let Some(data) = self.pending.pop_front() {
                if let Some(event) = parse_event(&data)? {
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

fn parse_event(data: &str) -> Result<Option<StreamEvent>, BackendError> {
    let event: WireEvent = serde_json::from_str(data).map_err(|err| {
        // The event is the backend's text: quote only its start.
        let start: String = data.chars().take(200).collect();
        BackendError::Protocol(format!("bad event {start:?}: {err}"))
    })?;
    if let Some(error) = event.error {
        return Err(BackendError::Api {
            status: if error.code == 0 { 500 } else { error.code },
            kind: error.kind,
            message: error.message,
            retry_after: None,
        });
    }
    if event.done {
        let stats: GenerationStats = serde_json::from_str(data)
            .map_err(|err| BackendError::Protocol(format!("bad final event: {err}")))?;
        return Ok(Some(StreamEvent::Done(stats)));
    }
    Ok(event.token.map(StreamEvent::Token))
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // Dropped by its reader (cancelled, or trimmed to an end): a stream that has
        // produced tokens shows a healthy backend; one that has not shows nothing.
        if let Some(permit) = self.permit.take() {
            if self.got_token {
                permit.succeeded();
            }
        }
    }
}

/// Splits a server-sent-events byte stream into the `data` of each event.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
}

/// An event (one token, or the final statistics) is far smaller: a stream that
/// sends this much without an event end is broken, and is not buffered further.
const MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

impl SseDecoder {
    /// Bytes held for an event not yet ended.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend(bytes.iter().filter(|&&b| b != b'\r'));
        let mut events = Vec::new();
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

    #[test]
    fn fim_refusals_are_recognised_and_are_not_failures() {
        let err = BackendError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            message: "model smollm2-135m has no FIM tokens".into(),
            retry_after: None,
        };
        assert!(err.is_fim_unsupported());
        assert!(!err.counts_as_failure());
        let other = BackendError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            message: "max_tokens must be within 1..=4096".into(),
            retry_after: None,
        };
        assert!(!other.is_fim_unsupported());
        let server = BackendError::Api {
            status: 500,
            kind: "server_error".into(),
            message: "boom".into(),
            retry_after: None,
        };
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
