//! Triton-style cumulative statistics of one model version, as `GET .../stats` and the
//! ModelStatistics RPC report them.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a cumulative duration.
#[derive(Debug, Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    /// Adds one occurrence lasting `d`.
    pub fn add(&self, d: Duration) {
        self.add_n(1, d);
    }
    /// Adds `n` occurrences lasting `d` in all.
    pub fn add_n(&self, n: u64, d: Duration) {
        self.count.fetch_add(n, Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// The current (count, nanoseconds).
    pub fn get(&self) -> CountNs {
        CountNs {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

/// A snapshot of a [`DurationStat`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountNs {
    /// Occurrences.
    pub count: u64,
    /// Cumulative nanoseconds.
    pub ns: u64,
}

/// Live statistics of one version.
#[derive(Debug, Default)]
pub struct VersionStats {
    /// Rows computed (Triton's `inference_count`).
    pub inference_count: AtomicU64,
    /// Batches executed.
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last answered request.
    pub last_inference_ms: AtomicU64,
    /// Successful requests and their total time.
    pub success: DurationStat,
    /// Failed requests and their total time.
    pub fail: DurationStat,
    /// Queue time of requests that were computed.
    pub queue: DurationStat,
    /// Time spent assembling batch inputs.
    pub compute_input: DurationStat,
    /// Backend execution time.
    pub compute_infer: DurationStat,
    /// Time spent splitting outputs back per request.
    pub compute_output: DurationStat,
    /// Per batch size: executions and their input / infer / output times.
    pub batches: Mutex<BTreeMap<u64, BatchStat>>,
    /// Requests answered from the response cache, and the time their lookups took.
    pub cache_hit: DurationStat,
    /// Requests the response cache did not have, and the time their lookups and insertions
    /// took.
    pub cache_miss: DurationStat,
    /// Request latencies (successful and failed), for windowed percentiles (canary rollback).
    pub latency: LatencyHistogram,
}

/// Number of [`LatencyHistogram`] buckets: bucket `i` holds latencies below
/// `2^(i/4)` microseconds (four buckets per doubling, the last open-ended), about 19%
/// resolution from 1 us to past an hour.
pub const LATENCY_BUCKETS: usize = 128;

/// A lock-free cumulative latency histogram with log-spaced buckets; two snapshots subtract
/// to the histogram of the interval between them.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    /// The bucket of a latency.
    pub fn bucket_of(d: Duration) -> usize {
        let us = d.as_secs_f64() * 1e6;
        if us < 1.0 {
            return 0;
        }
        ((us.log2() * 4.0).floor() as usize + 1).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of bucket `i`.
    pub fn upper_bound(i: usize) -> Duration {
        Duration::from_secs_f64(2f64.powf(i as f64 / 4.0) * 1e-6)
    }

    /// Counts one latency.
    pub fn record(&self, d: Duration) {
        self.buckets[Self::bucket_of(d)].fetch_add(1, Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// The `q` quantile (0..=1) of a histogram given by its counts (a snapshot, or the
    /// difference of two): the upper bound of the bucket holding it; `None` when empty.
    pub fn quantile(counts: &[u64], q: f64) -> Option<Duration> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_bound(i));
            }
        }
        Some(Self::upper_bound(counts.len() - 1))
    }
}

/// Statistics of the batches of one size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStat {
    /// Input assembly.
    pub compute_input: CountNs,
    /// Backend execution.
    pub compute_infer: CountNs,
    /// Output splitting.
    pub compute_output: CountNs,
}

/// A point-in-time copy of [`VersionStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Rows computed.
    pub inference_count: u64,
    /// Batches executed.
    pub execution_count: u64,
    /// Milliseconds since the epoch of the last answered request.
    pub last_inference_ms: u64,
    /// Successful requests.
    pub success: CountNs,
    /// Failed requests.
    pub fail: CountNs,
    /// Queue time.
    pub queue: CountNs,
    /// Input assembly.
    pub compute_input: CountNs,
    /// Backend execution.
    pub compute_infer: CountNs,
    /// Output splitting.
    pub compute_output: CountNs,
    /// Per batch size.
    pub batches: Vec<(u64, BatchStat)>,
    /// Response cache hits.
    pub cache_hit: CountNs,
    /// Response cache misses.
    pub cache_miss: CountNs,
}

impl VersionStats {
    /// Records one executed batch of `rows` rows.
    pub fn record_batch(&self, rows: u64, input: Duration, infer: Duration, output: Duration) {
        self.inference_count.fetch_add(rows, Relaxed);
        self.execution_count.fetch_add(1, Relaxed);
        self.compute_input.add(input);
        self.compute_infer.add(infer);
        self.compute_output.add(output);
        let mut b = self.batches.lock();
        let e = b.entry(rows).or_default();
        for (s, d) in [
            (&mut e.compute_input, input),
            (&mut e.compute_infer, infer),
            (&mut e.compute_output, output),
        ] {
            s.count += 1;
            s.ns += d.as_nanos() as u64;
        }
    }

    /// Records the end of a request.
    pub fn record_request(&self, ok: bool, total: Duration) {
        if ok {
            self.success.add(total);
        } else {
            self.fail.add(total);
        }
        self.latency.record(total);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_inference_ms.store(now, Relaxed);
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            last_inference_ms: self.last_inference_ms.load(Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: self.batches.lock().iter().map(|(k, v)| (*k, *v)).collect(),
            cache_hit: self.cache_hit.get(),
            cache_miss: self.cache_miss.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_the_buckets() {
        let h = LatencyHistogram::default();
        for _ in 0..99 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        let counts = h.snapshot();
        let p50 = LatencyHistogram::quantile(&counts, 0.5).unwrap();
        let p99 = LatencyHistogram::quantile(&counts, 0.99).unwrap();
        let p100 = LatencyHistogram::quantile(&counts, 1.0).unwrap();
        assert!(
            p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(120),
            "{p50:?}"
        );
        assert_eq!(p99, p50);
        assert!(
            p100 >= Duration::from_millis(50) && p100 < Duration::from_millis(60),
            "{p100:?}"
        );
        assert_eq!(LatencyHistogram::quantile(&[0; 4], 0.5), None);
        assert_eq!(
            LatencyHistogram::bucket_of(Duration::from_secs(100_000)),
            LATENCY_BUCKETS - 1
        );
    }
}
