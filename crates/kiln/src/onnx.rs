//! The ONNX backends of `kiln serve`: registers ONNX Runtime (cargo feature `ort`, on by
//! default) next to tract and picks the backend for `.onnx` models whose config names none.

use anyhow::Context;
use kiln_runtime::Backends;
use std::path::PathBuf;

/// Registers the compiled-in ONNX backends in `backends` and sets the default one.
///
/// `default` is a backend name or `auto`: onnxruntime when its library can be loaded, else
/// tract. `ort_library` is `--ort-library` (tried before `ORT_DYLIB_PATH` and Python).
pub fn configure(
    backends: &mut Backends,
    ort_library: Option<PathBuf>,
    default: &str,
) -> anyhow::Result<()> {
    #[cfg(feature = "ort")]
    let ort_status = {
        let ort = kiln_backend_ort::OrtBackend::new(ort_library);
        let status = ort.probe();
        backends.register(std::sync::Arc::new(ort));
        status
    };
    #[cfg(not(feature = "ort"))]
    let ort_status: Result<PathBuf, String> = match ort_library {
        Some(p) => anyhow::bail!(
            "--ort-library {}: this kiln was built without the `ort` feature",
            p.display()
        ),
        None => Err("this kiln was built without the `ort` feature".to_string()),
    };

    let chosen = match (default, &ort_status) {
        ("auto", Ok(_)) => "onnxruntime",
        ("auto", Err(_)) => "tract",
        (name, _) => name,
    };
    match &ort_status {
        Ok(path) => {
            tracing::info!(library = %path.display(), default_onnx_backend = chosen, "onnxruntime available")
        }
        Err(why) if chosen == "onnxruntime" => {
            tracing::warn!(reason = %why, "onnxruntime is the default onnx backend but its library is not usable; models using it will fail to load")
        }
        Err(why) => {
            tracing::info!(reason = %why, default_onnx_backend = chosen, "onnxruntime not available; onnx models without a backend use tract")
        }
    }
    backends
        .set_default_onnx(chosen)
        .map_err(anyhow::Error::new)
        .context("--default-onnx-backend")
}
