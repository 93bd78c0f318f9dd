//! Kiln's online learner: impressions and actions in (Kafka or JSONL), joined into labelled
//! samples inside a time window, learned by an FTRL (wide) or a DLRM-style (deep) trainer with
//! progressive validation, and published as sequenced kiln-embed deltas to every serving replica
//! (a Kafka delta topic, or the servers' delta admin API).
//!
//! Features are hashed with [`kiln_recsys::features`], the function serving applies, so the
//! trainer and the server cannot disagree about a key.

pub mod checkpoint;
pub mod config;
pub mod deep;
pub mod error;
pub mod eval;
pub mod event;
pub mod featurize;
pub mod feed;
pub mod join;
pub mod journal;
pub mod learner;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod positions;
pub mod publish;
pub mod rows;
pub mod run;
pub mod sample;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod trainer;
pub mod trainers;
pub mod wide;

pub use error::{Error, Result};
pub use sample::Sample;
pub use trainer::{TableDelta, Trainer};
