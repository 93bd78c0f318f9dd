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
        }
    }
}
