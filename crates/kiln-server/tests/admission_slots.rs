//! A request admitted at its headers holds a place in its model's queue until its body is
//! read and decoded, so a request is refused at its headers or not at all: with a queue of
//! one, a request arriving while another one's body is still on its way is refused at once,
//! and the first, once its body arrives, is queued instead of being refused after decoding.
//! The model workers' waits on an empty queue are counted in `/metrics`.

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

async fn metrics_text(s: &TestServer) -> String {
    s.client
        .get(format!("{}/metrics", s.metrics))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the series whose line starts with `series`, `None` without it.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_is_on_its_way_holds_its_place_in_the_queue() {
    // A queue of one; a minute of queue delay keeps a queued request there.
    let s = TestServer::temp(mlp_repo(60_000_000, 1, &[], 1), Options::default()).await;
    let body = serde_json::to_vec(&mlp_request(&[row(1)])).expect("json");
    let repo = s.repo.clone();
    let held = move || {
        repo.get("mlp", None)
            .ok()
            .and_then(|v| v.worker_waits())
            .map_or(0, |w| w.reserved_now)
    };

    // the first request: its headers now, its body later
    let mut first = connect(s.http_addr).await;
    first
        .write_all(head(body.len()).as_bytes())
        .await
        .expect("write head");
    eventually("the first request holds a place", || {
        let n = held();
        async move { n == 1 }
    })
    .await;

    // the queue is empty, but its one place is taken: refused at the headers
    let (status, v) = raw_http(
        s.http_addr,
        "POST",
        "/v2/models/mlp/infer",
        &String::from_utf8_lossy(&body),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert!(v.contains("queue full"), "{v}");

    // the first request's body arrives: it is queued, not refused after decoding
    first.write_all(&body).await.expect("write body");
    let repo = s.repo.clone();
    eventually("the first request is queued", || {
        let queued = repo.get("mlp", None).map_or(0, |v| v.queue_len());
        async move { queued == 1 }
    })
    .await;
    assert_eq!(
        held(),
        0,
        "the place became the request's room in the queue"
    );

    let text = metrics_text(&s).await;
    assert_eq!(
        value(
            &text,
            "kiln_server_admission_rejected_total{reason=\"queue_full\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "kiln_server_admission_rejected_total{reason=\"queue_full_late\"}"
        ),
        None,
        "no request is refused after its body was decoded: {text}"
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_sends_its_body_gives_its_place_back() {
    let s = TestServer::temp(mlp_repo(60_000_000, 1, &[], 1), Options::default()).await;
    let repo = s.repo.clone();
    let held = move || {
        repo.get("mlp", None)
            .ok()
            .and_then(|v| v.worker_waits())
            .map_or(0, |w| w.reserved_now)
    };
    let mut c = connect(s.http_addr).await;
    c.write_all(head(100).as_bytes()).await.expect("write head");
    eventually("the request holds a place", || {
        let n = held();
        async move { n == 1 }
    })
    .await;
    drop(c);
    eventually("the place is given back", || {
        let n = held();
        async move { n == 0 }
    })
    .await;
    // and the queue takes a request again
    let (status, v) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", "{not json").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(held(), 0, "a refused body gives its place back");
}
