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
//! A request's tensors are decoded once per batch into [`FeatureIds`] (padded `[N, max_ids]`
//! INT64, BYTES, or ragged values plus INT32 lengths), and each row range's keys are derived from
//! them with [`FeatureIds::keys`] as a [`MultiHot`] for the table lookup.

pub use crate::spec::Hashing;
use crate::spec::SparseFeature;
use kiln_core::{DataType, Error, Result, Tensor};
use kiln_embed::{keys_from_i64, MultiHot};
use std::borrow::Cow;
use xxhash_rust::xxh3::xxh3_64;

/// The key of a padding id (an INT64 `-1`, an empty BYTES id): the lookup skips it.
pub const PADDING: u64 = u64::MAX;

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
