//! The backends compiled into this binary, chosen per model by `config.toml`.

use kiln_core::{Backend, Error, ModelConfig, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Backends by name, plus the default for `.onnx` files.
///
/// The runtime registers none itself: the binary (and each test harness) registers the engines
/// it is built with, so the runtime builds and tests without any engine.
#[derive(Clone, Default)]
pub struct Backends {
    by_name: BTreeMap<&'static str, Arc<dyn Backend>>,
    /// Set by [`Backends::set_default_onnx`]; `tract` until then.
    default_onnx: Option<String>,
}

impl Backends {
    /// No backend registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a backend under its name.
    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.by_name.insert(backend.name(), backend);
    }

    /// Sets the backend that serves `.onnx` models whose config names none (`tract` unless
    /// set).
    pub fn set_default_onnx(&mut self, name: &str) -> Result<()> {
        if !self.by_name.contains_key(name) {
            return Err(Error::invalid(format!(
                "default onnx backend '{name}' is not available (compiled in: {:?})",
                self.names()
            )));
        }
        self.default_onnx = Some(name.to_string());
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
            None if config.default_model_filename.ends_with(".onnx") => {
                self.default_onnx.as_deref().unwrap_or("tract")
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backend: Option<&str>, file: &str) -> ModelConfig {
        let mut c = ModelConfig::default_for("m");
        c.backend = backend.map(str::to_string);
        c.default_model_filename = file.to_string();
        c
    }

    fn err(b: &Backends, c: &ModelConfig) -> String {
        match b.for_config(c) {
            Ok(found) => panic!("expected an error, got backend '{}'", found.name()),
            Err(e) => e.message,
        }
    }

    #[test]
    fn no_backend_is_registered_by_default() {
        let b = Backends::new();
        assert!(b.names().is_empty());
        let e = err(&b, &config(None, "model.onnx"));
        assert!(e.contains("'tract' is not available in this build"), "{e}");
        let e = err(&b, &config(Some("recsys"), "model.safetensors"));
        assert!(e.contains("'recsys' is not available in this build"), "{e}");
        let e = Backends::new().set_default_onnx("onnxruntime").unwrap_err();
        assert!(e.message.contains("'onnxruntime' is not available"), "{e}");
    }
}
