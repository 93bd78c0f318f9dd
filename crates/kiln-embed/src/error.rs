//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the embedding store.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A table configuration is invalid (zero dim, shard count not a power of two, ...).
    #[error("invalid table config: {0}")]
    Config(String),
    /// Rows were given with a width that does not match the table's dim.
    #[error(
        "row width mismatch on table {table}: dim is {dim}, got {values} values for {rows} rows"
    )]
    DimMismatch {
        /// Table name.
        table: String,
        /// The table's dim.
        dim: usize,
        /// Number of rows (keys) given.
        rows: usize,
        /// Number of values given.
        values: usize,
    },
    /// A row was written with a key outside a direct table's key space.
    #[error("key {key} is outside table {table}'s key space 0..{key_space}")]
    KeyOutOfRange {
        /// Table name.
        table: String,
        /// The first key out of range.
        key: u64,
        /// The table's key space.
        key_space: u64,
    },
    /// A delta carries a NaN or infinite value (or one its storage type cannot hold) and the
    /// table does not allow them.
    #[error(
        "delta for table {table} carries the non-finite value {value} in the row of key {key} \
         (element {element}); refused: set allow_non_finite on the table to accept such values"
    )]
    NonFinite {
        /// Table name.
        table: String,
        /// The key of the first such row.
        key: u64,
        /// Element index within the row.
        element: usize,
        /// The value as stored (NaN, inf or -inf).
        value: f32,
    },
    /// A delta names another table.
    #[error("delta for table {delta_table:?} sent to table {table:?}")]
    WrongTable {
        /// The table applying it.
        table: String,
        /// The table the delta names.
        delta_table: String,
    },
    /// A lookup input is malformed (lengths that do not add up, a zero width, ...).
    #[error("invalid lookup input: {0}")]
    Input(String),
    /// A caller-provided output buffer has the wrong size.
    #[error("output buffer holds {got} floats, expected {expected}")]
    OutputSize {
        /// Floats the lookup writes.
        expected: usize,
        /// Floats in the buffer given.
        got: usize,
    },
    /// A delta's sequence number skips ahead of the next expected one and the table refuses gaps.
    #[error(
        "sequence gap from source {source_id:?} on table {table}: expected {expected}, got {got}"
    )]
    SequenceGap {
        /// Table name.
        table: String,
        /// The delta's source.
        source_id: String,
        /// The next sequence number the table expected from this source.
        expected: u64,
        /// The sequence number received.
        got: u64,
    },
    /// A binary delta could not be decoded.
    #[error("malformed delta: {0}")]
    Delta(String),
    /// A snapshot file is damaged (bad magic, truncated, checksum mismatch).
    #[error("corrupt snapshot {path}: {reason}")]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot is intact but does not fit the table it is restored into.
    #[error("snapshot {path} does not match table {table}: {reason}")]
    SnapshotMismatch {
        /// The snapshot file.
        path: PathBuf,
        /// Table name.
        table: String,
        /// What differs.
        reason: String,
    },
    /// An I/O error on a snapshot file.
    #[error("snapshot i/o on {path}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`EmbedError`].
pub type Result<T, E = EmbedError> = std::result::Result<T, E>;
