//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kiln_embed::{Delta, TableConfig};

/// A deterministic pseudo-random stream (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        kiln_embed::mix64(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A small table config.
pub fn config(dim: usize) -> TableConfig {
    let mut c = TableConfig::new("t", dim);
    c.shards = 8;
    c
}

/// A delta whose every row is filled with `fill(key)`.
pub fn delta(source: &str, seq: u64, dim: usize, keys: &[u64], fill: impl Fn(u64) -> f32) -> Delta {
    Delta {
        source: source.into(),
        table: String::new(),
        seq,
        created_ms: 0,
        dim,
        keys: keys.to_vec(),
        values: keys
            .iter()
            .flat_map(|&k| std::iter::repeat_n(fill(k), dim))
            .collect(),
        tombstones: vec![],
    }
}
