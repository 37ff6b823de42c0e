//! The Redis Streams broker: several gateway nodes share one ordered event log.
//!
//! - Every publish, on any node, is appended to one stream (`XADD` with an approximate `MAXLEN`
//!   from `--history-size`); each node reads the stream once (`XREAD`) and fans out to its own
//!   clients. Event ids are the stream ids, so a client resumes on any node.
//! - Retained state: a node prepares a batch's state changes against its own copy, and a script
//!   appends the batch only if no other node changed those topics meanwhile (their versions in
//!   Redis are those it prepared against); otherwise the node catches up with the stream and
//!   prepares again. The script also stores each changed topic's new state, so a node that
//!   starts late loads the states and then follows the stream. Every node applies the changes in
//!   stream order and skips those its loaded state already holds.
//! - Presence: each node keeps its clients in a hash that expires unless refreshed, so
//!   `GET /clients` lists the whole cluster; commands on a client connected elsewhere go over a
//!   pub/sub channel to every node, and the node holding the client answers.
//! - Faults: while Redis cannot be reached the broker is not ready and publishing fails at once;
//!   connected clients keep their streams. The node reconnects with backoff and reads on from
//!   where it was. If Redis lost its data (a restart without persistence), the nodes write their
//!   retained state back and clients resuming from before the loss get a `reset`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Script, Value as RedisValue};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::core::broker::{Answer, Broker, BrokerError, Cluster, Command, Dispatch, Presence, PublishError, Replay};
use crate::core::client::ClientInfo;
use crate::core::event::{Draft, Event, EventId};
use crate::core::hub::TooManyTopics;
use crate::core::persist::{SavedEvent, SavedTopic};

/// Prefix of every key and channel the gateway uses.
const PREFIX: &str = "ssegate";
/// How long one `XREAD` waits for new entries.
const BLOCK_MS: usize = 2_000;
/// Most entries read at once.
const READ_COUNT: usize = 1_000;
/// Longest wait for a Redis reply (other than a blocking read).
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node refreshes its presence.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// A node's presence expires this long after its last refresh.
const PRESENCE_TTL_S: i64 = 15;
/// Changes of presence waiting to be written; when full, the node rewrites all of it.
const PRESENCE_QUEUE: usize = 4_096;
/// Attempts to publish state changes while other nodes change the same topics.
const ATTEMPTS: usize = 5;
/// Reconnection delays.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Appends a batch if the versions of the topics it changes are those it was prepared against.
/// KEYS: stream, versions, states. ARGV: maxlen, n, then n × (topic, before, after, state), then
/// the entries. Returns the new ids, or `{"conflict", topic, version, last id}`.
const PUBLISH: &str = r"
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + 4 * i
  local v = redis.call('HGET', KEYS[2], ARGV[b]) or '0'
  if v ~= ARGV[b + 1] then
    local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
    local at = '0-0'
    if #last > 0 then at = last[1][1] end
    return {'conflict', ARGV[b], v, at}
  end
end
local ids = {}
for j = 3 + 4 * n, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[j])
end
for i = 0, n - 1 do
  local b = 3 + 4 * i
  redis.call('HSET', KEYS[2], ARGV[b], ARGV[b + 2])
  redis.call('HSET', KEYS[3], ARGV[b], ARGV[b + 3])
end
return ids
";

/// Marks this Redis' life: the first node to see it empty sets an epoch and the floor (the
/// Redis time then; no id before it can be resumed here). KEYS: epoch, floor. ARGV: a new epoch.
const EPOCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. '-0')
end
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// Writes a topic's state back unless Redis holds as new a version. KEYS: versions, states.
/// ARGV: topic, version, state.
const RESEED: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if v < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return v
";

/// Keys and channels.
struct Keys {
    stream: String,
    versions: String,
    states: String,
    epoch: String,
    floor: String,
    nodes: String,
    control: String,
}

impl Keys {
    fn new() -> Self {
        let k = |name: &str| format!("{PREFIX}:{name}");
        Keys {
            stream: k("events"),
            versions: k("versions"),
            states: k("states"),
            epoch: k("epoch"),
            floor: k("floor"),
            nodes: k("nodes"),
            control: k("control"),
        }
    }

    fn presence(node: &str) -> String {
        format!("{PREFIX}:presence:{node}")
    }

    fn node(node: &str) -> String {
        format!("{PREFIX}:node:{node}")
    }
}

/// A message between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// To every node: carry out `command` if `client` is connected to you.
    Request { req: Uuid, from: String, client: Uuid, command: Command },
    /// To the asking node: the client's subscriptions after the command, or `None`; or, from the
    /// node holding the client, the refusal of a subscription past its limit (absent otherwise,
    /// and in the replies of nodes that predate it).
    Reply {
        req: Uuid,
        topics: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<TooManyTopics>,
    },
}

impl Message {
    fn reply(req: Uuid, answer: Option<Answer>) -> Message {
        let (topics, refused) = match answer {
            None => (None, None),
            Some(Ok(topics)) => (Some(topics), None),
            Some(Err(refused)) => (None, Some(refused)),
        };
        Message::Reply { req, topics, refused }
    }
}

/// Answers awaited from other nodes, by request.
type Pending = HashMap<Uuid, mpsc::Sender<Option<Answer>>>;

/// Keeps history and order in a Redis Stream shared by several gateway nodes.
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    /// This node's id in presence and channels.
    node: String,
    max_len: usize,
    /// The connection for commands, while Redis is reachable.
    conn: Mutex<Option<MultiplexedConnection>>,
    ready: AtomicBool,
    /// The last stream entry delivered here.
    read: watch::Sender<EventId>,
    /// No id before this one can be resumed (Redis started empty after it was issued).
    floor: Mutex<EventId>,
    history_len: AtomicUsize,
    hub: OnceLock<Weak<dyn Dispatch>>,
    presence: mpsc::Sender<Presence>,
    presence_rx: Mutex<Option<mpsc::Receiver<Presence>>>,
    /// Set when this node's presence in Redis must be written again whole.
    presence_lost: AtomicBool,
    presence_now: Notify,
    pending: Mutex<Pending>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a Redis call with a time limit.
async fn within<T>(fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(unavailable("Redis did not answer in time")),
    }
}

/// A stream entry as an event; `None` if it is not one of ours.
fn decode(entry: &StreamId) -> Option<Arc<Event>> {
    let id: EventId = entry.id.parse().ok()?;
    let RedisValue::BulkString(bytes) = entry.map.get("e")? else { return None };
    let saved: SavedEvent = serde_json::from_slice(bytes).ok()?;
    Some(Arc::new(Event::new(id, saved.draft())))
}

/// A stored topic state.
fn topic_state(raw: &str) -> Option<SavedTopic> {
    serde_json::from_str(raw).ok()
}

/// `max-deleted-entry-id` from an `XINFO STREAM` reply: entries up to it were trimmed.
fn max_deleted(info: &RedisValue) -> EventId {
    let RedisValue::Array(items) = info else { return EventId::default() };
    let mut it = items.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let text = |v: &RedisValue| match v {
            RedisValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            RedisValue::SimpleString(s) => s.clone(),
            _ => String::new(),
        };
        if text(k) == "max-deleted-entry-id" {
            return text(v).parse().unwrap_or_default();
        }
    }
    EventId::default()
}

impl RedisBroker {
    /// A broker on the Redis at `url` (`redis://HOST:PORT`). Connects when attached to a hub, and
    /// keeps reconnecting while Redis cannot be reached.
    pub(crate) fn new(url: &str, config: &Config) -> Result<Self, BrokerError> {
        let client = Client::open(url).map_err(|e| BrokerError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
        let (presence, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                keys: Keys::new(),
                node: Uuid::new_v4().to_string(),
                max_len: config.history_size.max(1),
                conn: Mutex::new(None),
                ready: AtomicBool::new(false),
                read: watch::Sender::new(EventId::default()),
                floor: Mutex::new(EventId::default()),
                history_len: AtomicUsize::new(0),
                hub: OnceLock::new(),
                presence,
                presence_rx: Mutex::new(Some(presence_rx)),
                presence_lost: AtomicBool::new(true),
                presence_now: Notify::new(),
                pending: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn conn(&self) -> Result<MultiplexedConnection, BrokerError> {
        lock(&self.conn).clone().ok_or_else(|| unavailable("Redis is not reachable"))
    }

    fn hub(&self) -> Option<Arc<dyn Dispatch>> {
        self.hub.get().and_then(Weak::upgrade)
    }

    /// The id of the stream's last entry (zero for an empty stream).
    async fn last_id(&self, conn: &mut MultiplexedConnection) -> Result<EventId, BrokerError> {
        let last: StreamRangeReply = within(conn.xrevrange_count(&self.keys.stream, "+", "-", 1)).await?;
        Ok(last.ids.first().and_then(|e| e.id.parse().ok()).unwrap_or_default())
    }

    /// Waits until this node has delivered the stream up to `id` (bounded).
    async fn caught_up(&self, id: EventId) {
        let mut read = self.read.subscribe();
        let _ = tokio::time::timeout(TIMEOUT, read.wait_for(|r| *r >= id)).await;
    }

    async fn publish(&self, drafts: Vec<Draft>, hub: &dyn Dispatch) -> Result<Vec<Arc<Event>>, PublishError> {
        let script = Script::new(PUBLISH);
        let mut behind = false;
        for _ in 0..ATTEMPTS {
            let mut batch = drafts.clone();
            let prepared = match hub.prepare(&mut batch) {
                Ok(prepared) => prepared,
                // A change that does not apply to this node's copy (a JSON Patch to a path another
                // node just added) may apply to the newest state: follow the stream to its last
                // entry once, and prepare again.
                Err(_) if !behind => {
                    behind = true;
                    let last = self.last_id(&mut self.conn()?).await?;
                    self.caught_up(last).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut conn = self.conn()?;
            let mut call = script.prepare_invoke();
            call.key(&self.keys.stream).key(&self.keys.versions).key(&self.keys.states);
            call.arg(self.max_len).arg(prepared.len());
            for p in &prepared {
                let state = serde_json::to_string(&p.saved()).map_err(unavailable)?;
                call.arg(&*p.topic).arg(p.before).arg(p.after).arg(state);
            }
            for d in &batch {
                call.arg(serde_json::to_string(&SavedEvent::of(String::new(), d)).map_err(unavailable)?);
            }
            let reply: Vec<String> = within(call.invoke_async(&mut conn)).await?;
            if reply.first().map(String::as_str) == Some("conflict") {
                // Another node changed a topic first: follow the stream up to its change and
                // prepare again.
                let at = reply.get(3).and_then(|id| id.parse().ok()).unwrap_or_default();
                tracing::debug!(topic = reply.get(1).map(String::as_str), "state changed on another node: retrying");
                self.caught_up(at).await;
                continue;
            }
            if reply.len() != batch.len() {
                return Err(unavailable(format!("Redis gave {} ids for {} events", reply.len(), batch.len())).into());
            }
            return reply
                .iter()
                .zip(batch)
                .map(|(id, draft)| {
                    let id = id.parse().map_err(|_| unavailable(format!("Redis gave a bad id {id:?}")))?;
                    Ok(Arc::new(Event::new(id, draft)))
                })
                .collect();
        }
        Err(unavailable("the topics' state kept changing on other nodes; retry").into())
    }

    async fn replay(&self, after: &str, upto: EventId, limit: usize) -> Result<Replay, BrokerError> {
        let Ok(after) = after.parse::<EventId>() else { return Ok(Replay::Unknown) };
        if after > upto {
            return Ok(Replay::Unknown);
        }
        if after < *lock(&self.floor) {
            return Ok(Replay::Expired);
        }
        let mut conn = self.conn()?;
        let range: StreamRangeReply =
            within(conn.xrange_count(&self.keys.stream, format!("({after}"), upto.to_string(), limit)).await?;
        // Read after the range: if nothing after `after` had been trimmed by then, the range is
        // whole.
        let trimmed = match self.trimmed(&mut conn).await {
            Ok(t) => t,
            // No stream yet.
            Err(_) if range.ids.is_empty() => EventId::default(),
            Err(e) => return Err(e),
        };
        if after < trimmed {
            return Ok(Replay::Expired);
        }
        Ok(Replay::Missed(range.ids.iter().filter_map(decode).collect()))
    }

    /// The last entry trimmed from the stream (`XINFO STREAM`'s `max-deleted-entry-id`).
    async fn trimmed(&self, conn: &mut MultiplexedConnection) -> Result<EventId, BrokerError> {
        let info: RedisValue =
            within(redis::cmd("XINFO").arg("STREAM").arg(&self.keys.stream).query_async(conn)).await?;
        Ok(max_deleted(&info))
    }

    /// Moves this node to the end of the stream (or the floor, for an empty one, which clients
    /// can resume from) with the stored states, which hold every change before it.
    async fn start_at_tail(
        &self,
        conn: &mut MultiplexedConnection,
        hub: &dyn Dispatch,
        position: &mut Option<EventId>,
    ) -> Result<EventId, BrokerError> {
        let last = self.last_id(conn).await?;
        let tail = last.max(*lock(&self.floor)).max(position.unwrap_or_default());
        let states: HashMap<String, String> = within(conn.hgetall(&self.keys.states)).await?;
        hub.restore(states.values().filter_map(|raw| topic_state(raw)).collect());
        hub.deliver(Vec::new(), tail);
        self.read.send_replace(tail);
        *position = Some(tail);
        Ok(tail)
    }

    /// Keeps a session with Redis going, reconnecting with backoff, until `stop`.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut position: Option<EventId> = None;
        let mut epoch: Option<String> = None;
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let session = self.session(&mut position, &mut epoch, &mut backoff);
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = session => r,
            };
            self.ready.store(false, Ordering::Relaxed);
            *lock(&self.conn) = None;
            if let Err(e) = result {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "Redis unreachable: not ready; reconnecting with backoff");
                } else {
                    tracing::debug!(error = %e, attempt = failures, "Redis still unreachable");
                }
            }
            if self.ready.load(Ordering::Relaxed) {
                failures = 0;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(
        &self,
        position: &mut Option<EventId>,
        epoch: &mut Option<String>,
        backoff: &mut Duration,
    ) -> Result<(), BrokerError> {
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
        let mut conn = within(self.client.get_multiplexed_async_connection_with_config(&config)).await?;
        let reading = config.set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64) + TIMEOUT));
        let mut reader = within(self.client.get_multiplexed_async_connection_with_config(&reading)).await?;
        let mut pubsub = within(self.client.get_async_pubsub()).await?;
        within(pubsub.subscribe(&self.keys.control)).await?;
        within(pubsub.subscribe(Keys::node(&self.node))).await?;

        let (now, floor): (String, String) = within(
            Script::new(EPOCH)
                .key(&self.keys.epoch)
                .key(&self.keys.floor)
                .arg(Uuid::new_v4().to_string())
                .invoke_async(&mut conn),
        )
        .await?;
        *lock(&self.floor) = floor.parse().unwrap_or_default();
        let lost = epoch.as_ref().is_some_and(|e| *e != now);
        *epoch = Some(now);
        let Some(hub) = self.hub() else { return Ok(()) };
        match *position {
            None => {
                let tail = self.start_at_tail(&mut conn, &*hub, position).await?;
                tracing::info!(from = %tail, "following the Redis stream");
            }
            Some(at) if lost => {
                tracing::warn!(at = %at, "Redis lost its data: writing the retained state back; clients resuming from before get a reset");
                let script = Script::new(RESEED);
                for t in hub.retained() {
                    let state = serde_json::to_string(&t).map_err(unavailable)?;
                    let mut call = script.prepare_invoke();
                    call.key(&self.keys.versions).key(&self.keys.states).arg(&t.topic).arg(t.version).arg(state);
                    let _: i64 = within(call.invoke_async(&mut conn)).await?;
                }
            }
            Some(at) => {
                if self.trimmed(&mut conn).await.unwrap_or_default() > at {
                    // Entries this node had not read were trimmed meanwhile: have its clients
                    // resume (those that cannot get a reset).
                    tracing::warn!(at = %at, "the stream moved past this node while it was away: clients resume");
                    self.start_at_tail(&mut conn, &*hub, position).await?;
                    hub.resume_all();
                } else {
                    tracing::info!(from = %at, "Redis reachable again: reading on");
                }
            }
        }
        drop(hub);
        *lock(&self.conn) = Some(conn.clone());
        self.ready.store(true, Ordering::Relaxed);
        *backoff = BACKOFF_MIN;
        self.presence_lost.store(true, Ordering::Relaxed);
        self.presence_now.notify_one();

        let control = self.control(pubsub.into_on_message(), conn.clone());
        let read = self.read(&mut reader, conn, position);
        tokio::select! {
            r = control => r,
            r = read => r,
        }
    }

    /// Reads the stream from `position` and delivers what it finds.
    async fn read(
        &self,
        reader: &mut MultiplexedConnection,
        mut conn: MultiplexedConnection,
        position: &mut Option<EventId>,
    ) -> Result<(), BrokerError> {
        let options = StreamReadOptions::default().block(BLOCK_MS).count(READ_COUNT);
        loop {
            let from = position.unwrap_or_default();
            let reply: Option<StreamReadReply> =
                reader.xread_options(&[&self.keys.stream], &[from.to_string()], &options).await.map_err(unavailable)?;
            let Some(hub) = self.hub() else { return Ok(()) };
            let mut events = Vec::new();
            let mut last = from;
            for entry in reply.iter().flat_map(|r| &r.keys).flat_map(|k| &k.ids) {
                match decode(entry) {
                    Some(ev) => {
                        last = last.max(ev.id);
                        events.push(ev);
                    }
                    None => {
                        tracing::warn!(id = %entry.id, "skipping a stream entry that is not a gateway event");
                        last = last.max(entry.id.parse().unwrap_or(last));
                    }
                }
            }
            if last == from {
                continue;
            }
            let gaps = hub.deliver(events, last);
            *position = Some(last);
            self.read.send_replace(last);
            if !gaps.is_empty() {
                // Changes before these are missing here: take the stored states.
                let fields: Vec<&str> = gaps.iter().map(|t| &**t).collect();
                let raw: Vec<Option<String>> =
                    within(redis::cmd("HMGET").arg(&self.keys.states).arg(fields).query_async(&mut conn)).await?;
                hub.restore(raw.iter().flatten().filter_map(|r| topic_state(r)).collect());
            }
        }
    }

    /// Answers commands from other nodes and collects their answers to ours.
    async fn control(
        &self,
        mut messages: redis::aio::PubSubStream,
        mut conn: MultiplexedConnection,
    ) -> Result<(), BrokerError> {
        while let Some(msg) = messages.next().await {
            let Ok(message) = serde_json::from_slice::<Message>(msg.get_payload_bytes()) else { continue };
            match message {
                Message::Request { req, from, client, command } => {
                    let Some(hub) = self.hub() else { return Ok(()) };
                    let answer = if from == self.node { None } else { hub.command(client, &command) };
                    let reply = serde_json::to_string(&Message::reply(req, answer)).map_err(unavailable)?;
                    let _: i64 = within(conn.publish(Keys::node(&from), reply)).await?;
                }
                Message::Reply { req, topics, refused } => {
                    let waiting = lock(&self.pending).get(&req).cloned();
                    if let Some(tx) = waiting {
                        let answer = match refused {
                            Some(refused) => Some(Err(refused)),
                            None => topics.map(Ok),
                        };
                        let _ = tx.try_send(answer);
                    }
                }
            }
        }
        Err(unavailable("the Redis pub/sub connection closed"))
    }

    /// Writes this node's presence as its clients come and go, refreshes its expiry, and removes
    /// it when the node stops.
    async fn presence(self: Arc<Self>, mut changes: mpsc::Receiver<Presence>, stop: CancellationToken) {
        let key = Keys::presence(&self.node);
        let mut tick = tokio::time::interval(PRESENCE_EVERY);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Ok(mut conn) = self.conn() {
                        let mut pipe = redis::pipe();
                        pipe.del(&key).ignore().srem(&self.keys.nodes, &self.node).ignore();
                        let _: Result<(), _> = within(pipe.query_async(&mut conn)).await;
                    }
                    return;
                }
                Some(change) = changes.recv() => {
                    batch.push(change);
                    while batch.len() < 1_000 {
                        match changes.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {}
                _ = self.presence_now.notified() => {}
            }
            let Ok(mut conn) = self.conn() else {
                self.presence_lost.store(true, Ordering::Relaxed);
                continue;
            };
            let mut pipe = redis::pipe();
            if self.presence_lost.swap(false, Ordering::Relaxed) {
                // Written whole: the changes in hand are part of it.
                pipe.del(&key).ignore();
                let clients = self.hub().map(|h| h.local_clients()).unwrap_or_default();
                batch = clients.into_iter().map(Presence::Here).collect();
            }
            for change in &batch {
                match change {
                    Presence::Here(c) => {
                        pipe.hset(&key, c.client_id.to_string(), serde_json::to_string(c).unwrap_or_default())
                    }
                    Presence::Gone(id) => pipe.hdel(&key, id.to_string()),
                }
                .ignore();
            }
            pipe.expire(&key, PRESENCE_TTL_S).ignore().sadd(&self.keys.nodes, &self.node).ignore();
            pipe.xlen(&self.keys.stream);
            match within(pipe.query_async::<(usize,)>(&mut conn)).await {
                Ok((len,)) => self.history_len.store(len, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(error = %e, "presence not written");
                    self.presence_lost.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    async fn clients(&self) -> Result<Vec<ClientInfo>, BrokerError> {
        let mut conn = self.conn()?;
        let nodes: Vec<String> = within(conn.smembers(&self.keys.nodes)).await?;
        let others: Vec<&String> = nodes.iter().filter(|n| **n != self.node).collect();
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.hvals(Keys::presence(node));
        }
        let found: Vec<Vec<String>> =
            if others.is_empty() { Vec::new() } else { within(pipe.query_async(&mut conn)).await? };
        // Nodes whose presence expired are gone.
        let gone: Vec<&String> = others.iter().zip(&found).filter(|(_, c)| c.is_empty()).map(|(n, _)| *n).collect();
        if !gone.is_empty() {
            let _: Result<i64, _> = within(conn.srem(&self.keys.nodes, gone)).await;
        }
        let mut list = self.hub().map(|h| h.local_clients()).unwrap_or_default();
        list.extend(found.iter().flatten().filter_map(|raw| serde_json::from_str::<ClientInfo>(raw).ok()));
        Ok(list)
    }

    async fn command(&self, client: Uuid, command: Command) -> Result<Option<Answer>, BrokerError> {
        let mut conn = self.conn()?;
        let req = Uuid::new_v4();
        let (tx, mut rx) = mpsc::channel(64);
        lock(&self.pending).insert(req, tx);
        let message = serde_json::to_string(&Message::Request { req, from: self.node.clone(), client, command })
            .map_err(unavailable)?;
        let asked = async {
            let nodes: usize = within(conn.publish(&self.keys.control, message)).await?;
            // Every node answers, the one holding the client with its subscriptions.
            for _ in 0..nodes {
                match rx.recv().await {
                    Some(Some(answer)) => return Ok(Some(answer)),
                    Some(None) => {}
                    None => break,
                }
            }
            Ok(None)
        };
        let result = match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(r) => r,
            Err(_) => Err(unavailable("no node answered in time")),
        };
        lock(&self.pending).remove(&req);
        result
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(
        &'a self,
        drafts: Vec<Draft>,
        sink: &'a dyn Dispatch,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, PublishError>> {
        self.inner.publish(drafts, sink).boxed()
    }

    fn replay<'a>(&'a self, after: &'a str, upto: EventId, limit: usize) -> BoxFuture<'a, Result<Replay, BrokerError>> {
        self.inner.replay(after, upto, limit).boxed()
    }

    fn head(&self) -> EventId {
        *self.inner.read.borrow()
    }

    fn history_len(&self) -> usize {
        self.inner.history_len.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    fn attach(&self, hub: Weak<dyn Dispatch>, stop: CancellationToken) {
        if self.inner.hub.set(hub).is_err() {
            return;
        }
        tokio::spawn(self.inner.clone().run(stop.clone()));
        if let Some(changes) = lock(&self.inner.presence_rx).take() {
            tokio::spawn(self.inner.clone().presence(changes, stop));
        }
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }
}

impl Cluster for RedisBroker {
    fn presence(&self, change: Presence) {
        if self.inner.presence.try_send(change).is_err() {
            self.inner.presence_lost.store(true, Ordering::Relaxed);
        }
    }

    fn clients(&self) -> BoxFuture<'_, Result<Vec<ClientInfo>, BrokerError>> {
        self.inner.clients().boxed()
    }

    fn command(&self, client: Uuid, command: Command) -> BoxFuture<'_, Result<Option<Answer>, BrokerError>> {
        self.inner.command(client, command).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trimmed_position_from_xinfo() {
        let bulk = |s: &str| RedisValue::BulkString(s.as_bytes().to_vec());
        let info = RedisValue::Array(vec![
            bulk("length"),
            RedisValue::Int(3),
            bulk("max-deleted-entry-id"),
            bulk("1700000000000-4"),
        ]);
        assert_eq!(max_deleted(&info), EventId { ms: 1_700_000_000_000, seq: 4 });
        assert_eq!(max_deleted(&RedisValue::Nil), EventId::default());
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let m = Message::Request {
            req: Uuid::nil(),
            from: "n".into(),
            client: Uuid::nil(),
            command: Command::Subscribe(vec!["a/*".into()]),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(matches!(
            serde_json::from_str::<Message>(&text).unwrap(),
            Message::Request { command: Command::Subscribe(t), .. } if t == ["a/*"]
        ));
        // A refusal travels back whole; a reply without one (an older node's) reads as before.
        let refused =
            serde_json::to_string(&Message::reply(Uuid::nil(), Some(Err(TooManyTopics { limit: 8 })))).unwrap();
        assert!(matches!(
            serde_json::from_str::<Message>(&refused).unwrap(),
            Message::Reply { topics: None, refused: Some(TooManyTopics { limit: 8 }), .. }
        ));
        let old = r#"{"type":"reply","req":"00000000-0000-0000-0000-000000000000","topics":["a"]}"#;
        assert!(matches!(
            serde_json::from_str::<Message>(old).unwrap(),
            Message::Reply { topics: Some(t), refused: None, .. } if t == ["a"]
        ));
    }
}
