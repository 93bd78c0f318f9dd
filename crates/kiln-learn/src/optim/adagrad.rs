//! AdaGrad (Duchi, Hazan and Singer 2011), per coordinate, as PyTorch's `torch.optim.Adagrad`
//! computes it without learning-rate decay: `acc += g^2; w -= lr * g / (sqrt(acc) + eps)`.
//!
//! The deep trainer runs it on embedding rows stored as `[w | acc]` ([`AdaGrad::step_row`]),
//! so a row and its state are read and written together, and optionally on the MLPs.

use serde::{Deserialize, Serialize};

/// AdaGrad's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaGrad {
    /// Learning rate.
    pub lr: f32,
    /// Added to the square root of the accumulator.
    pub eps: f32,
    /// The accumulator of a new coordinate.
    pub initial_accumulator: f32,
}

impl Default for AdaGrad {
    /// `lr = 0.01`, `eps = 1e-10`, `initial_accumulator = 0` (PyTorch's defaults).
    fn default() -> Self {
        AdaGrad {
            lr: 0.01,
            eps: 1e-10,
            initial_accumulator: 0.0,
        }
    }
}

impl AdaGrad {
    /// One step on the coordinates `w` with accumulators `acc` and gradient `g` (all the same
    /// length).
    #[inline]
    pub fn step(&self, w: &mut [f32], acc: &mut [f32], g: &[f32]) {
        assert!(
            w.len() == g.len() && acc.len() == g.len(),
            "adagrad: lengths differ"
        );
        for ((w, a), &g) in w.iter_mut().zip(acc.iter_mut()).zip(g) {
            *a += g * g;
            *w -= self.lr * g / (a.sqrt() + self.eps);
        }
    }

    /// One step on a row laid out `[w | acc]` (`2 * g.len()` floats).
    #[inline]
    pub fn step_row(&self, row: &mut [f32], g: &[f32]) {
        let (w, acc) = row.split_at_mut(g.len());
        self.step(w, acc, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_in_f64() {
        let opt = AdaGrad {
            lr: 0.1,
            eps: 1e-10,
            initial_accumulator: 0.1,
        };
        let mut row = [0.5f32, -0.25, 0.1, 0.1];
        let (mut w, mut a) = ([0.5f64, -0.25], [0.1f64, 0.1]);
        for step in 0..5 {
            let g = [0.3 - step as f32 * 0.1, 0.7];
            opt.step_row(&mut row, &g);
            for i in 0..2 {
                a[i] += g[i] as f64 * g[i] as f64;
                w[i] -= 0.1 * g[i] as f64 / (a[i].sqrt() + 1e-10);
                assert!((row[i] as f64 - w[i]).abs() < 1e-6, "{row:?} {w:?}");
                assert!((row[2 + i] as f64 - a[i]).abs() < 1e-6);
            }
        }
    }
}
