//! Hostile clients (issue 12): each test runs one attack against the release binary and asserts
//! what a well-behaved victim sees meanwhile (its events on time, its requests answered, the
//! process alive) and what the attack costs the gateway (resident memory read from `/proc`).
//!
//! The attackers speak HTTP and WebSocket by hand on raw sockets: they must do what no real
//! client library does (never read, send half a message), and cost the test process little so
//! that the attack outpaces the gateway on a shared 2-core machine. The tests run one at a time
//! ([`SERIAL`]): each measures memory or delays that a neighbouring attack would distort.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_frame, get_request, op, until, within, ws_request, Api, ChildServer, Sse};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One attack at a time: a tokio mutex, so that no guard is held across an `.await` by a
/// blocking lock, and a failed test (its guard dropped while unwinding) does not poison it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the README lets a closed slow client keep its socket.
const OVERFLOW_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Raw HTTP on sockets.

/// The gateway's socket address, from its base URL.
fn addr_of(api: &Api) -> SocketAddr {
    api.base.trim_start_matches("http://").parse().expect("an http://IP:PORT base URL")
}

/// Connects to `addr` with a receive buffer of a few KiB, set before the handshake so the window
/// the gateway sees is small from the start: a peer that never reads pushes back at once.
async fn connect_small(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
    within("a connection", socket.connect(addr)).await.expect("connect")
}

/// Reads until a response head is complete; returns the head and the bytes that followed it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..at]).into_owned();
            return Ok((head, got.split_off(at + 4)));
        }
    }
}

/// Opens `/stream?{query}` on a raw socket and reads up to its welcome; returns the socket.
async fn raw_stream(addr: SocketAddr, query: &str) -> TcpStream {
    let mut tcp = within("a connection", TcpStream::connect(addr)).await.expect("connect");
    tcp.write_all(&get_request(&format!("/stream?{query}"), &[])).await.expect("send the request");
    within("a welcome", async {
        let (head, mut body) = read_head(&mut tcp).await.expect("a response head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut chunk = [0u8; 4096];
        while !body.windows(14).any(|w| w == b"event: welcome") {
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the stream ended before its welcome");
            body.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    tcp
}

/// Reads and throws away everything until the peer closes; returns how many bytes came.
async fn drain(mut stream: impl AsyncReadExt + Unpin) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// Whether the gateway process still holds its end of the TCP connection between `server` and
/// `client`. `/proc/net/tcp` lists every socket with the inode of the file that holds it: 0 once
/// no process does (it was closed; its last bytes may still be on their way), and the line goes
/// once the connection is over.
fn server_holds(server: SocketAddr, client: SocketAddr) -> bool {
    // The kernel prints an IPv4 address as its 32 bits read in the machine's byte order, and a
    // port as a number.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9 && f[1] == local && f[2] == remote && f[9] != "0"
    })
}

/// The gateway's resident memory, in MiB.
fn rss_mib(s: &ChildServer) -> f64 {
    s.rss_kib() as f64 / 1024.0
}

/// The highest resident memory of the gateway seen over `window` (sampled every 50 ms): what an
/// attack that is under way costs, without guessing when the gateway has taken it all in.
async fn peak_rss_mib(s: &ChildServer, window: Duration) -> f64 {
    let end = Instant::now() + window;
    let mut peak = rss_mib(s);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_mib(s));
    }
    peak
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames by hand (RFC 6455 §5.2).

/// The first whole server-to-client frame at the start of `buf` (servers never mask): its
/// opcode, its payload and how many bytes of `buf` it takes; `None` until all of it is there.
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "a server frame is never masked");
    let (len, at) = match b1 & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (usize::from(n), 2),
    };
    Some((b0 & 0x0f, buf.get(at..at + len)?, at + len))
}

/// Opens a WebSocket on `tcp`: sends the upgrade request for `path` and reads the `101`; returns
/// the bytes that followed the response head (the first frames).
async fn ws_open(tcp: &mut TcpStream, path: &str) -> std::io::Result<Vec<u8>> {
    tcp.write_all(&ws_request(path)).await?;
    let (head, rest) = read_head(tcp).await?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!("no upgrade: {head}")));
    }
    Ok(rest)
}

#[test]
fn hand_made_frames_read_as_tungstenite_reads_them() {
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    for len in [0, 5, 125, 126, 300, 65_535, 65_536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        for (fin, opcode, expected) in
            [(false, op::TEXT, OpCode::Data(Data::Text)), (true, op::CONTINUATION, OpCode::Data(Data::Continue))]
        {
            let bytes = client_frame(fin, opcode, &payload);
            let mut cursor = Cursor::new(&bytes);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
            assert_eq!((header.is_final, header.opcode, length), (fin, expected, len as u64));
            let mask = header.mask.expect("client frames are masked");
            let body = &bytes[cursor.position() as usize..];
            let unmasked: Vec<u8> = body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(unmasked, payload);
        }
        // The other way: a frame as the gateway's tungstenite writes it, then the start of the next.
        let mut bytes = Vec::new();
        Frame::message(payload.clone(), OpCode::Data(Data::Text), true).format(&mut bytes).unwrap();
        let whole = bytes.len();
        Frame::pong(&b"next"[..]).format(&mut bytes).unwrap();
        assert_eq!(server_frame(&bytes[..whole - 1]), None, "an incomplete frame");
        assert_eq!(server_frame(&bytes), Some((op::TEXT, &payload[..], whole)));
        assert_eq!(server_frame(&bytes[whole..]), Some((op::PONG, &b"next"[..], 6)));
        assert_eq!(OpCode::Control(Control::Pong), OpCode::from(op::PONG));
    }
}

// ---------------------------------------------------------------------------------------------
// Row 1: WebSocket clients flooding pings.

/// One flooding client: until `deadline`, sends `flood` (pings and `{"type":"ping"}` frames) over
/// and over on a WebSocket, reading and dropping the answers so that its queue never fills; if
/// the gateway closes it, it comes back. Counts what it sent in `sent` and its connections in
/// `connections`.
async fn flooder(
    addr: SocketAddr,
    flood: Arc<Vec<u8>>,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
) {
    let deadline = tokio::time::Instant::from_std(deadline);
    while tokio::time::Instant::now() < deadline {
        let opened = tokio::time::timeout_at(deadline, async {
            let mut tcp = TcpStream::connect(addr).await?;
            ws_open(&mut tcp, "/ws").await?;
            Ok::<_, std::io::Error>(tcp)
        })
        .await;
        let Ok(Ok(tcp)) = opened else { continue };
        connections.fetch_add(1, Ordering::Relaxed);
        let (read, mut write) = tcp.into_split();
        let answers = tokio::spawn(drain(read));
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, write.write_all(&flood)).await {
            sent.fetch_add(flood.len() as u64, Ordering::Relaxed);
        }
        answers.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_flooding_websocket_pings_do_not_stall_other_clients() {
    const FLOOD: Duration = Duration::from_secs(3);
    const EVERY: Duration = Duration::from_millis(50);
    const BOUND: Duration = Duration::from_secs(1);
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&[]).await;
    let addr = addr_of(&s);

    // The victim: an SSE subscriber that notes when each event arrives.
    let mut victim = Sse::connect(&s, "topic=victim").await;
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(ev) = victim.next().await {
            if ev.event == "n" {
                let n: u64 = serde_json::from_str(&ev.data).expect("a number");
                if arrivals.send((n, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });

    // The attack: two clients, each sending protocol pings and application pings (with a ref,
    // so each gets an ack) as fast as the socket takes them.
    let mut flood = Vec::new();
    for i in 0..500 {
        flood.extend(client_frame(true, op::PING, b"ping"));
        flood.extend(client_frame(true, op::TEXT, format!(r#"{{"type":"ping","ref":{i}}}"#).as_bytes()));
    }
    let flood = Arc::new(flood);
    let deadline = Instant::now() + FLOOD;
    let (sent, connections) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let flooders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(flooder(addr, flood.clone(), deadline, sent.clone(), connections.clone())))
        .collect();
    until("both flooders to connect", || async { connections.load(Ordering::Relaxed) >= 2 }).await;

    // Meanwhile a backend publishes to the victim every 50 ms.
    let mut published = Vec::new();
    let mut round_trips = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        let n = published.len() as u64;
        let at = Instant::now();
        let event = json!({"topic": "victim", "event": "n", "data": n});
        let answer = tokio::time::timeout(common::PATIENCE, s.publish(&event)).await;
        let (status, body) = answer.expect("a publish answered at all");
        assert_eq!(status, StatusCode::OK, "{body}");
        round_trips.push(at.elapsed());
        published.push(at);
    }
    for f in flooders {
        f.await.unwrap();
    }
    let flooded_mib = sent.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;

    let mut deliveries = Vec::new();
    within("every event to reach the victim", async {
        while deliveries.len() < published.len() {
            let (n, at) = arrived.recv().await.expect("the victim's stream stays open");
            assert_eq!(n, deliveries.len() as u64, "events in order, each once");
            deliveries.push(at.duration_since(published[n as usize]));
        }
    })
    .await;
    reader.abort();
    let worst_rtt = round_trips.iter().max().copied().unwrap_or_default();
    let worst_delivery = deliveries.iter().max().copied().unwrap_or_default();
    println!(
        "flood: {flooded_mib:.1} MiB sent by 2 clients ({} connections) in {FLOOD:?}; {} publishes, \
         worst round trip {worst_rtt:?}, worst delivery {worst_delivery:?}",
        connections.load(Ordering::Relaxed),
        published.len()
    );
    assert!(flooded_mib >= 1.0, "the flood was no flood: {flooded_mib:.2} MiB sent");
    assert!(
        worst_rtt < BOUND,
        "a publish took {worst_rtt:?} to answer while two clients flooded pings (bound {BOUND:?}; \
         {} publishes in {FLOOD:?} instead of ~{})",
        published.len(),
        FLOOD.as_millis() / EVERY.as_millis()
    );
    assert!(worst_delivery < BOUND, "an event took {worst_delivery:?} to reach the victim (bound {BOUND:?})");
    assert!(published.len() as u128 >= FLOOD.as_millis() / EVERY.as_millis() / 2, "{} publishes", published.len());
    let (status, _) = s.get_json("/healthz").await;
    assert_eq!(status, StatusCode::OK, "the gateway is alive");
}

// ---------------------------------------------------------------------------------------------
// Row 2: resuming from the oldest event and never reading.

/// Events in history, and their size: 2,000 × 8 KiB, ~16 MiB.
const HISTORY_EVENTS: usize = 2_000;
const EVENT_BYTES: usize = 8 * 1024;

/// Fills the gateway's history; returns the id of the oldest event.
async fn fill_history(s: &ChildServer) -> String {
    let pad = "h".repeat(EVENT_BYTES);
    let mut oldest = None;
    for b in 0..HISTORY_EVENTS / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| json!({"topic": "history", "event": "h", "data": {"n": b * 100 + i, "pad": pad}}))
            .collect();
        let ids = s.publish_ok(json!(batch)).await;
        oldest.get_or_insert_with(|| ids[0].clone());
    }
    oldest.expect("events")
}

/// `clients` resumers connect over `/ws` (if `ws`) or `/stream` with `topic=**` from the oldest
/// event in a ~16 MiB history, and never read a byte (their receive buffers are a few KiB).
/// The gateway's memory must not grow by anything like a copy of the history per resumer, and a
/// victim must still get live events.
async fn resumers_that_never_read(ws: bool, clients: usize, bound_mib: f64) {
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&[]).await;
    let addr = addr_of(&s);
    let oldest = fill_history(&s).await;
    let mut victim = Sse::connect(&s, "topic=victim").await;
    let before = rss_mib(&s);

    let mut attackers = Vec::new();
    for _ in 0..clients {
        let mut tcp = connect_small(addr).await;
        let request = if ws {
            ws_request(&format!("/ws?topic=**&lastEventId={}", common::urlencode(&oldest)))
        } else {
            get_request("/stream?topic=**", &[("Last-Event-ID", &oldest)])
        };
        tcp.write_all(&request).await.expect("send the request");
        attackers.push(tcp);
    }
    // Registered, or resumed and already cut as slow clients: either way the gateway took them in.
    until("the resumers to register", || async {
        s.client_ids().await.len() == clients + 1 || s.metric("ssegate_resumes_total").await >= clients as f64
    })
    .await;
    let peak = peak_rss_mib(&s, Duration::from_secs(2)).await;
    let grown = peak - before;
    let kind = if ws { "WebSocket" } else { "SSE" };
    println!(
        "{clients} {kind} resumers of {:.1} MiB of history: RSS {before:.1} -> {peak:.1} MiB (+{grown:.1})",
        (HISTORY_EVENTS * EVENT_BYTES) as f64 / f64::from(1 << 20)
    );
    assert!(
        grown < bound_mib,
        "{clients} {kind} clients resuming from the oldest of {HISTORY_EVENTS} events of {EVENT_BYTES} bytes and \
         never reading grew the gateway by {grown:.1} MiB ({before:.1} -> {peak:.1}; bound {bound_mib} MiB)"
    );

    let ids = s.publish_ok(json!({"topic": "victim", "event": "live", "data": 1})).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), victim.expect("live"))
        .await
        .expect("the victim's live event within 2 s");
    assert_eq!(ev.id, ids[0]);
    drop(attackers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_resuming_from_the_oldest_event_without_reading_do_not_bloat_memory() {
    // Ten private copies would be ~160 MiB.
    resumers_that_never_read(false, 10, 40.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_resuming_from_the_oldest_event_without_reading_do_not_bloat_memory() {
    // Four private copies would be ~64 MiB.
    resumers_that_never_read(true, 4, 40.0).await;
}

// ---------------------------------------------------------------------------------------------
// Row 3: an SSE client that stops reading.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_is_cut_5_s_after_its_queue_overflowed() {
    const MARGIN: Duration = Duration::from_secs(3);
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&["--queue-size", "16"]).await;
    let addr = addr_of(&s);

    let mut slow = connect_small(addr).await;
    let client_side = slow.local_addr().unwrap();
    slow.write_all(&get_request("/stream?topic=slow", &[])).await.unwrap();
    until("the slow client to register", || async { s.client_ids().await.len() == 1 }).await;
    let id = s.client_ids().await.remove(0);
    assert!(server_holds(addr, client_side), "/proc/net/tcp shows the gateway's end of the stream");

    // Events it does not read, a few at a time: its socket fills, its connection's task waits to
    // write what is queued, then its queue fills up behind (while that task waits).
    let pad = "s".repeat(4096);
    let mut burst = 0;
    while s.client_ids().await.contains(&id) {
        assert!(burst < 20_000, "{burst} events of 4 KiB and the queue of 16 has not overflowed");
        let batch: Vec<Value> = (0..8).map(|n| json!({"topic": "slow", "data": {"n": n, "pad": pad}})).collect();
        s.publish_ok(json!(batch)).await;
        burst += 8;
    }
    let overflowed = Instant::now();
    assert!(s.metric("ssegate_queue_overflows_total").await >= 1.0, "counted as an overflow");

    // The gateway lets go of the socket within 5 s (and some margin for a busy machine).
    while server_holds(addr, client_side) {
        assert!(
            overflowed.elapsed() < OVERFLOW_GRACE + MARGIN,
            "the gateway still holds the connection of an SSE client that stopped reading {:?} after its queue \
             overflowed (the README promises a cut after {OVERFLOW_GRACE:?})",
            overflowed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_after = overflowed.elapsed();
    // What the client sees when it reads at last: what was sent, then the end of the stream.
    let got = tokio::time::timeout(Duration::from_secs(5), drain(&mut slow)).await;
    let got = got.expect("the stream ends once the client reads what was sent");
    println!(
        "slow SSE client: {burst} events published, cut {cut_after:?} after the overflow; it then read {got} bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// Row 4: unfinished fragmented messages.

/// How a fragment attacker's connection stood once the gateway had taken in its fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Held {
    /// The gateway answered the ping sent behind the fragments: it holds the fragments.
    Pong,
    /// The gateway closed the WebSocket (with this code).
    Closed(u16),
    /// The connection ended or failed without a close frame.
    Gone,
}

/// Opens a WebSocket and sends `fragments` (an unfinished message) and a ping; waits for the pong
/// (or the end of the connection). Returns the socket, kept open, and what happened.
async fn fragment_attacker(addr: SocketAddr, fragments: Arc<Vec<u8>>) -> (TcpStream, Held) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut buf = ws_open(&mut tcp, "/ws?topic=fragments").await.expect("a WebSocket");
    if tcp.write_all(&fragments).await.is_err() {
        return (tcp, Held::Gone);
    }
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((opcode, payload, used)) = server_frame(&buf) {
            match opcode {
                op::PONG => return (tcp, Held::Pong),
                op::CLOSE => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    return (tcp, Held::Closed(code));
                }
                _ => {
                    buf.drain(..used);
                }
            }
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return (tcp, Held::Gone),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_fragmented_websocket_messages_are_bounded_in_memory() {
    const CLIENTS: usize = 100;
    const PIECE: usize = 64 * 1024;
    // Just under the default 1 MiB message limit, so that no single connection is over it.
    const MESSAGE: usize = (1 << 20) - 4 * 1024;
    const BOUND_MIB: f64 = 64.0;
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&[]).await;
    let addr = addr_of(&s);
    let mut victim = Sse::connect(&s, "topic=victim").await;
    let before = rss_mib(&s);

    // A text message begun (FIN=0) and continued, never finished; a ping behind it (control
    // frames may come between fragments) tells when the gateway has read it all.
    let text = vec![b'f'; MESSAGE];
    let mut fragments = Vec::new();
    for (i, piece) in text.chunks(PIECE).enumerate() {
        fragments.extend(client_frame(false, if i == 0 { op::TEXT } else { op::CONTINUATION }, piece));
    }
    fragments.extend(client_frame(true, op::PING, b"read it all?"));
    let fragments = Arc::new(fragments);

    let attackers: Vec<(TcpStream, Held)> = within(
        "100 fragment attackers to be read",
        futures::stream::iter(0..CLIENTS)
            .map(|_| fragment_attacker(addr, fragments.clone()))
            .buffer_unordered(25)
            .collect(),
    )
    .await;
    let peak = peak_rss_mib(&s, Duration::from_millis(500)).await;
    let grown = peak - before;
    let mut outcomes = std::collections::HashMap::new();
    for (_, held) in &attackers {
        *outcomes.entry(*held).or_insert(0) += 1;
    }
    println!(
        "{CLIENTS} unfinished messages of {} KiB: RSS {before:.1} -> {peak:.1} MiB (+{grown:.1}); {outcomes:?}",
        MESSAGE >> 10
    );
    assert!(
        grown < BOUND_MIB,
        "{CLIENTS} WebSocket clients each holding an unfinished message of {} KiB grew the gateway by \
         {grown:.1} MiB ({before:.1} -> {peak:.1}; bound {BOUND_MIB} MiB); connections: {outcomes:?}",
        MESSAGE >> 10
    );

    let ids = s.publish_ok(json!({"topic": "victim", "event": "live", "data": 1})).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), victim.expect("live"))
        .await
        .expect("the victim's live event within 2 s");
    assert_eq!(ev.id, ids[0]);
    drop(attackers);
}

// ---------------------------------------------------------------------------------------------
// Row 5: one address taking every long-poll session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_long_poll_session() {
    const PER_ADDRESS: usize = 50;
    const MOST: usize = 20_000;
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&["--max-per-address", &PER_ADDRESS.to_string(), "--max-connections", "1000"]).await;

    // One keep-alive connection from 127.0.0.1 opens sessions (a first poll, no client_id) until
    // it is refused.
    let attacker = common::http();
    let started = Instant::now();
    let mut opened = 0;
    let refusal = loop {
        assert!(opened < MOST && started.elapsed() < common::PATIENCE, "{opened} sessions and never refused");
        let res = attacker.get(s.url("/poll?topic=x")).send().await.expect("GET /poll");
        if res.status() == StatusCode::OK {
            opened += 1;
            continue;
        }
        let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
        break (res.status(), retry_after, res.json::<Value>().await.unwrap_or(Value::Null));
    };
    println!("127.0.0.1 opened {opened} long-poll sessions in {:?}, then got {refusal:?}", started.elapsed());

    // Another client, from another address, still gets a session.
    let victim = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("an HTTP client on 127.0.0.2");
    let res = victim.get(s.url("/poll?topic=x")).send().await.expect("GET /poll from 127.0.0.2");
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status,
        StatusCode::OK,
        "a long-poll client on 127.0.0.2 was refused after 127.0.0.1 opened {opened} sessions: {body}"
    );
    assert!(body["client_id"].is_string(), "{body}");

    // The attacker was refused for its address, as the contract says, and nothing was left of it.
    let (status, retry_after, body) = refusal;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(retry_after.is_some_and(|r| r.parse::<u64>().is_ok()), "503 with a Retry-After in seconds");
    assert!(
        opened <= PER_ADDRESS,
        "127.0.0.1 opened {opened} long-poll sessions with --max-per-address {PER_ADDRESS} before it was refused"
    );
    let (_, clients) = s.get_json("/clients").await;
    let polls = clients["clients"].as_array().expect("clients").iter().filter(|c| c["transport"] == "long-poll");
    assert_eq!(polls.count(), opened + 1, "the refused polls left no session");
}

// ---------------------------------------------------------------------------------------------
// Row 6: health checks and new clients during a fan-out.

/// Runs `probe` on a fresh connection every 20 ms until `stop`, on a thread of its own (so that
/// the test's own tasks cannot delay it); returns how long each took, or why it failed.
fn probe_until(addr: SocketAddr, stop: Arc<AtomicBool>, probe: fn(&mut std::net::TcpStream)) -> Vec<Duration> {
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        probe(&mut tcp);
        took.push(started.elapsed());
        drop(tcp);
        std::thread::sleep(Duration::from_millis(20));
    }
    took
}

/// Raises its flag when dropped: the probers' threads stop even when the test fails early.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `GET /healthz`, to the end of its `200` response.
fn healthz(tcp: &mut std::net::TcpStream) {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).expect("a /healthz answer within 10 s");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

/// A new `/stream`, up to its welcome.
fn welcome(tcp: &mut std::net::TcpStream) {
    tcp.write_all(b"GET /stream?topic=probe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(14).any(|w| w == b"event: welcome") {
        let n = tcp.read(&mut chunk).expect("a welcome within 10 s");
        assert!(n > 0, "the stream ended before its welcome");
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_new_streams_do_not_wait_on_a_fan_out() {
    const CLIENTS: usize = 2_000;
    // Each publish is one event on each of this many topics: at 2,000 clients a fan-out of a
    // single event lasts milliseconds, too short for a wait on it to show against a generous
    // bound; 100 of them in one publish make one fan-out of 200,000 deliveries (about a second of
    // the gateway's CPU, like one event to 10,000 clients 20 times over).
    const TOPICS: usize = 100;
    const PUBLISHING: Duration = Duration::from_secs(3);
    const EVERY: Duration = Duration::from_millis(200);
    const BOUND: Duration = Duration::from_millis(500);
    let _serial = SERIAL.lock().await;
    let s = ChildServer::start(&[]).await;
    let addr = addr_of(&s);

    // 2,000 subscribers reading everything (raw sockets, so the test's CPU goes to the gateway).
    let subscribers: Vec<TcpStream> = within(
        "2,000 subscribers to connect",
        futures::stream::iter(0..CLIENTS).map(|_| raw_stream(addr, "topic=fan/*")).buffer_unordered(100).collect(),
    )
    .await;
    let readers: Vec<_> = subscribers.into_iter().map(|tcp| tokio::spawn(drain(tcp))).collect();
    // One more, read as a browser would, checks that everything arrives in order. The backend
    // publishes again only once it has had the last batch, so that no queue fills up on a busy
    // machine: this is a test of the fan-out, not of slow clients.
    let mut checker = Sse::connect(&s, "topic=fan/*").await;
    let received = Arc::new(AtomicUsize::new(0));
    let checking = tokio::spawn({
        let received = received.clone();
        async move {
            loop {
                let ev = checker.expect("n").await;
                let n: usize = serde_json::from_str(&ev.data).expect("a number");
                let got = received.load(Ordering::Relaxed);
                assert_eq!(n, got / TOPICS, "every event once, in order");
                received.store(got + 1, Ordering::Relaxed);
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_probes = StopOnDrop(stop.clone());
    let health = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || probe_until(addr, stop, healthz)
    });
    let welcomes = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || probe_until(addr, stop, welcome)
    });

    let topics: Vec<String> = (0..TOPICS).map(|t| format!("fan/{t}")).collect();
    let started = Instant::now();
    let mut publishes = 0u64;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slowest_publish = Duration::ZERO;
    while started.elapsed() < PUBLISHING {
        tick.tick().await;
        let at = Instant::now();
        s.publish_ok(json!({"topics": topics, "event": "n", "data": publishes})).await;
        slowest_publish = slowest_publish.max(at.elapsed());
        publishes += 1;
        let target = publishes as usize * TOPICS;
        let (received, checking) = (&received, &checking);
        until("the checker to get the batch", || async move {
            received.load(Ordering::Relaxed) >= target || checking.is_finished()
        })
        .await;
        if checking.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let health = health.await.expect("the /healthz prober");
    let welcomes = welcomes.await.expect("the welcome prober");
    if checking.is_finished() {
        checking.await.expect("the checker reads until it is stopped");
        unreachable!("the checker never returns");
    }
    checking.abort();
    let cut = readers.iter().filter(|r| r.is_finished()).count();
    for r in readers {
        r.abort();
    }
    let worst = |d: &[Duration]| d.iter().max().copied().unwrap_or_default();
    println!(
        "fan-out: {publishes} publishes of {TOPICS} events to {CLIENTS} clients (slowest answered in \
         {slowest_publish:?}); {} /healthz, worst {:?}; {} welcomes, worst {:?}; {cut} of the raw subscribers cut (by the test's own slowness)",
        health.len(),
        worst(&health),
        welcomes.len(),
        worst(&welcomes)
    );
    assert!(
        worst(&health) < BOUND && worst(&welcomes) < BOUND,
        "during fan-outs of {TOPICS} events to {CLIENTS} clients, /healthz took up to {:?} and a new stream's \
         welcome up to {:?} (bound {BOUND:?}; the slowest publish was answered in {slowest_publish:?})",
        worst(&health),
        worst(&welcomes)
    );
    assert!(health.len() >= 5 && welcomes.len() >= 5, "{} and {} probes", health.len(), welcomes.len());
}
