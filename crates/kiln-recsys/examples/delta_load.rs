//! Pushes embedding deltas to a running `kiln serve` as fast as it acknowledges them, for a
//! fixed time, and reports deltas/s and rows/s: the online-update side of the recsys
//! benchmark (`bench/recsys/run.sh` runs it while perf_analyzer keeps the model loaded).
//!
//! ```text
//! cargo run --release -p kiln-recsys --example delta_load -- URL MODEL ROWS_PER_TABLE \
//!     [--tables 26] [--rows-per-delta 1000] [--seconds 20] [--writers 2] [--token T]
//! ```
//! Each writer owns a disjoint set of tables (`emb.{i}`) and sends its deltas one after the
//! other (source `bench-w{writer}`, sequence numbers from 1), so every delta is applied in
//! order; keys are uniform in [0, ROWS_PER_TABLE), values random.

use kiln_embed::{mix64, Delta};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: delta_load URL MODEL ROWS_PER_TABLE [--tables N] [--rows-per-delta N] [--seconds S] [--writers W] [--token T]";
    let url = args.next().expect(usage);
    let model = args.next().expect(usage);
    let rows: u64 = args.next().expect(usage).parse().expect("rows");
    let (mut tables, mut per, mut secs, mut writers, mut token) =
        (26usize, 1000usize, 20u64, 2usize, None);
    while let Some(a) = args.next() {
        let v = args.next().expect(usage);
        match a.as_str() {
            "--tables" => tables = v.parse().unwrap(),
            "--rows-per-delta" => per = v.parse().unwrap(),
            "--seconds" => secs = v.parse().unwrap(),
            "--writers" => writers = v.parse().unwrap(),
            "--token" => token = Some(v),
            o => panic!("unknown argument {o}; {usage}"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // reqwest is built without a default TLS provider (see the workspace Cargo.toml)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (client, url, model, token) = (client.clone(), url.clone(), model.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mine: Vec<usize> = (0..tables).filter(|t| t % writers == w).collect();
                let mut seq = vec![0u64; tables];
                let (mut sent, mut lat) = (0u64, Vec::new());
                let mut state = 0x1234_5678u64 + w as u64;
                let mut i = 0usize;
                while Instant::now() < deadline {
                    let t = mine[i % mine.len()];
                    i += 1;
                    seq[t] += 1;
                    let keys: Vec<u64> = (0..per)
                        .map(|_| {
                            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                            mix64(state) % rows
                        })
                        .collect();
                    let values: Vec<f32> = (0..per * 64)
                        .map(|_| {
                            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                            ((mix64(state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.25
                        })
                        .collect();
                    let body = Delta {
                        source: format!("bench-w{w}"),
                        seq: seq[t],
                        dim: 64,
                        keys,
                        values,
                        ..Default::default()
                    }
                    .encode();
                    let mut r = client
                        .post(format!("{url}/admin/v1/models/{model}/tables/emb.{t}/deltas"))
                        .body(body);
                    if let Some(tok) = &token {
                        r = r.header("Authorization", format!("Bearer {tok}"));
                    }
                    let t0 = Instant::now();
                    let resp = r.send().await.expect("send delta");
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    assert!(status.is_success(), "delta refused: {status} {text}");
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    sent += 1;
                }
                (sent, lat)
            }));
        }
        let (mut sent, mut lat) = (0u64, Vec::new());
        for t in tasks {
            let (s, l) = t.await.unwrap();
            sent += s;
            lat.extend(l);
        }
        let el = started.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
        println!(
            "deltas: {sent} in {el:.1} s = {:.0} deltas/s, {:.0} rows/s ({per} rows x 64 per delta, {writers} writers); ack p50 {:.2} ms p99 {:.2} ms",
            sent as f64 / el,
            (sent as usize * per) as f64 / el,
            q(0.5),
            q(0.99)
        );
    });
}
