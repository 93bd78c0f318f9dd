//! Admission filter for trainer-side inserts: a count-min sketch with a minimum frequency.
//!
//! Most hashed feature IDs are seen once or twice and never again; giving each a row wastes
//! memory and publishes noise to every server. The trainer counts every key it sees
//! ([`AdmissionFilter::observe`]) and only inserts a new row once the estimated count reaches
//! `min_count`. Keys already in the table are always updated. A count-min sketch never
//! under-counts, so a key that truly reached the threshold is always admitted; collisions
//! can only admit a key early. Counters are atomics, so many trainer threads share one filter,
//! and [`AdmissionFilter::decay`] halves every counter so old popularity fades.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::error::{EmbedError, Result};
use crate::hash::mix64;

/// Count-min sketch of key frequencies plus the admission threshold.
#[derive(Debug)]
pub struct AdmissionFilter {
    counters: Vec<AtomicU32>,
    width_mask: usize,
    depth: usize,
    min_count: u32,
}

impl AdmissionFilter {
    /// A filter with `depth` rows of `width` counters (width rounded up to a power of two),
    /// admitting keys seen at least `min_count` times. Memory: `4 * width * depth` bytes.
    pub fn new(width: usize, depth: usize, min_count: u32) -> Result<Self> {
        if width == 0 || !(1..=16).contains(&depth) {
            return Err(EmbedError::Config(format!(
                "admission filter needs width >= 1 and depth in 1..=16, got {width} x {depth}"
            )));
        }
        let width = width.next_power_of_two();
        let counters = (0..width * depth).map(|_| AtomicU32::new(0)).collect();
        Ok(AdmissionFilter {
            counters,
            width_mask: width - 1,
            depth,
            min_count,
        })
    }

    /// The admission threshold.
    pub fn min_count(&self) -> u32 {
        self.min_count
    }

    #[inline]
    fn cell(&self, row: usize, key: u64) -> &AtomicU32 {
        let h = mix64(key ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        &self.counters[row * (self.width_mask + 1) + (h as usize & self.width_mask)]
    }

    /// Counts one occurrence of `key` (conservative update: only the smallest counters grow)
    /// and returns the new estimate.
    pub fn observe(&self, key: u64) -> u32 {
        let est = self.estimate(key).saturating_add(1);
        for r in 0..self.depth {
            self.cell(r, key).fetch_max(est, Relaxed);
        }
        est
    }

    /// The estimated number of occurrences of `key` (never below the true count since the
    /// last decay).
    pub fn estimate(&self, key: u64) -> u32 {
        (0..self.depth)
            .map(|r| self.cell(r, key).load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Whether a new row for `key` may be inserted.
    pub fn admits(&self, key: u64) -> bool {
        self.estimate(key) >= self.min_count
    }

    /// Halves every counter.
    pub fn decay(&self) {
        for c in &self.counters {
            let v = c.load(Relaxed);
            c.store(v / 2, Relaxed);
        }
    }
}
