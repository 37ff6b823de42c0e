//! Dashboard state: retained topics, snapshots, patches, conflation and throttling, seen by
//! version-aware clients over SSE and WebSocket (and long-poll where it differs).

mod common;

use std::time::{Duration, Instant};

use common::{within, AnyClient, ChildServer, Kind, StateView, TestServer};
use serde_json::{json, Value};

async fn gateway_state(api: &common::Api, topic: &str) -> (u64, Value) {
    let (status, v) = api.get_json(&format!("/snapshot?topic={}", common::urlencode(topic))).await;
    assert_eq!(status, 200, "{v}");
    (v["version"].as_u64().unwrap(), v["state"].clone())
}

/// Reads `client`'s state events into `view` until it reaches `version`.
async fn follow(client: &mut AnyClient, view: &mut StateView, version: u64) {
    within("the client to catch up", async {
        while view.version < version {
            let got = client.next().await;
            view.apply(&got.event, &got.data);
        }
    })
    .await;
}

#[tokio::test]
async fn a_late_joiner_gets_the_snapshot_then_only_newer_patches() {
    let s = TestServer::start().await;
    s.publish_ok(json!({"topic": "dash", "retain": true, "data": {"orders": 1, "customers": 5}})).await;
    s.publish_ok(json!({"topic": "dash", "patch": {"orders": 2}})).await;
    for kind in [Kind::Sse, Kind::Ws, Kind::LongPoll] {
        let mut late = AnyClient::connect(&s, kind, &["dash"], None).await;
        let first = late.next().await;
        assert_eq!(first.event, "snapshot", "{kind:?}");
        let (version, state) = gateway_state(&s, "dash").await;
        assert_eq!(first.data, json!({"topic": "dash", "version": version, "state": state}), "{kind:?}");

        let ids = s
            .publish_ok(json!({"topic": "dash", "json_patch": [{"op": "replace", "path": "/customers", "value": 6}]}))
            .await;
        let next = late.next().await;
        assert_eq!(next.event, "patch", "{kind:?}");
        assert_eq!(next.id, ids[0], "{kind:?}");
        assert_eq!(
            next.data,
            json!({"topic": "dash", "version": version + 1, "json_patch": [{"op": "replace", "path": "/customers", "value": 6}]}),
            "{kind:?}"
        );
    }
    let (_, topics) = s.get_json("/topics").await;
    let dash = topics["topics"].as_array().unwrap().iter().find(|t| t["topic"] == "dash").unwrap().clone();
    assert_eq!(dash["version"], 5);
    s.stop().await;
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn random_change(rng: &mut Lcg, topic: &str) -> Value {
    let key = format!("k{}", rng.next(8));
    match rng.next(4) {
        0 => json!({"topic": topic, "patch": {key: rng.next(1000)}}),
        1 => json!({"topic": topic, "patch": {key: null, "nested": {format!("n{}", rng.next(3)): rng.next(10)}}}),
        2 => json!({"topic": topic, "json_patch": [{"op": "add", "path": format!("/{key}"), "value": [rng.next(5)]}]}),
        // Fails (409) when another publisher changed the key first: such a patch changes nothing.
        _ => json!({"topic": topic, "json_patch": [
            {"op": "test", "path": format!("/{key}"), "value": rng.next(3)},
            {"op": "add", "path": format!("/{key}"), "value": "tested"}
        ]}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_applied_to_the_snapshot_gives_the_gateways_state() {
    const PUBLISHERS: u64 = 4;
    const CHANGES: u64 = 250;
    let s = TestServer::start().await;
    let topics = ["board/a", "board/b"];
    for t in topics {
        s.publish_ok(json!({"topic": t, "retain": true, "data": {}})).await;
    }
    let mut sse = AnyClient::connect(&s, Kind::Sse, &["board/*"], None).await;
    let mut ws = AnyClient::connect(&s, Kind::Ws, &["board/a", "board/b"], None).await;

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let api = s.api.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(p + 1);
                let mut conflicts = 0;
                for i in 0..CHANGES {
                    let topic = topics[(i % 2) as usize];
                    let (status, body) = api.publish(&random_change(&mut rng, topic)).await;
                    match status.as_u16() {
                        200 => {}
                        409 => {
                            assert_eq!(body["error"]["code"], "patch_failed");
                            conflicts += 1;
                        }
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for p in publishers {
        conflicts += p.await.unwrap();
    }
    println!("{} changes published, {conflicts} refused with 409", PUBLISHERS * CHANGES);

    for client in [&mut sse, &mut ws] {
        let mut views = [StateView::default(), StateView::default()];
        let targets = [gateway_state(&s, topics[0]).await, gateway_state(&s, topics[1]).await];
        within("both topics to catch up", async {
            while views.iter().zip(&targets).any(|(v, (version, _))| v.version < *version) {
                let got = client.next().await;
                let i = topics.iter().position(|t| Some(*t) == got.topic.as_deref()).expect("a board topic");
                views[i].apply(&got.event, &got.data);
            }
        })
        .await;
        for (view, (version, state)) in views.iter().zip(&targets) {
            assert_eq!((view.version, &view.state), (*version, state));
            assert_eq!(view.snapshots, 1, "one snapshot, then only patches");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_failing_test_op_changes_nothing_and_answers_409() {
    let s = TestServer::start().await;
    let mut watcher = AnyClient::connect(&s, Kind::Sse, &["t"], None).await;
    s.publish_ok(json!({"topic": "t", "retain": true, "data": {"n": 1}})).await;
    assert_eq!(watcher.next().await.event, "snapshot");
    let (status, body) = s
        .publish(&json!([
            {"topic": "t", "patch": {"m": 2}},
            {"topic": "t", "json_patch": [{"op": "replace", "path": "/n", "value": 5}, {"op": "test", "path": "/n", "value": 1}]}
        ]))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "patch_failed");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("item 1:"), "{body}");
    assert_eq!(gateway_state(&s, "t").await, (1, json!({"n": 1})));

    // Bad state requests are refused as bad input.
    for bad in [
        json!({"topic": "t", "retain": true}),
        json!({"topic": "t", "patch": {"a": 1}, "json_patch": []}),
        json!({"topic": "t", "patch": {"a": 1}, "data": 1}),
        json!({"topic": "t", "json_patch": [{"op": "dance"}]}),
        json!({"clients": [uuid::Uuid::new_v4()], "patch": {"a": 1}}),
        json!({"topic": "t", "event": "metrics", "retain": true, "data": 1}),
    ] {
        let (status, body) = s.publish(&bad).await;
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }
    let ids = s.publish_ok(json!({"topic": "t", "patch": {"ok": true}})).await;
    let next = watcher.next().await;
    assert_eq!((next.event.as_str(), next.id.as_str()), ("patch", ids[0].as_str()), "nothing else reached the watcher");
    assert_eq!(next.data["version"], 2);
    s.stop().await;
}

#[tokio::test]
async fn snapshot_polling_with_etag_and_304() {
    let s = TestServer::with(|c| c.poll_interval_ms = 1500).await;
    let (status, v) = s.get_json("/snapshot?topic=none").await;
    assert_eq!((status.as_u16(), v["error"]["code"].as_str()), (404, Some("unknown_topic")));
    let ids = s.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"x": 1}})).await;
    let res = s.http.get(s.url("/snapshot?topic=kpi")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.headers()["x-poll-interval"], "1500");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"topic": "kpi", "version": 1, "state": {"x": 1}, "cursor": ids[0]}));
    let again = s.http.get(s.url("/snapshot?topic=kpi")).header("if-none-match", "\"1\"").send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    s.publish_ok(json!({"topic": "kpi", "patch": {"x": 2}})).await;
    let changed = s.http.get(s.url("/snapshot?topic=kpi")).header("if-none-match", "\"1\"").send().await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.headers()["etag"], "\"2\"");
    assert_eq!(changed.json::<Value>().await.unwrap()["state"], json!({"x": 2}));
    s.stop().await;
}

#[tokio::test]
async fn a_client_resuming_from_before_history_gets_a_snapshot_not_a_reset() {
    let s = TestServer::with(|c| c.history_size = 10).await;
    s.publish_ok(json!({"topic": "s", "retain": true, "data": {"v": 0}})).await;
    for kind in [Kind::Sse, Kind::Ws, Kind::LongPoll] {
        let mut c = AnyClient::connect(&s, kind, &["s"], None).await;
        let mut view = StateView::default();
        let first = c.next().await;
        view.apply(&first.event, &first.data);
        let position = c.position.clone();
        drop(c);
        for n in 0..30 {
            s.publish_ok(json!({"topic": "s", "patch": {"v": n}})).await;
        }
        let mut back = AnyClient::connect(&s, kind, &["s"], Some(&position)).await;
        let got = back.next().await;
        assert_eq!(got.event, "snapshot", "{kind:?}: no reset when every topic has state");
        view.apply(&got.event, &got.data);
        s.publish_ok(json!({"topic": "s", "patch": {"after": true}})).await;
        let (version, state) = gateway_state(&s, "s").await;
        follow(&mut back, &mut view, version).await;
        assert_eq!((view.version, &view.state), (version, &state), "{kind:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_one_fresh_snapshot_instead_of_its_queue_and_stays_consistent() {
    // A small queue, and patches big enough that the socket buffers fill while it stalls.
    let s = ChildServer::start(&["--queue-size", "32"]).await;
    s.publish_ok(json!({"topic": "big", "retain": true, "data": {}})).await;
    let res = s.http.get(s.url("/stream?topic=big")).send().await.unwrap();
    let pad = "x".repeat(16 * 1024);
    let mut n = 0u64;
    // Publish while it reads nothing, until the gateway reports it conflated the queue.
    within("the queue to conflate", async {
        while s.metric("ssegate_conflations_total").await < 1.0 {
            let batch: Vec<Value> = (0..20)
                .map(|_| {
                    n += 1;
                    json!({"topic": "big", "patch": {"n": n, "pad": pad}})
                })
                .collect();
            s.publish_ok(json!(batch)).await;
        }
    })
    .await;
    s.publish_ok(json!({"topic": "big", "patch": {"pad": null, "last": true}})).await;
    let (version, state) = gateway_state(&s, "big").await;

    // It resumes reading: old patches from its socket, one fresh snapshot, then it is current.
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut events = res.bytes_stream().eventsource();
    let mut view = StateView::default();
    within("the stalled client to catch up", async {
        while view.version < version {
            let ev = events.next().await.expect("still connected").unwrap();
            if ev.event == "snapshot" || ev.event == "patch" {
                view.apply(&ev.event, &serde_json::from_str(&ev.data).unwrap());
            }
        }
    })
    .await;
    assert_eq!((view.version, &view.state), (version, &state));
    assert_eq!(view.snapshots, 2, "the first snapshot, then one fresh snapshot for the dropped queue");
    assert!(view.patches < (n as usize), "the dropped patches were not sent: {} of {n}", view.patches);
    assert_eq!(s.client_ids().await.len(), 1, "conflated, not disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_sends_at_most_one_update_per_interval_and_ends_exact() {
    const CHANGES: u64 = 60;
    let s = TestServer::start().await;
    s.publish_ok(json!({"topic": "fast", "retain": true, "data": {"n": 0}})).await;
    let mut readers = Vec::new();
    for kind in [Kind::Sse, Kind::Ws, Kind::LongPoll] {
        let mut c = AnyClient::connect_with(&s, kind, &["fast"], None, "&throttle_ms=200").await;
        readers.push(tokio::spawn(async move {
            let mut view = StateView::default();
            let mut arrivals = Vec::new();
            while view.version < CHANGES + 1 {
                let got = c.next().await;
                arrivals.push(Instant::now());
                view.apply(&got.event, &got.data);
            }
            (kind, view, arrivals)
        }));
    }
    // 60 changes over about 1.2 s.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 1..=CHANGES {
        tick.tick().await;
        s.publish_ok(json!({"topic": "fast", "patch": {"n": n}})).await;
    }
    let (version, state) = gateway_state(&s, "fast").await;
    assert_eq!(version, CHANGES + 1);
    for r in readers {
        let (kind, view, arrivals) = within("a throttled client to catch up", r).await.unwrap();
        assert_eq!((view.version, &view.state), (version, &state), "{kind:?}");
        // The opening snapshot comes at once; after it, updates are at least ~200 ms apart.
        let gaps: Vec<u128> = arrivals.windows(2).skip(1).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert!(
            gaps.iter().all(|&g| g >= 120),
            "{kind:?}: updates closer than the throttle (allowing for delivery jitter): {gaps:?}"
        );
        assert!(arrivals.len() <= 12, "{kind:?}: {} updates for {CHANGES} changes in ~1.2 s", arrivals.len());
        println!("{kind:?}: {} updates for {CHANGES} changes, gaps {gaps:?} ms", arrivals.len());
    }
    s.stop().await;
}
