//! HTTPS (`--tls-cert`/`--tls-key`): a certificate made at test time with `rcgen`, clients that
//! trust only it, and every request over HTTP/1.1 and HTTP/2 as ALPN picks: health checks,
//! event streams side by side on one HTTP/2 connection, a WebSocket, shutdown, certificate
//! reload on `SIGHUP`, and a pair that cannot be used.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{until, within, ChildServer, TestServer};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost`, written to PEM files in a directory of its own.
struct Cert {
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let cert = Cert { der: CertificateDer::from(Vec::new()), dir };
        cert.renewed()
    }

    /// A fresh certificate and key written over the files.
    fn renewed(mut self) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(self.cert_path(), made.cert.pem()).unwrap();
        std::fs::write(self.key_path(), made.key_pair.serialize_pem()).unwrap();
        self.der = made.cert.der().clone();
        self
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// The flags that serve HTTPS with it.
    fn args(&self) -> Vec<String> {
        let (c, k) = (self.cert_path(), self.key_path());
        vec!["--tls-cert".into(), path(&c), "--tls-key".into(), path(&k)]
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A gateway in the test process serving HTTPS with `cert`.
async fn server(cert: &Cert, tweak: impl FnOnce(&mut ssegate::Config)) -> TestServer {
    let (c, k) = (cert.cert_path(), cert.key_path());
    TestServer::with(move |config| {
        config.tls_cert = Some(c);
        config.tls_key = Some(k);
        tweak(config);
    })
    .await
}

/// A TLS connection to `addr` that trusts only `cert`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// One client connection, HTTP/2 or HTTP/1.1.
enum Conn {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Opens a connection; ALPN `h2` gives HTTP/2.
    async fn open(addr: SocketAddr, cert: &Cert, h2: bool) -> Conn {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = within("the TLS handshake", connect(addr, &cert.der, alpn)).await.expect("TLS handshake");
        let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(chosen.as_deref(), Some(alpn[0]), "the protocol ALPN picked");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<Value>) -> hyper::Response<hyper::body::Incoming> {
        let req = Request::builder().method(method);
        let req = match self {
            Conn::H2(_) => req.uri(format!("https://localhost{path}")),
            Conn::H1(_) => req.uri(path).header("host", "localhost"),
        };
        let req = match &body {
            Some(_) => req.header("content-type", "application/json"),
            None => req,
        };
        let req = req.body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()))).unwrap();
        let res = match self {
            Conn::H2(s) => within("a response", s.send_request(req)).await,
            Conn::H1(s) => {
                within("the connection to be ready", s.ready()).await.unwrap();
                within("a response", s.send_request(req)).await
            }
        };
        res.expect("a response")
    }

    /// `GET path`: the status, HTTP version and JSON body.
    async fn get(&mut self, path: &str) -> (StatusCode, Version, Value) {
        let res = self.send("GET", path, None).await;
        let (status, version) = (res.status(), res.version());
        let body = within("a body", res.into_body().collect()).await.unwrap().to_bytes();
        (status, version, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn publish(&mut self, body: Value) {
        let res = self.send("POST", "/publish", Some(body)).await;
        let status = res.status();
        let body = within("a body", res.into_body().collect()).await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "publish answered {}", String::from_utf8_lossy(&body));
    }

    /// `GET /stream?{query}`: the events, after checking the welcome.
    async fn stream(&mut self, query: &str) -> Events {
        let res = self.send("GET", &format!("/stream?{query}"), None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert!(res.headers().get("connection").is_none() || res.version() != Version::HTTP_2);
        let mut events: Events =
            Box::pin(res.into_body().into_data_stream().eventsource().map(|e| e.expect("an event")));
        let welcome = next(&mut events).await.expect("a welcome");
        assert_eq!(welcome.event, "welcome");
        events
    }
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

async fn next(events: &mut Events) -> Option<Event> {
    within("an SSE event", events.next()).await
}

#[tokio::test]
async fn health_over_http1_and_http2() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    for h2 in [false, true] {
        let mut conn = Conn::open(s.addr, &cert, h2).await;
        let (status, version, _) = conn.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(version, if h2 { Version::HTTP_2 } else { Version::HTTP_11 });
        // A second request on the same connection.
        let (status, _, _) = conn.get("/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = common::http().get(format!("http://{}/healthz", s.addr)).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    s.stop().await;
}

#[tokio::test]
async fn an_event_stream_over_http2_gets_events_and_drains_on_shutdown() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let mut conn = Conn::open(s.addr, &cert, true).await;
    let mut events = conn.stream("topic=news").await;
    conn.publish(json!({"topic": "news", "event": "t", "data": {"n": 1}})).await;
    let ev = next(&mut events).await.expect("the event");
    assert_eq!(ev.event, "t");
    assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), json!({"n": 1}));
    // Shutdown ends the stream (after telling the client to come back) and the drain completes
    // while the connection is open.
    s.stop().await;
    within("the stream to end", async { while events.next().await.is_some() {} }).await;
}

#[tokio::test]
async fn ten_streams_share_one_http2_connection() {
    let cert = Cert::new();
    // Ten slots per address: the connection's own covers its first event stream, each further
    // stream takes one, as if it had a connection of its own.
    let s = server(&cert, |c| c.max_per_address = 10).await;
    let mut conn = Conn::open(s.addr, &cert, true).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(conn.stream("topic=ticks").await);
    }
    let (status, _, clients) = conn.get("/clients").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(clients["clients"].as_array().unwrap().len(), 10, "{clients}");
    for n in 0..3 {
        conn.publish(json!({"topic": "ticks", "event": "tick", "data": n})).await;
    }
    for events in &mut streams {
        for n in 0..3 {
            let ev = next(events).await.expect("a tick");
            assert_eq!((ev.event.as_str(), ev.data.as_str()), ("tick", n.to_string().as_str()));
        }
    }
    // An eleventh stream is over the limit, on this connection or another one; other requests
    // on the connection still work.
    let res = conn.send("GET", "/stream?topic=ticks", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = within("a body", res.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "too_many_connections");
    let mut second = Conn::open(s.addr, &cert, true).await;
    let (status, _, refused) = second.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_connections");
    let (status, _, _) = conn.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    // A stream that ends gives its slot back.
    streams.pop();
    within("a stream's slot to come back", async {
        while conn_status(&mut conn, "/stream?topic=ticks").await != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(streams);
    s.stop().await;
}

/// The status of `GET path` on `conn` (the body, an event stream maybe, is dropped).
async fn conn_status(conn: &mut Conn, path: &str) -> StatusCode {
    conn.send("GET", path, None).await.status()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    // One connection that asks for nothing after its handshake, one that holds an event stream
    // (heartbeats aside, nothing moves on it), and one that opens and ends requests.
    let idle = Conn::open(s.addr, &cert, true).await;
    let mut busy = Conn::open(s.addr, &cert, true).await;
    let mut events = busy.stream("topic=news").await;
    let Conn::H2(idle) = idle else { unreachable!() };
    let started = std::time::Instant::now();
    within("the idle connection to be closed", async {
        while !idle.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(9), "closed after {:?}", started.elapsed());
    // The stream's connection stays, and its stream still gets events.
    busy.publish(json!({"topic": "news", "event": "t", "data": 1})).await;
    assert_eq!(next(&mut events).await.expect("the event").data, "1");
    s.stop().await;
}

#[tokio::test]
async fn long_poll_over_http2() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let mut conn = Conn::open(s.addr, &cert, true).await;
    let (status, version, first) = conn.get("/poll?topic=news").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2), "{first}");
    let (id, session, cursor) =
        (first["client_id"].as_str().unwrap(), first["session"].as_str().unwrap(), first["cursor"].as_str().unwrap());
    // A waiting poll and a publish side by side on the one connection.
    let Conn::H2(send) = &conn else { unreachable!() };
    let mut waiting = Conn::H2(send.clone());
    let query = format!("/poll?topic=news&client_id={id}&session={session}&cursor={cursor}&timeout=30");
    let waiting = tokio::spawn(async move { waiting.get(&query).await });
    conn.publish(json!({"topic": "news", "event": "t", "data": 7})).await;
    let (status, _, answer) = within("the long poll to answer", waiting).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.iter().map(|e| e["data"].clone()).collect::<Vec<_>>(), [json!(7)], "{answer}");
    s.stop().await;
}

/// Waits until the gateway lists a client (a subscription is in place), asking on `conn`.
async fn until_listed(conn: &mut Conn) {
    within("the client to be listed", async {
        while conn.get("/clients").await.2["clients"].as_array().is_none_or(|c| c.is_empty()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn websocket_over_tls() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let tls = connect(s.addr, &cert.der, &[b"http/1.1"]).await.unwrap();
    let (mut ws, _) =
        within("the websocket to open", tokio_tungstenite::client_async("wss://localhost/ws?topic=news", tls))
            .await
            .expect("websocket over TLS");
    let mut conn = Conn::open(s.addr, &cert, true).await;
    // The subscription is in place once the gateway lists the client.
    until_listed(&mut conn).await;
    conn.publish(json!({"topic": "news", "event": "t", "data": "over wss"})).await;
    let got = within("the event over the websocket", async {
        loop {
            match ws.next().await.expect("a frame").expect("a frame") {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    let frame: Value = serde_json::from_str(&t).expect("JSON frame");
                    if frame["event"] == "t" {
                        return frame;
                    }
                }
                _ => continue,
            }
        }
    })
    .await;
    assert_eq!(got["data"], "over wss");
    s.stop().await;
}

#[tokio::test]
async fn a_certificate_that_cannot_be_used_exits_64() {
    let cert = Cert::new();
    let missing = cert.dir.path().join("missing.pem");
    let cases: Vec<Vec<String>> = vec![
        vec!["--tls-cert".into(), path(&missing), "--tls-key".into(), path(&cert.key_path())],
        vec!["--tls-cert".into(), path(&cert.cert_path()), "--tls-key".into(), path(&missing)],
        // The key in place of the certificate, and a lone flag.
        vec!["--tls-cert".into(), path(&cert.key_path()), "--tls-key".into(), path(&cert.key_path())],
        vec!["--tls-cert".into(), path(&cert.cert_path())],
    ];
    for args in cases {
        let out = within(
            "the binary to exit",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
                .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false"])
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "{args:?}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_streams() {
    let cert = Cert::new();
    let args = cert.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = ChildServer::start(&args).await;
    let base = child.api.base.clone();
    let addr: SocketAddr = base.strip_prefix("https://").expect("listening on https://").parse().unwrap();
    let mut conn = Conn::open(addr, &cert, true).await;
    let mut events = conn.stream("topic=news").await;

    let old = cert.der.clone();
    let cert = cert.renewed();
    let pid = child.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    until("the new certificate to be served", || async { connect(addr, &cert.der, &[b"h2"]).await.is_ok() }).await;
    assert!(connect(addr, &old, &[b"h2"]).await.is_err(), "the old certificate is still served");

    // The stream opened before the reload goes on.
    conn.publish(json!({"topic": "news", "event": "t", "data": 1})).await;
    assert_eq!(next(&mut events).await.expect("the event").event, "t");
    assert!(child.terminate().await.success());
}

#[tokio::test]
async fn websocket_over_http2_by_extended_connect() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let tls = connect(s.addr, &cert.der, &[b"h2"]).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("CONNECT")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .uri("https://localhost/ws?topic=news")
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut res = within("the CONNECT answer", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = within("the stream", hyper::upgrade::on(&mut res)).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    // A publish on another stream of the same connection.
    let mut conn = Conn::H2(send);
    until_listed(&mut conn).await;
    conn.publish(json!({"topic": "news", "event": "t", "data": "over h2"})).await;
    let got = within("the event over the websocket", async {
        loop {
            if let tokio_tungstenite::tungstenite::Message::Text(t) =
                ws.next().await.expect("a frame").expect("a frame")
            {
                let frame: Value = serde_json::from_str(&t).expect("JSON frame");
                if frame["event"] == "t" {
                    return frame;
                }
            }
        }
    })
    .await;
    assert_eq!(got["data"], "over h2");
    s.stop().await;
}

#[tokio::test]
async fn http2_authority_counts_as_the_host() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let mut conn = Conn::open(s.addr, &cert, true).await;
    let Conn::H2(send) = &mut conn else { unreachable!() };
    let publish = |authority: &str, origin: Option<&str>| {
        let req = Request::builder()
            .method("POST")
            .uri(format!("https://{authority}/publish"))
            .header("content-type", "application/json");
        let req = match origin {
            Some(o) => req.header("origin", o),
            None => req,
        };
        req.body(Full::new(Bytes::from(json!({"topic": "t", "data": 1}).to_string()))).unwrap()
    };
    // A rebinding DNS name is refused as over HTTP/1.1; the gateway's own page is not.
    let res = within("a response", send.send_request(publish("rebind.evil.example:8443", None))).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let own = publish("localhost:8443", Some("https://localhost:8443"));
    let res = within("a response", send.send_request(own)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn the_reserved_connections_serve_no_streams_over_tls() {
    let cert = Cert::new();
    // Every connection is one of the reserved ones.
    let s = server(&cert, |c| c.max_connections = 0).await;
    for h2 in [true, false] {
        let mut conn = Conn::open(s.addr, &cert, h2).await;
        let (status, _, _) = conn.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, refused) = conn.get("/stream?topic=t").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(refused["error"]["code"], "too_many_connections");
    }
    s.stop().await;
}

/// `ssegate_open_connections{protocol}` as `GET /metrics` on `conn` shows it.
async fn open_connections(conn: &mut Conn, protocol: &str) -> f64 {
    let res = conn.send("GET", "/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = within("a body", res.into_body().collect()).await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let series = format!("ssegate_open_connections{{protocol=\"{protocol}\"}} ");
    let value =
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).unwrap_or_else(|| panic!("{series}in {text}"));
    value.parse().unwrap()
}

#[tokio::test]
async fn open_connections_count_an_http2_connection_once_by_protocol() {
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let mut h2 = Conn::open(s.addr, &cert, true).await;
    let streams = [h2.stream("topic=a").await, h2.stream("topic=b").await];
    // Two streams and this request: one HTTP/2 connection, and nothing else.
    assert_eq!(open_connections(&mut h2, "h2").await, 1.0);
    assert_eq!(open_connections(&mut h2, "https/1.1").await, 0.0);
    assert_eq!(open_connections(&mut h2, "http/1.1").await, 0.0);
    // An HTTP/1.1 connection over TLS counts as such.
    let mut h1 = Conn::open(s.addr, &cert, false).await;
    assert_eq!(open_connections(&mut h1, "https/1.1").await, 1.0);
    assert_eq!(open_connections(&mut h1, "h2").await, 1.0);
    // Closing the HTTP/2 connection (its streams with it) counts it closed.
    drop((streams, h2));
    within("the HTTP/2 connection to be counted closed", async {
        while open_connections(&mut h1, "h2").await != 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(open_connections(&mut h1, "https/1.1").await, 1.0);
    s.stop().await;
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_cut_alone_over_http2() {
    let cert = Cert::new();
    let s = server(&cert, |c| c.queue_size = 16).await;
    // A client (the h2 crate, which leaves flow control to its user) that reads a stream's data
    // but never gives the window back, so the gateway can send it at most 64 KiB; and on the
    // same connection a stream it reads as a browser would.
    let tls = within("the TLS handshake", connect(s.addr, &cert.der, &[b"h2"])).await.unwrap();
    let (h2, connection) =
        h2::client::Builder::new().initial_window_size(65_535).handshake::<_, Bytes>(tls).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = within("HTTP/2 to be ready", h2.ready()).await.unwrap();
    let get = |query: &str| Request::get(format!("https://localhost/stream?{query}")).body(()).unwrap();
    let (stalled, _) = h2.send_request(get("topic=big"), true).unwrap();
    let mut stalled = within("a response", stalled).await.unwrap().into_body();
    let (live, _) = h2.send_request(get("topic=small"), true).unwrap();
    let mut live = within("a response", live).await.unwrap().into_body();
    // A publisher on a connection of its own.
    let mut publisher = Conn::open(s.addr, &cert, true).await;
    // Far more than the window and the queue hold: the stalled client overflows, and is cut
    // 5 s later, alone: a reset of its stream, not of the connection.
    let big = "x".repeat(8 * 1024);
    for _ in 0..8 {
        let batch: Vec<Value> = (0..10).map(|_| json!({"topic": "big", "event": "b", "data": big})).collect();
        publisher.publish(Value::Array(batch)).await;
    }
    let mut received = 0;
    let reset = within("the stalled stream to be reset", async {
        loop {
            match stalled.data().await {
                Some(Ok(data)) => received += data.len(),
                Some(Err(e)) => break e,
                None => panic!("the stalled stream ended instead of being reset"),
            }
        }
    })
    .await;
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset:?}");
    assert!(received <= 65_535, "received {received} bytes past the window");
    // The other stream, on the same connection, goes on.
    publisher.publish(json!({"topic": "small", "event": "s", "data": 1})).await;
    let mut text = String::new();
    within("the event on the live stream", async {
        while !text.contains("event: s\ndata: 1\n") {
            let data = live.data().await.expect("the live stream goes on").unwrap();
            let _ = live.flow_control().release_capacity(data.len());
            text.push_str(&String::from_utf8_lossy(&data));
        }
    })
    .await;
    s.stop().await;
}

/// The clients the gateway lists, asked on `conn`.
async fn listed(conn: &mut Conn) -> usize {
    conn.get("/clients").await.2["clients"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_rapid_reset_flood_gives_back_every_slot_and_client() {
    let cert = Cert::new();
    let s = server(&cert, |c| c.max_per_address = 16).await;
    // A victim on a connection of its own, from the same address as the attacker.
    let mut victim = Conn::open(s.addr, &cert, true).await;
    let mut events = victim.stream("topic=victim").await;
    let mut watcher = Conn::open(s.addr, &cert, false).await;
    // The attacker (CVE-2023-44487): one HTTP/2 connection that opens event streams, far more
    // than its address may hold, and resets each, half before the answer and half after it
    // (once the gateway registered a client for it).
    let tls = within("the TLS handshake", connect(s.addr, &cert.der, &[b"h2"])).await.unwrap();
    let (h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = Some(h2);
    let (mut opened, mut answered, mut ok, mut refused) = (0, 0, 0, None);
    for i in 0..1_000 {
        let ready = match h2.take() {
            Some(h) => within("HTTP/2 to be ready", h.ready()).await,
            None => break,
        };
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                refused = Some(e);
                break;
            }
        };
        let get = Request::get("https://localhost/stream?topic=flood").body(()).unwrap();
        match ready.send_request(get, true) {
            Ok((response, _)) => {
                opened += 1;
                // Dropping the response resets the stream (CANCEL).
                if i % 2 == 1 {
                    if let Ok(r) = within("an answer", response).await {
                        assert!(matches!(r.status(), StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE));
                        answered += 1;
                        ok += usize::from(r.status() == StatusCode::OK);
                    }
                }
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        h2 = Some(ready);
    }
    // Either every stream was opened and reset, or the gateway ended the connection for abuse.
    match &refused {
        None => assert_eq!(opened, 1_000),
        Some(e) => assert!(e.is_go_away() || e.is_io(), "the attacker's connection ended with {e:?}"),
    }
    eprintln!(
        "rapid reset: {opened} streams opened, {answered} answered ({ok} with 200), connection ended: {refused:?}"
    );
    // Every client the flood registered is gone again: the victim is the only one left.
    within("the flood's clients to be gone", async {
        while listed(&mut watcher).await != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // The victim noticed nothing.
    victim.publish(json!({"topic": "victim", "event": "v", "data": 1})).await;
    let got = next(&mut events).await.expect("the victim's event");
    assert_eq!((got.event.as_str(), got.data.as_str()), ("v", "1"));
    // And the slots came back: the address may open as many streams as before.
    let mut again = Conn::open(s.addr, &cert, true).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(again.stream("topic=again").await);
    }
    s.stop().await;
}

/// An HTTP/2 frame: type, flags, stream, payload (RFC 9113 section 4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_continuation_flood_is_answered_with_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = Cert::new();
    let s = server(&cert, |_| {}).await;
    let tls = within("the TLS handshake", connect(s.addr, &cert.der, &[b"h2"])).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    // What the gateway sends back, until it closes the connection.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        got
    });
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    wr.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    // A HEADERS frame without END_HEADERS, then CONTINUATION frames of 16 KiB that never end the
    // header block (CVE-2024-27316 and its kin): at most 64 MiB, until the gateway hangs up.
    wr.write_all(&frame(0x1, 0x1, 1, &[0x82])).await.unwrap();
    let block = frame(0x9, 0, 1, &[0x82; 16_384]);
    let mut sent = 0usize;
    while sent < 64 << 20 && !reader.is_finished() {
        if wr.write_all(&block).await.is_err() {
            break;
        }
        sent += block.len();
    }
    let got = within("the gateway to close the connection", reader).await.unwrap();
    // Its frames: the first is its SETTINGS; somewhere after, a GOAWAY.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
        if got[at + 3] == 0x7 && at + 9 + 8 <= got.len() {
            goaway = Some(u32::from_be_bytes(got[at + 13..at + 17].try_into().unwrap()));
        }
        at += 9 + len;
    }
    let code = goaway.unwrap_or_else(|| panic!("no GOAWAY in {} bytes, after {sent} bytes sent", got.len()));
    // ENHANCE_YOUR_CALM (0xb) or PROTOCOL_ERROR (0x1).
    assert!(code == 0xb || code == 0x1, "GOAWAY with error code {code:#x}");
    eprintln!("continuation flood: GOAWAY {code:#x} after {sent} bytes sent");
    assert!(sent < 16 << 20, "the gateway read {sent} bytes of one header block before it hung up");
    // Others are served as before.
    let mut other = Conn::open(s.addr, &cert, true).await;
    assert_eq!(other.get("/healthz").await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn the_slots_of_an_http2_connection_follow_its_open_streams() {
    let cert = Cert::new();
    let s = server(&cert, |c| c.max_per_address = 2).await;
    let mut conn = Conn::open(s.addr, &cert, true).await;
    let first = conn.stream("topic=a").await;
    let mut second = conn.stream("topic=b").await;
    // The address's two slots are taken: a third stream is refused.
    assert_eq!(conn.send("GET", "/stream?topic=c", None).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The first stream ends (the client resets it), the second stays: one slot is free again,
    // whichever of the two held the connection's own.
    drop(first);
    within("the first stream's client to be gone", async {
        while listed(&mut conn).await != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut third = conn.stream("topic=c").await;
    assert_eq!(conn.send("GET", "/stream?topic=d", None).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    for (topic, events) in [("b", &mut second), ("c", &mut third)] {
        conn.publish(json!({"topic": topic, "event": "e", "data": topic})).await;
        let got = next(events).await.expect("an event");
        assert_eq!(got.data, format!("\"{topic}\""));
    }
    s.stop().await;
}
