//! One cache instance: the locked cache directory, the under-storage, the metadata and the data
//! cache. Shared by the mount daemon, standalone warm-up and the admin endpoint.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opendal::Operator;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheConfig, DataCache};
use crate::error::{DatacacheError, Result};
use crate::fs::MetaState;
use crate::listing::{list_source, load_snapshot, save_snapshot, snapshot_path};
use crate::meta::MetaTree;
use crate::metrics::Metrics;
use crate::source::{build_operator, SourceConfig};
use crate::warmup::WarmupProgress;

/// Everything needed to open a cache instance.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Under-storage.
    pub source: SourceConfig,
    /// Data cache sizes and bounds (its `dir` is also where the lock and snapshot live).
    pub cache: CacheConfig,
    /// Listing to use instead of a remote listing (`path[<TAB>size]` lines).
    pub manifest: Option<PathBuf>,
    /// Age after which the metadata is listed again.
    pub meta_ttl: Duration,
}

/// An open cache instance. Holds an exclusive lock on the cache directory while alive.
#[derive(Debug)]
pub struct CacheService {
    /// Configuration it was opened with.
    pub config: ServiceConfig,
    /// Under-storage operator.
    pub op: Operator,
    /// Metadata (current tree and older generations).
    pub meta: Arc<MetaState>,
    /// Block cache.
    pub data: DataCache,
    /// Metrics of this instance.
    pub metrics: Arc<Metrics>,
    /// Progress of the running or last warm-up.
    pub warmup: Arc<WarmupProgress>,
    /// Serializes refreshes.
    refresh_lock: tokio::sync::Mutex<()>,
    /// The flock'ed lock file; released when dropped.
    _lock: File,
}

/// Outcome of a metadata refresh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshReport {
    /// Files in the new listing.
    pub files: u64,
    /// Bytes in the new listing.
    pub bytes: u64,
    /// Metadata generation now served.
    pub generation: u64,
    /// Time the listing took.
    pub elapsed_ms: u64,
}

/// Takes the exclusive lock of a cache directory and writes our pid into it.
pub fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| DatacacheError::io(dir, e))?;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| DatacacheError::io(&path, e))?;
    // SAFETY: flock on a valid, owned descriptor; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Err(DatacacheError::Locked {
            dir: dir.to_path_buf(),
            pid,
        });
    }
    f.set_len(0).map_err(|e| DatacacheError::io(&path, e))?;
    std::fs::write(&path, std::process::id().to_string())
        .map_err(|e| DatacacheError::io(&path, e))?;
    Ok(f)
}

impl CacheService {
    /// Locks the cache directory, opens the data cache (reusing the disk tier) and loads the
    /// metadata: from the snapshot when younger than the TTL, else from the remote; a failed
    /// listing falls back to an older snapshot so cached data stays readable with the remote down.
    pub async fn open(config: ServiceConfig) -> Result<Self> {
        let lock = lock_dir(&config.cache.dir)?;
        let metrics = Arc::new(Metrics::new());
        let op = build_operator(&config.source)?;
        let data = DataCache::open(config.cache.clone(), op.clone(), metrics.clone()).await?;
        let source = config.source.spec.display();
        let snap_path = snapshot_path(&config.cache.dir, &config.source.spec);
        let snapshot = match load_snapshot(&snap_path, &source) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable metadata snapshot");
                None
            }
        };
        let tree = match snapshot {
            Some(s) if s.age < config.meta_ttl => {
                tracing::info!(
                    files = s.tree.file_count(),
                    age_s = s.age.as_secs(),
                    "metadata loaded from snapshot"
                );
                s.tree
            }
            stale => match Self::list(&op, &config, &metrics).await {
                Ok(tree) => {
                    if let Err(e) = save_snapshot(&snap_path, &source, &tree) {
                        tracing::warn!(error = %e, "could not save the metadata snapshot");
                    }
                    tree
                }
                Err(e) => match stale {
                    Some(s) => {
                        tracing::warn!(error = %e, age_s = s.age.as_secs(), "listing failed; serving the older metadata snapshot");
                        s.tree
                    }
                    None => return Err(e),
                },
            },
        };
        metrics.meta_files.set(tree.file_count() as i64);
        metrics.meta_heap_bytes.set(tree.heap_bytes() as i64);
        Ok(Self {
            meta: Arc::new(MetaState::new(tree)),
            data,
            op,
            metrics,
            warmup: Arc::new(WarmupProgress::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            config,
            _lock: lock,
        })
    }

    async fn list(op: &Operator, config: &ServiceConfig, metrics: &Metrics) -> Result<MetaTree> {
        let entries =
            list_source(op, &config.source.spec, config.manifest.as_deref(), metrics).await?;
        metrics.meta_refreshes.inc();
        Ok(MetaTree::build(entries))
    }

    /// Lists the remote again and swaps the new tree in; the old one keeps serving until then.
    pub async fn refresh(&self) -> Result<RefreshReport> {
        let _g = self.refresh_lock.lock().await;
        let t = Instant::now();
        let tree = Self::list(&self.op, &self.config, &self.metrics).await?;
        let snap = snapshot_path(&self.config.cache.dir, &self.config.source.spec);
        if let Err(e) = save_snapshot(&snap, &self.config.source.spec.display(), &tree) {
            tracing::warn!(error = %e, "could not save the metadata snapshot");
        }
        let (files, bytes) = (tree.file_count(), tree.total_bytes());
        self.metrics.meta_files.set(files as i64);
        self.metrics.meta_heap_bytes.set(tree.heap_bytes() as i64);
        let generation = self.meta.replace(tree);
        let elapsed_ms = t.elapsed().as_millis() as u64;
        tracing::info!(files, bytes, generation, elapsed_ms, "metadata refreshed");
        Ok(RefreshReport {
            files,
            bytes,
            generation,
            elapsed_ms,
        })
    }

    /// Flushes the disk tier and closes the cache.
    pub async fn close(&self) -> Result<()> {
        self.data.close().await
    }
}
