//! Memory of the metadata cache per million files, measured with a counting allocator: the
//! resident tree after the build, and the transient peak while building it from a listing.
//! Only the test thread's allocations count: the harness's own threads allocate at any time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_datacache::meta::{MetaTree, RawEntry};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

fn measured() -> bool {
    MEASURED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !measured() {
            // SAFETY: same layout contract as the caller's.
            return unsafe { System.alloc(l) };
        }
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if measured() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn metadata_bytes_per_million_files() {
    const N: usize = 1_000_000;
    let base = LIVE.load(Ordering::Relaxed);
    // 1,000 class folders x 1,000 files, names like ImageNet's (n01440764/n01440764_10026.JPEG)
    let entries = (0..N).map(|i| RawEntry {
        path: format!(
            "train/n{:08}/n{:08}_{:05}.JPEG",
            i / 1000,
            i / 1000,
            i % 1000
        ),
        size: 110_000,
        mtime: 1_700_000_000,
        etag: Some(format!("\"{:032x}\"", i)),
    });
    PEAK.store(base, Ordering::Relaxed);
    MEASURED.set(true);
    let tree = MetaTree::build(entries);
    MEASURED.set(false);
    let resident = LIVE.load(Ordering::Relaxed).wrapping_sub(base);
    let peak = PEAK.load(Ordering::Relaxed).wrapping_sub(base);
    assert_eq!(tree.file_count(), N as u64);
    let per_file = resident as f64 / N as f64;
    eprintln!(
        "metadata cache: {N} files -> {:.1} MB resident ({per_file:.1} bytes/file, names avg {:.1} bytes), \
         {:.1} MB peak while building",
        resident as f64 / 1e6,
        (tree.heap_bytes() - tree.len() * 48) as f64 / tree.len() as f64,
        peak as f64 / 1e6
    );
    assert_eq!(resident, tree.heap_bytes());
    assert!(per_file < 80.0, "{per_file} bytes per file");
    let f = tree
        .resolve("train/n00000999/n00000999_00999.JPEG")
        .expect("lookup");
    assert_eq!(tree.node(f).unwrap().size, 110_000);
}
