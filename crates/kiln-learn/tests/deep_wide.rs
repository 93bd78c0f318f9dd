//! The deep trainer on a Wide & Deep model: wide features (dim-1 tables, `wide.bias`) whose
//! weights add to the top MLP's logit, learned by FTRL on the gradient of that joint logit.
//! - every wide row and the bias follow a plain per-coordinate FTRL (`ftrl::update_row`) fed
//!   `p - y` of the joint score, bit for bit (batch 1);
//! - the deltas it drains, applied to the served model, leave every table (deep and wide) as
//!   the trainer's rows, and the weights file it writes serves what it scores (1e-5);
//! - a checkpoint restores both parts;
//! - a wide table the trainer cannot keep exact is refused, naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_core::{Backend, ModelConfig, Tensor};
use kiln_embed::Delta;
use kiln_learn::deep::{DeepConfig, DeepTrainer};
use kiln_learn::optim::ftrl::{self, FtrlParams};
use kiln_learn::{Sample, Trainer};
use kiln_recsys::weights::WeightsFile;
use kiln_recsys::RecsysBackend;
use safetensors::Dtype;

mod deep_common;
use deep_common::*;

/// The spec's inputs, in order: wide `w0`, the deep `f0..f2`, wide `w1` (multi-hot).
const INPUTS: [&str; 5] = ["w0", "f0", "f1", "f2", "w1"];
const WIDE_IDS: [usize; 2] = [1, 3];

const FTRL: FtrlParams = FtrlParams {
    alpha: 0.5,
    beta: 1.0,
    l1: 0.2,
    l2: 0.5,
};

fn wide_block(name: &str, max_ids: usize) -> String {
    format!(
        "[[parameters.sparse]]\nname = \"{name}\"\ntable = \"t{name}\"\nmax_ids = {max_ids}\npart = \"wide\"\n"
    )
}

/// `dir`: the deep test model (concat) with wide features `w0` (first) and `w1` (last), their
/// tables `tw0`, `tw1` holding `rows` nonzero weights, and `wide.bias`; `wide_default` is the
/// wide tables' default row.
fn write_wide_model(dir: &Path, rows: u64, wide_default: &str) -> PathBuf {
    write_model(dir, "concat", "", 51, (1.5, 8), rows);
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let cfg = cfg.replacen(
        "[[parameters.sparse]]",
        &format!("{}[[parameters.sparse]]", wide_block("w0", WIDE_IDS[0])),
        1,
    ) + &wide_block("w1", WIDE_IDS[1])
        + &format!(
            "[parameters.tables.tw0]\ndefault_row = \"{wide_default}\"\n\
             [parameters.tables.tw1]\ndefault_row = \"{wide_default}\"\n"
        );
    std::fs::write(dir.join("config.toml"), cfg).unwrap();
    let mut tensors: Vec<RawTensor> = Vec::new();
    let mut rng = Rng(52);
    for t in ["tw0", "tw1"] {
        let w: Vec<u8> = (0..rows)
            .flat_map(|_| (((rng.uniform() - 0.5) * 0.8) as f32).to_le_bytes())
            .collect();
        let keys: Vec<u8> = (0..rows as i64).flat_map(|k| k.to_le_bytes()).collect();
        tensors.push((format!("{t}.weight"), Dtype::F32, vec![rows as usize, 1], w));
        tensors.push((format!("{t}.keys"), Dtype::I64, vec![rows as usize], keys));
    }
    tensors.push((
        "wide.bias".into(),
        Dtype::F32,
        vec![1],
        (-0.3f32).to_le_bytes().to_vec(),
    ));
    append_tensors(&dir.join("1/model.safetensors"), tensors);
    dir.to_path_buf()
}

fn config() -> DeepConfig {
    adagrad_config(FTRL)
}

/// `n` samples whose keys follow [`INPUTS`]; wide ids up to `vocab` (repeats allowed in `w1`).
fn stream(rng: &mut Rng, n: usize, vocab: u64) -> Vec<Sample> {
    let mut out = samples(rng, n, vocab);
    for s in out.iter_mut() {
        let mut wide = |max: usize| -> Vec<u64> {
            let k = 1 + rng.next() as usize % max;
            (0..k)
                .map(|_| (rng.uniform().powi(2) * vocab as f64) as u64)
                .collect()
        };
        let (w0, w1) = (wide(WIDE_IDS[0]), wide(WIDE_IDS[1]));
        let deep = std::mem::take(&mut s.keys);
        s.keys = std::iter::once(w0).chain(deep).chain([w1]).collect();
        s.label = rng.uniform() < 0.35;
    }
    out
}

fn load(dir: &Path, version: &str) -> std::sync::Arc<dyn kiln_core::LoadedModel> {
    let name = dir.file_name().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let config = ModelConfig::parse(&text, name).unwrap();
    RecsysBackend::new()
        .load(&dir.join(version), &config)
        .unwrap()
}

/// The served model's scores for `batch`.
fn serve(model: &dyn kiln_core::LoadedModel, batch: &[Sample]) -> Vec<f32> {
    let n = batch.len();
    let dense: Vec<f32> = batch.iter().flat_map(|s| s.dense.clone()).collect();
    let mut inputs = vec![Tensor::from_vec(
        "dense",
        vec![n as i64, DENSE as i64],
        &dense,
    )];
    for (f, name) in INPUTS.iter().enumerate() {
        let max = match f {
            0 => WIDE_IDS[0],
            4 => WIDE_IDS[1],
            _ => MAX_IDS,
        };
        let mut ids = vec![-1i64; n * max];
        for (r, s) in batch.iter().enumerate() {
            for (i, &k) in s.keys[f].iter().enumerate() {
                ids[r * max + i] = k as i64;
            }
        }
        inputs.push(Tensor::from_vec(*name, vec![n as i64, max as i64], &ids));
    }
    model.execute(&inputs).unwrap()[0].to_vec::<f32>().unwrap()
}

#[test]
fn wide_rows_and_bias_follow_per_coordinate_ftrl_on_the_joint_logit() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_wide_model(&root.path().join("m"), 20, "zeros");
    let mut trainer = DeepTrainer::open(&dir, config()).unwrap();
    let w = WeightsFile::open(&dir.join("1/model.safetensors")).unwrap();
    // the reference: `[w, z, n]` per (table, key), starting from the served weights
    let mut rows: HashMap<(usize, u64), [f32; 3]> = HashMap::new();
    for (t, name) in ["tw0", "tw1"].iter().enumerate() {
        let (_, values) = w.f32(&format!("{name}.weight")).unwrap();
        for (k, &v) in values.iter().enumerate() {
            let trained = trainer.rows(name, &[k as u64]).unwrap()[0].clone();
            assert_eq!(trained, Some(vec![v]), "{name} row {k} starts served");
            let z = -((v as f64).abs() * (FTRL.beta / FTRL.alpha + FTRL.l2) + FTRL.l1)
                .copysign(v as f64);
            assert_eq!(ftrl::weight(&FTRL, z, 0.0) as f32, v);
            rows.insert((t, k as u64), [v, z as f32, 0.0]);
        }
    }
    // the served -0.3 as an FTRL state: z = 0.3 (beta / alpha + l2) + l1, n = 0
    let z = 0.3f64 * (FTRL.beta / FTRL.alpha + FTRL.l2) + FTRL.l1;
    let mut bias = [-0.3f32, z as f32, 0.0];
    assert_eq!(trainer.wide_bias(), Some(-0.3));
    let mut rng = Rng(53);
    for s in stream(&mut rng, 2000, 40) {
        let p = trainer.train(std::slice::from_ref(&s))[0];
        let err = p as f64 - if s.label { 1.0 } else { 0.0 };
        let mut grads: HashMap<(usize, u64), f64> = HashMap::new();
        for (t, f) in [0, 4].into_iter().enumerate() {
            for &k in &s.keys[f] {
                *grads.entry((t, k)).or_insert(0.0) += err;
            }
        }
        for (c, g) in grads {
            ftrl::update_row(&FTRL, rows.entry(c).or_insert([0.0; 3]), &[g]);
        }
        ftrl::update_row(&FTRL, &mut bias, &[err]);
    }
    assert_eq!(trainer.wide_bias(), Some(bias[0]));
    assert_ne!(bias[0], -0.3, "the bias learned");
    for (&(t, k), row) in &rows {
        let name = ["tw0", "tw1"][t];
        let trained = trainer.rows(name, &[k]).unwrap()[0].clone();
        assert_eq!(trained, Some(vec![row[0]]), "{name} key {k}");
    }
}

#[test]
fn deltas_and_written_weights_serve_what_the_trainer_scores() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_wide_model(&root.path().join("m"), 30, "zeros");
    let mut trainer = DeepTrainer::open(&dir, config()).unwrap();
    let live = load(&dir, "1");
    let sparse = live.sparse().expect("recsys models take deltas");
    let mut rng = Rng(54);
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let data = stream(&mut rng, 3000, 60);
    let batches = data.chunks(16).count();
    for (i, batch) in data.chunks(16).enumerate() {
        trainer.train(batch);
        if i % 10 != 9 && i + 1 != batches {
            continue;
        }
        for d in trainer.drain_deltas() {
            let seq = seqs.entry(d.table.clone()).or_insert(0);
            *seq += 1;
            seen.entry(d.table.clone()).or_default().extend(&d.keys);
            let delta = Delta {
                source: "learner@1".into(),
                table: d.table.clone(),
                seq: *seq,
                created_ms: 0,
                dim: d.dim,
                keys: d.keys,
                values: d.values,
                tombstones: d.tombstones,
            };
            sparse.apply_delta(&d.table, &delta.encode()).unwrap();
        }
    }
    for t in ["tw0", "tw1"] {
        assert!(
            seen.get(t).is_some_and(|k| k.len() > 30),
            "{t}: wide deltas"
        );
    }
    for (table, mut keys) in seen {
        keys.sort_unstable();
        keys.dedup();
        let served = sparse.rows(&table, &keys).unwrap();
        assert_eq!(served, trainer.rows(&table, &keys).unwrap(), "{table}");
    }

    // the dense side (MLPs, wide.bias) goes as a new version: it serves what the trainer scores
    std::fs::create_dir_all(dir.join("2")).unwrap();
    let written = dir.join("2/model.safetensors");
    trainer.write_weights(&written).unwrap();
    let w = WeightsFile::open(&written).unwrap();
    assert_eq!(
        w.f32("wide.bias").unwrap().1,
        vec![trainer.wide_bias().unwrap()]
    );
    let probe = stream(&mut rng, 300, 120);
    let served = serve(load(&dir, "2").as_ref(), &probe);
    assert_serves_as_trained(&served, &trainer.predict(&probe));
}

#[test]
fn a_checkpoint_restores_both_parts() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_wide_model(&root.path().join("m"), 10, "zeros");
    let mut a = DeepTrainer::open(&dir, config()).unwrap();
    let mut rng = Rng(55);
    let data = stream(&mut rng, 1200, 50);
    for batch in data[..800].chunks(8) {
        a.train(batch);
    }
    let ckpt = root.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    a.save(&ckpt).unwrap();
    let mut b = DeepTrainer::open(&dir, config()).unwrap();
    b.load(&ckpt).unwrap();
    assert_eq!(a.wide_bias(), b.wide_bias());
    for batch in data[800..].chunks(8) {
        assert_eq!(a.train(batch), b.train(batch));
    }
    for t in ["tw0", "tw1"] {
        let keys: Vec<u64> = (0..50).collect();
        assert_eq!(a.rows(t, &keys), b.rows(t, &keys), "{t}");
    }
}

#[test]
fn a_wide_table_with_hash_default_rows_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_wide_model(&root.path().join("m"), 10, "hash");
    let err = DeepTrainer::open(&dir, config()).err().unwrap().to_string();
    assert!(err.contains("tw0") && err.contains("zeros"), "{err}");
}
