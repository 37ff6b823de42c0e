//! What a broker is to the hub (the brokers themselves are in `crate::broker`). Brokers give events their ids and order and keep the history that reconnecting clients resume
//! from. The in-memory broker is the embedded default; a shared broker (Redis Streams) lets several
//! gateway nodes agree on one order.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::core::client::ClientInfo;
use crate::core::event::{Draft, Event, EventId};
use crate::core::hub::TooManyTopics;
use crate::core::persist::SavedTopic;
use crate::core::retained::Prepared;

/// The hub's side of publishing, which a broker calls in its order. The hub implements it.
pub(crate) trait Dispatch: Send + Sync {
    /// As one step, so that a client registering meanwhile sees all of it or none: for each
    /// request in turn, applies its drafts' state changes (refusing the whole request if one
    /// fails) and has `store` give the drafts their ids and keep them; then fans all the events
    /// out to clients. Returns each request's events. (An in-process broker.)
    fn publish(
        &self,
        requests: Vec<Vec<Draft>>,
        store: &mut dyn FnMut(Vec<Draft>) -> Vec<Arc<Event>>,
    ) -> Vec<Result<Vec<Arc<Event>>, PublishError>>;

    /// Turns the drafts' state changes into the events they become against the current state,
    /// changing nothing, and returns each changed topic's version before and state after. (A
    /// shared broker, before it orders the batch.)
    fn prepare(&self, drafts: &mut [Draft]) -> Result<Vec<Prepared>, PublishError>;

    /// Events in the shared broker's order, up to `head`: follows their state changes and fans
    /// them out. Returns the retained topics whose earlier changes are missing here, to fetch.
    fn deliver(&self, events: Vec<Arc<Event>>, head: EventId) -> Vec<Arc<str>>;

    /// Takes stored topic states that are newer than those held, and sends them to subscribers.
    fn restore(&self, topics: Vec<SavedTopic>);

    /// Every retained topic's state.
    fn retained(&self) -> Vec<SavedTopic>;

    /// Closes every client connected here so that it reconnects and resumes (it may have missed
    /// events that this node could not read).
    fn resume_all(&self);

    /// Carries out a command on a client connected here; `None` if none has that id.
    fn command(&self, client: Uuid, command: &Command) -> Option<Answer>;

    /// The clients connected here.
    fn local_clients(&self) -> Vec<ClientInfo>;
}

/// What one node asks of a client connected to another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", content = "topics", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Add these (valid) subscriptions.
    Subscribe(Vec<String>),
    /// Remove these subscriptions.
    Unsubscribe(Vec<String>),
    /// Disconnect the client.
    Disconnect,
}

/// The answer of the node holding a client to a [`Command`]: the client's subscriptions after
/// it, or the refusal of a subscription that would take it past its limit.
pub(crate) type Answer = Result<Vec<String>, TooManyTopics>;

/// A change of the clients connected to a node, for cluster-wide presence.
#[derive(Debug, Clone)]
pub(crate) enum Presence {
    /// A client connected or changed its subscriptions.
    Here(ClientInfo),
    /// A client went away.
    Gone(Uuid),
}

/// What a broker shared by several nodes adds: the cluster's clients, wherever connected.
pub(crate) trait Cluster: Send + Sync {
    /// Records a change of this node's clients (without waiting).
    fn presence(&self, change: Presence);

    /// Every client connected to any node.
    fn clients(&self) -> BoxFuture<'_, Result<Vec<ClientInfo>, BrokerError>>;

    /// Carries out a command on a client connected to another node; `Ok(None)` if no node has it.
    fn command(&self, client: Uuid, command: Command) -> BoxFuture<'_, Result<Option<Answer>, BrokerError>>;
}

/// A broker failure, as the HTTP edge reports it (`503`).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Why a publish was refused; nothing of it was published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Item `index` of the request is invalid; nothing was published.
    #[error("item {index}: {message}")]
    Invalid {
        /// Position of the bad item in the request.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A `json_patch` of item `index` does not apply to the topic's state; nothing was published.
    #[error("item {index}: {message}")]
    Conflict {
        /// Position of the item in the request.
        index: usize,
        /// What failed.
        message: String,
    },
    /// A state change of item `index` would take the topic's state past `--max-state-bytes` or
    /// the depth limit; nothing was published.
    #[error("item {index}: {message}")]
    TooLarge {
        /// Position of the item in the request.
        index: usize,
        /// Which limit, for which topic.
        message: String,
    },
    /// Item `index` deletes the state of a topic that has none; nothing was published.
    #[error("item {index}: {message}")]
    UnknownTopic {
        /// Position of the item in the request.
        index: usize,
        /// Which topic.
        message: String,
    },
    /// The broker could not take the events.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl PublishError {
    /// The same error naming the item `at(index)` instead (a request item, where the hub counted
    /// drafts).
    pub fn renumbered(self, at: impl Fn(usize) -> usize) -> Self {
        match self {
            PublishError::Invalid { index, message } => PublishError::Invalid { index: at(index), message },
            PublishError::Conflict { index, message } => PublishError::Conflict { index: at(index), message },
            PublishError::TooLarge { index, message } => PublishError::TooLarge { index: at(index), message },
            PublishError::UnknownTopic { index, message } => PublishError::UnknownTopic { index: at(index), message },
            other => other,
        }
    }
}

/// What a client that resumes after an id has missed.
#[derive(Debug)]
pub(crate) enum Replay {
    /// Every event after the id up to the asked position, oldest first (unfiltered: the hub
    /// filters them).
    Missed(Vec<Arc<Event>>),
    /// The id was never issued by this broker, is past the asked position, or is malformed.
    Unknown,
    /// The id is older than the history kept.
    Expired,
}

/// Orders, stores and replays events.
pub(crate) trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Appends the drafts, all or none, in order, giving each an id, through `sink` (which applies
    /// state changes and fans out) in the broker's order. Returns the events as stored.
    fn publish<'a>(
        &'a self,
        drafts: Vec<Draft>,
        sink: &'a dyn Dispatch,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, PublishError>>;

    /// The events after `after` (an id as a client sent it) up to and including `upto` (the
    /// position from which the client receives live events), at most `limit` of them: a client
    /// far behind is served page by page, each page asked for when the last one is written.
    fn replay<'a>(&'a self, after: &'a str, upto: EventId, limit: usize) -> BoxFuture<'a, Result<Replay, BrokerError>>;

    /// The id of the last event dispatched on this node (at start: where the history begins).
    fn head(&self) -> EventId;

    /// How many events the history holds now.
    fn history_len(&self) -> usize;

    /// Whether the broker can take publishes now.
    fn ready(&self) -> bool;

    /// The history to keep across a restart, as (floor, last id, events), if this broker keeps
    /// it in the process.
    fn export(&self) -> Option<(EventId, EventId, Vec<Arc<Event>>)> {
        None
    }

    /// Called once by the hub it serves: a broker that delivers events itself (in a shared
    /// order) starts here, until `stop` is cancelled.
    fn attach(&self, _hub: Weak<dyn Dispatch>, _stop: tokio_util::sync::CancellationToken) {}

    /// The cluster-wide view, for a broker shared by several nodes.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// How far the broker's events are on disk, for a broker that answers a publish only once
    /// its events are (`--data-dir`): the hub then delivers no event before it is on disk.
    fn durability(&self) -> Option<Arc<dyn Durability>> {
        None
    }
}

/// Tells how far a broker's events are on disk.
pub(crate) trait Durability: Send + Sync {
    /// Blocks the calling (non-async) thread until every event up to `id` is on disk; `false`
    /// if that will never be (the disk failed, or the broker is gone).
    fn wait_durable(&self, id: EventId) -> bool;
}
