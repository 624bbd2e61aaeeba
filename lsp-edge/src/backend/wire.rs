//! What each kind of backend expects on the wire, and what it answers: the one
//! place that knows vps-infer's, llama-server's, OpenAI's and Ollama's APIs. The
//! rest of lsp-edge speaks [`InferenceRequest`] and [`StreamEvent`].
//!
//! | kind | generation | streamed as | health |
//! | --- | --- | --- | --- |
//! | `vps-infer` | `POST /v1/inference` | SSE, `{"token"}` then `{"done"}` | `GET /health` |
//! | `llama-server` | `POST /infill`, `POST /completion` | SSE, `{"content","stop"}` | `GET /health` |
//! | `openai` | `POST /v1/completions` | SSE, `choices[0].text`, then `[DONE]` | `GET /v1/models` |
//! | `ollama` | `POST /api/generate` | JSON lines, `{"response","done"}` | `GET /api/tags` |

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::client::{BackendError, GenerationStats, InferenceRequest, StreamEvent};
use crate::config::{BackendConfig, BackendKind, FimOrder, FimTokens};

/// Well-known code models' FIM tokens: the words the model's name contains, then
/// prefix, suffix, middle and the repository-level file separator.
const KNOWN_FIM_TOKENS: &[(&[&str], [&str; 3], Option<&str>)] = &[
    (
        &["qwen", "coder"],
        ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
        Some("<|file_sep|>"),
    ),
    (
        &["codegemma"],
        ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
        Some("<|file_separator|>"),
    ),
    (
        &["starcoder"],
        ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
        Some("<file_sep>"),
    ),
    (
        &["deepseek", "coder"],
        ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
        None,
    ),
    (&["codellama"], ["<PRE> ", " <SUF>", " <MID>"], None),
    (&["code-llama"], ["<PRE> ", " <SUF>", " <MID>"], None),
];

impl FimTokens {
    /// The FIM tokens of well-known code models, from the model's name as an
    /// OpenAI-compatible server reports it (`Qwen/Qwen2.5-Coder-1.5B`,
    /// `bigcode/starcoder2-3b`, `codellama:7b-code`, ...).
    pub fn for_model(model: &str) -> Option<FimTokens> {
        let model = model.to_ascii_lowercase();
        let (_, [prefix, suffix, middle], file_sep) = KNOWN_FIM_TOKENS
            .iter()
            .find(|(words, ..)| words.iter().all(|word| model.contains(word)))?;
        Some(FimTokens {
            prefix: (*prefix).into(),
            suffix: (*suffix).into(),
            middle: (*middle).into(),
            file_sep: file_sep.map(Into::into),
        })
    }
}

/// How events are cut out of the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events; each event's `data`.
    Sse,
    /// One JSON document per line.
    JsonLines,
}

/// One generation request as the backend wants it.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub path: &'static str,
    pub body: Value,
    pub framing: Framing,
}

/// The backend's model for a request: its configured one (OpenAI and Ollama
/// servers name their own models), else the request's.
fn model_for(config: &BackendConfig, request: &InferenceRequest) -> Option<String> {
    config.model.clone().or_else(|| request.model.clone())
}

/// `config` with what its kind needs worked out once, before any request: an
/// `openai` backend's FIM tokens, from `fim_tokens` or else its model's name (`None`
/// when neither tells them).
pub fn resolve(config: &BackendConfig) -> BackendConfig {
    let mut config = config.clone();
    if config.kind == BackendKind::Openai && config.fim_tokens.is_none() {
        config.fim_tokens = config.model.as_deref().and_then(FimTokens::for_model);
    }
    config
}

/// The request for `config`'s kind ([`resolve`]d). `request.suffix` makes it
/// fill-in-the-middle.
pub fn build(
    config: &BackendConfig,
    request: &InferenceRequest,
) -> Result<WireRequest, BackendError> {
    let sse = |path, body| WireRequest {
        path,
        body,
        framing: Framing::Sse,
    };
    Ok(match config.kind {
        BackendKind::VpsInfer => sse(
            "/v1/inference",
            serde_json::to_value(request).map_err(|err| BackendError::Protocol(err.to_string()))?,
        ),
        BackendKind::LlamaServer => {
            let mut body = sampling(request, "n_predict");
            body.insert("stream".into(), json!(true));
            body.insert("cache_prompt".into(), json!(true));
            match &request.suffix {
                Some(suffix) => {
                    body.insert("input_prefix".into(), json!(request.prompt));
                    body.insert("input_suffix".into(), json!(suffix));
                    let extra: Vec<Value> = request
                        .extra
                        .iter()
                        .map(|chunk| json!({"filename": chunk.label, "text": chunk.text}))
                        .collect();
                    body.insert("input_extra".into(), Value::Array(extra));
                    sse("/infill", Value::Object(body))
                }
                None => {
                    body.insert("prompt".into(), json!(request.prompt));
                    sse("/completion", Value::Object(body))
                }
            }
        }
        BackendKind::Openai => {
            let prompt = match &request.suffix {
                Some(suffix) => {
                    let tokens = config.fim_tokens.as_ref().ok_or_else(|| {
                        BackendError::Protocol(format!(
                            "no FIM tokens are known for model {:?}; set fim_tokens",
                            config.model
                        ))
                    })?;
                    openai_fim_prompt(tokens, request, suffix)
                }
                None => request.prompt.clone(),
            };
            let mut body = sampling(request, "max_tokens");
            body.insert("model".into(), json!(model_for(config, request)));
            body.insert("prompt".into(), json!(prompt));
            body.insert("stream".into(), json!(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
            sse(openai_path(config, "completions"), Value::Object(body))
        }
        BackendKind::Ollama => {
            let mut options = sampling(request, "num_predict");
            let mut body = Map::new();
            body.insert("model".into(), json!(model_for(config, request)));
            body.insert("stream".into(), json!(true));
            match &request.suffix {
                Some(suffix) => {
                    // Ollama's template places the prompt after its FIM prefix token:
                    // context chunks go at the start of the prefix.
                    let prompt = crate::pipeline::plain_prompt(&request.prompt, &request.extra);
                    body.insert("prompt".into(), json!(prompt));
                    body.insert("suffix".into(), json!(suffix));
                }
                None => {
                    body.insert("prompt".into(), json!(request.prompt));
                    body.insert("raw".into(), json!(true));
                }
            }
            if let Some(stop) = options.remove("stop") {
                options.insert("stop".into(), stop);
            }
            body.insert("options".into(), Value::Object(options));
            WireRequest {
                path: "/api/generate",
                body: Value::Object(body),
                framing: Framing::JsonLines,
            }
        }
    })
}

/// The sampling settings every kind shares, with its name for the token limit.
fn sampling(request: &InferenceRequest, max_tokens: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert(max_tokens.into(), json!(request.max_tokens));
    body.insert("temperature".into(), json!(request.temperature));
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), json!(seed));
    }
    body
}

/// A FIM prompt in `tokens`' format, laid out as vps-infer lays it out for its own
/// models: context chunks as files of the repository, then prefix, suffix, middle.
fn openai_fim_prompt(tokens: &FimTokens, request: &InferenceRequest, suffix: &str) -> String {
    let mut prompt = String::new();
    for chunk in &request.extra {
        match &tokens.file_sep {
            Some(sep) => prompt.push_str(&format!("{sep}{}\n{}\n", chunk.label, chunk.text)),
            None => prompt.push_str(&format!("{}\n\n", chunk.text)),
        }
    }
    if let (Some(sep), false) = (&tokens.file_sep, request.extra.is_empty()) {
        prompt.push_str(sep);
    }
    match request.fim_order {
        FimOrder::Psm => {
            prompt.push_str(&tokens.prefix);
            prompt.push_str(&request.prompt);
            prompt.push_str(&tokens.suffix);
            prompt.push_str(suffix);
        }
        FimOrder::Spm => {
            prompt.push_str(&tokens.suffix);
            prompt.push_str(suffix);
            prompt.push_str(&tokens.prefix);
            prompt.push_str(&request.prompt);
        }
    }
    prompt.push_str(&tokens.middle);
    prompt
}

/// `/v1/<rest>` under an OpenAI base URL, which may or may not end in `/v1`.
fn openai_path(config: &BackendConfig, rest: &'static str) -> &'static str {
    let with_v1 = config.url.trim_end_matches('/').ends_with("/v1");
    match (rest, with_v1) {
        ("completions", true) => "/completions",
        ("completions", false) => "/v1/completions",
        (_, true) => "/models",
        (_, false) => "/v1/models",
    }
}

/// The health probe's path.
pub fn health_path(config: &BackendConfig) -> &'static str {
    match config.kind {
        BackendKind::VpsInfer | BackendKind::LlamaServer => "/health",
        BackendKind::Openai => openai_path(config, "models"),
        BackendKind::Ollama => "/api/tags",
    }
}

/// The header that carries the key.
pub fn auth_header(kind: BackendKind, key: &str) -> (&'static str, String) {
    match kind {
        BackendKind::VpsInfer => ("X-API-Key", key.to_owned()),
        _ => ("Authorization", format!("Bearer {key}")),
    }
}

/// Turns a stream's events into [`StreamEvent`]s, keeping what a kind spreads
/// over several events (OpenAI's usage and finish reason, the text so far).
#[derive(Debug)]
pub struct EventParser {
    kind: BackendKind,
    text: String,
    stats: GenerationStats,
}

#[derive(Debug, Deserialize)]
struct VpsInferEvent {
    token: Option<String>,
    #[serde(default)]
    done: bool,
    error: Option<WireError>,
}

/// `{"error": {...}}` as vps-infer, llama-server and OpenAI servers send it, or
/// `{"error": "..."}` as Ollama does.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireError {
    Object {
        #[serde(default)]
        code: Option<Value>,
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        message: String,
    },
    Text(String),
}

impl WireError {
    /// The HTTP status the error names (if any), its type and its message.
    pub fn into_parts(self) -> (Option<u16>, String, String) {
        match self {
            WireError::Object {
                code,
                kind,
                message,
            } => {
                let code = code
                    .and_then(|code| code.as_u64())
                    .and_then(|code| u16::try_from(code).ok())
                    .filter(|code| *code >= 400);
                (code, kind, message)
            }
            WireError::Text(message) => (None, String::new(), message),
        }
    }

    /// An error sent inside a stream; `status` when it names none.
    pub fn into_backend_error(self, status: u16) -> BackendError {
        let (code, kind, message) = self.into_parts();
        BackendError::Api {
            status: code.unwrap_or(status),
            kind,
            message,
            retry_after: None,
        }
    }
}

/// An error body, whatever the kind.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: WireError,
}

#[derive(Debug, Deserialize)]
struct LlamaEvent {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    tokens_evaluated: u64,
    #[serde(default)]
    tokens_predicted: u64,
    #[serde(default)]
    stop_type: String,
    #[serde(default)]
    timings: LlamaTimings,
    error: Option<WireError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LlamaTimings {
    prompt_n: u64,
    prompt_ms: f64,
    predicted_ms: f64,
    predicted_per_second: f64,
}

#[derive(Debug, Deserialize)]
struct OpenAiEvent {
    #[serde(default)]
    choices: Vec<OpenAiChoice>,
    usage: Option<OpenAiUsage>,
    model: Option<String>,
    error: Option<WireError>,
}

#[derive(Debug, Deserialize)]
struct OpenAiChoice {
    #[serde(default)]
    text: String,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct OllamaEvent {
    #[serde(default)]
    response: String,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: String,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    /// Nanoseconds.
    #[serde(default)]
    total_duration: u64,
    #[serde(default)]
    eval_duration: u64,
    model: Option<String>,
    error: Option<WireError>,
}

impl EventParser {
    pub fn new(kind: BackendKind) -> EventParser {
        EventParser {
            kind,
            text: String::new(),
            stats: GenerationStats::default(),
        }
    }

    /// One event's data: tokens, the end, or an error. Most events give one
    /// token; llama-server's and Ollama's last may give a token and the end.
    pub fn parse(&mut self, data: &str) -> Result<Vec<StreamEvent>, BackendError> {
        let bad = |err: serde_json::Error| {
            // The event is the backend's text: quote only its start.
            let start: String = data.chars().take(200).collect();
            BackendError::Protocol(format!("bad event {start:?}: {err}"))
        };
        let mut events = Vec::new();
        match self.kind {
            BackendKind::VpsInfer => {
                let event: VpsInferEvent = serde_json::from_str(data).map_err(bad)?;
                if let Some(error) = event.error {
                    return Err(error.into_backend_error(500));
                }
                if event.done {
                    let stats: GenerationStats = serde_json::from_str(data)
                        .map_err(|err| BackendError::Protocol(format!("bad final event: {err}")))?;
                    events.push(StreamEvent::Done(stats));
                } else if let Some(token) = event.token {
                    events.push(StreamEvent::Token(token));
                }
            }
            BackendKind::LlamaServer => {
                let event: LlamaEvent = serde_json::from_str(data).map_err(bad)?;
                if let Some(error) = event.error {
                    return Err(error.into_backend_error(500));
                }
                self.token(&mut events, event.content);
                if event.stop {
                    let timings = &event.timings;
                    events.push(StreamEvent::Done(GenerationStats {
                        text: std::mem::take(&mut self.text),
                        model: None,
                        prompt_tokens: event.tokens_evaluated,
                        cached_tokens: event.tokens_evaluated.saturating_sub(timings.prompt_n),
                        total_tokens: event.tokens_predicted,
                        inference_time: (timings.prompt_ms + timings.predicted_ms) / 1000.0,
                        tokens_per_second: timings.predicted_per_second,
                        stop_reason: match event.stop_type.as_str() {
                            "limit" => "length".into(),
                            "word" => "stop".into(),
                            other => other.into(),
                        },
                    }));
                }
            }
            BackendKind::Openai => {
                if data.trim() == "[DONE]" {
                    let mut stats = std::mem::take(&mut self.stats);
                    stats.text = std::mem::take(&mut self.text);
                    return Ok(vec![StreamEvent::Done(stats)]);
                }
                let event: OpenAiEvent = serde_json::from_str(data).map_err(bad)?;
                if let Some(error) = event.error {
                    return Err(error.into_backend_error(500));
                }
                if event.model.is_some() {
                    self.stats.model = event.model;
                }
                if let Some(usage) = event.usage {
                    self.stats.prompt_tokens = usage.prompt_tokens;
                    self.stats.total_tokens = usage.completion_tokens;
                }
                if let Some(choice) = event.choices.into_iter().next() {
                    if let Some(reason) = choice.finish_reason {
                        self.stats.stop_reason = reason;
                    }
                    self.token(&mut events, choice.text);
                }
            }
            BackendKind::Ollama => {
                let event: OllamaEvent = serde_json::from_str(data).map_err(bad)?;
                if let Some(error) = event.error {
                    return Err(error.into_backend_error(500));
                }
                self.token(&mut events, event.response);
                if event.done {
                    let eval_seconds = event.eval_duration as f64 / 1e9;
                    events.push(StreamEvent::Done(GenerationStats {
                        text: std::mem::take(&mut self.text),
                        model: event.model,
                        prompt_tokens: event.prompt_eval_count,
                        cached_tokens: 0,
                        total_tokens: event.eval_count,
                        inference_time: event.total_duration as f64 / 1e9,
                        tokens_per_second: if eval_seconds > 0.0 {
                            event.eval_count as f64 / eval_seconds
                        } else {
                            0.0
                        },
                        stop_reason: event.done_reason,
                    }));
                }
            }
        }
        Ok(events)
    }

    fn token(&mut self, events: &mut Vec<StreamEvent>, text: String) {
        if !text.is_empty() {
            self.text.push_str(&text);
            events.push(StreamEvent::Token(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ExtraChunk;

    fn backend(kind: BackendKind, url: &str, model: Option<&str>) -> BackendConfig {
        resolve(&BackendConfig {
            kind,
            url: url.into(),
            model: model.map(Into::into),
            ..BackendConfig::default()
        })
    }

    fn fim_request() -> InferenceRequest {
        InferenceRequest {
            prompt: "def f(x):\n    return ".into(),
            suffix: Some("\n\nprint(f(1))\n".into()),
            extra: vec![ExtraChunk {
                label: "util.py".into(),
                text: "def g(): pass".into(),
            }],
            model: Some("qwen2.5-coder-0.5b".into()),
            max_tokens: 32,
            temperature: 0.0,
            stop: vec!["\n\n".into()],
            seed: Some(7),
            stream: true,
            ..InferenceRequest::default()
        }
    }

    fn shown(wire: &WireRequest) -> String {
        format!("{:?} {} {}", wire.framing, wire.path, wire.body)
    }

    #[test]
    fn each_kind_gets_its_own_request() {
        let request = fim_request();
        let plain = InferenceRequest {
            suffix: None,
            extra: Vec::new(),
            ..fim_request()
        };
        let kinds = [
            backend(BackendKind::VpsInfer, "http://a:9000", None),
            backend(BackendKind::LlamaServer, "http://a:8080", None),
            backend(
                BackendKind::Openai,
                "http://a:8000/v1",
                Some("Qwen/Qwen2.5-Coder-1.5B"),
            ),
            backend(
                BackendKind::Ollama,
                "http://a:11434",
                Some("qwen2.5-coder:1.5b"),
            ),
        ];
        let out: Vec<String> = kinds
            .iter()
            .flat_map(|config| {
                [&request, &plain].map(|request| shown(&build(config, request).unwrap()))
            })
            .collect();
        expect_test::expect![[r#"
            Sse /v1/inference {"extra":[{"label":"util.py","text":"def g(): pass"}],"max_tokens":32,"model":"qwen2.5-coder-0.5b","prompt":"def f(x):\n    return ","seed":7,"stop":["\n\n"],"stream":true,"suffix":"\n\nprint(f(1))\n","temperature":0.0}
            Sse /v1/inference {"max_tokens":32,"model":"qwen2.5-coder-0.5b","prompt":"def f(x):\n    return ","seed":7,"stop":["\n\n"],"stream":true,"temperature":0.0}
            Sse /infill {"cache_prompt":true,"input_extra":[{"filename":"util.py","text":"def g(): pass"}],"input_prefix":"def f(x):\n    return ","input_suffix":"\n\nprint(f(1))\n","n_predict":32,"seed":7,"stop":["\n\n"],"stream":true,"temperature":0.0}
            Sse /completion {"cache_prompt":true,"n_predict":32,"prompt":"def f(x):\n    return ","seed":7,"stop":["\n\n"],"stream":true,"temperature":0.0}
            Sse /completions {"max_tokens":32,"model":"Qwen/Qwen2.5-Coder-1.5B","prompt":"<|file_sep|>util.py\ndef g(): pass\n<|file_sep|><|fim_prefix|>def f(x):\n    return <|fim_suffix|>\n\nprint(f(1))\n<|fim_middle|>","seed":7,"stop":["\n\n"],"stream":true,"stream_options":{"include_usage":true},"temperature":0.0}
            Sse /completions {"max_tokens":32,"model":"Qwen/Qwen2.5-Coder-1.5B","prompt":"def f(x):\n    return ","seed":7,"stop":["\n\n"],"stream":true,"stream_options":{"include_usage":true},"temperature":0.0}
            JsonLines /api/generate {"model":"qwen2.5-coder:1.5b","options":{"num_predict":32,"seed":7,"stop":["\n\n"],"temperature":0.0},"prompt":"def g(): pass\n\ndef f(x):\n    return ","stream":true,"suffix":"\n\nprint(f(1))\n"}
            JsonLines /api/generate {"model":"qwen2.5-coder:1.5b","options":{"num_predict":32,"seed":7,"stop":["\n\n"],"temperature":0.0},"prompt":"def f(x):\n    return ","raw":true,"stream":true}"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn openai_paths_and_fim_tokens() {
        let plain = backend(BackendKind::Openai, "http://a:8000", Some("starcoder2-3b"));
        assert_eq!(openai_path(&plain, "completions"), "/v1/completions");
        assert_eq!(health_path(&plain), "/v1/models");
        let tokens = plain.fim_tokens.as_ref().unwrap();
        assert_eq!(tokens.prefix, "<fim_prefix>");
        // An unknown model has no FIM form until configured.
        let mut unknown = backend(BackendKind::Openai, "http://a:8000", Some("my-model"));
        assert_eq!(unknown.fim_tokens, None);
        let err = build(&unknown, &fim_request()).unwrap_err();
        assert!(err.to_string().contains("set fim_tokens"), "{err}");
        unknown.fim_tokens = Some(FimTokens {
            prefix: "<P>".into(),
            suffix: "<S>".into(),
            middle: "<M>".into(),
            file_sep: None,
        });
        let request = InferenceRequest {
            fim_order: FimOrder::Spm,
            ..fim_request()
        };
        let body = build(&unknown, &request).unwrap().body;
        assert_eq!(
            body["prompt"],
            "def g(): pass\n\n<S>\n\nprint(f(1))\n<P>def f(x):\n    return <M>"
        );
        assert_eq!(auth_header(BackendKind::Openai, "k").1, "Bearer k");
        assert_eq!(auth_header(BackendKind::VpsInfer, "k").0, "X-API-Key");
    }

    /// Feeds each event's data to a parser; shows what came out, one line each.
    fn parsed(kind: BackendKind, events: &[&str]) -> String {
        let mut parser = EventParser::new(kind);
        events
            .iter()
            .map(|data| match parser.parse(data) {
                Ok(events) => format!("{events:?}"),
                Err(err) => format!("error: {err}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn llama_server_events() {
        expect_test::expect![[r#"
            [Token("x")]
            []
            [Token(" + 1"), Done(GenerationStats { text: "x + 1", model: None, prompt_tokens: 40, cached_tokens: 30, total_tokens: 2, inference_time: 0.25, tokens_per_second: 20.0, stop_reason: "length" })]
            error: the backend refused the request (503 unavailable_error): Loading model"#]]
        .assert_eq(&parsed(
            BackendKind::LlamaServer,
            &[
                r#"{"content":"x","stop":false,"tokens_predicted":1}"#,
                r#"{"content":"","stop":false}"#,
                r#"{"content":" + 1","stop":true,"tokens_evaluated":40,"tokens_predicted":2,"stop_type":"limit","timings":{"prompt_n":10,"prompt_ms":150.0,"predicted_ms":100.0,"predicted_per_second":20.0}}"#,
                r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#,
            ],
        ));
    }

    #[test]
    fn openai_events() {
        expect_test::expect![[r#"
            [Token("x")]
            [Token(" + 1")]
            []
            []
            [Done(GenerationStats { text: "x + 1", model: Some("qwen"), prompt_tokens: 40, cached_tokens: 0, total_tokens: 2, inference_time: 0.0, tokens_per_second: 0.0, stop_reason: "length" })]"#]]
        .assert_eq(&parsed(
            BackendKind::Openai,
            &[
                r#"{"model":"qwen","choices":[{"text":"x","index":0,"finish_reason":null}]}"#,
                r#"{"choices":[{"text":" + 1","index":0,"finish_reason":null}]}"#,
                r#"{"choices":[{"text":"","index":0,"finish_reason":"length"}]}"#,
                r#"{"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":2}}"#,
                "[DONE]",
            ],
        ));
        let err = parsed(
            BackendKind::Openai,
            &[
                r#"{"error":{"message":"model not found","type":"invalid_request_error","code":404}}"#,
            ],
        );
        assert_eq!(
            err,
            "error: the backend refused the request (404 invalid_request_error): model not found"
        );
    }

    #[test]
    fn ollama_events() {
        expect_test::expect![[r#"
            [Token("x")]
            [Done(GenerationStats { text: "x", model: Some("qwen2.5-coder:1.5b"), prompt_tokens: 12, cached_tokens: 0, total_tokens: 1, inference_time: 0.5, tokens_per_second: 10.0, stop_reason: "stop" })]
            error: the backend refused the request (500): model requires more system memory"#]]
        .assert_eq(&parsed(
            BackendKind::Ollama,
            &[
                r#"{"model":"qwen2.5-coder:1.5b","response":"x","done":false}"#,
                r#"{"model":"qwen2.5-coder:1.5b","response":"","done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":1,"total_duration":500000000,"eval_duration":100000000}"#,
                r#"{"error":"model requires more system memory"}"#,
            ],
        ));
    }

    #[test]
    fn json_lines_are_cut_at_line_ends() {
        let mut decoder = super::super::SseDecoder::new(Framing::JsonLines);
        let mut events = decoder.push(b"{\"response\":\"a\"}\r\n\n{\"resp");
        events.extend(decoder.push(b"onse\":\"b\"}\n"));
        assert_eq!(events, ["{\"response\":\"a\"}", "{\"response\":\"b\"}"]);
        assert_eq!(decoder.buffered(), 0);
    }
}
