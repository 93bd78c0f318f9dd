//! Shared libraries that Python packages ship (onnxruntime, openvino, mkl), found by asking
//! interpreters where a package lives, without importing it: `$KILN_PYTHON`,
//! `./.venv/bin/python` (relative to the working directory), `python3`, in that order.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The interpreters asked, in order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    let venv = Path::new(".venv/bin/python");
    if venv.exists() {
        out.push(venv.to_path_buf());
    }
    out.push("python3".into());
    out
}

/// What `find` gives for the first interpreter it succeeds with, and that interpreter; else
/// why it failed with each, joined.
pub fn first<T>(find: impl Fn(&Path) -> Result<T, String>) -> Result<(T, PathBuf), String> {
    let mut tried = Vec::new();
    for python in candidates() {
        match find(&python) {
            Ok(v) => return Ok((v, python)),
            Err(why) => tried.push(format!("{}: {why}", python.display())),
        }
    }
    Err(tried.join("; "))
}

/// The trimmed standard output of `script` run by `python`; empty output is `absent`.
pub fn ask(python: &Path, script: &str, absent: &str) -> Result<String, String> {
    let out = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        return Err(absent.to_string());
    }
    Ok(text)
}

/// The folder of `package` (where its `__init__.py` is) as `python` would import it.
#[cfg(any(feature = "ort", feature = "openvino"))]
pub fn package_dir(python: &Path, package: &str) -> Result<PathBuf, String> {
    let script = format!(
        "import importlib.util as u\ns = u.find_spec('{package}')\nprint(s.origin if s and s.origin else '')"
    );
    let origin = ask(python, &script, &format!("no {package} package"))?;
    Path::new(&origin)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("odd package path {origin}"))
}
