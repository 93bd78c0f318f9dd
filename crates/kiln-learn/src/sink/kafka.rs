//! The Kafka delta producer: encoded kiln-embed deltas to the model's delta topic
//! (`<prefix><model>`, key = table name), with `acks=all` and the idempotent producer, so that a
//! retried send is written once and in order. Each send reports the (partition, offset) the
//! broker wrote the message at, from which the learner writes the offsets of its snapshot
//! manifests (the next offset to read is the last delivered one plus one).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::error::{Error, Result};

/// Settings the producer always has (a `props` entry given to [`KafkaDeltaProducer::new`]
/// replaces one of these).
const DEFAULTS: &[(&str, &str)] = &[
    // every in-sync replica has the message before it counts as delivered
    ("acks", "all"),
    // retries neither duplicate nor reorder messages
    ("enable.idempotence", "true"),
    // a delta waits at most this long for the next publish's batch
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
];

/// Where a message was written: partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivered {
    /// The partition.
    pub partition: i32,
    /// The message's offset in the partition.
    pub offset: i64,
}

/// A producer of encoded deltas to Kafka topics.
pub struct KafkaDeltaProducer {
    producer: FutureProducer,
    brokers: String,
}

impl std::fmt::Debug for KafkaDeltaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeltaProducer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaDeltaProducer {
    /// A producer for `brokers` (`host:port[,host:port...]`) with `acks=all`, idempotence,
    /// `linger.ms=5` and lz4 compression, then `props` (rdkafka settings, which win).
    pub fn new(brokers: &str, props: &BTreeMap<String, String>) -> Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (k, v) in DEFAULTS {
            config.set(*k, *v);
        }
        for (k, v) in props {
            config.set(k, v);
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| Error::Kafka(format!("producer for {brokers}: {e}")))?;
        Ok(KafkaDeltaProducer {
            producer,
            brokers: brokers.to_string(),
        })
    }

    /// Queues `value` for `topic` with key `key` and returns at once; the future resolves when
    /// the broker acknowledged the message (with where it was written) or delivery failed
    /// for good (after the producer's own retries, `message.timeout.ms`). Messages queued one
    /// after the other to the same partition are written in that order. An error here means
    /// the message was not queued (the local queue is full, or the producer is broken).
    /// The future needs no particular runtime.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
    ) -> Result<impl Future<Output = Result<Delivered>> + Send + 'static> {
        let record = FutureRecord::to(topic).key(key).payload(value);
        let future = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| Error::Kafka(format!("queue a message for {topic}: {e}")))?;
        let topic = topic.to_string();
        Ok(async move {
            match future.await {
                Ok(Ok(d)) => Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => Err(Error::Kafka(format!("deliver to {topic}: {e}"))),
                Err(_) => Err(Error::Kafka(format!(
                    "deliver to {topic}: the producer was dropped first"
                ))),
            }
        })
    }

    /// Waits up to `timeout` until every queued message is delivered or failed (each send's
    /// future is then ready).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| Error::Kafka(format!("flush to {}: {e}", self.brokers)))
    }

    /// Messages queued and not yet delivered or failed.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// The brokers it was made for.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}
