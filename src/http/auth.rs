//! Publisher rights. With API keys configured, a request must carry one (`Authorization: Bearer`
//! or `X-API-Key`); with none, publishing and admin endpoints answer loopback peers only.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::core::hub::Hub;
use crate::http::error::ApiError;

/// Proof that the request may publish and administer. Use it as a handler argument.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publisher;

fn presented_key(parts: &Parts) -> Option<&str> {
    key_in(&parts.headers)
}

/// The API key in `Authorization: Bearer` or `X-API-Key`, if any.
pub(crate) fn key_in(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

/// Whether a request may publish: it carries a configured API key (header, or `token` in the
/// query for WebSocket clients that cannot set headers) or, with no key configured, comes from a
/// loopback peer.
pub(crate) fn check(hub: &Hub, presented: Option<&str>, peer: Option<SocketAddr>) -> Result<Publisher, ApiError> {
    let keys = &hub.config().api_key;
    if !keys.is_empty() {
        let Some(given) = presented else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an API key is required (Authorization: Bearer <key>)",
            ));
        };
        let known = keys.iter().any(|k| bool::from(k.as_bytes().ct_eq(given.as_bytes())));
        return if known {
            Ok(Publisher)
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the API key is not valid"))
        };
    }
    match peer {
        Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(Publisher),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "publishing is allowed from loopback only unless API keys are configured",
        )),
    }
}

/// The peer address the server recorded for the request.
fn peer(parts: &Parts) -> Option<SocketAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

impl FromRequestParts<Hub> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        check(hub, presented_key(parts), peer(parts))
    }
}
