//! Load behaviour against the real binary: a client that never reads cannot slow the others or
//! grow the server's memory, 2,000 concurrent SSE clients all receive every event, and publishers
//! racing to large and small audiences keep every client's order.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, AnyClient, Api, ChildServer, Kind, Sse};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Reads `n` events numbered 0..n from `topic` like a browser's EventSource would: when the
/// gateway closes the stream it reconnects with `Last-Event-ID`. Returns the numbers in arrival
/// order and how many times it reconnected.
async fn read_all(api: Api, topic: &str, n: usize, progress: Arc<AtomicUsize>) -> (Vec<u64>, usize) {
    let mut got = Vec::with_capacity(n);
    let mut reconnects = 0;
    let mut last: Option<String> = None;
    while got.len() < n {
        let mut sse = Sse::connect_with(&api, &format!("topic={topic}"), last.as_deref()).await;
        while got.len() < n {
            match sse.next().await {
                Some(ev) if ev.event == "n" => {
                    got.push(serde_json::from_str::<serde_json::Value>(&ev.data).unwrap()["n"].as_u64().unwrap());
                    progress.store(got.len(), Ordering::Relaxed);
                }
                Some(ev) => assert_ne!(ev.event, "reset", "the reader fell out of history"),
                None => break,
            }
        }
        last = Some(sse.last_id.clone());
        if got.len() < n {
            reconnects += 1;
        }
    }
    (got, reconnects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_up_others_or_memory() {
    const EVENTS: usize = 100_000;
    const BATCH: usize = 500;
    let s = ChildServer::start(&["--history-size", "5000", "--queue-size", "1024"]).await;

    // A client that subscribes and then never reads a byte.
    let mut stalled = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    stalled.write_all(b"GET /stream?topic=load HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    common::until("the stalled client to register", || async { s.client_ids().await.len() == 1 }).await;
    let stalled_id = s.client_ids().await.remove(0);

    let progress = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_all(s.api.clone(), "load", EVENTS, progress.clone()));
    common::until("the reader to register", || async { s.client_ids().await.len() == 2 }).await;
    let rss_before = s.rss_kib();

    let pad = "x".repeat(900);
    let started = Instant::now();
    for b in 0..EVENTS / BATCH {
        // The reader must be able to keep up for any bounded gateway to deliver everything, so the
        // publisher stays at most two batches ahead of it; the stalled client gets no such favour.
        let behind = (b * BATCH).saturating_sub(2 * BATCH);
        common::until("the reader to keep up", || async { progress.load(Ordering::Relaxed) >= behind }).await;
        let batch: Vec<_> = (0..BATCH)
            .map(|i| json!({"topic": "load", "event": "n", "data": {"n": b * BATCH + i, "pad": pad}}))
            .collect();
        s.publish_ok(json!(batch)).await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let (got, reconnects) =
        tokio::time::timeout(Duration::from_secs(120), reader).await.expect("the reader finishes").unwrap();
    let rss_after = s.rss_kib();

    assert_eq!(got.len(), EVENTS);
    assert!(got.iter().enumerate().all(|(i, &n)| i as u64 == n), "every event exactly once, in order");
    common::until("the stalled client to be dropped", || async { !s.client_ids().await.contains(&stalled_id) }).await;
    assert!(s.metric("ssegate_queue_overflows_total").await >= 1.0);
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "published {EVENTS} events of ~1 KiB in {publish_secs:.2}s; reader reconnected {reconnects} times; \
         server RSS {:.1} MiB -> {:.1} MiB (+{grown_mib:.1} MiB; the events alone are ~{} MiB)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        EVENTS * 950 / (1 << 20)
    );
    assert!(grown_mib < 64.0, "server memory grew by {grown_mib:.1} MiB");
    drop(stalled);
}

/// Connects 2,000 clients over `kind` to the binary, publishes 100 events, and checks that every
/// client got every event, in order.
async fn two_thousand_clients_receive_every_event(kind: Kind) {
    const CLIENTS: usize = 2_000;
    const EVENTS: u64 = 100;
    let s = ChildServer::start(&[]).await;
    let api = s.api.clone();
    let clients: Vec<AnyClient> = within(
        "2,000 clients to connect",
        futures::stream::iter(0..CLIENTS)
            .map(|_| AnyClient::connect(&api, kind, &["fan"], None))
            .buffer_unordered(100)
            .collect(),
    )
    .await;
    assert_eq!(s.client_ids().await.len(), CLIENTS);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < EVENTS as usize {
                    got.push(c.next().await.data.as_u64().expect("a number"));
                }
                got
            })
        })
        .collect();
    for n in 0..EVENTS {
        s.publish_ok(json!({"topic": "fan", "event": "n", "data": n})).await;
    }
    let want: Vec<u64> = (0..EVENTS).collect();
    for r in readers {
        assert_eq!(within("a client's events", r).await.unwrap(), want);
    }
    assert_eq!(s.metric("ssegate_deliveries_total").await, (CLIENTS as u64 * EVENTS) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_sse_clients_all_receive_all_events() {
    two_thousand_clients_receive_every_event(Kind::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_websocket_clients_all_receive_all_events() {
    two_thousand_clients_receive_every_event(Kind::Ws).await;
}

/// An event id (`<ms>-<seq>`) as a pair that orders as the ids do.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("an id <ms>-<seq>");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Publishers racing each other, two to a topic with more subscribers than a publishing request
/// writes to itself (the fan-out thread writes those) and two to a topic with a few (written by
/// the publishing request): every client gets every event of its topics once, in id order, and
/// each publisher's events in the order it sent them, also a client of both topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_fan_outs_racing_keep_every_clients_order() {
    const BIG: usize = 1_100;
    const EACH: u64 = 50;
    let s = ChildServer::start(&[]).await;
    let api = s.api.clone();
    let connect = |topics: &'static [&'static str], n: usize| {
        let api = api.clone();
        within(
            "the clients to connect",
            futures::stream::iter(0..n)
                .map(move |_| {
                    let api = api.clone();
                    async move { (topics, AnyClient::connect(&api, Kind::Sse, topics, None).await) }
                })
                .buffer_unordered(100)
                .collect::<Vec<_>>(),
        )
    };
    let mut clients = connect(&["big"], BIG - 4).await;
    clients.extend(connect(&["big", "small"], 4).await);
    clients.extend(connect(&["small"], 2).await);
    assert_eq!(s.client_ids().await.len(), BIG + 2);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(topics, mut c)| {
            tokio::spawn(async move {
                let want = 2 * EACH as usize * topics.len();
                let mut got = Vec::with_capacity(want);
                while got.len() < want {
                    let ev = c.next().await;
                    got.push((ev.id, ev.data["p"].as_u64().unwrap(), ev.data["n"].as_u64().unwrap()));
                }
                (topics, got)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let api = api.clone();
            let topic = if p < 2 { "big" } else { "small" };
            tokio::spawn(async move {
                for n in 0..EACH {
                    api.publish_ok(json!({"topic": topic, "event": "e", "data": {"p": p, "n": n}})).await;
                }
            })
        })
        .collect();
    for p in publishers {
        within("a publisher", p).await.unwrap();
    }
    for r in readers {
        let (topics, got) = within("a client's events", r).await.unwrap();
        let ids: Vec<(u64, u64)> = got.iter().map(|(id, _, _)| id_order(id)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order for a client of {topics:?}");
        let publishers: Vec<u64> = if topics.len() == 2 {
            vec![0, 1, 2, 3]
        } else if topics[0] == "big" {
            vec![0, 1]
        } else {
            vec![2, 3]
        };
        for p in publishers {
            let ns: Vec<u64> = got.iter().filter(|(_, q, _)| *q == p).map(|(_, _, n)| *n).collect();
            assert_eq!(ns, (0..EACH).collect::<Vec<_>>(), "publisher {p}'s events for a client of {topics:?}");
        }
    }
}
