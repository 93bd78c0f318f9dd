//! bf16 dense layers on AVX512_BF16's `vdpbf16ps`, written here: the kernel of the `bf16`
//! precision on CPUs where MKL does not use the instruction (AMD Zen 4 and later).
//!
//! Weights are converted to bf16 (round to nearest even) once at load and packed into panels
//! of `NR` output columns: for every pair of inputs `(2p, 2p + 1)` a panel holds, per
//! column, the two weights in one 32-bit lane, which is the operand layout of `vdpbf16ps`
//! (each lane accumulates `a[2p] * w[2p] + a[2p + 1] * w[2p + 1]` in f32). A layer's input
//! is converted to bf16 per call (`vcvtneps2bf16`, round to nearest even), rows padded to an
//! even width. A micro-kernel keeps `MR` rows by `NR` columns of f32 accumulators in
//! registers (24 of the 32 zmm), broadcasts one input pair per row and loads four weight
//! vectors per input pair; its output pass adds the bias and applies the ReLU before the
//! (masked) store, so the layer writes its output once. Rows are taken in blocks of
//! `ROW_BLOCK` so a block's bf16 input and one weight panel stay in L2 while every panel
//! passes over them.
//!
//! Everything runs on the calling thread (the model's instance thread), like the other
//! kernels.

use std::arch::x86_64::*;

/// Output columns per panel (four zmm registers of f32).
pub(crate) const NR: usize = 64;
/// Rows per micro-kernel call.
pub(crate) const MR: usize = 6;
/// Rows per block: the block's bf16 input (415 KB for the reference model's widest layer, 1728
/// inputs) and a weight panel (221 KB) fit in the L2 cache of the CPUs this runs on (1 MB on
/// Zen 4).
const ROW_BLOCK: usize = 120;

/// Whether this CPU runs the kernel: AVX-512 F/BW and AVX512_BF16, enabled by the OS.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512bf16")
}

/// A layer's weights in the kernel's layout, and its bias padded to whole panels.
pub(crate) struct PackedBf16 {
    /// Inputs.
    k: usize,
    /// Input pairs (`k` rounded up to even, halved).
    pairs: usize,
    /// Outputs.
    n: usize,
    /// `[panel][pair][NR]`, each lane two bf16 weights (input `2p` low, `2p + 1` high).
    data: Vec<u32>,
    bias: Vec<f32>,
}

impl PackedBf16 {
    /// Packs `weight_t` (`[k, n]` row-major) and `bias` (`[n]`). Call only where
    /// [`available`] is true (the forward pass runs the instructions).
    pub(crate) fn new(weight_t: &[f32], k: usize, n: usize, bias: &[f32]) -> Self {
        assert_eq!(weight_t.len(), k * n, "layer weights");
        assert_eq!(bias.len(), n, "layer bias");
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let bf = |kk: usize, col: usize| -> u32 {
            if kk < k && col < n {
                u32::from(half::bf16::from_f32(weight_t[kk * n + col]).to_bits())
            } else {
                0
            }
        };
        let mut data = vec![0u32; panels * pairs * NR];
        for panel in 0..panels {
            for p in 0..pairs {
                let dst = &mut data[(panel * pairs + p) * NR..][..NR];
                for (c, d) in dst.iter_mut().enumerate() {
                    let col = panel * NR + c;
                    *d = bf(2 * p, col) | (bf(2 * p + 1, col) << 16);
                }
            }
        }
        let mut padded = bias.to_vec();
        padded.resize(panels * NR, 0.0);
        PackedBf16 {
            k,
            pairs,
            n,
            data,
            bias: padded,
        }
    }

    /// Bytes held (packed weights and bias).
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * 4 + self.bias.len() * 4
    }

    /// `out[rows, n] = bf16(x)[rows, k] . bf16(W)^T + b` with f32 accumulation, ReLU if
    /// `relu`. `x16` is the thread's buffer for the bf16 copy of `x`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        relu: bool,
        x16: &mut Vec<u16>,
    ) {
        assert!(x.len() >= rows * self.k && out.len() >= rows * self.n);
        assert!(available(), "the avx512_bf16 kernel needs AVX512_BF16");
        let stride = 2 * self.pairs;
        if x16.len() < rows * stride {
            x16.resize(rows * stride, 0);
        }
        // SAFETY: the CPU has the features (asserted above); the buffers hold `rows` rows of
        // their widths (asserted above and resized here).
        unsafe {
            for r in 0..rows {
                let dst = &mut x16[r * stride..(r + 1) * stride];
                convert_row(&x[r * self.k..(r + 1) * self.k], dst);
            }
            self.run(x16.as_ptr() as *const u32, rows, out.as_mut_ptr(), relu);
        }
    }

    /// # Safety
    /// AVX512_BF16 present; `x` holds `rows` rows of `pairs` pairs; `out` `rows * n` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn run(&self, x: *const u32, rows: usize, out: *mut f32, relu: bool) {
        // SAFETY: the caller's contract (features present, buffers of these sizes); every
        // pointer below stays inside `self.data`, `self.bias`, `x` and `out`.
        unsafe {
            let panels = self.n.div_ceil(NR);
            let mut r0 = 0;
            while r0 < rows {
                let block = ROW_BLOCK.min(rows - r0);
                for panel in 0..panels {
                    let cols = NR.min(self.n - panel * NR);
                    let w = self.data.as_ptr().add(panel * self.pairs * NR);
                    let bias = self.bias.as_ptr().add(panel * NR);
                    let mut r = r0;
                    while r < r0 + block {
                        let m = MR.min(r0 + block - r);
                        let t = Tile {
                            x: x.add(r * self.pairs),
                            ldx: self.pairs,
                            w,
                            pairs: self.pairs,
                            bias,
                            out: out.add(r * self.n + panel * NR),
                            ldo: self.n,
                            cols,
                            relu,
                        };
                        match m {
                            6 => tile::<6>(&t),
                            5 => tile::<5>(&t),
                            4 => tile::<4>(&t),
                            3 => tile::<3>(&t),
                            2 => tile::<2>(&t),
                            _ => tile::<1>(&t),
                        }
                        r += m;
                    }
                }
                r0 += block;
            }
        }
    }
}

/// One micro-kernel call: `M` rows by one panel.
struct Tile {
    x: *const u32,
    ldx: usize,
    w: *const u32,
    pairs: usize,
    bias: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    relu: bool,
}

/// # Safety
/// AVX512_BF16 present; the tile's pointers cover `M` rows of `pairs` input pairs, the panel
/// (`pairs * NR` lanes), `NR` bias values, and `M` output rows of `cols` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const M: usize>(t: &Tile) {
    // SAFETY: the caller's contract; the reads cover the panel's `pairs * NR` lanes, `M`
    // rows of `pairs` input pairs and `NR` bias values, the masked stores `cols` columns.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        for p in 0..t.pairs {
            let wp = t.w.add(p * NR) as *const __m512i;
            let w: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(1))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(2))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp.add(3))),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(t.x.add(r * t.ldx + p).read_unaligned() as i32);
                let a = std::mem::transmute::<__m512i, __m512bh>(a);
                for (acc, w) in acc.iter_mut().zip(w) {
                    *acc = _mm512_dpbf16_ps(*acc, a, w);
                }
            }
        }
        let zero = _mm512_setzero_ps();
        for (r, acc) in acc.iter().enumerate() {
            for (j, acc) in acc.iter().enumerate() {
                let c0 = j * 16;
                if c0 >= t.cols {
                    break;
                }
                let left = t.cols - c0;
                let mask: __mmask16 = if left >= 16 { 0xffff } else { (1 << left) - 1 };
                let mut v = _mm512_add_ps(*acc, _mm512_loadu_ps(t.bias.add(c0)));
                if t.relu {
                    v = _mm512_max_ps(v, zero);
                }
                _mm512_mask_storeu_ps(t.out.add(r * t.ldo + c0), mask, v);
            }
        }
    }
}

/// `src` to bf16 (round to nearest even) into `dst`, zero past `src.len()`.
///
/// # Safety
/// AVX512_BF16 present.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert_row(src: &[f32], dst: &mut [u16]) {
    // SAFETY: the loads and stores cover `body <= src.len() <= dst.len()` elements.
    unsafe {
        let body = src.len() / 16 * 16;
        for i in (0..body).step_by(16) {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256bh = _mm512_cvtneps_pbh(v);
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
        super::to_bf16(&src[body..], &mut dst[body..src.len()]);
        dst[src.len()..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd widths, every row count up to two blocks, against an f64 product of the bf16
    /// values (the kernel's only rounding is the inputs' and weights' conversion).
    #[test]
    fn matches_a_product_of_the_rounded_values() {
        if !available() {
            eprintln!("SKIP: the CPU has no AVX512_BF16");
            return;
        }
        let (k, n) = (37, 75);
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let w: Vec<f32> = (0..k * n).map(val).collect();
        let b: Vec<f32> = (0..n).map(|i| val(i + 3) * 0.1).collect();
        let packed = PackedBf16::new(&w, k, n, &b);
        let round = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
        let mut x16 = Vec::new();
        for rows in [1, 2, 5, 6, 7, 13, ROW_BLOCK + 7] {
            let x: Vec<f32> = (0..rows * k).map(|i| val(i + 11)).collect();
            let mut out = vec![f32::NAN; rows * n];
            packed.forward(&x, rows, &mut out, true, &mut x16);
            for r in 0..rows {
                for c in 0..n {
                    let want = (0..k)
                        .map(|i| round(x[r * k + i]) * round(w[i * n + c]))
                        .sum::<f64>()
                        + f64::from(b[c]);
                    let got = f64::from(out[r * n + c]);
                    assert!(
                        (got - want.max(0.0)).abs() < 1e-4,
                        "{rows} rows, [{r}, {c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
