//! The native recsys backend end to end: the DLRM-style reference model written by
//! `examples/gen_dlrm.py` (26 tables x 10,000 rows x 64, concat, 13-512-256-64 bottom,
//! 1728-1024-1024-512-256-1 top) served in-process, its outputs checked against the generator's
//! independent NumPy implementation over HTTP and gRPC, batched against one-by-one, an embedding
//! delta pushed while clients keep inferring, and bad deltas refused without changing anything.
//!
//! Tolerance: the reference computes in float64, Kiln in float32 with sums of up to 1,728
//! products per output, so outputs (after the sigmoid) are compared within 1e-4 absolute.

mod common;

use common::*;
use kiln_embed::Delta;
use kiln_protocol::admin::sparse_admin_client::SparseAdminClient;
use kiln_protocol::admin::{ApplyDeltaRequest, ListTablesRequest};
use kiln_protocol::inference as pb;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tempfile::TempDir;

const TOL: f32 = 1e-4;
const TOKEN: &str = "s3cret-token";
const FEATURES: usize = 26;
const IDS: usize = 20;

/// The Python with numpy that runs the generator, or `None` (after saying why) to skip.
fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [root.join(".venv/bin/python"), PathBuf::from("python3")];
    for p in candidates {
        let ok = std::process::Command::new(&p)
            .args(["-c", "import numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(p);
        }
    }
    let why = "no Python with numpy (run scripts/setup-python.sh) to generate the reference model";
    if std::env::var_os("CI").is_some() {
        panic!("recsys tests: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED recsys tests: {why}");
    None
}

/// A repository holding the reference model at 10,000 rows per table.
fn reference_repo() -> Option<TempDir> {
    let py = python()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gen_dlrm.py");
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

struct Golden {
    dense: Vec<f32>,
    sparse: Vec<Vec<i64>>,
    prob: Vec<f32>,
    prob_after: Vec<f32>,
    delta_table: String,
    delta_keys: Vec<u64>,
    delta_values: Vec<f32>,
    rows: usize,
}

fn golden(root: &Path) -> Golden {
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
    fn delta(&self, seq: u64) -> Delta {
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
    fn request(&self, r0: usize, r1: usize) -> Value {
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

    fn grpc_request(&self) -> pb::ModelInferRequest {
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

fn delta_url(model: &str, table: &str) -> String {
    format!("/admin/v1/models/{model}/tables/{table}/deltas")
}

async fn post_delta(
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

async fn start() -> Option<(TestServer, Golden)> {
    let dir = reference_repo()?;
    let g = golden(dir.path());
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    Some((TestServer::temp(dir, opts).await, g))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_outputs_over_http_and_grpc_and_metadata() {
    let Some((s, g)) = start().await else { return };
    let v = s.infer_ok("dlrm", &g.request(0, g.rows)).await;
    assert_close(&output_floats(&v, "prob"), &g.prob, TOL, "HTTP golden");

    let mut c = s.grpc().await;
    let r = c
        .model_infer(g.grpc_request())
        .await
        .expect("grpc infer")
        .into_inner();
    assert_eq!(r.outputs[0].name, "prob");
    assert_eq!(r.outputs[0].shape, vec![g.rows as i64, 1]);
    assert_close(
        &f32_from(&r.raw_output_contents[0]),
        &g.prob,
        TOL,
        "gRPC golden",
    );

    // metadata and config describe the inputs so clients can build requests
    let (st, meta) = s.get("/v2/models/dlrm").await;
    assert_eq!(st, 200, "{meta}");
    let inputs = meta["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 1 + FEATURES);
    assert_eq!(
        inputs[0],
        json!({"name": "dense", "datatype": "FP32", "shape": [-1, 13]})
    );
    assert_eq!(
        inputs[1],
        json!({"name": "sparse_0", "datatype": "INT64", "shape": [-1, 20]})
    );
    assert_eq!(
        meta["outputs"][0],
        json!({"name": "prob", "datatype": "FP32", "shape": [-1, 1]})
    );
    let (st, cfg) = s.get("/v2/models/dlrm/config").await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["max_batch_size"], 4096);
    assert_eq!(cfg["input"].as_array().map(Vec::len), Some(1 + FEATURES));

    // the table listing needs the token too
    let (st, _) = s.get("/admin/v1/models/dlrm/tables").await;
    assert_eq!(st, 401);
    let r = s
        .client
        .get(s.url("/admin/v1/models/dlrm/tables"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    let (st, tables) = read_json(r).await;
    assert_eq!(st, 200, "{tables}");
    assert_eq!(tables["tables"].as_array().map(Vec::len), Some(FEATURES));
    assert_eq!(tables["tables"][0]["rows"], 10_000);
    assert_eq!(tables["tables"][0]["dim"], 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_equals_one_by_one() {
    let Some((s, g)) = start().await else { return };
    let batched = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for r in 0..g.rows {
        let (s, body) = (s.clone(), g.request(r, r + 1));
        tasks.push(tokio::spawn(async move {
            output_floats(&s.infer_ok("dlrm", &body).await, "prob")[0]
        }));
    }
    let mut single = Vec::new();
    for t in tasks {
        single.push(t.await.unwrap());
    }
    assert_close(&single, &batched, BATCH_TOL, "one-by-one vs batched");
    assert_close(&single, &g.prob, TOL, "one-by-one vs golden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_during_load_changes_the_next_predictions() {
    let Some((s, g)) = start().await else { return };
    let s = Arc::new(s);
    // clients keep inferring the golden batch while the delta lands
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for c in 0..4 {
        let (s, stop, ok, failed) = (s.clone(), stop.clone(), ok.clone(), failed.clone());
        let body = g.request(c * 16, c * 16 + 16);
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (st, v) = s.post("/v2/models/dlrm/infer", &body).await;
                if st == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("request failed during the delta: {st} {v}");
                }
            }
        }));
    }
    eventually("load running", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::Relaxed) >= 8 }
    })
    .await;

    let delta = g.delta(1);
    let (st, v) = post_delta(&s, &g.delta_table, delta.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["versions"][0]["applied"], true, "{v}");
    assert_eq!(v["versions"][0]["rows"], g.delta_keys.len() as u64, "{v}");
    assert_eq!(
        v["versions"][0]["inserted"], 2,
        "two of the keys are new rows: {v}"
    );
    assert_eq!(v["versions"][0]["last_sequence"], 1);

    // the next request sees the delta, exactly as the reference computes it
    let after = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_close(&after, &g.prob_after, TOL, "after the delta");
    let changed = after
        .iter()
        .zip(&g.prob)
        .filter(|(a, b)| (*a - *b).abs() > 1e-3)
        .count();
    assert!(changed > 0, "the delta changed no prediction");

    // a replay changes nothing and is reported as such
    let (st, v) = post_delta(&s, &g.delta_table, delta.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["versions"][0]["applied"], false, "{v}");

    let before = ok.load(Ordering::Relaxed);
    eventually("load continued after the delta", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::Relaxed) >= before + 8 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deltas_are_refused_and_change_nothing() {
    let Some((s, g)) = start().await else { return };
    let before = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    let good = |seq: u64| g.delta(seq);
    let table = g.delta_table.as_str();

    let (st, v) = post_delta(&s, table, good(1).encode(), None).await;
    assert_eq!(st, 401, "no token: {v}");
    assert!(error_of(&v).contains("token"), "{v}");
    let (st, v) = post_delta(&s, table, good(1).encode(), Some("wrong")).await;
    assert_eq!(st, 401, "wrong token: {v}");

    let mut wrong_dim = good(1);
    wrong_dim.dim = 32;
    wrong_dim.values.truncate(g.delta_keys.len() * 32);
    let (st, v) = post_delta(&s, table, wrong_dim.encode(), Some(TOKEN)).await;
    assert_eq!(st, 400, "wrong dim: {v}");
    assert!(error_of(&v).contains("dim"), "{v}");

    let (st, v) = post_delta(&s, "emb.99", good(1).encode(), Some(TOKEN)).await;
    assert_eq!(st, 404, "unknown table: {v}");
    assert!(error_of(&v).contains("emb.99"), "{v}");

    let mut corrupt = good(1).encode();
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xff;
    let (st, v) = post_delta(&s, table, corrupt, Some(TOKEN)).await;
    assert_eq!(st, 400, "corrupt delta: {v}");

    let (st, v) = post_delta(&s, table, b"not a delta".to_vec(), Some(TOKEN)).await;
    assert_eq!(st, 400, "garbage: {v}");

    let (st, v) = post_delta(&s, table, good(5).encode(), Some(TOKEN)).await;
    assert_eq!(st, 400, "sequence gap: {v}");
    assert!(error_of(&v).contains("sequence"), "{v}");

    let mut other = good(1);
    other.table = "emb.0".into();
    if table != "emb.0" {
        let (st, v) = post_delta(&s, table, other.encode(), Some(TOKEN)).await;
        assert_eq!(st, 400, "delta named for another table: {v}");
    }

    let (st, v) = s
        .post("/admin/v1/models/mlp/tables/t/deltas", &json!({}))
        .await;
    assert!(st == 401 || st == 404, "{st} {v}");

    let after = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_eq!(after, before, "a refused delta changed predictions");

    // gRPC: token in metadata, same refusals, then the delta applies
    let mut admin = SparseAdminClient::new(s.channel().await);
    let req = |delta: Vec<u8>| ApplyDeltaRequest {
        model_name: "dlrm".into(),
        model_version: String::new(),
        table: table.into(),
        delta: delta.into(),
    };
    let e = admin.apply_delta(req(good(1).encode())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let authed = |delta: Vec<u8>| {
        let mut r = tonic::Request::new(req(delta));
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r
    };
    let e = admin
        .apply_delta(authed(wrong_dim.encode()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let ok = admin
        .apply_delta(authed(good(1).encode()))
        .await
        .expect("grpc delta")
        .into_inner();
    assert!(ok.results[0].applied);
    assert_eq!(ok.results[0].last_sequence, 1);
    let after = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_close(&after, &g.prob_after, TOL, "after the gRPC delta");

    let mut r = tonic::Request::new(ListTablesRequest {
        model_name: "dlrm".into(),
        model_version: String::new(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let tables = admin.list_tables(r).await.expect("list").into_inner();
    let t = tables
        .tables
        .iter()
        .find(|t| t.name == table)
        .expect("table listed");
    assert_eq!(t.rows, 10_002);
    assert_eq!(t.sources[0].last_sequence, 1);
}

/// A new version whose weights hold only the dense layers shares the live tables of the
/// version it replaces: deltas applied before the reload stay applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_only_version_shares_the_live_tables() {
    let Some(dir) = reference_repo() else { return };
    let g = golden(dir.path());
    let v1 = dir.path().join("dlrm/1/model.safetensors");
    let opts = Options {
        mode: kiln_runtime::ControlMode::Poll(std::time::Duration::from_millis(200)),
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    let s = TestServer::temp(dir, opts).await;
    let delta = g.delta(1);
    let (st, v) = post_delta(&s, &g.delta_table, delta.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");

    // version 2: the same dense weights, no embedding tensors
    let bytes = std::fs::read(&v1).expect("v1 weights");
    let st1 = SafeTensors::deserialize(&bytes).expect("v1");
    let dense: Vec<(String, safetensors::tensor::TensorView<'_>)> = st1
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("bottom.") || n.starts_with("top."))
        .collect();
    assert!(dense.len() >= 16, "{} dense tensors", dense.len());
    let v2 = s.root.join("dlrm/2");
    std::fs::create_dir_all(&v2).unwrap();
    safetensors::serialize_to_file(dense, None, &v2.join("model.safetensors.tmp"))
        .expect("write v2");
    std::fs::rename(
        v2.join("model.safetensors.tmp"),
        v2.join("model.safetensors"),
    )
    .unwrap();

    eventually("version 2 serving", || {
        let s = &s;
        async move {
            let (st, _) = s.get("/v2/models/dlrm/versions/2/ready").await;
            st == 200
        }
    })
    .await;
    let (st, v) = s
        .post("/v2/models/dlrm/versions/2/infer", &g.request(0, g.rows))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_close(
        &output_floats(&v, "prob"),
        &g.prob_after,
        TOL,
        "version 2 keeps the delta",
    );

    // the shared table continues the same sequence
    let mut next = delta.clone();
    next.seq = 2;
    let (st, v) = post_delta(&s, &g.delta_table, next.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    let applied: Vec<bool> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["applied"].as_bool().unwrap())
        .collect();
    assert!(applied.contains(&true), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_layout_serves_the_golden_outputs_and_refuses_keys_outside_its_rows() {
    let Some(dir) = reference_repo() else { return };
    let g = golden(dir.path());
    let cfg = dir.path().join("dlrm/config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[parameters.table_defaults]\nlayout = \"direct\"\n");
    std::fs::write(&cfg, text).unwrap();
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    let s = TestServer::temp(dir, opts).await;
    // the golden inputs hold ids 10000 and 10007, past the 10,000 rows: misses, as before
    let before = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_close(&before, &g.prob, TOL, "direct layout");

    // the generator's delta adds rows 10000 and 10007: a direct table refuses it whole
    let (st, v) = post_delta(&s, &g.delta_table, g.delta(1).encode(), Some(TOKEN)).await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("key space"), "{v}");
    let again = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_eq!(again, before, "a refused delta changes nothing");

    // its first 8 rows are rows of the table; with those alone every prediction that does
    // not read the two new ids (golden rows 2, 3 and 4) matches the reference after the delta
    let mut d = g.delta(1);
    d.keys.truncate(8);
    d.values.truncate(8 * 64);
    assert!(d.keys.iter().all(|&k| k < 10_000));
    let (st, v) = post_delta(&s, &g.delta_table, d.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["versions"][0]["inserted"], 0, "{v}");
    let after = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    for (r, (a, want)) in after.iter().zip(&g.prob_after).enumerate() {
        if !(2..=4).contains(&r) {
            assert!((a - want).abs() <= TOL, "row {r}: {a} vs {want}");
        }
    }
    assert!(
        after.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-3),
        "the delta changed no prediction"
    );
}

/// A delta carrying NaN or Inf is refused naming the table and key, and changes nothing; a
/// table that opts in with `allow_non_finite` takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_deltas_are_refused_unless_the_table_allows_them() {
    let Some((s, g)) = start().await else { return };
    let before = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    let table = g.delta_table.as_str();
    let mut d = g.delta(1);
    d.values[64 + 3] = f32::NAN; // the second row's fourth element
    let (st, v) = post_delta(&s, table, d.encode(), Some(TOKEN)).await;
    assert_eq!(st, 400, "{v}");
    let msg = error_of(&v);
    assert!(
        msg.contains(table) && msg.contains(&format!("key {}", g.delta_keys[1])),
        "{msg}"
    );
    assert!(msg.contains("allow_non_finite"), "{msg}");
    let after = output_floats(&s.infer_ok("dlrm", &g.request(0, g.rows)).await, "prob");
    assert_eq!(after, before, "a refused delta changed predictions");
    // the sequence number was not consumed: the clean delta 1 applies
    let (st, v) = post_delta(&s, table, g.delta(1).encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");

    // opted in
    let Some(dir) = reference_repo() else { return };
    let cfg = dir.path().join("dlrm/config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[parameters.table_defaults]\nallow_non_finite = true\n");
    std::fs::write(&cfg, text).unwrap();
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    let s = TestServer::temp(dir, opts).await;
    let mut d = g.delta(1);
    d.values[0] = f32::INFINITY;
    let (st, v) = post_delta(&s, table, d.encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["versions"][0]["applied"], true, "{v}");
}
