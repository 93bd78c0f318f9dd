//! The alert rules under `deploy/alerts`: the generated rule files are what `rules.src.yaml`
//! gives (`generate.py --check`), `promtool check rules` accepts them, every alert has a
//! `promtool test rules` case under `deploy/alerts/tests` and they all pass, and the example
//! Alertmanager configuration routes by `team` and passes `amtool check-config`.
//!
//! Needs promtool and amtool (Debian's `prometheus` and `prometheus-alertmanager`, installed by
//! `scripts/setup-system.sh`) and a Python with PyYAML; without them the test is skipped with a
//! message, except when `CI` is set, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

const TEST: &str = "alert_rules";

fn alerts_dir() -> PathBuf {
    kiln_testkit::repo_root().join("deploy/alerts")
}

/// Runs `cmd` in `dir` and returns its standard output; panics with its output when it fails.
fn run_ok(dir: &Path, cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tool` when it runs, else `None` after skipping (which fails under CI).
fn tool(name: &str) -> Option<PathBuf> {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        kiln_testkit::skip(
            TEST,
            format!("no {name} (Debian's prometheus packages; run scripts/setup-system.sh)"),
        );
        return None;
    }
    Some(PathBuf::from(name))
}

#[test]
fn generated_rules_are_current_and_pass_promtool() {
    let Some(python) = kiln_testkit::python(TEST, &["yaml"]) else {
        return;
    };
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = alerts_dir();
    run_ok(&dir, Command::new(&python).args(["generate.py", "--check"]));
    let out = run_ok(
        &dir,
        Command::new(&promtool).args(["check", "rules", "prometheus-rules.yaml"]),
    );
    assert!(out.contains("SUCCESS"), "{out}");

    let tests: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .expect("deploy/alerts/tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| format!("tests/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert!(
        !tests.is_empty(),
        "no promtool tests under deploy/alerts/tests"
    );
    run_ok(
        &dir,
        Command::new(&promtool).args(["test", "rules"]).args(&tests),
    );

    // every alert of the rules file has at least one promtool test case
    let rules = std::fs::read_to_string(dir.join("prometheus-rules.yaml")).expect("rules");
    let cases: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(dir.join(t)).expect("test file"))
        .collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 12, "alerts: {alerts:?}");
    for alert in alerts {
        assert!(
            cases.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test case under deploy/alerts/tests"
        );
    }
}

#[test]
fn operator_rule_holds_the_same_groups() {
    let Some(python) = kiln_testkit::python(TEST, &["yaml"]) else {
        return;
    };
    let script = "import yaml\n\
        plain = yaml.safe_load(open('prometheus-rules.yaml'))\n\
        op = yaml.safe_load(open('prometheusrule.yaml'))\n\
        assert op['apiVersion'] == 'monitoring.coreos.com/v1' and op['kind'] == 'PrometheusRule', op\n\
        assert op['spec']['groups'] == plain['groups']\n";
    run_ok(&alerts_dir(), Command::new(python).args(["-c", script]));
}

#[test]
fn example_alertmanager_config_routes_by_team() {
    let Some(amtool) = tool("amtool") else {
        return;
    };
    let dir = alerts_dir();
    let config = std::fs::read_to_string(dir.join("alertmanager.example.yml")).expect("config");
    assert!(config.contains("team=\"ranking\""), "{config}");
    run_ok(
        &dir,
        Command::new(&amtool).args(["check-config", "alertmanager.example.yml"]),
    );
    // an alert with team="ranking" reaches that team's receiver, one without a team the default
    let out = run_ok(
        &dir,
        Command::new(&amtool).args([
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.example.yml",
            "team=ranking",
            "severity=page",
            "model=ranker",
        ]),
    );
    assert_eq!(out.trim(), "ranking-pager", "{out}");
    let out = run_ok(
        &dir,
        Command::new(&amtool).args([
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.example.yml",
            "severity=ticket",
            "model=broken",
        ]),
    );
    assert_eq!(out.trim(), "platform", "{out}");
}
