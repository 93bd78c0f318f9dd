//! Row buffers: a growable `Vec` for hashed shards, and for direct shards a fixed part of one
//! zeroed anonymous mapping per table, aligned to 2 MiB and advised for transparent huge
//! pages before it is first touched (a `Vec` cannot promise that alignment, and the
//! allocator's zeroing would touch every page first, fixing them to 4 KiB pages). One
//! mapping rather than one per shard, so shards smaller than a huge page still share them.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::hash::advise_huge_pages;

/// Element types whose all-zero bit pattern is the value zero.
///
/// # Safety
/// Implementors must be plain data for which all-zero bytes are a valid value.
pub(crate) unsafe trait ZeroBits: Copy {}
// SAFETY: 0u32 bits are +0.0.
unsafe impl ZeroBits for f32 {}
// SAFETY: 0u16 bits are +0.0.
unsafe impl ZeroBits for half::f16 {}

const HUGE: usize = 2 << 20;

/// One zeroed anonymous mapping for the fixed rows of all of a direct table's shards, aligned
/// to 2 MiB and advised for huge pages before anything touches it; shards own disjoint parts.
pub(crate) struct Region {
    #[cfg(target_os = "linux")]
    map: *mut libc::c_void,
    #[cfg(target_os = "linux")]
    map_len: usize,
    start: *mut u8,
    bytes: usize,
    /// Fallback storage where no mapping was made.
    _heap: Vec<u64>,
}

// SAFETY: the region is plain memory owned by its `Arc`; shards access disjoint parts of it
// under their own locks (see `Buf`).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `bytes` zero bytes.
    pub fn zeroed(bytes: usize) -> Arc<Self> {
        #[cfg(target_os = "linux")]
        if bytes >= HUGE {
            let map_len = bytes.next_multiple_of(HUGE) + HUGE;
            // SAFETY: a fresh private anonymous mapping; checked for failure below.
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if map != libc::MAP_FAILED {
                let start = (map as usize).next_multiple_of(HUGE);
                // SAFETY: [start, start + bytes rounded up to 2 MiB) lies inside the mapping;
                // the advice changes only how the kernel backs it.
                unsafe {
                    libc::madvise(
                        start as *mut libc::c_void,
                        bytes.next_multiple_of(HUGE),
                        libc::MADV_HUGEPAGE,
                    );
                }
                return Arc::new(Region {
                    map,
                    map_len,
                    start: start as *mut u8,
                    bytes,
                    _heap: Vec::new(),
                });
            }
        }
        let mut heap = vec![0u64; bytes.div_ceil(8)];
        Arc::new(Region {
            #[cfg(target_os = "linux")]
            map: std::ptr::null_mut(),
            #[cfg(target_os = "linux")]
            map_len: 0,
            start: heap.as_mut_ptr() as *mut u8,
            bytes,
            _heap: heap,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if !self.map.is_null() {
            // SAFETY: the mapping was created by `zeroed` and is unmapped once.
            unsafe {
                libc::munmap(self.map, self.map_len);
            }
        }
    }
}

/// Row elements of one shard: a growable `Vec` (hashed shards) or a fixed part of a
/// [`Region`] (direct shards).
pub(crate) enum Buf<T> {
    Heap(Vec<T>),
    Fixed {
        ptr: *mut T,
        len: usize,
        _region: Arc<Region>,
    },
}

// SAFETY: a `Fixed` buffer is the only handle to its part of the region, owned like a `Vec`;
// shared access only reads.
unsafe impl<T: Send> Send for Buf<T> {}
// SAFETY: as above; `&Buf` gives only `&[T]`.
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T: ZeroBits> Buf<T> {
    /// `len` elements of `region` from byte `offset`; every shard of a table gets a disjoint
    /// range, and nothing else hands out parts of a region.
    pub fn fixed(region: &Arc<Region>, offset: usize, len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        assert!(offset + bytes <= region.bytes, "range outside the region");
        assert_eq!(offset % std::mem::align_of::<T>(), 0, "misaligned range");
        Buf::Fixed {
            // SAFETY: in bounds (checked above).
            ptr: unsafe { region.start.add(offset) } as *mut T,
            len,
            _region: region.clone(),
        }
    }
}

impl<T: Clone> Buf<T> {
    /// An empty growable buffer with room for `cap` elements.
    pub fn growable(cap: usize) -> Self {
        let v = Vec::with_capacity(cap);
        advise_huge_pages(&v);
        Buf::Heap(v)
    }

    /// Appends `n` copies of `value`; when that needs a larger buffer, the new one is advised
    /// for huge pages before its free part is touched. Fixed buffers never grow.
    pub fn grow(&mut self, n: usize, value: T) {
        match self {
            Buf::Heap(v) => {
                if v.len() + n > v.capacity() {
                    v.reserve(v.capacity().max(n * 64));
                    advise_huge_pages(v);
                }
                v.resize(v.len() + n, value);
            }
            Buf::Fixed { .. } => unreachable!("fixed row buffers do not grow"),
        }
    }
}

impl<T> Buf<T> {
    /// Bytes reserved.
    pub fn capacity_bytes(&self) -> usize {
        match self {
            Buf::Heap(v) => v.capacity() * std::mem::size_of::<T>(),
            Buf::Fixed { len, .. } => len * std::mem::size_of::<T>(),
        }
    }
}

impl<T> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buf::Heap(v) => v,
            // SAFETY: `ptr` points at `len` initialized (zeroed or written) elements.
            Buf::Fixed { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Buf::Heap(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            Buf::Fixed { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }
}
