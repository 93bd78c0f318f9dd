use super::*;
use kiln_core::DataType;

const FILE: &str = "m/config.pbtxt";

fn ok(text: &str) -> ModelConfig {
    read(text, FILE, "m").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    read(text, FILE, "m").expect_err("refused").message
}

/// A model in Triton's own style: lists of messages without a colon, comments, both
/// spellings of nested messages.
const FULL: &str = r#"
# a comment with [brackets] and "quotes"
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
    allow_ragged_batch: false
  }
]
output[{ name: "OUTPUT0", data_type: TYPE_STRING, dims: [ -1 ] }]
instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_AUTO } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 3
  default_priority_level: 2
  preserve_ordering: true
  default_queue_policy { default_timeout_microseconds: 2500 max_queue_size: 16 }
}
model_warmup [
  {
    name: "w"
    batch_size: 2
    count: 0
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } }
  }
]
parameters { key: "intra_op_threads" value: { string_value: "2" } }
parameters { key: "graph_optimization_level" value: { string_value: "basic" } }
parameters { key: "allow_cpu_fallback" value: { string_value: "true" } }
response_cache { enable: true }
default_model_filename: "net.onnx"
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
model_transaction_policy { decoupled: false }
"#;

#[test]
fn honours_every_supported_field() {
    let c = ok(FULL);
    assert_eq!(c.name.as_deref(), Some("m"));
    assert_eq!(c.backend.as_deref(), Some("onnxruntime"));
    assert_eq!(c.max_batch_size, 8);
    assert_eq!(c.version_policy.specific, Some(vec![1, 3]));
    assert_eq!(c.input[0].name, "INPUT0");
    assert_eq!(c.input[0].data_type, DataType::Fp32);
    assert_eq!(c.input[0].dims, vec![4]);
    assert_eq!(c.output[0].data_type, DataType::Bytes);
    assert_eq!(c.output[0].dims, vec![-1]);
    assert_eq!(c.instance_group.count, 3, "2 + one for count 0");
    let db = &c.dynamic_batching;
    assert_eq!(db.preferred_batch_sizes, vec![4, 8]);
    assert_eq!(db.max_queue_delay_us, 100);
    assert_eq!((db.priority_levels, db.default_priority), (3, Some(2)));
    assert_eq!(db.default_timeout_ms, 3, "2500 us rounded up");
    assert_eq!(db.max_queue_size, 16);
    let w = &c.model_warmup[0];
    assert_eq!((w.name.as_str(), w.batch_size, w.count), ("w", 2, 1));
    assert!(w.inputs["INPUT0"].random_data);
    assert_eq!(c.parameters["intra_op_threads"], toml::Value::Integer(2));
    assert_eq!(
        c.parameters["allow_cpu_fallback"],
        toml::Value::Boolean(true)
    );
    assert_eq!(
        c.parameters["graph_optimization_level"].as_str(),
        Some("basic")
    );
    assert!(c.response_cache.enable);
    assert_eq!(c.default_model_filename, "net.onnx");
}

#[test]
fn defaults_are_kilns() {
    let c = ok("");
    assert_eq!(c, ModelConfig::default_for("m"));
    let c = ok("backend: \"tract\"\nmax_batch_size: 4\ndynamic_batching { }");
    assert_eq!(c.backend.as_deref(), Some("tract"));
    assert_eq!(c.dynamic_batching, Default::default());
}

#[test]
fn openvino_platform_and_backend_map_to_the_openvino_backend() {
    for text in [
        "platform: \"openvino\"",
        "backend: \"openvino\"",
        "platform: \"openvino\" backend: \"openvino\"",
    ] {
        assert_eq!(ok(text).backend.as_deref(), Some("openvino"), "{text}");
    }
}

#[test]
fn ensemble_becomes_a_pipeline() {
    let c = ok(r#"
        platform: "ensemble"
        max_batch_size: 8
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
        ensemble_scheduling {
          step [
            { model_name: "a" model_version: -1
              input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "h" } },
            { model_name: "b" model_version: 2
              input_map { key: "IN" value: "h" } output_map { key: "OUT" value: "g" } },
            { model_name: "b" model_version: -1
              input_map { key: "IN" value: "g" } output_map { key: "OUT" value: "y" } }
          ]
        }
    "#);
    assert!(c.is_pipeline());
    assert_eq!(c.max_batch_size, 0, "a pipeline takes whole tensors");
    assert_eq!(c.input[0].dims, vec![-1, 4]);
    assert_eq!(c.output[0].dims, vec![-1, 3]);
    let names: Vec<&str> = c.step.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b_1", "b_2"]);
    assert!(c.step[0].get("version").is_none(), "-1: the model's latest");
    assert_eq!(c.step[1]["version"].as_integer(), Some(2));
    assert_eq!(c.step[0]["input_map"]["IN"].as_str(), Some("x"));
    assert_eq!(c.step[2]["output_map"]["OUT"].as_str(), Some("y"));
}

/// Settings Kiln does not implement: each refused naming the file and the field.
#[test]
fn unsupported_settings_are_refused_by_name() {
    let tensor = |extra: &str| {
        format!("input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ 1 ] {extra} }} ]")
    };
    let cases: Vec<(String, &str)> = vec![
        ("sequence_batching { max_sequence_idle_microseconds: 5 }".into(), "sequence_batching"),
        (
            "model_transaction_policy { decoupled: true }".into(),
            "model_transaction_policy.decoupled",
        ),
        (
            "optimization { execution_accelerators { gpu_execution_accelerator [ { name: \"tensorrt\" } ] } }".into(),
            "optimization.execution_accelerators",
        ),
        ("optimization { cuda { graphs: true } }".into(), "optimization.cuda"),
        ("optimization { priority: PRIORITY_MAX }".into(), "optimization.priority"),
        ("platform: \"tensorrt_plan\"".into(), "platform"),
        ("platform: \"pytorch_libtorch\"".into(), "platform"),
        ("backend: \"python\"".into(), "backend"),
        ("platform: \"onnxruntime_onnx\" backend: \"tract\"".into(), "backend"),
        ("runtime: \"libtriton_onnxruntime.so\"".into(), "runtime"),
        ("instance_group [ { kind: KIND_GPU count: 1 } ]".into(), "instance_group[0].kind"),
        ("instance_group [ { gpus: [ 0 ] } ]".into(), "instance_group[0].gpus"),
        ("instance_group [ { kind: KIND_MODEL } ]".into(), "instance_group[0].kind"),
        (tensor("reshape: { shape: [ ] }"), "input[0].reshape"),
        (tensor("optional: true"), "input[0].optional"),
        (tensor("is_shape_tensor: true"), "input[0].is_shape_tensor"),
        (
            "input [ { name: \"x\" data_type: TYPE_BF16 dims: [ 1 ] } ]".into(),
            "input[0].data_type",
        ),
        ("input [ { name: \"x\" dims: [ 1 ] } ]".into(), "input[0].data_type"),
        ("batch_input [ { target_name: \"n\" } ]".into(), "batch_input"),
        ("cc_model_filenames { key: \"7.5\" value: \"a.onnx\" }".into(), "cc_model_filenames"),
        ("metric_tags { key: \"team\" value: \"a\" }".into(), "metric_tags"),
        ("model_repository_agents { agents [ { name: \"checksum\" } ] }".into(), "model_repository_agents"),
        ("name: \"other\"".into(), "name"),
        ("max_batch_size: -1".into(), "max_batch_size"),
        (
            "max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 16 ] }".into(),
            "dynamic_batching.preferred_batch_size",
        ),
        (
            "max_batch_size: 8 dynamic_batching { default_queue_policy { timeout_action: DELAY } }".into(),
            "dynamic_batching.default_queue_policy.timeout_action",
        ),
        (
            "max_batch_size: 8 dynamic_batching { priority_queue_policy { key: 1 value: { max_queue_size: 2 } } }".into(),
            "dynamic_batching.priority_queue_policy",
        ),
        (
            "max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 3 }".into(),
            "dynamic_batching.default_priority_level",
        ),
        ("version_policy { latest { num_versions: 0 } }".into(), "version_policy.latest"),
        ("version_policy { specific { versions: [ -2 ] } }".into(), "version_policy.specific"),
        ("platform: \"ensemble\"".into(), "ensemble_scheduling"),
        ("ensemble_scheduling { step [ { model_name: \"a\" } ] }".into(), "ensemble_scheduling"),
        (
            "platform: \"ensemble\" ensemble_scheduling { step [ { model_name: \"a\" model_version: 0 } ] }".into(),
            "ensemble_scheduling.step[0].model_version",
        ),
        (
            "platform: \"ensemble\" instance_group [ { count: 2 } ] ensemble_scheduling { step [ { model_name: \"a\" model_version: -1 } ] }".into(),
            "instance_group",
        ),
        (
            "model_warmup [ { name: \"w\" inputs { key: \"x\" value: { data_type: TYPE_FP32 dims: [ 1 ] } } } ]".into(),
            "model_warmup[0].inputs[x]",
        ),
    ];
    for (text, field) in cases {
        let e = err(&text);
        assert!(
            e.starts_with(&format!("{FILE}: {field}")),
            "{text}\n  -> {e}\n  (expected the field {field})"
        );
    }
}

/// Text that is not a `ModelConfig`: the error names the file, the line and column, and the
/// field.
#[test]
fn malformed_text_names_line_and_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            "max_batch_size: \"eight\"",
            &[":1:17:", "field 'max_batch_size'"],
        ),
        (
            "\n\nmax_batch_size: 1.5",
            &[":3:17:", "field 'max_batch_size'"],
        ),
        ("max_batch_sise: 4", &[":1:1:", "max_batch_sise"]),
        (
            "input [ { name: \"x\" data_type: TYPE_FLOAT } ]",
            &[":1:32:", "TYPE_FLOAT"],
        ),
        (
            "max_batch_size: 99999999999",
            &[":1:17:", "field 'max_batch_size'"],
        ),
        (
            "max_batch_size: 1\nmax_batch_size: 2",
            &[":2:17:", "max_batch_size"],
        ),
        ("input [ { name: \"x\"", &["end of input"]),
        (
            "dynamic_batching { preferred_batch_size: [ 4, ] }",
            &[":1:", "preferred_batch_size"],
        ),
        ("name: \"unterminated", &[":1:20:", "field 'name'"]),
        ("instance_group [ { kind: 1.5 } ]", &[":1:", "field 'kind'"]),
        ("\u{0}", &[":1:1:"]),
    ];
    for (text, wanted) in cases {
        let e = err(text);
        assert!(e.starts_with(&format!("{FILE}:")), "{text:?} -> {e}");
        for w in *wanted {
            assert!(e.contains(w), "{text:?} -> {e}\n  (expected {w:?})");
        }
    }
}

/// Every truncation of a valid configuration, and many with a byte changed, is either read or
/// refused with a message naming the file: never a panic.
#[test]
fn truncated_and_corrupted_texts_are_refused_with_a_message() {
    let mut refused = 0;
    for cut in 0..FULL.len() {
        if !FULL.is_char_boundary(cut) {
            continue;
        }
        if let Err(e) = read(&FULL[..cut], FILE, "m") {
            assert!(e.message.starts_with(FILE), "cut at {cut}: {e}");
            refused += 1;
        }
    }
    assert!(
        refused > FULL.len() / 2,
        "{refused} of {} refused",
        FULL.len()
    );
    let noise = b"{}[]:,\"#x9-. \n";
    let mut state = 0x2545_f491_u32;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let mut bytes = FULL.as_bytes().to_vec();
        let at = state as usize % bytes.len();
        bytes[at] = noise[(state >> 16) as usize % noise.len()];
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = read(&text, FILE, "m") {
            assert!(e.message.starts_with(FILE), "{e}");
        }
    }
}

#[test]
fn lists_without_colons() {
    let (text, inserted) = colon_before_lists("input[{a: \"[\"}] # b [c]\nd: [1] e [ 2 ]");
    assert_eq!(text, "input:[{a: \"[\"}] # b [c]\nd: [1] e:[ 2 ]");
    assert_eq!(inserted, vec![5]);
    let (text, _) = colon_before_lists("kind: KIND_CPU\ngpus [ 0 ]");
    assert_eq!(text, "kind: KIND_CPU\ngpus:[ 0 ]");
}

#[test]
fn labels_and_image_formats_map_to_the_classification_keys() {
    let text = "input [ { name: \"x\" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 2, 2 ] } ]\n\
                output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 4 ] label_filename: \"l.txt\" } ]";
    let k = super::read(text, FILE, "m").unwrap();
    assert_eq!(k.labels.get("y").map(String::as_str), Some("l.txt"));
    assert_eq!(
        k.input_format.get("x"),
        Some(&kiln_core::classification::InputFormat::Nchw)
    );
}
