//! Triton's model configuration message of a served model, the one answer of both
//! `GET /v2/models/{model}/config` and the `ModelConfig` RPC.

use kiln_core::classification::InputFormat;
use kiln_core::{ModelConfig, ModelIo, TensorSpec};
use kiln_protocol::inference as pb;
use kiln_runtime::pipeline::spec::StepKind;
use kiln_runtime::pipeline::Pipeline;
use std::collections::BTreeMap;

/// The engine a model runs on, from its backend's facts (`engine`), as the backend name
/// of a model whose configuration names none.
fn engine(facts: &[(String, String)]) -> String {
    facts
        .iter()
        .find(|(k, _)| k == "engine")
        .map_or_else(|| "unknown".into(), |(_, e)| e.clone())
}

/// The backend serving a model: the configured one, else the engine its file was given to.
fn backend(config: &ModelConfig, facts: &[(String, String)]) -> String {
    config.backend.clone().unwrap_or_else(|| engine(facts))
}

/// The platform string of a model (`<backend>_onnx` for ONNX files; the backend alone for
/// others, e.g. `openvino` for an OpenVINO IR file), from its configuration and its backend's
/// facts ([`kiln_core::LoadedModel::describe`], whose `model_format` says what a backend that
/// reads several formats loaded).
pub fn platform(config: &ModelConfig, facts: &[(String, String)]) -> String {
    if config.is_pipeline() {
        return "ensemble".into();
    }
    let backend = backend(config, facts);
    let format = facts.iter().find(|(k, _)| k == "model_format");
    let onnx = match format {
        Some((_, f)) => f == "onnx",
        None => config.default_model_filename.ends_with(".onnx"),
    };
    if onnx {
        format!("{backend}_onnx")
    } else {
        backend
    }
}

/// Builds the Triton `ModelConfig` of model `name` from the configuration and the inputs and
/// outputs it was loaded with, and its backend's facts (`describe`).
///
/// - `backend` is the configured backend, else the engine that serves the file (Triton fills in
///   the backend it picked too).
/// - `parameters` are the configuration's `[parameters]` (non-string values in their TOML
///   form) with the backend's facts over them, so a setting the backend changed (an execution
///   provider that fell back) shows what is in effect.
/// - Batching models report `dynamic_batching`, since Kiln batches every model with
///   `max_batch_size > 0`; its queue policy rejects timed-out requests and lets requests set
///   their own timeout.
pub fn config_message(
    name: &str,
    config: &ModelConfig,
    io: &ModelIo,
    facts: &[(String, String)],
) -> pb::ModelConfig {
    let db = &config.dynamic_batching;
    let dynamic_batching = (config.max_batch_size > 0).then(|| pb::ModelDynamicBatching {
        preferred_batch_size: db.preferred_batch_sizes.iter().map(|&b| b as i32).collect(),
        max_queue_delay_microseconds: db.max_queue_delay_us,
        priority_levels: u64::from(db.priority_levels),
        default_priority_level: u64::from(config.default_priority()),
        default_queue_policy: Some(pb::ModelQueuePolicy {
            timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
            default_timeout_microseconds: db.default_timeout_ms.saturating_mul(1000),
            allow_timeout_override: true,
            max_queue_size: u32::try_from(db.max_queue_size).unwrap_or(u32::MAX),
        }),
        ..Default::default()
    });
    let mut parameters: BTreeMap<String, pb::ModelParameter> = config
        .parameters
        .iter()
        .map(|(k, v)| {
            let string_value = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            (k.clone(), pb::ModelParameter { string_value })
        })
        .collect();
    for (k, v) in facts {
        parameters.insert(
            k.clone(),
            pb::ModelParameter {
                string_value: v.clone(),
            },
        );
    }
    pb::ModelConfig {
        name: name.to_string(),
        platform: platform(config, facts),
        backend: backend(config, facts),
        version_policy: Some(version_policy(config)),
        max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
        input: io.inputs.iter().map(|s| input(s, config)).collect(),
        output: io.outputs.iter().map(|s| output(s, config)).collect(),
        dynamic_batching,
        instance_group: vec![pb::ModelInstanceGroup {
            name: format!("{name}_0"),
            kind: pb::model_instance_group::Kind::Cpu as i32,
            count: i32::try_from(config.instance_group.count).unwrap_or(i32::MAX),
            ..Default::default()
        }],
        default_model_filename: config.default_model_filename.clone(),
        parameters,
        response_cache: config
            .response_cache
            .enable
            .then_some(pb::ModelResponseCache { enable: true }),
        ..Default::default()
    }
}

/// Shows a pipeline as Triton shows an ensemble: `platform: "ensemble"` and its model steps
/// in `ensemble_scheduling.step[]`, so that tritonclient and perf_analyzer (which fetch the
/// configuration of every step's model) drive it unchanged. Built-in operations are not
/// models a client could fetch; they are listed in `parameters` as `step.<name>` (the
/// operation, its settings and its tensors), so the whole graph stays visible.
pub fn ensemble(c: &mut pb::ModelConfig, p: &Pipeline) {
    c.platform = "ensemble".into();
    c.backend = String::new();
    c.instance_group.clear();
    c.default_model_filename.clear();
    let mut steps = Vec::new();
    for s in p.steps() {
        match &s.kind {
            StepKind::Model { model, version } => steps.push(pb::model_ensembling::Step {
                model_name: model.clone(),
                model_version: version.map_or(-1, |v| v as i64),
                input_map: s.input_map.clone().into_iter().collect(),
                output_map: s.output_map.clone().into_iter().collect(),
                model_namespace: String::new(),
            }),
            op => {
                let maps = |m: &BTreeMap<String, String>| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let settings = format!("{op:?}");
                c.parameters.insert(
                    format!("step.{}", s.name),
                    pb::ModelParameter {
                        string_value: format!(
                            "{settings} in({}) out({})",
                            maps(&s.input_map),
                            maps(&s.output_map)
                        ),
                    },
                );
            }
        }
    }
    c.ensemble_scheduling = Some(pb::ModelEnsembling { step: steps });
}

fn version_policy(config: &ModelConfig) -> pb::ModelVersionPolicy {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let vp = &config.version_policy;
    let choice = if vp.all == Some(true) {
        PolicyChoice::All(All {})
    } else if let Some(versions) = &vp.specific {
        PolicyChoice::Specific(Specific {
            versions: versions.iter().map(|&v| v as i64).collect(),
        })
    } else {
        PolicyChoice::Latest(Latest {
            num_versions: vp.latest.unwrap_or(1),
        })
    };
    pb::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

fn input(s: &TensorSpec, config: &ModelConfig) -> pb::ModelInput {
    use pb::model_input::Format;
    let format = config
        .input_format
        .get(&s.name)
        .map_or(Format::None, |f| match f {
            InputFormat::Nchw => Format::Nchw,
            InputFormat::Nhwc => Format::Nhwc,
        });
    pb::ModelInput {
        name: s.name.clone(),
        data_type: s.data_type.triton_config_enum(),
        format: format as i32,
        dims: s.dims.clone(),
        allow_ragged_batch: s.allow_ragged_batch,
        ..Default::default()
    }
}

fn output(s: &TensorSpec, config: &ModelConfig) -> pb::ModelOutput {
    pb::ModelOutput {
        name: s.name.clone(),
        data_type: s.data_type.triton_config_enum(),
        dims: s.dims.clone(),
        label_filename: config.labels.get(&s.name).cloned().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::DataType;
    use serde_json::json;

    fn io() -> ModelIo {
        ModelIo {
            inputs: vec![TensorSpec {
                name: "x".into(),
                data_type: DataType::Fp32,
                dims: vec![16],
                allow_ragged_batch: false,
            }],
            outputs: vec![TensorSpec {
                name: "y".into(),
                data_type: DataType::Bytes,
                dims: vec![-1],
                allow_ragged_batch: false,
            }],
        }
    }

    fn facts() -> Vec<(String, String)> {
        vec![
            ("engine".into(), "onnxruntime".into()),
            ("execution_provider".into(), "cpu".into()),
        ]
    }

    #[test]
    fn message() {
        let config = ModelConfig::parse(
            "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 100\n\
             preferred_batch_sizes = [4]\n[parameters]\nthreads = 2\nmode = \"fast\"\n\
             execution_provider = \"cuda\"",
            "m",
        )
        .unwrap();
        let c = config_message("m", &config, &io(), &facts());
        assert_eq!(c.name, "m");
        assert_eq!(c.platform, "onnxruntime_onnx");
        assert_eq!(
            c.backend, "onnxruntime",
            "the engine, as none is configured"
        );
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(c.output[0].data_type, pb::DataType::TypeString as i32);
        assert_eq!(c.output[0].dims, vec![-1]);
        let db = c.dynamic_batching.unwrap();
        assert_eq!(db.preferred_batch_size, vec![4]);
        assert_eq!(db.max_queue_delay_microseconds, 100);
        let q = db.default_queue_policy.unwrap();
        assert!(q.allow_timeout_override);
        assert_eq!(
            q.timeout_action,
            pb::model_queue_policy::TimeoutAction::Reject as i32
        );
        assert_eq!(c.parameters["threads"].string_value, "2");
        assert_eq!(c.parameters["mode"].string_value, "fast");
        assert_eq!(
            c.parameters["execution_provider"].string_value, "cpu",
            "what the backend runs wins over what was asked for"
        );
        assert_eq!(c.parameters["engine"].string_value, "onnxruntime");
        assert_eq!(c.instance_group[0].count, 1);
        assert_eq!(c.instance_group[0].name, "m_0");

        let named = ModelConfig::parse("backend = \"tract\"", "u").unwrap();
        let unbatched = config_message("u", &named, &io(), &facts());
        assert!(unbatched.dynamic_batching.is_none());
        assert_eq!(unbatched.backend, "tract");
        assert_eq!(unbatched.platform, "tract_onnx");

        // a backend that reads several formats says which one it loaded
        let ov = ModelConfig::parse("backend = \"openvino\"", "v").unwrap();
        let fact = |f: &str| {
            vec![
                ("engine".to_string(), "openvino".to_string()),
                ("model_format".to_string(), f.to_string()),
            ]
        };
        assert_eq!(platform(&ov, &fact("ir")), "openvino");
        assert_eq!(platform(&ov, &fact("onnx")), "openvino_onnx");
    }

    /// The JSON rendering is Triton's: field names as in the `.proto`, enums by name, the
    /// version policy as its chosen field, unset messages left out.
    #[test]
    fn renders_as_triton_json() {
        let config = ModelConfig::parse("max_batch_size = 8", "m").unwrap();
        let c = serde_json::to_value(config_message("m", &config, &io(), &facts())).unwrap();
        assert_eq!(
            c["input"][0],
            json!({
                "name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [16],
                "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
                "is_non_linear_format_io": false,
            })
        );
        assert_eq!(c["output"][0]["data_type"], "TYPE_STRING");
        assert_eq!(
            c["version_policy"],
            json!({ "latest": { "num_versions": 1 } })
        );
        assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
        assert_eq!(
            c["dynamic_batching"]["default_queue_policy"]["timeout_action"],
            "REJECT"
        );
        assert_eq!(
            c["parameters"]["engine"],
            json!({ "string_value": "onnxruntime" })
        );
        assert!(c.get("model_transaction_policy").is_none(), "{c}");
        assert!(c["input"][0].get("reshape").is_none(), "{c}");

        let unbatched = ModelConfig::parse("", "u").unwrap();
        let c = serde_json::to_value(config_message("u", &unbatched, &io(), &facts())).unwrap();
        assert!(c.get("dynamic_batching").is_none(), "{c}");
    }
}
