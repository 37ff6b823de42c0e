//! The fabric, with no HTTP, no sockets and no tokio I/O: events and their encodings, topics and
//! patterns, the hub with its clients, queues and fan-out, retained state, conflation, what a
//! broker is to the hub, persistence of the state file, metrics and the rpc handler's trait.

pub(crate) mod broker;
pub(crate) mod client;
pub(crate) mod conflate;
pub(crate) mod event;
pub(crate) mod fanout;
pub(crate) mod hub;
pub(crate) mod metrics;
pub(crate) mod persist;
pub(crate) mod retained;
pub(crate) mod rpc;
pub(crate) mod subscribers;
pub(crate) mod topic;
pub(crate) mod trie;
