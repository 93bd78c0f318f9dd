//! The server-wide response cache, as Triton's: a model opts in (`[response_cache] enable =
//! true`), the server sets one byte limit (`--response-cache-mb`) for all of them.
//!
//! - **Key**: the served version instance (a reloaded version is a new instance and never sees
//!   the old one's entries), its table epoch (bumped by every delta a table of the version
//!   takes, so a stale prediction is never served), and an xxh3-128 digest of the inputs'
//!   names, datatypes, shapes and bytes in the model's input order. A pipeline's key also
//!   hashes the instance and epoch of its member models' serving versions and the request
//!   parameters it reads, so a member's delta or reload is never answered from before it. An
//!   entry holds every output of the version; the server picks the requested ones from it as
//!   from a computed answer.
//! - **Bounds**: entries are weighed by their output bytes and evicted by moka's TinyLFU/LRU
//!   policy once the total passes the limit. An entry larger than a tenth of the limit is not
//!   stored.
//! - **Invalidation**: entries of a version are dropped when it is unloaded or replaced; those
//!   of an older epoch stop matching at once and are dropped in the background.
//!
//! Outputs are shared `Bytes`, so a hit copies nothing.

use kiln_core::Tensor;
use moka::sync::Cache;
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

/// What an entry is found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The served version instance ([`crate::ServedVersion`] numbers them).
    pub instance: u64,
    /// The version's table epoch when the answer was computed.
    pub epoch: u64,
    /// xxh3-128 of the inputs.
    pub digest: u128,
}

impl CacheKey {
    /// The key of `inputs` (in the model's input order) for `instance` at `epoch`.
    pub fn new(instance: u64, epoch: u64, inputs: &[Tensor]) -> Self {
        Self::salted(instance, epoch, 0, inputs)
    }

    /// [`CacheKey::new`] with `salt` (what else the answer depends on, e.g. a pipeline's
    /// member versions and request parameters) hashed in with the inputs.
    pub fn salted(instance: u64, epoch: u64, salt: u128, inputs: &[Tensor]) -> Self {
        let mut h = Xxh3::new();
        h.update(&salt.to_le_bytes());
        h.update(&(inputs.len() as u64).to_le_bytes());
        for t in inputs {
            h.update(&(t.name.len() as u64).to_le_bytes());
            h.update(t.name.as_bytes());
            h.update(t.dtype.as_str().as_bytes());
            h.update(&(t.shape.len() as u64).to_le_bytes());
            for d in &t.shape {
                h.update(&d.to_le_bytes());
            }
            h.update(&(t.data.len() as u64).to_le_bytes());
            h.update(&t.data);
        }
        CacheKey {
            instance,
            epoch,
            digest: h.digest128(),
        }
    }
}

/// The outputs of one answered request.
type Entry = Arc<Vec<Tensor>>;

/// Bytes an entry is weighed at: its output data, names and shapes, plus a fixed overhead.
fn weight(outputs: &[Tensor]) -> u64 {
    outputs
        .iter()
        .map(|t| t.data.len() + t.name.len() + 8 * t.shape.len() + 64)
        .sum::<usize>() as u64
        + 96
}

/// The cache shared by every model that enables it.
pub struct ResponseCache {
    entries: Cache<CacheKey, Entry>,
    max_bytes: u64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of answers.
    pub fn new(max_bytes: u64) -> Arc<Self> {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Entry| u32::try_from(weight(v)).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        Arc::new(ResponseCache { entries, max_bytes })
    }

    /// The byte limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The outputs stored under `key`, shared (no copy).
    pub fn get(&self, key: &CacheKey) -> Option<Vec<Tensor>> {
        self.entries.get(key).map(|e| e.as_ref().clone())
    }

    /// Stores `outputs` under `key`, unless they weigh more than a tenth of the limit.
    pub fn insert(&self, key: CacheKey, outputs: &[Tensor]) {
        if weight(outputs) > self.max_bytes / 10 {
            return;
        }
        self.entries.insert(key, Arc::new(outputs.to_vec()));
    }

    /// Drops every entry of a served version instance (it was unloaded or replaced).
    pub fn invalidate_instance(&self, instance: u64) {
        // only fails when closures are not enabled, which `new` does
        let _ = self
            .entries
            .invalidate_entries_if(move |k, _| k.instance == instance);
    }

    /// Drops the entries of `instance` computed before `epoch` (a table took a delta).
    pub fn invalidate_before(&self, instance: u64, epoch: u64) {
        let _ = self
            .entries
            .invalidate_entries_if(move |k, _| k.instance == instance && k.epoch < epoch);
    }

    /// Entries and their weighed bytes now, after pending evictions and invalidations ran.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, v: &[f32]) -> Tensor {
        Tensor::from_vec(name, vec![v.len() as i64], v)
    }

    #[test]
    fn keys_cover_names_shapes_types_and_bytes() {
        let a = CacheKey::new(1, 0, &[t("x", &[1.0, 2.0])]);
        assert_eq!(a, CacheKey::new(1, 0, &[t("x", &[1.0, 2.0])]));
        assert_ne!(a, CacheKey::new(1, 0, &[t("y", &[1.0, 2.0])]));
        assert_ne!(a, CacheKey::new(1, 0, &[t("x", &[1.0, 2.5])]));
        assert_ne!(a, CacheKey::new(2, 0, &[t("x", &[1.0, 2.0])]));
        assert_ne!(a, CacheKey::new(1, 1, &[t("x", &[1.0, 2.0])]));
        assert_eq!(a, CacheKey::salted(1, 0, 0, &[t("x", &[1.0, 2.0])]));
        assert_ne!(a, CacheKey::salted(1, 0, 5, &[t("x", &[1.0, 2.0])]));
        let mut reshaped = t("x", &[1.0, 2.0]);
        reshaped.shape = vec![1, 2];
        assert_ne!(a, CacheKey::new(1, 0, &[reshaped]));
        let mut retyped = t("x", &[1.0, 2.0]);
        retyped.dtype = kiln_core::DataType::Int32;
        assert_ne!(a, CacheKey::new(1, 0, &[retyped]));
    }

    #[test]
    fn hits_share_the_stored_bytes_and_invalidation_drops_them() {
        let c = ResponseCache::new(1 << 20);
        let k = CacheKey::new(7, 0, &[t("x", &[1.0])]);
        let out = vec![t("y", &[3.0, 4.0])];
        c.insert(k, &out);
        let hit = c.get(&k).unwrap();
        assert_eq!(hit, out);
        assert_eq!(hit[0].data.as_ptr(), c.get(&k).unwrap()[0].data.as_ptr());
        c.invalidate_before(7, 1);
        assert!(c.get(&k).is_none());
        c.insert(k, &out);
        c.invalidate_instance(8);
        assert!(c.get(&k).is_some());
        c.invalidate_instance(7);
        assert!(c.get(&k).is_none());
    }

    #[test]
    fn the_byte_limit_holds() {
        let limit = 64 * 1024;
        let c = ResponseCache::new(limit);
        let big = vec![t("y", &[0.5; 256])]; // ~1.2 KB
        for i in 0..1_000u32 {
            let k = CacheKey::new(1, 0, &[t("x", &[i as f32])]);
            c.insert(k, &big);
        }
        let (n, bytes) = c.usage();
        assert!(bytes <= limit, "{bytes} > {limit}");
        assert!(n > 0 && n < 1_000, "{n}");
        // an answer over a tenth of the limit is not kept
        let huge = vec![t("y", &vec![0.0; 4096])];
        let k = CacheKey::new(2, 0, &[t("x", &[0.0])]);
        c.insert(k, &huge);
        assert!(c.get(&k).is_none());
    }
}
