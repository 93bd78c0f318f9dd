//! The deep trainer on a planted model: samples are drawn from a DLRM with random weights
//! (the teacher: hidden layers of 8), a trainer starting from other random weights (hidden
//! layers of 32) and empty tables learns them from a stream of 3M samples in batches of 256,
//! and its AUC on a held-out tail of 20k must come within 0.01 of the teacher's own AUC on the
//! same labels. (The gap shrinks with the stream's length: 0.018 after 300k samples, 0.009
//! after 1M, 0.006 after 3M.)
//! Also: the weights file the trainer writes reads back to its parameters, and the recsys
//! backend serving it scores a batch as the trainer does.

use std::path::{Path, PathBuf};

use kiln_core::{Backend, ModelConfig};
use kiln_learn::deep::{DeepConfig, DeepTrainer, DenseOptimizer};
use kiln_learn::optim::{adagrad::AdaGrad, adam::Adam};
use kiln_learn::{Sample, Trainer};
use kiln_recsys::weights::WeightsFile;
use kiln_recsys::RecsysBackend;

mod deep_common;
use deep_common::*;

/// Area under the ROC curve (ties count one half).
fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += idx[i..j].iter().filter(|&&k| labels[k]).count() as f64 * avg;
        i = j;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn config(dense: DenseOptimizer) -> DeepConfig {
    DeepConfig {
        dense,
        embedding: AdaGrad {
            lr: 0.2,
            ..AdaGrad::default()
        },
        ..DeepConfig::default()
    }
}

fn model_dir(
    root: &Path,
    name: &str,
    interaction: &str,
    seed: u64,
    gain: (f64, usize),
    rows: u64,
) -> PathBuf {
    let dir = root.join(name);
    write_model(&dir, interaction, "", seed, gain, rows);
    dir
}

fn learns_the_planted_model(dense: DenseOptimizer) {
    let root = tempfile::tempdir().unwrap();
    let teacher_dir = model_dir(root.path(), "teacher", "concat", 11, (2.0, 8), VOCAB);
    let student_dir = model_dir(root.path(), "student", "concat", 12, (1.0, 32), 0);
    let mut teacher = DeepTrainer::open(&teacher_dir, config(dense)).unwrap();
    let mut student = DeepTrainer::open(&student_dir, config(dense)).unwrap();
    let mut rng = Rng(13);
    let train_n = 3_000_000;
    // drawn and labelled 4096 at a time: the stream is never held in memory
    let mut draw = |n: usize| {
        let mut batch = samples(&mut rng, n, VOCAB);
        let p = teacher.predict(&batch);
        for (s, p) in batch.iter_mut().zip(p) {
            s.label = rng.uniform() < p as f64;
        }
        batch
    };
    for _ in 0..train_n / 4096 {
        for batch in draw(4096).chunks(256) {
            let p = student.train(batch);
            assert_eq!(p.len(), batch.len());
        }
    }
    let tail = draw(20_000);
    let labels: Vec<bool> = tail.iter().map(|s| s.label).collect();
    let planted = auc(&teacher.predict(&tail), &labels);
    let learned = auc(&student.predict(&tail), &labels);
    println!("{dense:?}: planted AUC {planted:.4}, learned {learned:.4}");
    assert!(
        planted > 0.7,
        "the planted model should separate the classes: {planted}"
    );
    assert!(
        learned >= planted - 0.01,
        "learned AUC {learned:.4} vs planted {planted:.4}"
    );
}

#[test]
fn learns_a_planted_model_with_adam() {
    learns_the_planted_model(DenseOptimizer::Adam(Adam {
        lr: 0.003,
        ..Adam::default()
    }));
}

#[test]
fn learns_a_planted_model_with_adagrad() {
    learns_the_planted_model(DenseOptimizer::Adagrad(AdaGrad {
        lr: 0.1,
        ..AdaGrad::default()
    }));
}

/// The served model's scores for `batch`.
fn serve(dir: &Path, version: &str, batch: &[Sample]) -> Vec<f32> {
    let name = dir.file_name().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let config = ModelConfig::parse(&text, name).unwrap();
    let model = RecsysBackend::new()
        .load(&dir.join(version), &config)
        .unwrap();
    let dense: Vec<f32> = batch.iter().flat_map(|s| s.dense.clone()).collect();
    let ids: Vec<Vec<Vec<i64>>> = batch
        .iter()
        .map(|s| {
            s.keys
                .iter()
                .map(|k| k.iter().map(|&k| k as i64).collect())
                .collect()
        })
        .collect();
    let inputs = request_tensors(&dense, &ids);
    let out = model.execute(&inputs).unwrap();
    out[0].to_vec::<f32>().unwrap()
}

fn serves_what_it_trains(interaction: &str) {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "m", interaction, 21, (1.5, 8), 40);
    let mut trainer =
        DeepTrainer::open(&dir, config(DenseOptimizer::Adam(Adam::default()))).unwrap();
    let mut rng = Rng(22);
    let mut stream = samples(&mut rng, 3000, VOCAB);
    for s in stream.iter_mut() {
        s.label = rng.uniform() < 0.3;
    }
    for batch in stream.chunks(256) {
        trainer.train(batch);
    }
    // ids up to 2 * VOCAB: rows loaded from the file, rows created by training, and keys
    // never seen (the default row, on both sides)
    let probe = samples(&mut rng, 300, 2 * VOCAB);
    std::fs::create_dir_all(dir.join("2")).unwrap();
    let written = dir.join("2/model.safetensors");
    trainer.write_weights(&written).unwrap();

    let w = WeightsFile::open(&written).unwrap();
    for (prefix, layers) in [
        ("bottom", &trainer.net().bottom),
        ("top", &trainer.net().top),
    ] {
        let read = w.mlp(prefix).unwrap();
        assert_eq!(read.len(), layers.len());
        for (r, l) in read.iter().zip(layers.iter()) {
            assert_eq!((&r.weight_t, &r.bias), (&l.w_t, &l.b), "{prefix}");
        }
    }
    for f in 0..FEATURES {
        let keys = w.i64(&format!("t{f}.keys")).unwrap();
        let (shape, values) = w.f32(&format!("t{f}.weight")).unwrap();
        assert_eq!(shape, [keys.len(), DIM]);
        assert!(keys.len() > 40, "training created rows");
        let keys: Vec<u64> = keys.iter().map(|&k| k as u64).collect();
        let rows = trainer.rows(&format!("t{f}"), &keys).unwrap();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.as_deref(), Some(&values[i * DIM..(i + 1) * DIM]));
        }
    }

    let served = serve(&dir, "2", &probe);
    assert_serves_as_trained(&served, &trainer.predict(&probe));
}

#[test]
fn serving_the_written_weights_scores_as_the_trainer_concat() {
    serves_what_it_trains("concat");
}

#[test]
fn serving_the_written_weights_scores_as_the_trainer_dot() {
    serves_what_it_trains("dot");
}

#[test]
fn starts_from_the_served_model() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "m", "dot", 31, (1.5, 8), 60);
    let mut trainer = DeepTrainer::open(&dir, DeepConfig::default()).unwrap();
    let mut rng = Rng(32);
    let probe = samples(&mut rng, 200, 2 * VOCAB);
    let served = serve(&dir, "1", &probe);
    let p = trainer.predict(&probe);
    for (s, t) in served.iter().zip(&p) {
        assert!((s - t).abs() <= 1e-5, "served {s}, trainer {t}");
    }
}
