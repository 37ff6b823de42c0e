//! `GET /stream`: renders a client's event stream as Server-Sent Events. The prelude (retry,
//! welcome, missed events or reset) goes out in one write; after that each wake-up writes
//! everything that is waiting for the client in one chunk.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::BytesMut;
use serde_json::json;

use crate::api::parse_patterns;
use crate::client::{CloseReason, Outbound, Transport};
use crate::conflate::{self, Shaper};
use crate::error::ApiError;
use crate::event::{now_ms, sse_frame};
use crate::hub::{Connection, Hub, Start};
use crate::server::ConnHandle;

/// How long a client closed for a full queue may keep its socket before it is cut.
const OVERFLOW_GRACE: Duration = Duration::from_secs(5);

/// What `/stream` reads from its query string.
#[derive(Debug, Default)]
pub struct StreamQuery {
    /// `topic`, repeated.
    pub topics: Vec<String>,
    /// `lastEventId`, for clients that cannot set the header.
    pub last_event_id: Option<String>,
    /// `envelope=1`: data is the whole event JSON.
    pub envelope: bool,
    /// `token`: an API key, for WebSocket clients that cannot set headers.
    pub token: Option<String>,
    /// `throttle_ms`: at most one update per topic per interval.
    pub throttle_ms: Option<u64>,
}

/// Reads a flag value the way the contract allows (`1`, `true`, or bare).
pub fn truthy(v: &str) -> bool {
    matches!(v, "" | "1" | "true" | "yes" | "on")
}

impl StreamQuery {
    /// Parses the query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = StreamQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*k {
                "topic" => q.topics.push(v.into_owned()),
                "lastEventId" | "last_event_id" => q.last_event_id = Some(v.into_owned()),
                "envelope" => q.envelope = truthy(&v),
                "token" => q.token = Some(v.into_owned()),
                "throttle_ms" => q.throttle_ms = Some(conflate::throttle_param(&v)?),
                _ => {}
            }
        }
        Ok(q)
    }
}

fn retry_line(hub: &Hub) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", hub.config().retry_ms))
}

/// The first chunk of the stream: `retry:`, `welcome`, then missed events or a `reset`, then the
/// snapshots of retained topics (unless resuming, when the missed changes bring them up to date).
fn prelude(hub: &Hub, conn: &Connection, topics: &[String], start: Option<&Start>, envelope: bool) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("retry: {}\n", hub.config().retry_ms).as_bytes());
    let welcome =
        json!({ "client_id": conn.client().id(), "topics": topics, "heartbeat_ms": hub.config().heartbeat_ms });
    let head = conn.head().to_string();
    // The welcome carries the position the stream continues from, so a client that drops before
    // any event arrives still resumes without loss; missed events and resets carry their own.
    let welcome_id = start.is_none_or(|s| s.missed.is_empty() && s.reset.is_none()).then_some(head.as_str());
    out.extend_from_slice(&sse_frame(welcome_id, "welcome", welcome.to_string().as_bytes()));
    if let Some(start) = start {
        for ev in &start.missed {
            out.extend_from_slice(ev.sse_frame(envelope));
        }
        if let Some(reason) = start.reset {
            let data = json!({ "reason": reason });
            out.extend_from_slice(&sse_frame(Some(&head), "reset", data.to_string().as_bytes()));
        }
    }
    if start.is_none_or(|s| s.reload) {
        for snapshot in conn.snapshots() {
            out.extend_from_slice(snapshot.sse_frame());
        }
    }
    out.freeze()
}

/// `GET /stream`.
pub async fn stream(
    State(hub): State<Hub>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    conn_handle: Option<axum::Extension<ConnHandle>>,
) -> Result<Response, ApiError> {
    if !hub.config().transports.sse {
        return Err(ApiError::not_found("transport_disabled", "the sse transport is disabled on this server"));
    }
    let q = StreamQuery::parse(raw.as_deref())?;
    let patterns = parse_patterns(q.topics.iter().map(String::as_str))?;
    let topics: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(q.last_event_id);

    hub.catch_up(last_id.as_deref()).await;
    let conn = hub.connect(Transport::Sse, patterns.clone());
    conn.client().set_throttle(&patterns, conflate::throttle(q.throttle_ms));
    let start = match last_id.filter(|id| !id.is_empty()) {
        Some(after) => Some(hub.replay(conn.client().id(), None, &after, conn.head()).await?),
        None => None,
    };
    let first = prelude(&hub, &conn, &topics, start.as_ref(), q.envelope);
    let envelope = q.envelope;
    drop(start);
    let kill = conn_handle.map(|h| h.0);

    let body = async_stream::stream! {
        let client = conn.client().clone();
        let hub = conn.hub().clone();
        client.wrote(now_ms());
        yield Ok::<_, Infallible>(first);
        let mut batch = VecDeque::new();
        let mut items = Vec::new();
        let mut shaper = Shaper::default();
        let mut buf = BytesMut::new();
        let mut last_id = None;
        // Shutdown arrives through the queue like everything else: `Hub::shutdown` closes every
        // client, and the close ends this loop after a `retry:` hint.
        loop {
            let open = tokio::select! {
                open = client.next_batch(&mut batch) => open,
                _ = conflate::until(shaper.next_due()) => true,
            };
            if !open {
                break;
            }
            shaper.shape(&hub, &client, &mut batch, &mut items);
            let mut end = None;
            for item in items.drain(..) {
                match item {
                    // A throttled event held back comes after newer ones: without an `id:` it
                    // cannot move the client's resume position backwards.
                    Outbound::Event(ev) if last_id.is_some_and(|last| ev.id < last) => {
                        let data = if envelope { &ev.json()[..] } else { ev.draft.data.get().as_bytes() };
                        buf.extend_from_slice(&sse_frame(None, &ev.draft.event, data));
                    }
                    Outbound::Event(ev) => {
                        last_id = Some(ev.id);
                        buf.extend_from_slice(ev.sse_frame(envelope));
                    }
                    Outbound::Snapshot(s) => buf.extend_from_slice(s.sse_frame()),
                    Outbound::Heartbeat => buf.extend_from_slice(b": hb\n\n"),
                    // Replies to frame-based requests never go to an SSE client; the shaper has
                    // turned resyncs into snapshots.
                    Outbound::Frame(_) | Outbound::Resync(_) => {}
                    Outbound::Close(reason) => end = Some(reason),
                }
            }
            if matches!(end, Some(CloseReason::Overflow | CloseReason::Shutdown | CloseReason::Timeout)) {
                buf.extend_from_slice(&retry_line(&hub));
            }
            if !buf.is_empty() {
                client.wrote(now_ms());
                yield Ok(buf.split().freeze());
            }
            if let Some(reason) = end {
                if reason == CloseReason::Overflow {
                    if let Some(k) = &kill {
                        k.kill_after(OVERFLOW_GRACE);
                    }
                }
                break;
            }
        }
        // Unregisters the client when the stream ends or the peer goes away.
        drop(conn);
    };

    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // A stream's connection is not reused, so cutting it never cuts another request.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(res)
}
