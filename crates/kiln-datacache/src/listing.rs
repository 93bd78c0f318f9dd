//! Loading the metadata: a recursive remote listing (or a manifest file), and the on-disk snapshot
//! that lets a restarted mount serve `stat`/`readdir` without listing again.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use opendal::{EntryMode, Operator};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{DatacacheError, Result};
use crate::meta::{MetaTree, Node, RawEntry};
use crate::metrics::Metrics;
use crate::source::{Scheme, SourceSpec};

/// Lists the source recursively, or reads `manifest` (`path[<TAB>size]` per line) when given.
///
/// HTTP sources cannot be listed and need a manifest. Entries without a size are `stat`ed.
pub async fn list_source(
    op: &Operator,
    spec: &SourceSpec,
    manifest: Option<&Path>,
    metrics: &Metrics,
) -> Result<Vec<RawEntry>> {
    let started = Instant::now();
    let mut entries = Vec::new();
    let mut need_stat = Vec::new();
    if let Some(m) = manifest {
        let f = std::fs::File::open(m).map_err(|e| DatacacheError::io(m, e))?;
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| DatacacheError::io(m, e))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.split('\t');
            let path = it
                .next()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            match it.next().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(size) => entries.push(RawEntry {
                    path,
                    size,
                    mtime: 0,
                    etag: None,
                }),
                None => need_stat.push(path),
            }
        }
    } else if spec.scheme == Scheme::Http {
        return Err(DatacacheError::Config {
            field: "manifest",
            reason: "http sources cannot be listed: pass --manifest".into(),
        });
    } else {
        let t = Instant::now();
        let remote = |source| DatacacheError::Remote {
            op: "list",
            path: String::new(),
            source: Box::new(source),
        };
        let mut lister = op.lister_with("").recursive(true).await.map_err(remote)?;
        while let Some(entry) = lister.try_next().await.map_err(remote)? {
            let meta = entry.metadata();
            if meta.mode() != EntryMode::FILE {
                continue;
            }
            let path = entry.path().trim_start_matches('/').to_string();
            if spec.scheme == Scheme::Fs {
                need_stat.push(path);
                continue;
            }
            let mtime = meta
                .last_modified()
                .map_or(0, |t| t.into_inner().as_second());
            entries.push(RawEntry {
                path,
                size: meta.content_length(),
                mtime,
                etag: meta.etag().map(str::to_string),
            });
        }
        metrics.observe_remote("list", t.elapsed(), true);
    }
    let stated: Vec<Result<RawEntry>> = futures::stream::iter(need_stat)
        .map(|path| async move {
            let t = Instant::now();
            let r = op.stat(&path).await;
            metrics.observe_remote("stat", t.elapsed(), r.is_ok());
            let meta = r.map_err(|source| DatacacheError::Remote {
                op: "stat",
                path: path.clone(),
                source: Box::new(source),
            })?;
            let mtime = meta
                .last_modified()
                .map_or(0, |t| t.into_inner().as_second());
            Ok(RawEntry {
                path,
                size: meta.content_length(),
                mtime,
                etag: meta.etag().map(str::to_string),
            })
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for s in stated {
        entries.push(s?);
    }
    tracing::info!(files = entries.len(), elapsed_ms = started.elapsed().as_millis() as u64, source = %spec.display(), "listed source");
    Ok(entries)
}

const MAGIC: &[u8; 8] = b"KILNMETA";
const VERSION: u32 = 1;

/// Where the snapshot of a source lives inside the cache directory.
pub fn snapshot_path(cache_dir: &Path, spec: &SourceSpec) -> PathBuf {
    cache_dir.join(format!(
        "meta-{:016x}.snap",
        crate::meta::path_key(&spec.display())
    ))
}

/// Writes the tree atomically (temp file + rename) with a checksum.
pub fn save_snapshot(path: &Path, source: &str, tree: &MetaTree) -> Result<()> {
    let io = |e| DatacacheError::io(path, e);
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::with_capacity(tree.nodes.len() * 48 + tree.names.len() + 128);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    buf.extend_from_slice(&created.to_le_bytes());
    for v in [
        source.len() as u64,
        tree.nodes.len() as u64,
        tree.names.len() as u64,
        tree.files,
        tree.bytes,
    ] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(source.as_bytes());
    for n in &tree.nodes {
        for v in [n.size, n.mtime as u64, n.etag, n.key] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for v in n.index_parts() {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    buf.extend_from_slice(tree.names.as_bytes());
    let mut h = Xxh3::new();
    h.update(&buf);
    buf.extend_from_slice(&h.digest().to_le_bytes());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&buf).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// A snapshot read back, with its age.
#[derive(Debug)]
pub struct Snapshot {
    /// The tree.
    pub tree: MetaTree,
    /// Time since it was written.
    pub age: Duration,
}

/// Reads a snapshot written by [`save_snapshot`] for `source`; `Ok(None)` if there is none.
pub fn load_snapshot(path: &Path, source: &str) -> Result<Option<Snapshot>> {
    let mut buf = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut buf)
            .map_err(|e| DatacacheError::io(path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DatacacheError::io(path, e)),
    };
    let bad = |reason: &str| DatacacheError::Snapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if buf.len() < 60 || &buf[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let (body, sum) = buf.split_at(buf.len() - 8);
    let mut h = Xxh3::new();
    h.update(body);
    if h.digest().to_le_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    let mut pos = 8;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = body.get(pos..pos + n).ok_or_else(|| bad("truncated"))?;
        pos += n;
        Ok(s)
    };
    let u32_at = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or_default());
    let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
    if u32_at(take(4)?) != VERSION {
        return Err(bad("unknown version"));
    }
    let created = u64_at(take(8)?);
    let (src_len, n_nodes, n_names, files, bytes) = (
        u64_at(take(8)?),
        u64_at(take(8)?),
        u64_at(take(8)?),
        u64_at(take(8)?),
        u64_at(take(8)?),
    );
    if take(src_len as usize)? != source.as_bytes() {
        return Ok(None);
    }
    let mut nodes = Vec::with_capacity(n_nodes as usize);
    for _ in 0..n_nodes {
        let s = take(48)?;
        let q = |i: usize| u64_at(&s[i * 8..i * 8 + 8]);
        let d = |i: usize| u32_at(&s[32 + i * 4..36 + i * 4]);
        nodes.push(Node::from_parts(
            q(0),
            q(1) as i64,
            q(2),
            q(3),
            [d(0), d(1), d(2), d(3)],
        ));
    }
    let names = String::from_utf8(take(n_names as usize)?.to_vec())
        .map_err(|_| bad("names are not utf-8"))?;
    let tree = MetaTree {
        nodes,
        names,
        files,
        bytes,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Some(Snapshot {
        tree,
        age: Duration::from_secs(now.saturating_sub(created)),
    }))
}
