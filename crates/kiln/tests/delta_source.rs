//! `kiln serve --delta-source kafka://...` against a real Kafka-protocol broker: deltas produced
//! to `kiln.deltas.dlrm_small` reach the served rows; a garbage message and a delta of the wrong
//! dim are counted and skipped while later deltas still apply; a second server started later
//! with `--delta-snapshot-dir` restores the snapshot and replays the topic from the snapshot's
//! offsets to the same rows; a model loaded after start follows its topic too. A bad
//! `--delta-source` is refused at start naming the flag.

mod common;

use common::http;
use kiln_embed::{Delta, Table, TableConfig};
use kiln_testkit::kafka::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "dlrm_small";
const TOPIC: &str = "kiln.deltas.dlrm_small";
const TABLE: &str = "emb.0";
const SOURCE: &str = "learner@1";
const DEADLINE: Duration = Duration::from_secs(60);

/// A `kiln serve` with its HTTP and metrics ports, killed on drop (its log printed on failure).
struct Served {
    child: Child,
    log: std::path::PathBuf,
    http: u16,
    metrics: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- kiln serve log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Starts `kiln serve` on `repo` (ports 0) with `args`; waits for its ready file.
async fn serve(repo: &Path, scratch: &Path, args: &[&str]) -> Served {
    fs::create_dir_all(scratch).unwrap();
    let ready = scratch.join("ready.json");
    let log = scratch.join("serve.log");
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--model-repository")
        .arg(repo)
        .args([
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--host",
            "127.0.0.1",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .args(args)
        .current_dir(scratch)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_ORT_LIBRARY")
        .env("KILN_PYTHON", "/nonexistent/python")
        .env("KILN_LOG", "info,kiln_runtime::delta_source=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start kiln serve");
    let mut s = Served {
        child,
        log,
        http: 0,
        metrics: 0,
    };
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(v) = fs::read_to_string(&ready).map(|t| serde_json::from_str::<Value>(&t)) {
            let v = v.expect("ready file JSON");
            s.http = v["http_port"].as_u64().expect("http port") as u16;
            s.metrics = v["metrics_port"].as_u64().expect("metrics port") as u16;
            return s;
        }
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "kiln serve exited early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("kiln serve did not get ready");
}

/// A temporary copy of `dlrm_small` whose tables apply sequence gaps (see the snapshot test).
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = common::repo_root().join("examples/models").join(MODEL);
    let dst = dir.path().join(MODEL);
    fs::create_dir_all(dst.join("1")).unwrap();
    fs::copy(
        src.join("1/model.safetensors"),
        dst.join("1/model.safetensors"),
    )
    .unwrap();
    // the default gap policy (reject): the restore sets the snapshot's sequence numbers
    fs::copy(src.join("config.toml"), dst.join("config.toml")).unwrap();
    dir
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces one message; returns its offset.
async fn produce(p: &FutureProducer, key: &str, value: &[u8]) -> i64 {
    let delivered = p
        .send(
            FutureRecord::to(TOPIC).key(key).payload(value).partition(0),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    delivered.offset
}

fn delta(seq: u64, dim: usize, keys: &[u64], base: f32) -> Delta {
    Delta {
        source: SOURCE.into(),
        table: TABLE.into(),
        seq,
        dim,
        keys: keys.to_vec(),
        values: (0..keys.len() * dim)
            .map(|i| base + i as f32 / 8.0)
            .collect(),
        ..Default::default()
    }
}

/// The table's dim, from the admin listing.
fn dim(port: u16) -> usize {
    let (st, body) = http(port, "GET", &format!("/admin/v1/models/{MODEL}/tables"), "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let tables = v["tables"].as_array().expect("tables");
    let t = tables
        .iter()
        .find(|t| t["name"] == TABLE)
        .expect("emb.0 listed");
    t["dim"].as_u64().expect("dim") as usize
}

/// The served rows of `keys` (None: no row).
fn rows(port: u16, keys: &[u64]) -> Vec<Option<Vec<f32>>> {
    common::table_rows(port, MODEL, TABLE, keys)
}

/// The value of the metric line starting with `series` (0 when absent).
fn metric(port: u16, series: &str) -> f64 {
    let (st, body) = http(port, "GET", "/metrics", "");
    assert_eq!(st, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until `done()` holds, failing with `what` at the deadline.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row_values(d: &Delta) -> Vec<Option<Vec<f32>>> {
    d.values.chunks(d.dim).map(|r| Some(r.to_vec())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_apply_bad_messages_are_counted_and_a_late_replica_restores_the_snapshot() {
    let Some(broker) = Broker::start("delta_source") else {
        return;
    };
    broker.create_topic(TOPIC, 1);
    let repo = repo();
    let scratch = tempfile::tempdir().unwrap();
    let url = format!("kafka://{}", broker.bootstrap());
    let a = serve(
        repo.path(),
        &scratch.path().join("a"),
        &["--delta-source", &url],
    )
    .await;
    let dim = dim(a.http);
    let p = producer(&broker.bootstrap());
    let applied = format!("kiln_delta_source_applied_total{{model=\"{MODEL}\"}}");

    // a delta reaches the served rows
    let d1 = delta(1, dim, &[1, 2], 0.5);
    produce(&p, TABLE, &d1.encode()).await;
    until("the first delta", || {
        rows(a.http, &[1, 2]) == row_values(&d1)
    })
    .await;

    // garbage and a wrong dim are counted and change nothing; the next delta still applies
    let before3 = rows(a.http, &[3]);
    produce(&p, TABLE, b"not a delta at all").await;
    produce(&p, TABLE, &delta(2, dim + 1, &[3], 9.0).encode()).await;
    let d2 = delta(2, dim, &[2, 3], -1.5);
    let after_d2 = produce(&p, TABLE, &d2.encode()).await + 1;
    until("the second delta", || {
        rows(a.http, &[2, 3]) == row_values(&d2)
    })
    .await;
    let rejected = |reason: &str| {
        metric(
            a.metrics,
            &format!("kiln_delta_source_rejected_total{{model=\"{MODEL}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("garbage"), 1.0);
    assert_eq!(rejected("wrong_dim"), 1.0);
    assert_eq!(metric(a.metrics, &applied), 2.0);
    assert_ne!(before3, rows(a.http, &[3]), "the valid delta changed key 3");
    // a replayed delta is a duplicate: counted, nothing changes
    let dups = format!("kiln_delta_source_duplicates_total{{model=\"{MODEL}\"}}");
    produce(&p, TABLE, &d1.encode()).await;
    until("the replay to be counted", || {
        metric(a.metrics, &dups) == 1.0
    })
    .await;
    assert_eq!(rows(a.http, &[2, 3]), row_values(&d2));
    let after_d2 = after_d2 + 1;
    let lag = format!("kiln_delta_source_lag{{model=\"{MODEL}\",partition=\"0\"}}");
    until("the lag to reach 0", || metric(a.metrics, &lag) == 0.0).await;

    // the learner's snapshot after seq 2: what it published, plus a row it never published
    let snaps = scratch.path().join("snapshots");
    let dir = snaps.join(MODEL).join("7");
    fs::create_dir_all(&dir).unwrap();
    let table = Table::new(TableConfig::new(TABLE, dim)).unwrap();
    let only_in_snapshot = delta(1, dim, &[50], 4.0);
    table.apply(&d1).unwrap();
    table.apply(&d2).unwrap();
    table
        .upsert(&only_in_snapshot.keys, &only_in_snapshot.values, None)
        .unwrap();
    table
        .snapshot_to(&dir.join(format!("{TABLE}.snap")))
        .unwrap();
    let manifest = serde_json::json!({
        "model": MODEL, "tables": [TABLE], "topic": TOPIC,
        "offsets": {"0": after_d2}, "created_ms": 1,
    });
    fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    fs::write(snaps.join(MODEL).join("LATEST"), "7\n").unwrap();

    // a delta after the snapshot, then a second replica that starts late
    let d3 = delta(3, dim, &[1, 4], 2.25);
    produce(&p, TABLE, &d3.encode()).await;
    let snap_arg = snaps.to_str().unwrap();
    let b = serve(
        repo.path(),
        &scratch.path().join("b"),
        &["--delta-source", &url, "--delta-snapshot-dir", snap_arg],
    )
    .await;
    let keys = [1, 2, 3, 4];
    until("both replicas to hold the same rows", || {
        let ra = rows(a.http, &keys);
        ra == rows(b.http, &keys) && ra[0] == row_values(&d3)[0]
    })
    .await;
    assert_eq!(
        rows(b.http, &[50]),
        row_values(&only_in_snapshot),
        "restored from the snapshot"
    );
    assert_ne!(
        rows(a.http, &[50]),
        row_values(&only_in_snapshot),
        "never published"
    );
    // b read only what came after the snapshot: the bad messages and the replay came before
    assert_eq!(metric(b.metrics, &applied), 1.0);
    assert_eq!(metric(b.metrics, &dups), 0.0);
    assert_eq!(
        metric(
            b.metrics,
            &format!("kiln_delta_source_restored_rows_total{{model=\"{MODEL}\"}}")
        ),
        4.0
    );
    assert_eq!(
        metric(
            b.metrics,
            &format!("kiln_delta_source_rejected_total{{model=\"{MODEL}\",reason=\"garbage\"}}")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loaded_after_start_follows_its_topic() {
    let Some(broker) = Broker::start("delta_source_late_model") else {
        return;
    };
    broker.create_topic(TOPIC, 1);
    let p = producer(&broker.bootstrap());
    let repo = repo();
    let scratch = tempfile::tempdir().unwrap();
    let url = format!("kafka://{}", broker.bootstrap());
    let s = serve(
        repo.path(),
        scratch.path(),
        &["--delta-source", &url, "--model-control-mode", "explicit"],
    )
    .await;
    let d1 = delta(1, 16, &[5, 6], 1.25);
    produce(&p, TABLE, &d1.encode()).await;
    let (st, body) = http(
        s.http,
        "POST",
        &format!("/v2/repository/models/{MODEL}/load"),
        "{}",
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(dim(s.http), 16, "the test's deltas are of dlrm_small's dim");
    until("the delta produced before the load", || {
        rows(s.http, &[5, 6]) == row_values(&d1)
    })
    .await;
    let d2 = delta(2, 16, &[6], -0.5);
    produce(&p, TABLE, &d2.encode()).await;
    until("the delta produced after the load", || {
        rows(s.http, &[6]) == row_values(&d2)
    })
    .await;
}

#[test]
fn a_delta_source_that_is_not_kafka_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--model-repository"])
        .arg(dir.path())
        .args(["--http-port", "0", "--grpc-port", "0", "--no-metrics"])
        .args(["--delta-source", "http://127.0.0.1:9092"])
        .current_dir(dir.path())
        .output()
        .expect("run kiln serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--delta-source") && err.contains("http"),
        "{err}"
    );
}
