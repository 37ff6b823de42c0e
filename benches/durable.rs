//! What `--data-dir` costs a publisher: the round trip of `POST /publish` and the events/s it
//! takes, with the memory broker alone or with a data directory, and how long a restart on a
//! full history takes. Starts the release binary itself on a free port (loopback only) and prints
//! one JSON line. `benches/durable.sh` runs it side by side for both and writes the table.
//!
//! ```text
//! cargo bench --bench durable -- rtt --rate 1000 --seconds 10 [--data-dir DIR]
//! cargo bench --bench durable -- batch --batch 100 --concurrency 4 --seconds 10 [--data-dir DIR]
//! cargo bench --bench durable -- restart --events 10000 --data-dir DIR
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Single publishes at a fixed rate: round trip p50/p99.
    Rtt,
    /// Batches back to back from several publishers: events/s at saturation.
    Batch,
    /// Fill the history, kill -9, restart on the same directory: time until publishes are taken.
    Restart,
}

#[derive(Debug, Parser)]
struct Args {
    mode: Mode,
    /// Gateway binary.
    #[arg(long, default_value = "target/release/ssegate")]
    bin: String,
    /// Keep history and state in this directory (`--data-dir`); without it, the memory broker.
    #[arg(long)]
    data_dir: Option<String>,
    /// Publishes per second (rtt).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to publish (rtt, batch).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per request (batch).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Publishers sending back to back (batch).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Events in history before the restart (restart; the default history size).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Bytes of each event's payload.
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

struct Server {
    child: tokio::process::Child,
    base: String,
}

async fn start(args: &Args) -> anyhow::Result<(Server, Duration)> {
    let began = Instant::now();
    let mut cmd = tokio::process::Command::new(&args.bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--demo", "false"]);
    if let Some(dir) = &args.data_dir {
        cmd.args(["--data-dir", dir]);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn()?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).await?;
    let base =
        line.trim().strip_prefix("listening on ").ok_or_else(|| anyhow::anyhow!("unexpected: {line}"))?.to_owned();
    // Listening comes before the history is read back: ready is when a request is answered.
    let http = client();
    loop {
        if let Ok(res) = http.get(format!("{base}/readyz")).send().await {
            if res.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((Server { child, base }, began.elapsed()))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "p50_ms": (percentile(&ms, 0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&ms, 0.99) * 1000.0).round() / 1000.0,
        "max_ms": (ms.last().copied().unwrap_or(0.0) * 1000.0).round() / 1000.0,
    })
}

async fn publish(http: &reqwest::Client, base: &str, body: &Value) -> anyhow::Result<()> {
    let res = http.post(format!("{base}/publish")).json(body).send().await?;
    anyhow::ensure!(res.status().is_success(), "publish answered {}", res.status());
    res.bytes().await?;
    Ok(())
}

fn event(payload: &str) -> Value {
    json!({"topic": "bench/0", "event": "n", "data": payload})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; ignore it.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    let payload = "x".repeat(args.payload);
    let broker = if args.data_dir.is_some() { "data-dir" } else { "memory" };
    let http = client();
    let result = match args.mode {
        Mode::Rtt => {
            let (server, _) = start(&args).await?;
            let latencies = Arc::new(Mutex::new(Vec::new()));
            let body = Arc::new(event(&payload));
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
            let began = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            while began.elapsed() < Duration::from_secs(args.seconds) {
                tick.tick().await;
                let (http, base, body, latencies) =
                    (http.clone(), server.base.clone(), body.clone(), latencies.clone());
                tasks.spawn(async move {
                    let sent = Instant::now();
                    publish(&http, &base, &body).await?;
                    latencies.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1000.0);
                    anyhow::Ok(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            let elapsed = began.elapsed().as_secs_f64();
            let ms = std::mem::take(&mut *latencies.lock().unwrap());
            let n = ms.len();
            drop(server);
            json!({"mode": "rtt", "broker": broker, "publishes": n, "per_s": (n as f64 / elapsed).round(), "rtt": summary(ms)})
        }
        Mode::Batch => {
            let (server, _) = start(&args).await?;
            let body = Arc::new(Value::from(vec![event(&payload); args.batch]));
            let began = Instant::now();
            let until = began + Duration::from_secs(args.seconds);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.concurrency {
                let (http, base, body) = (http.clone(), server.base.clone(), body.clone());
                tasks.spawn(async move {
                    let mut ms = Vec::new();
                    while Instant::now() < until {
                        let sent = Instant::now();
                        publish(&http, &base, &body).await?;
                        ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    anyhow::Ok(ms)
                });
            }
            let mut ms = Vec::new();
            while let Some(done) = tasks.join_next().await {
                ms.extend(done??);
            }
            let elapsed = began.elapsed().as_secs_f64();
            let events = ms.len() * args.batch;
            drop(server);
            json!({
                "mode": "batch", "broker": broker, "batch": args.batch, "concurrency": args.concurrency,
                "events_per_s": (events as f64 / elapsed).round(), "rtt": summary(ms),
            })
        }
        Mode::Restart => {
            anyhow::ensure!(args.data_dir.is_some(), "restart needs --data-dir");
            let (mut server, first) = start(&args).await?;
            let body = Value::from(vec![event(&payload); 100]);
            for _ in 0..args.events.div_ceil(100) {
                publish(&http, &server.base, &body).await?;
            }
            // A crash: no clean shutdown, nothing written at exit.
            server.child.kill().await?;
            let (server, restart) = start(&args).await?;
            let (_, history_len) = start_probe(&http, &server.base).await?;
            drop(server);
            json!({
                "mode": "restart", "broker": broker, "events": args.events, "payload_bytes": args.payload,
                "first_start_ms": first.as_millis(), "restart_ms": restart.as_millis(), "history_len": history_len,
            })
        }
    };
    println!("{result}");
    Ok(())
}

/// The history length the restarted gateway reports on `/metrics` (`ssegate_history_events`, if
/// present) and the status of `/readyz`.
async fn start_probe(http: &reqwest::Client, base: &str) -> anyhow::Result<(u16, f64)> {
    let ready = http.get(format!("{base}/readyz")).send().await?.status().as_u16();
    let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
    let len = text
        .lines()
        .filter(|l| l.starts_with("ssegate_history"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Ok((ready, len))
}
