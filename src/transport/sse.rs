//! `GET /stream`: renders a client's event stream as Server-Sent Events. The prelude (retry,
//! welcome, missed events or reset) goes out in one write; after that each wake-up writes
//! everything that is waiting for the client in one chunk.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::BytesMut;
use serde_json::json;

use crate::core::client::{CloseReason, Outbound, Transport, Wire};
use crate::core::conflate;
use crate::core::event::{now_ms, sse_frame};
use crate::core::hub::{Connection, Hub, Start};
use crate::http::error::ApiError;
use crate::http::query::parse_patterns;
use crate::transport::{ConnHandle, Flow, Pump, StreamQuery};

/// How long a client closed for a full queue may keep its socket before it is cut.
const OVERFLOW_GRACE: Duration = Duration::from_secs(5);

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
    let welcome_id =
        start.is_none_or(|s| s.missed.is_empty() && s.more.is_none() && s.reset.is_none()).then_some(head.as_str());
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

/// A client's SSE stream, registered and ready to send.
pub(crate) struct Opened {
    /// The registration; dropping it unregisters the client.
    pub conn: Connection,
    /// The prelude, to write first.
    pub first: Bytes,
    envelope: bool,
    /// Closes the stream when the subscriber's token expires.
    expiry: Option<crate::http::auth::Expiry>,
}

/// Checks a `/stream` request (its query string, `Last-Event-ID` header and credentials in
/// `headers`), registers the client and renders its prelude.
pub(crate) async fn open(
    hub: &Hub,
    raw_query: Option<&str>,
    last_event_id: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opened, ApiError> {
    if !hub.config().transports.sse {
        return Err(ApiError::not_found("transport_disabled", "the sse transport is disabled on this server"));
    }
    let q = StreamQuery::parse(raw_query)?;
    let patterns = parse_patterns(q.topics.iter().map(String::as_str), hub.config().max_topics_per_client)?;
    let subscriber = crate::http::auth::subscriber(hub.config(), headers, q.access_token.as_deref())?;
    subscriber.check(hub.config(), &patterns)?;
    let topics: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    let last_id = last_event_id.map(str::to_owned).or(q.last_event_id).filter(|id| !id.is_empty());

    hub.catch_up(last_id.as_deref()).await;
    let conn = hub.connect(Transport::Sse, patterns.clone());
    conn.client().set_throttle(&patterns, conflate::throttle(q.throttle_ms));
    let start = match last_id {
        Some(after) => Some(hub.replay(conn.client().id(), None, &after, conn.head()).await?),
        None => None,
    };
    let first = prelude(hub, &conn, &topics, start.as_ref(), q.envelope);
    if let Some(more) = start.and_then(|s| s.more) {
        // The rest of the missed events, page by page, before any live event.
        conn.client().insert_at(conn.head(), vec![Outbound::Resume(Box::new(more))]);
    }
    let expiry = subscriber.close_at_expiry(conn.client());
    Ok(Opened { conn, first, envelope: q.envelope, expiry })
}

/// Renders the client's queue as SSE: the pump owns the registration (dropping it unregisters
/// the client). Returns the prelude to write first.
pub(crate) fn pump(opened: Opened) -> (Pump, Bytes) {
    let Opened { conn, first, envelope, expiry } = opened;
    conn.client().wrote(now_ms());
    (Pump::registered(conn, Wire::Sse { envelope }, closing).expiring(expiry), first)
}

/// How an SSE stream that the hub closed ends: a `retry:` hint when the client should come back.
fn closing(hub: &Hub, reason: CloseReason, out: &mut BytesMut) {
    if matches!(reason, CloseReason::Overflow | CloseReason::Shutdown | CloseReason::Timeout) {
        out.extend_from_slice(&retry_line(hub));
    }
}

/// The response headers of an event stream.
pub(crate) const HEADERS: [(&str, &str); 4] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    // A stream's connection is not reused, so cutting it never cuts another request.
    ("connection", "close"),
];

/// `GET /stream`.
pub(crate) async fn stream(
    State(hub): State<Hub>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    conn_handle: Option<axum::Extension<ConnHandle>>,
) -> Result<Response, ApiError> {
    let header_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let opened = open(&hub, raw.as_deref(), header_id, &headers).await?;
    let kill = conn_handle.map(|h| h.0);
    // A client the hub closed for a full queue is cut 5 s later even if the stream is never
    // polled again (a peer that does not read leaves the body waiting on the socket). The
    // watcher ends with the stream: dropping the body drops `ended`'s guard.
    let ended = tokio_util::sync::CancellationToken::new();
    if let Some(k) = kill.clone() {
        let client = opened.conn.client().clone();
        let ended = ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = client.closed() => {
                    if client.close_reason() == Some(CloseReason::Overflow) {
                        k.kill_after(OVERFLOW_GRACE);
                    }
                }
                _ = ended.cancelled() => {}
                _ = k.killed() => {}
            }
        });
    }
    let ended = ended.drop_guard();
    let body = async_stream::stream! {
        let _ended = ended;
        let (mut pump, first) = pump(opened);
        yield Ok::<_, Infallible>(first);
        let mut buf = BytesMut::new();
        loop {
            let flow = pump.fill(&mut buf).await;
            if !buf.is_empty() {
                yield Ok(buf.split().freeze());
            }
            if let Flow::End = flow {
                break;
            }
        }
        // Unregisters the client when the stream ends or the peer goes away.
        drop(pump);
    };

    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    for (name, value) in HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    Ok(res)
}
