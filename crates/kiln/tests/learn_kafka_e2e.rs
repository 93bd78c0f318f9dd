//! `kiln learn` end to end over a real Kafka-protocol broker, with the built binaries: events
//! produced to the impressions and actions topics, the learner (FTRL on `ctr_wide`) publishing
//! to the delta topic `kiln.deltas.ctr_wide`, and two `kiln serve --delta-source kafka://...`
//! replicas, one started before the events and one started late from the learner's snapshot.
//!
//! - Both replicas hold the learner's rows of every key it trained, exactly (the learner's and
//!   the replicas' rows endpoints), and serve `sigmoid(bias + the learner's rows)`.
//! - Malformed events are counted by the learner and skipped; a garbage message and a delta of
//!   the wrong dim on the delta topic are counted by both replicas and change nothing.
//! - The learner is killed (SIGKILL) while it publishes a second burst and restarted: a new
//!   epoch, and the replicas again hold its rows. No delta is applied twice or lost: each
//!   replica applied every distinct `(source, table, seq)` the topic holds (from its snapshot's
//!   offsets on) once, with no gap, and ended at the topic's last sequence number of every
//!   source and table; the restarted learner published exactly the deltas of its epoch.

mod common;
mod learn_kafka;

use std::collections::{BTreeMap, BTreeSet};

use kiln_embed::Delta;
use kiln_testkit::kafka::Broker;
use learn_kafka::*;
use rdkafka::producer::FutureProducer;

/// One impression's `(table, key)` ids.
type Ids = Vec<(String, u64)>;

/// A replica serves `sigmoid(bias + the learner's rows of the probe's ids)`.
fn check_prediction(replica: &Replica, learner: &Learner, probe: &Probe, ids: &Ids, bias: f64) {
    let mut logit = bias;
    for (table, key) in ids {
        let row = rows(learner.metrics, table, &[*key]).remove(0);
        let row = row.unwrap_or_else(|| panic!("the learner has no row {table}/{key}"));
        logit += f64::from(row[0]);
    }
    let want = 1.0 / (1.0 + (-logit).exp());
    let got = predict(replica.http, probe);
    assert!(
        (got - want).abs() < 1e-6,
        "served {got} for {probe:?}, the learner's rows say {want}"
    );
}

/// Produces impression and action events.
async fn send(events: &FutureProducer, impressions: &[Vec<u8>], actions: &[String]) {
    produce(events, IMPRESSIONS, None, impressions).await;
    let actions: Vec<Vec<u8>> = actions.iter().map(|l| l.clone().into_bytes()).collect();
    produce(events, ACTIONS, None, &actions).await;
}

/// Produces `last`, an impression without a click whose user is its own, timed after every
/// event before it, and waits until the learner has its user's row: the joiner closes
/// impressions in time order, so the learner has then learned every event before it.
async fn send_last(events: &FutureProducer, s: &Scratch, learner: &Learner, last: &str) {
    produce(events, IMPRESSIONS, None, &[last.as_bytes().to_vec()]).await;
    let ids = s.sample_keys(&[last.to_string()]).remove(0);
    let (table, key) = ids.iter().find(|(t, _)| t == "user_id").expect("a user id");
    until("the learner to learn the last impression", || {
        match rows(learner.metrics, table, &[*key]).remove(0) {
            Some(_) => Ok(()),
            None => Err(format!("no row {table}/{key} yet")),
        }
    })
    .await;
}

async fn converge(what: &str, learner: &Learner, replica: &Replica, keys: &Keys) {
    until(what, || same_rows(learner.metrics, replica.http, keys)).await;
}

fn count(port: u16, name: &str) -> u64 {
    metric(port, name, "") as u64
}

fn lines(events: &[String]) -> Vec<Vec<u8>> {
    events.iter().map(|l| l.clone().into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_learner_through_bad_input_and_a_kill_9() {
    let Some(broker) = Broker::start("learn_kafka_e2e") else {
        return;
    };
    for topic in [IMPRESSIONS, ACTIONS, DELTAS] {
        broker.create_topic(topic, 1);
    }
    let boot = broker.bootstrap();
    let s = Scratch::new(&boot);
    let events = producer(&boot);

    // replica A follows the delta topic from before the first event; every input padding
    // gives the served bias alone (no dense versions are published: it stays)
    let a = s.serve("serve-a", false).await;
    let p0 = predict(a.http, &Probe::padding());
    let bias = (p0 / (1.0 - p0)).ln();

    // the first burst, with malformed events among its impressions
    let b1 = burst("b1", 400, 1);
    let probe = b1.probes[0].clone();
    let probe_ids = s.sample_keys(&[probe.impression("probe", 0)]).remove(0);
    let before = predict(a.http, &probe);
    let learner = s.learn("learn-1").await;
    let malformed: [&[u8]; 4] = [
        b"not json at all",
        br#"{"type":"impression","id":"bad-1","ts_ms":1}"#,
        br#"{"type":"purchase","id":"bad-2","ts_ms":1}"#,
        br#"{"type":"impression","id":"bad-3","ts_ms":"soon","features":{}}"#,
    ];
    let mut b1_lines = lines(&b1.impressions);
    for (i, m) in malformed.iter().enumerate() {
        b1_lines.insert(100 * i + 7, m.to_vec());
    }
    let last1 = probe
        .with_user("last-user-1")
        .impression("b1-last", now_ms());
    let mut trained = b1.impressions.clone();
    trained.push(last1.clone());
    let mut keys = s.keys(&trained);
    send(&events, &b1_lines, &b1.actions).await;
    send_last(&events, &s, &learner, &last1).await;
    converge("replica A to hold the learner's rows", &learner, &a, &keys).await;
    assert_eq!(
        count(learner.metrics, "kiln_learn_malformed_events_total"),
        malformed.len() as u64,
        "malformed events counted"
    );
    check_prediction(&a, &learner, &probe, &probe_ids, bias);
    let after = predict(a.http, &probe);
    assert!(
        (after - before).abs() > 1e-4,
        "the prediction stayed {before}"
    );

    // replica B starts late, once a snapshot holds everything published, and restores it
    // (only this learner wrote to the topic yet: its deltas are offsets 0..published)
    let b_from = until("a snapshot of everything published", || {
        let published = count(learner.metrics, "kiln_learn_deltas_published_total");
        let delivered = count(learner.metrics, "kiln_learn_deltas_delivered_total");
        let offsets = s.latest_snapshot_offsets().unwrap_or_default();
        match offsets.get("0") {
            Some(&o) if o as u64 == published && delivered == published => Ok(o),
            _ => Err(format!(
                "snapshot at {offsets:?}, {delivered} of {published} deltas delivered"
            )),
        }
    })
    .await;
    let b = s.serve("serve-b", true).await;
    converge("replica B to hold the learner's rows", &learner, &b, &keys).await;
    let restored = count(b.metrics, "kiln_delta_source_restored_rows_total");
    assert!(restored > 0, "B restored the snapshot");
    check_prediction(&b, &learner, &probe, &probe_ids, bias);

    // a garbage message and a delta of the wrong dim on the delta topic change nothing
    let user_key = probe_ids.iter().find(|(t, _)| t == "user_id").unwrap().1;
    let wrong_dim = Delta {
        source: "intruder@1".into(),
        table: "user_id".into(),
        seq: 1,
        dim: 2,
        keys: vec![user_key],
        values: vec![9.0, 9.0],
        ..Default::default()
    };
    let bad = [b"not a delta at all".to_vec(), wrong_dim.encode()];
    produce(&events, DELTAS, Some("user_id"), &bad).await;
    for (name, r) in [("A", &a), ("B", &b)] {
        until("both bad messages to be counted", || {
            let counted = ["garbage", "wrong_dim"].map(|why| {
                let labels = format!("reason=\"{why}\"");
                metric(r.metrics, "kiln_delta_source_rejected_total", &labels)
            });
            match counted {
                [1.0, 1.0] => Ok(()),
                _ => Err(format!("replica {name}: garbage, wrong_dim {counted:?}")),
            }
        })
        .await;
        same_rows(learner.metrics, r.http, &keys).expect("the bad messages changed nothing");
        let taken = sources(r.http)
            .into_keys()
            .any(|(src, _)| src.starts_with("intruder"));
        assert!(!taken, "replica {name} took the wrong-dim delta's source");
        check_prediction(r, &learner, &probe, &probe_ids, bias);
    }

    // a second burst; kill -9 the learner as soon as its deltas start to flow (its negatives
    // wait for their 2 s window then), and restart it
    let published = count(learner.metrics, "kiln_learn_deltas_published_total");
    let b2 = burst("b2", 3000, 2);
    send(&events, &lines(&b2.impressions), &b2.actions).await;
    let mut learner = learner;
    let at_kill = until("the learner to publish the second burst", || {
        let n = count(learner.metrics, "kiln_learn_deltas_published_total");
        (n > published)
            .then_some(n)
            .ok_or(format!("{n} deltas published"))
    })
    .await;
    learner.proc.kill9();
    eprintln!(
        "killed the learner of epoch {} after {at_kill} deltas ({published} before the burst)",
        learner.epoch
    );
    let learner2 = s.learn("learn-2").await;
    assert_eq!(
        learner2.epoch,
        learner.epoch + 1,
        "a restart is a new epoch"
    );
    let last2 = probe
        .with_user("last-user-2")
        .impression("b2-last", now_ms());
    trained.extend(b2.impressions.iter().cloned());
    trained.push(last2.clone());
    keys = s.keys(&trained);
    send_last(&events, &s, &learner2, &last2).await;
    for (name, r) in [("A", &a), ("B", &b)] {
        let what = format!("replica {name} to hold the restarted learner's rows");
        converge(&what, &learner2, r, &keys).await;
        check_prediction(r, &learner2, &probe, &probe_ids, bias);
    }
    until("the restarted learner's deltas to be acknowledged", || {
        let sent = count(learner2.metrics, "kiln_learn_deltas_published_total");
        let acked = count(learner2.metrics, "kiln_learn_deltas_delivered_total");
        (sent == acked)
            .then_some(())
            .ok_or(format!("{acked} of {sent}"))
    })
    .await;

    // every delta on the topic, against what each replica applied. The learner may still
    // publish (the last windows close 2 s after their impressions, and a replica now sees a
    // delta within ~50 ms), so the topic and the counters are read again until one reading
    // agrees; a delta applied twice never agrees.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let topic = read_deltas(&events, &boot).await;
        match account(&topic, bad.len(), &a, &b, b_from, &learner, &learner2) {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("delta accounting not settled yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Checks the delta topic against the replicas' and the restarted learner's counters.
fn account(
    topic: &[TopicDelta],
    bad: usize,
    a: &Replica,
    b: &Replica,
    b_from: i64,
    learner: &Learner,
    learner2: &Learner,
) -> Result<(), String> {
    macro_rules! check_eq {
        ($l:expr, $r:expr, $($what:tt)+) => {{
            let (l, r) = ($l, $r);
            if l != r {
                return Err(format!("{}: {:?} != {:?}", format!($($what)+), l, r));
            }
        }};
    }
    let bad_on_topic = topic.iter().filter(|m| m.delta.is_none()).count();
    check_eq!(bad_on_topic, bad, "messages that are no delta of the model");
    let valid: Vec<(i64, &Delta)> = topic
        .iter()
        .filter_map(|m| m.delta.as_ref().map(|d| (m.offset, d)))
        .collect();
    let from = |offset: i64| {
        valid
            .iter()
            .filter(move |(o, _)| *o >= offset)
            .map(|(_, d)| d)
    };
    let distinct = |offset: i64| -> BTreeSet<(&str, &str, u64)> {
        from(offset)
            .map(|d| (d.source.as_str(), d.table.as_str(), d.seq))
            .collect()
    };
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in from(0) {
        let seq = last.entry((d.source.clone(), d.table.clone())).or_default();
        *seq = (*seq).max(d.seq);
    }
    for (name, r, offset) in [("A", a, 0), ("B", b, b_from)] {
        let (n, unique) = (from(offset).count() as u64, distinct(offset).len() as u64);
        let applied = count(r.metrics, "kiln_delta_source_applied_total");
        let duplicates = count(r.metrics, "kiln_delta_source_duplicates_total");
        let gaps = count(r.metrics, "kiln_delta_source_gaps_total");
        check_eq!(
            (applied, duplicates, gaps),
            (unique, n - unique, 0),
            "replica {name}: deltas (applied, duplicates, gaps) vs the topic's from offset {offset}"
        );
        check_eq!(
            sources(r.http),
            last.clone(),
            "replica {name}: last sequence numbers"
        );
    }
    let all = distinct(0);
    check_eq!(
        count(a.metrics, "kiln_embed_deltas_applied_total"),
        all.len() as u64,
        "replica A's tables applied each delta once"
    );
    let epoch = |e: u64| {
        all.iter()
            .filter(|d| d.0 == format!("{LEARNER}@{e}"))
            .count() as u64
    };
    if epoch(learner.epoch) == 0 {
        return Err("the first epoch published nothing".into());
    }
    check_eq!(
        count(learner2.metrics, "kiln_learn_deltas_published_total"),
        epoch(learner2.epoch),
        "the restarted learner's deltas are on the topic"
    );
    Ok(())
}
