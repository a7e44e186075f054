//! The one error shape of the API: `{"error":{"code","message","field"?}}` and its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::EventError;
use crate::store::StoreError;

/// An API failure. `code` is stable (scripts branch on it); `message` is for people.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code, e.g. `validation_failed`.
    pub code: &'static str,
    /// Human message. Never contains a secret or token.
    pub message: String,
    /// The offending field for 422s, as a dotted path.
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503), if any.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    /// The same error with a `Retry-After: <seconds>` header (RFC 9110 §10.2.3).
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    /// 422 `validation_failed` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            },
            field: (!field.is_empty()).then_some(field),
            retry_after_s: None,
        }
    }

    /// 404 `not_found` for a resource the caller cannot see or that does not exist.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 400 `invalid_query`: a query string or cursor that does not parse.
    pub fn bad_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 400 `invalid_json`.
    pub fn bad_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }
}

/// The body of every error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorOut {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code (`validation_failed`, `not_found`, `unauthorized`, ...).
    pub code: String,
    /// For people; never a secret.
    pub message: String,
    /// With `validation_failed`: the offending field, as a dotted path.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorOut {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> ApiError {
        ApiError::invalid(e.field, e.message)
    }
}

/// `Retry-After` while the store cannot commit (s): the daemon probes it every second.
const STORE_RETRY_AFTER_S: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Backend(_) | StoreError::Locked | StoreError::CommitFailed(_) => {
                tracing::error!(error = %e, "store write or read failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store cannot commit right now; nothing was written, retry later",
                )
                .with_retry_after(STORE_RETRY_AFTER_S)
            }
            StoreError::Unsupported(what) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", what)
            }
            StoreError::Corrupt { .. }
            | StoreError::Interrupted
            | StoreError::NeedsRecovery
            | StoreError::Sealed(_)
            | StoreError::SecretsKeyRequired
            | StoreError::UnsupportedLayout(_) => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

pub(super) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}
