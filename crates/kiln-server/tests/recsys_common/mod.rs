//! What the recsys end-to-end tests share: the reference model written by
//! `examples/gen_dlrm.py` into a temporary repository, its golden inputs and outputs, a server
//! over it, and posting embedding deltas.

#![allow(dead_code)]

use crate::common::*;
use kiln_embed::Delta;
use kiln_protocol::inference as pb;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

pub const TOL: f32 = 1e-4;
pub const TOKEN: &str = "s3cret-token";
pub const FEATURES: usize = 26;
pub const IDS: usize = 20;

/// The Python with numpy that runs the generator, or `None` (after saying why) to skip; under
/// `CI` its absence fails the test instead.
pub fn python() -> Option<PathBuf> {
    kiln_testkit::python("recsys tests (reference model generator)", &["numpy"])
}

/// A repository holding the reference model at 10,000 rows per table.
pub fn reference_repo() -> Option<TempDir> {
    let py = python()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = kiln_testkit::repo_root().join("examples/gen_dlrm.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .args(["--out"])
        .arg(dir.path())
        .args(["--rows-per-table", "10000", "--golden-rows", "64"])
        .output()
        .expect("run gen_dlrm.py");
    assert!(
        out.status.success(),
        "gen_dlrm.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dir)
}

pub struct Golden {
    pub dense: Vec<f32>,
    pub sparse: Vec<Vec<i64>>,
    pub prob: Vec<f32>,
    pub prob_after: Vec<f32>,
    pub delta_table: String,
    pub delta_keys: Vec<u64>,
    pub delta_values: Vec<f32>,
    pub rows: usize,
}

pub fn golden(root: &Path) -> Golden {
    let bytes = std::fs::read(root.join("dlrm/golden.safetensors")).expect("golden file");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("golden header");
    let meta = meta.metadata().clone().expect("golden metadata");
    let st = SafeTensors::deserialize(&bytes).expect("golden");
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .expect(n)
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let prob = f32s("prob");
    Golden {
        dense: f32s("dense"),
        sparse: (0..FEATURES)
            .map(|i| i64s(&format!("sparse_{i}")))
            .collect(),
        rows: prob.len(),
        prob,
        prob_after: f32s("prob_after_delta"),
        delta_table: meta["delta_table"].clone(),
        delta_keys: i64s("delta.keys").into_iter().map(|k| k as u64).collect(),
        delta_values: f32s("delta.values"),
    }
}

impl Golden {
    /// The generator's delta as sequence number `seq` of source `trainer-0`.
    pub fn delta(&self, seq: u64) -> Delta {
        Delta {
            source: "trainer-0".into(),
            seq,
            dim: 64,
            keys: self.delta_keys.clone(),
            values: self.delta_values.clone(),
            ..Default::default()
        }
    }

    /// A JSON request for rows `r0..r1`.
    pub fn request(&self, r0: usize, r1: usize) -> Value {
        let mut inputs = vec![json!({
            "name": "dense", "datatype": "FP32", "shape": [r1 - r0, 13],
            "data": &self.dense[r0 * 13..r1 * 13],
        })];
        for (i, ids) in self.sparse.iter().enumerate() {
            inputs.push(json!({
                "name": format!("sparse_{i}"), "datatype": "INT64", "shape": [r1 - r0, IDS],
                "data": &ids[r0 * IDS..r1 * IDS],
            }));
        }
        json!({ "inputs": inputs })
    }

    pub fn grpc_request(&self) -> pb::ModelInferRequest {
        let tensor =
            |name: String, dt: &str, dims: usize| pb::model_infer_request::InferInputTensor {
                name,
                datatype: dt.into(),
                shape: vec![self.rows as i64, dims as i64],
                ..Default::default()
            };
        let mut inputs = vec![tensor("dense".into(), "FP32", 13)];
        let mut raw = vec![f32_bytes(&self.dense).into()];
        for (i, ids) in self.sparse.iter().enumerate() {
            inputs.push(tensor(format!("sparse_{i}"), "INT64", IDS));
            let b: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
            raw.push(b.into());
        }
        pb::ModelInferRequest {
            model_name: "dlrm".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }
}

pub fn delta_url(model: &str, table: &str) -> String {
    format!("/admin/v1/models/{model}/tables/{table}/deltas")
}

pub async fn post_delta(
    s: &TestServer,
    table: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut r = s.client.post(s.url(&delta_url("dlrm", table))).body(body);
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    read_json(r.send().await.expect("POST delta")).await
}

pub async fn start() -> Option<(TestServer, Golden)> {
    let dir = reference_repo()?;
    let g = golden(dir.path());
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    Some((TestServer::temp(dir, opts).await, g))
}
