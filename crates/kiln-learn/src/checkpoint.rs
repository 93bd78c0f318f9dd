//! Checkpoints, the epoch and atomic file writes.
//!
//! # Layout of the checkpoint directory
//!
//! ```text
//! <dir>/EPOCH                 the publisher's epoch, incremented at every start
//! <dir>/journal               keys published since the last checkpoint (crate::journal)
//! <dir>/ckpt-<n>/state.json   CheckpointState: epoch, source positions, counts
//! <dir>/ckpt-<n>/trainer/     Trainer::save: parameters and optimizer state
//! <dir>/LATEST                "<n>": the checkpoint a restart restores
//! ```
//!
//! A checkpoint is written to `<dir>/tmp-<n>/`, every file and the directory synced, renamed
//! to `ckpt-<n>`, the parent synced, and only then named in `LATEST` (itself written to a
//! temporary file, synced and renamed). A crash at any point leaves `LATEST` naming a complete
//! checkpoint. Older checkpoints are removed after `LATEST` moves on.
//!
//! # What a checkpoint holds, and what a restart does with it
//!
//! The trainer's state ([`Trainer::save`]) and, instead of the joiner's state, the source
//! positions from which to rebuild it ([`CheckpointState::partitions`]): per partition, the
//! position of the oldest event the joiner still held (`resume`), the positions of every event
//! it held (`held`), and the position after the last event read (`end`). The source commits
//! `resume` only after the checkpoint is durable. A restart restores the trainer, rewinds the
//! source to `resume`, and of the events before `end` feeds only the `held` ones to the
//! joiner again: the others were learned (or dropped) before the checkpoint and are not
//! learned twice. The held impressions are readmitted even when the watermark has passed
//! their windows ([`crate::join::JoinState::readmit_impression`]): on replay another
//! partition's later events may be read first, and they were accepted once already. Events from `end` on are new to the restored trainer and are learned once.
//! Before a checkpoint the learner learns every sample it has joined and publishes every
//! changed row, so nothing sits between the joiner and the servers.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::trainer::Trainer;

/// Where reading one source partition resumes after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The position to rewind to (the oldest event the joiner held, else `end`).
    pub resume: u64,
    /// Positions in `resume..end` of the events the joiner held: fed to it again.
    pub held: Vec<u64>,
    /// The position after the last event read before the checkpoint.
    pub end: u64,
}

impl PartitionState {
    /// Whether the event at `pos`, read again after a restart, was consumed before the
    /// checkpoint (and must be skipped).
    pub fn consumed(&self, pos: u64) -> bool {
        pos < self.end && self.held.binary_search(&pos).is_err()
    }

    /// Adds what `restored` (the checkpoint this run started from) says about the positions
    /// this run has not read again yet: its held events from here on are still to be fed,
    /// the rest up to its end was consumed.
    pub fn merge_restored(&mut self, restored: &PartitionState) {
        if restored.end <= self.end {
            return;
        }
        let from = self.end;
        self.held
            .extend(restored.held.iter().copied().filter(|&p| p >= from));
        self.held.sort_unstable();
        self.held.dedup();
        self.end = restored.end;
        self.resume = self.held.first().copied().unwrap_or(self.end);
    }
}

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The served model.
    pub model: String,
    /// The learner's name.
    pub learner: String,
    /// The epoch of the learner that wrote it.
    pub epoch: u64,
    /// The checkpoint's number, from 1.
    pub number: u64,
    /// When it was written, ms since the Unix epoch.
    pub created_ms: u64,
    /// Samples learned in total.
    pub samples: u64,
    /// Per source partition (`topic/partition`, or a JSONL file's name).
    pub partitions: BTreeMap<String, PartitionState>,
}

/// A checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    root: PathBuf,
}

impl CheckpointDir {
    /// Opens (creating) `root`.
    pub fn open(root: &Path) -> Result<CheckpointDir> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        Ok(CheckpointDir {
            root: root.to_path_buf(),
        })
    }

    /// The journal's path.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Increments the epoch and makes it durable before returning it (1 on a fresh
    /// directory).
    pub fn next_epoch(&self) -> Result<u64> {
        let path = self.root.join("EPOCH");
        let last = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| Error::Checkpoint {
                path: path.clone(),
                reason: format!("not an epoch number: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(&path, e)),
        };
        let next = last + 1;
        write_atomic(&path, format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    /// The checkpoint `LATEST` names: its directory and state; `None` when there is none.
    pub fn latest(&self) -> Result<Option<(PathBuf, CheckpointState)>> {
        let latest = self.root.join("LATEST");
        let n = match std::fs::read_to_string(&latest) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&latest, e)),
        };
        let dir = self.root.join(format!("ckpt-{n}"));
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((dir, state)))
    }

    /// Writes a checkpoint of `trainer` with `state` atomically and makes `LATEST` name it.
    pub fn write(&self, state: &CheckpointState, trainer: &dyn Trainer) -> Result<PathBuf> {
        let tmp = self.root.join(format!("tmp-{}", state.number));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let tdir = tmp.join("trainer");
        std::fs::create_dir_all(&tdir).map_err(|e| Error::io(&tdir, e))?;
        trainer.save(&tdir)?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Checkpoint {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        let sp = tmp.join("state.json");
        std::fs::write(&sp, json).map_err(|e| Error::io(&sp, e))?;
        sync_tree(&tmp)?;
        let dir = self.root.join(format!("ckpt-{}", state.number));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&self.root)?;
        write_atomic(
            &self.root.join("LATEST"),
            format!("{}\n", state.number).as_bytes(),
        )?;
        self.remove_older(state.number);
        Ok(dir)
    }

    fn remove_older(&self, keep: u64) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name
                .strip_prefix("ckpt-")
                .or_else(|| name.strip_prefix("tmp-"))
                .and_then(|n| n.parse::<u64>().ok());
            if n.is_some_and(|n| n != keep) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an old checkpoint");
                }
            }
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over
/// `path`, and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Syncs a directory's entries.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Syncs every file and directory under `dir`, then `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|err| Error::io(&p, err))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_grows_by_one_per_start_and_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = CheckpointDir::open(dir.path()).expect("open");
        assert_eq!(c.next_epoch().expect("epoch"), 1);
        assert_eq!(c.next_epoch().expect("epoch"), 2);
        let again = CheckpointDir::open(dir.path()).expect("open");
        assert_eq!(again.next_epoch().expect("epoch"), 3);
    }

    #[test]
    fn consumed_positions_skip_all_but_the_held() {
        let p = PartitionState {
            resume: 10,
            held: vec![10, 14],
            end: 20,
        };
        assert!(!p.consumed(10));
        assert!(p.consumed(11));
        assert!(!p.consumed(14));
        assert!(p.consumed(19));
        assert!(!p.consumed(20));
    }

    #[test]
    fn a_second_checkpoint_before_the_replay_ends_keeps_the_first_ones_knowledge() {
        let restored = PartitionState {
            resume: 10,
            held: vec![10, 14, 18],
            end: 20,
        };
        // the restarted run has read up to 15 and still holds 14
        let mut now = PartitionState {
            resume: 14,
            held: vec![14],
            end: 15,
        };
        now.merge_restored(&restored);
        assert_eq!(
            now,
            PartitionState {
                resume: 14,
                held: vec![14, 18],
                end: 20
            }
        );
        assert!(now.consumed(16) && !now.consumed(18));
    }
}
