//! The one error type every endpoint answers with, and its JSON envelope.
//!
//! `{"error": {"code": 400, "type": "invalid_request_error", "message": "..."}}`: the
//! client sees a kind and a clear message, never internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::EngineError;

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
    /// The client was too slow sending its request.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    ExceedContextSize(String),
    /// Temporarily unable to serve: busy, guarded, loading failed. Clients retry after
    /// the given number of seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after_s: u32 },
    #[error("{0}")]
    Server(String),
}

impl ApiError {
    pub fn unavailable(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        ApiError::Unavailable {
            message: message.into(),
            retry_after_s,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::ExceedContextSize(_) => StatusCode::BAD_REQUEST,
            ApiError::Authentication(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request_error",
            ApiError::Authentication(_) => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::MethodNotAllowed(_) => "method_not_allowed_error",
            ApiError::RequestTimeout(_) => "request_timeout_error",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::ExceedContextSize(_) => "exceed_context_size_error",
            ApiError::Unavailable { .. } => "unavailable_error",
            ApiError::Server(_) => "server_error",
        }
    }

    /// The `{"error": {...}}` envelope, also sent as the last SSE event of a stream that
    /// fails after it started.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                code: self.status().as_u16(),
                kind: self.kind(),
                message: self.to_string(),
            },
        }
    }
}

/// The engine's errors as answers: the request's faults are 4xx, refusals and a
/// failed load 503 with `Retry-After`, the engine's own failures 500.
impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> ApiError {
        match err {
            EngineError::UnknownModel(message) => ApiError::NotFound(message),
            EngineError::Invalid(message) => ApiError::InvalidRequest(message),
            EngineError::ExceedContextSize(message) => ApiError::ExceedContextSize(message),
            EngineError::Unavailable {
                message,
                retry_after_s,
            } => ApiError::Unavailable {
                message,
                retry_after_s,
            },
            refused @ EngineError::Refused(why) => {
                ApiError::unavailable(refused.to_string(), why.retry_after_s())
            }
            EngineError::Internal(message) => ApiError::Server(message),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: u16,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.envelope())).into_response();
        if let ApiError::Unavailable { retry_after_s, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        response
    }
}
