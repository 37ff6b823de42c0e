//! Bounded retained state: `--max-state-bytes` and the depth limit (`413 state_too_large`, nothing
//! changed), `DELETE /topics/{topic}`, the state file reading back whatever `/publish` accepted,
//! and one copy of a publish's data for all its topics. Memory is read from `/proc` of the real
//! binary.

mod common;

use common::{AnyClient, ChildServer, Kind, Sse, TestServer, KINDS};
use serde_json::{json, Value};

/// How deep a retained state may nest (`ssegate::MAX_STATE_DEPTH`).
const MAX_DEPTH: usize = ssegate::MAX_STATE_DEPTH;

/// `{"a":{"a":…{}}}`, `levels` objects deep.
fn nest(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "a": v });
    }
    v
}

/// The pointer to the object `levels` down a [`nest`]: `/a/a/…`.
fn down(levels: usize) -> String {
    "/a".repeat(levels)
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

async fn state_of(api: &common::Api, topic: &str) -> (u64, Value) {
    let (status, v) = api.get_json(&format!("/snapshot?topic={}", common::urlencode(topic))).await;
    assert_eq!(status, 200, "{v}");
    (v["version"].as_u64().unwrap(), v["state"].clone())
}

fn refused_as_too_large(status: reqwest::StatusCode, body: &Value) {
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (413, Some("state_too_large")), "{body}");
}

/// Publishes a marker on `topic` and checks that it is the next thing `client` gets: whatever
/// was refused before it reached no one.
async fn nothing_before_marker(api: &common::Api, client: &mut AnyClient, topic: &str) {
    let ids = api.publish_ok(json!({"topic": topic, "event": "marker", "data": 0})).await;
    let next = client.next().await;
    assert_eq!((next.event.as_str(), next.id.as_str()), ("marker", ids[0].as_str()), "{next:?}");
}

#[tokio::test]
async fn a_copy_bomb_is_refused_and_memory_stays_flat() {
    let s = ChildServer::start(&[]).await;
    let state = json!({"s": "x".repeat(1000)});
    s.publish_ok(json!({"topic": "bomb", "retain": true, "data": state})).await;
    let mut watcher = AnyClient::connect(&s, Kind::Sse, &["bomb"], None).await;
    assert_eq!(watcher.next().await.event, "snapshot");
    let before = s.rss_kib();

    // Each copy of the root doubles the state: unchecked, 40 of them ask for a terabyte.
    let bomb: Vec<Value> = (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/{i}")})).collect();
    let body = json!({"topic": "bomb", "json_patch": bomb});
    assert!(body.to_string().len() < 2000, "a small request");
    for _ in 0..20 {
        let (status, res) = s.publish(&body).await;
        refused_as_too_large(status, &res);
    }
    let grew_kib = s.rss_kib().saturating_sub(before);
    println!("RSS grew by {grew_kib} KiB");
    assert!(grew_kib < 32 * 1024, "RSS grew by {grew_kib} KiB under 20 copy bombs (the state limit is 256 KiB)");
    assert_eq!(state_of(&s, "bomb").await, (1, state), "the state is unchanged");
    nothing_before_marker(&s, &mut watcher, "bomb").await;
    assert_eq!(s.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn nesting_is_refused_at_the_depth_limit_and_snapshots_still_work() {
    let s = ChildServer::start(&[]).await;
    s.publish_ok(json!({"topic": "deep", "retain": true, "data": {}})).await;
    let mut watcher = AnyClient::connect(&s, Kind::Ws, &["deep"], None).await;

    // Ten levels more at the innermost object per request, up to the limit and not past it.
    let mut levels = 1;
    let mut version = 1;
    loop {
        let op = json!({"op": "add", "path": format!("{}/a", down(levels - 1)), "value": nest(10)});
        let (status, res) = s.publish(&json!({"topic": "deep", "json_patch": [op]})).await;
        if levels + 10 > MAX_DEPTH {
            refused_as_too_large(status, &res);
            break;
        }
        assert_eq!(status, 200, "{res}");
        levels += 10;
        version += 1;
    }
    let fill = MAX_DEPTH - levels;
    let at = format!("{}/a", down(levels - 1));
    s.publish_ok(json!({"topic": "deep", "json_patch": [{"op": "add", "path": at, "value": nest(fill)}]})).await;
    version += 1;
    let (v, state) = state_of(&s, "deep").await;
    assert_eq!((v, depth(&state)), (version, MAX_DEPTH), "exactly the limit is accepted");

    // One level more, by any kind of change, is refused; so is the attack's 40,000 levels. (A
    // scalar in the innermost object adds no level.)
    let deeper = format!("{}/a", down(MAX_DEPTH - 1));
    s.publish_ok(json!({"topic": "deep", "json_patch": [{"op": "add", "path": deeper, "value": 1}]})).await;
    version += 1;
    let (_, state) = state_of(&s, "deep").await;
    let mut huge = String::new();
    for _ in 0..40_000 {
        huge.push('[');
    }
    for _ in 0..40_000 {
        huge.push(']');
    }
    for body in [
        json!({"topic": "deep", "json_patch": [{"op": "add", "path": deeper, "value": {}}]}),
        json!({"topic": "deep", "json_patch": [{"op": "replace", "path": down(MAX_DEPTH - 1), "value": [[]]}]}),
        json!({"topic": "deep", "json_patch": [{"op": "copy", "from": "/a", "path": format!("{}/b", down(2))}]}),
        json!({"topic": "deep", "patch": {"b": nest(MAX_DEPTH)}}),
        json!({"topic": "deep", "retain": true, "data": nest(MAX_DEPTH + 1)}),
    ] {
        let (status, res) = s.publish(&body).await;
        refused_as_too_large(status, &res);
    }
    for field in ["data", "patch"] {
        let retain = if field == "data" { r#""retain":true,"# } else { "" };
        let body = format!(r#"{{"topic":"deep",{retain}"{field}":{huge}}}"#);
        let (status, res) = s.post_raw("/publish", body).await;
        refused_as_too_large(status, &res);
    }
    let body = format!(r#"{{"topic":"deep","json_patch":[{{"op":"add","path":"/b","value":{huge}}}]}}"#);
    let (status, res) = s.post_raw("/publish", body).await;
    refused_as_too_large(status, &res);

    assert_eq!(state_of(&s, "deep").await, (version, state.clone()), "nothing changed; the snapshot is served");
    let mut view = common::StateView::default();
    while view.version < version {
        let got = watcher.next().await;
        view.apply(&got.event, &got.data);
    }
    assert_eq!(view.state, state, "the subscriber has the same state");
    nothing_before_marker(&s, &mut watcher, "deep").await;

    // A plain event's data is passed on as it was published, however deep: nothing parses it.
    let mut sse = Sse::connect(&s, "topic=feed").await;
    s.post_raw("/publish", format!(r#"{{"topic":"feed","event":"deep","data":{huge}}}"#)).await;
    assert_eq!(sse.expect("deep").await.data, huge);
    assert_eq!(s.get_json("/healthz").await.0, 200, "the gateway is alive");
}

#[tokio::test]
async fn a_state_over_max_state_bytes_is_refused_with_413() {
    const LIMIT: usize = 1000;
    let s = TestServer::with(|c| c.max_state_bytes = LIMIT).await;
    // {"s":"…"} is 8 bytes around the string.
    let fits = json!({"s": "x".repeat(LIMIT - 8)});
    assert_eq!(fits.to_string().len(), LIMIT);
    let over = json!({"s": "x".repeat(LIMIT - 7)});

    let (status, res) = s.publish(&json!({"topic": "t", "retain": true, "data": over})).await;
    refused_as_too_large(status, &res);
    assert!(res["error"]["message"].as_str().unwrap().contains("--max-state-bytes"), "{res}");
    assert_eq!(s.get_json("/snapshot?topic=t").await.0, 404, "no state was made");

    s.publish_ok(json!({"topic": "t", "retain": true, "data": {"s": "small"}})).await;
    let mut watchers = Vec::new();
    for kind in KINDS {
        let mut w = AnyClient::connect(&s, kind, &["t"], None).await;
        assert_eq!(w.next().await.event, "snapshot", "{kind:?}");
        watchers.push(w);
    }
    for body in [
        json!({"topic": "t", "patch": {"s": "x".repeat(LIMIT)}}),
        json!({"topic": "t", "json_patch": [{"op": "add", "path": "/more", "value": "x".repeat(LIMIT)}]}),
        // In an array, nothing of the request is published.
        json!([
            {"topic": "t", "patch": {"ok": 1}},
            {"topic": "u", "retain": true, "data": 1},
            {"topic": "t", "event": "plain", "data": 2},
            {"topic": "t", "retain": true, "data": over},
        ]),
        // The same state to several topics: refused for all.
        json!({"topics": ["u", "t"], "retain": true, "data": over}),
    ] {
        let (status, res) = s.publish(&body).await;
        refused_as_too_large(status, &res);
    }
    assert_eq!(state_of(&s, "t").await, (1, json!({"s": "small"})));
    assert_eq!(s.get_json("/snapshot?topic=u").await.0, 404);

    // Up to the limit exactly, by a patch.
    s.publish_ok(json!({"topic": "t", "patch": {"s": "x".repeat(LIMIT - 8)}})).await;
    assert_eq!(state_of(&s, "t").await, (2, fits));
    for w in &mut watchers {
        let got = w.next().await;
        assert_eq!((got.event.as_str(), &got.data["version"]), ("patch", &json!(2)), "nothing refused arrived first");
    }
    s.stop().await;
}

#[tokio::test]
async fn delete_sends_a_null_snapshot_and_the_next_state_continues_the_version() {
    let s = TestServer::start().await;
    s.publish_ok(json!({"topic": "dash/sales", "retain": true, "data": {"n": 1}})).await;
    s.publish_ok(json!({"topic": "dash/sales", "patch": {"n": 2}})).await;
    // Over SSE without envelopes (a snapshot event's data as it goes on the wire), WebSocket and
    // long-polling.
    let mut sse = Sse::connect(&s, "topic=dash/*").await;
    let first = sse.expect("snapshot").await;
    assert_eq!(serde_json::from_str::<Value>(&first.data).unwrap()["version"], 2);
    let mut clients = Vec::new();
    for kind in [Kind::Ws, Kind::LongPoll] {
        let mut c = AnyClient::connect(&s, kind, &["dash/*"], None).await;
        let first = c.next().await;
        assert_eq!((first.event.as_str(), &first.data["version"]), ("snapshot", &json!(2)), "{kind:?}");
        clients.push((kind, c));
    }

    let (status, res) = s.delete("/topics/dash/sales").await;
    assert_eq!(status, 200, "{res}");
    assert_eq!((&res["topic"], &res["version"]), (&json!("dash/sales"), &json!(3)), "{res}");
    let deleted = sse.expect("snapshot").await;
    assert_eq!(deleted.data, r#"{"topic":"dash/sales","version":3,"state":null}"#);
    assert_eq!(deleted.id, res["id"].as_str().unwrap(), "in the event order, with an id");
    for (kind, c) in &mut clients {
        let got = c.next().await;
        assert_eq!(got.event, "snapshot", "{kind:?}");
        assert_eq!(got.data, json!({"topic": "dash/sales", "version": 3, "state": null}), "{kind:?}");
    }
    let (status, res) = s.get_json("/snapshot?topic=dash/sales").await;
    assert_eq!((status.as_u16(), res["error"]["code"].as_str()), (404, Some("unknown_topic")), "{res}");
    let (_, topics) = s.get_json("/topics").await;
    let listed = topics["topics"].as_array().unwrap();
    assert!(listed.iter().all(|t| t["topic"] != "dash/sales" || t["version"].is_null()), "{topics}");
    // A new subscriber gets no snapshot of it.
    let mut late = Sse::connect(&s, "topic=dash/sales").await;

    for gone in ["/topics/dash/sales", "/topics/never/had/state", "/topics/dash%2Fother"] {
        let (status, res) = s.delete(gone).await;
        assert_eq!((status.as_u16(), res["error"]["code"].as_str()), (404, Some("unknown_topic")), "{gone}: {res}");
    }
    let (status, res) = s.delete("/topics/bad%00topic").await;
    assert_eq!((status.as_u16(), res["error"]["code"].as_str()), (400, Some("invalid_topic")), "{res}");

    // A later state continues from the deleted version: version-aware clients take it.
    s.publish_ok(json!({"topic": "dash/sales", "retain": true, "data": {"n": 0}})).await;
    assert_eq!(sse.expect("snapshot").await.data, r#"{"topic":"dash/sales","version":4,"state":{"n":0}}"#);
    for (kind, c) in &mut clients {
        let got = c.next().await;
        assert_eq!(got.data, json!({"topic": "dash/sales", "version": 4, "state": {"n": 0}}), "{kind:?}");
    }
    let snap = late.expect("snapshot").await;
    assert_eq!(serde_json::from_str::<Value>(&snap.data).unwrap()["version"], 4, "the first thing the late client saw");
    assert_eq!(state_of(&s, "dash/sales").await, (4, json!({"n": 0})));
    s.stop().await;
}

#[tokio::test]
async fn delete_needs_publisher_rights() {
    let s = TestServer::with(|c| c.api_key = vec!["sekrit".into()]).await;
    let res =
        s.http.post(s.url("/publish")).bearer_auth("sekrit").json(&json!({"topic": "t", "retain": true, "data": 1}));
    assert_eq!(res.send().await.unwrap().status(), 200);
    for key in [None, Some("wrong")] {
        let mut req = s.http.delete(s.url("/topics/t"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "key {key:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(state_of(&s, "t").await, (1, json!(1)), "nothing was deleted");
    let res = s.http.delete(s.url("/topics/t")).header("x-api-key", "sekrit").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.get_json("/snapshot?topic=t").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn the_state_file_reads_back_a_state_at_the_depth_limit() {
    let dir = std::env::temp_dir().join(format!("ssegate-state-limits-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let file_arg = file.to_str().unwrap();

    let first = ChildServer::start(&["--state-file", file_arg]).await;
    let deepest = json!({"list": [nest(MAX_DEPTH - 2)]});
    assert_eq!(depth(&deepest), MAX_DEPTH);
    first.publish_ok(json!({"topic": "deep", "retain": true, "data": deepest})).await;
    let (status, res) = first.publish(&json!({"topic": "deeper", "retain": true, "data": [deepest]})).await;
    refused_as_too_large(status, &res);
    // A deleted topic's version is kept too.
    first.publish_ok(json!({"topic": "gone", "retain": true, "data": 1})).await;
    assert_eq!(first.delete("/topics/gone").await.0, 200);
    // And a plain event far deeper than any state, in history.
    let before = first.publish_ok(json!({"topic": "feed", "data": 0})).await;
    let deep_event = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let (status, _) = first.post_raw("/publish", format!(r#"{{"topic":"feed","data":{deep_event}}}"#)).await;
    assert_eq!(status, 200);
    let addr = first.base.trim_start_matches("http://").to_owned();
    let status = first.terminate().await;
    assert!(status.success(), "a clean exit on SIGTERM saves the state: {status}");

    let second = ChildServer::start_at(&addr, &["--state-file", file_arg]).await;
    assert_eq!(state_of(&second, "deep").await, (1, deepest), "the state at the depth limit read back");
    assert_eq!(second.get_json("/snapshot?topic=gone").await.0, 404);
    second.publish_ok(json!({"topic": "gone", "retain": true, "data": 2})).await;
    assert_eq!(state_of(&second, "gone").await, (3, json!(2)), "the version continues after the delete");
    let mut resumed = Sse::connect_with(&second, "topic=feed", Some(&before[0])).await;
    assert_eq!(resumed.expect("message").await.data, deep_event, "the deep event, from history");
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_publish_to_many_topics_keeps_one_copy_of_its_data() {
    const TOPICS: usize = 500;
    const DATA: usize = 200_000;
    let s = ChildServer::start(&[]).await;
    let mut sse = Sse::connect(&s, "topic=many/7").await;
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("many/{i}")).collect();
    let data = json!({"blob": "x".repeat(DATA)});
    // Warm up the allocator and the request path with a small one.
    s.publish_ok(json!({"topics": topics, "data": 1})).await;
    assert_eq!(sse.expect("message").await.data, "1");
    let before = s.rss_kib();

    let ids = s.publish_ok(json!({"topics": topics, "data": data})).await;
    assert_eq!(ids.len(), TOPICS);
    let got = sse.expect("message").await;
    assert_eq!(got.id, ids[7]);
    assert_eq!(got.data.len(), data.to_string().len());
    let grew_kib = s.rss_kib().saturating_sub(before);
    println!("RSS grew by {grew_kib} KiB");
    let copies_kib = (TOPICS * DATA / 1024) as u64;
    assert!(grew_kib < copies_kib / 4, "RSS grew by {grew_kib} KiB; a copy per topic would be {copies_kib} KiB");
    // The events are in history, all sharing it.
    let mut resumed = Sse::connect_with(&s, "topic=many/499", Some(&ids[0])).await;
    assert_eq!(resumed.expect("message").await.id, ids[TOPICS - 1]);
}

/// A gateway node on `redis`, once ready.
async fn node(redis: &common::Redis) -> ChildServer {
    let url = redis.url();
    let node = ChildServer::start(&["--broker", &url]).await;
    common::until("the node to be ready", || async { node.get_json("/readyz").await.0 == 200 }).await;
    node
}

#[tokio::test]
async fn a_delete_reaches_every_node_and_a_late_one_continues_the_version() {
    let redis = common::Redis::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    a.publish_ok(json!({"topic": "t", "retain": true, "data": {"n": 1}})).await;
    let mut on_b = Sse::connect(&b, "topic=t").await;
    assert_eq!(on_b.expect("snapshot").await.data, r#"{"topic":"t","version":1,"state":{"n":1}}"#);

    let (status, res) = a.delete("/topics/t").await;
    assert_eq!((status.as_u16(), &res["version"]), (200, &json!(2)), "{res}");
    assert_eq!(on_b.expect("snapshot").await.data, r#"{"topic":"t","version":2,"state":null}"#);
    common::until("b to drop the state", || async { b.get_json("/snapshot?topic=t").await.0 == 404 }).await;
    let (status, _) = b.delete("/topics/t").await;
    assert_eq!(status, 404, "already deleted, on every node");

    // A node that starts now loads the deleted topic's version from Redis and continues it.
    let late = node(&redis).await;
    assert_eq!(late.get_json("/snapshot?topic=t").await.0, 404);
    late.publish_ok(json!({"topic": "t", "retain": true, "data": {"n": 0}})).await;
    assert_eq!(on_b.expect("snapshot").await.data, r#"{"topic":"t","version":3,"state":{"n":0}}"#);
    for api in [&a, &b, &late] {
        common::until("every node to hold the new state", || async {
            api.get_json("/snapshot?topic=t").await.1["version"] == 3
        })
        .await;
    }
}
