//! The transports: each renders a client's queue in its wire format. `/stream` (SSE), `/ws`
//! (WebSocket), `/poll` (long-polling), `/snapshot` (plain polling) and `/negotiate`. None
//! imports another; what they share is here: the stream query, the handle on a connection, and
//! the [`Pump`] that renders a queue as SSE or WebSocket frames, whatever carries the bytes.

pub(crate) mod negotiate;
pub(crate) mod poll;
pub(crate) mod snapshot;
pub(crate) mod sse;
pub(crate) mod ws;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use crate::core::client::{Client, CloseReason, Outbound, Wire};
use crate::core::conflate::Shaper;
use crate::core::event::{now_ms, sse_frame, ws_text_frame, EventId};
use crate::core::hub::{Connection, Hub};
use crate::http::auth::Expiry;
use crate::http::error::ApiError;
use crate::http::query::{pairs, throttle_param, truthy};

/// About the most a connection renders for one write: the rest of what it is behind on waits,
/// shared, in its queue.
pub(crate) const CHUNK: usize = 256 * 1024;

/// What `/stream` reads from its query string.
#[derive(Debug, Default)]
pub(crate) struct StreamQuery {
    /// `topic`, repeated.
    pub topics: Vec<String>,
    /// `lastEventId`, for clients that cannot set the header.
    pub last_event_id: Option<String>,
    /// `envelope=1`: data is the whole event JSON.
    pub envelope: bool,
    /// `token`: an API key, for WebSocket clients that cannot set headers.
    pub token: Option<String>,
    /// `access_token`: a JWT, for clients that cannot set headers (`EventSource`, browsers'
    /// WebSocket).
    pub access_token: Option<String>,
    /// `throttle_ms`: at most one update per topic per interval.
    pub throttle_ms: Option<u64>,
}

impl StreamQuery {
    /// Parses the query string.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = StreamQuery::default();
        for (k, v) in pairs(raw)? {
            match &*k {
                "topic" => q.topics.push(v),
                "lastEventId" | "last_event_id" => q.last_event_id = Some(v),
                "envelope" => q.envelope = truthy(&v),
                "token" => q.token = Some(v),
                "access_token" => q.access_token = Some(v),
                "throttle_ms" => q.throttle_ms = Some(throttle_param(&v)?),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// A handle on one TCP connection, put in each request's extensions. It can cut the connection,
/// and it holds the connection's slot in the open-connection count: a WebSocket session keeps its
/// handle, so an upgraded connection stays counted (and drained) until the session ends.
#[derive(Clone)]
pub(crate) struct ConnHandle {
    /// Cancelling it drops the connection. A child of the server's "cut everything" token.
    kill: CancellationToken,
    /// The edge's count of the connection, released when the last handle goes.
    _slot: Arc<dyn std::any::Any + Send + Sync>,
    /// For an HTTP/2 stream: its task (set once spawned), which a cut aborts.
    task: Option<Arc<std::sync::OnceLock<tokio::task::AbortHandle>>>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("kill", &self.kill).finish_non_exhaustive()
    }
}

impl ConnHandle {
    /// A handle that `kill` cuts, holding `slot` (dropped with the last handle).
    pub(crate) fn new(kill: CancellationToken, slot: Arc<dyn std::any::Any + Send + Sync>) -> ConnHandle {
        ConnHandle { kill, _slot: slot, task: None }
    }

    /// The handle of one HTTP/2 stream: a cut also aborts `task`, which resets the stream alone.
    pub(crate) fn for_stream(
        kill: CancellationToken,
        slot: Arc<dyn std::any::Any + Send + Sync>,
        task: Arc<std::sync::OnceLock<tokio::task::AbortHandle>>,
    ) -> ConnHandle {
        ConnHandle { kill, _slot: slot, task: Some(task) }
    }

    /// Completes when the connection is to be dropped (cut by the server).
    pub(crate) async fn killed(&self) {
        self.kill.cancelled().await
    }

    /// The token whose cancellation drops the connection.
    pub(crate) fn token(&self) -> CancellationToken {
        self.kill.clone()
    }

    /// Drops the connection after `grace` unless it ended before.
    pub(crate) fn kill_after(&self, grace: Duration) {
        let kill = self.kill.clone();
        let task = self.task.clone();
        // Ends by itself after `grace`, or as soon as the connection is gone.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {
                    kill.cancel();
                    if let Some(task) = task.as_ref().and_then(|t| t.get()) {
                        task.abort();
                    }
                }
                _ = kill.cancelled() => {}
            }
        });
    }
}

/// What [`Pump::fill`] found.
pub(crate) enum Flow {
    /// More may follow.
    More,
    /// The stream ends (after what was rendered).
    End,
}

/// The client a pump renders, and whether the pump holds its registration.
enum Holder {
    /// Dropping the pump unregisters the client (an SSE stream).
    Registered(Connection),
    /// The session that registered the client holds the registration (a WebSocket).
    Client(Hub, Arc<Client>),
}

impl Holder {
    fn parts(&self) -> (&Hub, &Arc<Client>) {
        match self {
            Holder::Registered(conn) => (conn.hub(), conn.client()),
            Holder::Client(hub, client) => (hub, client),
        }
    }
}

/// Renders a client's queue as SSE or WebSocket frames, a chunk at a time, for whatever carries
/// the bytes (the socket edge, or an HTTP response body). The one place where a queued item
/// becomes bytes on a stream.
pub(crate) struct Pump {
    holder: Holder,
    wire: Wire,
    /// What a stream the hub closed ends with, by transport.
    closing: fn(&Hub, CloseReason, &mut BytesMut),
    batch: VecDeque<Outbound>,
    items: Vec<Outbound>,
    shaper: Shaper,
    last_id: Option<EventId>,
    /// Closes the client when its token expires; stops with the pump.
    _expiry: Option<Expiry>,
}

impl Pump {
    /// A pump that holds the client's registration.
    pub(crate) fn registered(conn: Connection, wire: Wire, closing: fn(&Hub, CloseReason, &mut BytesMut)) -> Pump {
        Pump::with(Holder::Registered(conn), wire, closing)
    }

    /// A pump for a client registered by someone else.
    pub(crate) fn of(hub: Hub, client: Arc<Client>, wire: Wire, closing: fn(&Hub, CloseReason, &mut BytesMut)) -> Pump {
        Pump::with(Holder::Client(hub, client), wire, closing)
    }

    fn with(holder: Holder, wire: Wire, closing: fn(&Hub, CloseReason, &mut BytesMut)) -> Pump {
        Pump {
            holder,
            wire,
            closing,
            batch: VecDeque::new(),
            items: Vec::new(),
            shaper: Shaper::default(),
            last_id: None,
            _expiry: None,
        }
    }

    /// The pump holds `expiry` (the timer that closes the client when its token expires) and
    /// stops it when it ends.
    pub(crate) fn expiring(mut self, expiry: Option<Expiry>) -> Pump {
        self._expiry = expiry;
        self
    }

    fn parts(&self) -> (&Hub, &Arc<Client>) {
        self.holder.parts()
    }

    /// The client this pump renders.
    pub(crate) fn client(&self) -> &Arc<Client> {
        self.parts().1
    }

    /// The format it renders.
    pub(crate) fn wire(&self) -> Wire {
        self.wire
    }

    /// Everything rendered so far is written: until something is queued again, the hub writes
    /// to the socket itself (if the edge gave it one).
    pub(crate) fn idle(&self) {
        // Items taken but not rendered yet go first.
        if self.items.is_empty() {
            self.client().idle();
        }
    }

    /// Waits until something is due for the client and renders it into `out`, about a
    /// [`CHUNK`] at most: a long queue (or large events) goes out a chunk per write, so a
    /// connection never holds a copy of all it is behind on. Shutdown arrives through the queue
    /// like everything else: `Hub::shutdown` closes every client, and the close ends the stream
    /// after the transport's closing bytes.
    pub(crate) async fn fill(&mut self, out: &mut BytesMut) -> Flow {
        // Borrows only the holder: the shaper and the items are borrowed mutably beside it.
        let (hub, client) = self.holder.parts();
        if self.items.is_empty() && !self.shaper.next(hub, client, &mut self.batch, &mut self.items).await {
            return Flow::End;
        }
        let mut end = None;
        let mut items = std::mem::take(&mut self.items).into_iter();
        while out.len() < CHUNK {
            let Some(item) = items.next() else { break };
            match item {
                // A throttled event held back comes after newer ones: without an `id:` it
                // cannot move an SSE client's resume position backwards.
                Outbound::Event(ev) if self.last_id.is_some_and(|last| ev.id < last) => match self.wire {
                    Wire::Sse { envelope } => {
                        let data = if envelope { &ev.json()[..] } else { ev.draft.data.get().as_bytes() };
                        out.extend_from_slice(&sse_frame(None, &ev.draft.event, data));
                    }
                    Wire::Ws => out.extend_from_slice(ev.ws_frame()),
                },
                Outbound::Event(ev) => {
                    self.last_id = Some(ev.id);
                    out.extend_from_slice(self.wire.event(&ev));
                }
                Outbound::Snapshot(s) => out.extend_from_slice(self.wire.snapshot(&s)),
                Outbound::Heartbeat => out.extend_from_slice(self.wire.heartbeat()),
                Outbound::Raw(bytes) => out.extend_from_slice(&bytes),
                // Replies to frame-based requests: only a WebSocket asks them.
                Outbound::Frame(text) => {
                    if self.wire == Wire::Ws {
                        out.extend_from_slice(&ws_text_frame(text.as_bytes()));
                    }
                }
                // The shaper has turned resyncs into snapshots and resumes into events.
                Outbound::Resync(_) | Outbound::Resume(_) => {}
                Outbound::Close(reason) => {
                    end = Some(reason);
                    break;
                }
            }
        }
        self.items.extend(items);
        if let Some(reason) = end {
            (self.closing)(hub, reason, out);
        }
        if !out.is_empty() {
            client.wrote(now_ms());
        }
        match end {
            Some(_) => Flow::End,
            None => Flow::More,
        }
    }
}
