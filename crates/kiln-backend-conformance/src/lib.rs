//! The backend conformance suite: one set of checks that every Kiln backend must pass, run
//! against each compiled-in backend by this crate's integration tests (`tests/tract.rs`,
//! `tests/ort.rs`).
//!
//! The checks use the example models (`examples/models`) and the suite's own small models
//! (`tests/conformance/models`, written by `tests/conformance/gen_models.py`): golden outputs
//! computed by onnxruntime, every protocol data type, BYTES, several inputs and outputs, a
//! variable dimension, input dims fixed by the weights although the file leaves them symbolic,
//! unbatched models, batched output equal to one-by-one output, and load
//! errors for corrupt files and configs that disagree with the file.
//!
//! The ONNX Runtime tests need the onnxruntime shared library (`scripts/setup-python.sh`
//! installs it into `.venv`). Without it they are skipped with a message on stderr, except
//! when `CI` is set, where they fail.

pub mod golden;
pub mod suite;

use kiln_backend_ort::library;
use kiln_backend_ort::OrtBackend;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// Where the tests find the onnxruntime library: `KILN_ORT_LIBRARY`, else the usual search
/// (`ORT_DYLIB_PATH`, `KILN_PYTHON`) with the repository's `.venv` asked before `python3`.
pub fn locate_ort_library() -> Result<PathBuf, String> {
    let explicit = std::env::var_os("KILN_ORT_LIBRARY")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let mut pythons: Vec<OsString> = Vec::new();
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        pythons.push(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        pythons.push(venv.into_os_string());
    }
    pythons.push("python3".into());
    library::locate_with(explicit.as_deref(), &pythons)
        .map(|l| l.path)
        .map_err(|e| e.with_hint())
}

/// The ONNX Runtime backend with its library loaded, or `None` after saying on stderr why the
/// test is skipped. Panics instead when `CI` is set: CI installs the library.
pub fn ort_backend() -> Option<OrtBackend> {
    let found = locate_ort_library().and_then(|path| {
        let backend = OrtBackend::new(Some(path));
        backend.probe().map(|_| backend)
    });
    match found {
        Ok(b) => Some(b),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("onnxruntime tests: the library is required when CI is set: {why}");
            }
            // straight to the stderr handle: the harness captures eprintln! of passing tests
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED onnxruntime test (library absent): {why}"
            );
            None
        }
    }
}
