//! `kiln_delta_last_applied_timestamp_seconds{model}` on the bundled wide model `ctr_wide`: no
//! series before a delta; a delta applied through the HTTP admin API, and one through gRPC,
//! stamp the time it was applied; a replay and refused deltas (wrong dim, unknown table) leave
//! the time as it was; an unloaded model leaves no series for the lag alert to judge.

mod common;

use common::*;
use kiln_embed::Delta;
use kiln_protocol::admin::sparse_admin_client::SparseAdminClient;
use kiln_protocol::admin::ApplyDeltaRequest;
use std::time::{SystemTime, UNIX_EPOCH};

const TOKEN: &str = "delta-time-token";
const SERIES: &str = r#"kiln_delta_last_applied_timestamp_seconds{model="ctr_wide"}"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The model's last-applied time as `/metrics` shows it, `None` without the series.
async fn last_applied(s: &TestServer) -> Option<f64> {
    metrics_text(s)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(SERIES))
        .map(|v| v.trim().parse().expect("a number"))
}

/// A delta of `user_id` (dim 1 unless `dim` says otherwise) from the source `test`.
fn delta(seq: u64, dim: usize) -> Vec<u8> {
    Delta {
        source: "test".into(),
        seq,
        dim,
        keys: vec![11, 12],
        values: vec![0.5; 2 * dim],
        ..Default::default()
    }
    .encode()
}

async fn post(s: &TestServer, table: &str, body: Vec<u8>) -> u16 {
    let r = s
        .client
        .post(s.url(&format!("/admin/v1/models/ctr_wide/tables/{table}/deltas")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .send()
        .await
        .expect("POST delta");
    read_json(r).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_deltas_stamp_the_time_and_refused_ones_do_not() {
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::explicit_all()
    };
    let s = TestServer::temp(copy_models(&["ctr_wide"]), opts).await;
    assert_eq!(last_applied(&s).await, None, "no delta applied yet");

    let before = unix_now();
    assert_eq!(post(&s, "user_id", delta(1, 1)).await, 200);
    let after = unix_now();
    let t1 = last_applied(&s).await.expect("stamped by an applied delta");
    assert!(before <= t1 && t1 <= after, "{before} <= {t1} <= {after}");

    // a replay, a delta of the wrong dim and one of an unknown table apply nothing
    assert_eq!(post(&s, "user_id", delta(1, 1)).await, 200, "a replay");
    assert_eq!(post(&s, "user_id", delta(2, 3)).await, 400, "wrong dim");
    assert_eq!(post(&s, "nope", delta(2, 1)).await, 404, "unknown table");
    assert_eq!(last_applied(&s).await, Some(t1), "refused deltas moved it");

    // gRPC goes the same way
    let mut admin = SparseAdminClient::new(s.channel().await);
    let mut r = tonic::Request::new(ApplyDeltaRequest {
        model_name: "ctr_wide".into(),
        model_version: String::new(),
        table: "user_id".into(),
        delta: delta(2, 1).into(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let before = unix_now();
    let ok = admin.apply_delta(r).await.expect("gRPC delta").into_inner();
    let after = unix_now();
    assert!(ok.results[0].applied, "{ok:?}");
    let t2 = last_applied(&s).await.expect("still there");
    assert!(
        t1 <= t2 && before <= t2 && t2 <= after,
        "{t1} <= {t2}, {before} <= {t2} <= {after}"
    );

    // unloaded: the model's series go, so its lag and owner no longer page anyone
    let r = s
        .client
        .post(s.url("/v2/repository/models/ctr_wide/unload"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST unload");
    assert_eq!(read_json(r).await.0, 200);
    assert_eq!(
        last_applied(&s).await,
        None,
        "the unloaded model's time stayed"
    );
    let text = metrics_text(&s).await;
    assert!(
        !text.contains(r#"kiln_model_info{model="ctr_wide""#),
        "the unloaded model's info stayed"
    );
}
