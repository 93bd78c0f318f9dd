//! ONNX model files as every engine that serves them reads them: the load-time facts of the
//! file's graph (input dims the weights pin although the file leaves them symbolic, inputs that
//! index a table through a `Gather`) and the resolution of the served inputs and outputs
//! against `config.toml`, so that the ONNX Runtime and OpenVINO backends serve the same dims
//! and answer the same errors for the same file.
//!
//! The graph is decoded with a minimal prost schema of the few fields the analyses read
//! (`graph`); tensor data is skipped, not copied.

mod bounds;
mod derive;
mod graph;
mod io;

use kiln_core::gather::IndexBound;
use std::collections::HashMap;
use std::path::Path;

pub use crate::io::{resolve, FileTensor};

/// The facts of one ONNX file's main graph.
#[derive(Debug, Clone)]
pub struct GraphFacts(graph::GraphProto);

impl GraphFacts {
    /// Reads the main graph of the ONNX file at `path`; an error when it is too large,
    /// unreadable or not an ONNX protobuf.
    pub fn read(path: &Path) -> Result<Self, String> {
        graph::read_graph(path).map(GraphFacts)
    }

    /// For each graph input the graph pins, `(axis, size)` pairs in the file's full dims (batch
    /// included); `ranks` gives each input's rank.
    pub fn pinned_dims(
        &self,
        ranks: &HashMap<String, usize>,
    ) -> HashMap<String, Vec<(usize, i64)>> {
        derive::pinned_dims(Some(&self.0), ranks)
    }

    /// The inputs that index a table through a `Gather`, with the table's size.
    pub fn index_bounds(&self) -> Vec<IndexBound> {
        bounds::index_bounds(Some(&self.0))
    }
}

/// Replaces the symbolic input dims that the graph fixes ([`GraphFacts::pinned_dims`]) with
/// their values, except the batch dimension when the model batches. Nothing changes without
/// facts (a file that could not be analysed).
pub fn pin_derived_dims(facts: Option<&GraphFacts>, inputs: &mut [FileTensor], batched: bool) {
    let Some(facts) = facts else { return };
    let ranks = inputs
        .iter()
        .map(|t| (t.name.clone(), t.dims.len()))
        .collect();
    let pins = facts.pinned_dims(&ranks);
    for t in inputs.iter_mut() {
        for &(axis, size) in pins.get(&t.name).into_iter().flatten() {
            if batched && axis == 0 {
                continue;
            }
            if let Some(d) = t.dims.get_mut(axis) {
                if *d < 0 {
                    tracing::debug!(input = %t.name, axis, size, "input dim fixed by the graph");
                    *d = size;
                }
            }
        }
    }
}
