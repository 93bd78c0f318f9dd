//! The admin-API sink against in-process endpoints: every endpoint acknowledges every delta in
//! order, a failing endpoint is retried without holding the others back, and its queue stays
//! bounded by merging what it has not been sent yet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use kiln_embed::Delta;
use kiln_learn::config::EndpointConfig;
use kiln_learn::metrics::LearnMetrics;
use kiln_learn::sink::admin::{AdminSink, AdminSinkConfig};
use kiln_learn::sink::{Batch, Sink};
use parking_lot::Mutex;

/// A server's table: applies deltas as kiln-embed does (in sequence, duplicates ignored).
#[derive(Default)]
struct Replica {
    rows: BTreeMap<u64, f32>,
    last_seq: u64,
    applied: usize,
    /// Requests to refuse with 503 before accepting any.
    refuse: AtomicUsize,
}

async fn deltas(
    State(r): State<Arc<Mutex<Replica>>>,
    headers: HeaderMap,
    Path((_m, _t)): Path<(String, String)>,
    body: Bytes,
) -> StatusCode {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tok") {
        return StatusCode::UNAUTHORIZED;
    }
    let mut r = r.lock();
    if r.refuse.load(Ordering::SeqCst) > 0 {
        r.refuse.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let d = Delta::decode(&body).expect("a valid delta");
    if d.seq <= r.last_seq {
        return StatusCode::OK;
    }
    assert_eq!(d.seq, r.last_seq + 1, "a sequence gap reached the server");
    for k in &d.tombstones {
        r.rows.remove(k);
    }
    for (k, v) in d.keys.iter().zip(&d.values) {
        r.rows.insert(*k, *v);
    }
    r.last_seq = d.seq;
    r.applied += 1;
    StatusCode::OK
}

async fn replica(refuse: usize) -> (String, Arc<Mutex<Replica>>) {
    let r = Arc::new(Mutex::new(Replica::default()));
    r.lock().refuse.store(refuse, Ordering::SeqCst);
    let app = Router::new()
        .route("/admin/v1/models/{m}/tables/{t}/deltas", post(deltas))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await.expect("serve") });
    (url, r)
}

fn delta(seq: u64, key: u64, value: f32, tomb: &[u64]) -> Arc<Delta> {
    Arc::new(Delta {
        source: "l@1".into(),
        table: "t".into(),
        seq,
        created_ms: 1,
        dim: 1,
        keys: vec![key],
        values: vec![value],
        tombstones: tomb.to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_catches_up_without_holding_back_the_others() {
    let (good_url, good) = replica(0).await;
    // refuses its first 30 requests, then recovers
    let (bad_url, bad) = replica(30).await;
    let metrics = Arc::new(LearnMetrics::default());
    let endpoint = |url: String| EndpointConfig {
        url,
        token: Some("tok".into()),
    };
    let mut sink = AdminSink::start(
        AdminSinkConfig {
            endpoints: vec![endpoint(good_url), endpoint(bad_url)],
            model: "m".into(),
            max_queued: 4,
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(200),
        },
        metrics.clone(),
        &tokio::runtime::Handle::current(),
    )
    .expect("sink");
    let mut expect = BTreeMap::new();
    for n in 1..=40u64 {
        let key = n % 7;
        let tomb = if n % 10 == 0 {
            vec![(n + 3) % 7]
        } else {
            vec![]
        };
        for t in &tomb {
            expect.remove(t);
        }
        expect.insert(key, n as f32);
        sink.send(Batch {
            number: n,
            deltas: vec![delta(n, key, n as f32, &tomb)],
        })
        .expect("send");
        // the healthy endpoint gets each delta while the other one is still refusing
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while good.lock().applied < n as usize {
            assert!(tokio::time::Instant::now() < deadline, "endpoint held back");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(bad.lock().applied < 40, "the failing endpoint is behind");
    // both endpoints end with every delta acknowledged
    let done = tokio::task::spawn_blocking(move || {
        let ok = sink.flush(Duration::from_secs(60));
        (ok, sink)
    })
    .await
    .expect("flush");
    assert!(done.0, "every delta acknowledged by both endpoints");
    assert_eq!(done.1.status().acked, 40);
    let (good, bad) = (good.lock(), bad.lock());
    assert_eq!(good.rows, expect);
    assert_eq!(bad.rows, expect, "the recovered endpoint converged");
    assert_eq!(
        good.applied, 40,
        "the healthy endpoint got every delta, unmerged"
    );
    assert!(
        bad.applied < 40,
        "the failing endpoint's backlog was merged"
    );
    assert!(metrics.sink_merged.get() > 0);
    assert!(metrics.sink_failures.get() >= 30);
}
