//! Inputs that index a table through a `Gather` (see [`kiln_core::gather`]), found at load time
//! in the model file's protobuf, read with a schema of only the fields the analysis needs (so
//! tensor data is skipped, not copied). ONNX Runtime itself refuses an index outside the table;
//! checking first gives the client the same 400 as the other backends, before compute and
//! without failing the other requests of its batch.

use kiln_core::gather::{GraphSketch, IndexBound, SketchNode};
use prost::Message;
use std::path::Path;

/// `onnx.ModelProto`, only the graph.
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `onnx.GraphProto`: nodes, initializers and inputs.
#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    domain: String,
}

/// `onnx.AttributeProto`: the integer and tensor values.
#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
}

/// `onnx.TensorProto`: name and dims, never the data.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
}

/// `onnx.ValueInfoProto`: the name.
#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
}

/// The index bounds of the model at `path`; none when the file is not an ONNX protobuf (an
/// ORT-format model, say), which ONNX Runtime then checks alone.
pub fn index_bounds(path: &Path) -> Vec<IndexBound> {
    let proto = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string()));
    match proto {
        Ok(m) => m
            .graph
            .map(|g| sketch(&g).index_bounds())
            .unwrap_or_default(),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e,
                "not an onnx protobuf: gather indices are left to onnxruntime");
            Vec::new()
        }
    }
}

/// The facts of the main graph the analysis needs.
fn sketch(g: &GraphProto) -> GraphSketch {
    GraphSketch {
        inputs: g.input.iter().map(|i| i.name.clone()).collect(),
        initializers: g
            .initializer
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone()))
            .collect(),
        nodes: g
            .node
            .iter()
            .filter(|n| n.domain.is_empty() || n.domain == "ai.onnx")
            .map(|n| SketchNode {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                axis: n.attribute.iter().find(|a| a.name == "axis").map(|a| a.i),
                value_dims: n
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .map(|t| t.dims.clone()),
            })
            .collect(),
    }
}
