//! The engine's one error type: what went wrong, in the engine's terms. The HTTP
//! layer turns it into a status code and an envelope once (`crate::error`).

use crate::guard::Refusal;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The request names a model the configuration does not have.
    #[error("{0}")]
    UnknownModel(String),
    /// The request cannot be served as asked (an empty prompt, a suffix for a model
    /// without FIM tokens, a token id outside the vocabulary).
    #[error("{0}")]
    Invalid(String),
    /// The prompt and `max_tokens` do not fit the context.
    #[error("{0}")]
    ExceedContextSize(String),
    /// Cannot serve now (the queue is full, the model failed to load); worth a retry
    /// after the given number of seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after_s: u32 },
    /// A resource guard said no.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// llama.cpp failed, or the engine thread is gone.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn unavailable(message: impl Into<String>, retry_after_s: u32) -> EngineError {
        EngineError::Unavailable {
            message: message.into(),
            retry_after_s,
        }
    }
}
