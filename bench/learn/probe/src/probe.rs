//! `probe`: freshness, one probe after the other. A probe is a user and an item never seen
//! before: it asks the server for their prediction (with the other features as padding, so
//! only those two rows count), produces an impression of them and a click on it to Kafka at
//! t0, then asks again every `--poll-ms` until the prediction differs. Freshness is the time of
//! the first different answer minus t0: the learner's whole loop (consume, join, train,
//! publish) plus the replica's (consume the delta topic, apply). A first probe warms the
//! producer and the HTTP connection up and is not counted. With `--learner`, each poll
//! also asks the learner's rows endpoint for the item's row, which splits the time in two:
//! until the trainer holds the row (consume, join, train), and the rest (the wait for the next
//! publish, the delta topic, the replica).

use crate::common::{self, quantile};
use anyhow::Context;
use clap::Args;
use rdkafka::producer::{FutureRecord, Producer};
use std::io::Write;
use std::time::{Duration, Instant};

/// Flags of `probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// The impressions topic.
    #[arg(long, default_value = "impressions")]
    impressions_topic: String,
    /// The actions topic.
    #[arg(long, default_value = "actions")]
    actions_topic: String,
    /// The server's HTTP base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    http: String,
    /// The served model.
    #[arg(long, default_value = "ctr_wide")]
    model: String,
    /// Probes.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Pause between one probe's observation and the next probe, ms, plus a uniform random
    /// part of up to `--jitter-ms`, so that probes do not fall into step with a periodic stage
    /// of the pipeline (a publish interval, a consumer's fetch wait).
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    /// The random part of the pause, ms.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// Poll interval, ms.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// A probe not seen after this many seconds counts as missed.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// The learner's metrics base URL (e.g. http://127.0.0.1:9108), whose rows endpoint is
    /// polled too.
    #[arg(long)]
    learner: Option<String>,
    /// The item feature's table.
    #[arg(long, default_value = "item_id")]
    item_table: String,
    /// The item feature's hash buckets (its key is xxh3-64 of the id modulo this).
    #[arg(long, default_value_t = 1 << 20)]
    buckets: u64,
    /// Per-probe results (`probe,freshness_ms,learner_ms`; empty when missed or not asked).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

/// Runs the probes and prints `probe: ...`.
pub async fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let producer = common::producer(&a.brokers, 0)?;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v2/models/{}/infer",
        a.http.trim_end_matches('/'),
        a.model
    );
    let run = format!("p{}-{}", std::process::id(), common::now_ms() % 1_000_000);
    let mut rng = common::Rng::new(common::now_ms());
    let mut csv = match &a.csv {
        Some(p) => Some(std::fs::File::create(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    if let Some(f) = csv.as_mut() {
        writeln!(f, "probe,freshness_ms,learner_ms")?;
    }
    let (mut seen, mut learned, mut missed) = (Vec::with_capacity(a.count), Vec::new(), 0usize);
    // probe 0 warms up and is not counted: the producer's first send waits for its connection
    // and producer id, the HTTP client's first requests for theirs
    for i in 0..=a.count {
        let (user, item, id) = (
            format!("{run}-u{i}"),
            format!("{run}-i{i}"),
            format!("{run}-{i}"),
        );
        let body = request(&user, &item);
        let rows_url = a.learner.as_ref().map(|l| {
            let key = xxhash_rust::xxh3::xxh3_64(item.as_bytes()) % a.buckets.max(1);
            format!(
                "{}/admin/v1/models/{}/tables/{}/rows?keys={key}",
                l.trim_end_matches('/'),
                a.model,
                a.item_table
            )
        });
        let before = infer(&client, &url, &body).await?;
        let t0 = Instant::now();
        let ts = common::now_ms();
        let imp = common::impression(&id, ts, &user, &item, &["Comedy"], common::hour_now());
        let clk = common::click(&id, ts);
        for (topic, payload) in [(&a.impressions_topic, imp), (&a.actions_topic, clk)] {
            producer
                .send_result(FutureRecord::to(topic).key(&id).payload(&payload))
                .map_err(|(e, _)| anyhow::anyhow!("queueing probe {id} to {topic}: {e}"))?;
        }
        let deadline = t0 + Duration::from_secs_f64(a.timeout_s);
        let (mut fresh, mut trained) = (None, None);
        while Instant::now() < deadline {
            if let (Some(u), None) = (&rows_url, trained) {
                if has_row(&client, u).await? {
                    trained = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            let now = infer(&client, &url, &body).await?;
            if now.to_bits() != before.to_bits() {
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                fresh = Some(ms);
                // the row reached the replica before a poll of the learner saw it
                trained = trained.or(rows_url.as_ref().map(|_| ms));
                break;
            }
            tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
        }
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(a.gap_ms)).await;
            continue;
        }
        match fresh {
            Some(ms) => seen.push(ms),
            None => missed += 1,
        }
        learned.extend(trained);
        let cell = |v: Option<f64>| v.map_or(String::new(), |ms| format!("{ms:.1}"));
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{i},{},{}", cell(fresh), cell(trained))?;
        }
        let pause = a.gap_ms + rng.below(a.jitter_ms + 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let _ = producer.flush(Duration::from_secs(10));
    seen.sort_by(f64::total_cmp);
    let q = |x| quantile(&seen, x);
    println!(
        "probe: {} probes, {} seen, {missed} missed (>{} s); freshness ms p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} min {:.0}",
        a.count,
        seen.len(),
        a.timeout_s,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        q(0.0)
    );
    if a.learner.is_some() {
        learned.sort_by(f64::total_cmp);
        let q = |x| quantile(&learned, x);
        println!(
            "probe: the learner held the row after ms p50 {:.0} p90 {:.0} p99 {:.0} ({} probes)",
            q(0.5),
            q(0.9),
            q(0.99),
            learned.len()
        );
    }
    Ok(())
}

/// Whether the learner's rows endpoint has the one row `url` asks for.
async fn has_row(client: &reqwest::Client, url: &str) -> anyhow::Result<bool> {
    let text = common::get_text(client, url).await?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("GET {url}: {text}"))?;
    Ok(!v["rows"][0]["values"].is_null())
}

/// An inference request for one row: `user` and `item`, the genres and the hour as padding.
fn request(user: &str, item: &str) -> String {
    serde_json::json!({"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [1, 1], "data": [user]},
        {"name": "item_id", "datatype": "BYTES", "shape": [1, 1], "data": [item]},
        {"name": "genres", "datatype": "BYTES", "shape": [1, 4], "data": ["", "", "", ""]},
        {"name": "hour", "datatype": "INT64", "shape": [1, 1], "data": [-1]},
    ]})
    .to_string()
}

/// The first output value of one inference.
async fn infer(client: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<f64> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("POST {url}"))?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status}: {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: {text}"))?;
    v["outputs"][0]["data"][0]
        .as_f64()
        .with_context(|| format!("POST {url}: no outputs[0].data[0] in {text}"))
}
