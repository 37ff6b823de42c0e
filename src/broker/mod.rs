//! Brokers give events their ids and order and keep the history that reconnecting clients resume
//! from. The in-memory broker is the embedded default; a shared broker (Redis Streams) lets several
//! gateway nodes agree on one order.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::event::{Draft, Event, EventId};

pub mod memory;

pub use memory::MemoryBroker;

/// The hub's side of publishing, which a broker calls in its order. The hub implements it.
pub trait Dispatch: Send + Sync {
    /// As one step, so that a client registering meanwhile sees all of it or none: applies the
    /// drafts' state changes (refusing the whole batch if one fails), has `store` give the drafts
    /// their ids and keep them, and fans the events out to clients.
    fn publish(
        &self,
        drafts: Vec<Draft>,
        store: &mut dyn FnMut(Vec<Draft>) -> Vec<Arc<Event>>,
    ) -> Result<Vec<Arc<Event>>, PublishError>;
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
    /// The broker could not take the events.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a client that resumes after an id has missed.
#[derive(Debug)]
pub enum Replay {
    /// Every event after the id up to the asked position, oldest first (unfiltered: the hub
    /// filters them).
    Missed(Vec<Arc<Event>>),
    /// The id was never issued by this broker, is past the asked position, or is malformed.
    Unknown,
    /// The id is older than the history kept.
    Expired,
}

/// Orders, stores and replays events.
pub trait Broker: Send + Sync + 'static {
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
    /// position from which the client receives live events).
    fn replay<'a>(&'a self, after: &'a str, upto: EventId) -> BoxFuture<'a, Result<Replay, BrokerError>>;

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
}
