//! Retained topic state: the current state and version of each topic that has one, changed by
//! `retain`, merge patches (RFC 7386) and JSON Patch (RFC 6902), all or none per request, and
//! dropped by a delete. Every state stays within `--max-state-bytes` of JSON text and
//! [`MAX_STATE_DEPTH`] levels of nesting (see [`Limits`]). New subscribers get it as a
//! `snapshot`, encoded once per version and shared.

mod limits;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

pub(crate) use limits::Limits;
pub use limits::MAX_STATE_DEPTH;
use limits::{Meter, Refusal};

use crate::core::broker::PublishError;
use crate::core::event::{now_ms, push_json_str, sse_frame, ws_text_frame, ws_text_of, Draft, StateChange};
use crate::core::topic::Pattern;
use crate::core::trie::PatternTrie;

/// A topic's state at one version, as `{"topic","version","state"}` JSON.
#[derive(Debug)]
pub struct Snapshot {
    /// The topic.
    pub topic: Arc<str>,
    /// The state's version: 1 for the first state, then one more per change.
    pub version: u64,
    /// `{"topic","version","state"}`.
    pub json: Bytes,
    sse: OnceLock<Bytes>,
    ws_frame: OnceLock<Bytes>,
}

impl Snapshot {
    fn new(topic: Arc<str>, version: u64, json: Bytes) -> Self {
        Snapshot { topic, version, json, sse: OnceLock::new(), ws_frame: OnceLock::new() }
    }

    /// `event: snapshot` with the JSON as data (no `id:`: it is state, not a position).
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| sse_frame(None, "snapshot", &self.json))
    }

    /// The WebSocket message `{"type":"snapshot","topic","version","state"}`.
    pub fn ws_text(&self) -> Bytes {
        ws_text_of(self.ws_frame())
    }

    /// The same message as a whole WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame.get_or_init(|| {
            let mut text = Vec::with_capacity(self.json.len() + 20);
            text.extend_from_slice(b"{\"type\":\"snapshot\",");
            text.extend_from_slice(self.json.get(1..).unwrap_or(b"}"));
            ws_text_frame(&text)
        })
    }

    /// The long-poll event `{id, topic, event: "snapshot", data, ts}` at position `cursor`.
    pub fn poll_event(&self, cursor: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 96);
        out.extend_from_slice(b"{\"id\":");
        push_json_str(&mut out, cursor);
        out.extend_from_slice(b",\"topic\":");
        push_json_str(&mut out, &self.topic);
        out.extend_from_slice(b",\"event\":\"snapshot\",\"data\":");
        out.extend_from_slice(&self.json);
        out.extend_from_slice(format!(",\"ts\":{}}}", now_ms()).as_bytes());
        Bytes::from(out)
    }
}

struct Entry {
    topic: Arc<str>,
    /// The version of the last change; kept when the state is deleted, so that the next state
    /// continues after it.
    version: u64,
    /// `None` once deleted (or before the first change applies).
    state: Option<Value>,
    /// The state's size as compact JSON text, once measured.
    size: Option<usize>,
    /// The encoded snapshot of this version, made when first asked for.
    snapshot: Option<Arc<Snapshot>>,
}

/// The `null` a deleted state is sent as.
static NULL: Value = Value::Null;

impl Entry {
    fn new(topic: Arc<str>, version: u64, state: Option<Value>) -> Self {
        Entry { topic, version, state, size: None, snapshot: None }
    }

    fn size(&mut self) -> usize {
        match (self.size, &self.state) {
            (Some(size), _) => size,
            (None, state) => {
                let size = limits::size_of(state.as_ref().unwrap_or(&NULL));
                self.size = Some(size);
                size
            }
        }
    }

    /// Makes one change, or refuses it and changes nothing. `Set` gives its value up to the state.
    fn change(&mut self, change: &mut StateChange, meter: &mut Meter) -> Result<(), Refusal> {
        match change {
            StateChange::Set(v) => {
                let size = meter.incoming(v, 0)?;
                self.state = Some(std::mem::take(v));
                self.size = Some(size);
            }
            StateChange::Merge(p) => {
                let size = self.size();
                let growth = limits::merge_growth(Some(self.state.as_ref().unwrap_or(&NULL)), Some(size), p, 0, meter)?;
                let size = usize::try_from(size as i64 + growth).unwrap_or(0);
                meter.fits(size)?;
                json_patch::merge(self.state.get_or_insert(Value::Null), p);
                self.size = Some(size);
            }
            StateChange::JsonPatch(ops) => {
                let mut size = self.size();
                let was_none = self.state.is_none();
                let result = limits::apply_ops(self.state.get_or_insert(Value::Null), &mut size, ops, meter);
                if result.is_err() && was_none {
                    self.state = None;
                }
                result?;
                self.size = Some(size);
            }
            StateChange::Delete => {
                if self.state.is_none() {
                    return Err(Refusal::Unknown);
                }
                self.state = None;
                self.size = None;
            }
        }
        Ok(())
    }

    fn saved(&self) -> crate::core::persist::SavedTopic {
        crate::core::persist::SavedTopic {
            topic: self.topic.to_string(),
            version: self.version,
            state: self.state.clone().unwrap_or(Value::Null),
            deleted: self.state.is_none(),
        }
    }

    fn encode(&mut self) -> Arc<Snapshot> {
        let (topic, version) = (&self.topic, self.version);
        let state = self.state.as_ref().unwrap_or(&NULL);
        self.snapshot
            .get_or_insert_with(|| {
                let payload = Payload { topic, version, state: Some(state), patch: None, json_patch: None };
                let json = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
                Arc::new(Snapshot::new(topic.clone(), version, json))
            })
            .clone()
    }
}

/// A topic's version, state and size before a batch changed it (none if it had no entry).
type Saved = (Arc<str>, Option<(u64, Option<Value>, Option<usize>)>);

/// A topic's state after a batch that a node prepared (see [`Store::prepare`]).
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The topic.
    pub topic: Arc<str>,
    /// Its version before the batch (0: no state).
    pub before: u64,
    /// Its version after the batch.
    pub after: u64,
    /// Its state after the batch (`null` if deleted).
    pub state: Value,
    /// The batch ends with the state deleted.
    pub deleted: bool,
}

impl Prepared {
    /// The topic's state after the batch, as stored.
    pub(crate) fn saved(&self) -> crate::core::persist::SavedTopic {
        crate::core::persist::SavedTopic {
            topic: self.topic.to_string(),
            version: self.after,
            state: self.state.clone(),
            deleted: self.deleted,
        }
    }
}

/// What following an ordered state change did (see [`Store::follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// The change was applied (or the event changes no state): send it.
    Applied,
    /// The state already includes it (it was loaded from a newer snapshot): do not send it.
    Stale,
    /// Changes before it are missing: the topic's state must be fetched again.
    Gap,
}

/// Every topic's retained state.
pub(crate) struct Store {
    topics: HashMap<Arc<str>, Entry>,
    limits: Limits,
}

impl Default for Store {
    /// A store with a 1 MiB state limit (the hub uses `--max-state-bytes`).
    fn default() -> Self {
        Store::new(1 << 20)
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    topic: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_patch: Option<&'a json_patch::Patch>,
}

fn raw(payload: &Payload<'_>) -> Arc<RawValue> {
    // Serialising JSON values cannot fail.
    Arc::from(serde_json::value::to_raw_value(payload).unwrap_or_else(|_| crate::core::event::null_data()))
}

impl Store {
    /// A store keeping each state within `max_bytes` of JSON text (`--max-state-bytes`) and
    /// [`MAX_STATE_DEPTH`] levels.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Store { topics: HashMap::new(), limits: Limits { max_bytes, max_depth: MAX_STATE_DEPTH } }
    }

    /// Applies the state changes among `drafts` in order, all or none, and turns each into the
    /// event subscribers receive: `snapshot {topic, version, state}` for a new state (`state:
    /// null` for a delete), `patch {topic, version, patch | json_patch}` for a change. On failure
    /// nothing changes and the error names the draft: [`PublishError::Conflict`] for a
    /// `json_patch` that does not apply, [`PublishError::TooLarge`] for a change that would take
    /// a state past its limits, [`PublishError::UnknownTopic`] for a delete of a topic with no
    /// state.
    pub(crate) fn apply(&mut self, drafts: &mut [Draft]) -> Result<(), PublishError> {
        let changes = drafts.iter().filter(|d| d.state.is_some()).count();
        // With several changes, a later failure undoes the earlier ones.
        let mut undo: Vec<Saved> = Vec::new();
        let mut meter = Meter::new(self.limits);
        for (index, d) in drafts.iter_mut().enumerate() {
            let Some(mut change) = d.state.take() else { continue };
            let Some(topic) = d.topic.clone() else {
                return Err(PublishError::Conflict { index, message: "a state change needs a topic".into() });
            };
            if changes > 1 && !undo.iter().any(|(t, _)| *t == topic) {
                let before = self.topics.get(&topic).map(|e| (e.version, e.state.clone(), e.size));
                undo.push((topic.clone(), before));
            }
            let entry = self.topics.entry(topic.clone()).or_insert_with(|| Entry::new(topic.clone(), 0, None));
            if let Err(refusal) = entry.change(&mut change, &mut meter) {
                if entry.version == 0 {
                    self.topics.remove(&topic);
                }
                self.undo(undo);
                return Err(match refusal {
                    Refusal::Failed(m) => PublishError::Conflict {
                        index,
                        message: format!("json_patch does not apply to the state of {topic:?}: {m}"),
                    },
                    Refusal::TooLarge(m) => {
                        PublishError::TooLarge { index, message: format!("the state of {topic:?} is refused: {m}") }
                    }
                    Refusal::Unknown => {
                        PublishError::UnknownTopic { index, message: format!("topic {topic:?} has no retained state") }
                    }
                });
            }
            entry.version += 1;
            entry.snapshot = None;
            let version = entry.version;
            let mut payload = Payload { topic: &topic, version, state: None, patch: None, json_patch: None };
            let event = match &change {
                StateChange::Set(_) => {
                    payload.state = entry.state.as_ref();
                    "snapshot"
                }
                StateChange::Delete => {
                    payload.state = Some(&NULL);
                    d.deleted = true;
                    "snapshot"
                }
                StateChange::Merge(p) => {
                    payload.patch = Some(p);
                    "patch"
                }
                StateChange::JsonPatch(ops) => {
                    payload.json_patch = Some(ops);
                    "patch"
                }
            };
            d.data = raw(&payload);
            d.event = Arc::from(event);
            d.version = Some(version);
        }
        Ok(())
    }

    fn undo(&mut self, undo: Vec<Saved>) {
        for (topic, before) in undo {
            match before {
                Some((version, state, size)) => {
                    let entry = Entry { size, ..Entry::new(topic.clone(), version, state) };
                    self.topics.insert(topic, entry);
                }
                None => {
                    self.topics.remove(&topic);
                }
            }
        }
    }

    /// What `drafts` would do, without changing anything: turns their state changes into the
    /// events subscribers receive (as [`Store::apply`] does) and returns, for each topic they
    /// change, its version before and its state after. A node publishing through a shared broker
    /// checks a batch this way, then has the broker order it only if no other node changed those
    /// topics meanwhile.
    pub(crate) fn prepare(&self, drafts: &mut [Draft]) -> Result<Vec<Prepared>, PublishError> {
        let mut scratch = Store { topics: HashMap::new(), limits: self.limits };
        let mut before: Vec<(Arc<str>, u64)> = Vec::new();
        for topic in drafts.iter().filter(|d| d.state.is_some()).filter_map(|d| d.topic.as_ref()) {
            if before.iter().any(|(t, _)| t == topic) {
                continue;
            }
            let version = match self.topics.get(topic) {
                Some(e) => {
                    let copy = Entry { size: e.size, ..Entry::new(e.topic.clone(), e.version, e.state.clone()) };
                    scratch.topics.insert(topic.clone(), copy);
                    e.version
                }
                None => 0,
            };
            before.push((topic.clone(), version));
        }
        scratch.apply(drafts)?;
        Ok(before
            .into_iter()
            .filter_map(|(topic, before)| {
                let e = scratch.topics.remove(&topic)?;
                let deleted = e.state.is_none();
                Some(Prepared { topic, before, after: e.version, state: e.state.unwrap_or(Value::Null), deleted })
            })
            .collect())
    }

    /// Follows a state change in the order a shared broker gave it (the event as [`Store::apply`]
    /// made it on the publishing node, carrying its version). Every node following the same
    /// stream ends with the same state.
    pub(crate) fn follow(&mut self, ev: &Draft) -> Follow {
        let (Some(topic), Some(version)) = (&ev.topic, ev.version) else { return Follow::Applied };
        let current = self.topics.get(&**topic).map_or(0, |e| e.version);
        if version <= current {
            return Follow::Stale;
        }
        if ev.deleted {
            // Like a whole state, a delete fills any gap.
            self.topics.insert(topic.clone(), Entry::new(topic.clone(), version, None));
            return Follow::Applied;
        }
        let Ok(payload) = serde_json::from_str::<Value>(ev.data.get()) else { return Follow::Gap };
        if let Some(state) = payload.get("state").filter(|_| &*ev.event == "snapshot") {
            // A whole state fills any gap.
            self.topics.insert(topic.clone(), Entry::new(topic.clone(), version, Some(state.clone())));
            return Follow::Applied;
        }
        let Some(e) = self.topics.get_mut(topic).filter(|_| version == current + 1) else { return Follow::Gap };
        let mut state = e.state.clone().unwrap_or(Value::Null);
        if let Some(patch) = payload.get("patch") {
            json_patch::merge(&mut state, patch);
        } else if let Some(ops) = payload.get("json_patch") {
            let Ok(ops) = serde_json::from_value::<json_patch::Patch>(ops.clone()) else { return Follow::Gap };
            if json_patch::patch(&mut state, &ops).is_err() {
                return Follow::Gap;
            }
        } else {
            return Follow::Gap;
        }
        e.state = Some(state);
        e.version = version;
        e.size = None;
        e.snapshot = None;
        Follow::Applied
    }

    /// Takes a topic's stored state if it is newer than the one held; says whether it did.
    pub(crate) fn restore(&mut self, saved: crate::core::persist::SavedTopic) -> bool {
        if self.topics.get(saved.topic.as_str()).is_some_and(|e| e.version >= saved.version) {
            return false;
        }
        self.load(vec![saved]);
        true
    }

    /// The snapshot of `topic`, if it has state.
    pub(crate) fn snapshot(&mut self, topic: &str) -> Option<Arc<Snapshot>> {
        let entry = self.topics.get_mut(topic).filter(|e| e.state.is_some())?;
        Some(entry.encode())
    }

    /// What a subscriber of `topic` that missed some of its changes gets instead: its snapshot
    /// or, once the state is deleted, `state: null` at the version that deleted it.
    pub(crate) fn latest(&mut self, topic: &str) -> Option<Arc<Snapshot>> {
        Some(self.topics.get_mut(topic)?.encode())
    }

    /// Snapshots of every topic with state that `patterns` match, in topic order.
    pub(crate) fn matching(&mut self, patterns: &[Pattern]) -> Vec<Arc<Snapshot>> {
        if self.topics.is_empty() {
            return Vec::new();
        }
        let mut topics: Vec<Arc<str>> = match patterns {
            [] => return Vec::new(),
            // Exact topics are looked up; only wildcard patterns scan.
            ps if ps.iter().all(|p| matches!(p, Pattern::Exact(_))) => ps
                .iter()
                .filter_map(|p| match p {
                    Pattern::Exact(t) if self.contains(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            // Each topic is tested against all the patterns at once, one step per segment.
            ps => {
                let mut wild: PatternTrie<()> = PatternTrie::default();
                let mut exact: HashSet<&str> = HashSet::new();
                for p in ps {
                    match p {
                        Pattern::Exact(t) => _ = exact.insert(t),
                        p => _ = wild.entry(p),
                    }
                }
                self.topics
                    .iter()
                    .filter(|(t, e)| e.state.is_some() && (exact.contains(&***t) || wild.matches(t)))
                    .map(|(t, _)| t.clone())
                    .collect()
            }
        };
        topics.sort();
        topics.dedup();
        topics.iter().filter_map(|t| self.snapshot(t)).collect()
    }

    /// The version of a topic's state, if it has one.
    #[cfg(test)]
    fn version(&self, topic: &str) -> Option<u64> {
        self.topics.get(topic).filter(|e| e.state.is_some()).map(|e| e.version)
    }

    /// Whether a topic has state.
    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|e| e.state.is_some())
    }

    /// Every topic's state (and every deleted one's last version), to keep across a restart.
    pub(crate) fn dump(&self) -> Vec<crate::core::persist::SavedTopic> {
        self.topics.values().map(Entry::saved).collect()
    }

    /// Takes back the state of topics kept across a restart.
    pub(crate) fn load(&mut self, saved: Vec<crate::core::persist::SavedTopic>) {
        for t in saved {
            let topic: Arc<str> = Arc::from(t.topic);
            let state = (!t.deleted).then_some(t.state);
            self.topics.insert(topic.clone(), Entry::new(topic, t.version, state));
        }
    }

    /// Every topic with state and its version.
    pub(crate) fn versions(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.topics.iter().filter(|(_, e)| e.state.is_some()).map(|(t, e)| (t, e.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(topic: &str, c: StateChange) -> Draft {
        Draft::state_change(topic, c)
    }

    fn state(store: &mut Store, topic: &str) -> Value {
        let s = store.snapshot(topic).unwrap();
        serde_json::from_slice::<Value>(&s.json).unwrap()["state"].clone()
    }

    #[test]
    fn changes_raise_the_version_and_become_events() {
        let mut store = Store::default();
        let mut drafts = vec![
            change("t", StateChange::Set(json!({"a": 1, "b": 2}))),
            change("t", StateChange::Merge(json!({"b": null, "c": 3}))),
            change(
                "t",
                StateChange::JsonPatch(
                    serde_json::from_value(json!([{"op": "add", "path": "/d", "value": 4}])).unwrap(),
                ),
            ),
        ];
        store.apply(&mut drafts).unwrap();
        assert_eq!(state(&mut store, "t"), json!({"a": 1, "c": 3, "d": 4}));
        assert_eq!(store.version("t"), Some(3));
        assert_eq!(&*drafts[0].event, "snapshot");
        assert_eq!(drafts[1].data.get(), r#"{"topic":"t","version":2,"patch":{"b":null,"c":3}}"#);
        assert_eq!(drafts[2].version, Some(3));
    }

    #[test]
    fn a_failing_json_patch_changes_nothing() {
        let mut store = Store::default();
        store.apply(&mut [change("t", StateChange::Set(json!({"n": 1})))]).unwrap();
        let test_fails = serde_json::from_value(
            json!([{"op": "replace", "path": "/n", "value": 9}, {"op": "test", "path": "/n", "value": 1}]),
        )
        .unwrap();
        let mut batch = vec![
            change("t", StateChange::Merge(json!({"m": 2}))),
            change("u", StateChange::Set(json!(1))),
            change("t", StateChange::JsonPatch(test_fails)),
        ];
        let e = store.apply(&mut batch).unwrap_err();
        assert!(matches!(e, PublishError::Conflict { index: 2, .. }), "{e:?}");
        assert_eq!(state(&mut store, "t"), json!({"n": 1}));
        assert_eq!(store.version("t"), Some(1));
        assert!(!store.contains("u"));
        let bad = serde_json::from_value(json!([{"op": "remove", "path": "/missing"}])).unwrap();
        assert!(store.apply(&mut [change("new", StateChange::JsonPatch(bad))]).is_err());
        assert!(!store.contains("new"));
    }

    #[test]
    fn a_delete_keeps_the_version_for_the_next_state() {
        let mut store = Store::default();
        store.apply(&mut [change("t", StateChange::Set(json!({"n": 1})))]).unwrap();
        let mut del = [change("t", StateChange::Delete)];
        store.apply(&mut del).unwrap();
        assert_eq!(
            (&*del[0].event, del[0].data.get(), del[0].deleted),
            ("snapshot", r#"{"topic":"t","version":2,"state":null}"#, true)
        );
        assert!(store.snapshot("t").is_none() && !store.contains("t") && store.version("t").is_none());
        assert_eq!(store.versions().count(), 0);
        assert!(store.matching(&[Pattern::parse("**").unwrap(), Pattern::parse("t").unwrap()]).is_empty());
        let latest = store.latest("t").unwrap();
        assert_eq!((latest.version, &latest.json[..]), (2, &br#"{"topic":"t","version":2,"state":null}"#[..]));
        let e = store.apply(&mut [change("t", StateChange::Delete)]).unwrap_err();
        assert!(matches!(e, PublishError::UnknownTopic { index: 0, .. }), "{e:?}");
        assert!(matches!(store.apply(&mut [change("u", StateChange::Delete)]), Err(PublishError::UnknownTopic { .. })));

        // Kept across a restart, and followed by another node.
        let mut restarted = Store::default();
        restarted.load(store.dump());
        let mut other = Store::default();
        other.follow(&Draft { version: Some(1), ..change("t", StateChange::Set(json!(0))) });
        assert_eq!(other.follow(&del[0]), Follow::Applied);
        assert!(!other.contains("t"));
        for s in [&mut store, &mut restarted, &mut other] {
            let mut again = [change("t", StateChange::Merge(json!({"m": 2})))];
            s.apply(&mut again).unwrap();
            assert_eq!(again[0].version, Some(3), "the next state continues after the delete");
            assert_eq!(state(s, "t"), json!({"m": 2}), "a patch after a delete starts from nothing");
        }
    }

    #[test]
    fn changes_past_the_limits_are_refused_and_change_nothing() {
        let mut store = Store::new(100);
        store.apply(&mut [change("t", StateChange::Set(json!({"n": 1})))]).unwrap();
        let too_big = json!({"s": "x".repeat(100)});
        let mut nested = json!(1);
        for _ in 0..MAX_STATE_DEPTH + 1 {
            nested = json!([nested]);
        }
        let ops = |v: Value| StateChange::JsonPatch(serde_json::from_value(v).unwrap());
        for bad in [
            StateChange::Set(too_big.clone()),
            StateChange::Merge(too_big.clone()),
            ops(json!([{"op": "add", "path": "/s", "value": "x".repeat(100)}])),
            StateChange::Set(nested.clone()),
            StateChange::Merge(json!({"deep": nested})),
        ] {
            let mut batch = [
                change("u", StateChange::Set(json!(1))),
                change("t", StateChange::Merge(json!({"m": 1}))),
                change("t", bad),
            ];
            let e = store.apply(&mut batch).unwrap_err();
            assert!(matches!(e, PublishError::TooLarge { index: 2, .. }), "{e:?}");
            assert_eq!((state(&mut store, "t"), store.version("t")), (json!({"n": 1}), Some(1)));
            assert!(!store.contains("u"));
        }
        // Up to the limit, to the byte; sizes are tracked across changes.
        let fill = 100 - r#"{"n":1,"s":""}"#.len();
        store.apply(&mut [change("t", StateChange::Merge(json!({"s": "y".repeat(fill)})))]).unwrap();
        let e = store.apply(&mut [change("t", ops(json!([{"op": "add", "path": "/n", "value": 10}])))]).unwrap_err();
        assert!(matches!(e, PublishError::TooLarge { .. }), "{e:?}");
        store
            .apply(&mut [change(
                "t",
                ops(json!([{"op": "remove", "path": "/s"}, {"op": "add", "path": "/n", "value": 10}])),
            )])
            .unwrap();
        assert_eq!(state(&mut store, "t"), json!({"n": 10}));
    }
}
