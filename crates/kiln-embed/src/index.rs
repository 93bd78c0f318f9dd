//! A shard's key index: for hashed tables, open addressing with linear probing and
//! backward-shift deletion; for direct tables (keys are row numbers), a presence bitmap.
//!
//! The hashed index is a plain table of 16-byte buckets (key, slot) rather than a
//! general-purpose map, so the lookup path can compute a key's home bucket ahead of time and
//! prefetch it: four buckets share a cache line, and at the load factor kept here (at most 1/2)
//! a probe almost always stays within that line.

use crate::hash::{huge_vec, mix64, prefetch};

/// Marks an empty bucket.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy)]
#[repr(C)]
struct Bucket {
    key: u64,
    slot: u32,
    _pad: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    key: 0,
    slot: EMPTY,
    _pad: 0,
};

/// Maps keys to row slots within one shard.
pub(crate) enum Index {
    /// Any u64 key; slots allocated on insert.
    Hashed(HashIndex),
    /// Key `k` lives in slot `k >> shift` (the low bits chose the shard); a bit per slot says
    /// whether it holds a row.
    Direct(DirectIndex),
}

/// Presence bits of a direct shard's fixed slots.
pub(crate) struct DirectIndex {
    present: Vec<u64>,
    slots: usize,
    shift: u32,
    len: usize,
}

impl Index {
    /// A hashed index sized for `rows` keys without growing.
    pub fn with_capacity(rows: usize) -> Self {
        Index::Hashed(HashIndex::with_capacity(rows))
    }

    /// A direct index of `slots` slots for keys whose shard is chosen by their low `shift` bits.
    pub fn direct(slots: usize, shift: u32) -> Self {
        Index::Direct(DirectIndex {
            present: vec![0; slots.div_ceil(64)],
            slots,
            shift,
            len: 0,
        })
    }

    /// Whether this is a direct index.
    pub fn is_direct(&self) -> bool {
        matches!(self, Index::Direct(_))
    }

    /// The hash a key is routed by (the key itself for a direct index).
    #[inline(always)]
    pub fn hash_of(&self, key: u64) -> u64 {
        match self {
            Index::Hashed(_) => mix64(key),
            Index::Direct(_) => key,
        }
    }

    /// The fixed slot of `key` in a direct index (`None` for a hashed one).
    #[inline]
    pub fn direct_slot(&self, key: u64) -> Option<u32> {
        match self {
            Index::Hashed(_) => None,
            Index::Direct(d) => {
                let s = key >> d.shift;
                assert!(s < d.slots as u64, "key {key} outside the direct table");
                Some(s as u32)
            }
        }
    }

    /// Number of keys.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self {
            Index::Hashed(h) => h.len,
            Index::Direct(d) => d.len,
        }
    }

    /// Bytes held by the index.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Index::Hashed(h) => h.heap_bytes(),
            Index::Direct(d) => d.present.len() * 8,
        }
    }

    /// Starts loading what [`Index::find`] will read for `hash`.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        match self {
            Index::Hashed(h) => h.prefetch(hash),
            Index::Direct(d) => {
                let w = (hash >> d.shift) as usize / 64;
                prefetch(d.present.as_ptr().wrapping_add(w));
            }
        }
    }

    /// The slot of `key` (whose hash is `hash`), if present.
    #[inline]
    pub fn find(&self, key: u64, hash: u64) -> Option<u32> {
        match self {
            Index::Hashed(h) => h.find(key, hash),
            Index::Direct(d) => {
                let s = key >> d.shift;
                let w = d.present.get(s as usize / 64)?;
                (s < d.slots as u64 && w >> (s % 64) & 1 == 1).then_some(s as u32)
            }
        }
    }

    /// Inserts `key` -> `slot`; `key` must not be present (and, when direct, `slot` must be
    /// its fixed slot).
    pub fn insert_new(&mut self, key: u64, hash: u64, slot: u32) {
        match self {
            Index::Hashed(h) => h.insert_new(key, hash, slot),
            Index::Direct(d) => {
                debug_assert_eq!(key >> d.shift, slot as u64);
                d.present[slot as usize / 64] |= 1 << (slot % 64);
                d.len += 1;
            }
        }
    }

    /// Removes `key`, returning its slot.
    pub fn remove(&mut self, key: u64, hash: u64) -> Option<u32> {
        match self {
            Index::Hashed(h) => h.remove(key, hash),
            Index::Direct(_) => {
                let s = self.find(key, hash)?;
                let Index::Direct(d) = self else {
                    unreachable!()
                };
                d.present[s as usize / 64] &= !(1 << (s % 64));
                d.len -= 1;
                Some(s)
            }
        }
    }
}

/// Open-addressing key -> slot map of a hashed shard.
pub(crate) struct HashIndex {
    buckets: Vec<Bucket>,
    mask: usize,
    len: usize,
}

impl HashIndex {
    /// An index sized for `rows` keys without growing.
    pub fn with_capacity(rows: usize) -> Self {
        let n = (rows.saturating_mul(2)).max(16).next_power_of_two();
        HashIndex {
            buckets: huge_vec(n, EMPTY_BUCKET),
            mask: n - 1,
            len: 0,
        }
    }

    /// Bytes held by the bucket array.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// Starts loading the home bucket of `hash`.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        prefetch(self.buckets.as_ptr().wrapping_add(self.home(hash)));
    }

    /// The slot of `key` (whose hash is `hash`), if present.
    #[inline]
    pub fn find(&self, key: u64, hash: u64) -> Option<u32> {
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b.slot == EMPTY {
                return None;
            }
            if b.key == key {
                return Some(b.slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts `key` -> `slot`; `key` must not be present.
    pub fn insert_new(&mut self, key: u64, hash: u64, slot: u32) {
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        let mut i = self.home(hash);
        while self.buckets[i].slot != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = Bucket { key, slot, _pad: 0 };
        self.len += 1;
    }

    /// Removes `key`, returning its slot.
    pub fn remove(&mut self, key: u64, hash: u64) -> Option<u32> {
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b.slot == EMPTY {
                return None;
            }
            if b.key == key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let slot = self.buckets[i].slot;
        // Backward shift: move later entries of the probe run into the hole when their home
        // bucket allows it, so lookups never need tombstones.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let b = self.buckets[j];
            if b.slot == EMPTY {
                break;
            }
            let k = self.home(mix64(b.key));
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if stays {
                continue;
            }
            self.buckets[i] = b;
            i = j;
        }
        self.buckets[i] = EMPTY_BUCKET;
        self.len -= 1;
        Some(slot)
    }

    fn grow(&mut self) {
        let n = self.buckets.len() * 2;
        let old = std::mem::replace(&mut self.buckets, huge_vec(n, EMPTY_BUCKET));
        self.mask = n - 1;
        for b in old.into_iter().filter(|b| b.slot != EMPTY) {
            let mut i = self.home(mix64(b.key));
            while self.buckets[i].slot != EMPTY {
                i = (i + 1) & self.mask;
            }
            self.buckets[i] = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matches_a_hashmap_under_inserts_and_removes() {
        let mut idx = Index::with_capacity(4);
        let mut model = HashMap::new();
        let mut x = 12345u64;
        for step in 0..20_000u32 {
            x = mix64(x.wrapping_add(step as u64));
            let key = x % 3000;
            let h = mix64(key);
            if x.is_multiple_of(3) {
                assert_eq!(idx.remove(key, h), model.remove(&key));
            } else if let Some(s) = idx.find(key, h) {
                assert_eq!(Some(&s), model.get(&key));
            } else {
                assert!(!model.contains_key(&key));
                idx.insert_new(key, h, step);
                model.insert(key, step);
            }
            assert_eq!(idx.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(idx.find(*k, mix64(*k)), Some(*v));
        }
    }
}
