//! Retained topic state: the current state and version of each topic that has one, changed by
//! `retain`, merge patches (RFC 7386) and JSON Patch (RFC 6902), all or none per request. New
//! subscribers get it as a `snapshot`, encoded once per version and shared.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{now_ms, push_json_str, sse_frame, ws_text_frame, ws_text_of, Draft, StateChange};
use crate::topic::Pattern;
use crate::trie::PatternTrie;

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
    ws: OnceLock<Utf8Bytes>,
}

impl Snapshot {
    fn new(topic: Arc<str>, version: u64, json: Bytes) -> Self {
        Snapshot { topic, version, json, sse: OnceLock::new(), ws_frame: OnceLock::new(), ws: OnceLock::new() }
    }

    /// `event: snapshot` with the JSON as data (no `id:`: it is state, not a position).
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| sse_frame(None, "snapshot", &self.json))
    }

    /// The WebSocket message `{"type":"snapshot","topic","version","state"}`.
    pub fn ws_text(&self) -> &Utf8Bytes {
        self.ws.get_or_init(|| ws_text_of(self.ws_frame()))
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
    version: u64,
    state: Value,
    /// The encoded snapshot of this version, made when first asked for.
    snapshot: Option<Arc<Snapshot>>,
}

/// A topic's version and state before a batch changed it (none if it had no state).
type Saved = (Arc<str>, Option<(u64, Value)>);

/// A topic's state after a batch that a node prepared (see [`Store::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The topic.
    pub topic: Arc<str>,
    /// Its version before the batch (0: no state).
    pub before: u64,
    /// Its version after the batch.
    pub after: u64,
    /// Its state after the batch.
    pub state: Value,
}

/// What following an ordered state change did (see [`Store::follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The change was applied (or the event changes no state): send it.
    Applied,
    /// The state already includes it (it was loaded from a newer snapshot): do not send it.
    Stale,
    /// Changes before it are missing: the topic's state must be fetched again.
    Gap,
}

/// Every topic's retained state.
#[derive(Default)]
pub struct Store {
    topics: HashMap<Arc<str>, Entry>,
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

fn raw(payload: &Payload<'_>) -> Box<RawValue> {
    // Serialising JSON values cannot fail.
    serde_json::value::to_raw_value(payload).unwrap_or_else(|_| crate::event::null_data())
}

impl Store {
    /// Applies the state changes among `drafts` in order, all or none, and turns each into the
    /// event subscribers receive: `snapshot {topic, version, state}` for a new state, `patch
    /// {topic, version, patch | json_patch}` for a change. On failure nothing changes and the
    /// error names the draft.
    pub fn apply(&mut self, drafts: &mut [Draft]) -> Result<(), (usize, String)> {
        let changes = drafts.iter().filter(|d| d.state.is_some()).count();
        // With several changes, a later failure undoes the earlier ones.
        let mut undo: Vec<Saved> = Vec::new();
        for (index, d) in drafts.iter_mut().enumerate() {
            let Some(change) = d.state.take() else { continue };
            let Some(topic) = d.topic.clone() else {
                return Err((index, "a state change needs a topic".into()));
            };
            let entry = self.topics.entry(topic.clone()).or_insert_with(|| Entry {
                topic: topic.clone(),
                version: 0,
                state: Value::Null,
                snapshot: None,
            });
            if changes > 1 && !undo.iter().any(|(t, _)| *t == topic) {
                undo.push((topic.clone(), (entry.version > 0).then(|| (entry.version, entry.state.clone()))));
            }
            let failed = match &change {
                StateChange::Set(v) => {
                    entry.state = v.clone();
                    None
                }
                StateChange::Merge(p) => {
                    json_patch::merge(&mut entry.state, p);
                    None
                }
                StateChange::JsonPatch(ops) => json_patch::patch(&mut entry.state, ops).err(),
            };
            if let Some(e) = failed {
                if entry.version == 0 {
                    self.topics.remove(&topic);
                }
                self.undo(undo);
                return Err((index, format!("json_patch does not apply to the state of {topic:?}: {e}")));
            }
            entry.version += 1;
            entry.snapshot = None;
            let version = entry.version;
            let mut payload = Payload { topic: &topic, version, state: None, patch: None, json_patch: None };
            let event = match &change {
                StateChange::Set(_) => {
                    payload.state = Some(&entry.state);
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
                Some((version, state)) => {
                    self.topics.insert(topic.clone(), Entry { topic, version, state, snapshot: None });
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
    pub fn prepare(&self, drafts: &mut [Draft]) -> Result<Vec<Prepared>, (usize, String)> {
        let mut scratch = Store::default();
        let mut before: Vec<(Arc<str>, u64)> = Vec::new();
        for topic in drafts.iter().filter(|d| d.state.is_some()).filter_map(|d| d.topic.as_ref()) {
            if before.iter().any(|(t, _)| t == topic) {
                continue;
            }
            let version = match self.topics.get(topic) {
                Some(e) => {
                    let copy =
                        Entry { topic: e.topic.clone(), version: e.version, state: e.state.clone(), snapshot: None };
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
                Some(Prepared { topic, before, after: e.version, state: e.state })
            })
            .collect())
    }

    /// Follows a state change in the order a shared broker gave it (the event as [`Store::apply`]
    /// made it on the publishing node, carrying its version). Every node following the same
    /// stream ends with the same state.
    pub fn follow(&mut self, ev: &Draft) -> Follow {
        let (Some(topic), Some(version)) = (&ev.topic, ev.version) else { return Follow::Applied };
        let current = self.version(topic).unwrap_or(0);
        if version <= current {
            return Follow::Stale;
        }
        let Ok(payload) = serde_json::from_str::<Value>(ev.data.get()) else { return Follow::Gap };
        let entry = |state| Entry { topic: topic.clone(), version, state, snapshot: None };
        if let Some(state) = payload.get("state").filter(|_| &*ev.event == "snapshot") {
            // A whole state fills any gap.
            self.topics.insert(topic.clone(), entry(state.clone()));
            return Follow::Applied;
        }
        let Some(e) = self.topics.get_mut(topic).filter(|_| version == current + 1) else { return Follow::Gap };
        if let Some(patch) = payload.get("patch") {
            json_patch::merge(&mut e.state, patch);
        } else if let Some(ops) = payload.get("json_patch") {
            let Ok(ops) = serde_json::from_value::<json_patch::Patch>(ops.clone()) else { return Follow::Gap };
            let mut state = e.state.clone();
            if json_patch::patch(&mut state, &ops).is_err() {
                return Follow::Gap;
            }
            e.state = state;
        } else {
            return Follow::Gap;
        }
        e.version = version;
        e.snapshot = None;
        Follow::Applied
    }

    /// Takes a topic's stored state if it is newer than the one held; says whether it did.
    pub fn restore(&mut self, saved: crate::persist::SavedTopic) -> bool {
        if self.version(&saved.topic).is_some_and(|v| v >= saved.version) {
            return false;
        }
        let topic: Arc<str> = Arc::from(saved.topic);
        self.topics.insert(topic.clone(), Entry { topic, version: saved.version, state: saved.state, snapshot: None });
        true
    }

    /// The snapshot of `topic`, if it has state.
    pub fn snapshot(&mut self, topic: &str) -> Option<Arc<Snapshot>> {
        let entry = self.topics.get_mut(topic)?;
        let snapshot = entry.snapshot.get_or_insert_with(|| {
            let payload = Payload {
                topic: &entry.topic,
                version: entry.version,
                state: Some(&entry.state),
                patch: None,
                json_patch: None,
            };
            let json = Bytes::from(serde_json::to_vec(&payload).unwrap_or_default());
            Arc::new(Snapshot::new(entry.topic.clone(), entry.version, json))
        });
        Some(snapshot.clone())
    }

    /// Snapshots of every topic with state that `patterns` match, in topic order.
    pub fn matching(&mut self, patterns: &[Pattern]) -> Vec<Arc<Snapshot>> {
        if self.topics.is_empty() {
            return Vec::new();
        }
        let mut topics: Vec<Arc<str>> = match patterns {
            [] => return Vec::new(),
            // Exact topics are looked up; only wildcard patterns scan.
            ps if ps.iter().all(|p| matches!(p, Pattern::Exact(_))) => ps
                .iter()
                .filter_map(|p| match p {
                    Pattern::Exact(t) if self.topics.contains_key(t) => Some(t.clone()),
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
                self.topics.keys().filter(|t| exact.contains(&***t) || wild.matches(t)).cloned().collect()
            }
        };
        topics.sort();
        topics.dedup();
        topics.iter().filter_map(|t| self.snapshot(t)).collect()
    }

    /// The version of a topic's state, if it has one.
    pub fn version(&self, topic: &str) -> Option<u64> {
        self.topics.get(topic).map(|e| e.version)
    }

    /// Whether a topic has state.
    pub fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Every topic's state, to keep across a restart.
    pub fn dump(&self) -> Vec<crate::persist::SavedTopic> {
        self.topics
            .values()
            .map(|e| crate::persist::SavedTopic {
                topic: e.topic.to_string(),
                version: e.version,
                state: e.state.clone(),
            })
            .collect()
    }

    /// Takes back the state of topics kept across a restart.
    pub fn load(&mut self, saved: Vec<crate::persist::SavedTopic>) {
        for t in saved {
            let topic: Arc<str> = Arc::from(t.topic);
            self.topics.insert(topic.clone(), Entry { topic, version: t.version, state: t.state, snapshot: None });
        }
    }

    /// Every topic with state and its version.
    pub fn versions(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.topics.iter().map(|(t, e)| (t, e.version))
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
        let (index, _) = store.apply(&mut batch).unwrap_err();
        assert_eq!(index, 2);
        assert_eq!(state(&mut store, "t"), json!({"n": 1}));
        assert_eq!(store.version("t"), Some(1));
        assert!(!store.contains("u"));
        let bad = serde_json::from_value(json!([{"op": "remove", "path": "/missing"}])).unwrap();
        assert!(store.apply(&mut [change("new", StateChange::JsonPatch(bad))]).is_err());
        assert!(!store.contains("new"));
    }
}
