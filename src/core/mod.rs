//! The fabric, with no HTTP, no sockets and no tokio I/O: events and their encodings, topics and
//! patterns, the hub with its clients, queues and fan-out, retained state, conflation, what a
//! broker is to the hub, persistence of the state file, metrics and the rpc handler's trait.

pub mod broker;
pub mod client;
pub mod conflate;
pub mod event;
pub(crate) mod fanout;
pub mod hub;
pub mod metrics;
pub mod persist;
pub mod retained;
pub mod rpc;
pub(crate) mod subscribers;
pub mod topic;
pub(crate) mod trie;
