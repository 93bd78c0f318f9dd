//! What the subcommands share: the Kafka producer, event JSON, a small random generator,
//! Prometheus text scraping and quantiles.

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The genres of the ctr_wide example model's golden set, which the stream draws from.
pub const GENRES: &[&str] = &[
    "Action",
    "Comedy",
    "Crime",
    "Drama",
    "Romance",
    "Sci-Fi",
    "Documentary",
    "Western",
];

/// A producer for `brokers` with the learner's delta-sink settings (acks=all, idempotent, lz4)
/// and `linger_ms` of batching.
pub fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .with_context(|| format!("Kafka producer for {brokers}"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The current UTC hour of day, the `hour` feature of live events.
pub fn hour_now() -> u64 {
    now_ms() / 3_600_000 % 24
}

/// An impression event in the learner's schema.
pub fn impression(
    id: &str,
    ts_ms: u64,
    user: &str,
    item: &str,
    genres: &[&str],
    hour: u64,
) -> String {
    serde_json::json!({
        "type": "impression",
        "id": id,
        "ts_ms": ts_ms,
        "features": {"user_id": user, "item_id": item, "genres": genres, "hour": hour},
    })
    .to_string()
}

/// A click on impression `id`.
pub fn click(id: &str, ts_ms: u64) -> String {
    serde_json::json!({"type": "action", "id": id, "ts_ms": ts_ms, "action": "click"}).to_string()
}

/// splitmix64: deterministic, good enough for load generation.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        kiln_embed::mix64(self.0)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sum of every series of counter or gauge `name` (exact name, any labels) whose labels
/// contain `label` (e.g. `model="ctr_wide"`; empty: every series), from Prometheus text.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// GETs `url` and returns the body (a 10 s timeout).
pub async fn get_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await.with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {body}");
    Ok(body)
}

/// The `q` quantile (0..=1, nearest rank) of ascending `sorted`; NaN when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_reads_the_named_series_only() {
        let text = "# HELP x\n\
            kiln_delta_source_applied_total{model=\"ctr_wide\"} 12\n\
            kiln_delta_source_applied_total{model=\"other\"} 5\n\
            kiln_delta_source_applied_created{model=\"ctr_wide\"} 1.7e9\n\
            kiln_delta_source_rejected_total{model=\"ctr_wide\",reason=\"garbage\"} 2\n\
            kiln_delta_source_rejected_total{model=\"ctr_wide\",reason=\"wrong_dim\"} 3\n";
        let m = "model=\"ctr_wide\"";
        assert_eq!(metric_sum(text, "kiln_delta_source_applied_total", m), 12.0);
        assert_eq!(
            metric_sum(text, "kiln_delta_source_applied_total", ""),
            17.0
        );
        assert_eq!(metric_sum(text, "kiln_delta_source_rejected_total", m), 5.0);
        assert_eq!(metric_sum(text, "absent_total", m), 0.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v[..1], 0.99), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn events_follow_the_learner_schema() {
        let imp: serde_json::Value =
            serde_json::from_str(&impression("p-1", 5, "u", "i", &["Comedy"], 11)).unwrap();
        assert_eq!(imp["type"], "impression");
        assert_eq!(imp["features"]["genres"][0], "Comedy");
        assert_eq!(imp["features"]["hour"], 11);
        let c: serde_json::Value = serde_json::from_str(&click("p-1", 6)).unwrap();
        assert_eq!(
            (c["type"].as_str(), c["action"].as_str()),
            (Some("action"), Some("click"))
        );
    }
}
