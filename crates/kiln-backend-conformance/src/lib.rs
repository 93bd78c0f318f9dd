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

use kiln_backend_ort::OrtBackend;
use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    kiln_testkit::repo_root()
}

/// Where the tests find the onnxruntime library ([`kiln_testkit::ort_library_path`]:
/// `KILN_ORT_LIBRARY`, `ORT_DYLIB_PATH`, then the Python `onnxruntime` package of
/// `$KILN_PYTHON`, the repository's `.venv` or `python3`).
pub fn locate_ort_library() -> Result<PathBuf, String> {
    kiln_testkit::ort_library_path()
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
            kiln_testkit::skip("onnxruntime test", format!("library absent: {why}"));
            None
        }
    }
}
