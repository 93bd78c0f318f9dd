//! Sequenced deltas: rows and tombstones from one source, their binary encoding, and
//! [`Table::apply`].
//!
//! # Binary format, version 1 (all integers little-endian)
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `KEDL` |
//! | 4 | 2 | format version, 1 |
//! | 6 | 1 | value type: 0 = f32, 1 = f16 (IEEE half) |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 4 | `dim`: elements per row |
//! | 12 | 8 | `seq`: sequence number (from 1, per source) |
//! | 20 | 8 | `created_ms`: creation time, ms since the Unix epoch (0 = unknown) |
//! | 28 | 4 | `n`: rows |
//! | 32 | 4 | `t`: tombstones |
//! | 36 | 2 | `s`: source name length |
//! | 38 | s | source name, UTF-8 |
//! | 38 + s | 2 | `u`: table name length (0 = not named) |
//! | 40 + s | u | table name, UTF-8 |
//! | | 8n | row keys (u64) |
//! | | n x dim x 4 or 2 | row values, row-major |
//! | | 8t | tombstone keys (u64) |
//! | | 4 | CRC-32 (IEEE) of every preceding byte |

use std::sync::atomic::Ordering::Relaxed;

use half::f16;

use crate::config::{GapPolicy, StorageType};
use crate::error::{EmbedError, Result};
use crate::table::Table;

const MAGIC: &[u8; 4] = b"KEDL";
const VERSION: u16 = 1;
/// Fixed header bytes plus the two name lengths.
const HEADER: usize = 40;

/// A batch of row writes and removals from one source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Who produced it (a trainer instance); sequence numbers are per source.
    pub source: String,
    /// The table it is for; empty when the caller routes deltas by other means. A named
    /// delta is refused by a table of another name.
    pub table: String,
    /// Sequence number, from 1, increasing by one per delta of this source.
    pub seq: u64,
    /// Creation time in ms since the Unix epoch, for the lag metric; 0 when unknown.
    pub created_ms: u64,
    /// Elements per row; must equal the table's dim.
    pub dim: usize,
    /// Keys of the rows written.
    pub keys: Vec<u64>,
    /// Row values, `keys.len() * dim`, row-major.
    pub values: Vec<f32>,
    /// Keys to remove. Applied before the rows; a publisher should not list a key in both.
    pub tombstones: Vec<u64>,
}

/// A sequence number that skipped ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceGap {
    /// The sequence number that was due.
    pub expected: u64,
    /// The one received.
    pub got: u64,
}

/// What [`Table::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The delta was applied.
    Applied {
        /// Rows written.
        rows: usize,
        /// Of those, rows that were new.
        inserted: usize,
        /// Tombstones that removed a row.
        removed: usize,
        /// Rows evicted because the delta crossed the memory cap.
        evicted: usize,
        /// Set when the delta skipped sequence numbers (with [`GapPolicy::ApplyAndReport`]).
        gap: Option<SequenceGap>,
    },
    /// The sequence number was already applied; nothing changed.
    Duplicate {
        /// The source's last applied sequence number.
        last_applied: u64,
    },
}

impl Delta {
    /// Encodes with f32 values.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(StorageType::F32)
    }

    /// Encodes with values stored as `value_type` (f16 halves the payload, rounding values).
    pub fn encode_as(&self, value_type: StorageType) -> Vec<u8> {
        let src = self.source.as_bytes();
        let src = &src[..src.len().min(u16::MAX as usize)];
        let tab = self.table.as_bytes();
        let tab = &tab[..tab.len().min(u16::MAX as usize)];
        let size = HEADER
            + src.len()
            + tab.len()
            + 8 * self.keys.len()
            + self.values.len() * value_type.size()
            + 8 * self.tombstones.len()
            + 4;
        let mut b = Vec::with_capacity(size);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(value_type.code());
        b.push(0);
        b.extend_from_slice(&(self.dim as u32).to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.created_ms.to_le_bytes());
        b.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.tombstones.len() as u32).to_le_bytes());
        b.extend_from_slice(&(src.len() as u16).to_le_bytes());
        b.extend_from_slice(src);
        b.extend_from_slice(&(tab.len() as u16).to_le_bytes());
        b.extend_from_slice(tab);
        for k in &self.keys {
            b.extend_from_slice(&k.to_le_bytes());
        }
        match value_type {
            StorageType::F32 => self
                .values
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes())),
            StorageType::F16 => self
                .values
                .iter()
                .for_each(|v| b.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes())),
        }
        for k in &self.tombstones {
            b.extend_from_slice(&k.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies a delta; every error names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Delta> {
        let bad = |m: String| Err(EmbedError::Delta(m));
        if bytes.len() < HEADER + 4 {
            return bad(format!(
                "{} bytes is shorter than the {}-byte minimum",
                bytes.len(),
                HEADER + 4
            ));
        }
        if &bytes[..4] != MAGIC {
            return bad("bad magic, not a kiln delta".into());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        let actual = crc32fast::hash(body);
        if stored != actual {
            return bad(format!(
                "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ));
        }
        let mut r = Reader { b: body, at: 4 };
        let version = u16::from_le_bytes(r.take(2)?.try_into().expect("2"));
        if version != VERSION {
            return bad(format!("unsupported version {version}"));
        }
        let vt = r.take(2)?[0];
        let Some(value_type) = StorageType::from_code(vt) else {
            return bad(format!("unknown value type {vt}"));
        };
        let dim = r.u32()? as usize;
        let seq = r.u64()?;
        let created_ms = r.u64()?;
        let n = r.u32()? as usize;
        let t = r.u32()? as usize;
        let s = u16::from_le_bytes(r.take(2)?.try_into().expect("2")) as usize;
        let source = std::str::from_utf8(r.take(s)?)
            .map_err(|_| EmbedError::Delta("source name is not utf-8".into()))?
            .to_string();
        let u = u16::from_le_bytes(r.take(2)?.try_into().expect("2")) as usize;
        let table = std::str::from_utf8(r.take(u)?)
            .map_err(|_| EmbedError::Delta("table name is not utf-8".into()))?
            .to_string();
        let expected = 8u128 * n as u128
            + (n as u128 * dim as u128 * value_type.size() as u128)
            + 8 * t as u128;
        if expected != (body.len() - r.at) as u128 {
            return bad(format!(
                "payload is {} bytes, header promises {expected} ({n} rows of dim {dim}, {t} tombstones)",
                body.len() - r.at
            ));
        }
        let keys = r
            .take(8 * n)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let raw = r.take(n * dim * value_type.size())?;
        let values = match value_type {
            StorageType::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
            StorageType::F16 => raw
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        };
        let tombstones = r
            .take(8 * t)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        Ok(Delta {
            source,
            table,
            seq,
            created_ms,
            dim,
            keys,
            values,
            tombstones,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() - self.at < n {
            return Err(EmbedError::Delta(format!("truncated at byte {}", self.at)));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

impl Table {
    /// Applies a delta: tombstones, then rows, then the memory cap. Idempotent per source:
    /// a sequence number at or below the source's last applied one changes nothing and
    /// returns [`ApplyOutcome::Duplicate`]; one that skips ahead is refused with
    /// [`EmbedError::SequenceGap`] (or applied and reported, per [`GapPolicy`]). Lookups run
    /// concurrently and see each row either entirely old or entirely new.
    pub fn apply(&self, delta: &Delta) -> Result<ApplyOutcome> {
        if !delta.table.is_empty() && delta.table != self.config.name {
            self.metrics.deltas_invalid.fetch_add(1, Relaxed);
            return Err(EmbedError::WrongTable {
                table: self.config.name.clone(),
                delta_table: delta.table.clone(),
            });
        }
        if delta.dim != self.config.dim {
            self.metrics.deltas_invalid.fetch_add(1, Relaxed);
            return Err(EmbedError::DimMismatch {
                table: self.config.name.clone(),
                dim: self.config.dim,
                rows: delta.keys.len(),
                values: delta.values.len(),
            });
        }
        if let Err(e) = self.check_rows(&delta.keys, &delta.values) {
            self.metrics.deltas_invalid.fetch_add(1, Relaxed);
            return Err(e);
        }
        if !self.config.allow_non_finite {
            if let Err(e) = self.check_finite(&delta.keys, &delta.values) {
                self.metrics.deltas_invalid.fetch_add(1, Relaxed);
                return Err(e);
            }
        }
        let mut w = self.writer.lock();
        let last = w.sources.get(&delta.source).copied().unwrap_or(0);
        if delta.seq <= last {
            self.metrics.deltas_duplicate.fetch_add(1, Relaxed);
            tracing::debug!(table = %self.config.name, source = %delta.source, seq = delta.seq, last, "ignored duplicate delta");
            return Ok(ApplyOutcome::Duplicate { last_applied: last });
        }
        let gap = (delta.seq != last + 1).then_some(SequenceGap {
            expected: last + 1,
            got: delta.seq,
        });
        if let Some(g) = gap {
            tracing::warn!(table = %self.config.name, source = %delta.source, expected = g.expected, got = g.got, "delta sequence gap");
            if self.config.gap_policy == GapPolicy::Reject {
                self.metrics.deltas_gap.fetch_add(1, Relaxed);
                return Err(EmbedError::SequenceGap {
                    table: self.config.name.clone(),
                    source_id: delta.source.clone(),
                    expected: g.expected,
                    got: g.got,
                });
            }
        }
        let removed = self.remove_locked(&mut w, &delta.tombstones);
        let report = self.write_rows(&mut w, &delta.keys, &delta.values, None);
        let evicted = self.enforce_cap_locked(&mut w);
        match w.sources.get_mut(&delta.source) {
            Some(s) => *s = delta.seq,
            None => {
                w.sources.insert(delta.source.clone(), delta.seq);
            }
        }
        let m = &self.metrics;
        m.deltas_applied.fetch_add(1, Relaxed);
        m.delta_rows.fetch_add(delta.keys.len() as u64, Relaxed);
        m.delta_tombstones.fetch_add(removed as u64, Relaxed);
        m.last_sequence.store(delta.seq, Relaxed);
        if delta.created_ms > 0 {
            let lag = self.clock.now_ms().saturating_sub(delta.created_ms) as f64 / 1000.0;
            m.lag_seconds_bits.store(lag.to_bits(), Relaxed);
        }
        Ok(ApplyOutcome::Applied {
            rows: delta.keys.len(),
            inserted: report.inserted,
            removed,
            evicted,
            gap,
        })
    }

    /// Refuses the first value that is not finite as this table stores it (f16 storage turns
    /// values beyond ±65504 into infinities), naming its key. `values` holds `dim` per key.
    fn check_finite(&self, keys: &[u64], values: &[f32]) -> Result<()> {
        let bad = match self.config.storage {
            StorageType::F32 => values.iter().position(|v| !v.is_finite()),
            StorageType::F16 => values.iter().position(|&v| !f16::from_f32(v).is_finite()),
        };
        let Some(i) = bad else { return Ok(()) };
        let dim = self.config.dim.max(1);
        let value = match self.config.storage {
            StorageType::F32 => values[i],
            StorageType::F16 => f16::from_f32(values[i]).to_f32(),
        };
        Err(EmbedError::NonFinite {
            table: self.config.name.clone(),
            key: keys.get(i / dim).copied().unwrap_or_default(),
            element: i % dim,
            value,
        })
    }

    /// The last applied sequence number of `source`.
    pub fn last_sequence(&self, source: &str) -> Option<u64> {
        self.writer.lock().sources.get(source).copied()
    }

    /// Every source with its last applied sequence number, sorted by source.
    pub fn sources(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .writer
            .lock()
            .sources
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }

    /// Sets the last applied sequence number of `source` (after an out-of-band resync, so
    /// the next expected delta is `seq + 1`).
    pub fn reset_source(&self, source: &str, seq: u64) {
        self.writer.lock().sources.insert(source.to_string(), seq);
    }
}
