//! Embedding deltas on the native recsys backend end to end, over the reference model of
//! `examples/gen_dlrm.py` served in-process: a delta pushed while clients keep inferring
//! changes the next predictions, bad deltas (and non-finite values, unless the table allows
//! them) are refused without changing anything.

mod common;
mod recsys_common;

use common::*;
use recsys_common::*;

use kiln_protocol::admin::sparse_admin_client::SparseAdminClient;
use kiln_protocol::admin::{ApplyDeltaRequest, ListTablesRequest};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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
