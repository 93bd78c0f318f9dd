//! FTRL-Proximal against golden values from an independent NumPy implementation
//! (`scripts/ftrl_ref.py`, which documents the stream and the file format): every prediction
//! (taken before its sample is learned) and every final weight within 1e-9, in f64.

use std::collections::HashMap;

use kiln_learn::optim::ftrl::{self, FtrlParams};

/// Largest allowed absolute difference from the reference, f64 path.
const TOL_F64: f64 = 1e-9;

struct Golden {
    params: FtrlParams,
    keys: Vec<u64>,
    /// (label, key indices, one per occurrence)
    stream: Vec<(bool, Vec<u16>)>,
    preds: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ftrl_golden.bin");
    let bytes = std::fs::read(path).unwrap();
    let mut r = Reader(&bytes);
    assert_eq!(r.take(8), b"FTRLGLD1");
    let params = FtrlParams {
        alpha: r.f64(),
        beta: r.f64(),
        l1: r.f64(),
        l2: r.f64(),
    };
    let (k, s) = (r.u32() as usize, r.u32() as usize);
    let keys = (0..k).map(|_| r.u64()).collect();
    let stream = (0..s)
        .map(|_| {
            let label = r.take(1)[0] == 1;
            let m = r.u16() as usize;
            (label, (0..m).map(|_| r.u16()).collect())
        })
        .collect();
    let preds = (0..s).map(|_| r.f64()).collect();
    let weights = (0..k).map(|_| r.f64()).collect();
    let bias = r.f64();
    assert!(r.0.is_empty(), "trailing bytes in {path}");
    Golden {
        params,
        keys,
        stream,
        preds,
        weights,
        bias,
    }
}

/// FTRL state per coordinate, `[w, z, n]`, keyed by the hashed key; the bias has its own.
#[derive(Default)]
struct Model {
    rows: HashMap<u64, [f64; 3]>,
    bias: [f64; 3],
}

impl Model {
    /// Scores one sample (keys with their occurrence counts), then learns it.
    fn learn(&mut self, p: &FtrlParams, coords: &[(u64, f64)], label: bool) -> f64 {
        let mut logit = self.bias[0];
        for &(k, x) in coords {
            logit += self.rows.get(&k).map_or(0.0, |r| r[0]) * x;
        }
        let prob = ftrl::sigmoid(logit);
        let err = prob - if label { 1.0 } else { 0.0 };
        for &(k, x) in coords {
            let row = self.rows.entry(k).or_default();
            ftrl::update_row(p, row, &[err * x]);
        }
        ftrl::update_row(p, &mut self.bias, &[err]);
        prob
    }
}

#[test]
fn ftrl_matches_the_numpy_reference_to_1e_9() {
    let g = golden();
    assert_eq!(g.stream.len(), 2000);
    let mut model = Model::default();
    let mut worst = 0.0f64;
    for (i, (label, occ)) in g.stream.iter().enumerate() {
        // sum pooling: a key occurring m times has feature value m
        let mut coords: Vec<(u64, f64)> = Vec::new();
        for &ix in occ {
            let key = g.keys[ix as usize];
            match coords.iter_mut().find(|c| c.0 == key) {
                Some(c) => c.1 += 1.0,
                None => coords.push((key, 1.0)),
            }
        }
        let p = model.learn(&g.params, &coords, *label);
        let d = (p - g.preds[i]).abs();
        worst = worst.max(d);
        assert!(
            d <= TOL_F64,
            "sample {i}: prediction {p}, reference {}",
            g.preds[i]
        );
    }
    let mut zeros = 0;
    for (k, &want) in g.keys.iter().zip(&g.weights) {
        let got = model.rows.get(k).map_or(0.0, |r| r[0]);
        assert!(
            (got - want).abs() <= TOL_F64,
            "key {k}: weight {got}, reference {want}"
        );
        // the L1 branch is exercised: exact zeros agree exactly
        if want == 0.0 {
            assert_eq!(got, 0.0, "key {k}");
            zeros += 1;
        }
    }
    assert!(
        zeros > 0,
        "the stream should leave some weights at exactly 0 (l1)"
    );
    assert!(
        (model.bias[0] - g.bias).abs() <= TOL_F64,
        "bias {} vs {}",
        model.bias[0],
        g.bias
    );
    println!("worst prediction difference {worst:e}");
}

#[test]
fn the_slice_form_matches_the_reference_weights() {
    // Replays the stream with `ftrl::update` over gathered slices (the batch form).
    let g = golden();
    let p = g.params;
    let k = g.keys.len();
    let (mut z, mut n, mut w) = (vec![0.0; k + 1], vec![0.0; k + 1], vec![0.0; k + 1]);
    for (label, occ) in &g.stream {
        let mut x = vec![0.0; k + 1];
        for &ix in occ {
            x[ix as usize] += 1.0;
        }
        x[k] = 1.0;
        let active: Vec<usize> = (0..=k).filter(|&i| x[i] != 0.0).collect();
        let logit: f64 = active.iter().map(|&i| w[i] * x[i]).sum();
        let err = ftrl::sigmoid(logit) - if *label { 1.0 } else { 0.0 };
        let grad: Vec<f64> = active.iter().map(|&i| err * x[i]).collect();
        let mut za: Vec<f64> = active.iter().map(|&i| z[i]).collect();
        let mut na: Vec<f64> = active.iter().map(|&i| n[i]).collect();
        let mut wa: Vec<f64> = active.iter().map(|&i| w[i]).collect();
        ftrl::update(&p, &grad, &mut za, &mut na, &mut wa);
        for (j, &i) in active.iter().enumerate() {
            (z[i], n[i], w[i]) = (za[j], na[j], wa[j]);
        }
    }
    let mut w2 = vec![0.0; k + 1];
    ftrl::weights(&p, &z, &n, &mut w2);
    assert_eq!(w, w2);
    for (i, (got, want)) in w.iter().zip(&g.weights).enumerate() {
        assert!((got - want).abs() <= TOL_F64, "coordinate {i}");
    }
    assert!((w[k] - g.bias).abs() <= TOL_F64);
}
