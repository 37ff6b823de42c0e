//! The "under attack" benchmark of issue 12: runs one attack against a server while a victim
//! measures what an ordinary user sees, and prints one JSON line.
//!
//! The victim is one SSE subscriber on the topic `victim`, one publisher that publishes an event
//! to it every 50 ms over one keep-alive connection (the send time is inside the event, so the
//! subscriber measures delivery latency), and `GET /healthz` every 50 ms over another. It runs on
//! a runtime of its own (one thread), from 127.0.0.1; attackers come from 127.0.0.2-127.0.0.8.
//! A run measures the victim for `--baseline-s` first, then lets the attack set itself up (fill
//! history, retained state, subscriptions, connections: not measured), then measures the victim
//! during the attack window (`--duration-s`, longer when an attack step takes longer, never longer
//! than `--limit-s`). The server's resident memory (`/proc/PID/status` VmRSS, every process in
//! `--pid` summed) is sampled every 100 ms: before anything, when the window opens, its peak from
//! then on, when it closes, and 2 s after the attackers are gone. `survived` says whether every
//! process is still there; `healthz_after`, how long `/healthz` then takes to answer (30 s at most).
//!
//! ```text
//! cargo bench --bench attack -- --list
//! cargo bench --bench attack -- --attack ws-ping-flood --quick          # starts the release gateway
//! cargo bench --bench attack -- --attack slow-sse --target nchan --url http://127.0.0.1:PORT --pid MASTER,WORKER...
//! ```
//!
//! `benches/attack.sh` runs every attack against a fresh server each (ssegate, and Nchan where
//! the attack applies) and writes the "Under attack" section of BENCHMARKS.md. Nchan is driven as
//! in `benches/loadgen.rs` (`/sub/<topic>` for EventSource and WebSocket, `POST /pub/<topic>`),
//! with the static `/healthz` of `benches/peers/nchan-attack.conf.in`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[path = "common/dechunk.rs"]
mod dechunk;
use dechunk::Dechunker;

/// What to run.
#[derive(Debug, Parser)]
struct Args {
    /// The attack (see --list).
    #[arg(long, value_enum)]
    attack: Option<Attack>,
    /// Print every attack and the targets it applies to, one a line, and exit.
    #[arg(long)]
    list: bool,
    /// What the server is: it decides the paths and the publish call.
    #[arg(long, value_enum, default_value_t = Target::Ssegate)]
    target: Target,
    /// Server to attack; without it, the release gateway is started on a free port.
    #[arg(long)]
    url: Option<String>,
    /// PIDs of the server given by --url, comma separated (every process of it), for its memory.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Gateway binary to start when no --url is given.
    #[arg(long, default_value = "target/release/ssegate")]
    bin: String,
    /// Smaller sizes and a shorter window, to try changes.
    #[arg(long)]
    quick: bool,
    /// The attack window, in seconds (default 10, 5 with --quick).
    #[arg(long)]
    duration_s: Option<f64>,
    /// How long the victim is measured before the attack, in seconds.
    #[arg(long, default_value_t = 2.0)]
    baseline_s: f64,
    /// Longest time an attack's set-up, and separately its window, may take, in seconds.
    #[arg(long, default_value_t = 60)]
    limit_s: u64,
    /// Clients of `fanout-health` (default 10,000, 2,000 with --quick).
    #[arg(long)]
    fan_clients: Option<usize>,
}

/// The server being attacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// ssegate: `/stream?topic=`, `/ws`, `POST /publish` with the contract's JSON.
    Ssegate,
    /// Nginx with Nchan: `/sub/<topic>` for EventSource and WebSocket, `POST /pub/<topic>`.
    Nchan,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ssegate => "ssegate",
            Target::Nchan => "nchan",
        }
    }

    /// The path an EventSource subscribes to `topic` with (ssegate: a pattern too).
    fn sse_path(self, topic: &str) -> String {
        match self {
            Target::Ssegate => format!("/stream?topic={}", encode(topic)),
            Target::Nchan => format!("/sub/{topic}"),
        }
    }

    /// The path a WebSocket client opens; Nchan needs a channel, ssegate may have none.
    fn ws_path(self, topic: &str) -> String {
        match self {
            Target::Ssegate if topic.is_empty() => "/ws".into(),
            Target::Ssegate => format!("/ws?topic={}", encode(topic)),
            Target::Nchan => format!("/sub/{}", if topic.is_empty() { "ws" } else { topic }),
        }
    }

    /// The request that publishes one event, `data` being JSON text.
    fn publish(
        self,
        http: &reqwest::Client,
        base: &str,
        topic: &str,
        event: &str,
        data: &str,
    ) -> reqwest::RequestBuilder {
        match self {
            Target::Ssegate => http
                .post(format!("{base}/publish"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"topic":"{topic}","event":"{event}","data":{data}}}"#)),
            Target::Nchan => {
                http.post(format!("{base}/pub/{topic}")).header("x-eventsource-event", event).body(data.to_owned())
            }
        }
    }
}

/// The attacks of issue 12's table, and the fan-out it measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attack {
    /// Two WebSocket clients send `{"type":"ping"}` frames and WebSocket pings as fast as they can.
    WsPingFlood,
    /// One WebSocket client sends 4 subscribe frames of ~1 MiB (50,000 topics each).
    WsHugeSubscribe,
    /// One WebSocket client subscribes to 100,000 distinct wildcard patterns, then stays.
    WsManyPatterns,
    /// 10 SSE clients resume `topic=**` from the oldest of 10,000 events of 10 KB and never read.
    ResumeNeverRead,
    /// The same with 4 WebSocket clients (`lastEventId` in the URL).
    ResumeNeverReadWs,
    /// One ~194 KB publish naming thousands of topics.
    PublishManyTopics,
    /// The same with `retain: true`.
    PublishManyTopicsRetain,
    /// A ~900-byte `json_patch` of `copy` ops from the root: each doubles the state.
    PatchCopyBomb,
    /// `json_patch` requests that nest a state ~40,000 levels deep, then `GET /snapshot`.
    DeepNesting,
    /// One keep-alive connection opens long-poll sessions as fast as it can.
    PollSessions,
    /// An SSE client that never reads, on a topic with a burst that overflows its queue.
    SlowSse,
    /// 100 WebSocket connections each hold ~1 MiB of an unfinished fragmented message.
    WsFragments,
    /// 10,000 SSE clients get 5 events/s; `/healthz` and a new client's welcome are timed.
    FanoutHealth,
}

impl Attack {
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    /// Whether the attack means anything against Nchan: the raw SSE/WebSocket ones do; those
    /// made of ssegate's own JSON frames, retained state, patches or sessions do not.
    fn applies_to(self, target: Target) -> bool {
        target == Target::Ssegate
            || matches!(
                self,
                Attack::WsPingFlood
                    | Attack::ResumeNeverRead
                    | Attack::ResumeNeverReadWs
                    | Attack::SlowSse
                    | Attack::WsFragments
                    | Attack::FanoutHealth
            )
    }
}

/// The sizes of a run: the issue's, or smaller ones with --quick.
#[derive(Debug, Clone)]
struct Sizes {
    huge_frames: usize,
    huge_topics: usize,
    patterns: usize,
    patterns_per_frame: usize,
    fill_events: usize,
    fill_bytes: usize,
    sse_resumers: usize,
    ws_resumers: usize,
    many_topics: usize,
    many_topics_data: usize,
    copy_ops: usize,
    nesting: usize,
    poll_flood: Duration,
    slow_burst: usize,
    slow_wait: Duration,
    fragment_conns: usize,
    fragment_bytes: usize,
    fan_clients: usize,
}

impl Sizes {
    fn new(quick: bool, fan_clients: Option<usize>) -> Self {
        let pick = |full: usize, small: usize| if quick { small } else { full };
        Sizes {
            huge_frames: pick(4, 2),
            huge_topics: 50_000,
            patterns: pick(100_000, 20_000),
            patterns_per_frame: 5_000,
            // Under the default history of 10,000 events with room for the victim's (20/s): the
            // first one filled is still there when the resumers ask for it, so they get all the
            // rest instead of a `reset`.
            fill_events: pick(9_000, 2_000),
            fill_bytes: 10 * 1024,
            sse_resumers: 10,
            ws_resumers: 4,
            many_topics: 8_800,
            many_topics_data: 97_000,
            // 2^20 copies of a small state: ~750 MB in ssegate at 2dd737e.
            copy_ops: pick(20, 18),
            nesting: 40_000,
            poll_flood: Duration::from_secs(5),
            slow_burst: 8_000,
            slow_wait: Duration::from_secs(pick(30, 15) as u64),
            fragment_conns: pick(100, 20),
            // Under the 1 MiB message limit, so the message is never refused as too large.
            fragment_bytes: (1 << 20) - 4096,
            fan_clients: fan_clients.unwrap_or(pick(10_000, 2_000)),
        }
    }
}

/// Microseconds since the bench started: the clock of send and arrival times.
fn micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Percent-encodes a query value (topics and patterns hold `/` and `*`, ids `-` and `:`).
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The victim's (and the backend's) source address.
const VICTIM_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// The source address of attacker connection `i`: 127.0.0.2-127.0.0.8, never the victim's.
fn attacker_src(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 7) as u8))
}

/// A TCP connection to `addr` from `src`, with a receive buffer of `rcvbuf` bytes if given (set
/// before connecting, so the window the peer sees is small from the start).
async fn connect_from(src: IpAddr, addr: SocketAddr, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP client whose connections come from `src` and are kept alive (one at a time is used).
fn http_from(src: IpAddr) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().local_address(src).pool_max_idle_per_host(4).build()?)
}

// --- measurements ----------------------------------------------------------------------------

/// Percentiles of durations in microseconds, as JSON milliseconds (`null` when empty).
fn stats(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    let at = |p: f64| -> Value {
        if us.is_empty() {
            return Value::Null;
        }
        let v = us[((us.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
        json!((v * 100.0).round() / 100.0)
    };
    json!({"n": us.len(), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)})
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state.is_some_and(|c| c != 'Z' && c != 'X'))
}

/// Samples the server's memory every 100 ms: the last value and the peak since the last reset.
struct Rss {
    pids: Vec<u32>,
    /// KiB, since the last reset.
    peak: AtomicU64,
}

impl Rss {
    fn now(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        // A process that is gone counts as nothing (the survivors' memory is still of interest);
        // with none left there is nothing to measure.
        let each: Vec<u64> = self.pids.iter().filter_map(|&p| rss_kib(p)).collect();
        (!each.is_empty()).then(|| each.iter().sum())
    }

    fn sample(&self) -> Option<u64> {
        let kib = self.now()?;
        self.peak.fetch_max(kib, Ordering::Relaxed);
        Some(kib)
    }

    fn reset_peak(&self) {
        self.peak.store(self.sample().unwrap_or(0), Ordering::Relaxed);
    }

    /// The peak since the last reset, also when the server is gone by now.
    fn peak(&self) -> Option<u64> {
        self.sample();
        let peak = self.peak.load(Ordering::Relaxed);
        (!self.pids.is_empty() && peak > 0).then_some(peak)
    }
}

/// KiB as JSON megabytes with one decimal.
fn mb(kib: Option<u64>) -> Value {
    kib.map_or(Value::Null, |k| json!((k as f64 / 1024.0 * 10.0).round() / 10.0))
}

/// Which part of a run a victim sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Baseline = 0,
    Setup = 1,
    Attack = 2,
    After = 3,
}

/// How one timed victim request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer.
    Ok,
    /// Another status: an answer all the same.
    Status(u16),
    /// No answer within the request's time limit.
    TimedOut,
    /// Still waiting when the victim stopped.
    Unfinished,
    /// Connection refused, reset or closed: the server is gone or cut it.
    Failed,
}

/// One timed victim request.
#[derive(Debug, Clone, Copy)]
struct Sample {
    phase: u8,
    seq: u64,
    sent: u64,
    rtt: u64,
    outcome: Outcome,
}

/// What the victim records.
#[derive(Default)]
struct Tally {
    publishes: Mutex<Vec<Sample>>,
    health: Mutex<Vec<Sample>>,
    /// The requests still waiting for an answer: phase and send time by seq.
    publish_waiting: Mutex<HashMap<u64, (u8, u64)>>,
    health_waiting: Mutex<HashMap<u64, (u8, u64)>>,
    /// Arrival time by event seq.
    arrivals: Mutex<HashMap<u64, u64>>,
    subscribed: AtomicBool,
    /// Why the victim's stream ended, if it did.
    stream_end: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The victim: its tasks run on their own runtime until `stop`.
struct Victim {
    tally: Arc<Tally>,
    stop: CancellationToken,
    loops: Vec<tokio::task::JoinHandle<()>>,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Victim {
    async fn start(run: &Arc<Run>, rt: &tokio::runtime::Handle) -> anyhow::Result<Victim> {
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        let subscriber = {
            let (tally, run) = (tally.clone(), run.clone());
            rt.spawn(async move {
                let end = victim_subscriber(&run, &tally).await;
                let why = match end {
                    Ok(_) => "the server ended the stream".to_owned(),
                    Err(e) => e.to_string(),
                };
                *lock(&tally.stream_end) = Some(why);
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tally.subscribed.load(Ordering::Relaxed) {
            if let Some(why) = lock(&tally.stream_end).clone() {
                anyhow::bail!("the victim could not subscribe: {why}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the victim could not subscribe within 10 s");
            sleep(Duration::from_millis(10)).await;
        }
        let mut loops = Vec::new();
        for publishing in [true, false] {
            let (tally, run, stop) = (tally.clone(), run.clone(), stop.clone());
            loops.push(rt.spawn(async move {
                let http = match http_from(IpAddr::V4(VICTIM_SRC)) {
                    Ok(h) => h,
                    Err(_) => return,
                };
                victim_requests(run, tally, http, publishing, stop).await
            }));
        }
        Ok(Victim { tally, stop, loops, subscriber })
    }

    /// Stops publishing, waits (3 s at most) for the attack window's events, and reports.
    async fn stop(self) -> Map<String, Value> {
        self.stop.cancel();
        for task in self.loops {
            // Requests the server still holds are waited for 10 s more, then given up.
            let abort = task.abort_handle();
            if timeout(Duration::from_secs(12), task).await.is_err() {
                abort.abort();
            }
        }
        let t = &self.tally;
        for (waiting, samples) in [(&t.publish_waiting, &t.publishes), (&t.health_waiting, &t.health)] {
            for (seq, (phase, sent)) in lock(waiting).drain() {
                let rtt = micros().saturating_sub(sent);
                lock(samples).push(Sample { phase, seq, sent, rtt, outcome: Outcome::Unfinished });
            }
        }
        let wanted = |p: &Sample| p.phase == Phase::Attack as u8 && p.outcome == Outcome::Ok;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pending = {
                let arrivals = lock(&t.arrivals);
                lock(&t.publishes).iter().filter(|p| wanted(p)).any(|p| !arrivals.contains_key(&p.seq))
            };
            if !pending || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.subscriber.abort();
        let mut out = Map::new();
        let attack = report_phase(t, Phase::Attack);
        out.extend(attack);
        out.insert("baseline".into(), Value::Object(report_phase(t, Phase::Baseline)));
        if let Some(why) = lock(&t.stream_end).clone() {
            out.insert("victim_stream_ended".into(), json!(why));
        }
        out
    }
}

/// The victim's figures for one phase.
fn report_phase(t: &Tally, phase: Phase) -> Map<String, Value> {
    let phase = phase as u8;
    let publishes: Vec<Sample> = lock(&t.publishes).iter().filter(|s| s.phase == phase).copied().collect();
    let health: Vec<Sample> = lock(&t.health).iter().filter(|s| s.phase == phase).copied().collect();
    let arrivals = lock(&t.arrivals);
    // A round trip is what the user waited for an answer, whatever it was; a refused connection
    // is no answer (counted in the errors).
    let answered = |s: &&Sample| s.outcome != Outcome::Failed;
    let errors = |v: &[Sample]| {
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for s in v {
            let kind = match s.outcome {
                Outcome::Ok => continue,
                Outcome::Status(code) => code.to_string(),
                Outcome::TimedOut => "timeout".into(),
                Outcome::Unfinished => "unfinished".into(),
                Outcome::Failed => "failed".into(),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        json!(kinds)
    };
    let mut delivery = Vec::new();
    let mut missing = 0;
    for p in publishes.iter().filter(|p| p.outcome == Outcome::Ok) {
        match arrivals.get(&p.seq) {
            Some(&at) => delivery.push(at.saturating_sub(p.sent)),
            None => missing += 1,
        }
    }
    let mut out = Map::new();
    out.insert("publishes".into(), json!(publishes.len()));
    out.insert("publish_ms".into(), stats(publishes.iter().filter(answered).map(|s| s.rtt).collect()));
    out.insert("publish_errors".into(), json!(errors(&publishes)));
    out.insert("delivery_ms".into(), stats(delivery));
    out.insert("missing".into(), json!(missing));
    out.insert("healthz_ms".into(), stats(health.iter().filter(answered).map(|s| s.rtt).collect()));
    out.insert("healthz_errors".into(), json!(errors(&health)));
    out
}

/// The victim's publisher (`publishing`) or health checker: one request every 50 ms, sent on
/// time whether or not the previous ones were answered (so a server that stalls for 10 s shows
/// 200 slow answers, not one), over kept-alive connections: one while answers come in time.
async fn victim_requests(
    run: Arc<Run>,
    t: Arc<Tally>,
    http: reqwest::Client,
    publishing: bool,
    stop: CancellationToken,
) {
    /// Requests waiting at once; beyond it, the tick waits (the server is stalled for 10 s).
    const MAX_WAITING: usize = 200;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = JoinSet::new();
    for seq in 1.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while waiting.len() >= MAX_WAITING {
            waiting.join_next().await;
        }
        let phase = run.phase.load(Ordering::Relaxed);
        let sent = micros();
        let table = if publishing { &t.publish_waiting } else { &t.health_waiting };
        lock(table).insert(seq, (phase, sent));
        let request = if publishing {
            let data = format!(r#"{{"seq":{seq},"sent":{sent}}}"#);
            run.target.publish(&http, &run.base, "victim", "tick", &data)
        } else {
            http.get(format!("{}/healthz", run.base))
        };
        let t = t.clone();
        waiting.spawn(async move {
            let answer = timeout(Duration::from_secs(30), async {
                let res = request.send().await?;
                let status = res.status();
                res.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            })
            .await;
            let rtt = micros().saturating_sub(sent);
            let outcome = match answer {
                Ok(Ok(s)) if s.is_success() => Outcome::Ok,
                Ok(Ok(s)) => Outcome::Status(s.as_u16()),
                Ok(Err(_)) => Outcome::Failed,
                Err(_) => Outcome::TimedOut,
            };
            let (table, samples) =
                if publishing { (&t.publish_waiting, &t.publishes) } else { (&t.health_waiting, &t.health) };
            lock(table).remove(&seq);
            lock(samples).push(Sample { phase, seq, sent, rtt, outcome });
        });
    }
    // The last answers, 10 s at most; what is still waiting then is reported as unfinished.
    let _ = timeout(Duration::from_secs(10), async { while waiting.join_next().await.is_some() {} }).await;
}

/// The victim's subscriber: records each event's arrival by seq.
async fn victim_subscriber(run: &Run, t: &Tally) -> std::io::Result<bool> {
    let stream = connect_from(IpAddr::V4(VICTIM_SRC), run.addr, None).await?;
    let request = sse_request(run.addr, &run.target.sse_path("victim"), "");
    let nchan = run.target == Target::Nchan;
    read_sse(stream, request, 16 * 1024, |seen| {
        match seen {
            // Nchan sends no greeting: its answer means the subscription is in place.
            Seen::Open if nchan => t.subscribed.store(true, Ordering::Relaxed),
            Seen::Open => {}
            Seen::Frame(f) if f.contains("event: welcome") => t.subscribed.store(true, Ordering::Relaxed),
            Seen::Frame(f) => {
                if let (Some(seq), Some(_)) = (number_after(f, "\"seq\":"), number_after(f, "\"sent\":")) {
                    lock(&t.arrivals).entry(seq).or_insert_with(micros);
                }
            }
        }
        true
    })
    .await
}

// --- SSE and WebSocket on raw sockets --------------------------------------------------------

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn sse_request(addr: SocketAddr, path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n{headers}\r\n")
}

/// What an SSE reader reports.
enum Seen<'a> {
    /// The `200` head arrived.
    Open,
    /// One event (the text between blank lines, without them).
    Frame(&'a str),
}

/// Sends `request` and reads an event stream until the server ends it (`false`) or `on` returns
/// false (`true`).
async fn read_sse(
    mut stream: TcpStream,
    request: String,
    buffer: usize,
    mut on: impl FnMut(Seen<'_>) -> bool,
) -> std::io::Result<bool> {
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; buffer];
    let mut head = Vec::new();
    let mut dechunker: Option<Option<Dechunker>> = None;
    let mut body = Vec::new();
    let mut pending = String::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        match &mut dechunker {
            None => {
                head.extend_from_slice(&buf[..n]);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if !text.starts_with("http/1.1 200") {
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
                if !on(Seen::Open) {
                    return Ok(true);
                }
            }
            Some(Some(d)) => d.feed(&buf[..n], &mut body)?,
            Some(None) => body.extend_from_slice(&buf[..n]),
        }
        pending.push_str(&String::from_utf8_lossy(&body));
        body.clear();
        while let Some(end) = pending.find("\n\n") {
            if !on(Seen::Frame(&pending[..end])) {
                return Ok(true);
            }
            pending.drain(..end + 2);
        }
    }
}

/// Reads until the response head is complete (reading at most a few KiB more): its status code
/// and the bytes after it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]);
            let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return Ok((status, head.split_off(end + 4)));
        }
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
}

/// Sends a WebSocket handshake for `path` (extra `headers` ending in CRLF each) and reads the
/// answer's head.
async fn ws_handshake(stream: &mut TcpStream, addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<u16> {
    stream.write_all(ws_request(addr, path, headers).as_bytes()).await?;
    Ok(read_head(stream).await?.0)
}

/// A WebSocket handshake request for `path`, with extra `headers` ending in CRLF each.
fn ws_request(addr: SocketAddr, path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{headers}\r\n"
    )
}

/// One masked client frame.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket client (tungstenite) to `path`, from `src`.
async fn ws_connect(run: &Run, src: IpAddr, path: &str) -> anyhow::Result<Ws> {
    ws_connect_to(run.addr, src, path).await
}

async fn ws_connect_to(addr: SocketAddr, src: IpAddr, path: &str) -> anyhow::Result<Ws> {
    let stream = connect_from(src, addr, None).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// Waits for the server's answer to the frame with `ref`: `ack`, `error:<code>`, `closed:<code>`
/// or `timeout`.
async fn answer_to(ws: &mut Ws, reference: usize, deadline: tokio::time::Instant) -> String {
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return "timeout".into(),
            Ok(None) => return "closed".into(),
            Ok(Some(Err(e))) => return format!("failed: {e}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return format!("closed:{}", frame.map_or(0, |f| u16::from(f.code)));
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                if v["ref"] != json!(reference) {
                    continue;
                }
                return match v["type"].as_str() {
                    Some("error") => format!("error:{}", v["code"].as_str().unwrap_or("?")),
                    Some(other) => other.to_owned(),
                    None => "?".into(),
                };
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The state of the server's end of a TCP connection, from `/proc/net/tcp` (`01` established,
/// `04`-`07` closing); `None` when it is gone.
fn server_socket_state(server: SocketAddr, peer: SocketAddr) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip.to_ne_bytes())), port))
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (parse(f.get(1)?)?, parse(f.get(2)?)?);
        (local == server && remote == peer).then(|| u8::from_str_radix(f.get(3)?, 16).ok()).flatten()
    })
}

const ESTABLISHED: u8 = 1;

// --- the run ---------------------------------------------------------------------------------

/// One run: the server, the clock of the attack window, and the memory figures.
struct Run {
    target: Target,
    base: String,
    addr: SocketAddr,
    sizes: Sizes,
    duration: Duration,
    limit: Duration,
    /// The backend's client (set-up publishes, admin requests), from the victim's address.
    http: reqwest::Client,
    phase: AtomicU8,
    rss: Rss,
    began: Mutex<Option<tokio::time::Instant>>,
    ended: Mutex<Option<tokio::time::Instant>>,
    rss_start: Mutex<Option<u64>>,
    rss_end: Mutex<Option<u64>>,
    /// The victim's runtime (one thread of its own): what it times is not delayed by the
    /// attackers' tasks in this process.
    victim_rt: tokio::runtime::Handle,
}

impl Run {
    /// The attack window opens: the victim's samples count from now, and the memory peak too.
    fn begin(&self) {
        self.rss.reset_peak();
        *lock(&self.rss_start) = self.rss.now();
        *lock(&self.began) = Some(tokio::time::Instant::now());
        self.phase.store(Phase::Attack as u8, Ordering::Relaxed);
    }

    /// The window closes (before the attackers let go).
    fn end(&self) {
        if lock(&self.ended).is_some() {
            return;
        }
        self.phase.store(Phase::After as u8, Ordering::Relaxed);
        *lock(&self.ended) = Some(tokio::time::Instant::now());
        *lock(&self.rss_end) = self.rss.now();
        self.rss.sample();
    }

    fn began(&self) -> tokio::time::Instant {
        lock(&self.began).unwrap_or_else(tokio::time::Instant::now)
    }

    /// When the window closes unless an attack step takes longer.
    fn window_end(&self) -> tokio::time::Instant {
        self.began() + self.duration
    }

    /// The latest the window may close.
    fn deadline(&self) -> tokio::time::Instant {
        self.began() + self.limit.max(self.duration)
    }

    /// The attack window around one publish of `body` (status, answer, milliseconds): the victim
    /// is measured for the whole window, not only while the publish is answered.
    async fn publish_in_window(&self, body: String) -> (u16, Value, f64) {
        self.begin();
        let answered = self.publish_raw(body, self.limit).await;
        sleep_until(self.window_end()).await;
        self.end();
        answered
    }

    /// POSTs a publish body as the backend: status, the answer's JSON, milliseconds.
    async fn publish_raw(&self, body: String, within: Duration) -> (u16, Value, f64) {
        let started = Instant::now();
        let request = self.http.post(format!("{}/publish", self.base)).header("content-type", "application/json");
        let answer = timeout(within, async {
            let res = request.body(body).send().await?;
            let status = res.status().as_u16();
            let bytes = res.bytes().await?;
            Ok::<_, reqwest::Error>((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        })
        .await;
        let ms = (started.elapsed().as_secs_f64() * 1e5).round() / 100.0;
        match answer {
            Ok(Ok((status, v))) => (status, v, ms),
            Ok(Err(e)) => (0, json!({"failed": e.to_string()}), ms),
            Err(_) => (0, json!({"failed": "no answer in time"}), ms),
        }
    }

    /// Publishes as the backend and fails unless the answer is 200; the answer's JSON.
    async fn publish_ok(&self, body: String) -> anyhow::Result<Value> {
        let (status, v, _) = self.publish_raw(body, self.limit).await;
        anyhow::ensure!(status == 200, "publish answered {status}: {v}");
        Ok(v)
    }

    /// ssegate: the ids of the connected clients whose topics include `topic`.
    async fn clients_on(&self, topic: &str) -> Option<Vec<String>> {
        let res =
            timeout(Duration::from_secs(5), self.http.get(format!("{}/clients", self.base)).send()).await.ok()?.ok()?;
        let v: Value = res.json().await.ok()?;
        Some(
            v["clients"]
                .as_array()?
                .iter()
                .filter(|c| c["topics"].as_array().is_some_and(|t| t.iter().any(|t| t == topic)))
                .filter_map(|c| c["client_id"].as_str().map(str::to_owned))
                .collect(),
        )
    }
}

fn ms_since(t: tokio::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

// --- the attacks -----------------------------------------------------------------------------

type Detail = Map<String, Value>;

fn detail(v: Value) -> Detail {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What the ping flooders count.
#[derive(Default)]
struct Flood {
    connections: AtomicU64,
    sent: AtomicU64,
    answers: AtomicU64,
    /// How the server ended a flooder's connections (the first few) and how many it ended.
    cuts: Mutex<Vec<String>>,
    cut: AtomicU64,
}

/// a. Two WebSocket clients send `{"type":"ping"}` frames and WebSocket pings as fast as they can,
/// reading the answers; a flooder the server cuts connects again, as an attacker would. Nchan
/// gets pings only: it closes (1008) a subscriber that sends text.
async fn ws_ping_flood(run: &Run) -> anyhow::Result<Detail> {
    let flood = Arc::new(Flood::default());
    let path = run.target.ws_path("flood");
    // The first connections are made before the window, so it starts with the flood itself.
    let mut first = Vec::new();
    for i in 0..2 {
        first.push(ws_connect(run, attacker_src(i), &path).await?);
    }
    run.begin();
    let began = run.began();
    let end = run.window_end();
    let text = run.target == Target::Ssegate;
    let mut tasks = JoinSet::new();
    for (i, ws) in first.into_iter().enumerate() {
        let (flood, addr, path) = (flood.clone(), run.addr, path.clone());
        tasks.spawn(async move {
            let mut next = Some(ws);
            while tokio::time::Instant::now() < end {
                let ws = match next.take() {
                    Some(ws) => ws,
                    None => match timeout_at(end, ws_connect_to(addr, attacker_src(i), &path)).await {
                        Ok(Ok(ws)) => ws,
                        Ok(Err(_)) => {
                            // Refused: try again shortly.
                            sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(_) => break,
                    },
                };
                flood.connections.fetch_add(1, Ordering::Relaxed);
                let (mut sink, mut stream) = ws.split();
                let writer = async {
                    let mut n = 0u64;
                    loop {
                        let batch = async {
                            for _ in 0..32 {
                                n += 1;
                                let frame = if n.is_multiple_of(2) || !text {
                                    Message::Ping(bytes::Bytes::from_static(b"flood"))
                                } else {
                                    Message::text(format!(r#"{{"type":"ping","ref":{n}}}"#))
                                };
                                sink.feed(frame).await?;
                            }
                            sink.flush().await
                        };
                        if batch.await.is_err() {
                            // The connection is done for: the reader says how.
                            return std::future::pending::<()>().await;
                        }
                        flood.sent.fetch_add(32, Ordering::Relaxed);
                    }
                };
                let reader = async {
                    loop {
                        match stream.next().await {
                            Some(Ok(Message::Close(f))) => {
                                break format!("closed:{}", f.map_or(0, |f| u16::from(f.code)))
                            }
                            Some(Ok(_)) => flood.answers.fetch_add(1, Ordering::Relaxed),
                            Some(Err(e)) => break format!("failed ({e})"),
                            None => break "closed".into(),
                        };
                    }
                };
                tokio::select! {
                    why = reader => {
                        flood.cut.fetch_add(1, Ordering::Relaxed);
                        let mut cuts = lock(&flood.cuts);
                        if cuts.len() < 4 {
                            cuts.push(format!("{why} after {:.1} s", began.elapsed().as_secs_f64()));
                        }
                    }
                    _ = writer => {}
                    _ = sleep_until(end) => break,
                }
            }
        });
    }
    sleep_until(end).await;
    run.end();
    tasks.abort_all();
    let cuts = lock(&flood.cuts).clone();
    Ok(detail(json!({
        "flooders": 2,
        "connections": flood.connections.load(Ordering::Relaxed),
        "frames_sent": flood.sent.load(Ordering::Relaxed),
        "answers_read": flood.answers.load(Ordering::Relaxed),
        "cut": flood.cut.load(Ordering::Relaxed),
        "first_cuts": cuts,
    })))
}

/// b. One WebSocket client sends subscribe frames of ~1 MiB (50,000 topics each), one after the
/// other's answer.
async fn ws_huge_subscribe(run: &Run) -> anyhow::Result<Detail> {
    let per_frame = run.sizes.huge_topics;
    // 17-character topics: with quotes and commas the frame is ~1,000,000 bytes, under the 1 MiB
    // frame limit.
    let frames: Vec<String> = (0..run.sizes.huge_frames)
        .map(|f| {
            let topics: Vec<String> = (0..per_frame).map(|i| format!("h{f}/{i:0>14}")).collect();
            json!({"type": "subscribe", "ref": f, "topics": topics}).to_string()
        })
        .collect();
    let mut ws = ws_connect(run, attacker_src(0), &run.target.ws_path("")).await?;
    run.begin();
    let deadline = run.deadline();
    let mut answers = Vec::new();
    for (f, frame) in frames.into_iter().enumerate() {
        let started = tokio::time::Instant::now();
        let bytes = frame.len();
        let answer = match timeout_at(deadline, ws.send(Message::text(frame))).await {
            Ok(Ok(())) => answer_to(&mut ws, f, deadline).await,
            Ok(Err(e)) => format!("send failed: {e}"),
            Err(_) => "timeout".into(),
        };
        let done = answer == "ack" || answer.starts_with("error:");
        answers.push(json!({"bytes": bytes, "topics": per_frame, "answer": answer, "ms": ms_since(started)}));
        if !done {
            break;
        }
    }
    sleep_until(run.window_end()).await;
    run.end();
    Ok(detail(json!({ "frames": answers })))
}

/// c. One WebSocket client subscribes to many distinct wildcard patterns (frames of 5,000, each
/// sent after the previous one's answer; a frame refused with an `error` is tried again at half
/// the size, so a server with a cap gets as many as it lets in); then the victim measures while
/// the client stays connected.
async fn ws_many_patterns(run: &Run) -> anyhow::Result<Detail> {
    let mut ws = ws_connect(run, attacker_src(0), &run.target.ws_path("")).await?;
    let started = tokio::time::Instant::now();
    let deadline = started + run.limit;
    let (mut accepted, mut sent, mut frames, mut refused, mut last) = (0usize, 0usize, 0usize, 0usize, String::new());
    let total = run.sizes.patterns;
    let mut per_frame = run.sizes.patterns_per_frame;
    while accepted < total {
        let n = per_frame.min(total - accepted);
        let patterns: Vec<String> = (accepted..accepted + n)
            .map(|i| if i % 2 == 0 { format!("p/{i}/*") } else { format!("p/{i}/**") })
            .collect();
        let frame = json!({"type": "subscribe", "ref": frames, "topics": patterns}).to_string();
        sent += n;
        last = match timeout_at(deadline, ws.send(Message::text(frame))).await {
            Ok(Ok(())) => answer_to(&mut ws, frames, deadline).await,
            Ok(Err(e)) => format!("send failed: {e}"),
            Err(_) => "timeout".into(),
        };
        frames += 1;
        if last.starts_with("error:") && n > 1 {
            refused += 1;
            per_frame = n / 2;
            continue;
        }
        if last != "ack" {
            break;
        }
        accepted += n;
    }
    let setup_s = started.elapsed().as_secs_f64();
    // Keep reading (pings, anything else) while the victim measures.
    let (sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    run.begin();
    sleep_until(run.window_end()).await;
    run.end();
    reader.abort();
    drop(sink);
    Ok(detail(json!({
        "patterns_sent": sent,
        "patterns_accepted": accepted,
        "frames": frames,
        "frames_refused": refused,
        "last_answer": last,
        "subscribe_s": (setup_s * 100.0).round() / 100.0,
    })))
}

/// Fills the history of `topic` with `n` events of `bytes` each; the id of the first one.
async fn fill_history(run: &Run, topic: &str, n: usize, bytes: usize) -> anyhow::Result<Option<String>> {
    let data = format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)));
    match run.target {
        Target::Ssegate => {
            let mut first = None;
            let batch = 50;
            for start in (0..n).step_by(batch) {
                let items: Vec<String> = (start..n.min(start + batch))
                    .map(|_| format!(r#"{{"topic":"{topic}","event":"fill","data":{data}}}"#))
                    .collect();
                let v = run.publish_ok(format!("[{}]", items.join(","))).await?;
                if first.is_none() {
                    first = v["ids"][0].as_str().map(str::to_owned);
                }
            }
            Ok(first)
        }
        Target::Nchan => {
            let mut first = None;
            for i in 0..n {
                let mut req = run.target.publish(&run.http, &run.base, topic, "fill", &data);
                if i == 0 {
                    req = req.header("accept", "application/json");
                }
                let res = req.send().await?;
                anyhow::ensure!(res.status().is_success(), "publish answered {}", res.status());
                let body = res.bytes().await?;
                if i == 0 {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    first = v["last_message_id"].as_str().map(str::to_owned);
                }
            }
            Ok(first)
        }
    }
}

/// d. SSE (or WebSocket) clients resume from the oldest event of a full history and never read.
async fn resume_never_read(run: &Run, ws: bool) -> anyhow::Result<Detail> {
    let fill_started = Instant::now();
    let first = fill_history(run, "fill", run.sizes.fill_events, run.sizes.fill_bytes).await?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let Some(first) = first else { anyhow::bail!("the first publish returned no id") };
    let clients = if ws { run.sizes.ws_resumers } else { run.sizes.sse_resumers };
    run.begin();
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    let mut resets = 0;
    for i in 0..clients {
        let mut stream = connect_from(attacker_src(i), run.addr, Some(4096)).await?;
        let local = stream.local_addr()?;
        let header = format!("last-event-id: {first}\r\n");
        let request = if ws {
            let path = match run.target {
                Target::Ssegate => format!("/ws?topic=**&lastEventId={}", encode(&first)),
                Target::Nchan => format!("/sub/fill?last_event_id={}", encode(&first)),
            };
            ws_request(run.addr, &path, &header)
        } else {
            let topic = if run.target == Target::Ssegate { "**" } else { "fill" };
            sse_request(run.addr, &run.target.sse_path(topic), &header)
        };
        let status = timeout(Duration::from_secs(10), async {
            stream.write_all(request.as_bytes()).await?;
            let (status, mut first_bytes) = read_head(&mut stream).await?;
            // A glance at what comes first (the greeting, and a `reset` if the id was no longer in
            // history, which would make this no attack); then nothing more is read.
            let mut buf = [0u8; 4096];
            if let Ok(Ok(n)) = timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
                first_bytes.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>((status, first_bytes))
        })
        .await;
        if let Ok(Ok((_, first_bytes))) = &status {
            let text = String::from_utf8_lossy(first_bytes);
            if text.contains("event: reset") || text.contains(r#""type":"reset""#) {
                resets += 1;
            }
        }
        statuses.push(match status {
            Ok(Ok((s, _))) => json!(s),
            Ok(Err(e)) => json!(e.to_string()),
            Err(_) => json!("no answer in 10 s"),
        });
        // Never read again: the socket stays open with its small window full.
        held.push((stream, local));
    }
    sleep_until(run.window_end()).await;
    run.end();
    let established =
        held.iter().filter(|(_, local)| server_socket_state(run.addr, *local) == Some(ESTABLISHED)).count();
    let registered = match run.target {
        Target::Ssegate => run.clients_on("**").await.map(|c| c.len()),
        Target::Nchan => None,
    };
    drop(held);
    Ok(detail(json!({
        "transport": if ws { "ws" } else { "sse" },
        "history_events": run.sizes.fill_events,
        "event_bytes": run.sizes.fill_bytes,
        "fill_s": (fill_s * 100.0).round() / 100.0,
        "resumers": clients,
        "statuses": statuses,
        "told_to_reset": resets,
        "still_open_at_end": established,
        "still_registered_at_end": registered,
    })))
}

/// e. One publish of ~194 KB: ~97 KB of data and ~97 KB of topic names.
async fn publish_many_topics(run: &Run, retain: bool) -> anyhow::Result<Detail> {
    let topics: Vec<String> = (0..run.sizes.many_topics).map(|i| format!("mt/{i:05}")).collect();
    let blob = "x".repeat(run.sizes.many_topics_data);
    let body = if retain {
        json!({"topics": topics, "retain": true, "data": {"blob": blob}})
    } else {
        json!({"topics": topics, "event": "blob", "data": blob})
    }
    .to_string();
    let bytes = body.len();
    let (status, answer, ms) = run.publish_in_window(body).await;
    Ok(detail(json!({
        "body_bytes": bytes,
        "topics": run.sizes.many_topics,
        "data_bytes": run.sizes.many_topics_data,
        "retain": retain,
        "status": status,
        "error_code": answer["error"]["code"],
        "publish_ms": ms,
    })))
}

/// f. A small retained state, then one `json_patch` of `copy` ops from the root.
async fn patch_copy_bomb(run: &Run) -> anyhow::Result<Detail> {
    run.publish_ok(json!({"topic": "bomb", "retain": true, "data": {"k": "v"}}).to_string()).await?;
    let ops: Vec<Value> =
        (0..run.sizes.copy_ops).map(|i| json!({"op": "copy", "from": "", "path": format!("/copy-{i:02}")})).collect();
    let body = json!({"topic": "bomb", "json_patch": ops}).to_string();
    let bytes = body.len();
    let (status, answer, ms) = run.publish_in_window(body).await;
    Ok(detail(json!({
        "body_bytes": bytes,
        "copy_ops": run.sizes.copy_ops,
        "status": status,
        "error_code": answer["error"]["code"],
        "publish_ms": ms,
    })))
}

/// g. `json_patch` requests that each add 100 levels under the deepest one (every body within
/// the JSON parser's nesting limit, ~900 KB at most), then `GET /snapshot` of the state.
async fn deep_nesting(run: &Run) -> anyhow::Result<Detail> {
    const LEVELS_PER_OP: usize = 100;
    const MAX_BODY: usize = 900_000;
    run.publish_ok(json!({"topic": "deep", "retain": true, "data": {}}).to_string()).await?;
    let value = format!("{}{{}}{}", "{\"a\":".repeat(LEVELS_PER_OP - 1), "}".repeat(LEVELS_PER_OP - 1));
    run.begin();
    let deadline = run.deadline();
    let (mut depth, mut requests, mut refusal) = (0usize, 0usize, Value::Null);
    while depth < run.sizes.nesting && tokio::time::Instant::now() < deadline {
        let mut ops = Vec::new();
        let mut size = 0;
        let mut added = 0;
        while depth + added < run.sizes.nesting && size < MAX_BODY {
            let path = "/a".repeat(depth + added + 1);
            let op = format!(r#"{{"op":"add","path":"{path}","value":{value}}}"#);
            size += op.len() + 1;
            ops.push(op);
            added += LEVELS_PER_OP;
        }
        let body = format!(r#"{{"topic":"deep","json_patch":[{}]}}"#, ops.join(","));
        let (status, answer, ms) =
            run.publish_raw(body, deadline.saturating_duration_since(tokio::time::Instant::now())).await;
        requests += 1;
        if status != 200 {
            refusal = json!({"status": status, "answer": answer, "ms": ms, "at_depth": depth});
            break;
        }
        depth += added;
    }
    let snapshot = timeout(Duration::from_secs(20), async {
        let res = run.http.get(format!("{}/snapshot?topic=deep", run.base)).send().await?;
        let status = res.status().as_u16();
        let body = res.bytes().await?;
        Ok::<_, reqwest::Error>(json!({"status": status, "bytes": body.len()}))
    })
    .await;
    let snapshot = match snapshot {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"failed": e.to_string()}),
        Err(_) => json!({"failed": "no answer in 20 s"}),
    };
    // Let the victim see what became of the server.
    sleep_until(run.window_end().max(tokio::time::Instant::now() + Duration::from_secs(1))).await;
    run.end();
    Ok(detail(json!({
        "depth_reached": depth,
        "requests": requests,
        "refused": refusal,
        "snapshot": snapshot,
    })))
}

/// h. One keep-alive connection opens long-poll sessions (no `client_id`) as fast as it can;
/// then new long-poll clients, from another address and from the attacker's, try once each.
async fn poll_sessions(run: &Run) -> anyhow::Result<Detail> {
    let attacker = attacker_src(0);
    let flooder = reqwest::Client::builder().no_proxy().local_address(attacker).pool_max_idle_per_host(1).build()?;
    run.begin();
    let started = tokio::time::Instant::now();
    let mut statuses: HashMap<String, u64> = HashMap::new();
    let mut first_refusal = Value::Null;
    while started.elapsed() < run.sizes.poll_flood {
        let answer = timeout(Duration::from_secs(5), async {
            let res = flooder.get(format!("{}/poll?topic=x", run.base)).send().await?;
            let status = res.status().as_u16();
            res.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        })
        .await;
        let key = match answer {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(_)) => "failed".into(),
            Err(_) => "timeout".into(),
        };
        if key != "200" && first_refusal.is_null() {
            first_refusal =
                json!({"after_s": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0, "answer": key});
        }
        *statuses.entry(key).or_default() += 1;
    }
    let mut probes = Map::new();
    for (name, src) in [("new_client_other_address", IpAddr::V4(VICTIM_SRC)), ("new_client_same_address", attacker)] {
        let client = http_from(src)?;
        let answer = timeout(Duration::from_secs(5), async {
            let res = client.get(format!("{}/poll?topic=victim", run.base)).send().await?;
            Ok::<_, reqwest::Error>(res.status().as_u16())
        })
        .await;
        probes.insert(
            name.into(),
            match answer {
                Ok(Ok(s)) => json!(s),
                Ok(Err(e)) => json!(e.to_string()),
                Err(_) => json!("no answer in 5 s"),
            },
        );
    }
    sleep_until(run.window_end()).await;
    run.end();
    let mut out = detail(json!({
        "flood_s": run.sizes.poll_flood.as_secs_f64(),
        "sessions_opened": statuses.get("200").copied().unwrap_or(0),
        "answers": statuses,
        "first_refusal": first_refusal,
    }));
    out.extend(probes);
    Ok(out)
}

/// i. An SSE client that reads its welcome and then nothing, on a topic that gets a burst of
/// 8,000 events of 2 KB; how long until the server lets go of its socket.
async fn slow_sse(run: &Run) -> anyhow::Result<Detail> {
    let mut stream = connect_from(attacker_src(0), run.addr, Some(4096)).await?;
    let local = stream.local_addr()?;
    stream.write_all(sse_request(run.addr, &run.target.sse_path("slow"), "").as_bytes()).await?;
    let (status, mut first) = timeout(Duration::from_secs(10), read_head(&mut stream)).await??;
    anyhow::ensure!(status == 200, "the slow client was answered {status}");
    let client_id = if run.target == Target::Ssegate {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&first).contains("\"client_id\"") {
            let n = timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "the slow client's stream ended before its welcome");
            first.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&first);
        text.split("\"client_id\":\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_owned)
    } else {
        None
    };
    let data = format!("\"{}\"", "y".repeat(2048 - 2));
    run.begin();
    let started = tokio::time::Instant::now();
    let deadline = run.deadline();
    let n = run.sizes.slow_burst;
    match run.target {
        Target::Ssegate => {
            for start in (0..n).step_by(200) {
                let items: Vec<String> = (start..n.min(start + 200))
                    .map(|_| format!(r#"{{"topic":"slow","event":"burst","data":{data}}}"#))
                    .collect();
                run.publish_ok(format!("[{}]", items.join(","))).await?;
            }
        }
        Target::Nchan => {
            for _ in 0..n {
                let res = run.target.publish(&run.http, &run.base, "slow", "burst", &data).send().await?;
                anyhow::ensure!(res.status().is_success(), "publish answered {}", res.status());
                res.bytes().await?;
            }
        }
    }
    let burst_s = started.elapsed().as_secs_f64();
    let wait_until = (tokio::time::Instant::now() + run.sizes.slow_wait).min(deadline);
    let (mut socket_closed, mut hub_dropped) = (None, None);
    loop {
        let now_s = started.elapsed().as_secs_f64();
        if socket_closed.is_none() && server_socket_state(run.addr, local) != Some(ESTABLISHED) {
            socket_closed = Some(now_s);
        }
        if let (None, Some(id)) = (hub_dropped, &client_id) {
            if run.clients_on("slow").await.is_some_and(|c| !c.contains(id)) {
                hub_dropped = Some(now_s);
            }
        }
        let done = socket_closed.is_some() && (client_id.is_none() || hub_dropped.is_some());
        if done || tokio::time::Instant::now() >= wait_until {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    sleep_until(run.window_end()).await;
    run.end();
    let round = |v: Option<f64>| v.map_or(Value::Null, |s| json!((s * 100.0).round() / 100.0));
    let final_state = server_socket_state(run.addr, local);
    drop(stream);
    Ok(detail(json!({
        "burst_events": n,
        "event_bytes": 2048,
        "burst_s": (burst_s * 100.0).round() / 100.0,
        "waited_s": run.sizes.slow_wait.as_secs_f64(),
        "socket_closed_s": round(socket_closed),
        "client_dropped_s": round(hub_dropped),
        "server_socket_state_at_end": final_state.map_or(json!("gone"), |s| json!(format!("{s:02X}"))),
    })))
}

/// j. WebSocket connections that each send ~1 MiB of a fragmented text message and never its
/// last fragment.
async fn ws_fragments(run: &Run) -> anyhow::Result<Detail> {
    let conns = run.sizes.fragment_conns;
    let total = run.sizes.fragment_bytes;
    let piece = vec![b'a'; 64 * 1024];
    let opened = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    run.begin();
    let end = run.window_end();
    let mut tasks = JoinSet::new();
    for i in 0..conns {
        let (addr, path, piece) = (run.addr, run.target.ws_path("frag"), piece.clone());
        let (opened, completed, closed) = (opened.clone(), completed.clone(), closed.clone());
        tasks.spawn(async move {
            let attempt = async {
                let mut stream = connect_from(attacker_src(i), addr, None).await?;
                let status = ws_handshake(&mut stream, addr, &path, "").await?;
                if status != 101 {
                    return Err(std::io::Error::other(format!("answered {status}")));
                }
                opened.fetch_add(1, Ordering::Relaxed);
                let (mut reader, mut writer) = stream.into_split();
                let closed = closed.clone();
                // Read what the server sends (its welcome, its close), so this client is not
                // also a slow reader; aborted with this task.
                let mut drain = JoinSet::new();
                drain.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
                    closed.fetch_add(1, Ordering::Relaxed);
                });
                let mut sent = 0;
                while sent < total {
                    let n = piece.len().min(total - sent);
                    let opcode = if sent == 0 { 1 } else { 0 };
                    writer.write_all(&ws_frame(false, opcode, &piece[..n])).await?;
                    sent += n;
                }
                completed.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>((writer, drain))
            };
            // Hold the connection (and the unfinished message) until the window closes.
            if let Ok(Ok((writer, drain))) = timeout_at(end, attempt).await {
                sleep_until(end).await;
                drop(drain);
                drop(writer);
            }
        });
    }
    sleep_until(end).await;
    run.end();
    let closed_by_server = closed.load(Ordering::Relaxed);
    tasks.abort_all();
    Ok(detail(json!({
        "connections": conns,
        "opened": opened.load(Ordering::Relaxed),
        "fragment_bytes_each": total,
        "sent_whole_fragments": completed.load(Ordering::Relaxed),
        "closed_by_server": closed_by_server,
    })))
}

/// What the fan-out clients record.
#[derive(Default)]
struct FanTally {
    opened: AtomicU64,
    deliveries: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    failed: AtomicU64,
}

/// k. Many SSE clients on one topic get 5 events/s while `/healthz` (the victim's) and a new
/// client's time to its welcome are measured.
async fn fanout_health(run: &Run) -> anyhow::Result<Detail> {
    let clients = run.sizes.fan_clients;
    let tally = Arc::new(FanTally::default());
    let nchan = run.target == Target::Nchan;
    let connect_started = Instant::now();
    let mut fans = JoinSet::new();
    for i in 0..clients {
        let (tally, addr, path) = (tally.clone(), run.addr, run.target.sse_path("fan"));
        fans.spawn(async move {
            for attempt in 0..5 {
                let mut counted = false;
                let res = async {
                    let stream = connect_from(attacker_src(i), addr, None).await?;
                    read_sse(stream, sse_request(addr, &path, ""), 4096, |seen| {
                        match seen {
                            Seen::Open if nchan => {
                                counted = true;
                                tally.opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Seen::Open => {}
                            Seen::Frame(f) if !counted && f.contains("event: welcome") => {
                                counted = true;
                                tally.opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Seen::Frame(f) => {
                                if let Some(sent) = number_after(f, "\"sent\":") {
                                    tally.deliveries.fetch_add(1, Ordering::Relaxed);
                                    lock(&tally.latencies).push(micros().saturating_sub(sent));
                                }
                            }
                        }
                        true
                    })
                    .await
                }
                .await;
                // A client that got in and then lost its stream, or that never got in, failed.
                if counted || attempt == 4 {
                    if res.is_err() || !counted {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                sleep(Duration::from_millis(200 + (i as u64 * 7919) % 800)).await;
            }
        });
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let connect_deadline = Instant::now() + run.limit.max(Duration::from_secs(120));
    while (tally.opened.load(Ordering::Relaxed) as usize) < clients && Instant::now() < connect_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let connected = tally.opened.load(Ordering::Relaxed);
    let connect_s = connect_started.elapsed().as_secs_f64();
    sleep(Duration::from_millis(500)).await;

    run.begin();
    let end = run.window_end();
    let publisher = {
        let (target, base) = (run.target, run.base.clone());
        let http = http_from(IpAddr::V4(VICTIM_SRC))?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut inflight = JoinSet::new();
            let mut seq = 0u64;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                seq += 1;
                let sent = micros();
                let data = format!(r#"{{"seq":{seq},"sent":{sent}}}"#);
                let request = target.publish(&http, &base, "fan", "tick", &data);
                inflight.spawn(async move {
                    let ok = matches!(timeout(Duration::from_secs(30), request.send()).await, Ok(Ok(r)) if r.status().is_success());
                    (ok, micros().saturating_sub(sent))
                });
            }
            let mut rtts = Vec::new();
            let mut failed = 0;
            while let Some(done) = inflight.join_next().await {
                match done {
                    Ok((true, rtt)) => rtts.push(rtt),
                    _ => failed += 1,
                }
            }
            (seq, rtts, failed)
        })
    };
    // New clients are timed on the victim's thread, like `/healthz`: on this runtime they would
    // wait behind the tasks of the 10,000 readers, and time this process instead of the server.
    let prober = {
        let (addr, path) = (run.addr, run.target.sse_path("fan"));
        run.victim_rt.spawn(async move {
            let mut welcome = Vec::new();
            let mut welcome_failed = 0;
            let mut probe = tokio::time::interval(Duration::from_millis(100));
            while tokio::time::Instant::now() < end {
                probe.tick().await;
                let started = micros();
                // A new client, from connecting until its welcome (Nchan: its 200); then it
                // hangs up.
                let greeted = timeout(Duration::from_secs(5), async {
                    let stream = connect_from(IpAddr::V4(VICTIM_SRC), addr, None).await?;
                    let request = sse_request(addr, &path, "");
                    read_sse(stream, request, 4096, |seen| match seen {
                        Seen::Open => !nchan,
                        Seen::Frame(f) => !f.contains("event: welcome"),
                    })
                    .await
                })
                .await;
                match greeted {
                    Ok(Ok(true)) => welcome.push(micros().saturating_sub(started)),
                    _ => welcome_failed += 1,
                }
            }
            (welcome, welcome_failed)
        })
    };
    let (welcome, welcome_failed) = prober.await.unwrap_or_default();
    let (events, rtts, publish_failed) = publisher.await.unwrap_or_default();
    // The last event's deliveries, a moment to arrive.
    let expected = events * connected;
    let drain = Instant::now() + Duration::from_secs(3);
    while tally.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        sleep(Duration::from_millis(20)).await;
    }
    run.end();
    fans.abort_all();
    let latencies = std::mem::take(&mut *lock(&tally.latencies));
    Ok(detail(json!({
        "clients": clients,
        "connected": connected,
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "fan_events": events,
        "fan_deliveries": tally.deliveries.load(Ordering::Relaxed),
        "fan_expected": expected,
        "fan_delivery_ms": stats(latencies),
        "fan_publish_ms": stats(rtts),
        "fan_publish_errors": publish_failed,
        "welcome_ms": stats(welcome),
        "welcome_failed": welcome_failed,
    })))
}

async fn run_attack(attack: Attack, run: &Run) -> anyhow::Result<Detail> {
    match attack {
        Attack::WsPingFlood => ws_ping_flood(run).await,
        Attack::WsHugeSubscribe => ws_huge_subscribe(run).await,
        Attack::WsManyPatterns => ws_many_patterns(run).await,
        Attack::ResumeNeverRead => resume_never_read(run, false).await,
        Attack::ResumeNeverReadWs => resume_never_read(run, true).await,
        Attack::PublishManyTopics => publish_many_topics(run, false).await,
        Attack::PublishManyTopicsRetain => publish_many_topics(run, true).await,
        Attack::PatchCopyBomb => patch_copy_bomb(run).await,
        Attack::DeepNesting => deep_nesting(run).await,
        Attack::PollSessions => poll_sessions(run).await,
        Attack::SlowSse => slow_sse(run).await,
        Attack::WsFragments => ws_fragments(run).await,
        Attack::FanoutHealth => fanout_health(run).await,
    }
}

// --- main ------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; ignore it.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    if args.list {
        for attack in Attack::value_variants() {
            let targets: Vec<&str> = [Target::Ssegate, Target::Nchan]
                .into_iter()
                .filter(|t| attack.applies_to(*t))
                .map(Target::name)
                .collect();
            println!("{} {}", attack.name(), targets.join(","));
        }
        return Ok(());
    }
    let Some(attack) = args.attack else { anyhow::bail!("give --attack NAME (see --list)") };
    anyhow::ensure!(
        attack.applies_to(args.target),
        "{} does not apply to {} (see --list)",
        attack.name(),
        args.target.name()
    );
    let main_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The victim has a thread of its own, so attackers in this process do not delay its clock.
    let victim_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("victim").enable_all().build()?;
    let result = main_rt.block_on(measure(args, attack, victim_rt.handle().clone()));
    victim_rt.shutdown_background();
    main_rt.shutdown_background();
    result
}

async fn measure(args: Args, attack: Attack, victim_rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    micros();
    let mut child = None;
    let (base, pids) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), args.pid.clone()),
        None => {
            anyhow::ensure!(args.target == Target::Ssegate, "--target {} needs --url", args.target.name());
            let mut c = tokio::process::Command::new(&args.bin)
                .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false"])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let out = c.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(out), &mut line).await?;
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
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
    let quick = args.quick;
    let duration = Duration::from_secs_f64(args.duration_s.unwrap_or(if quick { 5.0 } else { 10.0 }));
    let run = Arc::new(Run {
        target: args.target,
        base: base.clone(),
        addr,
        sizes: Sizes::new(quick, args.fan_clients),
        duration,
        limit: Duration::from_secs(args.limit_s),
        http: http_from(IpAddr::V4(VICTIM_SRC))?,
        phase: AtomicU8::new(Phase::Baseline as u8),
        rss: Rss { pids: pids.clone(), peak: AtomicU64::new(0) },
        began: Mutex::new(None),
        ended: Mutex::new(None),
        rss_start: Mutex::new(None),
        rss_end: Mutex::new(None),
        victim_rt: victim_rt.clone(),
    });
    let rss_before = run.rss.sample();
    let sampler = {
        let run = run.clone();
        victim_rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                run.rss.sample();
            }
        })
    };
    eprintln!("{} against {} at {base}", attack.name(), args.target.name());
    let victim = Victim::start(&run, &victim_rt).await?;
    sleep(Duration::from_secs_f64(args.baseline_s)).await;
    run.phase.store(Phase::Setup as u8, Ordering::Relaxed);
    // Set-up, window and the attack's own clean-up, each bounded by --limit-s.
    let bound = run.limit * 3 + duration + Duration::from_secs(150);
    let outcome = timeout(bound, run_attack(attack, &run)).await;
    run.end();
    let detail = match outcome {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => detail(json!({"error": e.to_string()})),
        Err(_) => detail(json!({"error": format!("the attack did not finish within {} s", bound.as_secs())})),
    };
    let window_s = match (*lock(&run.began), *lock(&run.ended)) {
        (Some(a), Some(b)) => json!(((b - a).as_secs_f64() * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    eprintln!("{}: window closed, stopping the victim", attack.name());
    let victim = victim.stop().await;
    sleep(Duration::from_secs(2)).await;
    let rss_after = run.rss.sample();
    let rss_peak = run.rss.peak();
    sampler.abort();
    let processes_alive = pids.iter().all(|&p| alive(p));
    // A server still busy with the attack answers late; one that is gone, never.
    let asked = Instant::now();
    let health = async {
        let fresh = reqwest::Client::builder().no_proxy().build()?;
        let res = timeout(Duration::from_secs(30), fresh.get(format!("{base}/healthz")).send()).await??;
        Ok::<_, anyhow::Error>(res.status().as_u16())
    }
    .await;
    let healthz_after = match health {
        Ok(status) => json!({"status": status, "ms": (asked.elapsed().as_secs_f64() * 1e5).round() / 100.0}),
        Err(e) => json!({"failed": e.to_string()}),
    };
    // The process survived (without its PIDs: it answers its health check).
    let survived = if pids.is_empty() { healthz_after["status"] == 200 } else { processes_alive };

    let mut line = Map::new();
    line.insert("attack".into(), json!(attack.name()));
    line.insert("target".into(), json!(args.target.name()));
    line.insert("quick".into(), json!(quick));
    line.insert("window_s".into(), window_s);
    line.extend(victim);
    line.insert(
        "rss_mb".into(),
        json!({
            "before": mb(rss_before),
            "start": mb(*lock(&run.rss_start)),
            "peak": mb(rss_peak),
            "end": mb(*lock(&run.rss_end)),
            "after": mb(rss_after),
        }),
    );
    line.insert("survived".into(), json!(survived));
    line.insert("healthz_after".into(), healthz_after);
    line.insert("detail".into(), Value::Object(detail));
    println!("{}", Value::Object(line));
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}
