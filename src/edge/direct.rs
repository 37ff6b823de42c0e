//! `GET /stream` and `GET /ws` served straight on the socket. The gateway's own server sees such a
//! request coming (by peeking at the first bytes) and answers it without the HTTP framework: the
//! request head is parsed once; an event stream is a plain body that ends with the connection (no
//! chunked framing); a WebSocket handshake is answered here and its frames go straight to the
//! socket. Each wake-up writes everything waiting for the client with one `write`, and while
//! nothing waits the fan-out writes to the socket itself. A connection holds only its socket, its
//! client queue and a small task, instead of an HTTP connection's read and write buffers.
//! Everything else (and these paths on a keep-alive connection that began with another request,
//! or in an app that nests the router) goes through axum with the same rendering
//! ([`crate::transport::sse::Pump`], [`crate::transport::ws::session`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::core::hub::Hub;
use crate::edge::linger::{linger, linger_idle, LINGER_BYTES, LINGER_TIME};
use crate::edge::socket::{pump_out, write_all, ws_messages};
use crate::http::error::ApiError;
use crate::transport::sse;
use crate::transport::ws;
use crate::transport::ws::handshake::{self, Refused};
use crate::transport::ConnHandle;

/// Longest request head accepted on this path, request line and headers together: 16 KiB
/// (hyper, which serves every other request, takes up to about 400 KiB). A longer head is
/// answered `431`.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request head, as in hyper (100); more are answered `431`.
const MAX_HEADERS: usize = 100;
/// How long a client may take to send its request head (as hyper's `header_read_timeout`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client closed for a full queue keeps its socket for the rest and the last bytes.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// What a new connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// `GET /stream`: served here.
    Stream,
    /// `GET /ws`: served here.
    Ws,
    /// Anything else: the HTTP framework serves it.
    Other,
}

/// What the connection starts with: waits for its first bytes. `None` if the peer sent nothing
/// in time or went away.
pub(crate) async fn sniff(stream: &TcpStream) -> Option<Sniffed> {
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

/// Why no request head was taken from a connection.
enum NoHead {
    /// The peer went away or was too slow, or the connection was cut: it closes unanswered.
    Gone,
    /// The head is too large or malformed: this is answered, then the connection closes.
    Refuse(ApiError),
}

/// Reads and parses the request head as bytes arrive, as hyper does: the first bytes are parsed
/// at once (a malformed request line is refused early), later ones once the bytes read look
/// like a whole head (bare-LF line ends included).
async fn read_head(stream: &TcpStream) -> Result<Head, NoHead> {
    // Read into the Vec itself: a buffer on the stack would be kept in every connection's task
    // (a task is as large as its largest state).
    let mut buf = Vec::with_capacity(1024);
    let mut scanned = None;
    loop {
        stream.readable().await.map_err(|_| NoHead::Gone)?;
        buf.reserve(1024);
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Err(NoHead::Gone),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(NoHead::Gone),
        }
        if scanned.is_none_or(|from| head_complete(&buf, from)) {
            if let Some(head) = parse(&buf).map_err(NoHead::Refuse)? {
                return Ok(head);
            }
        }
        scanned = Some(buf.len());
        if buf.len() >= MAX_HEAD {
            return Err(NoHead::Refuse(head_too_large()));
        }
    }
}

/// Whether `bytes` hold the blank line that ends a head (`\r\n\r\n`, `\n\n` or `\n\r\n`),
/// looking only at what came after the first `from` bytes (hyper's `is_complete_fast`).
pub(crate) fn head_complete(bytes: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    let tail = &bytes[start.min(bytes.len())..];
    tail.iter().enumerate().any(|(i, &b)| {
        let rest = &tail[i + 1..];
        b == b'\n' && (rest.starts_with(b"\n") || rest.starts_with(b"\r\n"))
    })
}

fn head_too_large() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_header_fields_too_large",
        format!("the request head is over {MAX_HEAD} bytes or {MAX_HEADERS} header lines"),
    )
}

/// Completes when the peer closes its side (or the connection fails). Anything it sends after
/// its request is read and ignored.
async fn peer_gone(stream: &TcpStream) {
    loop {
        tokio::task::consume_budget().await;
        if stream.readable().await.is_err() {
            return;
        }
        // Not kept across the awaits: it would be in every connection's task.
        let mut sink = [0u8; 64];
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
    /// HTTP/1.1 (else HTTP/1.0).
    http11: bool,
    query: Option<String>,
    headers: HeaderMap,
    /// The bytes read after the head: they came early (a body, or WebSocket frames).
    early: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Parses a request head from the start of `bytes`: `None` while it is incomplete. Refuses what
/// hyper refuses: malformed heads (`400`), too many headers or too many bytes (`431`), an
/// invalid or ambiguous `Content-Length` and `Transfer-Encoding` in HTTP/1.0 (`400`).
fn parse(bytes: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let bad = |m: &str| ApiError::bad_request("invalid_request", format!("malformed HTTP request: {m}"));
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(head_too_large()),
        Err(e) => return Err(bad(&e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(head_too_large());
    }
    let http11 = req.version == Some(1);
    let query = req.path.unwrap_or("").split_once('?').map(|(_, q)| q.to_owned());
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("invalid header value"))?;
        map.append(name, value);
    }
    if !http11 && map.contains_key(header::TRANSFER_ENCODING) {
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let mut lengths = map.get_all(header::CONTENT_LENGTH).iter().map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?
            .parse::<u64>()
            .ok()
    });
    if let Some(first) = lengths.next() {
        if first.is_none() || lengths.any(|l| l != first) {
            return Err(bad("invalid Content-Length"));
        }
    }
    Ok(Some(Head { http11, query, headers: map, early: bytes[len..].to_vec() }))
}

/// The `Access-Control-Allow-Origin` the router's CORS layer would send.
fn allow_origin(hub: &Hub, origin: Option<&str>) -> Option<String> {
    let origin = origin?;
    match crate::http::cors::origins(&hub.config().cors_origins) {
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

/// Answers an error as the router would: the contract's JSON body with `extra` headers, then a
/// lingering close ([`crate::edge::linger`]), so the answer arrives even to a client still sending.
/// A peer that does not read gets [`HEAD_TIMEOUT`] for the answer; a cut connection closes at once.
async fn refuse(stream: &TcpStream, e: ApiError, extra: &[(&str, &str)], cors: Option<&str>, kill: &CancellationToken) {
    let body = e.body().to_string();
    let length = body.len().to_string();
    let retry = e.retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "application/json"), ("content-length", &*length), ("connection", "close")];
    if let Some(r) = &retry {
        headers.push(("retry-after", r));
    }
    headers.extend_from_slice(extra);
    let mut out = response_head(e.status, &headers, cors);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    let answer = async {
        if let Ok(Ok(())) = tokio::time::timeout(HEAD_TIMEOUT, write_all(stream, &out)).await {
            linger(stream, LINGER_TIME, LINGER_BYTES).await;
        }
    };
    tokio::select! {
        _ = answer => {}
        _ = kill.cancelled() => {}
    }
}

/// Reads the request head, unless the peer is too slow or the connection is cut.
async fn head_of(stream: &TcpStream, kill: &CancellationToken) -> Result<Head, NoHead> {
    tokio::select! {
        head = tokio::time::timeout(HEAD_TIMEOUT, read_head(stream)) => head.unwrap_or(Err(NoHead::Gone)),
        _ = kill.cancelled() => Err(NoHead::Gone),
    }
}

/// Serves one `GET /stream` connection until the stream ends, the peer goes away or `kill` is
/// cancelled.
pub(crate) async fn serve(hub: Hub, stream: TcpStream, kill: CancellationToken) {
    let stream = Arc::new(stream);
    // What only opening the stream needs lives in this block: a variable keeps its room in the
    // task until its scope ends, even once moved or dropped, and the task stays as large as that
    // for the connection's life.
    let (mut pump, out) = {
        let asked = match head_of(&stream, &kill).await {
            Ok(head) => head,
            Err(NoHead::Gone) => return,
            Err(NoHead::Refuse(e)) => return refuse(&stream, e, &[], None, &kill).await,
        };
        let cors = allow_origin(&hub, asked.header("origin"));
        let opened = tokio::select! {
            opened = sse::open(&hub, asked.query.as_deref(), asked.header("last-event-id"), &asked.headers) => opened,
            _ = kill.cancelled() => return,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => return refuse(&stream, e, &[], cors.as_deref(), &kill).await,
        };
        drop(asked);
        let (pump, first) = sse::pump(opened);
        let mut out = response_head(StatusCode::OK, &sse::HEADERS, cors.as_deref());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&first);
        (pump, out)
    };
    let client = pump.client().clone();
    let streaming = pump_out(&stream, &mut pump, out);
    // Once the hub has closed the client (its queue overflowed, the backend or shutdown), the
    // rest and a `retry:` hint get a grace period; a peer that does not read keeps the writer
    // blocked, and is then cut.
    let closed_for_good = async {
        client.closed().await;
        tokio::time::sleep(LAST_WRITE).await;
    };
    let ended = tokio::select! {
        r = streaming => match r {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "event stream ended");
                false
            }
        },
        _ = peer_gone(&stream) => false,
        _ = kill.cancelled() => false,
        _ = closed_for_good => false,
    };
    // Dropping the pump unregisters the client.
    drop((pump, client));
    if ended {
        // The gateway ended the stream and its last bytes are on their way: half-closing and
        // reading what the peer sent last keeps it from resetting the connection under them.
        // Its input was read all along, so there is nothing to wait for.
        linger_idle(&stream, LINGER_TIME, Duration::ZERO, LINGER_BYTES).await;
    }
}

/// Checks that a `GET /ws` head asks for a WebSocket over HTTP/1.1 (RFC 6455 §4.2.1, the rest in
/// [`handshake::check`]) and returns its `Sec-WebSocket-Accept`.
fn accept_key(head: &Head) -> Result<String, Refused> {
    if !head.http11 {
        return Err(Refused(ApiError::bad_request("websocket_required", "a WebSocket handshake needs HTTP/1.1")));
    }
    handshake::check(&head.headers)
}

/// Serves one `GET /ws` connection: the handshake here, then the session of [`crate::transport::ws`] with
/// frames written straight to the socket and the peer's frames decoded by tungstenite.
pub(crate) async fn serve_ws(hub: Hub, stream: TcpStream, handle: ConnHandle) {
    let kill = handle.token();
    let stream = Arc::new(stream);
    let head = match head_of(&stream, &kill).await {
        Ok(head) => head,
        Err(NoHead::Gone) => return,
        Err(NoHead::Refuse(e)) => return refuse(&stream, e, &[], None, &kill).await,
    };
    let accepted = ws::Setup::read(&hub, head.query.as_deref(), &head.headers)
        .map_err(Refused)
        .and_then(|setup| Ok((setup, accept_key(&head)?)));
    let (setup, accept) = match accepted {
        Ok(a) => a,
        Err(refused) => {
            let extra = refused.headers();
            return refuse(&stream, refused.0, extra, None, &kill).await;
        }
    };
    // Only the bytes that came early are kept: the head's headers and query would otherwise stay
    // allocated for the connection's life.
    let early = {
        let head = head;
        head.early
    };
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
        let messages = Box::pin(ws_messages(&hub, stream.clone(), client.clone(), early, limit));
        let writer = async move {
            let mut pump = ws::pump(hub, client.clone());
            if let Err(e) = pump_out(&stream, &mut pump, BytesMut::new()).await {
                tracing::debug!(client_id = %client.id(), error = %e, "websocket write failed");
            }
        };
        (messages, writer)
    })
    .await;
    // The session has unregistered the client. The server closes TCP first (RFC 6455 §7.1.1),
    // then lets the peer's last bytes (its answer to a close) arrive before the socket goes.
    // A cut (the drain's time limit at shutdown) ends it at once.
    tokio::select! {
        _ = crate::edge::linger::linger(&socket, ws::CLOSE_WAIT, crate::edge::linger::LINGER_BYTES) => {}
        _ = kill.cancelled() => {}
    }
}
