//! Inputs that index a table through a `Gather` (see [`kiln_core::gather`]), found at load time
//! in the model file's protobuf ([`crate::graph`]). ONNX Runtime itself refuses an index
//! outside the table; checking first gives the client the same 400 as the other backends,
//! before compute and without failing the other requests of its batch.

use crate::graph::GraphProto;
use kiln_core::gather::{GraphSketch, IndexBound, SketchNode};

/// The index bounds of the model's graph; none when the file could not be read as an ONNX
/// protobuf (an ORT-format model, say), which ONNX Runtime then checks alone.
pub fn index_bounds(graph: Option<&GraphProto>) -> Vec<IndexBound> {
    graph.map(|g| sketch(g).index_bounds()).unwrap_or_default()
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
