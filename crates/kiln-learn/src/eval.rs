//! Progressive validation: every sample is scored before it is learned, so the scores of the
//! stream are honest out-of-sample predictions. [`Evaluator`] keeps AUC and log loss over the
//! whole stream (cumulative) and over the last `window` samples.
//!
//! - **Windowed AUC** is exact: the window's scores are sorted when a [`Evaluator::report`] is
//!   asked for, and tied scores count half (the Mann-Whitney statistic with mid-ranks), the
//!   same value as scikit-learn's `roc_auc_score`.
//! - **Cumulative AUC** is approximate, from two histograms of the scores by label with
//!   [`BUCKETS`] equal buckets over [0, 1]: a positive and a negative in different buckets are
//!   ordered exactly, two in the same bucket count as a tie (half). The error is therefore at
//!   most half the fraction of (positive, negative) pairs whose scores share a bucket (lie within
//!   2^-16 of each other); the report carries that bound ([`EvalReport::auc_error_bound`]),
//!   computed from the histograms. Memory is fixed (1 MiB), updates are O(1).
//! - **Log loss** is the mean of `-(y ln p + (1 - y) ln(1 - p))` with `p` clipped to
//!   `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`, so a confident mistake costs about 16.1, not infinity.

use std::cmp::Ordering;

/// Buckets of the cumulative AUC histograms (2^16).
pub const BUCKETS: usize = 1 << 16;

/// Probabilities are clipped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` in the log loss.
pub const LOG_LOSS_EPS: f64 = 1e-7;

/// Metrics at one moment. AUC is `None` until both labels have been seen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EvalReport {
    /// Samples seen since the start.
    pub samples: u64,
    /// Positives seen since the start.
    pub positives: u64,
    /// Cumulative AUC (histogram estimate).
    pub auc: Option<f64>,
    /// Bound on `|auc - exact cumulative AUC|`.
    pub auc_error_bound: f64,
    /// Cumulative mean log loss (`NaN` before the first sample).
    pub log_loss: f64,
    /// Samples in the window (at most its size).
    pub window_samples: usize,
    /// Exact AUC over the window.
    pub window_auc: Option<f64>,
    /// Mean log loss over the window (`NaN` when it is empty).
    pub window_log_loss: f64,
}

/// Progressive-validation metrics, fed one `(score, label)` at a time.
#[derive(Debug, Clone)]
pub struct Evaluator {
    pos: Vec<u64>,
    neg: Vec<u64>,
    samples: u64,
    positives: u64,
    log_loss_sum: f64,
    ring: Vec<(f32, bool)>,
    next: usize,
    window: usize,
}

/// The log loss of one prediction, with `p` clipped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`.
pub fn log_loss(p: f64, label: bool) -> f64 {
    let p = if p.is_nan() { 0.5 } else { p };
    let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
    if label {
        -p.ln()
    } else {
        -(1.0 - p).ln()
    }
}

/// Exact AUC of `(score, label)` pairs: the probability that a random positive scores above a
/// random negative, ties counting half. `None` without both labels. Sorts `pairs` by score.
pub fn exact_auc(pairs: &mut [(f32, bool)]) -> Option<f64> {
    pairs.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let (mut negatives_below, mut correct) = (0u64, 0.0f64);
    let mut i = 0;
    while i < pairs.len() {
        // one group of equal scores
        let mut j = i;
        let (mut pos, mut neg) = (0u64, 0u64);
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        correct += pos as f64 * (negatives_below as f64 + neg as f64 / 2.0);
        negatives_below += neg;
        i = j;
    }
    let positives = pairs.len() as u64 - negatives_below;
    (positives > 0 && negatives_below > 0)
        .then(|| correct / (positives as f64 * negatives_below as f64))
}

fn bucket(p: f32) -> usize {
    let p = if p.is_nan() { 0.5 } else { p.clamp(0.0, 1.0) };
    ((p as f64 * BUCKETS as f64) as usize).min(BUCKETS - 1)
}

impl Evaluator {
    /// An evaluator whose window holds the last `window` samples (at least 1).
    pub fn new(window: usize) -> Self {
        let window = window.max(1);
        Evaluator {
            pos: vec![0; BUCKETS],
            neg: vec![0; BUCKETS],
            samples: 0,
            positives: 0,
            log_loss_sum: 0.0,
            ring: Vec::with_capacity(window),
            next: 0,
            window,
        }
    }

    /// Records one prediction, taken before its sample was learned.
    pub fn observe(&mut self, p: f32, label: bool) {
        self.samples += 1;
        self.positives += label as u64;
        self.log_loss_sum += log_loss(p as f64, label);
        let b = bucket(p);
        if label {
            self.pos[b] += 1;
        } else {
            self.neg[b] += 1;
        }
        if self.ring.len() < self.window {
            self.ring.push((p, label));
        } else {
            self.ring[self.next] = (p, label);
        }
        self.next = (self.next + 1) % self.window;
    }

    /// Records a batch: `probs[i]` is the score of a sample labelled `labels[i]`.
    pub fn observe_all(&mut self, probs: &[f32], labels: impl IntoIterator<Item = bool>) {
        for (&p, y) in probs.iter().zip(labels) {
            self.observe(p, y);
        }
    }

    /// Samples seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The cumulative AUC from the histograms and its error bound (see the module docs).
    fn histogram_auc(&self) -> (Option<f64>, f64) {
        let negatives = self.samples - self.positives;
        if self.positives == 0 || negatives == 0 {
            return (None, 0.0);
        }
        let (mut below, mut correct, mut tied) = (0u64, 0.0f64, 0.0f64);
        for (&p, &n) in self.pos.iter().zip(&self.neg) {
            correct += p as f64 * (below as f64 + n as f64 / 2.0);
            tied += p as f64 * n as f64;
            below += n;
        }
        let pairs = self.positives as f64 * negatives as f64;
        (Some(correct / pairs), tied / 2.0 / pairs)
    }

    /// The metrics now. The window's AUC sorts a copy of the window (O(w log w)): call it at a
    /// reporting cadence, not per sample.
    pub fn report(&self) -> EvalReport {
        let (auc, auc_error_bound) = self.histogram_auc();
        let mut win = self.ring.clone();
        let window_log_loss = if win.is_empty() {
            f64::NAN
        } else {
            win.iter().map(|&(p, y)| log_loss(p as f64, y)).sum::<f64>() / win.len() as f64
        };
        EvalReport {
            samples: self.samples,
            positives: self.positives,
            auc,
            auc_error_bound,
            log_loss: self.log_loss_sum / self.samples as f64,
            window_samples: win.len(),
            window_auc: exact_auc(&mut win),
            window_log_loss,
        }
    }
}
