//! Intel MKL for the recsys backend's dense layers: where `kiln serve` finds the library.
//!
//! `--mkl-library` (`KILN_MKL_LIBRARY`) names `libmkl_rt.so*`, or `off` to run every recsys
//! model on the `gemm` crate; else the library of a Python `mkl` package (`pip install mkl`;
//! `scripts/setup-python.sh` installs it into `.venv`) is used: the interpreters
//! `$KILN_PYTHON`, `./.venv/bin/python` (relative to the working directory) and `python3` are
//! asked, in order, which files their `mkl` distribution installed, without importing
//! anything. Nothing found: the recsys backend logs why and keeps the `gemm` crate. MKL runs
//! sequentially inside each of a model's instance threads (see `kiln_recsys::mkl`).

use kiln_recsys::RecsysOptions;
use std::path::{Path, PathBuf};

/// The recsys backend's options for `--mkl-library` (`flag`).
pub fn recsys_options(flag: Option<PathBuf>) -> RecsysOptions {
    let (mkl_library, mkl_missing) = match flag {
        Some(p) if p.as_os_str() == "off" => (None, Some("--mkl-library off".to_string())),
        Some(p) => (Some(p), None),
        None => match python_mkl() {
            Ok(p) => {
                tracing::debug!(library = %p.display(), "MKL from the Python mkl package");
                (Some(p), None)
            }
            Err(why) => (None, Some(why)),
        },
    };
    RecsysOptions {
        mkl_library,
        mkl_missing,
        cpu_bf16: None,
    }
}

/// `libmkl_rt.so*` of the first interpreter whose `mkl` distribution has one.
fn python_mkl() -> Result<PathBuf, String> {
    crate::pylib::first(python_package_library)
        .map(|(path, _)| path)
        .map_err(|tried| {
            format!("no --mkl-library / KILN_MKL_LIBRARY and no Python mkl package ({tried})")
        })
}

fn python_package_library(python: &Path) -> Result<PathBuf, String> {
    let script = "import importlib.metadata as m\ntry:\n    d = m.distribution('mkl')\nexcept m.PackageNotFoundError:\n    raise SystemExit(0)\nfiles = sorted(str(d.locate_file(f)) for f in d.files or [] if f.name.startswith('libmkl_rt.so'))\nprint(files[0] if files else '')";
    let path = PathBuf::from(crate::pylib::ask(python, script, "no mkl package")?);
    match path.exists() {
        true => Ok(std::fs::canonicalize(&path).unwrap_or(path)),
        false => Err(format!("{} is listed but missing", path.display())),
    }
}
