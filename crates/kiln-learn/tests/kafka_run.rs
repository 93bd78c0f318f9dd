//! The learner run by configuration over Kafka: events from the impressions and actions
//! topics, deltas to `kiln.deltas.<model>`, a snapshot for late replicas, against a real
//! Kafka-protocol broker (tansu; skipped with a message outside CI when it is missing).
#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_embed::Delta;
use kiln_learn::config::LearnConfig;
use kiln_learn::run::{run, Ready, RunOptions};
use kiln_learn::sink::kafka::KafkaDeltaProducer;
use kiln_testkit::kafka::Broker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "kiln.deltas.ctr_wide";

async fn metric(port: u16, name: &str) -> f64 {
    let body = kiln_testkit::http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every message of the delta topic, from the beginning, read until `want` or a deadline.
fn read_deltas(bootstrap: &str, want: usize) -> Vec<(String, Delta)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-run-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let d = Delta::decode(m.payload().unwrap_or_default()).expect("a delta");
            out.push((key, d));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_kafka_become_sequenced_deltas_on_the_topic_and_a_snapshot() {
    let Some(broker) = Broker::start("kafka_run") else {
        return;
    };
    for t in ["impressions", "actions", TOPIC] {
        broker.create_topic(t, 1);
    }
    let producer =
        KafkaDeltaProducer::new(&broker.bootstrap(), &BTreeMap::new()).expect("producer");
    let base = 1_700_000_000_000u64;
    let mut sent = Vec::new();
    for i in 0..200u64 {
        let imp = serde_json::json!({"type": "impression", "id": format!("i{i}"), "ts_ms": base + 10 * i,
            "features": {"user_id": format!("u{}", i % 9), "item_id": format!("it{}", i % 13),
                         "genres": ["Comedy"], "hour": 5}});
        sent.push(
            producer
                .send("impressions", "k", imp.to_string().as_bytes())
                .expect("queue"),
        );
        if i % 3 == 0 {
            let act = serde_json::json!({"type": "action", "id": format!("i{i}"), "ts_ms": base + 10 * i + 5, "action": "click"});
            sent.push(
                producer
                    .send("actions", "k", act.to_string().as_bytes())
                    .expect("queue"),
            );
        }
    }
    for f in sent {
        f.await.expect("delivered");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = kiln_testkit::repo_root().join("examples/models/ctr_wide");
    let text = format!(
        r#"name = "ctr-learner"
model_dir = "{model}"
[sources.kafka]
brokers = "{b}"
impressions_topic = "impressions"
actions_topic = "actions"
group_id = "kafka-run"
properties = {{ "session.timeout.ms" = "6000" }}
[labels]
positive = ["click"]
[join]
window_ms = 3000
[publish]
interval_ms = 20
kafka = {{ brokers = "{b}" }}
snapshot_dir = "{snap}"
snapshot_interval_s = 1
[checkpoint]
dir = "{ckpt}"
interval_s = 1
[metrics]
addr = "127.0.0.1:0"
"#,
        model = model_dir.display(),
        b = broker.bootstrap(),
        snap = dir.path().join("snapshots").display(),
        ckpt = dir.path().join("checkpoints").display(),
    );
    let config = LearnConfig::parse(&text, "learn.toml").expect("config");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Ready>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = RunOptions {
        admin_token: None,
        registry: None,
        on_ready: Some(Box::new(move |r: &Ready| {
            let _ = ready_tx.send(r.clone());
        })),
    };
    let learner = tokio::spawn(run(config, options, async move {
        let _ = stop_rx.await;
    }));
    let ready = ready_rx.await.expect("ready");
    let port = ready.metrics_addr.expect("metrics").port();
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(port, "kiln_learn_samples_total").await < 200.0
        || metric(port, "kiln_learn_snapshots_total").await < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the learner did not learn every impression and snapshot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    let summary = learner.await.expect("join").expect("run");
    assert_eq!(summary.epoch, 1);

    let published = summary.batches as usize * 4;
    let deltas = tokio::task::spawn_blocking({
        let b = broker.bootstrap();
        move || read_deltas(&b, published)
    })
    .await
    .expect("read");
    assert!(!deltas.is_empty(), "no delta on the topic");
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for (key, d) in &deltas {
        assert_eq!(key, &d.table, "the message key is the table");
        assert_eq!(d.source, "ctr-learner@1");
        let n = next.entry(d.table.clone()).or_insert(1);
        assert_eq!(d.seq, *n, "{}: sequence numbers in order from 1", d.table);
        *n += 1;
        assert!(d.created_ms >= base, "created_ms is event time");
    }
    let snaps = dir.path().join("snapshots/ctr_wide");
    let latest = std::fs::read_to_string(snaps.join("LATEST")).expect("LATEST");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(snaps.join(latest.trim()).join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let offset = manifest["offsets"]["0"].as_i64().expect("an offset");
    assert!(
        offset > 0 && offset as usize <= deltas.len(),
        "offset {offset}"
    );
}
