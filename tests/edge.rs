//! The HTTP/1.1 edge, tried with raw sockets as HTTP and WebSocket client libraries use it:
//! request heads of every shape on the socket path (a fresh `GET /stream` or `GET /ws`) and the
//! hyper path (anything else, or a keep-alive connection that began with another request), the
//! WebSocket handshake as RFC 6455 §4.2.1 says, and error answers that arrive in full to a client
//! that writes its whole request before reading.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{get_request, request_head, within, Sse, TestServer, WS_HEADERS};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

/// A response read off a raw connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    /// The whole body when the response says how long it is, else empty (a stream or a `101`).
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The contract's error code, checking the error's shape on the way.
    fn error_code(&self) -> String {
        let body = self.json();
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"]["code"].as_str().expect("an error code").to_owned()
    }
}

/// A client on a raw TCP connection: writes bytes, reads responses.
struct Raw {
    tcp: TcpStream,
    /// Read but not consumed yet.
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        Raw { tcp, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("a write", self.tcp.write_all(bytes)).await.expect("write");
    }

    /// Reads more into `buf`; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = within("bytes from the gateway", self.tcp.read(&mut chunk)).await.expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads the next response: its head, and its body if it has a `content-length`.
    async fn reply(&mut self) -> Reply {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = res.parse(&self.buf).expect("a well-formed response") {
                let status = res.code.expect("a status");
                let headers: Vec<(String, String)> = res
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                self.buf.drain(..len);
                let mut reply = Reply { status, headers, body: Vec::new() };
                if let Some(n) = reply.header("content-length").map(|v| v.parse::<usize>().expect("a length")) {
                    while self.buf.len() < n {
                        assert!(self.fill().await, "the connection ended inside a body: {reply:?}");
                    }
                    reply.body = self.buf.drain(..n).collect();
                }
                return reply;
            }
            assert!(
                self.fill().await,
                "the connection ended before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads until `needle` has come (in a stream's body).
    async fn read_until(&mut self, needle: &str) {
        while !self.buf.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            assert!(self.fill().await, "the stream ended before {needle:?}: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// Reads to the end of the stream and says whether it ended cleanly (a FIN, not a reset).
    async fn ends_cleanly(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        within("the gateway to close the connection", async {
            loop {
                match self.tcp.read(&mut chunk).await {
                    Ok(0) => return true,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(_) => return false,
                }
            }
        })
        .await
    }

    /// The connection as a WebSocket client, after a `101`.
    async fn websocket(self) -> tokio_tungstenite::WebSocketStream<TcpStream> {
        tokio_tungstenite::WebSocketStream::from_partially_read(self.tcp, self.buf, Role::Client, None).await
    }

    /// A connection that has been served one request through the HTTP framework, so what it
    /// sends next goes the framework's way, not the socket path's.
    async fn kept_alive(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        assert_eq!(raw.reply().await.status, 200);
        raw
    }
}

/// The headers of a valid WebSocket handshake, with `change` applied (`None` drops a header).
fn ws_headers<'a>(change: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = WS_HEADERS.to_vec();
    for (name, value) in change {
        headers.retain(|(n, _)| n != name);
        if let Some(v) = value {
            headers.push((name, v));
        }
    }
    headers
}

/// Reads a WebSocket's frames until a text frame, which must be the welcome.
async fn expect_ws_welcome(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Value {
    within("the WebSocket welcome", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "welcome", "{v}");
                    return v;
                }
                Some(Ok(_)) => {}
                other => panic!("no welcome: {other:?}"),
            }
        }
    })
    .await
}

/// Opens a stream with `head` on a fresh connection and checks that it streams.
async fn streams(addr: SocketAddr, head: &[u8]) {
    let mut raw = Raw::connect(addr).await;
    raw.send(head).await;
    let reply = raw.reply().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    raw.read_until("event: welcome").await;
}

/// Sends `head` on a fresh connection and checks that it is upgraded and welcomed.
async fn upgrades(raw: Raw, head: &[u8]) {
    let mut raw = raw;
    raw.send(head).await;
    let reply = raw.reply().await;
    assert_eq!(reply.status, 101, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let mut ws = raw.websocket().await;
    expect_ws_welcome(&mut ws).await;
}

/// Sends `request` on `raw` and expects the contract's error with `status` and `code`; a refusal
/// on a fresh connection closes it cleanly afterwards.
async fn refused(mut raw: Raw, request: &[u8], status: u16, code: &str) -> Reply {
    raw.send(request).await;
    let reply = raw.reply().await;
    assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{reply:?}");
    if reply.header("connection") == Some("close") {
        assert!(raw.ends_cleanly().await, "the connection was reset after {reply:?}");
    }
    reply
}

/// A `POST /publish` whose body is `size` bytes of valid JSON for topic `big`.
fn big_publish(size: usize) -> Vec<u8> {
    let mut body = br#"{"topic":"big","data":""#.to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

#[tokio::test]
async fn a_16_mib_body_written_before_reading_gets_the_413_every_time() {
    let s = TestServer::start().await;
    let mut watcher = Sse::connect(&s.api, "topic=big").await;
    let body = big_publish(16 << 20);
    for run in 0..5 {
        // With Content-Length: refused from the head, while the client still writes.
        let mut raw = Raw::connect(s.addr).await;
        let mut request = format!(
            "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let reply = refused_after_body(&mut raw, &request).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (413, "payload_too_large"), "run {run}: {reply:?}");

        // Chunked: refused once the limit is passed, mid-body.
        let mut raw = Raw::connect(s.addr).await;
        let mut request = b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
            Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        for chunk in body.chunks(64 * 1024) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let reply = refused_after_body(&mut raw, &request).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (413, "payload_too_large"), "run {run}: {reply:?}");
    }
    // Nothing was published: the next event on the topic is the one published now.
    let ids = s.publish_ok(json!({"topic": "big", "data": "small"})).await;
    let ev = watcher.expect("message").await;
    assert_eq!((ev.id.as_str(), ev.data.as_str()), (ids[0].as_str(), "\"small\""));
    s.stop().await;
}

/// Writes all of `request`, only then reads: the reply, then a clean end.
async fn refused_after_body(raw: &mut Raw, request: &[u8]) -> Reply {
    raw.send(request).await;
    let reply = raw.reply().await;
    assert!(raw.ends_cleanly().await, "the connection was reset after {reply:?}");
    reply
}

#[tokio::test]
async fn oversized_heads_get_431_on_the_socket_path() {
    let s = TestServer::start().await;
    let pad = "a".repeat(20 * 1024);
    for target in ["/stream?topic=a", "/ws?topic=a"] {
        let request = get_request(target, &ws_headers(&[("X-Pad", Some(&pad))]));
        refused(Raw::connect(s.addr).await, &request, 431, "request_header_fields_too_large").await;
    }
    // Just under the limit is fine.
    let pad = "a".repeat(15 * 1024);
    streams(s.addr, &get_request("/stream?topic=a", &[("X-Pad", &pad)])).await;
    s.stop().await;
}

#[tokio::test]
async fn more_than_100_headers_get_431() {
    let s = TestServer::start().await;
    let names: Vec<String> = (0..101).map(|i| format!("X-Header-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    for target in ["/stream?topic=a", "/ws?topic=a"] {
        refused(Raw::connect(s.addr).await, &get_request(target, &many), 431, "request_header_fields_too_large").await;
    }
    // 90 are fine.
    streams(s.addr, &get_request("/stream?topic=a", &many[..90])).await;
    s.stop().await;
}

#[tokio::test]
async fn malformed_heads_get_400() {
    let s = TestServer::start().await;
    let bad: [&[u8]; 5] = [
        b"GET /stream?topic=a HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /stream?topic=a HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /stream?topic=a HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        b"GET /ws?topic=a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
        b"GET /stream?topic=a HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    for request in bad {
        let reply = refused(Raw::connect(s.addr).await, request, 400, "invalid_request").await;
        assert_eq!(reply.header("connection"), Some("close"));
    }
    s.stop().await;
}

#[tokio::test]
async fn bare_lf_heads_are_served() {
    let s = TestServer::start().await;
    streams(s.addr, &request_head("HTTP/1.1", "/stream?topic=a", &[], "\n")).await;
    upgrades(Raw::connect(s.addr).await, &request_head("HTTP/1.1", "/ws?topic=a", &ws_headers(&[]), "\n")).await;
    // The same through the framework.
    let mut raw = Raw::kept_alive(s.addr).await;
    raw.send(&request_head("HTTP/1.1", "/stream?topic=a", &[], "\n")).await;
    assert_eq!(raw.reply().await.status, 200);
    raw.read_until("event: welcome").await;
    s.stop().await;
}

#[tokio::test]
async fn http_1_0_streams_but_does_not_upgrade() {
    let s = TestServer::start().await;
    streams(s.addr, &request_head("HTTP/1.0", "/stream?topic=a", &[], "\r\n")).await;
    let request = request_head("HTTP/1.0", "/ws?topic=a", &ws_headers(&[]), "\r\n");
    refused(Raw::connect(s.addr).await, &request, 400, "websocket_required").await;
    s.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_gets_the_stream() {
    let s = TestServer::start().await;
    streams(s.addr, &get_request(&format!("http://{}/stream?topic=a", s.addr), &[])).await;
    s.stop().await;
}

#[tokio::test]
async fn a_get_stream_with_a_body_still_streams() {
    let s = TestServer::start().await;
    for body_headers in [[("Content-Length", "5")], [("Transfer-Encoding", "chunked")]] {
        let mut raw = Raw::connect(s.addr).await;
        let mut request = get_request("/stream?topic=body", &body_headers);
        request.extend_from_slice(if body_headers[0].0 == "Content-Length" {
            b"hello"
        } else {
            b"5\r\nhello\r\n0\r\n\r\n"
        });
        raw.send(&request).await;
        assert_eq!(raw.reply().await.status, 200);
        raw.read_until("event: welcome").await;
        let ids = s.publish_ok(json!({"topic": "body", "data": 1})).await;
        raw.read_until(&format!("id: {}", ids[0])).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_get_ws_with_a_body_is_refused_and_the_answer_arrives() {
    let s = TestServer::start().await;
    let mut request = get_request("/ws?topic=a", &ws_headers(&[("Content-Length", Some("5"))]));
    request.extend_from_slice(b"hello");
    refused(Raw::connect(s.addr).await, &request, 400, "invalid_request").await;
    refused(Raw::kept_alive(s.addr).await, &request, 400, "invalid_request").await;
    // A large body, written whole before the client reads: the answer still arrives.
    let size = 4 << 20;
    let mut request = get_request("/ws?topic=a", &ws_headers(&[("Content-Length", Some(&size.to_string()))]));
    request.resize(request.len() + size, b'x');
    refused(Raw::connect(s.addr).await, &request, 400, "invalid_request").await;
    s.stop().await;
}

#[tokio::test]
async fn pipelined_heads_are_both_answered() {
    let s = TestServer::start().await;
    let mut raw = Raw::connect(s.addr).await;
    let mut request = get_request("/healthz", &[]);
    request.extend_from_slice(&get_request("/stream?topic=a", &[]));
    raw.send(&request).await;
    let health = raw.reply().await;
    assert_eq!(health.status, 200, "{health:?}");
    let stream = raw.reply().await;
    assert_eq!(stream.status, 200, "{stream:?}");
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    raw.read_until("event: welcome").await;
    s.stop().await;
}

/// Sends `bytes` one per write, after `first` in one write.
async fn dribble(raw: &mut Raw, first: usize, bytes: &[u8]) {
    raw.send(&bytes[..first]).await;
    for b in &bytes[first..] {
        raw.send(std::slice::from_ref(b)).await;
        // Paces the bytes so that they arrive in separate segments.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_head_sent_one_byte_at_a_time_is_served() {
    let s = TestServer::start().await;
    let stream = get_request("/stream?topic=a", &[]);
    let ws = get_request("/ws?topic=a", &ws_headers(&[]));
    // From the first byte (which goes the framework's way: the path is not known yet), and
    // after the path (the socket path).
    for first in [1, "GET /stream?".len()] {
        let mut raw = Raw::connect(s.addr).await;
        dribble(&mut raw, first, &stream).await;
        assert_eq!(raw.reply().await.status, 200);
        raw.read_until("event: welcome").await;
    }
    for first in [1, "GET /ws?".len()] {
        let mut raw = Raw::connect(s.addr).await;
        dribble(&mut raw, first, &ws).await;
        upgrades(raw, b"").await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_head_that_stops_coming_is_closed_after_the_head_timeout() {
    let s = TestServer::start().await;
    let started = Instant::now();
    let slow = |line: &'static [u8]| async move {
        let mut raw = Raw::connect(s.addr).await;
        raw.send(line).await;
        let clean = raw.ends_cleanly().await;
        (clean, started.elapsed())
    };
    // The socket path, and the framework's.
    let (direct, framework) =
        tokio::join!(slow(b"GET /stream?topic=a HTTP/1.1\r\n"), slow(b"GET /healthz HTTP/1.1\r\n"));
    for (clean, after) in [direct, framework] {
        assert!(clean, "closed with a reset");
        // The head timeout is 10 s.
        assert!(after >= Duration::from_secs(9) && after < Duration::from_secs(13), "closed after {after:?}");
    }
    s.stop().await;
}

/// A handshake to refuse: what is wrong with it, its headers, the status and code expected.
struct BadHandshake {
    what: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
}

fn bad_handshakes() -> Vec<BadHandshake> {
    let bad = |what, change: &[(&'static str, Option<&'static str>)], status, code| BadHandshake {
        what,
        headers: ws_headers(change),
        status,
        code,
    };
    vec![
        bad("no key", &[("Sec-WebSocket-Key", None)], 400, "invalid_websocket_key"),
        bad("an empty key", &[("Sec-WebSocket-Key", Some(""))], 400, "invalid_websocket_key"),
        bad("a key of 10 bytes", &[("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZQ=="))], 400, "invalid_websocket_key"),
        bad(
            "a key not in base64",
            &[("Sec-WebSocket-Key", Some("not base64 at all!!!!!=="))],
            400,
            "invalid_websocket_key",
        ),
        bad("version 8", &[("Sec-WebSocket-Version", Some("8"))], 426, "unsupported_websocket_version"),
        bad("no Upgrade", &[("Upgrade", None)], 400, "websocket_required"),
        bad("no Connection: upgrade", &[("Connection", Some("keep-alive"))], 400, "websocket_required"),
    ]
}

#[tokio::test]
async fn bad_handshakes_are_refused_alike_on_both_paths() {
    let s = TestServer::start().await;
    for BadHandshake { what, headers, status, code } in bad_handshakes() {
        let request = get_request("/ws?topic=a", &headers);
        for path in ["socket", "framework"] {
            let raw = match path {
                "socket" => Raw::connect(s.addr).await,
                _ => Raw::kept_alive(s.addr).await,
            };
            raw_check(raw, &request, status, code, what, path).await;
        }
    }
    // A good handshake still upgrades on both.
    upgrades(Raw::connect(s.addr).await, &get_request("/ws?topic=a", &ws_headers(&[]))).await;
    upgrades(Raw::kept_alive(s.addr).await, &get_request("/ws?topic=a", &ws_headers(&[]))).await;
    s.stop().await;
}

async fn raw_check(mut raw: Raw, request: &[u8], status: u16, code: &str, what: &str, path: &str) {
    raw.send(request).await;
    let reply = raw.reply().await;
    assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{what} on the {path} path: {reply:?}");
    if status == 426 {
        assert_eq!(reply.header("sec-websocket-version"), Some("13"), "{what} on the {path} path: {reply:?}");
    }
    if reply.header("connection") == Some("close") {
        assert!(raw.ends_cleanly().await, "{what} on the {path} path: reset after the answer");
    }
}

#[tokio::test]
async fn error_answers_on_the_socket_path_arrive_before_a_clean_close() {
    let s = TestServer::start().await;
    // A bad topic, refused after the head, with more bytes sent behind it.
    let mut request = get_request("/stream?topic=a%01b", &[]);
    request.extend(std::iter::repeat_n(b'x', 1 << 20));
    refused(Raw::connect(s.addr).await, &request, 400, "invalid_topic").await;
    s.stop().await;
}
