//! The publish journal: the keys of every delta published since the last checkpoint (and of
//! older deltas not yet acknowledged everywhere), appended and fsynced before the delta is
//! handed to a sink.
//!
//! After a crash the restarted learner restores its checkpoint, whose rows may be older than
//! what the servers already hold for exactly these keys, and republishes their restored values
//! (or tombstones for keys it no longer has) under its new epoch, so every replica converges to
//! the trainer's rows. A key that is in no journal record was last published with the value
//! the checkpoint holds (the learner publishes everything pending before it checkpoints) and
//! that delta was acknowledged, so it needs nothing.
//!
//! # File format (`<checkpoint dir>/journal`, integers little-endian)
//!
//! One record per published delta: `len: u32`, then `len` bytes of payload — `batch: u64`,
//! `table name length: u16`, the name (UTF-8), `n: u32`, `n` keys (`u64`, rows and tombstones)
//! — then the CRC-32 (IEEE) of the payload. A torn last record (a crash during an append) is
//! ignored: its delta was never sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Keys per table, as the journal recovered them.
pub type JournalKeys = BTreeMap<String, BTreeSet<u64>>;

/// The open journal.
pub struct Journal {
    path: PathBuf,
    /// `None`: a journal kept nowhere (a learner without a checkpoint directory).
    file: Option<File>,
    /// Per table, each key with the last batch that published it.
    live: HashMap<String, HashMap<u64, u64>>,
}

impl Journal {
    /// Reads the keys recorded at `path` (none when the file is missing).
    pub fn recover(path: &Path) -> Result<JournalKeys> {
        let mut out = JournalKeys::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut at = 0usize;
        while let Some((batch_table, keys, next)) = record(&bytes, at) {
            out.entry(batch_table.1).or_default().extend(keys);
            at = next;
        }
        if at != bytes.len() {
            tracing::warn!(path = %path.display(), at, len = bytes.len(),
                "journal: ignored a torn last record (its delta was never sent)");
        }
        Ok(out)
    }

    /// Replaces the journal at `path` by one holding `keys` as batch `batch` (written to a
    /// temporary file, synced, renamed), and opens it for appends.
    pub fn create(path: &Path, batch: u64, keys: &JournalKeys) -> Result<Journal> {
        let mut live: HashMap<String, HashMap<u64, u64>> = HashMap::new();
        for (t, ks) in keys {
            live.insert(t.clone(), ks.iter().map(|k| (*k, batch)).collect());
        }
        write_fresh(path, &live)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Some(file),
            live,
        })
    }

    /// A journal that records nothing (no checkpoint directory: nothing is restored, so
    /// nothing needs republishing).
    pub fn disabled() -> Journal {
        Journal {
            path: PathBuf::new(),
            file: None,
            live: HashMap::new(),
        }
    }

    /// Appends the keys of one publish (`(table, keys)` per delta) and syncs the file.
    pub fn append(&mut self, batch: u64, deltas: &[(&str, Vec<u64>)]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        for (table, keys) in deltas {
            encode(&mut buf, batch, table, keys);
            let live = self.live.entry(table.to_string()).or_default();
            for k in keys {
                live.insert(*k, batch);
            }
        }
        file.write_all(&buf)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// After a checkpoint: keeps only the keys of batches after `acked` (those not yet
    /// acknowledged by every destination), rewriting the file atomically.
    pub fn rotate(&mut self, acked: u64) -> Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        for keys in self.live.values_mut() {
            keys.retain(|_, b| *b > acked);
        }
        self.live.retain(|_, k| !k.is_empty());
        write_fresh(&self.path, &self.live)?;
        self.file = Some(
            OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::io(&self.path, e))?,
        );
        Ok(())
    }

    /// Keys held, summed over tables.
    pub fn len(&self) -> usize {
        self.live.values().map(HashMap::len).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn write_fresh(path: &Path, live: &HashMap<String, HashMap<u64, u64>>) -> Result<()> {
    let mut buf = Vec::new();
    let mut tables: Vec<_> = live.keys().collect();
    tables.sort();
    for t in tables {
        let mut by_batch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (k, b) in &live[t] {
            by_batch.entry(*b).or_default().push(*k);
        }
        for (b, mut keys) in by_batch {
            keys.sort_unstable();
            encode(&mut buf, b, t, &keys);
        }
    }
    crate::checkpoint::write_atomic(path, &buf)
}

fn encode(buf: &mut Vec<u8>, batch: u64, table: &str, keys: &[u64]) {
    let mut p = Vec::with_capacity(14 + table.len() + keys.len() * 8);
    p.extend_from_slice(&batch.to_le_bytes());
    p.extend_from_slice(&(table.len() as u16).to_le_bytes());
    p.extend_from_slice(table.as_bytes());
    p.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        p.extend_from_slice(&k.to_le_bytes());
    }
    buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
    buf.extend_from_slice(&p);
    buf.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
}

/// The record at `at`: `((batch, table), keys, next offset)`, or `None` when torn or corrupt.
fn record(b: &[u8], at: usize) -> Option<((u64, String), Vec<u64>, usize)> {
    let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
    let p = b.get(at + 4..at + 4 + len)?;
    let crc = u32::from_le_bytes(b.get(at + 4 + len..at + 8 + len)?.try_into().ok()?);
    if crc32fast::hash(p) != crc {
        return None;
    }
    let batch = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let tl = u16::from_le_bytes(p.get(8..10)?.try_into().ok()?) as usize;
    let table = std::str::from_utf8(p.get(10..10 + tl)?).ok()?.to_string();
    let n = u32::from_le_bytes(p.get(10 + tl..14 + tl)?.try_into().ok()?) as usize;
    let keys = p
        .get(14 + tl..14 + tl + 8 * n)?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some(((batch, table), keys, at + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_torn_tail_and_rotation_keeps_the_unacknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let mut j = Journal::create(&path, 0, &JournalKeys::new()).expect("create");
        j.append(1, &[("a", vec![1, 2]), ("b", vec![9])])
            .expect("append");
        j.append(2, &[("a", vec![3])]).expect("append");
        // a crash in the middle of the next append
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("torn write");
        let got = Journal::recover(&path).expect("recover");
        assert_eq!(got["a"], BTreeSet::from([1, 2, 3]));
        assert_eq!(got["b"], BTreeSet::from([9]));

        let mut j = Journal::create(&path, 1, &got).expect("recreate");
        j.append(2, &[("a", vec![7])]).expect("append");
        j.rotate(1).expect("rotate");
        assert_eq!(j.len(), 1);
        let got = Journal::recover(&path).expect("recover");
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"], BTreeSet::from([7]));
    }
}
