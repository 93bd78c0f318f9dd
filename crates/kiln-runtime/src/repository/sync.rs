//! Loading: bringing one model in line with its directory (versions chosen by the policy,
//! loaded and warmed up off the async runtime, replaced versions retired once a new one serves),
//! and the order in which a scan loads models (members before the pipelines using them).

use super::{Loading, ModelRepository, VersionSlot};
use crate::model_config::read_config;
use crate::version::ServedVersion;
use crate::warmup::warm_up;
use kiln_core::{Error, ModelConfig, Result};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl ModelRepository {
    /// `names` with the pipelines last, each after the pipelines it names as steps (as far as
    /// their configurations can be read), so that members load before the pipelines using
    /// them. A configuration that cannot be read keeps its place; its load reports why.
    pub(super) fn load_order(&self, names: Vec<String>) -> Vec<String> {
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

    /// Brings one model in line with its directory. Caller holds `ops`. A version that failed
    /// to load is tried again when its files changed, on `retry_failed` (the load API), and
    /// always for a pipeline (its members may serve now). `config_override` replaces the
    /// model's configuration file.
    pub(super) async fn sync(
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
                self.metrics.forget(name, None);
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
                self.metrics.forget(name, Some(v));
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
