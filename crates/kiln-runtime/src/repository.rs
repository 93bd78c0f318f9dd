//! The model repository: `<root>/<model>/config.toml` + `<root>/<model>/<version>/<file>`.
//!
//! Versions are chosen by each model's version policy. A new or changed version is loaded and
//! warmed up off the async runtime before it takes traffic; versions it replaces are retired
//! only once a selected version serves, so a corrupt new version leaves the old one serving.
//! Load outcomes (and their errors) show in [`ModelRepository::index`].

mod index;
mod sync;

pub use index::{IndexEntry, VersionState};

use crate::backends::Backends;
use crate::metrics::RuntimeMetrics;
use crate::repository_files::{check_files, write_files, LoadRequest};
use crate::response_cache::ResponseCache;
use crate::traffic::Routes;
use crate::version::ServedVersion;
use kiln_core::{texts, Error, ModelConfig, Result};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Weak};

/// How models get loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// Load every model at start; later changes only through the load/unload API.
    None,
    /// Load every model at start and rescan the repository at this interval.
    Poll(std::time::Duration),
    /// Load only the models named at start; everything else through the API.
    Explicit,
}

struct VersionSlot {
    served: Option<Arc<ServedVersion>>,
    fingerprint: u64,
    reason: String,
}

#[derive(Default)]
struct ModelSlot {
    versions: BTreeMap<u64, VersionSlot>,
    error: Option<String>,
    unloaded: bool,
    /// The configuration a load request gave instead of the file's (with its hash).
    config_override: Option<Arc<(ModelConfig, u64)>>,
}

/// The models this server knows, and the versions it serves.
pub struct ModelRepository {
    root: PathBuf,
    backends: Backends,
    metrics: Arc<RuntimeMetrics>,
    models: RwLock<BTreeMap<String, ModelSlot>>,
    /// Serializes loads, unloads and polls so two never race on one model.
    ops: tokio::sync::Mutex<()>,
    /// Nice value added to the worker threads of versions loaded from now on.
    worker_nice: AtomicI32,
    /// Traffic weights between versions (canary releases).
    traffic: Routes,
    /// The response cache of the models that enable it, when the server has one.
    cache: parking_lot::Mutex<Option<Arc<ResponseCache>>>,
    /// This repository, for the pipelines it loads (they resolve their member models here).
    me: Weak<ModelRepository>,
    /// Models a load or poll is working on now (the index shows them `LOADING`).
    loading: parking_lot::Mutex<BTreeSet<String>>,
    /// Versions unloaded or replaced, while requests still hold them (`UNLOADING`).
    draining: parking_lot::Mutex<Vec<Weak<ServedVersion>>>,
    /// The mode [`ModelRepository::start`] was given (explicit until then).
    mode: parking_lot::Mutex<ControlMode>,
}

/// Marks a model as loading while it lives.
struct Loading<'a>(&'a ModelRepository, String);

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.0.loading.lock().remove(&self.1);
    }
}

/// Rejects names that could leave the repository directory.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid model name '{}': use letters, digits, '_', '-' and '.'",
            name.escape_debug()
        )))
    }
}

impl ModelRepository {
    /// A repository rooted at `root`; nothing is loaded until [`ModelRepository::start`].
    pub fn new(
        root: impl Into<PathBuf>,
        backends: Backends,
        metrics: Arc<RuntimeMetrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| ModelRepository {
            root: root.into(),
            backends,
            metrics,
            models: RwLock::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            worker_nice: AtomicI32::new(0),
            traffic: Routes::default(),
            cache: parking_lot::Mutex::new(None),
            me: me.clone(),
            loading: Default::default(),
            draining: Default::default(),
            mode: parking_lot::Mutex::new(ControlMode::Explicit),
        })
    }

    /// Gives the models that enable it (`[response_cache] enable = true`) a response cache
    /// holding at most `max_bytes`, from the next version loaded on.
    pub fn set_response_cache(&self, max_bytes: u64) {
        *self.cache.lock() = (max_bytes > 0).then(|| ResponseCache::new(max_bytes));
    }

    /// The server's response cache, if it has one.
    pub fn response_cache(&self) -> Option<Arc<ResponseCache>> {
        self.cache.lock().clone()
    }

    /// The traffic weights of every model.
    pub fn routes(&self) -> &Routes {
        &self.traffic
    }

    /// The runtime metrics.
    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// Runs the compute threads of versions loaded from now on at `nice` above the process's
    /// priority, so that the network threads preempt them as soon as a request arrives.
    pub fn set_worker_nice(&self, nice: i32) {
        self.worker_nice.store(nice, Ordering::Relaxed);
    }

    /// How models get loaded: the mode the repository was started in.
    pub fn control_mode(&self) -> ControlMode {
        *self.mode.lock()
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Loads the models the mode asks for at start. Failures are logged and indexed, not fatal.
    pub async fn start(
        self: &Arc<Self>,
        mode: ControlMode,
        startup_models: &[String],
    ) -> Result<()> {
        if !self.root.is_dir() {
            return Err(Error::invalid(format!(
                "model repository {} is not a directory",
                self.root.display()
            )));
        }
        *self.mode.lock() = mode;
        let names = match mode {
            // `*` alone: every model, as Triton's `--load-model=*`
            ControlMode::Explicit if startup_models != ["*"] => startup_models.to_vec(),
            _ => self.scan()?,
        };
        for name in self.load_order(names) {
            if let Err(e) = self.load(&name).await {
                tracing::error!(model = %name, error = %e, "model failed to load");
            }
        }
        if let ControlMode::Poll(every) = mode {
            let repo = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(repo) = repo.upgrade() else { return };
                    repo.poll().await;
                }
            });
        }
        self.spawn_rollback_monitor();
        Ok(())
    }

    /// Model directory names present on disk.
    fn scan(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| Error::internal(format!("{}: {e}", self.root.display())))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && check_model_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// One rescan: loads new and changed versions, unloads removed models and versions.
    pub async fn poll(&self) {
        let names = match self.scan() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan the model repository");
                return;
            }
        };
        let known: Vec<String> = self.models.read().keys().cloned().collect();
        let all: BTreeSet<String> = names.into_iter().chain(known).collect();
        let _g = self.ops.lock().await;
        for name in self.load_order(all.into_iter().collect()) {
            let over = match self.models.read().get(&name) {
                Some(m) if m.unloaded => continue,
                Some(m) => m.config_override.clone(),
                None => None,
            };
            if let Err(e) = self.sync(&name, false, over).await {
                tracing::debug!(model = %name, error = %e, "poll: model not serving");
            }
        }
    }

    /// Loads or reloads a model (the load API). Ok once at least one version serves.
    pub async fn load(&self, name: &str) -> Result<()> {
        self.load_with(name, LoadRequest::default()).await
    }

    /// [`ModelRepository::load`] with what a load request brings: its files are checked as a
    /// whole, then written into the model's directory (a model may be created so); its
    /// configuration is used instead of the model's file from then on, until a load without
    /// one. A model with no directory and no files is refused as Triton refuses it.
    pub async fn load_with(&self, name: &str, req: LoadRequest) -> Result<()> {
        check_model_name(name)?;
        let files = check_files(&req.files)?;
        let _g = self.ops.lock().await;
        let dir = self.root.join(name);
        if files.is_empty() && !dir.is_dir() {
            return Err(Error::not_found(texts::load_unknown(name)));
        }
        if !files.is_empty() {
            write_files(&dir, &files).map_err(|e| self.relative(e))?;
            tracing::info!(model = %name, files = req.files.len(), "model files written by a load request");
        }
        if let Some(m) = self.models.write().get_mut(name) {
            m.unloaded = false;
        }
        let over = req.config.map(Arc::new);
        let r = self.sync(name, true, over.clone()).await;
        if r.is_ok() {
            if let Some(m) = self.models.write().get_mut(name) {
                m.config_override = over;
            }
        }
        r
    }

    /// Unloads every version of a model (the unload API); requests in flight still complete
    /// (the index shows their version `UNLOADING` until they have). A model that is not loaded
    /// is left alone, as Triton does.
    pub async fn unload(&self, name: &str) -> Result<()> {
        self.unload_with(name, false).await
    }

    /// [`ModelRepository::unload`]; with `dependents` (Triton's `unload_dependents`) a
    /// pipeline's member models are unloaded too, except those another loaded pipeline uses.
    /// Unloading a member alone leaves the pipelines using it unable to serve until it is
    /// loaded again.
    pub async fn unload_with(&self, name: &str, dependents: bool) -> Result<()> {
        check_model_name(name)?;
        let _g = self.ops.lock().await;
        let mut models = self.models.write();
        let mut names = vec![name.to_string()];
        if dependents {
            for member in models.get(name).map(members).unwrap_or_default() {
                let used_elsewhere = models
                    .iter()
                    .any(|(n, m)| n != name && !m.unloaded && members(m).contains(&member));
                if !used_elsewhere && !names.contains(&member) {
                    names.push(member);
                }
            }
        }
        for n in names {
            let Some(m) = models.get_mut(&n) else {
                continue;
            };
            if m.unloaded {
                continue;
            }
            for (_, slot) in std::mem::take(&mut m.versions) {
                self.drain(slot.served);
            }
            m.error = Some("unloaded".into());
            m.unloaded = true;
            self.metrics.forget(&n, None);
            tracing::info!(model = %n, "model unloaded");
        }
        Ok(())
    }

    /// Keeps an eye on a version leaving service, for the index's `UNLOADING`.
    fn drain(&self, served: Option<Arc<ServedVersion>>) {
        if let Some(v) = served {
            let mut d = self.draining.lock();
            d.retain(|w| w.strong_count() > 0);
            d.push(Arc::downgrade(&v));
        }
    }

    /// `e` with the repository's location cut from its message, so that the index and load
    /// errors clients see show paths relative to the repository, never the server's.
    fn relative(&self, mut e: Error) -> Error {
        let mut roots = vec![self.root.clone()];
        if let Ok(c) = self.root.canonicalize() {
            roots.push(c);
        }
        for root in roots {
            let shown = root.display().to_string();
            let shown = shown.trim_end_matches('/');
            if !shown.is_empty() && e.message.contains(shown) {
                e.message = e
                    .message
                    .replace(&format!("{shown}/"), "")
                    .replace(shown, "<repository>");
            }
        }
        e
    }

    /// The version to serve: `version` if given, else the highest serving one (the control
    /// plane's choice; inference requests go through [`ModelRepository::route`]).
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedVersion>> {
        self.pick(name, version, |_| None)
    }

    /// The version an inference request goes to: `version` if given (always honoured), else
    /// the model's traffic split between its serving versions (sticky by `routing_key`), else
    /// the highest serving version.
    pub fn route(
        &self,
        name: &str,
        version: Option<u64>,
        routing_key: Option<&str>,
    ) -> Result<Arc<ServedVersion>> {
        self.pick(name, version, |serving| {
            self.traffic.pick(name, serving, routing_key)
        })
    }

    /// [`ModelRepository::get`] with `split` choosing among the serving versions (ascending)
    /// when no version is named. A version's readiness is checked after the repository lock
    /// is released: a pipeline's looks its members up here.
    fn pick(
        &self,
        name: &str,
        version: Option<u64>,
        split: impl FnOnce(&[u64]) -> Option<u64>,
    ) -> Result<Arc<ServedVersion>> {
        let (candidates, why_not) = {
            let models = self.models.read();
            let m = models
                .get(name)
                .ok_or_else(|| Error::not_found(texts::unknown_model(name)))?;
            match version {
                Some(v) => match m.versions.get(&v) {
                    Some(VersionSlot {
                        served: Some(s), ..
                    }) => (vec![s.clone()], None),
                    Some(slot) => {
                        return Err(Error::unavailable(format!(
                            "version {v} of model '{name}' is not ready: {}",
                            slot.reason
                        )))
                    }
                    None => return Err(Error::not_found(texts::unknown_version(name, v))),
                },
                None => {
                    let served: Vec<Arc<ServedVersion>> = m
                        .versions
                        .values()
                        .rev()
                        .filter_map(|s| s.served.clone())
                        .collect();
                    let why = m.error.clone().unwrap_or_else(|| {
                        m.versions
                            .values()
                            .filter(|s| s.served.is_none())
                            .map(|s| s.reason.clone())
                            .collect::<Vec<_>>()
                            .join("; ")
                    });
                    (served, Some(why))
                }
            }
        };
        if let Some(v) = version {
            let s = &candidates[0];
            return match s.failure() {
                None => Ok(s.clone()),
                Some(why) => Err(Error::unavailable(format!(
                    "version {v} of model '{name}' is not ready: it cannot compute any more ({why})"
                ))),
            };
        }
        // highest first; those that cannot compute are passed over
        let mut failures = Vec::new();
        let ready: Vec<Arc<ServedVersion>> = candidates
            .into_iter()
            .filter(|s| match s.failure() {
                None => true,
                Some(why) => {
                    failures.push(format!("cannot compute any more: {why}"));
                    false
                }
            })
            .collect();
        if ready.is_empty() {
            let mut why: Vec<String> = why_not.into_iter().filter(|w| !w.is_empty()).collect();
            why.extend(failures);
            return Err(Error::unavailable(format!(
                "model '{name}' is not ready: {}",
                why.join("; ")
            )));
        }
        let ascending: Vec<u64> = ready.iter().rev().map(|s| s.version).collect();
        let chosen = split(&ascending).and_then(|v| ready.iter().find(|s| s.version == v));
        Ok(chosen.unwrap_or(&ready[0]).clone())
    }

    /// Every serving version (for statistics).
    pub fn serving(&self) -> Vec<Arc<ServedVersion>> {
        self.models
            .read()
            .values()
            .flat_map(|m| m.versions.values().filter_map(|s| s.served.clone()))
            .collect()
    }
}

/// The member models of the pipeline versions a model serves.
fn members(m: &ModelSlot) -> Vec<String> {
    let mut names: Vec<String> = m
        .versions
        .values()
        .filter_map(|s| s.served.as_ref())
        .flat_map(|v| crate::pipeline::member_names(&v.config))
        .collect();
    names.sort();
    names.dedup();
    names
}
