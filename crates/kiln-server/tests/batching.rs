//! The scheduler seen through the server: concurrent single-row requests are batched and get
//! exactly the outputs they get alone (HTTP and gRPC); a full queue answers HTTP 429 / gRPC
//! RESOURCE_EXHAUSTED at once and the server recovers; a request's `timeout` parameter expires
//! it in the queue (HTTP 504 / gRPC DEADLINE_EXCEEDED) and the server keeps serving; requests
//! whose client went away are never computed, and every outcome is counted once in the metrics.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};
use std::sync::Arc;
use tonic::Code;

const ROWS: u64 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rows_batch_and_equal_one_by_one() {
    // 20 ms of queue delay and no preferred size: concurrent requests reliably meet in a batch.
    let s = Arc::new(TestServer::temp(mlp_repo(20_000, 1024, &[], 1), Options::default()).await);
    let rows: Vec<Vec<f32>> = (0..ROWS).map(|i| row(1000 + i)).collect();

    // Each row alone, one request at a time.
    let mut alone = Vec::new();
    for r in &rows {
        let resp = s
            .infer_ok("mlp", &mlp_request(std::slice::from_ref(r)))
            .await;
        alone.push(output_floats(&resp, "y")[0]);
    }
    let stats = http_stats(&s, "mlp").await;
    assert_eq!(
        stats["execution_count"], ROWS,
        "sequential requests run alone: {stats}"
    );

    // All rows at once over HTTP.
    let tasks: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = s.clone();
            let body = json!({ "id": format!("r{i}"), "inputs": mlp_request(std::slice::from_ref(r))["inputs"] });
            tokio::spawn(async move { s.infer_ok("mlp", &body).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert_eq!(
            resp["id"],
            format!("r{i}"),
            "answer went to the wrong request"
        );
        assert_eq!(output(&resp, "y")["shape"], json!([1, 1]));
        assert_close(
            &output_floats(&resp, "y"),
            &alone[i..=i],
            BATCH_TOL,
            &format!("http row {i}"),
        );
    }

    // And over gRPC.
    let tasks: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = s.clone();
            let req = grpc_mlp(std::slice::from_ref(r), &format!("g{i}"));
            tokio::spawn(async move { s.grpc().await.model_infer(req).await.unwrap().into_inner() })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert_eq!(resp.id, format!("g{i}"));
        assert_close(
            &grpc_floats(&resp, 0),
            &alone[i..=i],
            BATCH_TOL,
            &format!("grpc row {i}"),
        );
    }

    // Requests of 1, 2 and 3 rows at once: each gets back exactly its own rows.
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at < rows.len() {
        let n = (starts.len() % 3 + 1).min(rows.len() - at);
        starts.push((at, n));
        at += n;
    }
    let tasks: Vec<_> = starts
        .iter()
        .map(|&(at, n)| {
            let s = s.clone();
            let body = mlp_request(&rows[at..at + n]);
            tokio::spawn(async move { s.infer_ok("mlp", &body).await })
        })
        .collect();
    for (&(at, n), t) in starts.iter().zip(tasks) {
        let resp = t.await.unwrap();
        assert_eq!(output(&resp, "y")["shape"], json!([n, 1]));
        assert_close(
            &output_floats(&resp, "y"),
            &alone[at..at + n],
            BATCH_TOL,
            &format!("rows {at}..{}", at + n),
        );
    }

    let stats = http_stats(&s, "mlp").await;
    assert_eq!(stats["inference_count"], 4 * ROWS, "{stats}");
    assert_eq!(
        stats["inference_stats"]["success"]["count"],
        3 * ROWS + starts.len() as u64,
        "{stats}"
    );
    let batched: Vec<&Value> = stats["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["batch_size"].as_u64().unwrap() > 1
                && b["compute_infer"]["count"].as_u64().unwrap() > 0
        })
        .collect();
    assert!(
        !batched.is_empty(),
        "no batch of more than one row: {stats}"
    );
    assert!(
        stats["execution_count"].as_u64().unwrap() < 3 * ROWS + starts.len() as u64,
        "{stats}"
    );
    for b in stats["batch_stats"].as_array().unwrap() {
        assert!(
            b["batch_size"].as_u64().unwrap() <= 64,
            "batch over max_batch_size: {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_overloaded() {
    // One queue slot, and the first request waits a second for company that cannot come.
    let s = Arc::new(TestServer::temp(mlp_repo(1_000_000, 1, &[], 1), Options::default()).await);
    let expected = {
        // Computed by a server that answers at once.
        let quick = TestServer::examples().await;
        output_floats(&quick.infer_ok("mlp", &mlp_request(&[row(7)])).await, "y")
    };

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s
                    .client
                    .post(s.url("/v2/models/mlp/infer"))
                    .json(&mlp_request(&[row(7)]))
                    .send()
                    .await
                    .unwrap();
                read_json(r).await
            })
        })
        .collect();
    let mut overloaded = 0;
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_close(
                    &output_floats(&body, "y"),
                    &expected,
                    BATCH_TOL,
                    "queued request",
                );
            }
            429 => {
                overloaded += 1;
                let msg = error_of(&body);
                assert!(msg.contains("queue"), "{msg}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(overloaded >= 1, "no request was refused");
    assert!(ok >= 1, "the queued request was not answered");

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.grpc()
                    .await
                    .model_infer(grpc_mlp(&[row(7)], &format!("{i}")))
                    .await
            })
        })
        .collect();
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => assert_close(
                &grpc_floats(&r.into_inner(), 0),
                &expected,
                BATCH_TOL,
                "grpc queued",
            ),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("queue"), "{e:?}");
                exhausted += 1;
            }
        }
    }
    assert!(exhausted >= 1, "no gRPC request was refused");

    // Refusals are counted as failures, and the server still answers correctly.
    let stats = http_stats(&s, "mlp").await;
    let fails = stats["inference_stats"]["fail"]["count"].as_u64().unwrap();
    assert_eq!(fails, overloaded + exhausted, "{stats}");
    let resp = s.infer_ok("mlp", &mlp_request(&[row(7)])).await;
    assert_close(
        &output_floats(&resp, "y"),
        &expected,
        BATCH_TOL,
        "after the burst",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_parameter_expires_queued_requests() {
    let s = TestServer::temp(mlp_repo(1_000_000, 1024, &[], 1), Options::default()).await;
    let req = json!({ "inputs": mlp_request(&[row(3)])["inputs"], "parameters": { "timeout": 1 } });
    let (status, body) = s.post("/v2/models/mlp/infer", &req).await;
    assert_eq!(status, 504, "{body}");
    assert!(error_of(&body).contains("timed out"), "{body}");

    let mut c = s.grpc().await;
    for param in [
        pb::infer_parameter::ParameterChoice::Int64Param(1),
        pb::infer_parameter::ParameterChoice::Uint64Param(1),
    ] {
        let mut req = grpc_mlp(&[row(3)], "t");
        req.parameters.insert(
            "timeout".into(),
            pb::InferParameter {
                parameter_choice: Some(param),
            },
        );
        let e = c.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("timed out"), "{e:?}");
    }

    // A request with a generous timeout is computed; so is one without.
    let req = json!({ "inputs": mlp_request(&[row(3)])["inputs"], "parameters": { "timeout": 60_000_000u64 } });
    let plain = mlp_request(&[row(3)]);
    let (with, without) = tokio::join!(s.infer_ok("mlp", &req), s.infer_ok("mlp", &plain));
    assert_eq!(output_floats(&with, "y"), output_floats(&without, "y"));
    let stats = http_stats(&s, "mlp").await;
    assert_eq!(stats["inference_stats"]["fail"]["count"], 3, "{stats}");
    assert_eq!(stats["inference_stats"]["success"]["count"], 2, "{stats}");
    // Each expired request is one timeout, not also a cancellation when its batch runs.
    let text = metrics_text(&s).await;
    assert_eq!(failures(&text, "timeout"), 3.0, "{text}");
    assert_eq!(failures(&text, "cancelled"), 0.0, "{text}");
    assert_eq!(
        gauge(&text, "kiln_inference_inflight_requests"),
        0.0,
        "{text}"
    );
}

/// The mlp failure counter for `reason` (0 when the series does not exist).
fn failures(text: &str, reason: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("kiln_inference_request_failure_total{") && l.contains("model=\"mlp\"")
        })
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The value of the mlp series of a gauge.
fn gauge(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{model=\"mlp\",version=\"1\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_are_not_computed() {
    let s = TestServer::temp(mlp_repo(300_000, 1024, &[], 1), Options::default()).await;
    let repo = s.repo.clone();
    let queued = || repo.get("mlp", None).map(|v| v.queue_len()).unwrap_or(0);

    // A gRPC client that gives up while its request is queued: the call is cancelled.
    let mut c = s.grpc().await;
    let call = tokio::spawn(async move { c.model_infer(grpc_mlp(&[row(5)], "gone")).await });
    eventually("the request is queued", || {
        let n = queued();
        async move { n == 1 }
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually("the abandoned request leaves the queue", || {
        let n = queued();
        async move { n == 0 }
    })
    .await;

    // An HTTP client that closes its connection while its request is queued.
    let mut conn = tokio::net::TcpStream::connect(s.http_addr).await.unwrap();
    let body = serde_json::to_string(&mlp_request(&[row(5)])).unwrap();
    let head = format!(
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    eventually("the HTTP request is queued", || {
        let n = queued();
        async move { n == 1 }
    })
    .await;
    drop(conn);
    eventually("the abandoned HTTP request leaves the queue", || {
        let n = queued();
        async move { n == 0 }
    })
    .await;

    // A later request is computed alone: the abandoned ones never ran.
    let resp = s.infer_ok("mlp", &mlp_request(&[row(6)])).await;
    assert_eq!(output(&resp, "y")["shape"], json!([1, 1]));
    let stats = http_stats(&s, "mlp").await;
    assert_eq!(stats["inference_count"], 1, "{stats}");
    assert_eq!(stats["execution_count"], 1, "{stats}");
    let text = metrics_text(&s).await;
    assert_eq!(failures(&text, "cancelled"), 2.0, "{text}");
    assert_eq!(
        gauge(&text, "kiln_inference_inflight_requests"),
        0.0,
        "{text}"
    );
    assert_eq!(
        gauge(&text, "kiln_inference_queue_depth_requests"),
        0.0,
        "{text}"
    );
}
