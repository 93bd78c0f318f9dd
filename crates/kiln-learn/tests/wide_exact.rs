//! The wide trainer's arithmetic, pinned: whatever it does for speed (hashing a batch up front,
//! prefetching, updating rows in groups), every prediction and every stored `[w | z | n]` must
//! equal, bit for bit, a plain per-sample FTRL over a `HashMap` of f32 rows that calls
//! `ftrl::update_row` one coordinate at a time.

use std::collections::HashMap;

use kiln_learn::optim::ftrl::{self, FtrlParams};
use kiln_learn::wide::WideTrainer;
use kiln_learn::{Sample, Trainer};
use kiln_recsys::spec::RecsysSpec;

/// Four features over three tables: `b` and `c` share `t.bc`; `c` is multi-hot (repeats allowed).
const SPEC: &str = r#"
    [[sparse]]
    name = "a"
    table = "t.a"
    max_ids = 1
    part = "wide"
    [[sparse]]
    name = "b"
    table = "t.bc"
    max_ids = 1
    part = "wide"
    [[sparse]]
    name = "c"
    table = "t.bc"
    max_ids = 8
    part = "wide"
    [[sparse]]
    name = "d"
    table = "t.d"
    max_ids = 3
    part = "wide"
"#;

const TABLE_OF_FEATURE: [usize; 4] = [0, 1, 1, 2];

const P: FtrlParams = FtrlParams {
    alpha: 0.07,
    beta: 1.0,
    l1: 0.3,
    l2: 0.5,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        kiln_embed::mix64(self.0)
    }
}

/// Samples whose keys repeat within a sample and across tables (key 5 may be in every table),
/// from small and large key spaces, with empty multi-hot lists now and then.
fn stream(n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let small = rng.next().is_multiple_of(4);
            let mut id = |space: u64| {
                if small {
                    rng.next() % 16
                } else {
                    rng.next() % space
                }
            };
            let a = vec![id(5_000)];
            let b = vec![id(300)];
            let c_len = (id(9) % 9) as usize;
            let c: Vec<u64> = (0..c_len).map(|_| id(40)).collect();
            let d: Vec<u64> = (0..3).map(|_| id(200_000)).collect();
            let label = (a[0] + b[0]).is_multiple_of(3) || rng.next().is_multiple_of(5);
            Sample {
                id: String::new(),
                ts_ms: 0,
                label,
                keys: vec![a, b, c, d],
                dense: vec![],
                seen_ms: 0,
            }
        })
        .collect()
}

/// The plain learner: score with the current rows, then update each distinct (table, key)
/// once by `err * occurrences`, in order of first occurrence, then the bias.
#[derive(Default)]
struct Plain {
    rows: HashMap<(usize, u64), [f32; 3]>,
    bias: [f64; 3],
}

impl Plain {
    fn learn(&mut self, s: &Sample) -> f32 {
        let mut logit = self.bias[0];
        let mut coords: Vec<((usize, u64), f32)> = Vec::new();
        for (f, keys) in s.keys.iter().enumerate() {
            for &k in keys {
                let c = (TABLE_OF_FEATURE[f], k);
                logit += self.rows.entry(c).or_default()[0] as f64;
                match coords.iter_mut().find(|(x, _)| *x == c) {
                    Some((_, m)) => *m += 1.0,
                    None => coords.push((c, 1.0)),
                }
            }
        }
        let p = ftrl::sigmoid(logit);
        let err = p - if s.label { 1.0 } else { 0.0 };
        for (c, m) in coords {
            let row = self.rows.get_mut(&c).unwrap();
            ftrl::update_row(&P, row, &[err * m as f64]);
        }
        ftrl::update_row(&P, &mut self.bias, &[err]);
        p as f32
    }
}

#[test]
fn the_trainer_equals_plain_ftrl_bit_for_bit() {
    let spec = RecsysSpec::parse(&toml::from_str(SPEC).unwrap()).unwrap();
    let mut t = WideTrainer::new(&spec, P).unwrap();
    let mut plain = Plain::default();
    let samples = stream(30_000, 11);
    // batches of every size from 1 to 700, so prefetching runs off both ends of a batch
    let (mut at, mut size) = (0, 1);
    while at < samples.len() {
        let batch = &samples[at..(at + size).min(samples.len())];
        let got = t.train(batch);
        for (i, s) in batch.iter().enumerate() {
            let want = plain.learn(s);
            assert_eq!(got[i].to_bits(), want.to_bits(), "sample {}", at + i);
        }
        at += batch.len();
        size = size % 700 + 37;
    }
    assert_eq!(t.bias(), plain.bias[0] as f32);
    let names = ["t.a", "t.bc", "t.d"];
    for (i, table) in t.tables().iter().enumerate() {
        assert_eq!(table.name(), names[i]);
        let want = plain.rows.iter().filter(|((ti, _), _)| *ti == i).count();
        assert_eq!(table.len(), want, "rows of {}", names[i]);
    }
    for (&(ti, key), row) in &plain.rows {
        let got = t.tables()[ti].get(key).unwrap();
        let same = got.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{} key {key}: {got:?} vs {row:?}", names[ti]);
    }
}
