//! Entries by id, ordered by a due time: the joiner's one container, with its memory counted.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;

/// Bytes one entry costs beyond its id and its value's heap data: the hash map slot
/// (id + order key), the ordered map slot (order key + id + value), and [`SLACK`].
pub(crate) const fn entry_overhead<V>() -> usize {
    2 * size_of::<Box<str>>() + 2 * size_of::<(u64, u64)>() + size_of::<V>() + SLACK
}

/// Per entry, for what the maps allocate beyond their slots: the hash map's control byte and
/// spare capacity (up to 1/8 at its load factor), the B-tree's node headers and part-full
/// nodes. A documented constant, not a measurement.
pub(crate) const SLACK: usize = 32;

/// Entries by id, ordered by `(due, insertion)`; every entry's byte cost is kept.
#[derive(Debug)]
pub(crate) struct IdQueue<V> {
    by_id: HashMap<Box<str>, (u64, u64)>,
    order: BTreeMap<(u64, u64), (Box<str>, V, usize)>,
    seq: u64,
    bytes: u64,
}

impl<V> Default for IdQueue<V> {
    fn default() -> Self {
        IdQueue {
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            bytes: 0,
        }
    }
}

impl<V> IdQueue<V> {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Bytes held (see [`entry_overhead`]).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<(u64, &V)> {
        let k = self.by_id.get(id)?;
        self.order.get(k).map(|(_, v, _)| (k.0, v))
    }

    /// Adds `id` (not present) due at `due`; `heap` is the value's heap bytes.
    pub(crate) fn insert(&mut self, id: Box<str>, due: u64, value: V, heap: usize) {
        let bytes = entry_overhead::<V>() + 2 * id.len() + heap;
        let k = (due, self.seq);
        self.seq += 1;
        self.by_id.insert(id.clone(), k);
        self.order.insert(k, (id, value, bytes));
        self.bytes += bytes as u64;
    }

    /// Removes `id`: its due time and value.
    pub(crate) fn remove(&mut self, id: &str) -> Option<(Box<str>, u64, V)> {
        let k = self.by_id.remove(id)?;
        let (id, v, bytes) = self.order.remove(&k).expect("indexed entry");
        self.bytes -= bytes as u64;
        Some((id, k.0, v))
    }

    /// Removes the entry due first, if it is due at or before `at` (any, with `u64::MAX`).
    pub(crate) fn pop_due(&mut self, at: u64) -> Option<(Box<str>, u64, V)> {
        let (&k, _) = self.order.first_key_value()?;
        if k.0 > at {
            return None;
        }
        let (_, (id, v, bytes)) = self.order.pop_first().expect("first entry");
        self.by_id.remove(&id);
        self.bytes -= bytes as u64;
        Some((id, k.0, v))
    }

    /// The values, in due order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.order.values().map(|(_, v, _)| v)
    }
}
