//! What another backend serving the same ONNX files reuses from this one: the load-time facts
//! read from the file's graph (input dims the weights pin, inputs that index a table through a
//! `Gather`) and the resolution of the served inputs and outputs against `config.toml`, so that
//! every ONNX engine serves the same dims and answers the same errors.

use crate::onnx_graph::GraphProto;
use kiln_core::gather::IndexBound;
use std::collections::HashMap;
use std::path::Path;

pub use crate::io::{resolve, FileTensor};

/// The facts of one ONNX file's main graph.
#[derive(Debug, Clone)]
pub struct GraphFacts(GraphProto);

impl GraphFacts {
    /// Reads the main graph of the ONNX file at `path`; an error when it is too large,
    /// unreadable or not an ONNX protobuf.
    pub fn read(path: &Path) -> Result<Self, String> {
        crate::onnx_graph::read_graph(path).map(GraphFacts)
    }

    /// For each graph input the graph pins, `(axis, size)` pairs in the file's full dims (batch
    /// included); `ranks` gives each input's rank.
    pub fn pinned_dims(
        &self,
        ranks: &HashMap<String, usize>,
    ) -> HashMap<String, Vec<(usize, i64)>> {
        crate::derive::pinned_dims(Some(&self.0), ranks)
    }

    /// The inputs that index a table through a `Gather`, with the table's size.
    pub fn index_bounds(&self) -> Vec<IndexBound> {
        crate::bounds::index_bounds(Some(&self.0))
    }
}
