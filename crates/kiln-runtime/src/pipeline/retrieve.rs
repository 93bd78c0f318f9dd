//! The item index of a pipeline's `retrieve` steps: exact top-k by dot product over item
//! embeddings that take deltas while serving.
//!
//! The rows live in a [`kiln_embed::Table`] (the store deltas, the rows endpoint and the Kafka
//! delta source write through [`ItemTables`]). Search reads a dense row-major copy of the table
//! with the key of each row, scored with one GEMM per block of queries. The copy is brought up
//! to date lazily: every change bumps a generation, and the first search that sees a newer
//! generation updates it (one update at a time; searches running meanwhile keep their
//! snapshot). Deltas that only rewrite rows already present are patched in (their rows copied
//! into place, in the copy itself when no search holds it); one that adds, removes or evicts
//! rows, or more changed keys than a quarter of the rows, makes it a rebuild. Rows keep their
//! positions across rebuilds (the file's order, then rows added by deltas in key order), so
//! ties, broken by the lower position, stay stable.

use super::ops::top_positions;
use kiln_core::{DataType, DeltaAck, Error, Result, SparseParameters, SparseTableInfo, Tensor};
use kiln_embed::{ApplyOutcome, Table, TableConfig};
use parking_lot::{Mutex, RwLock};
use safetensors::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(test)]
mod tests;

/// Scores computed per GEMM: a block of queries against every item, at most this many floats.
const SCORE_BLOCK: usize = 1 << 22;

/// Item embeddings held in a kiln-embed [`Table`], with a dense row-major copy for the GEMM.
pub struct ItemIndex {
    /// The step's `table` (the file stem), which deltas address.
    name: String,
    table: Table,
    /// Bumped after every change to `table`.
    generation: AtomicU64,
    dense: RwLock<Arc<Dense>>,
    rebuild: Mutex<()>,
    /// What changed since the dense copy was last brought up to date.
    changes: Mutex<Changes>,
    /// Dense copies made anew from the whole table (changes not patched in).
    rebuilds: AtomicU64,
}

/// The dense copy as of `generation`: `keys[i]` is the key of row `i` of `values` (`[n, dim]`),
/// `position` the other way round.
#[derive(Clone)]
struct Dense {
    generation: u64,
    keys: Arc<Vec<u64>>,
    position: Arc<HashMap<u64, usize>>,
    values: Vec<f32>,
}

impl Dense {
    fn new(generation: u64, keys: Vec<u64>, values: Vec<f32>) -> Dense {
        let position = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        Dense {
            generation,
            keys: Arc::new(keys),
            position: Arc::new(position),
            values,
        }
    }
}

/// Keys whose rows deltas rewrote, or `full` when the set of rows changed (or too many keys
/// did for a patch to pay).
#[derive(Default)]
struct Changes {
    keys: Vec<u64>,
    full: bool,
}

fn file_err(path: &Path, m: impl std::fmt::Display) -> Error {
    Error::invalid(format!("item table {}: {m}", path.display()))
}

/// `embeddings` `[N, D]` as f32 (F32 or F16) and `keys` `[N]` of `file`.
fn read_items(path: &Path, bytes: &[u8]) -> Result<(Vec<i64>, usize, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(path, e))?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| file_err(path, format!("tensor '{name}' is missing")))
    };
    let (emb, keys) = (get("embeddings")?, get("keys")?);
    let &[rows, dim] = emb.shape() else {
        return Err(file_err(
            path,
            format!(
                "tensor 'embeddings' has shape {:?}; [N, D] expected",
                emb.shape()
            ),
        ));
    };
    if dim == 0 {
        return Err(file_err(path, "tensor 'embeddings' has no columns (D = 0)"));
    }
    let values: Vec<f32> = match emb.dtype() {
        Dtype::F32 => emb
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => emb
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => {
            return Err(file_err(
                path,
                format!("tensor 'embeddings' is {d:?}; F32 or F16 expected"),
            ))
        }
    };
    if keys.dtype() != Dtype::I64 {
        return Err(file_err(
            path,
            format!("tensor 'keys' is {:?}; I64 expected", keys.dtype()),
        ));
    }
    if keys.shape() != [rows] {
        return Err(file_err(
            path,
            format!(
                "tensor 'keys' has shape {:?}; [{rows}] expected (one per row of 'embeddings')",
                keys.shape()
            ),
        ));
    }
    let keys: Vec<i64> = keys
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    Ok((keys, dim, values))
}

impl ItemIndex {
    /// Loads `<dir>/<table>.safetensors`: `keys` I64 \[N\] (distinct item ids) and
    /// `embeddings` F32 or F16 [N, D]. `model` names the pipeline in metrics/errors.
    pub fn load(dir: &Path, table: &str, model: &str) -> Result<Arc<ItemIndex>> {
        if table.is_empty() || table.starts_with('.') || table.contains(['/', '\\']) {
            return Err(Error::invalid(format!(
                "table: '{table}' is not a plain file name"
            )));
        }
        let path = dir.join(format!("{table}.safetensors"));
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
        let (ids, dim, values) = read_items(&path, &bytes)?;
        drop(bytes);
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|&&k| !seen.insert(k)) {
            return Err(file_err(&path, format!("key {dup} appears more than once")));
        }
        drop(seen);
        let keys: Vec<u64> = ids.iter().map(|&k| k as u64).collect();
        let mut config = TableConfig::new(format!("{model}/{table}"), dim);
        config.initial_rows = keys.len();
        let t = Table::new(config).map_err(|e| file_err(&path, e))?;
        t.upsert(&keys, &values, None)
            .map_err(|e| file_err(&path, e))?;
        tracing::info!(model, table, rows = keys.len(), dim, "item table loaded");
        Ok(Arc::new(ItemIndex {
            name: table.to_string(),
            table: t,
            generation: AtomicU64::new(0),
            dense: RwLock::new(Arc::new(Dense::new(0, keys, values))),
            rebuild: Mutex::new(()),
            changes: Mutex::new(Changes::default()),
            rebuilds: AtomicU64::new(0),
        }))
    }

    /// The table's name (the step's `table`), which deltas address.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying store (its metrics, for a collector).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Elements per item embedding (D).
    pub fn dim(&self) -> usize {
        self.table.dim()
    }

    /// Items in the index.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the index holds no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dense copy, brought up to date first if the table changed since it was made.
    fn snapshot(&self) -> Arc<Dense> {
        let current = self.dense.read().clone();
        if current.generation == self.generation.load(Ordering::Acquire) {
            return current;
        }
        let _one = self.rebuild.lock();
        let current = self.dense.read().clone();
        // read before the changes and the rows: a change landing meanwhile has bumped the
        // generation after recording its keys, so the next search sees the copy stale
        let generation = self.generation.load(Ordering::Acquire);
        if current.generation == generation {
            return current;
        }
        let changes = std::mem::take(&mut *self.changes.lock());
        drop(current);
        if !changes.full {
            let mut w = self.dense.write();
            if Arc::get_mut(&mut w).is_none() {
                // a search holds the copy: patch a copy of it
                *w = Arc::new(Dense::clone(&w));
            }
            if let Some(d) = Arc::get_mut(&mut w) {
                if self.patch(d, &changes.keys) {
                    d.generation = generation;
                    return w.clone();
                }
            }
        }
        let current = self.dense.read().clone();
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(self.rebuilt(&current, generation));
        *self.dense.write() = next.clone();
        next
    }

    /// Copies the rows of `keys` from the table into `dense`; false (with `dense` partly
    /// patched, to be rebuilt) when one of them has no row or no position.
    fn patch(&self, dense: &mut Dense, keys: &[u64]) -> bool {
        let dim = self.dim();
        for &key in keys {
            let Some(&i) = dense.position.get(&key) else {
                return false;
            };
            match self
                .table
                .get_into(key, &mut dense.values[i * dim..(i + 1) * dim])
            {
                Ok(true) => {}
                _ => return false,
            }
        }
        true
    }

    /// A new dense copy of the table: rows of `prev` that are still present keep their order,
    /// new rows follow by key.
    fn rebuilt(&self, prev: &Dense, generation: u64) -> Dense {
        let dim = self.dim();
        let position = &prev.position;
        let mut values = vec![0.0f32; prev.keys.len() * dim];
        let mut present = vec![false; prev.keys.len()];
        let mut added: Vec<(u64, Vec<f32>)> = Vec::new();
        self.table
            .for_each_row(|key, row| match position.get(&key) {
                Some(&i) => {
                    values[i * dim..(i + 1) * dim].copy_from_slice(row);
                    present[i] = true;
                }
                None => added.push((key, row.to_vec())),
            });
        added.sort_unstable_by_key(|(k, _)| *k);
        let mut keys = Vec::with_capacity(prev.keys.len() + added.len());
        let mut kept = 0;
        for (i, &key) in prev.keys.iter().enumerate() {
            if present[i] {
                values.copy_within(i * dim..(i + 1) * dim, kept * dim);
                keys.push(key);
                kept += 1;
            }
        }
        values.truncate(kept * dim);
        for (key, row) in added {
            keys.push(key);
            values.extend_from_slice(&row);
        }
        Dense::new(generation, keys, values)
    }

    /// Top-k for each row of `query` FP32 [B, D]: (ids INT64 \[B,k\], scores FP32 \[B,k\],
    /// embeddings FP32 \[B,k,D\] if `want_embeddings`). Descending by dot product, ties by the
    /// lower row position; `k` larger than the number of items gives every item.
    pub fn search(
        &self,
        query: &Tensor,
        k: usize,
        want_embeddings: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let dim = self.dim();
        let (&[b, d], DataType::Fp32) = (&query.shape[..], query.dtype) else {
            return Err(Error::invalid(format!(
                "query: {} {:?}; FP32 [B, {dim}] expected",
                query.dtype, query.shape
            )));
        };
        if d != dim as i64 || b < 0 || query.data.len() != b as usize * dim * 4 {
            return Err(Error::invalid(format!(
                "query: shape {:?} with {} bytes; FP32 [B, {dim}] expected",
                query.shape,
                query.data.len()
            )));
        }
        let q = query.to_vec::<f32>()?;
        let dense = self.snapshot();
        let (b, n) = (b as usize, dense.keys.len());
        let k = k.min(n);
        let mut ids = Vec::with_capacity(b * k);
        let mut scores = Vec::with_capacity(b * k);
        let mut embeddings = Vec::with_capacity(if want_embeddings { b * k * dim } else { 0 });
        let block = (SCORE_BLOCK / n.max(1)).max(1);
        let mut buf = Vec::new();
        let mut order = Vec::with_capacity(n);
        for first in (0..b).step_by(block) {
            let rows = block.min(b - first);
            buf.resize(rows * n, 0.0f32);
            score(
                &q[first * dim..(first + rows) * dim],
                &dense.values,
                rows,
                n,
                dim,
                &mut buf,
            );
            for row in buf.chunks_exact(n.max(1)).take(rows) {
                top_positions(row, k, &mut order);
                for &p in &order {
                    ids.push(dense.keys[p] as i64);
                    scores.push(row[p]);
                    if want_embeddings {
                        embeddings.extend_from_slice(&dense.values[p * dim..(p + 1) * dim]);
                    }
                }
            }
            if n == 0 {
                break;
            }
        }
        let shape = vec![b as i64, k as i64];
        let embeddings = want_embeddings
            .then(|| Tensor::from_vec("", vec![b as i64, k as i64, dim as i64], &embeddings));
        Ok((
            Tensor::from_vec("", shape.clone(), &ids),
            Tensor::from_vec("", shape, &scores),
            embeddings,
        ))
    }

    /// Records a change to the rows of `keys` (`None`: to the set of rows), then bumps the
    /// generation.
    fn changed(&self, keys: Option<&[u64]>) {
        {
            let mut c = self.changes.lock();
            match keys {
                Some(keys) if !c.full && c.keys.len() + keys.len() <= self.len() / 4 => {
                    c.keys.extend_from_slice(keys)
                }
                _ => {
                    *c = Changes {
                        keys: Vec::new(),
                        full: true,
                    }
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// `out[rows, n] = q[rows, dim] . items[n, dim]^T`.
fn score(q: &[f32], items: &[f32], rows: usize, n: usize, dim: usize, out: &mut [f32]) {
    if rows == 0 || n == 0 {
        return;
    }
    assert!(q.len() == rows * dim && items.len() == n * dim && out.len() == rows * n);
    let parallelism = if rows * n * dim >= 1 << 22 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // Computed as out^T[n, rows] = items[n, dim] . q^T[dim, rows], so that the large operand
    // is the left-hand side, which the GEMM reads in place, rather than a right-hand side it
    // would pack on every call.
    // SAFETY: `out` holds [rows, n] row-major, i.e. element (item i, query j) of out^T at
    // j * n + i (column stride n, row stride 1); `items` is [n, dim] row-major (column stride
    // 1, row stride dim); q^T's element (d, j) is at j * dim + d (column stride dim, row
    // stride 1). The lengths are asserted above; nothing overlaps.
    unsafe {
        gemm::gemm(
            n,
            rows,
            dim,
            out.as_mut_ptr(),
            n as isize,
            1,
            false,
            items.as_ptr(),
            1,
            dim as isize,
            q.as_ptr(),
            dim as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The pipeline's tables (one per retrieve step) as kiln_core::SparseParameters, so the admin
/// delta endpoint, the rows endpoint and the Kafka delta source update item embeddings while serving.
pub struct ItemTables(pub Vec<Arc<ItemIndex>>);

impl ItemTables {
    fn named(&self, table: &str) -> Result<&Arc<ItemIndex>> {
        self.0.iter().find(|t| t.name == table).ok_or_else(|| {
            Error::not_found(format!(
                "table '{table}' is not a table of this pipeline (tables: {:?})",
                self.0.iter().map(|t| &t.name).collect::<Vec<_>>()
            ))
        })
    }
}

impl SparseParameters for ItemTables {
    fn tables(&self) -> Vec<SparseTableInfo> {
        self.0
            .iter()
            .map(|t| SparseTableInfo {
                name: t.name.clone(),
                dim: t.dim(),
                rows: t.len() as u64,
                bytes: (t.table.heap_bytes() + t.dense.read().values.len() * 4) as u64,
                sources: t.table.sources(),
            })
            .collect()
    }

    fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck> {
        let index = self.named(table)?;
        let t = &index.table;
        let delta = kiln_embed::decode_delta_for(table, t.name(), encoded)?;
        let outcome = t.apply(&delta);
        match &outcome {
            Ok(ApplyOutcome::Duplicate { .. }) => {}
            Ok(ApplyOutcome::Applied {
                inserted: 0,
                removed: 0,
                evicted: 0,
                ..
            }) => index.changed(Some(&delta.keys)),
            // rows added or gone, or an error after part of the delta was written
            _ => index.changed(None),
        }
        let outcome = outcome.map_err(|e| Error::invalid(format!("table {table}: {e}")))?;
        Ok(outcome.ack(t.last_sequence(&delta.source).unwrap_or(0)))
    }

    fn rows(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        let t = self.named(table)?;
        Ok(keys.iter().map(|&k| t.table.get(k)).collect())
    }

    fn reset_source(&self, table: &str, source: &str, seq: u64) -> Result<()> {
        self.named(table)?.table.reset_source(source, seq);
        Ok(())
    }
}
