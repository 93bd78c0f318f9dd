//! Execution providers: which of the configured ones this ONNX Runtime build offers, and their
//! registration on a session.

use crate::settings::ProviderSpec;
use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};

/// Why a configured provider cannot be used, if it cannot. Only checks what the library was
/// built with; a missing GPU or driver shows up when the session is created.
pub fn unavailable_reason(spec: &ProviderSpec) -> Option<String> {
    let (name, available) = match spec {
        ProviderSpec::Cpu => return None,
        ProviderSpec::Cuda { .. } => (ep::CUDA::NAME, ep::CUDA::is_available()),
        ProviderSpec::Tensorrt { .. } => (ep::TensorRT::NAME, ep::TensorRT::is_available()),
    };
    match available {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "this onnxruntime library has no {name} (a GPU build such as the onnxruntime-gpu wheel is needed)"
        )),
        Err(e) => Some(format!("cannot list the library's providers: {e}")),
    }
}

/// The ONNX Runtime provider for a spec, set to fail the session build rather than be skipped.
pub fn dispatch(spec: &ProviderSpec) -> ExecutionProviderDispatch {
    match spec {
        // ORT's own default keeps the CPU arena on; ort's CPU::default() would turn it off
        ProviderSpec::Cpu => ep::CPU::default()
            .with_arena_allocator(true)
            .build()
            .error_on_failure(),
        ProviderSpec::Cuda {
            device_id,
            memory_limit_bytes,
        } => {
            let mut cuda = ep::CUDA::default().with_device_id(*device_id);
            if let Some(limit) = memory_limit_bytes {
                cuda = cuda.with_memory_limit(*limit);
            }
            cuda.build().error_on_failure()
        }
        ProviderSpec::Tensorrt {
            device_id,
            fp16,
            cache_dir,
            max_workspace_bytes,
        } => {
            let mut trt = ep::TensorRT::default()
                .with_device_id(*device_id)
                .with_fp16(*fp16);
            if let Some(dir) = cache_dir {
                let dir = dir.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir);
            }
            if let Some(bytes) = max_workspace_bytes {
                trt = trt.with_max_workspace_size(*bytes);
            }
            trt.build().error_on_failure()
        }
    }
}

/// The value shown as the model's `execution_provider`: the providers in use, then the skipped
/// ones with their reasons, e.g. `cpu (cuda unavailable: ...)`.
pub fn describe(used: &[ProviderSpec], skipped: &[(String, String)]) -> String {
    let mut s = used.iter().map(|p| p.kind()).collect::<Vec<_>>().join(", ");
    if s.is_empty() {
        s.push_str("cpu");
    }
    if !skipped.is_empty() {
        let notes: Vec<String> = skipped
            .iter()
            .map(|(k, why)| format!("{k} unavailable: {why}"))
            .collect();
        s.push_str(&format!(" ({})", notes.join("; ")));
    }
    s
}
