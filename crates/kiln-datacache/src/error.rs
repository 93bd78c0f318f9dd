//! Error type of the dataset cache.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the dataset cache.
///
/// Remote, cache and I/O errors keep their cause as `source`; nothing is turned into a string.
#[derive(Debug, thiserror::Error)]
pub enum DatacacheError {
    /// The `--source` URL could not be understood.
    #[error("invalid source {url:?}: {reason}")]
    InvalidSource {
        /// The URL as given (never carries credentials: those come from flags or env).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The flag or field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The under-storage (OpenDAL) answered with an error.
    #[error("remote {op} failed for {path:?}")]
    Remote {
        /// Operation: `list`, `read`, `stat`.
        op: &'static str,
        /// Path relative to the source root.
        path: String,
        /// The OpenDAL error (boxed: it is large, and every `Result` of the crate carries
        /// this enum).
        #[source]
        source: Box<opendal::Error>,
    },
    /// The remote returned a different number of bytes than the listing promised.
    #[error("remote object {path:?} changed: expected {expected} bytes, got {got}")]
    SizeMismatch {
        /// Path relative to the source root.
        path: String,
        /// Bytes expected from the metadata.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// A read of an uncached block did not complete within the configured time.
    #[error("read of {path:?} timed out after {after:?}")]
    Timeout {
        /// Path relative to the source root.
        path: String,
        /// The configured bound.
        after: Duration,
    },
    /// The block's fetch failed moments ago; answered without asking the remote again.
    #[error("remote unavailable for {path:?} (a fetch failed {since:?} ago)")]
    Unavailable {
        /// Path relative to the source root.
        path: String,
        /// Time since the failure.
        since: Duration,
    },
    /// No such file in the metadata cache.
    #[error("no such file in the dataset: {path:?}")]
    NotFound {
        /// Path relative to the source root.
        path: String,
    },
    /// The hybrid cache (foyer) failed.
    #[error("cache error")]
    Cache(#[source] Box<foyer::Error>),
    /// Local file-system error.
    #[error("i/o error on {path}")]
    Io {
        /// The local path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata snapshot on disk is unreadable or from another version.
    #[error("metadata snapshot {path} is invalid: {reason}")]
    Snapshot {
        /// Snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process holds the cache directory.
    #[error("cache directory {dir} is in use by another process (pid {pid:?})")]
    Locked {
        /// The cache directory.
        dir: PathBuf,
        /// The pid written by the holder, if readable.
        pid: Option<u32>,
    },
    /// Mounting or unmounting failed.
    #[error("mount error at {path}: {reason}")]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// What failed.
        reason: String,
        /// The OS error, when there is one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The admin endpoint of a running daemon could not be reached or answered an error.
    #[error("admin request to {url} failed: {reason}")]
    Admin {
        /// URL that was requested.
        url: String,
        /// What failed.
        reason: String,
    },
}

impl DatacacheError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DatacacheError> = std::result::Result<T, E>;
