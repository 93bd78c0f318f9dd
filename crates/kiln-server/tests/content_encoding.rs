//! A request body in a coding the server cannot undo is refused with 415 and an error body
//! naming the header and the codings accepted; the server keeps answering.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_encodings_get_415_naming_the_header() {
    let s = TestServer::examples().await;
    let body = serde_json::to_vec(&mlp_request(&[row(1)])).expect("json");
    for coding in ["br", "zstd", "gzip, br", "compress"] {
        let resp = s
            .client
            .post(s.url("/v2/models/mlp/infer"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(body.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 415, "{coding}");
        let v: serde_json::Value = resp.json().await.expect("JSON error body");
        let msg = error_of(&v);
        assert!(
            msg.contains("Content-Encoding") && msg.contains("gzip, deflate, identity"),
            "{coding}: {msg}"
        );
        let first_unknown = coding.split(", ").find(|c| *c != "gzip").expect("coding");
        assert!(
            msg.contains(&format!("'{first_unknown}'")),
            "{coding}: {msg}"
        );
    }
    // `identity` is no coding at all
    let resp = s
        .client
        .post(s.url("/v2/models/mlp/infer"))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 200);
    s.infer_ok("mlp", &mlp_request(&[row(2)])).await;
}
