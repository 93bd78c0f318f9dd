//! The Kafka delta topic as a sink: each delta to `<prefix><model>` with the table name as
//! key, through [`KafkaDeltaProducer`] (acks=all, idempotent).
//!
//! One task sends the batches in order: all deltas of a batch are queued at once, and the next
//! batch is queued only when the broker acknowledged every delta of this one, so each table's
//! sequence numbers reach the topic in order. A delta whose delivery failed for good is sent
//! again (same bytes, same sequence number; a replica drops a duplicate) with backoff until
//! the broker takes it; later batches wait in memory meanwhile. Each acknowledged batch
//! records the offsets after it, per partition, for snapshot manifests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::kafka::KafkaDeltaProducer;
use super::{Batch, Sink, SinkStatus};
use crate::config::PublishKafkaConfig;
use crate::error::Result;
use crate::metrics::LearnMetrics;

/// Acknowledged batches whose positions are remembered.
const HISTORY: usize = 4096;

#[derive(Default)]
struct State {
    sent: u64,
    acked: u64,
    queued: usize,
    positions: BTreeMap<i32, i64>,
    history: VecDeque<(u64, BTreeMap<i32, i64>)>,
}

struct Shared {
    state: Mutex<State>,
    acked: Condvar,
}

/// Deltas to a Kafka topic.
pub struct TopicSink {
    topic: String,
    tx: tokio::sync::mpsc::UnboundedSender<Batch>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicSink {
    /// A producer to `<topic_prefix><model>` on `runtime`.
    pub fn start(
        cfg: &PublishKafkaConfig,
        model: &str,
        metrics: Arc<LearnMetrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<TopicSink> {
        let topic = format!("{}{}", cfg.topic_prefix, model);
        let producer = {
            let _guard = runtime.enter();
            KafkaDeltaProducer::new(&cfg.brokers, &cfg.properties)?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            acked: Condvar::new(),
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = runtime.spawn(deliver(
            producer,
            topic.clone(),
            rx,
            shared.clone(),
            metrics,
        ));
        Ok(TopicSink {
            topic,
            tx,
            shared,
            task,
        })
    }
}

impl Drop for TopicSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn deliver(
    producer: KafkaDeltaProducer,
    topic: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Batch>,
    shared: Arc<Shared>,
    metrics: Arc<LearnMetrics>,
) {
    while let Some(batch) = rx.recv().await {
        let mut todo: Vec<(String, Bytes)> = batch
            .deltas
            .iter()
            .map(|d| (d.table.clone(), Bytes::from(d.encode())))
            .collect();
        let mut backoff = Duration::from_millis(100);
        let mut written = Vec::new();
        while !todo.is_empty() {
            let started = Instant::now();
            let mut futures = Vec::with_capacity(todo.len());
            for (table, bytes) in &todo {
                futures.push(producer.send(&topic, table, bytes));
            }
            let mut failed = Vec::new();
            for ((table, bytes), f) in todo.drain(..).zip(futures) {
                let result = match f {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(d) => {
                        metrics
                            .publish_latency
                            .observe(started.elapsed().as_secs_f64());
                        metrics.deltas_delivered.inc();
                        written.push(d);
                    }
                    Err(e) => {
                        metrics.sink_failures.inc();
                        tracing::warn!(%topic, table, error = %e, retry_in_ms = backoff.as_millis() as u64, "delta not delivered");
                        failed.push((table, bytes));
                    }
                }
            }
            if !failed.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            todo = failed;
        }
        let mut s = shared.state.lock();
        for d in written {
            let next = s.positions.entry(d.partition).or_insert(0);
            *next = (*next).max(d.offset + 1);
        }
        s.acked = batch.number;
        s.queued = s.queued.saturating_sub(batch.deltas.len());
        let positions = s.positions.clone();
        s.history.push_back((batch.number, positions));
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        shared.acked.notify_all();
    }
}

impl Sink for TopicSink {
    fn name(&self) -> String {
        self.topic.clone()
    }

    fn send(&mut self, batch: Batch) -> Result<()> {
        {
            let mut s = self.shared.state.lock();
            s.sent = batch.number;
            s.queued += batch.deltas.len();
        }
        self.tx
            .send(batch)
            .map_err(|_| crate::error::Error::Publish {
                sink: self.topic.clone(),
                reason: "the delivery task has stopped".into(),
            })
    }

    fn status(&self) -> SinkStatus {
        let s = self.shared.state.lock();
        SinkStatus {
            acked: s.acked,
            queued: s.queued,
        }
    }

    fn positions_after(&self, batch: u64) -> Option<BTreeMap<i32, i64>> {
        let s = self.shared.state.lock();
        if s.acked < batch {
            return None;
        }
        s.history
            .iter()
            .rev()
            .find(|(b, _)| *b <= batch)
            .map(|(_, p)| p.clone())
    }

    fn flush(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock();
        while s.acked < s.sent {
            if self.shared.acked.wait_until(&mut s, deadline).timed_out() {
                return s.acked >= s.sent;
            }
        }
        true
    }
}
