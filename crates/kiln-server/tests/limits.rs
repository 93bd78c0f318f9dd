//! One client cannot starve the others: slow or idle connections are closed by the header,
//! body and idle timeouts; each listener refuses connections beyond its cap cleanly while the
//! open ones keep working; a declared body over the limit is refused before it is read; and
//! an inference request is refused with 429 (a full queue, a spent in-flight budget) before
//! its body is read or parsed.

mod common;

use common::*;
use kiln_server::Limits;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Short timeouts so the tests finish quickly; nothing asserts how long anything took.
fn quick() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        body_min_rate: 1 << 20,
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Reads until the server closes the connection (an error such as a reset counts as closed);
/// panics after [`PATIENCE`].
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after {PATIENCE:?}; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).to_string(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP response.
fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Sends a request head (and optionally part of a body) and leaves the connection open.
async fn send_head(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    s
}

/// One keep-alive GET on an open connection; returns the status.
async fn get_on(s: &mut TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let text = read_answer(s).await;
    assert!(!text.is_empty(), "connection closed before the answer");
    status_of(&text)
}

fn infer_head(model: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_by_the_header_timeout() {
    let opts = Options {
        limits: quick(),
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    // a connection that never sends anything
    let mut idle = TcpStream::connect(s.http_addr).await.expect("connect");
    // a request head that never ends
    let mut partial = send_head(s.http_addr, "GET /v2/health/live HTTP/1.1\r\nHost: k", b"").await;
    read_until_closed(&mut idle).await;
    read_until_closed(&mut partial).await;

    // a head trickled one byte at a time, each well within the timeout
    let mut trickle = TcpStream::connect(s.http_addr).await.expect("connect");
    let head = b"GET /v2/health/live HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'));
    let start = std::time::Instant::now();
    let mut closed = false;
    for b in head {
        if trickle.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), trickle.read(&mut buf)).await
        {
            // EOF, a reset, or hyper's answer before closing: the server gave up on the head
            let _ = r;
            closed = true;
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "trickling connection still open"
        );
    }
    assert!(closed);
    // the server still answers others
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    let text = s
        .client
        .get(format!("{}/metrics", s.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("kiln_server_connections_timed_out_total{listener=\"http\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408() {
    let opts = Options {
        limits: quick(),
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    let body = mlp_request(&[row(1)]).to_string();
    let half = &body.as_bytes()[..body.len() / 2];
    let mut c = send_head(s.http_addr, &infer_head("mlp", body.len(), ""), half).await;
    let answer = read_until_closed(&mut c).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("too slowly"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_grpc_connections_are_closed() {
    let opts = Options {
        limits: quick(),
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    let mut idle = TcpStream::connect(s.grpc_addr).await.expect("connect");
    read_until_closed(&mut idle).await;
    // a client that uses its channel is served
    let r = s
        .grpc()
        .await
        .model_infer(grpc_mlp(&[row(1)], "after"))
        .await
        .expect("infer")
        .into_inner();
    assert_eq!(r.id, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_while_open_ones_work() {
    let opts = Options {
        limits: Limits {
            max_connections: 2,
            ..Limits::default()
        },
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    let mut a = TcpStream::connect(s.http_addr).await.expect("connect");
    let mut b = TcpStream::connect(s.http_addr).await.expect("connect");
    assert_eq!(get_on(&mut a, "/v2/health/live").await, 200);
    assert_eq!(get_on(&mut b, "/v2/health/live").await, 200);
    // the third is answered 503 and closed, without sending anything
    let mut c = TcpStream::connect(s.http_addr).await.expect("connect");
    let refused = read_until_closed(&mut c).await;
    assert_eq!(status_of(&refused), 503, "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    // the open ones keep working
    assert_eq!(get_on(&mut a, "/v2/health/ready").await, 200);
    assert_eq!(get_on(&mut b, "/v2/health/live").await, 200);
    // a freed slot is reused
    drop(a);
    eventually("a slot frees up for a new connection", || async {
        let mut n = TcpStream::connect(s.http_addr).await.expect("connect");
        n.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
            .await
            .is_ok()
            && status_of(&read_until_closed(&mut n).await) == 200
    })
    .await;

    // gRPC: two channels work, a third connection is closed at once
    let mut g1 = s.grpc().await;
    let mut g2 = s.grpc().await;
    let mut g3 = TcpStream::connect(s.grpc_addr).await.expect("connect");
    assert_eq!(read_until_closed(&mut g3).await, "");
    for (g, id) in [(&mut g1, "one"), (&mut g2, "two")] {
        let r = g.model_infer(grpc_mlp(&[row(2)], id)).await.expect("infer");
        assert_eq!(r.into_inner().id, id);
    }
    let text = s
        .client
        .get(format!("{}/metrics", s.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for l in ["http", "grpc"] {
        let line = format!("kiln_server_connections_refused_total{{listener=\"{l}\"}} ");
        assert!(text.contains(&line), "no {line} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let opts = Options {
        max_request_bytes: 4096,
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    for path in ["/v2/models/mlp/infer", "/v2/repository/index"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n\r\n"
        );
        // headers only: the answer must not wait for the body
        let mut c = send_head(s.http_addr, &head, b"").await;
        let answer = read_until_closed(&mut c).await;
        assert_eq!(status_of(&answer), 413, "{path}: {answer}");
        assert!(answer.contains("too large"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_inflight_budget_gets_429_without_its_body() {
    // A minute of queue delay keeps the first request in flight.
    let opts = Options {
        limits: Limits {
            max_inflight_requests: 1,
            ..Limits::default()
        },
        ..Options::default()
    };
    let s = TestServer::temp(mlp_repo(60_000_000, 16, &[], 1), opts).await;
    let first = tokio::spawn({
        let (client, url) = (s.client.clone(), s.url("/v2/models/mlp/infer"));
        async move { client.post(url).json(&mlp_request(&[row(1)])).send().await }
    });
    let repo = s.repo.clone();
    eventually("the first request is queued", || {
        let queued = repo.get("mlp", None).map(|v| v.queue_len()).unwrap_or(0);
        async move { queued == 1 }
    })
    .await;
    // headers only: refused without the body being sent
    let mut c = send_head(s.http_addr, &infer_head("mlp", 5000, ""), b"").await;
    let answer = read_answer(&mut c).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(answer.contains("--max-inflight-requests"), "{answer}");
    // gRPC shares the budget
    let e = s
        .grpc()
        .await
        .model_infer(grpc_mlp(&[row(2)], ""))
        .await
        .expect_err("over the budget");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    first.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_before_the_body_is_parsed() {
    // A queue of one, held by a request that waits a minute for company.
    let s = TestServer::temp(mlp_repo(60_000_000, 1, &[], 1), Options::default()).await;
    let first = tokio::spawn({
        let (client, url) = (s.client.clone(), s.url("/v2/models/mlp/infer"));
        async move { client.post(url).json(&mlp_request(&[row(1)])).send().await }
    });
    let repo = s.repo.clone();
    eventually("the first request is queued", || {
        let queued = repo.get("mlp", None).map(|v| v.queue_len()).unwrap_or(0);
        async move { queued == 1 }
    })
    .await;
    // an unparseable body is not even read: the full queue answers first
    let (status, v) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", "{not json").await;
    assert_eq!(status, 429, "{v}");
    assert!(v.contains("queue full"), "{v}");
    // and headers alone get the same answer
    let mut c = send_head(s.http_addr, &infer_head("mlp", 1 << 20, ""), b"").await;
    let answer = read_answer(&mut c).await;
    assert_eq!(status_of(&answer), 429, "{answer}");
    // gRPC checks the queue before converting tensors: a bad datatype still gets
    // RESOURCE_EXHAUSTED
    let mut bad = grpc_mlp(&[row(2)], "");
    bad.inputs[0].datatype = "NOT_A_TYPE".into();
    let e = s
        .grpc()
        .await
        .model_infer(bad)
        .await
        .expect_err("queue full");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // other models and the health endpoints are unaffected
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    first.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_inference_header_lengths_are_refused() {
    let s = TestServer::examples().await;
    let header = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 256], "parameters": { "binary_data_size": 1024 } }] });
    let (body, n) = binary_body(&header, &f32_bytes(&row(3)));
    let send = |extra: String| {
        let body = body.clone();
        async move {
            let head = format!(
                "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\
                 Content-Length: {}\r\n{extra}\r\n",
                body.len()
            );
            let mut c = send_head(s.http_addr, &head, &body).await;
            read_until_closed(&mut c).await
        }
    };
    let ok = send(format!("Inference-Header-Content-Length: {n}\r\n")).await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let same = send(format!(
        "Inference-Header-Content-Length: {n}\r\nInference-Header-Content-Length: {n}\r\n"
    ))
    .await;
    assert_eq!(status_of(&same), 200, "{same}");
    let differ = send(format!(
        "Inference-Header-Content-Length: {n}\r\nInference-Header-Content-Length: {}\r\n",
        n + 1
    ))
    .await;
    assert_eq!(status_of(&differ), 400, "{differ}");
    assert!(differ.contains("more than once"), "{differ}");
}
