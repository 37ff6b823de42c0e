//! Events as the hub carries them: assigned an id once by the broker, then encoded at most once per
//! wire format and shared by every connection that sends them.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::core::broker::PublishError;
use crate::core::topic::validate_topic;

/// The position of an event in the broker's order, written `<ms>-<seq>` like a Redis Stream id, so
/// that ids of the memory broker and of a Redis broker look and compare the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the unix epoch when the id was assigned (never goes back).
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

impl EventId {
    /// The id that follows `self` at time `now_ms`: strictly greater, even if the clock went back.
    pub fn next(self, now_ms: u64) -> EventId {
        if now_ms > self.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId { ms: self.ms, seq: self.seq + 1 }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An id that is not of the form `<ms>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.trim().split_once('-').ok_or(BadEventId)?;
        Ok(EventId { ms: ms.parse().map_err(|_| BadEventId)?, seq: seq.parse().map_err(|_| BadEventId)? })
    }
}

/// Who receives an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The subscribers of the event's topic.
    Topic,
    /// Exactly these clients, whatever they subscribe to.
    Clients(Arc<[Uuid]>),
    /// Every connected client.
    All,
}

/// A validated event that has no id yet: what a publisher hands to the broker.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The topic, if any (targeted and broadcast events may have none).
    pub topic: Option<Arc<str>>,
    /// The event type name (`message` by default).
    pub event: Arc<str>,
    /// The payload as JSON text, kept as the publisher wrote it; one copy shared by the events
    /// of every topic a publish names.
    pub data: Arc<RawValue>,
    /// Who receives it.
    pub audience: Audience,
    /// Publish time in unix milliseconds.
    pub ts: u64,
    /// A change to the topic's retained state, applied by the hub when the event is published
    /// (which then sets `event`, `data` and `version`).
    pub state: Option<StateChange>,
    /// For a state change: the state's version after it.
    pub version: Option<u64>,
    /// Set (by the hub) on the event of a [`StateChange::Delete`]: a `snapshot` with `state:
    /// null` that ends the topic's state, rather than a state that is `null`.
    pub deleted: bool,
}

/// A change to a topic's retained state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// The state becomes this value (`retain: true`); sent as a `snapshot` event.
    Set(serde_json::Value),
    /// A JSON Merge Patch (RFC 7386); sent as a `patch` event with `patch`.
    Merge(serde_json::Value),
    /// JSON Patch operations (RFC 6902), applied all or none; sent as a `patch` event with
    /// `json_patch`.
    JsonPatch(json_patch::Patch),
    /// The topic's state is dropped (`DELETE /topics/{topic}`); sent as a `snapshot` with `state:
    /// null`. Its version is kept, so a later state continues from the next one.
    Delete,
}

/// A JSON `null`, the payload of an event published without data.
pub fn null_data() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

impl Draft {
    /// An event on `topic` (any audience), with the defaults for the rest.
    pub fn new(topic: Option<Arc<str>>, event: &str, data: Box<RawValue>, audience: Audience) -> Self {
        Draft::sharing(topic, event, Arc::from(data), audience)
    }

    /// As [`Draft::new`], with a payload that other drafts may share (one publish to many topics).
    pub fn sharing(topic: Option<Arc<str>>, event: &str, data: Arc<RawValue>, audience: Audience) -> Self {
        Draft {
            topic,
            event: Arc::from(event),
            data,
            audience,
            ts: now_ms(),
            state: None,
            version: None,
            deleted: false,
        }
    }

    /// A change to the retained state of `topic`.
    pub fn state_change(topic: &str, change: StateChange) -> Self {
        Draft { state: Some(change), ..Draft::new(Some(Arc::from(topic)), "patch", null_data(), Audience::Topic) }
    }

    /// An event for the subscribers of `topic`.
    pub fn topic(topic: &str, event: &str, data: Box<RawValue>) -> Self {
        Draft::new(Some(Arc::from(topic)), event, data, Audience::Topic)
    }

    /// An event for exactly these clients, whatever they subscribe to.
    pub fn clients(ids: &[Uuid], event: &str, data: Box<RawValue>) -> Self {
        Draft::new(None, event, data, Audience::Clients(Arc::from(ids)))
    }

    /// An event for every connected client.
    pub fn broadcast(event: &str, data: Box<RawValue>) -> Self {
        Draft::new(None, event, data, Audience::All)
    }
}

/// An event with its id. Its wire encodings are made on first use and then shared.
#[derive(Debug)]
pub struct Event {
    /// Broker-assigned position.
    pub id: EventId,
    /// The id as text, as it goes on the wire.
    pub id_text: Box<str>,
    /// Topic, type, payload, audience and time, as published.
    pub draft: Draft,
    sse: OnceLock<Bytes>,
    sse_envelope: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
    ws_frame: OnceLock<Bytes>,
}

impl Event {
    /// Gives a draft its id.
    pub fn new(id: EventId, draft: Draft) -> Self {
        Event {
            id,
            id_text: id.to_string().into_boxed_str(),
            draft,
            sse: OnceLock::new(),
            sse_envelope: OnceLock::new(),
            json: OnceLock::new(),
            ws_frame: OnceLock::new(),
        }
    }

    /// The topic, if any.
    pub fn topic(&self) -> Option<&str> {
        self.draft.topic.as_deref()
    }

    /// The envelope `{id, topic, event, data, ts}` as compact JSON text (data kept as published).
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| Bytes::from(self.encode_json(b"{\"id\":")))
    }

    /// The WebSocket message `{"type":"event", id, topic, event, data, ts}`.
    pub fn ws_text(&self) -> Bytes {
        ws_text_of(self.ws_frame())
    }

    /// The same message as a whole WebSocket text frame, header included, ready for the socket.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame.get_or_init(|| ws_text_frame(&self.encode_json(b"{\"type\":\"event\",\"id\":")))
    }

    fn encode_json(&self, opening: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(80 + self.draft.data.get().len());
        out.extend_from_slice(opening);
        push_json_str(&mut out, &self.id_text);
        out.extend_from_slice(b",\"topic\":");
        match &self.draft.topic {
            Some(t) => push_json_str(&mut out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event\":");
        push_json_str(&mut out, &self.draft.event);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.draft.data.get().as_bytes());
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(self.draft.ts.to_string().as_bytes());
        out.push(b'}');
        out
    }

    /// The Server-Sent Events frame: `id:`, `event:` and the data, or with `envelope` the whole
    /// event JSON as data.
    pub fn sse_frame(&self, envelope: bool) -> &Bytes {
        if envelope {
            self.sse_envelope.get_or_init(|| {
                let json = self.json();
                sse_frame(Some(&self.id_text), &self.draft.event, json)
            })
        } else {
            self.sse.get_or_init(|| sse_frame(Some(&self.id_text), &self.draft.event, self.draft.data.get().as_bytes()))
        }
    }
}

/// A server-to-client WebSocket text frame (final, unmasked) carrying `text`.
pub(crate) fn ws_text_frame(text: &[u8]) -> Bytes {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let header = tungstenite::protocol::frame::FrameHeader { opcode: OpCode::Data(Data::Text), ..Default::default() };
    let len = text.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + text.len());
    // Writing to a Vec cannot fail.
    let _ = header.format(len, &mut out);
    out.extend_from_slice(text);
    Bytes::from(out)
}

/// The text a frame made by [`ws_text_frame`] carries, sharing its bytes (always UTF-8: frames
/// are built from JSON text only).
pub(crate) fn ws_text_of(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(header.min(frame.len())..)
}

/// Encodes one SSE frame. `data` is split into one `data:` line per line of text.
pub(crate) fn sse_frame(id: Option<&str>, event: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, next) = match end {
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping of a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The current time in unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(data: &str) -> Draft {
        Draft {
            topic: Some(Arc::from("a/b")),
            event: Arc::from("tick"),
            data: Arc::from(RawValue::from_string(data.to_owned()).unwrap()),
            audience: Audience::Topic,
            ts: 7,
            state: None,
            version: None,
            deleted: false,
        }
    }

    #[test]
    fn ids_order_and_round_trip() {
        let a = EventId { ms: 5, seq: 9 };
        assert!(a.next(5) > a && a.next(4) > a && a.next(6) > a);
        assert_eq!("5-9".parse::<EventId>(), Ok(a));
        assert_eq!(a.to_string(), "5-9");
        assert!("5".parse::<EventId>().is_err() && "x-1".parse::<EventId>().is_err());
    }

    #[test]
    fn frames_split_lines_and_carry_the_id() {
        let ev = Event::new(EventId { ms: 1, seq: 2 }, draft("{\n\"a\": 1\r\n}"));
        assert_eq!(&ev.sse_frame(false)[..], b"id: 1-2\nevent: tick\ndata: {\ndata: \"a\": 1\ndata: }\n\n");
        let env: serde_json::Value = serde_json::from_slice(ev.json()).unwrap();
        assert_eq!(env["id"], "1-2");
        assert_eq!(env["topic"], "a/b");
        assert_eq!(env["data"]["a"], 1);
        assert_eq!(env["ts"], 7);
    }
}

/// Event names the gateway itself sends; publishers may not use them.
pub const RESERVED_EVENTS: [&str; 4] = ["welcome", "reset", "snapshot", "patch"];

/// Drafts checked once, the way the contract's bad-input table asks, and ready for
/// [`Hub::publish_checked`](crate::Hub::publish_checked). Whatever publishes (the HTTP API, a
/// WebSocket `publish` frame, a library caller through [`Hub::publish`](crate::Hub::publish))
/// goes through [`Checked::new`] or [`Checked::items`]; what depends on the current state (a
/// patch that does not apply, a state over its limits) is found when the hub applies it.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub(crate) drafts: Vec<Draft>,
    /// The request item each draft came from (an item with `topics` makes one draft per topic).
    pub(crate) item_of: Vec<usize>,
}

impl Checked {
    /// Checks drafts that are each an item of their own.
    pub fn new(drafts: Vec<Draft>) -> Result<Checked, PublishError> {
        let item_of = (0..drafts.len()).collect();
        Checked::items(drafts, item_of)
    }

    /// Checks drafts made from the items of a request: `item_of[i]` is the item draft `i` came
    /// from, and an error names that item.
    pub fn items(drafts: Vec<Draft>, item_of: Vec<usize>) -> Result<Checked, PublishError> {
        for (i, d) in drafts.iter().enumerate() {
            let index = item_of.get(i).copied().unwrap_or(i);
            check(d).map_err(|message| PublishError::Invalid { index, message })?;
        }
        Ok(Checked { drafts, item_of })
    }

    /// The drafts, in order.
    pub fn drafts(&self) -> &[Draft] {
        &self.drafts
    }
}

/// Checks a draft the way the contract's bad-input table asks.
fn check(d: &Draft) -> Result<(), String> {
    if let Some(t) = &d.topic {
        validate_topic(t).map_err(|e| e.to_string())?;
    }
    if d.topic.is_none() && d.audience == Audience::Topic {
        return Err("give a topic, topics, clients or broadcast".into());
    }
    if d.event.is_empty() || d.event.len() > 128 || d.event.chars().any(char::is_control) {
        return Err("event must be 1-128 bytes with no control characters".into());
    }
    if d.state.is_some() {
        if d.topic.is_none() || d.audience != Audience::Topic {
            return Err("retain, patch and json_patch need a topic and go to its subscribers".into());
        }
    } else if RESERVED_EVENTS.contains(&&*d.event) {
        return Err(format!("event name {:?} is reserved by the gateway", &*d.event));
    }
    if let Audience::Clients(ids) = &d.audience {
        if ids.is_empty() {
            return Err("clients must list at least one client_id".into());
        }
    }
    Ok(())
}
