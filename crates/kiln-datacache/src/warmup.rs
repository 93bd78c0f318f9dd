//! Warm-up: metadata first (the tree is already loaded), then every selected file fetched into
//! the disk tier by N concurrent workers, with a live progress bar. "Complete" is checked: at the
//! end every file is read back from the disk tier and verified (size, ETag, checksum); files that
//! do not verify are fetched once more, and counted as failed if they still do not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cache::{DataCache, FileRef};
use crate::meta::MetaTree;

/// Which files to warm.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// Only paths starting with this prefix (relative to the source root).
    pub prefix: Option<String>,
    /// Exactly these paths (relative to the source root); takes precedence over `prefix`.
    pub paths: Option<Vec<String>>,
}

/// Live counters of a warm-up, readable while it runs (admin endpoint, progress bar).
#[derive(Debug, Default)]
pub struct WarmupProgress {
    /// Whether a warm-up is running.
    pub running: AtomicBool,
    /// Files selected.
    pub planned_files: AtomicU64,
    /// Bytes selected.
    pub planned_bytes: AtomicU64,
    /// Files fetched and verified so far (before the final check).
    pub done: AtomicU64,
    /// Files that failed.
    pub failed: AtomicU64,
    /// Files already in the cache.
    pub skipped: AtomicU64,
    /// Bytes processed (fetched or found cached).
    pub bytes: AtomicU64,
    /// Report of the last finished warm-up.
    pub last: Mutex<Option<WarmupReport>>,
}

/// A failed file and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WarmupFailure {
    /// Path relative to the source root.
    pub path: String,
    /// The error.
    pub error: String,
}

/// Final report of a warm-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WarmupReport {
    /// Files selected.
    pub planned: u64,
    /// Files fetched and verified in the disk tier.
    pub done: u64,
    /// Files that could not be fetched or verified.
    pub failed: u64,
    /// Files already cached (verified, not fetched).
    pub skipped: u64,
    /// Bytes selected.
    pub bytes_planned: u64,
    /// Bytes fetched from the remote.
    pub bytes_fetched: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
    /// Files fetched per second (done / elapsed).
    pub files_per_sec: f64,
    /// Up to 50 failures.
    pub failures: Vec<WarmupFailure>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Skipped,
    Failed,
}

/// Runs a warm-up of `sel` over `tree` with `threads` concurrent fetches. Never fails as a whole:
/// per-file errors are in the report.
pub async fn warmup(
    data: &DataCache,
    tree: &MetaTree,
    sel: &Selection,
    threads: usize,
    progress: &WarmupProgress,
    show_bar: bool,
) -> WarmupReport {
    let started = Instant::now();
    let metrics = data.metrics().clone();
    let mut failures = Vec::new();
    let mut files: Vec<(String, FileRef)> = Vec::new();
    match &sel.paths {
        Some(paths) => {
            for p in paths {
                let p = p.trim_start_matches('/');
                match tree
                    .resolve(p)
                    .and_then(|i| tree.node(i).copied())
                    .filter(|n| !n.is_dir())
                {
                    Some(n) => files.push((
                        p.to_string(),
                        FileRef {
                            key: n.key,
                            size: n.size,
                            etag: n.etag,
                        },
                    )),
                    None => failures.push(WarmupFailure {
                        path: p.to_string(),
                        error: "not in the dataset listing".into(),
                    }),
                }
            }
        }
        None => {
            let prefix = sel.prefix.as_deref().unwrap_or("").trim_start_matches('/');
            for i in tree.file_indices() {
                let path = tree.path(i);
                if path.starts_with(prefix) {
                    let n = tree
                        .node(i)
                        .copied()
                        .unwrap_or_else(|| unreachable!("index from file_indices"));
                    files.push((
                        path,
                        FileRef {
                            key: n.key,
                            size: n.size,
                            etag: n.etag,
                        },
                    ));
                }
            }
        }
    }
    let planned = (files.len() + failures.len()) as u64;
    let bytes_planned: u64 = files.iter().map(|(_, f)| f.size).sum();
    for (c, v) in [
        (&progress.planned_files, planned),
        (&progress.planned_bytes, bytes_planned),
        (&progress.done, 0),
        (&progress.failed, failures.len() as u64),
        (&progress.skipped, 0),
        (&progress.bytes, 0),
    ] {
        c.store(v, Ordering::Relaxed);
    }
    progress.running.store(true, Ordering::Relaxed);
    metrics.warmup_planned_files.set(planned as i64);
    let bar = progress_bar(planned, show_bar);
    bar.inc(failures.len() as u64);
    tracing::info!(
        files = planned,
        bytes = bytes_planned,
        threads,
        "warm-up started"
    );

    let fetched_total = AtomicU64::new(0);
    let flush_counter = AtomicU64::new(0);
    let (bar_ref, fetched, since_flush, m): (
        &ProgressBar,
        &AtomicU64,
        &AtomicU64,
        &crate::metrics::Metrics,
    ) = (&bar, &fetched_total, &flush_counter, &metrics);
    let run_one = move |path: String, f: FileRef, force: bool| {
        let (bar, metrics) = (bar_ref, m);
        async move {
            if !force && data.indexed_on_disk(&f) {
                progress.bytes.fetch_add(f.size, Ordering::Relaxed);
                progress.skipped.fetch_add(1, Ordering::Relaxed);
                update_bar(bar, progress, started);
                return (path, f, Outcome::Skipped, None);
            }
            let r = data.fetch_to_disk(&f, &path).await;
            let (outcome, err) = match r {
                Ok(n) => {
                    fetched.fetch_add(n, Ordering::Relaxed);
                    metrics.warmup_bytes.inc_by(n);
                    progress.bytes.fetch_add(n, Ordering::Relaxed);
                    if since_flush.fetch_add(n, Ordering::Relaxed) > 64 << 20 {
                        since_flush.store(0, Ordering::Relaxed);
                        data.flush().await;
                    }
                    (Outcome::Done, None)
                }
                Err(e) => (Outcome::Failed, Some(e.to_string())),
            };
            let counter = if outcome == Outcome::Done {
                &progress.done
            } else {
                &progress.failed
            };
            if !force {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            update_bar(bar, progress, started);
            (path, f, outcome, err)
        }
    };

    let first: Vec<_> = futures::stream::iter(files)
        .map(|(p, f)| run_one(p, f, false))
        .buffer_unordered(threads.max(1))
        .collect()
        .await;
    data.flush().await;
    bar.set_message("verifying the disk tier");
    let mut results = Vec::with_capacity(first.len());
    let mut retry = Vec::new();
    let verified: Vec<_> = futures::stream::iter(first)
        .map(|(p, f, o, e)| async move {
            let ok = o != Outcome::Failed && data.verify_on_disk(&f).await;
            (p, f, o, e, ok)
        })
        .buffer_unordered(threads.max(1))
        .collect()
        .await;
    for (p, f, o, e, ok) in verified {
        match (o, ok) {
            (_, true) => results.push((p, o, None)),
            (Outcome::Failed, _) => retry.push((p, f, e)),
            _ => retry.push((
                p,
                f,
                Some("not held by the disk tier after the fetch".to_string()),
            )),
        }
    }
    if !retry.is_empty() {
        tracing::info!(
            files = retry.len(),
            "warm-up: fetching files that did not verify once more"
        );
        let again: Vec<_> = futures::stream::iter(retry)
            .map(|(p, f, _)| run_one(p, f, true))
            .buffer_unordered(threads.max(1))
            .collect()
            .await;
        data.flush().await;
        for (p, f, o, e) in again {
            let ok = o != Outcome::Failed && data.verify_on_disk(&f).await;
            let err =
                e.unwrap_or_else(|| "not held by the disk tier after a second fetch".to_string());
            results.push(if ok {
                (p, Outcome::Done, None)
            } else {
                (p, Outcome::Failed, Some(err))
            });
        }
    }

    let mut report = WarmupReport {
        planned,
        bytes_planned,
        ..Default::default()
    };
    report.failed = failures.len() as u64;
    for (path, o, e) in results {
        match o {
            Outcome::Done => report.done += 1,
            Outcome::Skipped => report.skipped += 1,
            Outcome::Failed => {
                report.failed += 1;
                if failures.len() < 50 {
                    failures.push(WarmupFailure {
                        path,
                        error: e.unwrap_or_default(),
                    });
                }
            }
        }
    }
    for (state, n) in [
        ("done", report.done),
        ("skipped", report.skipped),
        ("failed", report.failed),
    ] {
        for _ in 0..n {
            metrics.warmup_file(state);
        }
    }
    progress.done.store(report.done, Ordering::Relaxed);
    progress.skipped.store(report.skipped, Ordering::Relaxed);
    progress.failed.store(report.failed, Ordering::Relaxed);
    report.bytes_fetched = fetched_total.load(Ordering::Relaxed);
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.files_per_sec = report.done as f64 / report.elapsed_secs.max(1e-9);
    report.failures = failures;
    bar.finish_and_clear();
    progress.running.store(false, Ordering::Relaxed);
    *progress.last.lock() = Some(report.clone());
    tracing::info!(
        done = report.done,
        failed = report.failed,
        skipped = report.skipped,
        bytes = report.bytes_fetched,
        elapsed_s = report.elapsed_secs,
        "warm-up finished"
    );
    report
}

/// A progress bar over `files` drawn on stderr (hidden when `show` is false or stderr is not a tty).
pub fn progress_bar(files: u64, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(files), target);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files {msg} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Sets the bar position and its message (bytes, rate) from the counters.
pub fn update_bar(bar: &ProgressBar, p: &WarmupProgress, started: Instant) {
    let files = p.done.load(Ordering::Relaxed)
        + p.failed.load(Ordering::Relaxed)
        + p.skipped.load(Ordering::Relaxed);
    let bytes = p.bytes.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_position(files.max(bar.position()));
    bar.set_message(format!(
        "{:.1}/{:.1} MB {:.1} MB/s {:.0} files/s",
        bytes as f64 / 1e6,
        p.planned_bytes.load(Ordering::Relaxed) as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        files as f64 / secs
    ));
}

/// Shared handle for a warm-up running inside the daemon.
pub type SharedProgress = Arc<WarmupProgress>;
