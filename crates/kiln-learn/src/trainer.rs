//! What every trainer offers the learner loop: learn a batch with progressive validation, hand
//! out the rows that changed, and save or restore its state.

use std::path::Path;

use crate::error::Result;
use crate::sample::Sample;

/// Changed rows of one table, ready to become a kiln-embed delta.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableDelta {
    /// The served table's name.
    pub table: String,
    /// Elements per row.
    pub dim: usize,
    /// Keys of the rows written.
    pub keys: Vec<u64>,
    /// Row values, `keys.len() * dim`, row-major: what serving must hold.
    pub values: Vec<f32>,
    /// Keys of rows removed (expired by TTL).
    pub tombstones: Vec<u64>,
}

/// A trainer of one model.
pub trait Trainer: Send {
    /// Scores every sample with the current parameters (progressive validation: each score is
    /// taken before its sample is learned), then learns from them. Returns the probabilities.
    fn train(&mut self, batch: &[Sample]) -> Vec<f32>;

    /// Rows whose served values changed since the last drain, per table, and tombstones.
    fn drain_deltas(&mut self) -> Vec<TableDelta>;

    /// The served values of `keys` in `table` (`None` for an absent row); `None` for an
    /// unknown table.
    fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>>;

    /// Writes all parameters and optimizer state under `dir` (an existing, empty directory).
    fn save(&self, dir: &Path) -> Result<()>;

    /// Restores what [`Trainer::save`] wrote.
    fn load(&mut self, dir: &Path) -> Result<()>;

    /// Writes every served table as a kiln-embed snapshot `dir/<table>.snap` (served values
    /// only).
    fn snapshot_served(&self, dir: &Path) -> Result<()>;
}
