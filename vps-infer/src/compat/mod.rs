//! llama.cpp's server API and OpenAI's completions API on top of our engine: clients
//! written for those servers (llama.vim, llama.vscode, Continue, the `openai` package)
//! work unchanged against vps-infer.
//!
//! These routes only translate. Each request becomes the same [`GenerateRequest`] that
//! `/v1/inference` sends, through [`start_generation`], so guards, queue, statistics,
//! KV-cache reuse and cancellation on disconnect are shared. What llama.cpp enforces on
//! top of the token stream (`n_indent`, `t_max_predict_ms`) is enforced here, by
//! watching the text and dropping the engine's receiver, which stops the decode within
//! one token.

mod llamacpp;
mod openai;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Event, GenerateRequest, Priority, PromptParts, Sampling, StopReason};
use crate::error::ApiError;
use crate::routes::{start_generation, AppState, Started};
use crate::stats::Stats;

/// llama.cpp's default sampling, used where a client sends none.
pub(crate) const DEFAULT_TEMPERATURE: f32 = 0.8;
pub(crate) const DEFAULT_TOP_P: f32 = 0.95;
/// llama.cpp generates until end of text or a full context when `n_predict` is -1; our
/// engine refuses a request that might overflow the context, so "no limit" is this.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 128;

/// The routes of both APIs; `app()` puts them behind the API key.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/completion", post(llamacpp::completion))
        .route("/completions", post(llamacpp::completion))
        .route("/infill", post(llamacpp::infill))
        .route("/tokenize", post(llamacpp::tokenize))
        .route("/detokenize", post(llamacpp::detokenize))
        .route("/props", get(llamacpp::props))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
}

/// A seed for a request: the client's, or a fresh one when it sends none (or -1, which
/// llama.cpp reads as "random").
pub(crate) fn seed(requested: Option<i64>) -> u32 {
    match requested {
        Some(s) if (0..=i64::from(u32::MAX) - 1).contains(&s) => s as u32,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0x5eed),
    }
}

/// A field that is either one string or a list of them (OpenAI's `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }

    /// A request's `stop`, taken out of it: none, one string or a list.
    pub(crate) fn take_all(stop: &mut Option<OneOrMany>) -> Vec<String> {
        stop.take().map(OneOrMany::into_vec).unwrap_or_default()
    }
}

/// Checks sampling parameters against our limits (the same as `/v1/inference`'s) and
/// builds the request.
pub(crate) struct Translate {
    pub model: String,
    pub parts: PromptParts,
    /// `None` or negative: [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
}

impl Translate {
    pub(crate) fn build(self) -> Result<GenerateRequest, ApiError> {
        let max_tokens = match self.max_tokens {
            None => DEFAULT_MAX_TOKENS,
            Some(n) if n < 0 => DEFAULT_MAX_TOKENS,
            Some(n) if (1..=4096).contains(&n) => n as u32,
            Some(n) => {
                return Err(ApiError::InvalidRequest(format!(
                    "n_predict: {n} is outside 1..=4096 (or -1 for the default of {DEFAULT_MAX_TOKENS})"
                )))
            }
        };
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::InvalidRequest(format!(
                "temperature: {temperature} is outside 0..=2"
            )));
        }
        let top_p = self.top_p.unwrap_or(DEFAULT_TOP_P);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::InvalidRequest(format!(
                "top_p: {top_p} is outside (0, 1]"
            )));
        }
        if self.stop.len() > 16 {
            return Err(ApiError::InvalidRequest("stop: at most 16 strings".into()));
        }
        let parts = self.parts;
        if parts.prompt.is_empty() && parts.suffix.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::InvalidRequest("prompt: must not be empty".into()));
        }
        Ok(GenerateRequest {
            model: self.model,
            priority: Priority::default_for(&parts, max_tokens),
            parts,
            sampling: Sampling {
                max_tokens,
                temperature,
                top_p,
                stop: self.stop.into_iter().filter(|s| !s.is_empty()).collect(),
                seed: seed(self.seed),
                reject_first_line: Vec::new(),
                first_line_max_indent: None,
                first_line_not_blank: false,
            },
        })
    }
}

/// The model a request asked for if it is configured, else the default one: OpenAI
/// clients always name a model ("gpt-3.5-turbo"), and llama.cpp serves its one model
/// whatever the name.
pub(crate) fn pick_model(app: &AppState, requested: Option<&str>) -> String {
    match requested {
        Some(name) if app.engine.models().contains_key(name) => name.to_string(),
        _ => app.engine.default_model().to_string(),
    }
}

/// llama.cpp's stopping rules that our engine does not know, applied to the text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Watch {
    /// Every line after the first must be indented by at least this many spaces or tabs;
    /// the first line that is not ends the generation, cut before its first character.
    pub n_indent: usize,
    /// Once this long has passed since the first token, the generation ends at the next
    /// token that contains a newline.
    pub t_max_predict: Option<Duration>,
}

impl Watch {
    pub(crate) fn new(n_indent: Option<i64>, t_max_predict_ms: Option<i64>) -> Watch {
        Watch {
            n_indent: n_indent.unwrap_or(0).max(0) as usize,
            t_max_predict: t_max_predict_ms
                .filter(|&ms| ms > 0)
                .map(|ms| Duration::from_millis(ms as u64)),
        }
    }
}

/// How a generation ended, in llama.cpp's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopType {
    Eos,
    /// `n_predict`, `n_indent` or `t_max_predict_ms`.
    Limit,
    Word,
}

impl StopType {
    pub(crate) fn llama(self) -> &'static str {
        match self {
            StopType::Eos => "eos",
            StopType::Limit => "limit",
            StopType::Word => "word",
        }
    }

    pub(crate) fn openai(self) -> &'static str {
        match self {
            StopType::Eos | StopType::Word => "stop",
            StopType::Limit => "length",
        }
    }
}

/// The end of a generation: its whole text and llama.cpp's `timings`.
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub text: String,
    pub model: String,
    pub stop: StopType,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub predicted: usize,
    pub prompt_ms: f64,
    pub predicted_ms: f64,
}

/// llama.cpp's `timings` object.
#[derive(Debug, Serialize)]
pub(crate) struct Timings {
    cache_n: usize,
    prompt_n: usize,
    prompt_ms: f64,
    prompt_per_token_ms: f64,
    prompt_per_second: f64,
    predicted_n: usize,
    predicted_ms: f64,
    predicted_per_token_ms: f64,
    predicted_per_second: f64,
}

impl Finish {
    pub(crate) fn timings(&self) -> Timings {
        let prompt_n = self.prompt_tokens.saturating_sub(self.cached_tokens);
        let per = |ms: f64, n: usize| if n == 0 { 0.0 } else { ms / n as f64 };
        let rate = |ms: f64, n: usize| if ms <= 0.0 { 0.0 } else { n as f64 * 1e3 / ms };
        Timings {
            cache_n: self.cached_tokens,
            prompt_n,
            prompt_ms: self.prompt_ms,
            prompt_per_token_ms: per(self.prompt_ms, prompt_n),
            prompt_per_second: rate(self.prompt_ms, prompt_n),
            predicted_n: self.predicted,
            predicted_ms: self.predicted_ms,
            predicted_per_token_ms: per(self.predicted_ms, self.predicted),
            predicted_per_second: rate(self.predicted_ms, self.predicted),
        }
    }

    pub(crate) fn usage(&self) -> serde_json::Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.predicted,
            "total_tokens": self.prompt_tokens + self.predicted,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

fn outcome_finish(model: &str, outcome: crate::engine::Outcome) -> Finish {
    let stop = match outcome.stop_reason {
        StopReason::Eos => StopType::Eos,
        StopReason::Stop => StopType::Word,
        StopReason::Length | StopReason::Cancelled => StopType::Limit,
    };
    Finish {
        model: model.to_string(),
        stop,
        prompt_tokens: outcome.prompt_tokens,
        cached_tokens: outcome.cached_tokens,
        predicted: outcome.total_tokens,
        prompt_ms: outcome.prompt_eval_time * 1e3,
        predicted_ms: (outcome.inference_time - outcome.prompt_eval_time).max(0.0) * 1e3,
        text: outcome.text,
    }
}

/// One step of a generation as the client sees it.
pub(crate) enum Step {
    Text(String),
    Done(Finish),
}

/// A running generation seen through a [`Watch`]. Dropping it drops the engine's
/// receiver, which cancels the decode.
pub(crate) struct Generation {
    events: Option<mpsc::Receiver<Event>>,
    started: Started,
    model: String,
    taken: Instant,
    first_token: Option<Instant>,
    watch: Watch,
    /// Everything generated and kept so far.
    text: String,
    /// Bytes of `text` already handed out.
    released: usize,
    /// Start of the line whose indentation is not judged yet (lines after the first).
    unjudged_line: Option<usize>,
    /// Token events seen (the engine's own count replaces it when it finishes).
    tokens: usize,
    shutdown: CancellationToken,
    finished: bool,
    /// The end, when held-back text had to go out first.
    pending_done: Option<Finish>,
}

impl Generation {
    /// Validates nothing: starts `request` through the shared path and watches it.
    pub(crate) async fn start(
        app: &AppState,
        request: GenerateRequest,
        watch: Watch,
    ) -> Result<Generation, ApiError> {
        let model = request.model.clone();
        let (events, started) = start_generation(app, request).await?;
        Ok(Generation::new(
            events,
            started,
            model,
            watch,
            app.shutdown.clone(),
        ))
    }

    fn new(
        events: mpsc::Receiver<Event>,
        started: Started,
        model: String,
        watch: Watch,
        shutdown: CancellationToken,
    ) -> Generation {
        Generation {
            events: Some(events),
            started,
            model,
            taken: Instant::now(),
            first_token: None,
            watch,
            text: String::new(),
            released: 0,
            unjudged_line: None,
            tokens: 0,
            shutdown,
            finished: false,
            pending_done: None,
        }
    }

    pub(crate) fn prompt_tokens(&self) -> usize {
        self.started.prompt_tokens
    }

    /// The next piece of text, or the end. `None` after the end.
    pub(crate) async fn next(&mut self) -> Option<Result<Step, ApiError>> {
        loop {
            if let Some(finish) = self.pending_done.take() {
                return Some(Ok(Step::Done(finish)));
            }
            if self.finished {
                return None;
            }
            let events = self.events.as_mut()?;
            let event = tokio::select! {
                e = events.recv() => e,
                () = self.shutdown.cancelled() => {
                    self.finished = true;
                    return Some(Err(ApiError::unavailable("server is shutting down", 5)));
                }
            };
            match event {
                Some(Event::Token(token)) => {
                    let now = Instant::now();
                    let first = *self.first_token.get_or_insert(now);
                    self.tokens += 1;
                    self.text.push_str(&token);
                    let mut stop = self.judge_indentation();
                    if !stop && token.contains('\n') {
                        if let Some(limit) = self.watch.t_max_predict {
                            stop = now.duration_since(first) > limit;
                        }
                    }
                    if stop {
                        // Dropping the receiver stops the decode at its next token.
                        self.events = None;
                        self.finished = true;
                        return Some(Ok(self.early_finish()));
                    }
                    let end = self.unjudged_line.unwrap_or(self.text.len());
                    if end > self.released {
                        let piece = self.text[self.released..end].to_string();
                        self.released = end;
                        return Some(Ok(Step::Text(piece)));
                    }
                }
                Some(Event::Done(outcome)) => {
                    self.finished = true;
                    if self.released < self.text.len() {
                        // Held-back indentation is part of the answer after all; the
                        // caller sees it in `Finish::text` and, streaming, first.
                        let piece = self.text[self.released..].to_string();
                        self.released = self.text.len();
                        self.pending_done = Some(outcome_finish(&self.model, outcome));
                        return Some(Ok(Step::Text(piece)));
                    }
                    return Some(Ok(Step::Done(outcome_finish(&self.model, outcome))));
                }
                Some(Event::Error(e)) => {
                    self.finished = true;
                    return Some(Err(e.into()));
                }
                Some(Event::Started { .. }) => {}
                None => {
                    self.finished = true;
                    return Some(Err(ApiError::Server(
                        "the inference engine dropped the request".into(),
                    )));
                }
            }
        }
    }

    /// Applies `n_indent` to the lines completed or begun since the last call; true when
    /// the generation must end (the text is then cut).
    fn judge_indentation(&mut self) -> bool {
        if self.watch.n_indent == 0 {
            return false;
        }
        let mut from = self.unjudged_line.unwrap_or(self.released);
        loop {
            match self.unjudged_line {
                None => {
                    // Find the next line start after `from`.
                    let Some(nl) = self.text[from..].find('\n') else {
                        return false;
                    };
                    self.unjudged_line = Some(from + nl + 1);
                }
                Some(start) => {
                    let rest = &self.text[start..];
                    let indent = rest
                        .bytes()
                        .take_while(|b| *b == b' ' || *b == b'\t')
                        .count();
                    if indent == rest.len() {
                        // Only whitespace so far: wait for more.
                        return false;
                    }
                    if indent < self.watch.n_indent {
                        self.text.truncate(start + indent);
                        self.unjudged_line = None;
                        return true;
                    }
                    self.unjudged_line = None;
                    from = start + indent;
                }
            }
        }
    }

    fn early_finish(&mut self) -> Step {
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        Step::Done(Finish {
            text: self.text.clone(),
            model: self.model.clone(),
            stop: StopType::Limit,
            prompt_tokens: self.started.prompt_tokens,
            cached_tokens: self.started.cached_tokens,
            predicted: self.tokens,
            prompt_ms: first.duration_since(self.taken).as_secs_f64() * 1e3,
            predicted_ms: now.duration_since(first).as_secs_f64() * 1e3,
        })
    }

    /// Runs to the end and returns the whole answer (non-streaming clients).
    pub(crate) async fn collect(mut self) -> Result<Finish, ApiError> {
        while let Some(step) = self.next().await {
            if let Step::Done(finish) = step? {
                return Ok(finish);
            }
        }
        Err(ApiError::Server(
            "the inference engine dropped the request".into(),
        ))
    }
}

/// What a route sends for each step of a stream, in its API's shape.
pub(crate) trait Render: Send + 'static {
    fn text(&mut self, text: &str) -> Vec<SseEvent>;
    fn done(&mut self, finish: &Finish) -> Vec<SseEvent>;
    fn error(&mut self, error: &ApiError) -> Vec<SseEvent>;
}

/// Streams a generation as server-sent events. Dropping the response (client gone)
/// drops the generation and so cancels the decode.
pub(crate) fn stream(generation: Generation, render: impl Render) -> Response {
    let events = futures::stream::unfold(Some((generation, render)), |state| async move {
        let (mut generation, mut render) = state?;
        match generation.next().await? {
            Ok(Step::Text(text)) => Some((render.text(&text), Some((generation, render)))),
            Ok(Step::Done(finish)) => Some((render.done(&finish), None)),
            Err(error) => Some((render.error(&error), None)),
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    sse(events)
}

fn sse(events: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One `data:` line holding `value` as JSON.
pub(crate) fn data(value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().data("{}"))
}

/// Counts a request refused before it reached the engine.
pub(crate) fn invalid(app: &AppState, error: ApiError) -> ApiError {
    Stats::add(&app.stats.rejected_invalid, 1);
    error
}

/// Seconds since the epoch, for OpenAI's `created`.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(events: mpsc::Receiver<Event>, watch: Watch) -> Generation {
        let started = Started {
            prompt_tokens: 3,
            cached_tokens: 1,
        };
        Generation::new(events, started, "m".into(), watch, CancellationToken::new())
    }

    /// Feeds `tokens` through a [`Generation`] watched by `watch`; returns the pieces
    /// handed out and the text of an early end, if the watch ended it.
    async fn watched(watch: Watch, tokens: &[&str]) -> (Vec<String>, Option<String>) {
        let (tx, rx) = mpsc::channel(64);
        for token in tokens {
            tx.send(Event::Token((*token).to_string())).await.unwrap();
        }
        drop(tx);
        let mut generation = generation(rx, watch);
        let mut pieces = Vec::new();
        while let Some(step) = generation.next().await {
            match step {
                Ok(Step::Text(t)) => pieces.push(t),
                Ok(Step::Done(finish)) => {
                    assert_eq!(finish.stop, StopType::Limit);
                    assert_eq!(finish.timings().prompt_n, 2);
                    return (pieces, Some(finish.text));
                }
                // The channel closed without a `Done`: the engine would have sent one.
                Err(_) => return (pieces, None),
            }
        }
        (pieces, None)
    }

    #[tokio::test]
    async fn n_indent_cuts_at_the_first_line_indented_less() {
        let watch = Watch::new(Some(4), None);
        let (pieces, end) =
            watched(watch, &["x = 1\n", "    y", " = 2\n", "  ", "z", " = 3\n"]).await;
        assert_eq!(end.as_deref(), Some("x = 1\n    y = 2\n  "));
        // What went out before the end is a prefix of the final text.
        assert!(end.unwrap().starts_with(&pieces.concat()));
    }

    #[tokio::test]
    async fn n_indent_leaves_the_first_line_and_deep_lines_alone() {
        let watch = Watch::new(Some(4), None);
        let (pieces, end) = watched(watch, &["a\n", "    b\n", "\t\t", "    c"]).await;
        assert_eq!(end, None);
        assert_eq!(pieces.concat(), "a\n    b\n\t\t    c");
    }

    #[tokio::test]
    async fn n_indent_holds_back_indentation_until_the_line_is_judged() {
        let watch = Watch::new(Some(2), None);
        let (pieces, end) = watched(watch, &["a\n", " ", "b"]).await;
        assert_eq!(pieces, ["a\n"]);
        assert_eq!(end.as_deref(), Some("a\n "));
    }

    #[tokio::test]
    async fn t_max_predict_ms_ends_at_a_newline_once_the_time_is_up() {
        let (tx, rx) = mpsc::channel(8);
        let mut generation = generation(rx, Watch::new(None, Some(1)));
        tx.send(Event::Token("a".into())).await.unwrap();
        assert!(matches!(generation.next().await, Some(Ok(Step::Text(_)))));
        // The clock started at the first token; a sleep makes sure the limit has passed.
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(Event::Token("b".into())).await.unwrap();
        assert!(
            matches!(generation.next().await, Some(Ok(Step::Text(_)))),
            "no newline yet: it goes on"
        );
        tx.send(Event::Token("c\n".into())).await.unwrap();
        match generation.next().await {
            Some(Ok(Step::Done(finish))) => assert_eq!(finish.text, "abc\n"),
            _ => panic!("the newline after the time limit ends the generation"),
        }
        assert!(tx.is_closed(), "the engine's receiver is dropped");
    }
}
