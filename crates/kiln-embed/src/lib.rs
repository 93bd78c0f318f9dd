//! Kiln's embedding store: u64 key -> fixed-dim row tables for recommendation models, read
//! by serving threads while an online trainer's deltas update them.
//!
//! ```
//! use kiln_embed::{Delta, LookupScratch, MultiHot, Pooling, Table, TableConfig};
//!
//! let table = Table::new(TableConfig::new("user_id", 4))?;
//! // Rows arrive as sequenced deltas from a trainer.
//! table.apply(&Delta {
//!     source: "trainer-0".into(),
//!     seq: 1,
//!     dim: 4,
//!     keys: vec![10, 11],
//!     values: vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0],
//!     ..Default::default()
//! })?;
//! // Two samples of up to three ids, u64::MAX (an INT64 -1) as padding, sum pooling.
//! let ids = [10, 11, u64::MAX, 11, 99, u64::MAX];
//! let mut out = vec![0.0; 2 * 4];
//! let mut scratch = LookupScratch::default();
//! let input = MultiHot::Padded { ids: &ids, width: 3, padding: Some(u64::MAX) };
//! let stats = table.lookup(&input, Pooling::Sum, &mut out, &mut scratch)?;
//! assert_eq!(out, [3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0]);
//! assert_eq!((stats.keys, stats.misses), (4, 1)); // key 99 is missing: zeros
//! # Ok::<(), kiln_embed::EmbedError>(())
//! ```
//!
//! # Layout and locking
//!
//! A [`Table`] is split into a power-of-two number of shards (64 by default) chosen by high
//! bits of a mixed key hash. Each shard is a `parking_lot::RwLock` around an open-addressing
//! key index (16-byte buckets, linear probing, load factor at most 1/2) and slot-addressed row
//! storage (one contiguous `Vec` of f32 or f16). Shard locks are padded to their own cache
//! lines.
//!
//! Why per-shard reader-writer locks rather than a seqlock per row: a seqlock makes readers
//! lock-free, but the index itself still changes under inserts, removals and growth, and
//! reading it concurrently without a lock needs epoch-based reclamation; the reader-writer
//! lock gives the same guarantee (no torn rows: a row is written and read only under its
//! shard's lock) with safe code, and a lookup takes each shard's read lock once per batch,
//! not once per key, so the lock cost is amortized over the keys of a batch. Readers never
//! wait on a table-wide lock; they wait only while a writer holds the one shard they need,
//! which lasts for that shard's part of one delta. Writers are serialized by a separate
//! mutex that readers never take.
//!
//! # Direct layout
//!
//! With [`TableConfig::key_space`] `= Some(R)` keys are row numbers in `0..R` (ids already
//! bucketized into the table, as PyTorch's `EmbeddingBag` expects): key `k` lives at slot
//! `k / shards` of shard `k % shards`, in one zeroed mapping per table that is aligned to 2 MiB
//! and advised for transparent huge pages before first touch. A lookup needs no hash probe,
//! only a presence bit and the row; up to 512 MB of rows a batch is read in input order under
//! all shard read locks at once, larger tables use the per-shard pipeline below for its TLB
//! locality. Writes outside `0..R` are refused ([`EmbedError::KeyOutOfRange`]); a memory cap
//! is refused (the memory is fixed by `R`).
//!
//! # Lookups
//!
//! [`Table::lookup`] pools multi-hot inputs ([`MultiHot`]: `[N, K]` ids with a padding id,
//! or values + lengths) with [`Pooling::Sum`], [`Pooling::Mean`] or [`Pooling::Concat`]
//! into a caller-provided buffer, using caller-provided [`LookupScratch`]: keys are grouped
//! by shard and resolved in a software pipeline that prefetches index buckets and rows (see
//! the `lookup` module). Missing keys yield the table's [`DefaultRow`] (zeros or a
//! deterministic hash-seeded init) and are counted as misses; lookups never insert.
//!
//! # Growth, admission and eviction
//!
//! Rows enter only through writes: [`Table::apply`] (deltas, on servers) and
//! [`Table::upsert`] (the trainer), which can take an [`AdmissionFilter`] (count-min sketch
//! with a minimum count) so one-off keys get no row. [`Table::maintain`] removes rows whose
//! last update is older than the TTL. When a write takes the table over its memory cap, the
//! least recently *updated* rows are evicted until the table is at 80% of the cap.
//!
//! Why LRU by last update rather than LFU or LRU by read: on a server, rows change only
//! through the trainer's deltas, and the trainer updates exactly the rows of keys present in
//! recent traffic, so the last update time is a good recency signal; tracking reads instead
//! would put a shared write (an access timestamp or a frequency counter) on every key of the
//! read path, costing a cache-line write per key and contention between serving threads. LFU
//! also needs aging to forget formerly popular keys, which update recency gets for free, and
//! the same timestamp drives the TTL. Each write gets a unique tick, so the order is exact.
//!
//! With [`TableConfig::journal_evictions`] the evicted keys are kept for
//! [`Table::drain_evicted`], so a trainer publishes them as tombstones and servers drop the
//! same rows.
//!
//! # Deltas
//!
//! A [`Delta`] (source, sequence number, rows, tombstones) is applied with [`Table::apply`]
//! while lookups run. Per source, sequence numbers start at 1 and increase by one: a replay
//! or duplicate is ignored ([`ApplyOutcome::Duplicate`]), a gap is refused with
//! [`EmbedError::SequenceGap`] or applied and reported ([`GapPolicy`]). [`Delta::encode`] /
//! [`Delta::decode`] give the binary form documented in the `delta` module.
//!
//! # Snapshots
//!
//! [`Table::snapshot_to`] writes a consistent snapshot (rows plus each source's last
//! sequence number) in the checksummed format documented in the `snapshot` module;
//! [`Table::restore`] rebuilds a table from it and refuses a damaged file. Only sparse rows
//! live here: a model's dense weights are stored in safetensors files by the model crate,
//! not by this one.
//!
//! # Metrics
//!
//! [`EmbedMetrics`] (atomics, [`EmbedMetrics::snapshot`]) with a Prometheus collector,
//! [`EmbedCollector`]; names are listed in the `metrics` module.

#![warn(missing_docs)]

mod admission;
mod buf;
mod config;
mod delta;
mod error;
mod hash;
mod index;
mod lookup;
mod metrics;
mod serving;
mod shard;
mod snapshot;
mod table;

pub use admission::AdmissionFilter;
pub use config::{
    Clock, DefaultRow, GapPolicy, ManualClock, StorageType, SystemClock, TableConfig,
};
pub use delta::{ApplyOutcome, Delta, SequenceGap};
pub use error::{EmbedError, Result};
pub use hash::mix64;
pub use lookup::{keys_from_i64, LookupScratch, LookupStats, MultiHot, Pooling};
pub use metrics::{
    EmbedCollector, EmbedMetrics, HistogramSnapshot, LatencyHistogram, MetricsSnapshot,
    LATENCY_BUCKETS,
};
pub use serving::decode_delta_for;
pub use snapshot::SnapshotInfo;
pub use table::{MaintainReport, Table, UpsertReport};
