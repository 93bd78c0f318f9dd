//! Prometheus metrics of the cache (`kiln_cache_*`) and the JSON stats built from them.
//!
//! Hot-path handles are cloned out of their families once, so a hit costs a few relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// All metrics of one cache process. Cheap to share (`Arc`) and to update.
#[derive(Debug)]
pub struct Metrics {
    /// The `kiln_cache_*` families, plus collectors the process adds
    /// ([`Metrics::register_collector`]).
    registry: Mutex<Registry>,
    /// Bytes served from the memory tier.
    pub hit_bytes_memory: Counter,
    /// Bytes served from the disk tier.
    pub hit_bytes_disk: Counter,
    /// Bytes that had to be fetched from the remote to answer a read.
    pub miss_bytes: Counter,
    /// Files whose first block was served from the cache.
    pub hit_files: Counter,
    /// Files whose first block had to be fetched.
    pub miss_files: Counter,
    remote_requests: Family<OpLabel, Counter>,
    remote_errors: Family<OpLabel, Counter>,
    remote_seconds: Family<OpLabel, Histogram>,
    remote_read: (Counter, Counter, Histogram),
    remote_read_nanos: AtomicU64,
    /// Remote bytes fetched (reads, warm-up and read-ahead).
    pub remote_bytes: Counter,
    /// Entries evicted from the memory tier.
    pub evictions: Counter,
    tier_bytes: Family<TierLabel, Gauge>,
    /// Cached blocks that failed verification (checksum or unreadable) and were refetched.
    pub corrupt_blocks: Counter,
    /// Cached blocks whose recorded ETag or size no longer matched the metadata.
    pub stale_blocks: Counter,
    /// Reads answered with an error (EIO).
    pub read_errors: Counter,
    /// Reads that hit the read timeout.
    pub read_timeouts: Counter,
    warmup_files: Family<StateLabel, Counter>,
    /// Bytes fetched by warm-up.
    pub warmup_bytes: Counter,
    /// Files the current or last warm-up planned to process.
    pub warmup_planned_files: Gauge,
    /// Files in the metadata cache.
    pub meta_files: Gauge,
    /// Heap bytes of the metadata cache.
    pub meta_heap_bytes: Gauge,
    /// Metadata (re)loads from the remote.
    pub meta_refreshes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tier_hits = Family::<TierLabel, Counter>::default();
        registry.register(
            "kiln_cache_hit_bytes",
            "bytes served from the cache, by tier",
            tier_hits.clone(),
        );
        let miss_bytes = Counter::default();
        registry.register(
            "kiln_cache_miss_bytes",
            "bytes fetched from the remote to answer reads",
            miss_bytes.clone(),
        );
        let hit_files = Counter::default();
        registry.register(
            "kiln_cache_hit_files",
            "files whose first block came from the cache",
            hit_files.clone(),
        );
        let miss_files = Counter::default();
        registry.register(
            "kiln_cache_miss_files",
            "files whose first block came from the remote",
            miss_files.clone(),
        );
        let remote_requests = Family::<OpLabel, Counter>::default();
        registry.register(
            "kiln_cache_remote_requests",
            "requests sent to the remote, by operation",
            remote_requests.clone(),
        );
        let remote_errors = Family::<OpLabel, Counter>::default();
        registry.register(
            "kiln_cache_remote_errors",
            "failed remote requests (after retries), by operation",
            remote_errors.clone(),
        );
        let remote_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "kiln_cache_remote_request_duration_seconds",
            "remote request latency",
            remote_seconds.clone(),
        );
        let remote_bytes = Counter::default();
        registry.register(
            "kiln_cache_remote_read_bytes",
            "bytes read from the remote",
            remote_bytes.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "kiln_cache_evictions",
            "entries evicted from the memory tier",
            evictions.clone(),
        );
        let tier_bytes = Family::<TierLabel, Gauge>::default();
        registry.register(
            "kiln_cache_tier_bytes",
            "bytes held per cache tier (disk: allocated)",
            tier_bytes.clone(),
        );
        let corrupt_blocks = Counter::default();
        registry.register(
            "kiln_cache_corrupt_blocks",
            "cached blocks that failed verification and were refetched",
            corrupt_blocks.clone(),
        );
        let stale_blocks = Counter::default();
        registry.register(
            "kiln_cache_stale_blocks",
            "cached blocks whose etag or size changed and were refetched",
            stale_blocks.clone(),
        );
        let read_errors = Counter::default();
        registry.register(
            "kiln_cache_read_errors",
            "reads answered with an error",
            read_errors.clone(),
        );
        let read_timeouts = Counter::default();
        registry.register(
            "kiln_cache_read_timeouts",
            "reads that exceeded the read timeout",
            read_timeouts.clone(),
        );
        let warmup_files = Family::<StateLabel, Counter>::default();
        registry.register(
            "kiln_cache_warmup_files",
            "warm-up files by outcome (done, failed, skipped)",
            warmup_files.clone(),
        );
        let warmup_bytes = Counter::default();
        registry.register(
            "kiln_cache_warmup_bytes",
            "bytes fetched by warm-up",
            warmup_bytes.clone(),
        );
        let warmup_planned_files = Gauge::default();
        registry.register(
            "kiln_cache_warmup_planned_files",
            "files planned by the current warm-up",
            warmup_planned_files.clone(),
        );
        let meta_files = Gauge::default();
        registry.register(
            "kiln_cache_metadata_files",
            "files in the metadata cache",
            meta_files.clone(),
        );
        let meta_heap_bytes = Gauge::default();
        registry.register(
            "kiln_cache_metadata_heap_bytes",
            "memory held by the metadata cache",
            meta_heap_bytes.clone(),
        );
        let meta_refreshes = Counter::default();
        registry.register(
            "kiln_cache_metadata_refreshes",
            "metadata loads from the remote",
            meta_refreshes.clone(),
        );
        let read = OpLabel { op: "read" };
        let remote_read = (
            remote_requests.get_or_create(&read).clone(),
            remote_errors.get_or_create(&read).clone(),
            remote_seconds.get_or_create(&read).clone(),
        );
        let hit_bytes_memory = tier_hits
            .get_or_create(&TierLabel { tier: "memory" })
            .clone();
        let hit_bytes_disk = tier_hits.get_or_create(&TierLabel { tier: "disk" }).clone();
        Self {
            hit_bytes_memory,
            hit_bytes_disk,
            remote_read_nanos: AtomicU64::new(0),
            registry: Mutex::new(registry),
            miss_bytes,
            hit_files,
            miss_files,
            remote_requests,
            remote_errors,
            remote_seconds,
            remote_read,
            remote_bytes,
            evictions,
            tier_bytes,
            corrupt_blocks,
            stale_blocks,
            read_errors,
            read_timeouts,
            warmup_files,
            warmup_bytes,
            warmup_planned_files,
            meta_files,
            meta_heap_bytes,
            meta_refreshes,
        }
    }

    /// Records one remote request of operation `op` (`read`, `list`, `stat`).
    pub fn observe_remote(&self, op: &'static str, elapsed: Duration, ok: bool) {
        if op == "read" {
            self.remote_read.0.inc();
            if !ok {
                self.remote_read.1.inc();
            }
            self.remote_read.2.observe(elapsed.as_secs_f64());
            self.remote_read_nanos
                .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
            return;
        }
        let l = OpLabel { op };
        self.remote_requests.get_or_create(&l).inc();
        if !ok {
            self.remote_errors.get_or_create(&l).inc();
        }
        self.remote_seconds
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one warm-up file outcome: `done`, `failed` or `skipped`.
    pub fn warmup_file(&self, state: &'static str) {
        self.warmup_files.get_or_create(&StateLabel { state }).inc();
    }

    /// Sets the bytes held by each tier (called before a scrape).
    pub fn set_tier_bytes(&self, memory: u64, disk: u64) {
        self.tier_bytes
            .get_or_create(&TierLabel { tier: "memory" })
            .set(memory as i64);
        self.tier_bytes
            .get_or_create(&TierLabel { tier: "disk" })
            .set(disk as i64);
    }

    /// Adds `collector` to what [`Metrics::encode`] exposes, after the cache's own metrics: the
    /// process that runs the cache adds its own (process metrics, for one).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.lock().register_collector(collector);
    }

    /// OpenMetrics text exposition of every metric, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry.lock());
        s
    }

    /// Remote reads sent so far (tests use it to prove that nothing was fetched).
    pub fn remote_reads(&self) -> u64 {
        self.remote_read.0.get()
    }

    /// A JSON-friendly summary.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |o: &'static str| self.remote_requests.get_or_create(&OpLabel { op: o }).get();
        let ws = |s: &'static str| {
            self.warmup_files
                .get_or_create(&StateLabel { state: s })
                .get()
        };
        let tier = |t: &'static str| {
            self.tier_bytes
                .get_or_create(&TierLabel { tier: t })
                .get()
                .max(0) as u64
        };
        let (n, sum) = (
            self.remote_read.0.get(),
            self.remote_read_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        StatsSnapshot {
            hit_bytes_memory: self.hit_bytes_memory.get(),
            hit_bytes_disk: self.hit_bytes_disk.get(),
            miss_bytes: self.miss_bytes.get(),
            hit_files: self.hit_files.get(),
            miss_files: self.miss_files.get(),
            remote_reads: self.remote_read.0.get(),
            remote_read_errors: self.remote_read.1.get(),
            remote_read_mean_ms: if n == 0 { 0.0 } else { sum * 1000.0 / n as f64 },
            remote_lists: g("list"),
            remote_stats: g("stat"),
            remote_bytes: self.remote_bytes.get(),
            evictions: self.evictions.get(),
            memory_bytes: tier("memory"),
            disk_bytes: tier("disk"),
            corrupt_blocks: self.corrupt_blocks.get(),
            stale_blocks: self.stale_blocks.get(),
            read_errors: self.read_errors.get(),
            read_timeouts: self.read_timeouts.get(),
            warmup_done: ws("done"),
            warmup_failed: ws("failed"),
            warmup_skipped: ws("skipped"),
            warmup_planned: self.warmup_planned_files.get().max(0) as u64,
            warmup_bytes: self.warmup_bytes.get(),
            metadata_files: self.meta_files.get().max(0) as u64,
            metadata_heap_bytes: self.meta_heap_bytes.get().max(0) as u64,
        }
    }
}

/// Counters of a running cache, as `kiln cache stats` prints them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Bytes served from memory.
    pub hit_bytes_memory: u64,
    /// Bytes served from disk.
    pub hit_bytes_disk: u64,
    /// Bytes fetched to answer reads.
    pub miss_bytes: u64,
    /// Files served from the cache (first block).
    pub hit_files: u64,
    /// Files fetched from the remote (first block).
    pub miss_files: u64,
    /// Remote GET requests.
    pub remote_reads: u64,
    /// Failed remote GET requests.
    pub remote_read_errors: u64,
    /// Mean remote GET latency.
    pub remote_read_mean_ms: f64,
    /// Remote list requests.
    pub remote_lists: u64,
    /// Remote stat requests.
    pub remote_stats: u64,
    /// Bytes read from the remote.
    pub remote_bytes: u64,
    /// Memory-tier evictions.
    pub evictions: u64,
    /// Bytes in the memory tier.
    pub memory_bytes: u64,
    /// Bytes allocated by the disk tier.
    pub disk_bytes: u64,
    /// Blocks that failed verification.
    pub corrupt_blocks: u64,
    /// Blocks whose ETag or size changed.
    pub stale_blocks: u64,
    /// Reads answered with EIO.
    pub read_errors: u64,
    /// Reads that timed out.
    pub read_timeouts: u64,
    /// Warm-up files done.
    pub warmup_done: u64,
    /// Warm-up files failed.
    pub warmup_failed: u64,
    /// Warm-up files skipped (already cached).
    pub warmup_skipped: u64,
    /// Warm-up files planned.
    pub warmup_planned: u64,
    /// Warm-up bytes fetched.
    pub warmup_bytes: u64,
    /// Files in the metadata cache.
    pub metadata_files: u64,
    /// Heap bytes of the metadata cache.
    pub metadata_heap_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Debug)]
    struct Answer;

    impl Collector for Answer {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let g = ConstGauge::new(42i64);
            let m = encoder.encode_descriptor(
                "test_answer",
                "an extra family",
                None,
                g.metric_type(),
            )?;
            g.encode(m)
        }
    }

    #[test]
    fn a_registered_collector_is_encoded_before_the_terminator() {
        let m = Metrics::new();
        m.miss_files.inc();
        m.register_collector(Box::new(Answer));
        let text = m.encode();
        assert!(text.contains("\nkiln_cache_miss_files_total 1\n"), "{text}");
        assert!(text.contains("\ntest_answer 42\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
