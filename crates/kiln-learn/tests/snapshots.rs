//! Snapshots for late replicas from the wide trainer: the served tables carry the learner's
//! delta source at the snapshot's sequence numbers, the manifest the topic offsets right after
//! its batch, and `LATEST` names it only once it is complete.

use std::collections::HashMap;

use kiln_embed::{Table, TableConfig};
use kiln_learn::config::LearnConfig;
use kiln_learn::optim::ftrl::FtrlParams;
use kiln_learn::snapshot::Snapshots;
use kiln_learn::wide::WideTrainer;
use kiln_learn::{Sample, Trainer};

#[test]
fn a_snapshot_names_the_source_at_its_batch_and_the_offsets_after_it() {
    let model_dir = kiln_testkit::repo_root().join("examples/models/ctr_wide");
    let text = format!(
        "name = \"l\"\nmodel_dir = \"{}\"\n[sources]\njsonl = [\"-\"]\n[labels]\npositive = [\"click\"]\n",
        model_dir.display()
    );
    let model = LearnConfig::parse(&text, "learn.toml")
        .expect("config")
        .model()
        .expect("model");
    let mut trainer = WideTrainer::new(&model.spec, FtrlParams::default()).expect("trainer");
    let sample = Sample {
        id: "i".into(),
        ts_ms: 1,
        label: true,
        keys: vec![vec![11], vec![22], vec![33, 34], vec![44]],
        dense: Vec::new(),
        seen_ms: 1,
    };
    trainer.train(&[sample.clone(), sample]);
    let dims: HashMap<String, usize> = model
        .spec
        .tables
        .iter()
        .map(|t| (t.name.clone(), 1))
        .collect();
    let seqs: HashMap<String, u64> = dims.keys().map(|t| (t.clone(), 3)).collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let mut snaps =
        Snapshots::open(dir.path(), "ctr_wide", "kiln.deltas.ctr_wide", dims).expect("open");
    snaps.begin(&trainer, 5, "l@2", &seqs).expect("begin");
    let root = dir.path().join("ctr_wide");
    assert!(
        !root.join("LATEST").exists(),
        "not before its batch is acknowledged"
    );
    let offsets = [(0, 17i64)].into_iter().collect();
    let done = snaps
        .finish(&offsets, 99)
        .expect("finish")
        .expect("a snapshot");
    assert_eq!(done, root.join("1"));
    assert_eq!(
        std::fs::read_to_string(root.join("LATEST"))
            .expect("LATEST")
            .trim(),
        "1"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(done.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["topic"], "kiln.deltas.ctr_wide");
    assert_eq!(manifest["offsets"]["0"], 17);
    assert_eq!(manifest["model"], "ctr_wide");

    let (table, _) = Table::restore(TableConfig::new("item_id", 1), &done.join("item_id.snap"))
        .expect("restore");
    assert_eq!(table.last_sequence("l@2"), Some(3));
    let served = trainer.rows("item_id", &[22]).expect("table")[0].clone();
    assert_eq!(
        table.get(22),
        served,
        "served values, as the trainer has them"
    );
}
