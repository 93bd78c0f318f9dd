//! Deterministic datasets of many small files (and a few large ones) for the dataset cache's
//! tests: the same bytes on every run, so a file read back can be compared with its source.

use std::path::Path;

/// Deterministic bytes for file `seed` of `len` bytes (xorshift).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `n` small files (`min..max` bytes) in 10 class folders plus `large` (path, size) files
/// under `root`; returns every relative path.
pub fn make_dataset(
    root: &Path,
    n: usize,
    min: usize,
    max: usize,
    large: &[(&str, usize)],
) -> Vec<String> {
    let mut paths = Vec::new();
    for i in 0..n {
        let len = min + (content(i as u64 + 7, 8)[0] as usize * 257 + i * 31) % (max - min + 1);
        let rel = format!("class_{:02}/img_{:06}.bin", i % 10, i);
        write(root, &rel, &content(i as u64, len));
        paths.push(rel);
    }
    for (j, (rel, size)) in large.iter().enumerate() {
        write(root, rel, &content(1_000_000 + j as u64, *size));
        paths.push((*rel).to_string());
    }
    paths
}

/// Writes one file, creating parents.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}
