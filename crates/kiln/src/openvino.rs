//! The OpenVINO backend of `kiln serve` (cargo feature `openvino`, on by default): registered
//! next to the others, for models whose config says `backend = "openvino"`.
//!
//! The OpenVINO C library is `--openvino-library` (`KILN_OPENVINO_LIBRARY`), else the one in a
//! Python `openvino` package, found here: the interpreters `$KILN_PYTHON`, `./.venv/bin/python`
//! (relative to the working directory) and `python3` are asked, in order, where the package
//! lives, and its `libs/libopenvino_c.so.*` is used. Without a library the backend is still
//! registered: its models fail to load with a message naming the flag, and the others serve.

use kiln_runtime::Backends;
use std::path::PathBuf;

/// Registers the OpenVINO backend in `backends`, with the library of `library`
/// (`--openvino-library`) or the Python `openvino` package's.
pub fn register(backends: &mut Backends, library: Option<PathBuf>) -> anyhow::Result<()> {
    #[cfg(feature = "openvino")]
    {
        let backend = openvino_backend(library);
        match backend.probe() {
            Ok(path) => tracing::info!(library = %path.display(), "openvino available"),
            Err(why) => tracing::info!(reason = %why,
                "openvino not available; models with backend = \"openvino\" will fail to load"),
        }
        backends.register(std::sync::Arc::new(backend));
        Ok(())
    }
    #[cfg(not(feature = "openvino"))]
    {
        let _ = backends;
        match library {
            Some(p) => anyhow::bail!(
                "--openvino-library {}: this kiln was built without the `openvino` feature",
                p.display()
            ),
            None => Ok(()),
        }
    }
}

/// The OpenVINO backend with the library of `--openvino-library`, else the Python `openvino`
/// package's.
#[cfg(feature = "openvino")]
fn openvino_backend(library: Option<PathBuf>) -> kiln_backend_openvino::OpenVinoBackend {
    use kiln_backend_openvino::OpenVinoBackend;
    if library.is_some() {
        return OpenVinoBackend::new(library);
    }
    let mut tried = Vec::new();
    for python in python_candidates() {
        match python_package_library(&python) {
            Ok(path) => {
                let how = format!("the openvino package of {}", python.display());
                return OpenVinoBackend::found(path, how);
            }
            Err(why) => tried.push(format!("{}: {why}", python.display())),
        }
    }
    tracing::debug!(tried = %tried.join("; "), "no python openvino package");
    OpenVinoBackend::new(None)
}

/// The interpreters asked for an `openvino` package, in order: `$KILN_PYTHON`,
/// `./.venv/bin/python` (relative to the working directory), `python3`.
#[cfg(feature = "openvino")]
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

/// The C library inside the `openvino` package that `python` imports, without importing it.
#[cfg(feature = "openvino")]
fn python_package_library(python: &std::path::Path) -> Result<PathBuf, String> {
    use std::process::{Command, Stdio};
    let script = "import importlib.util as u\ns = u.find_spec('openvino')\nprint(s.origin if s and s.origin else '')";
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
        return Err("no openvino package".into());
    }
    let libs = std::path::Path::new(&origin)
        .parent()
        .map(|d| d.join("libs"))
        .ok_or_else(|| format!("odd package path {origin}"))?;
    kiln_backend_openvino::library::library_in(&libs)
        .ok_or_else(|| format!("no openvino library in {}", libs.display()))
}
