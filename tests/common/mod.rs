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
        let shown: String = body.to_string().chars().take(200).collect();
        assert_eq!(status, StatusCode::OK, "publish {shown}… answered {res}");
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
        // The built-in demo publisher would add events of its own.
        let mut config = ssegate::Config { demo: false, ..Default::default() };
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
        Self::start_at("127.0.0.1:0", args).await
    }

    /// Starts the binary listening on `listen`.
    pub async fn start_at(listen: &str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
            .arg("serve")
            .args(["--listen", listen, "--demo", "false"])
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

    /// Sends SIGTERM (to this child, by its PID) and waits for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        within("the gateway to exit", self.child.wait()).await.expect("exit status")
    }

    /// Sends SIGKILL (to this child, by its PID) and waits for it to die: a crash, with no drain.
    pub async fn kill(mut self) {
        within("the gateway to die", self.child.kill()).await.expect("SIGKILL the gateway");
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

/// An event as any transport delivers it, for comparing transports.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub id: String,
    pub topic: Option<String>,
    pub event: String,
    pub data: Value,
}

/// The transports a client can receive events over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Ws,
    LongPoll,
}

pub const KINDS: [Kind; 3] = [Kind::Sse, Kind::Ws, Kind::LongPoll];

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[allow(clippy::large_enum_variant)] // a handful per test
enum Inner {
    Sse(Sse),
    Ws(WsStream),
    Poll { cursor: String, query: String, buffered: std::collections::VecDeque<Got> },
}

/// One subscriber over any transport, reading events in the same shape.
pub struct AnyClient {
    api: Api,
    inner: Inner,
    pub client_id: String,
    /// The position to resume from: the last event id (SSE, WebSocket) or cursor (long-poll).
    pub position: String,
}

fn topic_query(topics: &[&str]) -> String {
    topics.iter().map(|t| format!("topic={}", urlencode(t))).collect::<Vec<_>>().join("&")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn got_from_envelope(v: &Value) -> Got {
    Got {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        topic: v["topic"].as_str().map(str::to_owned),
        event: v["event"].as_str().unwrap().to_owned(),
        data: v["data"].clone(),
    }
}

/// Opens a WebSocket to `path` (with query) on the gateway.
pub async fn ws_connect(api: &Api, path_and_query: &str) -> WsStream {
    let url = format!("{}{}", api.base.replacen("http://", "ws://", 1), path_and_query);
    let (ws, _) = within("the websocket to open", tokio_tungstenite::connect_async(url)).await.expect("websocket");
    ws
}

/// The next JSON text frame of a WebSocket (answering pings on the way).
pub async fn ws_next(ws: &mut WsStream) -> Option<Value> {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match within("a websocket frame", ws.next()).await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("JSON frame")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

impl AnyClient {
    /// Subscribes to `topics` over `kind`, resuming after `position` if given.
    pub async fn connect(api: &Api, kind: Kind, topics: &[&str], position: Option<&str>) -> AnyClient {
        Self::connect_with(api, kind, topics, position, "").await
    }

    /// As [`Self::connect`], with more query parameters (`&name=value…`) on every request.
    pub async fn connect_with(
        api: &Api,
        kind: Kind,
        topics: &[&str],
        position: Option<&str>,
        extra: &str,
    ) -> AnyClient {
        let q = format!("{}{extra}", topic_query(topics));
        match kind {
            Kind::Sse => {
                let sse = Sse::connect_with(api, &format!("{q}&envelope=1"), position).await;
                AnyClient {
                    api: api.clone(),
                    client_id: sse.client_id.clone(),
                    position: sse.last_id.clone(),
                    inner: Inner::Sse(sse),
                }
            }
            Kind::Ws => {
                let mut path = format!("/ws?{q}");
                if let Some(p) = position {
                    path.push_str(&format!("&lastEventId={}", urlencode(p)));
                }
                let mut ws = ws_connect(api, &path).await;
                let welcome = ws_next(&mut ws).await.expect("welcome");
                assert_eq!(welcome["type"], "welcome");
                AnyClient {
                    api: api.clone(),
                    client_id: welcome["client_id"].as_str().unwrap().to_owned(),
                    position: position.unwrap_or_default().to_owned(),
                    inner: Inner::Ws(ws),
                }
            }
            Kind::LongPoll => {
                let mut path = format!("/poll?{q}");
                if let Some(p) = position {
                    path.push_str(&format!("&cursor={}", urlencode(p)));
                }
                let (status, v) = api.get_json(&path).await;
                assert_eq!(status, StatusCode::OK, "{v}");
                let buffered = v["events"].as_array().unwrap().iter().map(got_from_envelope).collect();
                let cursor = v["cursor"].as_str().unwrap().to_owned();
                AnyClient {
                    api: api.clone(),
                    client_id: v["client_id"].as_str().unwrap().to_owned(),
                    position: cursor.clone(),
                    inner: Inner::Poll { cursor, query: q, buffered },
                }
            }
        }
    }

    /// The next event (including `reset`), skipping the transports' own control messages.
    pub async fn next(&mut self) -> Got {
        loop {
            match &mut self.inner {
                Inner::Sse(sse) => {
                    let ev = sse.next().await.expect("the stream stays open");
                    self.position = sse.last_id.clone();
                    let data: Value = serde_json::from_str(&ev.data).unwrap();
                    match ev.event.as_str() {
                        "reset" => return Got { id: ev.id, topic: None, event: ev.event, data },
                        // Sent by the gateway itself, so never wrapped in an envelope.
                        "snapshot" => {
                            return Got {
                                id: ev.id,
                                topic: data["topic"].as_str().map(str::to_owned),
                                event: ev.event,
                                data,
                            }
                        }
                        _ => return got_from_envelope(&data),
                    }
                }
                Inner::Ws(ws) => {
                    let frame = ws_next(ws).await.expect("the websocket stays open");
                    match frame["type"].as_str().unwrap() {
                        "event" => {
                            let got = got_from_envelope(&frame);
                            self.position = got.id.clone();
                            return got;
                        }
                        "reset" => {
                            return Got {
                                id: String::new(),
                                topic: None,
                                event: "reset".into(),
                                data: json_reason(&frame),
                            }
                        }
                        "snapshot" => {
                            let data = serde_json::json!({"topic": frame["topic"], "version": frame["version"], "state": frame["state"]});
                            let topic = frame["topic"].as_str().map(str::to_owned);
                            return Got { id: String::new(), topic, event: "snapshot".into(), data };
                        }
                        _ => continue,
                    }
                }
                Inner::Poll { cursor, query, buffered } => {
                    if let Some(got) = buffered.pop_front() {
                        // An event id is a valid cursor; the answer's cursor once all are read.
                        self.position = if buffered.is_empty() { cursor.clone() } else { got.id.clone() };
                        return got;
                    }
                    let path =
                        format!("/poll?{query}&client_id={}&cursor={}&timeout=10", self.client_id, urlencode(cursor));
                    let (status, v) = within("a long poll", self.api.get_json(&path)).await;
                    assert_eq!(status, StatusCode::OK, "{v}");
                    *cursor = v["cursor"].as_str().unwrap().to_owned();
                    buffered.extend(v["events"].as_array().unwrap().iter().map(got_from_envelope));
                    if buffered.is_empty() {
                        self.position = cursor.clone();
                    }
                }
            }
        }
    }
}

fn json_reason(frame: &Value) -> Value {
    serde_json::json!({ "reason": frame["reason"] })
}

/// A topic's state as a version-aware client keeps it: snapshots replace it, patches apply in
/// version order, stale ones are ignored, and a gap is an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateView {
    pub version: u64,
    pub state: Value,
    pub snapshots: usize,
    pub patches: usize,
}

impl StateView {
    /// Applies a `snapshot` or `patch` event's data; other events are ignored.
    pub fn apply(&mut self, event: &str, data: &Value) {
        let version = data["version"].as_u64().expect("a version");
        match event {
            "snapshot" => {
                self.snapshots += 1;
                if version > self.version {
                    self.version = version;
                    self.state = data["state"].clone();
                }
            }
            "patch" => {
                if version <= self.version {
                    return;
                }
                assert_eq!(version, self.version + 1, "a gap in the versions: have {}, got {data}", self.version);
                if let Some(p) = data.get("patch") {
                    json_patch::merge(&mut self.state, p);
                } else {
                    let ops: json_patch::Patch = serde_json::from_value(data["json_patch"].clone()).unwrap();
                    json_patch::patch(&mut self.state, &ops).expect("a patch the gateway applied applies here too");
                }
                self.version = version;
                self.patches += 1;
            }
            _ => {}
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that cannot take port 0).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A `redis-server` of the test's own on 127.0.0.1, keeping nothing on disk (so a restart loses
/// its data); killed (by its PID) when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub async fn start() -> Redis {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: the cluster tests need a real redis-server (apt-get install redis-server)"
        );
        // Another process may take the port between our probe and the server's bind: try another.
        for _ in 0..5 {
            let mut redis = Redis { port: free_port(), child: None };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it to die.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        within("redis-server to die", child.kill()).await.expect("SIGKILL redis-server");
    }

    /// Starts a fresh, empty server on the same port after [`Self::stop`].
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        let port = self.port;
        assert!(self.spawn().await, "redis-server did not start again on port {port}");
    }

    /// Starts the server on `self.port`; false if it exits before answering (port taken).
    async fn spawn(&mut self) -> bool {
        let port = self.port;
        let dir = std::env::temp_dir();
        let child = tokio::process::Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir", dir.to_str().expect("a UTF-8 temp dir")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        let child = self.child.insert(child);
        let up = within("redis-server to answer PING", async {
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                if redis_ping(port).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if !up {
            self.child = None;
        }
        up
    }
}

/// Whether a Redis server answers `PING` on 127.0.0.1:`port`.
async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if conn.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), conn.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}
