//! `POST /publish` and the admin endpoints: every bad-input row of the contract gets its status
//! and JSON error, publishes nothing and disturbs no connected client.

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use common::{Sse, TestServer};
use serde_json::{json, Value};
use tower::ServiceExt;

fn assert_error(status: reqwest::StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn every_bad_request_is_refused_and_publishes_nothing() {
    let s = TestServer::with(|c| c.max_body_bytes = 4096).await;
    let mut watcher = Sse::connect(&s, "topic=**").await;
    let target = watcher.client_id.clone();

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("invalid JSON", r#"{"topic":"#.into(), 400, "invalid_json"),
        ("not an object", "42".into(), 400, "invalid_request"),
        ("empty body", "".into(), 400, "invalid_json"),
        ("no target", r#"{"data":1}"#.into(), 400, "invalid_request"),
        ("topic and topics", r#"{"topic":"a","topics":["b"],"data":1}"#.into(), 400, "invalid_request"),
        ("empty topics", r#"{"topics":[],"data":1}"#.into(), 400, "invalid_request"),
        ("empty topic", r#"{"topic":"","data":1}"#.into(), 400, "invalid_request"),
        ("topic too long", json!({"topic": "x".repeat(257), "data": 1}).to_string(), 400, "invalid_request"),
        ("control character", json!({"topic": "a\u{7}b", "data": 1}).to_string(), 400, "invalid_request"),
        ("wildcard topic", r#"{"topic":"a/*","data":1}"#.into(), 400, "invalid_request"),
        ("topic not a string", r#"{"topic":5,"data":1}"#.into(), 400, "invalid_request"),
        ("event with a newline", json!({"topic": "a", "event": "x\ny", "data": 1}).to_string(), 400, "invalid_request"),
        ("reserved event name", r#"{"topic":"a","event":"welcome","data":1}"#.into(), 400, "invalid_request"),
        ("unknown field", r#"{"topic":"a","dta":1}"#.into(), 400, "invalid_request"),
        ("bad client id", r#"{"clients":["not-a-uuid"],"data":1}"#.into(), 400, "invalid_request"),
        (
            "clients and broadcast",
            format!(r#"{{"clients":["{target}"],"broadcast":true,"data":1}}"#),
            400,
            "invalid_request",
        ),
        (
            "one bad item in a batch",
            format!(r#"[{{"topic":"a","data":1}},{{"clients":["{target}"],"data":2}},{{"data":3}}]"#),
            400,
            "invalid_request",
        ),
        ("body over the limit", json!({"topic": "a", "data": "x".repeat(5000)}).to_string(), 413, "payload_too_large"),
    ];
    for (what, body, status, code) in &cases {
        let (got, res) = s.post_raw("/publish", body.clone()).await;
        assert_error(got, &res, *status, code);
        println!("ok: {what} -> {status} {code}: {}", res["error"]["message"]);
    }
    let (got, res) = s.post_raw("/publish", r#"[{"topic":"a"},{"data":2}]"#).await;
    assert_error(got, &res, 400, "invalid_request");
    assert!(res["error"]["message"].as_str().unwrap().starts_with("item 1:"), "the error names the bad item: {res}");

    // An item with several topics still counts as one item.
    let (got, res) = s.post_raw("/publish", r#"[{"topics":["a","b"],"data":1},{"topic":"a","event":"welcome"}]"#).await;
    assert_error(got, &res, 400, "invalid_request");
    assert!(res["error"]["message"].as_str().unwrap().starts_with("item 1:"), "{res}");

    // Nothing above reached the watcher, which is still connected: the next thing it sees is this.
    s.publish_ok(json!({"topic": "a", "event": "good", "data": 1})).await;
    assert_eq!(watcher.next().await.expect("still connected").event, "good");
    assert_eq!(s.metric("ssegate_events_published_total").await, 1.0);
    assert!(s.metric("ssegate_publish_rejected_total").await >= cases.len() as f64);
    s.stop().await;
}

#[tokio::test]
async fn a_batch_is_applied_in_order_with_one_id_per_topic() {
    let s = TestServer::start().await;
    let mut sse = Sse::connect(&s, "topic=a&topic=b").await;
    let ids = s
        .publish_ok(json!([
            {"topic": "a", "event": "one", "data": 1},
            {"topics": ["a", "b"], "event": "two", "data": 2},
            {"clients": [sse.client_id], "event": "three"}
        ]))
        .await;
    assert_eq!(ids.len(), 4);
    let mut got = Vec::new();
    for _ in 0..4 {
        let ev = sse.next().await.unwrap();
        got.push((ev.id, ev.event, ev.data));
    }
    let want: Vec<(String, String, String)> = vec![
        (ids[0].clone(), "one".into(), "1".into()),
        (ids[1].clone(), "two".into(), "2".into()),
        (ids[2].clone(), "two".into(), "2".into()),
        (ids[3].clone(), "three".into(), "null".into()),
    ];
    assert_eq!(got, want);
    s.stop().await;
}

#[tokio::test]
async fn unknown_clients_get_404() {
    let s = TestServer::start().await;
    let ghost = uuid::Uuid::new_v4();
    let sub = json!({"topics": ["a"]}).to_string();
    for (status, res) in [
        s.post_raw(&format!("/clients/{ghost}/subscribe"), sub.clone()).await,
        s.post_raw(&format!("/clients/{ghost}/unsubscribe"), sub.clone()).await,
        s.delete(&format!("/clients/{ghost}")).await,
        s.delete("/clients/not-a-uuid").await,
    ] {
        assert_error(status, &res, 404, "unknown_client");
    }
    let sse = Sse::connect(&s, "").await;
    let (status, res) = s.post_raw(&format!("/clients/{}/subscribe", sse.client_id), r#"{"topics":["a/*/b"]}"#).await;
    assert_error(status, &res, 400, "invalid_topic");
    let (status, res) = s.post_raw(&format!("/clients/{}/subscribe", sse.client_id), r#"{"topics":"a"}"#).await;
    assert_error(status, &res, 400, "invalid_request");
    s.stop().await;
}

#[tokio::test]
async fn bad_subscriptions_and_unknown_paths_get_json_errors() {
    let s = TestServer::start().await;
    let res = s.http.get(s.url("/stream?topic=a/**/b")).send().await.unwrap();
    let status = res.status();
    assert_error(status, &res.json().await.unwrap(), 400, "invalid_topic");
    let (status, res) = s.get_json("/nope").await;
    assert_error(status, &res, 404, "not_found");
    let res = s.http.get(s.url("/publish")).send().await.unwrap();
    let status = res.status();
    assert_error(status, &res.json().await.unwrap(), 405, "method_not_allowed");
    s.stop().await;
}

#[tokio::test]
async fn api_keys_guard_publishing_and_admin() {
    let s = TestServer::with(|c| c.api_key = vec!["k1".into(), "k2".into()]).await;
    let body = json!({"topic": "a", "data": 1}).to_string();
    let (status, res) = s.post_raw("/publish", body.clone()).await;
    assert_error(status, &res, 401, "unauthorized");
    let res = s.http.post(s.url("/publish")).bearer_auth("wrong").body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = s.http.post(s.url("/publish")).bearer_auth("k2").body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = s.http.get(s.url("/clients")).header("x-api-key", "k1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = s.http.get(s.url("/topics")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // Subscribing needs no key.
    Sse::connect(&s, "topic=a").await;
    s.stop().await;
}

#[tokio::test]
async fn without_keys_only_loopback_peers_may_publish() {
    let hub = ssegate::Hub::new(ssegate::Config::default()).unwrap();
    let app = ssegate::router(hub);
    let call = |peer: &str, method: &str, path: &str| {
        let mut req =
            Request::builder().method(method).uri(path).body(Body::from(r#"{"topic":"a","data":1}"#)).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        app.clone().oneshot(req)
    };
    for (method, path) in [("POST", "/publish"), ("GET", "/clients"), ("GET", "/topics")] {
        let res = call("203.0.113.9:5000", method, path).await.unwrap();
        assert_eq!(res.status(), 403, "{method} {path} from afar");
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "forbidden");
        for near in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(call(near, method, path).await.unwrap().status(), 200, "{method} {path} from {near}");
        }
    }
}

#[tokio::test]
async fn too_many_connections_get_503_with_retry_after_but_publishers_and_health_checks_get_through() {
    let s = TestServer::with(|c| c.max_connections = 2).await;
    let _a = Sse::connect(&s, "topic=a").await;
    let _b = Sse::connect(&s, "topic=a").await;
    // A third subscriber is refused...
    let res = s.http.get(s.url("/stream?topic=a")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // ...while the slots kept beyond the limit still take the backend and the health checks.
    let res = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    s.publish_ok(json!({"topic": "a", "data": 1})).await;
    drop(_a);
    common::until("a slot to free up", || async {
        let res = s.http.get(s.url("/stream?topic=a")).send().await;
        res.is_ok_and(|r| r.status() == 200)
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let s = TestServer::with(|c| c.max_per_address = 2).await;
    let _a = Sse::connect(&s, "topic=a").await;
    let _b = Sse::connect(&s, "topic=a").await;
    let res = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 503, "a third connection from 127.0.0.1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // Another address is not affected.
    let other =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let res = other.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200, "a connection from 127.0.0.2");
    s.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_is_not_one_address_its_clients_are() {
    // The proxy is 127.0.0.2; one slot per address.
    let s = TestServer::with(|c| {
        c.max_per_address = 1;
        c.trusted_proxies = vec![ssegate::IpNet::parse("127.0.0.2").unwrap()];
    })
    .await;
    let proxy =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    // Connections from the proxy are bounded by --max-connections only: three streams at once.
    let mut streams = Vec::new();
    for n in 0..3 {
        let res = proxy.get(s.url("/stream?topic=a")).header("x-forwarded-for", format!("203.0.113.{n}")).send().await;
        let res = res.unwrap();
        assert_eq!(res.status(), 200, "stream {n} through the proxy");
        streams.push(res);
    }
    // Long-poll sessions count the client the proxy names: one each.
    let poll =
        |client: &'static str| proxy.get(s.url("/poll?topic=a&timeout=0")).header("x-forwarded-for", client).send();
    assert_eq!(poll("203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(poll("203.0.113.2").await.unwrap().status(), 200);
    let refused = poll("203.0.113.1").await.unwrap();
    assert_eq!(refused.status(), 503, "a second session for the same client");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // Other addresses are still held to one connection.
    let _a = Sse::connect(&s, "topic=a").await;
    let res = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 503, "a second connection from 127.0.0.1");
    drop(streams);
    s.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start().await;
    let (status, v) = s.get_json("/healthz").await;
    assert_eq!((status.as_u16(), v["status"].as_str()), (200, Some("ok")));
    let (status, v) = s.get_json("/readyz").await;
    assert_eq!((status.as_u16(), v["broker"].as_str()), (200, Some("memory")));
    let _sse = Sse::connect(&s, "topic=a").await;
    s.publish_ok(json!({"topic": "a", "data": 1})).await;
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "ssegate_events_published_total 1",
        "ssegate_clients{transport=\"sse\"} 1",
        "ssegate_history_events 1",
        "ssegate_queue_overflows_total 0",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
    s.stop().await;
}
