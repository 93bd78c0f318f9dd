//! What the shrink-safe shared-memory path costs. A region of an object that may shrink (every
//! `shm_open` object) is read with `pread` into an owned buffer and written with `pwrite`; a
//! region of an object sealed against shrinking (a memfd with `F_SEAL_SHRINK`) is mapped and
//! read as a zero-copy view. Measured per tensor size, both paths in the same run:
//!
//! - `read`: [`Regions::read`] alone (the mapped path returns a view and copies nothing);
//! - `read_copy`: the read plus one copy of the bytes, which is what the scheduler does when it
//!   packs a request into a batch, so the view's saving is the pread copy, not the batch copy;
//! - `write`: [`Regions::write`] of an output.
//!
//! Run: `cargo bench -p kiln-server --bench shm`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_protocol::shm::ShmRef;
use kiln_server::shm::Regions;
use std::fs::File;
use std::hint::black_box;
use std::os::fd::FromRawFd;
use std::time::Duration;

/// A memfd of `size` bytes filled with a pattern, sealed against shrinking when `seal`.
fn memfd(size: usize, seal: bool) -> File {
    // SAFETY: plain libc calls; the descriptor is owned by the File.
    let f = unsafe {
        let fd = libc::memfd_create(c"kiln-bench".as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        File::from_raw_fd(fd)
    };
    let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).expect("fill");
    if seal {
        // SAFETY: adds a seal to a descriptor we own.
        let r = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK,
            )
        };
        assert_eq!(r, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    }
    f
}

fn bench(c: &mut Criterion) {
    let regions = Regions::new(true);
    let sizes = [4usize << 10, 64 << 10, 1 << 20, 16 << 20];
    for &size in &sizes {
        regions
            .register_file(
                &format!("mapped-{size}"),
                "memfd:sealed",
                memfd(size, true),
                0,
                size as u64,
            )
            .expect("register sealed");
        regions
            .register_file(
                &format!("pread-{size}"),
                "memfd:open",
                memfd(size, false),
                0,
                size as u64,
            )
            .expect("register unsealed");
    }
    let at = |path: &str, size: usize| ShmRef {
        region: format!("{path}-{size}"),
        offset: 0,
        byte_size: size as u64,
    };
    let what = "input 'x'";
    for op in ["read", "read_copy", "write"] {
        let mut g = c.benchmark_group(format!("shm_{op}"));
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for &size in &sizes {
            g.throughput(Throughput::Bytes(size as u64));
            let out = vec![7u8; size];
            for path in ["mapped", "pread"] {
                let r = at(path, size);
                g.bench_with_input(BenchmarkId::new(path, size), &r, |b, r| match op {
                    "read" => b.iter(|| black_box(regions.read(r, &what).unwrap())),
                    "read_copy" => b.iter(|| {
                        let v = regions.read(r, &what).unwrap();
                        black_box(v.to_vec())
                    }),
                    _ => b.iter(|| regions.write(r, black_box(&out), &what).unwrap()),
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
