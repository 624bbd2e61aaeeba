//! The language server's one error type, and its one conversion to a JSON-RPC error.
//! Handlers return [`LspError`]; tower-lsp-server's `Error` is made only here (and,
//! for frames that never reach a handler, in [`super::framing`]).

use tower_lsp_server::jsonrpc::{Error, ErrorCode};

use super::documents::DocumentError;
use crate::backend::limiter::Overloaded;
use crate::backend::BackendError;
use crate::config::ConfigError;
use crate::pipeline::PipelineError;

/// JSON-RPC codes LSP defines beyond tower-lsp-server's enum.
const SERVER_NOT_INITIALIZED: i64 = -32002;
const CONTENT_MODIFIED: i64 = -32801;
const SERVER_CANCELLED: i64 = -32802;
const REQUEST_FAILED: i64 = -32803;
/// Implementation-defined: the session's token is missing or wrong.
const UNAUTHORIZED: i64 = -32001;

/// Why a request (or a notification's work) failed.
#[derive(Debug, thiserror::Error)]
pub enum LspError {
    #[error("the session is not initialized")]
    NotInitialized,
    /// The session token is missing or wrong; the connection closes after the answer.
    #[error("refused the session: {0}")]
    Unauthorized(&'static str),
    /// `initializationOptions` or `workspace/didChangeConfiguration` settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("invalid {what}: {message}")]
    InvalidParams { what: &'static str, message: String },
    #[error("superseded by a newer completion request for this document")]
    Superseded,
    #[error(
        "the document changed while the refactor ran (version {expected}, now {now}); \
         nothing was changed, run it again"
    )]
    Changed { expected: i32, now: i32 },
    #[error("the editor refused the edit: {0}")]
    NotApplied(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl LspError {
    /// A task of ours failed (a panic on a blocking thread).
    pub fn internal(message: impl Into<String>) -> LspError {
        LspError::Pipeline(PipelineError::Internal(message.into()))
    }

    fn code(&self) -> ErrorCode {
        match self {
            LspError::NotInitialized => ErrorCode::ServerError(SERVER_NOT_INITIALIZED),
            LspError::Unauthorized(_) => ErrorCode::ServerError(UNAUTHORIZED),
            LspError::Config(_) | LspError::Document(_) | LspError::InvalidParams { .. } => {
                ErrorCode::InvalidParams
            }
            LspError::Superseded | LspError::Pipeline(PipelineError::Cancelled) => {
                ErrorCode::RequestCancelled
            }
            LspError::Changed { .. } => ErrorCode::ServerError(CONTENT_MODIFIED),
            LspError::Pipeline(PipelineError::Overloaded(_)) => {
                ErrorCode::ServerError(SERVER_CANCELLED)
            }
            LspError::Pipeline(PipelineError::Internal(_)) => ErrorCode::InternalError,
            LspError::NotApplied(_) | LspError::Pipeline(_) => {
                ErrorCode::ServerError(REQUEST_FAILED)
            }
        }
    }
}

impl From<Overloaded> for LspError {
    fn from(err: Overloaded) -> LspError {
        LspError::Pipeline(err.into())
    }
}

impl From<BackendError> for LspError {
    fn from(err: BackendError) -> LspError {
        LspError::Pipeline(err.into())
    }
}

impl From<LspError> for Error {
    fn from(err: LspError) -> Error {
        if let LspError::Pipeline(PipelineError::Internal(message)) = &err {
            tracing::error!("{message}");
        }
        Error {
            code: err.code(),
            message: format!("lsp-edge: {err}").into(),
            data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: impl Into<LspError>) -> i64 {
        Error::from(err.into()).code.code()
    }

    #[test]
    fn each_failure_has_the_code_lsp_gives_it() {
        assert_eq!(code(LspError::Superseded), -32800);
        assert_eq!(code(PipelineError::Cancelled), -32800);
        assert_eq!(code(Overloaded { max: 2 }), SERVER_CANCELLED);
        assert_eq!(code(BackendError::Stream("x".into())), REQUEST_FAILED);
        assert_eq!(
            code(PipelineError::Rejected {
                attempts: 2,
                reason: "it does not parse".into(),
            }),
            REQUEST_FAILED
        );
        assert_eq!(
            code(LspError::Changed {
                expected: 3,
                now: 4
            }),
            CONTENT_MODIFIED
        );
        assert_eq!(code(LspError::NotInitialized), SERVER_NOT_INITIALIZED);
        assert_eq!(code(LspError::Unauthorized("no token")), UNAUTHORIZED);
        assert_eq!(code(LspError::internal("task failed")), -32603);
        let message = Error::from(LspError::from(Overloaded { max: 2 })).message;
        assert!(message.contains("2 generations"), "{message}");
        let err = Error::from(LspError::Unauthorized("no token"));
        assert_eq!(err.message, "lsp-edge: refused the session: no token");
    }
}
