//! `--data-dir`: the memory broker's history and the retained states kept durably on disk. The
//! history is a log of checksummed records in segment files, trimmed from the front by deleting
//! whole segments; the states are a compacted snapshot plus the state changes logged after it.
//! One writer thread appends what publishes queue, syncs once for all of them (group commit) and
//! only then lets them be answered.
//!
//! On disk, in DIR: `lock` (held while a gateway uses DIR), `states.snap` (the snapshot) and
//! `history/<seq>.log`. Every record, in a segment or the snapshot, is framed as
//! `[length: u32 LE][CRC-32 of the payload: u32 LE][payload]`; a payload starts with its kind:
//! `H` a segment's header (`{"prev": id}`, the id before its first event), `E` an event (JSON, as
//! the state file stores it), `S` the snapshot (`{"format", "at", "topics"}`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::core::broker::{BrokerError, Durability};
use crate::core::event::{now_ms, Audience, Event, EventId};
use crate::core::persist::{SavedEvent, SavedTopic};
use crate::core::retained::{Follow, Store};

/// Format version of the snapshot.
const FORMAT: u32 = 1;
/// Bytes of a record's frame before its payload.
const FRAME: usize = 8;
/// Largest record the log accepts when reading back (far above any event the gateway takes).
const MAX_RECORD: usize = 1 << 30;
/// Bytes of state changes logged after which a new snapshot is taken (or more: as many as the
/// last snapshot took), so recovery replays a bounded tail and snapshots cost at most as many
/// bytes written as the changes themselves.
const SNAPSHOT_AFTER_BYTES: u64 = 1 << 20;

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataDirError {
    /// Reading or writing failed.
    #[error("data dir {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// Another process uses the directory.
    #[error("data dir {0} is in use by another process")]
    Locked(String),
    /// The snapshot of the retained states is damaged; starting would lose them.
    #[error("data dir: the snapshot {path} is damaged ({message}); move it away to start without the retained states")]
    Snapshot {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.display().to_string(), source }
}

/// What sizes the segments: a segment holds about an eighth of the history, so that trimming it
/// from the front keeps the disk within about 1.125 times what the history holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Events after which a segment is closed.
    pub segment_events: u64,
    /// Bytes after which a segment is closed.
    pub segment_bytes: u64,
}

impl Limits {
    /// Segments sized for a history of at most `history_size` events and about `history_bytes`.
    pub(crate) fn for_history(history_size: usize, history_bytes: usize) -> Self {
        Limits {
            segment_events: (history_size as u64 / 8).max(64),
            segment_bytes: (history_bytes as u64 / 8).clamp(64 << 10, 64 << 20),
        }
    }
}

/// What was read back at start.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The id before the oldest event read back.
    pub floor: EventId,
    /// The last id issued: new ids continue after it.
    pub last: EventId,
    /// The events, oldest first.
    pub events: Vec<Arc<Event>>,
    /// The retained states, as of the last event.
    pub states: Vec<SavedTopic>,
    /// The directory held nothing yet (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fresh: bool,
}

/// How far the writer has come.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every event up to this id is on disk.
    synced: EventId,
    /// A write or sync failed: nothing more will be.
    failed: bool,
}

/// Work for the writer, queued in the broker's order.
enum Job {
    /// Events to append, and the history's floor after them (segments wholly below it go).
    Append(Vec<Arc<Event>>, EventId),
    /// The retained states as of event `at`, to replace the snapshot.
    Snapshot(EventId, Vec<SavedTopic>),
}

/// The broker's handle on the data directory: queues writes to the writer thread and waits for
/// them. Dropping it ends the writer once it has written what was queued.
pub(crate) struct DataDir {
    /// The writer thread holds the receiver; it ends when this is dropped.
    jobs: Option<mpsc::Sender<Job>>,
    /// The writer thread, joined on drop: the directory is released once everything queued is
    /// written.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Published by the writer after each sync.
    progress: watch::Receiver<Progress>,
    /// Set by the writer when it needs a new snapshot (to delete a segment whose state changes
    /// no snapshot holds yet, or because many changes were logged since the last one).
    wants_snapshot: Arc<AtomicBool>,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir").field("synced", &self.progress.borrow().synced).finish_non_exhaustive()
    }
}

impl DataDir {
    /// Opens (creating it if needed) the directory, reads back its history and states, cuts a
    /// torn or damaged tail at the last whole record, and starts the writer. With `import` (a
    /// `--state-file`'s floor, last id, events and states) and a directory that holds nothing
    /// yet, those are written first and read back instead.
    pub(crate) fn open(
        root: &Path,
        limits: Limits,
        import: Option<Recovered>,
    ) -> Result<(DataDir, Recovered), DataDirError> {
        let history = root.join("history");
        fs::create_dir_all(&history).map_err(io_error(&history))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(DataDirError::Locked(root.display().to_string()));
        }
        let _ = fs::remove_file(root.join("states.tmp"));

        let snapshot = read_snapshot(&root.join("states.snap"))?;
        let mut seqs: Vec<u64> = fs::read_dir(&history)
            .map_err(io_error(&history))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        let fresh = snapshot.is_none() && seqs.is_empty();

        let start = EventId { ms: now_ms(), seq: 0 };
        let mut chain = Chain::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(&history, seq);
            let scan = scan_segment(&path)?;
            let last_file = i + 1 == seqs.len();
            if scan.good < scan.len {
                tracing::warn!(
                    file = %path.display(),
                    kept_bytes = scan.good,
                    cut_bytes = scan.len - scan.good,
                    "torn or damaged record in the history: cut at the last whole record"
                );
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
                file.set_len(scan.good).and_then(|()| file.sync_all()).map_err(io_error(&path))?;
            }
            chain.add(seq, scan, last_file, &path);
        }

        // With no segment to read (a fresh directory), the history starts now, as in memory: ids
        // of an earlier process are refused.
        let snapshot_at = snapshot.as_ref().map(|s| s.at).unwrap_or_default();
        let floor = chain.floor.unwrap_or(start.max(snapshot_at));
        let last = chain.tail.unwrap_or(floor).max(snapshot_at);
        let mut writer = Writer {
            history: history.clone(),
            root: root.to_owned(),
            segments: chain.segments,
            file: None,
            buf: Vec::new(),
            unsynced: false,
            dir_dirty: false,
            floor,
            snapshot_at,
            state_bytes: 0,
            snapshot_bytes: 0,
            limits,
            wants_snapshot: Arc::new(AtomicBool::new(false)),
        };
        let mut recovered = Recovered { floor, last, events: chain.events, states: Vec::new(), fresh };
        let mut states = Store::new(usize::MAX);
        if let Some(s) = snapshot {
            states.load(s.topics);
        }
        // The changes logged after the snapshot (those it holds already are stale).
        let mut gaps: Vec<String> = Vec::new();
        for ev in &recovered.events {
            if let Follow::Gap = states.follow(&ev.draft) {
                gaps.extend(ev.draft.topic.as_deref().map(str::to_owned).filter(|t| !gaps.contains(t)));
            }
        }
        if !gaps.is_empty() {
            tracing::error!(topics = ?gaps, "data dir: changes to these retained states are missing; they keep their last whole state");
        }
        recovered.states = states.dump();

        // A fresh segment for this run, after everything read back (or for what is imported).
        let next_seq = seqs.last().map_or(0, |s| s + 1);
        let import = import.filter(|_| fresh);
        let prev = import.as_ref().map_or(recovered.last, |i| i.floor);
        writer.open_segment(next_seq, prev).map_err(io_error(&history))?;
        if let Some(Recovered { floor, last, events, states, .. }) = import {
            writer.floor = floor;
            for ev in &events {
                writer.append(ev).map_err(io_error(&history))?;
            }
            writer.sync().map_err(io_error(&history))?;
            let at = events.last().map_or(last, |e| e.id).max(last);
            writer.write_snapshot(at, &states).map_err(io_error(root))?;
            tracing::info!(events = events.len(), topics = states.len(), "state file imported into the data dir");
            recovered = Recovered { floor, last: at, events, states, fresh: false };
        }
        writer.sync().map_err(io_error(&history))?;
        tracing::info!(
            dir = %root.display(),
            events = recovered.events.len(),
            topics = recovered.states.len(),
            last = %recovered.last,
            "data dir read back"
        );

        let (progress_tx, progress) = watch::channel(Progress { synced: recovered.last, failed: false });
        let (jobs, rx) = mpsc::channel();
        let wants_snapshot = writer.wants_snapshot.clone();
        let thread = std::thread::Builder::new()
            .name("ssegate-datadir".into())
            .spawn(move || {
                writer.run(&rx, &progress_tx);
                // The directory is free for another process once the writer is done with it.
                drop(lock);
            })
            .map_err(io_error(root))?;
        Ok((DataDir { jobs: Some(jobs), thread: Some(thread), progress, wants_snapshot }, recovered))
    }

    /// Queues events for the disk, in the broker's order (call it under the lock that gives the
    /// ids), with the history's floor after them. Never blocks.
    pub(crate) fn append(&self, events: Vec<Arc<Event>>, floor: EventId) {
        // The writer ends only when this handle is dropped, or after a failure, which
        // `synced` reports.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Append(events, floor));
        }
    }

    /// Whether the writer asks for a snapshot (clears the request).
    pub(crate) fn take_snapshot_request(&self) -> bool {
        self.wants_snapshot.swap(false, Ordering::Relaxed)
    }

    /// Queues the retained states as of event `at` (every event up to it appended already).
    pub(crate) fn snapshot(&self, at: EventId, states: Vec<SavedTopic>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Snapshot(at, states));
        }
    }

    /// Waits until every event up to `id` is on disk.
    pub(crate) async fn synced(&self, id: EventId) -> Result<(), BrokerError> {
        let mut rx = self.progress.clone();
        let on_disk = rx.wait_for(|p| p.synced >= id || p.failed).await.is_ok_and(|p| p.synced >= id);
        if on_disk {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("the data dir could not be written".into()))
        }
    }

    /// Whether writing still works.
    pub(crate) fn healthy(&self) -> bool {
        !self.progress.borrow().failed
    }

    /// The handle the fan-out waits on.
    pub(crate) fn durability(&self) -> Arc<dyn Durability> {
        Arc::new(Gate(self.progress.clone()))
    }
}

/// [`Durability`] over the writer's progress.
struct Gate(watch::Receiver<Progress>);

impl Durability for Gate {
    fn wait_durable(&self, id: EventId) -> bool {
        let mut rx = self.0.clone();
        // A plain thread (the fan-out's) waits here, outside the async runtime.
        futures::executor::block_on(rx.wait_for(|p| p.synced >= id || p.failed)).is_ok_and(|p| p.synced >= id)
    }
}

/// One segment file of the history.
#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Its last event's id (`prev` while it has none).
    last: EventId,
    /// The last state change in it, which a snapshot must hold before the segment may go.
    last_state: Option<EventId>,
    bytes: u64,
    events: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// What reading one segment found.
struct Scan {
    prev: Option<EventId>,
    events: Vec<Arc<Event>>,
    last_state: Option<EventId>,
    /// Bytes of whole, valid records from the start.
    good: u64,
    len: u64,
}

/// Reads a segment's records up to the first that is torn, fails its checksum or is out of
/// order.
fn scan_segment(path: &Path) -> Result<Scan, DataDirError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let mut scan = Scan { prev: None, events: Vec::new(), last_state: None, good: 0, len: bytes.len() as u64 };
    let mut at = 0;
    while let Some((payload, next)) = frame_at(&bytes, at) {
        let ok = match (payload.split_first(), scan.prev) {
            (Some((b'H', json)), None) => match serde_json::from_slice::<Header>(json) {
                Ok(h) => h.prev.parse().ok().map(|prev| scan.prev = Some(prev)).is_some(),
                Err(_) => false,
            },
            (Some((b'E', json)), Some(prev)) => match serde_json::from_slice::<SavedEvent>(json).map(|e| e.event()) {
                Ok(Ok(ev)) if ev.id > scan.events.last().map_or(prev, |e| e.id) => {
                    if ev.draft.version.is_some() {
                        scan.last_state = Some(ev.id);
                    }
                    scan.events.push(Arc::new(ev));
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            break;
        }
        at = next;
        scan.good = at as u64;
    }
    Ok(scan)
}

/// The payload of the record at `at` and where the next begins, if it is whole and its checksum
/// holds.
fn frame_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at + FRAME)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + FRAME..at + FRAME + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, at + FRAME + len))
}

fn push_frame(out: &mut Vec<u8>, kind: u8, json: &[u8]) -> usize {
    let len = json.len() + 1;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(json);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(json);
    FRAME + len
}

/// An event as [`SavedEvent`] reads it back, written from borrowed fields (no copies).
#[derive(Serialize)]
struct EventRecord<'a> {
    id: &'a str,
    topic: Option<&'a str>,
    event: &'a str,
    data: &'a serde_json::value::RawValue,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<&'a [uuid::Uuid]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    broadcast: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// Appends an event's record to `out`, encoded in place; returns its size.
fn push_event(out: &mut Vec<u8>, ev: &Event) -> io::Result<usize> {
    let d = &ev.draft;
    let record = EventRecord {
        id: &ev.id_text,
        topic: d.topic.as_deref(),
        event: &d.event,
        data: &d.data,
        ts: d.ts,
        clients: match &d.audience {
            Audience::Clients(ids) => Some(ids),
            _ => None,
        },
        broadcast: d.audience == Audience::All,
        version: d.version,
        deleted: d.deleted,
    };
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.push(b'E');
    serde_json::to_writer(&mut *out, &record).map_err(io::Error::other)?;
    let payload = &out[start + FRAME..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

#[derive(Serialize, Deserialize)]
struct Header {
    prev: String,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    at: String,
    topics: Vec<SavedTopic>,
}

struct Snapshot {
    at: EventId,
    topics: Vec<SavedTopic>,
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, DataDirError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let bad = |message: &str| DataDirError::Snapshot { path: path.display().to_string(), message: message.to_owned() };
    let (payload, end) = frame_at(&bytes, 0).ok_or_else(|| bad("checksum"))?;
    if end != bytes.len() {
        return Err(bad("length"));
    }
    let Some((b'S', json)) = payload.split_first() else { return Err(bad("kind")) };
    let file: SnapshotFile = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    if file.format != FORMAT {
        return Err(bad(&format!("format {} (this build reads {FORMAT})", file.format)));
    }
    let at = file.at.parse().map_err(|_| bad("position"))?;
    Ok(Some(Snapshot { at, topics: file.topics }))
}

/// The segments read back, as one unbroken run of events.
#[derive(Default)]
struct Chain {
    segments: VecDeque<Segment>,
    events: Vec<Arc<Event>>,
    floor: Option<EventId>,
    /// The last id of the run so far.
    tail: Option<EventId>,
}

impl Chain {
    fn add(&mut self, seq: u64, scan: Scan, last_file: bool, path: &Path) {
        let Some(prev) = scan.prev else {
            // Created but its header never reached the disk (a crash right then), or damaged.
            if !last_file {
                tracing::error!(file = %path.display(), "history segment without a readable header: skipped");
            }
            let _ = fs::remove_file(path);
            return;
        };
        if self.tail.is_some_and(|t| t != prev) {
            // Something between the two is lost: the history starts again after it, and a
            // client resuming from before it gets a reset rather than a silent gap.
            tracing::error!(file = %path.display(), "history has a gap before this segment: the events before it are dropped");
            self.events.clear();
            self.floor = Some(prev);
            for s in &mut self.segments {
                s.last_state = None;
            }
        }
        self.floor.get_or_insert(prev);
        let last = scan.events.last().map_or(prev, |e| e.id);
        self.tail = Some(last);
        self.segments.push_back(Segment {
            seq,
            last,
            last_state: scan.last_state,
            bytes: scan.good,
            events: scan.events.len() as u64,
        });
        self.events.extend(scan.events);
    }
}

/// The writer thread's state.
struct Writer {
    history: PathBuf,
    root: PathBuf,
    /// Oldest first; the last is the one written to.
    segments: VecDeque<Segment>,
    file: Option<File>,
    /// Records not yet written to the file.
    buf: Vec<u8>,
    /// Written to the file since its last sync.
    unsynced: bool,
    /// A segment was created since the directory's last sync.
    dir_dirty: bool,
    floor: EventId,
    /// The position of the snapshot on disk.
    snapshot_at: EventId,
    /// Bytes of state changes logged since the snapshot.
    state_bytes: u64,
    /// Bytes the snapshot takes.
    snapshot_bytes: u64,
    limits: Limits,
    wants_snapshot: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Job>, progress: &watch::Sender<Progress>) {
        while let Ok(first) = rx.recv() {
            let mut synced = None;
            let written = || -> io::Result<()> {
                self.rotate_if_full()?;
                for job in std::iter::once(first).chain(rx.try_iter()) {
                    match job {
                        Job::Append(events, floor) => {
                            self.floor = self.floor.max(floor);
                            for ev in &events {
                                self.append(ev)?;
                            }
                            synced = events.last().map(|e| e.id).or(synced);
                        }
                        Job::Snapshot(at, states) => {
                            self.sync()?;
                            self.write_snapshot(at, &states)?;
                        }
                    }
                }
                // One sync for everything that arrived together.
                self.sync()
            };
            if let Err(e) = written() {
                tracing::error!(error = %e, dir = %self.root.display(), "data dir write failed: publishes are refused until a restart");
                progress.send_modify(|p| p.failed = true);
                return;
            }
            if let Some(id) = synced {
                progress.send_modify(|p| p.synced = p.synced.max(id));
            }
            self.trim();
        }
        // Every handle is gone: what was queued is written.
    }

    /// Starts a new segment if the active one is full. Called between groups, when everything
    /// written is synced: a segment then never starts on disk before the one it follows is
    /// whole, and a group pays for at most one more sync (the directory's).
    fn rotate_if_full(&mut self) -> io::Result<()> {
        let limits = self.limits;
        let full = self
            .segments
            .back()
            .is_some_and(|s| s.events > 0 && (s.events >= limits.segment_events || s.bytes >= limits.segment_bytes));
        if full {
            let (seq, last) = self.segments.back().map(|s| (s.seq + 1, s.last)).unwrap_or_default();
            self.open_segment(seq, last)?;
        }
        Ok(())
    }

    /// Adds an event's record to the active segment.
    fn append(&mut self, ev: &Event) -> io::Result<()> {
        let n = push_event(&mut self.buf, ev)? as u64;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += n;
            s.events += 1;
            s.last = ev.id;
            if ev.draft.version.is_some() {
                s.last_state = Some(ev.id);
                self.state_bytes += n;
                if self.state_bytes > SNAPSHOT_AFTER_BYTES.max(self.snapshot_bytes) {
                    self.wants_snapshot.store(true, Ordering::Relaxed);
                }
            }
        }
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Closes the active segment (synced) and starts segment `seq`, whose events follow `prev`.
    fn open_segment(&mut self, seq: u64, prev: EventId) -> io::Result<()> {
        self.sync_file()?;
        let path = segment_path(&self.history, seq);
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        let header = serde_json::to_vec(&Header { prev: prev.to_string() }).map_err(io::Error::other)?;
        let bytes = push_frame(&mut self.buf, b'H', &header) as u64;
        self.file = Some(file);
        self.segments.push_back(Segment { seq, last: prev, last_state: None, bytes, events: 0 });
        self.dir_dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("no segment open"))?;
        file.write_all(&self.buf)?;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    fn sync_file(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.unsynced {
            if let Some(file) = &self.file {
                file.sync_data()?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Everything queued so far on disk: the records and the segments' names.
    fn sync(&mut self) -> io::Result<()> {
        self.sync_file()?;
        if self.dir_dirty {
            File::open(&self.history)?.sync_all()?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Replaces the snapshot: written aside, synced, renamed over the old one.
    fn write_snapshot(&mut self, at: EventId, topics: &[SavedTopic]) -> io::Result<()> {
        #[derive(Serialize)]
        struct Out<'a> {
            format: u32,
            at: String,
            topics: &'a [SavedTopic],
        }
        let json = serde_json::to_vec(&Out { format: FORMAT, at: at.to_string(), topics }).map_err(io::Error::other)?;
        let mut bytes = Vec::with_capacity(json.len() + FRAME + 1);
        push_frame(&mut bytes, b'S', &json);
        let tmp = self.root.join("states.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.root.join("states.snap"))?;
        File::open(&self.root)?.sync_all()?;
        self.snapshot_at = self.snapshot_at.max(at);
        self.snapshot_bytes = bytes.len() as u64;
        self.state_bytes = 0;
        Ok(())
    }

    /// Deletes the oldest segments while all their events are below the floor and a snapshot
    /// holds their state changes; asks for a snapshot when that is what keeps one.
    fn trim(&mut self) {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else { break };
            if front.last > self.floor {
                break;
            }
            if front.last_state.is_some_and(|s| s > self.snapshot_at) {
                self.wants_snapshot.store(true, Ordering::Relaxed);
                break;
            }
            let path = segment_path(&self.history, front.seq);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(error = %e, file = %path.display(), "could not delete an old history segment");
                break;
            }
            self.segments.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{Audience, Draft};

    fn event(id: EventId, n: usize) -> Arc<Event> {
        let data = serde_json::value::to_raw_value(&n).unwrap();
        Arc::new(Event::new(id, Draft::new(Some(Arc::from("t")), "n", data, Audience::Topic)))
    }

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ssegate-datadir-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_event_record_reads_back_as_written() {
        let ids: Arc<[uuid::Uuid]> = Arc::from(vec![uuid::Uuid::new_v4()]);
        let data = serde_json::value::to_raw_value(&serde_json::json!({"a": [1, "b\n"]})).unwrap();
        let mut draft = Draft::new(None, "refresh", data, Audience::Clients(ids.clone()));
        draft.version = Some(3);
        let ev = Event::new(EventId { ms: 5, seq: 1 }, draft);
        let mut out = Vec::new();
        let n = push_event(&mut out, &ev).unwrap();
        let (payload, end) = frame_at(&out, 0).unwrap();
        assert_eq!(end, n);
        let back = serde_json::from_slice::<SavedEvent>(&payload[1..]).unwrap().event().unwrap();
        assert_eq!((back.id, back.draft.version, back.draft.ts), (ev.id, Some(3), ev.draft.ts));
        assert_eq!(back.draft.audience, Audience::Clients(ids));
        assert_eq!((back.draft.data.get(), &*back.draft.event), (ev.draft.data.get(), "refresh"));
        out[n - 2] ^= 1;
        assert!(frame_at(&out, 0).is_none(), "a flipped bit fails the checksum");
    }

    #[tokio::test]
    async fn reads_back_what_was_synced_and_trims_whole_segments() {
        let dir = temp();
        let limits = Limits { segment_events: 10, segment_bytes: u64::MAX };
        let (log, rec) = DataDir::open(&dir, limits, None).unwrap();
        assert!(rec.fresh && rec.events.is_empty());
        let ids: Vec<EventId> = (1..=35).map(|s| EventId { ms: rec.last.ms + 1, seq: s }).collect();
        let events: Vec<Arc<Event>> = ids.iter().enumerate().map(|(n, id)| event(*id, n)).collect();
        // Segments are closed between groups: one group each here.
        log.append(events[..10].to_vec(), rec.floor);
        log.synced(ids[9]).await.unwrap();
        log.append(events[10..20].to_vec(), rec.floor);
        log.synced(ids[19]).await.unwrap();
        log.append(events[20..].to_vec(), ids[14]);
        log.synced(ids[34]).await.unwrap();
        // A second handle on the same directory is refused.
        assert!(matches!(DataDir::open(&dir, limits, None), Err(DataDirError::Locked(_))));
        drop(log);
        // Segments of 10: the one holding events 1-10 is below the floor and went.
        let (_log, rec) = DataDir::open(&dir, limits, None).unwrap();
        assert_eq!(rec.events.first().map(|e| e.id), Some(ids[10]));
        assert_eq!(rec.floor, ids[9]);
        assert_eq!(rec.last, ids[34]);
        assert!(rec.events.windows(2).all(|w| w[0].id < w[1].id));
        let _ = fs::remove_dir_all(dir);
    }
}
