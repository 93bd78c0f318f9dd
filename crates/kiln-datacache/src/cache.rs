//! Data cache: a foyer hybrid (memory + disk) cache of file blocks, filled from the under-storage.
//!
//! Files up to `block_size` are one block (cached whole); larger files are split in `block_size`
//! blocks with read-ahead. Every block records the file's size and ETag hash and a checksum of its
//! bytes at fetch time; a hit whose record does not match the current metadata, or whose bytes do
//! not match the checksum, is dropped, logged and fetched again. Concurrent misses of one block are
//! coalesced by foyer's `get_or_fetch` into one remote request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use foyer::{
    DeviceBuilder, Event, EventListener, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, Load, RecoverMode, Source,
};
use opendal::Operator;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::block::fetch_block;
pub use crate::block::{allocated_bytes, Block, BlockKey, FileRef, Tier};
use crate::engine::{OrderedEngineConfig, ENGINE_BLOCK};
use crate::error::{DatacacheError, Result};
use crate::metrics::Metrics;

/// Sizes and bounds of the data cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Directory of the disk tier (the foyer device lives in `blocks/`).
    pub dir: PathBuf,
    /// Memory tier capacity in bytes.
    pub memory_bytes: usize,
    /// Disk tier capacity in bytes.
    pub disk_bytes: usize,
    /// Block size: files up to this size are cached whole.
    pub block_size: u64,
    /// Blocks fetched ahead of a sequential reader of a large file.
    pub readahead_blocks: u32,
    /// Bound on a read that needs the remote; past it the read fails (EIO).
    pub read_timeout: Duration,
}

struct EvictionCounter(Arc<Metrics>);

impl EventListener for EvictionCounter {
    type Key = BlockKey;
    type Value = Block;

    fn on_leave(&self, reason: Event, _key: &BlockKey, _value: &Block) {
        if matches!(reason, Event::Evict) {
            self.0.evictions.inc();
        }
    }
}

struct Inner {
    hybrid: HybridCache<BlockKey, Block>,
    op: Operator,
    cfg: CacheConfig,
    metrics: Arc<Metrics>,
    /// Blocks whose fetch failed recently: the kernel retries a failed page read at once, and
    /// answering that retry from here keeps an uncached read within one read timeout.
    recent_failures: Mutex<HashMap<BlockKey, Instant>>,
    /// Number of entries in `recent_failures` (lets the hot path skip the lock).
    failure_count: AtomicUsize,
    /// Read-ahead fetches spawned and not finished; [`DataCache::readahead_settled`] waits for 0.
    readahead_in_flight: tokio::sync::watch::Sender<usize>,
}

/// Counts one read-ahead fetch as in flight until dropped (also when its task is cancelled).
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: Arc<Inner>) -> Self {
        inner.readahead_in_flight.send_modify(|n| *n += 1);
        InFlight(inner)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.readahead_in_flight.send_modify(|n| *n -= 1);
    }
}

/// How long a failed block fetch is answered from memory before it is tried again.
const FAIL_WINDOW: Duration = Duration::from_secs(2);

/// The hybrid block cache in front of one under-storage. Cheap to clone.
#[derive(Clone)]
pub struct DataCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataCache")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl DataCache {
    /// Opens (and recovers) the cache in `cfg.dir`. The caller holds the directory lock.
    pub async fn open(cfg: CacheConfig, op: Operator, metrics: Arc<Metrics>) -> Result<Self> {
        if cfg.block_size == 0 || cfg.block_size as usize > ENGINE_BLOCK - 64 * 1024 {
            return Err(DatacacheError::Config {
                field: "block-size",
                reason: "must be between 1 byte and 15 MiB".into(),
            });
        }
        if cfg.disk_bytes < 2 * ENGINE_BLOCK {
            return Err(DatacacheError::Config {
                field: "disk-size",
                reason: "must be at least 32 MiB".into(),
            });
        }
        let dev_dir = cfg.dir.join("blocks");
        std::fs::create_dir_all(&dev_dir).map_err(|e| DatacacheError::io(&dev_dir, e))?;
        let device = FsDeviceBuilder::new(&dev_dir)
            .with_capacity(cfg.disk_bytes)
            .build()
            .map_err(|e| DatacacheError::Cache(Box::new(e)))?;
        let started = Instant::now();
        let hybrid = HybridCacheBuilder::new()
            .with_name("kiln-datacache")
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(false)
            .with_event_listener(Arc::new(EvictionCounter(metrics.clone())))
            .memory(cfg.memory_bytes.max(1 << 20))
            .with_shards(16)
            .with_weighter(|_k: &BlockKey, v: &Block| v.data.len() + 96)
            .storage()
            .with_engine_config(OrderedEngineConfig::for_device(device))
            .with_recover_mode(RecoverMode::Quiet)
            .build()
            .await
            .map_err(|e| DatacacheError::Cache(Box::new(e)))?;
        tracing::info!(dir = %cfg.dir.display(), memory_bytes = cfg.memory_bytes, disk_bytes = cfg.disk_bytes,
            recover_ms = started.elapsed().as_millis() as u64, "data cache opened");
        let (recent_failures, failure_count) = (Mutex::new(HashMap::new()), AtomicUsize::new(0));
        Ok(Self {
            inner: Arc::new(Inner {
                hybrid,
                op,
                cfg,
                metrics,
                recent_failures,
                failure_count,
                readahead_in_flight: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    /// The metrics it updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The under-storage operator.
    pub fn operator(&self) -> &Operator {
        &self.inner.op
    }

    /// Number of blocks of a file of `size` bytes.
    pub fn block_count(&self, size: u64) -> u32 {
        size.div_ceil(self.inner.cfg.block_size) as u32
    }

    fn block_range(&self, size: u64, index: u32) -> (u64, u64) {
        let bs = self.inner.cfg.block_size;
        let start = index as u64 * bs;
        (start, (start + bs).min(size))
    }

    fn matches(b: &Block, f: &FileRef) -> bool {
        b.etag == f.etag && b.file_size == f.size
    }

    /// Serves a read of a single-block file from the memory tier without any await; `None` when
    /// the block is not in memory (or the file has more than one block).
    pub fn read_memory(&self, f: &FileRef, offset: u64, len: u32) -> Option<Bytes> {
        if f.size > self.inner.cfg.block_size || offset >= f.size {
            return None;
        }
        let e = self.inner.hybrid.memory().get(&BlockKey {
            file: f.key,
            index: 0,
        })?;
        let b = e.value();
        if !Self::matches(b, f) || b.data.len() as u64 != f.size {
            return None;
        }
        let end = (offset + len as u64).min(f.size);
        let m = &self.inner.metrics;
        m.hit_bytes_memory.inc_by(end - offset);
        if offset == 0 {
            m.hit_files.inc();
        }
        Some(b.data.slice(offset as usize..end as usize))
    }

    /// Reads `len` bytes at `offset` of the file at `path`, from the cache or the remote.
    pub async fn read(&self, f: &FileRef, path: &str, offset: u64, len: u32) -> Result<Bytes> {
        if offset >= f.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len as u64).min(f.size);
        let bs = self.inner.cfg.block_size;
        let (first, last) = ((offset / bs) as u32, ((end - 1) / bs) as u32);
        let out = if first == last {
            let (b, tier) = self.get_block(f, path, first).await?;
            self.account(tier, end - offset, offset == 0);
            let s = (offset - first as u64 * bs) as usize;
            b.data.slice(s..s + (end - offset) as usize)
        } else {
            let mut buf = BytesMut::with_capacity((end - offset) as usize);
            for i in first..=last {
                let (b, tier) = self.get_block(f, path, i).await?;
                let (bstart, _) = self.block_range(f.size, i);
                let s = offset.max(bstart) - bstart;
                let e = end.min(bstart + b.data.len() as u64) - bstart;
                self.account(tier, e - s, offset == 0 && i == first);
                buf.extend_from_slice(&b.data[s as usize..e as usize]);
            }
            buf.freeze()
        };
        self.readahead(f, path, last);
        Ok(out)
    }

    fn account(&self, tier: Tier, bytes: u64, first_of_file: bool) {
        let m = &self.inner.metrics;
        match tier {
            Tier::Memory => m.hit_bytes_memory.inc_by(bytes),
            Tier::Disk => m.hit_bytes_disk.inc_by(bytes),
            Tier::Remote => m.miss_bytes.inc_by(bytes),
        };
        if first_of_file {
            if tier == Tier::Remote {
                m.miss_files.inc()
            } else {
                m.hit_files.inc()
            };
        }
    }

    /// Read-ahead fetches started and not finished yet.
    pub fn readahead_in_flight(&self) -> usize {
        *self.inner.readahead_in_flight.borrow()
    }

    /// Resolves once no read-ahead fetch is in flight (at once when none is).
    pub async fn readahead_settled(&self) {
        let mut rx = self.inner.readahead_in_flight.subscribe();
        // the sender lives in `inner`, which `self` keeps alive: wait_for cannot fail
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn readahead(&self, f: &FileRef, path: &str, last: u32) {
        let n = self.block_count(f.size);
        let until = (last + self.inner.cfg.readahead_blocks).min(n.saturating_sub(1));
        for i in last + 1..=until {
            let key = BlockKey {
                file: f.key,
                index: i,
            };
            if self.inner.hybrid.memory().contains(&key) {
                continue;
            }
            let (this, f, path) = (self.clone(), *f, path.to_string());
            let in_flight = InFlight::new(self.inner.clone());
            tokio::spawn(async move {
                let _in_flight = in_flight;
                if let Err(e) = this.get_block(&f, &path, i).await.map(|_| ()) {
                    tracing::debug!(path, block = i, error = %e, "read-ahead failed");
                }
            });
        }
    }

    /// One block, verified against the current metadata; fetched (once, however many callers
    /// wait) when missing, stale or corrupt. Bounded by the read timeout.
    pub async fn get_block(&self, f: &FileRef, path: &str, index: u32) -> Result<(Block, Tier)> {
        let key = BlockKey { file: f.key, index };
        let m = &self.inner.metrics;
        let timeout = self.inner.cfg.read_timeout;
        if let Some(since) = self.failed_recently(&key) {
            m.read_errors.inc();
            return Err(DatacacheError::Unavailable {
                path: path.to_string(),
                since,
            });
        }
        let on_disk = self.inner.hybrid.storage().may_contains(&key);
        let (start, end) = self.block_range(f.size, index);
        let (op, metrics, p, etag, size) = (
            self.inner.op.clone(),
            m.clone(),
            path.to_string(),
            f.etag,
            f.size,
        );
        // the read timeout bounds the remote fetch (once, shared by every waiter); disk-tier loads
        // are local and only get a generous safety bound
        let fut = self.inner.hybrid.get_or_fetch(&key, move || async move {
            match tokio::time::timeout(
                timeout,
                fetch_block(&op, &metrics, &p, start, end, size, etag),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    metrics.read_timeouts.inc();
                    tracing::warn!(
                        path = p,
                        block = index,
                        timeout_ms = timeout.as_millis() as u64,
                        "uncached read timed out"
                    );
                    Err(DatacacheError::Timeout {
                        path: p,
                        after: timeout,
                    })
                }
            }
        });
        let entry = match tokio::time::timeout(timeout * 3 + Duration::from_secs(30), fut).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                m.read_errors.inc();
                self.note_failure(key);
                return Err(DatacacheError::Cache(Box::new(e)));
            }
            Err(_) => {
                self.note_failure(key);
                return Err(self.timed_out(path, index));
            }
        };
        let b = entry.value();
        let src = entry.source();
        if src == Source::Outer {
            if on_disk {
                m.corrupt_blocks.inc();
                tracing::warn!(
                    path,
                    block = index,
                    "disk cache block unreadable or failed its checksum; refetched"
                );
            }
            return Ok((b.clone(), Tier::Remote));
        }
        let disk = src == Source::Disk;
        if !Self::matches(b, f) {
            m.stale_blocks.inc();
            tracing::warn!(
                path,
                block = index,
                cached_size = b.file_size,
                size = f.size,
                "cached block does not match the current etag or size; refetching"
            );
        } else if disk && xxh3_64(&b.data) != b.checksum {
            m.corrupt_blocks.inc();
            tracing::warn!(
                path,
                block = index,
                "cached block failed its checksum; refetching"
            );
        } else {
            return Ok((b.clone(), if disk { Tier::Disk } else { Tier::Memory }));
        }
        drop(entry);
        // replace the bad entry: the new value supersedes it in memory and on disk
        let fresh = tokio::time::timeout(
            timeout,
            fetch_block(&self.inner.op, m, path, start, end, f.size, f.etag),
        )
        .await
        .map_err(|_| self.timed_out(path, index))?
        .inspect_err(|_| {
            m.read_errors.inc();
        })?;
        self.inner.hybrid.insert(key, fresh.clone());
        Ok((fresh, Tier::Remote))
    }

    fn failed_recently(&self, key: &BlockKey) -> Option<Duration> {
        if self.inner.failure_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.inner.recent_failures.lock();
        let since = map.get(key)?.elapsed();
        if since < FAIL_WINDOW {
            return Some(since);
        }
        map.remove(key);
        self.inner.failure_count.store(map.len(), Ordering::Relaxed);
        None
    }

    fn note_failure(&self, key: BlockKey) {
        let mut map = self.inner.recent_failures.lock();
        if map.len() > 100_000 {
            map.retain(|_, t| t.elapsed() < FAIL_WINDOW);
        }
        map.insert(key, Instant::now());
        self.inner.failure_count.store(map.len(), Ordering::Relaxed);
    }

    fn timed_out(&self, path: &str, index: u32) -> DatacacheError {
        let m = &self.inner.metrics;
        let timeout = self.inner.cfg.read_timeout;
        m.read_errors.inc();
        m.read_timeouts.inc();
        tracing::warn!(
            path,
            block = index,
            timeout_ms = timeout.as_millis() as u64,
            "uncached read timed out"
        );
        DatacacheError::Timeout {
            path: path.to_string(),
            after: timeout,
        }
    }

    /// Whether every block of the file is indexed by the disk tier (cheap, no I/O).
    pub fn indexed_on_disk(&self, f: &FileRef) -> bool {
        (0..self.block_count(f.size)).all(|i| {
            self.inner.hybrid.storage().may_contains(&BlockKey {
                file: f.key,
                index: i,
            })
        })
    }

    /// Reads every block of the file back from the disk tier and checks size, ETag and checksum.
    pub async fn verify_on_disk(&self, f: &FileRef) -> bool {
        for i in 0..self.block_count(f.size) {
            let key = BlockKey {
                file: f.key,
                index: i,
            };
            let (start, end) = self.block_range(f.size, i);
            let ok = match self.inner.hybrid.storage().load(&key).await {
                Ok(Load::Entry { value, .. }) => {
                    Self::matches(&value, f)
                        && value.data.len() as u64 == end - start
                        && xxh3_64(&value.data) == value.checksum
                }
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Fetches every block of the file from the remote straight into the disk tier (warm-up).
    /// Returns the bytes fetched.
    pub async fn fetch_to_disk(&self, f: &FileRef, path: &str) -> Result<u64> {
        let mut total = 0;
        for i in 0..self.block_count(f.size) {
            let (start, end) = self.block_range(f.size, i);
            let fut = fetch_block(
                &self.inner.op,
                &self.inner.metrics,
                path,
                start,
                end,
                f.size,
                f.etag,
            );
            let b = tokio::time::timeout(self.inner.cfg.read_timeout, fut)
                .await
                .map_err(|_| DatacacheError::Timeout {
                    path: path.to_string(),
                    after: self.inner.cfg.read_timeout,
                })??;
            total += b.data.len() as u64;
            self.inner
                .hybrid
                .storage_writer(BlockKey {
                    file: f.key,
                    index: i,
                })
                .force()
                .insert(b);
        }
        Ok(total)
    }

    /// Waits until queued disk writes are flushed.
    pub async fn flush(&self) {
        self.inner.hybrid.storage().wait().await;
    }

    /// Bytes held by the memory tier.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.hybrid.memory().usage() as u64
    }

    /// Bytes allocated by the disk tier's files (its device files are sparse).
    pub fn disk_bytes(&self) -> u64 {
        allocated_bytes(&self.inner.cfg.dir.join("blocks"))
    }

    /// Updates the per-tier gauges.
    pub fn update_tier_metrics(&self) {
        self.inner
            .metrics
            .set_tier_bytes(self.memory_bytes(), self.disk_bytes());
    }

    /// Flushes and closes the cache; the disk tier is reused by the next open.
    pub async fn close(&self) -> Result<()> {
        self.inner
            .hybrid
            .close()
            .await
            .map_err(|e| DatacacheError::Cache(Box::new(e)))
    }
}
