//! `--broker redis://`: several gateway processes share one Redis and behave as one gateway. Each
//! test starts its own `redis-server` on a free port and gateway binaries (nodes) on it, and checks
//! what clients see: one order and one set of ids everywhere, resumption on another node after a
//! crash, a Redis outage ridden out, targeting and presence across nodes, retained state for a
//! late node, and a clean drain on SIGTERM.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{
    until, urlencode, within, ws_connect, ws_next, AnyClient, Api, ChildServer, Got, Kind, Redis, Sse, StateView,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

/// A `redis-server` and the gateway nodes that use it as their broker.
struct Cluster {
    /// Dropped first, so the nodes do not log Redis going away.
    nodes: Vec<ChildServer>,
    redis: Redis,
}

impl Cluster {
    /// A fresh Redis and `n` nodes on it, each started with `args` and ready.
    async fn start(n: usize, args: &[&str]) -> Cluster {
        let redis = Redis::start().await;
        let nodes = futures::future::join_all((0..n).map(|_| start_node(&redis, args))).await;
        Cluster { nodes, redis }
    }

    /// Starts one more node, ready, and returns it.
    async fn add_node(&mut self, args: &[&str]) -> &ChildServer {
        let node = start_node(&self.redis, args).await;
        self.nodes.push(node);
        self.nodes.last().expect("the node just added")
    }
}

async fn start_node(redis: &Redis, args: &[&str]) -> ChildServer {
    let url = redis.url();
    let mut all = vec!["--broker", &url];
    all.extend_from_slice(args);
    let mut node = ChildServer::start(&all).await;
    within("a new node to be ready", async {
        while readyz(&node).await != Some(StatusCode::OK) {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("a node exited ({status}) before it was ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    node
}

/// The status of `GET /readyz`, or `None` if the node does not answer.
async fn readyz(api: &Api) -> Option<StatusCode> {
    Some(api.http.get(api.url("/readyz")).send().await.ok()?.status())
}

/// Event ids are Redis stream ids, `<ms>-<seq>`; this is their order.
fn id_key(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or_else(|| panic!("{id:?} is not a Redis stream id"))
}

fn assert_strictly_increasing<'a>(ids: impl IntoIterator<Item = &'a str>, whose: &str) {
    let mut last: Option<&str> = None;
    for id in ids {
        if let Some(prev) = last {
            assert!(id_key(prev) < id_key(id), "{whose}: id {id} after {prev}");
        }
        last = Some(id);
    }
}

/// `GET /clients` on `api`, by client id.
async fn clients(api: &Api) -> HashMap<String, Value> {
    let (status, v) = api.get_json("/clients").await;
    assert_eq!(status, StatusCode::OK, "GET /clients: {v}");
    v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| (c["client_id"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

/// A topic's `{version, state}` from `GET /snapshot`, or `Null` if the node has none.
async fn snapshot(api: &Api, topic: &str) -> Value {
    let (status, v) = api.get_json(&format!("/snapshot?topic={}", urlencode(topic))).await;
    if status == StatusCode::OK {
        json!({"version": v["version"], "state": v["state"]})
    } else {
        Value::Null
    }
}

#[tokio::test]
async fn an_event_published_on_one_node_reaches_every_node_with_one_id() {
    let cluster = Cluster::start(3, &[]).await;
    let [a, b, c] = &cluster.nodes[..] else { unreachable!("three nodes") };
    let mut subscribers = vec![
        Sse::connect(a, "topic=news").await,
        Sse::connect(b, "topic=news").await,
        Sse::connect(c, "topic=news").await,
    ];

    let ids = a.publish_ok(json!({"topic": "news", "event": "headline", "data": {"title": "hello"}})).await;

    for (node, sse) in ["A", "B", "C"].iter().zip(&mut subscribers) {
        let ev = sse.expect("headline").await;
        assert_eq!(ev.id, ids[0], "the subscriber on node {node} sees the id node A answered");
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), json!({"title": "hello"}));
    }
}

const LOAD_EVENTS: usize = 5_000;
const LOAD_BATCH: usize = 50;

/// Posts `count` events `{publisher, seq}` to `api` in batches; returns (id, data) in order.
async fn publish_batches(api: Api, publisher: usize, count: usize) -> Vec<(String, Value)> {
    let mut sent = Vec::with_capacity(count);
    for start in (0..count).step_by(LOAD_BATCH) {
        let datas: Vec<Value> =
            (start..count.min(start + LOAD_BATCH)).map(|seq| json!({"publisher": publisher, "seq": seq})).collect();
        let batch = datas.iter().map(|d| json!({"topic": "load", "event": "tick", "data": d})).collect();
        let ids = api.publish_ok(Value::Array(batch)).await;
        assert_eq!(ids.len(), datas.len(), "one id per event");
        sent.extend(ids.into_iter().zip(datas));
    }
    sent
}

async fn read_events(mut client: AnyClient, n: usize) -> Vec<Got> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(client.next().await);
    }
    got
}

#[tokio::test]
async fn concurrent_publishers_on_three_nodes_give_every_subscriber_one_order() {
    // A reader slowed down by a busy machine must not be cut for a full queue: this is about order.
    let cluster = Cluster::start(3, &["--queue-size", "8192"]).await;
    let mut readers = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for kind in [Kind::Sse, Kind::Ws] {
            let client = AnyClient::connect(node, kind, &["load"], None).await;
            readers.push((format!("{kind:?} on node {n}"), tokio::spawn(read_events(client, LOAD_EVENTS))));
        }
    }

    let publishers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(p, node)| {
            let count = LOAD_EVENTS / 3 + usize::from(p < LOAD_EVENTS % 3);
            tokio::spawn(publish_batches(node.api.clone(), p, count))
        })
        .collect();
    let mut published = HashMap::new();
    for (p, publisher) in publishers.into_iter().enumerate() {
        let sent = within("the publishers", publisher).await.unwrap();
        assert_strictly_increasing(sent.iter().map(|(id, _)| id.as_str()), &format!("publisher {p}'s answers"));
        published.extend(sent);
    }
    assert_eq!(published.len(), LOAD_EVENTS, "every event got an id of its own");

    let mut first: Option<(String, Vec<String>)> = None;
    for (who, reader) in readers {
        let got = within("the subscribers", reader).await.unwrap();
        for g in &got {
            assert_eq!((g.topic.as_deref(), g.event.as_str()), (Some("load"), "tick"), "{who} got {g:?}");
            assert_eq!(published.get(&g.id), Some(&g.data), "{who}: event {} is what was published under its id", g.id);
        }
        let ids: Vec<String> = got.iter().map(|g| g.id.clone()).collect();
        assert_strictly_increasing(ids.iter().map(String::as_str), &who);
        let each: HashSet<(u64, u64)> =
            got.iter().map(|g| (g.data["publisher"].as_u64().unwrap(), g.data["seq"].as_u64().unwrap())).collect();
        assert_eq!(each.len(), LOAD_EVENTS, "{who}: every (publisher, seq) once");
        match &first {
            None => first = Some((who, ids)),
            Some((first_who, first_ids)) => {
                let at = first_ids.iter().zip(&ids).position(|(x, y)| x != y);
                assert!(at.is_none(), "{who} and {first_who} differ at position {at:?}");
            }
        }
    }
}

const FEED_EVENTS: usize = 3_000;
const FEED_BATCH: usize = 20;

/// Publishes `{seq}` events to `feed` at about 1,000 a second (a batch every 20 ms), reporting
/// how many are out; returns (id, seq) in order.
async fn publish_paced(api: Api, progress: watch::Sender<usize>) -> Vec<(String, u64)> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = Vec::with_capacity(FEED_EVENTS);
    for start in (0..FEED_EVENTS).step_by(FEED_BATCH) {
        tick.tick().await;
        let batch =
            (start..start + FEED_BATCH).map(|seq| json!({"topic": "feed", "event": "tick", "data": {"seq": seq}}));
        let ids = api.publish_ok(Value::Array(batch.collect())).await;
        sent.extend(ids.into_iter().zip(start as u64..));
        progress.send_replace(sent.len());
    }
    sent
}

/// Reads `FEED_EVENTS` events as a browser's EventSource would: when the stream breaks, it comes
/// back on `fallback` with `Last-Event-ID`. Returns (id, seq) in order and how often it came back.
async fn follow(mut sse: Sse, fallback: Api) -> (Vec<(String, u64)>, usize) {
    let mut got = Vec::with_capacity(FEED_EVENTS);
    let mut reconnects = 0;
    while got.len() < FEED_EVENTS {
        match sse.next().await {
            Some(ev) => {
                assert_eq!(ev.event, "tick", "only the published events, no reset: {ev:?}");
                let data: Value = serde_json::from_str(&ev.data).unwrap();
                got.push((ev.id, data["seq"].as_u64().unwrap()));
            }
            None => {
                reconnects += 1;
                assert_eq!(reconnects, 1, "the stream on a live node broke");
                let last = sse.last_id.clone();
                sse = Sse::connect_with(&fallback, "topic=feed", Some(&last)).await;
            }
        }
    }
    (got, reconnects)
}

#[tokio::test]
async fn clients_of_a_killed_node_resume_on_another_without_loss_or_duplicates() {
    let mut cluster = Cluster::start(3, &[]).await;
    let (a, b, c) = (cluster.nodes[0].api.clone(), &cluster.nodes[1], cluster.nodes[2].api.clone());
    let mut followers = Vec::new();
    for i in 0..15 {
        let fallback = if i % 2 == 0 { a.clone() } else { c.clone() };
        followers.push(tokio::spawn(follow(Sse::connect(b, "topic=feed").await, fallback)));
    }
    let bystander = tokio::spawn(follow(Sse::connect(&c, "topic=feed").await, c.clone()));

    let (progress_tx, mut progress) = watch::channel(0);
    let publisher = tokio::spawn(publish_paced(a.clone(), progress_tx));
    within("a third of the events to go out", progress.wait_for(|&n| n >= FEED_EVENTS / 3)).await.unwrap();
    cluster.nodes.remove(1).kill().await;

    let published = within("the publisher, which node B's crash must not disturb", publisher).await.unwrap();
    assert_strictly_increasing(published.iter().map(|(id, _)| id.as_str()), "the publisher's answers");
    for (i, follower) in followers.into_iter().enumerate() {
        let (got, reconnects) = within("node B's clients", follower).await.unwrap();
        assert_eq!(reconnects, 1, "client {i} of node B came back once");
        if let Some(at) = got.iter().zip(&published).position(|(x, y)| x != y) {
            panic!("client {i} of node B: at {at} got {:?}, published {:?}", got[at], published[at]);
        }
    }
    let (got, reconnects) = within("the client on node C", bystander).await.unwrap();
    assert_eq!((reconnects, got == published), (0, true), "the client on node C saw everything, undisturbed");
}

#[tokio::test]
async fn nodes_ride_out_a_redis_restart_that_loses_its_data() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut subscribers = Vec::new();
    for node in &cluster.nodes {
        subscribers.push(Sse::connect(node, "topic=feed").await);
    }
    cluster.nodes[0].publish_ok(json!({"topic": "kpi", "retain": true, "data": {"visits": 1, "region": "eu"}})).await;
    let before = cluster.nodes[0].publish_ok(json!({"topic": "feed", "event": "tick", "data": "before"})).await;
    for sse in &mut subscribers {
        assert_eq!(sse.expect("tick").await.id, before[0]);
    }
    for node in &cluster.nodes {
        // Applied in stream order, so before the event just seen everywhere.
        assert_eq!(snapshot(node, "kpi").await, json!({"version": 1, "state": {"visits": 1, "region": "eu"}}));
    }

    cluster.redis.stop().await;
    let outage = Instant::now();
    for node in &cluster.nodes {
        until("/readyz to answer 503 while Redis is down", || async {
            readyz(node).await == Some(StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
        let down = json!({"topic": "feed", "event": "tick", "data": "while down"});
        let (status, body) = within("a publish while Redis is down", node.publish(&down)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    }
    // Keep Redis down for a few seconds, as a real outage would: the nodes keep retrying meanwhile.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    cluster.redis.restart().await;
    for node in &cluster.nodes {
        until("/readyz to recover after Redis is back", || async { readyz(node).await == Some(StatusCode::OK) }).await;
    }

    let mut after = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        let batch: Vec<Value> =
            (0..5).map(|i| json!({"topic": "feed", "event": "tick", "data": {"node": n, "i": i}})).collect();
        after.extend(node.publish_ok(Value::Array(batch)).await);
    }
    assert!(id_key(&after[0]) > id_key(&before[0]), "ids keep increasing across the restart, so clients can resume");
    for (n, sse) in subscribers.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < after.len() {
            let ev =
                sse.next().await.unwrap_or_else(|| panic!("the stream on node {n} stayed open through the outage"));
            // A client that stayed connected missed nothing: no reset, nothing published while down.
            assert_eq!(ev.event, "tick", "node {n}: {ev:?}");
            got.push(ev.id);
        }
        assert_eq!(got, after, "the subscriber on node {n} got every event published after the restart, once");
    }

    // The retained state outlived Redis' data: a change builds on it, and a node started now
    // (which can only learn it from Redis) serves it too.
    cluster.nodes[1].publish_ok(json!({"topic": "kpi", "patch": {"visits": 2}})).await;
    let expected = json!({"version": 2, "state": {"visits": 2, "region": "eu"}});
    for node in &cluster.nodes {
        until("every node to apply the change", || async { snapshot(node, "kpi").await == expected }).await;
    }
    let late = cluster.add_node(&[]).await;
    assert_eq!(snapshot(late, "kpi").await, expected, "a node started after the restart");
    // Presence was lost with Redis' data: the nodes put their clients back.
    let ids: Vec<&str> = subscribers.iter().map(|s| s.client_id.as_str()).collect();
    for node in &cluster.nodes {
        until("every node to list the clients again", || async {
            let listed = clients(node).await;
            ids.iter().all(|id| listed.contains_key(*id))
        })
        .await;
    }
}

#[tokio::test]
async fn clients_on_one_node_are_listed_targeted_and_subscribed_from_another() {
    let cluster = Cluster::start(3, &[]).await;
    let [a, b, c] = &cluster.nodes[..] else { unreachable!("three nodes") };
    let mut target = Sse::connect(b, "topic=home").await;
    let mut bystander = Sse::connect(c, "topic=**").await;
    let id = target.client_id.clone();

    until("node A to list the client on node B", || async { clients(a).await.contains_key(&id) }).await;
    let listed = &clients(a).await[&id];
    assert_eq!((&listed["transport"], &listed["topics"]), (&json!("sse"), &json!(["home"])), "{listed}");

    a.publish_ok(json!({"clients": [id], "event": "direct", "data": {"for": "b"}})).await;
    assert_eq!(target.expect("direct").await.data, r#"{"for":"b"}"#);

    let (status, body) = a.post_raw(&format!("/clients/{id}/subscribe"), r#"{"topics":["x"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = a.post_raw(&format!("/clients/{unknown}/subscribe"), r#"{"topics":["x"]}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a client no node has: {body}");

    let on_x = [
        c.publish_ok(json!({"topic": "x", "event": "on-x", "data": 1})).await,
        a.publish_ok(json!({"topic": "x", "event": "on-x", "data": 2})).await,
    ];
    for sse in [&mut target, &mut bystander] {
        for (n, ids) in on_x.iter().enumerate() {
            // The bystander's first event is on x: the targeted one went to its target only.
            let ev = sse.expect("on-x").await;
            assert_eq!((ev.id.as_str(), ev.data), (ids[0].as_str(), (n + 1).to_string()));
        }
    }
    until("node A to list the new subscription", || async {
        clients(a).await[&id]["topics"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("home")) && t.contains(&json!("x")))
    })
    .await;
}

/// Applies a publish item's change to `state` the way the contract defines it.
fn apply(state: &mut Value, change: &Value) {
    if change["retain"] == true {
        *state = change["data"].clone();
    } else if let Some(p) = change.get("patch") {
        json_patch::merge(state, p);
    } else {
        let ops: json_patch::Patch = serde_json::from_value(change["json_patch"].clone()).unwrap();
        json_patch::patch(state, &ops).unwrap();
    }
}

#[tokio::test]
async fn a_late_node_serves_the_same_retained_state() {
    let mut cluster = Cluster::start(3, &[]).await;
    // (node, change) in the order published; no change depends on the one before it having
    // reached the node it is published on.
    let changes = [
        (
            0,
            json!({"topic": "doc", "retain": true, "data": {"title": "Q3", "count": 0, "tags": ["a"], "owner": "ann"}}),
        ),
        (1, json!({"topic": "doc", "patch": {"count": 1, "note": "from b"}})),
        (2, json!({"topic": "doc", "json_patch": [{"op": "add", "path": "/tags/-", "value": "c"}]})),
        (0, json!({"topic": "doc", "patch": {"owner": null, "count": 2}})),
        (1, json!({"topic": "doc", "json_patch": [{"op": "replace", "path": "/title", "value": "Q4"}]})),
    ];
    let mut expected = json!({"version": 0, "state": null});
    for (node, change) in &changes {
        cluster.nodes[*node].publish_ok(change.clone()).await;
        apply(&mut expected["state"], change);
        expected["version"] = json!(expected["version"].as_u64().unwrap() + 1);
    }
    for node in &cluster.nodes {
        until("every node to hold the state", || async { snapshot(node, "doc").await == expected }).await;
    }

    let late = cluster.add_node(&[]).await.api.clone();
    let a = cluster.nodes[0].api.clone();
    assert_eq!(snapshot(&late, "doc").await, expected, "the late node, once ready, serves the state");
    let etag = |api: Api| async move {
        let res = api.http.get(api.url("/snapshot?topic=doc")).send().await.unwrap();
        res.headers()["etag"].to_str().unwrap().to_owned()
    };
    assert_eq!(etag(late.clone()).await, etag(a.clone()).await, "the same ETag on both nodes");

    let mut views = Vec::new();
    for api in [&late, &a] {
        let mut sse = Sse::connect(api, "topic=doc").await;
        let first = sse.expect("snapshot").await;
        let data: Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!(data, json!({"topic": "doc", "version": expected["version"], "state": expected["state"]}));
        let mut view = StateView::default();
        view.apply("snapshot", &data);
        views.push((sse, view));
    }

    let more = [
        (3, json!({"topic": "doc", "patch": {"count": 3}})),
        (1, json!({"topic": "doc", "json_patch": [{"op": "remove", "path": "/tags/0"}]})),
    ];
    for (node, change) in &more {
        cluster.nodes[*node].publish_ok(change.clone()).await;
        apply(&mut expected["state"], change);
        expected["version"] = json!(expected["version"].as_u64().unwrap() + 1);
    }
    for (sse, view) in &mut views {
        for _ in &more {
            let ev = sse.expect("patch").await;
            view.apply("patch", &serde_json::from_str(&ev.data).unwrap());
        }
        assert_eq!((json!(view.version), &view.state), (expected["version"].clone(), &expected["state"]));
    }
    for node in &cluster.nodes {
        until("every node, the late one too, to hold the new state", || async {
            snapshot(node, "doc").await == expected
        })
        .await;
    }
}

/// The close frame a WebSocket gets, skipping anything before it.
async fn close_code(ws: &mut common::WsStream) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Message;
    within("the close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_drains_a_node_and_leaves_the_cluster_serving() {
    const SHUTDOWN_TIMEOUT_MS: u64 = 2_000;
    let limit = SHUTDOWN_TIMEOUT_MS.to_string();
    let mut cluster = Cluster::start(2, &["--shutdown-timeout-ms", &limit]).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut stays = Sse::connect(a, "topic=feed").await;

    // Read raw: the closing `retry:` carries no data, so EventSource parsers dispatch nothing.
    let res = within("the stream to open", b.http.get(b.url("/stream?topic=feed")).send()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut sse_body = res.bytes_stream();
    let mut ws = ws_connect(b, "/ws?topic=feed").await;
    assert_eq!(ws_next(&mut ws).await.expect("a welcome")["type"], "welcome");

    let ids = a.publish_ok(json!({"topic": "feed", "event": "tick", "data": 0})).await;
    // Once node B's clients have the event, it is a valid long-poll cursor there.
    let mut seen = String::new();
    within("the event on node B's stream", async {
        while !seen.contains(&format!("id: {}\n", ids[0])) {
            let chunk = sse_body.next().await.expect("the stream stays open").unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    loop {
        let frame = ws_next(&mut ws).await.expect("the websocket stays open");
        if frame["type"] == "event" {
            assert_eq!(frame["id"], ids[0]);
            break;
        }
    }
    assert_eq!(stays.expect("tick").await.id, ids[0]);
    let poll = {
        let api = b.api.clone();
        let path = format!("/poll?topic=feed&cursor={}&timeout=30", urlencode(&ids[0]));
        tokio::spawn(async move { api.get_json(&path).await })
    };
    until("the long poll to wait on node B", || async {
        clients(b).await.values().any(|c| c["transport"] == "long-poll")
    })
    .await;

    let b = cluster.nodes.remove(1);
    let exit = tokio::spawn(async move {
        let started = Instant::now();
        let status = b.terminate().await;
        (status, started.elapsed())
    });
    let (rest, close, (poll_status, answer)) = tokio::join!(
        within("the stream to end", async {
            let mut rest = String::new();
            while let Some(chunk) = sse_body.next().await {
                rest.push_str(std::str::from_utf8(&chunk?).unwrap());
            }
            Ok::<_, reqwest::Error>(rest)
        }),
        close_code(&mut ws),
        async { within("the long poll to be answered", poll).await.unwrap() },
    );
    let rest = rest.expect("the stream ends cleanly, not cut");
    assert!(
        rest.trim_end().rsplit("\n\n").next().is_some_and(|last| last.starts_with("retry:")),
        "the stream's last word is a retry: hint, got {rest:?}"
    );
    assert_eq!(close, Some(1001), "the websocket is closed as going away");
    assert_eq!(poll_status, StatusCode::OK, "{answer}");
    assert!(answer["events"].is_array() && answer["cursor"].is_string(), "{answer}");

    let (status, took) = within("node B to exit", exit).await.unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let allowed = Duration::from_millis(SHUTDOWN_TIMEOUT_MS + 1_500);
    assert!(took < allowed, "node B took {took:?} to drain, more than {allowed:?}");

    let a = &cluster.nodes[0];
    until("node A to forget node B's clients", || async { clients(a).await.keys().eq([&stays.client_id]) }).await;
    let ids = a.publish_ok(json!({"topic": "feed", "event": "tick", "data": 1})).await;
    assert_eq!(stays.expect("tick").await.id, ids[0], "node A serves on");
}

#[tokio::test]
async fn racing_json_patches_on_two_nodes_apply_once() {
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (cluster.nodes[0].api.clone(), cluster.nodes[1].api.clone());
    for round in 0..10 {
        let version = a.publish_ok(json!({"topic": "seat", "retain": true, "data": {"taken_by": null}})).await;
        assert_eq!(version.len(), 1);
        let expected = json!({"version": 1 + 2 * round, "state": {"taken_by": null}});
        for api in [&a, &b] {
            until("both nodes to hold the reset state", || async { snapshot(api, "seat").await == expected }).await;
        }
        // Both nodes check the `test` op against the same state; only one may take the seat.
        let take = |api: Api, who: &'static str| async move {
            let ops = json!([
                {"op": "test", "path": "/taken_by", "value": null},
                {"op": "replace", "path": "/taken_by", "value": who}
            ]);
            api.publish(&json!({"topic": "seat", "json_patch": ops})).await.0
        };
        let (sa, sb) = tokio::join!(take(a.clone(), "a"), take(b.clone(), "b"));
        let mut statuses = [sa.as_u16(), sb.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: exactly one json_patch applies, the other is refused");
        let winner = if sa == StatusCode::OK { "a" } else { "b" };
        let expected = json!({"version": 2 + 2 * round, "state": {"taken_by": winner}});
        for api in [&a, &b] {
            until("both nodes to hold the winner's state", || async { snapshot(api, "seat").await == expected }).await;
        }
    }
}

/// `--rpc-url` works with the Redis broker too: a node forwards a WebSocket client's `rpc` to
/// the backend and relays its answer.
#[tokio::test]
async fn rpc_reaches_the_backend_from_a_node_on_redis() {
    use futures::SinkExt;
    let backend = axum::Router::new().route(
        "/rpc",
        axum::routing::post(|axum::Json(req): axum::Json<Value>| async move {
            axum::Json(json!({"method": req["method"], "client": req["client_id"]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move { axum::serve(listener, backend).await });
    let url = format!("http://{backend_addr}/rpc");
    let cluster = Cluster::start(1, &["--rpc-url", &url]).await;
    let mut ws = ws_connect(&cluster.nodes[0], "/ws").await;
    let id = ws_next(&mut ws).await.expect("welcome")["client_id"].clone();
    let frame = json!({"type": "rpc", "method": "ping_backend", "data": null, "ref": "r1"});
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.unwrap();
    let reply = ws_next(&mut ws).await.expect("reply");
    assert_eq!(reply, json!({"type": "reply", "ref": "r1", "data": {"method": "ping_backend", "client": id}}));
    backend_task.abort();
}
