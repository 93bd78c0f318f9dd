//! Raw-id hashing and the load-time checks of the recsys backend, on a tiny model written here:
//! a BYTES feature hashed with xxh3 into 100 buckets (sum pooling), an INT64 feature hashed into
//! 50 buckets (mean pooling, -1 padding), a 2-wide dense input, and a top layer that sums
//! everything, so each output is checked against a hand computation.
//!
//! A second model stores its rows under keys computed with `kiln_recsys::features::key_of`, as
//! an online learner would write them, and checks that serving finds exactly those rows.

use kiln_core::{Backend, DataType, ModelConfig, Tensor};
use kiln_recsys::features::{key_of, Hashing, RawId};
use kiln_recsys::RecsysBackend;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

const CONFIG: &str = r#"
backend = "recsys"
default_model_filename = "model.safetensors"
max_batch_size = 8
[parameters]
interaction = "concat"
output = "score"
output_activation = "none"
dense_input = "dense"
[[parameters.sparse]]
name = "user"
table = "t_user"
max_ids = 1
data_type = "BYTES"
hash = "xxh3"
buckets = 100
[[parameters.sparse]]
name = "items"
table = "t_item"
max_ids = 3
pooling = "mean"
hash = "xxh3"
buckets = 50
"#;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Row r of t_user is [r, r, r, r] / 100; row r of t_item is [r, 0, 0, 0] / 1000.
fn write_model(dir: &Path, top_inputs: usize) {
    let user: Vec<f32> = (0..100).flat_map(|r| [r as f32 / 100.0; 4]).collect();
    let item: Vec<f32> = (0..50)
        .flat_map(|r| [r as f32 / 1000.0, 0.0, 0.0, 0.0])
        .collect();
    // bottom: dense [2] -> 4, weight [[1,0],[0,1],[0,0],[0,0]], bias 0 (relu keeps positives)
    let bw = [1.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let bb = [0.0f32; 4];
    let tw = vec![1.0f32; top_inputs];
    let tb = [0.5f32];
    let bufs: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
        ("t_user.weight", vec![100, 4], f32_bytes(&user)),
        ("t_item.weight", vec![50, 4], f32_bytes(&item)),
        ("bottom.0.weight", vec![4, 2], f32_bytes(&bw)),
        ("bottom.0.bias", vec![4], f32_bytes(&bb)),
        ("top.0.weight", vec![1, top_inputs], f32_bytes(&tw)),
        ("top.0.bias", vec![1], f32_bytes(&tb)),
    ];
    let views: Vec<(&str, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, shape, data)| {
            (
                *n,
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn strings(name: &str, rows: &[&[u8]]) -> Tensor {
    Tensor::from_strings(name, vec![rows.len() as i64, 1], rows)
}

#[test]
fn hashed_bytes_and_int64_ids_pool_the_right_rows() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("m/1");
    write_model(&v1, 12);
    let config = ModelConfig::parse(CONFIG, "m").unwrap();
    let model = RecsysBackend::new().load(&v1, &config).expect("load");
    let io = model.io();
    assert_eq!(io.inputs[1].data_type, DataType::Bytes);
    assert_eq!(io.inputs[2].dims, vec![3]);

    let users: [&[u8]; 3] = [b"alice", b"bob", b""];
    let items: [i64; 9] = [7, 123_456_789, -1, -1, -1, -1, 42, 42, 9_000_000_001];
    let dense = [0.25f32, -1.0, 1.5, 2.0, 0.0, 0.0];
    let inputs = vec![
        Tensor::from_vec("dense", vec![3, 2], &dense),
        strings("user", &users),
        Tensor::from_vec("items", vec![3, 3], &items),
    ];
    let out = model.execute(&inputs).expect("execute");
    let got: Vec<f32> = out[0].to_vec().unwrap();

    let item_row = |id: i64| (xxh3_64(&id.to_le_bytes()) % 50) as f32 / 1000.0;
    for r in 0..3 {
        let bottom: f32 = dense[r * 2].max(0.0) + dense[r * 2 + 1].max(0.0);
        let user = if users[r].is_empty() {
            0.0 // padding: zeros
        } else {
            4.0 * (xxh3_64(users[r]) % 100) as f32 / 100.0
        };
        let ids: Vec<i64> = items[r * 3..r * 3 + 3]
            .iter()
            .copied()
            .filter(|&i| i != -1)
            .collect();
        let item = if ids.is_empty() {
            0.0
        } else {
            ids.iter().map(|&i| item_row(i)).sum::<f32>() / ids.len() as f32
        };
        let want = 0.5 + bottom + user + item;
        assert!(
            (got[r] - want).abs() < 1e-5,
            "row {r}: got {}, want {want}",
            got[r]
        );
    }
}

#[test]
fn load_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("m/1");
    // the top layer takes 10 inputs, the interaction gives 12
    write_model(&v1, 10);
    let config = ModelConfig::parse(CONFIG, "m").unwrap();
    let e = RecsysBackend::new()
        .load(&v1, &config)
        .err()
        .expect("refused");
    assert!(e.message.contains("top.0 takes 10 inputs"), "{e}");

    // a truncated weights file
    write_model(&v1, 12);
    let p = v1.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = RecsysBackend::new()
        .load(&v1, &config)
        .err()
        .expect("refused");
    assert!(e.message.contains("model.safetensors"), "{e}");

    // a table with no weights and no live version to share it from
    let v2 = dir.path().join("m2/1");
    std::fs::create_dir_all(&v2).unwrap();
    write_model(&v2, 12);
    let cfg2 = ModelConfig::parse(&CONFIG.replace("t_item", "t_other"), "m2").unwrap();
    let e = RecsysBackend::new()
        .load(&v2, &cfg2)
        .err()
        .expect("refused");
    assert!(e.message.contains("t_other"), "{e}");
}

const KEYED: &str = r#"
backend = "recsys"
default_model_filename = "model.safetensors"
max_batch_size = 8
[parameters]
interaction = "concat"
output = "score"
output_activation = "none"
dense_input = "dense"
[[parameters.sparse]]
name = "user"
table = "t_user"
max_ids = 1
data_type = "BYTES"
hash = "xxh3"
[[parameters.sparse]]
name = "items"
table = "t_item"
max_ids = 3
hash = "xxh3"
buckets = 1000
input = "ragged"
"#;

/// Rows written under keys a learner computes with `key_of` are the rows serving pools.
#[test]
fn rows_keyed_by_key_of_are_the_rows_served() {
    let users: [&[u8]; 3] = [b"alice", b"bob", b"carol"];
    let items: [i64; 5] = [0, 7, 42, 9_000_000_001, -2];
    let user_keys: Vec<i64> = users
        .iter()
        .map(|u| key_of(RawId::Bytes(u), Hashing::Xxh3, None) as i64)
        .collect();
    let item_keys: Vec<i64> = items
        .iter()
        .map(|&i| key_of(RawId::Int(i), Hashing::Xxh3, Some(1000)) as i64)
        .collect();
    // user row r is [r + 1; 4]; item row r is [10^r / 1000, 0, 0, 0]
    let user: Vec<f32> = (0..3).flat_map(|r| [(r + 1) as f32; 4]).collect();
    let item_value = |r: usize| 10f32.powi(r as i32) / 1000.0;
    let item: Vec<f32> = (0..5)
        .flat_map(|r| [item_value(r), 0.0, 0.0, 0.0])
        .collect();
    let i64_bytes = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let bufs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("t_user.weight", Dtype::F32, vec![3, 4], f32_bytes(&user)),
        ("t_user.keys", Dtype::I64, vec![3], i64_bytes(&user_keys)),
        ("t_item.weight", Dtype::F32, vec![5, 4], f32_bytes(&item)),
        ("t_item.keys", Dtype::I64, vec![5], i64_bytes(&item_keys)),
        (
            "bottom.0.weight",
            Dtype::F32,
            vec![4, 2],
            f32_bytes(&[0.0; 8]),
        ),
        ("bottom.0.bias", Dtype::F32, vec![4], f32_bytes(&[0.0; 4])),
        (
            "top.0.weight",
            Dtype::F32,
            vec![1, 12],
            f32_bytes(&[1.0; 12]),
        ),
        ("top.0.bias", Dtype::F32, vec![1], f32_bytes(&[0.0])),
    ];
    let views: Vec<(&str, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, dtype, shape, data)| (*n, TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("keyed/1");
    std::fs::create_dir_all(&v1).unwrap();
    safetensors::serialize_to_file(views, None, &v1.join("model.safetensors")).unwrap();
    let config = ModelConfig::parse(KEYED, "keyed").unwrap();
    let model = RecsysBackend::new().load(&v1, &config).expect("load");

    // rows: (bob, [7, 42]), (alice, []), (carol, [9000000001, -2, 0]), (unknown, [-1 padding, 123])
    let request_users: [&[u8]; 4] = [b"bob", b"alice", b"carol", b"dave"];
    let values: [i64; 7] = [7, 42, 9_000_000_001, -2, 0, -1, 123];
    let lengths: [i32; 4] = [2, 0, 3, 2];
    let inputs = vec![
        Tensor::from_vec("dense", vec![4, 2], &[0.0f32; 8]),
        strings("user", &request_users),
        Tensor::from_vec("items_values", vec![7], &values),
        Tensor::from_vec("items_lengths", vec![4], &lengths),
    ];
    let out = model.execute(&inputs).expect("execute");
    let got: Vec<f32> = out[0].to_vec().unwrap();
    let want = [
        4.0 * 2.0 + item_value(1) + item_value(2),
        4.0 * 1.0,
        4.0 * 3.0 + item_value(3) + item_value(4) + item_value(0),
        0.0, // an unknown user, padding and an id no row was written for: zeros
    ];
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-4, "row {r}: got {g}, want {w}");
    }
}
