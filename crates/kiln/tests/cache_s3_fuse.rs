//! The dataset cache end to end over S3 on loopback (moto in server mode) and a real FUSE mount:
//! a generated dataset of 10k small files plus large ones; every file read through the mount is
//! byte-identical to the source; concurrent readers; warm-up through the daemon; remote hung and
//! then stopped: cached files still read, uncached ones fail with EIO in bounded time; restart
//! reuses the disk tier; the built `kiln cache mount` unmounts cleanly on SIGTERM, and the stale
//! mount a SIGKILLed one leaves is cleaned on the next mount.
//!
//! Needs FUSE (`/dev/fuse`, and root or `fusermount3`) and a Python with moto
//! (`scripts/setup-python.sh`); without them the test is skipped with a message, except when
//! `CI` is set, where it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_datacache::admin::{self, WarmupRequest};
use kiln_datacache::cache::CacheConfig;
use kiln_datacache::mount::{is_mountpoint, run_mount, MountConfig};
use kiln_datacache::service::ServiceConfig;
use kiln_datacache::source::{Credentials, SourceConfig, SourceSpec};
use kiln_datacache::warmup::Selection;
use kiln_testkit::dataset::{content, make_dataset, write};
use kiln_testkit::moto::{self, Moto};

const BUCKET: &str = "datasets";
const PREFIX: &str = "train/";
/// Bound on waiting for a mount, a daemon or a warm-up.
const PATIENCE: Duration = Duration::from_secs(120);

/// Service configuration for `source` with small test sizes.
fn service_config(source: &str, endpoint: &str, dir: &Path, block_size: u64) -> ServiceConfig {
    ServiceConfig {
        source: SourceConfig {
            spec: SourceSpec::parse(source).expect("source"),
            endpoint: Some(endpoint.to_string()),
            region: "us-east-1".into(),
            credentials: Credentials {
                access_key_id: Some(moto::KEY.into()),
                secret_access_key: Some(moto::SECRET.into()),
                session_token: None,
            },
            request_timeout: Duration::from_secs(2),
            retries: 2,
            hdfs_user: None,
        },
        cache: CacheConfig {
            dir: dir.to_path_buf(),
            memory_bytes: 64 << 20,
            disk_bytes: 512 << 20,
            block_size,
            readahead_blocks: 2,
            read_timeout: Duration::from_secs(4),
        },
        manifest: None,
        meta_ttl: Duration::from_secs(3600),
    }
}

struct Mounted {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<kiln_datacache::Result<()>>,
    admin: String,
}

async fn mount(svc: ServiceConfig, mnt: &Path) -> Mounted {
    let cache_dir = svc.cache.dir.clone();
    let _ = std::fs::remove_file(cache_dir.join("daemon.json"));
    let cfg = MountConfig {
        service: svc,
        mountpoint: mnt.to_path_buf(),
        fuse_threads: 8,
        kernel_ttl: Duration::from_secs(3600),
        allow_other: false,
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_mount(cfg, async move {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(info) = admin::read_daemon_info(&cache_dir) {
            return Mounted {
                stop,
                task,
                admin: info.admin.expect("admin url"),
            };
        }
        assert!(
            !task.is_finished(),
            "mount task ended early: {:?}",
            task.await
        );
        assert!(Instant::now() < deadline, "mount did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Mounted {
    async fn unmount(self) {
        let _ = self.stop.send(());
        self.task.await.expect("join").expect("clean unmount");
    }
}

/// Reads `paths` under `mnt` with `threads` threads and compares each with the local copy.
fn read_and_compare(mnt: &Path, src: &Path, paths: &[String], threads: usize) {
    let chunks: Vec<Vec<String>> = paths
        .chunks(paths.len().div_ceil(threads).max(1))
        .map(|c| c.to_vec())
        .collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            s.spawn(move || {
                for p in chunk {
                    let got =
                        std::fs::read(mnt.join(&p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
                    let want = std::fs::read(src.join(&p)).unwrap();
                    assert!(
                        got == want,
                        "{p}: {} bytes differ from the source ({} bytes)",
                        got.len(),
                        want.len()
                    );
                }
            });
        }
    });
}

/// Waits for the running warm-up to end and returns its report.
async fn wait_warmup(admin_url: &str) -> kiln_datacache::warmup::WarmupReport {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = admin::warmup_progress(admin_url).await.unwrap();
        if !s.running {
            return s.last.expect("report");
        }
        assert!(
            Instant::now() < deadline,
            "warm-up still running after {PATIENCE:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_dataset_through_fuse() {
    let test = "s3_dataset_through_fuse";
    let Some(py) = kiln_testkit::python(test, moto::MODULES) else {
        return;
    };
    if !kiln_testkit::fuse_available(test) {
        return;
    }
    let started = Instant::now();
    let moto = Moto::start(&py);
    let src = tempfile::tempdir().unwrap();
    let large = [
        ("large/a.bin", 5 << 20),
        ("large/b.bin", (3 << 20) + 12_345),
        ("large/c.bin", 2 << 20),
    ];
    let mut paths = make_dataset(src.path(), 10_000, 1_000, 8_000, &large);
    // files never read while the remote is up (for the remote-down checks)
    for i in 0..20 {
        write(
            src.path(),
            &format!("cold/{i}.bin"),
            &content(5_000 + i, 3_000),
        );
    }
    moto.upload(src.path(), BUCKET, PREFIX);
    eprintln!(
        "{test}: dataset of {} files uploaded in {:.1}s",
        paths.len() + 20,
        started.elapsed().as_secs_f64()
    );

    let cache = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let svc = service_config(&url, &moto.endpoint, cache.path(), 1 << 20);
    let m = mount(svc.clone(), mnt.path()).await;
    let mntp = mnt.path().to_path_buf();

    // listing through the mount equals the source
    let mut all = paths.clone();
    all.extend((0..20).map(|i| format!("cold/{i}.bin")));
    all.sort();
    let listed = tokio::task::spawn_blocking({
        let m = mntp.clone();
        move || walk(&m)
    })
    .await
    .unwrap();
    assert_eq!(listed, all);

    // cold reads through FUSE (misses) for the large files and 1,500 small ones, 8 threads
    let mut cold: Vec<String> = paths
        .iter()
        .filter(|p| p.starts_with("large/"))
        .cloned()
        .collect();
    cold.extend(paths.iter().step_by(6).take(1_500).cloned());
    let (m2, s2, c2) = (mntp.clone(), src.path().to_path_buf(), cold.clone());
    tokio::task::spawn_blocking(move || read_and_compare(&m2, &s2, &c2, 8))
        .await
        .unwrap();
    let st = admin::fetch_stats(&m.admin).await.unwrap().stats;
    assert!(st.miss_files >= 1_500, "{st:?}");

    // concurrent readers of one large file that is not in memory yet: each block fetched once
    let before = admin::fetch_stats(&m.admin)
        .await
        .unwrap()
        .stats
        .remote_reads;
    let big = vec!["large/b.bin".to_string(); 8];
    let (m2, s2) = (mntp.clone(), src.path().to_path_buf());
    tokio::task::spawn_blocking(move || read_and_compare(&m2, &s2, &big, 8))
        .await
        .unwrap();
    let after = admin::fetch_stats(&m.admin)
        .await
        .unwrap()
        .stats
        .remote_reads;
    assert!(
        after - before <= 4,
        "large/b.bin has 4 blocks, fetched {} times",
        after - before
    );

    // warm-up of the rest through the running daemon: metadata first, then data, checked
    paths.retain(|p| !p.starts_with("cold/"));
    let sel = Selection {
        prefix: Some("class_".into()),
        paths: None,
    };
    admin::start_warmup(
        &m.admin,
        &WarmupRequest {
            selection: sel,
            threads: 16,
        },
    )
    .await
    .unwrap();
    let report = wait_warmup(&m.admin).await;
    assert_eq!((report.planned, report.failed), (10_000, 0), "{report:?}");
    assert_eq!(report.done + report.skipped, 10_000, "{report:?}");
    assert!(
        report.skipped >= 1_400,
        "files read through the mount were already cached: {report:?}"
    );
    // the large files were read through the mount only; a block read that way reaches the disk
    // tier on a best-effort basis (the disk engine drops writes while its buffers are full), so
    // warm them too: afterwards each is verified on disk, which the restart below relies on
    admin::start_warmup(
        &m.admin,
        &WarmupRequest {
            selection: Selection {
                prefix: Some("large/".into()),
                paths: None,
            },
            threads: 4,
        },
    )
    .await
    .unwrap();
    let report = wait_warmup(&m.admin).await;
    assert_eq!((report.planned, report.failed), (3, 0), "{report:?}");

    // every file through the mount, byte-identical, 8 concurrent readers
    let (m2, s2, p2) = (mntp.clone(), src.path().to_path_buf(), paths.clone());
    tokio::task::spawn_blocking(move || read_and_compare(&m2, &s2, &p2, 8))
        .await
        .unwrap();

    // remote hung (SIGSTOP): cached files keep being served, uncached ones fail in bounded time
    moto.signal(libc::SIGSTOP);
    let (m2, s2, p2) = (
        mntp.clone(),
        src.path().to_path_buf(),
        paths[..2_000].to_vec(),
    );
    let t = Instant::now();
    tokio::task::spawn_blocking(move || read_and_compare(&m2, &s2, &p2, 8))
        .await
        .unwrap();
    eprintln!(
        "{test}: 2,000 cached files with the remote hung in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let m2 = mntp.clone();
    let err = tokio::task::spawn_blocking(move || std::fs::read(m2.join("cold/0.bin")))
        .await
        .unwrap()
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "uncached read with the remote hung took {took:?}"
    );
    eprintln!(
        "{test}: uncached read with the remote hung failed with EIO after {:.2}s",
        took.as_secs_f64()
    );
    let st = admin::fetch_stats(&m.admin).await.unwrap().stats;
    assert!(
        st.read_errors >= 1 && st.read_timeouts + st.remote_read_errors >= 1,
        "{st:?}"
    );
    moto.signal(libc::SIGCONT);
    m.unmount().await;
    assert!(!is_mountpoint(&mntp), "unmounted");

    // remote stopped; restart the mount: metadata from the snapshot, data from the disk tier
    drop(moto);
    let m = mount(svc.clone(), mnt.path()).await;
    let (m2, s2, p2) = (mntp.clone(), src.path().to_path_buf(), paths.clone());
    tokio::task::spawn_blocking(move || read_and_compare(&m2, &s2, &p2, 8))
        .await
        .unwrap();
    let st = admin::fetch_stats(&m.admin).await.unwrap().stats;
    assert_eq!(st.remote_reads, 0, "restart reused the disk tier: {st:?}");
    assert!(st.hit_bytes_disk > 0, "{st:?}");
    let t = Instant::now();
    let m2 = mntp.clone();
    let err = tokio::task::spawn_blocking(move || std::fs::read(m2.join("cold/1.bin")))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let metrics = kiln_testkit::http_client()
        .get(format!("{}/metrics", m.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "kiln_cache_hit_bytes_total",
        "kiln_cache_remote_request_duration_seconds_bucket",
        "kiln_cache_tier_bytes",
        "kiln_cache_evictions_total",
        "kiln_cache_warmup_files_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    m.unmount().await;

    // a daemon process: SIGTERM unmounts cleanly; SIGKILL leaves a stale mount that the next mount cleans
    for (sig, clean) in [(libc::SIGTERM, true), (libc::SIGKILL, false)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "cache",
                "mount",
                "--source",
                &url,
                "--endpoint",
                "http://127.0.0.1:9",
                "--cache-dir",
            ])
            .arg(cache.path())
            .args([
                "--memory-size",
                "64MiB",
                "--disk-size",
                "512MiB",
                "--block-size",
                "1MiB",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .arg(&mntp)
            .envs(moto::aws_env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !is_mountpoint(&mntp) {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "daemon did not mount"
            );
            // a test thread polling a child process, not a runtime thread
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            std::fs::read(mntp.join(&paths[0])).unwrap(),
            std::fs::read(src.path().join(&paths[0])).unwrap()
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        if clean {
            assert!(status.success(), "daemon exit after SIGTERM: {status:?}");
            assert!(!is_mountpoint(&mntp), "SIGTERM left the mount behind");
        } else {
            let e = std::fs::metadata(&mntp).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOTCONN),
                "a killed daemon leaves a stale mount"
            );
        }
    }
    let m = mount(svc, mnt.path()).await;
    assert_eq!(
        std::fs::read(mntp.join(&paths[1])).unwrap(),
        std::fs::read(src.path().join(&paths[1])).unwrap()
    );
    m.unmount().await;
    eprintln!("{test}: done in {:.1}s", started.elapsed().as_secs_f64());
}
