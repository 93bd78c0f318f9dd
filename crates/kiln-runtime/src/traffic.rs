//! Canary and gray release: per-model traffic weights between serving versions, for requests
//! that name no version.
//!
//! With a `routing_key` (a user id) the choice is sticky: weighted rendezvous hashing scores
//! every weighted version by `-w / ln(h(key, version))` and takes the highest, so a key keeps its
//! version for a given set of weights, and changing one weight moves only the keys that must
//! move. Without a key the choice is weighted random.
//!
//! Weights come from the model's `[traffic]` table and change at run time through
//! [`ModelRepository::set_traffic`] (the control plane) or automatic rollback (see
//! [`ModelRepository::spawn_rollback_monitor`]). A reload whose `[traffic]` table is unchanged
//! keeps weights set at run time; a changed table, or a restart, goes back to the file.

mod rollback;

pub use rollback::{judge, split_roles, Verdict, WindowStats};

use crate::{check_model_name, ModelRepository, VersionState};
use kiln_core::{Error, ModelConfig, Result, RollbackPolicy};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::AtomicBool;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Origin of weights read from the model's `[traffic]` table.
pub const ORIGIN_CONFIG: &str = "config";
/// Origin of weights set through the control plane.
pub const ORIGIN_API: &str = "api";
/// Origin of weights changed by automatic rollback.
pub const ORIGIN_ROLLBACK: &str = "rollback";

/// The traffic weights of every model that has some.
#[derive(Debug, Default)]
pub struct Routes {
    models: RwLock<HashMap<String, Entry>>,
    /// Set once the rollback monitor runs.
    monitor: AtomicBool,
}

#[derive(Debug, Default)]
struct Entry {
    /// The weights in effect.
    current: Option<Weights>,
    /// The `[traffic]` table last configured, to tell a changed file from a plain reload.
    file: BTreeMap<u64, u32>,
    /// The model's `[traffic_rollback]`.
    policy: Option<RollbackPolicy>,
}

/// One model's weights and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// Weight per version; versions absent or not serving take no traffic.
    pub weights: BTreeMap<u64, u32>,
    /// [`ORIGIN_CONFIG`], [`ORIGIN_API`] or [`ORIGIN_ROLLBACK`].
    pub origin: &'static str,
}

impl fmt::Display for Weights {
    /// `1=95,2=5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (v, w)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}={w}")?;
        }
        Ok(())
    }
}

/// Weights as logs show them (`none` for none).
fn shown(w: Option<&Weights>) -> String {
    w.map_or_else(|| "none".to_string(), Weights::to_string)
}

impl Routes {
    /// Takes the weights and rollback policy of a (re)loaded configuration of `model`. Weights
    /// set at run time stay unless the `[traffic]` table differs from the one configured last;
    /// a table removed from the file clears them.
    pub fn configure(&self, model: &str, config: &ModelConfig) {
        let file = config.traffic_weights();
        let mut m = self.models.write();
        let e = m.entry(model.to_string()).or_default();
        e.policy = config.traffic_rollback.clone();
        if e.file == file && e.current.is_some() {
            return;
        }
        let new = (!file.is_empty()).then(|| Weights {
            weights: file.clone(),
            origin: ORIGIN_CONFIG,
        });
        if new != e.current {
            tracing::info!(model, old = %shown(e.current.as_ref()), new = %shown(new.as_ref()),
                origin = ORIGIN_CONFIG, "traffic weights changed");
        }
        e.current = new;
        e.file = file;
    }

    /// Sets `model`'s weights; returns the previous ones.
    pub fn set(
        &self,
        model: &str,
        weights: BTreeMap<u64, u32>,
        origin: &'static str,
    ) -> Option<Weights> {
        let mut m = self.models.write();
        let e = m.entry(model.to_string()).or_default();
        e.current.replace(Weights { weights, origin })
    }

    /// Sets `version`'s weight in `model`'s weights to 0 (automatic rollback), unless it is
    /// already 0, the model has no weights, or its weights are no longer `judged` (the ones the
    /// rollback decision was made on: an operator's change in between wins, and the next look
    /// judges the new weights); returns the weights before and after.
    pub fn zero(&self, model: &str, version: u64, judged: &Weights) -> Option<(Weights, Weights)> {
        let mut m = self.models.write();
        let cur = m.get_mut(model)?.current.as_mut()?;
        if cur != judged || cur.weights.get(&version).is_none_or(|&w| w == 0) {
            return None;
        }
        let old = cur.clone();
        cur.weights.insert(version, 0);
        cur.origin = ORIGIN_ROLLBACK;
        Some((old, cur.clone()))
    }

    /// Drops `model`'s weights (it was removed from the repository).
    pub fn forget(&self, model: &str) {
        self.models.write().remove(model);
    }

    /// `model`'s weights, if it has any.
    pub fn get(&self, model: &str) -> Option<Weights> {
        self.models.read().get(model)?.current.clone()
    }

    /// The models with both weights and a rollback policy.
    pub fn watched(&self) -> Vec<(String, Weights, RollbackPolicy)> {
        self.models
            .read()
            .iter()
            .filter_map(|(name, e)| Some((name.clone(), e.current.clone()?, e.policy.clone()?)))
            .collect()
    }

    /// The version a request naming none goes to, among `serving` (the versions that compute
    /// now): `None` when the model has no weights or no serving version has a weight above 0,
    /// which leaves the choice to the caller (the highest serving version).
    pub fn pick(&self, model: &str, serving: &[u64], routing_key: Option<&str>) -> Option<u64> {
        let m = self.models.read();
        let w = m.get(model)?.current.as_ref()?;
        let candidates: Vec<(u64, u32)> = serving
            .iter()
            .filter_map(|v| w.weights.get(v).filter(|&&w| w > 0).map(|&w| (*v, w)))
            .collect();
        choose(&candidates, routing_key)
    }
}

impl ModelRepository {
    /// Sets `model`'s traffic weights at run time (the control plane); they take effect for
    /// the next request. Every version with a weight above 0 must be serving, and at least one
    /// weight must be above 0. Returns the weights now in effect.
    pub fn set_traffic(&self, model: &str, weights: BTreeMap<u64, u32>) -> Result<Weights> {
        let serving = self.ready_versions(model)?;
        if weights.values().all(|&w| w == 0) {
            return Err(Error::invalid(
                "weights: at least one version needs a weight above 0",
            ));
        }
        for (v, w) in &weights {
            if *w > 0 && !serving.contains(v) {
                let list: Vec<String> = serving.iter().map(u64::to_string).collect();
                return Err(Error::invalid(format!(
                    "weights.{v}: version {v} of model '{model}' is not serving (serving: {})",
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    }
                )));
            }
        }
        let new = Weights {
            weights: weights.clone(),
            origin: ORIGIN_API,
        };
        let old = self.routes().set(model, weights, ORIGIN_API);
        tracing::info!(model, old = %shown(old.as_ref()), new = %new, origin = ORIGIN_API,
            "traffic weights changed");
        Ok(new)
    }

    /// `model`'s traffic weights, `None` when it has none (requests naming no version go to
    /// its highest serving version).
    pub fn traffic(&self, model: &str) -> Result<Option<Weights>> {
        self.ready_versions(model)?;
        Ok(self.routes().get(model))
    }

    /// The versions of `model` ready to compute, ascending; an error for an unknown model.
    fn ready_versions(&self, model: &str) -> Result<Vec<u64>> {
        check_model_name(model)?;
        let entries: Vec<_> = self
            .index()
            .into_iter()
            .filter(|e| e.name == model)
            .collect();
        if entries.is_empty() {
            return Err(Error::not_found(format!("unknown model '{model}'")));
        }
        Ok(entries
            .into_iter()
            .filter(|e| e.state == VersionState::Ready)
            .filter_map(|e| e.version)
            .collect())
    }
}

/// Picks one of `candidates` (version, weight > 0) by weight: sticky by `key` when given.
pub fn choose(candidates: &[(u64, u32)], key: Option<&str>) -> Option<u64> {
    match candidates {
        [] => None,
        [(v, _)] => Some(*v),
        _ => match key {
            Some(key) => candidates
                .iter()
                .map(|&(v, w)| (rendezvous_score(key, v, w), v))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, v)| v),
            None => {
                let total: u64 = candidates.iter().map(|&(_, w)| u64::from(w)).sum();
                let mut r = fastrand::u64(0..total);
                candidates.iter().find_map(|&(v, w)| {
                    if r < u64::from(w) {
                        Some(v)
                    } else {
                        r -= u64::from(w);
                        None
                    }
                })
            }
        },
    }
}

/// Weighted rendezvous score of `version` for `key`: `-w / ln(u)`, `u` uniform in (0, 1) from
/// the hash of the key seeded by the version.
fn rendezvous_score(key: &str, version: u64, weight: u32) -> f64 {
    let h = xxh3_64_with_seed(key.as_bytes(), version);
    // 53 random bits mapped into (0, 1)
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_choice_follows_the_weights() {
        let c = [(1, 95), (2, 5)];
        let mut to2 = 0;
        for i in 0..10_000 {
            let key = format!("user-{i}");
            let v = choose(&c, Some(&key)).unwrap();
            assert_eq!(choose(&c, Some(&key)), Some(v), "sticky");
            to2 += usize::from(v == 2);
        }
        // 5% of 10k = 500, sd ~ 22
        assert!((380..=620).contains(&to2), "{to2}");
    }

    #[test]
    fn raising_a_canary_only_moves_keys_to_it() {
        let before = [(1, 90), (2, 10)];
        let after = [(1, 50), (2, 50)];
        for i in 0..2_000 {
            let key = format!("k{i}");
            if choose(&before, Some(&key)) == Some(2) {
                assert_eq!(choose(&after, Some(&key)), Some(2), "{key}");
            }
        }
    }

    #[test]
    fn zero_weights_and_missing_versions_take_nothing() {
        let r = Routes::default();
        r.set("m", BTreeMap::from([(1, 0), (2, 10), (3, 5)]), ORIGIN_API);
        for _ in 0..100 {
            assert_eq!(r.pick("m", &[1, 2], None), Some(2));
        }
        assert_eq!(r.pick("m", &[1], None), None);
        assert_eq!(r.pick("other", &[1, 2], None), None);
    }

    #[test]
    fn a_rollback_gives_way_to_weights_set_after_it_was_judged() {
        let r = Routes::default();
        r.set("m", BTreeMap::from([(1, 90), (2, 10)]), ORIGIN_API);
        let judged = r.get("m").expect("weights");
        // the operator promotes the canary between the judgement and the write
        r.set("m", BTreeMap::from([(1, 0), (2, 100)]), ORIGIN_API);
        assert_eq!(r.zero("m", 2, &judged), None);
        assert_eq!(
            r.get("m").expect("weights").weights,
            BTreeMap::from([(1, 0), (2, 100)])
        );
        // on the weights it judged, the rollback applies
        let judged = r.get("m").expect("weights");
        let (old, new) = r.zero("m", 2, &judged).expect("rolled back");
        assert_eq!(old, judged);
        assert_eq!(new.weights, BTreeMap::from([(1, 0), (2, 0)]));
        assert_eq!(new.origin, ORIGIN_ROLLBACK);
    }

    fn config(text: &str) -> ModelConfig {
        ModelConfig::parse(text, "m").unwrap()
    }

    #[test]
    fn a_reload_keeps_runtime_weights_until_the_file_changes() {
        let r = Routes::default();
        let c = config("[traffic]\n\"1\" = 90\n\"2\" = 10\n");
        r.configure("m", &c);
        assert_eq!(r.get("m").unwrap().origin, ORIGIN_CONFIG);
        r.set("m", BTreeMap::from([(1, 50), (2, 50)]), ORIGIN_API);
        r.configure("m", &c);
        let w = r.get("m").unwrap();
        assert_eq!(
            (w.origin, w.to_string().as_str()),
            (ORIGIN_API, "1=50,2=50")
        );
        r.configure("m", &config("[traffic]\n\"1\" = 80\n\"2\" = 20\n"));
        assert_eq!(r.get("m").unwrap().to_string(), "1=80,2=20");
        r.configure("m", &config(""));
        assert_eq!(r.get("m"), None);
        assert!(r.watched().is_empty());
    }

    #[test]
    fn zero_sets_one_weight_once() {
        let r = Routes::default();
        r.configure(
            "m",
            &config("[traffic]\n\"1\" = 90\n\"2\" = 10\n[traffic_rollback]\nwindow_s = 5\n"),
        );
        assert_eq!(r.watched().len(), 1);
        let judged = r.get("m").expect("weights");
        let (old, new) = r.zero("m", 2, &judged).unwrap();
        assert_eq!(old.to_string(), "1=90,2=10");
        assert_eq!(
            (new.to_string().as_str(), new.origin),
            ("1=90,2=0", ORIGIN_ROLLBACK)
        );
        assert_eq!(r.zero("m", 2, &new), None);
        assert_eq!(r.zero("m", 7, &new), None);
        assert_eq!(r.zero("x", 1, &new), None);
    }
}
