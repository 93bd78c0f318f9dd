//! A Wide & Deep model whose wide part is a crossed feature (`cross = ["f0", "f2"]`): the
//! learner computes the cross's keys from the events' component fields with the function
//! serving applies to the request's component inputs, so
//! - the keys the featurizer gives equal the keys serving derives, row by row;
//! - a cross reads no event field (mapping one to it is refused, naming the field);
//! - after training, the served model (weights written by the trainer) computes exactly what
//!   the learner scores (1e-5) from requests holding the raw component ids only.

use std::path::{Path, PathBuf};

use kiln_core::{Backend, ModelConfig, Tensor};
use kiln_embed::MultiHot;
use kiln_learn::config::{FeaturesConfig, LearnConfig, ModelInfo};
use kiln_learn::deep::DeepTrainer;
use kiln_learn::event::{parse_line, Event};
use kiln_learn::featurize::Featurizer;
use kiln_learn::optim::ftrl::FtrlParams;
use kiln_learn::{Sample, Trainer};
use kiln_recsys::features::{FeatureIds, PADDING};
use kiln_recsys::spec::RecsysSpec;
use kiln_recsys::RecsysBackend;
use safetensors::Dtype;

mod deep_common;
use deep_common::*;

const CROSS: &str = "[[parameters.sparse]]\nname = \"f0_x_f2\"\ncross = [\"f0\", \"f2\"]\n\
                     table = \"tx\"\nbuckets = 64\npart = \"wide\"\n\
                     [parameters.tables.tx]\ndefault_row = \"zeros\"\n";

/// The deep test model (concat, `f0..f2`) with the wide cross `f0_x_f2` (table `tx`, dim 1)
/// and `wide.bias`.
fn write_cross_model(dir: &Path) -> PathBuf {
    write_model(dir, "concat", "", 61, (1.5, 8), 30);
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap() + CROSS;
    std::fs::write(dir.join("config.toml"), cfg).unwrap();
    let bias = (-0.2f32).to_le_bytes().to_vec();
    append_tensors(
        &dir.join("1/model.safetensors"),
        vec![
            ("tx.weight".into(), Dtype::F32, vec![1, 1], vec![0; 4]),
            ("tx.keys".into(), Dtype::I64, vec![1], vec![0; 8]),
            ("wide.bias".into(), Dtype::F32, vec![1], bias),
        ],
    );
    dir.to_path_buf()
}

fn model_config(dir: &Path) -> ModelConfig {
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    ModelConfig::parse(&text, dir.file_name().unwrap().to_str().unwrap()).unwrap()
}

fn info(dir: &Path) -> ModelInfo {
    let spec = RecsysSpec::parse(&model_config(dir).parameters).unwrap();
    ModelInfo {
        name: "m".into(),
        config_path: dir.join("config.toml"),
        table_dims: vec![DIM, DIM, DIM, 1],
        fields: spec.sparse.iter().map(|f| f.name.clone()).collect(),
        spec,
        version: 1,
        weights_path: dir.join("1/model.safetensors"),
        dense_width: Some(DENSE),
    }
}

/// One impression's raw ids per component (`f0..f2`, 0..=3 each, `-1` padding now and then)
/// and its dense values.
struct Raw {
    ids: Vec<Vec<i64>>,
    dense: Vec<f32>,
    label: bool,
}

fn raw_stream(rng: &mut Rng, n: usize) -> Vec<Raw> {
    (0..n)
        .map(|_| Raw {
            ids: (0..FEATURES)
                .map(|_| {
                    let k = rng.next() % (MAX_IDS as u64 + 1);
                    (0..k)
                        .map(|_| match rng.next() % 10 {
                            0 => -1,
                            _ => (rng.uniform().powi(2) * 12.0) as i64,
                        })
                        .collect()
                })
                .collect(),
            dense: (0..DENSE).map(|_| rng.normal() as f32).collect(),
            label: rng.uniform() < 0.4,
        })
        .collect()
}

/// The learner's samples of `raws`, through the featurizer (events as JSON lines).
fn featurize(fz: &mut Featurizer, raws: &[Raw]) -> Vec<Sample> {
    raws.iter()
        .enumerate()
        .map(|(i, r)| {
            let line = serde_json::json!({
                "type": "impression", "id": format!("i{i}"), "ts_ms": i,
                "features": {"f0": r.ids[0], "f1": r.ids[1], "f2": r.ids[2]},
                "dense": r.dense,
            })
            .to_string();
            let Event::Impression(imp) = parse_line(line.as_bytes()).unwrap() else {
                panic!("an impression")
            };
            let mut s = fz.featurize(&imp, 0).unwrap();
            s.label = r.label;
            s
        })
        .collect()
}

/// The request tensors of `raws`: the dense input and the components' padded ids (no cross).
fn request(raws: &[Raw]) -> Vec<Tensor> {
    let dense: Vec<f32> = raws.iter().flat_map(|r| r.dense.clone()).collect();
    let ids: Vec<Vec<Vec<i64>>> = raws.iter().map(|r| r.ids.clone()).collect();
    request_tensors(&dense, &ids)
}

#[test]
fn learner_cross_keys_equal_served_cross_keys() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_cross_model(&root.path().join("m"));
    let m = info(&dir);
    assert_eq!(m.spec.sparse[3].cross, [0, 2]);
    assert_eq!(m.spec.sparse[3].max_ids, MAX_IDS * MAX_IDS);
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let raws = raw_stream(&mut Rng(62), 200);
    let samples = featurize(&mut fz, &raws);
    let inputs = request(&raws);
    let sparse = &m.spec.sparse;
    let decoded: Vec<FeatureIds<'_>> = (0..FEATURES)
        .map(|f| FeatureIds::decode(&sparse[f], &inputs[1 + f], None).unwrap())
        .collect();
    let crossed = FeatureIds::crossed(
        &sparse[3],
        &[(&sparse[0], &decoded[0]), (&sparse[2], &decoded[2])],
        raws.len(),
    );
    let mut scratch = Vec::new();
    let MultiHot::Padded { ids, width, .. } = crossed.keys(&sparse[3], 0, raws.len(), &mut scratch)
    else {
        panic!("padded keys")
    };
    let mut nonempty = 0;
    for (r, s) in samples.iter().enumerate() {
        let served: Vec<u64> = ids[r * width..(r + 1) * width]
            .iter()
            .copied()
            .filter(|&k| k != PADDING)
            .collect();
        assert_eq!(s.keys[3], served, "row {r}");
        assert!(s.keys[3].iter().all(|&k| k < 64));
        nonempty += usize::from(!served.is_empty());
    }
    assert!(nonempty > 50, "{nonempty} rows with crossed keys");
}

#[test]
fn an_event_field_mapped_to_a_cross_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_cross_model(&root.path().join("m"));
    let text = format!(
        "name = \"l\"\nmodel_dir = {:?}\n[sources]\njsonl = [\"-\"]\n\
         [trainer]\nkind = \"deep\"\n[features]\nug = \"f0_x_f2\"\n",
        dir.display().to_string()
    );
    let cfg = LearnConfig::parse(&text, "learn.toml").unwrap();
    let e = ModelInfo::open(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("features.ug") && e.contains("cross of f0, f2"),
        "{e}"
    );
}

#[test]
fn served_output_equals_the_learner_score_with_a_crossed_wide_feature() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_cross_model(&root.path().join("m"));
    let m = info(&dir);
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let config = adagrad_config(FtrlParams {
        alpha: 0.5,
        beta: 1.0,
        l1: 0.1,
        l2: 0.5,
    });
    let mut trainer = DeepTrainer::open(&dir, config).unwrap();
    let mut rng = Rng(63);
    let train = featurize(&mut fz, &raw_stream(&mut rng, 2000));
    for batch in train.chunks(16) {
        trainer.train(batch);
    }
    let learned: Vec<u64> = (0..64).collect();
    let rows = trainer.rows("tx", &learned).unwrap();
    assert!(
        rows.iter().flatten().filter(|r| r[0] != 0.0).count() > 10,
        "the cross's rows learned: {rows:?}"
    );
    std::fs::create_dir_all(dir.join("2")).unwrap();
    trainer
        .write_weights(&dir.join("2/model.safetensors"))
        .unwrap();
    let served_model = RecsysBackend::new()
        .load(&dir.join("2"), &model_config(&dir))
        .unwrap();
    let names: Vec<&str> = served_model
        .io()
        .inputs
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["dense", "f0", "f1", "f2"], "a cross has no input");
    let probe_raw = raw_stream(&mut rng, 300);
    let probe = featurize(&mut fz, &probe_raw);
    let served: Vec<f32> = served_model.execute(&request(&probe_raw)).unwrap()[0]
        .to_vec()
        .unwrap();
    assert_serves_as_trained(&served, &trainer.predict(&probe));
}
