//! Batch lookup with pooling over multi-hot inputs.
//!
//! Pass 1 collects the non-padding keys of a batch with their hash, shard and destination row
//! of the output, into caller-owned scratch buffers (no allocation per key; once the scratch
//! has grown to the batch size, the in-order pass's vector of shard lock guards is the only
//! allocation of a call). Then one of two passes adds the rows:
//!
//! - **In input order** (direct tables up to [`IN_ORDER_MAX_BYTES`] of rows): every shard's
//!   read lock is taken once for the batch and the entries are visited in order, each row and
//!   its presence word prefetched ahead. A sample's rows add into the same output row back to
//!   back and there is no sort pass. (The same single pass for hashed tables, with a
//!   three-stage bucket / resolve / add pipeline, measured no faster than the one below.)
//! - **By shard** (hashed tables and larger direct ones): a counting sort of the entries by
//!   shard, then per shard, under its read lock, a pipeline over chunks of 8 keys (buckets
//!   prefetched four chunks ahead, rows two). Keys grouped by shard touch one shard's part of
//!   the table at a time, which the TLB covers; over gigabytes that is worth more than input
//!   order.
//!
//! Either way a sample's rows are summed in an order that depends only on the sample's own
//! keys: a batched lookup equals the same samples looked up one by one, bit for bit.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::config::DefaultRow;
use crate::error::{EmbedError, Result};
use crate::hash::unit_value;
use crate::shard::add_assign;
use crate::table::Table;

/// How the rows of one sample are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Element-wise sum (an empty sample gives zeros).
    Sum,
    /// Element-wise mean over the non-padding ids (an empty sample gives zeros).
    Mean,
    /// The rows of the first `k` non-padding ids side by side (`k * dim` floats); missing
    /// positions (fewer than `k` ids) are zeros.
    Concat {
        /// Number of rows kept.
        k: usize,
    },
}

impl Pooling {
    /// Floats per sample in the output.
    pub fn output_width(self, dim: usize) -> usize {
        match self {
            Pooling::Sum | Pooling::Mean => dim,
            Pooling::Concat { k } => k * dim,
        }
    }
}

/// Multi-hot ids of a batch.
#[derive(Clone, Copy, Debug)]
pub enum MultiHot<'a> {
    /// `[rows, width]` row-major ids; entries equal to `padding` are ignored.
    Padded {
        /// The ids, `rows * width` of them.
        ids: &'a [u64],
        /// Ids per sample.
        width: usize,
        /// The padding id, if any (an INT64 tensor's -1 is `u64::MAX`, see [`keys_from_i64`]).
        padding: Option<u64>,
    },
    /// Ragged ids: sample `i` owns the next `lengths[i]` values.
    Ragged {
        /// All ids, concatenated.
        values: &'a [u64],
        /// Ids per sample.
        lengths: &'a [u32],
        /// The padding id, if any.
        padding: Option<u64>,
    },
}

impl MultiHot<'_> {
    /// Number of samples.
    pub fn rows(&self) -> Result<usize> {
        match *self {
            MultiHot::Padded { ids, width, .. } => {
                if width == 0 {
                    return if ids.is_empty() {
                        Ok(0)
                    } else {
                        Err(input("width is 0"))
                    };
                }
                if ids.len() % width != 0 {
                    return Err(input(&format!(
                        "{} ids do not divide into rows of {width}",
                        ids.len()
                    )));
                }
                Ok(ids.len() / width)
            }
            MultiHot::Ragged {
                values, lengths, ..
            } => {
                let sum: u64 = lengths.iter().map(|&l| l as u64).sum();
                if sum != values.len() as u64 {
                    return Err(input(&format!(
                        "lengths sum to {sum}, {} values given",
                        values.len()
                    )));
                }
                Ok(lengths.len())
            }
        }
    }
}

fn input(m: &str) -> EmbedError {
    EmbedError::Input(m.to_string())
}

/// Reinterprets INT64 ids as table keys without copying (-1 becomes `u64::MAX`).
pub fn keys_from_i64(ids: &[i64]) -> &[u64] {
    bytemuck::cast_slice(ids)
}

/// Reusable buffers for [`Table::lookup`]; keep one per thread.
#[derive(Debug, Default)]
pub struct LookupScratch {
    keys: Vec<u64>,
    hashes: Vec<u64>,
    dest: Vec<u32>,
    shard: Vec<u32>,
    order: Vec<u32>,
    starts: Vec<usize>,
    cursor: Vec<usize>,
    counts: Vec<u32>,
    tmp: Vec<f32>,
}

/// Counts from one lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Keys looked up (padding and ids past `k` for concat excluded).
    pub keys: usize,
    /// Keys that were missing and got the default row.
    pub misses: usize,
}

const CHUNK: usize = 8;
/// Chunks between resolving a chunk (prefetching its rows) and accumulating it.
const ROW_AHEAD: usize = 2;
/// Further chunks between prefetching a chunk's index buckets and resolving it.
const BUCKET_AHEAD: usize = 2;
const MISS: u32 = u32::MAX;
/// Direct tables up to this many bytes of rows are read in input order
/// ([`Table::gather_in_order`]); larger ones, and hashed tables, go through the per-shard
/// pipeline ([`Table::gather_grouped`]). Measured on a 2-vCPU AMD EPYC VM with direct tables:
/// at 1M rows x 64 f32 (256 MB) input order is 1.5x the per-shard pipeline, at 10M (2.5 GB)
/// the per-shard pipeline is 2x input order: keys grouped by shard touch one shard's part of
/// the table at a time, which the TLB and page-walk caches cover.
const IN_ORDER_MAX_BYTES: u64 = 512 << 20;
/// Entries between prefetching a row of a direct table and adding it.
const DIRECT_AHEAD: usize = 16;

impl Table {
    /// Looks up and pools `input` into `out` (`rows * pooling.output_width(dim)` floats,
    /// overwritten). Missing keys yield the default row; nothing is inserted.
    pub fn lookup(
        &self,
        input: &MultiHot<'_>,
        pooling: Pooling,
        out: &mut [f32],
        scratch: &mut LookupScratch,
    ) -> Result<LookupStats> {
        let dim = self.config.dim;
        let rows = input.rows()?;
        let width = pooling.output_width(dim);
        if out.len() != rows * width {
            return Err(EmbedError::OutputSize {
                expected: rows * width,
                got: out.len(),
            });
        }
        if rows
            .checked_mul(width / dim)
            .is_none_or(|d| d >= MISS as usize)
        {
            return Err(input_err_too_large(rows));
        }
        let started = Instant::now();
        out.fill(0.0);
        self.collect_entries(input, pooling, scratch);
        let direct_bytes = self.config.key_space.map(|r| r * self.row_bytes());
        let misses = if direct_bytes.is_some_and(|b| b <= IN_ORDER_MAX_BYTES) {
            self.gather_in_order(out, scratch)
        } else {
            self.sort_entries_by_shard(scratch);
            self.gather_grouped(out, scratch)
        };
        if pooling == Pooling::Mean {
            for (row, &c) in out.chunks_exact_mut(dim).zip(&scratch.counts) {
                if c > 1 {
                    let inv = 1.0 / c as f32;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
        }
        let keys = scratch.keys.len();
        self.metrics.lookup_keys.fetch_add(keys as u64, Relaxed);
        self.metrics.lookup_batches.fetch_add(1, Relaxed);
        self.metrics.lookup_seconds.observe(started.elapsed());
        if misses > 0 {
            self.metrics.misses.fetch_add(misses as u64, Relaxed);
        }
        Ok(LookupStats { keys, misses })
    }

    /// Copies the row of each key into `out` (`keys.len() * dim` floats), the default row
    /// for missing keys.
    pub fn gather(
        &self,
        keys: &[u64],
        out: &mut [f32],
        scratch: &mut LookupScratch,
    ) -> Result<LookupStats> {
        let input = MultiHot::Padded {
            ids: keys,
            width: 1,
            padding: None,
        };
        self.lookup(&input, Pooling::Sum, out, scratch)
    }

    /// Pass 1: non-padding keys, their hashes, destination rows and shards; sample counts.
    fn collect_entries(&self, input: &MultiHot<'_>, pooling: Pooling, s: &mut LookupScratch) {
        s.keys.clear();
        s.hashes.clear();
        s.dest.clear();
        s.shard.clear();
        s.counts.clear();
        let k_max = match pooling {
            Pooling::Concat { k } => k,
            _ => usize::MAX,
        };
        let push_sample =
            |sample: usize, ids: &[u64], padding: Option<u64>, s: &mut LookupScratch| {
                let mut rank = 0usize;
                for &id in ids {
                    if Some(id) == padding {
                        continue;
                    }
                    if rank == k_max {
                        break;
                    }
                    let (h, shard) = self.route(id);
                    let dest = match pooling {
                        Pooling::Concat { k } => sample * k + rank,
                        _ => sample,
                    };
                    s.keys.push(id);
                    s.hashes.push(h);
                    s.dest.push(dest as u32);
                    s.shard.push(shard as u32);
                    rank += 1;
                }
                s.counts.push(rank as u32);
            };
        match *input {
            MultiHot::Padded {
                ids,
                width,
                padding,
            } => {
                for (i, row) in ids.chunks_exact(width.max(1)).enumerate() {
                    push_sample(i, row, padding, s);
                }
            }
            MultiHot::Ragged {
                values,
                lengths,
                padding,
            } => {
                let mut off = 0;
                for (i, &len) in lengths.iter().enumerate() {
                    push_sample(i, &values[off..off + len as usize], padding, s);
                    off += len as usize;
                }
            }
        }
    }

    /// Pass 2 (hashed tables): counting sort of entry indices by shard.
    fn sort_entries_by_shard(&self, s: &mut LookupScratch) {
        let n_shards = self.shards.len();
        s.starts.clear();
        s.starts.resize(n_shards + 1, 0);
        for &sh in &s.shard {
            s.starts[sh as usize + 1] += 1;
        }
        for i in 1..=n_shards {
            s.starts[i] += s.starts[i - 1];
        }
        s.order.clear();
        s.order.resize(s.keys.len(), 0);
        // Entries are visited in order, so each shard's positions stay ascending.
        s.cursor.clear();
        s.cursor.extend_from_slice(&s.starts[..n_shards]);
        for (e, &sh) in s.shard.iter().enumerate() {
            let c = &mut s.cursor[sh as usize];
            s.order[*c] = e as u32;
            *c += 1;
        }
    }

    /// Direct tables up to [`IN_ORDER_MAX_BYTES`] of rows: every shard's read lock taken once
    /// for the batch, then the entries in input order with software prefetch ahead of them;
    /// no sort pass, and a sample's rows add into the same output row back to back. Returns
    /// the number of misses.
    fn gather_in_order(&self, out: &mut [f32], s: &mut LookupScratch) -> usize {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.gather_in_order_avx2(out, s) };
        }
        self.gather_direct(out, s)
    }

    /// [`Table::gather_in_order`] compiled for AVX2: the row additions run 8 floats wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn gather_in_order_avx2(&self, out: &mut [f32], s: &mut LookupScratch) -> usize {
        self.gather_direct(out, s)
    }

    /// Direct tables in input order: rows are addressed by key alone, so each is prefetched
    /// `DIRECT_AHEAD` entries before it is added, with its presence word.
    #[inline(always)]
    fn gather_direct(&self, out: &mut [f32], s: &mut LookupScratch) -> usize {
        let dim = self.config.dim;
        s.tmp.resize(dim, 0.0);
        let shards: Vec<_> = self.shards.iter().map(|sh| sh.0.read()).collect();
        let (keys, dest, tmp) = (&s.keys, &s.dest, &mut s.tmp);
        let (mask, shift) = (self.shard_mask, self.direct_shift.unwrap_or(0));
        // a hint only: past-the-end slots prefetch nothing useful but never fault
        let prefetch = |k: u64| {
            let shard = &shards[k as usize & mask];
            shard.prefetch_row((k >> shift) as u32);
            // the presence bit: a table of 10M rows has 1.25 MB of them, past L2
            shard.index.prefetch(k);
        };
        let n = keys.len();
        for &k in &keys[..n.min(DIRECT_AHEAD)] {
            prefetch(k);
        }
        let mut misses = 0;
        for e in 0..n {
            if let Some(&k) = keys.get(e + DIRECT_AHEAD) {
                prefetch(k);
            }
            let k = keys[e];
            let shard = &shards[k as usize & mask];
            let d = dest[e] as usize * dim;
            let o = &mut out[d..d + dim];
            match shard.find(k, k) {
                Some(slot) => shard.add_row(slot, o, tmp),
                None => {
                    misses += 1;
                    self.add_default_row(k, o, tmp);
                }
            }
        }
        misses
    }

    /// Adds the default row of a missing `key` to `o` (nothing for zeros).
    #[inline]
    fn add_default_row(&self, key: u64, o: &mut [f32], tmp: &mut [f32]) {
        if let DefaultRow::HashInit { seed, scale } = self.config.default_row {
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = scale * unit_value(seed, key, j);
            }
            add_assign(o, tmp);
        }
    }

    /// Pass 3: per shard, pipelined resolve + accumulate. Returns the number of misses.
    fn gather_grouped(&self, out: &mut [f32], s: &mut LookupScratch) -> usize {
        let dim = self.config.dim;
        s.tmp.resize(dim, 0.0);
        let mut misses = 0;
        for (sh, lock) in self.shards.iter().enumerate() {
            let group = &s.order[s.starts[sh]..s.starts[sh + 1]];
            if group.is_empty() {
                continue;
            }
            let shard = lock.0.read();
            let (keys, hashes, dest) = (&s.keys, &s.hashes, &s.dest);
            let tmp = &mut s.tmp;
            let resolve = |chunk: &[u32], slots: &mut [u32; CHUNK]| {
                for (slot, &e) in slots.iter_mut().zip(chunk) {
                    let e = e as usize;
                    *slot = match shard.find(keys[e], hashes[e]) {
                        Some(x) => {
                            shard.prefetch_row(x);
                            x
                        }
                        None => MISS,
                    };
                }
            };
            let prefetch_buckets = |chunk: &[u32]| {
                for &e in chunk {
                    shard.index.prefetch(hashes[e as usize]);
                }
            };
            // Software pipeline over chunks of CHUNK keys: the index buckets of chunk
            // i + ROW_AHEAD + BUCKET_AHEAD are prefetched, chunk i + ROW_AHEAD is resolved
            // (its rows prefetched), and chunk i is accumulated, so each miss has several
            // chunks of work to arrive in.
            let n = group.len();
            let nchunks = n.div_ceil(CHUNK);
            let chunk = |i: usize| &group[i * CHUNK..((i + 1) * CHUNK).min(n)];
            let mut ring = [[MISS; CHUNK]; ROW_AHEAD + 1];
            for i in 0..nchunks.min(ROW_AHEAD + BUCKET_AHEAD) {
                prefetch_buckets(chunk(i));
            }
            for i in 0..nchunks.min(ROW_AHEAD) {
                resolve(chunk(i), &mut ring[i % (ROW_AHEAD + 1)]);
            }
            for i in 0..nchunks {
                if i + ROW_AHEAD + BUCKET_AHEAD < nchunks {
                    prefetch_buckets(chunk(i + ROW_AHEAD + BUCKET_AHEAD));
                }
                if i + ROW_AHEAD < nchunks {
                    resolve(
                        chunk(i + ROW_AHEAD),
                        &mut ring[(i + ROW_AHEAD) % (ROW_AHEAD + 1)],
                    );
                }
                let cur = &ring[i % (ROW_AHEAD + 1)];
                for (&slot, &e) in cur.iter().zip(chunk(i)) {
                    let e = e as usize;
                    let d = dest[e] as usize * dim;
                    let o = &mut out[d..d + dim];
                    if slot != MISS {
                        shard.add_row(slot, o, tmp);
                    } else {
                        misses += 1;
                        self.add_default_row(keys[e], o, tmp);
                    }
                }
            }
        }
        misses
    }

    /// The default row of `key` (what a lookup of a missing key yields).
    pub fn default_row(&self, key: u64) -> Vec<f32> {
        let dim = self.config.dim;
        match self.config.default_row {
            DefaultRow::Zeros => vec![0.0; dim],
            DefaultRow::HashInit { seed, scale } => {
                (0..dim).map(|j| scale * unit_value(seed, key, j)).collect()
            }
        }
    }
}

fn input_err_too_large(rows: usize) -> EmbedError {
    input(&format!("batch of {rows} rows is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;

    /// Direct tables over `IN_ORDER_MAX_BYTES` take the per-shard pass; tables that large are
    /// for benchmarks, so both passes are compared here on a small one. Integer-valued rows make
    /// every sum exact, so the different summation orders must agree exactly.
    #[test]
    fn direct_tables_give_the_same_sums_in_either_pass() {
        let mut c = TableConfig::new("t", 8);
        c.shards = 8;
        c.key_space = Some(1000);
        let t = Table::new(c).unwrap();
        let keys: Vec<u64> = (0..1000).filter(|k| k % 7 != 0).collect();
        let values: Vec<f32> = keys
            .iter()
            .flat_map(|&k| (0..8).map(move |j| ((k * 31 + j) % 17) as f32 - 8.0))
            .collect();
        t.upsert(&keys, &values, None).unwrap();
        let mut x = 5u64;
        let ids: Vec<u64> = (0..64 * 20)
            .map(|_| {
                x = crate::hash::mix64(x + 1);
                match x % 10 {
                    0 => u64::MAX,
                    1 => 1000 + x % 50,
                    _ => x % 1000,
                }
            })
            .collect();
        let input = MultiHot::Padded {
            ids: &ids,
            width: 20,
            padding: Some(u64::MAX),
        };
        for pooling in [Pooling::Sum, Pooling::Concat { k: 4 }] {
            let n = 64 * pooling.output_width(8);
            let mut s = LookupScratch::default();
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            t.collect_entries(&input, pooling, &mut s);
            let misses_a = t.gather_in_order(&mut a, &mut s);
            t.sort_entries_by_shard(&mut s);
            let misses_b = t.gather_grouped(&mut b, &mut s);
            assert_eq!(misses_a, misses_b);
            assert!(misses_a > 0);
            assert_eq!(a, b, "{pooling:?}");
        }
    }
}
