//! Embedding deltas and table listings through the model repository, with no server: every
//! addressed version is checked before any is changed, versions sharing one table see a delta
//! once, and errors name the model, version and table. Runs on a scripted sparse backend, no
//! engine needed.

use kiln_core::backend::{Backend, LoadedModel, ModelIo};
use kiln_core::{
    DataType, DeltaAck, Error, ErrorCode, ModelConfig, Result, SparseParameters, SparseTableInfo,
    Tensor, TensorSpec,
};
use kiln_runtime::{Backends, ControlMode, ModelRepository, RuntimeMetrics};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Last applied sequence number per table name, shared by every version the backend loads
/// (as the recsys backend shares one live table between versions).
type Shared = Arc<Mutex<BTreeMap<String, u64>>>;

/// Loads a version whose `tables.txt` lists its table names, one a line; without that file the
/// version has no embedding tables.
struct Scripted(Shared);

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted-sparse"
    }
    fn load(&self, dir: &Path, _config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        let tables = std::fs::read_to_string(dir.join("tables.txt"))
            .ok()
            .map(|t| t.lines().map(str::to_string).collect());
        Ok(Arc::new(Model {
            io: ModelIo {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            tables: tables.map(|names| Tables {
                names,
                seq: self.0.clone(),
            }),
        }))
    }
}

struct Model {
    io: ModelIo,
    tables: Option<Tables>,
}

impl LoadedModel for Model {
    fn io(&self) -> &ModelIo {
        &self.io
    }
    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut y = inputs[0].clone();
        y.name = "y".into();
        Ok(vec![y])
    }
    fn sparse(&self) -> Option<&dyn SparseParameters> {
        self.tables.as_ref().map(|t| t as &dyn SparseParameters)
    }
}

/// A delta is its sequence number, 8 bytes little-endian; a replay is a duplicate and a
/// skipped number is applied and reported as a gap.
struct Tables {
    names: Vec<String>,
    seq: Shared,
}

impl SparseParameters for Tables {
    fn tables(&self) -> Vec<SparseTableInfo> {
        let seq = self.seq.lock();
        self.names
            .iter()
            .map(|name| SparseTableInfo {
                name: name.clone(),
                dim: 4,
                rows: 0,
                bytes: 0,
                sources: vec![("learner".into(), seq.get(name).copied().unwrap_or(0))],
            })
            .collect()
    }

    fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck> {
        let got = u64::from_le_bytes(
            encoded
                .try_into()
                .map_err(|_| Error::invalid("delta: expected 8 bytes"))?,
        );
        let mut seq = self.seq.lock();
        let last = seq.entry(table.to_string()).or_default();
        if got <= *last {
            return Ok(DeltaAck {
                applied: false,
                last_sequence: *last,
                ..Default::default()
            });
        }
        let gap = (got != *last + 1).then_some((*last + 1, got));
        *last = got;
        Ok(DeltaAck {
            applied: true,
            rows: 1,
            inserted: 1,
            last_sequence: got,
            gap,
            ..Default::default()
        })
    }
}

fn spec(name: &str) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        data_type: DataType::Int64,
        dims: vec![1],
        allow_ragged_batch: false,
    }
}

/// A repository where model `m` serves every version in `versions` (each with the tables
/// listed, or none for `None`), and `dense` serves version 1 with no tables.
async fn repository(versions: &[(u64, Option<&str>)]) -> (tempfile::TempDir, Arc<ModelRepository>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = "backend = \"scripted-sparse\"\ndefault_model_filename = \"model.bin\"\n\
                  max_batch_size = 8\nwarmup = false\n";
    for (model, versions, policy) in [
        ("m", versions, "[version_policy]\nall = true\n"),
        ("dense", &[(1, None)][..], ""),
    ] {
        let root = dir.path().join(model);
        for (v, tables) in versions {
            let vdir = root.join(v.to_string());
            std::fs::create_dir_all(&vdir).expect("version directory");
            std::fs::write(vdir.join("model.bin"), b"scripted").expect("model file");
            if let Some(t) = tables {
                std::fs::write(vdir.join("tables.txt"), t).expect("tables.txt");
            }
        }
        std::fs::write(root.join("config.toml"), format!("{config}{policy}")).expect("config.toml");
    }
    let mut backends = Backends::new();
    backends.register(Arc::new(Scripted(Shared::default())));
    let repo = ModelRepository::new(dir.path(), backends, Arc::new(RuntimeMetrics::default()));
    repo.start(ControlMode::None, &[]).await.expect("start");
    (dir, repo)
}

fn seq(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

#[tokio::test]
async fn versions_sharing_a_table_see_a_delta_once() {
    let (_dir, repo) = repository(&[(1, Some("emb")), (2, Some("emb"))]).await;
    let acks = repo
        .apply_delta("m", None, "emb", &seq(1))
        .expect("applied");
    let versions: Vec<u64> = acks.iter().map(|a| a.version).collect();
    assert_eq!(versions, [1, 2], "every serving version, ascending");
    assert!(acks[0].ack.applied, "{acks:?}");
    assert!(
        !acks[1].ack.applied,
        "the shared table took it once: {acks:?}"
    );
    assert_eq!(acks[1].ack.last_sequence, 1);

    // one addressed version; a skipped sequence number is applied and reported
    let acks = repo
        .apply_delta("m", Some(2), "emb", &seq(3))
        .expect("applied");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].version, 2);
    assert_eq!(acks[0].ack.gap, Some((2, 3)));

    let tables = repo.tables("m", None).expect("tables");
    assert_eq!(tables.len(), 2, "{tables:?}");
    for (t, v) in tables.iter().zip([1, 2]) {
        assert_eq!(t.version, v);
        assert_eq!(t.table.name, "emb");
        assert_eq!(t.table.sources, [("learner".to_string(), 3)]);
    }
    let tables = repo.tables("m", Some(1)).expect("tables of version 1");
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].version, 1);
}

#[tokio::test]
async fn a_table_missing_from_one_version_changes_no_version() {
    let (_dir, repo) = repository(&[(1, Some("emb\nother")), (2, Some("emb"))]).await;
    let e = repo
        .apply_delta("m", None, "other", &seq(1))
        .expect_err("version 2 has no table 'other'");
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message
            .contains("model 'm' version 2 has no table 'other'"),
        "{e}"
    );
    let t = repo.tables("m", Some(1)).expect("tables");
    let other = t.iter().find(|t| t.table.name == "other").expect("other");
    assert_eq!(
        other.table.sources[0].1, 0,
        "version 1 was not changed either"
    );
    // the version that has it takes it
    let acks = repo
        .apply_delta("m", Some(1), "other", &seq(1))
        .expect("applied");
    assert!(acks[0].ack.applied);
}

#[tokio::test]
async fn errors_name_the_model_version_and_table() {
    let (_dir, repo) = repository(&[(1, Some("emb"))]).await;
    let e = repo.apply_delta("m", None, "emb", b"short").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message.contains("model 'm' version 1 table 'emb': delta"),
        "{e}"
    );

    let e = repo.apply_delta("dense", None, "emb", &seq(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported);
    assert!(
        e.message
            .contains("model 'dense' version 1 has no embedding tables"),
        "{e}"
    );
    let e = repo.tables("dense", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");

    let e = repo.apply_delta("nope", None, "emb", &seq(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("'nope'"), "{e}");
    let e = repo.tables("m", Some(7)).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("'m' version 7 is not found"), "{e}");
    let e = repo.tables("../m", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
}

#[tokio::test]
async fn a_model_on_an_unregistered_backend_says_so() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let v = dir.path().join("m/1");
    std::fs::create_dir_all(&v).expect("version directory");
    std::fs::write(v.join("model.onnx"), b"not read").expect("model file");
    let repo = ModelRepository::new(
        dir.path(),
        Backends::new(),
        Arc::new(RuntimeMetrics::default()),
    );
    repo.start(ControlMode::None, &[]).await.expect("start");
    let e = repo.get("m", None).err().expect("not serving");
    assert!(
        e.message.contains("'tract' is not available in this build"),
        "{e}"
    );
    let row = repo
        .index()
        .into_iter()
        .find(|e| e.name == "m")
        .expect("indexed");
    assert!(
        row.reason.contains("not available in this build"),
        "{row:?}"
    );
}
