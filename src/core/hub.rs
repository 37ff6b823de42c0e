//! The hub owns the fan-out fabric: the registry of connected clients, the index from topics and
//! patterns to subscribers, and the broker that orders events and keeps history. Publishing hands
//! drafts to the broker, which dispatches them back here in order; dispatch pushes one shared
//! `Arc<Event>` into each receiving client's bounded queue without waiting on any client.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use indexmap::IndexSet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
pub(crate) use crate::core::broker::PublishError;
use crate::core::broker::{Answer, Broker, BrokerError, Command, Dispatch, Presence, Replay};
pub(crate) use crate::core::client::ClientInfo;
use crate::core::client::{Client, CloseReason, Outbound, Resume, Transport};
use crate::core::event::{now_ms, Audience, Checked, Draft, Event, EventId};
use crate::core::metrics::{Metrics, TransportLabel};
use crate::core::persist::{Saved, SavedTopic};
use crate::core::retained::{Follow, Prepared, Snapshot, Store};
use crate::core::rpc::RpcHandler;
use crate::core::subscribers::{Snapshot as Receivers, Subscribers};
use crate::core::topic::Pattern;
use crate::core::trie::PatternTrie;

/// The hub could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The broker URL names something this build cannot use.
    #[error("unsupported broker {0:?}: use \"memory\" or \"redis://HOST:PORT\"")]
    UnsupportedBroker(String),
    /// A setting cannot be used.
    #[error("{0}")]
    Config(String),
}

/// A client id that is not connected.
#[derive(Debug, thiserror::Error)]
#[error("unknown client")]
pub struct UnknownClient;

/// A subscription that would give one client more topics and patterns than
/// `--max-topics-per-client` allows; it is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("a client may subscribe to at most {limit} topics and patterns")]
pub struct TooManyTopics {
    /// The configured limit.
    pub limit: u64,
}

/// Why a subscription was not made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No client with that id is connected here.
    #[error(transparent)]
    Unknown(#[from] UnknownClient),
    /// The client would have too many subscriptions; it keeps those it had.
    #[error(transparent)]
    TooManyTopics(#[from] TooManyTopics),
}

/// Why a command on a client (anywhere in the cluster) was not carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// No node has a client with that id.
    #[error(transparent)]
    Unknown(#[from] UnknownClient),
    /// The node holding the client refused a subscription that would take it past its limit.
    #[error(transparent)]
    TooManyTopics(#[from] TooManyTopics),
    /// The shared broker could not be asked.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One line of `GET /topics`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    /// A topic or pattern that clients subscribe to.
    pub topic: String,
    /// How many clients subscribe to it.
    pub subscribers: usize,
    /// Version of the topic's retained state, if it has one.
    pub version: Option<u64>,
}

/// Events a resume reads from history at a time: a client far behind is sent its missed events
/// a page at a time, each read when the last one is written, never all at once.
pub(crate) const RESUME_PAGE: usize = 256;

/// Unfinished WebSocket messages may hold this many times `--max-body-bytes` across the gateway.
pub(crate) const UNFINISHED_BUDGET_FACTOR: usize = 16;

/// What a client that resumes after an id gets before live events.
#[derive(Debug)]
pub(crate) struct Start {
    /// The first page of the events it missed, already filtered to what it receives, oldest
    /// first.
    pub missed: Vec<Arc<Event>>,
    /// Where the rest of the missed events continue, if the first page did not hold them all:
    /// queue it as [`Outbound::Resume`] right behind the first page.
    pub more: Option<Resume>,
    /// Set when it must reload state: the reason sent in the `reset` event. Not set when every
    /// subscription is a retained topic, whose snapshot is the reload.
    pub reset: Option<&'static str>,
    /// Its position could not be resumed: send it the snapshots of its retained topics.
    pub reload: bool,
}

/// A subscription made on a connected client.
#[derive(Debug)]
pub struct Subscribed {
    /// All of the client's subscriptions now.
    pub topics: Vec<String>,
    /// Events after this id reach the client live; earlier ones only through a replay.
    pub head: EventId,
    /// The state, as of `head`, of the retained topics the new subscriptions match.
    pub snapshots: Vec<Arc<Snapshot>>,
}

/// A cheap-to-clone handle on the gateway's fan-out fabric.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("broker", &self.shared.broker.name()).finish_non_exhaustive()
    }
}

struct Shared {
    config: Config,
    broker: Box<dyn Broker>,
    state: Mutex<State>,
    metrics: Metrics,
    /// Cancelled once, when the gateway shuts down.
    shutdown: CancellationToken,
    /// Answers WebSocket `rpc` requests, if the backend set one up.
    rpc: RwLock<Option<Arc<dyn RpcHandler>>>,
    /// The last event delivered from a shared broker, for clients that resume from a position
    /// another node has reached and this one not yet.
    delivered: tokio::sync::watch::Sender<EventId>,
    /// Runs of events for the fan-out writer, queued under the state lock in dispatch order.
    fanout: crate::core::fanout::Writer,
    /// The last event the fan-out writer has handed to every receiver.
    fanned: tokio::sync::watch::Sender<EventId>,
    /// Bytes of unfinished WebSocket messages held across all connections.
    unfinished: Arc<std::sync::atomic::AtomicUsize>,
    /// Told whenever a connection lets go of its client's id ([`Hub::released`]).
    released: tokio::sync::Notify,
}

struct Entry {
    client: Arc<Client>,
    /// In subscription order, as `GET /clients` lists them.
    subs: IndexSet<Pattern>,
}

impl Entry {
    fn info(&self) -> ClientInfo {
        info(&self.client, &self.subs)
    }
}

/// A client's line in `GET /clients`.
fn info<'a>(client: &Client, subs: impl IntoIterator<Item = &'a Pattern>) -> ClientInfo {
    ClientInfo {
        client_id: client.id(),
        transport: client.transport(),
        topics: subs.into_iter().map(ToString::to_string).collect(),
        connected_at: client.connected_at_ms(),
    }
}

struct State {
    clients: HashMap<Uuid, Entry>,
    /// Every client again, as a set the fan-out and the heartbeat can take a snapshot of.
    everyone: Subscribers,
    /// Subscribers of each exact topic.
    exact: HashMap<Arc<str>, Subscribers>,
    /// Subscribers of each wildcard pattern, found by the topic's segments: matching costs the
    /// same however many distinct patterns clients hold.
    patterns: PatternTrie<Subscribers>,
    /// Dispatch round counter, for delivering an event once to a client with overlapping
    /// subscriptions.
    round: u64,
    /// Raised by every change of who subscribes to what: runs collected at the same generation
    /// for the same topic have the same receivers.
    generation: u64,
    /// The last event dispatched. Read under the same lock as a registration, it splits what a
    /// new subscriber gets from history (up to it) from what it gets live (after it).
    head: EventId,
    /// Retained topic state, changed in the same step as the fan-out of the change.
    retained: Store,
}

impl State {
    /// Calls `f` for each subscription to `topic`, exact or by pattern (a client subscribed both
    /// ways comes twice: dispatch rounds tell).
    fn subscribers(&self, topic: &str) -> Receivers {
        let mut all = Receivers::default();
        if let Some(set) = self.exact.get(topic) {
            all.extend(set);
        }
        self.patterns.matching(topic, |set| all.extend(set));
        all
    }

    fn index(&mut self, pattern: &Pattern, id: Uuid, client: Arc<Client>) {
        let set = match pattern {
            Pattern::Exact(t) => Some(self.exact.entry(t.clone()).or_default()),
            p => self.patterns.entry(p),
        };
        if let Some(set) = set {
            set.insert(id, client);
        }
    }

    fn unindex(&mut self, pattern: &Pattern, id: &Uuid) {
        match pattern {
            Pattern::Exact(t) => {
                if let Some(set) = self.exact.get_mut(&**t) {
                    set.remove(id);
                    if set.is_empty() {
                        self.exact.remove(&**t);
                    }
                }
            }
            p => {
                if let Some(set) = self.patterns.get_mut(p) {
                    set.remove(id);
                    if set.is_empty() {
                        self.patterns.remove(p);
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: &Uuid) -> Option<Entry> {
        let entry = self.clients.remove(id)?;
        self.everyone.remove(id);
        self.generation += 1;
        for p in &entry.subs {
            self.unindex(p, id);
        }
        Some(entry)
    }

    /// Adds the patterns a client does not have yet, all or none: refused if the client would
    /// then have more than `limit`. Costs one step per pattern, whatever the client holds.
    fn subscribe(&mut self, id: &Uuid, patterns: &[Pattern], limit: u64) -> Result<Vec<String>, SubscribeError> {
        let entry = self.clients.get_mut(id).ok_or(UnknownClient)?;
        let client = entry.client.clone();
        let added: IndexSet<&Pattern> = patterns.iter().filter(|p| !entry.subs.contains(*p)).collect();
        if (entry.subs.len() + added.len()) as u64 > limit {
            return Err(TooManyTopics { limit }.into());
        }
        entry.subs.extend(added.iter().map(|p| (*p).clone()));
        let topics = entry.subs.iter().map(ToString::to_string).collect();
        for p in added {
            self.index(p, *id, client.clone());
        }
        self.generation += 1;
        Ok(topics)
    }
}

/// One page of a resume.
pub(crate) enum Page {
    /// The events the client receives in this page (maybe none), and the position the next page
    /// starts after, if there is more.
    Missed(Vec<Arc<Event>>, Option<EventId>),
    /// The position is not in history (any more): the reason for the `reset`.
    Lost(&'static str),
}

/// Whether every subscription is a retained topic, whose snapshot is a reload.
fn patterns_all_retained<'a>(st: &State, patterns: impl IntoIterator<Item = &'a Pattern>) -> bool {
    let mut any = false;
    for p in patterns {
        any = true;
        if !matches!(p, Pattern::Exact(t) if st.retained.contains(t)) {
            return false;
        }
    }
    any
}

/// Whether a client with these subscriptions receives the event.
fn receives(id: &Uuid, subs: &IndexSet<Pattern>, ev: &Event) -> bool {
    match &ev.draft.audience {
        Audience::Topic => ev.topic().is_some_and(|t| subs.iter().any(|p| p.matches(t))),
        Audience::Clients(ids) => ids.contains(id),
        Audience::All => true,
    }
}

impl Dispatch for Shared {
    fn publish(
        &self,
        requests: Vec<Vec<Draft>>,
        store: &mut dyn FnMut(Vec<Draft>) -> Vec<Arc<Event>>,
    ) -> Vec<Result<Vec<Arc<Event>>, PublishError>> {
        let mut st = lock(&self.state);
        let mut all = Vec::new();
        let results: Vec<Result<Vec<Arc<Event>>, PublishError>> = requests
            .into_iter()
            .map(|mut drafts| {
                st.retained.apply(&mut drafts)?;
                let events = store(drafts);
                all.extend(events.iter().cloned());
                Ok(events)
            })
            .collect();
        st.fan_out(&all, &self.fanout, true);
        drop(st);
        results
    }

    fn prepare(&self, drafts: &mut [Draft]) -> Result<Vec<Prepared>, PublishError> {
        lock(&self.state).retained.prepare(drafts)
    }

    fn deliver(&self, events: Vec<Arc<Event>>, head: EventId) -> Vec<Arc<str>> {
        let mut gaps: Vec<Arc<str>> = Vec::new();
        let mut st = lock(&self.state);
        let mut send = Vec::with_capacity(events.len());
        for ev in events {
            match st.retained.follow(&ev.draft) {
                Follow::Applied => send.push(ev),
                Follow::Stale => {}
                Follow::Gap => {
                    let topic = ev.draft.topic.clone().unwrap_or_else(|| Arc::from(""));
                    if !gaps.contains(&topic) {
                        gaps.push(topic);
                    }
                }
            }
        }
        st.head = st.head.max(head);
        st.fan_out(&send, &self.fanout, false);
        drop(st);
        self.delivered.send_if_modified(|d| std::mem::replace(d, head) != head);
        gaps
    }

    fn restore(&self, topics: Vec<SavedTopic>) {
        let mut resync: Vec<(Arc<Client>, Arc<str>)> = Vec::new();
        let mut st = lock(&self.state);
        for saved in topics {
            let topic: Arc<str> = Arc::from(saved.topic.as_str());
            if !st.retained.restore(saved) {
                continue;
            }
            // Its subscribers get the new state in place of the changes they missed.
            resync.extend(st.subscribers(&topic).iter().map(|c| (c.clone(), topic.clone())));
        }
        drop(st);
        for (c, topic) in resync {
            let _ = c.push(Outbound::Resync(topic));
        }
    }

    fn retained(&self) -> Vec<SavedTopic> {
        lock(&self.state).retained.dump()
    }

    fn resume_all(&self) {
        self.close_all(CloseReason::Overflow);
    }

    fn command(&self, client: Uuid, command: &Command) -> Option<Answer> {
        let patterns =
            |topics: &[String]| -> Vec<Pattern> { topics.iter().filter_map(|t| Pattern::parse(t).ok()).collect() };
        match command {
            Command::Subscribe(topics) => match self.subscribe(&client, &patterns(topics)) {
                Ok(s) => Some(Ok(s.topics)),
                Err(SubscribeError::TooManyTopics(e)) => Some(Err(e)),
                Err(SubscribeError::Unknown(_)) => None,
            },
            Command::Unsubscribe(topics) => self.unsubscribe(&client, &patterns(topics)).ok().map(Ok),
            Command::Disconnect => self.disconnect(&client).ok().map(|()| Ok(Vec::new())),
        }
    }

    fn local_clients(&self) -> Vec<ClientInfo> {
        lock(&self.state).clients.values().map(Entry::info).collect()
    }
}

impl Shared {
    /// Closes every client connected here.
    fn close_all(&self, reason: CloseReason) {
        let clients = lock(&self.state).everyone.snapshot();
        for c in clients.iter() {
            c.close(reason);
        }
    }

    /// Called by the fan-out writer after each group of batches: closed clients leave the
    /// index, the counters move, and waiters learn how far delivery has come.
    fn fanned(&self, done: crate::core::fanout::Outcome, head: EventId) {
        self.metrics.delivered.inc_by(done.delivered);
        self.metrics.overflows.inc_by(done.overflowed.len() as u64);
        self.metrics.conflations.inc_by(done.conflated);
        if !done.overflowed.is_empty() {
            let mut st = lock(&self.state);
            for c in &done.overflowed {
                // The id may have been taken since by a new client.
                if st.clients.get(&c.id()).is_some_and(|e| Arc::ptr_eq(&e.client, c)) {
                    st.remove(&c.id());
                }
            }
            drop(st);
            for c in &done.overflowed {
                tracing::warn!(client_id = %c.id(), transport = c.transport().name(), "client queue full: closed, it may resume from history");
            }
        }
        self.fanned.send_if_modified(|h| {
            let newer = head > *h;
            *h = (*h).max(head);
            newer
        });
    }

    /// Tells the cluster, if there is one, about a client's change.
    fn presence(&self, change: impl FnOnce() -> Presence) {
        if let Some(cluster) = self.broker.cluster() {
            cluster.presence(change());
        }
    }

    fn subscribe(&self, id: &Uuid, patterns: &[Pattern]) -> Result<Subscribed, SubscribeError> {
        let mut st = lock(&self.state);
        let topics = st.subscribe(id, patterns, self.config.max_topics_per_client)?;
        let snapshots = st.retained.matching(patterns);
        let head = st.head;
        let info = st.clients.get(id).map(Entry::info);
        drop(st);
        if let Some(info) = info {
            self.presence(|| Presence::Here(info));
        }
        Ok(Subscribed { topics, head, snapshots })
    }

    fn unsubscribe(&self, id: &Uuid, patterns: &[Pattern]) -> Result<Vec<String>, UnknownClient> {
        let mut st = lock(&self.state);
        let entry = st.clients.get_mut(id).ok_or(UnknownClient)?;
        let asked: HashSet<&Pattern> = patterns.iter().collect();
        let mut gone: Vec<Pattern> = Vec::new();
        // One pass that keeps the order of the rest.
        entry.subs.retain(|p| {
            let asked = asked.contains(p);
            if asked {
                gone.push(p.clone());
            }
            !asked
        });
        let topics = entry.subs.iter().map(ToString::to_string).collect();
        let info = entry.info();
        for p in &gone {
            st.unindex(p, id);
        }
        st.generation += 1;
        drop(st);
        self.presence(|| Presence::Here(info));
        Ok(topics)
    }

    fn disconnect(&self, id: &Uuid) -> Result<(), UnknownClient> {
        let entry = lock(&self.state).remove(id).ok_or(UnknownClient)?;
        entry.client.close(CloseReason::Kicked);
        self.presence(|| Presence::Gone(*id));
        Ok(())
    }
}

impl State {
    /// Decides who receives each event and queues the runs for the fan-out writer, which writes
    /// them outside this lock (`inline`: a small batch may be left for the publishing request,
    /// which then calls [`crate::core::fanout::Writer::help`]). Moves the head: a client
    /// registering from now on receives only what comes after these events live.
    fn fan_out(&mut self, events: &[Arc<Event>], writer: &crate::core::fanout::Writer, inline: bool) {
        let mut runs = Vec::new();
        let mut rest = events;
        while let Some(ev) = rest.first() {
            // A run of plain events on one topic has the same receivers: each gets the run at
            // once (one write to an idle connection).
            let plain_topic = match (&ev.draft.audience, ev.topic()) {
                (Audience::Topic, Some(topic)) if ev.draft.version.is_none() => Some(topic),
                _ => None,
            };
            let run = match plain_topic {
                Some(topic) => rest
                    .iter()
                    .take_while(|e| {
                        e.draft.audience == Audience::Topic && e.topic() == Some(topic) && e.draft.version.is_none()
                    })
                    .count()
                    .max(1),
                None => 1,
            };
            let (events, after) = rest.split_at(run);
            rest = after;
            self.round += 1;
            self.head = self.head.max(events[events.len() - 1].id);
            let receivers = match &ev.draft.audience {
                Audience::Topic => ev.topic().map(|topic| self.subscribers(topic)).unwrap_or_default(),
                Audience::Clients(ids) => {
                    Receivers::of(ids.iter().filter_map(|id| self.clients.get(id)).map(|e| e.client.clone()).collect())
                }
                Audience::All => self.everyone.snapshot(),
            };
            if receivers.is_empty() {
                continue;
            }
            runs.push(crate::core::fanout::Run {
                events: events.to_vec(),
                receivers,
                round: self.round,
                key: plain_topic.and(ev.draft.topic.clone()).map(|t| (t, self.generation)),
            });
        }
        writer.submit(crate::core::fanout::Batch { runs, head: self.head }, inline);
    }
}

/// Writes what a publishing request left for itself, when it ends however it ends.
struct Help<'a>(&'a crate::core::fanout::Writer);

impl Drop for Help<'_> {
    fn drop(&mut self) {
        self.0.help();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered client; dropping it unregisters the client.
#[derive(Debug)]
pub(crate) struct Connection {
    hub: Hub,
    client: Arc<Client>,
    head: EventId,
    snapshots: Vec<Arc<Snapshot>>,
}

impl Connection {
    /// The client: its id and its queue.
    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The hub it is registered with.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Where the client's live events start: every event after this id reaches it.
    pub(crate) fn head(&self) -> EventId {
        self.head
    }

    /// The state, as of [`Self::head`], of the retained topics the client subscribes to: what it
    /// gets first unless it resumes.
    pub(crate) fn snapshots(&self) -> &[Arc<Snapshot>] {
        &self.snapshots
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hub.release(&self.client);
    }
}

impl Hub {
    /// A hub over a given broker (`Hub::new` picks the one `config.broker` names).
    pub(crate) fn with_broker(config: Config, broker: Box<dyn Broker>) -> Hub {
        let head = broker.head();
        let max_state_bytes = config.max_state_bytes;
        let gate = broker.durability();
        let shared = Arc::new_cyclic(|me: &Weak<Shared>| {
            let me = me.clone();
            let fanout = crate::core::fanout::Writer::spawn(gate, move |done, head| {
                if let Some(shared) = me.upgrade() {
                    shared.fanned(done, head);
                }
            })
            .expect("the fan-out thread could not be started");
            Shared {
                config,
                broker,
                state: Mutex::new(State {
                    clients: HashMap::new(),
                    everyone: Subscribers::default(),
                    exact: HashMap::new(),
                    patterns: PatternTrie::default(),
                    round: 0,
                    generation: 0,
                    head,
                    retained: Store::new(max_state_bytes),
                }),
                metrics: Metrics::default(),
                shutdown: CancellationToken::new(),
                rpc: RwLock::new(None),
                delivered: tokio::sync::watch::Sender::new(head),
                fanout,
                fanned: tokio::sync::watch::Sender::new(head),
                unfinished: Arc::default(),
                released: tokio::sync::Notify::new(),
            }
        });
        let hub = Hub { shared };
        tokio::spawn(heartbeats(Arc::downgrade(&hub.shared), hub.shared.shutdown.clone()));
        let weak: Weak<Shared> = Arc::downgrade(&hub.shared);
        hub.shared.broker.attach(weak, hub.shared.shutdown.clone());
        hub
    }

    /// Loads retained states kept from an earlier run (a hub just built, before clients come).
    pub(crate) fn load_retained(&self, saved: Vec<SavedTopic>) {
        lock(&self.shared.state).retained.load(saved);
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The gateway's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The broker.
    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.shared.broker
    }

    /// The current retained state of every topic `patterns` match.
    pub(crate) fn snapshots(&self, patterns: &[Pattern]) -> Vec<Arc<Snapshot>> {
        lock(&self.shared.state).retained.matching(patterns)
    }

    /// The current retained state of `topic` and the event position it is current at.
    pub(crate) fn snapshot_at(&self, topic: &str) -> Option<(Arc<Snapshot>, EventId)> {
        let mut st = lock(&self.shared.state);
        let head = st.head;
        st.retained.snapshot(topic).map(|s| (s, head))
    }

    /// The current retained state of `topic`, if it has one.
    pub fn snapshot(&self, topic: &str) -> Option<Arc<Snapshot>> {
        lock(&self.shared.state).retained.snapshot(topic)
    }

    /// What a subscriber of `topic` that missed some of its changes gets instead: its current
    /// snapshot or, once deleted, `state: null` at the version that deleted it.
    pub(crate) fn latest_snapshot(&self, topic: &str) -> Option<Arc<Snapshot>> {
        lock(&self.shared.state).retained.latest(topic)
    }

    /// Answers clients' `rpc` requests with `handler` from now on.
    pub fn set_rpc_handler(&self, handler: impl RpcHandler) {
        *self.shared.rpc.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(handler));
    }

    /// The handler of `rpc` requests, if any.
    pub(crate) fn rpc_handler(&self) -> Option<Arc<dyn RpcHandler>> {
        self.shared.rpc.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cancelled when the gateway shuts down.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Registers a client subscribed to `subs`. Its subscriptions are in place when this returns.
    pub(crate) fn connect(&self, transport: Transport, subs: Vec<Pattern>) -> Connection {
        self.register(Uuid::new_v4(), transport, subs).expect("a fresh UUID is free")
    }

    /// Registers a client under an id it had before (a long-poll session that expired), if no
    /// connected client holds that id now.
    pub(crate) fn reconnect(&self, id: Uuid, transport: Transport, subs: Vec<Pattern>) -> Option<Connection> {
        self.register(id, transport, subs)
    }

    fn register(&self, id: Uuid, transport: Transport, subs: Vec<Pattern>) -> Option<Connection> {
        let queue = usize::try_from(self.shared.config.queue_size).unwrap_or(usize::MAX);
        let client = Arc::new(Client::new(id, transport, queue));
        let (head, snapshots) = {
            let mut st = lock(&self.shared.state);
            if st.clients.contains_key(&id) {
                return None;
            }
            st.clients.insert(id, Entry { client: client.clone(), subs: IndexSet::new() });
            st.everyone.insert(id, client.clone());
            // Cannot fail: the client was just inserted, and the transports check the number of
            // patterns a request names (`api::parse_patterns`) before they connect.
            let _ = st.subscribe(&id, &subs, u64::MAX);
            (st.head, st.retained.matching(&subs))
        };
        let label = TransportLabel::from(transport);
        self.shared.metrics.connections.get_or_create(&label).inc();
        self.shared.metrics.clients.get_or_create(&label).inc();
        if self.shared.shutdown.is_cancelled() {
            client.close(CloseReason::Shutdown);
        }
        self.shared.presence(|| Presence::Here(info(&client, &subs)));
        Some(Connection { hub: self.clone(), client, head, snapshots })
    }

    /// Completes the next time a connection lets go of its client's id (create it, and
    /// `enable` it, before trying [`Hub::reconnect`], so that a release in between is not missed).
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.released.notified()
    }

    /// Unregisters a connection's client (the hub may have done so already, on overflow or
    /// disconnect) and counts it gone.
    fn release(&self, client: &Arc<Client>) {
        let mut st = lock(&self.shared.state);
        // The id may have been taken since by a new client (a long-poll session reconnecting).
        let mine = match st.clients.get(&client.id()) {
            Some(e) => Arc::ptr_eq(&e.client, client),
            None => true,
        };
        if mine {
            st.remove(&client.id());
        }
        drop(st);
        if mine {
            self.shared.released.notify_waiters();
            self.shared.presence(|| Presence::Gone(client.id()));
        }
        self.shared.metrics.clients.get_or_create(&client.transport().into()).dec();
    }

    /// What a client that last saw `after` missed up to `upto` (its [`Connection::head`] or a
    /// [`Subscribed::head`]): the events it receives through `only` (those patterns alone) or,
    /// with `None`, through all its subscriptions, its id and broadcasts. The first page of them;
    /// [`Start::more`] says where the rest continues.
    pub(crate) async fn replay(
        &self,
        client_id: Uuid,
        only: Option<&[Pattern]>,
        after: &str,
        upto: EventId,
    ) -> Result<Start, BrokerError> {
        let m = &self.shared.metrics;
        let only: Option<Arc<[Pattern]>> = only.map(Arc::from);
        Ok(match self.page(client_id, only.as_ref(), after, upto).await? {
            Page::Missed(missed, more) => {
                m.resumes.inc();
                Start { missed, more: more.map(|after| Resume { after, upto, only }), reset: None, reload: false }
            }
            Page::Lost(reason) => {
                m.resets.inc();
                // Retained topics reload from their snapshots; anything else needs a reset.
                let st = lock(&self.shared.state);
                let all_retained = match &only {
                    Some(patterns) => patterns_all_retained(&st, patterns.iter()),
                    None => st.clients.get(&client_id).is_some_and(|e| patterns_all_retained(&st, &e.subs)),
                };
                Start { missed: Vec::new(), more: None, reset: (!all_retained).then_some(reason), reload: true }
            }
        })
    }

    /// The next page of a resume (see [`Outbound::Resume`]).
    pub(crate) async fn resume_page(&self, client_id: Uuid, resume: &Resume) -> Result<Page, BrokerError> {
        let after = resume.after.to_string();
        self.page(client_id, resume.only.as_ref(), &after, resume.upto).await
    }

    /// Reads up to [`RESUME_PAGE`] events after `after` from history and keeps those the client
    /// receives.
    async fn page(
        &self,
        client_id: Uuid,
        only: Option<&Arc<[Pattern]>>,
        after: &str,
        upto: EventId,
    ) -> Result<Page, BrokerError> {
        let events = match self.shared.broker.replay(after, upto, RESUME_PAGE).await? {
            Replay::Missed(events) => events,
            Replay::Unknown => return Ok(Page::Lost("unknown_event_id")),
            Replay::Expired => return Ok(Page::Lost("history_expired")),
        };
        let more = (events.len() >= RESUME_PAGE).then(|| events[events.len() - 1].id);
        let missed: Vec<Arc<Event>> = match only {
            Some(patterns) => events
                .into_iter()
                .filter(|ev| {
                    ev.draft.audience == Audience::Topic
                        && ev.topic().is_some_and(|t| patterns.iter().any(|p| p.matches(t)))
                })
                .collect(),
            None => {
                let st = lock(&self.shared.state);
                let Some(entry) = st.clients.get(&client_id) else { return Ok(Page::Missed(Vec::new(), None)) };
                events.into_iter().filter(|ev| receives(&client_id, &entry.subs, ev)).collect()
            }
        };
        Ok(Page::Missed(missed, more))
    }

    /// Publishes drafts, all or none, in order, after checking them ([`Checked::new`]). Returns
    /// the events with their ids.
    pub async fn publish(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Event>>, PublishError> {
        self.publish_checked(Checked::new(drafts)?).await
    }

    /// Publishes checked drafts, all or none, in order. Returns the events with their ids; an
    /// error names the request item it is about.
    pub async fn publish_checked(&self, checked: Checked) -> Result<Vec<Arc<Event>>, PublishError> {
        let Checked { drafts, item_of } = checked;
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let item = |index: usize| item_of.get(index).copied().unwrap_or(index);
        // A small fan-out is written by this request once the broker lets go of its locks
        // (`fanout::Writer::help`): right after a broker that dispatches as it is called, after
        // the publish for one that dispatches later, and when this request is dropped early.
        let _help = Help(&self.shared.fanout);
        let publishing = self.shared.broker.publish(drafts, &*self.shared);
        self.shared.fanout.help();
        let events = publishing.await.map_err(|e| e.renumbered(item))?;
        self.shared.fanout.help();
        self.shared.metrics.published.inc_by(events.len() as u64);
        // With the in-process broker, a publish is answered once its events have reached every
        // receiver (written or queued): publishers cannot outrun the fan-out writer.
        if self.shared.broker.cluster().is_none() {
            if let Some(last) = events.last() {
                self.fanned_to(last.id).await;
            }
        }
        Ok(events)
    }

    /// The bytes of unfinished WebSocket messages held across the gateway's connections, and the
    /// most they may take together: 16 times `--max-body-bytes` (16 MiB by default).
    pub(crate) fn unfinished_input(&self) -> (Arc<std::sync::atomic::AtomicUsize>, usize) {
        (self.shared.unfinished.clone(), self.shared.config.max_body_bytes.saturating_mul(UNFINISHED_BUDGET_FACTOR))
    }

    /// The last event the fan-out writer has handed to every receiver: everything up to it is
    /// in their queues (or written).
    pub(crate) fn fanned(&self) -> EventId {
        *self.shared.fanned.borrow()
    }

    /// Waits until the fan-out writer has handed every event up to `id` to its receivers.
    pub(crate) async fn fanned_to(&self, id: EventId) {
        if *self.shared.fanned.borrow() >= id {
            return;
        }
        let mut fanned = self.shared.fanned.subscribe();
        // The sender lives in the hub, which `self` holds: this cannot fail.
        let _ = fanned.wait_for(|h| *h >= id).await;
    }

    /// Adds subscriptions to a client connected here, all or none: refused if the client would
    /// then hold more topics and patterns than `--max-topics-per-client`.
    pub fn subscribe(&self, id: &Uuid, patterns: &[Pattern]) -> Result<Subscribed, SubscribeError> {
        self.shared.subscribe(id, patterns)
    }

    /// Removes subscriptions from a client connected here; returns the ones it keeps.
    pub fn unsubscribe(&self, id: &Uuid, patterns: &[Pattern]) -> Result<Vec<String>, UnknownClient> {
        self.shared.unsubscribe(id, patterns)
    }

    /// Disconnects a client connected here: it is unregistered now and its stream ends after
    /// what is queued.
    pub fn disconnect(&self, id: &Uuid) -> Result<(), UnknownClient> {
        self.shared.disconnect(id)
    }

    /// Carries out a command on a client connected to this node or, with a shared broker, to
    /// any node. Returns the client's subscriptions after it.
    pub(crate) async fn command(&self, id: Uuid, command: Command) -> Result<Vec<String>, CommandError> {
        let answer = match self.shared.command(id, &command) {
            Some(answer) => answer,
            None => match self.shared.broker.cluster() {
                Some(cluster) => cluster.command(id, command).await?.ok_or(UnknownClient)?,
                None => return Err(UnknownClient.into()),
            },
        };
        Ok(answer?)
    }

    /// Every client connected to this node or, with a shared broker, to any node.
    pub async fn all_clients(&self) -> Result<Vec<ClientInfo>, BrokerError> {
        let mut list = match self.shared.broker.cluster() {
            Some(cluster) => cluster.clients().await?,
            None => return Ok(self.clients()),
        };
        list.sort_by_key(|c| (c.connected_at, c.client_id));
        Ok(list)
    }

    /// Waits, briefly, until this node has delivered the event a resuming client last saw, when
    /// the client comes from a node further along the shared broker's order.
    pub(crate) async fn catch_up(&self, last_seen: Option<&str>) {
        let Some(after) = last_seen.and_then(|id| id.parse::<EventId>().ok()) else { return };
        if self.shared.broker.cluster().is_none() || *self.shared.delivered.borrow() >= after {
            return;
        }
        let mut seen = self.shared.delivered.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), seen.wait_for(|d| *d >= after)).await;
    }

    /// Every client connected to this node.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut list = self.shared.local_clients();
        list.sort_by_key(|c| (c.connected_at, c.client_id));
        list
    }

    /// Every topic and pattern that has subscribers or retained state, with subscriber counts and
    /// state versions.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let st = lock(&self.shared.state);
        let mut map: std::collections::BTreeMap<String, TopicInfo> = std::collections::BTreeMap::new();
        let subscribed = st
            .exact
            .iter()
            .map(|(t, s)| (t.to_string(), s.len()))
            .chain(st.patterns.iter().map(|(p, s)| (p.to_string(), s.len())));
        for (topic, subscribers) in subscribed {
            map.insert(topic.clone(), TopicInfo { topic, subscribers, version: None });
        }
        for (topic, version) in st.retained.versions() {
            map.entry(topic.to_string())
                .or_insert_with(|| TopicInfo { topic: topic.to_string(), subscribers: 0, version: None })
                .version = Some(version);
        }
        map.into_values().collect()
    }

    /// Writes history and retained state to the configured state file, if any.
    pub fn save_state(&self) -> Result<(), crate::core::persist::PersistError> {
        let Some(path) = &self.shared.config.state_file else { return Ok(()) };
        let Some((floor, last, events)) = self.shared.broker.export() else { return Ok(()) };
        let retained = lock(&self.shared.state).retained.dump();
        Saved::new(floor, last, &events, retained).store(path)
    }

    /// Stops the hub: every client is told to come back later and its stream ends.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.close_all(CloseReason::Shutdown);
    }
}

/// Keeps connections alive and honest, from one task for the whole hub rather than a timer per
/// connection: `: hb` to SSE clients silent for a heartbeat interval; a ping to WebSocket peers
/// not heard from for one, and a close for those silent past the timeout.
async fn heartbeats(shared: Weak<Shared>, shutdown: CancellationToken) {
    let Some(every) = shared.upgrade().map(|s| s.config.heartbeat()) else { return };
    let mut tick = tokio::time::interval((every / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        let now = now_ms();
        let quiet_since = now.saturating_sub(every.as_millis() as u64);
        let dead_since = now.saturating_sub(shared.config.ws_timeout().as_millis() as u64);
        let clients = lock(&shared.state).everyone.snapshot();
        let mut sent = 0;
        for c in clients.iter() {
            let queued = match c.transport() {
                Transport::Sse => c.idle_since(quiet_since) && c.push_heartbeat(false),
                Transport::Ws if c.last_heard_ms() < dead_since => {
                    tracing::info!(client_id = %c.id(), "websocket peer stopped answering: dropped");
                    c.close(CloseReason::Timeout);
                    false
                }
                Transport::Ws => c.last_heard_ms() <= quiet_since && c.push_heartbeat(true),
                Transport::LongPoll | Transport::Poll => false,
            };
            sent += u64::from(queued);
        }
        shared.metrics.heartbeats.inc_by(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn config() -> Config {
        Config { demo: false, ..Config::default() }
    }

    fn draft(topic: &str, n: u32) -> Draft {
        Draft::topic(topic, "n", serde_json::value::to_raw_value(&n).unwrap())
    }

    async fn queued(conn: &Connection) -> Vec<EventId> {
        let mut batch = VecDeque::new();
        conn.client().drain_into(&mut batch);
        batch
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Event(e) => Some(e.id),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn registration_splits_history_from_live_events() {
        let hub = Hub::new(config()).unwrap();
        let before = hub.publish(vec![draft("t", 0), draft("t", 1)]).await.unwrap();
        let conn = hub.connect(Transport::Sse, vec![Pattern::parse("t").unwrap()]);
        assert_eq!(conn.head(), before[1].id, "the head is the last event dispatched");
        let after = hub.publish(vec![draft("t", 2)]).await.unwrap();
        // Live: only what came after the head. History: up to the head and no further.
        assert_eq!(queued(&conn).await, [after[0].id]);
        let start = hub.replay(conn.client().id(), None, &before[0].id.to_string(), conn.head()).await.unwrap();
        assert_eq!(start.missed.iter().map(|e| e.id).collect::<Vec<_>>(), [before[1].id]);
        assert!(start.reset.is_none() && !start.reload);
    }

    #[tokio::test]
    async fn overlapping_subscriptions_get_one_copy_and_release_frees_the_id() {
        let hub = Hub::new(config()).unwrap();
        let subs = ["a/*", "a/**", "a/b", "**"].map(|p| Pattern::parse(p).unwrap()).to_vec();
        let conn = hub.connect(Transport::Ws, subs);
        let id = conn.client().id();
        let ev = hub.publish(vec![draft("a/b", 1)]).await.unwrap();
        assert_eq!(queued(&conn).await, [ev[0].id]);
        drop(conn);
        assert!(hub.clients().is_empty());
        assert!(hub.topics().is_empty(), "no subscriber index left behind");
        assert!(hub.reconnect(id, Transport::LongPoll, Vec::new()).is_some(), "the id is free again");
    }

    #[tokio::test]
    async fn subscriptions_past_the_limit_are_refused_whole_and_order_is_kept() {
        let hub = Hub::new(Config { max_topics_per_client: 4, ..config() }).unwrap();
        let ps = |list: &[&str]| list.iter().map(|p| Pattern::parse(p).unwrap()).collect::<Vec<_>>();
        let conn = hub.connect(Transport::Ws, ps(&["c", "a/*"]));
        let id = conn.client().id();
        // Two new ones and one it has: four in all, allowed.
        let s = hub.subscribe(&id, &ps(&["b/**", "a/*", "d"])).unwrap();
        assert_eq!(s.topics, ["c", "a/*", "b/**", "d"]);
        let refused = hub.subscribe(&id, &ps(&["e", "c"]));
        assert!(matches!(refused, Err(SubscribeError::TooManyTopics(TooManyTopics { limit: 4 }))));
        assert_eq!(hub.clients()[0].topics, ["c", "a/*", "b/**", "d"], "nothing changed");
        assert_eq!(hub.unsubscribe(&id, &ps(&["a/*", "zzz"])).unwrap(), ["c", "b/**", "d"]);
        assert_eq!(hub.subscribe(&id, &ps(&["e"])).unwrap().topics, ["c", "b/**", "d", "e"]);
        let listed: Vec<String> = hub.topics().into_iter().map(|t| t.topic).collect();
        assert_eq!(listed, ["b/**", "c", "d", "e"]);
        let ev = hub.publish(vec![draft("b/x/y", 1)]).await.unwrap();
        assert_eq!(queued(&conn).await, [ev[0].id], "the pattern index finds b/**");
        drop(conn);
        assert!(hub.topics().is_empty());
    }
}
