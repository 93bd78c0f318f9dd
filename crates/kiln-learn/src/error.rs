//! The learner's error type: each variant says what failed, and messages name the file, field
//! or table involved.

use std::path::PathBuf;

/// What went wrong in the learner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file or flag is wrong; `file` and `field` say where.
    #[error("{file}: {field}: {reason}")]
    Config {
        /// The file (or `--flag`) holding the value.
        file: String,
        /// The field, dotted (`sources.kafka.brokers`).
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// An event could not be read.
    #[error("malformed event: {0}")]
    Event(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An embedding table refused an operation.
    #[error("table {table}: {source}")]
    Table {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: kiln_embed::EmbedError,
    },
    /// A checkpoint is missing, corrupt or from another model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Publishing deltas failed.
    #[error("publish to {sink}: {reason}")]
    Publish {
        /// The sink (a server URL or a topic).
        sink: String,
        /// Why.
        reason: String,
    },
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(String),
}

impl Error {
    /// A configuration error.
    pub fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The learner's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
