//! Load generator for the fan-out benchmark: opens N SSE or WebSocket clients (bound to source
//! addresses 127.0.0.1-127.0.0.x, so more than one address's ports are available), publishes M
//! events at R per second with the send time inside, and reports deliveries per second, server
//! CPU µs per delivery (`/proc/PID/stat`), latency p50/p99/max, resident memory per connection
//! (`/proc/PID/status`), and events missing or doubled.
//!
//! `cargo bench --bench loadgen -- --clients 1000 --events 200 --rate 50` starts the release
//! gateway itself; `--url URL --pid PID` measures one already running.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What to run.
#[derive(Debug, Parser)]
struct Args {
    /// Gateway to measure; without it, the release binary is started on a free port.
    #[arg(long)]
    url: Option<String>,
    /// PID of the gateway given by --url, for CPU and memory.
    #[arg(long)]
    pid: Option<u32>,
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

async fn sse_client(
    i: usize,
    addr: SocketAddr,
    src: SocketAddr,
    topic: String,
    tally: Arc<Tally>,
) -> std::io::Result<()> {
    let mut stream = connect_from(src, addr).await?;
    let req = format!("GET /stream?topic={topic} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = String::new();
    let mut counted = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !counted && pending.contains("event: welcome") {
            counted = true;
            tally.connected.fetch_add(1, Ordering::Relaxed);
        }
        // Chunked framing aside, each event's data line holds the JSON we look for.
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            if frame.contains("event: tick") {
                tally.record(i, &frame);
            }
        }
    }
}

async fn ws_client(
    i: usize,
    addr: SocketAddr,
    src: SocketAddr,
    topic: String,
    tally: Arc<Tally>,
) -> std::io::Result<()> {
    let stream = connect_from(src, addr).await?;
    let url = format!("ws://{addr}/ws?topic={topic}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(std::io::Error::other)?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(std::io::Error::other)? {
            tokio_tungstenite::tungstenite::Message::Text(t) if t.contains("\"welcome\"") => {
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
    let (base, pid) = match (&args.url, args.pid) {
        (Some(url), pid) => (url.trim_end_matches('/').to_owned(), pid),
        (None, _) => {
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
            let pid = c.id();
            child = Some(c);
            (url, pid)
        }
    };
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
    let rss_idle = pid.and_then(rss_kib);
    let tally = Arc::new(Tally {
        seen: (0..args.clients).map(|_| Mutex::new(vec![0u8; args.events as usize])).collect(),
        latencies: Mutex::new(Vec::with_capacity(args.clients * args.events as usize / args.topics.max(1))),
        deliveries: AtomicU64::new(0),
        connected: AtomicU64::new(0),
    });

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let topic = format!("bench/{}", i % args.topics.max(1));
        let tally = tally.clone();
        let src = source(i, args.sources);
        let ws = args.transport == "ws";
        tasks.spawn(async move {
            let res = if ws {
                ws_client(i, addr, src, topic, tally).await
            } else {
                sse_client(i, addr, src, topic, tally).await
            };
            if let Err(e) = res {
                eprintln!("client {i}: {e}");
            }
        });
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (tally.connected.load(Ordering::Relaxed) as usize) < args.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = tally.connected.load(Ordering::Relaxed);
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = pid.and_then(rss_kib);

    let http = reqwest::Client::builder().no_proxy().build()?;
    let cpu_before = pid.and_then(cpu_micros);
    let publish_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    for seq in 0..args.events {
        tick.tick().await;
        let topic = format!("bench/{}", seq as usize % args.topics.max(1));
        let body = format!(r#"{{"topic":"{topic}","event":"tick","data":{{"seq":{seq},"sent":{}}}}}"#, micros());
        let res = http.post(format!("{base}/publish")).body(body).send().await?;
        anyhow::ensure!(res.status().is_success(), "publish answered {}", res.status());
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
    let cpu_after = pid.and_then(cpu_micros);
    let deliveries = tally.deliveries.load(Ordering::Relaxed);

    let (mut missing, mut doubled) = (0u64, 0u64);
    for (c, seen) in tally.seen.iter().enumerate() {
        for (seq, &n) in seen.lock().unwrap().iter().enumerate() {
            let wanted = c % args.topics.max(1) == seq % args.topics.max(1);
            if wanted && n == 0 {
                missing += 1;
            }
            if n > 1 || (!wanted && n > 0) {
                doubled += 1;
            }
        }
    }
    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    lat.sort_unstable();
    let cpu_per_delivery = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if deliveries > 0 => Some((b - a) as f64 / deliveries as f64),
        _ => None,
    };
    let per_conn = match (rss_idle, rss_connected) {
        (Some(a), Some(b)) if connected > 0 => Some((b.saturating_sub(a)) as f64 / connected as f64),
        _ => None,
    };
    println!(
        "{{\"transport\":\"{}\",\"clients\":{},\"connected\":{connected},\"topics\":{},\"events\":{},\"rate\":{},\"connect_s\":{connect_s:.2},\
         \"deliveries\":{deliveries},\"expected\":{expected},\"deliveries_per_s\":{:.0},\"cpu_us_per_delivery\":{},\
         \"latency_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\"max\":{:.2}}},\"rss_kib_per_connection\":{},\"missing\":{missing},\"doubled\":{doubled}}}",
        args.transport,
        args.clients,
        args.topics,
        args.events,
        args.rate,
        deliveries as f64 / elapsed,
        cpu_per_delivery.map_or("null".into(), |v| format!("{v:.2}")),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        per_conn.map_or("null".into(), |v| format!("{v:.2}")),
    );
    tasks.abort_all();
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}
