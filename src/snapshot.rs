//! `GET /snapshot?topic=T`: smart polling of a topic's retained state, with `ETag` and `304`.
//! Topics hold no retained state in this version, so every topic answers `404`.

use axum::extract::{RawQuery, State};
use axum::response::Response;

use crate::error::ApiError;
use crate::hub::Hub;
use crate::topic::validate_topic;

/// `GET /snapshot`.
pub async fn snapshot(State(hub): State<Hub>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    if !hub.config().transports.poll {
        return Err(ApiError::not_found("transport_disabled", "the poll transport is disabled on this server"));
    }
    let topic = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "topic")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "give the topic: /snapshot?topic=T"))?;
    validate_topic(&topic).map_err(|e| ApiError::bad_request("invalid_topic", format!("{topic:?}: {e}")))?;
    Err(ApiError::not_found("unknown_topic", format!("topic {topic:?} has no retained state")))
}
