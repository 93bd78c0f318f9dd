//! The native recsys backend end to end: the DLRM-style reference model written by
//! `examples/gen_dlrm.py` (26 tables x 10,000 rows x 64, concat, 13-512-256-64 bottom,
//! 1728-1024-1024-512-256-1 top) served in-process, its outputs checked against the generator's
//! independent NumPy implementation over HTTP and gRPC, batched against one-by-one, and the
//! tables' layouts; embedding deltas are in `recsys_deltas.rs`.
//!
//! Tolerance: the reference computes in float64, Kiln in float32 with sums of up to 1,728
//! products per output, so outputs (after the sigmoid) are compared within 1e-4 absolute.

mod common;
mod recsys_common;

use common::*;
use recsys_common::golden;
use recsys_common::*;

use safetensors::SafeTensors;
use serde_json::json;
use std::sync::Arc;

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
