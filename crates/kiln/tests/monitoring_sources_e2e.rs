//! Monitoring end to end, the data sources `monitoring_e2e.rs` has not: a real Prometheus
//! (Debian's `prometheus`, 1 s scrapes, the project's alert rules shortened as there) scrapes
//!
//! - `kiln serve --delta-source kafka://...` and `kiln learn` reading its events from Kafka and
//!   publishing to the delta topic, over the test Kafka-protocol broker: every panel about the
//!   delta topic and the learner's consumer lag, and the seconds since the last applied delta,
//!   return data; and the `KilnDeltaLagging` expression, its threshold lowered, finds the model
//!   with the seconds since its last delta;
//! - `kiln cache mount` (FUSE) of a local directory, warmed in part and read through the mount:
//!   every panel of the dataset cache dashboard returns data.
//!
//! With `monitoring_e2e.rs`, every panel of the three dashboards is checked to return data
//! (`panels::feed` says which test feeds which query). Without the Debian packages, the broker
//! or FUSE, a test is skipped with a message, except under `CI`, where it fails.

mod common;
#[allow(unused_imports)]
mod learn_common;
#[allow(unused_imports)]
mod learn_kafka;
mod monitoring_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_datacache::mount::is_mountpoint;
use kiln_testkit::dataset::make_dataset;
use kiln_testkit::kafka::Broker;
use learn_common::pause;
use learn_kafka::{burst, produce, producer, Scratch, ACTIONS, DELTAS, IMPRESSIONS, MODEL};
use monitoring_common::{
    all_queries, binaries, feed, prometheus, query, shorten_rules, wait_for_panels,
    wait_targets_up, Feed, PanelQuery,
};

/// How long the panels' queries may take to all return data.
const QUERY_PATIENCE: Duration = Duration::from_secs(90);
/// How long a mount, a warm-up or an unmount may take.
const PATIENCE: Duration = Duration::from_secs(60);
/// Where Prometheus would send alerts: nothing listens there (no alert is expected to fire).
const NO_ALERTMANAGER: u16 = 9;

/// The project's alert rules, shortened for a test, written under `dir`.
fn test_rules(dir: &Path) -> (String, PathBuf) {
    let src = kiln_testkit::repo_root().join("deploy/alerts/prometheus-rules.yaml");
    let rules = fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let path = dir.join("rules.yaml");
    fs::write(&path, shorten_rules(&rules)).unwrap();
    (rules, path)
}

/// The queries of the panels that `which` feeds.
fn queries_fed_by(which: impl Fn(&str, &str) -> bool) -> Vec<PanelQuery> {
    all_queries(&kiln_testkit::repo_root())
        .into_iter()
        .filter(|(board, _, expr)| which(board, expr))
        .collect()
}

/// The expression of `alert` in a plain rules file, with its threshold (a line `> N`) made
/// `>= 0` so that it answers with the value it compares.
fn alert_expr_without_threshold(rules: &str, alert: &str) -> String {
    let mut lines = rules
        .lines()
        .skip_while(|l| l.trim() != format!("- alert: {alert}"))
        .skip(1)
        .skip_while(|l| l.trim() != "expr: |");
    let head = lines.next().unwrap_or_else(|| panic!("no expr of {alert}"));
    let indent = head.len() - head.trim_start().len();
    let mut thresholds = 0;
    let expr: Vec<&str> = lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(|l| match l.trim().strip_prefix("> ") {
            Some(n) if n.parse::<f64>().is_ok() => {
                thresholds += 1;
                ">= 0"
            }
            _ => l.trim(),
        })
        .collect();
    assert_eq!(thresholds, 1, "{alert}: one `> N` line: {expr:?}");
    expr.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_topic_panels_return_data() {
    let test = "monitoring end-to-end test of the delta topic";
    let bins = match binaries() {
        Ok(b) => b,
        Err(why) => return kiln_testkit::skip(test, why),
    };
    let Some(broker) = Broker::start(test) else {
        return;
    };
    for topic in [IMPRESSIONS, ACTIONS, DELTAS] {
        broker.create_topic(topic, 1);
    }
    let boot = broker.bootstrap();
    let s = Scratch::new(&boot);
    let replica = s.serve("serve", false).await;
    let learner = s.learn("learn").await;
    let (rules, rules_path) = test_rules(s.dir.path());
    let prom = prometheus(
        &bins.prometheus,
        s.dir.path(),
        &rules_path,
        NO_ALERTMANAGER,
        &[
            ("kiln-serve", replica.metrics),
            ("kiln-learn", learner.metrics),
        ],
    );
    // events the learner turns into deltas, and a message on the delta topic that is none
    let events = producer(&boot);
    let b = burst("mon", 400, 1);
    let bytes = |lines: &[String]| -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.clone().into_bytes()).collect()
    };
    produce(&events, IMPRESSIONS, None, &bytes(&b.impressions)).await;
    produce(&events, ACTIONS, None, &bytes(&b.actions)).await;
    produce(&events, DELTAS, Some("user_id"), &[b"not a delta".to_vec()]).await;

    let port = prom.port;
    let queries = queries_fed_by(|board, expr| {
        feed(board, expr) == Feed::DeltaTopic || expr.contains("kiln_delta_last_applied")
    });
    let lagging = alert_expr_without_threshold(&rules, "KilnDeltaLagging");
    tokio::task::spawn_blocking(move || {
        wait_targets_up(port, 2);
        wait_for_panels(port, &queries, QUERY_PATIENCE);
        // the alert's joins hold on the labels a real scrape gives
        let r = query(port, &lagging).unwrap_or_else(|e| panic!("{lagging}: {e}"));
        let seconds: Vec<f64> = r
            .iter()
            .filter(|s| s["metric"]["model"] == MODEL)
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        assert!(
            matches!(seconds[..], [s] if (0.0..600.0).contains(&s)),
            "KilnDeltaLagging without its threshold: {r:?}"
        );
    })
    .await
    .expect("the checks");
}

/// A running `kiln cache mount`, unmounted (SIGTERM) on drop; its log is printed when the test
/// failed.
struct CacheMount {
    child: Child,
    log: PathBuf,
    mnt: PathBuf,
    /// Its admin endpoint, `http://127.0.0.1:PORT`.
    admin: String,
    /// The admin endpoint's port (`/metrics`).
    port: u16,
}

impl CacheMount {
    /// Mounts `src` (a local directory) at `dir/mnt` with its cache in `dir/cache`: small tiers,
    /// 64 KiB blocks, the admin endpoint on a loopback port 0.
    fn start(src: &Path, dir: &Path) -> CacheMount {
        let (mnt, cache, log) = (dir.join("mnt"), dir.join("cache"), dir.join("cache.log"));
        fs::create_dir_all(&mnt).unwrap();
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["cache", "mount", "--source"])
            .arg(format!("file://{}", src.display()))
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--memory-size", "8MiB", "--disk-size", "64MiB"])
            .args(["--block-size", "64KiB", "--admin-addr", "127.0.0.1:0"])
            .arg(&mnt)
            .env("KILN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start kiln cache mount");
        let mut m = CacheMount {
            child,
            log,
            mnt,
            admin: String::new(),
            port: 0,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let admin = kiln_datacache::admin::read_daemon_info(&cache).and_then(|d| d.admin);
            if let Some(admin) = admin.filter(|_| is_mountpoint(&m.mnt)) {
                m.port = admin
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                m.admin = admin;
                return m;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("kiln cache mount exited with {status}");
            }
            assert!(Instant::now() < deadline, "kiln cache mount did not mount");
            pause(50);
        }
    }
}

impl Drop for CacheMount {
    fn drop(&mut self) {
        // SAFETY: kill sends a signal to our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            pause(50);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mountpoint(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- kiln cache mount log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Runs `kiln args...` to its end (at most [`PATIENCE`]) and checks that it succeeded.
fn kiln(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start kiln");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "kiln {args:?}: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln {args:?} did not finish in {PATIENCE:?}");
        }
        pause(50);
    }
}

#[test]
fn dataset_cache_panels_return_data() {
    let test = "monitoring end-to-end test of the dataset cache";
    let bins = match binaries() {
        Ok(b) => b,
        Err(why) => return kiln_testkit::skip(test, why),
    };
    if !kiln_testkit::fuse_available(test) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("monitoring_cache")
        .tempdir()
        .unwrap();
    let src = dir.path().join("remote");
    let paths = make_dataset(&src, 200, 1 << 10, 16 << 10, &[("large/a.bin", 1 << 20)]);
    let mount = CacheMount::start(&src, dir.path());
    let (_, rules) = test_rules(dir.path());
    let prom = prometheus(
        &bins.prometheus,
        dir.path(),
        &rules,
        NO_ALERTMANAGER,
        &[("kiln-cache", mount.port)],
    );
    wait_targets_up(prom.port, 1);
    // one class warmed through the daemon: its reads hit, the others' first reads miss
    kiln(&[
        "cache",
        "warmup",
        "--admin",
        &mount.admin,
        "--prefix",
        "class_00",
        "--no-progress",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, mnt, src) = (stop.clone(), mount.mnt.clone(), src.clone());
        std::thread::spawn(move || {
            for p in paths.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let got = fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
                let want = fs::metadata(src.join(p)).unwrap().len();
                assert_eq!(got.len() as u64, want, "{p} read through the mount");
                pause(10);
            }
        })
    };
    let queries = queries_fed_by(|board, expr| feed(board, expr) == Feed::DatasetCache);
    wait_for_panels(prom.port, &queries, QUERY_PATIENCE);
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader");
    drop(mount);
}
