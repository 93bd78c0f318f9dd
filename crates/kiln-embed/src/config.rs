//! Table configuration and the clock the table reads time from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{EmbedError, Result};

/// How rows are stored in memory. Lookups always produce f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    /// 4 bytes per element.
    F32,
    /// IEEE half precision, 2 bytes per element; values are rounded on write.
    F16,
}

impl StorageType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageType::F32 => 4,
            StorageType::F16 => 2,
        }
    }

    /// The code used in the snapshot and delta formats.
    pub(crate) fn code(self) -> u8 {
        match self {
            StorageType::F32 => 0,
            StorageType::F16 => 1,
        }
    }

    /// The storage type of a format code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(StorageType::F32),
            1 => Some(StorageType::F16),
            _ => None,
        }
    }
}

/// The row a lookup of a missing key yields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultRow {
    /// All zeros (a missing key adds nothing to a sum).
    Zeros,
    /// Element `j` of key `k` is `scale * u(seed, k, j)` with `u` uniform in [-1, 1), a pure
    /// function of its inputs, so every replica serves the same row for the same unseen key.
    HashInit {
        /// Seed mixed into every value.
        seed: u64,
        /// Half-width of the uniform range.
        scale: f32,
    },
}

/// What [`crate::Table::apply`] does with a delta whose sequence number skips ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapPolicy {
    /// Refuse it with [`EmbedError::SequenceGap`]; the table is unchanged and the caller
    /// resends the missing deltas or restores a snapshot.
    Reject,
    /// Apply it and report the gap in [`crate::ApplyOutcome::Applied`].
    ApplyAndReport,
}

/// A table's settings.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// Name, used in errors, logs and the `table` metric label.
    pub name: String,
    /// Elements per row.
    pub dim: usize,
    /// In-memory element type.
    pub storage: StorageType,
    /// Number of shards, a power of two in 1..=4096.
    pub shards: usize,
    /// Rows to reserve room for at creation (spread over the shards).
    pub initial_rows: usize,
    /// Direct layout: keys are row numbers in `0..key_space` (ids already bucketized into
    /// the table, as in a DLRM trained with `id % rows`). Rows live at fixed positions
    /// (shard `key % shards`, slot `key / shards`) allocated up front, so a lookup needs no
    /// hash probe: one presence bit and the row. Writes of keys outside the range are
    /// refused; lookups of them get the default row. `None`: hashed layout, any u64 key.
    pub key_space: Option<u64>,
    /// What a missing key yields.
    pub default_row: DefaultRow,
    /// Rows whose last update is older than this are removed by [`crate::Table::maintain`].
    pub ttl: Option<Duration>,
    /// Memory cap in accounted bytes ([`crate::Table::row_cost_bytes`] per row). When an
    /// insert crosses it, the least recently updated rows are evicted down to
    /// [`TableConfig::evict_to`] of the cap.
    pub memory_cap_bytes: Option<u64>,
    /// Fraction of the cap kept after a cap eviction (0.8: evict to 80%).
    pub evict_to: f64,
    /// Sequence-gap handling for deltas.
    pub gap_policy: GapPolicy,
    /// Record the keys of evicted rows so a trainer can publish them as tombstones
    /// ([`crate::Table::drain_evicted`]).
    pub journal_evictions: bool,
    /// Accept deltas whose values are NaN or infinite (or overflow the storage type). Off by
    /// default: such a row poisons every pooled output that reads it, invisibly, so
    /// [`crate::Table::apply`] refuses the delta naming the table and key.
    pub allow_non_finite: bool,
}

impl TableConfig {
    /// A config with defaults: f32, 64 shards, zero default rows, no TTL, no cap, gaps rejected.
    pub fn new(name: impl Into<String>, dim: usize) -> Self {
        TableConfig {
            name: name.into(),
            dim,
            storage: StorageType::F32,
            shards: 64,
            initial_rows: 0,
            key_space: None,
            default_row: DefaultRow::Zeros,
            ttl: None,
            memory_cap_bytes: None,
            evict_to: 0.8,
            gap_policy: GapPolicy::Reject,
            journal_evictions: false,
            allow_non_finite: false,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EmbedError::Config(format!("table {}: {m}", self.name)));
        if self.dim == 0 || self.dim > 1 << 20 {
            return bad(format!("dim must be in 1..=1048576, got {}", self.dim));
        }
        if !self.shards.is_power_of_two() || self.shards > 4096 {
            return bad(format!(
                "shards must be a power of two up to 4096, got {}",
                self.shards
            ));
        }
        if let Some(r) = self.key_space {
            if r == 0 {
                return bad("key_space must be at least 1".into());
            }
            if r.div_ceil(self.shards as u64) >= u32::MAX as u64 {
                return bad(format!(
                    "key_space {r} needs more than 2^32 - 1 rows per shard; use more shards"
                ));
            }
            if self.memory_cap_bytes.is_some() {
                return bad(
                    "a memory cap needs the hashed layout: a direct table's memory is fixed by its key space"
                        .into(),
                );
            }
        }
        if !(self.evict_to > 0.0 && self.evict_to < 1.0) {
            return bad(format!("evict_to must be in (0, 1), got {}", self.evict_to));
        }
        if let DefaultRow::HashInit { scale, .. } = self.default_row {
            if !scale.is_finite() {
                return bad("default row scale must be finite".into());
            }
        }
        Ok(())
    }
}

/// Wall-clock time source, replaceable in tests (TTL and lag depend on it).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the time.
    pub fn set_ms(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
