//! Harness of the `kiln learn` end-to-end tests: a scratch copy of `ctr_wide`, generated
//! events, the built `kiln serve` and `kiln learn` started on port 0, HTTP with the admin
//! token, and the checks both tests share.

#![allow(dead_code)]

mod checks;
pub use checks::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_learn::config::LearnConfig;
use kiln_learn::event::{parse_line, Event};
use kiln_learn::featurize::Featurizer;
use serde_json::{json, Value};

/// The served bias of `ctr_wide` (`wide.bias`), unchanged without dense versions.
pub const BIAS: f32 = -1.5;
pub(crate) const TOKEN: &str = "s3cret";
pub(crate) const MODEL: &str = "ctr_wide";

/// A child process killed on drop, its log printed when the test failed.
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill sends a signal to our own child's pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                pause(50);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A test thread waiting on child processes, not a runtime thread.
pub fn pause(ms: u64) {
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(Duration::from_millis(ms));
}

/// A running `kiln serve`.
pub struct Server {
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

impl Learner {
    /// SIGTERM (it checkpoints on the way out), and wait for it to exit.
    pub fn stop(&mut self) {
        // SAFETY: kill sends a signal to our own child's pid.
        unsafe { libc::kill(self.proc.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                assert!(status.success(), "kiln learn exited with {status}");
                return;
            }
            pause(50);
        }
        panic!("kiln learn did not stop on SIGTERM");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// An impression used as a probe: its features, also sent to the server.
pub struct ProbeEvent {
    pub user: String,
    pub item: String,
    pub genres: Vec<String>,
    pub hour: i64,
}

impl ProbeEvent {
    pub fn new(user: &str, item: &str, genres: &[&str], hour: i64) -> Self {
        ProbeEvent {
            user: user.into(),
            item: item.into(),
            genres: genres.iter().map(|g| g.to_string()).collect(),
            hour,
        }
    }

    fn line(&self, id: &str, ts: u64) -> String {
        json!({"type": "impression", "id": id, "ts_ms": ts, "features": {
            "user_id": self.user, "item_id": self.item, "genres": self.genres, "hour": self.hour}})
        .to_string()
    }

    /// Its impression and a click on it at `ts`.
    pub fn lines(&self, ts: u64) -> Vec<String> {
        vec![
            self.line("probe-imp", ts),
            json!({"type": "action", "id": "probe-imp", "ts_ms": ts + 10, "action": "click"})
                .to_string(),
        ]
    }

    /// `(table, key)` of each of its ids.
    pub fn keys(&self, t: &Setup) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (table, keys) in t.featurize(&self.line("probe", 1)) {
            out.extend(keys.into_iter().map(|k| (table.clone(), k)));
        }
        out
    }
}

/// A scratch directory with a copy of `ctr_wide`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub events: PathBuf,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `n` impressions (and their clicks) of a deterministic stream; `seed` varies it.
pub fn events(n: usize, seed: u64) -> Vec<String> {
    events_from(n, seed, now_ms() - 900_000)
}

/// [`events`] with the first impression at `base` (ms since the Unix epoch).
pub fn events_from(n: usize, seed: u64, base: u64) -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let genres = ["Comedy", "Drama", "Action", "Crime", "Sci-Fi", "Romance"];
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (u, it) = (next() % 40, next() % 80);
        let g1 = genres[(next() % 6) as usize];
        let g2 = genres[(next() % 6) as usize];
        let ts = base + 20 * i as u64;
        let id = format!("imp-{seed}-{i}");
        out.push(
            json!({"type": "impression", "id": id, "ts_ms": ts, "features": {
                "user_id": format!("user-{u}"), "item_id": format!("item-{it}"),
                "genres": [g1, g2], "hour": (i / 50 % 24) as i64}})
            .to_string(),
        );
        // users and items of the same parity click more often
        let p = if (u + it) % 2 == 0 { 60 } else { 15 };
        if next() % 100 < p {
            out.push(
                json!({"type": "action", "id": id, "ts_ms": ts + 50, "action": "click"})
                    .to_string(),
            );
        }
    }
    out
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
        let repo = dir.path().join("models");
        let src = kiln_testkit::repo_root()
            .join("examples/models")
            .join(MODEL);
        fs::create_dir_all(repo.join(MODEL).join("1")).unwrap();
        fs::copy(
            src.join("config.toml"),
            repo.join(MODEL).join("config.toml"),
        )
        .unwrap();
        fs::copy(
            src.join("1/model.safetensors"),
            repo.join(MODEL).join("1/model.safetensors"),
        )
        .unwrap();
        let events = dir.path().join("events.jsonl");
        Setup { dir, repo, events }
    }

    /// Appends `lines` to the event file.
    pub fn append_events(&self, lines: &[String]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.events)
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    /// The samples the latest checkpoint says were learned in all.
    pub fn checkpointed_samples(&self) -> u64 {
        let dir = self.dir.path().join("checkpoints");
        let n = fs::read_to_string(dir.join("LATEST")).unwrap();
        let state = fs::read_to_string(dir.join(format!("ckpt-{}", n.trim())).join("state.json"));
        let v: Value = serde_json::from_str(&state.unwrap()).unwrap();
        v["samples"].as_u64().unwrap()
    }

    /// Writes the events, then the probe's impression and click (the last events).
    pub fn write_events(&self, events: &[String], probe: &ProbeEvent) {
        let _ = fs::remove_file(&self.events);
        self.append_events(events);
        self.append_events(&probe.lines(now_ms() - 60_000));
    }

    /// A `learn.toml` publishing to the server on `http` every `interval_ms` or `max_rows`.
    pub fn learn_toml(&self, http: u16, interval_ms: u64, max_rows: usize, ckpt_s: u64) -> PathBuf {
        self.learn_toml_with(http, interval_ms, max_rows, ckpt_s, "")
    }

    /// [`Setup::learn_toml`] with more `[publish]` lines.
    pub fn learn_toml_with(
        &self,
        http: u16,
        interval_ms: u64,
        max_rows: usize,
        ckpt_s: u64,
        publish_extra: &str,
    ) -> PathBuf {
        let text = format!(
            r#"name = "ctr-learner"
model_dir = "{model}"
[sources]
jsonl = ["{events}"]
follow = true
[labels]
positive = ["click"]
[join]
window_ms = 1000
orphan_hold_ms = 1000
[trainer]
kind = "ftrl"
[trainer.ftrl]
alpha = 0.1
beta = 1.0
l1 = 0.0
l2 = 1.0
[publish]
interval_ms = {interval_ms}
max_rows = {max_rows}
endpoints = [{{ url = "http://127.0.0.1:{http}" }}]
{publish_extra}
[checkpoint]
dir = "{ckpt}"
interval_s = {ckpt_s}
"#,
            model = self.repo.join(MODEL).display(),
            events = self.events.display(),
            ckpt = self.dir.path().join("checkpoints").display(),
        );
        let path = self.dir.path().join("learn.toml");
        fs::write(&path, text).unwrap();
        path
    }

    fn config(&self) -> LearnConfig {
        let path = self.dir.path().join("learn.toml");
        LearnConfig::parse(&fs::read_to_string(&path).unwrap(), "learn.toml").unwrap()
    }

    /// Table name -> keys of one impression line, as the learner hashes them.
    pub fn featurize(&self, line: &str) -> Vec<(String, Vec<u64>)> {
        let cfg = self.config();
        let model = cfg.model().unwrap();
        let mut f = Featurizer::new(&model, &cfg.features);
        let Ok(Event::Impression(imp)) = parse_line(line.as_bytes()) else {
            panic!("not an impression: {line}");
        };
        let s = f.featurize(&imp, 0).unwrap();
        model
            .spec
            .sparse
            .iter()
            .zip(s.keys)
            .map(|(feat, keys)| (model.spec.tables[feat.table].name.clone(), keys))
            .collect()
    }

    /// Every key the events and the probe touch, per table.
    pub fn keys(&self, events: &[String], probe: &ProbeEvent) -> BTreeMap<String, BTreeSet<u64>> {
        let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for line in events.iter().filter(|l| l.contains("\"impression\"")) {
            for (t, keys) in self.featurize(line) {
                out.entry(t).or_default().extend(keys);
            }
        }
        for (t, k) in probe.keys(self) {
            out.entry(t).or_default().insert(k);
        }
        out
    }

    /// Starts `kiln serve` with `token` on the scratch repository.
    pub fn serve(&self, token: &str) -> Server {
        self.serve_with(token, &[])
    }

    /// [`Setup::serve`] with more flags.
    pub fn serve_with(&self, token: &str, more: &[&str]) -> Server {
        let ready = self.dir.path().join("serve-ready.json");
        let repo = self.repo.display().to_string();
        let ready_path = ready.display().to_string();
        let mut args = vec![
            "serve",
            "--model-repository",
            &repo,
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--admin-token",
            token,
            "--ready-file",
            &ready_path,
        ];
        args.extend_from_slice(more);
        let proc = spawn("kiln serve", self.dir.path().join("serve.log"), &args);
        let v = wait_ready(&ready, &proc);
        Server {
            http: v["http_port"].as_u64().unwrap() as u16,
            metrics: v["metrics_port"].as_u64().unwrap() as u16,
            proc,
        }
    }

    /// Starts `kiln learn --config cfg` (`tag` names its log and ready files).
    pub fn learn(&self, cfg: &Path, tag: &str) -> Learner {
        let ready = self.dir.path().join(format!("learn-{tag}-ready.json"));
        let proc = spawn(
            "kiln learn",
            self.dir.path().join(format!("learn-{tag}.log")),
            &[
                "learn",
                "--config",
                &cfg.display().to_string(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--admin-token",
                TOKEN,
                "--ready-file",
                &ready.display().to_string(),
            ],
        );
        let v = wait_ready(&ready, &proc);
        Learner {
            metrics: v["metrics_port"].as_u64().unwrap() as u16,
            epoch: v["epoch"].as_u64().unwrap(),
            proc,
        }
    }
}

fn spawn(name: &'static str, log: PathBuf, args: &[&str]) -> Proc {
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_LOG", "info")
        .env("KILN_PYTHON", "/nonexistent/python")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start kiln");
    Proc { child, log, name }
}

fn wait_ready(path: &Path, proc: &Proc) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(v) = fs::read_to_string(path)
            .map_err(|_| ())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|_| ()))
        {
            return v;
        }
        pause(50);
    }
    panic!(
        "{} did not get ready:\n{}",
        proc.name,
        fs::read_to_string(&proc.log).unwrap_or_default()
    );
}
