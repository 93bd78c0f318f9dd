//! The learner loop's view of its event source: batches of raw events, each with the
//! partition it came from and its position there, and commits of resume positions.
//!
//! Positions: a Kafka event's offset in its `topic/partition`; a JSONL event's line number in
//! its file (`jsonl/<index>`). After a restart the JSONL files are read again from their first
//! line and the loop skips what the checkpoint says was consumed (stdin cannot be read again:
//! the events of a stdin run that were not learned before a crash are lost).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::source::Position;

/// One event as read.
#[derive(Clone, Debug)]
pub struct RawEvent {
    /// `<stream>/<partition>`: `topic/partition`, or `jsonl/<file index>`.
    pub partition: String,
    /// Where it was read.
    pub position: Position,
    /// One JSON event.
    pub bytes: Vec<u8>,
}

impl RawEvent {
    /// The offset in its partition.
    pub fn pos(&self) -> u64 {
        self.position.offset.max(0) as u64
    }
}

/// A source of raw events.
pub trait Feed: Send {
    /// Up to `max` events, waiting up to `wait` for the first; `None` once the source has
    /// ended (files read to their end without `follow`).
    fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<RawEvent>>>;

    /// Makes `resume` (per partition, the position reading restarts from) durable in the
    /// source, when it keeps positions (a Kafka consumer group); called after a checkpoint.
    fn commit(&mut self, resume: &BTreeMap<String, u64>) -> Result<()>;

    /// Events not yet read, per partition, when the source knows.
    fn lag(&mut self) -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    /// Stops reading (leaves a consumer group), waiting at most `timeout`.
    fn close(self: Box<Self>, timeout: Duration) {
        let _ = timeout;
    }
}

/// The Kafka consumer group as a feed (`topic/partition`, offsets as positions).
#[cfg(feature = "kafka")]
pub struct KafkaFeed {
    source: Option<crate::source::kafka::KafkaSource>,
    runtime: tokio::runtime::Handle,
    /// The impressions and the actions topic: streams 0 and 1.
    topics: [String; 2],
}

#[cfg(feature = "kafka")]
impl KafkaFeed {
    /// Joins the group of `cfg`; `runtime` runs the consumer.
    pub fn open(
        cfg: &crate::config::KafkaSourceConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<KafkaFeed> {
        let source = {
            let _guard = runtime.enter();
            crate::source::kafka::KafkaSource::new(cfg)?
        };
        Ok(KafkaFeed {
            source: Some(source),
            runtime,
            topics: [cfg.impressions_topic.clone(), cfg.actions_topic.clone()],
        })
    }
}

#[cfg(feature = "kafka")]
impl Feed for KafkaFeed {
    fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<RawEvent>>> {
        let Some(source) = self.source.as_mut() else {
            return Ok(None);
        };
        let events = self.runtime.block_on(source.next_batch(max, wait))?;
        let topics = &self.topics;
        Ok(Some(
            events
                .into_iter()
                .map(|e| RawEvent {
                    partition: format!("{}/{}", e.position.topic, e.position.partition),
                    position: Position {
                        stream: u16::from(e.position.topic != topics[0]),
                        partition: e.position.partition,
                        offset: e.position.offset,
                    },
                    bytes: e.payload,
                })
                .collect(),
        ))
    }

    fn commit(&mut self, resume: &BTreeMap<String, u64>) -> Result<()> {
        let Some(source) = self.source.as_ref() else {
            return Ok(());
        };
        let positions: Vec<_> = resume
            .iter()
            .filter(|(_, &r)| r > 0)
            .filter_map(|(p, &r)| {
                let (topic, part) = p.rsplit_once('/')?;
                Some(crate::source::kafka::KafkaPosition {
                    topic: topic.to_string(),
                    partition: part.parse().ok()?,
                    // the source commits "read up to and including": the next to read is `r`
                    offset: r as i64 - 1,
                })
            })
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        source.commit(&positions)
    }

    fn lag(&mut self) -> BTreeMap<String, i64> {
        let Some(source) = self.source.as_ref() else {
            return BTreeMap::new();
        };
        source
            .lag()
            .into_iter()
            .map(|((t, p), lag)| (format!("{t}/{p}"), lag))
            .collect()
    }

    fn close(mut self: Box<Self>, timeout: Duration) {
        if let Some(s) = self.source.take() {
            if !s.close(timeout) {
                tracing::warn!("the Kafka consumer did not leave its group in time");
            }
        }
    }
}

/// Any [`crate::source::Source`] as a feed: partition `<stream>/<partition>`, the offset as
/// the position.
pub struct SourceFeed<S: crate::source::Source> {
    source: S,
    runtime: tokio::runtime::Handle,
    keys: BTreeMap<String, (u16, i32)>,
}

impl<S: crate::source::Source> SourceFeed<S> {
    /// Wraps `source`, whose futures run on `runtime`.
    pub fn new(source: S, runtime: tokio::runtime::Handle) -> Self {
        SourceFeed {
            source,
            runtime,
            keys: BTreeMap::new(),
        }
    }
}

impl<S: crate::source::Source> Feed for SourceFeed<S> {
    fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Option<Vec<RawEvent>>> {
        let Some(batch) = self.runtime.block_on(self.source.next_batch(max, wait))? else {
            return Ok(None);
        };
        let streams = self.source.streams();
        let mut out = Vec::with_capacity(batch.len());
        for (p, bytes) in batch.iter() {
            let stream = streams.get(p.stream as usize).map_or("?", String::as_str);
            let key = format!("{stream}/{}", p.partition);
            self.keys
                .entry(key.clone())
                .or_insert((p.stream, p.partition));
            out.push(RawEvent {
                partition: key,
                position: p,
                bytes: bytes.to_vec(),
            });
        }
        Ok(Some(out))
    }

    fn commit(&mut self, resume: &BTreeMap<String, u64>) -> Result<()> {
        let positions: Vec<crate::source::Position> = resume
            .iter()
            .filter(|(_, &r)| r > 0)
            .filter_map(|(k, &r)| {
                let &(stream, partition) = self.keys.get(k)?;
                Some(crate::source::Position {
                    stream,
                    partition,
                    // the source commits "up to and including": the next to read is `r`
                    offset: r as i64 - 1,
                })
            })
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        self.source.commit(&positions)
    }
}
