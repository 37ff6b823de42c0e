//! RFC 6455 closing and error paths of `GET /ws`, with hand-written frames over a plain TCP
//! socket, on both serving paths: a fresh connection (served on the socket itself, `direct`) and a
//! keep-alive connection that first asks `GET /healthz` (served through axum). They cover what
//! Autobahn|Testsuite's fuzzingclient checks in its sections 2-7 (`tests/autobahn/run.sh`), for
//! machines without its Python 2.7.
//!
//! Every close test asserts the close code the client reads (after the gateway's own text frames,
//! such as `welcome`) and that the gateway then closes TCP within [`BOUND`]: end of stream, not a
//! reset. Where the gateway starts the close, the client answers with its close frame first, as
//! RFC 6455 §5.5.1 asks.

mod common;

use std::fmt;
use std::time::Duration;

use common::op::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
use common::{encode_frame, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest wait for each step of a close: the close frame, then the end of the connection.
const BOUND: Duration = Duration::from_secs(5);

/// How the upgrade reaches the gateway.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// A fresh connection: the gateway serves it on the socket itself.
    Direct,
    /// A keep-alive connection that began with `GET /healthz`: served through axum.
    Axum,
}

/// One frame as it is on the wire.
#[derive(Clone, PartialEq, Eq)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = opcode_name(self.opcode);
        let shown: String = String::from_utf8_lossy(&self.payload).chars().take(80).collect();
        write!(f, "{name} frame (fin {}, rsv {}, {} bytes: {shown:?})", self.fin, self.rsv, self.payload.len())
    }
}

fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        CONTINUATION => "continuation",
        TEXT => "text",
        BINARY => "binary",
        CLOSE => "close",
        PING => "ping",
        PONG => "pong",
        _ => "reserved",
    }
}

impl Frame {
    fn new(opcode: u8, payload: &[u8]) -> Frame {
        Frame { fin: true, rsv: 0, opcode, payload: payload.to_vec() }
    }

    /// A close frame with `code` (none: an empty payload) and `reason`.
    fn close(code: Option<u16>, reason: &[u8]) -> Frame {
        let mut payload = Vec::new();
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
        }
        Frame::new(CLOSE, &payload)
    }

    fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    fn rsv(mut self, rsv: u8) -> Frame {
        self.rsv = rsv;
        self
    }

    /// The frame's bytes, masked with `mask` as a client must (RFC 6455 §5.3), or not.
    fn encode(&self, mask: Option<[u8; 4]>) -> Vec<u8> {
        encode_frame(self.fin, self.rsv, self.opcode, &self.payload, mask)
    }

    /// A whole frame at the start of `buf`, and its length; `None` if more bytes are needed.
    fn decode(buf: &[u8]) -> Option<(Frame, usize)> {
        let (&b0, &b1) = (buf.first()?, buf.get(1)?);
        let mut at = 2;
        let len = match b1 & 0x7f {
            126 => {
                let len = u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize;
                at = 4;
                len
            }
            127 => {
                let len = u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize;
                at = 10;
                len
            }
            n => usize::from(n),
        };
        let mask: Option<[u8; 4]> = if b1 & 0x80 != 0 {
            let key = buf.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(key)
        } else {
            None
        };
        let mut payload = buf.get(at..at + len)?.to_vec();
        if let Some(key) = mask {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
        }
        let frame = Frame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode: b0 & 0xf, payload };
        Some((frame, at + len))
    }

    /// A close frame's code (`None` for an empty payload) and reason.
    fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// What reading from the gateway gave.
#[derive(Debug)]
enum Read {
    Frame(Frame),
    /// The gateway closed its side: the end of the stream.
    Eof,
    /// The connection failed, e.g. reset.
    Failed(std::io::ErrorKind),
    TimedOut,
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Frame(frame) => write!(f, "a {frame:?}"),
            Read::Eof => write!(f, "the end of the TCP stream (EOF)"),
            Read::Failed(kind) => write!(f, "a failed connection ({kind:?})"),
            Read::TimedOut => write!(f, "nothing within {BOUND:?}"),
        }
    }
}

/// A WebSocket client that writes and reads raw frames.
struct Raw {
    tcp: TcpStream,
    path: Path,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    /// Whether this client has sent a close frame (then it does not answer the gateway's).
    sent_close: bool,
    client_id: String,
}

impl Raw {
    /// Connects over `path`, upgrades, and reads the gateway's `welcome` frame.
    async fn open(server: &TestServer, path: Path) -> Raw {
        Self::open_at(server, path, "/ws").await
    }

    async fn open_at(server: &TestServer, path: Path, target: &str) -> Raw {
        let tcp = common::within("a TCP connection", TcpStream::connect(server.addr)).await.expect("connect");
        let mut raw = Raw { tcp, path, buf: Vec::new(), sent_close: false, client_id: String::new() };
        let host = server.addr;
        if let Path::Axum = path {
            raw.write(format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes()).await;
            let (head, body) = raw.response().await;
            assert!(head.starts_with("HTTP/1.1 200"), "GET /healthz answered {head}{body}");
        }
        let request = format!(
            "GET {target} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        );
        raw.write(request.as_bytes()).await;
        let head = raw.head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "[{path:?}] the upgrade was answered {head}");
        // RFC 6455 §1.3's example key and its answer.
        assert!(
            head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "[{path:?}] wrong Sec-WebSocket-Accept in {head}"
        );
        let welcome = match raw.read(BOUND).await {
            Read::Frame(f) if f.opcode == TEXT => f,
            other => panic!("[{path:?}] expected the welcome text frame, got {other}"),
        };
        let welcome: Value = serde_json::from_slice(&welcome.payload).expect("the welcome is JSON");
        assert_eq!(welcome["type"], "welcome", "[{path:?}] the first frame: {welcome}");
        raw.client_id = welcome["client_id"].as_str().expect("a client_id").to_owned();
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_write(bytes).await {
            panic!("[{:?}] {e}", self.path);
        }
    }

    async fn try_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(BOUND, self.tcp.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("writing to the gateway failed: {e}")),
            Err(_) => Err(format!("the gateway read nothing for {BOUND:?} while the client was writing")),
        }
    }

    /// Sends `frame`, masked as a client's frames must be.
    async fn send(&mut self, frame: Frame) {
        if let Err(e) = self.send_raw(masked(frame)).await {
            panic!("[{:?}] {e}", self.path);
        }
    }

    /// Sends `bytes`, a frame already encoded.
    async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        if bytes.first().is_some_and(|b| b & 0xf == CLOSE) {
            self.sent_close = true;
        }
        self.try_write(&bytes).await
    }

    /// Reads more bytes into `buf` until `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), Read> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
            Err(_) => Err(Read::TimedOut),
            Ok(Ok(0)) => Err(Read::Eof),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(Read::Failed(e.kind())),
        }
    }

    /// An HTTP response head, up to its blank line.
    async fn head(&mut self) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            if let Err(e) = self.fill(deadline).await {
                panic!("[{:?}] waiting for a response head, got {e}", self.path);
            }
        }
    }

    /// A whole HTTP response with a `content-length` body.
    async fn response(&mut self) -> (String, String) {
        let head = self.head().await;
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        let deadline = Instant::now() + BOUND;
        while self.buf.len() < length {
            if let Err(e) = self.fill(deadline).await {
                panic!("[{:?}] waiting for a response body, got {e}", self.path);
            }
        }
        let body: Vec<u8> = self.buf.drain(..length).collect();
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// The next frame, the end of the stream, or a failure, within `wait`.
    async fn read(&mut self, wait: Duration) -> Read {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((frame, used)) = Frame::decode(&self.buf) {
                self.buf.drain(..used);
                return Read::Frame(frame);
            }
            if let Err(end) = self.fill(deadline).await {
                return end;
            }
        }
    }

    /// The next frame other than the gateway's text frames and heartbeat pings (answered).
    async fn next_control(&mut self, deadline: Instant) -> Read {
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())).await {
                Read::Frame(f) if f.opcode == TEXT => continue,
                Read::Frame(f) if f.opcode == PING => self.send(Frame::new(PONG, &f.payload)).await,
                other => return other,
            }
        }
    }

    /// Expects the gateway's close frame with one of `codes` (empty: with no code), skipping its
    /// text frames; answers it with a close frame if this client has not sent one; then expects
    /// the gateway to close TCP cleanly.
    async fn expect_close(&mut self, codes: &[u16]) -> Result<(), String> {
        let frame = match self.next_control(Instant::now() + BOUND).await {
            Read::Frame(f) if f.opcode == CLOSE => f,
            other => return Err(format!("expected a close frame with {}, got {other}", show_codes(codes))),
        };
        let code = frame.close_code();
        let fits = match code {
            None => codes.is_empty(),
            Some(c) => codes.contains(&c),
        };
        if !fits {
            let got = code.map_or("no code".to_owned(), |c| format!("code {c}"));
            return Err(format!(
                "expected a close frame with {}, got {got} ({:?})",
                show_codes(codes),
                String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
            ));
        }
        if frame.payload.len() == 1 || frame.payload.len() > 125 {
            return Err(format!("the gateway's close frame is malformed: {frame:?}"));
        }
        let got = code.map_or("a close frame with no code".to_owned(), |c| format!("close {c}"));
        if !self.sent_close {
            // The gateway started the close: a client echoes its code (RFC 6455 §5.5.1).
            self.send_raw(masked(Frame::close(code, b"")))
                .await
                .map_err(|e| format!("got {got} as expected, then answering it: {e}"))?;
        }
        self.expect_eof().await.map_err(|e| format!("got {got} as expected, then {e}"))
    }

    /// Expects the gateway to close TCP, with nothing more sent: EOF within [`BOUND`], not a
    /// reset.
    async fn expect_eof(&mut self) -> Result<(), String> {
        match self.read(BOUND).await {
            Read::Eof => Ok(()),
            other => Err(format!("after the closing handshake, expected the gateway to close TCP (EOF), got {other}")),
        }
    }
}

fn show_codes(codes: &[u16]) -> String {
    match codes {
        [] => "no code".to_owned(),
        [c] => format!("code {c}"),
        _ => format!("code {}", codes.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ")),
    }
}

/// Fails the test with every failure of `results`, each prefixed with its case.
fn check(path: Path, results: Vec<(String, Result<(), String>)>) {
    let failures: Vec<String> =
        results.into_iter().filter_map(|(what, r)| r.err().map(|e| format!("[{path:?}] {what}: {e}"))).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Opens a connection, sends `frames` (already encoded), and expects a close with `codes`.
async fn closes_with(server: &TestServer, path: Path, frames: Vec<Vec<u8>>, codes: &[u16]) -> Result<(), String> {
    let mut ws = Raw::open(server, path).await;
    for bytes in frames {
        if let Err(e) = ws.send_raw(bytes).await {
            // Whatever the gateway sent before it cut the connection is still to be read.
            let before = ws.next_control(Instant::now() + BOUND).await;
            return Err(format!("{e} (a gateway that closes drains its input); before that it sent {before}"));
        }
    }
    ws.expect_close(codes).await
}

fn masked(frame: Frame) -> Vec<u8> {
    frame.encode(Some([0x11, 0x22, 0x33, 0x44]))
}

/// Generates a test per serving path from `async fn $name(path: Path)`.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn direct() {
                    super::$name(super::Path::Direct).await
                }

                #[tokio::test]
                async fn axum() {
                    super::$name(super::Path::Axum).await
                }
            }
        )*
    };
}

on_both_paths!(
    close_1000_is_answered_with_1000,
    close_codes_are_echoed,
    close_without_payload_is_answered,
    invalid_close_codes_get_1002,
    close_with_one_byte_gets_1002,
    close_reason_not_utf8_gets_1007,
    reserved_bits_get_1002,
    reserved_opcodes_get_1002,
    fragmented_control_frame_gets_1002,
    control_frame_over_125_bytes_gets_1002,
    unmasked_frame_gets_1002,
    text_not_utf8_gets_1007,
    text_not_utf8_across_fragments_gets_1007,
    continuation_without_start_gets_1002,
    data_frame_inside_fragmented_message_gets_1002,
    message_over_the_limit_gets_1009,
    ping_gets_pong_with_its_payload,
    ping_between_fragments_gets_pong,
    kicked_client_gets_1000_then_tcp_close,
    text_after_close_is_ignored,
);

async fn close_1000_is_answered_with_1000(path: Path) {
    let server = TestServer::start().await;
    let r = closes_with(&server, path, vec![masked(Frame::close(Some(1000), b"bye"))], &[1000]).await;
    check(path, vec![("close 1000".into(), r)]);
}

async fn close_codes_are_echoed(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for code in [3000, 4000, 3999, 4999] {
        let r = closes_with(&server, path, vec![masked(Frame::close(Some(code), b""))], &[code]).await;
        results.push((format!("close {code}"), r));
    }
    // RFC 6455 §5.5.1: typically the code received; 1000 is also a normal answer.
    for code in [1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011] {
        let r = closes_with(&server, path, vec![masked(Frame::close(Some(code), b"why"))], &[code, 1000]).await;
        results.push((format!("close {code}"), r));
    }
    check(path, results);
}

async fn close_without_payload_is_answered(path: Path) {
    let server = TestServer::start().await;
    // With no code received, the answer has no code, or 1000.
    let mut ws = Raw::open(&server, path).await;
    ws.send(Frame::close(None, b"")).await;
    let r = match ws.next_control(Instant::now() + BOUND).await {
        Read::Frame(f) if f.opcode == CLOSE && matches!(f.close_code(), None | Some(1000)) => ws.expect_eof().await,
        other => Err(format!("expected a close frame with no code or 1000, got {other}")),
    };
    check(path, vec![("an empty close frame".into(), r)]);
}

async fn invalid_close_codes_get_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let r = closes_with(&server, path, vec![masked(Frame::close(Some(code), b""))], &[1002]).await;
        results.push((format!("close with code {code}"), r));
    }
    check(path, results);
}

async fn close_with_one_byte_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let r = closes_with(&server, path, vec![masked(Frame::new(CLOSE, &[0x03]))], &[1002]).await;
    check(path, vec![("a close frame with a 1-byte payload".into(), r)]);
}

async fn close_reason_not_utf8_gets_1007(path: Path) {
    let server = TestServer::start().await;
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";
    let r = closes_with(&server, path, vec![masked(Frame::close(Some(1000), reason))], &[1007]).await;
    check(path, vec![("a close reason that is not UTF-8".into(), r)]);
}

async fn reserved_bits_get_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for rsv in 1..=7 {
        let frames = vec![masked(Frame::new(TEXT, br#"{"type":"ping"}"#).rsv(rsv))];
        results.push((format!("a text frame with RSV {rsv}"), closes_with(&server, path, frames, &[1002]).await));
    }
    let frames = vec![masked(Frame::new(PING, b"hi").rsv(4))];
    results.push(("a ping with RSV 4".into(), closes_with(&server, path, frames, &[1002]).await));
    check(path, results);
}

async fn reserved_opcodes_get_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for opcode in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        let frames = vec![masked(Frame::new(opcode, b"reserved"))];
        results.push((format!("a frame with opcode {opcode}"), closes_with(&server, path, frames, &[1002]).await));
    }
    check(path, results);
}

async fn fragmented_control_frame_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let frames =
        vec![masked(Frame::new(PING, b"fragment1").fin(false)), masked(Frame::new(CONTINUATION, b"fragment2"))];
    let r = closes_with(&server, path, frames, &[1002]).await;
    check(path, vec![("a ping without FIN".into(), r)]);
}

async fn control_frame_over_125_bytes_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for opcode in [PING, PONG, CLOSE] {
        let mut payload = vec![0xfe; 126];
        if opcode == CLOSE {
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            payload[2..].fill(b'a');
        }
        let frames = vec![masked(Frame::new(opcode, &payload))];
        results.push((
            format!("a {} frame of 126 bytes", opcode_name(opcode)),
            closes_with(&server, path, frames, &[1002]).await,
        ));
    }
    check(path, results);
}

async fn unmasked_frame_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for frame in [Frame::new(TEXT, br#"{"type":"ping"}"#), Frame::new(PING, b"hi")] {
        let what = format!("an unmasked {frame:?}");
        results.push((what, closes_with(&server, path, vec![frame.encode(None)], &[1002]).await));
    }
    check(path, results);
}

async fn text_not_utf8_gets_1007(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    let payloads: [&[u8]; 5] = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\"caf\xe9\""];
    for payload in payloads {
        let frames = vec![masked(Frame::new(TEXT, payload))];
        results.push((format!("a text frame {payload:x?}"), closes_with(&server, path, frames, &[1007]).await));
    }
    check(path, results);
}

async fn text_not_utf8_across_fragments_gets_1007(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    // Valid, then a code point past U+10FFFF, then valid again.
    let frames = vec![
        masked(Frame::new(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5").fin(false)),
        masked(Frame::new(CONTINUATION, b"\xf4\x90\x80\x80").fin(false)),
        masked(Frame::new(CONTINUATION, b"edited")),
    ];
    results
        .push(("a text message invalid in its 2nd fragment".into(), closes_with(&server, path, frames, &[1007]).await));
    // A truncated code point at the end of the message.
    let frames = vec![masked(Frame::new(TEXT, b"{\"a\":\"").fin(false)), masked(Frame::new(CONTINUATION, b"\xe2\x82"))];
    results
        .push(("a text message ending inside a code point".into(), closes_with(&server, path, frames, &[1007]).await));
    check(path, results);

    // A code point split across fragments is valid: the message is taken (the ping is acked).
    let mut ws = Raw::open(&server, path).await;
    let text = r#"{"type":"ping","ref":"café"}"#.as_bytes();
    let split = text.len() - 3; // inside `é`
    ws.send(Frame::new(TEXT, &text[..split]).fin(false)).await;
    ws.send(Frame::new(CONTINUATION, &text[split..])).await;
    let reply = expect_text(&mut ws).await;
    assert_eq!(reply["type"], "ack", "[{path:?}] a code point split across fragments: {reply}");
    assert_eq!(reply["ref"], "café", "[{path:?}] {reply}");
}

async fn continuation_without_start_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for fin in [true, false] {
        let frames = vec![masked(Frame::new(CONTINUATION, b"nothing to continue").fin(fin))];
        results.push((
            format!("a continuation frame (fin {fin}) first"),
            closes_with(&server, path, frames, &[1002]).await,
        ));
    }
    // After a whole message, there is nothing to continue either.
    let frames = vec![masked(Frame::new(TEXT, br#"{"type":"ping"}"#)), masked(Frame::new(CONTINUATION, b"more"))];
    results
        .push(("a continuation frame after a whole message".into(), closes_with(&server, path, frames, &[1002]).await));
    check(path, results);
}

async fn data_frame_inside_fragmented_message_gets_1002(path: Path) {
    let server = TestServer::start().await;
    let mut results = Vec::new();
    for opcode in [TEXT, BINARY] {
        let frames = vec![
            masked(Frame::new(TEXT, b"{\"type\":").fin(false)),
            masked(Frame::new(opcode, br#"{"type":"ping"}"#)),
            masked(Frame::new(CONTINUATION, br#""ping"}"#)),
        ];
        let what = format!("a {} frame inside a fragmented message", opcode_name(opcode));
        results.push((what, closes_with(&server, path, frames, &[1002]).await));
    }
    check(path, results);
}

async fn message_over_the_limit_gets_1009(path: Path) {
    const LIMIT: usize = 4096;
    let server = TestServer::with(|c| c.max_body_bytes = LIMIT).await;
    let mut results = Vec::new();
    let big = vec![b'a'; LIMIT + 1];
    let frames = vec![masked(Frame::new(TEXT, &big))];
    results.push((format!("a text frame of {} bytes", big.len()), closes_with(&server, path, frames, &[1009]).await));
    let frames = vec![masked(Frame::new(BINARY, &big))];
    results.push((format!("a binary frame of {} bytes", big.len()), closes_with(&server, path, frames, &[1009]).await));
    let third = vec![b'a'; LIMIT / 3 + 1];
    let frames = vec![
        masked(Frame::new(TEXT, &third).fin(false)),
        masked(Frame::new(CONTINUATION, &third).fin(false)),
        masked(Frame::new(CONTINUATION, &third).fin(false)),
        masked(Frame::new(CONTINUATION, &third)),
    ];
    results.push((
        format!("a text message of 4 fragments of {} bytes", third.len()),
        closes_with(&server, path, frames, &[1009]).await,
    ));
    // Only the header of a huge frame: the gateway need not wait for its payload.
    let mut header = masked(Frame::new(TEXT, b""));
    header[1] = 0x80 | 127;
    header.splice(2..2, (16u64 << 20).to_be_bytes());
    results.push(("the header of a 16 MiB text frame".into(), closes_with(&server, path, vec![header], &[1009]).await));
    check(path, results);
}

async fn ping_gets_pong_with_its_payload(path: Path) {
    let server = TestServer::start().await;
    let mut ws = Raw::open(&server, path).await;
    let payloads: [&[u8]; 4] = [b"", b"Hello, world!", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", &[0xfe; 125]];
    for payload in payloads {
        ws.send(Frame::new(PING, payload)).await;
        match ws.next_control(Instant::now() + BOUND).await {
            Read::Frame(f) if f.opcode == PONG && f.fin && f.payload == payload => {}
            other => panic!(
                "[{path:?}] a ping with {} bytes: expected a pong with the same payload, got {other}",
                payload.len()
            ),
        }
    }
    // An unsolicited pong gets nothing; the connection stays open.
    ws.send(Frame::new(PONG, b"unsolicited")).await;
    ws.send(Frame::new(TEXT, br#"{"type":"ping","ref":1}"#)).await;
    let reply = expect_text(&mut ws).await;
    assert_eq!(reply["ref"], 1, "[{path:?}] after an unsolicited pong: {reply}");
    let r = async {
        ws.send(Frame::close(Some(1000), b"")).await;
        ws.expect_close(&[1000]).await
    }
    .await;
    check(path, vec![("close 1000 after pings".into(), r)]);
}

async fn ping_between_fragments_gets_pong(path: Path) {
    let server = TestServer::start().await;
    let mut ws = Raw::open(&server, path).await;
    ws.send(Frame::new(TEXT, br#"{"type":"ping","#).fin(false)).await;
    ws.send(Frame::new(PING, b"between")).await;
    match ws.next_control(Instant::now() + BOUND).await {
        Read::Frame(f) if f.opcode == PONG && f.payload == b"between" => {}
        other => panic!("[{path:?}] a ping between fragments: expected a pong \"between\", got {other}"),
    }
    ws.send(Frame::new(CONTINUATION, br#""ref":"frag"}"#)).await;
    let reply = expect_text(&mut ws).await;
    assert_eq!(reply["type"], "ack", "[{path:?}] the message around the ping: {reply}");
    assert_eq!(reply["ref"], "frag", "[{path:?}] {reply}");
}

async fn kicked_client_gets_1000_then_tcp_close(path: Path) {
    let server = TestServer::start().await;
    let mut ws = Raw::open(&server, path).await;
    let (status, body) = server.delete(&format!("/clients/{}", ws.client_id)).await;
    assert!(status.is_success(), "DELETE /clients/{}: {status} {body}", ws.client_id);
    // `ws::close_of` gives a client disconnected by the backend 1000.
    let r = ws.expect_close(&[1000]).await;
    check(path, vec![("DELETE /clients/{id}".into(), r)]);
}

async fn text_after_close_is_ignored(path: Path) {
    let server = TestServer::start().await;
    let frames = vec![
        masked(Frame::close(Some(1000), b"")),
        masked(Frame::new(TEXT, br#"{"type":"ping","ref":1}"#)),
        masked(Frame::new(PING, b"after close")),
    ];
    let mut ws = Raw::open(&server, path).await;
    for bytes in frames {
        if let Err(e) = ws.send_raw(bytes).await {
            check(path, vec![("frames after the client's close".into(), Err(e))]);
        }
    }
    // Nothing answers what follows a close: the close frame comes, then EOF.
    let r = match ws.read(BOUND).await {
        Read::Frame(f) if f.opcode == CLOSE && f.close_code() == Some(1000) => ws.expect_eof().await,
        other => Err(format!("expected only a close frame with 1000, got {other}")),
    };
    check(path, vec![("frames after the client's close".into(), r)]);
}

/// The next JSON text frame, answering heartbeat pings and skipping pongs.
async fn expect_text(ws: &mut Raw) -> Value {
    let deadline = Instant::now() + BOUND;
    loop {
        match ws.read(deadline.saturating_duration_since(Instant::now())).await {
            Read::Frame(f) if f.opcode == TEXT => {
                return serde_json::from_slice(&f.payload).expect("a JSON text frame")
            }
            Read::Frame(f) if f.opcode == PING => ws.send(Frame::new(PONG, &f.payload)).await,
            Read::Frame(f) if f.opcode == PONG => continue,
            other => panic!("[{:?}] expected a text frame, got {other}", ws.path),
        }
    }
}
