//! Keeping the in-memory broker's history and the retained state across a restart
//! (`--state-file`): written when the gateway shuts down, read when it starts, so clients resume
//! after a restart exactly as after a reconnect. A shared broker keeps its own history instead.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::core::event::{Audience, Draft, Event, EventId};

/// Format version of the file.
const FORMAT: u32 = 1;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing the file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a state file of this version.
    #[error("state file {path} is not readable: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One event as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SavedEvent {
    /// Empty where the id is kept beside the event (a Redis Stream entry's own id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    topic: Option<String>,
    event: String,
    #[serde(serialize_with = "shared_raw", deserialize_with = "owned_raw")]
    data: Arc<RawValue>,
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clients: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    broadcast: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

fn shared_raw<S: serde::Serializer>(data: &Arc<RawValue>, s: S) -> Result<S::Ok, S::Error> {
    data.serialize(s)
}

fn owned_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<RawValue>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Arc::from)
}

impl SavedEvent {
    /// An event (or a draft that will get `id`) as stored.
    pub(crate) fn of(id: String, d: &Draft) -> Self {
        SavedEvent {
            id,
            topic: d.topic.as_deref().map(str::to_owned),
            event: d.event.to_string(),
            data: d.data.clone(),
            ts: d.ts,
            clients: match &d.audience {
                Audience::Clients(ids) => Some(ids.to_vec()),
                _ => None,
            },
            broadcast: d.audience == Audience::All,
            version: d.version,
            deleted: d.deleted,
        }
    }

    /// The stored event with the id stored beside it.
    pub(crate) fn event(&self) -> Result<Event, String> {
        let id: EventId = self.id.parse().map_err(|_| format!("bad event id {:?}", self.id))?;
        Ok(Event::new(id, self.draft()))
    }

    /// The stored event without its id.
    pub(crate) fn draft(&self) -> Draft {
        let audience = match (&self.clients, self.broadcast) {
            (Some(ids), _) => Audience::Clients(Arc::from(ids.as_slice())),
            (None, true) => Audience::All,
            (None, false) => Audience::Topic,
        };
        Draft {
            ts: self.ts,
            version: self.version,
            deleted: self.deleted,
            ..Draft::sharing(self.topic.as_deref().map(Arc::from), &self.event, self.data.clone(), audience)
        }
    }
}

/// A retained topic as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedTopic {
    /// The topic.
    pub topic: String,
    /// Its state's version.
    pub version: u64,
    /// Its state (`null` when deleted).
    pub state: Value,
    /// The state was dropped at `version` (`DELETE /topics/{topic}`): the topic has no state, and
    /// the next one continues from `version + 1`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// Everything the state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Saved {
    format: u32,
    /// The id before the oldest event kept.
    pub floor: String,
    /// The last id issued.
    pub last: String,
    events: Vec<SavedEvent>,
    /// Retained topics.
    pub retained: Vec<SavedTopic>,
}

impl Saved {
    /// Captures history and retained state.
    pub(crate) fn new(floor: EventId, last: EventId, events: &[Arc<Event>], retained: Vec<SavedTopic>) -> Self {
        let events = events.iter().map(|e| SavedEvent::of(e.id_text.to_string(), &e.draft)).collect();
        Saved { format: FORMAT, floor: floor.to_string(), last: last.to_string(), events, retained }
    }

    /// The stored events, oldest first, with their ids.
    pub(crate) fn events(&self) -> Result<Vec<Arc<Event>>, String> {
        self.events.iter().map(|e| e.event().map(Arc::new)).collect()
    }

    /// Reads a state file; `None` if there is none yet.
    pub(crate) fn load(path: &Path) -> Result<Option<Saved>, PersistError> {
        let shown = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path: shown, source }),
        };
        let saved: Saved = serde_json::from_slice(&text)
            .map_err(|e| PersistError::Format { path: shown.clone(), message: e.to_string() })?;
        if saved.format != FORMAT {
            return Err(PersistError::Format {
                path: shown,
                message: format!("format {} (this build reads {FORMAT})", saved.format),
            });
        }
        Ok(Some(saved))
    }

    /// Writes the state file, readable by its owner only (mode 0600: it holds every retained
    /// state and the history). It goes to a new temporary file with a random name in the same
    /// directory first (created exclusively, so no file or symlink planted there is followed),
    /// then replaces the file, so a crash never leaves half of one.
    pub(crate) fn store(&self, path: &Path) -> Result<(), PersistError> {
        use std::io::Write;
        let io = |source| PersistError::Io { path: path.display().to_string(), source };
        let text = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates the file with O_EXCL and mode 0600. It is synced before the rename
        // and the directory after, so that a power cut leaves the old file or the new one,
        // never an empty one.
        let mut tmp = tempfile::Builder::new().prefix(".ssegate-state").tempfile_in(dir).map_err(io)?;
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}
