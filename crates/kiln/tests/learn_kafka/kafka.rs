//! The test's Kafka clients: a producer for events and bad deltas, and a reader of the whole
//! delta topic.

use std::time::{Duration, Instant};

use kiln_embed::Delta;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{DEADLINE, DELTAS};

/// A producer for the test's events and bad deltas.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces `payloads` to partition 0 of `topic` (all queued at once), keyed by `key`;
/// returns their offsets once every one is acknowledged.
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payloads: &[Vec<u8>],
) -> Vec<i64> {
    let mut pending = Vec::with_capacity(payloads.len());
    for v in payloads {
        let mut r = FutureRecord::<str, [u8]>::to(topic).payload(v).partition(0);
        if let Some(k) = key {
            r = r.key(k);
        }
        pending.push(p.send_result(r).map_err(|(e, _)| e).expect("queued"));
    }
    let mut offsets = Vec::with_capacity(pending.len());
    for f in pending {
        let d = f
            .await
            .expect("delivery reported")
            .map_err(|(e, _)| e)
            .expect("delivered");
        offsets.push(d.offset);
    }
    offsets
}

/// One message of the delta topic.
pub struct TopicDelta {
    pub offset: i64,
    /// Decoded, of a table of the model with its dim (1); None: a bad message.
    pub delta: Option<Delta>,
}

/// Every message of partition 0 of the delta topic, up to an end marker `p` produces now.
/// The broker's high watermark is not used: this tansu build has been seen to report 5 for a
/// partition holding offsets 0 to 7, written as two batches of four records (the last batch's
/// base offset plus one).
pub async fn read_deltas(p: &FutureProducer, bootstrap: &str) -> Vec<TopicDelta> {
    let end = produce(p, DELTAS, Some("end-of-test"), &[b"end".to_vec()]).await[0];
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "kiln-learn-e2e-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(DELTAS, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).expect("assign");
        let tables = ["user_id", "item_id", "genres", "hour"];
        let mut out = Vec::new();
        let start = Instant::now();
        let mut next = 0;
        while next < end {
            assert!(start.elapsed() < DEADLINE, "read {next} of {end} deltas");
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.expect("a message");
            next = m.offset() + 1;
            if m.offset() >= end {
                break;
            }
            let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
            if key == Some("end-of-test") {
                // the end marker of an earlier read: the test's own, not the learner's
                continue;
            }
            let delta = Delta::decode(m.payload().unwrap_or_default())
                .ok()
                .filter(|d| d.dim == 1 && tables.contains(&d.table.as_str()))
                .filter(|d| key == Some(d.table.as_str()));
            out.push(TopicDelta {
                offset: m.offset(),
                delta,
            });
        }
        // a consumer's close has been seen to hang: let it finish on its own
        std::thread::spawn(move || drop(c));
        out
    })
    .await
    .expect("reader")
}
