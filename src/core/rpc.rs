//! Requests from WebSocket clients to the backend (`rpc {method, data, ref}`), answered by
//! `reply` or `error`. A backend either embeds a handler ([`crate::Hub::set_rpc_handler`]) or
//! names a URL (`--rpc-url`) that each request is POSTed to as `{client_id, method, data,
//! identity}` (`identity`: the verified claims of the client's token, or `null`; see
//! `crate::api::rpc`).

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Longest wait for the backend's answer.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// One request from a client.
#[derive(Debug, Clone, Serialize)]
pub struct RpcRequest {
    /// The client that asked.
    pub client_id: Uuid,
    /// What it asks for.
    pub method: String,
    /// Its arguments.
    pub data: Value,
    /// Who asked: the claims of the token the client connected with, or `null` for a client
    /// without one. The gateway has verified them; the backend may rely on them.
    pub identity: Option<Value>,
}

/// A failed request, sent to the client as `error {ref, code, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// Machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        RpcError { code: code.to_owned(), message: message.into() }
    }
}

/// Answers clients' requests.
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers one request with the `data` of the `reply`.
    fn call(&self, request: RpcRequest) -> BoxFuture<'static, Result<Value, RpcError>>;
}
