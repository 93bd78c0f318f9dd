//! The model repository: `<root>/<model>/config.toml` + `<root>/<model>/<version>/<file>`.
//!
//! Versions are chosen by each model's version policy. A new or changed version is loaded and
//! warmed up off the async runtime before it takes traffic; versions it replaces are retired
//! only once a selected version serves, so a corrupt new version leaves the old one serving.
//! Load outcomes (and their errors) show in [`ModelRepository::index`].

use crate::backends::Backends;
use crate::metrics::RuntimeMetrics;
use crate::version::ServedVersion;
use crate::warmup::warm_up;
use kiln_core::{Error, ModelConfig, Result};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

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
}

impl VersionState {
    /// The protocol's name (`READY`, `UNAVAILABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Ready => "READY",
            VersionState::Unavailable => "UNAVAILABLE",
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
        Arc::new(ModelRepository {
            root: root.into(),
            backends,
            metrics,
            models: RwLock::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            worker_nice: AtomicI32::new(0),
        })
    }

    /// Runs the compute threads of versions loaded from now on at `nice` above the process's
    /// priority, so that the network threads preempt them as soon as a request arrives.
    pub fn set_worker_nice(&self, nice: i32) {
        self.worker_nice.store(nice, Ordering::Relaxed);
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
        let names = match mode {
            ControlMode::Explicit => startup_models.to_vec(),
            _ => self.scan()?,
        };
        for name in names {
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
        for name in all {
            if self.models.read().get(&name).is_some_and(|m| m.unloaded) {
                continue;
            }
            if let Err(e) = self.sync(&name).await {
                tracing::debug!(model = %name, error = %e, "poll: model not serving");
            }
        }
    }

    /// Loads or reloads a model (the load API). Ok once at least one version serves.
    pub async fn load(&self, name: &str) -> Result<()> {
        check_model_name(name)?;
        let _g = self.ops.lock().await;
        if let Some(m) = self.models.write().get_mut(name) {
            m.unloaded = false;
        }
        self.sync(name).await
    }

    /// Unloads every version of a model (the unload API); queued requests still complete.
    pub async fn unload(&self, name: &str) -> Result<()> {
        check_model_name(name)?;
        let _g = self.ops.lock().await;
        let mut models = self.models.write();
        let m = models
            .get_mut(name)
            .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        m.versions.clear();
        m.error = Some("unloaded".into());
        m.unloaded = true;
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Brings one model in line with its directory. Caller holds `ops`.
    async fn sync(&self, name: &str) -> Result<()> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            let removed = self.models.write().remove(name).is_some();
            if removed {
                tracing::info!(model = %name, "model directory removed: unloaded");
            }
            return Err(Error::not_found(format!(
                "model '{name}' is not in the repository"
            )));
        }
        let (config, config_hash) = match read_config(&dir, name) {
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
            let unchanged = self
                .models
                .read()
                .get(name)
                .and_then(|m| m.versions.get(&v))
                .is_some_and(|s| s.fingerprint == fp && !is_broken(s));
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
                    tracing::info!(model = %name, version = v, "version ready");
                    self.models
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
                m.versions.remove(&v);
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
        let backend = self.backends.for_config(&config)?;
        let vdir = dir.join(version.to_string());
        let metrics = self.metrics.for_version(name, version);
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
            ServedVersion::start(&name, version, config, model, metrics, nice)
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

    /// The version to serve: `version` if given, else the highest serving one.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedVersion>> {
        let models = self.models.read();
        let m = models
            .get(name)
            .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))?;
        match version {
            Some(v) => match m.versions.get(&v) {
                Some(VersionSlot {
                    served: Some(s), ..
                }) => match s.failure() {
                    None => Ok(s.clone()),
                    Some(why) => Err(Error::unavailable(format!(
                        "version {v} of model '{name}' is not ready: it cannot compute any more ({why})"
                    ))),
                },
                Some(slot) => Err(Error::unavailable(format!(
                    "version {v} of model '{name}' is not ready: {}",
                    slot.reason
                ))),
                None => Err(Error::not_found(format!(
                    "unknown version {v} of model '{name}'"
                ))),
            },
            None => m
                .versions
                .values()
                .rev()
                .find_map(|s| s.served.clone().filter(|v| v.failure().is_none()))
                .ok_or_else(|| {
                    let why = m.error.clone().unwrap_or_else(|| {
                        m.versions
                            .values()
                            .map(slot_reason)
                            .collect::<Vec<_>>()
                            .join("; ")
                    });
                    Error::unavailable(format!("model '{name}' is not ready: {why}"))
                }),
        }
    }

    /// Every known model and version with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.read();
        let mut out = Vec::new();
        for (name, m) in models.iter() {
            if m.versions.is_empty() {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: VersionState::Unavailable,
                    reason: m.error.clone().unwrap_or_default(),
                });
            }
            for (v, s) in &m.versions {
                let computes = s.served.as_ref().is_some_and(|v| v.failure().is_none());
                out.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*v),
                    state: if computes {
                        VersionState::Ready
                    } else {
                        VersionState::Unavailable
                    },
                    reason: match (&m.error, computes) {
                        (Some(e), true) => format!("configuration error, still serving: {e}"),
                        _ => slot_reason(s),
                    },
                });
            }
        }
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

/// Whether the slot's loaded version cannot compute any more (a load or poll rebuilds it).
fn is_broken(s: &VersionSlot) -> bool {
    s.served.as_ref().is_some_and(|v| v.failure().is_some())
}

/// Why a version slot does not serve: its load error, or why its loaded version cannot compute
/// any more.
fn slot_reason(s: &VersionSlot) -> String {
    match s.served.as_ref().and_then(|v| v.failure()) {
        Some(why) => format!("cannot compute any more: {why}"),
        None => s.reason.clone(),
    }
}

fn read_config(dir: &Path, name: &str) -> Result<(ModelConfig, u64)> {
    let path = dir.join("config.toml");
    // named relative to the repository in errors, which clients see
    let shown = format!("{name}/config.toml");
    let (config, text) = if path.is_file() {
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::invalid(format!("{shown}: {e}")))?;
        let c = ModelConfig::parse(&text, name)
            .map_err(|e| Error::invalid(format!("{shown}: {}", e.message)))?;
        (c, text)
    } else {
        (ModelConfig::default_for(name), String::new())
    };
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    Ok((config, h.finish()))
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
