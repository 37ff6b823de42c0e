//! `GET /poll`: long-polling. A poll session is a client kept between polls under its
//! `client_id`, so targeted events wait for it; the cursor says what the client has, so a lost
//! response or an expired session is made good from history. The `client_id` is an address that
//! anyone may learn: a poll continues a session (and reads what was kept for it, or its targeted
//! history) only with the session's secret, `session`, which only its first answer gave out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::core::client::{CloseReason, Outbound, Transport};
use crate::core::conflate::{self, Shaper};
use crate::core::event::{now_ms, push_json_str, EventId};
use crate::core::hub::{Connection, Hub};
use crate::core::topic::Pattern;
use crate::http::error::ApiError;
use crate::http::query::{parse_patterns, throttle_param};

/// Default wait of a long poll, in seconds.
pub(crate) const DEFAULT_TIMEOUT_S: f64 = 25.0;

/// One long-poll client, kept between its polls.
struct Session {
    conn: Connection,
    /// The source address it was opened from (see [`crate::http::peer::address_key`]), if known.
    address: Option<IpAddr>,
    patterns: Vec<Pattern>,
    /// The cursor last handed out and the conflation state; one poll at a time holds them.
    state: tokio::sync::Mutex<PollState>,
    /// Wakes a waiting poll when a newer poll of the same session arrives.
    superseded: Notify,
    /// Counts the polls of the session (and its retirement): a poll that sees it move past its
    /// own is superseded, even if it was not yet waiting when [`Session::superseded`] was told.
    polls: AtomicU64,
    polling: AtomicBool,
    last_poll_ms: AtomicU64,
}

/// What a poll works on, held by one poll at a time.
struct PollState {
    cursor: EventId,
    shaper: Shaper,
}

/// What `/poll` works with: the hub and the long-poll sessions, which this transport owns (the
/// hub knows nothing of them). [`crate::router`] makes one per router.
#[derive(Clone)]
pub(crate) struct Polls {
    hub: Hub,
    sessions: Arc<Sessions>,
    /// Signs client ids into session secrets; made at random for each router.
    secrets: Arc<ring::hmac::Key>,
}

impl Polls {
    /// The long-poll transport over `hub`, with a task that expires idle sessions and drops them
    /// all when the hub shuts down. Must be called inside a tokio runtime.
    pub(crate) fn new(hub: Hub) -> Polls {
        let sessions = Arc::new(Sessions::default());
        tokio::spawn(sweep(Arc::downgrade(&sessions), hub.clone()));
        let seed = [*Uuid::new_v4().as_bytes(), *Uuid::new_v4().as_bytes()].concat();
        let secrets = Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed));
        Polls { hub, sessions, secrets }
    }
}

/// The secret of the session under `id`: an HMAC of the id, so it holds for that id whether
/// the session is still kept or has expired (and is resumed from history under the same id).
fn secret(key: &ring::hmac::Key, id: Uuid) -> String {
    let tag = ring::hmac::sign(key, id.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the secret of the session under `id` (compared in constant time).
fn owns(key: &ring::hmac::Key, id: Uuid, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(secret(key, id).as_bytes().ct_eq(given.as_bytes()))
}

/// Expires sessions not polled for `--poll-session-ttl-ms` (their clients unregister and what was
/// kept for them goes) until the hub shuts down, then drops every session. Ends by itself once
/// the router that holds the sessions is gone.
async fn sweep(sessions: Weak<Sessions>, hub: Hub) {
    let ttl = hub.config().poll_session_ttl_ms;
    let every = (hub.config().heartbeat() / 4).max(Duration::from_millis(5));
    let shutdown = hub.shutdown_token().clone();
    // Holding the hub would keep it alive as long as the router lives: the task keeps only what
    // it needs.
    drop(hub);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(sessions) = sessions.upgrade() {
                    sessions.clear();
                }
                return;
            }
            _ = tick.tick() => {}
        }
        let Some(sessions) = sessions.upgrade() else { return };
        sessions.expire(now_ms().saturating_sub(ttl));
    }
}

/// The open long-poll sessions, by client id, and how many each source address holds.
#[derive(Default)]
struct Sessions {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    map: HashMap<Uuid, Arc<Session>>,
    per_address: crate::http::peer::PerAddress,
}

impl Table {
    fn insert(&mut self, session: Arc<Session>) {
        if let Some(a) = session.address {
            self.per_address.add(a);
        }
        if let Some(old) = self.map.insert(session.conn.client().id(), session) {
            self.forget(&old);
        }
    }

    fn forget(&mut self, session: &Session) {
        if let Some(a) = session.address {
            self.per_address.remove(a);
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops sessions not polled since `idle_since` (unix ms); their clients unregister and what
    /// was kept for them goes. A session the hub closed stays until then, so that its next poll
    /// learns why (a client the backend disconnected comes back under a new id).
    fn expire(&self, idle_since: u64) {
        let mut t = self.lock();
        let expired: Vec<Uuid> = t
            .map
            .iter()
            .filter(|(_, s)| !s.polling.load(Ordering::Relaxed) && s.last_poll_ms.load(Ordering::Relaxed) < idle_since)
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<Arc<Session>> = expired.iter().filter_map(|id| t.map.remove(id)).collect();
        for s in &gone {
            t.forget(s);
        }
        drop(t);
        // The sessions' clients unregister here, outside the table's lock.
        drop(gone);
    }

    fn remove(&self, id: &Uuid) {
        let mut t = self.lock();
        let gone = t.map.remove(id);
        if let Some(s) = &gone {
            t.forget(s);
        }
    }

    /// Drops every session (at shutdown).
    fn clear(&self) {
        let gone = std::mem::take(&mut *self.lock());
        drop(gone);
    }

    /// How many sessions there are in all, and from `address`.
    fn counts(&self, address: Option<IpAddr>) -> (usize, usize) {
        let t = self.lock();
        (t.map.len(), address.map_or(0, |a| t.per_address.get(a)))
    }
}

/// What `/poll` reads from its query string.
#[derive(Debug, Default)]
struct PollQuery {
    topics: Vec<String>,
    cursor: Option<String>,
    client_id: Option<String>,
    session: Option<String>,
    access_token: Option<String>,
    timeout_s: Option<String>,
    throttle_ms: Option<u64>,
}

impl PollQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = PollQuery::default();
        for (k, v) in crate::http::query::pairs(raw)? {
            match &*k {
                "topic" => q.topics.push(v),
                "cursor" => q.cursor = Some(v).filter(|c| !c.is_empty()),
                "client_id" => q.client_id = Some(v).filter(|c| !c.is_empty()),
                "session" => q.session = Some(v).filter(|c| !c.is_empty()),
                "access_token" => q.access_token = Some(v),
                "timeout" => q.timeout_s = Some(v),
                "throttle_ms" => q.throttle_ms = Some(throttle_param(&v)?),
                _ => {}
            }
        }
        Ok(q)
    }
}

fn wait_time(hub: &Hub, q: &PollQuery, headers: &HeaderMap) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_request("invalid_request", "timeout is a number of seconds (X-Long-Poll-Timeout: milliseconds)")
    };
    let secs = match (&q.timeout_s, headers.get("x-long-poll-timeout")) {
        (Some(t), _) => t.parse::<f64>().map_err(|_| bad())?,
        (None, Some(h)) => h.to_str().ok().and_then(|v| v.trim().parse::<f64>().ok()).ok_or_else(bad)? / 1000.0,
        (None, None) => DEFAULT_TIMEOUT_S,
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs.min(hub.config().poll_max_timeout_s as f64)))
}

/// Finds the session a poll belongs to, or opens one (under the client's old id if it gives
/// one that no connected client holds).
async fn session_for(
    hub: &Hub,
    sessions: &Sessions,
    id: Option<Uuid>,
    patterns: Vec<Pattern>,
    address: Option<IpAddr>,
) -> Result<(Arc<Session>, bool), ApiError> {
    let mut reuse_id = id;
    if let Some(id) = id {
        let found = sessions.lock().map.get(&id).cloned();
        if let Some(s) = found {
            match s.conn.client().close_reason() {
                None if s.patterns == patterns => return Ok((s, false)),
                // Disconnected by the backend: it comes back as a new client.
                Some(CloseReason::Kicked) => reuse_id = None,
                // Overflowed, or the client changed its topics: a new session under the same id.
                // A poll of the old session may still be waiting (one the client gave up on):
                // it answers now and lets go of the id.
                _ => {
                    s.supersede();
                }
            }
            sessions.remove(&id);
        }
    }
    let (all, from_address) = sessions.counts(address);
    if all >= hub.config().max_connections {
        return Err(ApiError::unavailable(
            "too_many_connections",
            "the gateway is at its long-poll session limit; retry later",
            1,
        ));
    }
    if from_address >= hub.config().max_per_address {
        return Err(ApiError::unavailable(
            "too_many_connections",
            "too many long-poll sessions from your address; let some expire or reuse your client_id",
            1,
        ));
    }
    let conn = match reuse_id {
        Some(id) => reconnect(hub, id, &patterns).await,
        None => None,
    };
    let conn = conn.unwrap_or_else(|| hub.connect(Transport::LongPoll, patterns.clone()));
    let head = conn.head();
    let session = Arc::new(Session {
        conn,
        address,
        patterns,
        state: tokio::sync::Mutex::new(PollState { cursor: head, shaper: Shaper::default() }),
        superseded: Notify::new(),
        polls: AtomicU64::new(0),
        polling: AtomicBool::new(false),
        last_poll_ms: AtomicU64::new(now_ms()),
    });
    sessions.lock().insert(session.clone());
    Ok((session, true))
}

/// Registers `id` again, once the old session's last poll has let go of it (it was just told to
/// answer): tried again each time a connection lets go of an id, for at most a second; then a
/// new id (the client resumes through its cursor all the same).
async fn reconnect(hub: &Hub, id: Uuid, patterns: &[Pattern]) -> Option<Connection> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let released = hub.released();
        tokio::pin!(released);
        released.as_mut().enable();
        if let Some(conn) = hub.reconnect(id, Transport::LongPoll, patterns.to_vec()) {
            return Some(conn);
        }
        tokio::time::timeout_at(deadline, released).await.ok()?;
    }
}

impl Session {
    /// Ends the poll waiting on this session, if any (a newer poll, or the session's end);
    /// returns the number of the poll that supersedes it.
    fn supersede(&self) -> u64 {
        let this = self.polls.fetch_add(1, Ordering::AcqRel) + 1;
        self.superseded.notify_waiters();
        this
    }
}

/// Marks a session as being polled; dropped (also when the client goes away mid-poll), it
/// starts the session's idle time.
struct Polling<'a>(&'a Session);

impl<'a> Polling<'a> {
    fn start(session: &'a Session) -> Self {
        session.polling.store(true, Ordering::Relaxed);
        Polling(session)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.last_poll_ms.store(now_ms(), Ordering::Relaxed);
        self.0.polling.store(false, Ordering::Relaxed);
    }
}

/// The answer of one poll, encoded as `{"client_id","cursor","events":[…]}`.
struct Answer {
    events: Vec<bytes::Bytes>,
    cursor: EventId,
}

fn reset_event(cursor: EventId, reason: &str) -> bytes::Bytes {
    let v = json!({ "id": cursor.to_string(), "topic": null, "event": "reset", "data": { "reason": reason }, "ts": now_ms() });
    bytes::Bytes::from(v.to_string())
}

fn respond(client_id: Uuid, session: &str, answer: Answer) -> Response {
    let mut out = Vec::with_capacity(160 + answer.events.iter().map(|e| e.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"client_id\":\"");
    out.extend_from_slice(client_id.to_string().as_bytes());
    out.extend_from_slice(b"\",\"session\":");
    push_json_str(&mut out, session);
    out.extend_from_slice(b",\"cursor\":");
    push_json_str(&mut out, &answer.cursor.to_string());
    out.extend_from_slice(b",\"events\":[");
    for (i, ev) in answer.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ev);
    }
    out.extend_from_slice(b"]}");
    let mut res = Response::new(Body::from(out));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `GET /poll`.
pub(crate) async fn poll(
    State(Polls { hub, sessions, secrets }): State<Polls>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    if !hub.config().transports.long_poll {
        return Err(ApiError::not_found("transport_disabled", "the long-poll transport is disabled on this server"));
    }
    let q = PollQuery::parse(raw.as_deref())?;
    let wait = wait_time(&hub, &q, &headers)?;
    let patterns = parse_patterns(q.topics.iter().map(String::as_str), hub.config().max_topics_per_client)?;
    // Every poll shows its credentials: a session outlives no token.
    let subscriber = crate::http::auth::subscriber(hub.config(), &headers, q.access_token.as_deref())?;
    subscriber.check(hub.config(), &patterns)?;
    let expires_in = subscriber.identity.as_ref().and_then(|id| id.expires_in_ms());
    let wait = expires_in.map_or(wait, |ms| wait.min(Duration::from_millis(ms)));
    let id = match &q.client_id {
        Some(c) => {
            Some(c.parse::<Uuid>().map_err(|_| ApiError::bad_request("invalid_request", "client_id is not a UUID"))?)
        }
        None => None,
    };
    // A client_id alone is an address, not a key: without the session's secret the poll opens a
    // session of its own (and resumes from its cursor through the topics, never through what
    // was targeted at that id).
    let id = id.filter(|id| q.session.as_deref().is_some_and(|s| owns(&secrets, *id, s)));
    hub.catch_up(q.cursor.as_deref()).await;
    // Behind a trusted proxy, the client it names (else every client behind it would share the
    // proxy's allowance).
    let address = peer.map(|p| {
        let ip = match crate::http::guard::peer(hub.config(), Some(p.0 .0), &headers) {
            crate::http::guard::Peer::Known(ip) => ip,
            crate::http::guard::Peer::Unknown => p.0 .0.ip(),
        };
        crate::http::peer::address_key(ip)
    });
    let (session, fresh) = session_for(&hub, &sessions, id, patterns, address).await?;
    let client = session.conn.client().clone();
    let client_id = client.id();

    // A newer poll of the same session takes over from a waiting one.
    let this_poll = session.supersede();
    let mut state = session.state.lock().await;
    let polling = Polling::start(&session);
    client.heard(now_ms());
    client.set_throttle(&session.patterns, conflate::throttle(q.throttle_ms));
    let answer = answer(&hub, &session, &mut state, q.cursor.as_deref(), fresh, wait, this_poll).await;
    drop(polling);
    drop(state);
    let answer = answer?;
    if client.is_closed() {
        // Overflowed, kicked or shut down: the next poll opens a new session and resumes from
        // its cursor.
        sessions.remove(&client_id);
    }
    Ok(respond(client_id, &secret(&secrets, client_id), answer))
}

/// The snapshots that open a session's stream: those taken when it registered if it is new;
/// otherwise the current ones, after which the queued changes they include are skipped.
fn snapshots(hub: &Hub, session: &Session, state: &mut PollState, fresh: bool) -> Vec<bytes::Bytes> {
    let cursor = state.cursor.to_string();
    let list = if fresh { session.conn.snapshots().to_vec() } else { hub.snapshots(&session.patterns) };
    list.iter()
        .map(|s| {
            if !fresh {
                state.shaper.note_sent(s);
            }
            s.poll_event(&cursor)
        })
        .collect()
}

async fn answer(
    hub: &Hub,
    session: &Session,
    state: &mut PollState,
    asked: Option<&str>,
    fresh: bool,
    wait: Duration,
    this_poll: u64,
) -> Result<Answer, ApiError> {
    let client = session.conn.client();
    let Some(asked) = asked else {
        // A first poll: the current position and the snapshots, at once.
        return Ok(Answer { events: snapshots(hub, session, state, fresh), cursor: state.cursor });
    };
    if fresh || asked != state.cursor.to_string() {
        // A new session resuming, or a poll whose last answer was lost: make good from history
        // what lies between the client's cursor and what this session has handed out.
        let start = hub.replay(client.id(), None, asked, state.cursor).await?;
        let mut events: Vec<bytes::Bytes> = start.missed.iter().map(|e| e.json().clone()).collect();
        if let Some(more) = start.more {
            // A page of history at a time: the next poll goes on from the end of this one.
            return Ok(Answer { events, cursor: more.after });
        }
        events.extend(start.reset.map(|reason| reset_event(state.cursor, reason)));
        if start.reload {
            events.extend(snapshots(hub, session, state, fresh));
        }
        if !events.is_empty() {
            return Ok(Answer { events, cursor: state.cursor });
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut batch = VecDeque::new();
    let mut items = Vec::new();
    loop {
        // Whether this poll is over even if nothing is to be sent.
        let superseded = session.superseded.notified();
        tokio::pin!(superseded);
        superseded.as_mut().enable();
        let over = session.polls.load(Ordering::Acquire) != this_poll
            || tokio::select! {
                _ = client.next_batch(&mut batch) => false,
                _ = conflate::until(state.shaper.next_due()) => false,
                _ = tokio::time::sleep_until(deadline) => true,
                _ = superseded => true,
            };
        // Everything the fan-out has handed out is in the queue by now: take it all, and the
        // cursor may move there.
        let head = hub.fanned();
        client.drain_into(&mut batch);
        let mut overflowed = false;
        for item in &batch {
            overflowed |= matches!(item, Outbound::Close(CloseReason::Overflow));
        }
        state.shaper.shape(hub, client, &mut batch, &mut items);
        let mut events = Vec::with_capacity(items.len());
        let mut last = state.cursor.max(head);
        let mut last_returned = state.cursor;
        for item in items.drain(..) {
            match item {
                Outbound::Event(ev) => {
                    last = last.max(ev.id);
                    last_returned = last_returned.max(ev.id);
                    events.push(ev.json().clone());
                }
                Outbound::Snapshot(s) => events.push(s.poll_event(&head.to_string())),
                Outbound::Heartbeat
                | Outbound::Frame(_)
                | Outbound::Resync(_)
                | Outbound::Raw(_)
                | Outbound::Resume(_)
                | Outbound::Close(_) => {}
            }
        }
        if overflowed {
            // Its queue was dropped: the cursor goes no further than what this answer holds, and
            // the next poll resumes from history in a new session.
            tracing::info!(client_id = %client.id(), "long-poll session overflowed: it resumes from its cursor");
            last = last_returned;
        }
        let finished = over || !events.is_empty() || overflowed || client.is_closed();
        state.cursor = last;
        if finished {
            return Ok(Answer { events, cursor: last });
        }
    }
}
