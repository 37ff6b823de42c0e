//! `GET /ws`: the frame protocol both ways, bad frames, the size limit, ping liveness, publish
//! permission, rpc to the backend and the close on shutdown.

mod common;

use std::time::Duration;

use common::{until, within, ws_connect, ws_next, AnyClient, Kind, TestServer};
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

async fn send(ws: &mut (impl SinkExt<Message> + Unpin), v: impl ToString) {
    let _ = ws.send(Message::text(v.to_string())).await;
}

/// The close frame the server sends, skipping anything before it.
async fn close_frame(ws: &mut common::WsStream) -> Option<CloseFrame> {
    within("the close frame", async {
        loop {
            match futures::StreamExt::next(ws).await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn subscribe_unsubscribe_and_ping_are_acknowledged() {
    let s = TestServer::start().await;
    let mut ws = ws_connect(&s, "/ws").await;
    let welcome = ws_next(&mut ws).await.unwrap();
    assert_eq!((welcome["type"].as_str(), &welcome["topics"]), (Some("welcome"), &json!([])));
    assert_eq!(welcome["heartbeat_ms"], 15_000);

    send(&mut ws, json!({"type": "subscribe", "topics": ["a", "b/*"], "ref": 1})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "ack", "ref": 1}));
    // In place when acknowledged.
    let ids = s.publish_ok(json!({"topic": "b/x", "event": "e", "data": {"k": true}})).await;
    let ev = ws_next(&mut ws).await.unwrap();
    assert_eq!(ev["type"], "event");
    assert_eq!(ev["id"], ids[0].as_str());
    assert_eq!((&ev["topic"], &ev["event"], &ev["data"]), (&json!("b/x"), &json!("e"), &json!({"k": true})));
    assert!(ev["ts"].as_u64().is_some());

    send(&mut ws, json!({"type": "unsubscribe", "topics": ["b/*"], "ref": "u"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "ack", "ref": "u"}));
    s.publish_ok(json!({"topic": "b/x", "data": 1})).await;
    send(&mut ws, json!({"type": "ping", "ref": 7})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "ack", "ref": 7}), "nothing from b/* any more");
    s.stop().await;
}

#[tokio::test]
async fn subscribe_with_last_event_id_replays_what_was_missed() {
    let s = TestServer::start().await;
    let first = s.publish_ok(json!({"topic": "hist", "data": 0})).await;
    s.publish_ok(
        json!([{"topic": "hist", "data": 1}, {"topic": "elsewhere", "data": "x"}, {"topic": "hist", "data": 2}]),
    )
    .await;
    let mut ws = ws_connect(&s, "/ws").await;
    ws_next(&mut ws).await.unwrap();
    send(&mut ws, json!({"type": "subscribe", "topics": ["hist"], "last_event_id": first[0], "ref": "r"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "ack", "ref": "r"}));
    assert_eq!(ws_next(&mut ws).await.unwrap()["data"], 1);
    assert_eq!(ws_next(&mut ws).await.unwrap()["data"], 2);
    send(&mut ws, json!({"type": "subscribe", "topics": ["other"], "last_event_id": "nope"})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "reset", "reason": "unknown_event_id"}));
    s.stop().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let s = TestServer::start().await;
    let mut ws = ws_connect(&s, "/ws?topic=t").await;
    ws_next(&mut ws).await.unwrap();
    let cases: Vec<(Message, &str, Option<Value>)> = vec![
        (Message::text("this is not json"), "invalid_json", None),
        (Message::text("[1,2]"), "invalid_request", None),
        (Message::text(r#"{"no":"type"}"#), "invalid_request", None),
        (Message::text(r#"{"type":"dance","ref":3}"#), "unknown_type", Some(json!(3))),
        (Message::text(r#"{"type":"subscribe","ref":4}"#), "invalid_request", Some(json!(4))),
        (Message::text(r#"{"type":"subscribe","topics":["a/*/b"],"ref":5}"#), "invalid_topic", Some(json!(5))),
        (Message::text(r#"{"type":"subscribe","topics":[],"ref":6}"#), "invalid_request", Some(json!(6))),
        (
            Message::text(r#"{"type":"publish","topic":"t","data":1,"extra":2,"ref":8}"#),
            "invalid_request",
            Some(json!(8)),
        ),
        (Message::text(r#"{"type":"rpc","method":"m"}"#), "invalid_request", None),
        (Message::binary(vec![1u8, 2, 3]), "invalid_frame", None),
    ];
    for (frame, code, reference) in cases {
        let shown = format!("{frame:?}");
        ws.send(frame).await.unwrap();
        let err = ws_next(&mut ws).await.expect("still open");
        assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some(code)), "{shown}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(err.get("ref").cloned(), reference, "{shown}");
    }
    // Still subscribed and working.
    s.publish_ok(json!({"topic": "t", "event": "still", "data": 1})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["event"], "still");
    s.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let s = TestServer::with(|c| c.max_body_bytes = 1024).await;
    let mut ws = ws_connect(&s, "/ws").await;
    ws_next(&mut ws).await.unwrap();
    send(&mut ws, json!({"type": "ping", "ref": "x".repeat(2000)})).await;
    let close = close_frame(&mut ws).await;
    assert_eq!(close.expect("a close frame with a code").code, CloseCode::Size);
    s.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let s = TestServer::with(|c| {
        c.heartbeat_ms = 100;
        c.ws_timeout_ms = 500;
    })
    .await;
    // This one keeps reading, so its WebSocket library answers the pings.
    let mut alive = AnyClient::connect(&s, Kind::Ws, &["x"], None).await;
    // This one reads its welcome and then nothing: pings go unanswered.
    let mut silent = ws_connect(&s, "/ws").await;
    let silent_id = ws_next(&mut silent).await.unwrap()["client_id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        // Reads (and so answers pings) for three timeouts, then shows it still gets events.
        alive.next().await
    });
    until("the silent peer to be dropped", || async { !s.client_ids().await.contains(&silent_id) }).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "dropped after {took:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.client_ids().await.len(), 1, "the peer that answers stays connected");
    s.publish_ok(json!({"topic": "x", "event": "still-here", "data": 1})).await;
    assert_eq!(within("the live peer's event", reader).await.unwrap().event, "still-here");
    drop(silent);
    s.stop().await;
}

#[tokio::test]
async fn publishing_needs_rights() {
    let s = TestServer::with(|c| c.api_key = vec!["secret".into()]).await;
    let mut watcher = AnyClient::connect(&s, Kind::Ws, &["chat"], None).await;

    let mut anon = ws_connect(&s, "/ws").await;
    ws_next(&mut anon).await.unwrap();
    send(&mut anon, json!({"type": "publish", "topic": "chat", "data": "spam", "ref": 1})).await;
    let err = ws_next(&mut anon).await.unwrap();
    assert_eq!((err["code"].as_str(), &err["ref"]), (Some("forbidden"), &json!(1)));

    let mut member = ws_connect(&s, "/ws?token=secret").await;
    ws_next(&mut member).await.unwrap();
    send(&mut member, json!({"type": "publish", "topic": "chat", "event": "said", "data": {"text": "hi"}, "ref": 2}))
        .await;
    let ack = ws_next(&mut member).await.unwrap();
    assert_eq!((ack["type"].as_str(), &ack["ref"]), (Some("ack"), &json!(2)));
    send(&mut member, json!({"type": "publish", "topic": "a/*", "data": 1, "ref": 3})).await;
    assert_eq!(ws_next(&mut member).await.unwrap()["code"], "invalid_request");

    let got = watcher.next().await;
    assert_eq!((got.event.as_str(), &got.data), ("said", &json!({"text": "hi"})), "only the allowed publish arrives");
    s.stop().await;
}

#[tokio::test]
async fn rpc_is_answered_by_the_backend() {
    // A backend that answers trigger_stats with stats_ready data, and fails anything else.
    let backend = axum::Router::new().route(
        "/rpc",
        axum::routing::post(|axum::Json(req): axum::Json<Value>| async move {
            if req["method"] == "trigger_stats" {
                Ok(axum::Json(json!({"stats_ready": {"rows": req["data"]["rows"], "client": req["client_id"]}})))
            } else {
                Err((
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": {"code": "no_such_method", "message": "unknown method"}})),
                ))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move { axum::serve(listener, backend).await });
    let s = TestServer::with(|c| c.rpc_url = Some(format!("http://{backend_addr}/rpc"))).await;

    let mut ws = ws_connect(&s, "/ws").await;
    let id = ws_next(&mut ws).await.unwrap()["client_id"].clone();
    send(&mut ws, json!({"type": "rpc", "method": "trigger_stats", "data": {"rows": 3}, "ref": "q1"})).await;
    let reply = ws_next(&mut ws).await.unwrap();
    assert_eq!(reply, json!({"type": "reply", "ref": "q1", "data": {"stats_ready": {"rows": 3, "client": id}}}));
    send(&mut ws, json!({"type": "rpc", "method": "explode", "data": null, "ref": "q2"})).await;
    let err = ws_next(&mut ws).await.unwrap();
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), &err["ref"]),
        (Some("error"), Some("no_such_method"), &json!("q2"))
    );
    s.stop().await;
    backend_task.abort();

    let s = TestServer::start().await;
    let mut ws = ws_connect(&s, "/ws").await;
    ws_next(&mut ws).await.unwrap();
    send(&mut ws, json!({"type": "rpc", "method": "m", "ref": 1})).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["code"], "rpc_unavailable");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_with_going_away() {
    let s = TestServer::start().await;
    let mut ws = ws_connect(&s, "/ws").await;
    ws_next(&mut ws).await.unwrap();
    let stopping = tokio::spawn(s.stop());
    let close = close_frame(&mut ws).await;
    assert_eq!(close.unwrap().code, CloseCode::Away);
    within("the shutdown", stopping).await.unwrap();
}

#[tokio::test]
async fn clients_list_shows_websocket_clients_and_server_side_subscribe_reaches_them() {
    let s = TestServer::start().await;
    let mut c = AnyClient::connect(&s, Kind::Ws, &[], None).await;
    let (_, list) = s.get_json("/clients").await;
    assert_eq!(list["clients"][0]["transport"], "ws");
    let (status, _) = s.post_raw(&format!("/clients/{}/subscribe", c.client_id), r#"{"topics":["pushed"]}"#).await;
    assert_eq!(status, 200);
    s.publish_ok(json!({"topic": "pushed", "event": "hello", "data": 1})).await;
    assert_eq!(c.next().await.event, "hello");
    let (status, _) = s.delete(&format!("/clients/{}", c.client_id)).await;
    assert_eq!(status, 200);
    until("the client to go", || async { s.client_ids().await.is_empty() }).await;
    s.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_after_its_queue_overflows() {
    let s = TestServer::with(|c| c.queue_size = 16).await;
    let mut stalled = ws_connect(&s, "/ws?topic=flood").await;
    ws_next(&mut stalled).await.unwrap();
    let pad = "x".repeat(64 * 1024);
    // Publish until its queue overflows (its socket buffers fill first), then no more.
    common::within("the queue to overflow", async {
        while s.metric("ssegate_queue_overflows_total").await < 1.0 {
            let batch: Vec<Value> = (0..10).map(|n| json!({"topic": "flood", "data": {"n": n, "pad": pad}})).collect();
            s.publish_ok(json!(batch)).await;
        }
    })
    .await;
    // It never reads its close frame: the session ends anyway and gives its socket back.
    until("the stalled session to end", || async { s.metric("ssegate_clients{transport=\"ws\"}").await == 0.0 }).await;
    drop(stalled);
    s.stop().await;
}

#[tokio::test]
async fn a_plain_get_on_ws_gets_a_json_error() {
    let s = TestServer::start().await;
    let res = s.http.get(s.url("/ws?topic=a")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");
    let res = s.http.get(s.url("/ws?topic=a/../b")).send().await.unwrap();
    assert_eq!(res.status(), 400, "a bad topic is refused before the upgrade");
    s.stop().await;
}

/// A client frame masked as RFC 6455 requires of clients.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn frames_sent_right_behind_the_handshake_are_read_and_pings_get_pongs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let s = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // One write: the request head, an application ping and a protocol ping.
    let mut bytes = format!(
        "GET /ws?topic=a HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    )
    .into_bytes();
    bytes.extend(masked(0x1, br#"{"type":"ping","ref":"early"}"#));
    bytes.extend(masked(0x9, b"are you there"));
    tcp.write_all(&bytes).await.unwrap();

    let mut got = Vec::new();
    let head_end = within("the 101 response", async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed during the handshake");
            got.extend_from_slice(&chunk[..n]);
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return at + 4;
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The accept key of RFC 6455's own example.
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");

    let rest = got[head_end..].to_vec();
    let mut ws = tokio_tungstenite::WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    let mut seen = Vec::new();
    within("the welcome, the ack and the pong", async {
        while seen.len() < 3 {
            match futures::StreamExt::next(&mut ws).await {
                Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str::<Value>(&t).unwrap()["type"].clone()),
                Some(Ok(Message::Pong(p))) => {
                    assert_eq!(&p[..], b"are you there");
                    seen.push(json!("pong"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(seen, [json!("welcome"), json!("ack"), json!("pong")]);
    // The connection goes on: a published event arrives.
    let ids = s.publish_ok(json!({"topic": "a", "data": 5})).await;
    let mut events = Vec::new();
    within("the event", async {
        while let Some(Ok(msg)) = futures::StreamExt::next(&mut ws).await {
            if let Message::Text(t) = msg {
                events.push(serde_json::from_str::<Value>(&t).unwrap());
                return;
            }
        }
    })
    .await;
    assert_eq!((events[0]["id"].as_str(), &events[0]["data"]), (Some(ids[0].as_str()), &json!(5)));
    s.stop().await;
}
