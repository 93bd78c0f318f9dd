//! Start-up and shutdown: while start-up loading is marked in progress the server is live but
//! not ready (HTTP and gRPC); on graceful shutdown, requests already queued (over HTTP and
//! gRPC) are still computed and answered correctly, `serve()` then returns cleanly, and the
//! ports stop accepting connections.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_but_not_ready_while_starting() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    let model_ready = || pb::ModelReadyRequest {
        name: "mlp".into(),
        version: String::new(),
    };
    s.starter.set_started(false);
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 503);
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 503);
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        !c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(model_ready())
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    s.starter.set_started(true);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200);
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(model_ready())
            .await
            .unwrap()
            .into_inner()
            .ready
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_before_serve_returns() {
    // Half a second of queue delay keeps the requests queued while shutdown begins.
    let mut s = TestServer::temp(mlp_repo(500_000, 1024, &[], 1), Options::default()).await;
    let g = golden("mlp");
    let want = floats(&g["outputs"][0]["data"]);
    let x = floats(&g["inputs"][0]["data"]);
    let rows: Vec<Vec<f32>> = x.chunks(256).map(|r| r.to_vec()).collect();

    let http = tokio::spawn({
        let (client, url, body) = (
            s.client.clone(),
            s.url("/v2/models/mlp/infer"),
            json!({ "inputs": g["inputs"] }),
        );
        async move {
            read_json(
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("in-flight HTTP request"),
            )
            .await
        }
    });
    let mut grpc_client = s.grpc().await;
    let grpc =
        tokio::spawn(async move { grpc_client.model_infer(grpc_mlp(&rows, "draining")).await });

    let repo = s.repo.clone();
    eventually("both requests are queued", || {
        let queued = repo.get("mlp", None).map(|v| v.queue_len()).unwrap_or(0);
        async move { queued == 2 }
    })
    .await;
    s.begin_shutdown();
    let task = s.take_task();

    let (status, body) = http.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_close(
        &output_floats(&body, "y"),
        &want,
        GOLDEN_TOL,
        "HTTP request in flight at shutdown",
    );
    let r = grpc
        .await
        .unwrap()
        .expect("in-flight gRPC request")
        .into_inner();
    assert_eq!(r.id, "draining");
    assert_close(
        &grpc_floats(&r, 0),
        &want,
        GOLDEN_TOL,
        "gRPC request in flight at shutdown",
    );

    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("serve() returns once requests drained")
        .expect("server task")
        .expect("serve() ends without error");
    assert!(
        tokio::net::TcpStream::connect(s.http_addr).await.is_err(),
        "HTTP port still accepts"
    );
    assert!(
        tokio::net::TcpStream::connect(s.grpc_addr).await.is_err(),
        "gRPC port still accepts"
    );
}
