//! Table metrics: a struct of atomics, a plain snapshot of it, and a Prometheus collector.
//!
//! Exposed names (every series carries a `table` label):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `kiln_embed_table_rows` | gauge | live rows |
//! | `kiln_embed_table_memory_bytes` | gauge | accounted bytes (rows x row cost) |
//! | `kiln_embed_lookup_keys_total` | counter | non-padding keys looked up |
//! | `kiln_embed_lookup_batches_total` | counter | lookup calls |
//! | `kiln_embed_lookup_duration_seconds` | histogram | time of one lookup call (a batch of keys) |
//! | `kiln_embed_lookup_misses_total` | counter | default rows served for missing keys |
//! | `kiln_embed_evicted_rows_total{reason}` | counter | rows evicted, `reason` = `ttl` or `cap` |
//! | `kiln_embed_admission_rejected_rows_total` | counter | new rows refused by the admission filter |
//! | `kiln_embed_deltas_applied_total` | counter | deltas applied |
//! | `kiln_embed_deltas_rejected_total{reason}` | counter | `duplicate`, `gap` or `invalid` |
//! | `kiln_embed_delta_rows_applied_total` | counter | rows written by deltas |
//! | `kiln_embed_delta_tombstones_applied_total` | counter | tombstones that removed a row |
//! | `kiln_embed_delta_last_sequence` | gauge | sequence number of the last applied delta |
//! | `kiln_embed_delta_lag_seconds` | gauge | apply time minus the delta's creation time, last delta |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Live counters and gauges of one table; every field is updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct EmbedMetrics {
    /// Table name (the `table` label).
    pub table: String,
    /// Live rows.
    pub rows: AtomicU64,
    /// Accounted bytes.
    pub bytes: AtomicU64,
    /// Non-padding keys looked up.
    pub lookup_keys: AtomicU64,
    /// Lookup calls.
    pub lookup_batches: AtomicU64,
    /// Default rows served for missing keys.
    pub misses: AtomicU64,
    /// Rows evicted because their last update was older than the TTL.
    pub evicted_ttl: AtomicU64,
    /// Rows evicted to get back under the memory cap.
    pub evicted_cap: AtomicU64,
    /// New rows refused by the admission filter.
    pub admission_rejected: AtomicU64,
    /// Deltas applied.
    pub deltas_applied: AtomicU64,
    /// Deltas ignored as replays or duplicates.
    pub deltas_duplicate: AtomicU64,
    /// Deltas refused because of a sequence gap.
    pub deltas_gap: AtomicU64,
    /// Deltas refused as invalid (wrong dim, ...).
    pub deltas_invalid: AtomicU64,
    /// Rows written by deltas.
    pub delta_rows: AtomicU64,
    /// Tombstones that removed a row.
    pub delta_tombstones: AtomicU64,
    /// Sequence number of the last applied delta.
    pub last_sequence: AtomicU64,
    /// Lag of the last applied delta in seconds, as `f64::to_bits`.
    pub lag_seconds_bits: AtomicU64,
    /// Durations of lookup calls.
    pub lookup_seconds: LatencyHistogram,
}

/// Upper bounds, in seconds, of [`LatencyHistogram`]'s buckets (a last one is unbounded).
pub const LATENCY_BUCKETS: [f64; 14] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3,
];

/// A fixed-bucket latency histogram on relaxed atomics: one increment per observation, no lock
/// on the lookup path (prometheus-client's `Histogram` takes a mutex per observation).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is the unbounded bucket) and the sum in
    /// seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 * 1e-9,
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`LATENCY_BUCKETS`], then the unbounded bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A point-in-time copy of [`EmbedMetrics`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Live rows.
    pub rows: u64,
    /// Accounted bytes.
    pub bytes: u64,
    /// Non-padding keys looked up.
    pub lookup_keys: u64,
    /// Lookup calls.
    pub lookup_batches: u64,
    /// Default rows served for missing keys.
    pub misses: u64,
    /// Rows evicted by TTL.
    pub evicted_ttl: u64,
    /// Rows evicted by the memory cap.
    pub evicted_cap: u64,
    /// New rows refused by the admission filter.
    pub admission_rejected: u64,
    /// Deltas applied.
    pub deltas_applied: u64,
    /// Deltas ignored as duplicates.
    pub deltas_duplicate: u64,
    /// Deltas refused for a gap.
    pub deltas_gap: u64,
    /// Deltas refused as invalid.
    pub deltas_invalid: u64,
    /// Rows written by deltas.
    pub delta_rows: u64,
    /// Tombstones that removed a row.
    pub delta_tombstones: u64,
    /// Sequence number of the last applied delta.
    pub last_sequence: u64,
    /// Lag of the last applied delta, seconds.
    pub lag_seconds: f64,
    /// Durations of lookup calls.
    pub lookup_seconds: HistogramSnapshot,
}

impl MetricsSnapshot {
    /// All rejected deltas (duplicate + gap + invalid).
    pub fn deltas_rejected(&self) -> u64 {
        self.deltas_duplicate + self.deltas_gap + self.deltas_invalid
    }
}

impl EmbedMetrics {
    /// Zeroed metrics for `table`.
    pub fn new(table: impl Into<String>) -> Self {
        EmbedMetrics {
            table: table.into(),
            ..Default::default()
        }
    }

    /// Reads every field.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            rows: self.rows.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            lookup_keys: self.lookup_keys.load(Relaxed),
            lookup_batches: self.lookup_batches.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evicted_ttl: self.evicted_ttl.load(Relaxed),
            evicted_cap: self.evicted_cap.load(Relaxed),
            admission_rejected: self.admission_rejected.load(Relaxed),
            deltas_applied: self.deltas_applied.load(Relaxed),
            deltas_duplicate: self.deltas_duplicate.load(Relaxed),
            deltas_gap: self.deltas_gap.load(Relaxed),
            deltas_invalid: self.deltas_invalid.load(Relaxed),
            delta_rows: self.delta_rows.load(Relaxed),
            delta_tombstones: self.delta_tombstones.load(Relaxed),
            last_sequence: self.last_sequence.load(Relaxed),
            lag_seconds: f64::from_bits(self.lag_seconds_bits.load(Relaxed)),
            lookup_seconds: self.lookup_seconds.snapshot(),
        }
    }

    /// Registers a collector for this table alone. To expose several tables, use one
    /// [`EmbedCollector`] (one registration, many tables) so each name is described once.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let c = EmbedCollector::default();
        c.add(self.clone());
        c.register(registry);
    }
}

/// A Prometheus collector over a changing set of tables (models load and unload).
#[derive(Clone, Debug, Default)]
pub struct EmbedCollector {
    tables: Arc<RwLock<Vec<Arc<EmbedMetrics>>>>,
}

impl EmbedCollector {
    /// Adds a table, replacing one of the same name.
    pub fn add(&self, metrics: Arc<EmbedMetrics>) {
        let mut t = self.tables.write();
        t.retain(|m| m.table != metrics.table);
        t.push(metrics);
    }

    /// Removes a table by name.
    pub fn remove(&self, table: &str) {
        self.tables.write().retain(|m| m.table != table);
    }

    /// Registers this collector (once per registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }
}

type Reader = fn(&MetricsSnapshot) -> u64;
/// Name, help, optional extra label, and the value.
type CounterDef = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    Reader,
);

const COUNTERS: &[CounterDef] = &[
    (
        "kiln_embed_lookup_keys",
        "Non-padding keys looked up",
        None,
        |s| s.lookup_keys,
    ),
    ("kiln_embed_lookup_batches", "Lookup calls", None, |s| {
        s.lookup_batches
    }),
    (
        "kiln_embed_lookup_misses",
        "Default rows served for missing keys",
        None,
        |s| s.misses,
    ),
    (
        "kiln_embed_evicted_rows",
        "Rows evicted",
        Some(("reason", "ttl")),
        |s| s.evicted_ttl,
    ),
    (
        "kiln_embed_evicted_rows",
        "Rows evicted",
        Some(("reason", "cap")),
        |s| s.evicted_cap,
    ),
    (
        "kiln_embed_admission_rejected_rows",
        "New rows refused by the admission filter",
        None,
        |s| s.admission_rejected,
    ),
    ("kiln_embed_deltas_applied", "Deltas applied", None, |s| {
        s.deltas_applied
    }),
    (
        "kiln_embed_deltas_rejected",
        "Deltas refused",
        Some(("reason", "duplicate")),
        |s| s.deltas_duplicate,
    ),
    (
        "kiln_embed_deltas_rejected",
        "Deltas refused",
        Some(("reason", "gap")),
        |s| s.deltas_gap,
    ),
    (
        "kiln_embed_deltas_rejected",
        "Deltas refused",
        Some(("reason", "invalid")),
        |s| s.deltas_invalid,
    ),
    (
        "kiln_embed_delta_rows_applied",
        "Rows written by deltas",
        None,
        |s| s.delta_rows,
    ),
    (
        "kiln_embed_delta_tombstones_applied",
        "Tombstones that removed a row",
        None,
        |s| s.delta_tombstones,
    ),
];

const GAUGES: &[(&str, &str, Reader)] = &[
    ("kiln_embed_table_rows", "Live rows", |s| s.rows),
    (
        "kiln_embed_table_memory_bytes",
        "Accounted bytes of the table",
        |s| s.bytes,
    ),
    (
        "kiln_embed_delta_last_sequence",
        "Sequence number of the last applied delta",
        |s| s.last_sequence,
    ),
];

impl Collector for EmbedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps: Vec<(String, MetricsSnapshot)> = self
            .tables
            .read()
            .iter()
            .map(|m| (m.table.clone(), m.snapshot()))
            .collect();
        if snaps.is_empty() {
            return Ok(());
        }
        let mut i = 0;
        while i < COUNTERS.len() {
            let (name, help, _, _) = COUNTERS[i];
            let mut j = i;
            while j < COUNTERS.len() && COUNTERS[j].0 == name {
                j += 1;
            }
            let probe = ConstCounter::new(0u64);
            let mut me = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (table, s) in &snaps {
                for &(_, _, label, read) in &COUNTERS[i..j] {
                    let c = ConstCounter::new(read(s));
                    match label {
                        Some((k, v)) => {
                            c.encode(me.encode_family(&[("table", table.as_str()), (k, v)])?)?
                        }
                        None => c.encode(me.encode_family(&[("table", table.as_str())])?)?,
                    }
                }
            }
            i = j;
        }
        for &(name, help, read) in GAUGES {
            let probe = ConstGauge::new(0i64);
            let mut me = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (table, s) in &snaps {
                ConstGauge::new(read(s) as i64)
                    .encode(me.encode_family(&[("table", table.as_str())])?)?;
            }
        }
        let probe = ConstGauge::new(0f64);
        let help = "Apply time minus creation time of the last applied delta, seconds";
        let mut me = encoder.encode_descriptor(
            "kiln_embed_delta_lag_seconds",
            help,
            None,
            probe.metric_type(),
        )?;
        for (table, s) in &snaps {
            ConstGauge::new(s.lag_seconds)
                .encode(me.encode_family(&[("table", table.as_str())])?)?;
        }
        let mut me = encoder.encode_descriptor(
            "kiln_embed_lookup_duration_seconds",
            "Time of one lookup call (a batch of keys, pooled)",
            None,
            MetricType::Histogram,
        )?;
        for (table, s) in &snaps {
            s.lookup_seconds
                .encode(me.encode_family(&[("table", table.as_str())])?)?;
        }
        Ok(())
    }
}
