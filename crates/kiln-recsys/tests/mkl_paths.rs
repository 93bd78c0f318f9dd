//! The dense-layer kernels (`gemm`, MKL fp32 packed, MKL bf16, `avx512_bf16`) on the DLRM-style reference
//! model (`examples/gen_dlrm.py`, full widths, 1000 rows per table): the golden outputs
//! (computed in float64 by an independent NumPy implementation) on each path, batched equal to
//! one by one, and which path a model gets when MKL or native bf16 is missing, as the log
//! says.
//!
//! MKL is `KILN_MKL_LIBRARY`, else the `libmkl_rt.so*` of the Python `mkl` package
//! (`scripts/setup-python.sh` installs it). Tests needing it skip visibly without it; under
//! `CI` they fail instead. The `avx512_bf16` kernel's tests skip visibly on a CPU without
//! AVX512_BF16.

use kiln_core::{Backend, LoadedModel, ModelConfig, Tensor};
use kiln_recsys::{RecsysBackend, RecsysOptions};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// fp32 paths against the float64 reference, on probabilities.
const FP32_TOL: f32 = 1e-5;

/// bf16 against the float64 reference, on probabilities (outputs about 0.84-0.90). Measured
/// on this model (bf16 weights and layer inputs, 8 layers, f32 accumulation) with MKL 2026.2 on
/// an AMD EPYC with AVX512_BF16: largest difference 2.5e-4 over these 64 golden rows, and
/// 3.5e-4 / 6.7e-4 / 8.2e-4 over 2048 golden rows generated with seeds 42 / 7 / 123; one row
/// alone against the same row in a batch of 64, 2e-5 (3e-4 over 2048). The `avx512_bf16`
/// kernel (same roundings, its own summation order), same CPU: 2.5e-4 over the 64 rows and
/// 3.5e-4 over 2048 (seed 42); one row alone equal to the batch's (its sums do not depend on
/// the row count). The bound is about 2.5x the largest.
const BF16_TOL: f32 = 2e-3;

fn mkl_library(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_MKL_LIBRARY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let script = "import importlib.metadata as m\ntry:\n    d = m.distribution('mkl')\n    print(next((d.locate_file(f) for f in d.files or [] if f.name.startswith('libmkl_rt.so')), ''))\nexcept m.PackageNotFoundError:\n    print('')";
    let mut tried = Vec::new();
    for python in kiln_testkit::python_candidates() {
        let out = std::process::Command::new(&python)
            .args(["-c", script])
            .output();
        let found = out
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|p| !p.is_empty() && Path::new(p).exists());
        match found {
            Some(p) => return Some(PathBuf::from(p)),
            None => tried.push(python.display().to_string()),
        }
    }
    kiln_testkit::skip(
        test,
        format!(
            "no MKL (KILN_MKL_LIBRARY unset, no mkl package in {}; run scripts/setup-python.sh)",
            tried.join(", ")
        ),
    );
    None
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

struct Reference {
    _dir: TempDir,
    model: PathBuf,
    dense: Vec<f32>,
    sparse: Vec<Vec<i64>>,
    prob: Vec<f32>,
    rows: usize,
}

fn reference(test: &str) -> Option<Reference> {
    let py = kiln_testkit::python(test, &["numpy"])?;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(py)
        .arg(kiln_testkit::repo_root().join("examples/gen_dlrm.py"))
        .arg("--out")
        .arg(dir.path())
        .args(["--rows-per-table", "1000", "--golden-rows", "64"])
        .output()
        .expect("run gen_dlrm.py");
    assert!(
        out.status.success(),
        "gen_dlrm.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = dir.path().join("dlrm");
    let bytes = std::fs::read(model.join("golden.safetensors")).expect("golden");
    let st = SafeTensors::deserialize(&bytes).expect("golden file");
    let f32s = |n: &str| f32s(st.tensor(n).expect(n).data());
    let dense = f32s("dense");
    let prob = f32s("prob");
    let sparse = (0..26)
        .map(|i| {
            let t = st.tensor(&format!("sparse_{i}")).unwrap();
            t.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect();
    let rows = prob.len();
    Some(Reference {
        _dir: dir,
        model,
        dense,
        sparse,
        prob,
        rows,
    })
}

/// A writer appending to a shared buffer: the log of one load.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Loads the reference model with `precision` on a backend with `options`; the result and the
/// log of the backend's creation and the load.
fn load(
    r: &Reference,
    precision: &str,
    options: RecsysOptions,
) -> (kiln_core::Result<Arc<dyn LoadedModel>>, String) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let mut config = ModelConfig::from_file(&r.model.join("config.toml"), "dlrm").unwrap();
    config
        .parameters
        .insert("precision".into(), toml::Value::String(precision.into()));
    let model = tracing::subscriber::with_default(subscriber, || {
        RecsysBackend::with_options(options).load(&r.model.join("1"), &config)
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (model, text)
}

fn inputs(r: &Reference, rows: std::ops::Range<usize>) -> Vec<Tensor> {
    let n = rows.len() as i64;
    let mut t = vec![Tensor::from_vec(
        "dense",
        vec![n, 13],
        &r.dense[rows.start * 13..rows.end * 13],
    )];
    for (i, ids) in r.sparse.iter().enumerate() {
        t.push(Tensor::from_vec(
            format!("sparse_{i}"),
            vec![n, 20],
            &ids[rows.start * 20..rows.end * 20],
        ));
    }
    t
}

fn run(model: &dyn LoadedModel, r: &Reference, rows: std::ops::Range<usize>) -> Vec<f32> {
    let out = model.execute(&inputs(r, rows)).expect("execute");
    f32s(&out[0].data)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The golden outputs within `tol`, and every row alone equal to the batch's (within `tol` too:
/// kernels may block a one-row product differently).
fn check_path(model: &dyn LoadedModel, r: &Reference, tol: f32, what: &str) {
    let batched = run(model, r, 0..r.rows);
    let d = max_diff(&batched, &r.prob);
    eprintln!("{what}: max |out - golden| = {d:e}");
    assert!(
        d <= tol,
        "{what}: batched outputs differ from golden by {d} > {tol}"
    );
    let single: Vec<f32> = (0..r.rows).flat_map(|i| run(model, r, i..i + 1)).collect();
    let d1 = max_diff(&single, &batched);
    eprintln!("{what}: max |one by one - batched| = {d1:e}");
    assert!(d1 <= tol, "{what}: one by one differs from batched by {d1}");
    assert!(
        max_diff(&single, &r.prob) <= tol,
        "{what}: one by one vs golden"
    );
}

fn describe(model: &dyn LoadedModel, key: &str) -> String {
    model
        .describe()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn with_mkl(path: &Path, cpu_bf16: Option<bool>) -> RecsysOptions {
    RecsysOptions {
        mkl_library: Some(path.to_path_buf()),
        cpu_bf16,
        ..RecsysOptions::default()
    }
}

#[test]
fn gemm_path_matches_the_golden_outputs() {
    let Some(r) = reference("gemm_path_matches_the_golden_outputs") else {
        return;
    };
    let (model, log) = load(&r, "fp32", RecsysOptions::default());
    let model = model.expect("load");
    assert_eq!(describe(&*model, "gemm"), "gemm fp32");
    assert!(log.contains("path=\"gemm fp32\""), "{log}");
    check_path(&*model, &r, FP32_TOL, "gemm fp32");
}

#[test]
fn mkl_fp32_path_matches_the_golden_outputs() {
    let test = "mkl_fp32_path_matches_the_golden_outputs";
    let (Some(lib), Some(r)) = (mkl_library(test), reference(test)) else {
        return;
    };
    let (model, log) = load(&r, "fp32", with_mkl(&lib, None));
    let model = model.expect("load");
    assert_eq!(describe(&*model, "gemm"), "mkl fp32 packed", "{log}");
    assert!(log.contains("threading=\"sequential\""), "{log}");
    check_path(&*model, &r, FP32_TOL, "mkl fp32");
}

#[test]
fn mkl_bf16_path_matches_the_golden_outputs_within_the_measured_tolerance() {
    let test = "mkl_bf16_path_matches_the_golden_outputs_within_the_measured_tolerance";
    let (Some(lib), Some(r)) = (mkl_library(test), reference(test)) else {
        return;
    };
    // said to have native bf16, so the path runs on any CPU (MKL emulates bf16 where it is not)
    let (model, log) = load(&r, "bf16", with_mkl(&lib, Some(true)));
    let model = model.expect("load");
    assert_eq!(describe(&*model, "gemm"), "mkl bf16 packed", "{log}");
    check_path(&*model, &r, BF16_TOL, "mkl bf16");
}

#[test]
fn the_path_follows_the_library_and_the_cpu() {
    let test = "the_path_follows_the_library_and_the_cpu";
    let Some(r) = reference(test) else {
        return;
    };
    // no library and no bf16 units: gemm for fp32 and auto, an error naming the field for bf16
    let missing = RecsysOptions {
        mkl_missing: Some("no libmkl_rt found (simulated)".into()),
        cpu_bf16: Some(false),
        ..RecsysOptions::default()
    };
    for precision in ["fp32", "auto"] {
        let (model, log) = load(&r, precision, missing.clone());
        assert_eq!(describe(&*model.expect("load"), "gemm"), "gemm fp32");
        assert!(
            log.contains("path=\"gemm fp32\"") && log.contains("no libmkl_rt found (simulated)"),
            "{precision}: {log}"
        );
    }
    let (model, _) = load(&r, "bf16", missing);
    let e = model.err().expect("bf16 without MKL is refused");
    assert!(
        e.message.contains("precision = \"bf16\"")
            && e.message.contains("MKL is not loaded")
            && e.message.contains("no native bf16 (set by configuration)"),
        "{e:?}"
    );
    // a library path that does not load: warned, gemm (on a CPU without bf16 units)
    let (model, log) = load(
        &r,
        "auto",
        with_mkl(Path::new("/nonexistent/libmkl_rt.so.3"), Some(false)),
    );
    assert_eq!(describe(&*model.expect("load"), "gemm"), "gemm fp32");
    assert!(
        log.contains("WARN") && log.contains("/nonexistent/libmkl_rt.so.3"),
        "{log}"
    );

    let Some(lib) = mkl_library(test) else {
        return;
    };
    // MKL but no native bf16: auto runs fp32 on MKL, bf16 is refused
    let (model, log) = load(&r, "auto", with_mkl(&lib, Some(false)));
    assert_eq!(describe(&*model.expect("load"), "gemm"), "mkl fp32 packed");
    assert!(
        log.contains("path=\"mkl fp32 packed\"")
            && log.contains("no native bf16 (set by configuration)"),
        "{log}"
    );
    let (model, _) = load(&r, "bf16", with_mkl(&lib, Some(false)));
    let e = model.err().expect("bf16 without native bf16 is refused");
    assert!(
        e.message.contains("no native bf16 (set by configuration)"),
        "{e:?}"
    );
    // MKL and native bf16: auto runs bf16
    let (model, log) = load(&r, "auto", with_mkl(&lib, Some(true)));
    assert_eq!(describe(&*model.expect("load"), "gemm"), "mkl bf16 packed");
    assert!(
        log.contains("path=\"mkl bf16 packed\"") && log.contains("model=dlrm"),
        "{log}"
    );
}

/// The `avx512_bf16` kernel's options: no MKL (so MKL bf16 cannot be picked), bf16 units
/// detected.
fn without_mkl() -> RecsysOptions {
    RecsysOptions {
        mkl_missing: Some("no libmkl_rt found (simulated)".into()),
        ..RecsysOptions::default()
    }
}

fn avx512_bf16(test: &str) -> bool {
    let ok = kiln_recsys::dense::avx512_bf16::available();
    if !ok {
        kiln_testkit::skip(test, "the CPU has no AVX512_BF16".to_string());
    }
    ok
}

#[test]
fn avx512_bf16_path_matches_the_golden_outputs_within_the_measured_tolerance() {
    let test = "avx512_bf16_path_matches_the_golden_outputs_within_the_measured_tolerance";
    if !avx512_bf16(test) {
        return;
    }
    let Some(r) = reference(test) else {
        return;
    };
    let (model, log) = load(&r, "bf16", without_mkl());
    let model = model.expect("load");
    assert_eq!(describe(&*model, "gemm"), "avx512_bf16 packed", "{log}");
    check_path(&*model, &r, BF16_TOL, "avx512_bf16");
}

#[test]
fn the_avx512_bf16_kernel_runs_where_the_cpu_has_it() {
    let test = "the_avx512_bf16_kernel_runs_where_the_cpu_has_it";
    if !avx512_bf16(test) {
        return;
    }
    let Some(r) = reference(test) else {
        return;
    };
    // auto and bf16 pick it without MKL, and the log says why
    for precision in ["auto", "bf16"] {
        let (model, log) = load(&r, precision, without_mkl());
        assert_eq!(
            describe(&*model.expect("load"), "gemm"),
            "avx512_bf16 packed"
        );
        assert!(
            log.contains("path=\"avx512_bf16 packed\"")
                && log.contains("the CPU has AVX512_BF16")
                && log.contains("no libmkl_rt found (simulated)"),
            "{precision}: {log}"
        );
    }
    // fp32 stays fp32
    let (model, _) = load(&r, "fp32", without_mkl());
    assert_eq!(describe(&*model.expect("load"), "gemm"), "gemm fp32");
    // a CPU without bf16 units (simulated): auto falls back to fp32 and says why
    let no_bf16 = RecsysOptions {
        cpu_bf16: Some(false),
        ..without_mkl()
    };
    let (model, log) = load(&r, "auto", no_bf16.clone());
    assert_eq!(describe(&*model.expect("load"), "gemm"), "gemm fp32");
    assert!(
        log.contains("no bf16 because") && log.contains("no native bf16 (set by configuration)"),
        "{log}"
    );
    let (model, _) = load(&r, "bf16", no_bf16);
    assert!(model.is_err(), "bf16 without bf16 units is refused");
}
