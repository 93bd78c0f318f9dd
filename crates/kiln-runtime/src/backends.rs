//! The backends compiled into this binary, chosen per model by `config.toml`.

use kiln_core::{Backend, Error, ModelConfig, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Backends by name, plus the default for `.onnx` files.
#[derive(Clone)]
pub struct Backends {
    by_name: BTreeMap<&'static str, Arc<dyn Backend>>,
    default_onnx: String,
}

impl Default for Backends {
    /// The tract backend only, also the default for ONNX files.
    fn default() -> Self {
        let mut b = Backends {
            by_name: BTreeMap::new(),
            default_onnx: "tract".into(),
        };
        b.register(Arc::new(kiln_backend_tract::TractBackend));
        b
    }
}

impl Backends {
    /// Adds (or replaces) a backend under its name.
    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.by_name.insert(backend.name(), backend);
    }

    /// Sets the backend that serves `.onnx` models whose config names none.
    pub fn set_default_onnx(&mut self, name: &str) -> Result<()> {
        if !self.by_name.contains_key(name) {
            return Err(Error::invalid(format!(
                "default onnx backend '{name}' is not available (compiled in: {:?})",
                self.names()
            )));
        }
        self.default_onnx = name.to_string();
        Ok(())
    }

    /// Names of the compiled-in backends.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// The backend for a model: the one its config names, else the default for its file type.
    pub fn for_config(&self, config: &ModelConfig) -> Result<Arc<dyn Backend>> {
        let name = match &config.backend {
            Some(n) => n.as_str(),
            None if config.default_model_filename.ends_with(".onnx") => self.default_onnx.as_str(),
            None => {
                return Err(Error::invalid(format!(
                    "backend: no default backend for '{}'; set backend in config.toml",
                    config.default_model_filename
                )))
            }
        };
        self.by_name.get(name).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "backend: '{name}' is not available in this build (available: {:?})",
                self.names()
            ))
        })
    }
}
