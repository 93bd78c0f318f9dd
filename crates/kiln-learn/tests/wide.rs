//! The wide (FTRL) trainer and its parameter tables: learning, progressive validation,
//! deltas, save and load, served snapshots, TTL tombstones, admission.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_embed::{AdmissionFilter, ManualClock, Table, TableConfig};
use kiln_learn::eval::Evaluator;
use kiln_learn::optim::ftrl::FtrlParams;
use kiln_learn::params::ParamTable;
use kiln_learn::wide::WideTrainer;
use kiln_learn::{Sample, Trainer};
use kiln_recsys::spec::RecsysSpec;

/// Three wide features; `genres` shares the `wide.item` table with `item_id`.
const SPEC: &str = r#"
    [[sparse]]
    name = "user_id"
    table = "wide.user"
    max_ids = 1
    part = "wide"
    [[sparse]]
    name = "item_id"
    table = "wide.item"
    max_ids = 1
    part = "wide"
    [[sparse]]
    name = "genres"
    table = "wide.item"
    max_ids = 4
    part = "wide"
    [tables."wide.user"]
    ttl_s = 10
"#;

fn spec(s: &str) -> RecsysSpec {
    RecsysSpec::parse(&toml::from_str(s).unwrap()).unwrap()
}

const FTRL: FtrlParams = FtrlParams {
    alpha: 0.1,
    beta: 1.0,
    l1: 0.1,
    l2: 1.0,
};

fn sample(user: u64, item: u64, genres: &[u64], label: bool) -> Sample {
    Sample {
        id: String::new(),
        ts_ms: 0,
        label,
        keys: vec![vec![user], vec![item], genres.to_vec()],
        dense: vec![],
        seen_ms: 0,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        kiln_embed::mix64(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stream from a planted model: user and item effects, labels drawn from them.
fn planted_stream(n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let (u, i) = (rng.next() % 50, rng.next() % 80);
            let logit = (u as f64 / 25.0 - 1.0) * 2.0 + (i as f64 / 40.0 - 1.0) * 2.0;
            let label = rng.unit() < 1.0 / (1.0 + (-logit).exp());
            sample(u, 1000 + i, &[2000 + i % 7], label)
        })
        .collect()
}

#[test]
fn learns_a_planted_model_with_progressive_validation() {
    let mut t = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    let stream = planted_stream(20_000, 1);
    let mut eval = Evaluator::new(5000);
    for batch in stream.chunks(256) {
        let probs = t.train(batch);
        assert_eq!(probs.len(), batch.len());
        eval.observe_all(&probs, batch.iter().map(|s| s.label));
    }
    let r = eval.report();
    assert_eq!(r.samples, 20_000);
    // the planted logit spans [-4, 4]: a learned model ranks well on the last 5000
    assert!(r.window_auc.unwrap() > 0.8, "{r:?}");
    assert!(r.window_log_loss < 0.55, "{r:?}");
    assert!(t.bias().is_finite());
    // 50 users in one table; 80 items and 7 genres share the other
    assert_eq!(t.tables()[0].len(), 50);
    assert_eq!(t.tables()[1].len(), 87);
}

#[test]
fn each_score_is_taken_before_its_sample_is_learned() {
    let mut t = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    let s = sample(1, 2, &[3], true);
    // the same sample twice in one batch: the first sees zero weights, the second the update
    let p = t.train(&[s.clone(), s.clone()]);
    assert_eq!(p[0], 0.5);
    assert!(p[1] > 0.5, "{p:?}");
    assert_eq!(t.predict(&s), t.train(std::slice::from_ref(&s))[0]);
}

#[test]
fn matches_the_reference_stream_in_f32() {
    // The golden stream of tests/ftrl_golden.rs, all 40 keys in one feature: the trainer's
    // f32 rows follow the f64 reference closely (duplicates count as sum pooling does).
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ftrl_golden.bin"
    ))
    .unwrap();
    let f64_at = |o: usize| f64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let p = FtrlParams {
        alpha: f64_at(8),
        beta: f64_at(16),
        l1: f64_at(24),
        l2: f64_at(32),
    };
    let (k, s) = (u32_at(40), u32_at(44));
    let mut o = 48;
    let keys: Vec<u64> = (0..k)
        .map(|i| u64::from_le_bytes(bytes[o + 8 * i..o + 8 * i + 8].try_into().unwrap()))
        .collect();
    o += 8 * k;
    let mut samples = Vec::new();
    for _ in 0..s {
        let label = bytes[o] == 1;
        let m = u16::from_le_bytes([bytes[o + 1], bytes[o + 2]]) as usize;
        let ids = (0..m)
            .map(|j| {
                keys[u16::from_le_bytes([bytes[o + 3 + 2 * j], bytes[o + 4 + 2 * j]]) as usize]
            })
            .collect();
        o += 3 + 2 * m;
        samples.push(Sample {
            id: String::new(),
            ts_ms: 0,
            label,
            keys: vec![ids],
            dense: vec![],
            seen_ms: 0,
        });
    }
    let one = spec("[[sparse]]\nname = \"x\"\ntable = \"w\"\nmax_ids = 40\npart = \"wide\"\n");
    let mut t = WideTrainer::new(&one, p).unwrap();
    let mut probs = Vec::new();
    for batch in samples.chunks(256) {
        probs.extend(t.train(batch));
    }
    let worst = (0..s)
        .map(|i| (probs[i] as f64 - f64_at(o + 8 * i)).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "worst prediction difference {worst}");
    for (i, &key) in keys.iter().enumerate() {
        let want = f64_at(o + 8 * s + 8 * i);
        let got = t.rows("w", &[key]).unwrap()[0].as_ref().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-4, "key {key}: {got} vs {want}");
    }
    assert!((t.bias() as f64 - f64_at(o + 8 * s + 8 * k)).abs() < 1e-4);
}

#[test]
fn deltas_carry_the_changed_weights_once() {
    let mut t = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    t.train(&planted_stream(500, 2));
    let deltas = t.drain_deltas();
    assert_eq!(deltas.len(), 2);
    let mut seen = 0;
    for d in &deltas {
        assert_eq!(d.dim, 1);
        assert_eq!(d.keys.len(), d.values.len());
        assert!(d.tombstones.is_empty());
        let rows = t.rows(&d.table, &d.keys).unwrap();
        for (row, &v) in rows.iter().zip(&d.values) {
            assert_eq!(row.as_deref(), Some(&[v][..]));
        }
        seen += d.keys.len();
    }
    assert_eq!(seen, 50 + 87);
    // nothing changed since: nothing to publish
    assert!(t.drain_deltas().is_empty());
    // one sample: its three tables' rows (user; item and genre) and nothing else
    t.train(&[sample(7, 1003, &[2003], true)]);
    let d = t.drain_deltas();
    let mut keys: Vec<(String, u64)> = d
        .iter()
        .flat_map(|d| d.keys.iter().map(|&k| (d.table.clone(), k)))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("wide.item".to_string(), 1003),
            ("wide.item".to_string(), 2003),
            ("wide.user".to_string(), 7)
        ]
    );
    assert_eq!(t.rows("wide.user", &[7, 999]).unwrap()[1], None);
    assert!(t.rows("nope", &[7]).is_none());
}

#[test]
fn save_and_load_restore_every_weight_and_the_bias() {
    let stream = planted_stream(3000, 3);
    let mut a = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    a.train(&stream[..2000]);
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let mut b = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    b.load(dir.path()).unwrap();
    assert_eq!(a.bias(), b.bias());
    assert!(
        b.drain_deltas().is_empty(),
        "a restored state has nothing pending"
    );
    // the same future: same predictions and the same state
    assert_eq!(a.train(&stream[2000..]), b.train(&stream[2000..]));
    for (ta, tb) in a.tables().iter().zip(b.tables()) {
        assert_eq!(ta.len(), tb.len());
        for k in 0..3000 {
            assert_eq!(ta.get(k), tb.get(k), "{} {k}", ta.name());
        }
    }
    // a damaged table refuses the whole state and changes nothing
    let before = b.predict(&stream[0]);
    let user = dir.path().join("wide.user.snap");
    let mut bytes = std::fs::read(&user).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&user, bytes).unwrap();
    let mut c = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    c.train(&stream[..10]);
    let c_before = c.predict(&stream[0]);
    assert!(c.load(dir.path()).is_err());
    assert_eq!(c.predict(&stream[0]), c_before);
    assert_eq!(b.predict(&stream[0]), before);
    // a state from another model is refused
    let other = spec("[[sparse]]\nname = \"x\"\ntable = \"w\"\nmax_ids = 1\npart = \"wide\"\n");
    let err = WideTrainer::new(&other, FTRL).unwrap().load(dir.path());
    assert!(err.unwrap_err().to_string().contains("wide.json"));
}

#[test]
fn served_snapshots_load_into_the_served_tables() {
    let mut t = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    t.train(&planted_stream(1000, 4));
    let dir = tempfile::tempdir().unwrap();
    t.snapshot_served(dir.path()).unwrap();
    for p in t.tables() {
        let path = dir.path().join(format!("{}.snap", p.name()));
        let (table, info) = Table::restore(TableConfig::new(p.name(), 1), &path).unwrap();
        assert_eq!(info.rows as usize, p.len());
        for k in 0..3000 {
            assert_eq!(table.get(k), p.served(k));
        }
    }
}

#[test]
fn rows_past_the_ttl_become_tombstones() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let mut t = WideTrainer::with_clock(&spec(SPEC), FTRL, clock.clone()).unwrap();
    t.train(&[sample(1, 1001, &[], true)]);
    clock.advance(Duration::from_secs(8));
    t.train(&[sample(2, 1001, &[], false)]);
    t.drain_deltas();
    clock.advance(Duration::from_secs(5));
    // user 1 was last updated 13 s ago (ttl 10 s); user 2 8 s ago; wide.item has no TTL
    assert_eq!(t.maintain(), 1);
    let d = t.drain_deltas();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].table.as_str(), &d[0].tombstones[..]),
        ("wide.user", &[1][..])
    );
    assert!(d[0].keys.is_empty());
    assert_eq!(t.rows("wide.user", &[1, 2]).unwrap()[0], None);
    assert!(t.rows("wide.user", &[1, 2]).unwrap()[1].is_some());
}

#[test]
fn the_admission_filter_keeps_one_off_keys_out() {
    let mut t = WideTrainer::new(&spec(SPEC), FTRL).unwrap();
    for p in t.tables_mut() {
        p.set_filter(Some(AdmissionFilter::new(1024, 4, 2).unwrap()));
    }
    let s = sample(5, 1005, &[], true);
    assert_eq!(t.train(std::slice::from_ref(&s)), [0.5]);
    assert!(t.tables().iter().all(|p| p.is_empty()));
    t.train(&[s]);
    assert_eq!(t.tables()[0].len(), 1);
}

#[test]
fn trains_the_ctr_wide_example_model() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/models/ctr_wide/config.toml"
    );
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let params = config["parameters"].as_table().unwrap();
    let spec = RecsysSpec::parse(params).unwrap();
    let mut t = WideTrainer::new(&spec, FTRL).unwrap();
    let names: Vec<&str> = t.tables().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["user_id", "item_id", "genres", "hour"]);
    let s = Sample {
        id: "imp-1".into(),
        ts_ms: 0,
        label: true,
        keys: vec![vec![11], vec![22], vec![33, 34], vec![44]],
        dense: vec![],
        seen_ms: 0,
    };
    t.train(&[s]);
    let d = t.drain_deltas();
    assert_eq!(d.iter().map(|d| d.keys.len()).sum::<usize>(), 5);
    assert!(d.iter().all(|d| d.dim == 1));
}

#[test]
fn a_deep_feature_is_refused_naming_it() {
    let s = spec(
        "interaction = \"concat\"\n\
         [[sparse]]\nname = \"x\"\ntable = \"w\"\nmax_ids = 1\npart = \"wide\"\n\
         [[sparse]]\nname = \"y\"\ntable = \"e\"\nmax_ids = 1\n",
    );
    let err = WideTrainer::new(&s, FTRL).unwrap_err().to_string();
    assert!(
        err.contains("parameters.sparse[1].part") && err.contains("'y'"),
        "{err}"
    );
    let bad = FtrlParams {
        alpha: -1.0,
        ..FTRL
    };
    let err = WideTrainer::new(&spec(SPEC), bad).unwrap_err().to_string();
    assert!(err.contains("alpha"), "{err}");
}

#[test]
fn param_table_inserts_and_removes_like_a_map() {
    // random inserts and removals (backward-shift deletion) against a HashMap
    let mut p = ParamTable::new(TableConfig::new("t", 1), 3).unwrap();
    let mut model: HashMap<u64, f32> = HashMap::new();
    let mut rng = Rng(9);
    for step in 0..50_000 {
        let key = rng.next() % 2000;
        if rng.next().is_multiple_of(3) {
            assert_eq!(p.remove(key), model.remove(&key).is_some(), "step {step}");
        } else {
            let slot = p.find_or_insert(key).unwrap();
            p.row_mut(slot)[1] += 1.0;
            *model.entry(key).or_default() += 1.0;
        }
    }
    assert_eq!(p.len(), model.len());
    for k in 0..2000 {
        assert_eq!(p.get(k).map(|r| r[1]), model.get(&k).copied(), "key {k}");
    }
    // full-state snapshot round trip
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    p.snapshot_to(&path).unwrap();
    let mut q = ParamTable::new(TableConfig::new("t", 1), 3).unwrap();
    q.restore(&path).unwrap();
    assert_eq!(q.len(), p.len());
    for k in 0..2000 {
        assert_eq!(q.get(k), p.get(k));
    }
}
