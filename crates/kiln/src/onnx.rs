//! The ONNX backends of `kiln serve`: registers ONNX Runtime (cargo feature `ort`, on by
//! default) next to tract and picks the backend for `.onnx` models whose config names none.
//!
//! The onnxruntime library is `--ort-library` (`KILN_ORT_LIBRARY`), else `ORT_DYLIB_PATH` (both
//! read by the backend), else the one in a Python `onnxruntime` package, found here: the
//! interpreters `$KILN_PYTHON`, `./.venv/bin/python` (relative to the working directory) and
//! `python3` are asked, in order, where the package lives, and its `capi/libonnxruntime.so*`
//! is used.

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
        let ort = ort_backend(ort_library);
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

/// The ONNX Runtime backend with the library of `--ort-library`, else `ORT_DYLIB_PATH`, else the
/// Python `onnxruntime` package's.
#[cfg(feature = "ort")]
fn ort_backend(ort_library: Option<PathBuf>) -> kiln_backend_ort::OrtBackend {
    use kiln_backend_ort::library::{self, LibraryError};
    use kiln_backend_ort::OrtBackend;
    if ort_library.is_some() || !matches!(library::locate(None), Err(LibraryError::NotFound { .. }))
    {
        return OrtBackend::new(ort_library);
    }
    let found = crate::pylib::first(|python| {
        let capi = crate::pylib::package_dir(python, "onnxruntime")?.join("capi");
        library::library_in(&capi)
            .ok_or_else(|| format!("no onnxruntime library in {}", capi.display()))
    });
    match found {
        Ok((path, python)) => {
            let how = format!("the onnxruntime package of {}", python.display());
            OrtBackend::found(path, how)
        }
        Err(tried) => {
            tracing::debug!(%tried, "no python onnxruntime package");
            OrtBackend::new(None)
        }
    }
}
