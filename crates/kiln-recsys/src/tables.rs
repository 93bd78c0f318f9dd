//! Live embedding tables: the registry that lets a new model version (or another backend
//! serving the same model) share the tables of the loaded one, and the tables of one model
//! version with their [`SparseParameters`] control plane (listing, sequenced deltas).
//!
//! A table is named `<model>/<table>`. Loading a version whose weights file has no
//! `<table>.weight` shares the live table of that name, with every delta applied so far; one
//! that has it builds a new table from the file, which then becomes the live one.

use crate::spec::{Layout, TableSpec};
use crate::weights::WeightsFile;
use kiln_core::{DeltaAck, Error, Result, SparseParameters, SparseTableInfo};
use kiln_embed::{EmbedCollector, EmbedError, Table};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Rows inserted per write while a table loads.
const LOAD_CHUNK_ROWS: usize = 16_384;

pub(crate) fn embed_err(table: &str, e: EmbedError) -> Error {
    Error::invalid(format!("table {table}: {e}"))
}

/// The live tables of loaded models, by `<model>/<table>`, and the Prometheus collector of their
/// metrics. Backends holding the same registry (`Arc`) share tables.
#[derive(Default)]
pub struct TableRegistry {
    live: Mutex<HashMap<String, Weak<Table>>>,
    collector: EmbedCollector,
}

impl TableRegistry {
    /// A registry with no tables yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The collector of every table's metrics (`kiln_embed_*`); register it once.
    pub fn collector(&self) -> &EmbedCollector {
        &self.collector
    }

    /// The live table `<model>/<spec.name>` if `weights` has no `<name>.weight`, otherwise a new
    /// table loaded from the weights (with `<name>.keys` as its keys when present, else row
    /// numbers), which becomes the live one.
    pub fn open(&self, model: &str, spec: &TableSpec, weights: &WeightsFile) -> Result<Arc<Table>> {
        let full = format!("{model}/{}", spec.name);
        let tensor = format!("{}.weight", spec.name);
        if !weights.has(&tensor) {
            let live = self.live.lock().get(&full).and_then(Weak::upgrade);
            return live.ok_or_else(|| {
                Error::invalid(format!(
                    "table '{}': the weights have no '{tensor}' and no loaded version of '{model}' has this table to share",
                    spec.name
                ))
            });
        }
        let shape = weights.shape(&tensor)?;
        if shape.len() != 2 || shape[1] == 0 {
            return Err(Error::invalid(format!(
                "table '{}': '{tensor}' has shape {shape:?}; [rows, dim] expected",
                spec.name
            )));
        }
        let (rows, dim) = (shape[0], shape[1]);
        let keys = if weights.has(&format!("{}.keys", spec.name)) {
            let k = weights.i64(&format!("{}.keys", spec.name))?;
            if k.len() != rows {
                return Err(Error::invalid(format!(
                    "table '{}': {} keys for {rows} rows",
                    spec.name,
                    k.len()
                )));
            }
            Some(k)
        } else {
            None
        };
        let mut config = spec.config.clone();
        config.name = full.clone();
        config.dim = dim;
        config.initial_rows = rows;
        let direct = match spec.layout {
            Layout::Hashed => false,
            Layout::Direct if keys.is_some() => {
                return Err(Error::invalid(format!(
                    "table '{}': layout = \"direct\" addresses row k by key k, but the weights carry '{}.keys'; use layout = \"hashed\"",
                    spec.name, spec.name
                )))
            }
            Layout::Direct => true,
        };
        if direct {
            config.key_space = Some(rows.max(1) as u64);
        }
        let table = Table::new(config)
            .map_err(|e| Error::invalid(format!("table '{}': {e}", spec.name)))?;
        let started = Instant::now();
        let mut next = 0usize;
        weights.f32_chunks(&tensor, LOAD_CHUNK_ROWS, |chunk| {
            let n = chunk.len() / dim;
            let ks: Vec<u64> = match &keys {
                Some(k) => k[next..next + n].iter().map(|&k| k as u64).collect(),
                None => (next as u64..(next + n) as u64).collect(),
            };
            table
                .upsert(&ks, chunk, None)
                .map_err(|e| Error::invalid(format!("table '{}': {e}", spec.name)))?;
            next += n;
            if rows >= 1 << 20 && next % (1 << 20) < n {
                tracing::info!(table = %full, rows = next, of = rows, "loading table");
            }
            Ok(())
        })?;
        tracing::info!(table = %full, rows, dim, seconds = started.elapsed().as_secs_f64(), "table loaded");
        let table = Arc::new(table);
        self.live.lock().insert(full, Arc::downgrade(&table));
        Ok(table)
    }

    /// Opens every table of a model version (see [`TableRegistry::open`]). Their metrics are
    /// exported once [`ModelTables::publish_metrics`] is called, when the version is ready.
    pub fn open_all(
        &self,
        model: &str,
        specs: &[TableSpec],
        weights: &WeightsFile,
    ) -> Result<ModelTables> {
        let tables = specs
            .iter()
            .map(|t| self.open(model, t, weights))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelTables {
            specs: specs.to_vec(),
            tables,
            collector: self.collector.clone(),
            published: false,
        })
    }
}

/// The tables of one model version, in the order of its spec, and their control plane.
///
/// When the last version using a table drops it, its metrics leave the collector.
pub struct ModelTables {
    specs: Vec<TableSpec>,
    tables: Vec<Arc<Table>>,
    collector: EmbedCollector,
    published: bool,
}

impl ModelTables {
    /// Exports the tables' metrics through the registry's collector.
    pub fn publish_metrics(&mut self) {
        for t in &self.tables {
            self.collector.add(t.metrics().clone());
        }
        self.published = true;
    }

    /// The tables, in the order of the spec's `tables`.
    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }

    /// The table at index `i` of the spec's `tables`.
    pub fn get(&self, i: usize) -> &Table {
        &self.tables[i]
    }
}

impl Drop for ModelTables {
    fn drop(&mut self) {
        if !self.published {
            return;
        }
        for t in &self.tables {
            // the last version using a table takes its metrics away
            if Arc::strong_count(t) == 1 {
                self.collector.remove(t.name());
            }
        }
    }
}

impl ModelTables {
    /// The table named `table` in the spec, or a not-found error listing the model's tables.
    fn named(&self, table: &str) -> Result<&Arc<Table>> {
        match self.specs.iter().position(|t| t.name == table) {
            Some(i) => Ok(&self.tables[i]),
            None => Err(Error::not_found(format!(
                "table '{table}' is not a table of this model (tables: {:?})",
                self.specs.iter().map(|t| &t.name).collect::<Vec<_>>()
            ))),
        }
    }
}

impl SparseParameters for ModelTables {
    fn tables(&self) -> Vec<SparseTableInfo> {
        self.specs
            .iter()
            .zip(&self.tables)
            .map(|(spec, t)| SparseTableInfo {
                name: spec.name.clone(),
                dim: t.dim(),
                rows: t.len() as u64,
                bytes: t.heap_bytes() as u64,
                sources: t.sources(),
            })
            .collect()
    }

    fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck> {
        let Some(i) = self.specs.iter().position(|t| t.name == table) else {
            return Err(Error::not_found(format!(
                "table '{table}' is not a table of this model (tables: {:?})",
                self.specs.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        };
        let t = &self.tables[i];
        let delta = kiln_embed::decode_delta_for(table, t.name(), encoded)?;
        let outcome = t.apply(&delta).map_err(|e| embed_err(table, e))?;
        Ok(outcome.ack(t.last_sequence(&delta.source).unwrap_or(0)))
    }

    fn rows(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        let t = self.named(table)?;
        Ok(keys.iter().map(|&k| t.get(k)).collect())
    }

    fn reset_source(&self, table: &str, source: &str, seq: u64) -> Result<()> {
        self.named(table)?.reset_source(source, seq);
        Ok(())
    }
}
