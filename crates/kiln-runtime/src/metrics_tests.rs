//! Tests of the runtime metrics: `kiln_model_info` and the last applied delta's time.

use super::*;
use prometheus_client::encoding::text::encode;

fn info_lines(m: &RuntimeMetrics) -> Vec<String> {
    let mut lines = lines_of(m, "kiln_model_info{");
    lines.sort();
    lines
}

fn lines_of(m: &RuntimeMetrics, prefix: &str) -> Vec<String> {
    let mut r = Registry::default();
    m.register(&mut r);
    let mut text = String::new();
    encode(&mut text, &r).unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn last_applied_delta_is_stamped_per_model() {
    let m = RuntimeMetrics::default();
    let name = "kiln_delta_last_applied_timestamp_seconds{";
    assert!(lines_of(&m, name).is_empty(), "no series before a delta");
    let before = unix_now();
    m.record_delta_applied("ranker");
    let after = unix_now();
    let lines = lines_of(&m, name);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (series, value) = lines[0].rsplit_once(' ').unwrap();
    assert_eq!(
        series,
        r#"kiln_delta_last_applied_timestamp_seconds{model="ranker"}"#
    );
    let t: f64 = value.parse().unwrap();
    assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
    m.record_delta_applied("dlrm");
    let lines = lines_of(&m, name);
    assert_eq!(lines.len(), 2, "one series per model: {lines:?}");
    assert!(lines.contains(&format!("{series} {value}")), "{lines:?}");
}

#[test]
fn owner_and_team_are_optional_config_keys() {
    let c = ModelConfig::parse("owner = \"ana@example.com\"\nteam = \"ranking\"", "m").unwrap();
    assert_eq!(c.owner.as_deref(), Some("ana@example.com"));
    assert_eq!(c.team.as_deref(), Some("ranking"));
    let c = ModelConfig::parse("", "m").unwrap();
    assert_eq!((c.owner, c.team), (None, None));
    let e = ModelConfig::parse("owner = 3", "m").unwrap_err();
    assert!(e.message.contains("owner"), "{e}");
}

#[test]
fn model_info_names_owner_and_team_of_each_loaded_version() {
    let m = RuntimeMetrics::default();
    let owned = ModelConfig::parse("owner = \"ana\"\nteam = \"ranking\"", "ranker").unwrap();
    m.set_model_info("ranker", 1, &owned);
    m.set_model_info("ranker", 2, &owned);
    m.set_model_info("mlp", 1, &ModelConfig::parse("", "mlp").unwrap());
    assert_eq!(
        info_lines(&m),
        [
            r#"kiln_model_info{model="mlp",version="1",owner="",team=""} 1"#,
            r#"kiln_model_info{model="ranker",version="1",owner="ana",team="ranking"} 1"#,
            r#"kiln_model_info{model="ranker",version="2",owner="ana",team="ranking"} 1"#,
        ]
    );
    // a new owner in the config replaces the model's series; other models keep theirs
    let moved = ModelConfig::parse("owner = \"bo\"\nteam = \"ads\"", "ranker").unwrap();
    m.set_model_info("ranker", 2, &moved);
    assert_eq!(
        info_lines(&m),
        [
            r#"kiln_model_info{model="mlp",version="1",owner="",team=""} 1"#,
            r#"kiln_model_info{model="ranker",version="2",owner="bo",team="ads"} 1"#,
        ]
    );
}

#[test]
fn a_retired_version_or_an_unloaded_model_leaves_no_series() {
    let m = RuntimeMetrics::default();
    let owned = ModelConfig::parse("owner = \"ana\"\nteam = \"ranking\"", "ranker").unwrap();
    m.set_model_info("ranker", 1, &owned);
    m.set_model_info("ranker", 2, &owned);
    m.set_model_info("mlp", 1, &ModelConfig::parse("", "mlp").unwrap());
    m.record_delta_applied("ranker");
    m.record_delta_applied("mlp");
    m.forget("ranker", Some(1));
    assert_eq!(
        info_lines(&m),
        [
            r#"kiln_model_info{model="mlp",version="1",owner="",team=""} 1"#,
            r#"kiln_model_info{model="ranker",version="2",owner="ana",team="ranking"} 1"#,
        ]
    );
    let delta = "kiln_delta_last_applied_timestamp_seconds{";
    assert_eq!(
        lines_of(&m, delta).len(),
        2,
        "a version retired keeps the model's"
    );
    m.forget("ranker", None);
    assert_eq!(
        info_lines(&m),
        [r#"kiln_model_info{model="mlp",version="1",owner="",team=""} 1"#]
    );
    let left = lines_of(&m, delta);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(r#"model="mlp""#), "{left:?}");
}
