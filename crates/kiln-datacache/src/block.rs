//! Cached block format (foyer `Code`), the file reference the cache serves, and the remote
//! fetch of one block with its integrity record.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use foyer::Code;
use opendal::Operator;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{DatacacheError, Result};
use crate::metrics::Metrics;

/// Identity of one cached block: the file's path hash and the block index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Path hash of the file ([`crate::meta::path_key`]).
    pub file: u64,
    /// Block index inside the file.
    pub index: u32,
}

impl Code for BlockKey {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        w.write_all(&self.file.to_le_bytes())
            .map_err(foyer::Error::io_error)?;
        w.write_all(&self.index.to_le_bytes())
            .map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut b = [0u8; 12];
        r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
        let file = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let index = u32::from_le_bytes(b[8..].try_into().unwrap_or_default());
        Ok(Self { file, index })
    }

    fn estimated_size(&self) -> usize {
        12
    }
}

/// One cached block with what was recorded at fetch time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// ETag hash of the file when the block was fetched.
    pub etag: u64,
    /// File size when the block was fetched.
    pub file_size: u64,
    /// xxh3-64 of `data`.
    pub checksum: u64,
    /// The bytes.
    pub data: Bytes,
}

const BLOCK_HEADER: usize = 28;

impl Code for Block {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let mut h = [0u8; BLOCK_HEADER];
        h[..8].copy_from_slice(&self.etag.to_le_bytes());
        h[8..16].copy_from_slice(&self.file_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.checksum.to_le_bytes());
        h[24..].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
        w.write_all(&h).map_err(foyer::Error::io_error)?;
        w.write_all(&self.data).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut h = [0u8; BLOCK_HEADER];
        r.read_exact(&mut h).map_err(foyer::Error::io_error)?;
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[24..].try_into().unwrap_or_default()) as usize;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data).map_err(foyer::Error::io_error)?;
        Ok(Self {
            etag: u64_at(0),
            file_size: u64_at(8),
            checksum: u64_at(16),
            data: data.into(),
        })
    }

    fn estimated_size(&self) -> usize {
        BLOCK_HEADER + self.data.len()
    }
}

/// Where a block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
    /// The remote (a miss).
    Remote,
}

/// What the cache needs to know about a file to serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Path hash (cache key).
    pub key: u64,
    /// Current size from the metadata.
    pub size: u64,
    /// Current ETag hash from the metadata.
    pub etag: u64,
}

pub(crate) async fn fetch_block(
    op: &Operator,
    metrics: &Metrics,
    path: &str,
    start: u64,
    end: u64,
    file_size: u64,
    etag: u64,
) -> Result<Block> {
    let t = Instant::now();
    let r = if start == 0 && end == file_size {
        op.read(path).await
    } else {
        op.read_with(path).range(start..end).await
    };
    metrics.observe_remote("read", t.elapsed(), r.is_ok());
    let buf = r.map_err(|source| {
        tracing::warn!(path, start, end, error = %source, "remote read failed");
        DatacacheError::Remote {
            op: "read",
            path: path.to_string(),
            source: Box::new(source),
        }
    })?;
    let data = buf.to_bytes();
    if data.len() as u64 != end - start {
        tracing::warn!(
            path,
            expected = end - start,
            got = data.len(),
            "remote object size differs from the metadata"
        );
        return Err(DatacacheError::SizeMismatch {
            path: path.to_string(),
            expected: end - start,
            got: data.len() as u64,
        });
    }
    metrics.remote_bytes.inc_by(data.len() as u64);
    Ok(Block {
        etag,
        file_size,
        checksum: xxh3_64(&data),
        data,
    })
}

/// Sum of allocated bytes (st_blocks * 512) of the files in `dir`.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
