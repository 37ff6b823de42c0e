//! ssegate: a real-time push gateway. Backends publish events over HTTP (or in process through a
//! [`Hub`]); browsers and services receive them over Server-Sent Events, with WebSocket and
//! long-polling fallbacks. The wire contract is `API.md`.
//!
//! # Layout
//! - [`topic`]: topic names and subscription patterns (`a/*`, `a/**`, `**`); `trie`: the index
//!   that finds the wildcard patterns a topic matches, one step per segment.
//! - [`event`]: events, their ids (`<ms>-<seq>`) and wire encodings, made once and shared.
//! - [`broker`]: gives events ids and order and keeps history ([`broker::MemoryBroker`] by default).
//! - [`client`]: one connected client and its bounded outbound queue.
//! - [`hub`]: the registry of clients and the topic index (a trie for patterns); decides who
//!   receives each event; `subscribers`: the sets of clients, in chunks shared copy-on-write
//!   with the fan-out; `fanout`, a thread of its own, writes the runs to sockets and queues
//!   outside every lock.
//! - [`sse`], [`ws`], [`poll`], [`snapshot`]: the transports (`/stream`, `/ws`, `/poll`,
//!   `/snapshot`); each renders the same per-client queue in its own wire format.
//! - [`negotiate`]: `GET /negotiate`, the transport decision matrix.
//! - [`web`]: the demo page and the browser client, built into the binary; [`demo`]: the demo's
//!   publisher and refresh endpoint.
//! - [`retained`]: retained topic state; [`conflate`]: snapshots instead of queues, throttling;
//!   [`persist`]: history and state kept across restarts.
//! - [`rpc`]: WebSocket clients' requests to the backend.
//! - [`api`]: `POST /publish`, client and topic administration, health checks, metrics.
//! - [`auth`]: who may publish, administer and subscribe (API keys, JWTs with the `ssegate`
//!   claim, the loopback rule); [`guard`]: the real peer behind trusted proxies and the checks
//!   against cross-site requests and DNS rebinding; [`jwt`]: tokens. [`error`]: the JSON
//!   errors of the HTTP edge.
//! - [`metrics`]: Prometheus counters. [`config`]: flags and environment.
//! - [`server`]: the accept loop, connection limits and graceful shutdown; `direct` serves a
//!   fresh `/stream` or `/ws` connection on its socket, without the HTTP framework;
//!   `handshake` checks a WebSocket opening handshake for both paths; `linger` closes a
//!   connection so that the last answer arrives.
//!
//! # How an event flows
//! `POST /publish` → [`api::parse_publish`] checks the whole request → [`Hub::publish`] hands the
//! drafts to the broker → the broker assigns ids, appends history and calls the hub's dispatch
//! in id order → dispatch collects each run's receivers under the hub's lock and hands them to
//! the fan-out thread, which pushes one `Arc<Event>` into the queue of each receiving client
//! (never waiting on a client; a full queue closes that client, which resumes from history). A
//! connection that has written everything gets the event's frame written to its socket by the
//! fan-out itself; otherwise its transport takes what is queued and writes it in chunks. A
//! resuming client's missed events are read from history a page at a time
//! ([`client::Outbound::Resume`]), as fast as it reads them.
//! Each event's frame is encoded once per wire format and shared by all connections.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let hub = ssegate::Hub::new(ssegate::Config::default())?;
//! let app = axum::Router::new().nest("/push", ssegate::router(hub.clone()));
//! # let _ = app;
//! let data = serde_json::value::to_raw_value(&serde_json::json!({"n": 1}))?;
//! hub.publish(vec![ssegate::Draft::topic("orders", "count", data)]).await?;
//! # Ok(()) }
//! ```

// Only what a library user needs is `pub` (the items re-exported below); the rest says
// `pub(crate)`, and this lint keeps it so.
#![warn(unreachable_pub)]

mod api;
mod broker;
mod config;
mod core;
mod edge;
mod http;
mod transport;

use std::future::Future;

use axum::routing::{delete, get, post};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use api::rpc::HttpRpc;
pub use config::{Config, IpNet, JwtKey, Transport, Transports};
pub use core::broker::{BrokerError, PublishError};
pub use core::client::ClientInfo;
pub use core::event::{null_data, Audience, BadEventId, Checked, Draft, Event, EventId, StateChange, RESERVED_EVENTS};
pub use core::hub::{Hub, HubError, SubscribeError, Subscribed, TooManyTopics, TopicInfo, UnknownClient};
pub use core::persist::PersistError;
pub use core::retained::{Snapshot, MAX_STATE_DEPTH};
pub use core::rpc::{RpcError, RpcHandler, RpcRequest, RPC_TIMEOUT};
pub use core::topic::{Pattern, TopicError};
pub use edge::server::serve;

/// The gateway's HTTP routes over `hub`, ready to serve or to nest in another axum app.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/stream", get(transport::sse::stream))
        .route("/ws", get(transport::ws::upgrade))
        .route("/poll", get(transport::poll::poll).with_state(transport::poll::Polls::new(hub.clone())))
        .route("/snapshot", get(transport::snapshot::snapshot))
        .route("/negotiate", get(transport::negotiate::negotiate))
        .route("/publish", post(api::publish))
        .route("/clients", get(api::clients))
        .route("/clients/{client_id}", delete(api::disconnect))
        .route("/clients/{client_id}/{action}", post(api::subscriptions))
        .route("/topics", get(api::topics))
        .route("/topics/{*topic}", delete(api::delete_topic))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/", get(api::web::index))
        .route("/favicon.ico", get(api::web::favicon))
        .route("/web/{file}", get(api::web::file))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(http::cors::layer(&hub.config().cors_origins))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(hub)
}

/// The span of a request: its method and path, never its query (which may hold `token` or
/// `access_token`) nor its headers.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), version = ?req.version())
}

/// For the crate's own micro-benchmarks (`benches/fanout.rs`); not part of the API.
#[doc(hidden)]
pub mod bench {
    use crate::config::Transport;
    use crate::core::hub::Connection;
    use crate::core::hub::Hub;
    use crate::core::topic::Pattern;

    /// `n` SSE clients of `hub` subscribed to `pattern`, without sockets.
    pub struct Clients(Vec<Connection>);

    impl Clients {
        /// Registers them.
        pub fn new(hub: &Hub, pattern: &Pattern, n: usize) -> Clients {
            Clients((0..n).map(|_| hub.connect(Transport::Sse, vec![pattern.clone()])).collect())
        }

        /// Takes everything queued for each, as its writer would; returns how many items.
        pub fn drain(&self) -> usize {
            let mut batch = std::collections::VecDeque::new();
            let mut n = 0;
            for conn in &self.0 {
                batch.clear();
                conn.client().drain_into(&mut batch);
                n += batch.len();
            }
            n
        }
    }
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Hub(#[from] core::hub::HubError),
    /// Serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the gateway on `listener` with `config` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // Keys and lists that cannot be used stop the gateway before it serves (exit status 64).
    http::auth::check_config(&config).map_err(core::hub::HubError::Config)?;
    let demo = config.demo;
    // The backend's rpc endpoint is reached through an HTTP client made here, not by the hub,
    // which only knows the handler (a library user sets its own with `Hub::set_rpc_handler`).
    let rpc = config.rpc_url.as_deref().map(api::rpc::HttpRpc::new).transpose().map_err(core::hub::HubError::Config)?;
    let hub = Hub::new(config)?;
    if let Some(rpc) = rpc {
        hub.set_rpc_handler(rpc);
    }
    let mut app = router(hub.clone());
    if demo {
        api::demo::spawn(hub.clone());
        app = app.merge(api::demo::router(hub.clone()));
    }
    edge::server::serve(listener, hub, app, shutdown).await?;
    Ok(())
}
