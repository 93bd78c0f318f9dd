//! The trainer's open-addressing row store: one entry per key holding the key, the last update
//! time, flags and the row, inline, so one key costs one cache line (a dim-1 FTRL entry is
//! 32 bytes: key, seconds, flags, `[w, z, n]`, one spare word). Linear probing from a
//! `mix64` of the key, load factor at most 1/2, backward-shift deletion (no tombstone slots),
//! entries aligned so none straddles a cache line. Owned by one thread: no locks.

use kiln_embed::mix64;

pub(crate) const OCCUPIED: u32 = 1;
pub(crate) const DIRTY: u32 = 2;
pub(crate) const MARK: u32 = 4;
/// Words before the row in an entry: key (2), seconds, flags.
const HEAD: usize = 4;
/// Entries start on this many words (a cache line) from the base.
const LINE_WORDS: usize = 16;

pub(crate) struct Slots {
    data: Vec<u32>,
    /// Words skipped at the start of `data` so entries are cache-line aligned.
    base: usize,
    /// Words per entry.
    stride: usize,
    width: usize,
    mask: usize,
    len: usize,
}

/// Reads `words` as f32 (the row part of an entry).
#[inline(always)]
fn as_f32(words: &[u32]) -> &[f32] {
    // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is a valid
    // f32; the lifetime and length are those of `words`.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()) }
}

#[inline(always)]
fn as_f32_mut(words: &mut [u32]) -> &mut [f32] {
    // SAFETY: as in `as_f32`, and the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<f32>(), words.len()) }
}

impl Slots {
    /// Room for `cap` entries (a power of two) of rows of `width` f32.
    pub fn new(width: usize, cap: usize) -> Self {
        let need = HEAD + width;
        // a power of two up to a line (so entries never straddle one), else whole lines
        let stride = if need <= LINE_WORDS {
            need.next_power_of_two()
        } else {
            need.next_multiple_of(LINE_WORDS)
        };
        let data = super::huge_vec(cap * stride + LINE_WORDS, 0u32);
        let misalign = (data.as_ptr() as usize / 4) % LINE_WORDS;
        Slots {
            base: (LINE_WORDS - misalign) % LINE_WORDS,
            data,
            stride,
            width,
            mask: cap - 1,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        self.base + i * self.stride
    }

    #[inline(always)]
    pub fn key(&self, i: usize) -> u64 {
        let a = self.at(i);
        self.data[a] as u64 | (self.data[a + 1] as u64) << 32
    }

    #[inline(always)]
    pub fn flags(&self, i: usize) -> u32 {
        self.data[self.at(i) + 3]
    }

    #[inline(always)]
    pub fn flags_mut(&mut self, i: usize) -> &mut u32 {
        let a = self.at(i);
        &mut self.data[a + 3]
    }

    #[inline(always)]
    pub fn secs(&self, i: usize) -> u32 {
        self.data[self.at(i) + 2]
    }

    #[inline(always)]
    pub fn set_secs(&mut self, i: usize, secs: u32) {
        let a = self.at(i);
        self.data[a + 2] = secs;
    }

    #[inline(always)]
    pub fn row(&self, i: usize) -> &[f32] {
        let a = self.at(i) + HEAD;
        as_f32(&self.data[a..a + self.width])
    }

    #[inline(always)]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let a = self.at(i) + HEAD;
        as_f32_mut(&mut self.data[a..a + self.width])
    }

    #[inline(always)]
    pub fn home(&self, key: u64) -> usize {
        self.home_of(mix64(key))
    }

    #[inline(always)]
    fn home_of(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// Starts loading the entry where the probe of a key of hash `hash` (`mix64(key)`) begins,
    /// and the next entry when it starts a new cache line: about 1 key in 6 is not in its home
    /// slot at a load factor near 1/2 (linear probing), and its probe reads the next entry.
    #[inline(always)]
    pub fn prefetch_hashed(&self, hash: u64) {
        let i = self.home_of(hash);
        super::prefetch(self.data.as_ptr().wrapping_add(self.at(i)));
        if ((i + 1) * self.stride).is_multiple_of(LINE_WORDS) {
            let j = (i + 1) & self.mask;
            super::prefetch(self.data.as_ptr().wrapping_add(self.at(j)));
        }
    }

    /// `Ok(slot)` of `key`, or `Err(free slot)` where it would go.
    #[inline(always)]
    pub fn probe(&self, key: u64) -> Result<usize, usize> {
        self.probe_hashed(key, mix64(key))
    }

    /// [`Slots::probe`] given `hash = mix64(key)`.
    #[inline(always)]
    pub fn probe_hashed(&self, key: u64, hash: u64) -> Result<usize, usize> {
        let mut i = self.home_of(hash);
        loop {
            if self.flags(i) & OCCUPIED == 0 {
                return Err(i);
            }
            if self.key(i) == key {
                return Ok(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Writes a new entry (zero row) into the free slot `i` found by [`Slots::probe`].
    #[inline]
    pub fn fill(&mut self, i: usize, key: u64, secs: u32, flags: u32) {
        let a = self.at(i);
        self.data[a] = key as u32;
        self.data[a + 1] = (key >> 32) as u32;
        self.data[a + 2] = secs;
        self.data[a + 3] = flags | OCCUPIED;
        self.len += 1;
    }

    /// A copy with `cap` slots holding the same entries (slots change).
    pub fn resized(&self, cap: usize) -> Slots {
        let mut next = Slots::new(self.width, cap);
        for i in self.occupied() {
            let Err(j) = next.probe(self.key(i)) else {
                unreachable!("keys are unique")
            };
            let (a, b) = (self.at(i), next.at(j));
            next.data[b..b + HEAD + self.width]
                .copy_from_slice(&self.data[a..a + HEAD + self.width]);
            next.len += 1;
        }
        next
    }

    /// Slots holding an entry, in slot order.
    pub fn occupied(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.capacity()).filter(|&i| self.flags(i) & OCCUPIED != 0)
    }

    /// Removes the entry in slot `hole`; later entries of its probe run move back.
    pub fn remove(&mut self, mut hole: usize) {
        let words = HEAD + self.width;
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask;
            if self.flags(i) & OCCUPIED == 0 {
                break;
            }
            let home = self.home(self.key(i));
            // the entry at `i` stays unless its home lies cyclically in (hole, i]
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                let (from, to) = (self.at(i), self.at(hole));
                self.data.copy_within(from..from + words, to);
                hole = i;
            }
        }
        let a = self.at(hole);
        self.data[a..a + words].fill(0);
        self.len -= 1;
    }
}
