//! One set of scenarios run over SSE, WebSocket and long-poll: whatever transport a client
//! picks, it sees the same events in the same order.

mod common;

use common::{AnyClient, Got, Kind, TestServer, KINDS};
use serde_json::{json, Value};

/// What a user compares: topic, type and data of each event.
fn seen(events: &[Got]) -> Vec<(Option<String>, String, Value)> {
    events.iter().map(|g| (g.topic.clone(), g.event.clone(), g.data.clone())).collect()
}

async fn take(c: &mut AnyClient, n: usize) -> Vec<Got> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.next().await);
    }
    out
}

fn t(topic: Option<&str>, event: &str, data: Value) -> (Option<String>, String, Value) {
    (topic.map(str::to_owned), event.to_owned(), data)
}

#[tokio::test]
async fn typed_events_on_two_topics() {
    let s = TestServer::start().await;
    for kind in KINDS {
        let mut c = AnyClient::connect(&s, kind, &["sales", "stock"], None).await;
        s.publish_ok(json!([
            {"topic": "sales", "event": "order", "data": {"n": 1}},
            {"topic": "other", "event": "noise", "data": 0},
            {"topic": "stock", "event": "level", "data": [1, 2]},
            {"topic": "sales", "data": "plain"}
        ]))
        .await;
        assert_eq!(
            seen(&take(&mut c, 3).await),
            [
                t(Some("sales"), "order", json!({"n": 1})),
                t(Some("stock"), "level", json!([1, 2])),
                t(Some("sales"), "message", json!("plain"))
            ],
            "{kind:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_pattern_subscription() {
    let s = TestServer::start().await;
    for kind in KINDS {
        let mut c = AnyClient::connect(&s, kind, &["room/*"], None).await;
        for topic in ["room/1", "room/1/seat", "hall", "room/2"] {
            s.publish_ok(json!({"topic": topic, "event": "e", "data": topic})).await;
        }
        assert_eq!(
            seen(&take(&mut c, 2).await),
            [t(Some("room/1"), "e", json!("room/1")), t(Some("room/2"), "e", json!("room/2"))],
            "{kind:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_targeted_event_and_a_broadcast() {
    let s = TestServer::start().await;
    for kind in KINDS {
        let mut me = AnyClient::connect(&s, kind, &["dash"], None).await;
        let mut other = AnyClient::connect(&s, kind, &["dash"], None).await;
        s.publish_ok(json!({"clients": [me.client_id], "event": "refresh", "data": {"only": "me"}})).await;
        s.publish_ok(json!({"broadcast": true, "event": "announce", "data": "all"})).await;
        s.publish_ok(json!({"topic": "dash", "event": "tick", "data": 1})).await;
        let want_me = [
            t(None, "refresh", json!({"only": "me"})),
            t(None, "announce", json!("all")),
            t(Some("dash"), "tick", json!(1)),
        ];
        assert_eq!(seen(&take(&mut me, 3).await), want_me, "{kind:?}");
        assert_eq!(seen(&take(&mut other, 2).await), want_me[1..], "{kind:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn drop_and_resume_while_publishing_gives_every_event_once_in_order() {
    const N: u64 = 300;
    let s = TestServer::start().await;
    for kind in KINDS {
        let topic = format!("feed/{kind:?}");
        let mut c = AnyClient::connect(&s, kind, &[&topic], None).await;
        let publisher = {
            let api = s.api.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                for n in 0..N {
                    api.publish_ok(json!({"topic": topic, "event": "n", "data": n})).await;
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < N as usize {
            let ev = c.next().await;
            assert_eq!(ev.event, "n", "{kind:?}: {ev:?}");
            got.push(ev.data.as_u64().unwrap());
            if got.len() == 50 || got.len() == 200 {
                // Gone, then back from where it was (a long-poll client comes back without its
                // session, as after a page reload that kept the cursor).
                let position = c.position.clone();
                drop(c);
                c = AnyClient::connect(&s, kind, &[&topic], Some(&position)).await;
            }
        }
        publisher.await.unwrap();
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "{kind:?}: every event exactly once, in order");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_position_gets_a_reset_then_live_events() {
    let s = TestServer::start().await;
    for kind in KINDS {
        for position in ["bogus", "99999999999999-0"] {
            let mut c = AnyClient::connect(&s, kind, &["r"], Some(position)).await;
            let reset = c.next().await;
            assert_eq!(
                (reset.event.as_str(), &reset.data["reason"]),
                ("reset", &json!("unknown_event_id")),
                "{kind:?}"
            );
            s.publish_ok(json!({"topic": "r", "event": "after", "data": 1})).await;
            assert_eq!(seen(&take(&mut c, 1).await), [t(Some("r"), "after", json!(1))], "{kind:?}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_long_poll_session_keeps_targeted_events_between_polls() {
    let s = TestServer::start().await;
    let mut c = AnyClient::connect(&s, Kind::LongPoll, &["x"], None).await;
    // Not polling now: events for this client wait in its session.
    s.publish_ok(json!({"clients": [c.client_id], "event": "refresh", "data": 1})).await;
    s.publish_ok(json!({"topic": "x", "event": "e", "data": 2})).await;
    let (_, clients) = s.get_json("/clients").await;
    assert_eq!(clients["clients"][0]["transport"], "long-poll");
    assert_eq!(seen(&take(&mut c, 2).await), [t(None, "refresh", json!(1)), t(Some("x"), "e", json!(2))]);
    s.stop().await;
}
