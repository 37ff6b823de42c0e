//! The fan-out writer: one thread of its own that hands each run of events to its receivers
//! (writing straight to idle sockets, queueing for busy ones). The hub decides who receives what
//! under its lock, which is short; the writing, which for a large audience takes milliseconds,
//! happens here, outside every lock and off the async runtime's workers, so registrations,
//! subscriptions, health checks and other clients' tasks never wait on a fan-out.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

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

/// Batches waiting for the writer. Sending never blocks: how far the writer has come is
/// published back (see `Hub::fanned_to`), and in-process publishers wait on that, which bounds
/// what can wait here.
pub(crate) type Queue = Sender<Batch>;

/// Starts the writer thread. `done` is called after each group of batches with what it did and
/// the position reached. The thread ends when every [`Queue`] is dropped.
///
/// With a `gate` (a broker that writes its events to disk), a group of batches is written only
/// once its events are on disk, so that no client ever sees an event a crash could take back.
pub(crate) fn spawn(
    gate: Option<Arc<dyn Durability>>,
    done: impl Fn(Outcome, EventId) + Send + 'static,
) -> std::io::Result<Queue> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("ssegate-fanout".into()).spawn(move || {
        // A little below the runtime's workers: when the cores are busy, a request (a health
        // check, a new client's welcome) goes before the rest of a large fan-out, which only
        // finishes a little later. On Linux the nice value is per thread.
        if let Err(e) = rustix::process::setpriority_process(None, FANOUT_NICE) {
            tracing::debug!(error = %e, "could not lower the fan-out thread's priority");
        }
        run(&rx, gate.as_deref(), &done)
    })?;
    Ok(tx)
}

/// The fan-out thread's nice value (the runtime's workers keep 0).
const FANOUT_NICE: i32 = 10;

/// How many batches waiting together are written as one group.
const GROUP: usize = 64;

fn run(rx: &Receiver<Batch>, gate: Option<&dyn Durability>, done: &dyn Fn(Outcome, EventId)) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter().take(GROUP - 1));
        let head = batches.iter().map(|b| b.head).max().unwrap_or_default();
        if gate.is_some_and(|g| !g.wait_durable(head)) {
            // Never on disk, so never acknowledged: delivering them would show clients events
            // that a restart takes back.
            tracing::error!(%head, "events not written to disk are not delivered");
            done(Outcome::default(), head);
            continue;
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
            Ok(out) => done(out, head),
            Err(_) => {
                tracing::error!("fan-out panicked; the batch's remaining deliveries are lost");
                done(Outcome::default(), head);
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
