//! `--rpc-url`: clients' `rpc` requests POSTed to the backend as `{client_id, method, data}`; its
//! answer (or its `{"error":{"code","message"}}`) goes back to the client.

use futures::future::BoxFuture;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::core::rpc::{RpcError, RpcHandler, RpcRequest};

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
