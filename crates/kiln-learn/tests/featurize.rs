//! Featurizing against serving: the keys the learner computes for an impression equal the keys
//! the server derives (`FeatureIds::decode` + `keys`) from request tensors holding the same ids,
//! for every input form; type mismatches, truncation and dense widths.

use kiln_core::{DataType, Tensor};
use kiln_embed::{MultiHot, Pooling};
use kiln_learn::config::{FeaturesConfig, ModelInfo};
use kiln_learn::event::{parse_line, Event, EventErrorKind, Impression};
use kiln_learn::featurize::Featurizer;
use kiln_recsys::features::{FeatureIds, Hashing, PADDING};
use kiln_recsys::spec::{RecsysSpec, SparseFeature};
use std::path::PathBuf;

const PARAMS: &str = r#"
interaction = "concat"
[[sparse]]
name = "user"
table = "t.user"
max_ids = 1
hash = "xxh3"
buckets = 1048576
data_type = "BYTES"
[[sparse]]
name = "genres"
table = "t.genres"
max_ids = 3
hash = "xxh3"
data_type = "BYTES"
[[sparse]]
name = "hour"
table = "t.hour"
max_ids = 1
hash = "xxh3"
buckets = 24
[[sparse]]
name = "item"
table = "t.item"
max_ids = 2
[[sparse]]
name = "tags"
table = "t.tags"
max_ids = 4
hash = "xxh3"
buckets = 1000
input = "ragged"
"#;

fn model(fields: &[&str], dense_width: Option<usize>) -> ModelInfo {
    let spec = RecsysSpec::parse(&toml::from_str(PARAMS).unwrap()).unwrap();
    ModelInfo {
        name: "m".into(),
        config_path: PathBuf::from("m/config.toml"),
        table_dims: vec![4; spec.tables.len()],
        spec,
        version: 1,
        weights_path: PathBuf::from("m/1/model.safetensors"),
        dense_width,
        fields: fields.iter().map(|s| s.to_string()).collect(),
    }
}

const FIELDS: [&str; 5] = ["user", "genres", "hour", "item", "tags"];

fn impression(line: &str) -> Impression<'_> {
    match parse_line(line.as_bytes()).unwrap() {
        Event::Impression(i) => i,
        Event::Action(_) => panic!("an impression expected"),
    }
}

/// The keys serving derives for one request row holding `ids` (padded to max_ids, or ragged).
fn served_keys(f: &SparseFeature, ids: &serde_json::Value) -> Vec<u64> {
    let ids: Vec<serde_json::Value> = match ids {
        serde_json::Value::Array(v) => v.clone(),
        serde_json::Value::Null => vec![],
        one => vec![one.clone()],
    };
    let k = f.max_ids;
    let mut scratch = Vec::new();
    let row: Vec<u64> = match f.data_type {
        DataType::Bytes => {
            let mut s: Vec<Vec<u8>> = ids
                .iter()
                .map(|v| v.as_str().unwrap().as_bytes().to_vec())
                .collect();
            s.resize(k, Vec::new());
            let t = Tensor::from_strings(&f.name, vec![1, k as i64], &s);
            let decoded = FeatureIds::decode(f, &t, None).unwrap();
            multi_hot(decoded.keys(f, 0, 1, &mut scratch))
        }
        _ if f.ragged => {
            let v: Vec<i64> = ids.iter().map(|v| v.as_i64().unwrap()).collect();
            let t = Tensor::from_vec(format!("{}_values", f.name), vec![v.len() as i64], &v);
            let l = Tensor::from_vec(format!("{}_lengths", f.name), vec![1], &[v.len() as i32]);
            let decoded = FeatureIds::decode(f, &t, Some(&l)).unwrap();
            multi_hot(decoded.keys(f, 0, 1, &mut scratch))
        }
        _ => {
            let mut v: Vec<i64> = ids.iter().map(|v| v.as_i64().unwrap()).collect();
            v.resize(k, -1);
            let t = Tensor::from_vec(&f.name, vec![1, k as i64], &v);
            let decoded = FeatureIds::decode(f, &t, None).unwrap();
            multi_hot(decoded.keys(f, 0, 1, &mut scratch))
        }
    };
    row.into_iter().filter(|&k| k != PADDING).collect()
}

fn multi_hot(m: MultiHot<'_>) -> Vec<u64> {
    match m {
        MultiHot::Padded { ids, .. } => ids.to_vec(),
        MultiHot::Ragged { values, .. } => values.to_vec(),
    }
}

#[test]
fn learner_keys_equal_served_keys() {
    let m = model(&FIELDS, None);
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let lines = [
        r#"{"type":"impression","id":"a","ts_ms":5,"features":{"user":"u42","genres":["Comedy","Crime"],"hour":11,"item":[7,-1],"tags":[1,2,3,4]}}"#,
        r#"{"type":"impression","id":"b","ts_ms":6,"features":{"user":"ünï","genres":["","Drama","x"],"hour":-2,"item":9223372036854775807,"tags":[]}}"#,
        r#"{"type":"impression","id":"c","ts_ms":7,"features":{"user":"","genres":null,"hour":0,"item":[-9223372036854775808, 0],"unrelated":"x"}}"#,
    ];
    for line in lines {
        let imp = impression(line);
        let sample = fz.featurize(&imp, 99).unwrap();
        assert_eq!(
            (sample.id.as_str(), sample.label, sample.seen_ms),
            (imp.id.as_ref(), false, 99)
        );
        assert_eq!(sample.ts_ms, imp.ts_ms);
        assert!(sample.dense.is_empty());
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        for (i, f) in m.spec.sparse.iter().enumerate() {
            let ids = json["features"]
                .get(&f.name)
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            assert_eq!(sample.keys[i], served_keys(f, &ids), "{line}: {}", f.name);
        }
    }
    // the settings matter: same ids, other hashing, other keys
    let a = &fz.featurize(&impression(lines[0]), 0).unwrap().keys;
    assert_eq!(a[3], [7], "hash = none passes ids through, padding dropped");
    assert!(a[2][0] < 24 && a[4].iter().all(|&k| k < 1000));
    assert_eq!(m.spec.sparse[2].hash, Hashing::Xxh3);
    assert_eq!(m.spec.sparse[0].pooling, Pooling::Sum);
}

#[test]
fn mapped_fields_feed_their_inputs() {
    let m = model(&["u", "genres", "hour", "item", "tags"], None);
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let imp = impression(
        r#"{"type":"impression","id":"a","ts_ms":5,"features":{"u":"u42","user":"other"}}"#,
    );
    let s = fz.featurize(&imp, 0).unwrap();
    let f = &m.spec.sparse[0];
    assert_eq!(s.keys[0], served_keys(f, &serde_json::json!("u42")));
    assert!(
        s.keys[1..].iter().all(Vec::is_empty),
        "absent fields give no keys"
    );
}

#[test]
fn wrong_types_name_the_field_and_input() {
    let mut fz = Featurizer::new(&model(&FIELDS, None), &FeaturesConfig::default());
    for (features, names) in [
        (r#"{"item":"seven"}"#, "features.item"),
        (r#"{"item":[1,"x"]}"#, "features.item"),
        (r#"{"user":42}"#, "features.user"),
        (r#"{"tags":["a"]}"#, "features.tags"),
    ] {
        let line = format!(r#"{{"type":"impression","id":"a","ts_ms":5,"features":{features}}}"#);
        let e = fz.featurize(&impression(&line), 0).unwrap_err();
        assert_eq!(e.kind, EventErrorKind::WrongType, "{e}");
        assert!(e.message.contains(names), "{e}");
    }
}

#[test]
fn ids_past_max_ids_are_cut_and_counted() {
    let m = model(&FIELDS, None);
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let line = r#"{"type":"impression","id":"a","ts_ms":5,"features":{"genres":["a","b","c","d","e"],"item":[1,2,3]}}"#;
    let s = fz.featurize(&impression(line), 0).unwrap();
    assert_eq!(
        s.keys[1],
        served_keys(&m.spec.sparse[1], &serde_json::json!(["a", "b", "c"]))
    );
    assert_eq!(s.keys[3], [1, 2]);
    assert_eq!(fz.stats().truncated, [0, 1, 0, 1, 0]);
    // within max_ids: nothing counted
    fz.featurize(
        &impression(r#"{"type":"impression","id":"a","ts_ms":5,"features":{"item":[1,2]}}"#),
        0,
    )
    .unwrap();
    assert_eq!(fz.stats().truncated, [0, 1, 0, 1, 0]);
}

#[test]
fn dense_must_have_the_models_width() {
    let m = model(&FIELDS, Some(3));
    let mut fz = Featurizer::new(&m, &FeaturesConfig::default());
    let line =
        |d: &str| format!(r#"{{"type":"impression","id":"a","ts_ms":5,"features":{{}}{d}}}"#);
    let s = fz
        .featurize(&impression(&line(r#","dense":[0.5,1,-2]"#)), 0)
        .unwrap();
    assert_eq!(s.dense, [0.5, 1.0, -2.0]);
    let e = fz
        .featurize(&impression(&line(r#","dense":[0.5]"#)), 0)
        .unwrap_err();
    assert_eq!(e.kind, EventErrorKind::DenseWidth, "{e}");
    let e = fz.featurize(&impression(&line("")), 0).unwrap_err();
    assert_eq!(e.kind, EventErrorKind::MissingField, "{e}");
    // an f32 overflow is refused, by the parser or by the featurizer (serde_json's build decides)
    let big = line(r#","dense":[1e60,0,0]"#);
    if let Ok(Event::Impression(imp)) = parse_line(big.as_bytes()) {
        let e = fz.featurize(&imp, 0).unwrap_err();
        assert_eq!(e.kind, EventErrorKind::WrongType, "{e}");
    }

    // dense off: zeros of the model's width, whatever the event says
    let off = FeaturesConfig {
        dense: false,
        ..FeaturesConfig::default()
    };
    let mut fz = Featurizer::new(&m, &off);
    assert_eq!(
        fz.featurize(&impression(&line("")), 0).unwrap().dense,
        [0.0; 3]
    );
    // no dense input: nothing read
    let mut fz = Featurizer::new(&model(&FIELDS, None), &FeaturesConfig::default());
    assert!(fz
        .featurize(&impression(&line(r#","dense":[1]"#)), 0)
        .unwrap()
        .dense
        .is_empty());
}
