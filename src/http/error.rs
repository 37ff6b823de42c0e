//! `ApiError`: the one error type at the HTTP edge. It renders the contract's JSON error
//! `{"error":{"code","message"}}` with a fitting status; internal details are logged, not sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::core::broker::BrokerError;
use crate::core::hub::{PublishError, SubscribeError, TooManyTopics, UnknownClient};

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code, e.g. `invalid_json`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait before retrying, sent as `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// `400` for a request whose fields are wrong.
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404` for a path or resource that is not here.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// `503` with `Retry-After`.
    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        ApiError { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
}

impl ApiError {
    /// The contract's body, `{"error":{"code","message"}}`.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        tracing::warn!(error = %e, "broker error");
        ApiError::unavailable("broker_unavailable", "the event broker is unavailable; retry later", 1)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid { .. } => ApiError::bad_request("invalid_request", e.to_string()),
            PublishError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "patch_failed", e.to_string()),
            PublishError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "state_too_large", e.to_string())
            }
            PublishError::UnknownTopic { .. } => ApiError::not_found("unknown_topic", e.to_string()),
            PublishError::Broker(b) => b.into(),
        }
    }
}

impl From<UnknownClient> for ApiError {
    fn from(_: UnknownClient) -> Self {
        ApiError::not_found("unknown_client", "no client with this client_id is connected")
    }
}

impl From<TooManyTopics> for ApiError {
    fn from(e: TooManyTopics) -> Self {
        ApiError::bad_request("too_many_topics", e.to_string())
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::Unknown(u) => u.into(),
            SubscribeError::TooManyTopics(t) => t.into(),
        }
    }
}

impl From<crate::core::hub::CommandError> for ApiError {
    fn from(e: crate::core::hub::CommandError) -> Self {
        match e {
            crate::core::hub::CommandError::Unknown(u) => u.into(),
            crate::core::hub::CommandError::TooManyTopics(t) => t.into(),
            crate::core::hub::CommandError::Broker(b) => b.into(),
        }
    }
}
