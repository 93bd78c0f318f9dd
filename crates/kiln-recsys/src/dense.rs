//! The kernel under a model's dense layers, chosen once per model at load.
//!
//! Three kernels ([`Kernel`]):
//! - `gemm`: the pure-Rust `gemm` crate, f32 (always available; the weights are packed by the
//!   crate on every call);
//! - `mkl fp32`: MKL's `cblas_sgemm_compute` on weights packed once at load
//!   (`cblas_sgemm_pack`); calls of fewer than [`MKL_MIN_ROWS`] rows, and on AMD CPUs with
//!   AVX-512 of [`mkl_max_rows`] rows or more, run on the `gemm` crate;
//! - `mkl bf16`: MKL's `cblas_gemm_bf16bf16f32_compute`: weights converted to bf16 and packed
//!   at load, each layer's input converted to bf16 (round to nearest even), f32 accumulation
//!   and output. Runs on AVX512_BF16 or AMX tiles where the CPU has them;
//! - `avx512_bf16`: the same arithmetic on this crate's own `vdpbf16ps` kernel
//!   ([`avx512_bf16`]), for CPUs with AVX512_BF16 where MKL does not use it (AMD).
//!
//! The MKL and `gemm` kernels write `x . W^T` and then add the bias and apply the ReLU in one
//! pass over the output ([`bias_relu`]); the `avx512_bf16` kernel does both before its store. The choice ([`DenseEnv::choose`]) follows the model's
//! `precision` parameter ([`Precision`]):
//! - `fp32` (the default): MKL fp32 when MKL is loaded, else `gemm`;
//! - `bf16`: MKL bf16 where MKL is loaded and the CPU has bf16 units MKL uses (AMX, or
//!   AVX512_BF16 on Intel; see [`detect_cpu_bf16`]), else the `avx512_bf16` kernel where the
//!   CPU has AVX512_BF16; else a load error naming the field (MKL would run bf16 slower than
//!   fp32, which is not what asking for bf16 means);
//! - `auto`: bf16 where it can run, else fp32 (the log says why).
//!
//! What the machine offers ([`DenseEnv`]) is given by the backend's options, so a test can
//! simulate a CPU without bf16 or a machine without MKL.

use crate::mkl::{Mkl, PackedBuf, B_MATRIX, NO_TRANS, PACKED, ROW_MAJOR};
use crate::weights::Linear;
use kiln_core::{Error, Result};
use std::ffi::c_int;
use std::sync::Arc;

#[cfg(target_arch = "x86_64")]
pub mod avx512_bf16;
/// The `avx512_bf16` kernel's stand-in off x86-64: never available.
#[cfg(not(target_arch = "x86_64"))]
pub mod avx512_bf16 {
    /// Never: the kernel is x86-64 code.
    pub fn available() -> bool {
        false
    }
    pub(crate) struct PackedBf16;
    impl PackedBf16 {
        pub(crate) fn new(_: &[f32], _: usize, _: usize, _: &[f32]) -> Self {
            unreachable!("the avx512_bf16 kernel is chosen only where available() is true")
        }
        pub(crate) fn bytes(&self) -> usize {
            0
        }
        pub(crate) fn forward(
            &self,
            _: &[f32],
            _: usize,
            _: &mut [f32],
            _: bool,
            _: &mut Vec<u16>,
        ) {
        }
    }
}

/// A model's `precision` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and activations.
    #[default]
    Fp32,
    /// bf16 weights and layer inputs, f32 accumulation (MKL on a CPU with AVX512_BF16 or AMX).
    Bf16,
    /// bf16 where it can run, else fp32.
    Auto,
}

/// A dense-layer kernel.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// The `gemm` crate, f32.
    Gemm,
    /// MKL sgemm on pre-packed weights.
    MklF32(Arc<Mkl>),
    /// MKL bf16 x bf16 -> f32 on pre-packed weights.
    MklBf16(Arc<Mkl>),
    /// bf16 x bf16 -> f32 on AVX512_BF16, this crate's kernel on pre-packed weights.
    Avx512Bf16,
}

impl Kernel {
    /// The name shown in the log and the model's description.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Gemm => "gemm fp32",
            Kernel::MklF32(_) => "mkl fp32 packed",
            Kernel::MklBf16(_) => "mkl bf16 packed",
            Kernel::Avx512Bf16 => "avx512_bf16 packed",
        }
    }
}

/// What the machine offers the dense layers: MKL (or why not) and native bf16.
#[derive(Debug, Clone)]
pub struct DenseEnv {
    /// The loaded MKL, or why there is none.
    pub mkl: std::result::Result<Arc<Mkl>, String>,
    /// The bf16 units MKL uses on this CPU, or why there are none ([`detect_cpu_bf16`]).
    pub cpu_bf16: std::result::Result<String, String>,
    /// Whether the `avx512_bf16` kernel can run, or why not ([`avx512_bf16::available`]).
    pub avx512_bf16: std::result::Result<(), String>,
}

impl DenseEnv {
    /// Picks the kernel for `precision`, with the reason shown in the log.
    pub fn choose(&self, precision: Precision) -> Result<(Kernel, String)> {
        let bf16_blocker = match (&self.mkl, &self.cpu_bf16) {
            (Err(why), _) => Some(format!("MKL is not loaded ({why})")),
            (Ok(_), Err(why)) => Some(why.clone()),
            (Ok(_), Ok(_)) => None,
        };
        let fp32 = |prefix: &str| {
            match &self.mkl {
            Ok(mkl) => (
                Kernel::MklF32(mkl.clone()),
                match mkl_max_rows() {
                    usize::MAX => format!("{prefix}MKL {} loaded", mkl.version_number()),
                    max => format!(
                        "{prefix}MKL {} loaded (calls of {max} rows or more on the gemm crate: MKL runs AVX2 kernels on this AMD CPU)",
                        mkl.version_number()
                    ),
                },
            ),
            Err(why) => (Kernel::Gemm, format!("{prefix}MKL is not loaded ({why})")),
        }
        };
        let name = if precision == Precision::Bf16 {
            "bf16"
        } else {
            "auto"
        };
        match (precision, bf16_blocker, &self.mkl) {
            (Precision::Fp32, _, _) => Ok(fp32("precision = \"fp32\"; ")),
            (Precision::Bf16 | Precision::Auto, Some(mkl_blocker), _) if self.avx512_bf16.is_ok() => Ok((
                Kernel::Avx512Bf16,
                format!("precision = \"{name}\"; the CPU has AVX512_BF16 (no MKL bf16: {mkl_blocker})"),
            )),
            (Precision::Bf16 | Precision::Auto, None, Ok(mkl)) => Ok((
                Kernel::MklBf16(mkl.clone()),
                format!(
                    "precision = \"{name}\"; MKL {} loaded and the CPU has {}",
                    mkl.version_number(),
                    self.cpu_bf16.as_deref().unwrap_or_default(),
                ),
            )),
            (Precision::Bf16, blocker, _) => Err(Error::invalid(format!(
                "recsys parameters: precision = \"bf16\" cannot run here: {}, and {}; use \"fp32\", or \"auto\" to fall back to fp32",
                blocker.unwrap_or_default(),
                self.avx512_bf16.as_ref().err().map_or("", |s| s.as_str()),
            ))),
            (Precision::Auto, blocker, _) => Ok(fp32(&format!(
                "precision = \"auto\": no bf16 because {}, and {}; ",
                blocker.unwrap_or_default(),
                self.avx512_bf16.as_ref().err().map_or("", |s| s.as_str()),
            ))),
        }
    }
}

/// The bf16 units MKL uses on this CPU: AMX-BF16, or AVX512_BF16 (with AVX-512 enabled by the
/// OS) on an Intel CPU; else why not.
///
/// An AMD CPU's AVX512_BF16 does not count: MKL 2026.2 does not use it. Measured on an AMD
/// EPYC (Zen 4, AVX512_BF16): `cblas_gemm_bf16bf16f32` at 0.6x the rate of `cblas_sgemm` on the
/// reference model's layer shapes, and the whole model at 0.6x its MKL fp32 rate, so `auto`
/// keeps fp32 there (the backend's options can still declare bf16, as the benchmarks do).
pub fn detect_cpu_bf16() -> std::result::Result<String, String> {
    #[cfg(target_arch = "x86_64")]
    {
        // cpuid is available on every x86-64 CPU; leaf 7 exists where the max leaf (leaf 0
        // EAX) is at least 7, checked first.
        use std::arch::x86_64::__cpuid_count;
        let l0 = __cpuid_count(0, 0);
        if l0.eax < 7 {
            return Err("the CPU has neither AVX512_BF16 nor AMX".into());
        }
        let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let (l7, l7s1) = (__cpuid_count(7, 0), __cpuid_count(7, 1));
        let avx512_bf16 = std::is_x86_feature_detected!("avx512f") && l7s1.eax & (1 << 5) != 0;
        let amx_bf16 = l7.edx & (1 << 22) != 0 && l7.edx & (1 << 24) != 0;
        match (amx_bf16, avx512_bf16, &vendor[..]) {
            (true, _, _) => Ok("AMX-BF16".into()),
            (false, true, b"GenuineIntel") => Ok("AVX512_BF16".into()),
            (false, true, _) => Err(format!(
                "the CPU ({}) has AVX512_BF16 but MKL does not use it there (bf16 measured slower than fp32)",
                String::from_utf8_lossy(&vendor)
            )),
            (false, false, _) => Err("the CPU has neither AVX512_BF16 nor AMX".into()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err("the CPU has neither AVX512_BF16 nor AMX".into())
    }
}

/// A layer's weights in its kernel's form.
enum Weights {
    /// `[inputs, outputs]` row-major f32.
    Gemm(Vec<f32>),
    /// Packed by `cblas_sgemm_pack`, and `[inputs, outputs]` row-major for the calls that run
    /// on the `gemm` crate ([`MKL_MIN_ROWS`], [`mkl_max_rows`]).
    MklF32(Arc<Mkl>, PackedBuf, Vec<f32>),
    /// Converted to bf16 and packed by `cblas_gemm_bf16bf16f32_pack`.
    MklBf16(Arc<Mkl>, PackedBuf),
    /// Converted to bf16 and packed for `vdpbf16ps`, with the bias.
    Avx512Bf16(avx512_bf16::PackedBf16),
}

/// A fully connected layer ready for its kernel.
pub struct DenseLayer {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    bias: Vec<f32>,
    weights: Weights,
}

/// Rows given to the pack functions. MKL's packed layout of the right-hand operand depends on
/// its `n` and `k` only (its size is the same for every `m`), so weights packed once serve
/// batches of any size: the tests check 1 to thousands of rows against the golden outputs.
const PACK_ROWS: c_int = 512;

/// Calls with fewer rows than this run on the `gemm` crate on the MKL fp32 path: MKL's packed
/// GEMM costs more than the `gemm` crate's for a handful of rows (measured on the reference
/// model at batch 1: 1,015-1,662 rows/s through MKL, 1,753-1,919 through the `gemm` crate).
pub const MKL_MIN_ROWS: usize = 8;

/// Calls of at least this many rows run on the `gemm` crate on the MKL fp32 path, on CPUs
/// where MKL runs narrower kernels than the `gemm` crate: on AMD CPUs with AVX-512 MKL 2026.2
/// runs its AVX2 sgemm kernels while the `gemm` crate runs AVX-512 ones. Measured on an AMD
/// EPYC (Zen 4), reference model, 2 threads: at batch 512 (256 rows per call) the `gemm` crate
/// 16.3k-16.8k rows/s against MKL's 11.4k-15.5k; at batch 64 (32 rows per call) MKL 9.9k-11.9k
/// against 8.1k-8.6k. Elsewhere `usize::MAX` (MKL for every call of 8 rows or more).
pub fn mkl_max_rows() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let l0 = std::arch::x86_64::__cpuid_count(0, 0);
            let amd = [l0.ebx, l0.edx, l0.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .eq(*b"AuthenticAMD");
            if amd && std::is_x86_feature_detected!("avx512f") {
                return 128;
            }
        }
        usize::MAX
    })
}

fn int(v: usize) -> c_int {
    c_int::try_from(v).expect("layer widths fit MKL's 32-bit integers")
}

impl DenseLayer {
    /// Prepares `layer` for `kernel` (converts and packs its weights for MKL).
    pub fn new(layer: Linear, kernel: &Kernel) -> Self {
        let (k, n) = (layer.inputs, layer.outputs);
        let weights = match kernel {
            Kernel::Gemm => Weights::Gemm(layer.weight_t),
            Kernel::MklF32(mkl) => {
                // SAFETY: `weight_t` is `[k, n]` row-major (ld = n); the destination has the
                // size MKL asked for.
                let buf = unsafe {
                    let mut buf = PackedBuf::new((mkl.sgemm_pack_get_size)(
                        B_MATRIX,
                        PACK_ROWS,
                        int(n),
                        int(k),
                    ));
                    (mkl.sgemm_pack)(
                        ROW_MAJOR,
                        B_MATRIX,
                        NO_TRANS,
                        PACK_ROWS,
                        int(n),
                        int(k),
                        1.0,
                        layer.weight_t.as_ptr(),
                        int(n),
                        buf.as_mut_ptr(),
                    );
                    buf
                };
                Weights::MklF32(mkl.clone(), buf, layer.weight_t)
            }
            Kernel::MklBf16(mkl) => {
                let mut w16 = vec![0u16; k * n];
                to_bf16(&layer.weight_t, &mut w16);
                // SAFETY: as above, for the bf16 copy.
                let buf = unsafe {
                    let mut buf = PackedBuf::new((mkl.bf16_pack_get_size)(
                        B_MATRIX,
                        PACK_ROWS,
                        int(n),
                        int(k),
                    ));
                    (mkl.bf16_pack)(
                        ROW_MAJOR,
                        B_MATRIX,
                        NO_TRANS,
                        PACK_ROWS,
                        int(n),
                        int(k),
                        w16.as_ptr(),
                        int(n),
                        buf.as_mut_ptr(),
                    );
                    buf
                };
                Weights::MklBf16(mkl.clone(), buf)
            }
            Kernel::Avx512Bf16 => Weights::Avx512Bf16(avx512_bf16::PackedBf16::new(
                &layer.weight_t,
                k,
                n,
                &layer.bias,
            )),
        };
        DenseLayer {
            inputs: k,
            outputs: n,
            bias: layer.bias,
            weights,
        }
    }

    /// Bytes of weights held (packed where packed).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Gemm(w) => w.len() * 4,
            Weights::MklF32(_, b, w) => b.len() + w.len() * 4,
            Weights::MklBf16(_, b) => b.len(),
            Weights::Avx512Bf16(p) => p.bytes(),
        }
    }

    /// `out[rows, outputs] = x[rows, inputs] . W^T + b`, then ReLU if `relu`. `x16` is the
    /// thread's buffer for the bf16 copy of `x`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], relu: bool, x16: &mut Vec<u16>) {
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k && out.len() >= rows * n);
        if rows == 0 {
            return;
        }
        match &self.weights {
            // bias and ReLU applied by the kernel
            Weights::Avx512Bf16(p) => return p.forward(x, rows, out, relu, x16),
            Weights::Gemm(w) => crate::mlp::gemm_f32(w, k, n, x, rows, out),
            Weights::MklF32(_, _, w) if rows < MKL_MIN_ROWS || rows >= mkl_max_rows() => {
                crate::mlp::gemm_f32(w, k, n, x, rows, out)
            }
            // SAFETY (both MKL arms): `x` holds `[rows, k]` row-major (lda = k), `out`
            // `[rows, n]` (ldc = n), both checked above; the packed operand was packed for
            // this `n` and `k`; beta = 0, so `out` is only written.
            Weights::MklF32(mkl, packed, _) => unsafe {
                (mkl.sgemm_compute)(
                    ROW_MAJOR,
                    NO_TRANS,
                    PACKED,
                    int(rows),
                    int(n),
                    int(k),
                    x.as_ptr(),
                    int(k),
                    packed.as_ptr(),
                    int(n),
                    0.0,
                    out.as_mut_ptr(),
                    int(n),
                )
            },
            Weights::MklBf16(mkl, packed) => {
                if x16.len() < rows * k {
                    x16.resize(rows * k, 0);
                }
                to_bf16(&x[..rows * k], &mut x16[..rows * k]);
                // SAFETY: as above, `x16` holding the bf16 copy of `x`.
                unsafe {
                    (mkl.bf16_compute)(
                        ROW_MAJOR,
                        NO_TRANS,
                        PACKED,
                        int(rows),
                        int(n),
                        int(k),
                        1.0,
                        x16.as_ptr(),
                        int(k),
                        packed.as_ptr(),
                        int(n),
                        0.0,
                        out.as_mut_ptr(),
                        int(n),
                    )
                }
            }
        }
        bias_relu(&mut out[..rows * n], &self.bias, relu);
    }
}

/// Adds `bias` to every row of `out` and applies the ReLU if `relu`, in one pass.
pub fn bias_relu(out: &mut [f32], bias: &[f32], relu: bool) {
    for row in out.chunks_exact_mut(bias.len()) {
        if relu {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = (*v + b).max(0.0);
            }
        } else {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// f32 to bf16, rounding to nearest even (NaN stays a quiet NaN).
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        let b = s.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        *d = if s.is_nan() { 0x7fc0 } else { rounded };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let cases = [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.4e38,
            f32::NAN,
        ];
        let mut out = [0u16; 6];
        to_bf16(&cases, &mut out);
        for (c, o) in cases.iter().zip(out) {
            let want = half::bf16::from_f32(*c);
            if c.is_nan() {
                assert!(half::bf16::from_bits(o).is_nan());
            } else {
                assert_eq!(o, want.to_bits(), "{c}");
            }
        }
    }

    #[test]
    fn bf16_needs_mkl_and_the_cpu() {
        let none = DenseEnv {
            mkl: Err("no library given".into()),
            cpu_bf16: Ok("AMX-BF16".into()),
            avx512_bf16: Err("no AVX512_BF16".into()),
        };
        let (k, why) = none.choose(Precision::Fp32).unwrap();
        assert!(
            matches!(k, Kernel::Gemm) && why.contains("no library given"),
            "{why}"
        );
        let (k, why) = none.choose(Precision::Auto).unwrap();
        assert!(
            matches!(k, Kernel::Gemm) && why.contains("MKL is not loaded"),
            "{why}"
        );
        let e = none.choose(Precision::Bf16).unwrap_err();
        assert!(
            e.message.contains("precision") && e.message.contains("MKL"),
            "{e:?}"
        );
    }
}
