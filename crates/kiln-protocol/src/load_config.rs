//! The `config` parameter of a repository load request: Triton's model configuration as JSON
//! (protobuf's JSON mapping of `model_config.proto`: field names as in the `.proto` or in
//! lowerCamelCase, enums by name), read into Kiln's [`ModelConfig`] with the conversion
//! `config.pbtxt` files go through ([`crate::triton_config::to_kiln`]).

use crate::inference as pb;
use kiln_core::{Error, ModelConfig, Result};
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::sync::LazyLock;

/// What errors call the parameter.
const SHOWN: &str = "load parameter 'config'";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/model_config.fds")).as_ref())
        .expect("the build script writes a valid descriptor set")
});

/// Parses the JSON text of a load request's `config` parameter into Triton's `ModelConfig`.
/// Unknown fields, wrong types and malformed JSON are errors naming the parameter.
pub fn parse_json(text: &str) -> Result<pb::ModelConfig> {
    let descriptor = POOL
        .get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto declares inference.ModelConfig");
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor, &mut de)
        .map_err(|e| Error::invalid(format!("{SHOWN}: {e}")))?;
    de.end()
        .map_err(|e| Error::invalid(format!("{SHOWN}: {e}")))?;
    dynamic
        .transcode_to::<pb::ModelConfig>()
        .map_err(|e| Error::invalid(format!("{SHOWN}: {e}")))
}

/// The `config` parameter of a load request for `model` as Kiln's configuration.
pub fn read_json(text: &str, model: &str) -> Result<ModelConfig> {
    let message = parse_json(text)?;
    crate::triton_config::to_kiln(&message, SHOWN, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_json_reads_and_malformed_is_refused() {
        let c = parse_json(
            r#"{"name":"m","backend":"onnxruntime","max_batch_size":8,
                "input":[{"name":"x","data_type":"TYPE_FP32","dims":[4]}],
                "output":[{"name":"y","dataType":"TYPE_FP32","dims":["2"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(c.output[0].dims, vec![2]);
        for bad in [
            "",
            "{",
            "[]",
            r#"{"max_batch_size":"eight"}"#,
            r#"{"no_such_field":1}"#,
            r#"{"input":[{"data_type":"TYPE_NOPE"}]}"#,
            r#"{} trailing"#,
        ] {
            let e = parse_json(bad).unwrap_err();
            assert!(e.message.starts_with(SHOWN), "{bad}: {e}");
        }
    }
}
