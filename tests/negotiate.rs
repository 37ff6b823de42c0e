//! `GET /negotiate`: every row of the decision matrix, the client's own transport list, and
//! transports disabled on the server.

mod common;

use common::TestServer;
use serde_json::{json, Value};

async fn ask(s: &TestServer, query: &str) -> (u16, Value) {
    let (status, v) = s.get_json(&format!("/negotiate?{query}")).await;
    (status.as_u16(), v)
}

#[tokio::test]
async fn the_decision_matrix() {
    let s = TestServer::start().await;
    // (client flags, transport, fallbacks)
    let rows: &[(&str, &str, &[&str])] = &[
        ("bidirectional", "ws", &["sse", "long-poll", "poll"]),
        ("bidirectional=true&realtime=1&low_latency", "ws", &["sse", "long-poll", "poll"]),
        ("realtime&low_latency", "sse", &["ws", "long-poll", "poll"]),
        ("realtime=1&low_latency=1&server_push=1", "sse", &["ws", "long-poll", "poll"]),
        ("realtime=true&low_latency=true&server_push=false", "ws", &["sse", "long-poll", "poll"]),
        ("legacy", "long-poll", &["poll"]),
        ("legacy=1&realtime=1", "long-poll", &["poll"]),
        ("realtime", "sse", &["ws", "long-poll", "poll"]),
        ("", "sse", &["ws", "long-poll", "poll"]),
        ("bidirectional=0&legacy=0", "sse", &["ws", "long-poll", "poll"]),
        // What the client supports narrows the choice.
        ("bidirectional&transports=long-poll,poll", "long-poll", &["poll"]),
        ("realtime&low_latency&transports=ws", "ws", &[]),
        ("transports=poll", "poll", &[]),
    ];
    for (query, transport, fallbacks) in rows {
        let (status, v) = ask(&s, query).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(v["transport"], *transport, "{query}: {v}");
        assert_eq!(v["fallbacks"], json!(fallbacks), "{query}: {v}");
    }
    let (_, v) = ask(&s, "topic=a/b&topic=c").await;
    assert_eq!(v["url"], "/stream?topic=a%2Fb&topic=c");
    let (_, v) = ask(&s, "bidirectional").await;
    assert_eq!(v["url"], "/ws");
    let (_, v) = ask(&s, "legacy&topic=x").await;
    assert_eq!(v["url"], "/poll?topic=x");
    s.stop().await;
}

#[tokio::test]
async fn disabled_transports_are_skipped() {
    let s = TestServer::with(|c| c.transports = "long-poll,poll".parse_transports()).await;
    for (query, transport, fallbacks) in [
        ("bidirectional", "long-poll", json!(["poll"])),
        ("realtime&low_latency", "long-poll", json!(["poll"])),
        ("", "long-poll", json!(["poll"])),
    ] {
        let (status, v) = ask(&s, query).await;
        assert_eq!(status, 200);
        assert_eq!((&v["transport"], &v["fallbacks"]), (&json!(transport), &fallbacks), "{query}");
    }
    let (status, v) = ask(&s, "transports=sse,ws").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("no_transport")));
    // The disabled transports themselves answer 404.
    for path in ["/stream", "/ws"] {
        let (status, v) = s.get_json(path).await;
        assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (404, Some("transport_disabled")), "{path}");
    }
    s.stop().await;

    let s = TestServer::with(|c| c.transports = "sse,poll".parse_transports()).await;
    let (_, v) = ask(&s, "bidirectional").await;
    assert_eq!((&v["transport"], &v["fallbacks"]), (&json!("sse"), &json!(["poll"])));
    let (_, v) = ask(&s, "legacy").await;
    assert_eq!((&v["transport"], &v["fallbacks"]), (&json!("poll"), &json!([])));
    let (status, v) = s.get_json("/poll").await;
    assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (404, Some("transport_disabled")));
    s.stop().await;
}

#[tokio::test]
async fn bad_flags_are_refused() {
    let s = TestServer::start().await;
    for query in ["realtime=maybe", "transports=sse,pigeon"] {
        let (status, v) = ask(&s, query).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{query}");
    }
    s.stop().await;
}

trait ParseTransports {
    fn parse_transports(&self) -> ssegate::config::Transports;
}

impl ParseTransports for str {
    fn parse_transports(&self) -> ssegate::config::Transports {
        ssegate::Config::from_sources(["serve", "--transports", self], &Default::default()).unwrap().transports
    }
}
