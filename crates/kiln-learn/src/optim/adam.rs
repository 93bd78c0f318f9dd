//! Adam (Kingma and Ba 2015) with bias correction, as PyTorch's `torch.optim.Adam` computes it
//! (no weight decay, no amsgrad): `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use serde::{Deserialize, Serialize};

/// Adam's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the bias-corrected square root of the second moment.
    pub eps: f32,
}

impl Default for Adam {
    /// `lr = 0.001`, `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8` (PyTorch's defaults).
    fn default() -> Self {
        Adam {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The bias corrections of step `t` (1-based), computed once per step for every tensor.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    step_size: f32,
    inv_sqrt_bc2: f32,
}

impl Adam {
    /// The bias corrections of step `t` (`t >= 1`).
    pub fn at(&self, t: u64) -> AdamStep {
        let t = t.max(1) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        AdamStep {
            step_size: (self.lr as f64 / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
        }
    }

    /// One step on the coordinates `w` with moments `m`, `v` and gradient `g` (all the same
    /// length); `at` from [`Adam::at`] for this step.
    #[inline]
    pub fn step(&self, at: AdamStep, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let n = g.len();
        assert!(
            w.len() == n && m.len() == n && v.len() == n,
            "adam: lengths differ"
        );
        let (b1, b2) = (self.beta1, self.beta2);
        for i in 0..n {
            let gi = g[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            w[i] -= at.step_size * m[i] / (v[i].sqrt() * at.inv_sqrt_bc2 + self.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_in_f64() {
        let opt = Adam {
            lr: 0.01,
            ..Adam::default()
        };
        let mut w = [0.5f32, -0.25];
        let (mut m, mut v) = ([0.0f32; 2], [0.0f32; 2]);
        let (mut w64, mut m64, mut v64) = ([0.5f64, -0.25], [0.0f64; 2], [0.0f64; 2]);
        for t in 1..=20u64 {
            let g = [(t as f32 * 0.7).sin(), 0.2];
            opt.step(opt.at(t), &mut w, &mut m, &mut v, &g);
            for i in 0..2 {
                let gi = g[i] as f64;
                m64[i] = 0.9 * m64[i] + 0.1 * gi;
                v64[i] = 0.999 * v64[i] + 0.001 * gi * gi;
                let mh = m64[i] / (1.0 - 0.9f64.powi(t as i32));
                let vh = v64[i] / (1.0 - 0.999f64.powi(t as i32));
                w64[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
                assert!((w[i] as f64 - w64[i]).abs() < 1e-5, "t {t}: {w:?} {w64:?}");
            }
        }
    }
}
