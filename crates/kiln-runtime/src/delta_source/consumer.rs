//! One model's delta topic: an rdkafka consumer with every partition assigned explicitly (no
//! consumer group, no commits: every replica reads every delta), each message applied through
//! [`ModelRepository::apply_delta`] off the async runtime's threads.

use super::{DeltaSourceConfig, DeltaSourceMetrics, Reject};
use crate::repository::ModelRepository;
use kiln_core::ErrorCode;
use kiln_embed::Delta;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a metadata or watermark request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// What one message did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Applied to every serving version (`gap`: it skipped sequence numbers).
    Applied { gap: bool },
    /// Its sequence number was applied already.
    Duplicate,
    /// Skipped, with the reason and the message to log.
    Rejected(Reject, String),
    /// The model is gone or not ready: the message was not applied.
    NotServed(String),
}

/// Checks and applies one message of `model`'s topic. Blocking.
pub(crate) fn apply_message(
    repo: &ModelRepository,
    model: &str,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Outcome {
    let Some(table) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        return Outcome::Rejected(
            Reject::NoKey,
            "the message key (table name) is missing or not utf-8".into(),
        );
    };
    let delta = match Delta::decode(payload) {
        Ok(d) => d,
        Err(e) => return Outcome::Rejected(Reject::Garbage, format!("table '{table}': {e}")),
    };
    if !delta.table.is_empty() && delta.table != table {
        return Outcome::Rejected(
            Reject::WrongTable,
            format!(
                "the delta is for table '{}', its key names table '{table}'",
                delta.table
            ),
        );
    }
    let tables = match repo.tables(model, None) {
        Ok(t) => t,
        Err(e) => return Outcome::NotServed(e.message),
    };
    let Some(info) = tables.iter().find(|t| t.table.name == table) else {
        return Outcome::Rejected(
            Reject::UnknownTable,
            format!("the model has no table '{table}'"),
        );
    };
    if delta.dim != info.table.dim {
        return Outcome::Rejected(
            Reject::WrongDim,
            format!(
                "table '{table}': the delta's dim is {}, the table's is {}",
                delta.dim, info.table.dim
            ),
        );
    }
    match repo.apply_delta(model, None, table, payload) {
        Ok(acks) if acks.iter().any(|a| a.ack.applied) => Outcome::Applied {
            gap: acks.iter().any(|a| a.ack.gap.is_some()),
        },
        Ok(_) => Outcome::Duplicate,
        Err(e)
            if matches!(e.code, ErrorCode::NotFound | ErrorCode::Unavailable)
                && !e.message.contains(table) =>
        {
            Outcome::NotServed(e.message)
        }
        Err(e) if e.message.contains("sequence gap") => Outcome::Rejected(Reject::Gap, e.message),
        Err(e) => Outcome::Rejected(Reject::Refused, e.message),
    }
}

enum Event {
    Stop,
    Tick,
    Message(Result<rdkafka::message::OwnedMessage, rdkafka::error::KafkaError>),
}

/// Where a partition starts: the snapshot's offset, else the beginning.
pub(crate) fn start_offset(offsets: &BTreeMap<i32, i64>, partition: i32) -> Offset {
    offsets
        .get(&partition)
        .map_or(Offset::Beginning, |o| Offset::Offset(*o))
}

/// Consumes `topic` into `model` from `offsets` (partitions absent there: from the beginning)
/// until `stop` turns true or the model stops being served. Errors are logged; the consumer
/// is dropped on a thread of its own, waited for at most `config.drop_timeout`.
pub(crate) async fn run(
    repo: Arc<ModelRepository>,
    config: Arc<DeltaSourceConfig>,
    metrics: Arc<DeltaSourceMetrics>,
    model: String,
    offsets: BTreeMap<i32, i64>,
    mut stop: watch::Receiver<bool>,
) {
    let topic = format!("{}{model}", config.topic_prefix);
    let consumer = match consumer(&config, &model) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(model, topic, error = %e, "cannot create the delta-topic consumer");
            return;
        }
    };
    let mut next: BTreeMap<i32, i64> = BTreeMap::new(); // next offset per assigned partition
    let mut tick = tokio::time::interval(config.lag_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut errors = 0u64;
    let mut waiting_logged = false;
    loop {
        // the branches only pick what happened: nothing borrowed lives across the awaits below
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => Event::Stop,
            _ = tick.tick() => Event::Tick,
            m = consumer.recv(), if !next.is_empty() => Event::Message(m.map(|m| m.detach())),
        };
        let m = match event {
            Event::Stop => break,
            Event::Tick => {
                if let Err(e) =
                    refresh(&consumer, &topic, &offsets, &mut next, &metrics, &model).await
                {
                    if !waiting_logged {
                        tracing::warn!(model, topic, error = %e, "delta topic not readable yet; retrying");
                        waiting_logged = true;
                    }
                }
                continue;
            }
            Event::Message(Ok(m)) => m,
            Event::Message(Err(e)) => {
                errors += 1;
                if errors <= 10 || errors.is_power_of_two() {
                    tracing::warn!(model, topic, error = %e, errors, "delta-topic consumer error");
                }
                continue;
            }
        };
        next.insert(m.partition(), m.offset() + 1);
        let (r, mo) = (repo.clone(), model.clone());
        let key = m.key().map(<[u8]>::to_vec);
        let payload = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let outcome =
            tokio::task::spawn_blocking(move || apply_message(&r, &mo, key.as_deref(), &payload))
                .await
                .unwrap_or_else(|e| {
                    Outcome::Rejected(Reject::Refused, format!("applying panicked: {e}"))
                });
        match outcome {
            Outcome::Applied { gap } => {
                metrics.applied(&model);
                repo.metrics().record_delta_applied(&model);
                if gap {
                    metrics.gap(&model);
                }
            }
            Outcome::Duplicate => metrics.duplicate(&model),
            Outcome::Rejected(reason, why) => {
                let before = metrics.rejected(&model, reason.as_str());
                if before < 10 || (before + 1).is_power_of_two() {
                    tracing::warn!(
                        model,
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        reason = reason.as_str(),
                        count = before + 1,
                        "skipped a delta-topic message: {why}"
                    );
                }
            }
            Outcome::NotServed(why) => {
                // the subscriber starts this model's consumer again once it serves
                tracing::info!(model, topic, "stopping the delta-topic consumer: {why}");
                break;
            }
        }
    }
    let _ = consumer.unassign();
    close(consumer, config.drop_timeout, &model).await;
}

fn consumer(
    config: &DeltaSourceConfig,
    model: &str,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        // never joined: partitions are assigned explicitly, and nothing is committed
        .set("group.id", format!("kiln-serve-{model}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // a fetch waits at most this long for new deltas: a broker that does not answer a
        // waiting fetch when data arrives (tansu) would otherwise hold each delta for up to
        // librdkafka's default 500 ms; the cost is one idle fetch per 50 ms per model
        .set("fetch.wait.max.ms", "50")
        .set("client.id", "kiln-serve-delta-source");
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c.create()
}

/// Assigns partitions not assigned yet (the topic may appear or grow later) and sets the lag
/// gauges. Blocking broker calls run off the async runtime's threads.
async fn refresh(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    next: &mut BTreeMap<i32, i64>,
    metrics: &DeltaSourceMetrics,
    model: &str,
) -> Result<(), String> {
    let (c, t) = (consumer.clone(), topic.to_string());
    let known: Vec<i32> = next.keys().copied().collect();
    let (parts, marks) = tokio::task::spawn_blocking(move || {
        let md = c
            .fetch_metadata(Some(&t), BROKER_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let tm = md
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .ok_or("the topic is not in the metadata")?;
        if let Some(e) = tm.error() {
            return Err(format!("{e:?}"));
        }
        let parts: Vec<i32> = tm.partitions().iter().map(|p| p.id()).collect();
        if parts.is_empty() {
            return Err("the topic has no partitions".to_string());
        }
        let marks: Vec<(i32, Option<(i64, i64)>)> = parts
            .iter()
            .filter(|p| known.contains(p))
            .map(|&p| (p, c.fetch_watermarks(&t, p, BROKER_TIMEOUT).ok()))
            .collect();
        Ok((parts, marks))
    })
    .await
    .map_err(|e| e.to_string())??;
    for (p, m) in marks {
        if let (Some((_, high)), Some(pos)) = (m, next.get(&p)) {
            metrics.lag(model, p, (high - pos).max(0));
        }
    }
    let new: Vec<i32> = parts
        .into_iter()
        .filter(|p| !next.contains_key(p))
        .collect();
    if !new.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for &p in &new {
            tpl.add_partition_offset(topic, p, start_offset(offsets, p))
                .map_err(|e| e.to_string())?;
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| e.to_string())?;
        for p in new {
            let from = offsets.get(&p).copied().unwrap_or(0);
            tracing::info!(
                model,
                topic,
                partition = p,
                from,
                "consuming the delta topic"
            );
            next.insert(p, from);
        }
    }
    Ok(())
}

/// Drops the consumer on a thread of its own and waits for at most `timeout`: dropping an
/// rdkafka consumer with a prefetched backlog has been seen to hang.
pub(crate) async fn close(consumer: Arc<StreamConsumer>, timeout: Duration, model: &str) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kiln-delta-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = tx.send(());
        });
    if spawned.is_err() {
        tracing::warn!(
            model,
            "cannot start a thread to close the delta-topic consumer"
        );
        return;
    }
    if tokio::time::timeout(timeout, rx).await.is_err() {
        tracing::warn!(
            model,
            timeout_s = timeout.as_secs_f64(),
            "the delta-topic consumer did not close in time; left behind"
        );
    }
}
