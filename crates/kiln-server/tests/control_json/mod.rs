//! Reading Triton's HTTP JSON for the control plane back into the protobuf messages, by hand:
//! every key must be known, so a field only one side has (or renders differently) fails the
//! comparison in `control_parity.rs`.

use kiln_protocol::inference as pb;
use serde_json::{json, Map, Value};

/// The JSON object `v`, after checking it has no key outside `known`.
pub fn object<'a>(v: &'a Value, known: &[&str], what: &str) -> &'a Map<String, Value> {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for k in o.keys() {
        assert!(
            known.contains(&k.as_str()),
            "{what}: key '{k}' has no counterpart in the protobuf message: {v}"
        );
    }
    o
}

pub fn text(o: &Map<String, Value>, k: &str) -> String {
    o.get(k).map_or_else(String::new, |v| {
        v.as_str()
            .unwrap_or_else(|| panic!("'{k}' is not a string: {v}"))
            .to_string()
    })
}

pub fn uint(o: &Map<String, Value>, k: &str) -> u64 {
    o.get(k).map_or(0, |v| {
        v.as_u64()
            .unwrap_or_else(|| panic!("'{k}' is not an unsigned number: {v}"))
    })
}

pub fn int(o: &Map<String, Value>, k: &str) -> i64 {
    o.get(k).map_or(0, |v| {
        v.as_i64()
            .unwrap_or_else(|| panic!("'{k}' is not a number: {v}"))
    })
}

pub fn flag(o: &Map<String, Value>, k: &str) -> bool {
    o.get(k).is_some_and(|v| {
        v.as_bool()
            .unwrap_or_else(|| panic!("'{k}' is not a bool: {v}"))
    })
}

pub fn list<'a>(o: &'a Map<String, Value>, k: &str) -> &'a [Value] {
    o.get(k).map_or(&[], |v| {
        v.as_array()
            .unwrap_or_else(|| panic!("'{k}' is not an array: {v}"))
    })
}

pub fn ints(o: &Map<String, Value>, k: &str) -> Vec<i64> {
    list(o, k)
        .iter()
        .map(|v| v.as_i64().unwrap_or_else(|| panic!("'{k}': {v}")))
        .collect()
}

/// The value of an enum written by name; an absent field is the enum's zero value.
fn named(o: &Map<String, Value>, k: &str, parse: fn(&str) -> Option<i32>) -> i32 {
    o.get(k).map_or(0, |v| {
        let name = v
            .as_str()
            .unwrap_or_else(|| panic!("'{k}' is not a name: {v}"));
        parse(name).unwrap_or_else(|| panic!("'{k}': unknown name {name}"))
    })
}

fn data_type(name: &str) -> Option<i32> {
    pb::DataType::from_str_name(name).map(|d| d as i32)
}

pub fn metadata_from_json(v: &Value) -> pb::ModelMetadataResponse {
    let o = object(
        v,
        &["name", "versions", "platform", "inputs", "outputs"],
        "metadata",
    );
    let tensors = |k: &str| {
        list(o, k)
            .iter()
            .map(|t| {
                let t = object(t, &["name", "datatype", "shape"], "tensor metadata");
                pb::model_metadata_response::TensorMetadata {
                    name: text(t, "name"),
                    datatype: text(t, "datatype"),
                    shape: ints(t, "shape"),
                }
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: text(o, "name"),
        versions: list(o, "versions")
            .iter()
            .map(|v| v.as_str().expect("version string").to_string())
            .collect(),
        platform: text(o, "platform"),
        inputs: tensors("inputs"),
        outputs: tensors("outputs"),
    }
}

pub fn config_from_json(v: &Value) -> pb::ModelConfig {
    let o = object(
        v,
        &[
            "name",
            "platform",
            "backend",
            "runtime",
            "version_policy",
            "max_batch_size",
            "input",
            "output",
            "dynamic_batching",
            "instance_group",
            "default_model_filename",
            "cc_model_filenames",
            "metric_tags",
            "parameters",
            "ensemble_scheduling",
            "response_cache",
        ],
        "config",
    );
    let tensor_keys = [
        "name",
        "data_type",
        "format",
        "dims",
        "is_shape_tensor",
        "allow_ragged_batch",
        "optional",
        "is_non_linear_format_io",
    ];
    let input = list(o, "input")
        .iter()
        .map(|t| {
            let t = object(t, &tensor_keys, "config input");
            pb::ModelInput {
                name: text(t, "name"),
                data_type: named(t, "data_type", data_type),
                format: named(t, "format", |n| {
                    pb::model_input::Format::from_str_name(n).map(|f| f as i32)
                }),
                dims: ints(t, "dims"),
                reshape: None,
                is_shape_tensor: flag(t, "is_shape_tensor"),
                allow_ragged_batch: flag(t, "allow_ragged_batch"),
                optional: flag(t, "optional"),
                is_non_linear_format_io: flag(t, "is_non_linear_format_io"),
            }
        })
        .collect();
    let output = list(o, "output")
        .iter()
        .map(|t| {
            let t = object(
                t,
                &[
                    "name",
                    "data_type",
                    "dims",
                    "label_filename",
                    "is_shape_tensor",
                    "is_non_linear_format_io",
                ],
                "config output",
            );
            pb::ModelOutput {
                name: text(t, "name"),
                data_type: named(t, "data_type", data_type),
                dims: ints(t, "dims"),
                reshape: None,
                label_filename: text(t, "label_filename"),
                is_shape_tensor: flag(t, "is_shape_tensor"),
                is_non_linear_format_io: flag(t, "is_non_linear_format_io"),
            }
        })
        .collect();
    let version_policy = o.get("version_policy").map(|p| {
        use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
        let p = object(p, &["latest", "all", "specific"], "version_policy");
        assert_eq!(p.len(), 1, "one choice of version policy: {p:?}");
        let choice = if let Some(l) = p.get("latest") {
            let l = object(l, &["num_versions"], "latest");
            PolicyChoice::Latest(Latest {
                num_versions: uint(l, "num_versions") as u32,
            })
        } else if let Some(a) = p.get("all") {
            object(a, &[], "all");
            PolicyChoice::All(All {})
        } else {
            let s = object(&p["specific"], &["versions"], "specific");
            PolicyChoice::Specific(Specific {
                versions: ints(s, "versions"),
            })
        };
        pb::ModelVersionPolicy {
            policy_choice: Some(choice),
        }
    });
    let dynamic_batching = o.get("dynamic_batching").map(|d| {
        let d = object(
            d,
            &[
                "preferred_batch_size",
                "max_queue_delay_microseconds",
                "preserve_ordering",
                "priority_levels",
                "default_priority_level",
                "default_queue_policy",
                "priority_queue_policy",
            ],
            "dynamic_batching",
        );
        assert!(
            d.get("priority_queue_policy")
                .is_none_or(|p| p == &json!({})),
            "{d:?}"
        );
        pb::ModelDynamicBatching {
            preferred_batch_size: ints(d, "preferred_batch_size")
                .into_iter()
                .map(|b| b as i32)
                .collect(),
            max_queue_delay_microseconds: uint(d, "max_queue_delay_microseconds"),
            preserve_ordering: flag(d, "preserve_ordering"),
            priority_levels: uint(d, "priority_levels"),
            default_priority_level: uint(d, "default_priority_level"),
            default_queue_policy: d.get("default_queue_policy").map(|q| {
                let q = object(
                    q,
                    &[
                        "timeout_action",
                        "default_timeout_microseconds",
                        "allow_timeout_override",
                        "max_queue_size",
                    ],
                    "default_queue_policy",
                );
                pb::ModelQueuePolicy {
                    timeout_action: named(q, "timeout_action", |n| {
                        pb::model_queue_policy::TimeoutAction::from_str_name(n).map(|a| a as i32)
                    }),
                    default_timeout_microseconds: uint(q, "default_timeout_microseconds"),
                    allow_timeout_override: flag(q, "allow_timeout_override"),
                    max_queue_size: uint(q, "max_queue_size") as u32,
                }
            }),
            priority_queue_policy: Default::default(),
        }
    });
    let instance_group = list(o, "instance_group")
        .iter()
        .map(|g| {
            let g = object(
                g,
                &[
                    "name",
                    "kind",
                    "count",
                    "gpus",
                    "secondary_devices",
                    "profile",
                    "passive",
                    "host_policy",
                ],
                "instance_group",
            );
            assert!(list(g, "secondary_devices").is_empty(), "{g:?}");
            pb::ModelInstanceGroup {
                name: text(g, "name"),
                kind: named(g, "kind", |n| {
                    pb::model_instance_group::Kind::from_str_name(n).map(|k| k as i32)
                }),
                count: int(g, "count") as i32,
                rate_limiter: None,
                gpus: ints(g, "gpus").into_iter().map(|x| x as i32).collect(),
                secondary_devices: Vec::new(),
                profile: list(g, "profile")
                    .iter()
                    .map(|p| p.as_str().expect("profile").to_string())
                    .collect(),
                passive: flag(g, "passive"),
                host_policy: text(g, "host_policy"),
            }
        })
        .collect();
    let strings = |k: &str| {
        o.get(k).map_or_else(Default::default, |m| {
            object(m, &[], k);
            Default::default()
        })
    };
    let parameters = o
        .get("parameters")
        .map(|p| {
            p.as_object()
                .expect("parameters object")
                .iter()
                .map(|(k, v)| {
                    let v = object(v, &["string_value"], "parameter");
                    (
                        k.clone(),
                        pb::ModelParameter {
                            string_value: text(v, "string_value"),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    pb::ModelConfig {
        name: text(o, "name"),
        platform: text(o, "platform"),
        backend: text(o, "backend"),
        runtime: text(o, "runtime"),
        version_policy,
        max_batch_size: int(o, "max_batch_size") as i32,
        input,
        output,
        dynamic_batching,
        instance_group,
        default_model_filename: text(o, "default_model_filename"),
        cc_model_filenames: strings("cc_model_filenames"),
        metric_tags: strings("metric_tags"),
        parameters,
        model_transaction_policy: None,
        // never filled by Kiln's answers, and left out of the JSON
        batch_input: Vec::new(),
        batch_output: Vec::new(),
        optimization: None,
        sequence_batching: None,
        model_warmup: Vec::new(),
        model_operations: None,
        model_repository_agents: None,
        model_metrics: None,
        response_cache: o.get("response_cache").map(|r| {
            let r = object(r, &["enable"], "response_cache");
            pb::ModelResponseCache {
                enable: r["enable"].as_bool().expect("enable is a boolean"),
            }
        }),
        ensemble_scheduling: o.get("ensemble_scheduling").map(|e| {
            let e = object(e, &["step"], "ensemble_scheduling");
            let step = list(e, "step")
                .iter()
                .map(|s| {
                    let s = object(
                        s,
                        &[
                            "model_name",
                            "model_version",
                            "input_map",
                            "output_map",
                            "model_namespace",
                        ],
                        "step",
                    );
                    let map = |k: &str| {
                        s[k].as_object()
                            .expect("map")
                            .iter()
                            .map(|(a, b)| (a.clone(), b.as_str().expect("string").to_string()))
                            .collect()
                    };
                    pb::model_ensembling::Step {
                        model_name: text(s, "model_name"),
                        model_version: int(s, "model_version"),
                        input_map: map("input_map"),
                        output_map: map("output_map"),
                        model_namespace: text(s, "model_namespace"),
                    }
                })
                .collect();
            pb::ModelEnsembling { step }
        }),
    }
}

fn duration(v: Option<&Value>, what: &str) -> Option<pb::StatisticDuration> {
    let d = object(v?, &["count", "ns"], what);
    Some(pb::StatisticDuration {
        count: uint(d, "count"),
        ns: uint(d, "ns"),
    })
}

pub fn stats_from_json(v: &Value) -> pb::ModelStatisticsResponse {
    let o = object(v, &["model_stats"], "statistics");
    let model_stats = list(o, "model_stats")
        .iter()
        .map(|m| {
            let m = object(
                m,
                &[
                    "name",
                    "version",
                    "last_inference",
                    "inference_count",
                    "execution_count",
                    "inference_stats",
                    "batch_stats",
                    "memory_usage",
                    "response_stats",
                ],
                "model_stats",
            );
            assert!(list(m, "memory_usage").is_empty(), "{m:?}");
            assert!(
                m.get("response_stats").is_none_or(|r| r == &json!({})),
                "{m:?}"
            );
            let inference_stats = m.get("inference_stats").map(|s| {
                let keys = [
                    "success",
                    "fail",
                    "queue",
                    "compute_input",
                    "compute_infer",
                    "compute_output",
                    "cache_hit",
                    "cache_miss",
                ];
                let s = object(s, &keys, "inference_stats");
                let d = |k: &str| duration(s.get(k), k);
                pb::InferStatistics {
                    success: d("success"),
                    fail: d("fail"),
                    queue: d("queue"),
                    compute_input: d("compute_input"),
                    compute_infer: d("compute_infer"),
                    compute_output: d("compute_output"),
                    cache_hit: d("cache_hit"),
                    cache_miss: d("cache_miss"),
                }
            });
            let batch_stats = list(m, "batch_stats")
                .iter()
                .map(|b| {
                    let b = object(
                        b,
                        &[
                            "batch_size",
                            "compute_input",
                            "compute_infer",
                            "compute_output",
                        ],
                        "batch_stats",
                    );
                    pb::InferBatchStatistics {
                        batch_size: uint(b, "batch_size"),
                        compute_input: duration(b.get("compute_input"), "compute_input"),
                        compute_infer: duration(b.get("compute_infer"), "compute_infer"),
                        compute_output: duration(b.get("compute_output"), "compute_output"),
                    }
                })
                .collect();
            pb::ModelStatistics {
                name: text(m, "name"),
                version: text(m, "version"),
                last_inference: uint(m, "last_inference"),
                inference_count: uint(m, "inference_count"),
                execution_count: uint(m, "execution_count"),
                inference_stats,
                batch_stats,
                memory_usage: Vec::new(),
                response_stats: Default::default(),
            }
        })
        .collect();
    pb::ModelStatisticsResponse { model_stats }
}

/// Triton's HTTP index is a JSON array; an entry without `version` or `reason` has them empty.
pub fn index_from_json(v: &Value) -> Vec<pb::repository_index_response::ModelIndex> {
    v.as_array()
        .unwrap_or_else(|| panic!("index is not an array: {v}"))
        .iter()
        .map(|e| {
            let e = object(e, &["name", "version", "state", "reason"], "index entry");
            pb::repository_index_response::ModelIndex {
                name: text(e, "name"),
                version: text(e, "version"),
                state: text(e, "state"),
                reason: text(e, "reason"),
            }
        })
        .collect()
}
