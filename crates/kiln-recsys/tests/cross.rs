//! Crossed features (`cross = [...]` in the spec): the keys of a combination are pinned (as
//! `hashing.rs` pins `key_of`), a row's combinations come in a fixed order with padding
//! skipped, a served model computes a cross from its components' inputs and pools the rows
//! stored under those keys, a cross has no input of its own, and the spec refuses malformed
//! crosses naming the field.

use kiln_core::{Backend, ModelConfig, Tensor};
use kiln_recsys::features::{cross_key, cross_keys, key_of, Hashing, RawId, PADDING};
use kiln_recsys::spec::RecsysSpec;
use kiln_recsys::RecsysBackend;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use xxhash_rust::xxh3::xxh3_64;

/// `(component keys, buckets, key)`: the cross key, pinned.
const PINNED: [(&[u64], Option<u64>, u64); 4] = [
    (&[1, 2], None, 571_542_372_673_154_031),
    (&[1, 2], Some(1000), 31),
    (&[2, 1], None, 18_110_323_628_208_699_528),
    (&[7, 0, u64::MAX - 5], Some(97), 6),
];

#[test]
fn cross_keys_are_pinned() {
    for (keys, buckets, want) in PINNED {
        // the documented definition: xxh3-64 of the keys' little-endian bytes, then % buckets
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        let h = xxh3_64(&bytes);
        assert_eq!(cross_key(keys, buckets), buckets.map_or(h, |n| h % n));
        assert_eq!(cross_key(keys, buckets), want, "{keys:?} {buckets:?}");
    }
    assert_ne!(cross_key(&[1, 2], None), cross_key(&[2, 1], None));
}

#[test]
fn a_rows_combinations_come_first_component_outermost_padding_skipped() {
    let mut out = Vec::new();
    cross_keys(&[&[1, PADDING, 2], &[10, 20]], Some(1 << 40), &mut out);
    let k = |a, b| cross_key(&[a, b], Some(1 << 40));
    assert_eq!(out, [k(1, 10), k(1, 20), k(2, 10), k(2, 20)]);
    // appends; a component with no ids (or padding only) gives no combinations
    cross_keys(&[&[3], &[PADDING]], None, &mut out);
    cross_keys(&[&[3], &[]], None, &mut out);
    assert_eq!(out.len(), 4);
    cross_keys(&[&[3], &[4], &[5]], None, &mut out);
    assert_eq!(out[4..], [cross_key(&[3, 4, 5], None)]);
}

const CONFIG: &str = r#"
backend = "recsys"
default_model_filename = "model.safetensors"
max_batch_size = 8
[parameters]
output = "score"
output_activation = "none"
[[parameters.sparse]]
name = "user"
table = "t_user"
max_ids = 1
data_type = "BYTES"
hash = "xxh3"
part = "wide"
[[parameters.sparse]]
name = "user_x_genres"
cross = ["user", "genres"]
table = "t_ug"
buckets = 50
part = "wide"
[[parameters.sparse]]
name = "genres"
table = "t_genre"
max_ids = 3
hash = "xxh3"
buckets = 100
part = "wide"
[[parameters.sparse]]
name = "genres_x_tags"
cross = ["genres", "tags"]
table = "t_gt"
part = "wide"
[[parameters.sparse]]
name = "tags"
table = "t_tag"
max_ids = 2
input = "ragged"
part = "wide"
"#;

fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// A wide-only model whose component tables are empty (zeros) and whose cross tables hold
/// rows under the keys given: `t_ug` row of key `k` is `k + 1`, `t_gt` holds `gt`.
fn write_weights(path: &std::path::Path, gt: &[(u64, f32)]) {
    let ug_keys: Vec<i64> = (0..50).collect();
    let ug: Vec<f32> = (0..50).map(|k| k as f32 + 1.0).collect();
    let gt_keys: Vec<i64> = gt.iter().map(|(k, _)| *k as i64).collect();
    let gt_rows: Vec<f32> = gt.iter().map(|(_, v)| *v).collect();
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("t_ug.weight".into(), Dtype::F32, vec![50, 1], bytes(&ug)),
        ("t_ug.keys".into(), Dtype::I64, vec![50], bytes(&ug_keys)),
        (
            "t_gt.weight".into(),
            Dtype::F32,
            vec![gt.len(), 1],
            bytes(&gt_rows),
        ),
        (
            "t_gt.keys".into(),
            Dtype::I64,
            vec![gt.len()],
            bytes(&gt_keys),
        ),
    ];
    for t in ["t_user", "t_genre", "t_tag"] {
        bufs.push((
            format!("{t}.weight"),
            Dtype::F32,
            vec![1, 1],
            bytes(&[0f32]),
        ));
        bufs.push((format!("{t}.keys"), Dtype::I64, vec![1], bytes(&[0i64])));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A served cross pools the rows stored under `cross_keys` of its components' keys, which
/// serving derives from the components' own inputs (padded BYTES, padded INT64, ragged).
#[test]
fn a_served_cross_pools_the_rows_under_its_keys() {
    let genre_key = |g: i64| key_of(RawId::Int(g), Hashing::Xxh3, Some(100));
    // one row of t_gt: the combination (genre 5, tag 9)
    let g5t9 = cross_key(&[genre_key(5), 9], None);
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("m/1");
    std::fs::create_dir_all(&v1).unwrap();
    write_weights(&v1.join("model.safetensors"), &[(g5t9, 1000.0)]);
    let config = ModelConfig::parse(CONFIG, "m").unwrap();
    let model = RecsysBackend::new().load(&v1, &config).expect("load");
    let names: Vec<&str> = model.io().inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["user", "genres", "tags_values", "tags_lengths"]);

    let users: [&[u8]; 3] = [b"alice", b"", b"bob"];
    let genres: [i64; 9] = [5, -1, 6, 5, 5, -1, -1, -1, -1];
    let tags: [i64; 3] = [9, 9, 4];
    let lengths: [i32; 3] = [1, 2, 0];
    let inputs = vec![
        Tensor::from_strings("user", vec![3, 1], &users),
        Tensor::from_vec("genres", vec![3, 3], &genres),
        Tensor::from_vec("tags_values", vec![3], &tags),
        Tensor::from_vec("tags_lengths", vec![3], &lengths),
    ];
    let got: Vec<f32> = model.execute(&inputs).unwrap()[0].to_vec().unwrap();
    let ug = |u: &[u8], g: i64| {
        let k = cross_key(
            &[key_of(RawId::Bytes(u), Hashing::Xxh3, None), genre_key(g)],
            Some(50),
        );
        k as f32 + 1.0
    };
    let want = [
        // alice x {5, 6}; (5, 9) is stored, (6, 9) is not
        ug(b"alice", 5) + ug(b"alice", 6) + 1000.0,
        // no user: no user_x_genres keys; genres {5, 5} x tags {9, 4}: (5, 9) twice
        2000.0,
        // bob x {} (padding only): nothing; no tags: nothing
        0.0,
    ];
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-3, "row {r}: got {g}, want {w}");
    }
}

fn parse(extra: &str) -> String {
    let base = "interaction = \"concat\"\n\
                [[sparse]]\nname = \"a\"\ntable = \"ta\"\nmax_ids = 4\n\
                [[sparse]]\nname = \"b\"\ntable = \"tb\"\nmax_ids = 2\n";
    let p: toml::Table = toml::from_str(&format!("{base}{extra}")).unwrap();
    match RecsysSpec::parse(&p) {
        Ok(s) => format!("ok {:?} {}", s.sparse[2].cross, s.sparse[2].max_ids),
        Err(e) => e.message,
    }
}

#[test]
fn the_spec_refuses_malformed_crosses_naming_the_field() {
    let cross = |list: &str, more: &str| {
        parse(&format!(
            "[[sparse]]\nname = \"x\"\ntable = \"tx\"\ncross = {list}\n{more}"
        ))
    };
    assert_eq!(cross("[\"b\", \"a\"]", ""), "ok [1, 0] 8");
    for (list, more, want) in [
        ("[\"a\", \"zz\"]", "", "'zz' is not a sparse feature"),
        ("[\"a\", \"x\"]", "", "cannot cross itself"),
        ("[\"a\"]", "", "crosses 2 to 8 features, got 1"),
        ("[\"a\", \"a\"]", "", "'a' is listed twice"),
        ("[\"a\", \"b\"]", "max_ids = 3\n", "max_ids"),
        ("[\"a\", \"b\"]", "hash = \"xxh3\"\n", "hash"),
        ("[\"a\", \"b\"]", "data_type = \"BYTES\"\n", "data_type"),
        ("[\"a\", \"b\"]", "input = \"ragged\"\n", "input"),
    ] {
        let e = cross(list, more);
        assert!(
            e.contains("sparse feature 'x'") && e.contains(want),
            "{list} {more}: {e}"
        );
    }
    let e = parse(
        "[[sparse]]\nname = \"x\"\ntable = \"tx\"\ncross = [\"a\", \"b\"]\n\
         [[sparse]]\nname = \"y\"\ntable = \"ty\"\ncross = [\"x\", \"a\"]\n",
    );
    assert!(
        e.contains("sparse feature 'y'") && e.contains("'x' is itself a cross"),
        "{e}"
    );
    let e = parse(
        "[[sparse]]\nname = \"c\"\ntable = \"tc\"\nmax_ids = 2048\n\
         [[sparse]]\nname = \"x\"\ntable = \"tx\"\ncross = [\"a\", \"c\"]\n",
    );
    assert!(e.contains("'x'") && e.contains("4096"), "{e}");
    let e = parse("[[sparse]]\nname = \"y\"\ntable = \"ty\"\n");
    assert!(e.contains("'y'") && e.contains("max_ids"), "{e}");
}
