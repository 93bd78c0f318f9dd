//! Finding and loading the OpenVINO C library (`libopenvino_c`) at run time.
//!
//! Nothing is linked or downloaded at build time: the `openvino` crate's `runtime-linking`
//! opens the library with [`openvino_sys::library::load_from`] on the path given here. The
//! library is the caller's path ([`OpenVinoBackend::new`](crate::OpenVinoBackend::new):
//! `kiln serve --openvino-library` / `KILN_OPENVINO_LIBRARY`; or
//! [`OpenVinoBackend::found`](crate::OpenVinoBackend::found): a path the caller discovered, with
//! how). This crate reads no environment variable and searches nowhere else: looking in a Python
//! `openvino` package is discovery, and belongs to the binary (`crates/kiln/src/openvino.rs`)
//! or the tests. (The `openvino` crate's own search, which reads `OPENVINO_INSTALL_DIR` and
//! friends, is never reached: the library is always loaded from an explicit path first.)
//!
//! The C library loads `libopenvino` and the device plugins from its own directory, so the path
//! must be the real file inside the installation (the PyPI wheel's `openvino/libs/`), not a copy.
//! Only one library can be loaded per process; the first successful load is kept.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The OpenVINO release the project pins (`scripts/requirements.txt`).
pub const PINNED_VERSION: &str = "2026.4.1";

/// How a library path was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--openvino-library` / `KILN_OPENVINO_LIBRARY`.
    Explicit,
    /// Found by the caller; says how (e.g. "the openvino package of .venv/bin/python").
    Found(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Explicit => f.write_str("--openvino-library"),
            Source::Found(how) => f.write_str(how),
        }
    }
}

/// Why the library could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    /// No path was given.
    #[error("openvino library not found ({searched})")]
    NotFound {
        /// What was tried, for the message.
        searched: String,
    },
    /// A given path does not exist.
    #[error("openvino library {} (from {source_name}) does not exist", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
        /// Where the path came from.
        source_name: String,
    },
    /// The file exists but could not be loaded, or is too old.
    #[error("cannot load openvino library {} (from {source_name}): {reason}", path.display())]
    Load {
        /// The path.
        path: PathBuf,
        /// Where the path came from.
        source_name: String,
        /// The loader's message.
        reason: String,
    },
}

impl LibraryError {
    /// The message plus how to provide a working library.
    pub fn with_hint(&self) -> String {
        format!(
            "{self}; OpenVINO >= 2025.1 is needed: install it with `pip install \
             openvino=={PINNED_VERSION}` (the wheel ships the library) and start kiln with \
             `--openvino-library PATH` (or KILN_OPENVINO_LIBRARY) pointing at its \
             openvino/libs/libopenvino_c.so.*, or serve the model with another backend"
        )
    }
}

/// The OpenVINO C library file in `dir` (`libopenvino_c.so.2641`, `libopenvino_c.so`, ...),
/// preferring the versioned real file (the wheel ships no unversioned name).
pub fn library_in(dir: &Path) -> Option<PathBuf> {
    let stem = format!("{}openvino_c", std::env::consts::DLL_PREFIX);
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            name.strip_prefix(&stem)
                .is_some_and(|rest| rest.starts_with('.') && name.contains(suffix))
        })
        .collect();
    // the longest name is the most specific (versioned) one
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// A loaded library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The library file (symbolic links resolved).
    pub path: PathBuf,
    /// How it was found.
    pub source: Source,
    /// OpenVINO's build number (`2026.4.1-...`).
    pub version: String,
}

/// The library once loaded. Failures are not kept, so a later load can succeed after the
/// library is installed.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Loads the library at `given` (once per process) and reports it; once a library is loaded
/// every later call returns it, whatever `given` says.
pub fn runtime(given: Option<(&Path, Source)>) -> Result<Runtime, LibraryError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        if let Some((p, _)) = &given {
            if std::fs::canonicalize(p).ok().as_deref() != Some(rt.path.as_path()) {
                tracing::warn!(requested = %p.display(), loaded = %rt.path.display(),
                    "openvino is already loaded from another file; keeping it");
            }
        }
        return Ok(rt.clone());
    }
    let Some((path, source)) = given.filter(|(p, _)| !p.as_os_str().is_empty()) else {
        return Err(LibraryError::NotFound {
            searched: "no --openvino-library, no KILN_OPENVINO_LIBRARY, no Python openvino \
                       package"
                .into(),
        });
    };
    let real = std::fs::canonicalize(path).map_err(|_| LibraryError::Missing {
        path: path.to_path_buf(),
        source_name: source.to_string(),
    })?;
    let load_error = |reason: String| LibraryError::Load {
        path: real.clone(),
        source_name: source.to_string(),
        reason,
    };
    // the loader panics on a version string it cannot parse; a foreign library must not take
    // the server down
    let loaded = std::panic::catch_unwind(|| openvino_sys::library::load_from(real.clone()))
        .unwrap_or_else(|_| Err("the library's version could not be read".into()));
    loaded.map_err(load_error)?;
    let version = std::panic::catch_unwind(openvino::version)
        .map(|v| v.build_number)
        .map_err(|_| load_error("the library's version could not be read".into()))?;
    tracing::info!(path = %real.display(), source = %source, %version, "openvino library loaded");
    let rt = Runtime {
        path: real,
        source,
        version,
    };
    *slot = Some(rt.clone());
    Ok(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn picks_the_versioned_c_library() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libopenvino.so.2641",
            "libopenvino_c.so.2641",
            "libopenvino_onnx_frontend.so.2641",
            "libopenvino_intel_cpu_plugin.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let got = library_in(dir.path()).unwrap();
        assert_eq!(got.file_name().unwrap(), "libopenvino_c.so.2641");
        assert!(library_in(&dir.path().join("none")).is_none());
    }

    #[test]
    fn missing_paths_are_errors_with_a_hint() {
        let e = runtime(Some((
            Path::new("/nonexistent/libopenvino_c.so.2641"),
            Source::Explicit,
        )))
        .unwrap_err();
        assert!(matches!(e, LibraryError::Missing { .. }), "{e}");
        let msg = e.with_hint();
        assert!(
            msg.contains("pip install openvino==2026.4.1") && msg.contains("--openvino-library"),
            "{msg}"
        );
        let e = runtime(None).unwrap_err();
        assert!(matches!(e, LibraryError::NotFound { .. }), "{e}");
    }
}
