//! The model repository: `<root>/<model>/config.toml` + `<root>/<model>/<version>/<file>`.
//!
//! Versions are chosen by each model's version policy. A new or changed version is loaded and
//! warmed up off the async runtime before it takes traffic; versions it replaces are retired
//! only once a selected version serves, so a corrupt new version leaves the old one serving.
//! Load outcomes (and their errors) show in [`ModelRepository::index`].

use crate::backends::Backends;
use crate::metrics::RuntimeMetrics;
use crate::model_config::read_config;
use crate::repository_files::{check_files, write_files, LoadRequest};
use crate::response_cache::ResponseCache;
use crate::traffic::Routes;
use crate::version::ServedVersion;
use crate::warmup::warm_up;
use kiln_core::{texts, Error, ModelConfig, Result};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
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

    /// `names` with the pipelines last, each after the pipelines it names as steps (as far as
    /// their configurations can be read), so that members load before the pipelines using
    /// them. A configuration that cannot be read keeps its place; its load reports why.
    fn load_order(&self, names: Vec<String>) -> Vec<String> {
        let mut models = Vec::new();
        let mut pipelines: Vec<(String, Vec<String>)> = Vec::new();
        for name in names {
            match read_config(&self.root.join(&name), &name) {
                Ok((c, _)) if c.is_pipeline() => {
                    let members = crate::pipeline::member_names(&c);
                    pipelines.push((name, members));
                }
                _ => models.push(name),
            }
        }
        // pipelines of pipelines: place one once the pipelines it uses are placed
        while !pipelines.is_empty() {
            let pending: Vec<String> = pipelines.iter().map(|(n, _)| n.clone()).collect();
            let ready = pipelines
                .iter()
                .position(|(_, m)| !m.iter().any(|x| pending.contains(x)))
                .unwrap_or(0); // a cycle: its load names it
            models.push(pipelines.remove(ready).0);
        }
        models
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

    /// Brings one model in line with its directory. Caller holds `ops`. A version that failed
    /// to load is tried again when its files changed, on `retry_failed` (the load API), and
    /// always for a pipeline (its members may serve now). `config_override` replaces the
    /// model's configuration file.
    async fn sync(
        &self,
        name: &str,
        retry_failed: bool,
        config_override: Option<Arc<(ModelConfig, u64)>>,
    ) -> Result<()> {
        self.loading.lock().insert(name.to_string());
        let _loading = Loading(self, name.to_string());
        let dir = self.root.join(name);
        if !dir.is_dir() {
            let removed = self.models.write().remove(name).is_some();
            self.traffic.forget(name);
            if removed {
                tracing::info!(model = %name, "model directory removed: unloaded");
            }
            return Err(Error::not_found(format!(
                "model '{name}' is not in the repository"
            )));
        }
        let read = match &config_override {
            Some(c) => Ok(c.as_ref().clone()),
            None => read_config(&dir, name),
        };
        let (config, config_hash) = match read {
            Ok(c) => c,
            Err(e) => {
                let e = self.relative(e);
                tracing::error!(model = %name, error = %e, "bad model configuration; serving versions stay");
                self.models
                    .write()
                    .entry(name.to_string())
                    .or_default()
                    .error = Some(e.message.clone());
                return Err(e);
            }
        };
        self.traffic.configure(name, &config);
        let available = list_versions(&dir);
        let selected = config.version_policy.select(&available);
        if selected.is_empty() {
            let e = Error::unavailable(format!(
                "model '{name}' has no version directory matching its version policy"
            ));
            self.models
                .write()
                .entry(name.to_string())
                .or_default()
                .error = Some(e.message.clone());
            return Err(e);
        }
        let config = Arc::new(config);
        let mut last_err = None;
        for &v in &selected {
            let fp = fingerprint(&dir.join(v.to_string()), config_hash);
            // (readiness is checked after the lock is released: a pipeline's looks its
            // members up in the repository)
            let same = self
                .models
                .read()
                .get(name)
                .and_then(|m| m.versions.get(&v))
                .filter(|s| s.fingerprint == fp)
                .map(|s| s.served.clone());
            let unchanged = match same {
                None => false,
                Some(None) => !(retry_failed || config.is_pipeline()),
                Some(Some(s)) => s.failure().is_none(),
            };
            if unchanged {
                continue;
            }
            match self
                .load_version(name, v, &dir, config.clone())
                .await
                .map_err(|e| self.relative(e))
            {
                Ok(served) => {
                    self.metrics.record_load(name, v, "ok");
                    self.metrics.set_model_info(name, v, &config);
                    tracing::info!(model = %name, version = v, "version ready");
                    let replaced = self
                        .models
                        .write()
                        .entry(name.to_string())
                        .or_default()
                        .versions
                        .insert(
                            v,
                            VersionSlot {
                                served: Some(Arc::new(served)),
                                fingerprint: fp,
                                reason: String::new(),
                            },
                        );
                    self.drain(replaced.and_then(|old| old.served));
                }
                Err(e) => {
                    self.metrics.record_load(name, v, e.code.as_label());
                    tracing::error!(model = %name, version = v, error = %e, "version failed to load");
                    let mut models = self.models.write();
                    let slot = models
                        .entry(name.to_string())
                        .or_default()
                        .versions
                        .entry(v)
                        .or_insert(VersionSlot {
                            served: None,
                            fingerprint: fp,
                            reason: String::new(),
                        });
                    slot.fingerprint = fp;
                    slot.reason = if slot.served.is_some() {
                        format!("reload failed, previous files still serving: {}", e.message)
                    } else {
                        e.message.clone()
                    };
                    last_err = Some(e);
                }
            }
        }
        let mut models = self.models.write();
        let m = models.entry(name.to_string()).or_default();
        m.error = None;
        let serving_selected = selected
            .iter()
            .any(|v| m.versions.get(v).is_some_and(|s| s.served.is_some()));
        if serving_selected {
            let stale: Vec<u64> = m
                .versions
                .keys()
                .copied()
                .filter(|v| !selected.contains(v))
                .collect();
            for v in stale {
                self.drain(m.versions.remove(&v).and_then(|s| s.served));
                tracing::info!(model = %name, version = v, "version retired");
            }
            Ok(())
        } else {
            Err(last_err.unwrap_or_else(|| {
                Error::unavailable(format!("model '{name}' has no serving version"))
            }))
        }
    }

    async fn load_version(
        &self,
        name: &str,
        version: u64,
        dir: &Path,
        config: Arc<ModelConfig>,
    ) -> Result<ServedVersion> {
        let vdir = dir.join(version.to_string());
        let metrics = self.metrics.for_version(name, version);
        let cache = config
            .response_cache
            .enable
            .then(|| self.response_cache())
            .flatten();
        if config.is_pipeline() {
            let pipeline = crate::pipeline::Pipeline::load(
                self.me.clone(),
                &self.metrics,
                name,
                version,
                &vdir,
                &config,
            )
            .await?;
            return Ok(ServedVersion::pipeline(
                name, version, config, pipeline, metrics, cache,
            ));
        }
        let backend = self.backends.for_config(&config)?;
        let name = name.to_string();
        let model_dir = dir.to_path_buf();
        let nice = self.worker_nice.load(Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            tracing::info!(model = %name, version, backend = backend.name(), "loading version");
            let model = backend.load(&vdir, &config)?;
            if config.warmup {
                warm_up(model.as_ref(), &config, &model_dir)
                    .map_err(|e| Error::invalid(format!("warm-up failed: {}", e.message)))?;
            }
            ServedVersion::start(&name, version, config, model, metrics, nice, cache)
        })
        .await
        .map_err(|e| Error::internal(format!("model load task failed: {e}")))?
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

fn list_versions(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Hash of every file's relative path, size and modification time under `dir`, and the config.
fn fingerprint(dir: &Path, config_hash: u64) -> u64 {
    let mut h = DefaultHasher::new();
    config_hash.hash(&mut h);
    let mut stack = vec![dir.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            match e.metadata() {
                Ok(md) if md.is_dir() => stack.push(p),
                Ok(md) => {
                    let mtime = md
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    entries.push((p, md.len(), mtime));
                }
                Err(_) => {}
            }
        }
    }
    entries.sort();
    entries.hash(&mut h);
    h.finish()
}
