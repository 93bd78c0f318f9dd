//! The deep trainer's rows and state: admission of new rows, deltas of changed rows, TTL expiry
//! with tombstones, checkpoints (save, load, and training on identically afterwards) and
//! served snapshots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::ModelConfig;
use kiln_embed::{ManualClock, Table, TableConfig};
use kiln_learn::deep::{Admission, DeepConfig, DeepTrainer};
use kiln_learn::{Sample, Trainer};
use kiln_recsys::spec::RecsysSpec;
use kiln_recsys::weights::WeightsFile;

mod deep_common;
use deep_common::*;

/// A trainer of a model with empty tables (`extra` in its table defaults), on `clock`.
fn trainer(root: &Path, extra: &str, config: DeepConfig, clock: Arc<ManualClock>) -> DeepTrainer {
    let dir = root.join("m");
    write_model(&dir, "concat", extra, 41, (1.5, 8), 0);
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let spec = RecsysSpec::parse(&ModelConfig::parse(&text, "m").unwrap().parameters).unwrap();
    let weights = WeightsFile::open(&dir.join("1/model.safetensors")).unwrap();
    DeepTrainer::with_clock(spec, &weights, config, clock).unwrap()
}

/// One sample whose feature 0 has `keys` (the others none).
fn sample(keys: &[u64], label: bool) -> Sample {
    Sample {
        id: "imp".into(),
        ts_ms: 0,
        label,
        keys: vec![keys.to_vec(), vec![], vec![]],
        dense: vec![0.5; DENSE],
        seen_ms: 0,
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000_000))
}

#[test]
fn rows_are_admitted_after_min_count_sightings() {
    let root = tempfile::tempdir().unwrap();
    let config = DeepConfig {
        admission: Admission {
            min_count: 3,
            ..Admission::default()
        },
        ..DeepConfig::default()
    };
    let mut t = trainer(root.path(), "", config, clock());
    // seen once in the first batch, once in the second: no row yet
    t.train(&[sample(&[7], true), sample(&[8, 8], false)]);
    assert_eq!(t.rows("t0", &[7, 8]).unwrap(), vec![None, None]);
    t.train(&[sample(&[7], true)]);
    assert_eq!(t.rows("t0", &[7]).unwrap(), vec![None]);
    // key 8 was seen twice in one sample, then a third time here: admitted
    t.train(&[sample(&[7, 8], true)]);
    let rows = t.rows("t0", &[7, 8]).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.len() == DIM)));
    let deltas = t.drain_deltas();
    assert_eq!(deltas.len(), 1);
    assert_eq!((deltas[0].table.as_str(), deltas[0].dim), ("t0", DIM));
    assert_eq!(deltas[0].keys, [7, 8]);
    let want: Vec<f32> = rows.into_iter().flat_map(Option::unwrap).collect();
    assert_eq!(deltas[0].values, want);
    assert!(
        t.drain_deltas().is_empty(),
        "a second drain has nothing new"
    );
    assert_eq!(t.rows("nope", &[1]), None);
}

#[test]
fn rows_expire_by_ttl_and_are_tombstoned() {
    let root = tempfile::tempdir().unwrap();
    let clock = clock();
    let config = DeepConfig {
        maintain_every_ms: 0,
        ..DeepConfig::default()
    };
    let mut t = trainer(root.path(), "ttl_s = 60", config, clock.clone());
    t.train(&[sample(&[1, 2], true)]);
    assert_eq!(t.drain_deltas()[0].keys, [1, 2]);
    clock.advance(Duration::from_secs(30));
    t.train(&[sample(&[2, 3], false)]);
    clock.advance(Duration::from_secs(40));
    // key 1: last updated 70 s ago, past the TTL; keys 2 and 3: 40 s ago
    let d = t.drain_deltas();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].keys, [2, 3]);
    assert_eq!(d[0].tombstones, [1]);
    assert_eq!(t.rows("t0", &[1]).unwrap(), vec![None]);
    // a tombstoned key seen again gets a new row and is published again
    t.train(&[sample(&[1], true)]);
    let d = t.drain_deltas();
    assert_eq!(
        (d[0].keys.as_slice(), d[0].tombstones.as_slice()),
        (&[1][..], &[][..])
    );
    clock.advance(Duration::from_secs(61));
    let d = t.drain_deltas();
    assert_eq!(d[0].tombstones, [1, 2, 3]);
    assert!(d[0].keys.is_empty());
}

fn stream(seed: u64, n: usize) -> Vec<Sample> {
    let mut rng = Rng(seed);
    let mut s = samples(&mut rng, n, VOCAB);
    for x in s.iter_mut() {
        x.label = rng.uniform() < 0.4;
    }
    s
}

#[test]
fn a_checkpoint_restores_parameters_and_optimizer_state() {
    let root = tempfile::tempdir().unwrap();
    let mut a = trainer(root.path(), "", DeepConfig::default(), clock());
    for batch in stream(51, 2000).chunks(128) {
        a.train(batch);
    }
    let ckpt = root.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    a.save(&ckpt).unwrap();
    let mut b = trainer(&root.path().join("b"), "", DeepConfig::default(), clock());
    let probe = stream(52, 500);
    assert_ne!(a.predict(&probe), b.predict(&probe));
    b.load(&ckpt).unwrap();
    assert_eq!(a.predict(&probe), b.predict(&probe));
    assert_eq!(a.steps(), b.steps());
    // the same batches move both the same way: moments and accumulators came back too
    for batch in stream(53, 1000).chunks(128) {
        assert_eq!(a.train(batch), b.train(batch));
    }
    assert_eq!(a.predict(&probe), b.predict(&probe));
    let keys: Vec<u64> = (0..VOCAB).collect();
    assert_eq!(a.rows("t1", &keys), b.rows("t1", &keys));
    // a checkpoint of another optimizer is refused
    let adagrad = DeepConfig {
        dense: kiln_learn::deep::DenseOptimizer::Adagrad(Default::default()),
        ..DeepConfig::default()
    };
    let mut c = trainer(&root.path().join("c"), "", adagrad, clock());
    let e = c.load(&ckpt).unwrap_err().to_string();
    assert!(e.contains("optimizer"), "{e}");
    // a damaged checkpoint is refused, naming the file
    std::fs::write(ckpt.join("t0.train.snap"), b"garbage").unwrap();
    let e = b.load(&ckpt).unwrap_err().to_string();
    assert!(e.contains("t0"), "{e}");
    assert_eq!(
        a.predict(&probe),
        b.predict(&probe),
        "a failed load changes nothing"
    );
}

#[test]
fn served_snapshots_hold_the_served_values() {
    let root = tempfile::tempdir().unwrap();
    let mut t = trainer(root.path(), "", DeepConfig::default(), clock());
    for batch in stream(61, 1000).chunks(100) {
        t.train(batch);
    }
    let out = root.path().join("snap");
    std::fs::create_dir(&out).unwrap();
    t.snapshot_served(&out).unwrap();
    for f in 0..FEATURES {
        let name = format!("t{f}");
        let (table, info) = Table::restore(
            TableConfig::new(&name, DIM),
            &out.join(format!("{name}.snap")),
        )
        .unwrap();
        assert!(info.rows > 0);
        let keys: Vec<u64> = (0..VOCAB).collect();
        let want = t.rows(&name, &keys).unwrap();
        let got: Vec<Option<Vec<f32>>> = keys.iter().map(|&k| table.get(k)).collect();
        assert_eq!(got, want, "{name}");
    }
}
