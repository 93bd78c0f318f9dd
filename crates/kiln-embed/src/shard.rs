//! One shard: a key index plus slot-addressed row storage and per-row metadata.

use half::f16;
use half::slice::HalfFloatSliceExt;

use std::sync::Arc;

use crate::buf::{Buf, Region};
use crate::config::StorageType;
use crate::hash::{huge_vec, prefetch_range};
use crate::index::Index;

/// Row elements of every slot, contiguous (`slot * dim ..`).
enum Data {
    F32(Buf<f32>),
    F16(Buf<f16>),
}

/// Row storage of one shard. Every access happens under the shard's lock.
pub(crate) struct Shard {
    /// Key -> slot.
    pub(crate) index: Index,
    /// Slot -> key.
    keys: Vec<u64>,
    /// Slot -> update tick (unique, increasing per write: the LRU order); 0 marks a free slot.
    ticks: Vec<u64>,
    /// Slot -> last update in seconds since the Unix epoch (for the TTL).
    updated: Vec<u32>,
    data: Data,
    free: Vec<u32>,
    dim: usize,
}

impl Shard {
    /// An empty hashed shard with room for `rows` rows before it grows.
    pub fn new(dim: usize, storage: StorageType, rows: usize) -> Self {
        let data = match storage {
            StorageType::F32 => Data::F32(Buf::growable(rows * dim)),
            StorageType::F16 => Data::F16(Buf::growable(rows * dim)),
        };
        Shard {
            index: Index::with_capacity(rows),
            keys: Vec::with_capacity(rows),
            ticks: Vec::with_capacity(rows),
            updated: Vec::with_capacity(rows),
            data,
            free: Vec::new(),
            dim,
        }
    }

    /// An empty direct shard: slot `key >> shift` holds the row of `key`. Its `rows` slots
    /// are `rows * dim` elements of `region` from byte `offset`, zeroed and not yet touched.
    pub fn new_direct(
        dim: usize,
        storage: StorageType,
        rows: usize,
        shift: u32,
        region: &Arc<Region>,
        offset: usize,
    ) -> Self {
        let data = match storage {
            StorageType::F32 => Data::F32(Buf::fixed(region, offset, rows * dim)),
            StorageType::F16 => Data::F16(Buf::fixed(region, offset, rows * dim)),
        };
        Shard {
            index: Index::direct(rows, shift),
            keys: huge_vec(rows, 0),
            ticks: huge_vec(rows, 0),
            updated: huge_vec(rows, 0),
            data,
            free: Vec::new(),
            dim,
        }
    }

    /// Number of slots, live or free (the bound for [`Shard::slot_meta`]).
    pub fn slots(&self) -> usize {
        self.keys.len()
    }

    /// Bytes allocated by this shard.
    pub fn heap_bytes(&self) -> usize {
        let data = match &self.data {
            Data::F32(v) => v.capacity_bytes(),
            Data::F16(v) => v.capacity_bytes(),
        };
        data + self.index.heap_bytes() + self.keys.capacity() * 20 + self.free.capacity() * 4
    }

    /// `(key, tick, updated_secs)` of a live slot, `None` for a free one.
    #[inline]
    pub fn slot_meta(&self, slot: usize) -> Option<(u64, u64, u32)> {
        (self.ticks[slot] != 0).then(|| (self.keys[slot], self.ticks[slot], self.updated[slot]))
    }

    /// Starts loading the row of `slot`.
    #[inline(always)]
    pub fn prefetch_row(&self, slot: u32) {
        let start = slot as usize * self.dim;
        match &self.data {
            Data::F32(v) => {
                prefetch_range(v.as_ptr().wrapping_add(start) as *const u8, self.dim * 4)
            }
            Data::F16(v) => {
                prefetch_range(v.as_ptr().wrapping_add(start) as *const u8, self.dim * 2)
            }
        }
    }

    /// Adds the row of `slot` to `out` (`tmp` is scratch of `dim` floats for f16 storage).
    #[inline]
    pub fn add_row(&self, slot: u32, out: &mut [f32], tmp: &mut [f32]) {
        let start = slot as usize * self.dim;
        match &self.data {
            Data::F32(v) => add_assign(out, &v[start..start + self.dim]),
            Data::F16(v) => {
                v[start..start + self.dim].convert_to_f32_slice(tmp);
                add_assign(out, tmp);
            }
        }
    }

    /// Copies the row of `slot` into `out`.
    #[inline]
    pub fn copy_row(&self, slot: u32, out: &mut [f32]) {
        let start = slot as usize * self.dim;
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[start..start + self.dim]),
            Data::F16(v) => v[start..start + self.dim].convert_to_f32_slice(out),
        }
    }

    /// Appends the stored elements of `slot` to `buf`, little-endian.
    pub fn row_le_bytes(&self, slot: u32, buf: &mut Vec<u8>) {
        let start = slot as usize * self.dim;
        match &self.data {
            Data::F32(v) => {
                for x in &v[start..start + self.dim] {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
            Data::F16(v) => {
                for x in &v[start..start + self.dim] {
                    buf.extend_from_slice(&x.to_bits().to_le_bytes());
                }
            }
        }
    }

    /// The slot of `key`.
    #[inline]
    pub fn find(&self, key: u64, hash: u64) -> Option<u32> {
        self.index.find(key, hash)
    }

    /// Writes `values` as the row of `key`, inserting it if absent. Returns true on insert.
    pub fn upsert(&mut self, key: u64, hash: u64, values: &[f32], tick: u64, secs: u32) -> bool {
        let (slot, inserted) = match self.index.find(key, hash) {
            Some(s) => (s, false),
            None => {
                let s = self.new_slot(key);
                self.index.insert_new(key, hash, s);
                (s, true)
            }
        };
        let i = slot as usize;
        self.keys[i] = key;
        self.ticks[i] = tick;
        self.updated[i] = secs;
        let start = i * self.dim;
        match &mut self.data {
            Data::F32(v) => v[start..start + self.dim].copy_from_slice(values),
            Data::F16(v) => v[start..start + self.dim].convert_from_f32_slice(values),
        }
        inserted
    }

    /// Inserts a row from its stored little-endian bytes (snapshot restore). `key` must be absent.
    pub fn insert_raw(&mut self, key: u64, hash: u64, raw: &[u8], tick: u64, secs: u32) {
        let slot = self.new_slot(key);
        self.index.insert_new(key, hash, slot);
        let i = slot as usize;
        self.keys[i] = key;
        self.ticks[i] = tick;
        self.updated[i] = secs;
        let start = i * self.dim;
        match &mut self.data {
            Data::F32(v) => {
                for (d, c) in v[start..start + self.dim]
                    .iter_mut()
                    .zip(raw.chunks_exact(4))
                {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Data::F16(v) => {
                for (d, c) in v[start..start + self.dim]
                    .iter_mut()
                    .zip(raw.chunks_exact(2))
                {
                    *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
            }
        }
    }

    /// Removes `key`. Returns true when it was present.
    pub fn remove(&mut self, key: u64, hash: u64) -> bool {
        match self.index.remove(key, hash) {
            Some(slot) => {
                self.release_slot(slot);
                true
            }
            None => false,
        }
    }

    fn release_slot(&mut self, slot: u32) {
        self.ticks[slot as usize] = 0;
        if !self.index.is_direct() {
            self.free.push(slot);
        }
    }

    /// The slot for a key about to be inserted: its fixed slot in a direct shard (the table
    /// has checked the key is in range), a free or new one in a hashed shard.
    fn new_slot(&mut self, key: u64) -> u32 {
        match self.index.direct_slot(key) {
            Some(s) => s,
            None => self.alloc_slot(),
        }
    }

    fn alloc_slot(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.keys.len();
        assert!(s < u32::MAX as usize, "shard full: more than 2^32 - 1 rows");
        self.keys.push(0);
        self.ticks.push(0);
        self.updated.push(0);
        let dim = self.dim;
        match &mut self.data {
            Data::F32(v) => v.grow(dim, 0.0),
            Data::F16(v) => v.grow(dim, f16::ZERO),
        }
        s as u32
    }
}

/// `out += row`, written so the compiler vectorizes it.
#[inline(always)]
pub(crate) fn add_assign(out: &mut [f32], row: &[f32]) {
    for (o, r) in out.iter_mut().zip(row) {
        *o += *r;
    }
}

impl Shard {
    /// Removes every live row for which `evict(tick, updated_secs)` holds, appending the
    /// removed keys to `removed`. Returns how many were removed.
    pub fn evict_where(
        &mut self,
        evict: impl Fn(u64, u32) -> bool,
        removed: &mut Vec<u64>,
    ) -> usize {
        let mut n = 0;
        for slot in 0..self.keys.len() {
            let tick = self.ticks[slot];
            if tick != 0 && evict(tick, self.updated[slot]) {
                let key = self.keys[slot];
                let gone = self.index.remove(key, self.index.hash_of(key));
                debug_assert_eq!(gone, Some(slot as u32));
                self.release_slot(slot as u32);
                removed.push(key);
                n += 1;
            }
        }
        n
    }
}
