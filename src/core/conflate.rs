//! Conflation, shared by every transport's writer: a topic whose queued state updates were
//! collapsed (a full queue) goes out as one fresh snapshot, after which older updates of it are
//! stale and skipped; and a throttled subscription (`throttle_ms`) sends at most one update per
//! topic per interval, holding the latest (for retained state: a fresh snapshot) until it is due.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::client::{Client, Outbound, Resume};
use crate::core::hub::Hub;
use crate::core::hub::Page;
use crate::core::retained::Snapshot;

/// What waits for a throttled topic's interval to end.
#[derive(Debug, Default)]
struct Held {
    /// The latest plain event.
    event: Option<Outbound>,
    /// A state update was held: send the state as it is when due.
    state: bool,
    due: Option<Instant>,
}

/// One writer's conflation state. Costs nothing for a client that is neither throttled nor
/// resynced.
#[derive(Debug, Default)]
pub(crate) struct Shaper {
    /// Per topic, the version of a snapshot sent out of band: state updates up to it are stale.
    sent_version: HashMap<Arc<str>, u64>,
    /// Per throttled topic, when an update last went out.
    last_sent: HashMap<Arc<str>, Instant>,
    held: HashMap<Arc<str>, Held>,
}

impl Shaper {
    /// What to send for one queued item now, if anything.
    pub(crate) fn admit(&mut self, hub: &Hub, client: &Client, item: Outbound, now: Instant) -> Option<Outbound> {
        let (topic, version) = match &item {
            Outbound::Resync(topic) => return self.fresh_snapshot(hub, topic.clone()),
            Outbound::Event(ev) => match &ev.draft.topic {
                Some(t) => (t.clone(), ev.draft.version),
                None => return Some(item),
            },
            _ => return Some(item),
        };
        if let (Some(v), false) = (version, self.sent_version.is_empty()) {
            match self.sent_version.get(&topic) {
                Some(&sent) if v <= sent => return None,
                Some(_) => {
                    self.sent_version.remove(&topic);
                }
                None => {}
            }
        }
        if !client.is_throttled() {
            return Some(item);
        }
        let Some(every) = client.throttle_for(&topic) else { return Some(item) };
        let free = self.last_sent.get(&topic).is_none_or(|t| now >= *t + every) && !self.held.contains_key(&topic);
        if free {
            self.last_sent.insert(topic, now);
            return Some(item);
        }
        let since = self.last_sent.get(&topic).copied().unwrap_or(now);
        let held = self.held.entry(topic).or_default();
        held.due = Some(since + every);
        if version.is_some() {
            held.state = true;
        } else {
            held.event = Some(item);
        }
        None
    }

    /// Moves what to send now into `out`: held updates that fell due, then what `batch` admits.
    pub(crate) fn shape(
        &mut self,
        hub: &Hub,
        client: &Client,
        batch: &mut VecDeque<Outbound>,
        out: &mut Vec<Outbound>,
    ) {
        let now = Instant::now();
        if !self.held.is_empty() {
            out.extend(self.due(hub, now));
        }
        for item in batch.drain(..) {
            out.extend(self.admit(hub, client, item, now));
        }
    }

    /// Waits until something is due for `client` (queued for it, or a held update falling due)
    /// and moves it into `out` as [`Shaper::shape`] does. False, at once, once the client's close
    /// has been taken. Cancel-safe.
    pub(crate) async fn next(
        &mut self,
        hub: &Hub,
        client: &Client,
        batch: &mut VecDeque<Outbound>,
        out: &mut Vec<Outbound>,
    ) -> bool {
        let open = tokio::select! {
            open = client.next_batch(batch) => open,
            _ = until(self.next_due()) => true,
        };
        if !open {
            return false;
        }
        let Some(at) = batch.iter().position(|i| matches!(i, Outbound::Resume(_))) else {
            self.shape(hub, client, batch, out);
            return true;
        };
        // A resume in progress: what comes before it, then its next page from history. The rest
        // waits in the queue for the next call, so a client far behind gets its missed events
        // page by page, as fast as it reads them, and holds no copy of them.
        let mut rest = batch.split_off(at);
        let Some(Outbound::Resume(resume)) = rest.pop_front() else { return true };
        self.shape(hub, client, batch, out);
        // Pages that the client's subscriptions filter out entirely come back at once.
        tokio::task::consume_budget().await;
        match hub.resume_page(client.id(), &resume).await {
            Ok(Page::Missed(events, more)) => {
                let now = Instant::now();
                for ev in events {
                    out.extend(self.admit(hub, client, Outbound::Event(ev), now));
                }
                if let Some(after) = more {
                    rest.push_front(Outbound::Resume(Box::new(Resume { after, ..*resume })));
                }
                client.requeue_front(rest.into_iter());
            }
            // History moved past the resume (or cannot be read): live events would follow a gap,
            // so the client is closed instead, to resume from the last event it got.
            Ok(Page::Lost(_)) | Err(_) => {
                tracing::info!(client_id = %client.id(), "resume overtaken by history trimming: closed to resume again");
                client.close(crate::core::client::CloseReason::Overflow);
            }
        }
        true
    }

    /// Records a snapshot sent outside the queue: queued updates it includes are now stale.
    pub(crate) fn note_sent(&mut self, snapshot: &Snapshot) {
        self.sent_version.insert(snapshot.topic.clone(), snapshot.version);
    }

    /// When the next held update falls due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.held.values().filter_map(|h| h.due).min()
    }

    /// The held updates due by `now`, to send now.
    fn due(&mut self, hub: &Hub, now: Instant) -> Vec<Outbound> {
        let ready: Vec<Arc<str>> =
            self.held.iter().filter(|(_, h)| h.due.is_some_and(|d| d <= now)).map(|(t, _)| t.clone()).collect();
        let mut out = Vec::new();
        for topic in ready {
            let Some(held) = self.held.remove(&topic) else { continue };
            out.extend(held.event);
            if held.state {
                out.extend(self.fresh_snapshot(hub, topic.clone()));
            }
            self.last_sent.insert(topic, now);
        }
        out
    }

    fn fresh_snapshot(&mut self, hub: &Hub, topic: Arc<str>) -> Option<Outbound> {
        let snapshot = hub.latest_snapshot(&topic)?;
        self.sent_version.insert(topic, snapshot.version);
        Some(Outbound::Snapshot(snapshot))
    }
}

/// Sleeps until `due`, or for ever when nothing is held.
pub(crate) async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads `throttle_ms` as a duration (0 or absent: none).
pub(crate) fn throttle(ms: Option<u64>) -> Option<Duration> {
    ms.filter(|&ms| ms > 0).map(Duration::from_millis)
}
