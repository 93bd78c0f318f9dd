//! The dense part of a DLRM: bottom MLP, interaction, top MLP, with a forward pass that keeps
//! what the backward pass needs and a hand-written backward pass, both on the `gemm` crate
//! that serving uses (`kiln_recsys::mlp`).
//!
//! Generic over the element type ([`Real`]): the trainer runs in f32, the gradient test runs the
//! same code in f64 so finite differences are exact to about 1e-8.
//!
//! Shapes: activations are row-major `[rows, width]`; a layer's weight is stored transposed,
//! `w_t` `[inputs, outputs]`, as serving stores it, so `y = x . w_t + b`. The forward pass is
//! serving's: ReLU after every bottom layer (the last one too), ReLU between top layers and
//! none after the last, whose single output is the logit.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use kiln_recsys::spec::Interaction;

/// A float the network runs in (f32 or f64, the types `gemm` has kernels for).
pub trait Real:
    Copy
    + Default
    + Debug
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// From an f64 (rounded).
    fn of(v: f64) -> Self;
    /// As an f64.
    fn f64(self) -> f64;
    /// `e^self`.
    fn exp(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// A fully connected layer (or its gradient).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<T> {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `[inputs, outputs]`, row-major (the transpose of PyTorch's `[out, in]`).
    pub w_t: Vec<T>,
    /// `[outputs]`.
    pub b: Vec<T>,
}

impl<T: Real> Layer<T> {
    /// A zero layer of this shape.
    pub fn zeros(inputs: usize, outputs: usize) -> Self {
        Layer {
            inputs,
            outputs,
            w_t: vec![T::ZERO; inputs * outputs],
            b: vec![T::ZERO; outputs],
        }
    }
}

/// The MLPs and how pooled features meet the bottom MLP's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Net<T> {
    /// Bottom MLP over the dense input (ReLU after every layer).
    pub bottom: Vec<Layer<T>>,
    /// Top MLP over the interaction (ReLU between layers; one output, the logit).
    pub top: Vec<Layer<T>>,
    /// Concat or DLRM dot products.
    pub interaction: Interaction,
    /// Pooled width of each sparse feature, in spec order.
    pub widths: Vec<usize>,
}

/// What the forward pass keeps for the backward pass; reused across batches.
#[derive(Debug, Default)]
pub struct Tape<T> {
    rows: usize,
    bottom: Vec<Vec<T>>,
    z: Vec<T>,
    top: Vec<Vec<T>>,
    d: Vec<T>,
    dx: Vec<T>,
}

impl<T: Real> Net<T> {
    /// The bottom MLP's output width.
    pub fn bottom_width(&self) -> usize {
        self.bottom.last().map_or(0, |l| l.outputs)
    }

    /// The top MLP's input width for this interaction.
    pub fn z_width(&self) -> usize {
        let bw = self.bottom_width();
        match self.interaction {
            Interaction::Concat => bw + self.widths.iter().sum::<usize>(),
            Interaction::Dot => {
                let n = self.widths.len() + 1;
                bw + n * (n - 1) / 2
            }
        }
    }

    /// Zero gradients shaped like this network.
    pub fn zeros_like(&self) -> Net<T> {
        let z = |ls: &[Layer<T>]| {
            ls.iter()
                .map(|l| Layer::zeros(l.inputs, l.outputs))
                .collect()
        };
        Net {
            bottom: z(&self.bottom),
            top: z(&self.top),
            interaction: self.interaction,
            widths: self.widths.clone(),
        }
    }

    /// The logits (`[rows]`) of `dense` (`[rows, bottom inputs]`) and `pooled` (`[rows, sum
    /// of widths]`, features side by side), keeping the activations in `tape`.
    pub fn forward<'t>(
        &self,
        dense: &[T],
        pooled: &[T],
        rows: usize,
        tape: &'t mut Tape<T>,
    ) -> &'t [T] {
        tape.rows = rows;
        tape.bottom.resize_with(self.bottom.len(), Vec::new);
        tape.top.resize_with(self.top.len(), Vec::new);
        for (j, layer) in self.bottom.iter().enumerate() {
            let (done, rest) = tape.bottom.split_at_mut(j);
            let x = if j == 0 { dense } else { &done[j - 1][..] };
            linear(layer, x, rows, &mut rest[0], true);
        }
        let bottom = tape.bottom.last().map_or(dense, |v| &v[..]);
        self.interact(bottom, pooled, rows, &mut tape.z);
        let last = self.top.len() - 1;
        for (j, layer) in self.top.iter().enumerate() {
            let (done, rest) = tape.top.split_at_mut(j);
            let x = if j == 0 {
                &tape.z[..]
            } else {
                &done[j - 1][..]
            };
            linear(layer, x, rows, &mut rest[0], j < last);
        }
        &tape.top[last]
    }

    fn interact(&self, bottom: &[T], pooled: &[T], rows: usize, z: &mut Vec<T>) {
        let (bw, zw) = (self.bottom_width(), self.z_width());
        let pw: usize = self.widths.iter().sum();
        z.clear();
        z.resize(rows * zw, T::ZERO);
        for r in 0..rows {
            let zr = &mut z[r * zw..(r + 1) * zw];
            let b = &bottom[r * bw..(r + 1) * bw];
            let p: &[T] = &pooled[r * pw..(r + 1) * pw];
            zr[..bw].copy_from_slice(b);
            match self.interaction {
                Interaction::Concat => zr[bw..].copy_from_slice(p),
                Interaction::Dot => {
                    let v = |i: usize| if i == 0 { b } else { &p[(i - 1) * bw..i * bw] };
                    let mut at = bw;
                    for a in 1..=self.widths.len() {
                        for c in 0..a {
                            zr[at] = dot(v(a), v(c));
                            at += 1;
                        }
                    }
                }
            }
        }
    }

    /// Backpropagates `dlogit` (`[rows]`, the loss's derivative by each logit) through the
    /// activations of the last [`Net::forward`]: writes every layer's gradient into `grads`
    /// (overwritten) and the gradient by the pooled input into `dpooled` (`[rows, sum of
    /// widths]`, overwritten).
    pub fn backward(
        &self,
        dense: &[T],
        pooled: &[T],
        dlogit: &[T],
        tape: &mut Tape<T>,
        grads: &mut Net<T>,
        dpooled: &mut [T],
    ) {
        let rows = tape.rows;
        let Tape {
            bottom,
            z,
            top,
            d,
            dx,
            ..
        } = tape;
        d.clear();
        d.extend_from_slice(&dlogit[..rows]);
        for j in (0..self.top.len()).rev() {
            let layer = &self.top[j];
            let x = if j == 0 { &z[..] } else { &top[j - 1][..] };
            weight_grad(x, d, rows, &mut grads.top[j]);
            input_grad(d, layer, rows, dx);
            if j > 0 {
                relu_mask(dx, &top[j - 1]);
            }
            std::mem::swap(d, dx);
        }
        // d is now the gradient by z
        let bw = self.bottom_width();
        let (zw, pw) = (self.z_width(), self.widths.iter().sum::<usize>());
        dx.clear();
        dx.resize(rows * bw, T::ZERO);
        let bout = bottom.last().map_or(dense, |v| &v[..]);
        for r in 0..rows {
            let dz = &d[r * zw..(r + 1) * zw];
            let db = &mut dx[r * bw..(r + 1) * bw];
            let dp = &mut dpooled[r * pw..(r + 1) * pw];
            db.copy_from_slice(&dz[..bw]);
            match self.interaction {
                Interaction::Concat => dp.copy_from_slice(&dz[bw..]),
                Interaction::Dot => {
                    dp.fill(T::ZERO);
                    let b = &bout[r * bw..(r + 1) * bw];
                    let p = &pooled[r * pw..(r + 1) * pw];
                    let mut at = bw;
                    for a in 1..=self.widths.len() {
                        for c in 0..a {
                            let g = dz[at];
                            at += 1;
                            // d(v_a . v_c) = v_c dv_a + v_a dv_c
                            let (va, vc) = (
                                &p[(a - 1) * bw..a * bw],
                                if c == 0 { b } else { &p[(c - 1) * bw..c * bw] },
                            );
                            for i in 0..bw {
                                let (xa, xc) = (va[i], vc[i]);
                                dp[(a - 1) * bw + i] += g * xc;
                                if c == 0 {
                                    db[i] += g * xa;
                                } else {
                                    dp[(c - 1) * bw + i] += g * xa;
                                }
                            }
                        }
                    }
                }
            }
        }
        std::mem::swap(d, dx);
        for j in (0..self.bottom.len()).rev() {
            let layer = &self.bottom[j];
            relu_mask(d, &bottom[j]);
            let x = if j == 0 { dense } else { &bottom[j - 1][..] };
            weight_grad(x, d, rows, &mut grads.bottom[j]);
            if j > 0 {
                input_grad(d, layer, rows, dx);
                std::mem::swap(d, dx);
            }
        }
    }
}

#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    // eight partial sums, as serving computes it
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = T::ZERO;
    for v in acc {
        s += v;
    }
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// `d *= (act > 0)`: the derivative of the ReLU that produced `act`.
fn relu_mask<T: Real>(d: &mut [T], act: &[T]) {
    for (g, &a) in d.iter_mut().zip(act) {
        if a <= T::ZERO {
            *g = T::ZERO;
        }
    }
}

/// `dst[m, n] (+)= lhs . rhs` with explicit strides (column stride, row stride) for each
/// operand; `dst` is row-major with unit column stride.
///
/// # Safety
/// The pointers must cover every element the strides address for `m`, `n`, `k`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    accumulate: bool,
    lhs: *const T,
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: *const T,
    (rhs_cs, rhs_rs): (usize, usize),
) {
    // SAFETY: the caller guarantees the operands cover what the strides address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out[rows, outputs] = x[rows, inputs] . w_t + b`, then ReLU if `relu` (serving's
/// `kiln_recsys::mlp::linear`, same GEMM call).
pub fn linear<T: Real>(layer: &Layer<T>, x: &[T], rows: usize, out: &mut Vec<T>, relu: bool) {
    let (k, n) = (layer.inputs, layer.outputs);
    out.clear();
    out.reserve(rows * n);
    for _ in 0..rows {
        out.extend_from_slice(&layer.b);
    }
    if rows == 0 {
        return;
    }
    assert!(x.len() >= rows * k && layer.w_t.len() == k * n && layer.b.len() == n);
    // SAFETY: x is [rows, k], w_t [k, n], out [rows, n], row-major, checked above.
    unsafe {
        gemm_into(
            (rows, n, k),
            out.as_mut_ptr(),
            true,
            x.as_ptr(),
            (1, k),
            layer.w_t.as_ptr(),
            (1, n),
        );
    }
    if relu {
        for v in out.iter_mut() {
            if *v < T::ZERO {
                *v = T::ZERO;
            }
        }
    }
}

/// `g.w_t = x^T . d` and `g.b = column sums of d`, for `x` `[rows, inputs]` and `d` `[rows,
/// outputs]`.
fn weight_grad<T: Real>(x: &[T], d: &[T], rows: usize, g: &mut Layer<T>) {
    let (k, n) = (g.inputs, g.outputs);
    assert!(x.len() >= rows * k && d.len() >= rows * n && g.w_t.len() == k * n);
    g.b.fill(T::ZERO);
    for dr in d[..rows * n].chunks_exact(n) {
        for (b, &v) in g.b.iter_mut().zip(dr) {
            *b += v;
        }
    }
    if rows == 0 {
        g.w_t.fill(T::ZERO);
        return;
    }
    // SAFETY: lhs is x^T ([k, rows]: element (i, r) at x[r * k + i]), rhs d [rows, n], dst
    // g.w_t [k, n]; lengths checked above.
    unsafe {
        gemm_into(
            (k, n, rows),
            g.w_t.as_mut_ptr(),
            false,
            x.as_ptr(),
            (k, 1),
            d.as_ptr(),
            (1, n),
        );
    }
}

/// `dx[rows, inputs] = d[rows, outputs] . w_t^T`.
fn input_grad<T: Real>(d: &[T], layer: &Layer<T>, rows: usize, dx: &mut Vec<T>) {
    let (k, n) = (layer.inputs, layer.outputs);
    dx.clear();
    dx.resize(rows * k, T::ZERO);
    if rows == 0 {
        return;
    }
    assert!(d.len() >= rows * n && layer.w_t.len() == k * n);
    // SAFETY: lhs d [rows, n]; rhs w_t^T ([n, k]: element (o, i) at w_t[i * n + o]); dst
    // dx [rows, k]; lengths checked above.
    unsafe {
        gemm_into(
            (rows, k, n),
            dx.as_mut_ptr(),
            false,
            d.as_ptr(),
            (1, n),
            layer.w_t.as_ptr(),
            (n, 1),
        );
    }
}
