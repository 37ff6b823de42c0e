//! `GET /stream` and `GET /ws` served straight on the socket. The gateway's own server sees such a
//! request coming (by peeking at the first bytes) and answers it without the HTTP framework: the
//! request head is parsed once; an event stream is a plain body that ends with the connection (no
//! chunked framing); a WebSocket handshake is answered here and its frames go straight to the
//! socket. Each wake-up writes everything waiting for the client with one `write`, and while
//! nothing waits the fan-out writes to the socket itself. A connection holds only its socket, its
//! client queue and a small task, instead of an HTTP connection's read and write buffers.
//! Everything else (and these paths on a keep-alive connection that began with another request,
//! or in an app that nests the router) goes through axum with the same rendering
//! ([`crate::sse::Pump`], [`crate::ws::session`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client::Wire;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::server::ConnHandle;
use crate::sse::{self, Flow, Pump};
use crate::ws;

/// Longest request head accepted on this path.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last bytes of a closed stream may take to go out.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// What a new connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// `GET /stream`: served here.
    Stream,
    /// `GET /ws`: served here.
    Ws,
    /// Anything else: the HTTP framework serves it.
    Other,
}

/// What the connection starts with: waits for its first bytes. `None` if the peer sent nothing
/// in time or went away.
pub async fn sniff(stream: &TcpStream) -> Option<Sniffed> {
    const LONGEST: usize = b"GET /stream".len() + 1;
    let mut first = [0u8; LONGEST];
    let n = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)).await.ok()?.ok()?;
    if n == 0 {
        return None;
    }
    // A request split before its path is rare; it goes the general way.
    let is =
        |prefix: &[u8]| n > prefix.len() && first.starts_with(prefix) && matches!(first[prefix.len()], b'?' | b' ');
    Some(if is(b"GET /stream") {
        Sniffed::Stream
    } else if is(b"GET /ws") {
        Sniffed::Ws
    } else {
        Sniffed::Other
    })
}

/// Reads bytes until the request head is complete.
async fn read_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    // Read into the Vec itself: a buffer on the stack would be kept in every connection's task
    // (a task is as large as its largest state).
    let mut head = Vec::with_capacity(1024);
    loop {
        stream.readable().await?;
        head.reserve(1024);
        match stream.try_read_buf(&mut head) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

/// Writes all of `buf`, waiting while the socket pushes back.
pub(crate) async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Completes when the peer closes its side (or the connection fails). Anything it sends after
/// its request is read and ignored.
async fn peer_gone(stream: &TcpStream) {
    let mut sink = [0u8; 64];
    loop {
        tokio::task::consume_budget().await;
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A request head, parsed.
struct Head {
    query: Option<String>,
    headers: HeaderMap,
    /// Where the head ends in the bytes read: anything after it came early.
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether a comma-separated header holds `token` (any case).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn parse(bytes: &[u8]) -> Result<Head, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let bad = || ApiError::bad_request("invalid_request", "malformed HTTP request");
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return Err(bad()),
    };
    let query = req.path.unwrap_or("").split_once('?').map(|(_, q)| q.to_owned());
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(Head { query, headers: map, len })
}

/// The `Access-Control-Allow-Origin` the router's CORS layer would send.
fn allow_origin(hub: &Hub, origin: Option<&str>) -> Option<String> {
    let origin = origin?;
    match crate::cors_origins(&hub.config().cors_origins) {
        None => Some("*".to_owned()),
        Some(mut list) => list.any(|o| o == origin).then(|| origin.to_owned()),
    }
}

fn response_head(status: StatusCode, headers: &[(&str, &str)], cors: Option<&str>) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("")).as_bytes(),
    );
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(origin) = cors {
        out.extend_from_slice(format!("access-control-allow-origin: {origin}\r\n").as_bytes());
        out.extend_from_slice(b"access-control-expose-headers: *\r\nvary: origin\r\n");
    }
    out
}

/// Answers an error as the router would: the contract's JSON body, then the connection closes.
/// A peer that does not read gets [`HEAD_TIMEOUT`] for it.
async fn refuse(stream: &TcpStream, e: ApiError, cors: Option<&str>) {
    let body = e.body().to_string();
    let length = body.len().to_string();
    let retry = e.retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "application/json"), ("content-length", &*length), ("connection", "close")];
    if let Some(r) = &retry {
        headers.push(("retry-after", r));
    }
    let mut out = response_head(e.status, &headers, cors);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = tokio::time::timeout(HEAD_TIMEOUT, write_all(stream, &out)).await;
}

/// Reads the request head, unless the peer is too slow or the connection is cut.
async fn head_of(stream: &TcpStream, kill: &CancellationToken) -> Option<Vec<u8>> {
    tokio::select! {
        head = tokio::time::timeout(HEAD_TIMEOUT, read_head(stream)) => head.ok()?.ok(),
        _ = kill.cancelled() => None,
    }
}

/// Serves one `GET /stream` connection until the stream ends, the peer goes away or `kill` is
/// cancelled.
pub async fn serve(hub: Hub, stream: TcpStream, kill: CancellationToken) {
    let stream = Arc::new(stream);
    let Some(head) = head_of(&stream, &kill).await else { return };
    let asked = match parse(&head) {
        Ok(a) => a,
        Err(e) => {
            refuse(&stream, e, None).await;
            return;
        }
    };
    drop(head);
    let cors = allow_origin(&hub, asked.header("origin"));
    let opened = tokio::select! {
        opened = sse::open(&hub, asked.query.as_deref(), asked.header("last-event-id")) => opened,
        _ = kill.cancelled() => return,
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            refuse(&stream, e, cors.as_deref()).await;
            return;
        }
    };
    let (mut pump, first) = Pump::new(opened);
    pump.write_directly(stream.clone());
    let client = pump.client().clone();
    let mut out = response_head(StatusCode::OK, &sse::HEADERS, cors.as_deref());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&first);
    drop(first);
    let streaming = async {
        loop {
            write_all(&stream, &out).await?;
            out.clear();
            // Until something is queued again, pushes write to the socket themselves.
            pump.idle();
            if let Flow::End = pump.fill(&mut out).await {
                // The last bytes (a `retry:` hint) get a while to go out, even to a client
                // that stopped reading.
                let _ = tokio::time::timeout(LAST_WRITE, write_all(&stream, &out)).await;
                return Ok::<_, io::Error>(());
            }
        }
    };
    // Once the hub has closed the client (its queue overflowed, the backend or shutdown), the
    // rest and a `retry:` hint get a grace period; a peer that does not read keeps the writer
    // blocked, and is then cut.
    let closed_for_good = async {
        client.closed().await;
        tokio::time::sleep(LAST_WRITE).await;
    };
    tokio::select! {
        r = streaming => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "event stream ended");
            }
        }
        _ = peer_gone(&stream) => {}
        _ = kill.cancelled() => {}
        _ = closed_for_good => {}
    }
    // Dropping the pump unregisters the client; dropping the socket closes it.
}

/// Checks that a `GET /ws` head asks for a WebSocket (RFC 6455 §4.2.1) and returns its
/// `Sec-WebSocket-Accept`.
fn accept_key(head: &Head) -> Result<String, ApiError> {
    let refuse = |m: &str| ApiError::bad_request("websocket_required", m);
    if !head.lists("connection", "upgrade") {
        return Err(refuse("Connection header did not include 'upgrade'"));
    }
    if !head.lists("upgrade", "websocket") {
        return Err(refuse("`Upgrade` header did not include 'websocket'"));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(refuse("`Sec-WebSocket-Version` header did not include '13'"));
    }
    let key = head.header("sec-websocket-key").ok_or_else(|| refuse("`Sec-WebSocket-Key` header missing"))?;
    Ok(tungstenite::handshake::derive_accept_key(key.trim().as_bytes()))
}

/// Serves one `GET /ws` connection: the handshake here, then the session of [`crate::ws`] with
/// frames written straight to the socket and the peer's frames decoded by tungstenite.
pub async fn serve_ws(hub: Hub, stream: TcpStream, handle: ConnHandle) {
    let kill = handle.token();
    let stream = Arc::new(stream);
    let Some(bytes) = head_of(&stream, &kill).await else { return };
    let accepted = parse(&bytes).and_then(|head| {
        let setup = ws::Setup::read(&hub, head.query.as_deref(), &head.headers)?;
        Ok((setup, accept_key(&head)?, bytes[head.len..].to_vec()))
    });
    let (setup, accept, early) = match accepted {
        Ok(a) => a,
        Err(e) => {
            refuse(&stream, e, None).await;
            return;
        }
    };
    drop(bytes);
    let mut out = response_head(
        StatusCode::SWITCHING_PROTOCOLS,
        &[("connection", "upgrade"), ("upgrade", "websocket"), ("sec-websocket-accept", &accept)],
        None,
    );
    out.extend_from_slice(b"\r\n");
    let switched = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, write_all(&stream, &out)) => matches!(r, Ok(Ok(()))),
        _ = kill.cancelled() => false,
    };
    if !switched {
        return;
    }
    drop(out);
    let limit = hub.config().max_body_bytes;
    let socket = stream.clone();
    ws::session(hub, setup, Some(handle), |hub, client| {
        client.write_directly(stream.clone(), Wire::Ws);
        let messages = Box::pin(ws::socket_messages(&hub, stream.clone(), client.clone(), early, limit));
        let writer = async move {
            if let Err(e) = ws::write_socket(&hub, &client, &stream).await {
                tracing::debug!(client_id = %client.id(), error = %e, "websocket write failed");
            }
        };
        (messages, writer)
    })
    .await;
    // The session has unregistered the client. The server closes TCP first (RFC 6455 §7.1.1),
    // then lets the peer's last bytes (its answer to a close) arrive before the socket goes.
    if !kill.is_cancelled() {
        crate::linger::linger(&socket, ws::CLOSE_WAIT, crate::linger::LINGER_BYTES).await;
    }
}
