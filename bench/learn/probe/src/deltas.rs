//! `deltas`: kiln-embed deltas (random keys, random values) to a model's delta topic, as fast
//! as a replica applies them: the producer stays at most `--max-lag` deltas ahead of the
//! replica's `kiln_delta_source_applied_total`, read from its /metrics every `--scrape-ms`.
//! The rate is the applied counter's increase over the run, divided by the run's length. The
//! summary says who set the pace: the replica when it was rarely found with (almost) nothing
//! left to apply, otherwise the producer and the broker (the figure is then a lower bound).

use crate::common::{self, metric_sum, Rng};
use clap::Args;
use kiln_embed::Delta;
use rdkafka::producer::{FutureRecord, Producer};
use std::time::{Duration, Instant};

/// Flags of `deltas`.
#[derive(Args)]
pub struct DeltasArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// The served model (the topic is `<--topic-prefix><model>`).
    #[arg(long, default_value = "ctr_wide")]
    model: String,
    /// Delta topic prefix.
    #[arg(long, default_value = "kiln.deltas.")]
    topic_prefix: String,
    /// The table written.
    #[arg(long, default_value = "item_id")]
    table: String,
    /// The table's dim.
    #[arg(long, default_value_t = 1)]
    dim: usize,
    /// Rows per delta.
    #[arg(long, default_value_t = 100)]
    rows_per_delta: usize,
    /// Keys are uniform in [0, key_space).
    #[arg(long, default_value_t = 1 << 20)]
    key_space: u64,
    /// The replica's metrics URL, e.g. http://127.0.0.1:8002/metrics.
    #[arg(long)]
    metrics: String,
    /// How long to produce, s.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Deltas produced but not yet applied, at most.
    #[arg(long, default_value_t = 2000)]
    max_lag: u64,
    /// How often the replica's counter is read, ms.
    #[arg(long, default_value_t = 50)]
    scrape_ms: u64,
}

/// Runs the load and prints `deltas: ...`.
pub async fn run(a: DeltasArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rows_per_delta > 0 && a.dim > 0,
        "--rows-per-delta and --dim must be positive"
    );
    let producer = common::producer(&a.brokers, 5)?;
    let client = reqwest::Client::new();
    let topic = format!("{}{}", a.topic_prefix, a.model);
    let label = format!("model=\"{}\"", a.model);
    let applied = |text: &str| metric_sum(text, "kiln_delta_source_applied_total", &label) as u64;
    let rejected = |text: &str| metric_sum(text, "kiln_delta_source_rejected_total", &label) as u64;
    let source = format!("bench-deltas-{}@1", std::process::id());
    let mut rng = Rng::new(common::now_ms());

    let first = common::get_text(&client, &a.metrics).await?;
    let (applied0, rejected0) = (applied(&first), rejected(&first));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(a.seconds);
    // reads of the replica's counter, and those that found it with (almost) nothing left to apply
    let (mut produced, mut done, mut reads, mut drained) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < end {
        while produced - done.min(produced) < a.max_lag {
            produced += 1;
            let keys: Vec<u64> = (0..a.rows_per_delta)
                .map(|_| rng.below(a.key_space))
                .collect();
            let values: Vec<f32> = (0..a.rows_per_delta * a.dim)
                .map(|_| (rng.unit() as f32 - 0.5) * 0.1)
                .collect();
            let delta = Delta {
                source: source.clone(),
                table: a.table.clone(),
                seq: produced,
                created_ms: common::now_ms(),
                dim: a.dim,
                keys,
                values,
                tombstones: Vec::new(),
            };
            let bytes = delta.encode();
            producer
                .send_result(FutureRecord::to(&topic).key(&a.table).payload(&bytes))
                .map_err(|(e, _)| anyhow::anyhow!("queueing delta {produced} to {topic}: {e}"))?;
        }
        tokio::time::sleep(Duration::from_millis(a.scrape_ms)).await;
        done = applied(&common::get_text(&client, &a.metrics).await?) - applied0;
        reads += 1;
        drained += u64::from(produced.saturating_sub(done) * 10 < a.max_lag);
    }
    let last = common::get_text(&client, &a.metrics).await?;
    let secs = started.elapsed().as_secs_f64();
    let (n, bad) = (applied(&last) - applied0, rejected(&last) - rejected0);
    let _ = producer.flush(Duration::from_secs(10));
    // a replica that rarely runs out of deltas to apply sets the pace itself
    let drained_pct = 100.0 * drained as f64 / reads.max(1) as f64;
    let pace = if drained_pct < 10.0 {
        "the replica"
    } else {
        "the producer and broker (the replica ran out of deltas)"
    };
    println!(
        "deltas: {n} applied in {secs:.1} s: {:.0} deltas/s, {:.0} rows/s ({} rows of dim {} per delta); {produced} produced, {bad} rejected; under {} unapplied at {drained_pct:.0}% of {reads} reads: paced by {pace}",
        n as f64 / secs,
        (n * a.rows_per_delta as u64) as f64 / secs,
        a.rows_per_delta,
        a.dim,
        a.max_lag / 10
    );
    Ok(())
}
