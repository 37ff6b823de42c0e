//! A set of clients that the hub changes under its lock and the fan-out reads outside it.
//!
//! The clients are kept in chunks of [`CHUNK`], each behind an `Arc`. Taking a [`Snapshot`]
//! costs one reference per chunk (40 for 10,000 clients), not one per client, and the
//! fan-out writes from it while the hub goes on. A change copies only the one or two chunks it
//! touches, and only while a snapshot still holds them: adding or removing a client never copies
//! more than `2 × CHUNK` references, however large the set.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::core::client::Client;

/// Clients per chunk: small enough that copying one under the hub's lock is a few microseconds,
/// large enough that a snapshot of 10,000 clients is a few dozen references.
const CHUNK: usize = 256;

type Chunk = Arc<Vec<Arc<Client>>>;

/// A set of clients by id, in no particular order.
#[derive(Default)]
pub(crate) struct Subscribers {
    /// Every chunk but the last is full.
    chunks: Vec<Chunk>,
    /// Where each client is: its position across the chunks.
    at: HashMap<Uuid, usize>,
}

/// The clients of a set at one moment, shared with the set until it changes.
#[derive(Clone, Default)]
pub(crate) struct Snapshot(Vec<Chunk>);

impl Subscribers {
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Adds `client` under `id`; nothing if `id` is in the set already.
    pub(crate) fn insert(&mut self, id: Uuid, client: Arc<Client>) {
        let len = self.at.len();
        if let std::collections::hash_map::Entry::Vacant(e) = self.at.entry(id) {
            e.insert(len);
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => own(last).push(client),
                _ => {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    chunk.push(client);
                    self.chunks.push(Arc::new(chunk));
                }
            }
        }
    }

    /// Removes the client under `id`, if there is one: the set's last client takes its place.
    pub(crate) fn remove(&mut self, id: &Uuid) {
        let Some(pos) = self.at.remove(id) else { return };
        let Some(last_chunk) = self.chunks.last_mut() else { return };
        let Some(last) = own(last_chunk).pop() else { return };
        if last_chunk.is_empty() {
            self.chunks.pop();
        }
        if pos < self.at.len() {
            // `pos` was not the last position: the last client moves into it.
            self.at.insert(last.id(), pos);
            own(&mut self.chunks[pos / CHUNK])[pos % CHUNK] = last;
        }
    }

    /// The clients as they are now; later changes do not show in it.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot(self.chunks.clone())
    }

    /// Every client, in the set's order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

/// The chunk, copied first if a snapshot still shares it. The copy keeps room for a whole chunk.
fn own(chunk: &mut Chunk) -> &mut Vec<Arc<Client>> {
    if Arc::get_mut(chunk).is_none() {
        let mut copy = Vec::with_capacity(CHUNK);
        copy.extend(chunk.iter().cloned());
        *chunk = Arc::new(copy);
    }
    Arc::get_mut(chunk).expect("a chunk just copied has no other owner")
}

impl Snapshot {
    /// A snapshot of these clients alone.
    pub(crate) fn of(clients: Vec<Arc<Client>>) -> Snapshot {
        Snapshot(vec![Arc::new(clients)])
    }

    /// Adds the clients of `other` (a client in both is then listed twice).
    pub(crate) fn extend(&mut self, other: &Subscribers) {
        self.0.extend(other.chunks.iter().cloned());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|c| c.is_empty())
    }

    /// How many clients it lists (one listed twice counts twice).
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(|c| c.len()).sum()
    }

    /// The clients in groups of at most `n`, none of which spans two chunks.
    pub(crate) fn groups(&self, n: usize) -> impl Iterator<Item = &[Arc<Client>]> {
        self.0.iter().flat_map(move |c| c.chunks(n))
    }

    /// Every client, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.0.iter().flat_map(|c| c.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::client::Transport;

    fn client() -> (Uuid, Arc<Client>) {
        let id = Uuid::new_v4();
        (id, Arc::new(Client::new(id, Transport::Sse, 4)))
    }

    fn ids(it: impl Iterator<Item = impl std::ops::Deref<Target = Client>>) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = it.map(|c| c.id()).collect();
        v.sort();
        v
    }

    #[test]
    fn snapshots_keep_what_they_saw_while_the_set_changes() {
        let mut set = Subscribers::default();
        let mut model: Vec<Uuid> = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..(3 * CHUNK + 7) {
            let (id, c) = client();
            set.insert(id, c.clone());
            set.insert(id, c.clone());
            clients.push((id, c));
            model.push(id);
        }
        let before = set.snapshot();
        let mut seen = model.clone();
        seen.sort();
        // Remove from the middle, the end and the first chunk; add some back.
        for i in [5, CHUNK + 1, 3 * CHUNK + 6, 0, 2 * CHUNK] {
            let id = clients[i].0;
            set.remove(&id);
            set.remove(&id);
            model.retain(|m| *m != id);
        }
        for _ in 0..3 {
            let (id, c) = client();
            set.insert(id, c);
            model.push(id);
        }
        model.sort();
        assert_eq!(ids(set.iter().cloned()), model);
        assert_eq!(set.len(), model.len());
        assert_eq!(ids(before.iter().cloned()), seen, "the snapshot changed with the set");
        assert_eq!(ids(set.snapshot().iter().cloned()), model);
        assert!(set.snapshot().groups(16).all(|g| !g.is_empty() && g.len() <= 16));
        // Emptied, the set holds no chunks.
        for id in model {
            set.remove(&id);
        }
        assert!(set.is_empty());
        assert!(set.chunks.is_empty());
        assert!(set.snapshot().is_empty());
    }
}
