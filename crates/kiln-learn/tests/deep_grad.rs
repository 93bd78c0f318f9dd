//! The deep trainer's backward pass against central finite differences, in f64 (the network
//! code is generic over the float type; the trainer runs the same code in f32).
//!
//! Tolerance: with step h = 1e-6 in f64 the rounding error of a central difference is about
//! 1e-16 / 1e-6 = 1e-10 and the truncation error is h^2 times the third derivative, about
//! 1e-12 here, so analytic and numeric gradients must agree to 1e-7 (absolute, gradients are
//! of order 0.01 to 1). ReLU kinks are the one way to break this: a pre-activation within h of
//! zero; the inputs are random with fixed seeds and no pre-activation is that close.

use kiln_embed::Pooling;
use kiln_learn::deep::batch::{FeatureShape, Plan};
use kiln_learn::deep::net::{Layer, Net, Real, Tape};
use kiln_learn::Sample;
use kiln_recsys::spec::Interaction;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn layer(rng: &mut Rng, inputs: usize, outputs: usize) -> Layer<f64> {
    let s = (2.0 / (inputs + outputs) as f64).sqrt() * 1.5;
    Layer {
        inputs,
        outputs,
        w_t: (0..inputs * outputs).map(|_| rng.unit() * s).collect(),
        b: (0..outputs).map(|_| rng.unit() * 0.3).collect(),
    }
}

/// A tiny model and batch: `features` over two tables of dim 3, dense 4, bottom 4-5-3.
struct Case {
    net: Net<f64>,
    features: Vec<FeatureShape>,
    plan: Plan,
    rows: Vec<Vec<f64>>,
    dense: Vec<f64>,
    labels: Vec<f64>,
}

const DIM: usize = 3;

fn case(interaction: Interaction, poolings: &[(usize, Pooling)], seed: u64) -> Case {
    let mut rng = Rng(seed);
    let features: Vec<FeatureShape> = poolings
        .iter()
        .map(|&(table, pooling)| FeatureShape {
            table,
            dim: DIM,
            max_ids: 4,
            pooling,
        })
        .collect();
    let widths: Vec<usize> = features.iter().map(FeatureShape::width).collect();
    let mut net = Net {
        bottom: vec![layer(&mut rng, 4, 5), layer(&mut rng, 5, DIM)],
        top: vec![],
        interaction,
        widths,
    };
    let zw = net.z_width();
    net.top = vec![layer(&mut rng, zw, 6), layer(&mut rng, 6, 1)];
    let batch: Vec<Sample> = (0..7)
        .map(|i| Sample {
            id: format!("s{i}"),
            ts_ms: 0,
            label: rng.next().is_multiple_of(2),
            // 0..=4 ids per feature from 6 keys: repeats inside and across samples, empties
            keys: features
                .iter()
                .map(|_| (0..rng.next() % 5).map(|_| rng.next() % 6).collect())
                .collect(),
            dense: (0..4).map(|_| rng.unit() as f32).collect(),
            seen_ms: 0,
        })
        .collect();
    let mut plan = Plan::default();
    plan.build(2, &features, &batch);
    let rows = plan
        .keys
        .iter()
        .map(|k| (0..k.len() * DIM).map(|_| rng.unit() * 0.8).collect())
        .collect();
    Case {
        net,
        features,
        plan,
        rows,
        dense: batch
            .iter()
            .flat_map(|s| s.dense.iter().map(|&v| v as f64))
            .collect(),
        labels: batch.iter().map(|s| s.label as u8 as f64).collect(),
    }
}

impl Case {
    fn pooled(&self) -> Vec<f64> {
        let rows: Vec<&[f64]> = self.rows.iter().map(|r| &r[..]).collect();
        let mut pooled = Vec::new();
        self.plan
            .pool(&self.features, &rows, &[DIM, DIM], &mut pooled);
        pooled
    }

    /// Mean log loss of the batch.
    fn loss(&self) -> f64 {
        let pooled = self.pooled();
        let mut tape = Tape::default();
        let logits = self
            .net
            .forward(&self.dense, &pooled, self.labels.len(), &mut tape);
        let n = self.labels.len() as f64;
        logits
            .iter()
            .zip(&self.labels)
            .map(|(&l, &y)| (1.0 + l.exp()).ln() - y * l)
            .sum::<f64>()
            / n
    }

    /// Analytic gradients: (network, rows per table).
    fn grads(&self) -> (Net<f64>, Vec<Vec<f64>>) {
        let pooled = self.pooled();
        let mut tape = Tape::default();
        let n = self.labels.len();
        let logits = self
            .net
            .forward(&self.dense, &pooled, n, &mut tape)
            .to_vec();
        let dlogit: Vec<f64> = logits
            .iter()
            .zip(&self.labels)
            .map(|(&l, &y)| (1.0 / (1.0 + (-l).exp()) - y) / n as f64)
            .collect();
        let mut g = self.net.zeros_like();
        let mut dpooled = vec![0.0; pooled.len()];
        self.net.backward(
            &self.dense,
            &pooled,
            &dlogit,
            &mut tape,
            &mut g,
            &mut dpooled,
        );
        let mut drows = vec![Vec::new(), Vec::new()];
        self.plan
            .unpool(&self.features, &dpooled, &[DIM, DIM], &mut drows);
        (g, drows)
    }
}

const H: f64 = 1e-6;
const TOL: f64 = 1e-7;

/// Compares the analytic gradient `an` of every element reached by `param` with a central
/// difference; returns how many were nonzero.
fn check(
    c: &mut Case,
    what: &str,
    an: &[f64],
    param: impl Fn(&mut Case, usize) -> &mut f64,
) -> usize {
    let mut nonzero = 0;
    for (i, &a) in an.iter().enumerate() {
        let orig = *param(c, i);
        *param(c, i) = orig + H;
        let up = c.loss();
        *param(c, i) = orig - H;
        let down = c.loss();
        *param(c, i) = orig;
        let fd = (up - down) / (2.0 * H);
        assert!(
            (fd - a).abs() <= TOL,
            "{what}[{i}]: analytic {a:.10}, finite difference {fd:.10}"
        );
        nonzero += (a.abs() > 1e-9) as usize;
    }
    nonzero
}

fn check_all(mut c: Case) {
    let (g, drows) = c.grads();
    for j in 0..c.net.bottom.len() {
        let n = check(
            &mut c,
            &format!("bottom.{j}.w"),
            &g.bottom[j].w_t,
            |c, i| &mut c.net.bottom[j].w_t[i],
        );
        let nb = check(&mut c, &format!("bottom.{j}.b"), &g.bottom[j].b, |c, i| {
            &mut c.net.bottom[j].b[i]
        });
        assert!(n > 0 && nb > 0, "bottom.{j}: every gradient is zero");
    }
    for j in 0..c.net.top.len() {
        let n = check(&mut c, &format!("top.{j}.w"), &g.top[j].w_t, |c, i| {
            &mut c.net.top[j].w_t[i]
        });
        let nb = check(&mut c, &format!("top.{j}.b"), &g.top[j].b, |c, i| {
            &mut c.net.top[j].b[i]
        });
        assert!(n > 0 && nb > 0, "top.{j}: every gradient is zero");
    }
    for (t, an) in drows.iter().enumerate() {
        let n = check(&mut c, &format!("table {t}"), an, |c, i| &mut c.rows[t][i]);
        assert!(n > 0, "table {t}: every gradient is zero");
    }
}

#[test]
fn concat_interaction_sum_mean_and_concat_pooling() {
    let feats = [
        (0, Pooling::Sum),
        (1, Pooling::Mean),
        (0, Pooling::Concat { k: 2 }),
    ];
    for seed in [1, 2, 3] {
        check_all(case(Interaction::Concat, &feats, seed));
    }
}

#[test]
fn dot_interaction() {
    let feats = [(0, Pooling::Sum), (1, Pooling::Mean), (1, Pooling::Sum)];
    for seed in [4, 5, 6] {
        check_all(case(Interaction::Dot, &feats, seed));
    }
}

#[test]
fn f32_forward_matches_f64() {
    // the trainer's precision: the same case in f32 agrees with f64 to float rounding
    let c = case(
        Interaction::Dot,
        &[(0, Pooling::Sum), (1, Pooling::Mean)],
        7,
    );
    let pooled = c.pooled();
    let mut tape = Tape::default();
    let want = c.net.forward(&c.dense, &pooled, 7, &mut tape).to_vec();
    let to32 = |l: &Layer<f64>| Layer {
        inputs: l.inputs,
        outputs: l.outputs,
        w_t: l.w_t.iter().map(|&v| v as f32).collect(),
        b: l.b.iter().map(|&v| v as f32).collect(),
    };
    let net32 = Net {
        bottom: c.net.bottom.iter().map(to32).collect(),
        top: c.net.top.iter().map(to32).collect(),
        interaction: c.net.interaction,
        widths: c.net.widths.clone(),
    };
    let d32: Vec<f32> = c.dense.iter().map(|&v| v as f32).collect();
    let p32: Vec<f32> = pooled.iter().map(|&v| v as f32).collect();
    let mut tape32 = Tape::default();
    let got = net32.forward(&d32, &p32, 7, &mut tape32);
    for (g, w) in got.iter().zip(&want) {
        assert!((g.f64() - w).abs() < 1e-5, "{g} vs {w}");
    }
}
