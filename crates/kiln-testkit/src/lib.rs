//! What Kiln's tests share to find their environment: the repository root, the project's Python
//! (`scripts/setup-python.sh` creates `.venv`), the onnxruntime and OpenVINO shared libraries,
//! FUSE; and one way to skip a test whose environment is missing. [`kafka`] starts a
//! Kafka-protocol broker.
//!
//! A skipped test says so on the stderr handle (the harness hides `eprintln!` of passing tests).
//! When the `CI` environment variable is set (`.ci/run` sets it), a test that would skip fails
//! instead: CI installs everything, so a skip there means a test that silently asserted nothing.
//!
//! Only tests use this crate (it is a dev-dependency); the binary does its own discovery of the
//! onnxruntime and OpenVINO libraries (`crates/kiln/src/onnx.rs`, `crates/kiln/src/openvino.rs`).

pub mod dataset;
pub mod kafka;
pub mod moto;

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root (two levels above this crate), with symbolic links resolved.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// An HTTP client for the tests. The workspace's reqwest is built without a default TLS crypto
/// provider (opendal's setup), so this installs rustls' ring provider first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Whether the tests run under CI: `CI` is set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Reports that `test` is skipped because of `why`, or panics when [`in_ci`].
pub fn skip(test: &str, why: impl Display) {
    if in_ci() {
        panic!("{test}: {why}; CI is set, so the test fails instead of skipping");
    }
    // straight to the stderr handle: the harness captures eprintln! of passing tests
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The Python interpreters tried, in order: `$KILN_PYTHON` alone when set, else the repository's
/// `.venv/bin/python` and `python3`.
pub fn python_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    vec![
        repo_root().join(".venv/bin/python"),
        PathBuf::from("python3"),
    ]
}

/// Whether `python` runs and imports every one of `modules`.
pub fn python_imports(python: &Path, modules: &[&str]) -> bool {
    let script = modules
        .iter()
        .map(|m| format!("import {m}\n"))
        .collect::<String>();
    Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first of [`python_candidates`] that imports `modules`, or `None` after [`skip`]ping
/// `test` (which fails under CI).
pub fn python(test: &str, modules: &[&str]) -> Option<PathBuf> {
    let candidates = python_candidates();
    if let Some(p) = candidates.iter().find(|p| python_imports(p, modules)) {
        return Some(p.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    skip(
        test,
        format!(
            "no Python with {} ({} tried; run scripts/setup-python.sh or set KILN_PYTHON)",
            modules.join(", "),
            tried.join(", ")
        ),
    );
    None
}

/// The directory of the package `package` that `python` would import, found without importing it.
pub fn python_package_dir(python: &OsStr, package: &str) -> Result<PathBuf, String> {
    let script = format!(
        "import importlib.util as u\ns = u.find_spec('{package}')\nprint(s.origin if s and s.origin else '')"
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{}: cannot run: {e}", Path::new(python).display()))?;
    let origin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || origin.is_empty() {
        return Err(format!(
            "{}: no {package} package",
            Path::new(python).display()
        ));
    }
    Path::new(&origin)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("odd package path {origin}"))
}

/// The onnxruntime library the tests use: `KILN_ORT_LIBRARY`, else `ORT_DYLIB_PATH`, else the
/// `capi/libonnxruntime.so.*` of the `onnxruntime` package of the first of
/// [`python_candidates`] that has one.
pub fn ort_library_path() -> Result<PathBuf, String> {
    for var in ["KILN_ORT_LIBRARY", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return match p.exists() {
                true => Ok(p),
                false => Err(format!("{var}={} does not exist", p.display())),
            };
        }
    }
    let mut tried = Vec::new();
    for python in python_candidates() {
        match python_package_dir(python.as_os_str(), "onnxruntime") {
            Ok(dir) => match versioned_library(&dir.join("capi")) {
                Some(lib) => return Ok(lib),
                None => tried.push(format!("no library in {}/capi", dir.display())),
            },
            Err(why) => tried.push(why),
        }
    }
    Err(format!(
        "onnxruntime library not found (no KILN_ORT_LIBRARY, no ORT_DYLIB_PATH; {}); \
         run scripts/setup-python.sh",
        tried.join("; ")
    ))
}

/// [`ort_library_path`], or `None` after [`skip`]ping `test` (which fails under CI).
pub fn ort_library(test: &str) -> Option<PathBuf> {
    match ort_library_path() {
        Ok(p) => Some(p),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

/// The OpenVINO C library the tests use: `KILN_OPENVINO_LIBRARY`, else the
/// `libs/libopenvino_c.so.*` of the `openvino` package of the first of [`python_candidates`]
/// that has one.
pub fn openvino_library_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KILN_OPENVINO_LIBRARY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match p.exists() {
            true => Ok(p),
            false => Err(format!(
                "KILN_OPENVINO_LIBRARY={} does not exist",
                p.display()
            )),
        };
    }
    let mut tried = Vec::new();
    for python in python_candidates() {
        match python_package_dir(python.as_os_str(), "openvino") {
            Ok(dir) => match prefixed_library(&dir.join("libs"), "openvino_c.") {
                Some(lib) => return Ok(lib),
                None => tried.push(format!("no library in {}/libs", dir.display())),
            },
            Err(why) => tried.push(why),
        }
    }
    Err(format!(
        "openvino library not found (no KILN_OPENVINO_LIBRARY; {}); run scripts/setup-python.sh",
        tried.join("; ")
    ))
}

/// [`openvino_library_path`], or `None` after [`skip`]ping `test` (which fails under CI).
pub fn openvino_library(test: &str) -> Option<PathBuf> {
    match openvino_library_path() {
        Ok(p) => Some(p),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

/// The versioned onnxruntime library in a wheel's `capi` directory (`libonnxruntime.so.1.32.0`,
/// `libonnxruntime.1.32.0.dylib`).
fn versioned_library(capi: &Path) -> Option<PathBuf> {
    prefixed_library(capi, "onnxruntime.")
}

/// The library in `dir` whose name starts with `lib<stem>` (`stem` ends with the dot before
/// the version), the longest such name first.
fn prefixed_library(dir: &Path, stem: &str) -> Option<PathBuf> {
    let prefix = format!("{}{stem}", std::env::consts::DLL_PREFIX);
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.contains(suffix))
        })
        .collect();
    // the longest name is the most specific (versioned) one
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// Why FUSE mounts cannot be made here, or `Ok` when they can: `/dev/fuse` exists and the
/// process is root or has `fusermount3` / `fusermount`.
pub fn fuse_status() -> Result<(), String> {
    let dev = Path::new("/dev/fuse").exists();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = ["fusermount3", "fusermount"]
        .iter()
        .any(|b| Command::new(b).arg("-V").output().is_ok());
    if dev && (root || fusermount) {
        return Ok(());
    }
    Err(format!(
        "FUSE unavailable (/dev/fuse present: {dev}, root: {root}, fusermount: {fusermount})"
    ))
}

/// Whether FUSE mounts can be made here ([`fuse_status`]); when not, [`skip`]s `test` (which
/// fails under CI) and returns false.
pub fn fuse_available(test: &str) -> bool {
    match fuse_status() {
        Ok(()) => true,
        Err(why) => {
            skip(test, why);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_holds_the_workspace_manifest() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("crates/kiln-testkit").is_dir());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn picks_the_versioned_library_and_skips_providers() {
        let dir = std::env::temp_dir().join(format!("kiln-testkit-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "libonnxruntime_providers_shared.so",
            "libonnxruntime.so.1.32.0",
            "other.so",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let got = versioned_library(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got.unwrap().file_name().unwrap(),
            "libonnxruntime.so.1.32.0"
        );
    }

    #[test]
    fn a_missing_python_is_no_python() {
        assert!(!python_imports(Path::new("/nonexistent/python"), &["sys"]));
        assert!(python_package_dir(OsStr::new("/nonexistent/python"), "onnxruntime").is_err());
    }
}
