//! A request admitted at its headers holds a place in its model's queue while its body is
//! read and decoded (`kiln_runtime`'s `queue_slots` test covers the places themselves), but
//! only for a short grace: a body still on its way after it gives the place back, so a slow
//! client cannot hold the queue, and is checked for room again when it is queued. A body
//! that fails to decode gives its place back too. The model workers' waits on an empty queue
//! are counted in `/metrics`.

mod common;

use common::*;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn head(len: usize) -> String {
    format!(
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// The value of the series whose line starts with `series`, `None` without it.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Places taken so far and held now in `mlp`'s queue.
fn places(s: &TestServer) -> (u64, usize) {
    s.repo
        .get("mlp", None)
        .ok()
        .and_then(|v| v.worker_waits())
        .map_or((0, 0), |w| (w.places_taken, w.reserved_now))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gives_its_place_in_the_queue_back() {
    // A queue of one; a minute of queue delay keeps a queued request there.
    let s = TestServer::temp(mlp_repo(60_000_000, 1, &[], 1), Options::default()).await;
    let body = serde_json::to_vec(&mlp_request(&[row(1)])).expect("json");

    // the first request sends its headers and holds its body back
    let mut slow = connect(s.http_addr).await;
    slow.write_all(head(body.len()).as_bytes())
        .await
        .expect("write head");
    eventually("the slow request took a place and gave it back", || {
        let p = places(&s);
        async move { p == (1, 0) }
    })
    .await;

    // so another client's request is queued
    let other = tokio::spawn({
        let (addr, body) = (s.http_addr, String::from_utf8_lossy(&body).to_string());
        async move { raw_http(addr, "POST", "/v2/models/mlp/infer", &body).await }
    });
    let repo = s.repo.clone();
    eventually("the other request is queued", || {
        let queued = repo.get("mlp", None).map_or(0, |v| v.queue_len());
        async move { queued == 1 }
    })
    .await;

    // the slow body arrives at last: checked again, and refused as the queue is full
    slow.write_all(&body).await.expect("write body");
    let answer = read_answer(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("queue full"), "{answer}");

    let text = metrics_text(&s).await;
    assert_eq!(
        value(
            &text,
            "kiln_server_admission_rejected_total{reason=\"queue_full_late\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let idle = value(
        &text,
        "kiln_inference_worker_idle_waits_total{model=\"mlp\",version=\"1\"}",
    );
    assert!(
        idle.is_some_and(|n| n >= 1.0),
        "the worker waited at start: {text}"
    );
    assert!(
        value(
            &text,
            "kiln_inference_worker_starved_waits_total{model=\"mlp\",version=\"1\"}"
        )
        .is_some(),
        "{text}"
    );
    other.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_to_decode_gives_its_place_back() {
    let s = TestServer::temp(mlp_repo(60_000_000, 1, &[], 1), Options::default()).await;
    let (status, v) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", "{not json").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(places(&s), (1, 0), "one place taken, and given back");
    let (status, v) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", "{not json").await;
    assert_eq!(status, 400, "the queue still has room: {v}");
}
