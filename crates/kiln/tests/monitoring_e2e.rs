//! Monitoring end to end: a real Prometheus (Debian's `prometheus`) scrapes the built
//! `kiln serve` and `kiln learn`, evaluates the project's alert rules
//! (`deploy/alerts/prometheus-rules.yaml`, every window and `for` made sixty times shorter) and
//! sends alerts to a real Alertmanager (`prometheus-alertmanager`), which delivers them to a
//! webhook in this test. Everything listens on loopback port 0.
//!
//! - Two faults, each on a model whose `config.toml` names an owner and a team: every request of
//!   `checkout` times out in its queue (504), and a burst overflows the small queue of `scorer`
//!   (429). Each fires an alert that reaches the webhook carrying that model's owner and team,
//!   and resolves once the fault stops.
//! - Every panel of the serving and sparse-learning dashboards returns data, but those about
//!   Kafka (the delta topic, the learner's consumer lag) and the dataset cache dashboard: they
//!   are checked to be queries Prometheus accepts here, and get their data in
//!   `monitoring_sources_e2e.rs` (`panels::feed` says which test feeds which query).
//!
//! Without the Debian packages the test is skipped with a message, except under `CI`, where it
//! fails (`kiln_testkit::skip`).

mod learn_common;
mod monitoring_common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use learn_common::*;
use monitoring_common::*;
use serde_json::{json, Value};

/// How long an alert may take to fire, or to resolve, once its fault starts or ends.
const ALERT_PATIENCE: Duration = Duration::from_secs(180);
/// How long the dashboards' queries may take to all return data.
const QUERY_PATIENCE: Duration = Duration::from_secs(90);

/// The model whose every request times out, and its owners.
const FAILING: (&str, &str, &str) = ("checkout", "payments-oncall@example.com", "payments");
/// The model whose queue a burst overflows, and its owners.
const QUEUED: (&str, &str, &str) = ("scorer", "ranking-oncall@example.com", "ranking");
/// The alert that timeouts fire (they are server errors against the 99.9% objective).
const FAILING_ALERT: &str = "KilnErrorBudgetBurnFast";
/// The alert that 429s from a full queue fire.
const QUEUED_ALERT: &str = "KilnRequestsRefusedOverloaded";

/// `mlp`'s input and output declarations (x FP32 [256] -> y FP32 [1]).
const MLP_IO: &str = "[[input]]\nname = \"x\"\ndata_type = \"FP32\"\ndims = [256]\n\n\
                      [[output]]\nname = \"y\"\ndata_type = \"FP32\"\ndims = [1]\n";

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Adds to the scratch repository (which holds `ctr_wide`): `scorer` (mlp, versions 1 and 2
/// sharing traffic, response cache, a queue of 1 whose batches wait 100 ms), `checkout` (mlp
/// whose requests wait 200 ms for a batch and time out after 1 ms) and the `recommend` pipeline
/// with its members.
fn write_models(repo: &Path) {
    let examples = kiln_testkit::repo_root().join("examples/models");
    let mlp = examples.join("mlp/1/model.onnx");
    for v in ["1", "2"] {
        fs::create_dir_all(repo.join("scorer").join(v)).unwrap();
        fs::copy(&mlp, repo.join("scorer").join(v).join("model.onnx")).unwrap();
    }
    let (_, owner, team) = QUEUED;
    fs::write(
        repo.join("scorer/config.toml"),
        format!(
            "max_batch_size = 64\nowner = \"{owner}\"\nteam = \"{team}\"\n\
             version_policy = {{ latest = 2 }}\n\n{MLP_IO}\n[dynamic_batching]\n\
             max_queue_delay_us = 100000\npreferred_batch_sizes = [64]\nmax_queue_size = 1\n\n\
             [traffic]\n\"1\" = 50\n\"2\" = 50\n\n[response_cache]\nenable = true\n"
        ),
    )
    .unwrap();
    fs::create_dir_all(repo.join("checkout/1")).unwrap();
    fs::copy(&mlp, repo.join("checkout/1/model.onnx")).unwrap();
    let (_, owner, team) = FAILING;
    fs::write(
        repo.join("checkout/config.toml"),
        format!(
            "max_batch_size = 64\nowner = \"{owner}\"\nteam = \"{team}\"\n\n{MLP_IO}\n\
             [dynamic_batching]\nmax_queue_delay_us = 200000\npreferred_batch_sizes = [64]\n\
             default_timeout_ms = 1\n"
        ),
    )
    .unwrap();
    for m in ["recommend", "user_tower", "coarse_rank", "fine_rank"] {
        copy_dir(&examples.join(m), &repo.join(m));
    }
}

/// An mlp request; `seed` varies its data (the same seed is a response-cache hit on `scorer`).
fn mlp_request(seed: u64) -> String {
    let data: Vec<f32> = (0..256)
        .map(|i| ((seed * 31 + i) % 97) as f32 / 97.0)
        .collect();
    json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": data}]})
        .to_string()
}

/// Background traffic to every healthy model until `stop`: scorer (repeated inputs hit the
/// response cache), the recommend pipeline and ctr_wide (embedding lookups).
fn steady_traffic(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let golden: Value = serde_json::from_str(
        &fs::read_to_string(
            kiln_testkit::repo_root().join("examples/models/recommend/golden.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let recommend = json!({"inputs": golden["cases"][0]["inputs"]}).to_string();
    let probe = ProbeEvent::new("user-1", "item-2", &["Comedy"], 9);
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (status, body) = http(port, "POST", "/v2/models/scorer/infer", &mlp_request(i % 4));
            assert!(status == 200 || status == 429, "scorer: {status} {body}");
            let (status, body) = http(port, "POST", "/v2/models/recommend/infer", &recommend);
            assert_eq!(status, 200, "recommend: {body}");
            predict(port, &probe);
            i += 1;
            pause(50);
        }
    })
}

/// Runs `fault` in a loop on 8 threads until `alert` about `model` reaches the webhook with the
/// model's owner and team, then stops it and waits for the alert to resolve.
fn fire_and_resolve(
    hook: &Webhook,
    (model, owner, team): (&str, &str, &str),
    alert: &str,
    fault: fn(u16),
    port: u16,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    fault(port);
                    pause(10);
                }
            })
        })
        .collect();
    let about = |a: &Value, status: &str| {
        a["status"] == status && a["labels"]["model"] == model && a["labels"]["alertname"] == alert
    };
    let deadline = Instant::now() + ALERT_PATIENCE;
    let fired = loop {
        if let Some(a) = hook.alerts().into_iter().find(|a| about(a, "firing")) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "{alert} about {model} did not reach the webhook; delivered: {:#?}",
            hook.alerts()
        );
        pause(250);
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        fired["labels"]["owner"], owner,
        "{alert} for {model}: {fired:#}"
    );
    assert_eq!(
        fired["labels"]["team"], team,
        "{alert} for {model}: {fired:#}"
    );
    let deadline = Instant::now() + ALERT_PATIENCE;
    while !hook.alerts().iter().any(|a| about(a, "resolved")) {
        assert!(
            Instant::now() < deadline,
            "{alert} for {model} did not resolve after the fault ended; delivered: {:#?}",
            hook.alerts()
        );
        pause(250);
    }
}

/// One request to `checkout`: it waits for a batch longer than its timeout (504), unless it
/// arrived just before the batch left.
fn checkout_times_out(http: u16) {
    let (status, body) =
        learn_common::http(http, "POST", "/v2/models/checkout/infer", &mlp_request(1));
    assert!(status == 504 || status == 200, "checkout: {status} {body}");
}

/// One request to `scorer` with fresh data (no cache hit), in a burst that overflows its
/// queue (429).
fn scorer_burst(http: u16) {
    let seed = 1000 + rand_seed();
    let (status, body) =
        learn_common::http(http, "POST", "/v2/models/scorer/infer", &mlp_request(seed));
    assert!(status == 200 || status == 429, "scorer: {status} {body}");
}

/// A seed that differs between calls (nanoseconds of the clock).
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
}

#[test]
fn prometheus_scrapes_kiln_and_alerts_reach_the_owners() {
    let test = "monitoring end-to-end test";
    let bins = match binaries() {
        Ok(b) => b,
        Err(why) => return kiln_testkit::skip(test, why),
    };
    let root = kiln_testkit::repo_root();
    // KILN_ALERT_RULES tries another rules file
    let rules_src = std::env::var_os("KILN_ALERT_RULES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("deploy/alerts/prometheus-rules.yaml"));
    let rules =
        fs::read_to_string(&rules_src).unwrap_or_else(|e| panic!("{}: {e}", rules_src.display()));

    let t = Setup::new("monitoring_e2e");
    write_models(&t.repo);
    let server = t.serve(TOKEN);
    t.write_events(
        &events(400, 0),
        &ProbeEvent::new("user-3", "item-7", &["Drama"], 11),
    );
    t.append_events(&["this is not json".to_string()]);
    let cfg = t.learn_toml(server.http, 100, 1000, 5);
    let learner = t.learn(&cfg, "run1");

    let hook = Webhook::start();
    let am = alertmanager(&bins.alertmanager, t.dir.path(), hook.port);
    let test_rules = t.dir.path().join("rules.yaml");
    fs::write(&test_rules, shorten_rules(&rules)).unwrap();
    let prom = prometheus(
        &bins.prometheus,
        t.dir.path(),
        &test_rules,
        am.port,
        &[
            ("kiln-serve", server.metrics),
            ("kiln-learn", learner.metrics),
        ],
    );
    wait_targets_up(prom.port, 2);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(server.http, stop.clone());

    fire_and_resolve(
        &hook,
        FAILING,
        FAILING_ALERT,
        checkout_times_out,
        server.http,
    );
    fire_and_resolve(&hook, QUEUED, QUEUED_ALERT, scorer_burst, server.http);

    let (here, elsewhere): (Vec<PanelQuery>, Vec<PanelQuery>) = all_queries(&root)
        .into_iter()
        .partition(|(board, _, expr)| feed(board, expr) == Feed::Serving);
    for (board, title, expr) in &elsewhere {
        if let Err(e) = query(prom.port, expr) {
            panic!("{board}: panel {title:?}: Prometheus refused {expr}: {e}");
        }
    }
    wait_for_panels(prom.port, &here, QUERY_PATIENCE);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    drop(learner);
}
