//! The gateway's HTTP API as a test calls it: publish, the admin reads and `/metrics`, over a
//! `reqwest` client that ignores proxy settings.

use reqwest::StatusCode;
use serde_json::Value;

/// An HTTP client for talking to a test gateway (never through a proxy from the environment).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

/// What both kinds of test server offer.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    /// The absolute URL of `path` on this gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /publish` with `body`: the status and the JSON answer (`null` if it is not JSON).
    pub async fn publish(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw("/publish", body.to_string()).await
    }

    /// `POST {path}` with `body` sent as it is, labelled JSON: the status and the JSON answer.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `GET {path}`: the status and the JSON answer (`null` if it is not JSON).
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE {path}`: the status and the JSON answer (`null` if it is not JSON).
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.delete(self.url(path)).send().await.expect("DELETE");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Publishes and insists on `200`; returns the ids.
    pub async fn publish_ok(&self, body: Value) -> Vec<String> {
        let (status, res) = self.publish(&body).await;
        let shown: String = body.to_string().chars().take(200).collect();
        assert_eq!(status, StatusCode::OK, "publish {shown}… answered {res}");
        res["ids"].as_array().expect("ids").iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    /// The ids of the clients `GET /clients` lists.
    pub async fn client_ids(&self) -> Vec<String> {
        let (_, v) = self.get_json("/clients").await;
        v["clients"]
            .as_array()
            .map(|a| a.iter().map(|c| c["client_id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// The sum of the values on the `/metrics` lines that start with `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}
