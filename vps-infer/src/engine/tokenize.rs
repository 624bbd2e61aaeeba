//! Questions about a model's vocabulary (tokenize, detokenize, what special tokens and
//! template it has), answered on the engine thread, which owns llama.cpp.
//!
//! The loaded model answers when it is the one asked about. Otherwise the engine loads
//! the other model's vocabulary only (metadata and tokenizer, no weights: a few MB and
//! milliseconds), answers and drops it, so a `/tokenize` never switches or loads the
//! model that serves generations.

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use tokio::sync::oneshot;

use super::prompt::FimTokens;
use super::EngineError;
use super::{Command, Engine, Shared};

/// What a client asks of a vocabulary.
#[derive(Debug, Clone)]
pub enum VocabQuery {
    Tokenize {
        text: String,
        /// Add the model's BOS token (and whatever else its tokenizer adds).
        add_special: bool,
        /// Turn `<|im_start|>` and friends into their special tokens.
        parse_special: bool,
    },
    /// Text of these token ids; ids outside the vocabulary are refused.
    Detokenize(Vec<i32>),
    /// The model's properties (`/props`, FIM support).
    Info,
}

/// One token and the bytes it stands for.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPiece {
    pub id: i32,
    pub bytes: Vec<u8>,
}

/// What a model is, as far as clients need to know.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub n_ctx_train: u32,
    pub n_vocab: i32,
    pub has_fim: bool,
    pub chat_template: Option<String>,
    pub bos: Option<i32>,
    pub eos: i32,
}

#[derive(Debug, Clone)]
pub enum VocabAnswer {
    Tokens(Vec<TokenPiece>),
    Text(String),
    Info(ModelInfo),
}

pub(crate) struct VocabJob {
    pub model: String,
    pub query: VocabQuery,
    pub reply: oneshot::Sender<Result<VocabAnswer, EngineError>>,
}

impl Engine {
    /// Asks the engine thread about `model`'s vocabulary. It answers between two
    /// generations (a running decode is not interrupted), so this may wait for one.
    pub async fn vocab(&self, model: &str, query: VocabQuery) -> Result<VocabAnswer, EngineError> {
        if !self.shared.models.contains_key(model) {
            return Err(EngineError::UnknownModel(format!(
                "model {model:?} is not configured; see GET /v1/models"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Vocab(VocabJob {
                model: model.to_string(),
                query,
                reply,
            }))
            .map_err(|_| EngineError::Internal("the inference engine has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Internal("the inference engine has stopped".into()))?
    }
}

/// Answers from the loaded model.
pub(crate) fn answer(model: &LlamaModel, job: VocabJob) {
    let _ = job.reply.send(query(model, job.query));
}

/// Answers from a vocabulary-only load of `job.model` (not the loaded one).
pub(crate) fn answer_unloaded(backend: &LlamaBackend, shared: &Shared, job: VocabJob) {
    let result = match shared.models.get(&job.model) {
        None => Err(EngineError::UnknownModel(format!(
            "model {:?} is not configured",
            job.model
        ))),
        Some(config) => {
            let params = LlamaModelParams::default().with_vocab_only(true);
            match LlamaModel::load_from_file(backend, &config.path, &params) {
                Ok(model) => query(&model, job.query),
                Err(e) => Err(EngineError::unavailable(
                    format!(
                        "cannot read the vocabulary of model {:?} from {}: {e}",
                        job.model,
                        config.path.display()
                    ),
                    30,
                )),
            }
        }
    };
    let _ = job.reply.send(result);
}

fn query(model: &LlamaModel, query: VocabQuery) -> Result<VocabAnswer, EngineError> {
    let vocab = model.vocab();
    match query {
        VocabQuery::Tokenize {
            text,
            add_special,
            parse_special,
        } => {
            let tokens = if text.is_empty() && !add_special {
                Vec::new()
            } else {
                vocab.tokenize(text.as_bytes(), add_special, parse_special)
            };
            let pieces = tokens
                .into_iter()
                .map(|t| TokenPiece {
                    id: t.0,
                    bytes: vocab.token_to_piece(t, true, None),
                })
                .collect();
            Ok(VocabAnswer::Tokens(pieces))
        }
        VocabQuery::Detokenize(ids) => {
            // llama.cpp aborts the process on an id outside the vocabulary.
            let n_vocab = vocab.n_tokens();
            if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= n_vocab) {
                return Err(EngineError::Invalid(format!(
                    "tokens: {bad} is not a token of this model (0..{n_vocab})"
                )));
            }
            let tokens: Vec<LlamaToken> = ids.into_iter().map(LlamaToken).collect();
            let bytes = vocab.detokenize(&tokens, false, true);
            Ok(VocabAnswer::Text(
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
        VocabQuery::Info => Ok(VocabAnswer::Info(ModelInfo {
            n_ctx_train: model.n_ctx_train(),
            n_vocab: vocab.n_tokens(),
            has_fim: FimTokens::of(&vocab).is_some(),
            chat_template: model
                .chat_template(None)
                .ok()
                .and_then(|t| t.to_string().ok()),
            bos: vocab.should_add_bos().then(|| vocab.bos().0),
            eos: vocab.eos().0,
        })),
    }
}
