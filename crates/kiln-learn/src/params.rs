//! The trainer's parameters of one served table: rows `[w | optimizer state]` (FTRL: `[w | z |
//! n]`, three columns for a dim-1 served table) in a trainer-side hash table, with the served
//! part published as deltas and snapshots in kiln-embed's formats.
//!
//! # Why not a `kiln_embed::Table` as the store
//!
//! The FTRL trainer must sustain 500k samples/s of about 40 features on one core: 20M row
//! reads and 20M row updates per second, 50 ns per key for both. Measured on the 2-vCPU AMD
//! EPYC build machine over a table of 1M dim-3 rows with uniform random keys: `Table::get_into`
//! 392 ns per key, `Table::gather` in batches of 10,240 keys 85 ns per key (its prefetch
//! pipeline), `Table::upsert` in batches of 10,240 keys 141 ns per key, `upsert` of one key
//! 3.7 us (`std::collections::HashMap::get_mut`: 642 ns). The server-side table pays for what
//! serving needs (shard locks, per-write ticks, grouping by shard, metrics); a batch through
//! gather + upsert would cost about 9 us per sample, 110k samples/s.
//!
//! So the rows live here, in an open-addressing table owned by the trainer thread
//! (`params/slots.rs`: linear probing, load factor at most 1/2, no locks, each entry's key,
//! time, flags and row inline in 32 bytes, so a key costs one cache line), backed by
//! transparent huge pages. The trainer hashes a batch's keys up front and prefetches entries
//! (and the next line when a probe may continue there) a sample's worth of keys ahead, then
//! updates rows in place, a sample's coordinates in vector lanes. Measured with
//! `benches/ftrl.rs` (40 single-id features, 1M keys drawn uniformly, batch 256, pinned to one
//! core of the same machine while other builds kept the load average at 2.5 to 5): about 0.53M
//! samples per CPU second of the trainer's thread, 1.2 to 1.5 times the previous design
//! (entries prefetched one sample ahead, scalar updates) in the same runs, 3.4 to 4.6 times a
//! `HashMap<u64, [f64; 3]>` FTRL; with 10k keys (rows in cache) about 0.83M. At 1M uniform keys
//! every key is a DRAM access (64 MB of entries): the 500k samples/s goal is met by CPU time
//! on a core of its own, by the wall clock only when the core is not shared (see
//! bench/RESULTS.md).
//!
//! Everything else is kiln-embed's:
//! - settings: the served table's [`TableConfig`] (name, dim, TTL, memory cap, storage);
//! - admission: a [`kiln_embed::AdmissionFilter`] decides whether an unseen key gets a row;
//! - snapshots: [`ParamTable::snapshot_to`] / [`ParamTable::restore`] write and read the full
//!   rows as a kiln-embed snapshot of a `width`-dim table, and [`ParamTable::served_snapshot`]
//!   writes the served columns as a snapshot that `kiln_embed::Table::restore` loads with the
//!   served table's config;
//! - deltas: [`ParamTable::drain`] gives the rows changed since the last drain (served columns)
//!   and the keys removed, the input of a `kiln_embed::Delta`.
//!
//! TTL and the memory cap follow `kiln_embed::Table::maintain`'s rules (a row not updated for
//! the TTL is removed; past the cap, the least recently updated rows go, down to
//! `evict_to` of it), at a one-second resolution, and every removed key becomes a tombstone.
//! New rows start at zero (every column). The admission filter's counts are not saved.

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{AdmissionFilter, Clock, SnapshotInfo, SystemClock, Table, TableConfig};

use crate::error::{Error, Result};
use crate::trainer::TableDelta;

mod slots;

use slots::{Slots, DIRTY, MARK};

/// Rows written per `Table::upsert` when building a snapshot table.
const CHUNK: usize = 1 << 14;
/// Bytes accounted per row against a memory cap beyond its elements (key, time, flags, and
/// the free half of the slots).
const ROW_OVERHEAD_BYTES: u64 = 32;

/// A slot of the table: stable until the next insert that grows it (see
/// [`ParamTable::reserve`]) or the next removal.
pub type Slot = u32;

/// Trainer-side rows of one served table: `[w (dim) | state (width - dim)]`.
pub struct ParamTable {
    config: TableConfig,
    width: usize,
    slots: Slots,
    filter: Option<AdmissionFilter>,
    touched: Vec<u64>,
    tombstones: Vec<u64>,
    now_secs: u32,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ParamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamTable")
            .field("table", &self.config.name)
            .field("width", &self.width)
            .field("rows", &self.slots.len())
            .finish()
    }
}

fn table_err(table: &str) -> impl FnOnce(kiln_embed::EmbedError) -> Error + '_ {
    move |source| Error::Table {
        table: table.to_string(),
        source,
    }
}

fn now_secs(clock: &dyn Clock) -> u32 {
    (clock.now_ms() / 1000).min(u32::MAX as u64) as u32
}

impl ParamTable {
    /// An empty table for the served table `served` (its name, dim and settings), rows of
    /// `width` columns (a multiple of the served dim, at least it), on the system clock.
    pub fn new(served: TableConfig, width: usize) -> Result<Self> {
        Self::with_clock(served, width, Arc::new(SystemClock))
    }

    /// [`ParamTable::new`] reading time (for the TTL) from `clock`.
    pub fn with_clock(served: TableConfig, width: usize, clock: Arc<dyn Clock>) -> Result<Self> {
        served.validate().map_err(table_err(&served.name))?;
        if width < served.dim || !width.is_multiple_of(served.dim) {
            return Err(Error::config(
                "model",
                format!("tables.{}", served.name),
                format!(
                    "trainer rows of {width} columns do not hold the served dim {}",
                    served.dim
                ),
            ));
        }
        let cap = (served.initial_rows.max(1) * 2).next_power_of_two().max(16);
        Ok(ParamTable {
            width,
            slots: Slots::new(width, cap),
            filter: None,
            touched: Vec::new(),
            tombstones: Vec::new(),
            now_secs: now_secs(clock.as_ref()),
            clock,
            config: served,
        })
    }

    /// Admits new keys only when `filter` does (`None`: every key gets a row).
    pub fn set_filter(&mut self, filter: Option<AdmissionFilter>) {
        self.filter = filter;
    }

    /// The served table's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The served dim (the `w` columns).
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Columns per row, served and state.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The served table's config.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    /// Reads the clock: rows written from now on are stamped with this time. Call it once
    /// per batch.
    pub fn tick(&mut self) {
        self.now_secs = now_secs(self.clock.as_ref());
    }

    /// Makes room for `additional` inserts without growing, so slots taken before them stay
    /// valid.
    pub fn reserve(&mut self, additional: usize) {
        let need = self.slots.len() + additional;
        if need * 2 > self.slots.capacity() {
            self.slots = self.slots.resized((need * 2).next_power_of_two());
        }
    }

    /// The hash placing `key` in a table, for [`ParamTable::prefetch_hashed`] and
    /// [`ParamTable::find_or_insert_hashed`] (a caller hashing a batch's keys once, up front).
    #[inline(always)]
    pub fn hash(key: u64) -> u64 {
        kiln_embed::mix64(key)
    }

    /// Starts loading the entry where the probe of a key of hash `hash` begins into the cache.
    #[inline(always)]
    pub fn prefetch_hashed(&self, hash: u64) {
        self.slots.prefetch_hashed(hash);
    }

    /// The slot of `key`, if it has a row.
    #[inline]
    pub fn find(&self, key: u64) -> Option<Slot> {
        self.slots.probe(key).ok().map(|i| i as Slot)
    }

    /// The slot of `key`, inserting a zero row when it has none and the admission filter (if
    /// any) admits it; `None` when refused. Grows the table past half full (invalidating
    /// slots held): [`ParamTable::reserve`] first when holding slots.
    #[inline]
    pub fn find_or_insert(&mut self, key: u64) -> Option<Slot> {
        self.find_or_insert_hashed(key, Self::hash(key))
    }

    /// [`ParamTable::find_or_insert`] given `hash` = [`ParamTable::hash`] of `key`.
    #[inline]
    pub fn find_or_insert_hashed(&mut self, key: u64, hash: u64) -> Option<Slot> {
        let mut free = match self.slots.probe_hashed(key, hash) {
            Ok(i) => return Some(i as Slot),
            Err(i) => i,
        };
        if let Some(f) = &self.filter {
            if f.observe(key) < f.min_count() {
                return None;
            }
        }
        if (self.slots.len() + 1) * 2 > self.slots.capacity() {
            self.slots = self.slots.resized(self.slots.capacity() * 2);
            free = self.slots.probe(key).expect_err("a new key");
        }
        self.slots.fill(free, key, self.now_secs, 0);
        Some(free as Slot)
    }

    /// The row in `slot` (`width` columns).
    #[inline(always)]
    pub fn row(&self, slot: Slot) -> &[f32] {
        self.slots.row(slot as usize)
    }

    /// The row in `slot`, to update it; call [`ParamTable::touch`] so it is published.
    #[inline(always)]
    pub fn row_mut(&mut self, slot: Slot) -> &mut [f32] {
        self.slots.row_mut(slot as usize)
    }

    /// Records that the row in `slot` changed now: it goes into the next drain and its TTL
    /// restarts.
    #[inline(always)]
    pub fn touch(&mut self, slot: Slot) {
        let i = slot as usize;
        self.slots.set_secs(i, self.now_secs);
        let flags = self.slots.flags_mut(i);
        if *flags & DIRTY == 0 {
            *flags |= DIRTY;
            self.touched.push(self.slots.key(i));
        }
    }

    /// Sets a scratch mark on `slot`; returns whether it was already set. The trainer marks
    /// the slots of one sample to find keys occurring twice.
    #[inline(always)]
    pub fn mark(&mut self, slot: Slot) -> bool {
        let flags = self.slots.flags_mut(slot as usize);
        let was = *flags & MARK != 0;
        *flags |= MARK;
        was
    }

    /// Clears the mark of `slot`.
    #[inline(always)]
    pub fn unmark(&mut self, slot: Slot) {
        *self.slots.flags_mut(slot as usize) &= !MARK;
    }

    /// The full row of `key`.
    pub fn get(&self, key: u64) -> Option<&[f32]> {
        self.find(key).map(|s| self.row(s))
    }

    /// The served columns of `key`.
    pub fn served(&self, key: u64) -> Option<Vec<f32>> {
        self.get(key).map(|r| r[..self.config.dim].to_vec())
    }

    /// Keys written since the last drain (before deduplication).
    pub fn pending(&self) -> usize {
        self.touched.len() + self.tombstones.len()
    }

    /// The rows changed since the last call (their served columns) and the keys removed, as
    /// one delta's content. Empty when nothing changed.
    pub fn drain(&mut self) -> TableDelta {
        let dim = self.config.dim;
        let mut touched = std::mem::take(&mut self.touched);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let mut emit = |slots: &mut Slots, i: usize| {
            let flags = slots.flags_mut(i);
            if *flags & DIRTY != 0 {
                *flags &= !DIRTY;
                keys.push(slots.key(i));
                values.extend_from_slice(&slots.row(i)[..dim]);
            }
        };
        if touched.len() * 8 > self.slots.capacity() {
            // many keys: one pass over the slots beats a probe per key
            for i in 0..self.slots.capacity() {
                emit(&mut self.slots, i);
            }
        } else {
            // a key removed since it was touched has no row (its tombstone is below); a key
            // touched twice (removed and inserted again) is emitted once
            for &key in &touched {
                if let Ok(i) = self.slots.probe(key) {
                    emit(&mut self.slots, i);
                }
            }
        }
        touched.clear();
        self.touched = touched;
        TableDelta {
            table: self.config.name.clone(),
            dim,
            keys,
            values,
            tombstones: std::mem::take(&mut self.tombstones),
        }
    }

    /// Removes `key`'s row (recording a tombstone); returns whether it had one.
    pub fn remove(&mut self, key: u64) -> bool {
        let Ok(i) = self.slots.probe(key) else {
            return false;
        };
        self.slots.remove(i);
        self.tombstones.push(key);
        true
    }

    /// Removes rows not updated for the TTL, then, past the memory cap, the least recently
    /// updated ones down to `evict_to` of it; every removed key becomes a tombstone. Returns
    /// how many rows were removed. Call it periodically.
    pub fn maintain(&mut self) -> usize {
        self.tick();
        let now = self.now_secs as u64;
        let slots = &self.slots;
        let mut doomed: Vec<u64> = match self.config.ttl {
            Some(ttl) => slots
                .occupied()
                .filter(|&i| now.saturating_sub(slots.secs(i) as u64) > ttl.as_secs())
                .map(|i| slots.key(i))
                .collect(),
            None => Vec::new(),
        };
        for &key in &doomed {
            self.remove(key);
        }
        if let Some(cap) = self.config.memory_cap_bytes {
            let max_rows = (cap / (self.width as u64 * 4 + ROW_OVERHEAD_BYTES)) as usize;
            if self.len() > max_rows {
                let keep = (max_rows as f64 * self.config.evict_to) as usize;
                let slots = &self.slots;
                let mut by_age: Vec<(u32, u64)> = slots
                    .occupied()
                    .map(|i| (slots.secs(i), slots.key(i)))
                    .collect();
                let n = self.len() - keep;
                by_age.select_nth_unstable(n - 1);
                let before = doomed.len();
                doomed.extend(by_age[..n].iter().map(|&(_, k)| k));
                for &key in &doomed[before..] {
                    self.remove(key);
                }
            }
        }
        doomed.len()
    }

    /// A kiln-embed table (the served config) holding the served columns of every row.
    pub fn served_table(&self) -> Result<Table> {
        self.build_table(self.config.clone(), self.config.dim)
    }

    fn build_table(&self, mut config: TableConfig, cols: usize) -> Result<Table> {
        config.initial_rows = self.len();
        config.ttl = None;
        config.memory_cap_bytes = None;
        let table = Table::new(config).map_err(table_err(&self.config.name))?;
        let (mut keys, mut values) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK * cols));
        for i in self.slots.occupied() {
            keys.push(self.slots.key(i));
            values.extend_from_slice(&self.slots.row(i)[..cols]);
            if keys.len() == CHUNK {
                table
                    .upsert(&keys, &values, None)
                    .map_err(table_err(&self.config.name))?;
                keys.clear();
                values.clear();
            }
        }
        table
            .upsert(&keys, &values, None)
            .map_err(table_err(&self.config.name))?;
        Ok(table)
    }

    /// Writes the served columns as a kiln-embed snapshot at `path`, loadable by
    /// `kiln_embed::Table::restore` with the served table's config.
    pub fn served_snapshot(&self, path: &Path) -> Result<SnapshotInfo> {
        self.served_table()?
            .snapshot_to(path)
            .map_err(table_err(&self.config.name))
    }

    /// The config of the full-row snapshot table: the served name, `width` columns, f32.
    fn full_config(&self) -> TableConfig {
        let mut c = TableConfig::new(self.config.name.clone(), self.width);
        c.shards = self.config.shards;
        c
    }

    /// Writes every row, all columns, as a kiln-embed snapshot at `path`.
    pub fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo> {
        self.build_table(self.full_config(), self.width)?
            .snapshot_to(path)
            .map_err(table_err(&self.config.name))
    }

    /// Replaces every row with those of a snapshot written by [`ParamTable::snapshot_to`];
    /// nothing is pending for the next drain afterwards. A refused file changes nothing.
    pub fn restore(&mut self, path: &Path) -> Result<SnapshotInfo> {
        let (table, info) = self.read_snapshot(path)?;
        self.replace_rows(&table);
        Ok(info)
    }

    /// Reads and checks a snapshot written by [`ParamTable::snapshot_to`], changing nothing:
    /// the first half of [`ParamTable::restore`], for a caller restoring several tables all
    /// or nothing.
    pub fn read_snapshot(&self, path: &Path) -> Result<(Table, SnapshotInfo)> {
        Table::restore(self.full_config(), path).map_err(table_err(&self.config.name))
    }

    /// Replaces every row with those of `table` (from [`ParamTable::read_snapshot`]).
    pub fn replace_rows(&mut self, table: &Table) {
        self.tick();
        let mut slots = Slots::new(self.width, (table.len() * 2).next_power_of_two().max(16));
        table.for_each_row(|key, row| {
            let free = slots.probe(key).expect_err("snapshot keys are unique");
            slots.fill(free, key, self.now_secs, 0);
            slots.row_mut(free).copy_from_slice(row);
        });
        self.slots = slots;
        self.touched.clear();
        self.tombstones.clear();
    }
}

/// A vector of `len` copies of `value` whose memory is advised for transparent huge pages
/// before it is first written: the slots are read at random, and with 4 KiB pages nearly
/// every key of a large table would also miss the TLB (a page walk, itself missing the
/// cache). A no-op under 4 MiB or off Linux.
pub(crate) fn huge_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = v.capacity() * std::mem::size_of::<T>();
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + bytes) & !(HUGE - 1);
        if bytes >= 2 * HUGE && end > aligned {
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
    v.resize(len, value);
    v
}

/// Hints the CPU to load the cache line holding `p`; a no-op off x86_64.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
