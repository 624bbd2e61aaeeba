//! llama.cpp's server routes: `/completion` (also `/completions`), `/infill`,
//! `/tokenize`, `/detokenize` and `/props`, with its field names, defaults and answers.
//!
//! Fields llama.cpp offers and we do not (token probabilities, grammars, logit bias,
//! token-id or batched prompts, images) are refused with a 400 that names them; fields
//! that only tune llama.cpp's own machinery (`cache_prompt`, `top_k`, `id_slot`) are
//! accepted and have no effect.

use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    data, invalid, pick_model, stream, Finish, Generation, OneOrMany, Render, Translate, Watch,
    DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
};
use crate::engine::tokenize::{VocabAnswer, VocabQuery};
use crate::engine::{Extra, GenerateRequest, PromptParts};
use crate::error::ApiError;
use crate::routes::{ApiJson, AppState};

/// A prompt as llama.cpp accepts it: text, `{"prompt_string": ...}`, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptInput {
    Text(String),
    Object {
        prompt_string: String,
        multimodal_data: Option<Value>,
    },
    List(Vec<Value>),
}

impl PromptInput {
    pub(crate) fn into_text(self) -> Result<String, ApiError> {
        match self {
            PromptInput::Text(text) => Ok(text),
            PromptInput::Object {
                prompt_string,
                multimodal_data,
            } => match multimodal_data {
                Some(Value::Null) | None => Ok(prompt_string),
                Some(_) => Err(ApiError::InvalidRequest(
                    "prompt.multimodal_data: images and audio are not offered by vps-infer".into(),
                )),
            },
            PromptInput::List(items) => {
                if items.iter().any(Value::is_number) {
                    return Err(ApiError::InvalidRequest(
                        "prompt: prompts given as token ids are not offered by vps-infer; send the text"
                            .into(),
                    ));
                }
                let mut items = items.into_iter();
                match (items.next(), items.next()) {
                    (Some(one), None) => serde_json::from_value::<PromptInput>(one)
                        .map_err(|e| ApiError::InvalidRequest(format!("prompt[0]: {e}")))
                        .and_then(PromptInput::into_text),
                    (None, _) => Ok(String::new()),
                    (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
                        "prompt: batches of prompts are not offered by vps-infer; send one request per prompt"
                            .into(),
                    )),
                }
            }
        }
    }
}

/// One `input_extra` entry: a file that gives context.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputExtra {
    filename: String,
    text: String,
}

/// The body of `/completion` and `/infill` (which adds the `input_*` fields).
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionBody {
    prompt: Option<PromptInput>,
    model: Option<String>,
    n_predict: Option<i64>,
    temperature: Option<f32>,
    /// Accepted for llama.cpp's clients; our sampler is top-p and temperature.
    top_k: Option<i64>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    /// Accepted; vps-infer always reuses the KV cache (its reuse is exact).
    cache_prompt: Option<bool>,
    n_indent: Option<i64>,
    t_max_predict_ms: Option<i64>,
    n_probs: Option<i64>,
    logit_bias: Option<Value>,
    grammar: Option<String>,
    json_schema: Option<Value>,
    response_fields: Option<Vec<String>>,
    input_prefix: Option<String>,
    input_suffix: Option<String>,
    input_extra: Option<Vec<InputExtra>>,
}

impl CompletionBody {
    fn refuse_unoffered(&self) -> Result<(), ApiError> {
        let not_offered = |what: &str| {
            Err(ApiError::InvalidRequest(format!(
                "{what} is not offered by vps-infer"
            )))
        };
        if self.n_probs.unwrap_or(0) > 0 {
            return not_offered("n_probs: token probabilities");
        }
        match &self.logit_bias {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(_) => return not_offered("logit_bias"),
        }
        if self.grammar.as_deref().is_some_and(|g| !g.is_empty()) {
            return not_offered("grammar: constrained sampling");
        }
        if self.json_schema.as_ref().is_some_and(|s| !s.is_null()) {
            return not_offered("json_schema: constrained sampling");
        }
        Ok(())
    }

    fn settings(&self, request: &GenerateRequest) -> Value {
        json!({
            "n_predict": request.sampling.max_tokens,
            "seed": request.sampling.seed,
            "temperature": request.sampling.temperature,
            "top_k": self.top_k.unwrap_or(40),
            "top_p": request.sampling.top_p,
            "stop": request.sampling.stop,
            "stream": self.stream,
            "cache_prompt": self.cache_prompt.unwrap_or(true),
            "n_indent": self.n_indent.unwrap_or(0),
            "t_max_predict_ms": self.t_max_predict_ms.unwrap_or(0),
            "model": request.model,
        })
    }

    /// The request for `/completion` (`infill` false) or `/infill`.
    fn translate(&mut self, app: &AppState, infill: bool) -> Result<GenerateRequest, ApiError> {
        self.refuse_unoffered()?;
        let prompt = self
            .prompt
            .take()
            .map(PromptInput::into_text)
            .transpose()?
            .unwrap_or_default();
        let parts = if infill {
            // llama.cpp puts `prompt` after the FIM middle token, as the start of the
            // middle; our layout keeps one prefix, so it ends the prefix instead.
            let extra = self
                .input_extra
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|e| Extra {
                    label: e.filename,
                    text: e.text,
                })
                .collect();
            PromptParts {
                prompt: format!("{}{prompt}", self.input_prefix.take().unwrap_or_default()),
                suffix: Some(self.input_suffix.take().unwrap_or_default()),
                extra,
                ..PromptParts::default()
            }
        } else {
            PromptParts {
                prompt,
                ..PromptParts::default()
            }
        };
        Translate {
            model: pick_model(app, self.model.as_deref()),
            parts,
            max_tokens: self.n_predict,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: OneOrMany::take_all(&mut self.stop),
            seed: self.seed,
        }
        .build()
    }
}

pub(crate) async fn completion(
    State(app): State<AppState>,
    body: Result<ApiJson<CompletionBody>, ApiError>,
) -> Result<Response, ApiError> {
    run(app, body, false).await
}

pub(crate) async fn infill(
    State(app): State<AppState>,
    body: Result<ApiJson<CompletionBody>, ApiError>,
) -> Result<Response, ApiError> {
    run(app, body, true).await
}

async fn run(
    app: AppState,
    body: Result<ApiJson<CompletionBody>, ApiError>,
    infill: bool,
) -> Result<Response, ApiError> {
    let ApiJson(mut body) = body.map_err(|e| invalid(&app, e))?;
    let prompt_text = match &body.prompt {
        Some(PromptInput::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let request = body.translate(&app, infill).map_err(|e| invalid(&app, e))?;
    let settings = body.settings(&request);
    let generation = Generation::start(
        &app,
        request,
        Watch::new(body.n_indent, body.t_max_predict_ms),
    )
    .await?;
    let prompt_tokens = generation.prompt_tokens();
    if body.stream {
        return Ok(stream(
            generation,
            Chunks {
                settings,
                prompt: prompt_text,
                prompt_tokens,
                predicted: 0,
            },
        ));
    }
    let finish = generation.collect().await?;
    let mut answer = final_answer(&finish, &finish.text, settings, prompt_text);
    if let Some(fields) = body.response_fields.filter(|f| !f.is_empty()) {
        answer = project(&answer, &fields);
    }
    Ok(Json(answer).into_response())
}

/// llama.cpp's whole answer (also its last streamed event, with empty `content`).
fn final_answer(finish: &Finish, content: &str, settings: Value, prompt: String) -> Value {
    json!({
        "index": 0,
        "content": content,
        "tokens": [],
        "id_slot": 0,
        "stop": true,
        "model": finish.model,
        "tokens_predicted": finish.predicted,
        "tokens_evaluated": finish.prompt_tokens,
        "generation_settings": settings,
        "prompt": prompt,
        "has_new_line": finish.text.contains('\n'),
        "truncated": false,
        "stop_type": finish.stop.llama(),
        "stopping_word": "",
        "tokens_cached": finish.cached_tokens,
        "timings": finish.timings(),
    })
}

/// `response_fields`: only these fields, named by their `/`-separated paths.
fn project(answer: &Value, fields: &[String]) -> Value {
    let mut out = Map::new();
    for field in fields {
        let pointer = format!("/{field}");
        if let Some(value) = answer.pointer(&pointer) {
            out.insert(field.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// Streamed events of `/completion` and `/infill`.
struct Chunks {
    settings: Value,
    prompt: String,
    prompt_tokens: usize,
    predicted: usize,
}

impl Render for Chunks {
    fn text(&mut self, text: &str) -> Vec<SseEvent> {
        self.predicted += 1;
        vec![data(&json!({
            "index": 0,
            "content": text,
            "tokens": [],
            "stop": false,
            "id_slot": 0,
            "tokens_predicted": self.predicted,
            "tokens_evaluated": self.prompt_tokens,
        }))]
    }

    fn done(&mut self, finish: &Finish) -> Vec<SseEvent> {
        let prompt = std::mem::take(&mut self.prompt);
        vec![data(&final_answer(
            finish,
            "",
            self.settings.take(),
            prompt,
        ))]
    }

    fn error(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![data(&error.envelope())]
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeBody {
    content: String,
    #[serde(default)]
    add_special: bool,
    parse_special: Option<bool>,
    #[serde(default)]
    with_pieces: bool,
    model: Option<String>,
}

pub(crate) async fn tokenize(
    State(app): State<AppState>,
    body: Result<ApiJson<TokenizeBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body.map_err(|e| invalid(&app, e))?;
    let model = pick_model(&app, body.model.as_deref());
    let query = VocabQuery::Tokenize {
        text: body.content,
        add_special: body.add_special,
        parse_special: body.parse_special.unwrap_or(true),
    };
    let VocabAnswer::Tokens(pieces) = app.engine.vocab(&model, query).await? else {
        return Err(ApiError::Server(
            "the engine answered another question".into(),
        ));
    };
    let tokens: Vec<Value> = pieces
        .into_iter()
        .map(|p| {
            if !body.with_pieces {
                return json!(p.id);
            }
            // A piece that is not whole UTF-8 (half a character) goes out as bytes.
            match String::from_utf8(p.bytes) {
                Ok(text) => json!({"id": p.id, "piece": text}),
                Err(e) => json!({"id": p.id, "piece": e.into_bytes()}),
            }
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct DetokenizeBody {
    #[serde(default)]
    tokens: Vec<i64>,
    model: Option<String>,
}

pub(crate) async fn detokenize(
    State(app): State<AppState>,
    body: Result<ApiJson<DetokenizeBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body.map_err(|e| invalid(&app, e))?;
    let model = pick_model(&app, body.model.as_deref());
    let ids = body
        .tokens
        .into_iter()
        .map(|t| {
            i32::try_from(t).map_err(|_| {
                invalid(
                    &app,
                    ApiError::InvalidRequest(format!("tokens: {t} is not a token id")),
                )
            })
        })
        .collect::<Result<Vec<i32>, ApiError>>()?;
    let VocabAnswer::Text(content) = app
        .engine
        .vocab(&model, VocabQuery::Detokenize(ids))
        .await?
    else {
        return Err(ApiError::Server(
            "the engine answered another question".into(),
        ));
    };
    Ok(Json(json!({ "content": content })).into_response())
}

/// `GET /props`: the default model's properties in llama.cpp's shape.
pub(crate) async fn props(State(app): State<AppState>) -> Result<Response, ApiError> {
    let model = app.engine.default_model().to_string();
    let VocabAnswer::Info(info) = app.engine.vocab(&model, VocabQuery::Info).await? else {
        return Err(ApiError::Server(
            "the engine answered another question".into(),
        ));
    };
    let config = app.engine.models().get(&model);
    // The context the engine will create (see `Session::new`).
    let n_ctx = config
        .map(|c| c.ctx_size.min(info.n_ctx_train.max(256)))
        .unwrap_or(0);
    Ok(Json(json!({
        "default_generation_settings": {
            "id": 0,
            "n_ctx": n_ctx,
            "is_processing": app.engine.queue_depth() > 0,
            "params": {
                "n_predict": DEFAULT_MAX_TOKENS,
                "seed": u32::MAX,
                "temperature": DEFAULT_TEMPERATURE,
                "top_k": 40,
                "top_p": DEFAULT_TOP_P,
                "stop": [],
                "max_tokens": DEFAULT_MAX_TOKENS,
                "n_indent": 0,
                "t_max_predict_ms": 0,
                "stream": false,
                "n_probs": 0,
            },
        },
        "total_slots": app.engine.parallel(),
        "model_alias": model,
        "model_path": config.map(|c| c.path.display().to_string()),
        "chat_template": info.chat_template.unwrap_or_default(),
        "bos_token": info.bos,
        "eos_token": info.eos,
        "n_vocab": info.n_vocab,
        "n_ctx_train": info.n_ctx_train,
        "fim": info.has_fim,
        "modalities": {"vision": false, "audio": false},
        "build_info": format!("vps-infer {}", env!("CARGO_PKG_VERSION")),
        "is_sleeping": false,
    }))
    .into_response())
}
