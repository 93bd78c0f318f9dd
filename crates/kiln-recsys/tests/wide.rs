//! The wide part of the recsys model family: wide-only models (logistic regression) and Wide &
//! Deep, against hand computations, and the load-time checks of wide features.
//!
//! The bundled `examples/models/ctr_wide` (written by `examples/gen_wide.py`) is served and
//! checked twice: against the golden predictions the generator computed in NumPy, and against
//! `sigmoid(bias + sum of the weights)` computed here from its seeded rows, whose keys must be
//! what `kiln_recsys::features::key_of` gives for their raw ids.

use kiln_core::{Backend, DataType, LoadedModel, ModelConfig, Tensor};
use kiln_recsys::features::{key_of, Hashing, RawId};
use kiln_recsys::RecsysBackend;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Raw = (&'static str, Dtype, Vec<usize>, Vec<u8>);

fn f32_tensor(name: &'static str, shape: &[usize], v: &[f32]) -> Raw {
    (name, Dtype::F32, shape.to_vec(), f32_bytes(v))
}

/// Writes `config` and `tensors` as model `name` version 1 under `root`; returns the version
/// directory and the parsed config.
fn write_model(root: &Path, name: &str, config: &str, tensors: &[Raw]) -> (PathBuf, ModelConfig) {
    let v1 = root.join(name).join("1");
    std::fs::create_dir_all(&v1).unwrap();
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dtype, shape, data)| (*n, TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &v1.join("model.safetensors")).unwrap();
    (v1, ModelConfig::parse(config, name).unwrap())
}

fn load(v1: &Path, config: &ModelConfig) -> kiln_core::Result<Arc<dyn LoadedModel>> {
    RecsysBackend::new().load(v1, config)
}

fn outputs(model: &dyn LoadedModel, inputs: &[Tensor]) -> Vec<f32> {
    model.execute(inputs).expect("execute")[0].to_vec().unwrap()
}

fn ctr_wide() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/ctr_wide")
}

/// The raw ids of one feature of one golden case (a value or a list), padded to `max_ids`.
fn ids_of(v: &Value, max_ids: usize) -> Vec<Value> {
    let mut ids = match v {
        Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let pad = if ids.first().is_some_and(Value::is_i64) || v.is_i64() {
        Value::from(-1)
    } else {
        Value::from("")
    };
    ids.resize(max_ids, pad);
    ids
}

fn raw_key(id: &Value) -> Option<u64> {
    let key = match id {
        Value::String(s) if s.is_empty() => return None,
        Value::String(s) => key_of(RawId::Bytes(s.as_bytes()), Hashing::Xxh3, Some(1 << 20)),
        v if v.as_i64() == Some(-1) => return None,
        v => key_of(
            RawId::Int(v.as_i64().unwrap()),
            Hashing::Xxh3,
            Some(1 << 20),
        ),
    };
    Some(key)
}

#[test]
fn ctr_wide_serves_sigmoid_of_bias_plus_weights() {
    let dir = ctr_wide();
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let config = ModelConfig::parse(&text, "ctr_wide").unwrap();
    let model = load(&dir.join("1"), &config).expect("load ctr_wide");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();

    // no dense input: the sparse features are the inputs, in config order
    let io = model.io();
    let names: Vec<&str> = io.inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["user_id", "item_id", "genres", "hour"]);
    assert_eq!(io.inputs[2].dims, [4]);
    assert_eq!(io.inputs[3].data_type, DataType::Int64);
    assert_eq!(io.outputs[0].dims, [1]);

    // the generator's keys are serving's keys; the weights by (feature, key)
    let mut weight: HashMap<(String, u64), f64> = HashMap::new();
    for (feature, rows) in golden["rows"].as_object().unwrap() {
        for row in rows.as_array().unwrap() {
            let key = raw_key(&row["id"]).unwrap();
            assert_eq!(key, row["key"].as_u64().unwrap(), "{feature} {}", row["id"]);
            weight.insert((feature.clone(), key), row["weight"].as_f64().unwrap());
        }
    }

    let cases = golden["cases"].as_array().unwrap();
    let n = cases.len() as i64;
    let features = ["user_id", "item_id", "genres", "hour"];
    let mut inputs = Vec::new();
    let mut want: Vec<f64> = vec![golden["bias"].as_f64().unwrap(); cases.len()];
    for f in features {
        let max_ids = golden["max_ids"][f].as_u64().unwrap() as usize;
        let ids: Vec<Vec<Value>> = cases
            .iter()
            .map(|c| ids_of(&c["features"][f], max_ids))
            .collect();
        for (r, row) in ids.iter().enumerate() {
            // a missing row (unseen id) weighs 0; padding adds nothing
            want[r] += row
                .iter()
                .filter_map(raw_key)
                .map(|k| weight.get(&(f.to_string(), k)).copied().unwrap_or(0.0))
                .sum::<f64>();
        }
        let flat: Vec<Value> = ids.into_iter().flatten().collect();
        let shape = vec![n, max_ids as i64];
        inputs.push(if f == "hour" {
            let v: Vec<i64> = flat.iter().map(|v| v.as_i64().unwrap()).collect();
            Tensor::from_vec(f, shape, &v)
        } else {
            let v: Vec<&str> = flat.iter().map(|v| v.as_str().unwrap()).collect();
            Tensor::from_strings(f, shape, &v)
        });
    }
    let got = outputs(model.as_ref(), &inputs);
    for (r, c) in cases.iter().enumerate() {
        let hand = sigmoid(want[r]);
        let py = c["prob"].as_f64().unwrap();
        assert!(
            (got[r] as f64 - hand).abs() < 1e-6,
            "case {r}: {} vs {hand}",
            got[r]
        );
        assert!((hand - py).abs() < 1e-6, "case {r}: {hand} vs golden {py}");
    }
    // the last golden cases are all unseen ids or padding: the bias alone
    assert!(cases.len() >= 2);
    let bias = sigmoid(golden["bias"].as_f64().unwrap());
    assert!((got[cases.len() - 1] as f64 - bias).abs() < 1e-6);
    assert!(
        got.iter().any(|&p| (p as f64 - bias).abs() > 0.01),
        "seeded rows change predictions: {got:?}"
    );
}

const WIDE_INT: &str = r#"
backend = "recsys"
max_batch_size = 8
default_model_filename = "model.safetensors"
[parameters]
output = "logit"
output_activation = "none"
[[parameters.sparse]]
name = "ids"
table = "w"
max_ids = 3
part = "wide"
[[parameters.sparse]]
name = "hour"
table = "w_hour"
max_ids = 1
hash = "xxh3"
input = "ragged"
part = "wide"
"#;

/// INT64 ids (unhashed, multi-hot with padding, and ragged hashed), no `wide.bias`, raw logits.
#[test]
fn wide_only_int_ids_sum_their_weights() {
    let dir = tempfile::tempdir().unwrap();
    let hour_key = |h: i64| key_of(RawId::Int(h), Hashing::Xxh3, None) as i64;
    let (v1, config) = write_model(
        dir.path(),
        "lr",
        WIDE_INT,
        &[
            // row r of w is key r: weight (r + 1) / 10
            f32_tensor("w.weight", &[5, 1], &[0.1, 0.2, 0.3, 0.4, 0.5]),
            f32_tensor("w_hour.weight", &[2, 1], &[1.0, 2.0]),
            (
                "w_hour.keys",
                Dtype::I64,
                vec![2],
                i64_bytes(&[hour_key(8), hour_key(20)]),
            ),
        ],
    );
    let model = load(&v1, &config).expect("load");
    assert_eq!(model.io().inputs.len(), 3, "{:?}", model.io().inputs);
    let ids: [i64; 9] = [0, 4, -1, 2, 2, 2, 99, -1, -1];
    let hours: [i64; 3] = [8, 20, 13];
    let inputs = vec![
        Tensor::from_vec("ids", vec![3, 3], &ids),
        Tensor::from_vec("hour_values", vec![3], &hours),
        Tensor::from_vec("hour_lengths", vec![3], &[1i32, 1, 1]),
    ];
    let got = outputs(model.as_ref(), &inputs);
    let want = [0.1 + 0.5 + 1.0, 0.3 * 3.0 + 2.0, 0.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

const WIDE_DEEP: &str = r#"
backend = "recsys"
max_batch_size = 8
default_model_filename = "model.safetensors"
[parameters]
interaction = "concat"
output = "logit"
output_activation = "none"
[[parameters.sparse]]
name = "item"
table = "emb"
max_ids = 2
[[parameters.sparse]]
name = "user"
table = "w_user"
max_ids = 1
data_type = "BYTES"
hash = "xxh3"
part = "wide"
"#;

/// The deep tensors: dense [2] -> bottom 2 -> concat with a dim-2 table -> top 4 -> 1.
fn deep_tensors() -> Vec<Raw> {
    vec![
        f32_tensor("emb.weight", &[3, 2], &[0.1, -0.2, 0.3, 0.4, -0.5, 0.6]),
        f32_tensor("bottom.0.weight", &[2, 2], &[1.0, 0.5, -0.5, 1.0]),
        f32_tensor("bottom.0.bias", &[2], &[0.1, 0.2]),
        f32_tensor("top.0.weight", &[1, 4], &[0.7, -0.3, 1.1, 0.9]),
        f32_tensor("top.0.bias", &[1], &[-0.25]),
    ]
}

#[test]
fn wide_and_deep_adds_the_wide_logit_to_the_deep_one() {
    let dir = tempfile::tempdir().unwrap();
    let users: [&[u8]; 3] = [b"alice", b"bob", b"carol"];
    let keys: Vec<i64> = users[..2]
        .iter()
        .map(|u| key_of(RawId::Bytes(u), Hashing::Xxh3, None) as i64)
        .collect();
    let mut tensors = deep_tensors();
    tensors.push(f32_tensor("w_user.weight", &[2, 1], &[0.75, -1.5]));
    tensors.push(("w_user.keys", Dtype::I64, vec![2], i64_bytes(&keys)));
    tensors.push(f32_tensor("wide.bias", &[1], &[0.125]));
    let (v1, config) = write_model(dir.path(), "wd", WIDE_DEEP, &tensors);
    let wd = load(&v1, &config).expect("load wide & deep");

    // the same deep part alone: drop the wide feature from the config
    let deep_cfg = WIDE_DEEP
        .split("[[parameters.sparse]]\nname = \"user\"")
        .next()
        .unwrap();
    let (v1d, cfg_d) = write_model(dir.path(), "deep", deep_cfg, &deep_tensors());
    let deep = load(&v1d, &cfg_d).expect("load deep");

    let dense = [0.5f32, -1.0, 2.0, 0.25, -0.5, -0.5];
    let items: [i64; 6] = [0, 1, 2, -1, 7, 1];
    let dense_t = Tensor::from_vec("dense", vec![3, 2], &dense);
    let items_t = Tensor::from_vec("item", vec![3, 2], &items);
    let logits_deep = outputs(deep.as_ref(), &[dense_t.clone(), items_t.clone()]);
    let user_t = Tensor::from_strings("user", vec![3, 1], &users);
    let got = outputs(wd.as_ref(), &[dense_t, items_t, user_t]);
    // carol has no row: only the bias
    let wide = [0.125 + 0.75, 0.125 - 1.5, 0.125];
    for r in 0..3 {
        let want = logits_deep[r] + wide[r];
        assert!(
            (got[r] - want).abs() < 1e-5,
            "row {r}: {} vs {want}",
            got[r]
        );
    }
    // and the deep logit is the hand-computed one for row 0: bottom relu([0.1+0.5-0.5*1, 0.2-0.25-1])
    let bottom = [
        (0.1f32 + 0.5 * 1.0 - 1.0 * 0.5).max(0.0),
        (0.2f32 - 0.25 - 1.0).max(0.0),
    ];
    let pooled = [0.1f32 + 0.3, -0.2 + 0.4];
    let z = [bottom[0], bottom[1], pooled[0], pooled[1]];
    let top: f32 = -0.25
        + [0.7f32, -0.3, 1.1, 0.9]
            .iter()
            .zip(z)
            .map(|(w, x)| w * x)
            .sum::<f32>();
    assert!(
        (logits_deep[0] - top).abs() < 1e-5,
        "{} vs {top}",
        logits_deep[0]
    );

    // with the sigmoid: sigmoid(deep + wide)
    let sig_cfg = WIDE_DEEP.replace(
        "output_activation = \"none\"",
        "output_activation = \"sigmoid\"",
    );
    let (v1s, cfg_s) = write_model(dir.path(), "wds", &sig_cfg, &tensors);
    let p = outputs(
        load(&v1s, &cfg_s).expect("load").as_ref(),
        &[
            Tensor::from_vec("dense", vec![3, 2], &dense),
            Tensor::from_vec("item", vec![3, 2], &items),
            Tensor::from_strings("user", vec![3, 1], &users),
        ],
    );
    for r in 0..3 {
        let want = sigmoid((logits_deep[r] + wide[r]) as f64);
        assert!(
            (p[r] as f64 - want).abs() < 1e-6,
            "row {r}: {} vs {want}",
            p[r]
        );
    }
}

fn refused(config: &str, tensors: &[Raw]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let parsed = ModelConfig::parse(config, "m").and_then(|c| {
        let (v1, _) = write_model(dir.path(), "m", config, tensors);
        load(&v1, &c)
    });
    match parsed {
        Ok(_) => panic!("loaded: {config}"),
        Err(e) => e.message,
    }
}

#[test]
fn wide_config_errors_name_the_feature_or_field() {
    let lr = |table_dim: usize, extra: &str| {
        let cfg = format!(
            "backend = \"recsys\"\nmax_batch_size = 4\ndefault_model_filename = \"model.safetensors\"\n\
             [parameters]\n[[parameters.sparse]]\nname = \"clicks\"\ntable = \"w\"\nmax_ids = 2\npart = \"wide\"\n{extra}"
        );
        (
            cfg,
            vec![f32_tensor(
                "w.weight",
                &[2, table_dim],
                &vec![0.5; 2 * table_dim],
            )],
        )
    };

    let (cfg, t) = lr(4, "");
    let e = refused(&cfg, &t);
    assert!(e.contains("'clicks'") && e.contains("dim 1"), "{e}");

    let (cfg, t) = lr(1, "pooling = \"mean\"\n");
    let e = refused(&cfg, &t);
    assert!(e.contains("'clicks'") && e.contains("pooling"), "{e}");

    // a wide-only model has no deep part to configure or weigh
    let (cfg, t) = lr(1, "");
    let with = |field: &str| cfg.replace("[parameters]\n", &format!("[parameters]\n{field}\n"));
    let e = refused(&with("dense_input = \"dense\""), &t);
    assert!(e.contains("dense_input"), "{e}");
    let e = refused(&with("interaction = \"concat\""), &t);
    assert!(e.contains("interaction"), "{e}");
    let mut top = t.clone();
    top.push(f32_tensor("top.0.weight", &[1, 1], &[1.0]));
    top.push(f32_tensor("top.0.bias", &[1], &[0.0]));
    let e = refused(&cfg, &top);
    assert!(e.contains("top.0.weight"), "{e}");
    let mut bias = t.clone();
    bias.push(f32_tensor("wide.bias", &[2], &[1.0, 2.0]));
    let e = refused(&cfg, &bias);
    assert!(e.contains("wide.bias"), "{e}");

    // Wide & Deep needs one logit from the top MLP
    let mut tensors = deep_tensors();
    tensors[3] = f32_tensor("top.0.weight", &[2, 4], &[0.5; 8]);
    tensors[4] = f32_tensor("top.0.bias", &[2], &[0.0; 2]);
    tensors.push(f32_tensor("w_user.weight", &[1, 1], &[1.0]));
    let e = refused(WIDE_DEEP, &tensors);
    assert!(e.contains("'user'") && e.contains("1 output"), "{e}");

    // a deep model still needs its interaction
    let e = refused(
        &WIDE_DEEP.replace("interaction = \"concat\"\n", ""),
        &deep_tensors(),
    );
    assert!(e.contains("interaction"), "{e}");
}
