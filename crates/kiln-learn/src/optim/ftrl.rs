//! FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013,
//! Algorithm 1): per-coordinate learning rates with L1 and L2 regularization, the optimizer of
//! the wide (logistic regression) part.
//!
//! Each coordinate `i` keeps two accumulators: `z` (the adjusted sum of gradients) and `n` (the
//! sum of squared gradients). Its weight is a closed form of them:
//!
//! ```text
//! w = 0                                                      if |z| <= l1
//! w = -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)  otherwise
//! ```
//!
//! and a gradient `g` (for logistic loss, `(p - y) * x_i`) updates them:
//!
//! ```text
//! sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
//! z    += g - sigma * w
//! n    += g^2
//! ```
//!
//! The functions here are pure and work over slices; the arithmetic is always f64, whatever the
//! element type ([`Coord`]), so the f64 path matches a reference implementation to rounding
//! (the golden test holds it to 1e-9) and the f32 path (the trainer's stored state: `[w | z |
//! n]` rows of f32) differs from it only by the rounding of what is stored.

/// The four hyper-parameters of FTRL-Proximal, shared by every coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FtrlParams {
    /// Learning-rate scale (`alpha` in the paper); larger learns faster.
    pub alpha: f64,
    /// Learning-rate smoothing (`beta`); 1 is the paper's advice.
    pub beta: f64,
    /// L1 strength: a coordinate whose `|z|` stays at or below it has weight exactly 0.
    pub l1: f64,
    /// L2 strength.
    pub l2: f64,
}

impl Default for FtrlParams {
    /// alpha 0.05, beta 1, l1 1, l2 1.
    fn default() -> Self {
        FtrlParams {
            alpha: 0.05,
            beta: 1.0,
            l1: 1.0,
            l2: 1.0,
        }
    }
}

impl FtrlParams {
    /// Checks the values: alpha > 0, beta, l1, l2 >= 0, all finite. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("l1", self.l1),
            ("l2", self.l2),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be finite and >= 0, got {v}"));
            }
        }
        if self.alpha == 0.0 {
            return Err("alpha must be > 0".into());
        }
        Ok(())
    }
}

/// An element type the FTRL state can be stored in: f64 (exact reference path) or f32 (the
/// trainer's rows). Arithmetic happens in f64 either way.
pub trait Coord: Copy {
    /// Widens to f64.
    fn get(self) -> f64;
    /// Narrows from f64 (rounding to nearest for f32).
    fn put(v: f64) -> Self;
}

impl Coord for f64 {
    #[inline(always)]
    fn get(self) -> f64 {
        self
    }
    #[inline(always)]
    fn put(v: f64) -> Self {
        v
    }
}

impl Coord for f32 {
    #[inline(always)]
    fn get(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn put(v: f64) -> Self {
        v as f32
    }
}

/// The weight of one coordinate from its accumulators.
#[inline(always)]
pub fn weight(p: &FtrlParams, z: f64, n: f64) -> f64 {
    weight_sqrt(p, z, n.sqrt())
}

/// [`weight`] given `sqrt(n)`.
#[inline(always)]
fn weight_sqrt(p: &FtrlParams, z: f64, sqrt_n: f64) -> f64 {
    if z.abs() <= p.l1 {
        0.0
    } else {
        -(z - p.l1.copysign(z)) / ((p.beta + sqrt_n) / p.alpha + p.l2)
    }
}

/// One coordinate's update by gradient `g`, given its current weight `w` (which must be
/// [`weight`] of `z`, `n`): returns the new `(z, n, w)`.
#[inline(always)]
pub fn step(p: &FtrlParams, z: f64, n: f64, w: f64, g: f64) -> (f64, f64, f64) {
    let n1 = n + g * g;
    let s1 = n1.sqrt();
    let sigma = (s1 - n.sqrt()) / p.alpha;
    let z1 = z + g - sigma * w;
    (z1, n1, weight_sqrt(p, z1, s1))
}

/// Writes the weight of every coordinate: `w[i] = weight(z[i], n[i])`.
///
/// # Panics
/// When the slices differ in length.
pub fn weights<T: Coord>(p: &FtrlParams, z: &[T], n: &[T], w: &mut [T]) {
    assert!(
        z.len() == n.len() && n.len() == w.len(),
        "ftrl: slice lengths differ"
    );
    for ((w, &z), &n) in w.iter_mut().zip(z).zip(n) {
        *w = T::put(weight(p, z.get(), n.get()));
    }
}

/// Updates every coordinate by its gradient `g[i]`: `z` and `n` accumulate, and `w` is
/// recomputed from them (so it stays what [`weights`] would give; it must be so on entry too).
///
/// # Panics
/// When the slices differ in length.
pub fn update<T: Coord>(p: &FtrlParams, g: &[f64], z: &mut [T], n: &mut [T], w: &mut [T]) {
    assert!(
        g.len() == z.len() && z.len() == n.len() && n.len() == w.len(),
        "ftrl: slice lengths differ"
    );
    for i in 0..g.len() {
        let (z1, n1, w1) = step(p, z[i].get(), n[i].get(), w[i].get(), g[i]);
        z[i] = T::put(z1);
        n[i] = T::put(n1);
        w[i] = T::put(w1);
    }
}

/// Updates one `[w | z | n]` row of `3 * dim` elements (the trainer's stored layout) by the
/// gradient `g` of each of its `dim` weights.
///
/// # Panics
/// When `row.len() != 3 * g.len()`.
#[inline]
pub fn update_row<T: Coord>(p: &FtrlParams, row: &mut [T], g: &[f64]) {
    let dim = g.len();
    assert_eq!(
        row.len(),
        3 * dim,
        "ftrl: a row is [w | z | n], 3 * dim elements"
    );
    for (j, &g) in g.iter().enumerate() {
        let (z1, n1, w1) = step(
            p,
            row[dim + j].get(),
            row[2 * dim + j].get(),
            row[j].get(),
            g,
        );
        row[j] = T::put(w1);
        row[dim + j] = T::put(z1);
        row[2 * dim + j] = T::put(n1);
    }
}

/// Coordinates [`update_lanes`] takes at a time.
pub const LANES: usize = 16;

/// Updates [`LANES`] coordinates held in separate arrays (f32 state, as the trainer's rows
/// store it): `(z[i], n[i], w[i])` become [`step`] of them by `g[i]`, in every lane (a caller
/// with fewer coordinates ignores the other lanes). The result is bit for bit that of
/// [`update_row`] on each coordinate: the same f64 operations (IEEE division and square root
/// are correctly rounded in vector registers too), only several at once. Each coordinate costs
/// two square roots and three divisions, which vector units do 4 at a time (AVX2) or 2 (SSE2)
/// where scalar code does 1; the trainer gathers a sample's scattered rows into these arrays.
#[inline]
pub fn update_lanes(
    p: &FtrlParams,
    w: &mut [f32; LANES],
    z: &mut [f32; LANES],
    n: &mut [f32; LANES],
    g: &[f64; LANES],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { lanes_avx2(p, w, z, n, g) };
        return;
    }
    lanes(p, w, z, n, g);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(
    p: &FtrlParams,
    w: &mut [f32; LANES],
    z: &mut [f32; LANES],
    n: &mut [f32; LANES],
    g: &[f64; LANES],
) {
    lanes(p, w, z, n, g)
}

/// All [`LANES`] lanes (the unused ones compute on whatever they hold, harmlessly: no
/// operation traps). No branch, so the compiler vectorizes it.
#[inline(always)]
fn lanes(
    p: &FtrlParams,
    w: &mut [f32; LANES],
    z: &mut [f32; LANES],
    n: &mut [f32; LANES],
    g: &[f64; LANES],
) {
    for i in 0..LANES {
        let (z0, n0, w0) = (z[i] as f64, n[i] as f64, w[i] as f64);
        let n1 = n0 + g[i] * g[i];
        let s1 = n1.sqrt();
        let sigma = (s1 - n0.sqrt()) / p.alpha;
        let z1 = z0 + g[i] - sigma * w0;
        let shrunk = -(z1 - p.l1.copysign(z1)) / ((p.beta + s1) / p.alpha + p.l2);
        let w1 = if z1.abs() <= p.l1 { 0.0 } else { shrunk };
        z[i] = z1 as f32;
        n[i] = n1 as f32;
        w[i] = w1 as f32;
    }
}

/// The logistic function, computed without overflow for large `|x|`.
#[inline(always)]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: FtrlParams = FtrlParams {
        alpha: 0.1,
        beta: 1.0,
        l1: 0.5,
        l2: 2.0,
    };

    #[test]
    fn weight_is_zero_inside_the_l1_ball_and_shrunk_outside() {
        assert_eq!(weight(&P, 0.5, 4.0), 0.0);
        assert_eq!(weight(&P, -0.5, 4.0), 0.0);
        // -(2 - 0.5) / ((1 + 2) / 0.1 + 2) = -1.5 / 32
        assert!((weight(&P, 2.0, 4.0) + 1.5 / 32.0).abs() < 1e-15);
        assert!((weight(&P, -2.0, 4.0) - 1.5 / 32.0).abs() < 1e-15);
    }

    #[test]
    fn one_step_by_hand() {
        // from zero state: n = 0.25, sigma = 0.5 / 0.1 = 5, w was 0 so z = g
        let (z, n, w) = step(&P, 0.0, 0.0, 0.0, 0.5);
        assert_eq!((z, n), (0.5, 0.25));
        assert_eq!(w, 0.0);
        // second step: n = 1.25, sigma = (sqrt(1.25) - 0.5) / 0.1
        let (z, n, w) = step(&P, z, n, w, 1.0);
        assert_eq!(n, 1.25);
        assert_eq!(z, 1.5);
        let want = -(1.5 - 0.5) / ((1.0 + 1.25f64.sqrt()) / 0.1 + 2.0);
        assert!((w - want).abs() < 1e-15);
    }

    #[test]
    fn slice_and_row_forms_agree() {
        let g = [0.3, -1.2, 0.7];
        let (mut z, mut n, mut w) = ([0.0f64; 3], [0.0f64; 3], [0.0f64; 3]);
        let mut row = [0.0f32; 9];
        for _ in 0..5 {
            update(&P, &g, &mut z, &mut n, &mut w);
            update_row(&P, &mut row, &g);
        }
        let mut w2 = [0.0; 3];
        weights(&P, &z, &n, &mut w2);
        assert_eq!(w, w2);
        for j in 0..3 {
            assert!((row[j] as f64 - w[j]).abs() < 1e-6, "{j}");
        }
    }

    #[test]
    fn lanes_equal_rows_bit_for_bit() {
        // states and gradients of every sign and size, the l1 boundary included
        let mut x = 1u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 8.0
        };
        for len in 0..=LANES {
            let mut rows = vec![[0.0f32; 3]; len];
            let (mut w, mut z, mut n) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
            for round in 0..50 {
                let mut g = [0.0; LANES];
                for (i, g) in g[..len].iter_mut().enumerate() {
                    *g = if round % 7 == i % 7 { 0.0 } else { next() };
                }
                for (row, &g) in rows.iter_mut().zip(&g) {
                    update_row(&P, row, &[g]);
                }
                update_lanes(&P, &mut w, &mut z, &mut n, &g);
                for (i, row) in rows.iter().enumerate() {
                    let lane = [w[i], z[i], n[i]];
                    assert_eq!(
                        lane.map(f32::to_bits),
                        row.map(f32::to_bits),
                        "{len} {round} {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-800.0) >= 0.0 && sigmoid(-800.0) < 1e-300);
        assert_eq!(sigmoid(800.0), 1.0);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = FtrlParams { l2: -1.0, ..P };
        assert!(bad.validate().unwrap_err().starts_with("l2"));
        assert!(FtrlParams { alpha: 0.0, ..P }.validate().is_err());
        assert!(P.validate().is_ok());
    }
}
