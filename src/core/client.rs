//! One connected client: its id and its bounded outbound queue. The hub pushes into the queue
//! without waiting; the client's transport drains everything that is waiting in one go.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

pub(crate) use crate::config::Transport;
use crate::core::event::{now_ms, Event, EventId};
use crate::core::retained::Snapshot;
use crate::core::topic::Pattern;

/// One line of `GET /clients`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's id.
    pub client_id: Uuid,
    /// `sse`, `ws` or `long-poll`.
    pub transport: Transport,
    /// The client's subscriptions.
    pub topics: Vec<String>,
    /// When it connected, unix milliseconds.
    pub connected_at: u64,
}

/// Why the hub stopped a client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client did not read fast enough and its queue filled up; it should reconnect and
    /// resume from history.
    Overflow,
    /// A backend asked for the disconnect (`DELETE /clients/{id}`).
    Kicked,
    /// The gateway is shutting down; the client should come back later.
    Shutdown,
    /// The peer stopped answering pings, or its poll session expired.
    Timeout,
    /// The peer sent a frame over the size limit.
    TooLarge,
    /// The peer closed its WebSocket with a close frame, which has been answered.
    Answered,
    /// The peer broke the WebSocket protocol (reserved bits or opcodes, an unmasked frame, a bad
    /// close frame, a control frame fragmented or too long, …).
    Protocol,
    /// The peer sent WebSocket text that is not UTF-8.
    InvalidData,
    /// The token the client connected with has expired; it reconnects with a fresh one.
    Expired,
}

/// What the hub asks a transport to send.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    /// A published event.
    Event(Arc<Event>),
    /// Nothing was sent for a heartbeat interval (SSE comment), or the peer was not heard from
    /// (WebSocket ping).
    Heartbeat,
    /// A message already rendered for a frame-based transport (a WebSocket `ack`, `reply`, `error`
    /// or `reset`), as JSON text.
    Frame(String),
    /// A topic's retained state, sent when the client subscribes.
    Snapshot(Arc<Snapshot>),
    /// Updates of this retained topic were dropped from a full queue: send its current state
    /// instead (see [`crate::core::conflate`]).
    Resync(Arc<str>),
    /// The last message: the stream ends after it.
    Close(CloseReason),
    /// Bytes for the socket as they are: the rest of a frame whose start was written straight
    /// to it, or a WebSocket control frame the protocol answers with (pong, close).
    Raw(bytes::Bytes),
    /// The rest of a resume: the missed events after a position, read from the shared history
    /// a page at a time when the transport gets to it (see [`crate::core::conflate::Shaper::next`]).
    Resume(Box<Resume>),
}

/// Where a client's resume goes on: after `after`, up to `upto`, through `only` those patterns
/// (or, with `None`, everything the client receives).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    /// The last history position read.
    pub after: EventId,
    /// Where live events start: the resume ends there.
    pub upto: EventId,
    /// The subscriptions being resumed, when not all of them.
    pub only: Option<Arc<[Pattern]>>,
}

impl Outbound {
    /// The retained topic a state update is about: conflatable into a fresh snapshot.
    fn state_topic(&self) -> Option<&Arc<str>> {
        match self {
            Outbound::Event(ev) if ev.draft.version.is_some() => ev.draft.topic.as_ref(),
            Outbound::Snapshot(s) => Some(&s.topic),
            Outbound::Resync(t) => Some(t),
            _ => None,
        }
    }
}

/// Result of offering an item to a client's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// The queue was full of state updates: they were replaced by one resync per topic.
    Conflated,
    /// The queue was full: it was emptied and the client is now closed with
    /// [`CloseReason::Overflow`].
    Overflowed,
    /// The client is already closed; the item was dropped.
    Closed,
}

/// How a connection served on its socket wants its events written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// SSE frames; `envelope=1` sends the whole event JSON as data.
    Sse {
        /// `envelope=1`.
        envelope: bool,
    },
    /// WebSocket text frames.
    Ws,
}

impl Wire {
    /// An event's frame in this format, made once and shared.
    pub(crate) fn event(self, ev: &Event) -> &bytes::Bytes {
        match self {
            Wire::Sse { envelope } => ev.sse_frame(envelope),
            Wire::Ws => ev.ws_frame(),
        }
    }

    /// A retained state's frame in this format, made once and shared.
    pub(crate) fn snapshot(self, s: &Snapshot) -> &bytes::Bytes {
        match self {
            Wire::Sse { .. } => s.sse_frame(),
            Wire::Ws => s.ws_frame(),
        }
    }

    /// What keeps the connection alive: an SSE comment, or a WebSocket ping.
    pub(crate) fn heartbeat(self) -> &'static [u8] {
        match self {
            Wire::Sse { .. } => SSE_HEARTBEAT,
            Wire::Ws => WS_PING,
        }
    }
}

/// The frames of a run of events, concatenated on first use (per format) and shared by every
/// receiver. A run of one is the event's own frame.
#[derive(Default)]
pub(crate) struct Frames {
    plain: OnceLock<bytes::Bytes>,
    envelope: OnceLock<bytes::Bytes>,
    ws: OnceLock<bytes::Bytes>,
}

impl Frames {
    fn get<'a>(&'a self, events: &'a [Arc<Event>], wire: Wire) -> &'a bytes::Bytes {
        if let [one] = events {
            return wire.event(one);
        }
        let cell = match wire {
            Wire::Sse { envelope: false } => &self.plain,
            Wire::Sse { envelope: true } => &self.envelope,
            Wire::Ws => &self.ws,
        };
        cell.get_or_init(|| {
            let mut out = bytes::BytesMut::new();
            for ev in events {
                out.extend_from_slice(wire.event(ev));
            }
            out.freeze()
        })
    }
}

/// A connection's socket as pushes write to it: at once, without waiting, straight to the kernel.
/// The socket edge gives one to each connection it serves on its socket.
pub(crate) trait DirectSocket: Send + Sync {
    /// Writes as much of `frame` as the socket takes now. An error (`WouldBlock` included) if it
    /// takes nothing: the connection's task then waits for the socket.
    fn try_send(&self, frame: &[u8]) -> std::io::Result<usize>;

    /// Loads what a write touches first, without waiting for it (see [`Client::warm`]).
    fn warm(&self);
}

/// Set while a connection's socket may be written straight from [`Client::push`] (see
/// [`crate::edge::direct`]).
struct Direct {
    wire: Wire,
    /// The task has written everything and waits: a push may write to the socket itself.
    idle: bool,
}

struct Queue {
    items: VecDeque<Outbound>,
    /// Set for a connection served on its socket (SSE or WebSocket), unless it is throttled.
    direct: Option<Direct>,
    closed: bool,
    /// Why it was closed.
    reason: Option<CloseReason>,
    /// A heartbeat is waiting in `items`.
    heartbeat_queued: bool,
}

impl Queue {
    /// The format of a direct connection whose task is idle: pushes may write to its socket.
    /// Idle implies nothing is queued.
    fn idle_direct(&self) -> Option<Wire> {
        self.direct.as_ref().filter(|d| d.idle).map(|d| d.wire)
    }

    /// Something is queued: the connection's task writes until it is idle again.
    fn busy(&mut self) {
        if let Some(d) = self.direct.as_mut() {
            d.idle = false;
        }
    }
}

/// An SSE comment that keeps a silent stream alive.
pub(crate) const SSE_HEARTBEAT: &[u8] = b": hb\n\n";
/// A WebSocket ping with no payload (RFC 6455 §5.5.2).
pub(crate) const WS_PING: &[u8] = &[0x89, 0x00];

/// A connected client, shared by the hub (which pushes) and its transport (which drains).
pub(crate) struct Client {
    id: Uuid,
    transport: Transport,
    connected_at_ms: u64,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Woken when the queue goes from empty to non-empty; the transport's writer waits on it.
    ready: Notify,
    /// Woken (all waiters) when the client is closed.
    closed: Notify,
    /// The dispatch round that last reached this client, so a client that matches an event
    /// through several subscriptions gets it once.
    last_round: AtomicU64,
    /// When the transport last wrote anything, for heartbeats.
    last_write_ms: AtomicU64,
    /// When the peer was last heard from (a frame or a poll), for liveness.
    last_heard_ms: AtomicU64,
    /// The socket of a connection served by the gateway's own server, which pushes may write
    /// to while the connection's task is idle.
    socket: OnceLock<Arc<dyn DirectSocket>>,
    /// Subscriptions with `throttle_ms`: at most one update per topic per interval.
    throttles: Mutex<Vec<(Pattern, Duration)>>,
    /// Whether `throttles` is non-empty, read on every batch without the lock.
    throttled: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).field("transport", &self.transport).finish_non_exhaustive()
    }
}

impl Client {
    /// A new client whose queue holds at most `capacity` items.
    pub(crate) fn new(id: Uuid, transport: Transport, capacity: usize) -> Self {
        let now = now_ms();
        Client {
            id,
            transport,
            connected_at_ms: now,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                direct: None,
                closed: false,
                reason: None,
                heartbeat_queued: false,
            }),
            ready: Notify::new(),
            closed: Notify::new(),
            last_round: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(now),
            last_heard_ms: AtomicU64::new(now),
            socket: OnceLock::new(),
            throttles: Mutex::new(Vec::new()),
            throttled: AtomicBool::new(false),
        }
    }

    /// The client's id, which backends use to target it.
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    /// How the client is connected.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// When the client connected, in unix milliseconds.
    pub(crate) fn connected_at_ms(&self) -> u64 {
        self.connected_at_ms
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this short lock leaves the queue itself consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks dispatch round `round` as reaching this client; false if it already had.
    pub(crate) fn first_in_round(&self, round: u64) -> bool {
        self.last_round.swap(round, Ordering::Relaxed) != round
    }

    /// Lets pushes write frames straight to `socket` while the connection's task waits (not
    /// while any subscription is throttled: the task holds those events back and reorders them).
    pub(crate) fn write_directly(&self, socket: Arc<dyn DirectSocket>, wire: Wire) {
        if self.socket.set(socket).is_ok() && !self.is_throttled() {
            self.lock().direct = Some(Direct { wire, idle: false });
        }
    }

    /// Loads what a delivery touches first (the client's own fields and its socket handle)
    /// without waiting for it: a fan-out warms a run of clients before it writes to the first,
    /// so their cache misses overlap instead of coming one after the other.
    pub(crate) fn warm(&self) {
        std::hint::black_box(self.last_round.load(Ordering::Relaxed));
        std::hint::black_box(self.queue.is_poisoned());
        if let Some(socket) = self.socket.get() {
            socket.warm();
        }
    }

    /// Stops pushes from writing to the socket until the connection's task has written what is
    /// queued next: a new subscription's opening (ack, missed events, snapshot) must go out
    /// before the live events that follow it.
    pub(crate) fn hold(&self) {
        self.lock().busy();
    }

    /// Called by a direct connection's task when it has written everything: until something is
    /// queued for it again, pushes write to the socket themselves.
    pub(crate) fn idle(&self) {
        let mut q = self.lock();
        let empty = q.items.is_empty();
        if let Some(d) = q.direct.as_mut() {
            d.idle = empty;
        }
    }

    /// Writes `frame` straight to the socket if the connection's task is idle (its queue is then
    /// empty). True if the frame is taken care of: all written, or the rest queued for the task
    /// (see [`Client::written`]); false if the caller must queue it as usual.
    fn write_direct(&self, q: &mut Queue, frame: &bytes::Bytes) -> bool {
        let Some(d) = q.direct.as_mut().filter(|d| d.idle) else { return false };
        let Some(socket) = self.socket.get() else { return false };
        // A socket that pushes back says so here, and its task then waits for it.
        match socket.try_send(frame) {
            Ok(n) if n == frame.len() => true,
            Ok(n) => {
                d.idle = false;
                q.items.push_back(Outbound::Raw(frame.slice(n..)));
                true
            }
            // Pushed back or broken: the task waits for the socket, or finds the error.
            Err(_) => {
                d.idle = false;
                false
            }
        }
    }

    /// After [`Client::write_direct`] took a frame: wakes the task if part of it is queued.
    fn written(&self, q: MutexGuard<'_, Queue>) {
        let rest_queued = !q.items.is_empty();
        drop(q);
        if rest_queued {
            self.ready.notify_one();
        } else {
            self.wrote(now_ms());
        }
    }

    /// Gives the client a run of events (`frames`: their frames, concatenated once for all
    /// receivers). A direct connection that is idle gets them in one write, without touching the
    /// events' reference counts; otherwise each is queued as by [`Client::push`]. Returns how
    /// many were delivered.
    pub(crate) fn push_events(&self, events: &[Arc<Event>], frames: &Frames) -> (u64, Push) {
        let mut q = self.lock();
        if q.closed {
            return (0, Push::Closed);
        }
        if let Some(wire) = q.idle_direct() {
            if self.write_direct(&mut q, frames.get(events, wire)) {
                self.written(q);
                return (events.len() as u64, Push::Queued);
            }
        }
        drop(q);
        let mut delivered = 0;
        for ev in events {
            match self.push(Outbound::Event(ev.clone())) {
                Push::Queued => delivered += 1,
                other => return (delivered, other),
            }
        }
        (delivered, Push::Queued)
    }

    /// Queues an item. A full queue is emptied and replaced by a close, so a client that stops
    /// reading holds at most `capacity` items and then resumes from history when it reconnects.
    pub(crate) fn push(&self, item: Outbound) -> Push {
        let mut q = self.lock();
        if q.closed {
            return Push::Closed;
        }
        if let Some(wire) = q.idle_direct() {
            let written = match &item {
                Outbound::Event(ev) => self.write_direct(&mut q, wire.event(ev)),
                Outbound::Heartbeat => self.write_direct(&mut q, &bytes::Bytes::from_static(wire.heartbeat())),
                Outbound::Raw(bytes) => self.write_direct(&mut q, bytes),
                Outbound::Frame(text) if wire == Wire::Ws => {
                    self.write_direct(&mut q, &crate::core::event::ws_text_frame(text.as_bytes()))
                }
                _ => false,
            };
            if written {
                self.written(q);
                return Push::Queued;
            }
        }
        q.busy();
        let was_empty = q.items.is_empty();
        // A close always fits: it is the last item.
        if q.items.len() >= self.capacity && !matches!(item, Outbound::Close(_)) {
            // The rest of a frame already begun on the socket always goes out: without it the
            // next bytes would land inside that frame. It can only be first (see `write_direct`).
            let begun = match q.items.front() {
                Some(Outbound::Raw(_)) => q.items.pop_front(),
                _ => None,
            };
            if let Some(topics) = conflatable(&q.items, &item, self.capacity) {
                // Only state updates wait: one fresh snapshot per topic replaces them all.
                q.items.clear();
                q.items.extend(begun);
                q.items.extend(topics.into_iter().map(Outbound::Resync));
                q.heartbeat_queued = false;
                drop(q);
                self.ready.notify_one();
                return Push::Conflated;
            }
            q.items.clear();
            q.items.shrink_to(16);
            q.heartbeat_queued = false;
            q.items.extend(begun);
            q.items.push_back(Outbound::Close(CloseReason::Overflow));
            q.closed = true;
            q.reason = Some(CloseReason::Overflow);
            drop(q);
            self.ready.notify_one();
            self.closed.notify_waiters();
            return Push::Overflowed;
        }
        let closing = matches!(item, Outbound::Close(_));
        if let Outbound::Close(reason) = item {
            q.closed = true;
            q.reason = Some(reason);
        }
        q.items.push_back(item);
        drop(q);
        if closing {
            self.closed.notify_waiters();
        }
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Queues a heartbeat. Unless `always`, only when nothing else is waiting (an SSE comment is
    /// needed only on a silent stream); a WebSocket ping goes even behind queued events. At most
    /// one heartbeat waits at a time. True if one was queued.
    pub(crate) fn push_heartbeat(&self, always: bool) -> bool {
        let mut q = self.lock();
        if q.closed || q.heartbeat_queued || (!always && !q.items.is_empty()) {
            return false;
        }
        if let Some(wire) = q.idle_direct() {
            if self.write_direct(&mut q, &bytes::Bytes::from_static(wire.heartbeat())) {
                self.written(q);
                return true;
            }
        }
        q.busy();
        let was_empty = q.items.is_empty();
        q.items.push_back(Outbound::Heartbeat);
        q.heartbeat_queued = true;
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Puts items where a subscription made at `head` starts: after everything queued that was
    /// dispatched up to `head`, before the live events that came after it. This is where a new
    /// subscription's ack, missed events and snapshots belong, so ids never go backwards and a
    /// snapshot precedes exactly the changes it does not include. Bounded by the history.
    pub(crate) fn insert_at(&self, head: EventId, items: Vec<Outbound>) {
        let mut q = self.lock();
        if q.closed || items.is_empty() {
            return;
        }
        q.busy();
        let at = q.items.iter().position(|i| matches!(i, Outbound::Event(ev) if ev.id > head)).unwrap_or(q.items.len());
        let was_empty = q.items.is_empty();
        for (n, item) in items.into_iter().enumerate() {
            q.items.insert(at + n, item);
        }
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Puts `items` back in front of the queue, in order: what a writer took but will send later
    /// (the rest of a resume and what waits behind it).
    pub(crate) fn requeue_front(&self, items: impl DoubleEndedIterator<Item = Outbound>) {
        let mut q = self.lock();
        if q.closed && q.items.iter().any(|i| matches!(i, Outbound::Close(_))) {
            // Closed meanwhile (its queue overflowed, say): the client resumes later from what
            // it has, so what was taken is dropped rather than held.
            return;
        }
        q.busy();
        let was_empty = q.items.is_empty();
        for item in items.rev() {
            q.items.push_front(item);
        }
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Closes the client's stream: pending items are still sent, then the close.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.push(Outbound::Close(reason));
    }

    /// Whether the client has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Completes once the client is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            closed.await;
        }
    }

    /// Why the client was closed, if it was.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.lock().reason
    }

    /// Waits until something is queued, then moves everything queued into `out` (which it
    /// clears first) and returns true. Once the close has been taken, returns false at once.
    /// Cancel-safe: items are taken only in the poll that returns.
    pub(crate) async fn next_batch(&self, out: &mut VecDeque<Outbound>) -> bool {
        out.clear();
        loop {
            {
                let mut q = self.lock();
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, out);
                    q.heartbeat_queued = false;
                    return true;
                }
                if q.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Adds `throttle` to these subscriptions (`None` removes it).
    pub(crate) fn set_throttle(&self, patterns: &[Pattern], throttle: Option<Duration>) {
        let mut t = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|(p, _)| !patterns.contains(p));
        if let Some(every) = throttle.filter(|d| !d.is_zero()) {
            t.extend(patterns.iter().map(|p| (p.clone(), every)));
        }
        let throttled = !t.is_empty();
        self.throttled.store(throttled, Ordering::Relaxed);
        drop(t);
        if throttled {
            // From now on the task holds events back and reorders them: no more direct writes.
            self.lock().direct = None;
        }
    }

    /// Whether any subscription is throttled.
    pub(crate) fn is_throttled(&self) -> bool {
        self.throttled.load(Ordering::Relaxed)
    }

    /// The throttle of the first throttled subscription matching `topic`.
    pub(crate) fn throttle_for(&self, topic: &str) -> Option<Duration> {
        let t = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().find(|(p, _)| p.matches(topic)).map(|(_, d)| *d)
    }

    /// Moves everything queued now to the end of `out`, without waiting.
    pub(crate) fn drain_into(&self, out: &mut VecDeque<Outbound>) {
        let mut q = self.lock();
        out.extend(q.items.drain(..));
        q.heartbeat_queued = false;
    }

    /// Records that the transport wrote to the client now.
    pub(crate) fn wrote(&self, now_ms: u64) {
        self.last_write_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Records that the peer was heard from now.
    pub(crate) fn heard(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the peer was last heard from, unix milliseconds.
    pub(crate) fn last_heard_ms(&self) -> u64 {
        self.last_heard_ms.load(Ordering::Relaxed)
    }

    /// Whether nothing has been written since `since_ms`.
    pub(crate) fn idle_since(&self, since_ms: u64) -> bool {
        self.last_write_ms.load(Ordering::Relaxed) <= since_ms
    }
}

/// The topics of a full queue plus `item`, if all of them are retained-state updates (and there
/// are fewer topics than the queue holds).
fn conflatable(items: &VecDeque<Outbound>, item: &Outbound, capacity: usize) -> Option<Vec<Arc<str>>> {
    item.state_topic()?;
    let mut topics: Vec<Arc<str>> = Vec::new();
    for i in items.iter().chain(std::iter::once(item)) {
        match i.state_topic() {
            Some(t) if topics.contains(t) => {}
            Some(t) if topics.len() + 1 < capacity => topics.push(t.clone()),
            Some(_) => return None,
            None if matches!(i, Outbound::Heartbeat) => {}
            None => return None,
        }
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{Audience, Draft};

    fn state_update(seq: u64) -> Outbound {
        let data = serde_json::value::to_raw_value(&seq).unwrap();
        let mut draft = Draft::new(Some("t".into()), "patch", data, Audience::Topic);
        draft.version = Some(seq);
        Outbound::Event(Arc::new(Event::new(EventId { ms: 1, seq }, draft)))
    }

    async fn drained(c: &Client) -> Vec<Outbound> {
        let mut out = VecDeque::new();
        assert!(c.next_batch(&mut out).await);
        out.into_iter().collect()
    }

    #[tokio::test]
    async fn the_rest_of_a_begun_frame_survives_conflation_and_overflow() {
        let rest = bytes::Bytes::from_static(b"tail of a frame\n\n");
        // Conflation: the state updates become one resync, behind the rest of the frame.
        let c = Client::new(Uuid::new_v4(), Transport::Sse, 3);
        c.push(Outbound::Raw(rest.clone()));
        for seq in 1..=3 {
            c.push(state_update(seq));
        }
        let out = drained(&c).await;
        assert!(matches!(&out[..], [Outbound::Raw(r), Outbound::Resync(t)] if *r == rest && &**t == "t"), "{out:?}");
        // Overflow: the rest of the frame, then the close.
        let c = Client::new(Uuid::new_v4(), Transport::Sse, 2);
        c.push(Outbound::Raw(rest.clone()));
        c.push(Outbound::Heartbeat);
        assert_eq!(c.push(Outbound::Heartbeat), Push::Overflowed);
        let out = drained(&c).await;
        assert!(
            matches!(&out[..], [Outbound::Raw(r), Outbound::Close(CloseReason::Overflow)] if *r == rest),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_turns_into_one_close() {
        let c = Client::new(Uuid::new_v4(), Transport::Sse, 2);
        assert_eq!(c.push(Outbound::Heartbeat), Push::Queued);
        assert_eq!(c.push(Outbound::Heartbeat), Push::Queued);
        assert_eq!(c.push(Outbound::Heartbeat), Push::Overflowed);
        assert_eq!(c.push(Outbound::Heartbeat), Push::Closed);
        let mut out = VecDeque::new();
        assert!(c.next_batch(&mut out).await);
        assert!(matches!(out.iter().collect::<Vec<_>>()[..], [Outbound::Close(CloseReason::Overflow)]));
        assert!(!c.next_batch(&mut out).await);
        assert!(out.is_empty());
    }
}
