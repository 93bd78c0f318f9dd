//! Kiln's runtime: the model repository (versions, hot reload, load/unload), one
//! dynamic-batching scheduler per model version, pipelines of models and built-in operations
//! ([`pipeline`]), traffic splits between versions ([`traffic`]), the response cache
//! ([`response_cache`]), Triton-style statistics and Prometheus metrics.
//!
//! Of Kiln's crates it depends on `kiln-core` and `kiln-embed` (the item tables of pipeline
//! `retrieve` steps): it registers no engine itself (see [`Backends`]; the binary does), and
//! never depends on the server above it. The crate feature `kafka` adds `delta_source` (the
//! Kafka delta-topic subscriber) and with it rdkafka; without it the runtime builds without a C
//! toolchain.

pub mod backends;
#[cfg(feature = "kafka")]
pub mod delta_source;
pub mod metrics;
pub mod model_config;
pub mod pipeline;
pub mod repository;
mod repository_files;
pub mod response_cache;
pub mod scheduler;
pub mod stats;
pub mod tables;
pub mod traffic;
pub mod version;
mod warmup;
mod worker;

pub use backends::Backends;
pub use metrics::RuntimeMetrics;
pub use repository::{check_model_name, ControlMode, IndexEntry, ModelRepository, VersionState};
pub use repository_files::{LoadRequest, MAX_LOAD_FILE_BYTES};
pub use tables::{VersionDeltaAck, VersionTable};
pub use version::{InferRequest, ServedVersion};
