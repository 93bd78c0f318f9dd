//! The few fields of the ONNX protobuf that the load-time graph analyses read (nodes,
//! initializer dims, graph inputs), decoded with a minimal prost schema so that tensor data is
//! skipped, not copied. One read serves both analyses: the dims the graph pins
//! ([`crate::derive`]) and the inputs that index a table ([`crate::bounds`]).

use prost::Message;
use std::path::Path;

/// Files larger than this are not decoded (the analysis would hold a second copy in memory).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// `onnx.ModelProto`, only the graph.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub(crate) graph: Option<GraphProto>,
}

/// `onnx.GraphProto`: nodes, initializers and inputs.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub(crate) node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub(crate) initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub(crate) input: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub(crate) input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) output: Vec<String>,
    #[prost(string, tag = "3")]
    pub(crate) name: String,
    #[prost(string, tag = "4")]
    pub(crate) op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub(crate) attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub(crate) domain: String,
}

/// `onnx.AttributeProto`: the integer and tensor values.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct AttributeProto {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(int64, tag = "3")]
    pub(crate) i: i64,
    #[prost(message, optional, tag = "5")]
    pub(crate) t: Option<TensorProto>,
}

/// `onnx.TensorProto`: name and dims, never the data.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub(crate) dims: Vec<i64>,
    #[prost(string, tag = "8")]
    pub(crate) name: String,
}

/// `onnx.ValueInfoProto`: the name.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
}

/// The main graph of the ONNX file at `path`; an error when the file is too large, unreadable
/// or not an ONNX protobuf (an ORT-format model, say), which ONNX Runtime then checks alone.
pub(crate) fn read_graph(path: &Path) -> Result<GraphProto, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file of {len} bytes is larger than {MAX_FILE_BYTES}"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    model.graph.ok_or_else(|| "no graph".to_string())
}
