//! Long-poll sessions: lost answers, superseded polls, expiry, timeouts, disconnects and
//! overflow, as a client on a flaky network would meet them.

mod common;

use std::time::{Duration, Instant};

use common::{until, TestServer};
use serde_json::{json, Value};

async fn poll(s: &TestServer, query: &str) -> Value {
    let (status, v) = s.get_json(&format!("/poll?{query}")).await;
    assert_eq!(status, 200, "{query}: {v}");
    v
}

/// The query of the poll that follows `answer` on topic `t`: its client_id, session and cursor.
fn next_poll(answer: &Value) -> String {
    let (id, session) = (answer["client_id"].as_str().unwrap(), answer["session"].as_str().unwrap());
    format!("topic=t&client_id={id}&session={session}&cursor={}", answer["cursor"].as_str().unwrap())
}

fn datas(v: &Value) -> Vec<Value> {
    v["events"].as_array().unwrap().iter().map(|e| e["data"].clone()).collect()
}

#[tokio::test]
async fn a_lost_answer_is_given_again() {
    let s = TestServer::start().await;
    let first = poll(&s, "topic=t").await;
    let (id, c0) = (first["client_id"].as_str().unwrap(), first["cursor"].as_str().unwrap());
    let sess = first["session"].as_str().unwrap();
    s.publish_ok(json!([{"topic": "t", "data": 1}, {"topic": "t", "data": 2}])).await;
    let answer = poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={c0}")).await;
    assert_eq!(datas(&answer), [json!(1), json!(2)]);
    // That answer never arrived: the client asks again with its old cursor.
    let again = poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={c0}&timeout=0")).await;
    assert_eq!(datas(&again), [json!(1), json!(2)]);
    assert_eq!(again["cursor"], answer["cursor"]);
    s.publish_ok(json!({"topic": "t", "data": 3})).await;
    let next =
        poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={}", again["cursor"].as_str().unwrap())).await;
    assert_eq!(datas(&next), [json!(3)]);
    s.stop().await;
}

#[tokio::test]
async fn timeouts_from_the_query_or_the_header() {
    let s = TestServer::start().await;
    let q = next_poll(&poll(&s, "topic=t").await);
    let started = Instant::now();
    let empty = poll(&s, &format!("{q}&timeout=0.3")).await;
    assert!(datas(&empty).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "waited the timeout");
    let started = Instant::now();
    let res = s.http.get(s.url(&format!("/poll?{q}"))).header("x-long-poll-timeout", "300").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    for bad in ["timeout=soon", "timeout=-1", "throttle_ms=fast", "client_id=nope"] {
        let (status, v) = s.get_json(&format!("/poll?topic=t&{bad}")).await;
        assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_newer_poll_ends_a_waiting_one() {
    let s = TestServer::start().await;
    let q = next_poll(&poll(&s, "topic=t").await);
    let waiting = {
        let api = s.api.clone();
        let q = q.clone();
        tokio::spawn(async move { api.get_json(&format!("/poll?{q}&timeout=30")).await })
    };
    // Wait until the first poll is in place, then poll again.
    until("the first poll to wait", || async { s.metric("ssegate_clients{transport=\"long-poll\"}").await == 1.0 })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let second = {
        let api = s.api.clone();
        let q = q.clone();
        tokio::spawn(async move { api.get_json(&format!("/poll?{q}&timeout=30")).await })
    };
    let (status, v) = common::within("the superseded poll to answer", waiting).await.unwrap();
    assert_eq!(status, 200);
    assert!(datas(&v).is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    s.publish_ok(json!({"topic": "t", "data": "for the second"})).await;
    let (_, v) = common::within("the second poll", second).await.unwrap();
    assert_eq!(datas(&v), [json!("for the second")]);
    s.stop().await;
}

#[tokio::test]
async fn changing_topics_keeps_the_client_id_while_a_poll_still_waits() {
    let s = TestServer::start().await;
    let first = poll(&s, "topic=t").await;
    let id = first["client_id"].as_str().unwrap().to_owned();
    let q = next_poll(&first);
    // The client gave up on this poll (its fetch was aborted), but the gateway still holds it.
    let waiting = {
        let api = s.api.clone();
        let q = q.clone();
        tokio::spawn(async move { api.get_json(&format!("/poll?{q}&timeout=30")).await })
    };
    // The same session with one more topic, once the old poll is in (nothing outside shows a
    // poll waiting, hence the pause, as in a_newer_poll_ends_a_waiting_one).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changed = poll(&s, &format!("{q}&topic=u&timeout=0")).await;
    assert_eq!(changed["client_id"], id.as_str(), "{changed}");
    let (status, _) = common::within("the old poll to answer", waiting).await.unwrap();
    assert_eq!(status, 200);
    s.publish_ok(json!({"topic": "u", "data": "on the new topic"})).await;
    let (id2, session) = (changed["client_id"].as_str().unwrap(), changed["session"].as_str().unwrap());
    let cursor = changed["cursor"].as_str().unwrap();
    let next = poll(&s, &format!("topic=t&topic=u&client_id={id2}&session={session}&cursor={cursor}&timeout=5")).await;
    assert_eq!(datas(&next), [json!("on the new topic")]);
    assert_eq!(next["client_id"], id.as_str());
    s.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_and_come_back_from_history() {
    let s = TestServer::with(|c| {
        c.poll_session_ttl_ms = 200;
        c.heartbeat_ms = 100;
    })
    .await;
    let first = poll(&s, "topic=t").await;
    let id = first["client_id"].as_str().unwrap().to_owned();
    let sess = first["session"].as_str().unwrap().to_owned();
    until("the idle session to expire", || async { s.client_ids().await.is_empty() }).await;
    s.publish_ok(json!({"topic": "t", "data": "while away"})).await;
    // Back with its id and cursor: the same client, and what it missed.
    let back =
        poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={}", first["cursor"].as_str().unwrap())).await;
    assert_eq!(back["client_id"], id.as_str());
    assert_eq!(datas(&back), [json!("while away")]);
    s.stop().await;
}

#[tokio::test]
async fn a_disconnected_poll_client_comes_back_as_a_new_client() {
    let s = TestServer::start().await;
    let first = poll(&s, "topic=t").await;
    let id = first["client_id"].as_str().unwrap().to_owned();
    let sess = first["session"].as_str().unwrap().to_owned();
    let (status, _) = s.delete(&format!("/clients/{id}")).await;
    assert_eq!(status, 200);
    let back = poll(
        &s,
        &format!("topic=t&client_id={id}&session={sess}&cursor={}&timeout=0", first["cursor"].as_str().unwrap()),
    )
    .await;
    assert_ne!(back["client_id"], id.as_str());
    assert_eq!(s.client_ids().await, [back["client_id"].as_str().unwrap().to_owned()]);
    s.stop().await;
}

#[tokio::test]
async fn an_overflowed_session_resumes_without_loss_under_the_same_id() {
    let s = TestServer::with(|c| c.queue_size = 8).await;
    let first = poll(&s, "topic=t").await;
    let id = first["client_id"].as_str().unwrap().to_owned();
    let sess = first["session"].as_str().unwrap().to_owned();
    let batch: Vec<Value> = (0..50).map(|n| json!({"topic": "t", "data": n})).collect();
    s.publish_ok(json!(batch)).await;
    assert!(s.metric("ssegate_queue_overflows_total").await >= 1.0);
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    while got.len() < 50 {
        let v = poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={cursor}&timeout=5")).await;
        assert_eq!(v["client_id"], id.as_str(), "the same client comes back");
        got.extend(datas(&v).into_iter().map(|d| d.as_u64().unwrap()));
        cursor = v["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // And it still receives live events.
    s.publish_ok(json!({"topic": "t", "data": "live"})).await;
    let v = poll(&s, &format!("topic=t&client_id={id}&session={sess}&cursor={cursor}&timeout=5")).await;
    assert_eq!(datas(&v), [json!("live")]);
    s.stop().await;
}
