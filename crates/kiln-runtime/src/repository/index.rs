//! The repository index: every model and version with its state, as the index API reports it.

use super::ModelRepository;
use crate::version::ServedVersion;
use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

/// The state of one model version as the repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Serving.
    Ready,
    /// Not serving; `reason` says why.
    Unavailable,
    /// Being loaded (a load, or the poll's rescan, is working on it).
    Loading,
    /// Unloaded or replaced, while requests it took are still in flight.
    Unloading,
    /// In the repository directory but never loaded: Triton lists such a model by name only.
    NotLoaded,
}

impl VersionState {
    /// The protocol's name (`READY`, `UNAVAILABLE`, `LOADING`, `UNLOADING`; empty for a model
    /// never loaded).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Ready => "READY",
            VersionState::Unavailable => "UNAVAILABLE",
            VersionState::Loading => "LOADING",
            VersionState::Unloading => "UNLOADING",
            VersionState::NotLoaded => "",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or `None` for a model that has no loadable version.
    pub version: Option<u64>,
    /// Serving or not.
    pub state: VersionState,
    /// Why it is not serving, or the last failed reload of a serving version.
    pub reason: String,
}

impl ModelRepository {
    /// The repository index API's answer: [`ModelRepository::index`] and every other model
    /// directory of the repository, by name only ([`VersionState::NotLoaded`]), as Triton lists
    /// the models it could load.
    pub fn index_all(&self) -> Vec<IndexEntry> {
        let mut out = self.index();
        let mut unseen: BTreeSet<String> = self.scan().unwrap_or_default().into_iter().collect();
        unseen.retain(|n| !out.iter().any(|e| &e.name == n));
        out.extend(unseen.into_iter().map(|name| IndexEntry {
            name,
            version: None,
            state: VersionState::NotLoaded,
            reason: String::new(),
        }));
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out
    }

    /// Every known model and version with its state: a model a load works on `LOADING`, a
    /// version unloaded or replaced while requests still hold it `UNLOADING`.
    pub fn index(&self) -> Vec<IndexEntry> {
        // copied out first: a pipeline's readiness looks its members up in the repository
        type Row = (
            String,
            Option<u64>,
            Option<Arc<ServedVersion>>,
            String,
            Option<String>,
        );
        let loading = self.loading.lock().clone();
        let rows: Vec<Row> = {
            let models = self.models.read();
            let mut rows = Vec::new();
            for (name, m) in models.iter() {
                if m.versions.is_empty() {
                    rows.push((name.clone(), None, None, String::new(), m.error.clone()));
                }
                for (v, s) in &m.versions {
                    rows.push((
                        name.clone(),
                        Some(*v),
                        s.served.clone(),
                        s.reason.clone(),
                        m.error.clone(),
                    ));
                }
            }
            rows
        };
        let mut out: Vec<IndexEntry> = rows
            .into_iter()
            .map(|(name, version, served, reason, error)| {
                let failure = served.as_ref().and_then(|v| v.failure());
                let computes = served.is_some() && failure.is_none();
                if !computes && loading.contains(&name) {
                    return IndexEntry {
                        name,
                        version,
                        state: VersionState::Loading,
                        reason: String::new(),
                    };
                }
                if version.is_none() {
                    return IndexEntry {
                        name,
                        version,
                        state: VersionState::Unavailable,
                        reason: error.unwrap_or_default(),
                    };
                }
                IndexEntry {
                    name,
                    version,
                    state: if computes {
                        VersionState::Ready
                    } else {
                        VersionState::Unavailable
                    },
                    reason: match (error, failure) {
                        (Some(e), None) if computes => {
                            format!("configuration error, still serving: {e}")
                        }
                        (_, Some(why)) => format!("cannot compute any more: {why}"),
                        _ => reason,
                    },
                }
            })
            .collect();
        let draining: Vec<(String, u64)> = {
            let mut d = self.draining.lock();
            d.retain(|w| w.strong_count() > 0);
            d.iter()
                .filter_map(Weak::upgrade)
                .map(|v| (v.name.clone(), v.version))
                .collect()
        };
        for (name, v) in draining {
            let listed = out
                .iter()
                .any(|e| e.name == name && e.version == Some(v) && e.state == VersionState::Ready);
            if !listed {
                out.retain(|e| !(e.name == name && e.version.is_none()));
                out.push(IndexEntry {
                    name,
                    version: Some(v),
                    state: VersionState::Unloading,
                    reason: String::new(),
                });
            }
        }
        for name in loading {
            if !out.iter().any(|e| e.name == name) {
                out.push(IndexEntry {
                    name,
                    version: None,
                    state: VersionState::Loading,
                    reason: String::new(),
                });
            }
        }
        out.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        out.dedup();
        out
    }
}
