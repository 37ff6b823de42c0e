//! Load generator for the fan-out benchmark: opens N SSE or WebSocket clients (bound to source
//! addresses 127.0.0.1-127.0.0.x, so more than one address's ports are available), publishes M
//! events at R per second with the send time inside, and reports deliveries per second, server
//! CPU µs per delivery (`/proc/PID/stat`), latency p50/p99/max, resident memory per connection
//! (`/proc/PID/status`), and events missing or doubled.
//!
//! `cargo bench --bench loadgen -- --clients 1000 --events 200 --rate 50` starts the release
//! gateway itself; `--url URL --pid PID` measures one already running.
//!
//! `--target nchan|pushpin` drives the peers of the side-by-side comparison (`benches/compare.sh`)
//! with the same clients and clock: Nchan subscribes at `/sub/<topic>` (EventSource or WebSocket)
//! and publishes by POSTing the body to `/pub/<topic>`; Pushpin subscribes through its proxy port
//! to a backend that holds every request (`benches/peers/grip_backend.py`) and publishes with
//! `POST /publish` on `--publish-url` (its HTTP control port). `--pid` takes a comma list, so CPU
//! and memory are summed over all of a server's processes.
//!
//! `--tls h1|h2` with `--url https://...` and `--ca PEM` measures a server over HTTPS: each SSE
//! client opens its own TLS 1.3 connection offering one suite (TLS13_AES_128_GCM_SHA256) and one
//! ALPN protocol, `http/1.1` or `h2` (one stream per connection, as a browser tab, or
//! `--streams-per-conn N` EventSources sharing it); the publisher speaks HTTP/1.1 over TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[path = "common/dechunk.rs"]
mod dechunk;
use dechunk::Dechunker;

/// What to run.
#[derive(Debug, Parser)]
struct Args {
    /// Gateway to measure; without it, the release binary is started on a free port.
    #[arg(long)]
    url: Option<String>,
    /// PIDs of the server given by --url, comma separated (every process of it), for CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// What the server is: `ssegate`, `nchan` or `pushpin`; it decides the paths and the publish call.
    #[arg(long, value_enum, default_value_t = Target::Ssegate)]
    target: Target,
    /// Where to publish, when not at --url (Pushpin: its HTTP control port, e.g. http://127.0.0.1:5561).
    #[arg(long)]
    publish_url: Option<String>,
    /// PIDs of a helper that is not the server (Pushpin's backend), reported on their own.
    #[arg(long, value_delimiter = ',')]
    backend_pid: Vec<u32>,
    /// Gateway binary to start when no --url is given.
    #[arg(long, default_value = "target/release/ssegate")]
    bin: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Topics; clients and events are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Events to publish (0: only connect and measure idle memory).
    #[arg(long, default_value_t = 200)]
    events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// `sse` or `ws`.
    #[arg(long, default_value = "sse")]
    transport: String,
    /// Source addresses to spread clients over (127.0.0.1 .. 127.0.0.N).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Longest wait for the last deliveries after the last publish, in seconds.
    #[arg(long, default_value_t = 20)]
    drain_s: u64,
    /// Longest wait for all clients to connect, in seconds.
    #[arg(long, default_value_t = 60)]
    connect_s: u64,
    /// How often a client whose connection fails or is refused before it is subscribed tries again,
    /// after 0.2-1 s, as an EventSource would (0: never; retries are then reported).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Also report the load generator's own CPU per delivery (it shares the cores with the server).
    #[arg(long)]
    self_cpu: bool,
    /// Over HTTPS (`--url https://...`, SSE only): each client on its own TLS connection offering
    /// ALPN `http/1.1` (h1) or `h2` (h2) only; the publisher speaks HTTP/1.1 over TLS.
    #[arg(long, value_enum)]
    tls: Option<TlsMode>,
    /// PEM certificate to trust for --tls (the server's own, self-signed, for 127.0.0.1).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// With --tls h2: EventSources per connection (one tab with N streams on one connection).
    #[arg(long, default_value_t = 1)]
    streams_per_conn: usize,
}

/// The protocol the TLS clients offer by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    /// HTTP/1.1: one connection per EventSource.
    H1,
    /// HTTP/2: one connection per tab, `--streams-per-conn` streams on it.
    H2,
}

/// The server being measured: where clients subscribe and how events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// ssegate: `/stream?topic=`, `/ws?topic=`, `POST /publish` with the contract's JSON.
    Ssegate,
    /// Nginx with Nchan: `/sub/<topic>` for EventSource and WebSocket, `POST /pub/<topic>`.
    Nchan,
    /// Pushpin in front of a GRIP backend: `/stream?topic=`, `/ws?topic=`, `POST /publish` (control API).
    Pushpin,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ssegate => "ssegate",
            Target::Nchan => "nchan",
            Target::Pushpin => "pushpin",
        }
    }

    /// The request path a client subscribes with.
    fn subscribe_path(self, ws: bool, topic: &str) -> String {
        match (self, ws) {
            (Target::Nchan, _) => format!("/sub/{topic}"),
            (_, true) => format!("/ws?topic={topic}"),
            (_, false) => format!("/stream?topic={topic}"),
        }
    }

    /// The request that publishes event `seq` on `topic`, sent at `sent` µs: path, extra header, body.
    fn publish(self, topic: &str, seq: u64, sent: u64) -> (String, Option<(&'static str, &'static str)>, String) {
        let data = format!(r#"{{"seq":{seq},"sent":{sent}}}"#);
        match self {
            Target::Ssegate => {
                ("/publish".into(), None, format!(r#"{{"topic":"{topic}","event":"tick","data":{data}}}"#))
            }
            Target::Nchan => (format!("/pub/{topic}"), Some(("x-eventsource-event", "tick")), data),
            Target::Pushpin => {
                let item = serde_json::json!({"channel": topic, "formats": {
                    "http-stream": {"content": format!("event: tick\ndata: {data}\n\n")},
                    "ws-message": {"content": data},
                }});
                (
                    "/publish".into(),
                    Some(("content-type", "application/json")),
                    serde_json::json!({ "items": [item] }).to_string(),
                )
            }
        }
    }
}

/// Microseconds since the generator started: the clock of send times and arrival times.
fn micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What every client records.
struct Tally {
    /// Per client, per event: how many times it arrived.
    seen: Vec<Mutex<Vec<u8>>>,
    latencies: Mutex<Vec<u32>>,
    deliveries: AtomicU64,
    connected: AtomicU64,
    /// Connection attempts made again after a failure (see `--retries`).
    retries: AtomicU64,
}

impl Tally {
    fn record(&self, client: usize, data: &str) {
        let Some(seq) = number_after(data, "\"seq\":") else { return };
        let Some(sent) = number_after(data, "\"sent\":") else { return };
        let now = micros();
        if let Some(slot) = self.seen[client].lock().unwrap().get_mut(seq as usize) {
            *slot = slot.saturating_add(1);
        }
        self.latencies.lock().unwrap().push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn source(i: usize, sources: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources.max(1) as usize) as u8)), 0)
}

/// A TCP connection to `addr` from the source address `src`.
async fn connect_from(src: SocketAddr, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(src)?;
    socket.connect(addr).await
}

/// How the SSE clients reach the server: plain TCP, or TLS with the settings of `--tls`.
#[derive(Clone)]
struct Dial {
    addr: SocketAddr,
    tls: Option<(TlsMode, tokio_rustls::TlsConnector)>,
}

impl Dial {
    /// A TLS connection from `src` (the handshake done), printing what was negotiated once.
    async fn tls(
        &self,
        src: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = connect_from(src, self.addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let stream = connector.connect(name, tcp).await?;
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let c = stream.get_ref().1;
            eprintln!(
                "tls: {}, {}, key exchange {}, ALPN {}",
                c.protocol_version().map_or("?".into(), |v| format!("{v:?}")),
                c.negotiated_cipher_suite().map_or("?".into(), |s| format!("{:?}", s.suite())),
                c.negotiated_key_exchange_group().map_or("?".into(), |g| format!("{:?}", g.name())),
                c.alpn_protocol().map_or("none".into(), String::from_utf8_lossy),
            );
        });
        Ok(stream)
    }
}

/// One SSE client over HTTP/1.1, on plain TCP or its own TLS connection.
async fn sse_client(
    i: usize,
    dial: &Dial,
    src: SocketAddr,
    target: Target,
    topic: &str,
    tally: &Tally,
    counted: &mut bool,
) -> std::io::Result<()> {
    match &dial.tls {
        None => sse_over(connect_from(src, dial.addr).await?, i, dial.addr, target, topic, tally, counted).await,
        Some((_, connector)) => {
            let stream = dial.tls(src, connector).await?;
            sse_over(stream, i, dial.addr, target, topic, tally, counted).await
        }
    }
}

/// Reads the events of one SSE subscription over HTTP/1.1 on `stream`.
async fn sse_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    i: usize,
    addr: SocketAddr,
    target: Target,
    topic: &str,
    tally: &Tally,
    counted: &mut bool,
) -> std::io::Result<()> {
    let path = target.subscribe_path(false, topic);
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    // The response head, until it is complete; then the body, de-chunked if need be.
    let mut head = Vec::new();
    let mut dechunker: Option<Option<Dechunker>> = None;
    let mut body = Vec::new();
    let mut pending = String::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        match &mut dechunker {
            None => {
                head.extend_from_slice(&buf[..n]);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if !text.starts_with("http/1.1 200") && !text.starts_with("http/1.0 200") {
                    let status = text.lines().next().unwrap_or("").to_owned();
                    return Err(std::io::Error::other(format!("answered {status}")));
                }
                let mut chunked = text.contains("transfer-encoding: chunked").then(Dechunker::default);
                let rest = head.split_off(end + 4);
                match &mut chunked {
                    Some(d) => d.feed(&rest, &mut body)?,
                    None => body.extend_from_slice(&rest),
                }
                dechunker = Some(chunked);
                // The peers send no greeting of their own: their answer means the subscription is in place.
                if target != Target::Ssegate {
                    *counted = true;
                    tally.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Some(d)) => d.feed(&buf[..n], &mut body)?,
            Some(None) => body.extend_from_slice(&buf[..n]),
        }
        read_events(&mut pending, &body, i, tally, counted);
        body.clear();
    }
}

/// Adds `body` to the stream's unparsed text and records each complete event in it.
fn read_events(pending: &mut String, body: &[u8], i: usize, tally: &Tally, counted: &mut bool) {
    pending.push_str(&String::from_utf8_lossy(body));
    if !*counted && pending.contains("event: welcome") {
        *counted = true;
        tally.connected.fetch_add(1, Ordering::Relaxed);
    }
    // Each event's data line holds the JSON we look for.
    while let Some(end) = pending.find("\n\n") {
        let frame: String = pending.drain(..end + 2).collect();
        if frame.contains("event: tick") {
            tally.record(i, &frame);
        }
    }
}

/// The SSE clients `first..first + counted.len()` as streams of one HTTP/2 connection over TLS
/// (a browser tab with that many EventSources); `counted[k]` says whether stream `k` subscribed.
#[allow(clippy::too_many_arguments)]
async fn sse_h2_client(
    first: usize,
    dial: &Dial,
    connector: &tokio_rustls::TlsConnector,
    src: SocketAddr,
    target: Target,
    topics: usize,
    tally: &Tally,
    counted: &mut [bool],
) -> std::io::Result<()> {
    let stream = dial.tls(src, connector).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(std::io::Error::other)?;
    let conn = tokio::spawn(conn);
    let addr = dial.addr;
    let streams = counted.iter_mut().enumerate().map(|(k, counted)| {
        let mut sender = sender.clone();
        let i = first + k;
        let topic = format!("bench/{}", i % topics.max(1));
        async move {
            let uri = format!("https://{addr}{}", target.subscribe_path(false, &topic));
            let req = hyper::Request::get(uri)
                .header("accept", "text/event-stream")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(std::io::Error::other)?;
            sender.ready().await.map_err(std::io::Error::other)?;
            let res = sender.send_request(req).await.map_err(std::io::Error::other)?;
            if res.status() != hyper::StatusCode::OK {
                return Err(std::io::Error::other(format!("answered {}", res.status())));
            }
            if target != Target::Ssegate {
                *counted = true;
                tally.connected.fetch_add(1, Ordering::Relaxed);
            }
            let mut body = res.into_body();
            let mut pending = String::new();
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                    read_events(&mut pending, &data, i, tally, counted);
                }
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let results = futures::future::join_all(streams).await;
    conn.abort();
    results.into_iter().collect()
}

async fn ws_client(
    i: usize,
    addr: SocketAddr,
    src: SocketAddr,
    target: Target,
    topic: &str,
    tally: &Tally,
    counted: &mut bool,
) -> std::io::Result<()> {
    let stream = connect_from(src, addr).await?;
    let url = format!("ws://{addr}{}", target.subscribe_path(true, topic));
    // Small buffers, as a browser's: the library's 128 KiB default per connection would make the
    // load generator itself the heaviest process on the machine at 10,000 clients.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.map_err(std::io::Error::other)?;
    if target != Target::Ssegate {
        *counted = true;
        tally.connected.fetch_add(1, Ordering::Relaxed);
    }
    while let Some(msg) = ws.next().await {
        match msg.map_err(std::io::Error::other)? {
            tokio_tungstenite::tungstenite::Message::Text(t) if t.contains("\"welcome\"") => {
                *counted = true;
                tally.connected.fetch_add(1, Ordering::Relaxed);
            }
            tokio_tungstenite::tungstenite::Message::Text(t) => tally.record(i, &t),
            tokio_tungstenite::tungstenite::Message::Ping(p) => {
                ws.send(tokio_tungstenite::tungstenite::Message::Pong(p)).await.map_err(std::io::Error::other)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// TLS 1.3 client settings offering one suite (TLS13_AES_128_GCM_SHA256), so that every server
/// measured encrypts with the same cipher, trusting only the PEM certificate `ca`.
fn tls_connector(ca: &std::path::Path, alpn: &[u8]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    // Each client makes one connection: nothing to resume.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Publishes over HTTP/1.1 on TLS connections of its own, kept open and reused: a pool that grows
/// to the number of publishes in flight.
struct TlsPublisher {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>>,
}

impl TlsPublisher {
    async fn send(
        &self,
        (path, header, body): (String, Option<(&'static str, &'static str)>, String),
    ) -> anyhow::Result<hyper::StatusCode> {
        let mut req = hyper::Request::post(path).header("host", self.addr.to_string());
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let idle = self.idle.lock().unwrap().pop();
        let mut sender = match idle {
            Some(s) if !s.is_closed() => s,
            _ => {
                let tcp = tokio::net::TcpStream::connect(self.addr).await?;
                let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let tls = self.connector.connect(name, tcp).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.ready().await?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        http_body_util::BodyExt::collect(res.into_body()).await?;
        self.idle.lock().unwrap().push(sender);
        Ok(status)
    }
}

/// CPU time (user + system) of some processes together, in microseconds; `None` if one is gone.
fn cpu_micros_all(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_micros(p)).sum()
}

/// Resident memory of some processes together, in KiB; `None` if one is gone.
fn rss_kib_all(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// CPU time (user + system) of a process, in microseconds.
fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports clock ticks of 1/100 s on every platform this runs on.
    Some(ticks * 10_000)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Milliseconds for the JSON line: two decimals, or `null` when nothing was measured.
struct Ms(f64);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_nan() {
            f.write_str("null")
        } else {
            write!(f, "{:.2}", self.0)
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; ignore it.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    micros();
    let mut child = None;
    let (base, pids) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), args.pid.clone()),
        None => {
            anyhow::ensure!(args.target == Target::Ssegate, "--target {} needs --url", args.target.name());
            let limit = (args.clients + 500).to_string();
            let mut c = tokio::process::Command::new(&args.bin)
                .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false", "--max-connections", &limit])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut out = tokio::io::BufReader::new(c.stdout.take().expect("stdout"));
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await?;
            let url = line
                .trim()
                .strip_prefix("listening on ")
                .ok_or_else(|| anyhow::anyhow!("unexpected: {line}"))?
                .to_owned();
            let pids = c.id().into_iter().collect();
            child = Some(c);
            (url, pids)
        }
    };
    let addr: SocketAddr = base.trim_start_matches("http://").trim_start_matches("https://").parse()?;
    let dial = match args.tls {
        None => Dial { addr, tls: None },
        Some(mode) => {
            anyhow::ensure!(base.starts_with("https://"), "--tls needs --url https://...");
            anyhow::ensure!(args.transport == "sse", "--tls measures SSE clients only");
            anyhow::ensure!(args.publish_url.is_none(), "--tls publishes at --url only");
            let ca = args.ca.as_deref().ok_or_else(|| anyhow::anyhow!("--tls needs --ca"))?;
            let alpn: &[u8] = if mode == TlsMode::H2 { b"h2" } else { b"http/1.1" };
            Dial { addr, tls: Some((mode, tls_connector(ca, alpn)?)) }
        }
    };
    let conn_streams = if args.tls == Some(TlsMode::H2) { args.streams_per_conn.max(1) } else { 1 };
    let publish_base = args.publish_url.as_deref().unwrap_or(&base).trim_end_matches('/').to_owned();
    let rss_idle = rss_kib_all(&pids);
    let tally = Arc::new(Tally {
        seen: (0..args.clients).map(|_| Mutex::new(vec![0u8; args.events as usize])).collect(),
        latencies: Mutex::new(Vec::with_capacity(args.clients * args.events as usize / args.topics.max(1))),
        deliveries: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        retries: AtomicU64::new(0),
    });

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for first in (0..args.clients).step_by(conn_streams) {
        let streams = conn_streams.min(args.clients - first);
        let tally = tally.clone();
        let src = source(first / conn_streams, args.sources);
        let ws = args.transport == "ws";
        let target = args.target;
        let retries = args.retries;
        let topics = args.topics;
        let dial = dial.clone();
        tasks.spawn(async move {
            let i = first;
            let topic = format!("bench/{}", i % topics.max(1));
            for attempt in 0.. {
                let mut counted = vec![false; streams];
                let res = match &dial.tls {
                    Some((TlsMode::H2, connector)) => {
                        sse_h2_client(first, &dial, connector, src, target, topics, &tally, &mut counted).await
                    }
                    _ if ws => ws_client(i, addr, src, target, &topic, &tally, &mut counted[0]).await,
                    _ => sse_client(i, &dial, src, target, &topic, &tally, &mut counted[0]).await,
                };
                if !counted.iter().any(|&c| c) && attempt < retries {
                    tally.retries.fetch_add(1, Ordering::Relaxed);
                    // Spread the retries so they do not come back as one burst.
                    let jitter = (i as u64 * 7919 + attempt as u64 * 104_729) % 800;
                    tokio::time::sleep(Duration::from_millis(200 + jitter)).await;
                    continue;
                }
                match res {
                    Err(e) => eprintln!("client {i}: {e}"),
                    Ok(()) => eprintln!("client {i}: the server ended the stream"),
                }
                break;
            }
        });
        if (first / conn_streams) % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.connect_s);
    while (tally.connected.load(Ordering::Relaxed) as usize) < args.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = tally.connected.load(Ordering::Relaxed);
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib_all(&pids);

    let http = reqwest::Client::builder().no_proxy().build()?;
    let tls_publisher = match &dial.tls {
        Some(_) => {
            let ca = args.ca.as_deref().unwrap_or(std::path::Path::new(""));
            Some(Arc::new(TlsPublisher {
                addr,
                connector: tls_connector(ca, b"http/1.1")?,
                idle: Mutex::new(Vec::new()),
            }))
        }
        None => None,
    };
    let cpu_before = cpu_micros_all(&pids);
    let self_cpu_before = cpu_micros(std::process::id());
    let backend_cpu_before = cpu_micros_all(&args.backend_pid);
    let publish_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    // Publishes go out at the rate whatever the server takes to answer (at most MAX_IN_FLIGHT
    // unanswered), as from many backends: a server that is still fanning out one event gets
    // the next ones meanwhile.
    const MAX_IN_FLIGHT: usize = 256;
    let mut in_flight = tokio::task::JoinSet::new();
    for seq in 0..args.events {
        tick.tick().await;
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await.expect("a publish in flight")??;
        }
        let topic = format!("bench/{}", seq as usize % args.topics.max(1));
        let request = args.target.publish(&topic, seq, micros());
        match &tls_publisher {
            Some(publisher) => {
                let publisher = publisher.clone();
                in_flight.spawn(async move {
                    let status = publisher.send(request).await?;
                    anyhow::ensure!(status.is_success(), "publish answered {status}");
                    Ok::<_, anyhow::Error>(())
                });
            }
            None => {
                let (path, header, body) = request;
                let mut request = http.post(format!("{publish_base}{path}")).body(body);
                if let Some((name, value)) = header {
                    request = request.header(name, value);
                }
                in_flight.spawn(async move {
                    let res = request.send().await?;
                    anyhow::ensure!(res.status().is_success(), "publish answered {}", res.status());
                    Ok::<_, anyhow::Error>(())
                });
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    let expected: u64 = (0..args.events)
        .map(|seq| {
            (0..args.clients).filter(|c| c % args.topics.max(1) == seq as usize % args.topics.max(1)).count() as u64
        })
        .sum();
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_s);
    while tally.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let cpu_after = cpu_micros_all(&pids);
    let self_cpu_after = cpu_micros(std::process::id());
    let backend_cpu_after = cpu_micros_all(&args.backend_pid);
    let deliveries = tally.deliveries.load(Ordering::Relaxed);

    let (mut missing, mut doubled) = (0u64, 0u64);
    let mut short_clients = 0usize;
    for (c, seen) in tally.seen.iter().enumerate() {
        let (mut lost, mut first_lost) = (0u64, None);
        for (seq, &n) in seen.lock().unwrap().iter().enumerate() {
            let wanted = c % args.topics.max(1) == seq % args.topics.max(1);
            if wanted && n == 0 {
                lost += 1;
                first_lost.get_or_insert(seq);
            }
            if n > 1 || (!wanted && n > 0) {
                doubled += 1;
            }
        }
        missing += lost;
        if lost > 0 {
            // On stderr, so that a loss can be told apart: whole clients, or events after some point.
            short_clients += 1;
            if short_clients <= 5 {
                eprintln!("client {c}: {lost} events missing, the first is seq {}", first_lost.unwrap_or(0));
            }
        }
    }
    if short_clients > 5 {
        eprintln!("... {short_clients} clients in all are missing events");
    }
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    lat.sort_unstable();
    let cpu_per_delivery = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if deliveries > 0 => Some((b - a) as f64 / deliveries as f64),
        _ => None,
    };
    let backend_cpu_per_delivery = match (backend_cpu_before, backend_cpu_after) {
        (Some(a), Some(b)) if deliveries > 0 => Some((b - a) as f64 / deliveries as f64),
        _ => None,
    };
    let per_conn = match (rss_idle, rss_connected) {
        (Some(a), Some(b)) if connected > 0 => Some((b.saturating_sub(a)) as f64 / connected as f64),
        _ => None,
    };
    // The default target keeps the line it always printed; the peers' lines say what they measured.
    let mut extra = String::new();
    if args.target != Target::Ssegate {
        extra.push_str(&format!(",\"target\":\"{}\"", args.target.name()));
    }
    if let Some(mode) = args.tls {
        let mode = if mode == TlsMode::H2 { "h2" } else { "h1" };
        extra.push_str(&format!(",\"tls\":\"{mode}\",\"streams_per_conn\":{conn_streams}"));
    }
    if args.retries > 0 {
        extra.push_str(&format!(",\"retries\":{}", tally.retries.load(Ordering::Relaxed)));
    }
    if args.self_cpu {
        let v = match (self_cpu_before, self_cpu_after) {
            (Some(a), Some(b)) if deliveries > 0 => format!("{:.2}", (b - a) as f64 / deliveries as f64),
            _ => "null".into(),
        };
        extra.push_str(&format!(",\"loadgen_cpu_us_per_delivery\":{v}"));
    }
    if !args.backend_pid.is_empty() {
        let v = backend_cpu_per_delivery.map_or("null".into(), |v| format!("{v:.2}"));
        extra.push_str(&format!(",\"backend_cpu_us_per_delivery\":{v}"));
    }
    println!(
        "{{\"transport\":\"{}\",\"clients\":{},\"connected\":{connected},\"topics\":{},\"events\":{},\"rate\":{},\"connect_s\":{connect_s:.2},\
         \"deliveries\":{deliveries},\"expected\":{expected},\"deliveries_per_s\":{:.0},\"cpu_us_per_delivery\":{},\
         \"latency_ms\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"rss_kib_per_connection\":{},\"missing\":{missing},\"doubled\":{doubled}{extra}}}",
        args.transport,
        args.clients,
        args.topics,
        args.events,
        args.rate,
        deliveries as f64 / elapsed,
        cpu_per_delivery.map_or("null".into(), |v| format!("{v:.2}")),
        Ms(percentile(&lat, 0.5)),
        Ms(percentile(&lat, 0.99)),
        Ms(percentile(&lat, 1.0)),
        per_conn.map_or("null".into(), |v| format!("{v:.2}")),
    );
    tasks.abort_all();
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}
