//! The Kafka source and the delta producer against a real Kafka-protocol broker (tansu, from
//! `kiln_testkit::kafka`; skipped with a message outside CI when it is missing).
//!
//! The resume test commits an offset inside a batch the broker stored as one record batch and
//! checks that the group resumes exactly there: tansu 0.6.0 has been seen to lose the records
//! after such an offset.
#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_embed::Delta;
use kiln_learn::config::KafkaSourceConfig;
use kiln_learn::sink::kafka::{Delivered, KafkaDeltaProducer};
use kiln_learn::source::kafka::KafkaSource;
use kiln_learn::source::{Position, Source};
use kiln_testkit::kafka::Broker;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const IMPRESSIONS: &str = "impressions";
const ACTIONS: &str = "actions";
/// Longest wait for events that were delivered to the broker (the first group join alone takes
/// session.timeout.ms / 2).
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// How long closing a consumer may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

fn source_config(broker: &Broker, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: broker.bootstrap(),
        impressions_topic: IMPRESSIONS.into(),
        actions_topic: ACTIONS.into(),
        group_id: group.into(),
        properties: BTreeMap::from([("session.timeout.ms".to_string(), "6000".to_string())]),
    }
}

/// A producer that waits 100 ms to fill a record batch, so that a burst of sends is one batch.
fn producer(broker: &Broker) -> KafkaDeltaProducer {
    let props = BTreeMap::from([("linger.ms".to_string(), "100".to_string())]);
    KafkaDeltaProducer::new(&broker.bootstrap(), &props).expect("producer")
}

/// Queues every `(topic, payload)` at once (so that the broker stores them as few record
/// batches) and waits for all deliveries.
async fn produce(p: &KafkaDeltaProducer, events: &[(&str, String)]) -> Vec<Delivered> {
    let futures: Vec<_> = events
        .iter()
        .map(|(topic, payload)| p.send(topic, "k", payload.as_bytes()).expect("queue"))
        .collect();
    let mut delivered = Vec::new();
    for f in futures {
        delivered.push(f.await.expect("delivered"));
    }
    delivered
}

/// Reads until `want` events arrived or [`READ_DEADLINE`] passed; returns `(topic, offset,
/// payload)` of each, sorted by topic then offset.
async fn read(source: &mut KafkaSource, want: usize) -> Vec<(String, i64, String)> {
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        let batch = Source::next_batch(source, want - got.len(), Duration::from_millis(500))
            .await
            .expect("next_batch")
            .expect("a topic does not end");
        for (p, bytes) in batch.iter() {
            assert_eq!(p.partition, 0);
            let topic = source.streams()[usize::from(p.stream)].clone();
            got.push((
                topic,
                p.offset,
                String::from_utf8(bytes.to_vec()).expect("utf-8"),
            ));
        }
    }
    got.sort();
    got
}

fn impression(i: usize) -> String {
    format!(r#"{{"type":"impression","id":"imp-{i}","ts_ms":{i}}}"#)
}

fn action(i: usize) -> String {
    format!(r#"{{"type":"action","id":"imp-{i}","ts_ms":{i},"action":"click"}}"#)
}

/// Closes `source` within [`CLOSE_TIMEOUT`] on a blocking thread (the close waits on the
/// broker), so that the runtime goes on.
async fn close(source: KafkaSource) {
    let closed = tokio::task::spawn_blocking(move || source.close(CLOSE_TIMEOUT))
        .await
        .expect("close task");
    if !closed {
        // the known hang of a consumer drop with a prefetched backlog: bounded, and the group
        // still moves on once the session times out
        eprintln!("the consumer did not close within {CLOSE_TIMEOUT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_exactly_after_an_offset_committed_inside_a_batch() {
    let Some(broker) =
        Broker::start("a_group_resumes_exactly_after_an_offset_committed_inside_a_batch")
    else {
        return;
    };
    broker.create_topic(IMPRESSIONS, 1);
    broker.create_topic(ACTIONS, 1);
    let p = producer(&broker);

    // n impressions and n actions, each queued at once: one or a few record batches per topic
    let n = 40;
    let k = 17;
    let mut events: Vec<(&str, String)> = (0..n).map(|i| (IMPRESSIONS, impression(i))).collect();
    events.extend((0..n).map(|i| (ACTIONS, action(i))));
    let delivered = produce(&p, &events).await;
    for (i, d) in delivered.iter().enumerate() {
        assert_eq!(
            (d.partition, d.offset),
            (0, (i % n) as i64),
            "delivery of event {i}"
        );
    }

    let mut first = KafkaSource::new(&source_config(&broker, "learner")).expect("source");
    let got = read(&mut first, 2 * n).await;
    let mut expected: Vec<_> = (0..n)
        .map(|i| (ACTIONS.to_string(), i as i64, action(i)))
        .chain((0..n).map(|i| (IMPRESSIONS.to_string(), i as i64, impression(i))))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "the first read");

    // checkpointed: the first k impressions and the first k actions (the k-th has offset k-1)
    assert_eq!(first.streams(), [IMPRESSIONS, ACTIONS]);
    let upto = |stream: u16| Position {
        stream,
        partition: 0,
        offset: (k - 1) as i64,
    };
    let earlier = Position {
        offset: 2,
        ..upto(0)
    };
    Source::commit(&mut first, &[upto(0), earlier, upto(1)]).expect("commit");
    let committed = first.committed(Duration::from_secs(10)).expect("committed");
    assert_eq!(
        committed,
        BTreeMap::from([
            ((ACTIONS.to_string(), 0), k as i64),
            ((IMPRESSIONS.to_string(), 0), k as i64),
        ])
    );
    close(first).await;

    // more events while no member is up; the restarted member reads from k on, and only once
    let more = 5;
    let later: Vec<(&str, String)> = (n..n + more)
        .map(|i| (IMPRESSIONS, impression(i)))
        .collect();
    produce(&p, &later).await;

    let mut second = KafkaSource::new(&source_config(&broker, "learner")).expect("source");
    let want = (n - k) + (n + more - k);
    let got = read(&mut second, want).await;
    let mut expected: Vec<_> = (k..n)
        .map(|i| (ACTIONS.to_string(), i as i64, action(i)))
        .chain((k..n + more).map(|i| (IMPRESSIONS.to_string(), i as i64, impression(i))))
        .collect();
    expected.sort();
    assert_eq!(
        got.len(),
        expected.len(),
        "the resumed member read {} of {} events (records lost after a commit inside a batch?): {got:?}",
        got.len(),
        expected.len()
    );
    assert_eq!(got, expected, "the resumed member's events");
    // nothing beyond them (the source's own read, which names topics)
    let extra = second
        .next_batch(10, Duration::from_millis(500))
        .await
        .expect("next_batch");
    assert!(extra.is_empty(), "read twice: {extra:?}");
    close(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_producer_delivers_and_reports_offsets() {
    let Some(broker) = Broker::start("the_delta_producer_delivers_and_reports_offsets") else {
        return;
    };
    let topic = "kiln.deltas.ctr";
    broker.create_topic(topic, 1);
    let p = producer(&broker);
    let deltas: Vec<Delta> = (1..=3u64)
        .map(|seq| Delta {
            source: "learner@1".into(),
            table: format!("emb.{}", seq % 2),
            seq,
            created_ms: 1,
            dim: 2,
            keys: vec![seq, seq + 10],
            values: vec![seq as f32, 0.5, -1.0, 2.0],
            tombstones: vec![99],
        })
        .collect();
    let futures: Vec<_> = deltas
        .iter()
        .map(|d| p.send(topic, &d.table, &d.encode()).expect("queue"))
        .collect();
    let mut delivered = Vec::new();
    for f in futures {
        delivered.push(f.await.expect("delivered"));
    }
    assert_eq!(
        delivered,
        (0..3)
            .map(|offset| Delivered {
                partition: 0,
                offset
            })
            .collect::<Vec<_>>()
    );
    p.flush(Duration::from_secs(10)).expect("flush");
    assert_eq!(p.in_flight(), 0);

    // what a serving replica reads: explicit assignment from the start, no group commits
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "replica")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    for (i, want) in deltas.iter().enumerate() {
        let m = tokio::time::timeout(READ_DEADLINE, consumer.recv())
            .await
            .expect("a delta within the deadline")
            .expect("message");
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(want.table.as_bytes()));
        let got = Delta::decode(m.payload().expect("payload")).expect("decode");
        assert_eq!(&got, want);
    }
    let stop = tokio::task::spawn_blocking(move || drop(consumer));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_refuses_auto_commit() {
    let mut cfg = KafkaSourceConfig {
        brokers: "127.0.0.1:1".into(),
        impressions_topic: IMPRESSIONS.into(),
        actions_topic: ACTIONS.into(),
        group_id: "g".into(),
        properties: BTreeMap::new(),
    };
    cfg.properties
        .insert("enable.auto.commit".into(), "true".into());
    let err = KafkaSource::new(&cfg).expect_err("auto commit refused");
    assert!(
        err.to_string()
            .contains("sources.kafka.properties.enable.auto.commit"),
        "{err}"
    );
}

/// The consumer lag comes from the client's statistics, without asking the broker: while a
/// member reads a backlog one event at a time, every reported total lies between what is left
/// now and the whole backlog, some report falls strictly between (the lag moves as events are
/// read), and once everything is read the lag of both partitions settles at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_follows_what_the_member_has_read() {
    let Some(broker) = Broker::start("consumer_lag_follows_what_the_member_has_read") else {
        return;
    };
    broker.create_topic(IMPRESSIONS, 1);
    broker.create_topic(ACTIONS, 1);
    let n = 40;
    let mut events: Vec<(&str, String)> = (0..n).map(|i| (IMPRESSIONS, impression(i))).collect();
    events.extend((0..n).map(|i| (ACTIONS, action(i))));
    produce(&producer(&broker), &events).await;

    let mut cfg = source_config(&broker, "lagging");
    cfg.properties
        .insert("statistics.interval.ms".into(), "100".into());
    let mut source = KafkaSource::new(&cfg).expect("source");
    let total = |lag: &BTreeMap<(String, i32), i64>| lag.values().sum::<i64>();
    let (mut read, mut between) = (0i64, 0);
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    while read < 2 * n as i64 && tokio::time::Instant::now() < deadline {
        let batch = source
            .next_batch(1, Duration::from_millis(500))
            .await
            .expect("next_batch");
        read += batch.len() as i64;
        let lag = source.lag();
        if !lag.is_empty() {
            let t = total(&lag);
            assert!(
                (2 * n as i64 - read..=2 * n as i64).contains(&t),
                "lag {lag:?} after reading {read} of {}",
                2 * n
            );
            if t > 0 && t < 2 * n as i64 {
                between += 1;
            }
        }
        // slower than the statistics interval lets several reports fall inside the read
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(read, 2 * n as i64, "every event read");
    assert!(
        between > 0,
        "no lag report while the backlog was being read"
    );

    let settled = BTreeMap::from([
        ((ACTIONS.to_string(), 0), 0),
        ((IMPRESSIONS.to_string(), 0), 0),
    ]);
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    while source.lag() != settled && tokio::time::Instant::now() < deadline {
        let extra = source
            .next_batch(1, Duration::from_millis(200))
            .await
            .expect("next_batch");
        assert!(extra.is_empty(), "read twice: {extra:?}");
    }
    assert_eq!(source.lag(), settled, "the lag once everything is read");
    close(source).await;
}
