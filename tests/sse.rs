//! `GET /stream` over real HTTP: welcome, filtering, targeting, broadcast, resume, reset,
//! heartbeats and multi-line data.

mod common;

use std::time::Duration;

use common::{datas, within, Sse, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn welcome_names_the_client_and_its_subscriptions() {
    let s = TestServer::start().await;
    let sse = Sse::connect(&s, "topic=dash/sales&topic=dash/*").await;
    assert!(uuid::Uuid::parse_str(&sse.client_id).is_ok(), "client_id is a UUID: {}", sse.client_id);
    assert_eq!(sse.welcome["topics"], json!(["dash/sales", "dash/*"]));
    assert_eq!(sse.welcome["heartbeat_ms"], 15_000);
    let (_, clients) = s.get_json("/clients").await;
    let me = &clients["clients"][0];
    assert_eq!(me["client_id"], sse.client_id.as_str());
    assert_eq!(me["transport"], "sse");
    assert_eq!(me["topics"], json!(["dash/sales", "dash/*"]));
    assert!(me["connected_at"].as_u64().unwrap() > 1_600_000_000_000);
    s.stop().await;
}

#[tokio::test]
async fn topics_and_patterns_filter_what_arrives() {
    let s = TestServer::start().await;
    let mut exact = Sse::connect(&s, "topic=a/b").await;
    let mut one = Sse::connect(&s, "topic=a/*").await;
    let mut many = Sse::connect(&s, "topic=a/**").await;
    let mut all = Sse::connect(&s, "topic=**").await;
    let mut both = Sse::connect(&s, "topic=a/b&topic=a/*").await;
    for topic in ["a/b", "a/b/c", "x", "a", "ab/c"] {
        s.publish_ok(json!({"topic": topic, "event": "t", "data": topic})).await;
    }
    s.publish_ok(json!({"broadcast": true, "event": "done", "data": null})).await;
    let seen = |events: Vec<eventsource_stream::Event>| -> Vec<String> {
        events.iter().filter(|e| e.event == "t").map(|e| serde_json::from_str::<String>(&e.data).unwrap()).collect()
    };
    assert_eq!(seen(exact.collect_until("done").await), ["a/b"]);
    assert_eq!(seen(one.collect_until("done").await), ["a/b"]);
    assert_eq!(seen(many.collect_until("done").await), ["a/b", "a/b/c"]);
    assert_eq!(seen(all.collect_until("done").await), ["a/b", "a/b/c", "x", "a", "ab/c"]);
    assert_eq!(seen(both.collect_until("done").await), ["a/b"], "two matching subscriptions still give one copy");
    s.stop().await;
}

#[tokio::test]
async fn backend_refreshes_one_dashboard_and_subscribes_it_server_side() {
    let s = TestServer::start().await;
    let mut a = Sse::connect(&s, "topic=dash").await;
    let mut b = Sse::connect(&s, "topic=dash").await;

    // "Refresh this dashboard": only client A.
    s.publish_ok(json!({"clients": [a.client_id], "event": "refresh", "data": {"why": "new data"}})).await;
    s.publish_ok(json!({"topic": "dash", "event": "tick", "data": 1})).await;
    let got = a.expect("refresh").await;
    assert_eq!(serde_json::from_str::<Value>(&got.data).unwrap()["why"], "new data");
    assert_eq!(a.expect("tick").await.data, "1");
    assert_eq!(b.expect("tick").await.data, "1", "B never sees A's refresh");

    // A targeted event with a topic still goes to exactly the listed clients.
    s.publish_ok(json!({"topic": "dash", "clients": [b.client_id], "event": "only-b", "data": 2})).await;
    s.publish_ok(json!({"topic": "dash", "event": "tick", "data": 3})).await;
    assert_eq!(b.expect("only-b").await.data, "2");
    assert_eq!(a.expect("tick").await.data, "3");
    b.expect("tick").await;

    // Subscribe B to orders from the backend: it receives orders at once, A does not.
    let (status, v) =
        s.post_raw(&format!("/clients/{}/subscribe", b.client_id), json!({"topics": ["orders"]}).to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["topics"], json!(["dash", "orders"]));
    s.publish_ok(json!({"topic": "orders", "event": "order", "data": 4})).await;
    s.publish_ok(json!({"topic": "dash", "event": "tick", "data": 5})).await;
    assert_eq!(b.expect("order").await.data, "4");
    b.expect("tick").await;
    assert_eq!(a.expect("tick").await.data, "5");
    let (_, topics) = s.get_json("/topics").await;
    assert!(
        topics["topics"].as_array().unwrap().iter().any(|t| t["topic"] == "dash" && t["subscribers"] == 2),
        "{topics}"
    );

    // Unsubscribe it again.
    let (status, v) =
        s.post_raw(&format!("/clients/{}/unsubscribe", b.client_id), json!({"topics": ["orders"]}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(v["topics"], json!(["dash"]));
    s.publish_ok(json!({"topic": "orders", "event": "order", "data": 6})).await;
    s.publish_ok(json!({"topic": "dash", "event": "tick", "data": 7})).await;
    assert_eq!(b.expect("tick").await.data, "7");

    // Disconnect B: its stream ends and it leaves the client list.
    let (status, _) = s.delete(&format!("/clients/{}", b.client_id)).await;
    assert_eq!(status, 200);
    assert!(within("B's stream to end", b.next()).await.is_none());
    assert_eq!(s.client_ids().await, [a.client_id.clone()]);
    common::until("the gauge to count one client", || async {
        s.metric("ssegate_clients{transport=\"sse\"}").await == 1.0
    })
    .await;
    a.expect("tick").await;
    s.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_client_whatever_it_subscribes_to() {
    let s = TestServer::start().await;
    let mut clients =
        vec![Sse::connect(&s, "").await, Sse::connect(&s, "topic=x").await, Sse::connect(&s, "topic=**").await];
    s.publish_ok(json!({"broadcast": true, "event": "refresh", "data": {"all": true}})).await;
    for c in &mut clients {
        assert_eq!(c.expect("refresh").await.data, r#"{"all":true}"#);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_client_dropped_while_publishing_resumes_with_every_event_once_in_order() {
    const N: u64 = 1_000;
    let s = TestServer::start().await;
    let mut sse = Sse::connect(&s, "topic=feed").await;
    let publisher = {
        let api = s.api.clone();
        tokio::spawn(async move {
            for n in 0..N {
                api.publish_ok(json!({"topic": "feed", "event": "n", "data": n})).await;
            }
        })
    };
    let mut got: Vec<u64> = Vec::new();
    let mut drops = 0;
    while got.len() < N as usize {
        let ev = sse.next().await.expect("the stream stays open");
        if ev.event != "n" {
            continue;
        }
        got.push(ev.data.parse().unwrap());
        // Drop the connection twice mid-stream and come back with Last-Event-ID, as EventSource does.
        if (got.len() == 100 || got.len() == 600) && drops < 2 {
            drops += 1;
            let last = sse.last_id.clone();
            drop(sse);
            tokio::time::sleep(Duration::from_millis(50)).await;
            sse = Sse::connect_with(&s, "topic=feed", Some(&last)).await;
        }
    }
    publisher.await.unwrap();
    assert_eq!(drops, 2);
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every event exactly once, in order");
    assert!(s.metric("ssegate_resumes_total").await >= 2.0);
    s.stop().await;
}

#[tokio::test]
async fn the_welcome_id_lets_a_client_resume_before_its_first_event() {
    let s = TestServer::start().await;
    let sse = Sse::connect(&s, "topic=t").await;
    let position = sse.last_id.clone();
    assert!(!position.is_empty(), "the welcome carries an id");
    drop(sse);
    s.publish_ok(json!([{"topic": "t", "data": 1}, {"topic": "t", "data": 2}])).await;
    let mut back = Sse::connect_with(&s, "topic=t", Some(&position)).await;
    assert_eq!(back.expect("message").await.data, "1");
    assert_eq!(back.expect("message").await.data, "2");
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_or_expired_id_gets_a_reset_then_live_events() {
    let s = TestServer::with(|c| c.history_size = 5).await;
    let ids = s.publish_ok(json!({"topic": "t", "data": 0})).await;
    for n in 1..20 {
        s.publish_ok(json!({"topic": "t", "data": n})).await;
    }

    let mut unknown = Sse::connect_with(&s, "topic=t", Some("not-an-id")).await;
    let reset = unknown.expect("reset").await;
    assert_eq!(serde_json::from_str::<Value>(&reset.data).unwrap()["reason"], "unknown_event_id");
    assert!(!reset.id.is_empty(), "the reset moves the client's position to now");

    // The query form, for EventSource polyfills, with an id from the future.
    let mut future = Sse::connect(&s, "topic=t&lastEventId=99999999999999-0").await;
    assert_eq!(
        serde_json::from_str::<Value>(&future.expect("reset").await.data).unwrap()["reason"],
        "unknown_event_id"
    );

    let mut old = Sse::connect_with(&s, "topic=t", Some(&ids[0])).await;
    assert_eq!(serde_json::from_str::<Value>(&old.expect("reset").await.data).unwrap()["reason"], "history_expired");

    s.publish_ok(json!({"topic": "t", "data": "live"})).await;
    for c in [&mut unknown, &mut future, &mut old] {
        assert_eq!(c.expect("message").await.data, "\"live\"");
    }
    assert!(s.metric("ssegate_resets_total").await >= 3.0);
    s.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_when_nothing_else_is_sent() {
    let s = TestServer::with(|c| c.heartbeat_ms = 100).await;
    let res = s.http.get(s.url("/stream?topic=quiet")).send().await.unwrap();
    let mut body = res.bytes_stream();
    let mut text = String::new();
    within("two heartbeats", async {
        while text.matches(": hb\n\n").count() < 2 {
            let chunk = body.next().await.expect("stream open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    assert!(text.contains("\"heartbeat_ms\":100"));
    s.stop().await;
}

#[tokio::test]
async fn multi_line_data_is_split_over_data_lines_and_joined_back() {
    let s = TestServer::start().await;
    let mut sse = Sse::connect(&s, "topic=t").await;
    let raw_client = s.http.get(s.url("/stream?topic=t")).send().await.unwrap();
    let pretty = "{\n  \"text\": \"two\\nlines\",\n  \"n\": [\n    1,\n    2\n  ]\n}";
    let body = format!(r#"{{"topic":"t","event":"doc","data":{pretty}}}"#);
    let (status, _) = s.post_raw("/publish", body).await;
    assert_eq!(status, 200);
    let ev = sse.expect("doc").await;
    assert_eq!(ev.data, pretty, "the parser joins the data lines back into the JSON text");
    assert_eq!(datas(&[ev])[0]["text"], "two\nlines");

    let mut bytes = raw_client.bytes_stream();
    let mut text = String::new();
    within("the raw frame", async {
        while !text.contains("event: doc") || !text.contains("\n\n") || !text.ends_with("}\n\n") {
            text.push_str(std::str::from_utf8(&bytes.next().await.unwrap().unwrap()).unwrap());
        }
    })
    .await;
    assert!(text.contains("data: {\ndata:   \"text\": \"two\\nlines\",\ndata:   \"n\": [\n"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn envelope_mode_sends_the_whole_event() {
    let s = TestServer::start().await;
    let mut sse = Sse::connect(&s, "topic=a/*&envelope=1").await;
    let ids = s.publish_ok(json!({"topic": "a/b", "event": "e", "data": {"k": 1}})).await;
    let ev = sse.expect("e").await;
    let env: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(env["id"], ids[0].as_str());
    assert_eq!(ev.id, ids[0]);
    assert_eq!(env["topic"], "a/b");
    assert_eq!(env["event"], "e");
    assert_eq!(env["data"], json!({"k": 1}));
    assert!(env["ts"].as_u64().unwrap() > 1_600_000_000_000);
    s.stop().await;
}

#[tokio::test]
async fn responses_carry_the_stream_headers() {
    let s = TestServer::start().await;
    let res = s.http.get(s.url("/stream")).header("origin", "http://example.test").send().await.unwrap();
    let h = res.headers();
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(h["access-control-allow-origin"], "*");
    drop(res);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_come_back() {
    let s = TestServer::start().await;
    let res = s.http.get(s.url("/stream?topic=t")).send().await.unwrap();
    let mut body = res.bytes_stream();
    let first = within("the prelude", body.next()).await.unwrap().unwrap();
    assert!(first.starts_with(b"retry: "));
    let stop = tokio::spawn(s.stop());
    let mut rest = Vec::new();
    within("the stream to end", async {
        while let Some(Ok(chunk)) = body.next().await {
            rest.extend_from_slice(&chunk);
        }
    })
    .await;
    assert!(String::from_utf8(rest).unwrap().contains("retry: 2000"));
    within("shutdown", stop).await.unwrap();
}
