//! Restoring a learner snapshot into the live tables of a served model.
//!
//! Layout (written by `kiln learn`): `<dir>/<model>/LATEST` holds `<n>`;
//! `<dir>/<model>/<n>/manifest.json` is `{"model", "tables", "topic", "offsets": {"<partition>":
//! next offset}, "created_ms"}`; `<dir>/<model>/<n>/<table>.snap` holds the table's served rows
//! and its sources' sequence numbers in kiln-embed's snapshot format.
//!
//! A table is restored into each serving version whose table is behind the snapshot for every
//! source in it, as deltas through [`ModelRepository::apply_delta`]: the rows go in chunks under
//! the snapshot's first source at its sequence number `k` (the source is set to `k - 1` before
//! each chunk with the backend's `SparseParameters::reset_source`), then every source of the snapshot is set
//! to its sequence number, so the topic's later deltas follow on without a gap and earlier ones
//! are duplicates. A backend that cannot set sequence numbers gets one delta holding every row
//! and an empty delta per further source, which a table with `gap_policy = "apply"` accepts and
//! one that rejects gaps refuses (the subscriber then replays the topic from its beginning).
//! A table already at or past the snapshot for every source is left alone (a version sharing a
//! live table restored earlier). Rows the live table holds that the snapshot lacks are kept.

use super::DeltaSourceError;
use crate::repository::ModelRepository;
use kiln_core::ErrorCode;
use kiln_embed::Delta;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Rows per restoring delta when the backend can set sequence numbers.
const CHUNK_ROWS: usize = 65_536;
const MAGIC: &[u8; 8] = b"KEMBSNAP";

/// `manifest.json` of one snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The model the snapshot is of.
    pub model: String,
    /// Its tables, each in `<table>.snap` beside the manifest.
    pub tables: Vec<String>,
    /// The delta topic the offsets are of.
    pub topic: String,
    /// Per partition (decimal), the next offset to read after the snapshot.
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
    /// When the snapshot was written, ms since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// The latest snapshot of a model: its directory and manifest.
#[derive(Debug, Clone)]
pub struct Latest {
    /// `<dir>/<model>/<n>`.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The manifest's offsets by partition number.
    pub offsets: BTreeMap<i32, i64>,
}

/// The latest snapshot of `model` under `root`, `None` when there is no `LATEST` file. Errors
/// name the file and what is wrong with it.
pub fn latest(root: &Path, model: &str, topic: &str) -> Result<Option<Latest>, DeltaSourceError> {
    let base = root.join(model);
    let pointer = base.join("LATEST");
    let n = match std::fs::read_to_string(&pointer) {
        Ok(n) => n.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(&pointer, e)),
    };
    if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
        return Err(bad(
            &pointer,
            format!("'{n}' is not a snapshot directory name"),
        ));
    }
    let dir = base.join(&n);
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
    if manifest.model != model {
        return Err(bad(
            &path,
            format!("model is '{}', not '{model}'", manifest.model),
        ));
    }
    if manifest.topic != topic {
        return Err(bad(
            &path,
            format!("topic is '{}', this server reads '{topic}'", manifest.topic),
        ));
    }
    let mut offsets = BTreeMap::new();
    for (p, o) in &manifest.offsets {
        let part = p
            .parse::<i32>()
            .ok()
            .filter(|p| *p >= 0 && *o >= 0)
            .ok_or_else(|| {
                bad(
                    &path,
                    format!("offsets: '{p}': {o} is not a partition and offset"),
                )
            })?;
        offsets.insert(part, *o);
    }
    Ok(Some(Latest {
        dir,
        manifest,
        offsets,
    }))
}

/// One table snapshot read into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSnapshot {
    /// Elements per row.
    pub dim: usize,
    /// Sources and their last applied sequence numbers (from 1), sorted by name.
    pub sources: Vec<(String, u64)>,
    /// Row keys.
    pub keys: Vec<u64>,
    /// Row values, `keys.len() * dim`, row-major.
    pub values: Vec<f32>,
}

/// Reads and checks (length, checksum) a kiln-embed snapshot file.
pub fn read_table(path: &Path) -> Result<TableSnapshot, DeltaSourceError> {
    let b = std::fs::read(path).map_err(|e| bad(path, e))?;
    let corrupt = |why: String| bad(path, why);
    if b.len() < 36 || &b[..8] != MAGIC {
        return Err(corrupt("not a kiln embedding snapshot".into()));
    }
    let (body, tail) = b.split_at(b.len() - 4);
    let (stored, actual) = (le32(tail, 0), crc32fast::hash(body));
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    if le32(body, 8) != 1 {
        return Err(corrupt(format!(
            "unsupported format version {}",
            le32(body, 8)
        )));
    }
    let half = match body[12] {
        0 => false,
        1 => true,
        t => return Err(corrupt(format!("unknown element type {t}"))),
    };
    let dim = le32(body, 16) as usize;
    let rows = u64::from_le_bytes(body[20..28].try_into().expect("8")) as usize;
    let mut at = 32;
    let mut sources = Vec::new();
    for _ in 0..le32(body, 28) {
        let len = body
            .get(at..at + 2)
            .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
            .ok_or_else(|| corrupt("file is truncated".into()))?;
        let rec = body
            .get(at + 2..at + 2 + len + 8)
            .ok_or_else(|| corrupt("file is truncated".into()))?;
        let name = std::str::from_utf8(&rec[..len])
            .map_err(|_| corrupt("source name is not utf-8".into()))?;
        let seq = u64::from_le_bytes(rec[len..].try_into().expect("8"));
        if seq > 0 {
            sources.push((name.to_string(), seq));
        }
        at += 2 + len + 8;
    }
    sources.sort();
    let size = if half { 2 } else { 4 };
    let rec_len = 20 + dim * size;
    if rows.checked_mul(rec_len).and_then(|r| r.checked_add(at)) != Some(body.len()) {
        return Err(corrupt(format!(
            "{} bytes do not hold the {rows} rows of dim {dim} the header promises",
            b.len()
        )));
    }
    let mut keys = Vec::with_capacity(rows);
    let mut values = Vec::with_capacity(rows * dim);
    for rec in body[at..].chunks_exact(rec_len) {
        keys.push(u64::from_le_bytes(rec[..8].try_into().expect("8")));
        let elems = &rec[20..];
        if half {
            values.extend(
                elems
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
            );
        } else {
            values.extend(
                elems
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
            );
        }
    }
    Ok(TableSnapshot {
        dim,
        sources,
        keys,
        values,
    })
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4"))
}

fn bad(path: &Path, why: impl std::fmt::Display) -> DeltaSourceError {
    DeltaSourceError::Snapshot {
        path: path.to_path_buf(),
        reason: why.to_string(),
    }
}

/// Restores `latest` into every serving version of `model` that is behind it; returns the rows
/// written. Blocking (reads files, writes rows): run it off the async runtime's threads.
pub fn restore(
    repo: &ModelRepository,
    model: &str,
    latest: &Latest,
) -> Result<u64, DeltaSourceError> {
    let mut versions: Vec<u64> = repo
        .tables(model, None)
        .map_err(DeltaSourceError::Runtime)?
        .iter()
        .map(|t| t.version)
        .collect();
    versions.dedup();
    let mut written = 0;
    for table in &latest.manifest.tables {
        let path = latest.dir.join(format!("{table}.snap"));
        let mut snap: Option<TableSnapshot> = None;
        for &v in &versions {
            // listed again per version: versions sharing a live table see the earlier restore
            let Some(info) = repo
                .tables(model, Some(v))
                .map_err(DeltaSourceError::Runtime)?
                .into_iter()
                .find(|t| &t.table.name == table)
            else {
                tracing::warn!(
                    model,
                    version = v,
                    table,
                    "the snapshot's table is not served by this version"
                );
                continue;
            };
            let s = match &snap {
                Some(s) => s,
                None => snap.insert(read_table(&path)?),
            };
            if s.dim != info.table.dim {
                return Err(bad(
                    &path,
                    format!("dim is {}, the served table's is {}", s.dim, info.table.dim),
                ));
            }
            let live: HashMap<&str, u64> = info
                .table
                .sources
                .iter()
                .map(|(n, q)| (n.as_str(), *q))
                .collect();
            let ahead = s
                .sources
                .iter()
                .filter(|(n, q)| live.get(n.as_str()).is_some_and(|l| l >= q))
                .count();
            if s.sources.is_empty() || ahead == s.sources.len() {
                tracing::info!(
                    model,
                    version = v,
                    table,
                    "the served table already holds the snapshot"
                );
                continue;
            }
            if ahead > 0 {
                return Err(bad(&path, "the served table is past the snapshot for some sources and behind it for others"));
            }
            written += restore_table(repo, model, v, table, s).map_err(|e| bad(&path, e))?;
        }
    }
    Ok(written)
}

/// Sets the last applied sequence number of `source` on one version's table (the backend's
/// [`SparseParameters::reset_source`](kiln_core::SparseParameters::reset_source)).
fn reset_source(
    repo: &ModelRepository,
    model: &str,
    version: u64,
    table: &str,
    source: &str,
    seq: u64,
) -> kiln_core::Result<()> {
    let v = repo.get(model, Some(version))?;
    let sparse = v.sparse().ok_or_else(|| {
        kiln_core::Error::new(ErrorCode::Unsupported, "the model has no embedding tables")
    })?;
    sparse.reset_source(table, source, seq).map_err(|e| {
        kiln_core::Error::new(
            e.code,
            format!("model '{model}' version {version}: {}", e.message),
        )
    })
}

/// Writes one snapshot into one version's table (see the module docs).
fn restore_table(
    repo: &ModelRepository,
    model: &str,
    version: u64,
    table: &str,
    s: &TableSnapshot,
) -> Result<u64, kiln_core::Error> {
    let (first, k) = (&s.sources[0].0, s.sources[0].1);
    let delta = |keys: &[u64], values: &[f32], source: &str, seq: u64| Delta {
        source: source.to_string(),
        table: table.to_string(),
        seq,
        created_ms: 0,
        dim: s.dim,
        keys: keys.to_vec(),
        values: values.to_vec(),
        tombstones: Vec::new(),
    };
    let apply = |d: Delta| repo.apply_delta(model, Some(version), table, &d.encode());
    let resettable = match reset_source(repo, model, version, table, first, k - 1) {
        Ok(()) => true,
        Err(e) if e.code == ErrorCode::Unsupported => false,
        Err(e) => return Err(e),
    };
    if resettable {
        let step = CHUNK_ROWS.max(1);
        for (i, keys) in s.keys.chunks(step).enumerate() {
            if i > 0 {
                reset_source(repo, model, version, table, first, k - 1)?;
            }
            let values = &s.values[i * step * s.dim..][..keys.len() * s.dim];
            apply(delta(keys, values, first, k))?;
        }
        for (source, seq) in &s.sources {
            reset_source(repo, model, version, table, source, *seq)?;
        }
    } else {
        apply(delta(&s.keys, &s.values, first, k))?;
        for (source, seq) in &s.sources[1..] {
            apply(delta(&[], &[], source, *seq))?;
        }
    }
    tracing::info!(model, version, table, rows = s.keys.len(), sources = ?s.sources, "restored the table from a snapshot");
    Ok(s.keys.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_embed::{StorageType, Table, TableConfig};

    fn written(storage: StorageType, dir: &Path) -> PathBuf {
        let mut config = TableConfig::new("emb.0", 3);
        config.storage = storage;
        let t = Table::new(config).unwrap();
        for (source, seq) in [("learner@1", 1), ("learner@2", 1), ("learner@2", 2)] {
            t.apply(&Delta {
                source: source.into(),
                seq,
                dim: 3,
                keys: vec![seq * 10, 7],
                values: vec![0.5, -1.0, 2.0, 0.25, 0.0, -0.75],
                ..Default::default()
            })
            .unwrap();
        }
        let path = dir.join("emb.0.snap");
        t.snapshot_to(&path).unwrap();
        path
    }

    #[test]
    fn snapshots_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        for storage in [StorageType::F32, StorageType::F16] {
            let s = read_table(&written(storage, dir.path())).unwrap();
            assert_eq!(s.dim, 3);
            assert_eq!(
                s.sources,
                vec![("learner@1".into(), 1), ("learner@2".into(), 2)]
            );
            let mut rows: Vec<(u64, &[f32])> =
                s.keys.iter().copied().zip(s.values.chunks(3)).collect();
            rows.sort_by_key(|r| r.0);
            let keys: Vec<u64> = rows.iter().map(|r| r.0).collect();
            assert_eq!(keys, [7, 10, 20]);
            assert_eq!(rows[0].1, [0.25, 0.0, -0.75]);
            assert_eq!(rows[2].1, [0.5, -1.0, 2.0]);
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(StorageType::F32, dir.path());
        let mut b = std::fs::read(&path).unwrap();
        b[40] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let e = read_table(&path).unwrap_err().to_string();
        assert!(e.contains("emb.0.snap") && e.contains("checksum"), "{e}");
        std::fs::write(&path, &b[..30]).unwrap();
        assert!(read_table(&path).is_err());
    }

    #[test]
    fn the_latest_manifest_gives_the_offsets() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest(dir.path(), "m", "kiln.deltas.m").unwrap().is_none());
        std::fs::create_dir_all(dir.path().join("m/4")).unwrap();
        std::fs::write(dir.path().join("m/LATEST"), "4\n").unwrap();
        std::fs::write(
            dir.path().join("m/4/manifest.json"),
            r#"{"model":"m","tables":["emb.0"],"topic":"kiln.deltas.m","offsets":{"0":12,"2":3},"created_ms":1}"#,
        )
        .unwrap();
        let l = latest(dir.path(), "m", "kiln.deltas.m").unwrap().unwrap();
        assert_eq!(l.dir, dir.path().join("m/4"));
        assert_eq!(l.offsets, BTreeMap::from([(0, 12), (2, 3)]));
        let e = latest(dir.path(), "m", "other.m").unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains("topic"), "{e}");
    }
}
