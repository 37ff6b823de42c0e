//! Shared test helpers: a real gateway on `127.0.0.1:0` (in process, or the release binary as a
//! child process), an HTTP client, and an SSE client built on `eventsource-stream`.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for anything a test expects to happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for `fut` at most [`PATIENCE`], failing the test with `what` otherwise.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns true, at most [`PATIENCE`].
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

/// What both kinds of test server offer.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn publish(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw("/publish", body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let res = self.http.delete(self.url(path)).send().await.expect("DELETE");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Publishes and insists on `200`; returns the ids.
    pub async fn publish_ok(&self, body: Value) -> Vec<String> {
        let (status, res) = self.publish(&body).await;
        assert_eq!(status, StatusCode::OK, "publish {body} answered {res}");
        res["ids"].as_array().expect("ids").iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    pub async fn client_ids(&self) -> Vec<String> {
        let (_, v) = self.get_json("/clients").await;
        v["clients"]
            .as_array()
            .map(|a| a.iter().map(|c| c["client_id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

/// A gateway running in this test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut ssegate::Config)) -> Self {
        let mut config = ssegate::Config::default();
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ssegate::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("the gateway runs");
        });
        TestServer {
            addr,
            api: Api { base: format!("http://{addr}"), http: http() },
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the gateway down and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            within("the gateway to shut down", t).await.unwrap();
        }
    }
}

/// The release or debug binary, started as a child process; killed (by its PID) when dropped.
pub struct ChildServer {
    pub api: Api,
    pub child: tokio::process::Child,
}

impl std::ops::Deref for ChildServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ChildServer {
    pub async fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the ssegate binary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = within("the binary to print its address", async {
            loop {
                let line = lines.next_line().await.unwrap().expect("the binary exited before listening");
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.trim().to_owned();
                }
            }
        })
        .await;
        ChildServer { api: Api { base, http: http() }, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An SSE subscription read with `eventsource-stream`.
pub struct Sse {
    events: Events,
    pub client_id: String,
    pub welcome: Value,
    /// The last `id:` seen, as a browser's EventSource keeps it.
    pub last_id: String,
}

impl Sse {
    /// Opens `/stream?{query}` and reads the welcome.
    pub async fn connect(api: &Api, query: &str) -> Sse {
        Self::connect_with(api, query, None).await
    }

    /// Opens `/stream?{query}` with a `Last-Event-ID` header.
    pub async fn connect_with(api: &Api, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = api.http.get(api.url(&format!("/stream?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = within("the stream to open", req.send()).await.expect("GET /stream");
        assert_eq!(res.status(), StatusCode::OK, "GET /stream?{query}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let mut sse = Sse {
            events: Box::pin(res.bytes_stream().eventsource()),
            client_id: String::new(),
            welcome: Value::Null,
            last_id: last_event_id.unwrap_or_default().to_owned(),
        };
        let welcome = sse.next().await.expect("a welcome event");
        assert_eq!(welcome.event, "welcome");
        assert!(welcome.retry.is_some(), "the welcome comes with retry:");
        sse.welcome = serde_json::from_str(&welcome.data).unwrap();
        sse.client_id = sse.welcome["client_id"].as_str().unwrap().to_owned();
        sse
    }

    /// The next event, or `None` when the stream ends. Fails the test after [`PATIENCE`].
    pub async fn next(&mut self) -> Option<Event> {
        let ev = within("an SSE event", self.events.next()).await?.ok()?;
        if !ev.id.is_empty() {
            self.last_id = ev.id.clone();
        }
        Some(ev)
    }

    /// The next event, which must be named `name`.
    pub async fn expect(&mut self, name: &str) -> Event {
        let ev = self.next().await.unwrap_or_else(|| panic!("stream ended while waiting for {name}"));
        assert_eq!(ev.event, name, "expected {name}, got {ev:?}");
        ev
    }

    /// Events up to and including the first named `until`.
    pub async fn collect_until(&mut self, until: &str) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let ev = self.next().await.unwrap_or_else(|| panic!("stream ended before {until}"));
            let done = ev.event == until;
            out.push(ev);
            if done {
                return out;
            }
        }
    }

    /// Whether an event arrives within `wait` (for asserting that nothing does).
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.events.next()).await.ok().flatten().and_then(Result::ok)
    }
}

/// The `data` of each event, parsed as JSON.
pub fn datas(events: &[Event]) -> Vec<Value> {
    events.iter().map(|e| serde_json::from_str(&e.data).expect("JSON data")).collect()
}
