//! `GET /stream` served straight on the socket. The gateway's own server sees an event-stream
//! request coming (by peeking at the first bytes) and answers it without the HTTP framework:
//! the request head is parsed once, the response is a plain body that ends with the connection
//! (no chunked framing), and each wake-up writes everything waiting for the client with one
//! `write`. A connection holds only its socket, its client queue and a small task, instead of an
//! HTTP connection's read and write buffers. Everything else (and `/stream` on a keep-alive
//! connection that began with another request, or in an app that nests the router) goes through
//! axum with the same rendering ([`crate::sse::Pump`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::hub::Hub;
use crate::sse::{self, Flow, Pump};

/// Longest request head accepted on this path.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last bytes of a closed stream may take to go out.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// Whether the connection starts with a `GET /stream` request: waits for its first bytes.
/// `None` if the peer sent nothing in time or went away.
pub async fn sniff(stream: &TcpStream) -> Option<bool> {
    const PREFIX: &[u8] = b"GET /stream";
    let mut first = [0u8; PREFIX.len() + 1];
    let n = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)).await.ok()?.ok()?;
    if n == 0 {
        return None;
    }
    // A request split before its path is rare; it goes the general way.
    Some(n == first.len() && first.starts_with(PREFIX) && matches!(first[PREFIX.len()], b'?' | b' '))
}

/// Reads bytes until the request head is complete.
async fn read_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
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
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
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
    let mut sink = [0u8; 256];
    loop {
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

/// What the request asks for.
struct Asked {
    query: Option<String>,
    last_event_id: Option<String>,
    origin: Option<String>,
}

fn parse(head: &[u8]) -> Result<Asked, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let bad = |m: &str| ApiError::bad_request("invalid_request", m);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("malformed HTTP request")),
    }
    let path = req.path.unwrap_or("");
    let query = path.split_once('?').map(|(_, q)| q.to_owned());
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned)
    };
    Ok(Asked { query, last_event_id: header("last-event-id"), origin: header("origin") })
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
async fn refuse(stream: &TcpStream, e: ApiError, cors: Option<&str>) -> io::Result<()> {
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
    write_all(stream, &out).await
}

/// Serves one `GET /stream` connection until the stream ends, the peer goes away or `kill` is
/// cancelled.
pub async fn serve(hub: Hub, stream: TcpStream, kill: CancellationToken) {
    let stream = Arc::new(stream);
    let head = tokio::select! {
        head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&stream)) => match head {
            Ok(Ok(head)) => head,
            _ => return,
        },
        _ = kill.cancelled() => return,
    };
    let asked = match parse(&head) {
        Ok(a) => a,
        Err(e) => {
            let _ = refuse(&stream, e, None).await;
            return;
        }
    };
    drop(head);
    let cors = allow_origin(&hub, asked.origin.as_deref());
    let opened = tokio::select! {
        opened = sse::open(&hub, asked.query.as_deref(), asked.last_event_id.as_deref()) => opened,
        _ = kill.cancelled() => return,
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, refuse(&stream, e, cors.as_deref())).await;
            return;
        }
    };
    let (mut pump, first) = Pump::new(opened);
    pump.write_directly(stream.clone());
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
            if let Flow::End(_) = pump.fill(&mut out).await {
                // The last bytes (a `retry:` hint) get a while to go out, even to a client
                // that stopped reading.
                let _ = tokio::time::timeout(LAST_WRITE, write_all(&stream, &out)).await;
                return Ok::<_, io::Error>(());
            }
        }
    };
    tokio::select! {
        r = streaming => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "event stream ended");
            }
        }
        _ = peer_gone(&stream) => {}
        _ = kill.cancelled() => {}
    }
    // Dropping the pump unregisters the client; dropping the socket closes it.
}
