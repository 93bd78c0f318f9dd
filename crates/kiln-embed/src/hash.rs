//! Key hashing, deterministic pseudo-random values and prefetch hints.

/// A 64-bit finalizer (the murmur3 / splitmix64 mix): keys are often small
/// consecutive integers, so they must be mixed before choosing a shard and a bucket.
#[inline(always)]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// A uniform f32 in [-1, 1) derived from `(seed, key, index)`; used for hash-seeded default rows.
#[inline]
pub(crate) fn unit_value(seed: u64, key: u64, index: usize) -> f32 {
    let h = mix64(seed ^ mix64(key ^ mix64(index as u64 ^ 0x9e37_79b9_7f4a_7c15)));
    // 24 high bits -> [0, 1), then to [-1, 1).
    let u = (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
    2.0 * u - 1.0
}

/// Hints the CPU to load the cache line holding `p`; a no-op off x86_64.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: prefetch is only a hint; it never faults, whatever the address.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
    }
}

/// Prefetches every cache line of `bytes` bytes starting at `p`.
#[inline(always)]
pub(crate) fn prefetch_range(p: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        prefetch(p.wrapping_add(off));
        off += 64;
    }
}

/// Asks the kernel to back the not-yet-touched capacity of `v` with transparent huge pages
/// (2 MiB on x86_64). Random row and bucket reads over gigabytes otherwise miss the TLB on
/// almost every key, and each miss is a page walk that itself misses the cache. A no-op for
/// buffers under 4 MiB, off Linux, or where THP is off; the kernel's `enabled = madvise`
/// setting (the usual default) serves exactly the ranges advised here.
pub(crate) fn advise_huge_pages<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = v.capacity() * std::mem::size_of::<T>();
        if bytes < 2 * HUGE {
            return;
        }
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + bytes) & !(HUGE - 1);
        if end > aligned {
            // SAFETY: the range lies within `v`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs those pages, never their contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// A vector of `len` copies of `value` whose memory is advised for huge pages before it is
/// first written (see [`advise_huge_pages`]).
pub(crate) fn huge_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    advise_huge_pages(&v);
    v.resize(len, value);
    v
}
