//! `GET /ws`: renders a client's event stream as JSON text frames and takes the client's own
//! frames (`subscribe`, `unsubscribe`, `publish`, `rpc`, `ping`). The session is written over
//! `Sink`/`Stream` so it runs the same on a socket or on channels in a unit test.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::core::client::{Client, CloseReason, Outbound, Transport, Wire};
use crate::core::conflate::{self, Shaper};
use crate::core::event::{now_ms, null_data, Audience, Draft, Event};
use crate::core::hub::{Connection, Hub, Start};
use crate::core::retained::Snapshot;
use crate::core::rpc::{RpcError, RpcRequest, RPC_TIMEOUT};
use crate::core::topic::Pattern;
use crate::http::auth::{self, Publisher, Subscriber};
use crate::http::error::ApiError;
use crate::http::query::parse_patterns;
use crate::http::{guard, jwt};
use crate::transport::{ConnHandle, Pump, StreamQuery};

pub(crate) mod handshake;

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub(super) const NORMAL: u16 = 1000;
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const PROTOCOL_ERROR: u16 = 1002;
    pub(super) const INVALID_DATA: u16 = 1007;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const TRY_AGAIN_LATER: u16 = 1013;
}

/// `rpc` requests one connection may have waiting on the backend at once.
const RPC_IN_FLIGHT: usize = 16;

/// How long a closed client's writer may take to send its close frame before the socket is cut.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the gateway waits for the peer's answer to a close frame it sent, and then for the
/// peer to close TCP, before it closes the connection itself.
pub(crate) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a session starts with, read from the upgrade request.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    /// Subscriptions from the `topic` query parameters.
    pub patterns: Vec<Pattern>,
    /// `lastEventId` in the query: resume every subscription after it.
    pub last_event_id: Option<String>,
    /// What `publish` frames may publish; `None`: nothing.
    pub publisher: Option<Publisher>,
    /// What `subscribe` frames may subscribe to, and the token, passed with each `rpc`.
    pub subscriber: Subscriber,
    /// `throttle_ms` in the query, for the query's subscriptions.
    pub throttle: Option<std::time::Duration>,
}

impl Setup {
    /// Reads a `GET /ws` request: its query string and the headers that may carry an API key.
    pub(crate) fn read(hub: &Hub, raw_query: Option<&str>, headers: &HeaderMap) -> Result<Setup, ApiError> {
        if !hub.config().transports.ws {
            return Err(ApiError::not_found("transport_disabled", "the ws transport is disabled on this server"));
        }
        let config = hub.config();
        guard::ws_origin(config, headers)?;
        let q = StreamQuery::parse(raw_query)?;
        let patterns = parse_patterns(q.topics.iter().map(String::as_str), config.max_topics_per_client)?;
        if config.jwt_key.is_some()
            && matches!(jwt::token(headers, q.access_token.as_deref()), Some((_, jwt::Source::Cookie)))
        {
            // The browser sends the cookie whatever page opens the socket: a page on another
            // site may not use it (cross-site WebSocket hijacking), whatever --cors-origins says.
            guard::not_cross_site(config, headers)?;
        }
        let subscriber = auth::subscriber(config, headers, q.access_token.as_deref())?;
        subscriber.check(config, &patterns)?;
        // Publishing over a WebSocket needs a key or a token that allows it: a browser on the
        // gateway's own machine is not a backend, so the loopback rule of the HTTP API does not
        // apply here.
        let key = auth::key_in(headers).or(q.token.as_deref());
        let publisher = if key.is_some_and(|k| auth::is_api_key(config, k)) {
            Some(Publisher::ALL)
        } else {
            let id = subscriber.identity.as_ref().filter(|id| id.admin || !id.publish.is_empty());
            id.map(|id| Publisher::with_token(id.clone()))
        };
        Ok(Setup {
            patterns,
            last_event_id: q.last_event_id,
            publisher,
            subscriber,
            throttle: conflate::throttle(q.throttle_ms),
        })
    }
}

/// `GET /ws` through the HTTP framework: in an app that nests the router, or on a connection
/// that began with another request. The gateway's own server serves a fresh `GET /ws` connection
/// on its socket instead (the `direct` module).
pub(crate) async fn upgrade(
    State(hub): State<Hub>,
    RawQuery(raw): RawQuery,
    version: axum::http::Version,
    headers: HeaderMap,
    handle: Option<axum::Extension<ConnHandle>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let setup = Setup::read(&hub, raw.as_deref(), &headers)?;
    // Over HTTP/2 a WebSocket opens with an extended CONNECT (RFC 8441), which the extractor
    // checks; the HTTP/1.1 handshake's headers are not there.
    if version <= axum::http::Version::HTTP_11 {
        if let Err(refused) = handshake::check(&headers) {
            return Ok(axum::response::IntoResponse::into_response(refused));
        }
    }
    let ws = ws.map_err(|e| ApiError::bad_request("websocket_required", e.body_text()))?;
    let limit = hub.config().max_body_bytes;
    let handle = handle.map(|h| h.0);
    // Small buffers: a connection mostly receives little and its writes are batched per wake-up;
    // the library defaults (128 KiB each way) would make an idle connection cost over 100 KiB.
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            session(hub, setup, handle, |hub, client| {
                let writer = async move {
                    if let Err(e) = write_loop(&hub, &client, sink).await {
                        tracing::debug!(client_id = %client.id(), error = %e, "websocket write failed");
                    }
                };
                (stream, writer)
            })
            .await;
        }))
}

fn text(value: Value) -> Outbound {
    Outbound::Frame(value.to_string())
}

fn error_frame(reference: Option<&Value>, code: &str, message: impl Into<String>) -> Outbound {
    let mut v = json!({ "type": "error", "code": code, "message": message.into() });
    if let Some(r) = reference {
        v["ref"] = r.clone();
    }
    text(v)
}

fn ack(reference: &Value) -> Outbound {
    text(json!({ "type": "ack", "ref": reference }))
}

fn reset_frame(reason: &str) -> Outbound {
    text(json!({ "type": "reset", "reason": reason }))
}

/// What opens a subscription's stream: for a resume, the missed events or a reset; then, unless
/// the missed events bring it up to date, the snapshots of its retained topics.
fn opening(start: Option<Start>, snapshots: &[Arc<Snapshot>]) -> Vec<Outbound> {
    let mut out = Vec::new();
    let reload = match start {
        None => true,
        Some(start) => {
            out.extend(start.missed.into_iter().map(Outbound::Event));
            out.extend(start.more.map(|more| Outbound::Resume(Box::new(more))));
            out.extend(start.reset.map(reset_frame));
            start.reload
        }
    };
    if reload {
        out.extend(snapshots.iter().cloned().map(Outbound::Snapshot));
    }
    out
}

/// Runs one WebSocket client until it leaves, the hub closes it, or the server cuts it. Once the
/// client is registered, `io` gives the peer's messages and a writer that sends the client's
/// queue until the client is closed.
pub(crate) async fn session<R, W, F>(hub: Hub, setup: Setup, handle: Option<ConnHandle>, io: W)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    W: FnOnce(Hub, Arc<Client>) -> (R, F),
    F: std::future::Future<Output = ()>,
{
    let topics: Vec<String> = setup.patterns.iter().map(ToString::to_string).collect();
    hub.catch_up(setup.last_event_id.as_deref()).await;
    let conn = hub.connect(Transport::Ws, setup.patterns.clone());
    let client = conn.client().clone();
    client.set_throttle(&setup.patterns, setup.throttle);
    // A token that expires closes the connection then (1008); dropped with the session.
    let _expiry = setup.subscriber.close_at_expiry(&client);
    let caller = Caller { publisher: setup.publisher, subscriber: setup.subscriber };
    let welcome = json!({
        "type": "welcome",
        "client_id": client.id(),
        "topics": topics,
        "heartbeat_ms": hub.config().heartbeat_ms,
    });
    let mut first = vec![text(welcome)];
    let start = match setup.last_event_id.filter(|id| !id.is_empty()) {
        Some(after) => match hub.replay(client.id(), None, &after, conn.head()).await {
            Ok(start) => Some(start),
            Err(e) => {
                tracing::warn!(error = %e, "replay failed");
                first.push(error_frame(
                    None,
                    "broker_unavailable",
                    "the event broker is unavailable; resubscribe later",
                ));
                None
            }
        },
        None => None,
    };
    first.extend(opening(start, conn.snapshots()));
    client.insert_at(conn.head(), first);

    let (mut stream, writer) = io(hub.clone(), client.clone());
    tokio::pin!(writer);
    let mut rpcs = JoinSet::new();
    let killed = async {
        match &handle {
            Some(h) => h.killed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(killed);
    // Once the hub has closed the client, the writer has a grace period to send the close frame;
    // a peer that does not read keeps it blocked, and is then cut.
    let closed_for_good = async {
        client.closed().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    let ended = {
        let reading = read_loop(&conn, &mut stream, &caller, &mut rpcs);
        tokio::select! {
            _ = &mut writer => Ended::Written,
            ending = reading => Ended::Read(ending),
            _ = &mut killed => Ended::Cut,
            _ = closed_for_good => Ended::Cut,
        }
    };
    // Requests still waiting on the backend end with the session.
    rpcs.abort_all();
    // The closing handshake (RFC 6455 §7): a close is answered with a close, and the server
    // closes TCP once both are sent (the caller does, after this returns).
    let closing = async {
        match ended {
            // The peer went away, or the connection is cut: nobody to close with.
            Ended::Cut | Ended::Read(Ending::Gone) => {}
            // The peer closed: the writer sends what is queued up to the answer, then ends.
            Ended::Read(Ending::Closed) => {
                client.close(CloseReason::Answered);
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
            }
            // The peer broke the protocol: it gets the close code that says how, and then a
            // moment to answer it.
            Ended::Read(Ending::Failed(reason)) => {
                client.close(reason);
                if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_ok() {
                    let _ = tokio::time::timeout(CLOSE_WAIT, answer_to_close(&mut stream)).await;
                }
            }
            // The writer sent the hub's close frame (or failed): the peer's answer is awaited.
            Ended::Written => {
                if client.close_reason().is_some_and(|r| close_of(r).is_some()) {
                    let _ = tokio::time::timeout(CLOSE_WAIT, answer_to_close(&mut stream)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = closing => {}
        _ = &mut killed => {}
    }
}

/// How the first part of a session ended.
enum Ended {
    /// The writer ended: it sent the close frame of the hub's close, or the socket failed.
    Written,
    /// The reader ended.
    Read(Ending),
    /// The connection is cut, or a closed client's writer could not finish in time.
    Cut,
}

/// Why the reader stopped.
enum Ending {
    /// The peer sent a close frame.
    Closed,
    /// The peer broke the protocol or a limit: it is closed for this reason.
    Failed(CloseReason),
    /// The connection ended or failed without a close frame.
    Gone,
}

/// Reads (and ignores) the peer's frames until its close frame or the end of the connection:
/// after the gateway's close frame, nothing the peer sends is acted on.
async fn answer_to_close<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Close(_) = msg {
            return;
        }
    }
}

/// The close code and reason the peer gets, if it is still there to read them.
fn close_of(reason: CloseReason) -> Option<(u16, &'static str)> {
    Some(match reason {
        CloseReason::Shutdown => (close::GOING_AWAY, "the gateway is shutting down; reconnect later"),
        CloseReason::Overflow => (close::TRY_AGAIN_LATER, "too slow: reconnect and resume from your last event id"),
        CloseReason::Kicked => (close::NORMAL, "disconnected by the backend"),
        CloseReason::TooLarge => (close::TOO_BIG, "frame over the size limit"),
        CloseReason::Protocol => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
        CloseReason::InvalidData => (close::INVALID_DATA, "text frames must be UTF-8"),
        CloseReason::Expired => (close::POLICY, "the token has expired: reconnect with a fresh one"),
        // The peer is gone: nothing would read a close frame.
        CloseReason::Timeout => return None,
        // The answer to the peer's close is sent by the WebSocket library (see `write_loop` and
        // `socket_messages`).
        CloseReason::Answered => return None,
    })
}

fn close_frame(reason: CloseReason) -> Option<CloseFrame> {
    close_of(reason).map(|(code, why)| CloseFrame { code, reason: Utf8Bytes::from_static(why) })
}

/// Sends everything queued for the client through a `Sink`, one flush (one write) per batch.
pub(crate) async fn write_loop<S>(hub: &Hub, client: &Client, mut sink: S) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut batch = VecDeque::new();
    let mut items = Vec::new();
    let mut shaper = Shaper::default();
    loop {
        if !shaper.next(hub, client, &mut batch, &mut items).await {
            return Ok(());
        }
        for item in items.drain(..) {
            match item {
                Outbound::Event(ev) => sink.feed(Message::Text(utf8(ev.ws_text()))).await?,
                Outbound::Snapshot(s) => sink.feed(Message::Text(utf8(s.ws_text()))).await?,
                Outbound::Heartbeat => sink.feed(Message::Ping(Default::default())).await?,
                Outbound::Frame(t) => sink.feed(Message::Text(Utf8Bytes::from(t))).await?,
                // The shaper has turned resyncs into snapshots and resumes into events; raw bytes
                // are only queued for a connection on its socket.
                Outbound::Resync(_) | Outbound::Resume(_) | Outbound::Raw(_) => {}
                Outbound::Close(reason) => {
                    match close_frame(reason) {
                        Some(frame) => sink.send(Message::Close(Some(frame))).await?,
                        // The library answers the peer's close itself, on the next flush.
                        None => sink.flush().await?,
                    }
                    return Ok(());
                }
            }
        }
        sink.flush().await?;
        client.wrote(now_ms());
    }
}

/// Renders the client's queue as WebSocket frames for the socket edge, which writes them straight
/// to the socket; the session holds the registration.
pub(crate) fn pump(hub: Hub, client: Arc<Client>) -> Pump {
    Pump::of(hub, client, Wire::Ws, closing)
}

/// How a WebSocket the hub closed ends: with the close frame that says why, if the peer is still
/// there to read it.
fn closing(_: &Hub, reason: CloseReason, out: &mut BytesMut) {
    if let Some((code, why)) = close_of(reason) {
        let frame = tungstenite::protocol::frame::Frame::close(Some(tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: why.into(),
        }));
        let mut bytes = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = frame.format(&mut bytes);
        out.extend_from_slice(&bytes);
    }
}

/// The gateway's budget for unfinished WebSocket messages is spent (see
/// [`Hub::unfinished_input`]): the peer that asked for more is closed as sending too much.
#[derive(Debug, thiserror::Error)]
#[error("too much of unfinished WebSocket messages held across the gateway")]
pub(crate) struct UnfinishedOverBudget;

/// What a receive error says about the peer: the reason it is closed for, if it broke the
/// protocol or a limit; `None` if the connection just failed.
fn failure(e: &axum::Error) -> Option<CloseReason> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => return Some(CloseReason::TooLarge),
            Some(tungstenite::Error::Io(io)) if io.get_ref().is_some_and(|e| e.is::<UnfinishedOverBudget>()) => {
                return Some(CloseReason::TooLarge)
            }
            // The peer dropped TCP: nothing to close with.
            Some(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                return None
            }
            Some(tungstenite::Error::Protocol(_)) => return Some(CloseReason::Protocol),
            Some(tungstenite::Error::Utf8(_)) => return Some(CloseReason::InvalidData),
            _ => {}
        }
        source = err.source();
    }
    None
}

/// What the peer of a session may do, from the upgrade request's credentials.
struct Caller {
    publisher: Option<Publisher>,
    subscriber: Subscriber,
}

/// Takes the client's frames until it closes, breaks the protocol or leaves.
async fn read_loop<R>(conn: &Connection, stream: &mut R, caller: &Caller, rpcs: &mut JoinSet<()>) -> Ending
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let client = conn.client();
    while let Some(msg) = stream.next().await {
        // Whatever the stream underneath, a flood of frames yields to other tasks.
        tokio::task::consume_budget().await;
        client.heard(now_ms());
        match msg {
            Ok(Message::Text(t)) => on_text(conn, t.as_str(), caller, rpcs).await,
            Ok(Message::Binary(_)) => {
                client.push(error_frame(None, "invalid_frame", "binary frames are not supported: send JSON text"));
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Close(_)) => return Ending::Closed,
            Err(e) => {
                tracing::debug!(client_id = %client.id(), error = %e, "websocket read failed");
                return failure(&e).map_or(Ending::Gone, Ending::Failed);
            }
        }
    }
    Ending::Gone
}

/// The fields every client frame may have.
#[derive(Debug, Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFrame {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "ref")]
    _reference: Option<Value>,
    topics: Vec<String>,
    last_event_id: Option<String>,
    throttle_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeFrame {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "ref")]
    _reference: Option<Value>,
    topics: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame<'a> {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "ref")]
    _reference: Option<Value>,
    topic: String,
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcFrame {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "ref")]
    _reference: Option<Value>,
    method: String,
    #[serde(default)]
    data: Value,
}

async fn on_text(conn: &Connection, text: &str, caller: &Caller, rpcs: &mut JoinSet<()>) {
    let client = conn.client();
    let head: Head = match serde_json::from_str(text) {
        Ok(h) => h,
        Err(e) if e.is_data() => {
            client.push(error_frame(None, "invalid_request", "a frame is a JSON object with a \"type\""));
            return;
        }
        Err(e) => {
            client.push(error_frame(None, "invalid_json", format!("the frame is not valid JSON: {e}")));
            return;
        }
    };
    let r = head.reference.as_ref();
    let bad = |e: serde_json::Error| error_frame(r, "invalid_request", e.to_string());
    let outcome: Result<(), Outbound> = match head.kind.as_deref() {
        Some("subscribe") => match serde_json::from_str::<SubscribeFrame>(text) {
            Ok(f) => subscribe(conn, f, r, &caller.subscriber).await,
            Err(e) => Err(bad(e)),
        },
        Some("unsubscribe") => match serde_json::from_str::<UnsubscribeFrame>(text) {
            Ok(f) => unsubscribe(conn, f, r),
            Err(e) => Err(bad(e)),
        },
        Some("publish") => match serde_json::from_str::<PublishFrame<'_>>(text) {
            Ok(f) => match &caller.publisher {
                None => Err(error_frame(r, "forbidden", "this connection may not publish")),
                Some(p) if !p.may_publish(&f.topic) => {
                    Err(error_frame(r, "forbidden", format!("your token does not allow publishing to {:?}", f.topic)))
                }
                Some(_) => publish(conn, f, r).await,
            },
            Err(e) => Err(bad(e)),
        },
        Some("rpc") => match serde_json::from_str::<RpcFrame>(text) {
            Ok(f) => rpc(conn, f, r, caller, rpcs),
            Err(e) => Err(bad(e)),
        },
        Some("ping") => {
            if let Some(r) = r {
                client.push(ack(r));
            }
            Ok(())
        }
        Some(other) => Err(error_frame(r, "unknown_type", format!("unknown frame type {other:?}"))),
        None => Err(error_frame(r, "invalid_request", "a frame is a JSON object with a \"type\"")),
    };
    if let Err(frame) = outcome {
        client.push(frame);
    }
}

fn patterns_of(hub: &Hub, topics: &[String], r: Option<&Value>) -> Result<Vec<Pattern>, Outbound> {
    if topics.is_empty() {
        return Err(error_frame(r, "invalid_request", "topics must not be empty"));
    }
    parse_patterns(topics.iter().map(String::as_str), hub.config().max_topics_per_client)
        .map_err(|e| error_frame(r, e.code, e.message))
}

async fn subscribe(
    conn: &Connection,
    f: SubscribeFrame,
    r: Option<&Value>,
    subscriber: &Subscriber,
) -> Result<(), Outbound> {
    let patterns = patterns_of(conn.hub(), &f.topics, r)?;
    subscriber.check(conn.hub().config(), &patterns).map_err(|e| error_frame(r, e.code, e.message))?;
    let client = conn.client();
    let hub = conn.hub();
    hub.catch_up(f.last_event_id.as_deref()).await;
    client.hold();
    let subscribed = hub.subscribe(&client.id(), &patterns).map_err(|e| {
        let api = ApiError::from(e);
        error_frame(r, api.code, api.message)
    })?;
    client.set_throttle(&patterns, conflate::throttle(f.throttle_ms));
    // Events dispatched before the subscription may still be on their way to this client's
    // queue; what opens the subscription goes behind them.
    hub.fanned_to(subscribed.head).await;
    // The ack and what opens the new subscription go before any live event queued since it was
    // made, so each topic's events stay in order.
    let mut first: Vec<Outbound> = r.map(ack).into_iter().collect();
    let start = match f.last_event_id.filter(|id| !id.is_empty()) {
        Some(after) => match hub.replay(client.id(), Some(&patterns), &after, subscribed.head).await {
            Ok(start) => Some(start),
            Err(e) => {
                tracing::warn!(error = %e, "replay failed");
                first.push(error_frame(r, "broker_unavailable", "the event broker is unavailable; resubscribe later"));
                None
            }
        },
        None => None,
    };
    first.extend(opening(start, &subscribed.snapshots));
    client.insert_at(subscribed.head, first);
    Ok(())
}

fn unsubscribe(conn: &Connection, f: UnsubscribeFrame, r: Option<&Value>) -> Result<(), Outbound> {
    let patterns = patterns_of(conn.hub(), &f.topics, r)?;
    let client = conn.client();
    conn.hub().unsubscribe(&client.id(), &patterns).map_err(|e| error_frame(r, "unknown_client", e.to_string()))?;
    if let Some(r) = r {
        client.push(ack(r));
    }
    Ok(())
}

async fn publish(conn: &Connection, f: PublishFrame<'_>, r: Option<&Value>) -> Result<(), Outbound> {
    let data = f.data.map(|raw| raw.to_owned()).unwrap_or_else(null_data);
    let draft = Draft::new(Some(Arc::from(f.topic)), f.event.as_deref().unwrap_or("message"), data, Audience::Topic);
    let events: Vec<Arc<Event>> = conn.hub().publish(vec![draft]).await.map_err(|e| {
        let api = ApiError::from(e);
        error_frame(r, api.code, api.message)
    })?;
    if let Some(r) = r {
        let mut a = json!({ "type": "ack", "ref": r });
        a["ids"] = json!(events.iter().map(|e| &*e.id_text).collect::<Vec<_>>());
        conn.client().push(text(a));
    }
    Ok(())
}

fn rpc(
    conn: &Connection,
    f: RpcFrame,
    r: Option<&Value>,
    caller: &Caller,
    rpcs: &mut JoinSet<()>,
) -> Result<(), Outbound> {
    let Some(reference) = r.cloned() else {
        return Err(error_frame(None, "invalid_request", "an rpc needs a ref to answer to"));
    };
    let Some(handler) = conn.hub().rpc_handler() else {
        return Err(error_frame(r, "rpc_unavailable", "no backend answers rpc on this gateway"));
    };
    while rpcs.try_join_next().is_some() {}
    if rpcs.len() >= RPC_IN_FLIGHT {
        return Err(error_frame(r, "too_many_requests", format!("at most {RPC_IN_FLIGHT} rpc at a time")));
    }
    let client = conn.client().clone();
    let identity = caller.subscriber.identity.as_ref().map(|id| id.claims.clone());
    let request = RpcRequest { client_id: client.id(), method: f.method, data: f.data, identity };
    // Owned by the session, which aborts it when it ends; otherwise the backend or the timeout
    // ends it.
    rpcs.spawn(async move {
        let answer = match tokio::time::timeout(RPC_TIMEOUT, handler.call(request)).await {
            Ok(a) => a,
            Err(_) => Err(RpcError::new("rpc_timeout", "the backend did not answer in time")),
        };
        client.push(match answer {
            Ok(data) => text(json!({ "type": "reply", "ref": reference, "data": data })),
            Err(e) => error_frame(Some(&reference), &e.code, e.message),
        });
    });
    Ok(())
}

/// A message's text as axum takes it. axum checks it is UTF-8 again (it always is: the core
/// builds messages from JSON text), which costs one pass over it per client on this path only.
fn utf8(bytes: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(bytes).unwrap_or_default()
}
