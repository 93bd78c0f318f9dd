//! JSON views of models for the HTTP API: KServe metadata, Triton's model configuration and
//! statistics, and the repository index.

use kiln_core::TensorSpec;
use kiln_runtime::stats::CountNs;
use kiln_runtime::{IndexEntry, ServedVersion};
use serde_json::{json, Value};

/// The platform string of a served version (`<backend>_onnx` for ONNX files).
pub fn platform(v: &ServedVersion) -> String {
    let backend = v.config.backend.clone().unwrap_or_else(|| engine(v));
    if v.config.default_model_filename.ends_with(".onnx") {
        format!("{backend}_onnx")
    } else {
        backend
    }
}

fn engine(v: &ServedVersion) -> String {
    v.model
        .describe()
        .into_iter()
        .find(|(k, _)| k == "engine")
        .map(|(_, e)| e)
        .unwrap_or_else(|| "unknown".into())
}

fn tensor_meta(spec: &TensorSpec, batched: bool) -> Value {
    let shape: Vec<i64> = if batched {
        std::iter::once(-1)
            .chain(spec.dims.iter().copied())
            .collect()
    } else {
        spec.dims.clone()
    };
    json!({ "name": spec.name, "datatype": spec.data_type.as_str(), "shape": shape })
}

/// KServe v2 model metadata. `versions` lists every serving version of the model.
pub fn model_metadata(v: &ServedVersion, versions: &[u64]) -> Value {
    let batched = v.config.max_batch_size > 0;
    let io = v.io();
    json!({
        "name": v.name,
        "versions": versions.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
        "platform": platform(v),
        "inputs": io.inputs.iter().map(|s| tensor_meta(s, batched)).collect::<Vec<_>>(),
        "outputs": io.outputs.iter().map(|s| tensor_meta(s, batched)).collect::<Vec<_>>(),
    })
}

/// Triton's model configuration in its JSON form (what perf_analyzer reads first).
pub fn model_config(v: &ServedVersion) -> Value {
    let c = &v.config;
    let io = v.io();
    let tensor = |s: &TensorSpec| {
        let mut t = json!({ "name": s.name, "data_type": s.data_type.triton_config_name(), "dims": s.dims });
        if s.allow_ragged_batch {
            t["allow_ragged_batch"] = json!(true);
        }
        t
    };
    let policy = if c.version_policy.all == Some(true) {
        json!({ "all": {} })
    } else if let Some(s) = &c.version_policy.specific {
        json!({ "specific": { "versions": s } })
    } else {
        json!({ "latest": { "num_versions": c.version_policy.latest.unwrap_or(1) } })
    };
    let db = &c.dynamic_batching;
    let mut params = serde_json::Map::new();
    for (k, val) in v.model.describe() {
        params.insert(k, json!({ "string_value": val }));
    }
    json!({
        "name": v.name,
        "platform": platform(v),
        "backend": c.backend.clone().unwrap_or_else(|| engine(v)),
        "version_policy": policy,
        "max_batch_size": c.max_batch_size,
        "input": io.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "output": io.outputs.iter().map(tensor).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": db.preferred_batch_sizes,
            "max_queue_delay_microseconds": db.max_queue_delay_us,
            "priority_levels": db.priority_levels,
            "default_priority_level": c.default_priority(),
            "default_queue_policy": {
                "default_timeout_microseconds": db.default_timeout_ms * 1000,
                "max_queue_size": db.max_queue_size,
            },
        },
        "instance_group": [{
            "name": format!("{}_0", v.name),
            "kind": "KIND_CPU",
            "count": c.instance_group.count,
        }],
        "default_model_filename": c.default_model_filename,
        "parameters": params,
    })
}

fn dur(c: CountNs) -> Value {
    json!({ "count": c.count, "ns": c.ns })
}

/// Triton's statistics of one version.
pub fn model_stats(v: &ServedVersion) -> Value {
    let s = v.stats.snapshot();
    json!({
        "name": v.name,
        "version": v.version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": dur(s.success),
            "fail": dur(s.fail),
            "queue": dur(s.queue),
            "compute_input": dur(s.compute_input),
            "compute_infer": dur(s.compute_infer),
            "compute_output": dur(s.compute_output),
            "cache_hit": dur(CountNs::default()),
            "cache_miss": dur(CountNs::default()),
        },
        "batch_stats": s.batches.iter().map(|(size, b)| json!({
            "batch_size": size,
            "compute_input": dur(b.compute_input),
            "compute_infer": dur(b.compute_infer),
            "compute_output": dur(b.compute_output),
        })).collect::<Vec<_>>(),
    })
}

/// The repository index as Triton's `POST /v2/repository/index` returns it.
pub fn index(entries: &[IndexEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut o = json!({ "name": e.name, "state": e.state.as_str() });
                if let Some(v) = e.version {
                    o["version"] = json!(v.to_string());
                }
                if !e.reason.is_empty() {
                    o["reason"] = json!(e.reason);
                }
                o
            })
            .collect(),
    )
}
