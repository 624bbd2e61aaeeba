//! One completion for a script, free of HTTP: assemble the prompt (through the
//! context engine when it is long or carries an instruction), answer from the
//! temperature-0 cache or take a slot of the shared generation limit and stream from
//! vps-infer, and summarise what happened. The HTTP routes and `lsp-edge complete`
//! both drive it.
//!
//! Dropping a [`Generation`] before its end drops the backend stream, which stops
//! vps-infer's decode loop, and frees the generation slot: that is how a client's
//! disconnect reaches the model.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cerebrum_context::{ContextOptions, Language, Mode};
use serde::{Deserialize, Serialize};

use super::cache::AnswerCache;
use super::stats::HttpStats;
use crate::backend::limiter::GenerationPermit;
use crate::backend::{BackendError, ExtraChunk, InferenceRequest, StreamEvent, TokenStream};
use crate::config::{CompletionConfig, Task};
use crate::edge::Edge;
use crate::pipeline::{self, GenerationInput, Opened, PipelineError, Prompt};

/// Prompts longer than this (in characters, suffix included) go through the context
/// engine, which takes an instruction carried in the text and chunks what is past its
/// own `min_chars_to_chunk` (documents under that go out whole); shorter prompts are
/// sent as they are (the old system's rule).
pub const CONTEXT_THRESHOLD_CHARS: usize = 1_500;

/// A completion request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: String,
    /// Text after the cursor: makes it a fill-in-the-middle request where the model
    /// has FIM tokens.
    pub suffix: Option<String>,
    pub language: Language,
    /// The file's path: chunk labels name it, and repeated requests for the same
    /// path re-parse incrementally and keep their context chunks stable.
    pub path: Option<String>,
    pub instruction: Option<String>,
    /// `None`: the configured model for the task and language, else vps-infer's default.
    pub model: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub stop: Vec<String>,
}

/// A completion request as scripts write it (`POST /v1/complete`'s JSON body, a
/// batch item, `lsp-edge complete`'s flags), before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub prompt: String,
    /// A language name or file extension; unknown ones are chunked by characters.
    pub language: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub suffix: Option<String>,
    /// The file's path, for chunk labels and stable context across requests.
    pub path: Option<String>,
    pub instruction: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub stop: Vec<String>,
}

impl CompleteBody {
    /// Checks the values; the error names the field.
    pub fn into_request(self, defaults: &CompletionConfig) -> Result<CompletionRequest, String> {
        let max_tokens = self.max_tokens.unwrap_or(defaults.max_tokens);
        if !(1..=4096).contains(&max_tokens) {
            return Err(format!("max_tokens: {max_tokens} is outside 1..=4096"));
        }
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(format!("temperature: {temperature} is outside 0..=2"));
        }
        if self.prompt.is_empty() && self.suffix.as_deref().unwrap_or("").is_empty() {
            return Err("prompt: must not be empty".into());
        }
        if self
            .instruction
            .as_deref()
            .is_some_and(|text| text.trim().is_empty())
        {
            return Err("instruction: must not be empty when given".into());
        }
        if self.stop.len() > 16 {
            return Err("stop: at most 16 strings".into());
        }
        let language = self
            .language
            .as_deref()
            .map_or(Language::Other, Language::from_name);
        Ok(CompletionRequest {
            prompt: self.prompt,
            suffix: self.suffix,
            language,
            path: self.path.filter(|path| !path.is_empty()),
            instruction: self.instruction,
            model: self.model.filter(|model| !model.is_empty()),
            max_tokens,
            temperature,
            stop: self.stop,
        })
    }
}

/// What the context engine did to the prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkingStats {
    /// `completion` (a continuation or fill-in-the-middle) or `instruction`
    /// (an instruction-first prompt).
    pub mode: &'static str,
    /// Whether the prompt went through the context engine at all.
    pub context_engine: bool,
    /// Whether the engine cut the text down to selected chunks.
    pub chunked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// Chunks the text split into, distinct ones, and those sent.
    pub chunks: usize,
    pub unique: usize,
    pub selected: usize,
    pub chars_before: usize,
    pub chars_after: usize,
    pub reduction_percent: f32,
    /// Time the context engine took, in microseconds.
    pub context_us: u64,
}

impl ChunkingStats {
    fn untouched(chars: usize) -> ChunkingStats {
        ChunkingStats {
            mode: "completion",
            context_engine: false,
            chunked: false,
            instruction: None,
            chunks: 0,
            unique: 0,
            selected: 0,
            chars_before: chars,
            chars_after: chars,
            reduction_percent: 0.0,
            context_us: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    /// From the request's arrival to its first byte sent to vps-infer (or, for a
    /// cached answer, to the answer).
    pub edge_overhead_ms: f64,
    /// From the request sent to vps-infer to its last token; 0 for a cached answer.
    pub backend_ms: f64,
    pub total_ms: f64,
    /// vps-infer's generation speed; 0 for a cached answer.
    pub tokens_per_second: f64,
}

/// A finished completion with its statistics (the JSON answer, and the SSE stream's
/// final event).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub text: String,
    /// The model asked for; `null` when vps-infer chose its default.
    pub model: Option<String>,
    /// Answered from the temperature-0 cache.
    pub cached: bool,
    /// Sent as a fill-in-the-middle request.
    pub fim: bool,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    /// `eos`, `length` or `stop`.
    pub stop_reason: String,
    pub chunking: ChunkingStats,
    pub timings: Timings,
}

/// One event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    Token(String),
    Done(Box<Summary>),
}

/// A request ready to send: the pipeline's input and what the engine did.
#[derive(Debug, Clone)]
pub struct Prepared {
    input: GenerationInput,
    chunking: ChunkingStats,
    /// Set at temperature 0: the assembled request, which is the cache key.
    cache_key: Option<String>,
    received: Instant,
}

impl Prepared {
    /// The request that goes out first, unless vps-infer has since said that the
    /// model lacks FIM tokens (tests and logs).
    pub fn request(&self) -> InferenceRequest {
        pipeline::request_for(&self.input, self.input.fim != Some(false))
    }

    pub fn chunking(&self) -> &ChunkingStats {
        &self.chunking
    }
}

type SharedCache = Arc<Mutex<AnswerCache<Summary>>>;

/// Completions for scripts, over the shared edge state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Completer {
    edge: Arc<Edge>,
    cache: SharedCache,
    stats: Arc<HttpStats>,
}

fn needs_context(request: &CompletionRequest) -> bool {
    let chars =
        request.prompt.chars().count() + request.suffix.as_deref().map_or(0, |s| s.chars().count());
    request.instruction.is_some() || chars > CONTEXT_THRESHOLD_CHARS
}

fn lock_cache(cache: &SharedCache) -> MutexGuard<'_, AnswerCache<Summary>> {
    // The cache's own methods leave it consistent at every step; a panic while
    // the lock was held cannot leave it half-updated.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds the vps-infer request(s) for a completion request. Runs the context
/// engine, so call it on a blocking thread when the prompt is long.
pub fn assemble(edge: &Edge, request: CompletionRequest, received: Instant) -> Prepared {
    let config = &edge.config;
    let chars_before =
        request.prompt.chars().count() + request.suffix.as_deref().map_or(0, |s| s.chars().count());
    let mut chunking = ChunkingStats::untouched(chars_before);
    let (prompt, task) = if needs_context(&request) {
        let mut text = request.prompt.clone();
        let cursor = text.len();
        if let Some(suffix) = &request.suffix {
            text.push_str(suffix);
        }
        // The completion model's windows ([context.models]) shape the prompt; with
        // none named, the backend's default model's.
        let model = request.model.clone().or_else(|| {
            let document = request.path.as_deref();
            pipeline::prompt_model(&config.models, &edge.backends, request.language, document)
        });
        let options = ContextOptions {
            instruction: request.instruction.clone(),
            path: request.path.clone(),
            model,
            ..ContextOptions::default()
        };
        let context = edge
            .engine
            .context_for_text(request.language, &text, cursor, &options);
        let stats = &context.stats;
        chunking = ChunkingStats {
            mode: match context.mode {
                Mode::Fim => "completion",
                Mode::Instruction => "instruction",
            },
            context_engine: true,
            chunked: stats.chunks_selected > 0,
            instruction: context.instruction.clone(),
            chunks: stats.chunks_total,
            unique: stats.chunks_unique,
            selected: stats.chunks_selected,
            chars_before: stats.chars_before,
            chars_after: stats.chars_after,
            reduction_percent: stats.reduction_percent,
            context_us: stats.elapsed_us,
        };
        match context.mode {
            Mode::Instruction => {
                // The answer is the body of the fenced block the prompt opens.
                let prompt = context.prompt.unwrap_or_default();
                (Prompt::Instruction { prompt }, Task::Refactor)
            }
            Mode::Fim => {
                let extra = context
                    .extra
                    .into_iter()
                    .map(|chunk| ExtraChunk {
                        label: chunk.label,
                        text: chunk.text,
                    })
                    .collect();
                let prompt = match request.suffix {
                    Some(_) => Prompt::Fim {
                        prefix: context.prefix,
                        suffix: context.suffix,
                        extra,
                    },
                    None => Prompt::Continue {
                        prefix: context.prefix,
                        extra,
                    },
                };
                (prompt, Task::Completion)
            }
        }
    } else {
        let prompt = match request.suffix {
            Some(suffix) => Prompt::Fim {
                prefix: request.prompt,
                suffix,
                extra: Vec::new(),
            },
            None => Prompt::Continue {
                prefix: request.prompt,
                extra: Vec::new(),
            },
        };
        (prompt, Task::Completion)
    };
    let model = request
        .model
        .or_else(|| config.models.model_for(request.language, task));
    let input = GenerationInput {
        prompt,
        fim: config.models.fim(model.as_deref()),
        model,
        settings: CompletionConfig {
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stop: request.stop,
            ..config.completion.clone()
        },
        document: request.path.clone(),
    };
    let cache_key = (request.temperature == 0.0)
        .then(|| {
            let first = pipeline::request_for(&input, input.fim != Some(false));
            serde_json::to_string(&first).ok()
        })
        .flatten();
    Prepared {
        input,
        chunking,
        cache_key,
        received,
    }
}

impl Completer {
    pub fn new(edge: Arc<Edge>, stats: Arc<HttpStats>) -> Completer {
        let cache = AnswerCache::new(edge.config.http.cache_max_bytes);
        Completer {
            edge,
            cache: Arc::new(Mutex::new(cache)),
            stats,
        }
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    pub fn stats(&self) -> &Arc<HttpStats> {
        &self.stats
    }

    /// (entries, bytes, max bytes) of the answer cache.
    pub fn cache_usage(&self) -> (usize, usize, usize) {
        let cache = lock_cache(&self.cache);
        (cache.len(), cache.used_bytes(), cache.max_bytes())
    }

    /// Assembles the prompt; the context engine runs on a blocking thread.
    pub async fn prepare(
        &self,
        request: CompletionRequest,
        received: Instant,
    ) -> Result<Prepared, PipelineError> {
        if !needs_context(&request) {
            return Ok(assemble(&self.edge, request, received));
        }
        let edge = self.edge.clone();
        tokio::task::spawn_blocking(move || assemble(&edge, request, received))
            .await
            .map_err(|err| PipelineError::Internal(format!("context task failed: {err}")))
    }

    /// Starts the generation: from the cache at temperature 0 when it has the
    /// answer; else it takes a generation slot (refused at once past the shared
    /// limit) and waits for vps-infer to accept the request, so that every refusal
    /// comes before the first token.
    pub async fn start(&self, prepared: Prepared) -> Result<Generation, PipelineError> {
        self.stats.requests.inc();
        if let Some(key) = &prepared.cache_key {
            let hit = lock_cache(&self.cache).get(key);
            match hit {
                Some(summary) => {
                    self.stats.cache_hits.inc();
                    return Ok(self.generation(prepared, Source::Cached(summary), false));
                }
                None => self.stats.cache_misses.inc(),
            }
        }
        let permit = self.edge.limiter.try_acquire().inspect_err(|_| {
            self.stats.shed.inc();
        })?;
        let sent = Instant::now();
        let opened = pipeline::open(&self.edge.backends, &prepared.input).await;
        let Opened { stream, fim, .. } = opened.inspect_err(|err| match err {
            BackendError::BreakerOpen(_) => self.stats.breaker_refused.inc(),
            _ => self.stats.failed.inc(),
        })?;
        let source = Source::Live {
            stream,
            sent,
            _permit: permit,
        };
        Ok(self.generation(prepared, source, fim))
    }

    fn generation(&self, prepared: Prepared, source: Source, fim: bool) -> Generation {
        Generation {
            source: Some(source),
            token_sent: false,
            text: String::new(),
            fim,
            model: prepared.input.model.clone(),
            chunking: prepared.chunking,
            cache_key: prepared.cache_key,
            received: prepared.received,
            cache: self.cache.clone(),
            stats: self.stats.clone(),
        }
    }
}

enum Source {
    /// A cached answer: its text as one token, then its summary.
    Cached(Summary),
    /// A backend stream, and the generation slot it holds until it ends.
    Live {
        stream: TokenStream,
        sent: Instant,
        _permit: GenerationPermit,
    },
}

/// A generation in progress. Dropping it before its end cancels it.
pub struct Generation {
    /// `None` once finished: the stream and the slot are gone with it.
    source: Option<Source>,
    token_sent: bool,
    text: String,
    fim: bool,
    model: Option<String>,
    chunking: ChunkingStats,
    cache_key: Option<String>,
    received: Instant,
    cache: SharedCache,
    stats: Arc<HttpStats>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("cached", &matches!(self.source, Some(Source::Cached(_))))
            .field("finished", &self.source.is_none())
            .field("chars", &self.text.len())
            .finish()
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl Generation {
    /// The next token, or the summary; `None` after the end.
    pub async fn next(&mut self) -> Option<Result<GenerationEvent, PipelineError>> {
        match self.source.as_mut()? {
            Source::Cached(summary) => {
                if !self.token_sent && !summary.text.is_empty() {
                    self.token_sent = true;
                    return Some(Ok(GenerationEvent::Token(summary.text.clone())));
                }
                let mut summary = summary.clone();
                self.source = None;
                let elapsed = self.received.elapsed();
                summary.cached = true;
                summary.chunking = self.chunking.clone();
                summary.timings = Timings {
                    edge_overhead_ms: ms(elapsed),
                    backend_ms: 0.0,
                    total_ms: ms(elapsed),
                    tokens_per_second: 0.0,
                };
                self.record_ok(elapsed, None);
                Some(Ok(GenerationEvent::Done(Box::new(summary))))
            }
            Source::Live { stream, sent, .. } => {
                let sent = *sent;
                match stream.next().await {
                    Some(Ok(StreamEvent::Token(token))) => {
                        self.text.push_str(&token);
                        Some(Ok(GenerationEvent::Token(token)))
                    }
                    Some(Ok(StreamEvent::Done(done))) => {
                        // Ends the stream and frees the slot before the summary goes out.
                        self.source = None;
                        let summary = Summary {
                            text: std::mem::take(&mut self.text),
                            model: done.model.clone().or_else(|| self.model.clone()),
                            cached: false,
                            fim: self.fim,
                            prompt_tokens: done.prompt_tokens,
                            cached_tokens: done.cached_tokens,
                            total_tokens: done.total_tokens,
                            stop_reason: done.stop_reason,
                            chunking: self.chunking.clone(),
                            timings: Timings {
                                edge_overhead_ms: ms(sent - self.received),
                                backend_ms: ms(sent.elapsed()),
                                total_ms: ms(self.received.elapsed()),
                                tokens_per_second: done.tokens_per_second,
                            },
                        };
                        self.record_ok(sent - self.received, Some(sent.elapsed()));
                        tracing::info!(
                            tokens = summary.total_tokens,
                            cached_tokens = summary.cached_tokens,
                            edge_overhead_ms = summary.timings.edge_overhead_ms,
                            backend_ms = summary.timings.backend_ms,
                            chunked = summary.chunking.chunked,
                            "answered"
                        );
                        if let Some(key) = self.cache_key.take() {
                            if summary.stop_reason != "cancelled" {
                                let bytes = summary.text.len()
                                    + summary.stop_reason.len()
                                    + summary.model.as_ref().map_or(0, String::len)
                                    + std::mem::size_of::<Summary>();
                                lock_cache(&self.cache).insert(key, summary.clone(), bytes);
                            }
                        }
                        Some(Ok(GenerationEvent::Done(Box::new(summary))))
                    }
                    Some(Err(err)) => {
                        self.source = None;
                        self.stats.failed.inc();
                        Some(Err(err.into()))
                    }
                    None => {
                        self.source = None;
                        self.stats.failed.inc();
                        Some(Err(PipelineError::Backend(BackendError::Stream(
                            "the stream ended before its final event".into(),
                        ))))
                    }
                }
            }
        }
    }

    /// Runs to the end and returns the summary.
    pub async fn collect(mut self) -> Result<Summary, PipelineError> {
        while let Some(event) = self.next().await {
            if let GenerationEvent::Done(summary) = event? {
                return Ok(*summary);
            }
        }
        Err(PipelineError::Internal(
            "the generation ended without an answer".into(),
        ))
    }

    fn record_ok(&self, edge_overhead: Duration, backend: Option<Duration>) {
        let stats = &self.stats;
        stats.ok.inc();
        stats.record_edge_overhead(edge_overhead);
        if let Some(backend) = backend {
            stats.record_backend_time(backend);
        }
        if self.chunking.context_engine {
            stats.context_requests.inc();
            stats.chars_before.add(self.chunking.chars_before as u64);
            stats.chars_after.add(self.chunking.chars_after as u64);
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(Source::Live { .. }) = self.source {
            // Dropping the stream (with `self`) stops vps-infer's decode.
            self.stats.cancelled.inc();
            tracing::info!(
                chars = self.text.len(),
                "generation cancelled by the client"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn edge() -> Arc<Edge> {
        Edge::new(Config::default()).unwrap()
    }

    fn request(prompt: &str) -> CompletionRequest {
        CompletionRequest {
            prompt: prompt.into(),
            suffix: None,
            language: Language::Python,
            path: None,
            instruction: None,
            model: None,
            max_tokens: 32,
            temperature: 0.0,
            stop: Vec::new(),
        }
    }

    const OLD_BENCHMARK: &str = include_str!("../../context/tests/data/old_benchmark.py");

    #[test]
    fn a_short_prompt_is_sent_as_it_is() {
        let prepared = assemble(&edge(), request("def hello():"), Instant::now());
        let sent = prepared.request();
        assert_eq!(sent.prompt, "def hello():");
        assert_eq!(sent.suffix, None);
        assert!(sent.stop.is_empty());
        let chunking = prepared.chunking();
        assert!(!chunking.context_engine && !chunking.chunked);
        assert_eq!((chunking.chars_before, chunking.chars_after), (12, 12));
        assert!(prepared.cache_key.is_some(), "temperature 0 is cached");
    }

    #[test]
    fn the_old_benchmark_goes_instruction_first_and_shrinks() {
        let prepared = assemble(&edge(), request(OLD_BENCHMARK), Instant::now());
        let sent = prepared.request();
        assert!(
            sent.prompt
                .starts_with("# INSTRUCTION: Refactor to use async/await\n\nHere is the code:\n"),
            "{}",
            sent.prompt
        );
        assert_eq!(sent.stop, vec!["```".to_owned()]);
        let chunking = prepared.chunking();
        assert_eq!(chunking.mode, "instruction");
        assert!(chunking.chunked);
        assert_eq!(chunking.chunks, 5 * chunking.unique);
        assert!(chunking.reduction_percent >= 62.0, "{chunking:?}");
    }

    #[test]
    fn an_unknown_language_is_chunked_by_characters() {
        let text: String = (0..200)
            .map(|i| format!("PERFORM STEP-{i} VARYING IDX FROM 1 BY 1.\n"))
            .collect();
        let mut req = request(&text);
        req.language = Language::from_name("cobol");
        let prepared = assemble(&edge(), req, Instant::now());
        let chunking = prepared.chunking();
        assert!(chunking.context_engine);
        assert!(chunking.chunks > 0, "{chunking:?}");
        assert!(chunking.chars_after < chunking.chars_before, "{chunking:?}");
    }

    #[test]
    fn a_suffix_asks_for_fim_with_a_plain_fallback() {
        let mut req = request("def add(a, b):\n    ");
        req.suffix = Some("\n\nprint(add(1, 2))\n".into());
        let prepared = assemble(&edge(), req.clone(), Instant::now());
        let fim = prepared.request();
        assert_eq!(fim.suffix.as_deref(), Some("\n\nprint(add(1, 2))\n"));
        let plain = pipeline::request_for(&prepared.input, false);
        assert_eq!(plain.prompt, "def add(a, b):\n    ");
        assert_eq!(plain.suffix, None);

        // A model the config says lacks FIM tokens goes out plain at once.
        let mut config = Config::default();
        config.models.completion = Some("smollm2-135m".into());
        config.models.fim.insert("smollm2-135m".into(), false);
        let prepared = assemble(&Edge::new(config).unwrap(), req, Instant::now());
        assert_eq!(prepared.request().suffix, None);
    }

    #[test]
    fn only_temperature_zero_is_cached_and_parameters_are_in_the_key() {
        let mut warm = request("def f():");
        warm.temperature = 0.2;
        assert!(assemble(&edge(), warm, Instant::now()).cache_key.is_none());
        let a = assemble(&edge(), request("def f():"), Instant::now());
        let mut longer = request("def f():");
        longer.max_tokens = 64;
        let b = assemble(&edge(), longer, Instant::now());
        assert_ne!(a.cache_key, b.cache_key);
    }
}
