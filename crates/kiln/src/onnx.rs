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
    let mut tried = Vec::new();
    for python in python_candidates() {
        match python_package_library(&python) {
            Ok(path) => {
                let how = format!("the onnxruntime package of {}", python.display());
                return OrtBackend::found(path, how);
            }
            Err(why) => tried.push(format!("{}: {why}", python.display())),
        }
    }
    tracing::debug!(tried = %tried.join("; "), "no python onnxruntime package");
    OrtBackend::new(None)
}

/// The interpreters asked for an `onnxruntime` package, in order: `$KILN_PYTHON`,
/// `./.venv/bin/python` (relative to the working directory), `python3`.
#[cfg(feature = "ort")]
fn python_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    let venv = std::path::Path::new(".venv/bin/python");
    if venv.exists() {
        out.push(venv.to_path_buf());
    }
    out.push("python3".into());
    out
}

/// The library inside the `onnxruntime` package that `python` imports, without importing it.
#[cfg(feature = "ort")]
fn python_package_library(python: &std::path::Path) -> Result<PathBuf, String> {
    use std::process::{Command, Stdio};
    let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\nprint(s.origin if s and s.origin else '')";
    let out = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    let origin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if origin.is_empty() {
        return Err("no onnxruntime package".into());
    }
    let capi = std::path::Path::new(&origin)
        .parent()
        .map(|d| d.join("capi"))
        .ok_or_else(|| format!("odd package path {origin}"))?;
    kiln_backend_ort::library::library_in(&capi)
        .ok_or_else(|| format!("no onnxruntime library in {}", capi.display()))
}
