//! Shared test helpers, one file per role; everything is re-exported here, so a test file
//! writes `use common::{Sse, TestServer};`.
//!
//! - `wait`: bounded waits ([`PATIENCE`], [`within`], [`until`]).
//! - `api`: the HTTP API as a client calls it ([`Api`], [`http`]).
//! - `server`: a real gateway in the test process on `127.0.0.1:0` ([`TestServer`]).
//! - `child`: the release or debug binary as a child process ([`ChildServer`]).
//! - `sse`: an SSE subscriber on `eventsource-stream` ([`Sse`], [`datas`]).
//! - `any_client`: one subscriber over any transport, and the WebSocket helpers it uses
//!   ([`AnyClient`], [`Kind`], [`KINDS`], [`Got`], [`ws_connect`], [`ws_next`], [`WsStream`]).
//! - `state`: a client's view of a topic's retained state ([`StateView`]).
//! - `redis`: a `redis-server` of the test's own for the cluster tests ([`Redis`], [`free_port`]).
//! - `raw`: hand-written HTTP request heads and WebSocket frames for raw TCP sockets
//!   ([`get_request`], [`ws_request`], [`encode_frame`], [`client_frame`], [`op`]).
//!
//! Each integration test compiles this module on its own and uses only part of it, hence the
//! `allow` below (`unused_imports`: the re-exports a test does not use).
#![allow(dead_code, unused_imports, missing_docs)]

pub mod any_client;
pub mod api;
pub mod child;
pub mod raw;
pub mod redis;
pub mod server;
pub mod sse;
pub mod state;
pub mod wait;

pub use any_client::{urlencode, ws_connect, ws_next, AnyClient, Got, Kind, WsStream, KINDS};
pub use api::{http, Api};
pub use child::ChildServer;
pub use raw::{client_frame, encode_frame, get_request, op, request_head, ws_request, WS_HEADERS, WS_KEY};
pub use redis::{free_port, Redis};
pub use server::TestServer;
pub use sse::{datas, Sse};
pub use state::StateView;
pub use wait::{until, within, PATIENCE};
