//! The one error type every HTTP answer uses, with the envelope vps-infer uses:
//! `{"error": {"code": <status>, "type": "...", "message": "..."}}`. The client sees
//! a kind and a clear message, never internals; a 503 carries `Retry-After`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::BackendError;
use crate::pipeline::PipelineError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Authentication(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Busy, breaker open, backend unreachable: retry after the given seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Timeout(String),
    /// The client was too slow sending its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// vps-infer answered with an error: passed on with its status and kind.
    #[error("{message}")]
    Backend {
        status: u16,
        kind: String,
        message: String,
        retry_after_s: Option<u64>,
    },
    /// The model's answer did not pass validation (refactor).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Server(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Authentication(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Backend { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request_error",
            ApiError::Authentication(_) => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::MethodNotAllowed(_) => "method_not_allowed_error",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable { .. } => "unavailable_error",
            ApiError::Timeout(_) => "timeout_error",
            ApiError::RequestTimeout(_) => "request_timeout_error",
            ApiError::Backend { kind, .. } if !kind.is_empty() => kind,
            ApiError::Backend { .. } => "backend_error",
            ApiError::Unprocessable(_) => "validation_error",
            ApiError::Server(_) => "server_error",
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::Backend { retry_after_s, .. } => *retry_after_s,
            _ => None,
        }
    }

    /// The `{"error": {...}}` envelope; also a batch item's error and the last event
    /// of a stream that fails after it started.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                code: self.status().as_u16(),
                kind: self.kind().to_owned(),
                message: self.to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: u16,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.envelope())).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Whole seconds to wait, at least one.
fn retry_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> ApiError {
        let message = err.to_string();
        match err {
            BackendError::BreakerOpen(open) => ApiError::Unavailable {
                message,
                retry_after_s: retry_seconds(open.retry_in),
            },
            BackendError::Connect { .. } | BackendError::Stream(_) => ApiError::Unavailable {
                message,
                retry_after_s: 5,
            },
            BackendError::FirstTokenTimeout(_) | BackendError::TotalTimeout(_) => {
                ApiError::Timeout(message)
            }
            BackendError::Api {
                status,
                kind,
                message: backend_message,
                retry_after,
            } => ApiError::Backend {
                status,
                kind,
                message: format!("vps-infer: {backend_message}"),
                retry_after_s: match retry_after {
                    Some(after) => Some(retry_seconds(after)),
                    None => (status == 503).then_some(1),
                },
            },
            BackendError::Protocol(_) => ApiError::Backend {
                status: 502,
                kind: String::new(),
                message,
                retry_after_s: None,
            },
        }
    }
}

/// A pipeline failure as an HTTP error: the caller's mistakes are 400s naming the
/// field, refusals on the way to the model 503s with `Retry-After`, an answer that
/// failed validation twice a 422 saying why.
impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> ApiError {
        let message = err.to_string();
        match err {
            PipelineError::UnsupportedLanguage(_) => {
                ApiError::InvalidRequest(format!("language: {message}"))
            }
            PipelineError::EmptyInstruction => {
                ApiError::InvalidRequest(format!("instruction: {message}"))
            }
            PipelineError::NoFunction | PipelineError::AlreadyAsync(_) => {
                ApiError::InvalidRequest(format!("code: {message}"))
            }
            PipelineError::Overloaded(overloaded) => ApiError::Unavailable {
                message: overloaded.to_string(),
                retry_after_s: 1,
            },
            PipelineError::Backend(err) => err.into(),
            PipelineError::Rejected { .. } => ApiError::Unprocessable(message),
            PipelineError::Cancelled => ApiError::Unavailable {
                message,
                retry_after_s: 1,
            },
            PipelineError::Internal(message) => {
                tracing::error!("{message}");
                ApiError::Server("internal error (see lsp-edge's log)".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::breaker::BreakerOpen;
    use crate::backend::limiter::Overloaded;

    #[test]
    fn refusals_are_503_with_retry_after() {
        let shed = ApiError::from(PipelineError::Overloaded(Overloaded { max: 2 }));
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.retry_after_s(), Some(1));
        let open = ApiError::from(BackendError::BreakerOpen(BreakerOpen {
            retry_in: Duration::from_millis(9_200),
            reason: "connection refused".into(),
        }));
        assert_eq!(open.retry_after_s(), Some(10));
        assert!(open.to_string().contains("connection refused"), "{open}");
        let envelope = serde_json::to_value(open.envelope()).unwrap();
        assert_eq!(envelope["error"]["type"], "unavailable_error");
        assert_eq!(envelope["error"]["code"], 503);
    }

    #[test]
    fn backend_refusals_keep_their_status_and_kind() {
        let err = ApiError::from(BackendError::Api {
            status: 400,
            kind: "exceed_context_size_error".into(),
            message: "prompt too long".into(),
            retry_after: None,
        });
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.kind(), "exceed_context_size_error");
        assert_eq!(err.to_string(), "vps-infer: prompt too long");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let err = ApiError::from(PipelineError::Internal("task panicked at foo.rs:3".into()));
        assert!(!err.to_string().contains("foo.rs"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
