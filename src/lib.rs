//! ssegate: a real-time push gateway. Backends publish events over HTTP (or in process through a
//! [`Hub`]); browsers and services receive them over Server-Sent Events, with WebSocket and
//! long-polling fallbacks. The wire contract is `API.md` (kept beside the repository, in
//! `shared/`); the README says how to run it.
//!
//! # Layers
//! Each folder of `src/` is a layer, and the folder a file is in says what it may import
//! (`tests/layers.rs` reads every `use crate::…` and fails on a forbidden one, naming the rule):
//!
//! | folder | what it holds | may import |
//! |---|---|---|
//! | `config.rs` | flags and environment, the [`Transport`] names | nothing |
//! | `core/` | events and their wire encodings, topics and patterns, the hub with its clients, bounded queues and fan-out, retained state, conflation, what a broker is to the hub, the state file, metrics, the rpc handler's trait. No HTTP, no sockets, no tokio I/O | config |
//! | `broker/` | the brokers: in memory (default; with `--data-dir` its history and states also go to a checksummed segment log on disk, `datadir`) and Redis Streams; [`Hub::new`] picks one | core, config |
//! | `http/` | what every HTTP endpoint shares: JSON errors, rights (API keys, JWTs, the loopback rule), request guards (Origin, Host, trusted proxies), CORS, peer addresses, strict query parsing | core, config |
//! | `transport/` | `/stream`, `/ws`, `/poll`, `/snapshot`, `/negotiate`: each renders a client's queue in its wire format; what they share (the `Pump` that turns a queue into SSE or WebSocket frames, the stream query, the connection handle) is in `transport/mod.rs`. None imports another | core, http, config |
//! | `api/` | the backend's HTTP API (`POST /publish`, clients, topics, health, metrics), the rpc client, the static web files and the demo | core, http, config |
//! | `edge/` | the accept loop, connection limits and graceful shutdown; fresh `/stream` and `/ws` connections served on their sockets; the socket writes and reads | transport, core, http, config |
//! | `lib.rs`, `main.rs` | [`router`], [`run`], the binary | everything |
//!
//! # How an event flows
//! One folder per step, from `POST /publish` to the socket:
//! 1. `api/`: `publish` (rights checked by `http/auth.rs`) reads the body and `parse_publish`
//!    checks the whole request once, into [`Checked`] drafts (each knows the request item it
//!    came from).
//! 2. `core/`: [`Hub::publish_checked`] hands them to the broker (`core/broker.rs` says what a
//!    broker is).
//! 3. `broker/`: the broker gives them ids (`<ms>-<seq>`) and keeps them in history (with
//!    `--data-dir`, on disk: the publish is answered once they are synced), and calls the hub's
//!    dispatch in id order.
//! 4. `core/`: dispatch applies state changes (`retained`), finds each event's receivers under
//!    the hub's lock (exact topics, the pattern trie, targeted clients) and hands runs of
//!    receivers to the fan-out writer (`fanout`: the publishing request itself for at most
//!    1,024 receivers, a thread of its own otherwise), which, outside every lock, pushes one shared
//!    `Arc<Event>` into each receiving client's bounded queue (`client`), never waiting on a
//!    client: a full queue closes that client, which resumes from history. A connection that
//!    has written everything gets the event's frame (encoded once per wire format, shared by
//!    all) written straight to its socket by the fan-out.
//! 5. `transport/`: otherwise its transport's pump takes what is queued (`conflate` shapes it:
//!    snapshots instead of a backlog, throttling, history read a page at a time for resuming
//!    clients) and renders it in chunks.
//! 6. `edge/`: the socket edge writes the chunks to the socket (`edge/socket.rs`); through the
//!    HTTP framework (a nested router, keep-alive connections) the response body carries them.
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
pub use edge::tls::TlsError;

/// The gateway's HTTP routes over `hub`, ready to serve or to nest in another axum app.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/stream", get(transport::sse::stream))
        // `CONNECT`: a WebSocket over HTTP/2 (RFC 8441), offered over HTTPS.
        .route("/ws", get(transport::ws::upgrade).connect(transport::ws::upgrade))
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
    /// `--tls-cert`/`--tls-key` cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads `--tls-cert` and `--tls-key` as the server will, to refuse a pair that cannot be used
/// before anything is served. `Ok` without them too.
pub fn check_tls(config: &Config) -> Result<(), TlsError> {
    edge::tls::Tls::from_config(config).map(drop)
}

/// Runs the gateway on `listener` with `config` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // Keys and lists that cannot be used stop the gateway before it serves (exit status 64).
    http::auth::check_config(&config).map_err(core::hub::HubError::Config)?;
    check_tls(&config)?;
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
