//! The pipeline's one error type. Each front end converts it once, at its edge:
//! `ApiError` in the HTTP routes, a JSON-RPC error in `lsp/`, a message on the
//! command line.

use cerebrum_context::Language;

use crate::backend::limiter::Overloaded;
use crate::backend::BackendError;

/// Why the pipeline could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    // The refactor's refusals, before any generation: the caller's to fix.
    /// Text without a grammar, or "Refactor to async" in a language without async
    /// functions.
    #[error("{}", unsupported(*.0))]
    UnsupportedLanguage(Language),
    #[error("the cursor is not inside a function; select the code to refactor")]
    NoFunction,
    #[error("`{0}` is already async")]
    AlreadyAsync(String),
    #[error("the instruction is empty")]
    EmptyInstruction,
    // Refusals on the way to the model: worth retrying shortly.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    #[error(transparent)]
    Backend(#[from] BackendError),
    // The model's answer failed validation twice.
    #[error(
        "the model could not follow the instruction (tried {attempts} times; last answer: \
         {reason}); nothing was changed. A larger refactor model may do better."
    )]
    Rejected { attempts: u32, reason: String },
    #[error("the refactor was cancelled")]
    Cancelled,
    /// A task of ours failed (a panic on a blocking thread): a bug, logged.
    #[error("internal error: {0}")]
    Internal(String),
}

fn unsupported(language: Language) -> String {
    if language.spec().is_some() {
        return format!(
            "{language} has no async functions: there is no \"Refactor to async\" for it"
        );
    }
    let names: Vec<&str> = Language::PARSED.iter().map(|l| l.name()).collect();
    format!(
        "there is nothing to refactor in {language} code ({} are supported)",
        names.join(", ")
    )
}
