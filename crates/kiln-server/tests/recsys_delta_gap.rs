//! A delta that skips sequence numbers, on a table that applies gaps: HTTP and gRPC both report
//! the number that was due and the one that came.

mod common;
mod recsys_common;

use common::*;
use recsys_common::*;

use kiln_protocol::admin::sparse_admin_client::SparseAdminClient;
use kiln_protocol::admin::ApplyDeltaRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_report_an_applied_gap_alike() {
    let Some(dir) = reference_repo() else { return };
    let g = recsys_common::golden(dir.path());
    let cfg = dir.path().join("dlrm/config.toml");
    let mut text = std::fs::read_to_string(&cfg).expect("config.toml");
    text.push_str("\n[parameters.table_defaults]\ngap_policy = \"apply\"\n");
    std::fs::write(&cfg, text).expect("config.toml");
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    let s = TestServer::temp(dir, opts).await;
    let table = g.delta_table.as_str();

    let (st, v) = post_delta(&s, table, g.delta(3).encode(), Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    let ack = &v["versions"][0];
    assert_eq!(ack["applied"], true, "{v}");
    assert_eq!(ack["gap"]["expected"], 1, "{v}");
    assert_eq!(ack["gap"]["got"], 3, "{v}");

    let mut admin = SparseAdminClient::new(s.channel().await);
    let mut r = tonic::Request::new(ApplyDeltaRequest {
        model_name: "dlrm".into(),
        model_version: String::new(),
        table: table.into(),
        delta: g.delta(6).encode().into(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let ack = admin
        .apply_delta(r)
        .await
        .expect("grpc delta")
        .into_inner()
        .results
        .remove(0);
    assert!(ack.applied, "{ack:?}");
    assert_eq!((ack.gap_expected, ack.gap_got), (4, 6), "{ack:?}");
    assert_eq!(ack.last_sequence, 6, "{ack:?}");
}
