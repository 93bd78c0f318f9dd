//! Snapshots for replicas that start late, and dense weights as new model versions.
//!
//! # Snapshots
//!
//! Every `snapshot_interval_s`, right after a publish (batch `b`), the learner writes the
//! trainer's served tables to `<snapshot_dir>/<model>/.tmp-<n>/<table>.snap` (kiln-embed
//! snapshot format), each carrying the delta source `<name>@<epoch>` at the table's sequence
//! number in batch `b`, so a replica that restores it and then reads the delta topic from the
//! manifest's offsets sees the next delta as the next sequence number. Once batch `b` (and
//! every earlier one) is acknowledged by the broker, `manifest.json` is written with the
//! offsets right after `b` (`{"model", "tables", "topic", "offsets": {"0": 1234},
//! "created_ms"}`), the directory renamed to `<n>`, and `LATEST` (holding `n`) replaced
//! atomically. The two newest snapshots are kept.
//!
//! # Dense versions
//!
//! Every `dense_version_interval_s` the trainer's dense tensors (the wide bias, the MLPs) are
//! written as `<model repository>/<model>/<v>/model.safetensors` with `v` one more than the
//! newest version there (through `.tmp-<v>`, synced, renamed). The file holds no table, so
//! the server's hot reload (load, then swap) makes the new version share the live tables and
//! the deltas already applied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_embed::{Table, TableConfig};
use serde_json::json;

use crate::checkpoint::{sync_dir, sync_tree, write_atomic};
use crate::error::{Error, Result};
use crate::trainer::Trainer;

struct Pending {
    tmp: PathBuf,
    number: u64,
    batch: u64,
    tables: Vec<String>,
}

/// Writes snapshots of the served tables under `<snapshot_dir>/<model>/`.
pub struct Snapshots {
    root: PathBuf,
    model: String,
    topic: String,
    dims: HashMap<String, usize>,
    next: u64,
    pending: Option<Pending>,
}

impl Snapshots {
    /// Snapshots of `model` (tables `dims`) for the delta topic `topic` under `dir/<model>/`.
    pub fn open(
        dir: &Path,
        model: &str,
        topic: &str,
        dims: HashMap<String, usize>,
    ) -> Result<Self> {
        let root = dir.join(model);
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let next = numbered(&root).last().map_or(1, |n| n + 1);
        Ok(Snapshots {
            root,
            model: model.to_string(),
            topic: topic.to_string(),
            dims,
            next,
            pending: None,
        })
    }

    /// Whether a snapshot is written and waiting for its batch's acknowledgement.
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Writes the trainer's served tables as of batch `batch`, whose sequence numbers per
    /// table (source `source`) are `seqs`; finished by [`Snapshots::finish`].
    pub fn begin(
        &mut self,
        trainer: &dyn Trainer,
        batch: u64,
        source: &str,
        seqs: &HashMap<String, u64>,
    ) -> Result<()> {
        let number = self.next;
        self.next += 1;
        let tmp = self.root.join(format!(".tmp-{number}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        trainer.snapshot_served(&tmp)?;
        let mut tables: Vec<String> = self.dims.keys().cloned().collect();
        tables.sort();
        for t in &tables {
            let path = tmp.join(format!("{t}.snap"));
            let Some(&seq) = seqs.get(t) else { continue };
            if !path.exists() {
                continue;
            }
            // the trainer's tables carry no delta source; name ours at batch `batch`
            let cfg = TableConfig::new(t.clone(), self.dims[t]);
            let (table, _) = Table::restore(cfg, &path).map_err(|e| Error::Table {
                table: t.clone(),
                source: e,
            })?;
            table.reset_source(source, seq);
            table.snapshot_to(&path).map_err(|e| Error::Table {
                table: t.clone(),
                source: e,
            })?;
        }
        self.pending = Some(Pending {
            tmp,
            number,
            batch,
            tables,
        });
        Ok(())
    }

    /// Completes the pending snapshot once `positions` (the delivery positions right after its
    /// batch) are known; returns its directory.
    pub fn finish(
        &mut self,
        positions: &BTreeMap<i32, i64>,
        now_ms: u64,
    ) -> Result<Option<PathBuf>> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        let offsets: BTreeMap<String, i64> =
            positions.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let manifest = json!({
            "model": self.model,
            "tables": p.tables,
            "topic": self.topic,
            "offsets": offsets,
            "created_ms": now_ms,
            "batch": p.batch,
        });
        let mp = p.tmp.join("manifest.json");
        std::fs::write(&mp, format!("{manifest:#}\n")).map_err(|e| Error::io(&mp, e))?;
        sync_tree(&p.tmp)?;
        let dir = self.root.join(p.number.to_string());
        std::fs::rename(&p.tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&self.root)?;
        write_atomic(
            &self.root.join("LATEST"),
            format!("{}\n", p.number).as_bytes(),
        )?;
        for old in numbered(&self.root) {
            if old + 2 <= p.number {
                let d = self.root.join(old.to_string());
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    tracing::warn!(path = %d.display(), error = %e, "cannot remove an old snapshot");
                }
            }
        }
        Ok(Some(dir))
    }
}

/// The numbered subdirectories of `dir`, ascending.
fn numbered(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// One dense tensor: name, shape, values.
pub type DenseTensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` as the next version of `model` in `repository`; returns its directory.
pub fn write_dense_version(
    repository: &Path,
    model: &str,
    filename: &str,
    tensors: &[DenseTensor],
) -> Result<PathBuf> {
    let mdir = repository.join(model);
    let version = numbered(&mdir).last().map_or(1, |n| n + 1);
    let tmp = mdir.join(format!(".tmp-{version}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| Error::Checkpoint {
                path: tmp.clone(),
                reason: format!("tensor {name}: {e}"),
            })?;
        views.push((name.clone(), view));
    }
    let path = tmp.join(filename);
    safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    sync_tree(&tmp)?;
    let dir = mdir.join(version.to_string());
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    sync_dir(&mdir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dense_version_is_the_next_numbered_directory_with_only_the_dense_tensors() {
        let repo = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(repo.path().join("m/1")).expect("version 1");
        std::fs::create_dir_all(repo.path().join("m/7")).expect("version 7");
        let t = vec![("wide.bias".to_string(), vec![1], vec![-0.25f32])];
        let dir = write_dense_version(repo.path(), "m", "model.safetensors", &t).expect("write");
        assert_eq!(dir, repo.path().join("m/8"));
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        assert_eq!(st.names(), vec!["wide.bias"]);
        let v = st.tensor("wide.bias").expect("bias");
        assert_eq!(v.shape(), &[1]);
        assert_eq!(v.data(), (-0.25f32).to_le_bytes().as_slice());
        assert!(!repo.path().join("m/.tmp-8").exists());
    }
}
