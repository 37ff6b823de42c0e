//! An SSE subscriber read with `eventsource-stream`, as a browser's `EventSource` would see the
//! stream: the welcome first, then named events, keeping the last `id:`.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use super::api::Api;
use super::wait::within;

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

    /// The next event, or `None` when the stream ends. Fails the test after [`PATIENCE`](super::PATIENCE).
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
