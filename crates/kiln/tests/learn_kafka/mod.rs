//! Harness of the `kiln learn` Kafka end-to-end test: a scratch copy of `ctr_wide` and a
//! `learn.toml` over a broker, the built `kiln serve` and `kiln learn` as child processes on
//! port 0, generated events, the rows and metrics endpoints, and the delta topic read back.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_learn::config::LearnConfig;
use kiln_learn::event::{parse_line, Event};
use kiln_learn::featurize::Featurizer;
use serde_json::{json, Value};

mod endpoints;
mod kafka;

pub use endpoints::*;
pub use kafka::*;

pub const MODEL: &str = "ctr_wide";
pub const IMPRESSIONS: &str = "impressions";
pub const ACTIONS: &str = "actions";
pub const DELTAS: &str = "kiln.deltas.ctr_wide";
pub const LEARNER: &str = "ctr-learner";
/// The most any one wait of the test may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Keys per table.
pub type Keys = BTreeMap<String, BTreeSet<u64>>;

/// A child process, SIGKILLed on drop; its log is printed when the test failed.
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Proc {
    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            // the end of it: a learner logs every checkpoint
            let start = log.len().saturating_sub(20_000);
            let start = (start..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!("--- {} log (end) ---\n{}", self.name, &log[start..]);
        }
    }
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env("KILN_LOG", "info")
        .env("KILN_PYTHON", "/nonexistent/python")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_ORT_LIBRARY")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start kiln");
    Proc {
        child,
        log,
        name: name.to_string(),
    }
}

/// Waits for `p`'s ready file.
async fn ready(path: &Path, p: &mut Proc) -> Value {
    let start = Instant::now();
    loop {
        if let Ok(v) = fs::read_to_string(path).map(|t| serde_json::from_str::<Value>(&t)) {
            return v.expect("ready file JSON");
        }
        assert!(!p.exited(), "{} exited before it was ready", p.name);
        assert!(start.elapsed() < DEADLINE, "{} did not get ready", p.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` every 20 ms until it returns `Ok`; at the deadline fails with `what` and the last
/// `Err` (what was still missing).
pub async fn until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) if start.elapsed() > DEADLINE => panic!("timed out waiting for {what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A running `kiln serve` following the delta topic.
pub struct Replica {
    pub proc: Proc,
    pub http: u16,
    pub metrics: u16,
}

/// A running `kiln learn`.
pub struct Learner {
    pub proc: Proc,
    pub metrics: u16,
    pub epoch: u64,
}

/// A scratch directory: a copy of `ctr_wide`, snapshots, checkpoints and `learn.toml`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub snapshots: PathBuf,
    pub config: PathBuf,
    bootstrap: String,
}

impl Scratch {
    /// The learner: Kafka events in (group, 6 s sessions), FTRL without L1 (every trained key
    /// has a non-zero weight, so a published row), a 2 s join window, deltas to the topic
    /// every 20 ms or 200 touched rows, snapshots and checkpoints every second.
    pub fn new(bootstrap: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("learn_kafka_e2e")
            .tempdir()
            .unwrap();
        let repo = dir.path().join("models");
        let src = crate::common::repo_root()
            .join("examples/models")
            .join(MODEL);
        fs::create_dir_all(repo.join(MODEL).join("1")).unwrap();
        for f in ["config.toml", "1/model.safetensors"] {
            fs::copy(src.join(f), repo.join(MODEL).join(f)).unwrap();
        }
        let snapshots = dir.path().join("snapshots");
        let config = dir.path().join("learn.toml");
        let text = format!(
            r#"name = "{LEARNER}"
model_dir = "{model}"
[sources.kafka]
brokers = "{bootstrap}"
impressions_topic = "{IMPRESSIONS}"
actions_topic = "{ACTIONS}"
group_id = "kiln-learn-e2e"
properties = {{ "session.timeout.ms" = "6000", "max.poll.interval.ms" = "10000" }}
[labels]
positive = ["click"]
[join]
window_ms = 2000
orphan_hold_ms = 2000
[trainer]
kind = "ftrl"
[trainer.ftrl]
alpha = 0.1
beta = 1.0
l1 = 0.0
l2 = 1.0
[publish]
interval_ms = 20
max_rows = 200
kafka = {{ brokers = "{bootstrap}" }}
snapshot_dir = "{snapshots}"
snapshot_interval_s = 1
[checkpoint]
dir = "{checkpoints}"
interval_s = 1
[metrics]
addr = "127.0.0.1:0"
"#,
            model = repo.join(MODEL).display(),
            snapshots = snapshots.display(),
            checkpoints = dir.path().join("checkpoints").display(),
        );
        fs::write(&config, text).unwrap();
        Scratch {
            dir,
            repo,
            snapshots,
            config,
            bootstrap: bootstrap.to_string(),
        }
    }

    /// Starts `kiln serve` (`name` names its files), following the delta topic, restoring the
    /// learner's latest snapshot first when `snapshots`.
    pub async fn serve(&self, name: &str, snapshots: bool) -> Replica {
        let ready_file = self.dir.path().join(format!("{name}.ready.json"));
        let mut args: Vec<String> = [
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ]
        .map(String::from)
        .into();
        args.push("--model-repository".into());
        args.push(self.repo.display().to_string());
        args.push("--ready-file".into());
        args.push(ready_file.display().to_string());
        args.push("--delta-source".into());
        args.push(format!("kafka://{}", self.bootstrap));
        if snapshots {
            args.push("--delta-snapshot-dir".into());
            args.push(self.snapshots.display().to_string());
        }
        let mut proc = spawn(self.dir.path(), name, &args);
        let v = ready(&ready_file, &mut proc).await;
        Replica {
            http: v["http_port"].as_u64().expect("http_port") as u16,
            metrics: v["metrics_port"].as_u64().expect("metrics_port") as u16,
            proc,
        }
    }

    /// Starts `kiln learn --config learn.toml` (`name` names its files).
    pub async fn learn(&self, name: &str) -> Learner {
        let ready_file = self.dir.path().join(format!("{name}.ready.json"));
        let args = [
            "learn".to_string(),
            "--config".into(),
            self.config.display().to_string(),
            "--ready-file".into(),
            ready_file.display().to_string(),
        ];
        let mut proc = spawn(self.dir.path(), name, &args);
        let v = ready(&ready_file, &mut proc).await;
        Learner {
            metrics: v["metrics_port"].as_u64().expect("metrics_port") as u16,
            epoch: v["epoch"].as_u64().expect("epoch"),
            proc,
        }
    }

    /// `(table, key)` of every id of each of `impressions` (a key repeats as often as its id
    /// does), as the learner hashes them: its own featurizer over the model's spec, that is
    /// `kiln_recsys::features::key_of`.
    pub fn sample_keys(&self, impressions: &[String]) -> Vec<Vec<(String, u64)>> {
        let cfg = LearnConfig::load(&self.config).expect("learn.toml");
        let model = cfg.model().expect("the model");
        let mut f = Featurizer::new(&model, &cfg.features);
        let mut out = Vec::with_capacity(impressions.len());
        for line in impressions {
            let Ok(Event::Impression(imp)) = parse_line(line.as_bytes()) else {
                panic!("not an impression: {line}");
            };
            let sample = f.featurize(&imp, 0).expect("featurizes");
            let mut ids = Vec::new();
            for (feat, keys) in model.spec.sparse.iter().zip(sample.keys) {
                let table = &model.spec.tables[feat.table].name;
                ids.extend(keys.into_iter().map(|k| (table.clone(), k)));
            }
            out.push(ids);
        }
        out
    }

    /// Per table, the keys of `impressions`.
    pub fn keys(&self, impressions: &[String]) -> Keys {
        let mut out = Keys::new();
        for (table, key) in self.sample_keys(impressions).into_iter().flatten() {
            out.entry(table).or_default().insert(key);
        }
        out
    }

    /// The offsets of the snapshot `LATEST` names (None while there is none, or it is being
    /// replaced).
    pub fn latest_snapshot_offsets(&self) -> Option<BTreeMap<String, i64>> {
        let base = self.snapshots.join(MODEL);
        let n = fs::read_to_string(base.join("LATEST")).ok()?;
        let text = fs::read_to_string(base.join(n.trim()).join("manifest.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        serde_json::from_value(v["offsets"].clone()).ok()
    }
}

/// One impression's features.
#[derive(Clone, Debug)]
pub struct Probe {
    pub user: String,
    pub item: String,
    pub genres: Vec<String>,
    pub hour: i64,
}

impl Probe {
    /// Every input padding: the served logit is the bias alone.
    pub fn padding() -> Probe {
        Probe {
            user: String::new(),
            item: String::new(),
            genres: Vec::new(),
            hour: -1,
        }
    }

    /// The same features for another user.
    pub fn with_user(&self, user: &str) -> Probe {
        Probe {
            user: user.into(),
            ..self.clone()
        }
    }

    /// The impression event `id` at `ts_ms`.
    pub fn impression(&self, id: &str, ts_ms: u64) -> String {
        json!({"type": "impression", "id": id, "ts_ms": ts_ms, "features": {
            "user_id": self.user, "item_id": self.item, "genres": self.genres, "hour": self.hour}})
        .to_string()
    }
}

/// Impressions and their clicks.
pub struct Burst {
    pub probes: Vec<Probe>,
    pub impressions: Vec<String>,
    pub actions: Vec<String>,
}

/// `n` impressions timed now, ids `<tag>-<i>`, a deterministic stream per `seed`: 40 users,
/// 80 items, two of 6 genres, 24 hours; users and items of the same parity click more.
pub fn burst(tag: &str, n: usize, seed: u64) -> Burst {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let genres = ["Comedy", "Drama", "Action", "Crime", "Sci-Fi", "Romance"];
    let now = now_ms();
    let mut b = Burst {
        probes: Vec::new(),
        impressions: Vec::new(),
        actions: Vec::new(),
    };
    for i in 0..n {
        let (u, it) = (next() % 40, next() % 80);
        let p = Probe {
            user: format!("user-{u}"),
            item: format!("item-{it}"),
            genres: vec![
                genres[(next() % 6) as usize].into(),
                genres[(next() % 6) as usize].into(),
            ],
            hour: (next() % 24) as i64,
        };
        let id = format!("{tag}-{i}");
        let ts = now + i as u64 / 10;
        b.impressions.push(p.impression(&id, ts));
        if next() % 100 < if (u + it) % 2 == 0 { 60 } else { 15 } {
            b.actions.push(
                json!({"type": "action", "id": id, "ts_ms": ts + 30, "action": "click"})
                    .to_string(),
            );
        }
        b.probes.push(p);
    }
    b
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
