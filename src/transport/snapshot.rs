//! `GET /snapshot?topic=T`: smart polling of a topic's retained state. `ETag` is the state's
//! version, so a poller that already has it gets `304` with no body; `X-Poll-Interval` says how
//! often to ask.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use crate::core::event::push_json_str;
use crate::core::hub::Hub;
use crate::core::topic::{validate_topic, Pattern};
use crate::http::error::ApiError;

/// Whether an `If-None-Match` value names `etag` (or is `*`).
fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// `GET /snapshot`.
pub(crate) async fn snapshot(
    State(hub): State<Hub>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !hub.config().transports.poll {
        return Err(ApiError::not_found("transport_disabled", "the poll transport is disabled on this server"));
    }
    let pairs = crate::http::query::pairs(raw.as_deref())?;
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let topic = param("topic")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "give the topic: /snapshot?topic=T"))?;
    validate_topic(&topic).map_err(|e| ApiError::bad_request("invalid_topic", format!("{topic:?}: {e}")))?;
    let subscriber = crate::http::auth::subscriber(hub.config(), &headers, param("access_token"))?;
    let pattern =
        Pattern::parse(&topic).map_err(|e| ApiError::bad_request("invalid_topic", format!("{topic:?}: {e}")))?;
    subscriber.check(hub.config(), &[pattern])?;
    let (snapshot, cursor) = hub
        .snapshot_at(&topic)
        .ok_or_else(|| ApiError::not_found("unknown_topic", format!("topic {topic:?} has no retained state")))?;

    let etag = format!("\"{}\"", snapshot.version);
    let unchanged = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| matches(v, &etag));
    let mut res = if unchanged {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        // {"topic","version","state"} plus the cursor the state is current at.
        let json = &snapshot.json;
        let mut out = Vec::with_capacity(json.len() + 40);
        out.extend_from_slice(&json[..json.len() - 1]);
        out.extend_from_slice(b",\"cursor\":");
        push_json_str(&mut out, &cursor.to_string());
        out.push(b'}');
        let mut r = Response::new(Body::from(out));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-poll-interval", HeaderValue::from(hub.config().poll_interval_ms));
    Ok(res)
}
