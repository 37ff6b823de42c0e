//! Requests from WebSocket clients to the backend (`rpc {method, data, ref}`), answered by
//! `reply` or `error`. A backend either embeds a handler ([`crate::Hub::set_rpc_handler`]) or
//! names a URL (`--rpc-url`) that each request is POSTed to as `{client_id, method, data,
//! identity}` (`identity`: the verified claims of the client's token, or `null`).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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

/// Forwards requests to a backend URL over HTTP.
#[derive(Debug, Clone)]
pub struct HttpRpc {
    url: hyper::Uri,
    client: Client<HttpConnector, Full<bytes::Bytes>>,
}

impl HttpRpc {
    /// A forwarder to `url` (`http://…`).
    pub fn new(url: &str) -> Result<Self, String> {
        let url: hyper::Uri = url.parse().map_err(|e| format!("bad rpc url {url:?}: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(format!("rpc url {url} must be http://"));
        }
        Ok(HttpRpc { url, client: Client::builder(TokioExecutor::new()).build_http() })
    }

    async fn forward(self, request: RpcRequest) -> Result<Value, RpcError> {
        let unavailable = |e: String| {
            tracing::warn!(error = %e, "rpc backend failed");
            RpcError::new("rpc_unavailable", "the backend did not answer")
        };
        let body = serde_json::to_vec(&request).map_err(|e| unavailable(e.to_string()))?;
        let req = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| unavailable(e.to_string()))?;
        let res = self.client.request(req).await.map_err(|e| unavailable(e.to_string()))?;
        let status = res.status();
        let bytes = res.into_body().collect().await.map_err(|e| unavailable(e.to_string()))?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(answer);
        }
        // A backend may answer {"error":{"code","message"}} like the gateway does.
        let code = answer["error"]["code"].as_str().unwrap_or("rpc_failed");
        let message = answer["error"]["message"].as_str().map(str::to_owned);
        Err(RpcError::new(code, message.unwrap_or_else(|| format!("the backend answered {status}"))))
    }
}

impl RpcHandler for HttpRpc {
    fn call(&self, request: RpcRequest) -> BoxFuture<'static, Result<Value, RpcError>> {
        self.clone().forward(request).boxed()
    }
}
