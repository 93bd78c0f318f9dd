//! `kiln learn` end to end without Kafka: JSONL events -> the built learner -> the servers'
//! delta admin API -> a built `kiln serve` on the wide example model `ctr_wide`. The served
//! rows equal the learner's (both rows endpoints), a served prediction is what the trainer's
//! rows say, and after a kill -9 mid-publish and a restart the rows still converge with no
//! delta applied twice.

mod learn_common;

use learn_common::*;
use std::time::Duration;

const TOKEN: &str = "s3cret";

#[test]
fn served_rows_and_predictions_follow_the_learner() {
    let t = Setup::new("learn_admin_rows");
    let server = t.serve(TOKEN);
    let events = events(400, 0);
    let probe = ProbeEvent::new("user-3", "item-7", &["Comedy", "Drama"], 11);
    let before = predict(server.http, &probe);
    t.write_events(&events, &probe);
    let cfg = t.learn_toml(server.http, 10, 1000, 5);
    let learner = t.learn(&cfg, "run1");

    let keys = t.keys(&events, &probe);
    wait_until_converged(
        &t,
        &server,
        &learner,
        &keys,
        &probe,
        Duration::from_secs(90),
    );

    // the served prediction is sigmoid(served bias + the trainer's rows of the probe's keys)
    let rows = learner_rows(&learner, &probe.keys(&t));
    let logit = BIAS + rows.iter().map(|r| r.unwrap_or(0.0)).sum::<f32>();
    let expect = 1.0 / (1.0 + (-logit).exp());
    let after = predict(server.http, &probe);
    assert!(
        (after - expect).abs() < 1e-5,
        "served {after}, the trainer's rows say {expect}"
    );
    assert!(
        (after - before).abs() > 1e-4,
        "the prediction did not change ({before} -> {after})"
    );
    no_double_apply(&server);
    drop(learner);
}

#[test]
fn after_kill_9_mid_publish_the_replicas_converge_without_a_double_apply() {
    let t = Setup::new("learn_admin_kill9");
    let server = t.serve(TOKEN);
    let now = now_ms();
    // the first half is learned and checkpointed; the second comes later, in event time too
    let first_half = events_from(3000, 1, now - 900_000);
    let second_half = events_from(3000, 2, now - 600_000);
    let probe = ProbeEvent::new("sentinel-user", "sentinel-item", &["Sci-Fi"], 23);
    t.append_events(&first_half);
    // publish often (every 50 touched rows), checkpoint every second
    let cfg = t.learn_toml(server.http, 5, 50, 1);
    let mut first = t.learn(&cfg, "run1");
    wait_metric(
        &first,
        "kiln_learn_checkpoints_total",
        2.0,
        Duration::from_secs(60),
    );
    let published = metric(first.metrics, "kiln_learn_deltas_published_total");
    // more events; kill -9 while their deltas are being published
    t.append_events(&second_half);
    t.append_events(&probe.lines(now - 60_000));
    wait_metric(
        &first,
        "kiln_learn_deltas_published_total",
        published + 8.0,
        Duration::from_secs(60),
    );
    first.kill9();

    let mut second = t.learn(&cfg, "run2");
    let log = std::fs::read_to_string(t.dir.path().join("learn-run2.log")).unwrap();
    assert!(
        log.contains("checkpoint restored") && log.contains("republished the journal's keys"),
        "the restart restored the checkpoint and replayed the journal:\n{log}"
    );
    assert_eq!(second.epoch, first.epoch + 1, "a restart is a new epoch");
    let mut all = first_half.clone();
    all.extend(second_half.iter().cloned());
    let keys = t.keys(&all, &probe);
    wait_until_converged(
        &t,
        &server,
        &second,
        &keys,
        &probe,
        Duration::from_secs(120),
    );
    assert!(
        metric(second.metrics, "kiln_learn_replay_skipped_total") > 0.0,
        "the restart skipped nothing it had learned"
    );
    let sources = server_sources(&server);
    assert!(
        sources
            .iter()
            .any(|(s, _, _)| s.ends_with(&format!("@{}", second.epoch))),
        "the restarted learner's deltas were applied: {sources:?}"
    );
    no_double_apply(&server);
    // every impression was learned exactly once across the crash
    second.stop();
    let impressions = all.iter().filter(|l| l.contains("\"impression\"")).count() as u64 + 1;
    assert_eq!(t.checkpointed_samples(), impressions);
}

/// The `wide.bias` of a safetensors weights file.
fn bias_of(path: &std::path::Path) -> f32 {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = header["wide.bias"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn the_trained_bias_reaches_serving_as_a_new_version_sharing_the_live_tables() {
    let t = Setup::new("learn_admin_dense");
    let server = t.serve_with(
        TOKEN,
        &["--model-control-mode", "poll", "--poll-interval", "0.2"],
    );
    let events = events(400, 3);
    let probe = ProbeEvent::new("user-5", "item-9", &["Action"], 7);
    t.write_events(&events, &probe);
    let cfg = t.learn_toml_with(server.http, 10, 1000, 5, "dense_version_interval_s = 1");
    let learner = t.learn(&cfg, "run1");
    let keys = t.keys(&events, &probe);
    wait_until_converged(
        &t,
        &server,
        &learner,
        &keys,
        &probe,
        Duration::from_secs(90),
    );

    // the learner writes the bias as version 2 (and on); the server swaps it in, keeping the
    // rows the deltas wrote
    let rows = learner_rows(&learner, &probe.keys(&t));
    let sum: f32 = rows.iter().map(|r| r.unwrap_or(0.0)).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (0.0, 0.0);
    loop {
        let model = t.repo.join("ctr_wide");
        let newest = std::fs::read_dir(&model)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        if newest >= 2 {
            let bias = bias_of(&model.join(newest.to_string()).join("model.safetensors"));
            let expect = 1.0 / (1.0 + (-(bias + sum)).exp());
            let got = predict(server.http, &probe);
            if (got - expect).abs() < 1e-5 && (bias - BIAS).abs() > 1e-6 {
                break;
            }
            last = (got, expect);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "served {} vs the trained bias and rows {}",
            last.0,
            last.1
        );
        pause(100);
    }
    no_double_apply(&server);
}
