//! `learn.toml`: the documented example parses, defaults apply, and every refusal names the
//! file and the dotted field (checked against a served model's `config.toml` and weights).

mod common;

use common::{write_model, DEEP, DEEP_TENSORS, WIDE, WIDE_TENSORS};
use kiln_learn::config::{LearnConfig, TrainerKind};
use kiln_learn::Error;
use std::path::Path;

/// The `toml` block of `src/config.rs`'s module docs.
fn documented_example() -> String {
    let src = include_str!("../src/config.rs");
    let mut out = String::new();
    let mut inside = false;
    for line in src.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match (inside, doc.trim()) {
            (false, "```toml") => inside = true,
            (true, "```") => break,
            (true, _) => {
                out.push_str(doc);
                out.push('\n');
            }
            _ => {}
        }
    }
    assert!(out.contains("[trainer.ftrl]"), "example not found");
    out
}

fn with_model(text: &str, model: &Path) -> String {
    text.replace(
        "model_dir = \"models/ctr_wide\"",
        &format!("model_dir = {:?}", model.display().to_string()),
    )
}

/// `(field, reason)` of a config error.
fn config_err(e: Error) -> (String, String) {
    match e {
        Error::Config {
            file,
            field,
            reason,
        } => {
            assert_eq!(file, "learn.toml", "{field}: {reason}");
            (field, reason)
        }
        other => panic!("a config error expected, got {other:?}"),
    }
}

fn base(model: &Path) -> String {
    format!(
        "name = \"l\"\nmodel_dir = {:?}\n[sources]\njsonl = [\"-\"]\n",
        model.display().to_string()
    )
}

fn parse_check(text: &str) -> Result<LearnConfig, Error> {
    let c = LearnConfig::parse(text, "learn.toml")?;
    c.check()?;
    Ok(c)
}

#[test]
fn the_documented_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "ctr_wide", WIDE, WIDE_TENSORS);
    let path = dir.path().join("learn.toml");
    let text = with_model(&documented_example(), &model);
    std::fs::write(&path, &text).unwrap();
    let c = LearnConfig::load(&path).unwrap();
    assert_eq!(c.name, "ctr-learner");
    assert_eq!(c.sources.jsonl, ["events.jsonl", "-"]);
    assert_eq!(
        c.features.map.get("user").map(String::as_str),
        Some("user_id")
    );
    assert!(c.features.dense);
    assert_eq!(c.labels.positive, ["click"]);
    assert_eq!(c.join.window_ms, 1_800_000);
    assert_eq!(c.trainer.kind, TrainerKind::Ftrl);
    assert_eq!((c.trainer.ftrl.alpha, c.trainer.ftrl.l2), (0.1, 1.0));
    assert_eq!(c.trainer.deep.batch_size, 256);
    assert_eq!(c.publish.interval_ms, 1000);
    assert_eq!(c.file, path.display().to_string());

    let m = c.model().unwrap();
    assert_eq!(m.name, "ctr_wide");
    assert_eq!(m.version, 1);
    assert_eq!(m.fields, ["user", "item_id", "genres", "hour"]);
    assert_eq!(m.table_dims, [1, 1, 1, 1]);
    assert_eq!(m.dense_width, None);
}

#[test]
fn defaults_fill_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "deep", DEEP, DEEP_TENSORS);
    let c = parse_check(&format!("{}[trainer]\nkind = \"deep\"\n", base(&model))).unwrap();
    assert_eq!(c.join.window_ms, 30 * 60 * 1000);
    assert_eq!(c.join.memory_cap_bytes, 1 << 30);
    assert_eq!(c.labels.positive, ["click"]);
    assert!(c.publish.kafka.is_none() && c.publish.endpoints.is_empty());
    assert_eq!(c.checkpoint.interval_s, 60);
    assert!(c.metrics.addr.is_none());
    let m = c.model().unwrap();
    assert_eq!(m.fields, ["a", "b"]);
    assert_eq!(m.table_dims, [4, 4]);
    assert_eq!(m.dense_width, Some(3));
}

#[test]
fn unknown_and_mistyped_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "ctr_wide", WIDE, WIDE_TENSORS);
    let b = base(&model);
    let cases = [
        ("nmae = 1\n".to_string(), "nmae"),
        (format!("{b}[join]\nwindw_ms = 5\n"), "join.windw_ms"),
        (format!("{b}[join]\nwindow_ms = \"5\"\n"), "join.window_ms"),
        (
            format!("{b}[trainer.ftrl]\nalpa = 1.0\n"),
            "trainer.ftrl.alpa",
        ),
        (format!("{b}[trainer]\nkind = \"sgd\"\n"), "trainer.kind"),
        (
            format!("{b}[trainer.deep]\noptimizer = \"sgd\"\n"),
            "trainer.deep.optimizer",
        ),
        (format!("{b}[features]\nuser = 3\n"), "features.user"),
        (
            format!("{b}[features]\ndense = \"yes\"\n"),
            "features.dense",
        ),
        (
            format!("{b}[publish]\nendpoints = [{{ url = \"http://x\", tokn = \"t\" }}]\n"),
            "publish.endpoints[0].tokn",
        ),
        (
            format!("{b}[metrics]\naddr = \"nowhere\"\n"),
            "metrics.addr",
        ),
    ];
    for (text, want) in cases {
        let (field, reason) = config_err(parse_check(&text).unwrap_err());
        assert_eq!(field, want, "{reason}");
    }
    let e = LearnConfig::parse("name = \n", "learn.toml").unwrap_err();
    assert!(e.to_string().starts_with("learn.toml: "), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "ctr_wide", WIDE, WIDE_TENSORS);
    let b = base(&model);
    let m = model.display().to_string();
    let cases = [
        (format!("name = \"a@b\"\nmodel_dir = {m:?}\n[sources]\njsonl = [\"-\"]\n"), "name"),
        (format!("name = \"a\"\nmodel_dir = {m:?}\n"), "sources"),
        (format!("{b}[sources.kafka]\nbrokers = \"h:1\"\nimpressions_topic = \"i\"\nactions_topic = \"a\"\ngroup_id = \"g\"\n"), "sources"),
        (format!("name = \"a\"\nmodel_dir = {m:?}\n[sources]\njsonl = [\"-\", \"-\"]\n"), "sources.jsonl"),
        (format!("{b}[join]\nwindow_ms = 0\n"), "join.window_ms"),
        (format!("{b}[labels]\npositive = []\n"), "labels.positive"),
        (format!("{b}[trainer.ftrl]\nalpha = 0.0\n"), "trainer.ftrl.alpha"),
        (format!("{b}[trainer.ftrl]\nl1 = -1.0\n"), "trainer.ftrl.l1"),
        (format!("{b}[trainer.deep]\nbatch_size = 0\n"), "trainer.deep.batch_size"),
        (format!("{b}[publish]\ninterval_ms = 0\n"), "publish.interval_ms"),
        (format!("{b}[publish]\nendpoints = [{{ url = \"ftp://x\" }}]\n"), "publish.endpoints[0].url"),
    ];
    for (text, want) in cases {
        let (field, reason) = config_err(parse_check(&text).unwrap_err());
        assert_eq!(field, want, "{reason}");
    }
}

#[test]
fn the_model_must_have_what_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let wide = write_model(dir.path(), "ctr_wide", WIDE, WIDE_TENSORS);
    let deep = write_model(dir.path(), "deep", DEEP, DEEP_TENSORS);
    let cfg_path = wide.join("config.toml").display().to_string();

    // an unknown sparse input: the field and the model's config.toml are named
    let (field, reason) = config_err(
        parse_check(&format!("{}[features]\nusr = \"usr_id\"\n", base(&wide))).unwrap_err(),
    );
    assert_eq!(field, "features.usr");
    assert!(
        reason.contains("usr_id") && reason.contains(&cfg_path),
        "{reason}"
    );

    // two event fields for one input
    let (field, _) = config_err(
        parse_check(&format!(
            "{}[features]\nu1 = \"user_id\"\nu2 = \"user_id\"\n",
            base(&wide)
        ))
        .unwrap_err(),
    );
    assert_eq!(field, "features.u2");

    // ftrl trains wide features only; deep needs deep features
    let (field, reason) = config_err(parse_check(&base(&deep)).unwrap_err());
    assert_eq!(field, "trainer.kind");
    assert!(
        reason.contains("'a'") && reason.contains("deep"),
        "{reason}"
    );
    let (field, _) = config_err(
        parse_check(&format!("{}[trainer]\nkind = \"deep\"\n", base(&wide))).unwrap_err(),
    );
    assert_eq!(field, "trainer.kind");

    // a wide feature whose table is not dim 1, named by its event field
    let bad = write_model(
        dir.path(),
        "bad_wide",
        WIDE,
        &[
            ("w.user.weight", &[4, 1]),
            ("w.item.weight", &[4, 2]),
            ("w.genres.weight", &[4, 1]),
            ("w.hour.weight", &[4, 1]),
        ],
    );
    let (field, reason) = config_err(
        parse_check(&format!("{}[features]\nitem = \"item_id\"\n", base(&bad))).unwrap_err(),
    );
    assert_eq!(field, "features.item");
    assert!(reason.contains("dim 2"), "{reason}");

    // no model, no weights
    let (field, _) = config_err(parse_check(&base(&dir.path().join("absent"))).unwrap_err());
    assert_eq!(field, "model_dir");
    std::fs::remove_file(wide.join("1/model.safetensors")).unwrap();
    let (field, reason) = config_err(parse_check(&base(&wide)).unwrap_err());
    assert_eq!(field, "model_dir");
    assert!(reason.contains("model.safetensors"), "{reason}");
}
