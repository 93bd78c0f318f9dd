use super::*;

fn fields(key: &str, v: &[&str]) -> TraceFields {
    let mut f = TraceFields::default();
    let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    parse_trace_field(&mut f, key, &v).expect("valid setting");
    f
}

#[test]
fn every_request_is_traced_by_default() {
    let t = TraceSettings::default();
    assert!((0..5).all(|_| t.sample("m")));
    assert_eq!(t.get(None), Trace::defaults());
}

#[test]
fn rate_samples_one_in_n_and_count_limits() {
    let t = TraceSettings::default();
    t.update(None, fields("trace_rate", &["3"]), TraceFields::default());
    let got: Vec<bool> = (0..7).map(|_| t.sample("m")).collect();
    assert_eq!(got, [true, false, false, true, false, false, true]);
    t.update(None, fields("trace_count", &["2"]), TraceFields::default());
    let traced = (0..30).filter(|_| t.sample("m")).count();
    assert_eq!(traced, 2);
    assert_eq!(t.get(None).count, 0);
}

#[test]
fn a_model_off_is_not_traced_and_others_follow_the_server() {
    let t = TraceSettings::default();
    let off = t.update(
        Some("a"),
        fields("trace_level", &["OFF"]),
        TraceFields::default(),
    );
    assert!(off.off());
    assert!(!t.sample("a"));
    assert!(t.sample("b"));
    // the model's override cleared: it follows the server-wide value again
    let back = t.update(
        Some("a"),
        TraceFields::default(),
        fields("trace_level", &["OFF"]),
    );
    assert_eq!(back, Trace::defaults());
    assert!(t.sample("a"));
}

#[test]
fn malformed_settings_name_the_field() {
    let mut f = TraceFields::default();
    for (k, v) in [
        ("trace_rate", "0"),
        ("trace_rate", "x"),
        ("trace_count", "-2"),
        ("trace_level", "LOUD"),
        ("log_frequency", "-1"),
        ("trace_file", "/tmp/t.json"),
        ("colour", "red"),
    ] {
        let e = parse_trace_field(&mut f, k, &[v.to_string()]).unwrap_err();
        assert!(e.message.contains(k), "{k}: {}", e.message);
    }
    assert_eq!(f, TraceFields::default());
}

#[test]
fn log_settings_must_be_a_level_threshold() {
    let ok = LogSettings {
        log_file: String::new(),
        log_info: true,
        log_warning: true,
        log_error: true,
        log_verbose_level: 1,
        log_format: "default".into(),
    };
    assert!(check_log_settings(&ok).is_ok());
    let e = check_log_settings(&LogSettings {
        log_warning: false,
        ..ok.clone()
    })
    .unwrap_err();
    assert!(e.message.contains("log_warning"));
    let e = check_log_settings(&LogSettings {
        log_format: "xml".into(),
        ..ok.clone()
    })
    .unwrap_err();
    assert!(e.message.contains("log_format"));
    let e = check_log_settings(&LogSettings {
        log_file: "/tmp/x".into(),
        ..ok
    })
    .unwrap_err();
    assert!(e.message.contains("log_file"));
}
