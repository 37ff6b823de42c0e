//! The in-memory broker: ids from the clock, a history bounded by count and age, and dispatch under
//! the same lock as id assignment, so every client sees one order. With a data directory
//! (`--data-dir`), the history and states are also written to disk, and a publish is answered
//! once they are there.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::broker::datadir::DataDir;
use crate::core::broker::{Broker, BrokerError, Dispatch, Durability, PublishError, Replay};
use crate::core::event::{now_ms, Draft, Event, EventId};

/// Keeps the last events in memory. Nothing to install; lost when the process ends.
pub(crate) struct MemoryBroker {
    max_len: usize,
    max_bytes: usize,
    max_age: Duration,
    history: Mutex<History>,
    /// Publish requests waiting for the dispatcher.
    pending: Mutex<Vec<Request>>,
    /// Held by the publisher that dispatches.
    dispatching: Mutex<()>,
    /// Where the history and states are kept durably, if anywhere.
    disk: Option<DataDir>,
}

/// Where a publish request's result goes.
type Answer = oneshot::Sender<Result<Vec<Arc<Event>>, PublishError>>;
/// A publish request waiting to be dispatched.
type Request = (Vec<Draft>, Answer);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

struct History {
    events: VecDeque<Arc<Event>>,
    /// The id just before the oldest event kept: a client that saw it has missed nothing that
    /// was dropped. At start, the start time, so ids of an earlier process are refused.
    floor: EventId,
    /// The last id issued.
    last: EventId,
    /// Approximate memory the kept events take.
    bytes: usize,
}

/// Approximate memory an event takes in history: its payload, names and encodings.
fn weight(ev: &Event) -> usize {
    2 * ev.draft.data.get().len() + 256
}

impl History {
    fn trim(&mut self, max_len: usize, max_bytes: usize, max_age: Duration, now: u64) {
        let oldest_ts = now.saturating_sub(max_age.as_millis() as u64);
        while let Some(front) = self.events.front() {
            if self.events.len() <= max_len && self.bytes <= max_bytes && front.draft.ts >= oldest_ts {
                break;
            }
            self.floor = front.id;
            self.bytes -= weight(front);
            self.events.pop_front();
        }
    }
}

impl MemoryBroker {
    /// A broker keeping at most `max_len` events taking at most about `max_bytes`, none older
    /// than `max_age`.
    pub(crate) fn new(max_len: usize, max_bytes: usize, max_age: Duration) -> Self {
        let start = EventId { ms: now_ms(), seq: 0 };
        MemoryBroker {
            max_len,
            max_bytes,
            max_age,
            history: Mutex::new(History { events: VecDeque::new(), floor: start, last: start, bytes: 0 }),
            pending: Mutex::new(Vec::new()),
            dispatching: Mutex::new(()),
            disk: None,
        }
    }

    /// The same broker writing its history and the hub's retained states to `disk`, answering a
    /// publish once its events are there (see [`DataDir`]).
    pub(crate) fn with_data_dir(mut self, disk: DataDir) -> Self {
        self.disk = Some(disk);
        self
    }

    /// A broker that continues from a saved history (see [`crate::core::persist`]).
    pub(crate) fn restored(
        max_len: usize,
        max_bytes: usize,
        max_age: Duration,
        floor: EventId,
        last: EventId,
        events: Vec<Arc<Event>>,
    ) -> Self {
        let b = MemoryBroker::new(max_len, max_bytes, max_age);
        {
            let mut h = b.lock();
            h.floor = floor;
            h.last = last.max(events.last().map(|e| e.id).unwrap_or_default());
            h.bytes = events.iter().map(|e| weight(e)).sum();
            h.events = events.into();
            h.trim(max_len, max_bytes, max_age, now_ms());
        }
        b
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        lock(&self.history)
    }

    /// Gives the requests their ids and has `sink` apply and fan them out, under the history
    /// lock, so concurrent publishers reach every client in id order; answers each request.
    fn dispatch(&self, requests: Vec<Request>, sink: &dyn Dispatch) {
        let now = now_ms();
        let (drafts, answers): (Vec<Vec<Draft>>, Vec<Answer>) = requests.into_iter().unzip();
        let mut h = self.lock();
        let mut stored = Vec::new();
        let results = sink.publish(drafts, &mut |drafts| {
            let mut events = Vec::with_capacity(drafts.len());
            for draft in drafts {
                h.last = h.last.next(now);
                let ev = Arc::new(Event::new(h.last, draft));
                h.bytes += weight(&ev);
                h.events.push_back(ev.clone());
                events.push(ev);
            }
            if self.disk.is_some() {
                stored.extend(events.iter().cloned());
            }
            events
        });
        h.trim(self.max_len, self.max_bytes, self.max_age, now);
        if let Some(disk) = &self.disk {
            // Queued in id order under the lock that gives the ids; written and synced by the
            // writer thread, outside every lock.
            if !stored.is_empty() {
                disk.append(stored, h.floor);
            }
            if disk.take_snapshot_request() {
                // The states as of the last id: nothing else changes them while this lock is held.
                disk.snapshot(h.last, sink.retained());
            }
        }
        drop(h);
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }

    fn replay_now(&self, after: &str, upto: EventId, limit: usize) -> Replay {
        let mut h = self.lock();
        h.trim(self.max_len, self.max_bytes, self.max_age, now_ms());
        let Ok(after) = after.parse::<EventId>() else {
            return Replay::Unknown;
        };
        if after > upto || after > h.last {
            return Replay::Unknown;
        }
        if after < h.floor {
            return Replay::Expired;
        }
        let start = if after == h.floor {
            0
        } else {
            match h.events.binary_search_by(|e| e.id.cmp(&after)) {
                Ok(i) => i + 1,
                Err(_) => return Replay::Unknown,
            }
        };
        let end = h.events.partition_point(|e| e.id <= upto).max(start).min(start.saturating_add(limit));
        Replay::Missed(h.events.range(start..end).cloned().collect())
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(
        &'a self,
        drafts: Vec<Draft>,
        sink: &'a dyn Dispatch,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, PublishError>> {
        if !self.ready() {
            // The disk failed: nothing more is taken that could not be kept.
            let refused = BrokerError::Unavailable("the data dir could not be written".into());
            return futures::future::ready(Err(refused.into())).boxed();
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).push((drafts, tx));
        // One publisher at a time dispatches, taking every request waiting: publishes that
        // arrive during a fan-out go out together in the next one, and a connection that keeps
        // up gets them in one write.
        while let Some(dispatching) = try_lock(&self.dispatching) {
            let requests = std::mem::take(&mut *lock(&self.pending));
            if !requests.is_empty() {
                self.dispatch(requests, sink);
            }
            drop(dispatching);
            // A request queued while the dispatch lock was held is taken on the next turn.
            if lock(&self.pending).is_empty() {
                break;
            }
        }
        async move {
            let events = rx.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("publish dropped".into()).into()))?;
            if let (Some(disk), Some(last)) = (&self.disk, events.last()) {
                disk.synced(last.id).await?;
            }
            Ok(events)
        }
        .boxed()
    }

    fn replay<'a>(&'a self, after: &'a str, upto: EventId, limit: usize) -> BoxFuture<'a, Result<Replay, BrokerError>> {
        futures::future::ready(Ok(self.replay_now(after, upto, limit))).boxed()
    }

    fn head(&self) -> EventId {
        self.lock().last
    }

    fn history_len(&self) -> usize {
        self.lock().events.len()
    }

    fn ready(&self) -> bool {
        self.disk.as_ref().is_none_or(DataDir::healthy)
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        self.disk.as_ref().map(DataDir::durability)
    }

    fn export(&self) -> Option<(EventId, EventId, Vec<Arc<Event>>)> {
        let h = self.lock();
        Some((h.floor, h.last, h.events.iter().cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Audience;
    use serde_json::value::RawValue;

    struct Nobody;
    impl Dispatch for Nobody {
        fn publish(
            &self,
            requests: Vec<Vec<Draft>>,
            store: &mut dyn FnMut(Vec<Draft>) -> Vec<Arc<Event>>,
        ) -> Vec<Result<Vec<Arc<Event>>, PublishError>> {
            requests.into_iter().map(|drafts| Ok(store(drafts))).collect()
        }
        fn prepare(&self, _: &mut [Draft]) -> Result<Vec<crate::core::retained::Prepared>, PublishError> {
            Ok(Vec::new())
        }
        fn deliver(&self, _: Vec<Arc<Event>>, _: EventId) -> Vec<Arc<str>> {
            Vec::new()
        }
        fn restore(&self, _: Vec<crate::core::persist::SavedTopic>) {}
        fn resume_all(&self) {}
        fn retained(&self) -> Vec<crate::core::persist::SavedTopic> {
            Vec::new()
        }
        fn command(&self, _: uuid::Uuid, _: &crate::core::broker::Command) -> Option<crate::core::broker::Answer> {
            None
        }
        fn local_clients(&self) -> Vec<crate::core::client::ClientInfo> {
            Vec::new()
        }
    }

    fn drafts(n: usize) -> Vec<Draft> {
        (0..n)
            .map(|i| {
                Draft::new(
                    Some(Arc::from("t")),
                    "message",
                    RawValue::from_string(i.to_string()).unwrap(),
                    Audience::Topic,
                )
            })
            .collect()
    }

    fn missed(r: Replay) -> Vec<String> {
        match r {
            Replay::Missed(events) => events.iter().map(|e| e.draft.data.get().to_owned()).collect(),
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replays_after_an_id_and_knows_what_it_dropped() {
        let b = MemoryBroker::new(3, usize::MAX, Duration::from_secs(60));
        let start = b.head().to_string();
        let ev = b.publish(drafts(5), &Nobody).await.unwrap();
        assert!(ev.windows(2).all(|w| w[0].id < w[1].id));
        let head = ev[4].id;
        let replay = |after: String, upto| b.replay_now(&after, upto, usize::MAX);
        // Kept: 2, 3, 4. A client that saw 1 has missed nothing that was dropped.
        assert_eq!(missed(replay(ev[1].id.to_string(), head)), ["2", "3", "4"]);
        assert_eq!(missed(replay(ev[1].id.to_string(), ev[3].id)), ["2", "3"]);
        assert_eq!(missed(replay(ev[3].id.to_string(), head)), ["4"]);
        // Page by page: at most `limit`, continuing after the last one given.
        assert_eq!(missed(b.replay_now(&ev[1].id.to_string(), head, 2)), ["2", "3"]);
        assert_eq!(missed(b.replay_now(&ev[3].id.to_string(), head, 2)), ["4"]);
        assert!(missed(replay(ev[4].id.to_string(), head)).is_empty());
        assert!(matches!(replay(ev[0].id.to_string(), head), Replay::Expired));
        assert!(matches!(replay(start, head), Replay::Expired));
        assert!(matches!(replay("junk".into(), head), Replay::Unknown));
        assert!(matches!(replay(ev[4].id.to_string(), ev[3].id), Replay::Unknown));
        assert!(matches!(replay("99999999999999-0".into(), head), Replay::Unknown));
    }
}
