//! Model directories for the learner's tests: a `config.toml` and a version directory whose
//! safetensors file holds zero-filled F32 tensors of the given shapes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Writes `<dir>/<name>/config.toml` (`parameters` is the `[parameters]` body) and
/// `<dir>/<name>/1/model.safetensors` holding `tensors`; returns the model directory.
pub fn write_model(
    dir: &Path,
    name: &str,
    parameters: &str,
    tensors: &[(&str, &[usize])],
) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(
        model.join("config.toml"),
        format!(
            "backend = \"recsys\"\ndefault_model_filename = \"model.safetensors\"\nmax_batch_size = 64\n\n[parameters]\n{parameters}"
        ),
    )
    .unwrap();
    std::fs::write(model.join("1/model.safetensors"), safetensors(tensors)).unwrap();
    model
}

/// A safetensors file of zero-filled F32 tensors.
pub fn safetensors(tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.push(format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            offset + bytes
        ));
        offset += bytes;
    }
    let mut h = format!("{{{}}}", header.join(","));
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.resize(out.len() + offset, 0);
    out
}

/// The `[parameters]` of a wide model: string features `user_id`, `item_id`, `genres`
/// (multi-hot, 3 ids), INT64 `hour` (xxh3), each its own dim-1 table.
pub const WIDE: &str = r#"
[[parameters.sparse]]
name = "user_id"
table = "w.user"
max_ids = 1
hash = "xxh3"
buckets = 1048576
data_type = "BYTES"
part = "wide"
[[parameters.sparse]]
name = "item_id"
table = "w.item"
max_ids = 1
hash = "xxh3"
buckets = 1048576
data_type = "BYTES"
part = "wide"
[[parameters.sparse]]
name = "genres"
table = "w.genres"
max_ids = 3
hash = "xxh3"
data_type = "BYTES"
part = "wide"
[[parameters.sparse]]
name = "hour"
table = "w.hour"
max_ids = 1
hash = "xxh3"
part = "wide"
"#;

/// The wide model's tensors.
pub const WIDE_TENSORS: &[(&str, &[usize])] = &[
    ("w.user.weight", &[4, 1]),
    ("w.item.weight", &[4, 1]),
    ("w.genres.weight", &[4, 1]),
    ("w.hour.weight", &[4, 1]),
];

/// A small deep model: two INT64 features (`a` unhashed, `b` xxh3 with 100 buckets, 2 ids),
/// dim-4 tables, a 3-wide dense input.
pub const DEEP: &str = r#"
interaction = "concat"
[[parameters.sparse]]
name = "a"
table = "emb.a"
max_ids = 2
[[parameters.sparse]]
name = "b"
table = "emb.b"
max_ids = 2
hash = "xxh3"
buckets = 100
"#;

/// The deep model's tensors.
pub const DEEP_TENSORS: &[(&str, &[usize])] = &[
    ("emb.a.weight", &[10, 4]),
    ("emb.b.weight", &[100, 4]),
    ("bottom.0.weight", &[4, 3]),
    ("bottom.0.bias", &[4]),
    ("top.0.weight", &[1, 12]),
    ("top.0.bias", &[1]),
];
