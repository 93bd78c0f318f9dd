//! `stream`: impressions at a fixed rate (uniform users and items from fixed pools, one to three
//! genres, the current hour) and a click on a fraction of them a fixed delay later, until
//! `--seconds` pass or SIGTERM / SIGINT.

use crate::common::{self, Rng, GENRES};
use clap::Args;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Flags of `stream`.
#[derive(Args)]
pub struct StreamArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// The impressions topic.
    #[arg(long, default_value = "impressions")]
    impressions_topic: String,
    /// The actions topic.
    #[arg(long, default_value = "actions")]
    actions_topic: String,
    /// Impressions per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Fraction of impressions clicked.
    #[arg(long, default_value_t = 0.1)]
    click_prob: f64,
    /// Delay from an impression to its click, ms.
    #[arg(long, default_value_t = 200)]
    click_delay_ms: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Distinct items.
    #[arg(long, default_value_t = 2_000)]
    items: u64,
    /// Stop after this many seconds (0: at SIGTERM / SIGINT only).
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
}

/// How often the producer catches up with the schedule.
const TICK: Duration = Duration::from_millis(10);

/// Runs the stream and prints `stream: ...` when it ends.
pub async fn run(a: StreamArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rate > 0.0, "--rate must be positive");
    let producer = common::producer(&a.brokers, 5)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut rng = Rng::new(u64::from(std::process::id()) << 32 | common::now_ms() & 0xffff_ffff);
    let run = format!("s{}", std::process::id());
    let started = Instant::now();
    let end = (a.seconds > 0.0).then(|| started + Duration::from_secs_f64(a.seconds));
    let mut clicks: VecDeque<(Instant, String)> = VecDeque::new();
    let (mut impressions, mut clicked, mut dropped) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let now = Instant::now();
        if end.is_some_and(|e| now >= e) {
            break;
        }
        let due = (now.duration_since(started).as_secs_f64() * a.rate) as u64;
        let ts = common::now_ms();
        while impressions < due {
            let id = format!("{run}-{impressions}");
            let genres: Vec<&str> = (0..=rng.below(3))
                .map(|_| GENRES[rng.below(GENRES.len() as u64) as usize])
                .collect();
            let user = format!("u{}", rng.below(a.users));
            let item = format!("i{}", rng.below(a.items));
            let body = common::impression(&id, ts, &user, &item, &genres, common::hour_now());
            dropped += u64::from(!send(&producer, &a.impressions_topic, &id, &body));
            if rng.unit() < a.click_prob {
                clicks.push_back((now + Duration::from_millis(a.click_delay_ms), id));
            }
            impressions += 1;
        }
        while clicks.front().is_some_and(|(at, _)| *at <= now) {
            let (_, id) = clicks.pop_front().expect("front checked");
            let body = common::click(&id, common::now_ms());
            dropped += u64::from(!send(&producer, &a.actions_topic, &id, &body));
            clicked += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = producer.flush(Duration::from_secs(10));
    println!(
        "stream: {impressions} impressions, {clicked} clicks in {secs:.1} s ({:.0} impressions/s), {dropped} not queued",
        impressions as f64 / secs
    );
    Ok(())
}

/// Queues one message without waiting for its delivery; false when the local queue refused it.
fn send(p: &FutureProducer, topic: &str, key: &str, body: &str) -> bool {
    p.send_result(FutureRecord::to(topic).key(key).payload(body))
        .is_ok()
}
