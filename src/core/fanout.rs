//! The fan-out writer: hands each run of events to its receivers (writing straight to idle
//! sockets, queueing for busy ones), outside every lock. The hub decides who receives what under
//! its lock, which is short, and queues the result here in dispatch order. One writer at a time
//! takes the queue, in order, so every client gets its events in id order:
//! - a small fan-out (at most [`INLINE_MAX`] receivers) that finds nobody writing is written by
//!   the publishing request itself, once it has let go of every lock ([`Writer::help`]): a
//!   publish to a few clients costs no hop to another thread and back;
//! - anything larger, anything a broker delivers (`Dispatch::deliver`), anything that must wait
//!   for the disk, and what is queued while the thread writes, goes to a thread of its own, off
//!   the async runtime's workers, so that registrations, subscriptions, health checks and other
//!   clients' tasks never wait on a large fan-out.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::core::broker::Durability;
use crate::core::client::{Client, Frames, Push};
use crate::core::event::{Event, EventId};
use crate::core::subscribers::Snapshot as Receivers;

/// A run of events that go to the same receivers, collected under the hub's lock.
pub(crate) struct Run {
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Who receives them; a client matched through several subscriptions may appear more than
    /// once (the round tells).
    pub receivers: Receivers,
    /// The dispatch round, for delivering once to a client listed several times.
    pub round: u64,
    /// For a run of plain events on one topic: the topic and the subscription generation it was
    /// collected at. Runs with the same key have the same receivers and may be written as one.
    pub key: Option<(Arc<str>, u64)>,
}

/// Everything one dispatch collected, and the position it brings the hub to.
pub(crate) struct Batch {
    /// The runs, in order.
    pub runs: Vec<Run>,
    /// The last event dispatched with this batch.
    pub head: EventId,
}

impl Batch {
    /// How many deliveries writing it takes, at most.
    fn size(&self) -> usize {
        self.runs.iter().map(|r| r.receivers.len()).sum()
    }
}

/// What writing a batch did.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Events delivered (written or queued), counted per receiver.
    pub delivered: u64,
    /// Receivers whose full queue was conflated into snapshots.
    pub conflated: u64,
    /// Receivers closed because their queue was full.
    pub overflowed: Vec<Arc<Client>>,
}

/// The most receivers a publishing request writes to itself, in one fan-out and in all it takes
/// from the queue at once: about 1-4 ms of one worker's time (each write to an idle socket costs
/// 1-4 µs). Anything more goes to the thread.
pub(crate) const INLINE_MAX: usize = 1024;

/// How long batches left for a publishing request that has not come for them (it cannot, as
/// long as every publish goes through `Hub::publish_checked`) wait before the thread takes
/// them: nothing waits for good.
const STRAY: Duration = Duration::from_millis(100);

/// The thread's nice value (the runtime's workers keep 0).
const FANOUT_NICE: i32 = 10;

/// How many batches waiting together are written as one group.
const GROUP: usize = 64;

/// The queue of batches and whoever writes them. Queuing never blocks: how far writing has come
/// is published back (see `Hub::fanned_to`), and in-process publishers wait on that, which
/// bounds what can wait here.
pub(crate) struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the thread: it was handed the queue, or the writer is gone.
    wake: Condvar,
    /// For a broker that writes its events to disk: a group of batches is written only once its
    /// events are on disk, so that no client ever sees an event a crash could take back.
    gate: Option<Arc<dyn Durability>>,
    /// Called after each group of batches with what it did and the position reached.
    done: Box<dyn Fn(Outcome, EventId) + Send + Sync>,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<(Batch, usize)>,
    /// Who is writing the queue now; nobody else takes from it until they let go.
    writer: Option<Who>,
    /// The hub is gone.
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Thread,
    Publisher,
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Starts the writer's thread, which ends when the writer is dropped.
    pub(crate) fn spawn(
        gate: Option<Arc<dyn Durability>>,
        done: impl Fn(Outcome, EventId) + Send + Sync + 'static,
    ) -> std::io::Result<Writer> {
        let inner = Arc::new(Inner { queue: Mutex::default(), wake: Condvar::new(), gate, done: Box::new(done) });
        let thread = inner.clone();
        std::thread::Builder::new().name("ssegate-fanout".into()).spawn(move || {
            // A little below the runtime's workers: when the cores are busy, a request (a health
            // check, a new client's welcome) goes before the rest of a large fan-out, which only
            // finishes a little later. On Linux the nice value is per thread.
            if let Err(e) = rustix::process::setpriority_process(None, FANOUT_NICE) {
                tracing::debug!(error = %e, "could not lower the fan-out thread's priority");
            }
            thread.run()
        })?;
        Ok(Writer { inner })
    }

    /// Queues a batch (under the hub's lock, so in dispatch order). With `inline`, a small batch
    /// that finds nobody writing is left for the publishing request, which must then call
    /// [`Writer::help`] once it holds no lock; anything else wakes the thread if it is needed.
    pub(crate) fn submit(&self, batch: Batch, inline: bool) {
        let size = batch.size();
        let mut q = lock(&self.inner.queue);
        q.batches.push_back((batch, size));
        let small = inline && self.inner.gate.is_none() && size <= INLINE_MAX;
        if q.writer.is_none() && !small {
            q.writer = Some(Who::Thread);
            self.inner.wake.notify_one();
        }
    }

    /// Called by a publishing request that holds no lock: if nobody is writing, writes what is
    /// queued itself, up to [`INLINE_MAX`] deliveries, and hands the rest to the thread.
    pub(crate) fn help(&self) {
        let mut q = lock(&self.inner.queue);
        if q.writer.is_some() || q.batches.is_empty() {
            return;
        }
        q.writer = Some(Who::Publisher);
        let mut budget = INLINE_MAX;
        loop {
            let mut batches = Vec::new();
            while let Some((_, size)) = q.batches.front() {
                if *size > budget || batches.len() == GROUP {
                    break;
                }
                budget -= *size;
                batches.extend(q.batches.pop_front().map(|(b, _)| b));
            }
            if batches.is_empty() {
                break;
            }
            drop(q);
            self.inner.write(batches);
            q = lock(&self.inner.queue);
        }
        q.writer = None;
        if !q.batches.is_empty() {
            q.writer = Some(Who::Thread);
            self.inner.wake.notify_one();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.inner.queue).closed = true;
        self.inner.wake.notify_one();
    }
}

impl Inner {
    /// The thread: writes the queue whenever it is handed it, until the writer is dropped.
    fn run(&self) {
        let mut q = lock(&self.queue);
        loop {
            match q.writer {
                Some(Who::Thread) if q.batches.is_empty() => q.writer = None,
                Some(Who::Thread) => {
                    let n = q.batches.len().min(GROUP);
                    let batches: Vec<Batch> = q.batches.drain(..n).map(|(b, _)| b).collect();
                    drop(q);
                    self.write(batches);
                    q = lock(&self.queue);
                }
                _ if q.closed => return,
                None if !q.batches.is_empty() => {
                    let (waited, timeout) = self.wake.wait_timeout(q, STRAY).unwrap_or_else(|e| e.into_inner());
                    q = waited;
                    if timeout.timed_out() && q.writer.is_none() && !q.batches.is_empty() {
                        tracing::debug!("fan-out batches left by a publisher: the thread takes them");
                        q.writer = Some(Who::Thread);
                    }
                }
                _ => q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Writes a group of batches (outside every lock) and reports what it did.
    fn write(&self, batches: Vec<Batch>) {
        let head = batches.iter().map(|b| b.head).max().unwrap_or_default();
        if self.gate.as_deref().is_some_and(|g| !g.wait_durable(head)) {
            // Never on disk, so never acknowledged: delivering them would show clients events
            // that a restart takes back.
            tracing::error!(%head, "events not written to disk are not delivered");
            (self.done)(Outcome::default(), head);
            return;
        }
        let runs = merge(batches);
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut out = Outcome::default();
            for run in &runs {
                write(run, &mut out);
            }
            out
        }));
        drop(runs);
        match written {
            Ok(out) => (self.done)(out, head),
            Err(_) => {
                tracing::error!("fan-out panicked; the batch's remaining deliveries are lost");
                (self.done)(Outcome::default(), head);
            }
        }
    }
}

/// Joins consecutive runs that have the same receivers (plain events on one topic, collected
/// with no subscription change in between): publishes that arrive during a fan-out then reach
/// each connection in one write.
fn merge(batches: Vec<Batch>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for run in batches.into_iter().flat_map(|b| b.runs) {
        match runs.last_mut() {
            Some(last) if last.key.is_some() && last.key == run.key => last.events.extend(run.events),
            _ => runs.push(run),
        }
    }
    runs
}

/// Gives a run to each of its receivers, a group of 16 at a time: each group is warmed first
/// (see [`Client::warm`]), so a large fan-out waits on memory once per group rather than once
/// per client.
fn write(run: &Run, out: &mut Outcome) {
    const GROUP: usize = 16;
    let frames = Frames::default();
    for group in run.receivers.groups(GROUP) {
        group.iter().for_each(|c| c.warm());
        for c in group {
            if !c.first_in_round(run.round) {
                continue;
            }
            let (delivered, push) = c.push_events(&run.events, &frames);
            match push {
                Push::Queued => out.delivered += delivered,
                Push::Conflated => out.conflated += 1,
                Push::Overflowed => out.overflowed.push(c.clone()),
                Push::Closed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client::Transport;
    use std::sync::mpsc;
    use uuid::Uuid;

    /// A batch to `n` fresh clients, brought to position `seq`.
    fn batch(n: usize, seq: u64) -> Batch {
        let clients = (0..n).map(|_| Arc::new(Client::new(Uuid::new_v4(), Transport::Sse, 4))).collect();
        let head = EventId { ms: 1, seq };
        Batch { runs: vec![Run { events: Vec::new(), receivers: Receivers::of(clients), round: seq, key: None }], head }
    }

    /// A writer that reports, for each group written, the position and the thread that wrote it.
    fn writer() -> (Writer, mpsc::Receiver<(EventId, Option<String>)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let w = Writer::spawn(None, move |_, head| {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.lock().unwrap().send((head, name));
        })
        .unwrap();
        (w, rx)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_small_batch_is_written_by_the_publisher_that_helps() {
        let (w, rx) = writer();
        w.submit(batch(3, 1), true);
        w.help();
        let (head, by) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(head.seq, 1);
        assert_eq!(by, std::thread::current().name().map(str::to_owned));
    }

    #[test]
    fn a_large_batch_and_a_delivered_one_go_to_the_thread() {
        let (w, rx) = writer();
        w.submit(batch(INLINE_MAX + 1, 1), true);
        w.help();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (EventId { ms: 1, seq: 1 }, Some("ssegate-fanout".into())));
        w.submit(batch(1, 2), false);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (EventId { ms: 1, seq: 2 }, Some("ssegate-fanout".into())));
    }

    #[test]
    fn a_small_batch_nobody_comes_for_is_taken_by_the_thread() {
        let (w, rx) = writer();
        w.submit(batch(1, 1), true);
        // No help: the thread takes it after a while.
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (EventId { ms: 1, seq: 1 }, Some("ssegate-fanout".into())));
    }

    #[test]
    fn batches_are_written_in_order_whoever_writes_them() {
        let (w, rx) = writer();
        let w = Arc::new(w);
        // Submitting is serialised, as under the hub's lock; helping is not.
        let order = Arc::new(Mutex::new(0u64));
        let total = 4 * 200;
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let (w, order) = (w.clone(), order.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        {
                            let mut seq = order.lock().unwrap();
                            *seq += 1;
                            let n = if (i + p) % 7 == 0 { INLINE_MAX + 5 } else { 1 + i % 5 };
                            w.submit(batch(n, *seq), i % 3 != 0);
                        }
                        w.help();
                    }
                })
            })
            .collect();
        publishers.into_iter().for_each(|t| t.join().unwrap());
        let mut last = 0;
        while last < total {
            let (head, _) = rx.recv_timeout(WAIT).expect("every batch is written");
            assert!(head.seq > last, "position {} reported after {last}", head.seq);
            last = head.seq;
        }
    }
}
