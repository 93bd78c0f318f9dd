//! Finding and loading the ONNX Runtime shared library at run time.
//!
//! Nothing is linked or downloaded at build time. The library is looked up, in this order:
//! 1. a path the caller gives ([`OrtBackend::new`](crate::OrtBackend::new): `kiln serve
//!    --ort-library` / `KILN_ORT_LIBRARY`; or [`OrtBackend::found`](crate::OrtBackend::found):
//!    a path the caller discovered, with how);
//! 2. the `ORT_DYLIB_PATH` environment variable, the ort crate's own convention for
//!    `load-dynamic`, kept so that this backend loads what ort's documentation says it would.
//!
//! This crate does not search further: looking in a Python `onnxruntime` package (spawning an
//! interpreter) is discovery, and belongs to the binary (`crates/kiln/src/onnx.rs`) or the tests.
//!
//! ONNX Runtime allows one library and one environment per process, so the first successful
//! load is kept for the life of the process and shared by every model.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The onnxruntime release the project pins (`scripts/requirements.txt`).
pub const PINNED_VERSION: &str = "1.32.0";

/// The oldest onnxruntime minor version this build can use (ort's API level).
pub const MIN_MINOR_VERSION: u32 = 31;

/// How a library path was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--ort-library` / `KILN_ORT_LIBRARY`.
    Explicit,
    /// The `ORT_DYLIB_PATH` environment variable.
    OrtDylibPath,
    /// Found by the caller; says how (e.g. "the onnxruntime package of .venv/bin/python").
    Found(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Explicit => f.write_str("--ort-library"),
            Source::OrtDylibPath => f.write_str("ORT_DYLIB_PATH"),
            Source::Found(how) => f.write_str(how),
        }
    }
}

/// Why the library could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    /// No path was given and `ORT_DYLIB_PATH` is not set.
    #[error("onnxruntime library not found ({searched})")]
    NotFound {
        /// What was tried, for the message.
        searched: String,
    },
    /// A given path does not exist.
    #[error("onnxruntime library {} (from {source_name}) does not exist", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
        /// Where the path came from.
        source_name: String,
    },
    /// The file exists but could not be loaded or is too old.
    #[error("cannot load onnxruntime library {} (from {source_name}): {reason}", path.display())]
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
            "{self}; onnxruntime >= 1.{MIN_MINOR_VERSION} is needed: install it with \
             `pip install onnxruntime=={PINNED_VERSION}` (the wheel ships the library) and start \
             kiln with `--ort-library PATH` (or KILN_ORT_LIBRARY / ORT_DYLIB_PATH) pointing at \
             its capi/libonnxruntime.so.{PINNED_VERSION}, or use backend = \"tract\""
        )
    }
}

/// A library path and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The real file (symbolic links resolved).
    pub path: PathBuf,
    /// How it was found.
    pub source: Source,
}

/// Finds the library without loading it: `explicit` (`--ort-library`), else `ORT_DYLIB_PATH`.
pub fn locate(explicit: Option<&Path>) -> Result<Located, LibraryError> {
    locate_from(explicit.map(|p| (p, Source::Explicit)))
}

/// [`locate`] with a given path that came from `source`.
fn locate_from(given: Option<(&Path, Source)>) -> Result<Located, LibraryError> {
    let resolve = |path: &Path, source: Source| {
        std::fs::canonicalize(path)
            .map(|real| Located {
                path: real,
                source: source.clone(),
            })
            .map_err(|_| LibraryError::Missing {
                path: path.to_path_buf(),
                source_name: source.to_string(),
            })
    };
    if let Some((p, source)) = given.filter(|(p, _)| !p.as_os_str().is_empty()) {
        return resolve(p, source);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return resolve(Path::new(&p), Source::OrtDylibPath);
    }
    Err(LibraryError::NotFound {
        searched: "no --ort-library, no ORT_DYLIB_PATH".into(),
    })
}

/// The onnxruntime library file in `dir` (`libonnxruntime.so.1.32.0`, `libonnxruntime.so`, ...),
/// preferring the versioned real file.
pub fn library_in(dir: &Path) -> Option<PathBuf> {
    let stem = format!("{}onnxruntime", std::env::consts::DLL_PREFIX);
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            let Some(rest) = name.strip_prefix(&stem) else {
                return false;
            };
            // libonnxruntime.so, libonnxruntime.so.1.32.0, libonnxruntime.1.32.0.dylib; not
            // libonnxruntime_providers_shared.so
            (rest.starts_with('.') || rest.is_empty()) && name.contains(suffix)
        })
        .collect();
    // the longest name is the most specific (versioned) one
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// A loaded library and the process's one ONNX Runtime environment.
pub struct Runtime {
    /// The environment every session is created in.
    pub env: ort::environment::Environment,
    /// The library file.
    pub path: PathBuf,
    /// How it was found.
    pub source: Source,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("path", &self.path)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The process-wide runtime once loaded. Failures are not kept, so a later load can succeed
/// after the library is installed.
static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// Loads the library (once per process) and creates the environment: from `given` (a path and
/// where it came from), else as [`locate`] finds it.
///
/// Once a library is loaded every later call returns it, whatever `given` says: ONNX Runtime
/// cannot load a second one into the same process.
pub fn runtime(given: Option<(&Path, Source)>) -> Result<Arc<Runtime>, LibraryError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        if let Some((p, _)) = &given {
            if std::fs::canonicalize(p).ok().as_deref() != Some(rt.path.as_path()) {
                tracing::warn!(
                    requested = %p.display(),
                    loaded = %rt.path.display(),
                    "onnxruntime is already loaded from another file; keeping it"
                );
            }
        }
        return Ok(rt.clone());
    }
    let located = locate_from(given)?;
    let load_error = |reason: String| LibraryError::Load {
        path: located.path.clone(),
        source_name: located.source.to_string(),
        reason,
    };
    let builder = ort::init_from(&located.path).map_err(|e| load_error(e.to_string()))?;
    let env = builder
        .with_name("kiln")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_error(format!("cannot create the environment: {e}")))?;
    tracing::info!(
        path = %located.path.display(),
        source = %located.source,
        "onnxruntime library loaded"
    );
    let rt = Arc::new(Runtime {
        env,
        path: located.path,
        source: located.source,
    });
    *slot = Some(rt.clone());
    Ok(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn picks_the_versioned_library_and_skips_providers() {
        let dir = std::env::temp_dir().join(format!("kiln-ort-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "libonnxruntime_providers_shared.so",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime.so",
            "other.so",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let got = library_in(&dir).unwrap();
        assert_eq!(got.file_name().unwrap(), "libonnxruntime.so.1.32.0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_explicit_path_is_an_error_with_a_hint() {
        let e = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(matches!(e, LibraryError::Missing { .. }), "{e}");
        let msg = e.with_hint();
        assert!(
            msg.contains("pip install onnxruntime==1.32.0") && msg.contains("--ort-library"),
            "{msg}"
        );
    }
}
