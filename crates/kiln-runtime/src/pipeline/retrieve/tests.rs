use super::*;
use kiln_embed::Delta;
use safetensors::tensor::TensorView;

/// A deterministic stream of floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn write(dir: &Path, table: &str, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join(format!("{table}.safetensors"))).unwrap();
}

fn le<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

fn items(dir: &Path, table: &str, keys: &[i64], dim: usize, values: &[f32]) -> Arc<ItemIndex> {
    write(
        dir,
        table,
        &[
            (
                "keys",
                Dtype::I64,
                vec![keys.len()],
                le(keys, |k| k.to_le_bytes().to_vec()),
            ),
            (
                "embeddings",
                Dtype::F32,
                vec![keys.len(), dim],
                le(values, |v| v.to_le_bytes().to_vec()),
            ),
        ],
    );
    ItemIndex::load(dir, table, "p").unwrap()
}

fn query(b: usize, dim: usize, q: &[f32]) -> Tensor {
    Tensor::from_vec("q", vec![b as i64, dim as i64], q)
}

fn ids_of(index: &ItemIndex, q: &Tensor, k: usize) -> Vec<i64> {
    index
        .search(q, k, false)
        .unwrap()
        .0
        .to_vec::<i64>()
        .unwrap()
}

fn delta(seq: u64, keys: Vec<u64>, values: Vec<f32>, tombstones: Vec<u64>, dim: usize) -> Vec<u8> {
    Delta {
        source: "trainer".into(),
        seq,
        dim,
        keys,
        values,
        tombstones,
        ..Default::default()
    }
    .encode()
}

#[test]
fn search_matches_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let (n, dim, b, k) = (300, 16, 5, 20);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let values: Vec<f32> = (0..n * dim).map(|_| rng.next()).collect();
    let keys: Vec<i64> = (0..n as i64).map(|i| 1000 + 7 * i).collect();
    let index = items(dir.path(), "items", &keys, dim, &values);
    assert_eq!((index.len(), index.dim()), (n, dim));
    let q: Vec<f32> = (0..b * dim).map(|_| rng.next()).collect();
    let (ids, scores, emb) = index.search(&query(b, dim, &q), k, true).unwrap();
    assert_eq!(
        (ids.shape.clone(), scores.shape.clone()),
        (vec![5, 20], vec![5, 20])
    );
    let emb = emb.unwrap();
    assert_eq!(emb.shape, vec![5, 20, 16]);
    let (ids, scores, emb) = (
        ids.to_vec::<i64>().unwrap(),
        scores.to_vec::<f32>().unwrap(),
        emb.to_vec::<f32>().unwrap(),
    );
    let dot = |r: usize, i: usize| -> f64 {
        (0..dim)
            .map(|d| f64::from(q[r * dim + d]) * f64::from(values[i * dim + d]))
            .sum()
    };
    for r in 0..b {
        let mut all: Vec<(f64, usize)> = (0..n).map(|i| (dot(r, i), i)).collect();
        all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        for (j, &(want, _)) in all.iter().enumerate().take(k) {
            let at = r * k + j;
            assert!(
                (f64::from(scores[at]) - want).abs() < 1e-4,
                "row {r} rank {j}"
            );
            let pos = ((ids[at] - 1000) / 7) as usize;
            assert!((dot(r, pos) - f64::from(scores[at])).abs() < 1e-4);
            assert_eq!(
                &emb[at * dim..(at + 1) * dim],
                &values[pos * dim..(pos + 1) * dim]
            );
        }
    }
}

#[test]
fn ties_go_to_the_lower_row_and_k_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    // rows 1 and 3 are equal; integer values score exactly
    let values = [1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0];
    let index = items(dir.path(), "items", &[9, 50, 8, 7], 2, &values);
    let q = query(1, 2, &[1.0, 1.0]);
    assert_eq!(ids_of(&index, &q, 2), vec![50, 7]);
    let (ids, scores, _) = index.search(&q, 10, false).unwrap();
    assert_eq!(ids.shape, vec![1, 4]);
    assert_eq!(ids.to_vec::<i64>().unwrap(), vec![50, 7, 9, 8]);
    assert_eq!(scores.to_vec::<f32>().unwrap(), vec![3.0, 3.0, 1.0, 1.0]);
    let empty = query(0, 2, &[]);
    assert_eq!(index.search(&empty, 3, true).unwrap().0.shape, vec![0, 3]);
    assert!(index.search(&query(1, 1, &[1.0]), 1, false).is_err());
    let f64q = Tensor::from_vec("q", vec![1, 2], &[1.0f64, 1.0]);
    assert!(index
        .search(&f64q, 1, false)
        .unwrap_err()
        .to_string()
        .contains("FP32"));
}

#[test]
fn a_delta_changes_the_next_search() {
    let dir = tempfile::tempdir().unwrap();
    let index = items(
        dir.path(),
        "items",
        &[1, 2, 3],
        2,
        &[1.0, 0.0, 0.5, 0.0, 0.0, 1.0],
    );
    let tables = ItemTables(vec![index.clone()]);
    let q = query(1, 2, &[1.0, 0.0]);
    assert_eq!(ids_of(&index, &q, 1), vec![1]);

    // a new item scores highest, then the old best is removed
    let ack = tables
        .apply_delta("items", &delta(1, vec![42], vec![5.0, 0.0], vec![], 2))
        .unwrap();
    assert!(ack.applied && ack.inserted == 1 && ack.last_sequence == 1);
    assert_eq!(ids_of(&index, &q, 4), vec![42, 1, 2, 3]);
    tables
        .apply_delta("items", &delta(2, vec![3], vec![0.7, 0.0], vec![1], 2))
        .unwrap();
    assert_eq!(ids_of(&index, &q, 4), vec![42, 3, 2]);
    assert_eq!(index.len(), 3);

    // a replay changes nothing; a wrong table or a wrong dim is refused
    let replay = tables
        .apply_delta("items", &delta(2, vec![2], vec![9.0, 0.0], vec![], 2))
        .unwrap();
    assert!(!replay.applied);
    assert_eq!(ids_of(&index, &q, 1), vec![42]);
    let e = tables.apply_delta("other", &delta(3, vec![], vec![], vec![], 2));
    assert_eq!(e.unwrap_err().code, kiln_core::ErrorCode::NotFound);
    assert!(tables
        .apply_delta("items", &delta(3, vec![2], vec![1.0; 3], vec![], 3))
        .is_err());

    assert_eq!(
        tables.rows("items", &[42, 1]).unwrap(),
        vec![Some(vec![5.0, 0.0]), None]
    );
    tables.reset_source("items", "trainer", 10).unwrap();
    let info = &tables.tables()[0];
    assert_eq!((info.name.as_str(), info.dim, info.rows), ("items", 2, 3));
    assert_eq!(info.sources, vec![("trainer".to_string(), 10)]);
}

#[test]
fn rewritten_rows_are_patched_into_the_copy_and_new_rows_rebuild_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = 16u64;
    let keys: Vec<i64> = (0..n as i64).collect();
    let values: Vec<f32> = (0..n).flat_map(|k| [k as f32, 0.0]).collect();
    let index = items(dir.path(), "items", &keys, 2, &values);
    let tables = ItemTables(vec![index.clone()]);
    let q = query(1, 2, &[1.0, 0.0]);
    let rebuilds = || index.rebuilds.load(Ordering::Relaxed);
    assert_eq!(ids_of(&index, &q, 2), vec![15, 14]);

    // a rewrite of present rows is patched in: in the copy itself, then (while a search
    // holds the copy) in a copy of it, which the held snapshot never sees
    tables
        .apply_delta("items", &delta(1, vec![3], vec![100.0, 0.0], vec![], 2))
        .unwrap();
    assert_eq!(ids_of(&index, &q, 2), vec![3, 15]);
    let held = index.snapshot();
    tables
        .apply_delta(
            "items",
            &delta(2, vec![4, 3], vec![200.0, 0.0, 1.0, 0.0], vec![], 2),
        )
        .unwrap();
    assert_eq!(ids_of(&index, &q, 3), vec![4, 15, 14]);
    assert_eq!(held.values[3 * 2], 100.0, "a held snapshot changed");
    assert_eq!(rebuilds(), 0);
    assert_eq!(
        tables.rows("items", &[3]).unwrap(),
        vec![Some(vec![1.0, 0.0])]
    );

    // a new row, a removed row, or more rewritten keys than a quarter of the rows: rebuilt
    tables
        .apply_delta("items", &delta(3, vec![99], vec![300.0, 0.0], vec![], 2))
        .unwrap();
    assert_eq!(ids_of(&index, &q, 2), vec![99, 4]);
    assert_eq!(rebuilds(), 1);
    tables
        .apply_delta("items", &delta(4, vec![], vec![], vec![99], 2))
        .unwrap();
    assert_eq!(ids_of(&index, &q, 2), vec![4, 15]);
    assert_eq!(rebuilds(), 2);
    let many: Vec<u64> = (0..5).collect();
    let rows: Vec<f32> = many.iter().flat_map(|&k| [500.0 + k as f32, 0.0]).collect();
    tables
        .apply_delta("items", &delta(5, many, rows, vec![], 2))
        .unwrap();
    assert_eq!(ids_of(&index, &q, 3), vec![4, 3, 2]);
    assert_eq!(rebuilds(), 3);
    // every answer equals a search over a copy made anew from the table
    let fresh = index.rebuilt(&index.snapshot(), 0);
    assert_eq!(fresh.values, index.snapshot().values);
}

#[test]
fn f16_embeddings_load() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [0.1f32, -2.5, 3.25, 0.333];
    let halves: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
    write(
        dir.path(),
        "h",
        &[
            (
                "keys",
                Dtype::I64,
                vec![2],
                le(&[5i64, 6], |k| k.to_le_bytes().to_vec()),
            ),
            (
                "embeddings",
                Dtype::F16,
                vec![2, 2],
                le(&halves, |h| h.to_le_bytes().to_vec()),
            ),
        ],
    );
    let index = ItemIndex::load(dir.path(), "h", "p").unwrap();
    let (ids, _, emb) = index.search(&query(1, 2, &[0.0, 1.0]), 2, true).unwrap();
    assert_eq!(ids.to_vec::<i64>().unwrap(), vec![6, 5]);
    let want: Vec<f32> = [2, 3, 0, 1].iter().map(|&i| halves[i].to_f32()).collect();
    assert_eq!(emb.unwrap().to_vec::<f32>().unwrap(), want);
}

#[test]
fn bad_files_are_load_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = |table: &str| {
        ItemIndex::load(dir.path(), table, "p")
            .err()
            .unwrap()
            .to_string()
    };
    assert!(
        err("missing").contains("missing.safetensors"),
        "{}",
        err("missing")
    );
    std::fs::write(
        dir.path().join("junk.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    assert!(err("junk").contains("junk.safetensors"));
    let keys = |d: Dtype, n: usize| ("keys", d, vec![n], vec![0u8; n * 8]);
    let emb = |d: Dtype, w: usize| ("embeddings", d, vec![2, 2], vec![0u8; 4 * w]);
    write(
        dir.path(),
        "k32",
        &[
            ("keys", Dtype::I32, vec![2], vec![0; 8]),
            emb(Dtype::F32, 4),
        ],
    );
    let e = err("k32");
    assert!(
        e.contains("k32.safetensors") && e.contains("'keys'") && e.contains("I32"),
        "{e}"
    );
    write(
        dir.path(),
        "e64",
        &[keys(Dtype::I64, 2), emb(Dtype::F64, 8)],
    );
    let e = err("e64");
    assert!(
        e.contains("e64.safetensors") && e.contains("'embeddings'") && e.contains("F64"),
        "{e}"
    );
    write(
        dir.path(),
        "short",
        &[keys(Dtype::I64, 3), emb(Dtype::F32, 4)],
    );
    assert!(err("short").contains("'keys' has shape [3]"));
    write(
        dir.path(),
        "dup",
        &[keys(Dtype::I64, 2), emb(Dtype::F32, 4)],
    );
    assert!(err("dup").contains("key 0 appears more than once"));
    write(dir.path(), "nokeys", &[emb(Dtype::F32, 4)]);
    assert!(err("nokeys").contains("'keys' is missing"));
    assert!(err("../x").contains("plain file name"));
}
