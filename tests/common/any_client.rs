//! One subscriber over any transport (SSE, WebSocket, long-poll) that reads every event in the
//! same shape, so a test can run once per transport and compare; with the WebSocket helpers it
//! is built on.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use super::api::Api;
use super::sse::Sse;
use super::wait::within;

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

/// Every transport, for tests that run once per transport.
pub const KINDS: [Kind; 3] = [Kind::Sse, Kind::Ws, Kind::LongPoll];

/// A WebSocket client connection as `tokio-tungstenite` opens it.
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

/// Percent-encodes everything in `s` but RFC 3986's unreserved characters.
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
                // Later polls continue the session with its secret.
                let query = format!("{q}&session={}", v["session"].as_str().unwrap());
                AnyClient {
                    api: api.clone(),
                    client_id: v["client_id"].as_str().unwrap().to_owned(),
                    position: cursor.clone(),
                    inner: Inner::Poll { cursor, query, buffered },
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
