//! Cache-core tests on a `file://` source: no Python, no FUSE needed. Whole-file and block caching,
//! read-ahead, coalesced misses, restart reusing the disk tier, stale and corrupt blocks, warm-up
//! report counts.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_datacache::cache::FileRef;
use kiln_datacache::service::CacheService;
use kiln_datacache::warmup::{warmup, Selection, WarmupProgress};

fn file_ref(svc: &CacheService, path: &str) -> FileRef {
    let (_, tree) = svc.meta.current();
    let n = *tree
        .node(tree.resolve(path).expect("path in tree"))
        .expect("node");
    FileRef {
        key: n.key,
        size: n.size,
        etag: n.etag,
    }
}

async fn read_all(svc: &CacheService, path: &str) -> Vec<u8> {
    let f = file_ref(svc, path);
    let mut out = Vec::new();
    let mut off = 0;
    while off < f.size {
        let b = svc
            .data
            .read(&f, path, off, 128 * 1024)
            .await
            .expect("read");
        assert!(!b.is_empty());
        off += b.len() as u64;
        out.extend_from_slice(&b);
    }
    out
}

async fn open(src: &Path, cache: &Path, block: u64) -> CacheService {
    let url = format!("file://{}", src.display());
    CacheService::open(common::service_config(&url, None, cache, block))
        .await
        .expect("open service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_whole_then_restart_reuses_disk_tier() {
    let (src, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let paths = common::make_dataset(src.path(), 300, 100, 20_000, &[]);
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    let mut want = Vec::new();
    for p in &paths {
        let got = read_all(&svc, p).await;
        let expected = std::fs::read(src.path().join(p)).unwrap();
        assert_eq!(got, expected, "{p}");
        want.push(expected);
    }
    assert_eq!(svc.metrics.remote_reads(), 300, "one GET per small file");
    // read again: memory hits, no remote request
    for p in &paths[..50] {
        read_all(&svc, p).await;
    }
    assert_eq!(svc.metrics.remote_reads(), 300);
    svc.close().await.unwrap();
    drop(svc);

    // restart with the source gone: metadata comes from the snapshot, data from the disk tier
    std::fs::remove_dir_all(src.path()).unwrap();
    std::fs::create_dir_all(src.path()).unwrap();
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    for (p, w) in paths.iter().zip(&want) {
        assert_eq!(&read_all(&svc, p).await, w, "{p} after restart");
    }
    let s = svc.metrics.snapshot();
    assert_eq!(s.remote_reads, 0, "restart must not refetch: {s:?}");
    assert!(s.hit_bytes_disk > 0, "{s:?}");
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_blocks_readahead_and_coalesced_misses() {
    let (src, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let size = (1 << 20) + 123;
    common::write(src.path(), "big/file.bin", &common::content(42, size));
    common::write(src.path(), "hot.bin", &common::content(43, 50_000));
    let svc = Arc::new(open(src.path(), cache.path(), 64 * 1024).await);
    // sequential reader in 16 KiB steps over 17 blocks of 64 KiB
    let f = file_ref(&svc, "big/file.bin");
    let mut got = Vec::new();
    let mut off = 0;
    while off < f.size {
        let b = svc
            .data
            .read(&f, "big/file.bin", off, 16 * 1024)
            .await
            .unwrap();
        off += b.len() as u64;
        got.extend_from_slice(&b);
    }
    assert_eq!(got, common::content(42, size));
    // a read spanning blocks
    let b = svc
        .data
        .read(&f, "big/file.bin", 60_000, 100_000)
        .await
        .unwrap();
    assert_eq!(&b[..], &common::content(42, size)[60_000..160_000]);
    // the count is final once the read-ahead the reads started has finished
    tokio::time::timeout(Duration::from_secs(30), svc.data.readahead_settled())
        .await
        .expect("read-ahead settles");
    assert_eq!(svc.data.readahead_in_flight(), 0);
    assert_eq!(
        svc.metrics.remote_reads(),
        17,
        "each block fetched once despite read-ahead"
    );

    // 32 concurrent readers of one missing file: one remote request
    let before = svc.metrics.remote_reads();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let f = file_ref(&svc, "hot.bin");
                svc.data.read(&f, "hot.bin", 0, 1 << 20).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], &common::content(43, 50_000)[..]);
    }
    assert_eq!(svc.metrics.remote_reads() - before, 1);
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_object_is_detected_and_refetched() {
    let (src, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write(src.path(), "a.bin", &common::content(1, 10_000));
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    assert_eq!(read_all(&svc, "a.bin").await, common::content(1, 10_000));
    // the object changes remotely; a refresh brings the new size into the metadata
    common::write(src.path(), "a.bin", &common::content(2, 12_000));
    svc.refresh().await.unwrap();
    assert_eq!(read_all(&svc, "a.bin").await, common::content(2, 12_000));
    let s = svc.metrics.snapshot();
    assert_eq!(s.stale_blocks, 1, "{s:?}");
    assert_eq!(s.remote_reads, 2);
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_disk_block_is_detected_and_refetched() {
    let (src, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = common::content(9, 256 * 1024);
    common::write(src.path(), "x.bin", &data);
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    assert_eq!(read_all(&svc, "x.bin").await, data);
    svc.close().await.unwrap();
    drop(svc);
    // flip bytes inside every copy of the entry's payload in the device files
    let mut corrupted = 0;
    let needle = &data[100_000..100_064];
    for e in std::fs::read_dir(cache.path().join("blocks")).unwrap() {
        use std::os::unix::fs::FileExt;
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        for (at, _) in bytes.windows(64).enumerate().filter(|(_, w)| *w == needle) {
            f.write_all_at(&[0x5a; 4096], at as u64).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted >= 1, "the block was on disk");
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    assert_eq!(
        read_all(&svc, "x.bin").await,
        data,
        "corruption never reaches the reader"
    );
    let s = svc.metrics.snapshot();
    assert_eq!(s.corrupt_blocks, 1, "{s:?}");
    assert_eq!(s.remote_reads, 1, "refetched once");
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_report_counts() {
    let (src, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let paths = common::make_dataset(src.path(), 100, 100, 5_000, &[("big/one.bin", 3 << 20)]);
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    let (_, tree) = svc.meta.current();
    let mut list: Vec<String> = paths[..60].to_vec();
    list.extend((0..5).map(|i| format!("missing/{i}.bin")));
    let p = WarmupProgress::default();
    let r = warmup(
        &svc.data,
        &tree,
        &Selection {
            prefix: None,
            paths: Some(list),
        },
        4,
        &p,
        false,
    )
    .await;
    assert_eq!(
        (r.planned, r.done, r.failed, r.skipped),
        (65, 60, 5, 0),
        "{r:?}"
    );
    assert_eq!(r.failures.len(), 5);
    // everything: the 60 are verified in place, the other 41 fetched
    let r = warmup(&svc.data, &tree, &Selection::default(), 4, &p, false).await;
    assert_eq!(
        (r.planned, r.done, r.failed, r.skipped),
        (101, 41, 0, 60),
        "{r:?}"
    );
    // a prefix
    let r = warmup(
        &svc.data,
        &tree,
        &Selection {
            prefix: Some("class_03/".into()),
            paths: None,
        },
        4,
        &p,
        false,
    )
    .await;
    assert_eq!(
        (r.planned, r.done, r.failed, r.skipped),
        (10, 0, 0, 10),
        "{r:?}"
    );
    // a file that disappears from the remote after listing fails
    std::fs::remove_file(src.path().join("big/one.bin")).unwrap();
    svc.data.flush().await;
    let s = svc.metrics.snapshot();
    assert_eq!(
        (s.warmup_done, s.warmup_failed, s.warmup_skipped),
        (101, 5, 70)
    );
    svc.close().await.unwrap();
    drop(svc);
    // restart: the disk tier still holds all of it
    let svc = open(src.path(), cache.path(), 1 << 20).await;
    let (_, tree) = svc.meta.current();
    let r = warmup(&svc.data, &tree, &Selection::default(), 4, &p, false).await;
    assert_eq!((r.done, r.failed, r.skipped), (0, 0, 101), "{r:?}");
    svc.close().await.unwrap();
}
