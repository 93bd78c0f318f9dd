//! Inputs that index a table through a `Gather` (see [`kiln_core::gather`]), found in the
//! model file's protobuf at load time. tract panics on an index outside the table, so every
//! batch is checked against these bounds before it runs.

use kiln_core::gather::{GraphSketch, IndexBound, SketchNode};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The index bounds of the model at `path`.
pub fn index_bounds(path: &Path) -> TractResult<Vec<IndexBound>> {
    let proto = tract_onnx::onnx().proto_model_for_path(path)?;
    Ok(proto
        .graph
        .as_ref()
        .map(|g| sketch(g).index_bounds())
        .unwrap_or_default())
}

/// The facts of the main graph the analysis needs.
fn sketch(g: &pb::GraphProto) -> GraphSketch {
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
