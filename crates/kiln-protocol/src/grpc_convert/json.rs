//! How the generated control-plane messages render their enums and the version policy as JSON
//! (see `build.rs`): by name, as protobuf's JSON mapping and Triton's HTTP API write them. A
//! value outside the enum is written as its number, as protobuf's JSON mapping does.

use crate::inference as pb;
use serde::{Serialize, Serializer};
use serde_json::json;

/// Writes the name of enum value `v`, or the number if `name` has none for it.
fn enum_name<S: Serializer>(v: i32, name: Option<&'static str>, s: S) -> Result<S::Ok, S::Error> {
    match name {
        Some(n) => s.serialize_str(n),
        None => s.serialize_i32(v),
    }
}

/// Writes the generated enum `$ty` by name.
macro_rules! named {
    ($(#[$doc:meta] $f:ident: $ty:ty;)*) => {$(
        #[$doc]
        pub(crate) fn $f<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
            enum_name(*v, <$ty>::try_from(*v).ok().map(|e| e.as_str_name()), s)
        }
    )*};
}

named! {
    /// `TYPE_FP32`, ...
    data_type: pb::DataType;
    /// `FORMAT_NONE`, ...
    input_format: pb::model_input::Format;
    /// `KIND_CPU`, ...
    instance_kind: pb::model_instance_group::Kind;
    /// `KIND_NVDLA`.
    secondary_device_kind: pb::model_instance_group::secondary_device::SecondaryDeviceKind;
    /// `REJECT` or `DELAY`.
    timeout_action: pb::model_queue_policy::TimeoutAction;
}

/// The version policy as its chosen field: `{"latest": {"num_versions": 1}}`, `{"all": {}}` or
/// `{"specific": {"versions": [1, 3]}}`.
pub(crate) fn version_policy<S: Serializer>(
    p: &Option<pb::ModelVersionPolicy>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use pb::model_version_policy::PolicyChoice;
    match p.as_ref().and_then(|p| p.policy_choice.as_ref()) {
        Some(PolicyChoice::Latest(l)) => json!({ "latest": { "num_versions": l.num_versions } }),
        Some(PolicyChoice::All(_)) => json!({ "all": {} }),
        Some(PolicyChoice::Specific(v)) => json!({ "specific": { "versions": v.versions } }),
        None => json!({}),
    }
    .serialize(s)
}
