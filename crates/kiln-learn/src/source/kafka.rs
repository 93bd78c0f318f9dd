//! The Kafka source: a consumer group over the impressions and the actions topics
//! (`[sources.kafka]`), handing out raw event bytes with their positions (stream 0 is the
//! impressions topic, stream 1 the actions topic).
//!
//! Offsets are never committed automatically (`enable.auto.commit=false`): the learner commits
//! a position only once the samples it produced are checkpointed ([`KafkaSource::commit`]), so
//! a crash or a rebalance replays events and never skips one. A group without a committed
//! offset starts at the beginning of the topics (`auto.offset.reset=earliest`).
//!
//! Consumer lag comes from librdkafka's statistics (`statistics.interval.ms`, 5 s unless the
//! properties set it): the end offsets it learns from every fetch response, against the next
//! offset handed to the learner. Reading it never asks the broker, so the learner loop never
//! waits on it.
//!
//! Dropping an rdkafka consumer that holds a prefetched backlog has been seen to hang (leaving
//! the group waits on the broker); [`KafkaSource::close`] and the drop therefore run it on a
//! thread of their own and wait for it a bounded time.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{EventBatch, Position, Source};
use crate::config::KafkaSourceConfig;
use crate::error::{Error, Result};

/// How long the drop of a [`KafkaSource`] waits for the consumer to leave its group.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings the consumer always has; `[sources.kafka] properties` may replace any of them
/// except `enable.auto.commit`.
const DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    // the learner commits after checkpoints, and only then
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    // how often the consumer lag is refreshed (see [`KafkaSource::lag`])
    ("statistics.interval.ms", "5000"),
];

/// Lag per (topic, partition), as of the client's last statistics.
type LagMap = BTreeMap<(String, i32), i64>;

/// The consumer's context: keeps the lag of each partition this member holds from the
/// statistics librdkafka emits while the consumer is polled.
#[derive(Clone, Default)]
struct LagContext {
    lag: Arc<parking_lot::Mutex<LagMap>>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        *self.lag.lock() = lag_of(&stats);
    }
}

impl ConsumerContext for LagContext {}

/// The lag of every partition the application holds in `stats`: the end offset (high
/// watermark) minus the next offset to be handed to the application, or, before anything
/// was handed out, the group's committed offset, else the partition's first offset.
/// Partitions whose end offset is not known yet are left out.
fn lag_of(stats: &Statistics) -> LagMap {
    let mut out = LagMap::new();
    for (topic, t) in &stats.topics {
        for p in t.partitions.values() {
            if p.partition < 0 || !p.desired || p.unknown || p.hi_offset < 0 {
                continue;
            }
            let next = [p.app_offset, p.committed_offset, p.lo_offset]
                .into_iter()
                .find(|&o| o >= 0);
            if let Some(next) = next {
                out.insert((topic.clone(), p.partition), (p.hi_offset - next).max(0));
            }
        }
    }
    out
}

/// Where an event was read: topic, partition and offset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KafkaPosition {
    /// The topic (the impressions or the actions topic).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The event's offset.
    pub offset: i64,
}

/// One event as read: its bytes (one JSON event; empty for a message without payload) and
/// where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaEvent {
    /// The message payload.
    pub payload: Vec<u8>,
    /// Its position.
    pub position: KafkaPosition,
    /// The message timestamp (ms since epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// A consumer-group member over the impressions and actions topics.
pub struct KafkaSource {
    consumer: Option<StreamConsumer<LagContext>>,
    lag: Arc<parking_lot::Mutex<LagMap>>,
    /// The impressions topic, then the actions topic ([`Position::stream`] indexes them).
    streams: Vec<String>,
    brokers: String,
    group: String,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins group `group_id` on `brokers` and subscribes to both topics. Must be called inside
    /// a tokio runtime (the consumer keeps a task there). The group join itself happens while
    /// [`KafkaSource::next_batch`] runs.
    pub fn new(cfg: &KafkaSourceConfig) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id);
        for (k, v) in DEFAULTS {
            config.set(*k, *v);
        }
        for (k, v) in &cfg.properties {
            config.set(k, v);
        }
        if config.get("enable.auto.commit") != Some("false") {
            return Err(Error::config(
                "learn.toml",
                "sources.kafka.properties.enable.auto.commit",
                "must stay false: offsets are committed after checkpoints",
            ));
        }
        let context = LagContext::default();
        let lag = context.lag.clone();
        let consumer: StreamConsumer<LagContext> = config
            .create_with_context(context)
            .map_err(|e| Error::Kafka(format!("consumer for {}: {e}", cfg.brokers)))?;
        let topics = [cfg.impressions_topic.as_str(), cfg.actions_topic.as_str()];
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::Kafka(format!("subscribe to {}: {e}", topics.join(", "))))?;
        Ok(KafkaSource {
            consumer: Some(consumer),
            lag,
            streams: topics.iter().map(|t| t.to_string()).collect(),
            brokers: cfg.brokers.clone(),
            group: cfg.group_id.clone(),
        })
    }

    fn consumer(&self) -> &StreamConsumer<LagContext> {
        self.consumer
            .as_ref()
            .expect("the consumer lives until drop")
    }

    /// Reads up to `max` messages (at least one), handing each to `push` with its stream
    /// index: waits up to `wait` for the first, then takes those already fetched without
    /// waiting. Errors the client reports while reading (a broker gone for a while) are logged
    /// and reading goes on: the client reconnects by itself.
    async fn fill(
        &self,
        max: usize,
        wait: Duration,
        mut push: impl FnMut(u16, &BorrowedMessage<'_>) + Send,
    ) -> Result<()> {
        let consumer = self.consumer();
        let deadline = tokio::time::Instant::now() + wait;
        let mut n = 0;
        while n < max.max(1) {
            let msg = if n == 0 {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                match consumer.recv().now_or_never() {
                    Some(m) => m,
                    None => break,
                }
            };
            match msg {
                Ok(m) => match self.streams.iter().position(|t| t == m.topic()) {
                    Some(stream) => {
                        push(stream as u16, &m);
                        n += 1;
                    }
                    None => tracing::warn!(
                        topic = m.topic(),
                        "kafka source: a message of a topic not subscribed to"
                    ),
                },
                Err(e) if is_fatal(&e) => {
                    return Err(Error::Kafka(format!("consume from {}: {e}", self.brokers)));
                }
                Err(e) => {
                    tracing::warn!(brokers = %self.brokers, group = %self.group, "kafka source: {e}");
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Up to `max` events: waits up to `wait` for the first one, then takes those already
    /// fetched without waiting. Empty when nothing arrived in `wait`. A message without
    /// payload is an empty event (the parser counts it as malformed). [`Source::next_batch`]
    /// is the same read into an [`EventBatch`].
    pub async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<KafkaEvent>> {
        let mut out = Vec::new();
        self.fill(max, wait, |_, m| {
            out.push(KafkaEvent {
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                position: KafkaPosition {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                },
                timestamp_ms: m.timestamp().to_millis(),
            })
        })
        .await?;
        Ok(out)
    }

    /// Commits, for the group, every partition in `positions` as read up to and including
    /// its position there (the committed offset is the highest given offset + 1: the next to
    /// read). Call it only once the samples of those events are checkpointed. Blocks until
    /// the broker acknowledged the commit. [`Source::commit`] does the same with
    /// [`Position`]s.
    pub fn commit(&self, positions: &[KafkaPosition]) -> Result<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for p in positions {
            let e = next.entry((p.topic.as_str(), p.partition)).or_insert(0);
            *e = (*e).max(p.offset + 1);
        }
        self.commit_next(&next)
    }

    /// [`KafkaSource::commit`] with [`Position`]s (stream 0: impressions, 1: actions).
    pub fn commit_positions(&self, positions: &[Position]) -> Result<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for p in positions {
            let topic = self.streams.get(usize::from(p.stream)).ok_or_else(|| {
                Error::Kafka(format!(
                    "commit: no stream {} (streams: {:?})",
                    p.stream, self.streams
                ))
            })?;
            let e = next.entry((topic.as_str(), p.partition)).or_insert(0);
            *e = (*e).max(p.offset + 1);
        }
        self.commit_next(&next)
    }

    /// Commits `next` (the next offset to read, per topic and partition) synchronously.
    fn commit_next(&self, next: &BTreeMap<(&str, i32), i64>) -> Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| Error::Kafka(format!("commit {topic}/{partition}: {e}")))?;
        }
        self.consumer()
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| Error::Kafka(format!("commit for group {}: {e}", self.group)))
    }

    /// The group's committed offsets (the next offset to read) of the partitions this member
    /// holds now, asked of the broker with `timeout`.
    pub fn committed(&self, timeout: Duration) -> Result<BTreeMap<(String, i32), i64>> {
        let tpl = self
            .consumer()
            .committed(timeout)
            .map_err(|e| Error::Kafka(format!("committed offsets of group {}: {e}", self.group)))?;
        Ok(offsets(&tpl))
    }

    /// Consumer lag per (topic, partition) held now: the partition's end offset minus the
    /// next offset this member hands out, as of the client's last statistics (refreshed every
    /// `statistics.interval.ms` while the consumer is read). Never waits on the broker; empty
    /// until the first statistics arrive.
    pub fn lag(&self) -> LagMap {
        self.lag.lock().clone()
    }

    /// Leaves the group and closes the consumer, waiting at most `timeout`; false when that
    /// was not enough (the close goes on in the background).
    pub fn close(mut self, timeout: Duration) -> bool {
        self.close_within(timeout)
    }

    fn close_within(&mut self, timeout: Duration) -> bool {
        let Some(consumer) = self.consumer.take() else {
            return true;
        };
        let (done, closed) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-source-close".into())
            .spawn(move || {
                consumer.unsubscribe();
                drop(consumer);
                let _ = done.send(());
            });
        if spawned.is_err() {
            tracing::warn!(group = %self.group, "kafka source: no thread to close the consumer on");
            return false;
        }
        let ok = closed.recv_timeout(timeout).is_ok();
        if !ok {
            tracing::warn!(
                group = %self.group,
                "kafka source: the consumer did not close within {timeout:?}; left closing"
            );
        }
        ok
    }
}

impl Source for KafkaSource {
    fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Never `Ok(None)`: a topic does not end.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<EventBatch>> {
        let mut batch = EventBatch::new();
        self.fill(max, wait, |stream, m| {
            let position = Position {
                stream,
                partition: m.partition(),
                offset: m.offset(),
            };
            batch.push(position, m.payload().unwrap_or_default());
        })
        .await?;
        Ok(Some(batch))
    }

    fn commit(&mut self, positions: &[Position]) -> Result<()> {
        self.commit_positions(positions)
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.close_within(DROP_TIMEOUT);
    }
}

/// The offsets in `tpl` that are real offsets, by (topic, partition).
fn offsets(tpl: &TopicPartitionList) -> BTreeMap<(String, i32), i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Whether a client error ends the source (the client cannot recover from it by itself).
fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ClientCreation(_) | KafkaError::Subscription(_) | KafkaError::ClientConfig(..)
    )
}
