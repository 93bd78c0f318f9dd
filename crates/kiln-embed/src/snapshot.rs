//! Snapshots: a table's rows and per-source sequence numbers on disk, checksummed.
//!
//! # File format, version 1 (all integers little-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `KEMBSNAP` |
//! | 4 | format version, 1 |
//! | 1 | element type: 0 = f32, 1 = f16 (IEEE half) |
//! | 3 | reserved, 0 |
//! | 4 | `dim` |
//! | 8 | `n`: rows |
//! | 4 | `m`: sources |
//! | m x (2 + len + 8) | per source: name length (u16), name (UTF-8), last applied sequence (u64) |
//! | n x (20 + dim x 4 or 2) | per row: key (u64), update tick (u64), last update in seconds since the Unix epoch (u32), elements |
//! | 4 | CRC-32 (IEEE) of every preceding byte |
//!
//! A snapshot is written to `<path>.tmp`, synced and renamed over `<path>`, so a crash never
//! leaves a half-written file under the final name. It is consistent: writers (deltas,
//! upserts, eviction) wait while it is written, lookups do not. Restore checks the length
//! implied by the header before reading rows (a truncated file is refused at once) and the
//! checksum at the end, and builds a new table, so a refused file leaves nothing behind.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;

use crate::config::{Clock, StorageType, SystemClock, TableConfig};
use crate::error::{EmbedError, Result};
use crate::table::Table;

const MAGIC: &[u8; 8] = b"KEMBSNAP";
const VERSION: u32 = 1;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a snapshot holds (returned by writes and restores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot file.
    pub path: PathBuf,
    /// Rows.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Sources with their last applied sequence number.
    pub sources: Vec<(String, u64)>,
}

struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbedError + '_ {
    move |source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Table {
    /// Writes a consistent snapshot to `path` (via `<path>.tmp` and a rename). On failure
    /// the temporary file is removed and an existing snapshot at `path` is left as it was.
    pub fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo> {
        let tmp = tmp_path(path);
        let result = self.write_snapshot(path, &tmp);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_snapshot(&self, path: &Path, tmp: &Path) -> Result<SnapshotInfo> {
        let started = Instant::now();
        let w = self.writer.lock();
        let total = w.rows;
        let mut sources: Vec<(String, u64)> =
            w.sources.iter().map(|(k, v)| (k.clone(), *v)).collect();
        sources.sort();
        tracing::info!(table = %self.config.name, path = %path.display(), rows = total, "snapshot started");
        let tmp = tmp.to_path_buf();
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let mut head = Vec::with_capacity(64);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&[self.config.storage.code(), 0, 0, 0]);
        head.extend_from_slice(&(self.config.dim as u32).to_le_bytes());
        head.extend_from_slice(&total.to_le_bytes());
        head.extend_from_slice(&(sources.len() as u32).to_le_bytes());
        for (name, seq) in &sources {
            let b = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            head.extend_from_slice(&(b.len() as u16).to_le_bytes());
            head.extend_from_slice(b);
            head.extend_from_slice(&seq.to_le_bytes());
        }
        out.write_all(&head).map_err(io_err(&tmp))?;
        let mut rec = Vec::with_capacity(20 + self.config.dim * 4);
        let (mut written, mut last_log) = (0u64, Instant::now());
        for shard in self.shards.iter() {
            let shard = shard.0.read();
            for slot in 0..shard.slots() {
                let Some((key, tick, secs)) = shard.slot_meta(slot) else {
                    continue;
                };
                rec.clear();
                rec.extend_from_slice(&key.to_le_bytes());
                rec.extend_from_slice(&tick.to_le_bytes());
                rec.extend_from_slice(&secs.to_le_bytes());
                shard.row_le_bytes(slot as u32, &mut rec);
                out.write_all(&rec).map_err(io_err(&tmp))?;
                written += 1;
                if written % 65536 == 0 && last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    tracing::info!(table = %self.config.name, rows = written, of = total, "snapshot progress");
                }
            }
        }
        debug_assert_eq!(written, total);
        let crc = out.crc.clone().finalize();
        let mut file = out
            .inner
            .into_inner()
            .map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.write_all(&crc.to_le_bytes()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        let bytes = file.metadata().map_err(io_err(&tmp))?.len();
        drop(file);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Best effort: make the rename durable.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        drop(w);
        tracing::info!(table = %self.config.name, path = %path.display(), rows = total, bytes,
            seconds = started.elapsed().as_secs_f64(), "snapshot written");
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            rows: total,
            bytes,
            sources,
        })
    }

    /// Builds a table from a snapshot, on the system clock. The snapshot's dim must match
    /// `config`; its element type may differ (rows are converted).
    pub fn restore(config: TableConfig, path: &Path) -> Result<(Table, SnapshotInfo)> {
        Self::restore_with_clock(config, path, Arc::new(SystemClock))
    }

    /// Restores from `path` when the file exists, else creates an empty table: what a
    /// process does on start. A damaged snapshot is an error, never silently replaced.
    pub fn restore_or_new(
        config: TableConfig,
        path: &Path,
    ) -> Result<(Table, Option<SnapshotInfo>)> {
        if path.exists() {
            let (t, info) = Self::restore(config, path)?;
            Ok((t, Some(info)))
        } else {
            tracing::info!(table = %config.name, path = %path.display(), "no snapshot, starting empty");
            Ok((Table::new(config)?, None))
        }
    }

    /// [`Table::restore`] with a given clock.
    pub fn restore_with_clock(
        config: TableConfig,
        path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<(Table, SnapshotInfo)> {
        let started = Instant::now();
        let corrupt = |reason: String| EmbedError::CorruptSnapshot {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut r = Hashing {
            inner: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let short = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("file is truncated".into()),
            _ => EmbedError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        };
        let mut head = [0u8; 32];
        r.read_exact(&mut head).map_err(short)?;
        if &head[..8] != MAGIC {
            return Err(corrupt("bad magic, not a kiln embedding snapshot".into()));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4"));
        if version != VERSION {
            return Err(corrupt(format!("unsupported format version {version}")));
        }
        let stored = StorageType::from_code(head[12])
            .ok_or_else(|| corrupt(format!("unknown element type {}", head[12])))?;
        let dim = u32::from_le_bytes(head[16..20].try_into().expect("4")) as usize;
        let rows = u64::from_le_bytes(head[20..28].try_into().expect("8"));
        let n_sources = u32::from_le_bytes(head[28..32].try_into().expect("4"));
        if dim != config.dim {
            return Err(EmbedError::SnapshotMismatch {
                path: path.to_path_buf(),
                table: config.name.clone(),
                reason: format!("snapshot dim is {dim}, table dim is {}", config.dim),
            });
        }
        let mut consumed = 32u64;
        let mut sources = Vec::new();
        for _ in 0..n_sources {
            let mut len = [0u8; 2];
            r.read_exact(&mut len).map_err(short)?;
            let len = u16::from_le_bytes(len) as usize;
            let mut buf = vec![0u8; len + 8];
            r.read_exact(&mut buf).map_err(short)?;
            let name = std::str::from_utf8(&buf[..len])
                .map_err(|_| corrupt("source name is not utf-8".into()))?;
            sources.push((
                name.to_string(),
                u64::from_le_bytes(buf[len..].try_into().expect("8")),
            ));
            consumed += 2 + len as u64 + 8;
        }
        let rec_len = 20 + dim * stored.size();
        let expected = rows
            .checked_mul(rec_len as u64)
            .and_then(|b| b.checked_add(consumed + 4));
        if expected != Some(file_len) {
            return Err(corrupt(format!(
                "file is {file_len} bytes, header promises {} ({rows} rows of dim {dim})",
                expected.map_or("an impossible size".to_string(), |e| e.to_string())
            )));
        }
        tracing::info!(table = %config.name, path = %path.display(), rows, "restore started");
        let mut cfg = config;
        cfg.initial_rows = cfg.initial_rows.max(rows as usize);
        let table = Table::with_clock(cfg, clock)?;
        let mut rec = vec![0u8; rec_len];
        let mut values = vec![0f32; dim];
        let (mut max_tick, mut last_log) = (0u64, Instant::now());
        for i in 0..rows {
            r.read_exact(&mut rec).map_err(short)?;
            let key = u64::from_le_bytes(rec[0..8].try_into().expect("8"));
            let tick = u64::from_le_bytes(rec[8..16].try_into().expect("8"));
            let secs = u32::from_le_bytes(rec[16..20].try_into().expect("4"));
            if let Err(e) = table.check_keys(&[key]) {
                return Err(EmbedError::SnapshotMismatch {
                    path: path.to_path_buf(),
                    table: table.config.name.clone(),
                    reason: e.to_string(),
                });
            }
            let (h, s) = table.route(key);
            let mut shard = table.shards[s].0.write();
            if shard.find(key, h).is_some() {
                return Err(corrupt(format!("key {key} appears twice")));
            }
            if stored == table.config.storage {
                shard.insert_raw(key, h, &rec[20..], tick, secs);
            } else {
                decode_elements(stored, &rec[20..], &mut values);
                shard.upsert(key, h, &values, tick, secs);
            }
            max_tick = max_tick.max(tick);
            if i % 65536 == 65535 && last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                tracing::info!(table = %table.config.name, rows = i + 1, of = rows, "restore progress");
            }
        }
        let computed = r.crc.clone().finalize();
        let mut tail = [0u8; 4];
        r.inner.read_exact(&mut tail).map_err(short)?;
        let stored_crc = u32::from_le_bytes(tail);
        if stored_crc != computed {
            return Err(corrupt(format!(
                "checksum mismatch: stored {stored_crc:#010x}, computed {computed:#010x}"
            )));
        }
        {
            let mut w = table.writer.lock();
            w.rows = rows;
            w.next_tick = max_tick + 1;
            w.sources = sources.iter().cloned().collect();
            table
                .metrics
                .rows
                .store(rows, std::sync::atomic::Ordering::Relaxed);
            table
                .metrics
                .bytes
                .store(rows * table.row_cost, std::sync::atomic::Ordering::Relaxed);
            table.enforce_cap_locked(&mut w);
        }
        tracing::info!(table = %table.config.name, path = %path.display(), rows,
            seconds = started.elapsed().as_secs_f64(), "restore finished");
        let info = SnapshotInfo {
            path: path.to_path_buf(),
            rows,
            bytes: file_len,
            sources,
        };
        Ok((table, info))
    }
}

fn decode_elements(stored: StorageType, raw: &[u8], out: &mut [f32]) {
    match stored {
        StorageType::F32 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        StorageType::F16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}
