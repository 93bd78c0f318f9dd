//! How a sparse feature's raw ids become table keys: the one definition of decoding and hashing
//! shared by serving and by anything that writes rows serving must find (an online learner, a
//! delta publisher, another compute backend).
//!
//! A key is a pure function of the raw id and the feature's `hash` and `buckets` settings
//! ([`key_of`]):
//!
//! - an INT64 id `-1` is padding and stays [`PADDING`] (`u64::MAX`) whatever the settings;
//! - other INT64 ids are taken as their two's-complement `u64`; with `hash = "xxh3"` the key is
//!   xxh3-64 of the id's 8 little-endian bytes;
//! - a BYTES id is hashed with xxh3-64 of its bytes (a model refuses BYTES ids with
//!   `hash = "none"`); the empty string is padding;
//! - then, with `buckets = n`, the key is `key % n` (padding excepted).
//!
//! A crossed feature (`cross = ["a", "b"]`, no input tensor of its own) has one key per
//! combination of its components' keys in a row, one key taken from each component, padding
//! skipped ([`cross_keys`]): the key of a combination `(k_1, ..., k_n)` of component keys
//! (each after its own feature's `hash` and `buckets`) is ([`cross_key`])
//!
//! - xxh3-64 of the concatenated little-endian bytes of `k_1, ..., k_n` (`8 n` bytes, in the
//!   order of `cross`), then `% buckets` with the cross's own `buckets`;
//! - unbounded (no `buckets`), the one hash equal to [`PADDING`] is taken as `u64::MAX - 1`.
//!
//! The combinations come first component outermost: for `a = [a1, a2]`, `b = [b1, b2]` the
//! keys are those of `(a1, b1), (a1, b2), (a2, b1), (a2, b2)`. A row where a component has no
//! ids has no crossed keys.
//!
//! A request's tensors are decoded once per batch into [`FeatureIds`] (padded `[N, max_ids]`
//! INT64, BYTES, or ragged values plus INT32 lengths; a cross's keys computed from its decoded
//! components with [`FeatureIds::crossed`]), and each row range's keys are derived from them
//! with [`FeatureIds::keys`] as a [`MultiHot`] for the table lookup.

pub use crate::spec::Hashing;
use crate::spec::SparseFeature;
use kiln_core::{DataType, Error, Result, Tensor};
use kiln_embed::{keys_from_i64, MultiHot};
use std::borrow::Cow;
use xxhash_rust::xxh3::xxh3_64;

/// The key of a padding id (an INT64 `-1`, an empty BYTES id): the lookup skips it.
pub const PADDING: u64 = u64::MAX;

/// The most features one cross may combine.
pub const MAX_CROSSED: usize = 8;

/// The key of one combination of a cross's component keys, `keys` in the order of the cross's
/// `cross` list (at most [`MAX_CROSSED`]), under the cross's `buckets` (see the module docs).
///
/// # Panics
///
/// If `keys` has more than [`MAX_CROSSED`] keys (the spec refuses such a cross).
#[inline]
pub fn cross_key(keys: &[u64], buckets: Option<u64>) -> u64 {
    assert!(
        keys.len() <= MAX_CROSSED,
        "a cross of {} features",
        keys.len()
    );
    let mut buf = [0u8; 8 * MAX_CROSSED];
    for (b, k) in buf.chunks_exact_mut(8).zip(keys) {
        b.copy_from_slice(&k.to_le_bytes());
    }
    let h = xxh3_64(&buf[..8 * keys.len()]);
    match buckets {
        Some(n) => h % n,
        None if h == PADDING => PADDING - 1,
        None => h,
    }
}

/// Appends to `out` the crossed keys of one row: [`cross_key`] of every combination of one key
/// from each of `components` (each component's keys for the row, in the cross's order), first
/// component outermost; [`PADDING`] keys are skipped. This is the function serving and any
/// learner apply to a row, bit for bit.
pub fn cross_keys(components: &[&[u64]], buckets: Option<u64>, out: &mut Vec<u64>) {
    let n = components.len();
    if n == 0 || n > MAX_CROSSED || components.iter().any(|c| c.is_empty()) {
        return;
    }
    let mut at = [0usize; MAX_CROSSED];
    let mut combo = [0u64; MAX_CROSSED];
    loop {
        for (j, c) in components.iter().enumerate() {
            combo[j] = c[at[j]];
        }
        if combo[..n].iter().all(|&k| k != PADDING) {
            out.push(cross_key(&combo[..n], buckets));
        }
        // advance the last component fastest
        let mut j = n;
        loop {
            if j == 0 {
                return;
            }
            j -= 1;
            at[j] += 1;
            if at[j] < components[j].len() {
                break;
            }
            at[j] = 0;
        }
    }
}

/// One raw id as a request or an event carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawId<'a> {
    /// An INT64 id; `-1` is padding.
    Int(i64),
    /// A BYTES id; empty is padding.
    Bytes(&'a [u8]),
}

/// The table key of `id` under a feature's `hashing` and `buckets` (see the module docs).
///
/// This is the function serving applies to every id, bit for bit.
pub fn key_of(id: RawId<'_>, hashing: Hashing, buckets: Option<u64>) -> u64 {
    match id {
        RawId::Int(i) => int_key(i as u64, hashing, buckets),
        RawId::Bytes(b) => bytes_key(b, buckets),
    }
}

/// The table key of an INT64 id given as its `u64` bit pattern (`-1`, i.e. [`PADDING`], stays
/// the padding).
#[inline]
pub fn int_key(id: u64, hashing: Hashing, buckets: Option<u64>) -> u64 {
    if id == PADDING {
        return PADDING;
    }
    let key = match hashing {
        Hashing::None => id,
        Hashing::Xxh3 => xxh3_64(&id.to_le_bytes()),
    };
    buckets.map_or(key, |b| key % b)
}

/// The table key of a BYTES id: xxh3-64 of the bytes, then `% buckets`; empty is
/// [`PADDING`].
#[inline]
pub fn bytes_key(id: &[u8], buckets: Option<u64>) -> u64 {
    if id.is_empty() {
        return PADDING;
    }
    let key = xxh3_64(id);
    buckets.map_or(key, |n| key % n)
}

/// One sparse feature's ids in a batch, decoded once and shared by the threads computing it.
#[derive(Debug)]
pub enum FeatureIds<'a> {
    /// Padded INT64 ids, `[rows, max_ids]`, as `u64` (`-1` is [`PADDING`]).
    Ints(Cow<'a, [u64]>),
    /// BYTES ids, `[rows, max_ids]`, one slice per element (empty = padding).
    Bytes(Vec<&'a [u8]>),
    /// Ragged INT64 ids: all values, ids per row, and each row's start (`rows + 1` entries).
    Ragged {
        /// Every row's ids, concatenated, as `u64`.
        values: Cow<'a, [u64]>,
        /// Ids per row.
        lengths: Vec<u32>,
        /// Where each row starts in `values`, and the end (`rows + 1` entries).
        offsets: Vec<usize>,
    },
    /// A crossed feature's keys, `[rows, max_ids]`, final (no hashing left), padded with
    /// [`PADDING`].
    Crossed(Vec<u64>),
}

/// An INT64 tensor's values as `u64` (borrowed when aligned).
pub fn int_ids(t: &Tensor) -> Cow<'_, [u64]> {
    match bytemuck::try_cast_slice::<u8, i64>(&t.data) {
        Ok(s) => Cow::Borrowed(keys_from_i64(s)),
        Err(_) => Cow::Owned(
            t.data
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
    }
}

impl<'a> FeatureIds<'a> {
    /// Decodes `feature`'s ids from its input tensor (`values`; for a ragged feature also its
    /// INT32 `lengths`, one per row), checking lengths against `max_ids` and the values.
    pub fn decode(
        feature: &SparseFeature,
        values: &'a Tensor,
        lengths: Option<&Tensor>,
    ) -> Result<Self> {
        if feature.ragged {
            let lt = lengths.ok_or_else(|| {
                Error::invalid(format!("input '{}_lengths' is missing", feature.name))
            })?;
            let rows = lt.data.len() / 4;
            let mut lengths = Vec::with_capacity(rows);
            let mut offsets = Vec::with_capacity(rows + 1);
            offsets.push(0usize);
            for b in lt.data.chunks_exact(4) {
                let l = i32::from_le_bytes(b.try_into().expect("4 bytes"));
                if l < 0 || l as usize > feature.max_ids {
                    return Err(Error::invalid(format!(
                        "input '{}': length {l} is outside 0..={}",
                        lt.name, feature.max_ids
                    )));
                }
                lengths.push(l as u32);
                offsets.push(offsets.last().copied().unwrap_or(0) + l as usize);
            }
            let ids = int_ids(values);
            let total = offsets.last().copied().unwrap_or(0);
            if total != ids.len() {
                return Err(Error::invalid(format!(
                    "input '{}': lengths add up to {total} but {} values were given",
                    values.name,
                    ids.len()
                )));
            }
            return Ok(FeatureIds::Ragged {
                values: ids,
                lengths,
                offsets,
            });
        }
        Ok(match feature.data_type {
            DataType::Bytes => FeatureIds::Bytes(values.byte_elements().map_err(|_| {
                Error::invalid(format!("input '{}': malformed BYTES elements", values.name))
            })?),
            _ => FeatureIds::Ints(int_ids(values)),
        })
    }

    /// The keys of crossed feature `feature` for `rows` rows, from its components' decoded ids
    /// (`components`: each component feature with its ids, in the order of the cross):
    /// [`cross_keys`] of each row, padded to `max_ids` with [`PADDING`].
    pub fn crossed(
        feature: &SparseFeature,
        components: &[(&SparseFeature, &FeatureIds<'_>)],
        rows: usize,
    ) -> FeatureIds<'static> {
        let k = feature.max_ids;
        let mut scratch = Vec::new();
        // each component's keys for every row, and where each row's keys start
        let parts: Vec<(Vec<u64>, Vec<usize>)> = components
            .iter()
            .map(|(f, ids)| match ids.keys(f, 0, rows, &mut scratch) {
                MultiHot::Padded { ids, width, .. } => {
                    (ids.to_vec(), (0..=rows).map(|r| r * width).collect())
                }
                MultiHot::Ragged {
                    values, lengths, ..
                } => {
                    let mut offsets = Vec::with_capacity(rows + 1);
                    offsets.push(0);
                    for &l in lengths {
                        offsets.push(offsets.last().copied().unwrap_or(0) + l as usize);
                    }
                    (values.to_vec(), offsets)
                }
            })
            .collect();
        let mut out = Vec::with_capacity(rows * k);
        let mut row: Vec<&[u64]> = Vec::with_capacity(parts.len());
        for r in 0..rows {
            row.clear();
            row.extend(parts.iter().map(|(keys, off)| &keys[off[r]..off[r + 1]]));
            cross_keys(&row, feature.buckets, &mut out);
            // at most max_ids combinations (the product of the components' max_ids)
            out.truncate((r + 1) * k);
            out.resize((r + 1) * k, PADDING);
        }
        FeatureIds::Crossed(out)
    }

    /// The keys of rows `r0..r0 + rows`, as the lookup takes them. Keys that need hashing are
    /// written into `scratch`; unhashed INT64 ids are passed through without a copy.
    pub fn keys<'s>(
        &'s self,
        feature: &SparseFeature,
        r0: usize,
        rows: usize,
        scratch: &'s mut Vec<u64>,
    ) -> MultiHot<'s> {
        let (hash, buckets) = (feature.hash, feature.buckets);
        let plain = hash == Hashing::None && buckets.is_none();
        let k = feature.max_ids;
        match self {
            FeatureIds::Crossed(all) => MultiHot::Padded {
                ids: &all[r0 * k..(r0 + rows) * k],
                width: k,
                padding: Some(PADDING),
            },
            FeatureIds::Ragged {
                values,
                lengths,
                offsets,
            } => {
                let vals = &values[offsets[r0]..offsets[r0 + rows]];
                MultiHot::Ragged {
                    values: if plain {
                        vals
                    } else {
                        hashed(vals, hash, buckets, scratch)
                    },
                    lengths: &lengths[r0..r0 + rows],
                    padding: Some(PADDING),
                }
            }
            FeatureIds::Ints(all) => {
                let ids = &all[r0 * k..(r0 + rows) * k];
                MultiHot::Padded {
                    ids: if plain {
                        ids
                    } else {
                        hashed(ids, hash, buckets, scratch)
                    },
                    width: k,
                    padding: Some(PADDING),
                }
            }
            FeatureIds::Bytes(all) => {
                scratch.clear();
                scratch.extend(
                    all[r0 * k..(r0 + rows) * k]
                        .iter()
                        .map(|b| bytes_key(b, buckets)),
                );
                MultiHot::Padded {
                    ids: scratch,
                    width: k,
                    padding: Some(PADDING),
                }
            }
        }
    }
}

/// `ids`' keys, written into `scratch`.
#[inline]
fn hashed<'s>(
    ids: &[u64],
    hash: Hashing,
    buckets: Option<u64>,
    scratch: &'s mut Vec<u64>,
) -> &'s [u64] {
    scratch.clear();
    scratch.extend(ids.iter().map(|&id| int_key(id, hash, buckets)));
    scratch
}
