//! Bounded work per request: `--max-topics-per-client` on every transport and endpoint that
//! names topics (`400 too_many_topics`, or an `error` frame on a WebSocket that stays open), a
//! huge `subscribe` frame that leaves other clients' events on time, and a client with many
//! wildcard patterns that changes nothing for the others; with a Redis cluster, the node holding a
//! client refuses a server-side subscribe sent through another node.

mod common;

use std::time::Duration;

use common::{urlencode, within, ws_connect, ws_next, ChildServer, Redis, Sse, TestServer, WsStream};
use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// The limit the small servers run with.
const LIMIT: usize = 8;

async fn small_server() -> TestServer {
    TestServer::with(|c| c.max_topics_per_client = LIMIT as u64).await
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/{i}")).collect()
}

fn query(topics: &[String]) -> String {
    topics.iter().map(|t| format!("topic={}", urlencode(t))).collect::<Vec<_>>().join("&")
}

fn assert_too_many(status: StatusCode, body: &Value, what: &str) {
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("too_many_topics")), "{what}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
}

async fn send(ws: &mut WsStream, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send a frame");
}

/// The next frame that is not an event (acks and errors), skipping events.
async fn next_reply(ws: &mut WsStream) -> Value {
    loop {
        let frame = ws_next(ws).await.expect("the websocket stays open");
        if frame["type"] != "event" {
            return frame;
        }
    }
}

/// Opens a WebSocket and reads its welcome; returns it with its client id.
async fn ws_client(s: &TestServer, path: &str) -> (WsStream, String) {
    let mut ws = ws_connect(s, path).await;
    let welcome = ws_next(&mut ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    (ws, welcome["client_id"].as_str().unwrap().to_owned())
}

async fn topics_of(s: &TestServer, client_id: &str) -> Value {
    let (_, v) = s.get_json("/clients").await;
    let me = v["clients"].as_array().unwrap().iter().find(|c| c["client_id"] == client_id).cloned();
    me.expect("the client is listed")["topics"].clone()
}

#[tokio::test]
async fn urls_naming_too_many_topics_are_refused_on_every_transport() {
    let s = small_server().await;
    let ok = query(&names("t", LIMIT));
    let over = query(&names("t", LIMIT + 1));

    // At the limit, every transport takes it.
    let sse = Sse::connect(&s, &ok).await;
    assert_eq!(sse.welcome["topics"].as_array().unwrap().len(), LIMIT);
    let (status, v) = s.get_json(&format!("/poll?{ok}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_ws, _) = ws_client(&s, &format!("/ws?{ok}")).await;

    for path in ["/stream", "/poll", "/ws"] {
        let (status, v) = s.get_json(&format!("{path}?{over}")).await;
        assert_too_many(status, &v, path);
    }
    // A WebSocket client is refused before the upgrade, with the same answer.
    let url = format!("{}/ws?{over}", s.base.replacen("http://", "ws://", 1));
    match within("the refused upgrade", tokio_tungstenite::connect_async(url)).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            if let Some(body) = res.body().as_deref().filter(|b| !b.is_empty()) {
                let v: Value = serde_json::from_slice(body).expect("a JSON error");
                assert_eq!(v["error"]["code"], "too_many_topics");
            }
        }
        other => panic!("expected a 400 answer to the upgrade, got {:?}", other.map(|(_, r)| r.status())),
    }
    // Nothing was registered by the refused requests: the three accepted clients only.
    assert_eq!(s.client_ids().await.len(), 3);
    drop(sse);
    s.stop().await;
}

#[tokio::test]
async fn a_websocket_subscribe_past_the_limit_gets_an_error_and_keeps_its_subscriptions() {
    let s = small_server().await;
    let (mut ws, id) = ws_client(&s, "/ws?topic=keep").await;

    // One frame naming too many.
    send(&mut ws, &json!({"type": "subscribe", "topics": names("t", LIMIT + 1), "ref": "big"})).await;
    let err = next_reply(&mut ws).await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("too_many_topics")), "{err}");
    assert_eq!(err["ref"], "big");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Frames within the limit each, but past it in total: the one that crosses it is refused whole.
    send(&mut ws, &json!({"type": "subscribe", "topics": names("t", LIMIT - 2), "ref": 1})).await;
    assert_eq!(next_reply(&mut ws).await, json!({"type": "ack", "ref": 1}));
    send(&mut ws, &json!({"type": "subscribe", "topics": ["x", "t/0", "y"], "ref": 2})).await;
    let err = next_reply(&mut ws).await;
    assert_eq!((err["code"].as_str(), &err["ref"]), (Some("too_many_topics"), &json!(2)), "{err}");
    let mut expected = vec!["keep".to_owned()];
    expected.extend(names("t", LIMIT - 2));
    assert_eq!(topics_of(&s, &id).await, json!(expected), "nothing of the refused frame was added");

    // Still open, still subscribed as before, and one more fits.
    send(&mut ws, &json!({"type": "subscribe", "topics": ["x", "t/0"], "ref": 3})).await;
    assert_eq!(next_reply(&mut ws).await, json!({"type": "ack", "ref": 3}));
    s.publish_ok(json!([{"topic": "y", "data": 0}, {"topic": "keep", "event": "kept", "data": 1}])).await;
    let ev = ws_next(&mut ws).await.unwrap();
    assert_eq!((ev["type"].as_str(), ev["event"].as_str()), (Some("event"), Some("kept")), "y was never added");
    // Unsubscribing frees room, in order.
    send(&mut ws, &json!({"type": "unsubscribe", "topics": ["t/1", "keep"], "ref": 4})).await;
    assert_eq!(next_reply(&mut ws).await, json!({"type": "ack", "ref": 4}));
    send(&mut ws, &json!({"type": "subscribe", "topics": ["z"], "ref": 5})).await;
    assert_eq!(next_reply(&mut ws).await, json!({"type": "ack", "ref": 5}));
    let mut expected: Vec<String> = names("t", LIMIT - 2).into_iter().filter(|t| t != "t/1").collect();
    expected.extend(["x".to_owned(), "z".to_owned()]);
    assert_eq!(topics_of(&s, &id).await, json!(expected));
    s.stop().await;
}

#[tokio::test]
async fn server_side_subscribe_past_the_limit_is_refused() {
    let s = small_server().await;
    let mut sse = Sse::connect(&s, "topic=a&topic=b").await;
    let path = format!("/clients/{}/subscribe", sse.client_id);

    let (status, v) = s.post_raw(&path, json!({"topics": names("t", LIMIT + 1)}).to_string()).await;
    assert_too_many(status, &v, "one request over the limit");
    let (status, v) = s.post_raw(&path, json!({"topics": names("t", LIMIT - 1)}).to_string()).await;
    assert_too_many(status, &v, "a request that would take the client past the limit");
    assert_eq!(topics_of(&s, &sse.client_id).await, json!(["a", "b"]), "refused whole");

    let (status, v) = s.post_raw(&path, json!({"topics": names("t", LIMIT - 2)}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["topics"].as_array().unwrap().len(), LIMIT);
    // Unsubscribing takes a list too, with the same cap per request.
    let unsub = format!("/clients/{}/unsubscribe", sse.client_id);
    let (status, v) = s.post_raw(&unsub, json!({"topics": names("t", LIMIT + 1)}).to_string()).await;
    assert_too_many(status, &v, "an unsubscribe naming too many");

    s.publish_ok(json!({"topic": "t/3", "event": "added", "data": 1})).await;
    assert_eq!(sse.expect("added").await.data, "1", "the accepted subscription is in place");
    s.stop().await;
}

#[tokio::test]
async fn a_publish_item_naming_too_many_topics_publishes_nothing() {
    let s = small_server().await;
    let mut sse = Sse::connect(&s, "topic=t/0&topic=marker").await;
    let (status, v) = s.publish(&json!({"topics": names("t", LIMIT + 1), "event": "x", "data": 1})).await;
    assert_too_many(status, &v, "one item");
    let (status, v) = s
        .publish(&json!([{"topic": "t/0", "event": "x", "data": 0}, {"topics": names("t", LIMIT + 1), "data": 1}]))
        .await;
    assert_too_many(status, &v, "the second item of an array");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("item 1:"), "{v}");
    s.publish_ok(json!({"topics": names("t", LIMIT), "event": "fits", "data": 2})).await;
    s.publish_ok(json!({"topic": "marker", "event": "marker", "data": 3})).await;
    assert_eq!(sse.next().await.unwrap().event, "fits", "nothing of the refused requests arrived");
    assert_eq!(sse.next().await.unwrap().event, "marker");
    s.stop().await;
}

#[tokio::test]
async fn huge_subscribe_frames_are_refused_at_once_and_others_keep_receiving() {
    // The default limit, and a subscribe frame the size of the attack (50,000 topics, ~0.5 MB).
    let s = TestServer::start().await;
    assert_eq!(s.get_json("/healthz").await.0, StatusCode::OK);
    let mut victim = Sse::connect(&s, "topic=victim").await;
    let (mut attacker, attacker_id) = ws_client(&s, "/ws?topic=mine").await;
    let frame = json!({"type": "subscribe", "topics": names("flood", 50_000), "ref": "huge"});

    for round in 0..4 {
        send(&mut attacker, &frame).await;
        let ids = s.publish_ok(json!({"topic": "victim", "event": "tick", "data": round})).await;
        // A generous bound: the hub is not frozen by the frame.
        let ev = tokio::time::timeout(Duration::from_secs(2), victim.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the victim's event took more than 2 s"))
            .expect("the victim's stream stays open");
        assert_eq!((ev.event.as_str(), ev.id.as_str()), ("tick", ids[0].as_str()));
        let err = next_reply(&mut attacker).await;
        assert_eq!((err["code"].as_str(), &err["ref"]), (Some("too_many_topics"), &json!("huge")), "{err}");
    }
    // The attacker is still connected, with the subscription it had.
    assert_eq!(topics_of(&s, &attacker_id).await, json!(["mine"]));
    send(&mut attacker, &json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(next_reply(&mut attacker).await, json!({"type": "ack", "ref": "p"}));
    s.publish_ok(json!({"topic": "mine", "event": "still", "data": 1})).await;
    assert_eq!(ws_next(&mut attacker).await.unwrap()["event"], "still");
    s.stop().await;
}

#[tokio::test]
async fn many_wildcard_patterns_of_one_client_change_nothing_for_the_others() {
    let s = TestServer::with(|c| c.max_topics_per_client = 2_000).await;
    let mut victim = Sse::connect(&s, "topic=a/*&topic=b/**&topic=w7/x").await;
    // 1,000 distinct wildcard patterns, some overlapping the victim's topics.
    let heavy: Vec<String> = (0..250)
        .flat_map(|i| [format!("w{i}/*"), format!("w{i}/**"), format!("v/{i}/*"), format!("v/{i}/x/**")])
        .collect();
    let (mut ws, id) = ws_client(&s, "/ws").await;
    send(&mut ws, &json!({"type": "subscribe", "topics": heavy, "ref": 1})).await;
    assert_eq!(next_reply(&mut ws).await, json!({"type": "ack", "ref": 1}));
    assert_eq!(topics_of(&s, &id).await.as_array().unwrap().len(), 1_000);

    let topics = ["a/1", "a/1/2", "b/1/2", "w7/x", "w7/x/y", "v/3/z", "v/3/x/y/z", "v/3", "w250/x", "zzz"];
    for t in topics {
        s.publish_ok(json!({"topic": t, "event": "t", "data": t})).await;
    }
    s.publish_ok(json!({"broadcast": true, "event": "done", "data": null})).await;

    let seen: Vec<String> = victim
        .collect_until("done")
        .await
        .iter()
        .filter(|e| e.event == "t")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(seen, ["a/1", "b/1/2", "w7/x"]);

    let mut heavy_seen: Vec<String> = Vec::new();
    loop {
        let frame = ws_next(&mut ws).await.expect("the websocket stays open");
        match frame["event"].as_str() {
            Some("done") => break,
            Some("t") => heavy_seen.push(frame["topic"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert_eq!(heavy_seen, ["w7/x", "w7/x/y", "v/3/z", "v/3/x/y/z"], "each once, however many patterns match");

    let (_, listed) = s.get_json("/topics").await;
    let count = |name: &str| {
        listed["topics"].as_array().unwrap().iter().find(|t| t["topic"] == name).map(|t| t["subscribers"].clone())
    };
    assert_eq!(count("w7/**"), Some(json!(1)));
    assert_eq!(count("a/*"), Some(json!(1)));
    assert_eq!(listed["topics"].as_array().unwrap().len(), 1_003);
    s.stop().await;
}

#[tokio::test]
async fn the_node_holding_a_client_enforces_the_limit_for_another_node() {
    let redis = Redis::start().await;
    let url = redis.url();
    let limit = LIMIT.to_string();
    let args = ["--broker", url.as_str(), "--max-topics-per-client", limit.as_str()];
    let (a, b) = futures::join!(ChildServer::start(&args), ChildServer::start(&args));
    for node in [&a, &b] {
        common::until("the node to be ready", || async { node.get_json("/readyz").await.0 == StatusCode::OK }).await;
    }
    let mut target = Sse::connect(&b, "topic=home").await;
    let id = target.client_id.clone();
    let path = format!("/clients/{id}/subscribe");

    // Within the per-request cap, so only node B, which holds the client, can tell it is too many.
    let (status, v) = a.post_raw(&path, json!({"topics": names("t", LIMIT)}).to_string()).await;
    assert_too_many(status, &v, "through node A, past the client's total on node B");
    let (_, listed) = b.get_json("/clients").await;
    assert_eq!(listed["clients"][0]["topics"], json!(["home"]), "refused whole");

    let (status, v) = a.post_raw(&path, json!({"topics": names("t", LIMIT - 1)}).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["topics"].as_array().unwrap().len(), LIMIT);
    a.publish_ok(json!({"topic": "t/2", "event": "added", "data": 1})).await;
    assert_eq!(target.expect("added").await.data, "1");
    drop((a, b));
}
