//! The Grafana dashboards under `deploy/grafana` are what their generator writes
//! (`gen_dashboards.py --check`): a panel changed in the generator and not regenerated, or a
//! dashboard edited by hand, fails here.

use std::process::Command;

#[test]
fn committed_dashboards_are_what_the_generator_writes() {
    let Some(python) = kiln_testkit::python("dashboards", &[]) else {
        return;
    };
    let dir = kiln_testkit::repo_root().join("deploy/grafana");
    let out = Command::new(&python)
        .args(["gen_dashboards.py", "--check"])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
